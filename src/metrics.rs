//! The Prometheus registry and every metric (PRODUCT.md §9), named once. Labels hold bounded
//! values only: a credential kind, an outcome, an error code, a backend, an operation; never a
//! user, token, id or path. The per-decision counters are resolved up front, so counting a
//! request is one atomic add with no label lookup and no lock.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::error::AuthError;
use crate::model::CredentialKind;

/// `method` label values: a credential kind, or `none`.
const METHODS: [&str; 4] = ["none", "user_token", "ticket", "session"];

pub struct Metrics {
    registry: Registry,
    /// [method][0 = ok, 1 + error index]
    decisions: Vec<Vec<IntCounter>>,
    pub auth_duration: Histogram,
    cache_lookups: IntCounterVec,
    store_requests: IntCounterVec,
    pub store_duration: Histogram,
    pub store_up: IntGauge,
    /// Changes made on this replica.
    pub invalidations_local: IntCounter,
    /// Changes announced by another replica.
    pub invalidations_remote: IntCounter,
    /// Whole-cache drops after the subscription was lost or restored.
    pub invalidations_resync: IntCounter,
    upstream_requests: IntCounterVec,
    pub upstream_duration: Histogram,
    credentials_issued: IntCounterVec,
    revocations: IntCounterVec,
    cache_entries: IntGaugeVec,
    store_calls: AtomicU64,
    /// Since when the store has not been reached (milliseconds after `born`, plus one); 0 while
    /// it answers.
    store_down_since: AtomicU64,
    store_ever_reached: std::sync::atomic::AtomicBool,
    born: std::time::Instant,
}

