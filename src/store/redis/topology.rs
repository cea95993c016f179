//! Where the Redis store lives and how to reach it: one server, a Redis Cluster, or a master
//! found through Sentinel, read from `store.url`. Owns the connection each mode needs ([`Conn`],
//! one `ConnectionLike` for the rest of the backend) and the pub/sub connections of the
//! invalidation listener ([`Subscriber`]). Knows nothing of records or keys beyond the one
//! hash slot every key lives in.
//!
//! URL forms:
//! - `redis://[user:password@]host:port[/db]`: one server; `rediss://` for one over TLS
//!   (rustls), verified against the system's CAs or `store.ca_file`'s.
//! - `redis+cluster://[user:password@]host:port,host:port[/]`: a Redis Cluster, by seed nodes.
//! - `redis+sentinel://[user:password@]host:port,host:port/<master-name>[/<db>]`: the master
//!   that the sentinels name; the credentials are the Redis servers', the sentinels are asked
//!   with `store.sentinel_password` (none when unset).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionInfo, ErrorKind, IntoConnectionInfo, Pipeline,
    RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};

/// How long connecting to one server may take, and one answer.
const CONNECT: Duration = Duration::from_secs(1);
const RESPONSE: Duration = Duration::from_millis(500);
/// A cluster request with its redirections and retries (a slot moving, a failover).
const CLUSTER_REQUEST: Duration = Duration::from_millis(1500);
/// Asking the sentinels for the master and connecting to it.
const SENTINEL_LOOKUP: Duration = Duration::from_secs(2);

const CLUSTER_SCHEME: &str = "redis+cluster://";
const SENTINEL_SCHEME: &str = "redis+sentinel://";

/// A `store.url`, read and checked; nothing is connected yet.
#[derive(Clone)]
pub enum Topology {
    Single(Arc<redis::Client>),
    Cluster(Arc<ClusterTarget>),
    Sentinel(Arc<SentinelTarget>),
}

pub struct ClusterTarget {
    client: ClusterClient,
    /// The seed nodes, in the URL's order: where the listener subscribes.
    nodes: Vec<ConnectionInfo>,
}

impl Topology {
    /// Reads `url`. The error never repeats the URL: it may hold a password.
    pub fn parse(url: &str) -> Result<Self, String> {
        Self::parse_with(url, None, None)
    }

    /// Reads `url`; a `rediss://` server is verified against `ca` (PEM) when given, and the
    /// sentinels of a `redis+sentinel://` URL are asked with `sentinel_password`.
    pub fn parse_with(
        url: &str,
        ca: Option<Vec<u8>>,
        sentinel_password: Option<&str>,
    ) -> Result<Self, String> {
        if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
            parse_cluster(rest)
        } else if let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) {
            parse_sentinel(rest, sentinel_password)
        } else if url.starts_with("redis://") || url.starts_with("rediss://") {
            let client = if url.starts_with("rediss://") {
                // rustls needs its process-wide crypto provider (the one Pingora uses).
                pingora::tls::install_default_crypto_provider();
                match ca {
                    Some(root_cert) => redis::Client::build_with_tls(
                        url,
                        redis::TlsCertificates {
                            client_tls: None,
                            root_cert: Some(root_cert),
                        },
                    ),
                    None => redis::Client::open(url),
                }
            } else {
                redis::Client::open(url)
            };
            client
                .map(|c| Self::Single(Arc::new(c)))
                .map_err(|e| format!("not a Redis URL ({})", describe(&e)))
        } else {
            Err(format!(
                "expected redis://host:port/db, {CLUSTER_SCHEME}host:port,host:port or \
                 {SENTINEL_SCHEME}host:port,host:port/master-name/db"
            ))
        }
    }

    /// Makes the connection of this topology (the sentinel one connects on its first command).
    pub async fn connect(&self) -> RedisResult<Conn> {
        Ok(match self {
            Self::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT))
                    .set_response_timeout(Some(RESPONSE))
                    .set_number_of_retries(1);
                Conn::Single(client.get_connection_manager_with_config(config).await?)
            }
            Self::Cluster(target) => Conn::Cluster(target.client.get_async_connection().await?),
            Self::Sentinel(target) => Conn::Sentinel(Arc::new(SentinelMaster {
                target: target.clone(),
                current: Mutex::default(),
                connecting: tokio::sync::Mutex::new(()),
            })),
        })
    }

    /// Where the invalidation listener subscribes.
    pub fn subscriber(&self) -> Subscriber {
        Subscriber(self.clone())
    }
}

/// redis-rs's reason: it names what is wrong and never repeats the URL.
fn describe(e: &RedisError) -> String {
    e.to_string()
}

