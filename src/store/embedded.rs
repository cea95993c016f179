//! The embedded backend: one redb file (ACID, crash-safe, pure Rust). redb is synchronous, so
//! every call runs on tokio's blocking pool; it is only reached on a cache miss or an admin
//! write. Records are JSON, the same bytes the Redis backend keeps.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{
    Database, MultimapTableDefinition, ReadTransaction, ReadableDatabase, ReadableMultimapTable,
    ReadableTable, TableDefinition, WriteTransaction,
};

use super::{DeletedUser, Store, StoreError, StoreResult, TokenFilter, decode, encode};
use crate::model::{App, AppToken, Session, Ticket, User, UserToken};
use crate::usage::{Usage, UsageKind, UsageRecord, usage_key};

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("user_tokens");
/// user id -> ids of the tokens it owns.
const TOKENS_BY_USER: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("user_tokens_by_user");
const TICKETS: TableDefinition<&str, &[u8]> = TableDefinition::new("tickets");
/// user id -> ids of its tickets.
const TICKETS_BY_USER: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("tickets_by_user");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// user id -> ids of its sessions.
const SESSIONS_BY_USER: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("sessions_by_user");
const APP_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("app_tokens");
/// app id -> ids of its app tokens.
const APP_TOKENS_BY_APP: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("app_tokens_by_app");
/// `utok:{id}` / `ticket:{id}` -> last use, in milliseconds since the epoch.
const USAGE: TableDefinition<&str, i64> = TableDefinition::new("usage");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const ADMIN_KEY_HASH: &str = "admin_key_hash";
const SIGNING_KEYS: &str = "signing_keys";

pub struct EmbeddedStore {
    db: Arc<Database>,
}

