//! The Redis backend, shared by every replica. Records are JSON strings; sets index them.
//! Writes that touch several keys run as Lua scripts, so each is atomic and a failed write
//! leaves nothing half-written. One server, a Redis Cluster or a master found through Sentinel
//! (`topology`): the code below is the same for all three.
//!
//! The connection is made on first use, on the runtime of whoever uses it first: a redis-rs
//! connection is driven by the runtime it was made on, and Pingora gives each service its own
//! long-lived runtime, so it must not be made in a short-lived one (such as `main`'s).
//!
//! Keys (prefix `tg:{tg}:`): `user:{id}`, `users` (set), `app:{id}`, `apps` (set), `utok:{id}`,
//! `utoks` (set), `user:{id}:utoks` (that user's token ids), `ticket:{id}`, `tickets` (set),
//! `user:{id}:tickets`, `apptok:{id}`, `apptoks` (set), `app:{id}:apptoks`,
//! `used:utok:{id}` / `used:ticket:{id}` (last use, milliseconds), `meta:admin_key_hash`.

mod topology;

use async_trait::async_trait;
use redis::{AsyncCommands, RedisError, Script};
use tokio::sync::OnceCell;

pub use self::topology::Subscriber;
use self::topology::{Conn, Topology};
use super::{DeletedUser, Store, StoreError, StoreResult, TokenFilter, decode, encode};
use crate::model::{App, AppToken, Session, Ticket, User, UserToken};
use crate::usage::{Usage, UsageKind, UsageRecord, usage_key};

/// Every key starts with it, and its hash tag `{tg}` puts the whole keyspace in one hash slot of
/// a Redis Cluster: the multi-key Lua writes must stay atomic (a script may only touch keys of
/// one slot), the data set is small and read through each replica's cache, and a cluster is
/// here for availability and for running on the one a platform team already has, not for
/// spreading load. The same layout serves every topology. Only a key's first `{...}` is its
/// tag, so no id moves a key out of the slot; the scripts build some keys from the prefix
/// (passed as an argument), so those stay in it too.
const PREFIX: &str = "tg:{tg}:";

/// The pub/sub channel replicas announce changes on (`crate::bus`). Not in the slot: a PUBLISH
/// in a cluster reaches every node.
pub const INVALIDATION_CHANNEL: &str = "tg:invalidate";

/// Checks a `store.url` without connecting: a problem in words that never repeat the URL.
pub fn check_url(url: &str) -> Result<(), String> {
    Topology::parse(url).map(|_| ())
}

pub struct RedisStore {
    topology: Topology,
    conn: OnceCell<Conn>,
    scripts: Scripts,
}

struct Scripts {
    record_usage: Script,
    insert: Script,
    update: Script,
    delete_user: Script,
    delete_app: Script,
    insert_owned: Script,
    delete_owned: Script,
}

/// KEYS: the last-use key, the credential's record. ARGV: milliseconds. Keeps the later time;
/// a credential deleted since its use gets no orphan key.
const RECORD_USAGE: &str = r"
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local kept = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > kept then redis.call('SET', KEYS[1], ARGV[1]) end
return 1";

/// KEYS: record, index set. ARGV: json, id. 1 = done, 0 = the id is taken.
const INSERT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return 1";

/// KEYS: record. ARGV: json. 1 = done, 0 = no such record.
const UPDATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1";

/// Deletes every record an owner's index set lists, and the set.
const DELETE_ALL_OWNED: &str = r"
local function delete_all(index, all, kind, prefix)
  local ids = redis.call('SMEMBERS', index)
  for _, id in ipairs(ids) do
    redis.call('DEL', prefix .. kind .. ':' .. id)
    redis.call('DEL', prefix .. 'used:' .. kind .. ':' .. id)
    redis.call('SREM', all, id)
  end
  redis.call('DEL', index)
  return ids
end
";

/// KEYS: user, users set, then (the user's index, the all set) for tokens, tickets and
/// sessions. ARGV: user id, key prefix. Returns {token ids, ticket ids, session ids}, or false
/// when there is no such user.
const DELETE_USER: &str = r"
if redis.call('DEL', KEYS[1]) == 0 then return false end
redis.call('SREM', KEYS[2], ARGV[1])
return {delete_all(KEYS[3], KEYS[4], 'utok', ARGV[2]), delete_all(KEYS[5], KEYS[6], 'ticket', ARGV[2]),
        delete_all(KEYS[7], KEYS[8], 'session', ARGV[2])}";

