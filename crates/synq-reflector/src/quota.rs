//! Byte quotas of the file store: one for everything stored, one per client address for
//! what it uploads over time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bytes stored in total. Uploads reserve their bytes as they arrive (so that uploads in
/// flight cannot together overshoot the disk budget) and give them back when nothing is
/// kept (refused, failed, or the same file was already there).
#[derive(Debug)]
pub struct StoreQuota {
    limit: u64,
    used: AtomicU64,
}

impl StoreQuota {
    /// `limit == 0` means unlimited.
    pub fn new(limit: u64, used: u64) -> StoreQuota {
        StoreQuota {
            limit,
            used: AtomicU64::new(used),
        }
    }

    /// Reserves `n` bytes, or says no if that would pass the limit.
    pub fn reserve(&self, n: u64) -> bool {
        if self.limit == 0 {
            self.used.fetch_add(n, Ordering::Relaxed);
            return true;
        }
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(n).filter(|&t| t <= self.limit)
            })
            .is_ok()
    }

    pub fn release(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }
}

/// Upload bytes per address group (see [`crate::peer::group`]) as a token bucket holding
/// `bytes` and refilled at `bytes` per `window`: an address may upload its quota at once,
/// then at the average rate. Bytes count as they are received, stored or not.
#[derive(Debug)]
pub struct AddressQuota {
    bytes: u64,
    window: Duration,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Past this many addresses, full buckets (addresses idle for a window) are forgotten.
const PRUNE_AT: usize = 10_000;

impl AddressQuota {
    /// `bytes == 0` means unlimited.
    pub fn new(bytes: u64, window: Duration) -> AddressQuota {
        AddressQuota {
            bytes,
            window: window.max(Duration::from_secs(1)),
            buckets: Mutex::default(),
        }
    }

    /// Takes `n` bytes from `addr`'s allowance, or says how long until they would be there.
    pub fn take(&self, addr: IpAddr, n: u64) -> Result<(), Duration> {
        if self.bytes == 0 {
            return Ok(());
        }
        let cap = self.bytes as f64;
        let per_sec = cap / self.window.as_secs_f64();
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= PRUNE_AT {
            buckets
                .retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * per_sec < cap);
        }
        let b = buckets.entry(crate::peer::group(addr)).or_insert(Bucket {
            tokens: cap,
            last: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * per_sec).min(cap);
        b.last = now;
        let n = n as f64;
        if b.tokens >= n {
            b.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(((n - b.tokens) / per_sec).min(1e9)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_quota_reserves_up_to_its_limit() {
        let q = StoreQuota::new(100, 40);
        assert!(q.reserve(60));
        assert!(!q.reserve(1));
        q.release(10);
        assert!(q.reserve(10));
        assert_eq!(q.used(), 100);
    }

    #[test]
    fn address_quota_is_per_64() {
        let q = AddressQuota::new(100, Duration::from_secs(3600));
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        let c: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(q.take(a, 80).is_ok());
        assert!(q.take(b, 30).is_err(), "same /64 shares the quota");
        assert!(q.take(c, 100).is_ok());
    }
}
