#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Memory per cached credential at 1M entries: the cache is filled with 1,000,000 credentials of
//! one kind through `Cache::user_token` / `Cache::ticket` / `Cache::session` (the calls the
//! verifiers make on a miss), and what it then holds is divided by the entries held.
//!
//! Two measures:
//! - Heap bytes: a counting global allocator (`stats_alloc`) gives the bytes requested and not
//!   freed between just before the fill and just after it, once moka's pending maintenance has
//!   run (`Cache::entry_counts` runs it and counts the entries). This is what the program asked
//!   for, without the allocator's own per-chunk overhead and rounding.
//! - RSS growth (`VmRSS` of `/proc/self/status`) over the same span: what the machine pays,
//!   malloc's overhead included.
//!
//! The store behind the cache is a stand-in that makes each record on demand from its id, the
//! way the real stores return them: a realistic record (lengths as the admin API makes them) is
//! serialised to JSON and decoded with `serde_json::from_slice`, as `store::decode` does, so the
//! strings and vectors the cache keeps have the capacities a real load gives them. (A real store
//! would hold its own pages in memory too; that is not the cache's cost, and left out.)
//!
//! Each scenario runs in a child process of its own (this binary, re-run), so one scenario's
//! freed memory doesn't hide another's RSS growth. Per kind:
//! - `records`: the decoded records alone, each in its `Arc` (as the cache holds them), kept in
//!   a vector whose own buffer is made before the measuring starts;
//! - `no_stale`: the cache with `cache.stale_for = 0` (nothing kept for stale serving): key +
//!   record + moka's entry;
//! - `default`: the cache as configured by default (`stale_for` 5m, `max_entries` 1,000,000).
//!   The same one table keeps a record for stale serving (its entry carries its load time), so
//!   this should weigh what `no_stale` does. The cache TTL is set to 1h so no entry expires
//!   while the table fills; the TTL doesn't change what an entry weighs.
//! - `used`: `default`, and each record's identity header values made, as the first request it
//!   admits makes them (then shared by every later one): what a credential in use weighs.
//!
//! Records (user tokens): a 16-character id (as `format::generate` makes), a name of about 20
//! characters, half with a 32-character description and half with none, the owner's generated
//! id (`u_` and 12 characters), two 9-character app ids (Quickbase dbids), half with an expiry.
//! Tickets: 16-character id, owner id. Sessions: 22-character id (`jwt::new_token_id`), owner
//! id, half bound to an app.
//!
//! Run: `cargo bench --bench memory` (`TOKENGATE_MEMORY_N` changes the count; a name given as
//! an argument runs only the scenarios whose name contains it).

use std::alloc::System;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tokengate::cache::{Cache, Cached};
use tokengate::clock::SystemClock;
use tokengate::config::{CacheConfig, Config};
use tokengate::metrics::Metrics;
use tokengate::model::{App, AppToken, Session, Ticket, User, UserToken};
use tokengate::store::{DeletedUser, SharedStore, Store, StoreError, StoreResult, TokenFilter};
use tokengate::usage::Usage;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const SCENARIO_VAR: &str = "TOKENGATE_MEMORY_SCENARIO";
const KINDS: [&str; 3] = ["user_token", "ticket", "session"];
const SETUPS: [&str; 4] = ["records", "no_stale", "default", "used"];

/// Base32 of `n`, `len` characters (the alphabet of `format::random_base32`).
fn base32(mut n: u64, len: usize) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = vec![b'a'; len];
    for c in out.iter_mut().rev() {
        *c = ALPHABET[(n % 32) as usize];
        n /= 32;
    }
    String::from_utf8(out).expect("base32 is ASCII")
}

/// Base64url of `n`, 22 characters (the shape of `jwt::new_token_id`).
fn base64url(mut n: u64) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = vec![b'A'; 22];
    for c in out.iter_mut().rev() {
        *c = ALPHABET[(n % 64) as usize];
        n /= 64;
    }
    String::from_utf8(out).expect("base64url is ASCII")
}

fn user_token_id(i: u64) -> String {
    base32(i, 16)
}

fn ticket_id(i: u64) -> String {
    base32(i, 16)
}

fn session_id(i: u64) -> String {
    base64url(i)
}

/// The index a credential id was made from (the ids are the index in base32/base64url).
fn index_of(id: &str) -> u64 {
    const B32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let (alphabet, base): (&[u8], u64) = if id.len() == 22 { (B64, 64) } else { (B32, 32) };
    id.bytes().fold(0, |n, b| {
        n * base + alphabet.iter().position(|&a| a == b).unwrap_or(0) as u64
    })
}

