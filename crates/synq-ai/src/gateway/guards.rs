//! The gateway's guards: token-bucket rate limits, daily token budgets (all callers
//! together and per address), and what of a caller's input may go into the server's log.
//! The host and origin allowlists are the server's one policy, `synq_protocol::origin`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The key under which per-address limits count a client: its IPv4 address, or the /64
/// network of its IPv6 address (one subscriber gets a whole /64 and could otherwise
/// rotate through 2^64 addresses).
pub fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Text from a client or an upstream, made safe for one log line: control characters and
/// quotes escaped, at most `max` characters.
pub fn log_safe(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        out.extend(c.escape_debug());
    }
    out
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

/// Prompt and answer tokens per UTC day, across all clients. Counting is estimated (see
/// [`approx_tokens`]) and corrected by the upstream's own figures when it reports them; it
/// protects a paid upstream account from runaway use.
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

    /// Takes `tokens` if that many are left today; otherwise takes nothing and says how
    /// many are left.
    pub fn try_spend(&self, tokens: u64) -> Result<(), u64> {
        if self.per_day == 0 {
            return Ok(());
        }
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let today = utc_day();
        if used.0 != today {
            *used = (today, 0);
        }
        let left = self.per_day.saturating_sub(used.1);
        if tokens > left {
            return Err(left);
        }
        used.1 += tokens;
        Ok(())
    }

    /// Gives back `tokens` counted too many (an estimate above the upstream's figure).
    pub fn refund(&self, tokens: u64) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used.1 = used.1.saturating_sub(tokens);
    }

    pub fn per_day(&self) -> u64 {
        self.per_day
    }
}

/// A [`TokenBudget`] per client address (see [`address_key`]), so that one caller cannot
/// use up the whole server's budget and switch the AI off for every room.
pub struct AddressBudgets {
    per_day: u64,
    /// (UTC day number, tokens used that day by each address)
    used: Mutex<(u64, HashMap<String, u64>)>,
}

/// Addresses tracked per day; past this, new addresses share one budget (the map stays
/// bounded whatever the number of callers).
const MAX_ADDRESSES: usize = 100_000;
const OTHERS: &str = "(others)";

impl AddressBudgets {
    /// `per_day == 0` means unlimited.
    pub fn new(per_day: u64) -> Self {
        Self {
            per_day,
            used: Mutex::new((utc_day(), HashMap::new())),
        }
    }

    pub fn per_day(&self) -> u64 {
        self.per_day
    }

    fn with<R>(&self, key: &str, f: impl FnOnce(&mut u64) -> R) -> R {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let today = utc_day();
        if used.0 != today {
            *used = (today, HashMap::new());
        }
        let map = &mut used.1;
        let key = if map.contains_key(key) || map.len() < MAX_ADDRESSES {
            key
        } else {
            OTHERS
        };
        f(map.entry(key.to_string()).or_insert(0))
    }

    /// Tokens `key` has left today (`u64::MAX` when unlimited).
    pub fn remaining(&self, key: &str) -> u64 {
        if self.per_day == 0 {
            return u64::MAX;
        }
        let per_day = self.per_day;
        self.with(key, |used| per_day.saturating_sub(*used))
    }

    /// Like [`TokenBudget::try_spend`], for `key`.
    pub fn try_spend(&self, key: &str, tokens: u64) -> Result<(), u64> {
        if self.per_day == 0 {
            return Ok(());
        }
        let per_day = self.per_day;
        self.with(key, |used| {
            let left = per_day.saturating_sub(*used);
            if tokens > left {
                return Err(left);
            }
            *used += tokens;
            Ok(())
        })
    }

    /// Records `tokens` for `key`; returns what `key` has left today.
    pub fn spend(&self, key: &str, tokens: u64) -> u64 {
        if self.per_day == 0 {
            return u64::MAX;
        }
        let per_day = self.per_day;
        self.with(key, |used| {
            *used = used.saturating_add(tokens);
            per_day.saturating_sub(*used)
        })
    }

    pub fn refund(&self, key: &str, tokens: u64) {
        if self.per_day == 0 {
            return;
        }
        self.with(key, |used| *used = used.saturating_sub(tokens));
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

/// Tokens a prompt costs, estimated before it is sent: its text plus a few tokens of
/// framing per message (as chat templates add).
pub fn approx_prompt_tokens<'a>(contents: impl IntoIterator<Item = &'a str>) -> u64 {
    contents
        .into_iter()
        .map(|c| (c.chars().count() as u64).div_ceil(4) + 4)
        .sum::<u64>()
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(approx_prompt_tokens(["Hello", ""]), 2 + 4 + 4);
        assert_eq!(b.try_spend(1), Err(0));
        b.refund(7); // 14 used: 7
        assert_eq!(b.try_spend(4), Err(3));
        assert_eq!(b.try_spend(3), Ok(()));
    }

    #[test]
    fn address_budgets_are_separate_and_bounded() {
        let b = AddressBudgets::new(10);
        assert_eq!(b.try_spend("a", 8), Ok(()));
        assert_eq!(
            b.try_spend("a", 3),
            Err(2),
            "over a's budget: nothing taken"
        );
        assert_eq!(b.remaining("a"), 2);
        assert_eq!(b.try_spend("b", 10), Ok(()), "b has its own");
        assert_eq!(b.spend("a", 5), 0);
        b.refund("a", 4); // 13 used: 9
        assert_eq!(b.remaining("a"), 1);
        assert_eq!(AddressBudgets::new(0).try_spend("a", u64::MAX), Ok(()));
    }

    #[test]
    fn ipv6_clients_are_grouped_by_their_64_and_mapped_v4_is_v4() {
        let k = |s: &str| address_key(s.parse().expect("ip"));
        assert_eq!(k("2001:db8:1:2:aaaa::1"), k("2001:db8:1:2:bbbb::2"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_eq!(k("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(k("192.0.2.7"), "192.0.2.7");
    }

    #[test]
    fn log_safe_escapes_and_cuts() {
        assert_eq!(log_safe("a\nb\"c", 100), "a\\nb\\\"c");
        assert_eq!(log_safe("abcdef", 3), "abc…");
    }
}