/// KEYS: app, apps set, the app's app-token set, all-app-tokens set. ARGV: app id, key prefix.
/// Returns the deleted app token ids, or false when there is no such app.
const DELETE_APP: &str = r"
if redis.call('DEL', KEYS[1]) == 0 then return false end
redis.call('SREM', KEYS[2], ARGV[1])
return delete_all(KEYS[3], KEYS[4], 'apptok', ARGV[2])";

/// KEYS: owner, record, the owner's index set, all set. ARGV: json, id, limit (0: none).
/// 1 = done, -1 = no such owner, -2 = id taken, -3 = limit reached.
const INSERT_OWNED: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('EXISTS', KEYS[2]) == 1 then return -2 end
local limit = tonumber(ARGV[3])
if limit > 0 and redis.call('SCARD', KEYS[3]) >= limit then return -3 end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[2])
return 1";

/// KEYS: record, all set, its last-use key. ARGV: id, key prefix, the owner field of the record's JSON, the
/// owner's kind, the owner's index name. 1 = done, 0 = no such record.
const DELETE_OWNED: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local owner = cjson.decode(v)[ARGV[3]]
-- Checked before anything is deleted: a script error does not undo earlier writes.
if type(owner) ~= 'string' then return redis.error_reply('record without an owner') end
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', ARGV[2] .. ARGV[4] .. ':' .. owner .. ':' .. ARGV[5], ARGV[1])
return 1";

/// How a kind of owned record is laid out.
struct Owned {
    /// Record key kind, e.g. `utok`.
    kind: &'static str,
    /// The set of all of them.
    all: &'static str,
    owner_kind: &'static str,
    owner_field: &'static str,
    /// The owner's index: `{owner_kind}:{owner}:{index}`.
    index: &'static str,
}

const USER_TOKENS: Owned = Owned {
    kind: "utok",
    all: "utoks",
    owner_kind: "user",
    owner_field: "user_id",
    index: "utoks",
};
const TICKETS: Owned = Owned {
    kind: "ticket",
    all: "tickets",
    owner_kind: "user",
    owner_field: "user_id",
    index: "tickets",
};
const SESSIONS: Owned = Owned {
    kind: "session",
    all: "sessions",
    owner_kind: "user",
    owner_field: "user_id",
    index: "sessions",
};
const APP_TOKENS: Owned = Owned {
    kind: "apptok",
    all: "apptoks",
    owner_kind: "app",
    owner_field: "app_id",
    index: "apptoks",
};

impl Owned {
    fn index_key(&self, owner: &str) -> String {
        format!("{PREFIX}{}:{owner}:{}", self.owner_kind, self.index)
    }
}

fn key(kind: &str, id: &str) -> String {
    let mut k = String::with_capacity(PREFIX.len() + kind.len() + 1 + id.len());
    k.push_str(PREFIX);
    k.push_str(kind);
    k.push(':');
    k.push_str(id);
    k
}

fn set(name: &str) -> String {
    format!("{PREFIX}{name}")
}