/// The owner of credential `i`: one of 100,000 users with generated ids.
fn owner(i: u64) -> String {
    format!("u_{}", base32(i % 100_000 + 7_000_000, 12))
}

const PURPOSES: [&str; 4] = [
    "nightly export",
    "ci deploy",
    "reporting script",
    "warehouse sync",
];
const APPS: [&str; 4] = ["bq7xyz2ab", "bq8k2m9ta", "bqcd3rxw7", "bqh5n4jfe"];

fn created(i: u64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_780_000_000 + i as i64, 0).expect("a valid time")
}

fn user_token(i: u64) -> UserToken {
    UserToken {
        id: user_token_id(i),
        secret_hash: [0x5a; 32],
        name: format!("{} {:06}", PURPOSES[(i % 4) as usize], i % 1_000_000),
        description: if i.is_multiple_of(2) {
            "Reads the finance tables nightly".into()
        } else {
            String::new()
        },
        user_id: owner(i),
        apps: vec![
            APPS[(i % 4) as usize].into(),
            APPS[((i + 1) % 4) as usize].into(),
        ],
        active: true,
        held_by_admin: false,
        expires_at: (i % 2 == 1).then(|| created(i) + chrono::Duration::days(365)),
        department: None,
        user_type: None,
        created_at: created(i),
        last_used_at: None,
        used: Default::default(),
        headers: Default::default(),
    }
}

fn ticket(i: u64) -> Ticket {
    Ticket {
        id: ticket_id(i),
        secret_hash: [0x5a; 32],
        user_id: owner(i),
        issued_at: created(i),
        expires_at: created(i) + chrono::Duration::hours(12),
        last_active_at: None,
        revoked_at: None,
        used: Default::default(),
        headers: Default::default(),
    }
}

fn session(i: u64) -> Session {
    Session {
        id: session_id(i),
        user_id: owner(i),
        app: i.is_multiple_of(2).then(|| APPS[(i % 4) as usize].into()),
        issued_at: created(i),
        expires_at: created(i) + chrono::Duration::hours(24),
        remember_me: false,
        last_active_at: None,
        revoked_at: None,
        external: false,
        used: Default::default(),
        headers: Default::default(),
    }
}

/// The record as a store returns it: JSON bytes decoded by serde_json.
fn load<T: serde::Serialize + serde::de::DeserializeOwned>(record: &T) -> T {
    let bytes = serde_json::to_vec(record).expect("records serialise");
    serde_json::from_slice(&bytes).expect("records decode")
}

/// A store that makes every user token, ticket and session on demand; nothing else.
struct MadeUp;

fn not_here<T>() -> StoreResult<T> {
    Err(StoreError::Backend("not in this bench".into()))
}

