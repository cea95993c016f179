//! Failed credentials per client address (`limits.failures_per_minute`): past the limit, the
//! client's failed credentials are answered `429 too_many_failures` for the rest of its
//! minute, and so are its sign-in attempts, right password or not. Valid credentials still
//! pass. Nothing is read or written for a request whose credential is good. A blocked client
//! may make the store look up `per_minute` more uncached credentials a minute; past that it is
//! answered from the cache alone.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a count lives: a client's minute.
const WINDOW: Duration = Duration::from_secs(60);

pub struct FailureLimiter {
    per_minute: u32,
    /// Failures counted since the client's first failure in its current minute.
    counts: moka::sync::Cache<IpAddr, Arc<AtomicU32>>,
    /// Store lookups a blocked client has made in its current minute.
    lookups: moka::sync::Cache<IpAddr, Arc<AtomicU32>>,
    /// When a client last went past its limit, in whole seconds since `started`, plus one
    /// (0: never). Lets a request find out that nobody is blocked with one atomic load
    /// instead of a lookup (which moka counts as a read, a shared write).
    last_block: AtomicU64,
    started: Instant,
}

impl FailureLimiter {
    /// `per_minute = 0` turns the limiter off.
    pub fn new(per_minute: u32) -> Self {
        let per_client = || {
            moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(WINDOW)
                .build()
        };
        Self {
            per_minute,
            counts: per_client(),
            lookups: per_client(),
            last_block: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Whether any client may be blocked now: false when none went past its limit within
    /// the last minute (a count lives a minute from the client's first failure, so a block
    /// never outlives the minute after it began).
    pub fn anyone_blocked(&self) -> bool {
        match self.last_block.load(Ordering::Relaxed) {
            0 => false,
            at => self.started.elapsed().as_secs() < at + WINDOW.as_secs(),
        }
    }

    /// Whether this client has used up its failures for now.
    pub fn is_blocked(&self, client: Option<IpAddr>) -> bool {
        match client {
            Some(ip) if self.per_minute > 0 => self
                .counts
                .get(&ip)
                .is_some_and(|c| c.load(Ordering::Relaxed) >= self.per_minute),
            _ => false,
        }
    }

    /// A blocked client's lookup of a credential the cache doesn't hold: allowed `per_minute`
    /// times a minute. A valid credential among its requests is still looked up, but a client
    /// that keeps failing past its limit can't make the store read more than that.
    pub fn spend_lookup(&self, client: Option<IpAddr>) -> bool {
        let Some(ip) = client.filter(|_| self.per_minute > 0) else {
            return true;
        };
        let spent = self.lookups.get_with(ip, || Arc::new(AtomicU32::new(0)));
        spent.fetch_add(1, Ordering::Relaxed) < self.per_minute
    }

    /// Counts a failure; true when it took the client past its limit.
    pub fn record(&self, client: Option<IpAddr>) -> bool {
        let Some(ip) = client.filter(|_| self.per_minute > 0) else {
            return false;
        };
        let count = self.counts.get_with(ip, || Arc::new(AtomicU32::new(0)));
        let failures = count.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.per_minute {
            // From this failure on, is_blocked is true for the client.
            let now = self.started.elapsed().as_secs() + 1;
            self.last_block.fetch_max(now, Ordering::Relaxed);
        }
        failures > self.per_minute
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_client_gets_as_many_lookups_again_and_no_more() {
        let l = FailureLimiter::new(2);
        let ip = Some("203.0.113.9".parse().unwrap());
        assert_eq!(
            (l.spend_lookup(ip), l.spend_lookup(ip), l.spend_lookup(ip)),
            (true, true, false)
        );
        assert!(l.spend_lookup(Some("203.0.113.10".parse().unwrap())));
        assert!(
            FailureLimiter::new(0).spend_lookup(ip),
            "no limit, no budget"
        );
    }

    #[test]
    fn a_client_is_blocked_past_its_limit_and_others_are_not() {
        let l = FailureLimiter::new(2);
        let (a, b) = (
            Some("10.0.0.1".parse().unwrap()),
            Some("10.0.0.2".parse().unwrap()),
        );
        assert!(!l.record(a));
        assert!(!l.is_blocked(a));
        assert!(!l.anyone_blocked(), "nobody has reached the limit yet");
        assert!(!l.record(a));
        assert!(l.is_blocked(a));
        assert!(l.anyone_blocked());
        assert!(l.record(a));
        assert!(!l.is_blocked(b));
        assert!(!FailureLimiter::new(0).record(a));
    }
}
