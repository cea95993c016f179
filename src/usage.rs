//! When each credential was last used, recorded off the request path: a verified credential
//! marks its cached record (one atomic compare, no lock, no allocation) and at most once a
//! minute per credential hands its id to the [`Recorder`]; a background flusher writes what
//! gathered to the store in one batch per interval. No request ever waits for that write.
//!
//! So a last use is exact to the minute: the first use of a credential is written within the
//! flush interval, and a credential in constant use is written once a minute, not once per
//! request (at 10,000 busy tokens, once a second cost 2,000 store writes a second).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc};

use crate::store::SharedStore;

/// Which kind of credential a usage is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UsageKind {
    UserToken,
    Ticket,
    Session,
}

impl UsageKind {
    /// The key prefix the stores keep usage under.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserToken => "utok",
            Self::Ticket => "ticket",
            Self::Session => "session",
        }
    }
}

/// One credential's last use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub kind: UsageKind,
    pub id: String,
    pub at: DateTime<Utc>,
}

/// How often one credential's use is handed to the recorder, at most.
pub const RESOLUTION_SECS: i64 = 60;

/// Carried by a cached record: the second it was last handed to the recorder.
#[derive(Debug, Default)]
pub struct UseMark(AtomicI64);

impl UseMark {
    /// True once per [`RESOLUTION_SECS`] at most (and at the first use): the use is worth
    /// recording.
    fn should_record(&self, now_secs: i64) -> bool {
        let last = self.0.load(Ordering::Relaxed);
        (last == 0 || now_secs >= last + RESOLUTION_SECS)
            && self
                .0
                .compare_exchange(last, now_secs, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl Clone for UseMark {
    fn clone(&self) -> Self {
        Self(AtomicI64::new(self.0.load(Ordering::Relaxed)))
    }
}

/// Marks are bookkeeping, not data: two records never differ by them.
impl PartialEq for UseMark {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

const QUEUE: usize = 65_536;

/// Takes uses from the request path and writes them to the store in batches.
pub struct Recorder {
    tx: mpsc::Sender<Usage>,
    rx: Mutex<mpsc::Receiver<Usage>>,
    /// Uses gathered but not yet written (kept across a failed flush).
    pending: Mutex<HashMap<(UsageKind, String), DateTime<Utc>>>,
    store: SharedStore,
}

impl Recorder {
    pub fn new(store: SharedStore) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        Arc::new(Self {
            tx,
            rx: Mutex::new(rx),
            pending: Mutex::new(HashMap::new()),
            store,
        })
    }

    /// Notes a use of the credential whose cached record carries `mark`.
    pub fn touch(&self, mark: &UseMark, kind: UsageKind, id: &str, at: DateTime<Utc>) {
        if mark.should_record(at.timestamp()) {
            // A full queue drops the note: the next second's use brings it again.
            let _ = self.tx.try_send(Usage {
                kind,
                id: id.to_owned(),
                at,
            });
        }
    }

    /// Writes what has gathered; on a store error it is kept for the next flush.
    pub async fn flush(&self) {
        let mut pending = self.pending.lock().await;
        {
            let mut rx = self.rx.lock().await;
            while let Ok(u) = rx.try_recv() {
                let at = pending.entry((u.kind, u.id)).or_insert(u.at);
                *at = (*at).max(u.at);
            }
        }
        if pending.is_empty() {
            return;
        }
        let batch: Vec<Usage> = pending
            .iter()
            .map(|((kind, id), at)| Usage {
                kind: *kind,
                id: id.clone(),
                at: *at,
            })
            .collect();
        match self.store.record_usage(&batch).await {
            Ok(()) => pending.clear(),
            Err(e) => {
                tracing::warn!(error = %e, uses = batch.len(), "can't record last use yet; keeping it");
                if pending.len() > QUEUE {
                    pending.clear();
                }
            }
        }
    }

    /// Flushes every `interval` until `shutdown` says stop, then once more.
    pub async fn run(&self, interval: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush().await,
                _ = shutdown.changed() => break,
            }
        }
        self.flush().await;
    }
}

/// A record that carries a last use: how the stores find and fill it.
pub trait UsageRecord {
    fn usage_key(&self) -> String;
    fn set_last_use(&mut self, at: DateTime<Utc>);
}

/// `utok:{id}`, `ticket:{id}`: where a store keeps a credential's last use.
pub fn usage_key(kind: UsageKind, id: &str) -> String {
    format!("{}:{id}", kind.as_str())
}

impl UsageRecord for crate::model::UserToken {
    fn usage_key(&self) -> String {
        usage_key(UsageKind::UserToken, &self.id)
    }
    fn set_last_use(&mut self, at: DateTime<Utc>) {
        self.last_used_at = self.last_used_at.max(Some(at));
    }
}

impl UsageRecord for crate::model::Session {
    fn usage_key(&self) -> String {
        usage_key(UsageKind::Session, &self.id)
    }
    fn set_last_use(&mut self, at: DateTime<Utc>) {
        self.last_active_at = self.last_active_at.max(Some(at));
    }
}

impl UsageRecord for crate::model::Ticket {
    fn usage_key(&self) -> String {
        usage_key(UsageKind::Ticket, &self.id)
    }
    fn set_last_use(&mut self, at: DateTime<Utc>) {
        self.last_active_at = self.last_active_at.max(Some(at));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_lets_the_first_use_and_then_one_a_minute_through() {
        let m = UseMark::default();
        assert!(m.should_record(100));
        assert!(!m.should_record(100));
        assert!(!m.should_record(99));
        assert!(!m.should_record(100 + RESOLUTION_SECS - 1));
        assert!(m.should_record(100 + RESOLUTION_SECS));
        assert!(!m.should_record(101 + RESOLUTION_SECS));
    }
}