#[async_trait]
impl Store for MadeUp {
    fn backend(&self) -> &'static str {
        "made_up"
    }
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
    async fn user(&self, _: &str) -> StoreResult<Option<User>> {
        not_here()
    }
    async fn users(&self) -> StoreResult<Vec<User>> {
        not_here()
    }
    async fn insert_user(&self, _: &User) -> StoreResult<()> {
        not_here()
    }
    async fn update_user(&self, _: &User) -> StoreResult<()> {
        not_here()
    }
    async fn delete_user(&self, _: &str) -> StoreResult<DeletedUser> {
        not_here()
    }
    async fn app(&self, _: &str) -> StoreResult<Option<App>> {
        not_here()
    }
    async fn apps(&self) -> StoreResult<Vec<App>> {
        not_here()
    }
    async fn insert_app(&self, _: &App) -> StoreResult<()> {
        not_here()
    }
    async fn update_app(&self, _: &App) -> StoreResult<()> {
        not_here()
    }
    async fn delete_app(&self, _: &str) -> StoreResult<Vec<String>> {
        not_here()
    }
    async fn user_token(&self, id: &str) -> StoreResult<Option<UserToken>> {
        Ok(Some(load(&user_token(index_of(id)))))
    }
    async fn user_tokens(&self, _: &TokenFilter) -> StoreResult<Vec<UserToken>> {
        not_here()
    }
    async fn insert_user_token(&self, _: &UserToken, _: usize) -> StoreResult<()> {
        not_here()
    }
    async fn update_user_token(&self, _: &UserToken) -> StoreResult<()> {
        not_here()
    }
    async fn delete_user_token(&self, _: &str) -> StoreResult<()> {
        not_here()
    }
    async fn ticket(&self, id: &str) -> StoreResult<Option<Ticket>> {
        Ok(Some(load(&ticket(index_of(id)))))
    }
    async fn tickets(&self, _: Option<&str>) -> StoreResult<Vec<Ticket>> {
        not_here()
    }
    async fn insert_ticket(&self, _: &Ticket) -> StoreResult<()> {
        not_here()
    }
    async fn update_ticket(&self, _: &Ticket) -> StoreResult<()> {
        not_here()
    }
    async fn session(&self, id: &str) -> StoreResult<Option<Session>> {
        Ok(Some(load(&session(index_of(id)))))
    }
    async fn sessions(&self, _: Option<&str>) -> StoreResult<Vec<Session>> {
        not_here()
    }
    async fn insert_session(&self, _: &Session) -> StoreResult<()> {
        not_here()
    }
    async fn update_session(&self, _: &Session) -> StoreResult<()> {
        not_here()
    }
    async fn signing_keys(&self) -> StoreResult<Option<Vec<u8>>> {
        not_here()
    }
    async fn init_signing_keys(&self, _: Vec<u8>) -> StoreResult<Vec<u8>> {
        not_here()
    }
    async fn app_token(&self, _: &str) -> StoreResult<Option<AppToken>> {
        not_here()
    }
    async fn app_tokens(&self, _: &str) -> StoreResult<Vec<AppToken>> {
        not_here()
    }
    async fn insert_app_token(&self, _: &AppToken, _: usize) -> StoreResult<()> {
        not_here()
    }
    async fn delete_app_token(&self, _: &str) -> StoreResult<()> {
        not_here()
    }
    async fn record_usage(&self, _: &[Usage]) -> StoreResult<()> {
        not_here()
    }
    async fn admin_key_hash(&self) -> StoreResult<Option<[u8; 32]>> {
        not_here()
    }
    async fn init_admin_key_hash(&self, _: [u8; 32]) -> StoreResult<[u8; 32]> {
        not_here()
    }
}

/// Bytes requested and not yet freed, and allocations not yet freed, so far. (`stats_alloc`
/// already adds a reallocation's growth to `bytes_allocated` and its shrinking to
/// `bytes_deallocated`; `bytes_reallocated` is the same change again, so it is not added.)
fn live() -> (i64, i64) {
    let s = GLOBAL.stats();
    let bytes = s.bytes_allocated as i64 - s.bytes_deallocated as i64;
    let allocations = s.allocations as i64 - s.deallocations as i64;
    (bytes, allocations)
}

/// `VmRSS` in bytes.
fn rss() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .expect("a VmRSS line")
        * 1024
}

/// The cache configuration of a default config file, with the TTL at 1h (nothing expires while
/// the table fills) and, for `no_stale`, no kept stale copies.
fn cache_config(setup: &str) -> CacheConfig {
    let toml = "[store]\nbackend = \"embedded\"\npath = \"/nonexistent/tokengate.db\"\n\n\
                [cache]\nttl = \"1h\"\n\n[[routes]]\npath = \"/db/{app}\"\n";
    let mut config = Config::from_toml(toml, Vec::new())
        .expect("the bench's config parses")
        .cache;
    if setup == "no_stale" {
        config.stale_for = Duration::ZERO;
    }
    config
}

