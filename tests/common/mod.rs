//! Real parts for the integration tests: a `redis-server` on a free port (or a Redis Cluster, or
//! a master with a replica and a sentinel), a recording upstream over TCP, the real `tokengate`
//! binary, and a plain HTTP/1.1 client. Every process a test starts is stopped by its pid when
//! the test drops it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub mod certs;

pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";

pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port` (a readiness probe, bounded).
fn wait_for_port(port: u16, child: &mut Child, what: &str, log: Option<&std::path::Path>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = log
                .and_then(|l| std::fs::read_to_string(l).ok())
                .unwrap_or_default();
            panic!("{what} exited before it listened: {status}\n{log}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        thread::yield_now();
        thread::sleep(Duration::from_millis(5));
    }
}

/// Whether every socket listening on `port` (IPv4 or IPv6) belongs to process `pid`, and
/// there is one: a connection to the port can then reach no other process.
pub fn only_pid_listens(pid: u32, port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && f.get(3) == Some(&"0A") {
                inodes.extend(f.get(9).map(|i| format!("socket:[{i}]")));
            }
        }
    }
    let ours: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|l| l.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    !inodes.is_empty() && inodes.iter().all(|i| ours.contains(i))
}

/// A `redis-server` of our own, on a free port.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    persistent: bool,
    /// Speaking TLS only, with the certificates in this folder (see [`RedisServer::start_tls`]).
    tls: Option<PathBuf>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Keeping nothing on disk.
    pub fn start() -> Self {
        Self::launch(tempfile::tempdir().unwrap(), free_port(), false, None)
    }

    /// Writing every change to an append-only file, so a restart (after a kill) keeps the data.
    pub fn start_persistent() -> Self {
        Self::launch(tempfile::tempdir().unwrap(), free_port(), true, None)
    }

    /// Speaking TLS only (no plain port), keeping nothing on disk, with the certificate
    /// `redis.crt` / `redis.key` of the folder `certs` (and its `ca.crt`, which redis-server
    /// wants though it asks clients for no certificate).
    pub fn start_tls(certs: &std::path::Path) -> Self {
        Self::launch(
            tempfile::tempdir().unwrap(),
            free_port(),
            false,
            Some(certs.to_owned()),
        )
    }

    fn launch(dir: tempfile::TempDir, port: u16, persistent: bool, tls: Option<PathBuf>) -> Self {
        let mut cmd = Command::new("redis-server");
        match &tls {
            None => cmd.args(["--port", &port.to_string()]),
            Some(certs) => cmd
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(certs.join("redis.crt"))
                .arg("--tls-key-file")
                .arg(certs.join("redis.key"))
                .arg("--tls-ca-cert-file")
                .arg(certs.join("ca.crt"))
                .args(["--tls-auth-clients", "no"]),
        };
        cmd.args(["--bind", "127.0.0.1", "--save", ""]);
        if persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let mut child = cmd
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        wait_for_port(port, &mut child, "redis-server", None);
        Self {
            port,
            child,
            persistent,
            tls,
            dir,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// Kills this server (ours, by pid) in the middle of whatever is going on.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and files (after [`RedisServer::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let again = Self::launch(dir, self.port, self.persistent, self.tls.clone());
        let old = std::mem::replace(self, again);
        drop(old); // its process is already gone; its (new, empty) temporary directory goes
    }

    /// A connection of the test's own, to look at this server.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// Redis's own count of calls, by command (`INFO commandstats`).
    pub fn command_calls(&self) -> std::collections::HashMap<String, u64> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.connection())
            .unwrap();
        info.lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest.split(',').find_map(|f| f.strip_prefix("calls="))?;
                Some((name.to_owned(), calls.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it gives a value, for at most `within`; names `what` when it never does.
pub fn poll<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// One `redis-server` of a topology (a cluster node, a replica, a sentinel), on its own port and
/// in its own directory; stopped by its pid when dropped.
pub struct RedisProcess {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl RedisProcess {
    /// `redis-server` with a config file holding `config` (and the port, address and
    /// directory), then `args`.
    fn spawn(port: u16, config: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("redis.conf");
        let config = format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nsave \"\"\nappendonly no\n{config}\n",
            dir.path().display()
        );
        std::fs::write(&file, config).unwrap();
        let log = dir.path().join("redis.log");
        let mut child = Command::new("redis-server")
            .arg(&file)
            .args(args)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        wait_for_port(port, &mut child, "redis-server", Some(&log));
        Self { port, child, dir }
    }

    /// One command on a new connection (an error when the process can't be reached).
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> redis::RedisResult<T> {
        let mut c =
            redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?.get_connection()?;
        cmd.query(&mut c)
    }

    /// `INFO <section>` as `field -> value`.
    pub fn info(&self, section: &str) -> std::collections::HashMap<String, String> {
        let text: String = self
            .query(redis::cmd("INFO").arg(section))
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect()
    }

    /// Kills it (ours, by pid).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free port whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    poll(Duration::from_secs(10), "a free port pair", || {
        let port = free_port();
        let bus = port.checked_add(10_000)?;
        TcpListener::bind((Ipv4Addr::LOCALHOST, bus)).ok()?;
        Some(port)
    })
}

