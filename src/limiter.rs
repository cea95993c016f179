//! Failed credentials per client address (`limits.failures_per_minute`): past the limit, the
//! client's failed credentials are answered `429 too_many_failures` for the rest of its
//! minute, and so are its sign-in attempts, right password or not. Valid credentials still
//! pass. Nothing is read or written for a request whose credential is good.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub struct FailureLimiter {
    per_minute: u32,
    /// Failures counted since the client's first failure in its current minute.
    counts: moka::sync::Cache<IpAddr, Arc<AtomicU32>>,
}

impl FailureLimiter {
    /// `per_minute = 0` turns the limiter off.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            counts: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
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

    /// Counts a failure; true when it took the client past its limit.
    pub fn record(&self, client: Option<IpAddr>) -> bool {
        let Some(ip) = client.filter(|_| self.per_minute > 0) else {
            return false;
        };
        let count = self.counts.get_with(ip, || Arc::new(AtomicU32::new(0)));
        count.fetch_add(1, Ordering::Relaxed) + 1 > self.per_minute
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_blocked_past_its_limit_and_others_are_not() {
        let l = FailureLimiter::new(2);
        let (a, b) = (
            Some("10.0.0.1".parse().unwrap()),
            Some("10.0.0.2".parse().unwrap()),
        );
        assert!(!l.record(a));
        assert!(!l.is_blocked(a));
        assert!(!l.record(a));
        assert!(l.is_blocked(a));
        assert!(l.record(a));
        assert!(!l.is_blocked(b));
        assert!(!FailureLimiter::new(0).record(a));
    }
}