/// Heap bytes of a record as the cache keeps it (its `Arc` and what its fields own), by field.
fn record_parts(kind: &str) -> Vec<(String, usize)> {
    const ARC: usize = 16;
    let s = |name: &str, v: &String| (format!("{name} heap"), v.capacity());
    let o = |name: &str, v: &Option<String>| {
        (
            format!("{name} heap"),
            v.as_ref().map_or(0, String::capacity),
        )
    };
    match kind {
        "user_token" => {
            // Index 0 and 1: one with a description, one without; the average of the two.
            let (a, b) = (load(&user_token(0)), load(&user_token(1)));
            let avg = |f: &dyn Fn(&UserToken) -> usize| (f(&a) + f(&b)) / 2;
            vec![
                (
                    "Arc<UserToken> (counts + struct)".into(),
                    ARC + std::mem::size_of::<UserToken>(),
                ),
                s("id", &a.id),
                ("name heap (avg)".into(), avg(&|t| t.name.capacity())),
                (
                    "description heap (avg of 32 and 0)".into(),
                    avg(&|t| t.description.capacity()),
                ),
                s("user_id", &a.user_id),
                (
                    format!(
                        "apps: Vec buffer ({} of {} bytes)",
                        a.apps.capacity(),
                        std::mem::size_of::<String>()
                    ),
                    a.apps.capacity() * std::mem::size_of::<String>(),
                ),
                (
                    "apps: strings heap".into(),
                    a.apps.iter().map(String::capacity).sum(),
                ),
            ]
        }
        "ticket" => {
            let t = load(&ticket(0));
            vec![
                (
                    "Arc<Ticket> (counts + struct)".into(),
                    ARC + std::mem::size_of::<Ticket>(),
                ),
                s("id", &t.id),
                s("user_id", &t.user_id),
            ]
        }
        _ => {
            let (a, b) = (load(&session(0)), load(&session(1)));
            vec![
                (
                    "Arc<Session> (counts + struct)".into(),
                    ARC + std::mem::size_of::<Session>(),
                ),
                s("id", &a.id),
                s("user_id", &a.user_id),
                (
                    "app heap (avg, half bound)".into(),
                    (o("app", &a.app).1 + o("app", &b.app).1) / 2,
                ),
            ]
        }
    }
}

fn id_of(kind: &str, i: u64) -> String {
    match kind {
        "user_token" => user_token_id(i),
        "ticket" => ticket_id(i),
        _ => session_id(i),
    }
}

/// `n` records as loaded, each in its `Arc`, held at once: (bytes, allocations, RSS growth,
/// records). The vector holding them is made before the measuring starts.
fn hold_records<T>(n: u64, make: fn(u64) -> T) -> (i64, i64, i64, u64)
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut held: Vec<Arc<T>> = Vec::with_capacity(n as usize);
    let (b0, a0) = live();
    let r0 = rss();
    for i in 0..n {
        held.push(Arc::new(load(&make(i))));
    }
    let (b1, a1) = live();
    let r1 = rss();
    (b1 - b0, a1 - a0, r1 - r0, held.len() as u64)
}

/// Whether `loaded` found the record; with `used`, `use_it` (what a request does to it) runs on
/// it too.
fn held<T>(loaded: StoreResult<Cached<T>>, used: bool, use_it: fn(&T)) -> bool {
    match loaded {
        Ok(Cached::Found(record)) => {
            if used {
                use_it(&record);
            }
            true
        }
        _ => false,
    }
}

/// One scenario, in this process: prints one `result` line.
fn run_scenario(name: &str, n: u64) {
    let (kind, setup) = name.split_once('/').expect("a scenario is kind/setup");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let started = Instant::now();

    let (bytes, allocations, rss_growth, entries) = if setup == "records" {
        match kind {
            "user_token" => hold_records(n, user_token),
            "ticket" => hold_records(n, ticket),
            _ => hold_records(n, session),
        }
    } else {
        let config = cache_config(setup);
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let store: SharedStore = Arc::new(MadeUp);
        let cache = Cache::new(store, &config, Arc::new(SystemClock), metrics);
        let count = |cache: &Cache| {
            rt.block_on(cache.entry_counts())
                .into_iter()
                .find(|(k, _)| *k == kind)
                .map_or(0, |(_, c)| c)
        };
        assert_eq!(count(&cache), 0);
        let (b0, a0) = live();
        let r0 = rss();
        rt.block_on(async {
            for i in 0..n {
                let id = id_of(kind, i);
                // `used`: what the first request a record admits adds, its identity header
                // values (made once, then shared).
                let used = setup == "used";
                let found = match kind {
                    "user_token" => held(cache.user_token(&id).await, used, |r| {
                        r.header_values();
                    }),
                    "ticket" => held(cache.ticket(&id).await, used, |r| {
                        r.header_values();
                    }),
                    _ => held(cache.session(&id).await, used, |r| {
                        r.header_values();
                    }),
                };
                assert!(found, "{kind} {id} was not loaded");
            }
        });
        // Runs moka's pending maintenance (admissions, the frequency sketch) and counts.
        let entries = count(&cache);
        let (b1, a1) = live();
        let r1 = rss();
        // Every entry is really held: a second pass is all hits (no store call would be made).
        let held = rt.block_on(async {
            let mut held = 0u64;
            for i in 0..n {
                held += u64::from(match kind {
                    "user_token" => cache.holds_user_token(&id_of(kind, i)).await,
                    "ticket" => cache.holds_ticket(&id_of(kind, i)).await,
                    _ => true,
                });
            }
            held
        });
        assert!(
            kind == "session" || held == entries,
            "{held} held, {entries} counted"
        );
        drop(cache);
        (b1 - b0, a1 - a0, r1 - r0, entries)
    };
    println!(
        "result {name} n={n} entries={entries} bytes={bytes} allocations={allocations} rss={rss_growth} secs={:.1}",
        started.elapsed().as_secs_f64()
    );
}