fn method_index(kind: Option<CredentialKind>) -> usize {
    match kind {
        None => 0,
        Some(CredentialKind::UserToken) => 1,
        Some(CredentialKind::Ticket) => 2,
        Some(CredentialKind::Session) => 3,
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let decisions_vec = IntCounterVec::new(
            Opts::new(
                "tokengate_auth_decisions_total",
                "Authentication decisions, by credential kind, outcome and reason.",
            ),
            &["method", "outcome", "reason"],
        )?;
        registry.register(Box::new(decisions_vec.clone()))?;
        let mut decisions = Vec::new();
        for method in METHODS {
            let mut row = vec![decisions_vec.with_label_values(&[method, "allow", "ok"])];
            for e in AuthError::ALL {
                row.push(decisions_vec.with_label_values(&[method, e.outcome(), e.code()]));
            }
            decisions.push(row);
        }
        // Microseconds to tens of milliseconds: a cache hit to a slow store round trip.
        let auth_buckets = vec![
            5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2,
        ];
        let auth_duration = Histogram::with_opts(
            HistogramOpts::new(
                "tokengate_auth_duration_seconds",
                "Time to decide a request, from credential lookup to decision.",
            )
            .buckets(auth_buckets.clone()),
        )?;
        registry.register(Box::new(auth_duration.clone()))?;
        let cache_lookups = IntCounterVec::new(
            Opts::new(
                "tokengate_cache_lookups_total",
                "Cache lookups by record kind and result.",
            ),
            &["kind", "result"],
        )?;
        registry.register(Box::new(cache_lookups.clone()))?;
        let store_requests = IntCounterVec::new(
            Opts::new(
                "tokengate_store_requests_total",
                "Store requests by backend, operation and result.",
            ),
            &["backend", "op", "result"],
        )?;
        registry.register(Box::new(store_requests.clone()))?;
        let store_duration = Histogram::with_opts(
            HistogramOpts::new("tokengate_store_duration_seconds", "Store request latency.")
                .buckets(auth_buckets),
        )?;
        registry.register(Box::new(store_duration.clone()))?;
        let store_up = IntGauge::new(
            "tokengate_store_up",
            "1 when the store answered its last request.",
        )?;
        registry.register(Box::new(store_up.clone()))?;
        let invalidations = IntCounterVec::new(
            Opts::new(
                "tokengate_invalidations_total",
                "Cache invalidations by source.",
            ),
            &["source"],
        )?;
        registry.register(Box::new(invalidations.clone()))?;
        let upstream_requests = IntCounterVec::new(
            Opts::new(
                "tokengate_upstream_requests_total",
                "Requests forwarded upstream, by status class.",
            ),
            &["status_class"],
        )?;
        registry.register(Box::new(upstream_requests.clone()))?;
        let upstream_duration = Histogram::with_opts(
            HistogramOpts::new(
                "tokengate_upstream_duration_seconds",
                "Upstream response time.",
            )
            .buckets(vec![
                1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        registry.register(Box::new(upstream_duration.clone()))?;
        let credentials_issued = IntCounterVec::new(
            Opts::new(
                "tokengate_credentials_issued_total",
                "Credentials issued, by kind.",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(credentials_issued.clone()))?;
        let revocations = IntCounterVec::new(
            Opts::new(
                "tokengate_revocations_total",
                "Credentials revoked, deactivated or deleted, by kind.",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(revocations.clone()))?;
        let cache_entries = IntGaugeVec::new(
            Opts::new(
                "tokengate_cache_entries",
                "Records in the in-process cache, by kind (found and known absent).",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(cache_entries.clone()))?;
        Ok(Self {
            registry,
            decisions,
            auth_duration,
            cache_lookups,
            store_requests,
            store_duration,
            store_up,
            invalidations_local: invalidations.with_label_values(&["local"]),
            invalidations_remote: invalidations.with_label_values(&["remote"]),
            invalidations_resync: invalidations.with_label_values(&["resync"]),
            upstream_requests,
            upstream_duration,
            credentials_issued,
            revocations,
            cache_entries,
            store_calls: AtomicU64::new(0),
            store_down_since: AtomicU64::new(0),
            store_ever_reached: std::sync::atomic::AtomicBool::new(false),
            born: std::time::Instant::now(),
        })
    }

    pub fn decision(&self, method: Option<CredentialKind>, result: Result<(), AuthError>) {
        let reason = match result {
            Ok(()) => 0,
            Err(e) => 1 + e as usize,
        };
        if let Some(c) = self
            .decisions
            .get(method_index(method))
            .and_then(|row| row.get(reason))
        {
            c.inc();
        }
    }

    /// `result`: `hit`, `miss`, or `stale` (a kept copy served while the store is down).
    pub fn cache_lookup(&self, kind: &'static str, result: &'static str) -> IntCounter {
        self.cache_lookups.with_label_values(&[kind, result])
    }

    /// Whether the last store call reached the store (`tokengate_store_up`).
    pub fn store_reached(&self, reached: bool) {
        self.store_up.set(i64::from(reached));
        if reached {
            self.store_down_since.store(0, Ordering::Relaxed);
            self.store_ever_reached.store(true, Ordering::Relaxed);
        } else {
            let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
            let _ = self.store_down_since.compare_exchange(
                0,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Whether the store has answered since the process started.
    pub fn store_ever_reached(&self) -> bool {
        self.store_ever_reached.load(Ordering::Relaxed)
    }

    /// How long the store has been out of reach, if it is.
    pub fn store_down_for(&self) -> Option<std::time::Duration> {
        match self.store_down_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(
                self.born
                    .elapsed()
                    .saturating_sub(std::time::Duration::from_millis(since - 1)),
            ),
        }
    }

    pub fn store_request(&self, backend: &str, op: &str, ok: bool) {
        self.store_requests
            .with_label_values(&[backend, op, if ok { "ok" } else { "error" }])
            .inc();
        self.store_calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Store requests of every kind so far (what a test counts).
    pub fn store_requests_total(&self) -> u64 {
        self.store_calls.load(Ordering::Relaxed)
    }

    pub fn upstream_response(&self, status: u16) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.upstream_requests.with_label_values(&[class]).inc();
    }

    /// An upstream that gave no answer (unreachable, reset, timed out): `status_class="error"`.
    pub fn upstream_failed(&self) {
        self.upstream_requests.with_label_values(&["error"]).inc();
    }

    /// `n` credentials of `kind` revoked, deactivated or deleted.
    pub fn revoked(&self, kind: &str, n: usize) {
        self.revocations
            .with_label_values(&[kind])
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// How many records the cache holds of `kind` (set when metrics are scraped).
    pub fn cache_size(&self, kind: &str, entries: u64) {
        self.cache_entries
            .with_label_values(&[kind])
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    pub fn issued(&self, kind: &str) {
        self.credentials_issued.with_label_values(&[kind]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