fn backend_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl EmbeddedStore {
    /// A record of a user's (a ticket, a session): refused when there is no such user.
    async fn insert_for_user(
        &self,
        records: Records,
        index: Index,
        user_id: &str,
        id: &str,
        bytes: Vec<u8>,
    ) -> StoreResult<()> {
        let (user_id, id) = (user_id.to_owned(), id.to_owned());
        self.write(move |txn| {
            let users = txn.open_table(USERS).map_err(backend_error)?;
            if users
                .get(user_id.as_str())
                .map_err(backend_error)?
                .is_none()
            {
                return Err(StoreError::NotFound);
            }
            insert_owned(txn, records, index, &user_id, &id, &bytes, None)
        })
        .await
    }

    /// Opens (or creates) the store file, creating its parent directory if needed.
    pub fn open(path: &Path) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Backend(format!("can't create {}: {e}", dir.display())))?;
        }
        let db = Database::create(path)
            .map_err(|e| StoreError::Backend(format!("can't open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(backend_error)?;
        {
            txn.open_table(USERS).map_err(backend_error)?;
            txn.open_table(APPS).map_err(backend_error)?;
            txn.open_table(TOKENS).map_err(backend_error)?;
            txn.open_multimap_table(TOKENS_BY_USER)
                .map_err(backend_error)?;
            txn.open_table(TICKETS).map_err(backend_error)?;
            txn.open_multimap_table(TICKETS_BY_USER)
                .map_err(backend_error)?;
            txn.open_table(SESSIONS).map_err(backend_error)?;
            txn.open_multimap_table(SESSIONS_BY_USER)
                .map_err(backend_error)?;
            txn.open_table(APP_TOKENS).map_err(backend_error)?;
            txn.open_multimap_table(APP_TOKENS_BY_APP)
                .map_err(backend_error)?;
            txn.open_table(USAGE).map_err(backend_error)?;
            txn.open_table(META).map_err(backend_error)?;
        }
        txn.commit().map_err(backend_error)?;
        Ok(Self { db: Arc::new(db) })
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> StoreResult<T> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db.begin_read().map_err(backend_error)?))
            .await
            .map_err(backend_error)?
    }

    /// Runs `f` in one write transaction, committed only when `f` succeeds.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(backend_error)?;
            let out = f(&txn)?;
            txn.commit().map_err(backend_error)?;
            Ok(out)
        })
        .await
        .map_err(backend_error)?
    }

    async fn get<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        what: &'static str,
        id: &str,
    ) -> StoreResult<Option<T>> {
        let id = id.to_owned();
        self.read(move |txn| {
            let t = txn.open_table(table).map_err(backend_error)?;
            match t.get(id.as_str()).map_err(backend_error)? {
                Some(v) => decode(what, v.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn all<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        what: &'static str,
    ) -> StoreResult<Vec<T>> {
        self.read(move |txn| {
            let t = txn.open_table(table).map_err(backend_error)?;
            let mut out = Vec::new();
            for entry in t.iter().map_err(backend_error)? {
                let (_, v) = entry.map_err(backend_error)?;
                out.push(decode(what, v.value())?);
            }
            Ok(out)
        })
        .await
    }

    /// Inserts `bytes` at `id`: `must_exist` makes it an update (NotFound when absent),
    /// otherwise an insert (Conflict when present).
    async fn put(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        id: &str,
        bytes: Vec<u8>,
        must_exist: bool,
    ) -> StoreResult<()> {
        let id = id.to_owned();
        self.write(move |txn| {
            let mut t = txn.open_table(table).map_err(backend_error)?;
            let exists = t.get(id.as_str()).map_err(backend_error)?.is_some();
            match (exists, must_exist) {
                (true, false) => return Err(StoreError::Conflict),
                (false, true) => return Err(StoreError::NotFound),
                _ => {}
            }
            t.insert(id.as_str(), bytes.as_slice())
                .map_err(backend_error)?;
            Ok(())
        })
        .await
    }
}

type Records = TableDefinition<'static, &'static str, &'static [u8]>;
type Index = MultimapTableDefinition<'static, &'static str, &'static str>;

/// Removes every record `owner` holds through `index`; returns their ids.
fn remove_owned(
    txn: &WriteTransaction,
    index: Index,
    records: Records,
    owner: &str,
    usage: Option<UsageKind>,
) -> StoreResult<Vec<String>> {
    let mut index = txn.open_multimap_table(index).map_err(backend_error)?;
    let mut ids = Vec::new();
    for id in index.remove_all(owner).map_err(backend_error)? {
        ids.push(id.map_err(backend_error)?.value().to_owned());
    }
    let mut records = txn.open_table(records).map_err(backend_error)?;
    let mut uses = txn.open_table(USAGE).map_err(backend_error)?;
    for id in &ids {
        records.remove(id.as_str()).map_err(backend_error)?;
        if let Some(kind) = usage {
            uses.remove(usage_key(kind, id).as_str())
                .map_err(backend_error)?;
        }
    }
    Ok(ids)
}

/// Inserts a record owned by `owner` and indexes it, refusing a taken id and, with a
/// `limit`, an owner that already holds that many.
fn insert_owned(
    txn: &WriteTransaction,
    records: Records,
    index: Index,
    owner: &str,
    id: &str,
    bytes: &[u8],
    limit: Option<usize>,
) -> StoreResult<()> {
    let mut records = txn.open_table(records).map_err(backend_error)?;
    if records.get(id).map_err(backend_error)?.is_some() {
        return Err(StoreError::Conflict);
    }
    let mut index = txn.open_multimap_table(index).map_err(backend_error)?;
    if let Some(limit) = limit {
        let held = index.get(owner).map_err(backend_error)?.len();
        if held >= limit as u64 {
            return Err(StoreError::LimitReached(limit));
        }
    }
    records.insert(id, bytes).map_err(backend_error)?;
    index.insert(owner, id).map_err(backend_error)?;
    Ok(())
}

impl EmbeddedStore {
    /// Fills in each record's last use.
    async fn with_usage<T: UsageRecord + Send + 'static>(
        &self,
        mut items: Vec<T>,
    ) -> StoreResult<Vec<T>> {
        if items.is_empty() {
            return Ok(items);
        }
        self.read(move |txn| {
            let uses = txn.open_table(USAGE).map_err(backend_error)?;
            for item in &mut items {
                if let Some(ms) = uses.get(item.usage_key().as_str()).map_err(backend_error)?
                    && let Some(at) = chrono::DateTime::from_timestamp_millis(ms.value())
                {
                    item.set_last_use(at);
                }
            }
            Ok(items)
        })
        .await
    }

    /// One record and its last use, in one read transaction (a cache miss waits on it).
    async fn get_with_usage<T: serde::de::DeserializeOwned + UsageRecord + Send + 'static>(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        what: &'static str,
        id: &str,
    ) -> StoreResult<Option<T>> {
        let id = id.to_owned();
        self.read(move |txn| {
            let t = txn.open_table(table).map_err(backend_error)?;
            let Some(bytes) = t.get(id.as_str()).map_err(backend_error)? else {
                return Ok(None);
            };
            let mut item: T = decode(what, bytes.value())?;
            let uses = txn.open_table(USAGE).map_err(backend_error)?;
            if let Some(ms) = uses.get(item.usage_key().as_str()).map_err(backend_error)?
                && let Some(at) = chrono::DateTime::from_timestamp_millis(ms.value())
            {
                item.set_last_use(at);
            }
            Ok(Some(item))
        })
        .await
    }

    /// The records `owner` holds through `index`, sorted by id.
    async fn owned<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        index: Index,
        records: Records,
        what: &'static str,
        owner: &str,
    ) -> StoreResult<Vec<T>> {
        let owner = owner.to_owned();
        self.read(move |txn| {
            let index = txn.open_multimap_table(index).map_err(backend_error)?;
            let records = txn.open_table(records).map_err(backend_error)?;
            let mut ids = Vec::new();
            for id in index.get(owner.as_str()).map_err(backend_error)? {
                ids.push(id.map_err(backend_error)?.value().to_owned());
            }
            ids.sort();
            let mut out = Vec::new();
            for id in ids {
                if let Some(v) = records.get(id.as_str()).map_err(backend_error)? {
                    out.push(decode(what, v.value())?);
                }
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|txn| {
            txn.open_table(META).map_err(backend_error)?;
            Ok(())
        })
        .await
    }

    async fn user(&self, id: &str) -> StoreResult<Option<User>> {
        self.get(USERS, "user", id).await
    }

    async fn users(&self) -> StoreResult<Vec<User>> {
        self.all(USERS, "user").await
    }

    async fn insert_user(&self, user: &User) -> StoreResult<()> {
        self.put(USERS, &user.id, encode(user)?, false).await
    }

    async fn update_user(&self, user: &User) -> StoreResult<()> {
        self.put(USERS, &user.id, encode(user)?, true).await
    }

    async fn delete_user(&self, id: &str) -> StoreResult<DeletedUser> {
        let id = id.to_owned();
        self.write(move |txn| {
            let mut users = txn.open_table(USERS).map_err(backend_error)?;
            if users.remove(id.as_str()).map_err(backend_error)?.is_none() {
                return Err(StoreError::NotFound);
            }
            Ok(DeletedUser {
                user_tokens: remove_owned(
                    txn,
                    TOKENS_BY_USER,
                    TOKENS,
                    &id,
                    Some(UsageKind::UserToken),
                )?,
                tickets: remove_owned(txn, TICKETS_BY_USER, TICKETS, &id, Some(UsageKind::Ticket))?,
                sessions: remove_owned(
                    txn,
                    SESSIONS_BY_USER,
                    SESSIONS,
                    &id,
                    Some(UsageKind::Session),
                )?,
            })
        })
        .await
    }

    async fn app(&self, id: &str) -> StoreResult<Option<App>> {
        self.get(APPS, "app", id).await
    }

    async fn apps(&self) -> StoreResult<Vec<App>> {
        self.all(APPS, "app").await
    }

    async fn insert_app(&self, app: &App) -> StoreResult<()> {
        self.put(APPS, &app.id, encode(app)?, false).await
    }

    async fn update_app(&self, app: &App) -> StoreResult<()> {
        self.put(APPS, &app.id, encode(app)?, true).await
    }

    async fn delete_app(&self, id: &str) -> StoreResult<Vec<String>> {
        let id = id.to_owned();
        self.write(move |txn| {
            let mut apps = txn.open_table(APPS).map_err(backend_error)?;
            if apps.remove(id.as_str()).map_err(backend_error)?.is_none() {
                return Err(StoreError::NotFound);
            }
            remove_owned(txn, APP_TOKENS_BY_APP, APP_TOKENS, &id, None)
        })
        .await
    }

    async fn user_token(&self, id: &str) -> StoreResult<Option<UserToken>> {
        self.get_with_usage(TOKENS, "user token", id).await
    }

    async fn user_tokens(&self, filter: &TokenFilter) -> StoreResult<Vec<UserToken>> {
        let filter = filter.clone();
        self.read(move |txn| {
            let tokens = txn.open_table(TOKENS).map_err(backend_error)?;
            let mut out = Vec::new();
            if let Some(user) = &filter.user {
                let by_user = txn
                    .open_multimap_table(TOKENS_BY_USER)
                    .map_err(backend_error)?;
                for tid in by_user.get(user.as_str()).map_err(backend_error)? {
                    let tid = tid.map_err(backend_error)?;
                    if let Some(v) = tokens.get(tid.value()).map_err(backend_error)? {
                        out.push(decode::<UserToken>("user token", v.value())?);
                    }
                }
            } else {
                for entry in tokens.iter().map_err(backend_error)? {
                    let (_, v) = entry.map_err(backend_error)?;
                    out.push(decode::<UserToken>("user token", v.value())?);
                }
            }
            out.retain(|t| filter.matches(t));
            out.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(out)
        })
        .await
        .map(|tokens| self.with_usage(tokens))?
        .await
    }

    async fn insert_user_token(&self, token: &UserToken, limit: usize) -> StoreResult<()> {
        let bytes = encode(token)?;
        let (id, user_id) = (token.id.clone(), token.user_id.clone());
        self.write(move |txn| {
            let users = txn.open_table(USERS).map_err(backend_error)?;
            if users
                .get(user_id.as_str())
                .map_err(backend_error)?
                .is_none()
            {
                return Err(StoreError::NotFound);
            }
            insert_owned(
                txn,
                TOKENS,
                TOKENS_BY_USER,
                &user_id,
                &id,
                &bytes,
                Some(limit),
            )
        })
        .await
    }

    async fn update_user_token(&self, token: &UserToken) -> StoreResult<()> {
        self.put(TOKENS, &token.id, encode(token)?, true).await
    }

    async fn delete_user_token(&self, id: &str) -> StoreResult<()> {
        let id = id.to_owned();
        self.write(move |txn| {
            let mut tokens = txn.open_table(TOKENS).map_err(backend_error)?;
            let Some(old) = tokens.remove(id.as_str()).map_err(backend_error)? else {
                return Err(StoreError::NotFound);
            };
            let token: UserToken = decode("user token", old.value())?;
            drop(old);
            txn.open_table(USAGE)
                .map_err(backend_error)?
                .remove(usage_key(UsageKind::UserToken, &id).as_str())
                .map_err(backend_error)?;
            let mut by_user = txn
                .open_multimap_table(TOKENS_BY_USER)
                .map_err(backend_error)?;
            by_user
                .remove(token.user_id.as_str(), id.as_str())
                .map_err(backend_error)?;
            Ok(())
        })
        .await
    }

    async fn ticket(&self, id: &str) -> StoreResult<Option<Ticket>> {
        self.get_with_usage(TICKETS, "ticket", id).await
    }

    async fn tickets(&self, user: Option<&str>) -> StoreResult<Vec<Ticket>> {
        let tickets = match user {
            None => self.all(TICKETS, "ticket").await?,
            Some(user) => self.owned(TICKETS_BY_USER, TICKETS, "ticket", user).await?,
        };
        self.with_usage(tickets).await
    }

    async fn record_usage(&self, used: &[Usage]) -> StoreResult<()> {
        let used = used.to_vec();
        self.write(move |txn| {
            let tokens = txn.open_table(TOKENS).map_err(backend_error)?;
            let tickets = txn.open_table(TICKETS).map_err(backend_error)?;
            let sessions = txn.open_table(SESSIONS).map_err(backend_error)?;
            let mut uses = txn.open_table(USAGE).map_err(backend_error)?;
            for u in used {
                let exists = match u.kind {
                    UsageKind::UserToken => tokens.get(u.id.as_str()),
                    UsageKind::Ticket => tickets.get(u.id.as_str()),
                    UsageKind::Session => sessions.get(u.id.as_str()),
                }
                .map_err(backend_error)?
                .is_some();
                // A credential deleted since its use gets no orphan entry.
                if !exists {
                    continue;
                }
                let key = usage_key(u.kind, &u.id);
                let ms = u.at.timestamp_millis();
                let newer = uses
                    .get(key.as_str())
                    .map_err(backend_error)?
                    .is_none_or(|kept| kept.value() < ms);
                if newer {
                    uses.insert(key.as_str(), ms).map_err(backend_error)?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn insert_ticket(&self, ticket: &Ticket) -> StoreResult<()> {
        self.insert_for_user(
            TICKETS,
            TICKETS_BY_USER,
            &ticket.user_id,
            &ticket.id,
            encode(ticket)?,
        )
        .await
    }

    async fn update_ticket(&self, ticket: &Ticket) -> StoreResult<()> {
        self.put(TICKETS, &ticket.id, encode(ticket)?, true).await
    }

    async fn session(&self, id: &str) -> StoreResult<Option<Session>> {
        self.get_with_usage(SESSIONS, "session", id).await
    }

    async fn sessions(&self, user: Option<&str>) -> StoreResult<Vec<Session>> {
        let sessions = match user {
            None => self.all(SESSIONS, "session").await?,
            Some(user) => {
                self.owned(SESSIONS_BY_USER, SESSIONS, "session", user)
                    .await?
            }
        };
        self.with_usage(sessions).await
    }

    async fn insert_session(&self, session: &Session) -> StoreResult<()> {
        self.insert_for_user(
            SESSIONS,
            SESSIONS_BY_USER,
            &session.user_id,
            &session.id,
            encode(session)?,
        )
        .await
    }

    async fn update_session(&self, session: &Session) -> StoreResult<()> {
        self.put(SESSIONS, &session.id, encode(session)?, true)
            .await
    }

    async fn signing_keys(&self) -> StoreResult<Option<Vec<u8>>> {
        self.read(|txn| {
            let meta = txn.open_table(META).map_err(backend_error)?;
            let v = meta.get(SIGNING_KEYS).map_err(backend_error)?;
            Ok(v.map(|v| v.value().to_vec()))
        })
        .await
    }

    async fn init_signing_keys(&self, keys: Vec<u8>) -> StoreResult<Vec<u8>> {
        self.write(move |txn| {
            let mut meta = txn.open_table(META).map_err(backend_error)?;
            if let Some(kept) = meta.get(SIGNING_KEYS).map_err(backend_error)? {
                return Ok(kept.value().to_vec());
            }
            meta.insert(SIGNING_KEYS, keys.as_slice())
                .map_err(backend_error)?;
            Ok(keys)
        })
        .await
    }

    async fn app_token(&self, id: &str) -> StoreResult<Option<AppToken>> {
        self.get(APP_TOKENS, "app token", id).await
    }

    async fn app_tokens(&self, app_id: &str) -> StoreResult<Vec<AppToken>> {
        self.owned(APP_TOKENS_BY_APP, APP_TOKENS, "app token", app_id)
            .await
    }

    async fn insert_app_token(&self, token: &AppToken, limit: usize) -> StoreResult<()> {
        let bytes = encode(token)?;
        let (id, app_id) = (token.id.clone(), token.app_id.clone());
        self.write(move |txn| {
            let apps = txn.open_table(APPS).map_err(backend_error)?;
            if apps.get(app_id.as_str()).map_err(backend_error)?.is_none() {
                return Err(StoreError::NotFound);
            }
            insert_owned(
                txn,
                APP_TOKENS,
                APP_TOKENS_BY_APP,
                &app_id,
                &id,
                &bytes,
                Some(limit),
            )
        })
        .await
    }

    async fn delete_app_token(&self, id: &str) -> StoreResult<()> {
        let id = id.to_owned();
        self.write(move |txn| {
            let mut tokens = txn.open_table(APP_TOKENS).map_err(backend_error)?;
            let Some(old) = tokens.remove(id.as_str()).map_err(backend_error)? else {
                return Err(StoreError::NotFound);
            };
            let token: AppToken = decode("app token", old.value())?;
            drop(old);
            let mut by_app = txn
                .open_multimap_table(APP_TOKENS_BY_APP)
                .map_err(backend_error)?;
            by_app
                .remove(token.app_id.as_str(), id.as_str())
                .map_err(backend_error)?;
            Ok(())
        })
        .await
    }

    async fn admin_key_hash(&self) -> StoreResult<Option<[u8; 32]>> {
        self.read(|txn| {
            let meta = txn.open_table(META).map_err(backend_error)?;
            let v = meta.get(ADMIN_KEY_HASH).map_err(backend_error)?;
            Ok(v.and_then(|v| v.value().try_into().ok()))
        })
        .await
    }

    async fn init_admin_key_hash(&self, hash: [u8; 32]) -> StoreResult<[u8; 32]> {
        self.write(move |txn| {
            let mut meta = txn.open_table(META).map_err(backend_error)?;
            if let Some(kept) = meta.get(ADMIN_KEY_HASH).map_err(backend_error)?
                && let Ok(kept) = kept.value().try_into()
            {
                return Ok(kept);
            }
            meta.insert(ADMIN_KEY_HASH, hash.as_slice())
                .map_err(backend_error)?;
            Ok(hash)
        })
        .await
    }
}