#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    entries: u64,
    bytes: f64,
    allocations: f64,
    rss: f64,
}

fn parse_result(line: &str) -> Option<(String, Figures)> {
    let mut fields = line.strip_prefix("result ")?.split(' ');
    let name = fields.next()?.to_owned();
    let mut f = Figures::default();
    for field in fields {
        let (k, v) = field.split_once('=')?;
        match k {
            "entries" => f.entries = v.parse().ok()?,
            "bytes" => f.bytes = v.parse().ok()?,
            "allocations" => f.allocations = v.parse().ok()?,
            "rss" => f.rss = v.parse().ok()?,
            _ => {}
        }
    }
    let per = f.entries.max(1) as f64;
    f.bytes /= per;
    f.allocations /= per;
    f.rss /= per;
    Some((name, f))
}

fn main() {
    if let Ok(name) = std::env::var(SCENARIO_VAR) {
        let n = std::env::var("TOKENGATE_MEMORY_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        run_scenario(&name, n);
        return;
    }

    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; run without it (`cargo test --benches`), this is a smoke
    // run on 10,000 entries.
    let n: u64 = std::env::var("TOKENGATE_MEMORY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if args.iter().any(|a| a == "--bench") {
            1_000_000
        } else {
            10_000
        });
    let filter: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let me = std::env::current_exe().expect("this binary's path");

    println!("memory per cached credential, {n} entries per scenario (one process each)\n");
    let mut results = std::collections::HashMap::new();
    for kind in KINDS {
        for setup in SETUPS {
            let name = format!("{kind}/{setup}");
            if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
                continue;
            }
            let out = Command::new(&me)
                .env(SCENARIO_VAR, &name)
                .env("TOKENGATE_MEMORY_N", n.to_string())
                .output()
                .expect("the scenario runs");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{name} failed: {}\n{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let Some((_, figures)) = stdout.lines().find_map(parse_result) else {
                panic!("{name}: no result line in\n{stdout}");
            };
            println!(
                "{name:<22} entries {:>9}  heap {:>7.1} B/entry  allocations {:>5.2}/entry  RSS {:>7.1} B/entry",
                figures.entries, figures.bytes, figures.allocations, figures.rss
            );
            results.insert(name, figures);
        }
    }

    for kind in KINDS {
        let get = |setup: &str| results.get(&format!("{kind}/{setup}")).copied();
        let (Some(records), Some(no_stale), Some(default), Some(used)) =
            (get("records"), get("no_stale"), get("default"), get("used"))
        else {
            continue;
        };
        let key = id_of(kind, 0).capacity() as f64;
        println!(
            "\n{kind}: {:.0} heap bytes ({:.0} RSS) per cached credential with the default config",
            default.bytes, default.rss
        );
        println!(
            "  the record, as loaded (measured: {:.1} B, {:.2} allocations):",
            records.bytes, records.allocations
        );
        for (part, size) in record_parts(kind) {
            println!("    {part:<40} {size:>5} B");
        }
        println!("  the key string's heap (the id), in the entries table     {key:>6.1} B");
        println!(
            "  moka's entry in the entries table (measured - record - key) {:>6.1} B  ({:.2} allocations)",
            no_stale.bytes - records.bytes - key,
            no_stale.allocations - records.allocations - 1.0
        );
        println!(
            "  stale serving on (default) over off (no_stale)                 {:>6.1} B  ({:.2} allocations)",
            default.bytes - no_stale.bytes,
            default.allocations - no_stale.allocations
        );
        println!(
            "  its identity header values, once a request used it (used over default) {:>6.1} B  ({:.2} allocations)",
            used.bytes - default.bytes,
            used.allocations - default.allocations
        );
        println!(
            "\n{kind}: {:.0} heap bytes ({:.0} RSS) per cached credential once used",
            used.bytes, used.rss
        );
        println!(
            "  RSS: records {:.1}, stale serving off {:.1}, default {:.1} B per credential",
            records.rss, no_stale.rss, default.rss
        );
    }
}
