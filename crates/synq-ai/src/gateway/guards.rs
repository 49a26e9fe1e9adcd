//! The gateway's guards: origin allowlist, token-bucket rate limits, daily token budget.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Whether a browser page at `origin` may call the gateway of a server reached as `host`.
///
/// Allowed: the server's own origin (same `Host`), `http(s)://localhost`, `127.0.0.1` and
/// `[::1]` on any port, and every origin of `extra` (exact match; `*` allows any origin).
pub fn origin_allowed(origin: &str, host: Option<&str>, extra: &[String]) -> bool {
    let origin = origin.trim().trim_end_matches('/');
    if extra
        .iter()
        .any(|o| o == "*" || o.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false; // includes the opaque origin "null" (sandboxed frames, file://)
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return false;
    }
    if host.is_some_and(|h| h.eq_ignore_ascii_case(authority)) {
        return true;
    }
    let hostname = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().map(|h| format!("[{h}]"))
    } else {
        authority.split(':').next().map(str::to_string)
    };
    matches!(
        hostname.map(|h| h.to_ascii_lowercase()).as_deref(),
        Some("localhost" | "127.0.0.1" | "[::1]")
    )
}

/// Requests per minute per key (client IP, session), as token buckets holding up to one
/// minute's worth: a client may burst, then is held to the average rate.
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Past this many keys, full buckets (idle clients) are forgotten so the map stays small.
const PRUNE_AT: usize = 10_000;

impl RateLimiter {
    /// `per_minute == 0` means unlimited.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::default(),
        }
    }

    /// Takes one token for `key`, or says how long until one is available.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.per_minute);
        let per_sec = capacity / 60.0;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= PRUNE_AT {
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.last).as_secs_f64() * per_sec < capacity
            });
        }
        let b = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * per_sec).min(capacity);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / per_sec))
        }
    }
}

/// Generated tokens per UTC day, across all clients. Counting is approximate (see
/// [`approx_tokens`]); it protects a paid upstream account from runaway use.
pub struct TokenBudget {
    per_day: u64,
    /// (UTC day number, tokens used that day)
    used: Mutex<(u64, u64)>,
}

fn utc_day() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0)
}

impl TokenBudget {
    /// `per_day == 0` means unlimited.
    pub fn new(per_day: u64) -> Self {
        Self {
            per_day,
            used: Mutex::new((utc_day(), 0)),
        }
    }

    /// Tokens left today (`u64::MAX` when unlimited).
    pub fn remaining(&self) -> u64 {
        if self.per_day == 0 {
            return u64::MAX;
        }
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let today = utc_day();
        if used.0 != today {
            *used = (today, 0);
        }
        self.per_day.saturating_sub(used.1)
    }

    /// Records `tokens` generated; returns the tokens left today.
    pub fn spend(&self, tokens: u64) -> u64 {
        if self.per_day == 0 {
            return u64::MAX;
        }
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let today = utc_day();
        if used.0 != today {
            *used = (today, 0);
        }
        used.1 = used.1.saturating_add(tokens);
        self.per_day.saturating_sub(used.1)
    }

    pub fn per_day(&self) -> u64 {
        self.per_day
    }
}

/// Seconds until the next UTC midnight, when the budget resets.
pub fn until_budget_reset() -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Duration::from_secs(86_400 - now % 86_400)
}

/// About one token per four characters (English text with common tokenizers), at least one
/// per delta: upstreams do not all report usage when streaming, and the budget needs only an
/// estimate.
pub fn approx_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_host_localhost_and_listed_origins_are_allowed_others_not() {
        let host = Some("chat.example.org:8080");
        let none: Vec<String> = vec![];
        assert!(origin_allowed("http://chat.example.org:8080", host, &none));
        assert!(origin_allowed("https://CHAT.example.org:8080", host, &none));
        assert!(origin_allowed("http://localhost:5173", host, &none));
        assert!(origin_allowed("https://127.0.0.1", host, &none));
        assert!(origin_allowed("http://[::1]:3000", host, &none));
        assert!(!origin_allowed("http://chat.example.org", host, &none));
        assert!(!origin_allowed("https://evil.example", host, &none));
        assert!(!origin_allowed(
            "http://localhost.evil.example",
            host,
            &none
        ));
        assert!(!origin_allowed("null", host, &none));
        assert!(!origin_allowed("file://localhost", host, &none));
        let listed = vec!["https://app.example.com/".to_string()];
        assert!(origin_allowed("https://app.example.com", host, &listed));
        assert!(origin_allowed(
            "https://any.where",
            host,
            &["*".to_string()]
        ));
    }

    #[test]
    fn a_bucket_allows_a_minute_of_burst_then_refuses_with_a_wait() {
        let l = RateLimiter::new(3);
        for _ in 0..3 {
            assert!(l.check("a").is_ok());
        }
        let wait = l.check("a").expect_err("4th in the same minute");
        assert!(wait > Duration::from_secs(15) && wait <= Duration::from_secs(20));
        assert!(l.check("b").is_ok(), "keys are independent");
        assert!(RateLimiter::new(0).check("a").is_ok());
    }

    #[test]
    fn the_budget_counts_down_and_zero_means_unlimited() {
        let b = TokenBudget::new(10);
        assert_eq!(b.spend(4), 6);
        assert_eq!(b.remaining(), 6);
        assert_eq!(b.spend(10), 0);
        assert_eq!(TokenBudget::new(0).spend(1_000), u64::MAX);
        assert_eq!(approx_tokens("Hello"), 2);
        assert_eq!(approx_tokens(""), 1);
    }
}