/// A Redis Cluster of three masters (no replicas) on free ports, every slot assigned.
pub struct RedisCluster {
    pub nodes: Vec<RedisProcess>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisProcess> = (0..3)
            .map(|_| {
                RedisProcess::spawn(
                    free_cluster_port(),
                    "cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 5000",
                    &[],
                )
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        for node in &cluster.nodes {
            poll(
                Duration::from_secs(30),
                "cluster_state:ok on every node",
                || {
                    let info: String = node.query(redis::cmd("CLUSTER").arg("INFO")).ok()?;
                    (info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3"))
                        .then_some(())
                },
            );
        }
        cluster
    }

    /// `redis+cluster://` with every node as a seed, node `first` first.
    pub fn url_from(&self, first: usize) -> String {
        let n = self.nodes.len();
        let seeds: Vec<String> = (0..n)
            .map(|i| format!("127.0.0.1:{}", self.nodes[(first + i) % n].port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    pub fn url(&self) -> String {
        self.url_from(0)
    }

    /// Which node serves `key`'s hash slot: the one that answers for it (the others answer
    /// MOVED).
    pub fn node_of(&self, key: &str) -> usize {
        let owners: Vec<usize> = (0..self.nodes.len())
            .filter(|i| {
                self.nodes[*i]
                    .query::<i64>(redis::cmd("EXISTS").arg(key))
                    .is_ok()
            })
            .collect();
        assert_eq!(owners.len(), 1, "one node serves {key}");
        owners[0]
    }

    /// How many keys each node holds.
    pub fn key_counts(&self) -> Vec<i64> {
        self.nodes
            .iter()
            .map(|n| n.query(&mut redis::cmd("DBSIZE")).unwrap())
            .collect()
    }
}

/// A master, one replica of it, and one sentinel watching them (quorum 1), on free ports.
pub struct RedisSentinel {
    pub master: RedisProcess,
    pub replica: RedisProcess,
    pub sentinel: RedisProcess,
}

pub const SENTINEL_MASTER: &str = "mymaster";

impl RedisSentinel {
    pub fn start() -> Self {
        let master = RedisProcess::spawn(free_port(), "", &[]);
        let replica = RedisProcess::spawn(
            free_port(),
            &format!("replicaof 127.0.0.1 {}", master.port),
            &[],
        );
        poll(Duration::from_secs(30), "the replica in sync", || {
            (replica.info("replication").get("master_link_status")? == "up").then_some(())
        });
        let sentinel = RedisProcess::spawn(
            free_port(),
            &format!(
                "sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 2000\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 10000",
                master.port
            ),
            &["--sentinel"],
        );
        let s = Self {
            master,
            replica,
            sentinel,
        };
        poll(
            Duration::from_secs(30),
            "the sentinel knowing the replica",
            || s.known_replica().then_some(()),
        );
        s
    }

    /// Whether the sentinel lists the replica as a healthy one.
    fn known_replica(&self) -> bool {
        let replicas: Vec<std::collections::HashMap<String, String>> = self
            .sentinel
            .query(redis::cmd("SENTINEL").arg("REPLICAS").arg(SENTINEL_MASTER))
            .unwrap_or_default();
        replicas.iter().any(|r| {
            r.get("port").map(String::as_str) == Some(&self.replica.port.to_string())
                && r.get("flags").map(String::as_str) == Some("slave")
                && r.get("master-link-status").map(String::as_str) == Some("ok")
        })
    }

    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://127.0.0.1:{}/{SENTINEL_MASTER}/0",
            self.sentinel.port
        )
    }

    /// The port of the master the sentinel names now.
    pub fn master_port(&self) -> u16 {
        let (_, port): (String, u16) = self
            .sentinel
            .query(
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(SENTINEL_MASTER),
            )
            .unwrap();
        port
    }

    /// Makes the replica the master (`SENTINEL FAILOVER`) and waits until the sentinel names
    /// it and the old master has become its replica (which cuts the old master's clients).
    pub fn failover(&self) {
        let before = self.master_port();
        let (new, old) = if before == self.master.port {
            (&self.replica, &self.master)
        } else {
            (&self.master, &self.replica)
        };
        poll(
            Duration::from_secs(30),
            "SENTINEL FAILOVER accepted",
            || {
                self.sentinel
                    .query::<String>(redis::cmd("SENTINEL").arg("FAILOVER").arg(SENTINEL_MASTER))
                    .ok()
            },
        );
        poll(
            Duration::from_secs(30),
            "the sentinel naming the new master",
            || (self.master_port() == new.port).then_some(()),
        );
        poll(
            Duration::from_secs(30),
            "the old master a replica of the new",
            || {
                let info = old.info("replication");
                (info.get("role")? == "slave"
                    && info.get("master_port")? == &new.port.to_string()
                    && info.get("master_link_status")? == "up")
                    .then_some(())
            },
        );
    }
}

/// What the upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// Lowercase names, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A real upstream over TCP that answers 200 `upstream ok` and records every request. While
/// held, it records requests but keeps the answers back until released.
pub struct Upstream {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    held: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

impl Upstream {
    pub fn start() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let (log, gate) = (seen.clone(), held.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (log, gate) = (log.clone(), gate.clone());
                thread::spawn(move || serve_upstream(stream, &log, &gate));
            }
        });
        Self { port, seen, held }
    }

    /// Keeps answers back from now on.
    pub fn hold(&self) {
        *self.held.0.lock().unwrap() = true;
    }

    /// Lets every held answer go.
    pub fn release(&self) {
        *self.held.0.lock().unwrap() = false;
        self.held.1.notify_all();
    }

    /// Waits (bounded) until the upstream has seen `n` requests.
    pub fn wait_for_count(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "the upstream saw {} of {n}",
                self.count()
            );
            thread::yield_now();
            thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw nothing")
    }
}

