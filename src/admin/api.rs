//! `/v1`: users, apps and user tokens (PRODUCT.md §6, §11). Bodies are read whole (64 KiB at
//! most), unknown fields refused, and every validation error names its field. A change is
//! written to the store first, then the cache is told, so a refused credential is refused at
//! once.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};

use super::AdminState;
use crate::cache::Invalidation;
use crate::credential::format::{self, TokenKind};
use crate::model::{App, AppToken, User, UserStatus, UserToken};
use crate::store::{StoreError, TokenFilter};

const MAX_BODY: usize = 64 * 1024;
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

type Shared = State<Arc<AdminState>>;

pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/v1/users", get(list_users).post(create_user))
        .route(
            "/v1/users/{id}",
            get(get_user).patch(patch_user).delete(delete_user),
        )
        .route("/v1/users/{id}/tokens", post(create_token))
        .route(
            "/v1/users/{id}/password",
            post(set_password).put(set_password),
        )
        .route(
            "/v1/users/{id}/sessions",
            get(list_user_sessions).delete(delete_user_sessions),
        )
        .route(
            "/v1/apps/{id}/app-tokens",
            get(list_app_tokens).post(create_app_token),
        )
        .route(
            "/v1/apps/{id}/app-tokens/{tid}",
            axum::routing::delete(delete_app_token),
        )
        .route("/v1/sessions", get(list_sessions))
        .route("/v1/sessions/delete", post(delete_sessions))
        .route("/v1/sessions/{id}", axum::routing::delete(delete_session))
        .route("/v1/apps", get(list_apps).post(create_app))
        .route(
            "/v1/apps/{id}",
            get(get_app).patch(patch_app).delete(delete_app),
        )
        .route("/v1/tokens", get(list_tokens))
        .route("/v1/tokens/delete", post(delete_tokens))
        .route(
            "/v1/tokens/{id}",
            get(get_token).patch(patch_token).delete(delete_token),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

/// An admin API error: `{"error", "message", "field"?}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.to_owned()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            message,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.code, "message": self.message});
        if let Some(field) = self.field {
            body["field"] = Value::String(field);
        }
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::not_found("not found"),
            StoreError::Conflict => Self::new(StatusCode::CONFLICT, "conflict", "that id is taken"),
            StoreError::LimitReached(n) => Self::new(
                StatusCode::CONFLICT,
                "token_limit_reached",
                format!("this user already holds {n} tokens, the most allowed"),
            ),
            StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "admin write refused: store unavailable");
                Self::unavailable("the store is not answering; nothing was changed, try again")
            }
            StoreError::Backend(cause) => {
                tracing::error!(%cause, "store error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_error",
                    "the store failed; see the server log",
                )
            }
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Reads a JSON body into `T`, naming the field at fault.
fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is over {MAX_BODY} bytes"),
        ),
        _ => ApiError::invalid("body", e.body_text()),
    })?;
    let de = &mut serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // Unknown fields are in the path; missing ones only in the message.
        let field = if path != "." {
            path
        } else {
            message
                .split_once("missing field `")
                .and_then(|(_, r)| r.split_once('`'))
                .map_or_else(|| "body".to_owned(), |(f, _)| f.to_owned())
        };
        ApiError::invalid(&field, format!("{field}: {message}"))
    })
}

/// For PATCH: absent (`None`), `null` (`Some(None)`) and a value are three different things.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn check_id(field: &str, id: &str) -> ApiResult<()> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!("{field}: 1 to 64 letters, digits, '-', '_', '.', '@'"),
        ))
    }
}

/// Names, emails and the like: not empty, no control characters, at most `max` bytes.
fn check_text(field: &str, value: &str, max: usize, required: bool) -> ApiResult<()> {
    if required && value.trim().is_empty() {
        return Err(ApiError::invalid(
            field,
            format!("{field} must not be empty"),
        ));
    }
    if value.len() > max || value.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            format!("{field}: at most {max} bytes, no control characters"),
        ));
    }
    Ok(())
}

fn check_optional(field: &str, value: Option<&str>) -> ApiResult<()> {
    value.map_or(Ok(()), |v| check_text(field, v, 200, true))
}

fn check_email(email: &str) -> ApiResult<()> {
    check_text("email", email, 254, true)?;
    match email.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !email.contains(' ') =>
        {
            Ok(())
        }
        _ => Err(ApiError::invalid("email", "email: not an email address")),
    }
}