/// `[user:password@]host:port,host:port` and what follows it (from the first `/` or `?`).
fn split_authority(rest: &str) -> Result<(Option<&str>, Vec<&str>, &str), String> {
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (credentials, hosts) = match authority.rsplit_once('@') {
        Some((c, h)) => (Some(c), h),
        None => (None, authority),
    };
    let hosts: Vec<&str> = hosts.split(',').collect();
    if hosts.iter().any(|h| h.trim().is_empty()) {
        return Err("expected host:port[,host:port...] after the scheme".into());
    }
    if tail.contains('?') {
        return Err("query parameters are not supported here".into());
    }
    Ok((credentials, hosts, tail))
}

/// One `redis://` node, with `default_port` when the host names none.
fn node(
    credentials: Option<&str>,
    host: &str,
    default_port: u16,
) -> Result<ConnectionInfo, String> {
    let has_port = match host.rsplit_once(']') {
        Some((_, after)) => after.starts_with(':'), // [v6]:port
        None => host.contains(':'),
    };
    let host = if has_port {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    };
    let auth = credentials.map(|c| format!("{c}@")).unwrap_or_default();
    format!("redis://{auth}{host}/")
        .into_connection_info()
        .map_err(|e| format!("a node is not host:port ({})", describe(&e)))
}

fn parse_cluster(rest: &str) -> Result<Topology, String> {
    let (credentials, hosts, path) = split_authority(rest)?;
    if !matches!(path, "" | "/" | "/0") {
        return Err("a Redis Cluster has only database 0: no path after the nodes".into());
    }
    let nodes = hosts
        .iter()
        .map(|h| node(credentials, h, 6379))
        .collect::<Result<Vec<_>, _>>()?;
    let client = ClusterClient::builder(nodes.clone())
        .connection_timeout(CONNECT)
        .response_timeout(RESPONSE)
        .overall_response_timeout(Some(CLUSTER_REQUEST))
        // Retries are for redirections and failovers; a write that may have run is not one.
        .retries(2)
        .build()
        .map_err(|e| format!("not a Redis Cluster URL ({})", describe(&e)))?;
    Ok(Topology::Cluster(Arc::new(ClusterTarget { client, nodes })))
}

fn parse_sentinel(rest: &str, sentinel_password: Option<&str>) -> Result<Topology, String> {
    const FORM: &str = "expected /<master-name>[/<db>] after the sentinels";
    let (credentials, hosts, path) = split_authority(rest)?;
    let mut parts = path.strip_prefix('/').ok_or(FORM)?.split('/');
    let master = parts.next().unwrap_or_default();
    if master.is_empty() || master.contains(char::is_whitespace) {
        return Err(FORM.into());
    }
    let db = match parts.next() {
        None | Some("") => 0,
        Some(db) => db
            .parse::<i64>()
            .ok()
            .filter(|db| *db >= 0)
            .ok_or("the database after the master name is not a number")?,
    };
    if parts.next().is_some_and(|p| !p.is_empty()) || parts.next().is_some() {
        return Err(FORM.into());
    }
    let sentinels = hosts
        .iter()
        .map(|h| {
            let sentinel = node(None, h, 26379)?;
            Ok(match sentinel_password {
                Some(password) => {
                    let auth = sentinel.redis_settings().clone().set_password(password);
                    sentinel.set_redis_settings(auth)
                }
                None => sentinel,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    // The credentials (if any) are the Redis servers': read them as one node's.
    let redis = node(credentials, hosts[0], 26379)?
        .redis_settings()
        .clone()
        .set_db(db);
    Ok(Topology::Sentinel(Arc::new(SentinelTarget {
        sentinels,
        master: master.to_owned(),
        db,
        node: SentinelNodeConnectionInfo::default().set_redis_connection_info(redis),
    })))
}

/// The sentinels and the name of the master they watch.
pub struct SentinelTarget {
    sentinels: Vec<ConnectionInfo>,
    master: String,
    db: i64,
    node: SentinelNodeConnectionInfo,
}

impl SentinelTarget {
    /// A client of the master the sentinels name now. A new `SentinelClient` each time: its
    /// connections to the sentinels then belong to the runtime that asks (this is rare: at
    /// start and after a failover).
    async fn master(&self) -> RedisResult<redis::Client> {
        let mut sentinel = SentinelClient::build(
            self.sentinels.clone(),
            self.master.clone(),
            Some(self.node.clone()),
            SentinelServerType::Master,
        )?;
        within(SENTINEL_LOOKUP, sentinel.async_get_client()).await
    }
}

async fn within<T>(limit: Duration, f: impl Future<Output = RedisResult<T>>) -> RedisResult<T> {
    tokio::time::timeout(limit, f).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out").into())
    })
}

/// A connection-type failure: Redis can't answer now, or not from this node.
pub fn is_unavailable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::MasterNameNotFoundBySentinel
                | ErrorKind::NoValidReplicasFoundBySentinel
                | ErrorKind::EmptySentinelList
                | ErrorKind::Server(
                    ServerErrorKind::ClusterDown
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                        | ServerErrorKind::BusyLoading
                )
        )
}