fn serve_upstream(
    stream: TcpStream,
    log: &Mutex<Vec<Seen>>,
    held: &(Mutex<bool>, std::sync::Condvar),
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let Some((method, target, headers, body)) = read_request(&mut reader) else {
            return;
        };
        log.lock().unwrap().push(Seen {
            method,
            target,
            headers,
            body,
        });
        let mut on_hold = held.0.lock().unwrap();
        while *on_hold {
            on_hold = held.1.wait(on_hold).unwrap();
        }
        drop(on_hold);
        let body = b"upstream ok";
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        // One write: head and body in two would meet Nagle and delayed ACKs (40 ms a request).
        let mut answer = head.into_bytes();
        answer.extend_from_slice(body);
        if out.write_all(&answer).is_err() {
            return;
        }
    }
}

type Request = (String, String, Vec<(String, String)>, Vec<u8>);

fn read_request(r: &mut impl BufRead) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let headers = read_headers(r)?;
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((method, target, headers, body))
}

fn read_headers(r: &mut impl BufRead) -> Option<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Some(headers);
        }
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_owned()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a new connection (`Connection: close`).
pub fn http(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req =
        format!("{method} {target} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut r = BufReader::new(s);
    let mut status_line = String::new();
    r.read_line(&mut status_line).unwrap();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = read_headers(&mut r).unwrap_or_default();
    let mut body = Vec::new();
    if let Some(len) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.resize(len, 0);
        r.read_exact(&mut body).unwrap();
    } else {
        let _ = r.read_to_end(&mut body);
    }
    Response {
        status,
        headers,
        body,
    }
}

pub enum Backend {
    Embedded,
    Redis(String),
}

