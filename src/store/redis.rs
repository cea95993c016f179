//! The Redis backend, shared by every replica. Records are JSON strings; sets index them.
//! Writes that touch several keys run as Lua scripts, so each is atomic and a failed write
//! leaves nothing half-written.
//!
//! The connection is made on first use, on the runtime of whoever uses it first: a redis-rs
//! connection is driven by the runtime it was made on, and Pingora gives each service its own
//! long-lived runtime, so it must not be made in a short-lived one (such as `main`'s).
//!
//! Keys (prefix `tg:`): `user:{id}`, `users` (set), `app:{id}`, `apps` (set), `utok:{id}`,
//! `utoks` (set), `user:{id}:utoks` (set of that user's token ids), `meta:admin_key_hash`.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, RedisError, Script};
use tokio::sync::OnceCell;

use super::{Store, StoreError, StoreResult, TokenFilter, decode, encode};
use crate::model::{App, User, UserToken};

const PREFIX: &str = "tg:";

pub struct RedisStore {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    scripts: Scripts,
}

struct Scripts {
    insert: Script,
    update: Script,
    delete: Script,
    delete_user: Script,
    insert_token: Script,
    delete_token: Script,
}

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

/// KEYS: record, index set. ARGV: id. 1 = done, 0 = no such record.
const DELETE: &str = r"
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('SREM', KEYS[2], ARGV[1])
return 1";

/// KEYS: user, users set, the user's token set, all-tokens set. ARGV: user id, key prefix.
/// Returns the deleted token ids, or false when there is no such user.
const DELETE_USER: &str = r"
if redis.call('DEL', KEYS[1]) == 0 then return false end
redis.call('SREM', KEYS[2], ARGV[1])
local ids = redis.call('SMEMBERS', KEYS[3])
for _, id in ipairs(ids) do
  redis.call('DEL', ARGV[2] .. 'utok:' .. id)
  redis.call('SREM', KEYS[4], id)
end
redis.call('DEL', KEYS[3])
return ids";

/// KEYS: user, token, the user's token set, all-tokens set. ARGV: json, token id, limit.
/// 1 = done, -1 = no such user, -2 = id taken, -3 = limit reached.
const INSERT_TOKEN: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('EXISTS', KEYS[2]) == 1 then return -2 end
if redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[3]) then return -3 end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[2])
return 1";

/// KEYS: token, all-tokens set. ARGV: token id, key prefix. 1 = done, 0 = no such token.
const DELETE_TOKEN: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local t = cjson.decode(v)
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', ARGV[2] .. 'user:' .. t.user_id .. ':utoks', ARGV[1])
return 1";

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

fn user_tokens_key(user_id: &str) -> String {
    format!("{PREFIX}user:{user_id}:utoks")
}

fn map_err(e: RedisError) -> StoreError {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

impl RedisStore {
    /// Checks the URL; connects on first use.
    pub fn new(url: &str) -> StoreResult<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Backend(format!("bad store.url: {e}")))?;
        Ok(Self {
            client,
            conn: OnceCell::new(),
            scripts: Scripts {
                insert: Script::new(INSERT),
                update: Script::new(UPDATE),
                delete: Script::new(DELETE),
                delete_user: Script::new(DELETE_USER),
                insert_token: Script::new(INSERT_TOKEN),
                delete_token: Script::new(DELETE_TOKEN),
            },
        })
    }

    async fn conn(&self) -> StoreResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1);
        self.conn
            .get_or_try_init(|| self.client.get_connection_manager_with_config(config))
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
        c: &mut ConnectionManager,
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

    async fn delete_user(&self, id: &str) -> StoreResult<Vec<String>> {
        let mut c = self.conn().await?;
        let deleted: Option<Vec<String>> = self
            .scripts
            .delete_user
            .key(key("user", id))
            .key(set("users"))
            .key(user_tokens_key(id))
            .key(set("utoks"))
            .arg(id)
            .arg(PREFIX)
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        deleted.ok_or(StoreError::NotFound)
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

    async fn delete_app(&self, id: &str) -> StoreResult<()> {
        let mut c = self.conn().await?;
        let done: i64 = self
            .scripts
            .delete
            .key(key("app", id))
            .key(set("apps"))
            .arg(id)
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        if done == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound)
        }
    }

    async fn user_token(&self, id: &str) -> StoreResult<Option<UserToken>> {
        self.get("utok", "user token", id).await
    }

    async fn user_tokens(&self, filter: &TokenFilter) -> StoreResult<Vec<UserToken>> {
        let index = match &filter.user {
            Some(user) => user_tokens_key(user),
            None => set("utoks"),
        };
        let mut tokens: Vec<UserToken> = self.all("utok", "user token", index).await?;
        tokens.retain(|t| filter.matches(t));
        Ok(tokens)
    }

    async fn insert_user_token(&self, token: &UserToken, limit: usize) -> StoreResult<()> {
        let mut c = self.conn().await?;
        let done: i64 = self
            .scripts
            .insert_token
            .key(key("user", &token.user_id))
            .key(key("utok", &token.id))
            .key(user_tokens_key(&token.user_id))
            .key(set("utoks"))
            .arg(encode(token)?)
            .arg(&token.id)
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

    async fn update_user_token(&self, token: &UserToken) -> StoreResult<()> {
        self.update("utok", &token.id, encode(token)?).await
    }

    async fn delete_user_token(&self, id: &str) -> StoreResult<()> {
        let mut c = self.conn().await?;
        let done: i64 = self
            .scripts
            .delete_token
            .key(key("utok", id))
            .key(set("utoks"))
            .arg(id)
            .arg(PREFIX)
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        if done == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound)
        }
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