/// The one connection of a store, whatever the topology.
#[derive(Clone)]
pub enum Conn {
    /// Reconnects by itself.
    Single(ConnectionManager),
    /// Follows the slot map and reconnects by itself.
    Cluster(ClusterConnection),
    /// Asks the sentinels again after a connection-type failure.
    Sentinel(Arc<SentinelMaster>),
}

/// Every key shares one hash slot (see `PREFIX` in the parent module), so every command goes to
/// the master serving it: scripts, multi-key reads, and PING (which then checks the node that
/// matters, not every node). PUBLISH goes there too and still reaches every node.
fn cluster_route() -> SingleNodeRoutingInfo {
    SingleNodeRoutingInfo::SpecificNode(Route::with_key(super::PREFIX, SlotAddr::Master))
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => Box::pin(async move {
                let route = RoutingInfo::SingleNode(cluster_route());
                c.route_command(cmd.clone(), route).await
            }),
            Self::Sentinel(m) => Box::pin(async move {
                let (generation, mut c) = m.connection().await?;
                let answer = c.req_packed_command(cmd).await;
                m.check(generation, &answer);
                answer
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => Box::pin(async move {
                c.route_pipeline(pipeline.clone(), offset, count, cluster_route())
                    .await
            }),
            Self::Sentinel(m) => Box::pin(async move {
                let (generation, mut c) = m.connection().await?;
                let answer = c.req_packed_commands(pipeline, offset, count).await;
                m.check(generation, &answer);
                answer
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
            Self::Sentinel(m) => m.target.db,
        }
    }
}

/// A connection to the master the sentinels name, replaced after a connection-type failure
/// (a failover kills the old master's clients; a demoted master answers READONLY).
pub struct SentinelMaster {
    target: Arc<SentinelTarget>,
    current: Mutex<Current>,
    /// One lookup at a time; the callers that waited for it share its outcome.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Current {
    /// Counts connections made, so that a failure seen on an older connection does not throw
    /// away a newer one.
    generation: u64,
    conn: Option<MultiplexedConnection>,
    /// Counts lookups, so that callers waiting while one failed get its error instead of each
    /// asking the sentinels again (one after another, while Redis may be down).
    lookups: u64,
    failure: Option<RedisError>,
}

impl SentinelMaster {
    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        let lookups = {
            let current = self.current();
            if let Some(c) = &current.conn {
                return Ok((current.generation, c.clone()));
            }
            current.lookups
        };
        let _one = self.connecting.lock().await;
        {
            let current = self.current();
            if let Some(c) = &current.conn {
                return Ok((current.generation, c.clone()));
            }
            if current.lookups != lookups
                && let Some(e) = &current.failure
            {
                return Err(e.clone());
            }
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT))
            .set_response_timeout(Some(RESPONSE));
        let connect = async {
            let client = self.target.master().await?;
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await
        };
        let made = within(SENTINEL_LOOKUP, connect).await;
        let mut current = self.current();
        current.lookups += 1;
        match made {
            Ok(c) => {
                current.generation += 1;
                current.conn = Some(c.clone());
                current.failure = None;
                Ok((current.generation, c))
            }
            Err(e) => {
                current.failure = Some(e.clone());
                Err(e)
            }
        }
    }

    /// After a connection-type failure, the next command asks the sentinels again.
    fn check<T>(&self, generation: u64, answer: &RedisResult<T>) {
        let Err(e) = answer else { return };
        if !is_unavailable(e) {
            return;
        }
        let mut current = self.current();
        if current.generation == generation && current.conn.take().is_some() {
            tracing::warn!(error = %e, "lost the Redis master; asking the sentinels again");
        }
    }
}

/// Makes pub/sub connections for the invalidation listener (`crate::bus`), a fresh one each
/// time, on a server that hears every PUBLISH: the one server; any node of a cluster (the
/// first seed that answers: PUBLISH reaches every node); or the master the sentinels name now.
#[derive(Clone)]
pub struct Subscriber(Topology);

impl Subscriber {
    pub async fn pubsub(&self) -> RedisResult<redis::aio::PubSub> {
        match &self.0 {
            Topology::Single(client) => client.get_async_pubsub().await,
            Topology::Cluster(target) => {
                let mut last = None;
                for node in &target.nodes {
                    let client = redis::Client::open(node.clone())?;
                    match within(CONNECT, client.get_async_pubsub()).await {
                        Ok(pubsub) => return Ok(pubsub),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    RedisError::from((ErrorKind::ClusterConnectionNotFound, "no cluster node"))
                }))
            }
            Topology::Sentinel(target) => target.master().await?.get_async_pubsub().await,
        }
    }
}