/// The real `tokengate` binary, on free ports, with a config written for the test.
pub struct Tokengate {
    pub port: u16,
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Tokengate {
    /// `routes` is TOML `[[routes]]` text; `extra` more TOML sections.
    pub fn start(backend: &Backend, upstream: &str, routes: &str, extra: &str) -> Self {
        // A port found free can be taken by another test's process before ours binds it;
        // then requests would reach that process. So the ports are checked to be held by our
        // process alone, and on a clash it starts again on other ports.
        for _ in 0..5 {
            let tg = Self::start_on(free_port(), free_port(), backend, upstream, routes, extra);
            let pid = tg.child.id();
            if only_pid_listens(pid, tg.port) && only_pid_listens(pid, tg.admin_port) {
                tg.wait_ready();
                return tg;
            }
        }
        panic!("tokengate: every pair of ports tried was taken by another process too");
    }

    fn start_on(
        port: u16,
        admin_port: u16,
        backend: &Backend,
        upstream: &str,
        routes: &str,
        extra: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = match backend {
            Backend::Embedded => format!(
                "backend = \"embedded\"\npath = {:?}",
                dir.path().join("tokengate.db")
            ),
            Backend::Redis(url) => format!("backend = \"redis\"\nurl = {url:?}"),
        };
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\nthreads = 1\n\n\
             [upstream]\nurl = {upstream:?}\n\n[admin]\nkey = {ADMIN_KEY:?}\n\n[store]\n{store}\n\n{extra}\n\n{routes}\n"
        );
        let path: PathBuf = dir.path().join("tokengate.toml");
        std::fs::write(&path, config).unwrap();
        let child = Self::spawn(&dir, port, admin_port);
        Self {
            port,
            admin_port,
            dir,
            child,
        }
    }

    fn spawn(dir: &tempfile::TempDir, port: u16, admin_port: u16) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("tokengate.log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .arg("serve")
            .arg("-c")
            .arg(dir.path().join("tokengate.toml"))
            .current_dir(dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let log = dir.path().join("tokengate.log");
        wait_for_port(admin_port, &mut child, "tokengate admin", Some(&log));
        wait_for_port(port, &mut child, "tokengate proxy", Some(&log));
        child
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.admin_raw("GET", "/readyz", None, None).status != 200 {
            assert!(
                Instant::now() < deadline,
                "tokengate never became ready:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the process and starts a new one on the same config, ports and files.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.dir, self.port, self.admin_port);
        self.wait_ready();
    }

    /// As [`Tokengate::restart`], without waiting for `/readyz` over plain HTTP (for an admin
    /// listener that serves HTTPS).
    pub fn restart_unready(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.dir, self.port, self.admin_port);
    }

    /// The config file this instance runs on.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("tokengate.toml")
    }

    /// Changes the config file (takes effect at the next [`Tokengate::restart`]).
    pub fn rewrite_config(&self, f: impl FnOnce(String) -> String) {
        let path = self.config_path();
        let old = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, f(old)).unwrap();
    }

    /// Sends SIGTERM, as Kubernetes does to stop a Pod.
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM");
    }

    /// Waits (bounded) for the process to exit, and says how.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "still running:\n{}", self.log());
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// The value of an unlabelled metric, or the sum over a labelled one's lines that contain
    /// every one of `labels` (`name="value"`).
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        self.admin_raw("GET", "/metrics", None, None)
            .text()
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tokengate.log")).unwrap_or_default()
    }

    pub fn admin_raw(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> Response {
        let auth = key.map(|k| format!("Bearer {k}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        http(
            self.admin_port,
            method,
            path,
            &headers,
            body.map(str::as_bytes),
        )
    }

    pub fn admin(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Response {
        let body = body.map(|b| b.to_string());
        self.admin_raw(method, path, Some(ADMIN_KEY), body.as_deref())
    }

    /// A new user token (named `t`) of `user` for `apps`, through the admin API:
    /// (secret, id).
    pub fn user_token(&self, user: &str, apps: &[&str]) -> (String, String) {
        let r = self.admin(
            "POST",
            &format!("/v1/users/{user}/tokens"),
            Some(serde_json::json!({"name": "t", "apps": apps})),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        let v = r.json();
        (
            v["token"].as_str().unwrap().to_owned(),
            v["id"].as_str().unwrap().to_owned(),
        )
    }

    pub fn get(&self, target: &str, headers: &[(&str, &str)]) -> Response {
        http(self.port, "GET", target, headers, None)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }
}

impl Drop for Tokengate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