/// Every app named exists.
/// Every app named exists and, where tenants are used, belongs to `tenant`.
async fn check_apps(state: &AdminState, apps: &[String], tenant: Option<&str>) -> ApiResult<()> {
    for id in apps {
        check_id("apps", id)?;
        let Some(app) = state.store.app(id).await? else {
            return Err(ApiError::invalid(
                "apps",
                format!("apps: there is no app {id:?}"),
            ));
        };
        if let (Some(theirs), Some(ours)) = (app.tenant.as_deref(), tenant)
            && theirs != ours
        {
            return Err(ApiError::invalid(
                "apps",
                format!("apps: app {id:?} belongs to another tenant"),
            ));
        }
    }
    Ok(())
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|x| seen.insert(x.clone()));
    v
}

#[derive(Deserialize)]
struct Page {
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `{"items": [...], "next_cursor": ...}` over a list sorted by id.
fn page<T, V: Serialize>(
    items: Vec<T>,
    id: impl Fn(&T) -> &str,
    page: &Page,
    view: impl Fn(T) -> V,
) -> ApiResult<Json<Value>> {
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::invalid(
            "limit",
            format!("limit: 1 to {MAX_PAGE}"),
        ));
    }
    let mut rest: Vec<T> = match &page.cursor {
        Some(after) => items
            .into_iter()
            .filter(|t| id(t) > after.as_str())
            .collect(),
        None => items,
    };
    let more = rest.len() > limit;
    rest.truncate(limit);
    let next = if more {
        rest.last().map(|t| id(t).to_owned())
    } else {
        None
    };
    Ok(Json(json!({
        "items": rest.into_iter().map(view).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

// ---------------------------------------------------------------- users

fn user_view(u: &User) -> Value {
    json!({
        "id": u.id, "email": u.email, "name": u.name, "department": u.department,
        "user_type": u.user_type, "tenant": u.tenant, "status": u.status, "apps": u.apps,
        "created_at": u.created_at,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    id: Option<String>,
    email: String,
    name: String,
    department: Option<String>,
    user_type: Option<String>,
    tenant: Option<String>,
    #[serde(default)]
    apps: Vec<String>,
    password: Option<String>,
}

/// A password people will type: 8 to 1024 characters.
async fn password_hash(password: String) -> ApiResult<String> {
    let n = password.chars().count();
    if !(8..=1024).contains(&n) {
        return Err(ApiError::invalid(
            "password",
            "password: 8 to 1024 characters",
        ));
    }
    crate::password::hash(password)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))
}

async fn create_user(
    State(state): Shared,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let new: NewUser = parse(body)?;
    let id = match new.id {
        Some(id) => id,
        None => format!(
            "u_{}",
            format::random_base32(12).map_err(|e| ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                e.to_string()
            ))?
        ),
    };
    check_id("id", &id)?;
    check_email(&new.email)?;
    check_text("name", &new.name, 200, true)?;
    check_optional("department", new.department.as_deref())?;
    check_optional("user_type", new.user_type.as_deref())?;
    check_optional("tenant", new.tenant.as_deref())?;
    let apps = dedup(new.apps);
    check_apps(&state, &apps, new.tenant.as_deref()).await?;
    let password_hash = match new.password {
        Some(p) => Some(password_hash(p).await?),
        None => None,
    };
    let user = User {
        id,
        email: new.email,
        name: new.name,
        department: new.department,
        user_type: new.user_type,
        tenant: new.tenant,
        status: UserStatus::Active,
        apps,
        password_hash,
        created_at: state.engine.clock().now(),
        headers: Default::default(),
    };
    state.store.insert_user(&user).await?;
    // A negative entry for this id may be cached from before it existed.
    state
        .engine
        .invalidate(&Invalidation::User(user.id.clone()))
        .await;
    tracing::info!(target: "audit", actor = %actor(), user_id = %user.id, "user created");
    Ok((StatusCode::CREATED, Json(user_view(&user))).into_response())
}

async fn list_users(State(state): Shared, Query(p): Query<Page>) -> ApiResult<Json<Value>> {
    let users = state.store.users().await?;
    page(users, |u| &u.id, &p, |u| user_view(&u))
}

async fn get_user(State(state): Shared, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let user = state
        .store
        .user(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user {id:?}")))?;
    Ok(Json(user_view(&user)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    email: Option<String>,
    name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    department: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    user_type: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    tenant: Option<Option<String>>,
    status: Option<UserStatus>,
    apps: Option<Vec<String>>,
    password: Option<String>,
}

async fn patch_user(
    State(state): Shared,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let patch: UserPatch = parse(body)?;
    let mut user = state
        .store
        .user(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user {id:?}")))?;
    if let Some(email) = patch.email {
        check_email(&email)?;
        user.email = email;
    }
    if let Some(name) = patch.name {
        check_text("name", &name, 200, true)?;
        user.name = name;
    }
    if let Some(d) = patch.department {
        check_optional("department", d.as_deref())?;
        user.department = d;
    }
    if let Some(t) = patch.user_type {
        check_optional("user_type", t.as_deref())?;
        user.user_type = t;
    }
    let tenant_changed = patch.tenant.is_some();
    if let Some(t) = patch.tenant {
        check_optional("tenant", t.as_deref())?;
        user.tenant = t;
    }
    if let Some(s) = patch.status {
        user.status = s;
    }
    if let Some(apps) = patch.apps {
        user.apps = dedup(apps);
        check_apps(&state, &user.apps, user.tenant.as_deref()).await?;
    } else if tenant_changed {
        check_apps(&state, &user.apps, user.tenant.as_deref()).await?;
    }
    if let Some(p) = patch.password {
        user.password_hash = Some(password_hash(p).await?);
    }
    state.store.update_user(&user).await?;
    state.engine.invalidate(&Invalidation::User(id)).await;
    tracing::info!(target: "audit", actor = %actor(), user_id = %user.id, status = ?user.status, "user changed");
    Ok(Json(user_view(&user)))
}

async fn delete_user(State(state): Shared, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let deleted = state.store.delete_user(&id).await?;
    let id_for_log = id.clone();
    let (user_tokens, tickets) = (deleted.user_tokens.len(), deleted.tickets.len());
    state.metrics.revoked("user_token", user_tokens);
    state.metrics.revoked("ticket", tickets);
    state.metrics.revoked("session", deleted.sessions.len());
    state.engine.invalidate(&Invalidation::User(id)).await;
    for t in deleted.user_tokens {
        state.engine.invalidate(&Invalidation::UserToken(t)).await;
    }
    for t in deleted.tickets {
        state.engine.invalidate(&Invalidation::Ticket(t)).await;
    }
    for s in &deleted.sessions {
        state
            .engine
            .invalidate(&Invalidation::Session(s.clone()))
            .await;
    }
    tracing::info!(target: "audit", actor = %actor(), user_id = %id_for_log, user_tokens = user_tokens, tickets = tickets, sessions = deleted.sessions.len(), "user deleted, with their credentials");
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- apps

fn app_view(a: &App) -> Value {
    json!({
        "id": a.id, "name": a.name, "tenant": a.tenant,
        "require_app_token": a.require_app_token, "created_at": a.created_at,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewApp {
    id: String,
    name: String,
    tenant: Option<String>,
    #[serde(default)]
    require_app_token: bool,
}

async fn create_app(
    State(state): Shared,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let new: NewApp = parse(body)?;
    check_id("id", &new.id)?;
    check_text("name", &new.name, 200, true)?;
    check_optional("tenant", new.tenant.as_deref())?;
    let app = App {
        id: new.id,
        name: new.name,
        tenant: new.tenant,
        require_app_token: new.require_app_token,
        created_at: state.engine.clock().now(),
        headers: Default::default(),
    };
    state.store.insert_app(&app).await?;
    state
        .engine
        .invalidate(&Invalidation::App(app.id.clone()))
        .await;
    tracing::info!(target: "audit", actor = %actor(), app_id = %app.id, "app created");
    Ok((StatusCode::CREATED, Json(app_view(&app))).into_response())
}

async fn list_apps(State(state): Shared, Query(p): Query<Page>) -> ApiResult<Json<Value>> {
    let apps = state.store.apps().await?;
    page(apps, |a| &a.id, &p, |a| app_view(&a))
}

async fn get_app(State(state): Shared, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let app = state
        .store
        .app(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no app {id:?}")))?;
    Ok(Json(app_view(&app)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppPatch {
    name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    tenant: Option<Option<String>>,
    require_app_token: Option<bool>,
}

async fn patch_app(
    State(state): Shared,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let patch: AppPatch = parse(body)?;
    let mut app = state
        .store
        .app(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no app {id:?}")))?;
    if let Some(name) = patch.name {
        check_text("name", &name, 200, true)?;
        app.name = name;
    }
    if let Some(t) = patch.tenant {
        check_optional("tenant", t.as_deref())?;
        app.tenant = t;
    }
    if let Some(r) = patch.require_app_token {
        app.require_app_token = r;
    }
    state.store.update_app(&app).await?;
    state.engine.invalidate(&Invalidation::App(id)).await;
    tracing::info!(target: "audit", actor = %actor(), app_id = %app.id, "app changed");
    Ok(Json(app_view(&app)))
}

async fn delete_app(State(state): Shared, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let app_tokens = state.store.delete_app(&id).await?;
    // The app's id leaves every user's and token's list too, so an app made later under the
    // same id doesn't inherit old grants.
    for mut user in state.store.users().await? {
        if user.may_use(&id) {
            user.apps.retain(|a| *a != id);
            state.store.update_user(&user).await?;
            state.engine.invalidate(&Invalidation::User(user.id)).await;
        }
    }
    let assigned = TokenFilter {
        app: Some(id.clone()),
        ..TokenFilter::default()
    };
    for mut token in state.store.user_tokens(&assigned).await? {
        token.apps.retain(|a| *a != id);
        state.store.update_user_token(&token).await?;
        state
            .engine
            .invalidate(&Invalidation::UserToken(token.id))
            .await;
    }
    state.metrics.revoked("app_token", app_tokens.len());
    tracing::info!(target: "audit", actor = %actor(), app_id = %id, app_tokens = app_tokens.len(), "app deleted, with its app tokens");
    state.engine.invalidate(&Invalidation::App(id)).await;
    for t in app_tokens {
        state.engine.invalidate(&Invalidation::AppToken(t)).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- user tokens

fn token_view(t: &UserToken, owner: Option<&User>) -> Value {
    json!({
        "id": t.id, "name": t.name, "description": t.description, "user_id": t.user_id,
        "apps": t.apps, "active": t.active, "deactivated_by_admin": t.held_by_admin,
        "expires_at": t.expires_at,
        "department": t.department, "user_type": t.user_type,
        "tenant": owner.and_then(|u| u.tenant.clone()),
        "created_at": t.created_at, "last_used_at": t.last_used_at,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    #[serde(default)]
    description: String,
    apps: Vec<String>,
    expires_at: Option<DateTime<Utc>>,
    department: Option<String>,
    user_type: Option<String>,
}

/// The token's apps: known, within the limit, and usable by the owner.
async fn check_token_apps(
    state: &AdminState,
    owner: &User,
    apps: Vec<String>,
) -> ApiResult<Vec<String>> {
    let apps = dedup(apps);
    if apps.len() > state.limits.apps_per_token {
        return Err(ApiError::invalid(
            "apps",
            format!(
                "apps: a token is assigned at most {} apps",
                state.limits.apps_per_token
            ),
        ));
    }
    check_apps(state, &apps, owner.tenant.as_deref()).await?;
    if let Some(app) = apps.iter().find(|a| !owner.may_use(a)) {
        return Err(ApiError::invalid(
            "apps",
            format!(
                "apps: user {:?} may not use app {app:?}, so neither may its token",
                owner.id
            ),
        ));
    }
    Ok(apps)
}

fn check_expiry(state: &AdminState, at: Option<DateTime<Utc>>) -> ApiResult<()> {
    match at {
        Some(at) if at <= state.engine.clock().now() => Err(ApiError::invalid(
            "expires_at",
            "expires_at must be in the future",
        )),
        _ => Ok(()),
    }
}

async fn create_token(
    State(state): Shared,
    Path(user_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let new: NewToken = parse(body)?;
    let owner = state
        .store
        .user(&user_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user {user_id:?}")))?;
    check_text("name", &new.name, 200, true)?;
    check_text("description", &new.description, 2000, false)?;
    check_optional("department", new.department.as_deref())?;
    check_optional("user_type", new.user_type.as_deref())?;
    check_expiry(&state, new.expires_at)?;
    let apps = check_token_apps(&state, &owner, new.apps).await?;
    let secret = format::generate(TokenKind::UserToken)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let token = UserToken {
        id: secret.id,
        secret_hash: secret.hash,
        name: new.name,
        description: new.description,
        user_id,
        apps,
        active: true,
        held_by_admin: false,
        expires_at: new.expires_at,
        department: new.department,
        user_type: new.user_type,
        created_at: state.engine.clock().now(),
        last_used_at: None,
        used: Default::default(),
        headers: Default::default(),
    };
    state
        .store
        .insert_user_token(&token, state.limits.tokens_per_user)
        .await?;
    state
        .engine
        .invalidate(&Invalidation::UserToken(token.id.clone()))
        .await;
    state.metrics.issued("user_token");
    tracing::info!(target: "audit", actor = %actor(), token_id = %token.id, user_id = %token.user_id, "user token created");
    let mut view = token_view(&token, Some(&owner));
    // The only time the secret is shown.
    view["token"] = Value::String(secret.token);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize)]
struct TokenQuery {
    user: Option<String>,
    app: Option<String>,
    active: Option<bool>,
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn list_tokens(State(state): Shared, Query(q): Query<TokenQuery>) -> ApiResult<Json<Value>> {
    let filter = TokenFilter {
        user: q.user,
        app: q.app,
        active: q.active,
    };
    let tokens = state.store.user_tokens(&filter).await?;
    // The tenant is the owner's: read each owner once.
    let mut tenants: std::collections::HashMap<String, Option<String>> =
        std::collections::HashMap::new();
    for t in &tokens {
        if !tenants.contains_key(&t.user_id) {
            let tenant = state.store.user(&t.user_id).await?.and_then(|u| u.tenant);
            tenants.insert(t.user_id.clone(), tenant);
        }
    }
    page(
        tokens,
        |t| &t.id,
        &Page {
            cursor: q.cursor,
            limit: q.limit,
        },
        |t| {
            let mut v = token_view(&t, None);
            v["tenant"] = json!(tenants.get(&t.user_id).cloned().flatten());
            v
        },
    )
}

async fn get_token(State(state): Shared, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let token = state
        .store
        .user_token(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no token {id:?}")))?;
    let owner = state.store.user(&token.user_id).await?;
    let mut view = token_view(&token, owner.as_ref());
    view["user_name"] = json!(owner.as_ref().map(|u| &u.name));
    view["email"] = json!(owner.as_ref().map(|u| &u.email));
    view["department"] = json!(
        token
            .department
            .as_ref()
            .or(owner.as_ref().and_then(|u| u.department.as_ref()))
    );
    view["user_type"] = json!(
        token
            .user_type
            .as_ref()
            .or(owner.as_ref().and_then(|u| u.user_type.as_ref()))
    );
    let app = token.apps.first().map_or("<app>", String::as_str);
    view["usage"] = json!({
        "header": "Authorization: QB-USER-TOKEN <token>",
        "curl": format!("curl -H 'Authorization: QB-USER-TOKEN <token>' http://{}/db/{app}", state.proxy_address),
        "note": "<token> is the secret shown once when the token was created; it is not kept.",
    });
    Ok(Json(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenPatch {
    active: Option<bool>,
    apps: Option<Vec<String>>,
    name: Option<String>,
    description: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Option<Option<DateTime<Utc>>>,
}

async fn patch_token(
    State(state): Shared,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let patch: TokenPatch = parse(body)?;
    let mut token = state
        .store
        .user_token(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no token {id:?}")))?;
    let owner = state
        .store
        .user(&token.user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("the token's owner is gone"))?;
    if let Some(name) = patch.name {
        check_text("name", &name, 200, true)?;
        token.name = name;
    }
    if let Some(d) = patch.description {
        check_text("description", &d, 2000, false)?;
        token.description = d;
    }
    if let Some(at) = patch.expires_at {
        check_expiry(&state, at)?;
        // Its owner may bring an expiry closer, never lift it or push it back: an
        // administrator may have set it, and self-service never widens a token.
        if !by_admin()
            && let Some(current) = token.expires_at
            && at.is_none_or(|at| at > current)
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a token's expiry can be brought closer here, not lifted or pushed back",
            ));
        }
        token.expires_at = at;
    }
    if let Some(apps) = patch.apps {
        token.apps = check_token_apps(&state, &owner, apps).await?;
    }
    if let Some(active) = patch.active {
        if active && token.held_by_admin && !by_admin() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "an administrator deactivated this token: only an administrator can reactivate it",
            ));
        }
        if token.active && !active {
            state.metrics.revoked("user_token", 1);
        }
        token.active = active;
        if by_admin() {
            token.held_by_admin = !active;
        }
    }
    state.store.update_user_token(&token).await?;
    state.engine.invalidate(&Invalidation::UserToken(id)).await;
    tracing::info!(target: "audit", actor = %actor(), token_id = %token.id, active = token.active, "user token changed");
    Ok(Json(token_view(&token, Some(&owner))))
}

async fn delete_token(State(state): Shared, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.store.delete_user_token(&id).await?;
    state.metrics.revoked("user_token", 1);
    state
        .engine
        .invalidate(&Invalidation::UserToken(id.clone()))
        .await;
    tracing::info!(target: "audit", actor = %actor(), token_id = %id, "user token deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManyIds {
    ids: Vec<String>,
}

async fn delete_tokens(
    State(state): Shared,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let many: ManyIds = parse(body)?;
    let mut deleted = 0;
    for id in dedup(many.ids) {
        match state.store.delete_user_token(&id).await {
            Ok(()) => deleted += 1,
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        state.engine.invalidate(&Invalidation::UserToken(id)).await;
    }
    state.metrics.revoked("user_token", deleted);
    tracing::info!(target: "audit", actor = %actor(), deleted, "user tokens deleted");
    Ok(Json(json!({ "deleted": deleted })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPassword {
    password: String,
}

async fn set_password(
    State(state): Shared,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let new: NewPassword = parse(body)?;
    let mut user = state
        .store
        .user(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user {id:?}")))?;
    user.password_hash = Some(password_hash(new.password).await?);
    state.store.update_user(&user).await?;
    state.engine.invalidate(&Invalidation::User(id)).await;
    tracing::info!(target: "audit", actor = %actor(), user_id = %user.id, "password set");
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- app tokens

fn app_token_view(t: &AppToken) -> Value {
    json!({"id": t.id, "name": t.name, "app_id": t.app_id, "created_at": t.created_at})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAppToken {
    name: String,
}

async fn create_app_token(
    State(state): Shared,
    Path(app_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let new: NewAppToken = parse(body)?;
    check_text("name", &new.name, 200, true)?;
    let secret = format::generate(TokenKind::AppToken)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let token = AppToken {
        id: secret.id,
        secret_hash: secret.hash,
        app_id,
        name: new.name,
        created_at: state.engine.clock().now(),
    };
    match state
        .store
        .insert_app_token(&token, state.limits.app_tokens_per_app)
        .await
    {
        Err(StoreError::NotFound) => {
            return Err(ApiError::not_found(format!("no app {:?}", token.app_id)));
        }
        Err(StoreError::LimitReached(n)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "app_token_limit_reached",
                format!("this app already holds {n} app tokens, the most allowed"),
            ));
        }
        other => other?,
    }
    state
        .engine
        .invalidate(&Invalidation::AppToken(token.id.clone()))
        .await;
    state.metrics.issued("app_token");
    tracing::info!(target: "audit", actor = %actor(), app_token_id = %token.id, app_id = %token.app_id, "app token created");
    let mut view = app_token_view(&token);
    // The only time the secret is shown.
    view["token"] = Value::String(secret.token);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn list_app_tokens(
    State(state): Shared,
    Path(app_id): Path<String>,
    Query(p): Query<Page>,
) -> ApiResult<Json<Value>> {
    if state.store.app(&app_id).await?.is_none() {
        return Err(ApiError::not_found(format!("no app {app_id:?}")));
    }
    let tokens = state.store.app_tokens(&app_id).await?;
    page(tokens, |t| &t.id, &p, |t| app_token_view(&t))
}

async fn delete_app_token(
    State(state): Shared,
    Path((app_id, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    match state.store.app_token(&id).await? {
        Some(t) if t.app_id == app_id => {}
        _ => {
            return Err(ApiError::not_found(format!(
                "app {app_id:?} has no app token {id:?}"
            )));
        }
    }
    state.store.delete_app_token(&id).await?;
    state.metrics.revoked("app_token", 1);
    state
        .engine
        .invalidate(&Invalidation::AppToken(id.clone()))
        .await;
    tracing::info!(target: "audit", actor = %actor(), app_token_id = %id, app_id = %app_id, "app token deleted");
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- sessions (tickets and session tokens)

/// One live ticket or session, with its owner: the admin guide's listing.
struct Live {
    id: String,
    kind: &'static str,
    user_id: String,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    last_active_at: Option<DateTime<Utc>>,
    app: Option<String>,
    owner: Option<User>,
}

fn live_view(l: Live) -> Value {
    let owner = l.owner.as_ref();
    let mut v = json!({
        "id": l.id, "kind": l.kind, "user_id": l.user_id,
        "user_name": owner.map(|u| &u.name), "email": owner.map(|u| &u.email),
        "department": owner.and_then(|u| u.department.as_ref()),
        "user_type": owner.and_then(|u| u.user_type.as_ref()),
        "issued_at": l.issued_at, "expires_at": l.expires_at,
        "last_active_at": l.last_active_at.unwrap_or(l.issued_at),
    });
    if l.kind == "session" {
        v["app"] = json!(l.app);
    }
    v
}

#[derive(Deserialize)]
struct SessionQuery {
    user: Option<String>,
    kind: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// Live tickets and sessions (not revoked, not expired), with their owners, sorted by id.
async fn live(state: &AdminState, user: Option<&str>, kind: Option<&str>) -> ApiResult<Vec<Live>> {
    let now = state.engine.clock().now();
    let mut out = Vec::new();
    if kind != Some("session") {
        for t in state.store.tickets(user).await? {
            if t.revoked_at.is_none() && t.expires_at > now {
                out.push(Live {
                    id: t.id,
                    kind: "ticket",
                    user_id: t.user_id,
                    issued_at: t.issued_at,
                    expires_at: t.expires_at,
                    last_active_at: t.last_active_at,
                    app: None,
                    owner: None,
                });
            }
        }
    }
    if kind != Some("ticket") {
        for s in state.store.sessions(user).await? {
            if s.revoked_at.is_none() && s.expires_at > now {
                out.push(Live {
                    id: s.id,
                    kind: "session",
                    user_id: s.user_id,
                    issued_at: s.issued_at,
                    expires_at: s.expires_at,
                    last_active_at: s.last_active_at,
                    app: s.app,
                    owner: None,
                });
            }
        }
    }
    let mut owners: std::collections::HashMap<String, Option<User>> =
        std::collections::HashMap::new();
    for l in &mut out {
        if !owners.contains_key(&l.user_id) {
            let owner = state.store.user(&l.user_id).await?;
            owners.insert(l.user_id.clone(), owner);
        }
        l.owner = owners.get(&l.user_id).cloned().flatten();
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

async fn list_sessions(
    State(state): Shared,
    Query(q): Query<SessionQuery>,
) -> ApiResult<Json<Value>> {
    if let Some(kind) = q
        .kind
        .as_deref()
        .filter(|k| !matches!(*k, "ticket" | "session"))
    {
        return Err(ApiError::invalid(
            "kind",
            format!("kind: {kind:?} is not \"ticket\" or \"session\""),
        ));
    }
    let items = live(&state, q.user.as_deref(), q.kind.as_deref()).await?;
    page(
        items,
        |l| &l.id,
        &Page {
            cursor: q.cursor,
            limit: q.limit,
        },
        live_view,
    )
}

async fn list_user_sessions(
    State(state): Shared,
    Path(id): Path<String>,
    Query(p): Query<Page>,
) -> ApiResult<Json<Value>> {
    let items = live(&state, Some(&id), None).await?;
    page(items, |l| &l.id, &p, live_view)
}

/// Revokes one ticket or session by id; `false` when there is none.
async fn revoke(state: &AdminState, id: &str) -> ApiResult<bool> {
    if let Some(t) = state.store.ticket(id).await? {
        state.tickets.revoke(t).await?;
        return Ok(true);
    }
    if let Some(s) = state.store.session(id).await? {
        state.sessions.revoke(s).await?;
        return Ok(true);
    }
    Ok(false)
}

async fn delete_session(State(state): Shared, Path(id): Path<String>) -> ApiResult<StatusCode> {
    if revoke(&state, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no session {id:?}")))
    }
}

async fn delete_sessions(
    State(state): Shared,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let many: ManyIds = parse(body)?;
    let mut deleted = 0;
    for id in dedup(many.ids) {
        if revoke(&state, &id).await? {
            deleted += 1;
        }
    }
    Ok(Json(json!({ "deleted": deleted })))
}

async fn delete_user_sessions(
    State(state): Shared,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if state.store.user(&id).await?.is_none() {
        return Err(ApiError::not_found(format!("no user {id:?}")));
    }
    let mut deleted = 0;
    for t in state.store.tickets(Some(&id)).await? {
        if t.revoked_at.is_none() {
            state.tickets.revoke(t).await?;
            deleted += 1;
        }
    }
    for s in state.store.sessions(Some(&id)).await? {
        if s.revoked_at.is_none() {
            state.sessions.revoke(s).await?;
            deleted += 1;
        }
    }
    Ok(Json(json!({ "deleted": deleted })))
}

// ---------------------------------------------------------------- self-service (/_auth/tokens)

tokio::task_local! {
    /// The signed-in user a self-service call acts for; unset on the admin API.
    static ACTOR: String;
}

/// Whether the change is made with the admin key (not a user's self-service call).
fn by_admin() -> bool {
    ACTOR.try_with(|_| ()).is_err()
}

/// Who made a change, for the audit log: `admin` (the admin key) or `user:<id>`.
fn actor() -> String {
    ACTOR
        .try_with(|id| format!("user:{id}"))
        .unwrap_or_else(|_| "admin".to_owned())
}

/// A signed-in user's own user tokens (`/_auth/tokens`): the admin API's token handlers with
/// the owner fixed to the caller, every token id checked to be the caller's, and no way to
/// give a token a department or user type other than the caller's own (those would widen
/// what route rules let it do). Answers (status, JSON body).
pub(crate) async fn self_service(
    state: Arc<AdminState>,
    caller: &User,
    bound_app: Option<&str>,
    method: &axum::http::Method,
    token_id: Option<String>,
    query: Option<&str>,
    body: &[u8],
) -> (StatusCode, Vec<u8>) {
    let body = Bytes::copy_from_slice(body);
    ACTOR
        .scope(
            caller.id.clone(),
            self_service_inner(state, caller, bound_app, method, token_id, query, body),
        )
        .await
}

async fn self_service_inner(
    state: Arc<AdminState>,
    caller: &User,
    bound_app: Option<&str>,
    method: &axum::http::Method,
    token_id: Option<String>,
    query: Option<&str>,
    body: Bytes,
) -> (StatusCode, Vec<u8>) {
    use axum::http::Method;
    let creating = *method == Method::POST;
    if (creating || *method == Method::PATCH)
        && let Err(e) = within_reach(caller, bound_app, &body, creating)
    {
        return into_parts(e.into_response()).await;
    }
    let response = match (method, token_id) {
        (&Method::GET, None) => match serde_urlencoded::from_str::<Page>(query.unwrap_or("")) {
            Ok(page) => {
                let q = TokenQuery {
                    user: Some(caller.id.clone()),
                    app: None,
                    active: None,
                    cursor: page.cursor,
                    limit: page.limit,
                };
                list_tokens(State(state), Query(q)).await.into_response()
            }
            Err(e) => ApiError::invalid("query", format!("query: {e}")).into_response(),
        },
        (&Method::POST, None) => create_token(State(state), Path(caller.id.clone()), Ok(body))
            .await
            .into_response(),
        (&Method::GET | &Method::PATCH | &Method::DELETE, Some(id)) => {
            match state.store.user_token(&id).await {
                Ok(Some(t)) if t.user_id == caller.id => match *method {
                    Method::GET => get_token(State(state), Path(id)).await.into_response(),
                    Method::PATCH => patch_token(State(state), Path(id), Ok(body))
                        .await
                        .into_response(),
                    _ => delete_token(State(state), Path(id)).await.into_response(),
                },
                // Another user's token is as unknown as a missing one.
                Ok(_) => ApiError::not_found(format!("you have no token {id:?}")).into_response(),
                Err(e) => ApiError::from(e).into_response(),
            }
        }
        _ => ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "GET or POST /tokens; GET, PATCH or DELETE /tokens/{id}",
        )
        .into_response(),
    };
    into_parts(response).await
}

async fn into_parts(response: Response) -> (StatusCode, Vec<u8>) {
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    (status, body)
}

/// What a signed-in user may put in a token of their own, read from the body once: for a
/// session opened for one app, that app only; on creation, no department or user type but
/// their own (those would widen what routes allow). A body that isn't a JSON object is left to
/// the handler's own error.
fn within_reach(
    caller: &User,
    bound_app: Option<&str>,
    body: &[u8],
    creating: bool,
) -> ApiResult<()> {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return Ok(());
    };
    if let (Some(bound), Some(apps)) = (bound_app, fields.get("apps").and_then(Value::as_array))
        && apps.iter().any(|a| a.as_str() != Some(bound))
    {
        return Err(ApiError::invalid(
            "apps",
            format!(
                "apps: this session was opened for app {bound:?}, and manages tokens for it only"
            ),
        ));
    }
    if !creating {
        return Ok(());
    }
    for (field, own) in [
        ("department", &caller.department),
        ("user_type", &caller.user_type),
    ] {
        match fields.get(field) {
            None | Some(Value::Null) => {}
            Some(v) if v.as_str() == own.as_deref() => {}
            Some(_) => {
                return Err(ApiError::invalid(
                    field,
                    format!(
                        "{field}: only an administrator gives a token a {field} other than its owner's"
                    ),
                ));
            }
        }
    }
    Ok(())
}
