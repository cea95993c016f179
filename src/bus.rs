//! Invalidation across replicas: every change a replica makes is published on a Redis pub/sub
//! channel, and every replica listens and drops the record from its cache. A message names the
//! replica that sent it (which skips its own), the kind of record and its id; never a secret.
//!
//! The subscription is the only way a replica hears of changes, so losing it is handled as
//! "changes may have been missed": the cache is emptied when the subscription drops, and again
//! once it is back (the copies kept for stale serving stay: they are read only while the store
//! can't be reached). A silent connection is found by a PING every second.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::cache::Invalidation;
use crate::engine::Engine;
use crate::store::redis::Subscriber;

/// How often a silent subscription is checked, and how long a PING may take.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long subscribing may take: asking the sentinels for the master first, or trying a
/// cluster's seed nodes in turn, takes longer than connecting to one server.
const SUBSCRIBE: Duration = Duration::from_secs(5);
/// Reconnection waits, doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_LAST: Duration = Duration::from_secs(2);

/// `<replica> <kind> <id>`.
pub fn encode(replica: &str, what: &Invalidation) -> String {
    let (kind, id) = match what {
        Invalidation::User(id) => ("user", id),
        Invalidation::App(id) => ("app", id),
        Invalidation::UserToken(id) => ("user_token", id),
        Invalidation::Ticket(id) => ("ticket", id),
        Invalidation::Session(id) => ("session", id),
        Invalidation::AppToken(id) => ("app_token", id),
    };
    format!("{replica} {kind} {id}")
}

/// The sender and the change, or `None` for a message that isn't one of ours.
pub fn decode(message: &str) -> Option<(&str, Invalidation)> {
    let mut parts = message.splitn(3, ' ');
    let (replica, kind, id) = (parts.next()?, parts.next()?, parts.next()?.to_owned());
    let what = match kind {
        "user" => Invalidation::User(id),
        "app" => Invalidation::App(id),
        "user_token" => Invalidation::UserToken(id),
        "ticket" => Invalidation::Ticket(id),
        "session" => Invalidation::Session(id),
        "app_token" => Invalidation::AppToken(id),
        _ => return None,
    };
    Some((replica, what))
}

/// Listens for other replicas' changes (a Pingora background service).
pub struct Listener {
    engine: Arc<Engine>,
    subscriber: Subscriber,
    channel: &'static str,
}

impl Listener {
    pub fn new(engine: Arc<Engine>, subscriber: Subscriber, channel: &'static str) -> Self {
        Self {
            engine,
            subscriber,
            channel,
        }
    }

    /// One subscription, from connecting to losing it or shutting down.
    async fn subscribed(&self, shutdown: &mut ShutdownWatch) -> Ended {
        let connect = async {
            let mut pubsub = self.subscriber.pubsub().await?;
            pubsub.subscribe(self.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(SUBSCRIBE, connect).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Ended::Unreached(e.to_string()),
            Err(_) => return Ended::Unreached("timed out connecting".into()),
        };
        // Anything cached before now may have missed a change: start afresh. (The copies kept
        // for stale serving stay: they are read only while the store can't be reached, and the
        // main connection may come back later than this one.)
        self.engine.cache().resync(true);
        tracing::info!(
            channel = self.channel,
            "listening for other replicas' changes"
        );
        let (mut sink, mut stream) = pubsub.split();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else {
                        return Ended::Lost("subscription closed".into());
                    };
                    match message.get_payload::<String>() {
                        Ok(text) => self.engine.apply_remote(&text).await,
                        Err(e) => tracing::warn!(error = %e, "unreadable invalidation message"),
                    }
                }
                _ = heartbeat.tick() => {
                    match tokio::time::timeout(HEARTBEAT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Ended::Lost(e.to_string()),
                        Err(_) => return Ended::Lost("no answer to PING".into()),
                    }
                }
                _ = shutdown.changed() => return Ended::Shutdown,
            }
        }
    }
}

enum Ended {
    Shutdown,
    /// Couldn't subscribe.
    Unreached(String),
    /// Subscribed, then lost it.
    Lost(String),
}

#[async_trait]
impl BackgroundService for Listener {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut wait = RETRY_FIRST;
        loop {
            match self.subscribed(&mut shutdown).await {
                Ended::Shutdown => return,
                Ended::Lost(e) => {
                    tracing::warn!(error = %e, "lost the invalidation subscription; the cache is emptied until it is back");
                    wait = RETRY_FIRST;
                }
                Ended::Unreached(e) => {
                    tracing::debug!(error = %e, "can't subscribe to invalidations yet");
                }
            }
            // Changes may be missed until it is back: nothing cached is trusted. The copies
            // kept for stale serving stay: they are read only while the store is down.
            self.engine.cache().resync(true);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            wait = (wait * 2).min(RETRY_LAST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for what in [
            Invalidation::User("u 1".into()),
            Invalidation::App("bq1".into()),
            Invalidation::UserToken("ABCDEFGHIJKLMNOP".into()),
            Invalidation::Ticket("t".into()),
            Invalidation::Session("s".into()),
            Invalidation::AppToken("a".into()),
        ] {
            let message = encode("r1", &what);
            assert_eq!(decode(&message), Some(("r1", what)));
        }
        assert_eq!(decode("r1 nonsense x"), None);
        assert_eq!(decode("r1 user"), None);
    }
}