fn map_err(e: RedisError) -> StoreError {
    if topology::is_unavailable(&e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

impl RedisStore {
    /// Checks the URL; connects on first use.
    pub fn new(url: &str) -> StoreResult<Self> {
        Self::with_options(url, None, None)
    }

    /// The same, with, for a `rediss://` server, the CAs (a PEM file) its certificate must
    /// chain to instead of the system's, and for `redis+sentinel://`, the sentinels' password.
    pub fn with_options(
        url: &str,
        ca_file: Option<&std::path::Path>,
        sentinel_password: Option<&str>,
    ) -> StoreResult<Self> {
        let ca = ca_file
            .map(|path| {
                std::fs::read(path).map_err(|e| {
                    StoreError::Backend(format!("store.ca_file {}: {e}", path.display()))
                })
            })
            .transpose()?;
        let topology = Topology::parse_with(url, ca, sentinel_password)
            .map_err(|e| StoreError::Backend(format!("bad store.url: {e}")))?;
        Ok(Self {
            topology,
            conn: OnceCell::new(),
            scripts: Scripts {
                record_usage: Script::new(RECORD_USAGE),
                insert: Script::new(INSERT),
                update: Script::new(UPDATE),
                delete_user: Script::new(&format!("{DELETE_ALL_OWNED}{DELETE_USER}")),
                delete_app: Script::new(&format!("{DELETE_ALL_OWNED}{DELETE_APP}")),
                insert_owned: Script::new(INSERT_OWNED),
                delete_owned: Script::new(DELETE_OWNED),
            },
        })
    }

    async fn conn(&self) -> StoreResult<Conn> {
        self.conn
            .get_or_try_init(|| self.topology.connect())
            .await
            .cloned()
            .map_err(map_err)
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        what: &str,
        id: &str,
    ) -> StoreResult<Option<T>> {
        let mut c = self.conn().await?;
        let v: Option<Vec<u8>> = c.get(key(kind, id)).await.map_err(map_err)?;
        v.map(|v| decode(what, &v)).transpose()
    }

    /// Every record of `kind` listed in the set `index`, sorted by id.
    async fn all<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        what: &str,
        index: String,
    ) -> StoreResult<Vec<T>> {
        let mut c = self.conn().await?;
        let mut ids: Vec<String> = c.smembers(index).await.map_err(map_err)?;
        ids.sort();
        self.many(&mut c, kind, what, &ids).await
    }

    async fn many<T: serde::de::DeserializeOwned>(
        &self,
        c: &mut Conn,
        kind: &str,
        what: &str,
        ids: &[String],
    ) -> StoreResult<Vec<T>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| key(kind, id)).collect();
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(c)
            .await
            .map_err(map_err)?;
        values
            .into_iter()
            .flatten()
            .map(|v| decode(what, &v))
            .collect()
    }

    async fn insert(&self, kind: &str, index: &str, id: &str, json: Vec<u8>) -> StoreResult<()> {
        let mut c = self.conn().await?;
        let done: i64 = self
            .scripts
            .insert
            .key(key(kind, id))
            .key(set(index))
            .arg(json)
            .arg(id)
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        if done == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    }

    async fn insert_owned(
        &self,
        layout: &Owned,
        owner: &str,
        id: &str,
        json: Vec<u8>,
        limit: usize,
    ) -> StoreResult<()> {
        let mut c = self.conn().await?;
        let done: i64 = self
            .scripts
            .insert_owned
            .key(key(layout.owner_kind, owner))
            .key(key(layout.kind, id))
            .key(layout.index_key(owner))
            .key(set(layout.all))
            .arg(json)
            .arg(id)
            .arg(limit)
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        match done {
            1 => Ok(()),
            -1 => Err(StoreError::NotFound),
            -2 => Err(StoreError::Conflict),
            _ => Err(StoreError::LimitReached(limit)),
        }
    }

    async fn delete_owned(&self, layout: &Owned, id: &str) -> StoreResult<()> {
        let mut c = self.conn().await?;
        let done: i64 = self
            .scripts
            .delete_owned
            .key(key(layout.kind, id))
            .key(set(layout.all))
            .key(format!("{PREFIX}used:{}:{id}", layout.kind))
            .arg(id)
            .arg(PREFIX)
            .arg(layout.owner_field)
            .arg(layout.owner_kind)
            .arg(layout.index)
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        if done == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound)
        }
    }

    /// Fills in each record's last use, in one round trip.
    async fn with_usage<T: UsageRecord>(&self, mut items: Vec<T>) -> StoreResult<Vec<T>> {
        if items.is_empty() {
            return Ok(items);
        }
        let mut c = self.conn().await?;
        let keys: Vec<String> = items
            .iter()
            .map(|i| format!("{PREFIX}used:{}", i.usage_key()))
            .collect();
        let uses: Vec<Option<i64>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut c)
            .await
            .map_err(map_err)?;
        for (item, ms) in items.iter_mut().zip(uses) {
            if let Some(at) = ms.and_then(chrono::DateTime::from_timestamp_millis) {
                item.set_last_use(at);
            }
        }
        Ok(items)
    }

    /// One record and its last use, in one round trip (a cache miss waits on it: reading
    /// the two one after the other doubled the miss). Both keys carry the same hash tag, so
    /// a cluster serves them from one node.
    async fn get_with_usage<T: serde::de::DeserializeOwned + UsageRecord>(
        &self,
        kind: &str,
        what: &str,
        id: &str,
        usage: UsageKind,
    ) -> StoreResult<Option<T>> {
        let mut c = self.conn().await?;
        let (record, used): (Option<Vec<u8>>, Option<i64>) = redis::cmd("MGET")
            .arg(key(kind, id))
            .arg(format!("{PREFIX}used:{}", usage_key(usage, id)))
            .query_async(&mut c)
            .await
            .map_err(map_err)?;
        let Some(record) = record else {
            return Ok(None);
        };
        let mut item: T = decode(what, &record)?;
        if let Some(at) = used.and_then(chrono::DateTime::from_timestamp_millis) {
            item.set_last_use(at);
        }
        Ok(Some(item))
    }

    async fn update(&self, kind: &str, id: &str, json: Vec<u8>) -> StoreResult<()> {
        let mut c = self.conn().await?;
        let done: i64 = self
            .scripts
            .update
            .key(key(kind, id))
            .arg(json)
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        if done == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound)
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, message: &str) -> StoreResult<()> {
        let mut c = self.conn().await?;
        let _: i64 = c
            .publish(INVALIDATION_CHANNEL, message)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    fn subscriber(&self) -> Option<(Subscriber, &'static str)> {
        Some((self.topology.subscriber(), INVALIDATION_CHANNEL))
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut c = self.conn().await?;
        let _: String = redis::cmd("PING")
            .query_async(&mut c)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn user(&self, id: &str) -> StoreResult<Option<User>> {
        self.get("user", "user", id).await
    }

    async fn users(&self) -> StoreResult<Vec<User>> {
        self.all("user", "user", set("users")).await
    }

    async fn insert_user(&self, user: &User) -> StoreResult<()> {
        self.insert("user", "users", &user.id, encode(user)?).await
    }

    async fn update_user(&self, user: &User) -> StoreResult<()> {
        self.update("user", &user.id, encode(user)?).await
    }

    async fn delete_user(&self, id: &str) -> StoreResult<DeletedUser> {
        let mut c = self.conn().await?;
        let deleted: Option<(Vec<String>, Vec<String>, Vec<String>)> = self
            .scripts
            .delete_user
            .key(key("user", id))
            .key(set("users"))
            .key(USER_TOKENS.index_key(id))
            .key(set(USER_TOKENS.all))
            .key(TICKETS.index_key(id))
            .key(set(TICKETS.all))
            .key(SESSIONS.index_key(id))
            .key(set(SESSIONS.all))
            .arg(id)
            .arg(PREFIX)
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        let (user_tokens, tickets, sessions) = deleted.ok_or(StoreError::NotFound)?;
        Ok(DeletedUser {
            user_tokens,
            tickets,
            sessions,
        })
    }

    async fn app(&self, id: &str) -> StoreResult<Option<App>> {
        self.get("app", "app", id).await
    }

    async fn apps(&self) -> StoreResult<Vec<App>> {
        self.all("app", "app", set("apps")).await
    }

    async fn insert_app(&self, app: &App) -> StoreResult<()> {
        self.insert("app", "apps", &app.id, encode(app)?).await
    }

    async fn update_app(&self, app: &App) -> StoreResult<()> {
        self.update("app", &app.id, encode(app)?).await
    }

    async fn delete_app(&self, id: &str) -> StoreResult<Vec<String>> {
        let mut c = self.conn().await?;
        let deleted: Option<Vec<String>> = self
            .scripts
            .delete_app
            .key(key("app", id))
            .key(set("apps"))
            .key(APP_TOKENS.index_key(id))
            .key(set(APP_TOKENS.all))
            .arg(id)
            .arg(PREFIX)
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        deleted.ok_or(StoreError::NotFound)
    }

    async fn user_token(&self, id: &str) -> StoreResult<Option<UserToken>> {
        self.get_with_usage(USER_TOKENS.kind, "user token", id, UsageKind::UserToken)
            .await
    }

    async fn user_tokens(&self, filter: &TokenFilter) -> StoreResult<Vec<UserToken>> {
        let index = match &filter.user {
            Some(user) => USER_TOKENS.index_key(user),
            None => set(USER_TOKENS.all),
        };
        let mut tokens: Vec<UserToken> = self.all("utok", "user token", index).await?;
        tokens.retain(|t| filter.matches(t));
        self.with_usage(tokens).await
    }

    async fn insert_user_token(&self, token: &UserToken, limit: usize) -> StoreResult<()> {
        self.insert_owned(
            &USER_TOKENS,
            &token.user_id,
            &token.id,
            encode(token)?,
            limit,
        )
        .await
    }

    async fn update_user_token(&self, token: &UserToken) -> StoreResult<()> {
        self.update("utok", &token.id, encode(token)?).await
    }

    async fn delete_user_token(&self, id: &str) -> StoreResult<()> {
        self.delete_owned(&USER_TOKENS, id).await
    }

    async fn ticket(&self, id: &str) -> StoreResult<Option<Ticket>> {
        self.get_with_usage(TICKETS.kind, "ticket", id, UsageKind::Ticket)
            .await
    }

    async fn tickets(&self, user: Option<&str>) -> StoreResult<Vec<Ticket>> {
        let index = user.map_or_else(|| set(TICKETS.all), |u| TICKETS.index_key(u));
        let tickets = self.all(TICKETS.kind, "ticket", index).await?;
        self.with_usage(tickets).await
    }

    async fn record_usage(&self, used: &[Usage]) -> StoreResult<()> {
        let mut c = self.conn().await?;
        // The pipeline calls the script by its hash: make sure the server has it.
        let _: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(RECORD_USAGE)
            .query_async(&mut c)
            .await
            .map_err(map_err)?;
        let mut pipe = redis::pipe();
        for u in used {
            let record = match u.kind {
                UsageKind::UserToken => key(USER_TOKENS.kind, &u.id),
                UsageKind::Ticket => key(TICKETS.kind, &u.id),
                UsageKind::Session => key(SESSIONS.kind, &u.id),
            };
            pipe.invoke_script(
                self.scripts
                    .record_usage
                    .key(format!("{PREFIX}used:{}", usage_key(u.kind, &u.id)))
                    .key(record)
                    .arg(u.at.timestamp_millis()),
            )
            .ignore();
        }
        let () = pipe.query_async(&mut c).await.map_err(map_err)?;
        Ok(())
    }

    async fn insert_ticket(&self, ticket: &Ticket) -> StoreResult<()> {
        self.insert_owned(&TICKETS, &ticket.user_id, &ticket.id, encode(ticket)?, 0)
            .await
    }

    async fn update_ticket(&self, ticket: &Ticket) -> StoreResult<()> {
        self.update(TICKETS.kind, &ticket.id, encode(ticket)?).await
    }

    async fn session(&self, id: &str) -> StoreResult<Option<Session>> {
        self.get_with_usage(SESSIONS.kind, "session", id, UsageKind::Session)
            .await
    }

    async fn sessions(&self, user: Option<&str>) -> StoreResult<Vec<Session>> {
        let index = user.map_or_else(|| set(SESSIONS.all), |u| SESSIONS.index_key(u));
        let sessions = self.all(SESSIONS.kind, "session", index).await?;
        self.with_usage(sessions).await
    }

    async fn insert_session(&self, session: &Session) -> StoreResult<()> {
        self.insert_owned(
            &SESSIONS,
            &session.user_id,
            &session.id,
            encode(session)?,
            0,
        )
        .await
    }

    async fn update_session(&self, session: &Session) -> StoreResult<()> {
        self.update(SESSIONS.kind, &session.id, encode(session)?)
            .await
    }

    async fn signing_keys(&self) -> StoreResult<Option<Vec<u8>>> {
        let mut c = self.conn().await?;
        c.get(set("meta:signing_keys")).await.map_err(map_err)
    }

    async fn init_signing_keys(&self, keys: Vec<u8>) -> StoreResult<Vec<u8>> {
        let mut c = self.conn().await?;
        let k = set("meta:signing_keys");
        let _: bool = c.set_nx(&k, keys).await.map_err(map_err)?;
        c.get(&k).await.map_err(map_err)
    }

    async fn app_token(&self, id: &str) -> StoreResult<Option<AppToken>> {
        self.get(APP_TOKENS.kind, "app token", id).await
    }

    async fn app_tokens(&self, app_id: &str) -> StoreResult<Vec<AppToken>> {
        self.all(APP_TOKENS.kind, "app token", APP_TOKENS.index_key(app_id))
            .await
    }

    async fn insert_app_token(&self, token: &AppToken, limit: usize) -> StoreResult<()> {
        self.insert_owned(&APP_TOKENS, &token.app_id, &token.id, encode(token)?, limit)
            .await
    }

    async fn delete_app_token(&self, id: &str) -> StoreResult<()> {
        self.delete_owned(&APP_TOKENS, id).await
    }

    async fn admin_key_hash(&self) -> StoreResult<Option<[u8; 32]>> {
        let mut c = self.conn().await?;
        let v: Option<Vec<u8>> = c.get(set("meta:admin_key_hash")).await.map_err(map_err)?;
        Ok(v.and_then(|v| v.try_into().ok()))
    }

    async fn init_admin_key_hash(&self, hash: [u8; 32]) -> StoreResult<[u8; 32]> {
        let mut c = self.conn().await?;
        let k = set("meta:admin_key_hash");
        let _: bool = c.set_nx(&k, hash.as_slice()).await.map_err(map_err)?;
        let kept: Vec<u8> = c.get(&k).await.map_err(map_err)?;
        kept.try_into()
            .map_err(|_| StoreError::Backend("unreadable admin key hash".to_owned()))
    }
}
