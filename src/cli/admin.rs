//! The admin verbs (PRODUCT.md §7): a client of the admin API (§6, §11). Tables for people,
//! `--json` for scripts (the server's JSON as is). A secret is shown only by the one answer that
//! carries it: `token create` and `app-token create`. On failure: `error: <code>: <message>` on
//! stderr, exit 1 for an error the server answered, 2 for usage or connection problems.

use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use serde_json::{Map, Value, json};

/// Where the admin API is and how to talk to it; accepted before or after the verb.
#[derive(Debug, Args)]
pub struct Global {
    /// The admin API's base URL.
    #[arg(
        long,
        global = true,
        env = "TOKENGATE_ADMIN_URL",
        default_value = "http://127.0.0.1:9901"
    )]
    admin_url: String,
    /// The admin key (better given as TOKENGATE_ADMIN_KEY, out of the process list).
    #[arg(
        long,
        global = true,
        env = "TOKENGATE_ADMIN_KEY",
        hide_env_values = true
    )]
    admin_key: Option<String>,
    /// Print the server's JSON as is, for scripts.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Users: add, list, inspect, disable, enable, delete.
    #[command(subcommand)]
    User(UserVerb),
    /// Apps: add, list, delete.
    #[command(subcommand)]
    App(AppVerb),
    /// User tokens: create, list, inspect, activate, deactivate, delete.
    #[command(subcommand)]
    Token(TokenVerb),
    /// App tokens: create, delete.
    #[command(subcommand)]
    AppToken(AppTokenVerb),
    /// Live tickets and sessions: list, revoke.
    #[command(subcommand)]
    Session(SessionVerb),
}

#[derive(Debug, Subcommand)]
pub enum UserVerb {
    /// Add a user.
    Add {
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        department: Option<String>,
        #[arg(long)]
        user_type: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// An app the user may use (repeatable).
        #[arg(long = "app")]
        apps: Vec<String>,
        #[arg(long)]
        password: Option<String>,
    },
    /// List users.
    List,
    /// Show one user.
    Inspect { id: String },
    /// Disable a user: every credential of theirs is refused.
    Disable { id: String },
    /// Enable a disabled user.
    Enable { id: String },
    /// Delete a user with their tokens, tickets and sessions.
    Delete { id: String },
}

#[derive(Debug, Subcommand)]
pub enum AppVerb {
    /// Add an app.
    Add {
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        tenant: Option<String>,
        /// Requests to this app must also carry an app token.
        #[arg(long)]
        require_app_token: bool,
    },
    /// List apps.
    List,
    /// Delete an app and its app tokens.
    Delete { id: String },
}

#[derive(Debug, Subcommand)]
pub enum TokenVerb {
    /// Create a user token; its secret is printed once.
    Create {
        /// The owner's user id.
        #[arg(long)]
        user: String,
        #[arg(long)]
        name: String,
        /// An app the token is assigned (repeatable).
        #[arg(long = "app")]
        apps: Vec<String>,
        #[arg(long)]
        description: Option<String>,
        /// RFC 3339, e.g. 2027-01-31T00:00:00Z.
        #[arg(long)]
        expires_at: Option<String>,
        /// For this token, instead of the owner's department.
        #[arg(long)]
        department: Option<String>,
        /// For this token, instead of the owner's user type.
        #[arg(long)]
        user_type: Option<String>,
    },
    /// List user tokens.
    List {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        app: Option<String>,
        #[arg(long)]
        active: Option<bool>,
    },
    /// Show one token (never its secret).
    Inspect { id: String },
    /// Let a deactivated token be used again.
    Activate { id: String },
    /// Refuse a token until it is activated again.
    Deactivate { id: String },
    /// Delete a token.
    Delete { id: String },
}

#[derive(Debug, Subcommand)]
pub enum AppTokenVerb {
    /// Create an app token; its secret is printed once.
    Create {
        #[arg(long)]
        app: String,
        #[arg(long)]
        name: String,
    },
    /// Delete an app token.
    Delete {
        #[arg(long)]
        app: String,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionVerb {
    /// List live tickets and sessions.
    List {
        #[arg(long)]
        user: Option<String>,
        /// `ticket` or `session`.
        #[arg(long)]
        kind: Option<String>,
    },
    /// Revoke a ticket or session.
    Revoke { id: String },
}

/// Why a command failed.
#[derive(Debug)]
enum Failure {
    /// The server answered with an error.
    Api { code: String, message: String },
    /// Usage, configuration or connection.
    Local { code: String, message: String },
}

impl Failure {
    fn local(code: &str, message: impl std::fmt::Display) -> Self {
        Self::Local {
            code: code.to_owned(),
            message: message.to_string(),
        }
    }

    fn report(&self) -> ExitCode {
        let (code, message, exit) = match self {
            Self::Api { code, message } => (code, message, 1),
            Self::Local { code, message } => (code, message, 2),
        };
        eprintln!("error: {code}: {message}");
        ExitCode::from(exit)
    }
}

type Outcome<T = ()> = Result<T, Failure>;

/// Runs one admin verb and reports how it went.
pub fn run(command: AdminCommand, global: &Global) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return Failure::local("runtime", e).report(),
    };
    let result = runtime.block_on(async {
        let client = Client::new(global)?;
        dispatch(&client, command).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.report(),
    }
}

async fn dispatch(c: &Client, command: AdminCommand) -> Outcome {
    match command {
        AdminCommand::User(v) => user(c, v).await,
        AdminCommand::App(v) => app(c, v).await,
        AdminCommand::Token(v) => token(c, v).await,
        AdminCommand::AppToken(v) => app_token(c, v).await,
        AdminCommand::Session(v) => session(c, v).await,
    }
}

// ---------------------------------------------------------------- the client

struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
    json: bool,
}

impl Client {
    fn new(global: &Global) -> Outcome<Self> {
        let key = global
            .admin_key
            .clone()
            .filter(|k| !k.trim().is_empty())
            .ok_or_else(|| {
                Failure::local("no_admin_key", "set TOKENGATE_ADMIN_KEY or --admin-key")
            })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Failure::local("client", e))?;
        Ok(Self {
            http,
            base: global.admin_url.trim_end_matches('/').to_owned(),
            key,
            json: global.json,
        })
    }

    /// One request; `None` for an empty (204) answer.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Outcome<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method, &url)
            .header("authorization", format!("Bearer {}", self.key));
        if let Some(body) = body {
            let bytes = serde_json::to_vec(&body).map_err(|e| Failure::local("encode", e))?;
            req = req.header("content-type", "application/json").body(bytes);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Failure::local("connection_failed", format!("{url}: {e}")))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Failure::local("connection_failed", format!("{url}: {e}")))?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(value)
        } else {
            Err(api_failure(status.as_u16(), &value))
        }
    }

    /// Every page of a list, as one `{"items": [...], "next_cursor": null}`.
    async fn list(&self, path: &str, mut params: Vec<(&str, String)>) -> Outcome<Value> {
        params.push(("limit", "1000".to_owned()));
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut query = params.clone();
            if let Some(c) = &cursor {
                query.push(("cursor", c.clone()));
            }
            let qs =
                serde_urlencoded::to_string(&query).map_err(|e| Failure::local("encode", e))?;
            let page = self
                .call(Method::GET, &format!("{path}?{qs}"), None)
                .await?;
            if let Some(more) = page["items"].as_array() {
                items.extend(more.iter().cloned());
            }
            cursor = page["next_cursor"].as_str().map(str::to_owned);
            if cursor.is_none() {
                return Ok(json!({"items": items, "next_cursor": null}));
            }
        }
    }
}

fn api_failure(status: u16, body: &Value) -> Failure {
    let code = body["error"]
        .as_str()
        .map_or_else(|| format!("http_{status}"), str::to_owned);
    let mut message = body["message"]
        .as_str()
        .map_or_else(|| format!("the server answered {status}"), str::to_owned);
    if let Some(field) = body["field"].as_str() {
        message.push_str(&format!(" (field: {field})"));
    }
    Failure::Api { code, message }
}

/// One path segment, percent-encoded.
fn seg(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// A JSON object of the fields that are set.
fn object(fields: Vec<(&str, Option<Value>)>) -> Value {
    let map: Map<String, Value> = fields
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
        .collect();
    Value::Object(map)
}

fn opt(s: Option<String>) -> Option<Value> {
    s.map(Value::String)
}

// ---------------------------------------------------------------- users

const USER_COLUMNS: &[Col] = &[
    Col("ID", "id", Kind::Text),
    Col("NAME", "name", Kind::Text),
    Col("EMAIL", "email", Kind::Text),
    Col("STATUS", "status", Kind::Text),
    Col("TENANT", "tenant", Kind::Text),
    Col("APPS", "apps", Kind::List),
    Col("CREATED", "created_at", Kind::Time),
];

const USER_FIELDS: &[Col] = &[
    Col("id", "id", Kind::Text),
    Col("name", "name", Kind::Text),
    Col("email", "email", Kind::Text),
    Col("status", "status", Kind::Text),
    Col("department", "department", Kind::Text),
    Col("user type", "user_type", Kind::Text),
    Col("tenant", "tenant", Kind::Text),
    Col("apps", "apps", Kind::List),
    Col("created", "created_at", Kind::Time),
];

async fn user(c: &Client, verb: UserVerb) -> Outcome {
    match verb {
        UserVerb::Add {
            email,
            name,
            id,
            department,
            user_type,
            tenant,
            apps,
            password,
        } => {
            let body = object(vec![
                ("id", opt(id)),
                ("email", Some(json!(email))),
                ("name", Some(json!(name))),
                ("department", opt(department)),
                ("user_type", opt(user_type)),
                ("tenant", opt(tenant)),
                ("apps", Some(json!(apps))),
                ("password", opt(password)),
            ]);
            let v = c.call(Method::POST, "/v1/users", Some(body)).await?;
            show_one(c, &v, USER_FIELDS, "added user")
        }
        UserVerb::List => show_list(c, &c.list("/v1/users", vec![]).await?, USER_COLUMNS),
        UserVerb::Inspect { id } => {
            let v = c.call(Method::GET, &user_path(&id), None).await?;
            show_one(c, &v, USER_FIELDS, "")
        }
        UserVerb::Disable { id } => set_status(c, &id, "disabled").await,
        UserVerb::Enable { id } => set_status(c, &id, "active").await,
        UserVerb::Delete { id } => {
            let v = c.call(Method::DELETE, &user_path(&id), None).await?;
            done(c, &v, &format!("deleted user {id}"))
        }
    }
}

fn user_path(id: &str) -> String {
    format!("/v1/users/{}", seg(id))
}

async fn set_status(c: &Client, id: &str, status: &str) -> Outcome {
    let body = json!({ "status": status });
    let v = c.call(Method::PATCH, &user_path(id), Some(body)).await?;
    let word = if status == "active" {
        "enabled"
    } else {
        "disabled"
    };
    done(c, &v, &format!("{word} user {id}"))
}

// ---------------------------------------------------------------- apps

const APP_COLUMNS: &[Col] = &[
    Col("ID", "id", Kind::Text),
    Col("NAME", "name", Kind::Text),
    Col("TENANT", "tenant", Kind::Text),
    Col("APP TOKEN", "require_app_token", Kind::Bool),
    Col("CREATED", "created_at", Kind::Time),
];

const APP_FIELDS: &[Col] = &[
    Col("id", "id", Kind::Text),
    Col("name", "name", Kind::Text),
    Col("tenant", "tenant", Kind::Text),
    Col("requires app token", "require_app_token", Kind::Bool),
    Col("created", "created_at", Kind::Time),
];

async fn app(c: &Client, verb: AppVerb) -> Outcome {
    match verb {
        AppVerb::Add {
            id,
            name,
            tenant,
            require_app_token,
        } => {
            let body = object(vec![
                ("id", Some(json!(id))),
                ("name", Some(json!(name))),
                ("tenant", opt(tenant)),
                ("require_app_token", Some(json!(require_app_token))),
            ]);
            let v = c.call(Method::POST, "/v1/apps", Some(body)).await?;
            show_one(c, &v, APP_FIELDS, "added app")
        }
        AppVerb::List => show_list(c, &c.list("/v1/apps", vec![]).await?, APP_COLUMNS),
        AppVerb::Delete { id } => {
            let path = format!("/v1/apps/{}", seg(&id));
            let v = c.call(Method::DELETE, &path, None).await?;
            done(c, &v, &format!("deleted app {id}"))
        }
    }
}

// ---------------------------------------------------------------- user tokens

const TOKEN_COLUMNS: &[Col] = &[
    Col("ID", "id", Kind::Text),
    Col("NAME", "name", Kind::Text),
    Col("USER", "user_id", Kind::Text),
    Col("APPS", "apps", Kind::List),
    Col("ACTIVE", "active", Kind::Bool),
    Col("EXPIRES", "expires_at", Kind::Time),
    Col("LAST USED", "last_used_at", Kind::Time),
    Col("CREATED", "created_at", Kind::Time),
];

const TOKEN_FIELDS: &[Col] = &[
    Col("id", "id", Kind::Text),
    Col("name", "name", Kind::Text),
    Col("description", "description", Kind::Text),
    Col("user", "user_id", Kind::Text),
    Col("user name", "user_name", Kind::Text),
    Col("email", "email", Kind::Text),
    Col("tenant", "tenant", Kind::Text),
    Col("department", "department", Kind::Text),
    Col("user type", "user_type", Kind::Text),
    Col("apps", "apps", Kind::List),
    Col("active", "active", Kind::Bool),
    Col("held by admin", "deactivated_by_admin", Kind::Bool),
    Col("expires", "expires_at", Kind::Time),
    Col("created", "created_at", Kind::Time),
    Col("last used", "last_used_at", Kind::Time),
];

async fn token(c: &Client, verb: TokenVerb) -> Outcome {
    match verb {
        TokenVerb::Create {
            user,
            name,
            apps,
            description,
            expires_at,
            department,
            user_type,
        } => {
            let body = object(vec![
                ("name", Some(json!(name))),
                ("apps", Some(json!(apps))),
                ("description", opt(description)),
                ("expires_at", opt(expires_at.clone())),
                ("department", opt(department)),
                ("user_type", opt(user_type)),
            ]);
            create_token(c, &user, expires_at.as_deref(), body).await
        }
        TokenVerb::List { user, app, active } => {
            let mut params = Vec::new();
            params.extend(user.map(|u| ("user", u)));
            params.extend(app.map(|a| ("app", a)));
            params.extend(active.map(|a| ("active", a.to_string())));
            show_list(c, &c.list("/v1/tokens", params).await?, TOKEN_COLUMNS)
        }
        TokenVerb::Inspect { id } => inspect_token(c, &id).await,
        TokenVerb::Activate { id } => set_active(c, &id, true).await,
        TokenVerb::Deactivate { id } => set_active(c, &id, false).await,
        TokenVerb::Delete { id } => {
            let v = c.call(Method::DELETE, &token_path(&id), None).await?;
            done(c, &v, &format!("deleted token {id}"))
        }
    }
}

fn token_path(id: &str) -> String {
    format!("/v1/tokens/{}", seg(id))
}

async fn create_token(c: &Client, user: &str, expires_at: Option<&str>, body: Value) -> Outcome {
    if let Some(at) = expires_at {
        DateTime::parse_from_rfc3339(at)
            .map_err(|e| Failure::local("invalid_argument", format!("--expires-at {at:?}: {e}")))?;
    }
    let path = format!("{}/tokens", user_path(user));
    let v = c.call(Method::POST, &path, Some(body)).await?;
    show_secret(c, &v, TOKEN_FIELDS, "user token")
}

async fn inspect_token(c: &Client, id: &str) -> Outcome {
    let v = c.call(Method::GET, &token_path(id), None).await?;
    show_one(c, &v, TOKEN_FIELDS, "")?;
    if !c.json {
        print_usage(&v["usage"]);
    }
    Ok(())
}

fn print_usage(usage: &Value) {
    let Some(usage) = usage.as_object() else {
        return;
    };
    println!("\nusage:");
    for key in ["header", "curl", "note"] {
        if let Some(text) = usage.get(key).and_then(Value::as_str) {
            println!("  {text}");
        }
    }
}

async fn set_active(c: &Client, id: &str, active: bool) -> Outcome {
    let body = json!({ "active": active });
    let v = c.call(Method::PATCH, &token_path(id), Some(body)).await?;
    let word = if active { "activated" } else { "deactivated" };
    done(c, &v, &format!("{word} token {id}"))
}

// ---------------------------------------------------------------- app tokens

const APP_TOKEN_FIELDS: &[Col] = &[
    Col("id", "id", Kind::Text),
    Col("name", "name", Kind::Text),
    Col("app", "app_id", Kind::Text),
    Col("created", "created_at", Kind::Time),
];

async fn app_token(c: &Client, verb: AppTokenVerb) -> Outcome {
    match verb {
        AppTokenVerb::Create { app, name } => {
            let path = format!("/v1/apps/{}/app-tokens", seg(&app));
            let v = c
                .call(Method::POST, &path, Some(json!({ "name": name })))
                .await?;
            show_secret(c, &v, APP_TOKEN_FIELDS, "app token")
        }
        AppTokenVerb::Delete { app, id } => {
            let path = format!("/v1/apps/{}/app-tokens/{}", seg(&app), seg(&id));
            let v = c.call(Method::DELETE, &path, None).await?;
            done(c, &v, &format!("deleted app token {id} of app {app}"))
        }
    }
}

// ---------------------------------------------------------------- sessions

const SESSION_COLUMNS: &[Col] = &[
    Col("ID", "id", Kind::Text),
    Col("KIND", "kind", Kind::Text),
    Col("USER", "user_id", Kind::Text),
    Col("EMAIL", "email", Kind::Text),
    Col("ISSUED", "issued_at", Kind::Time),
    Col("LAST ACTIVE", "last_active_at", Kind::Time),
    Col("EXPIRES", "expires_at", Kind::Time),
];

async fn session(c: &Client, verb: SessionVerb) -> Outcome {
    match verb {
        SessionVerb::List { user, kind } => {
            let mut params = Vec::new();
            params.extend(user.map(|u| ("user", u)));
            params.extend(kind.map(|k| ("kind", k)));
            show_list(c, &c.list("/v1/sessions", params).await?, SESSION_COLUMNS)
        }
        SessionVerb::Revoke { id } => {
            let path = format!("/v1/sessions/{}", seg(&id));
            let v = c.call(Method::DELETE, &path, None).await?;
            done(c, &v, &format!("revoked {id}"))
        }
    }
}

// ---------------------------------------------------------------- output

#[derive(Clone, Copy)]
enum Kind {
    Text,
    List,
    Bool,
    Time,
}

/// A column (or a field): header, JSON key, how to show it.
struct Col(&'static str, &'static str, Kind);

fn print_json(v: &Value) -> Outcome {
    let text = serde_json::to_string_pretty(v).map_err(|e| Failure::local("encode", e))?;
    println!("{text}");
    Ok(())
}

/// A value without its secret: only the `create` answers may show one.
fn without_secret(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("token");
    }
    v
}

fn show_list(c: &Client, page: &Value, cols: &[Col]) -> Outcome {
    let items: Vec<Value> = page["items"]
        .as_array()
        .map(|a| a.iter().map(without_secret).collect())
        .unwrap_or_default();
    if c.json {
        return print_json(&json!({"items": items, "next_cursor": page["next_cursor"]}));
    }
    let now = Utc::now();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            cols.iter()
                .map(|col| cell(&item[col.1], col.2, now))
                .collect()
        })
        .collect();
    let headers: Vec<String> = cols.iter().map(|col| col.0.to_owned()).collect();
    print!("{}", table(&headers, &rows));
    Ok(())
}

/// Left-aligned columns, two spaces apart, no trailing spaces.
fn table(headers: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(headers).chain(rows.iter().map(Vec::as_slice)) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn show_one(c: &Client, v: &Value, fields: &[Col], title: &str) -> Outcome {
    let v = without_secret(v);
    if c.json {
        return print_json(&v);
    }
    if !title.is_empty() {
        println!("{title} {}", v["id"].as_str().unwrap_or("?"));
    }
    print_fields(&v, fields);
    Ok(())
}

fn print_fields(v: &Value, fields: &[Col]) {
    let now = Utc::now();
    let width = fields.iter().map(|f| f.0.len()).max().unwrap_or(0) + 1;
    // A field the answer doesn't carry at all (not even as null) is left out.
    for f in fields.iter().filter(|f| v.get(f.1).is_some()) {
        let label = format!("{}:", f.0);
        println!("{label:<width$}  {}", cell(&v[f.1], f.2, now));
    }
}

/// The one answer that carries a secret: printed once, clearly marked.
fn show_secret(c: &Client, v: &Value, fields: &[Col], what: &str) -> Outcome {
    if c.json {
        return print_json(v);
    }
    println!("created {what} {}", v["id"].as_str().unwrap_or("?"));
    print_fields(&without_secret(v), fields);
    let secret = v["token"].as_str().unwrap_or("");
    println!();
    println!("token (shown once; it is not kept and cannot be shown again, store it now):");
    println!("  {secret}");
    Ok(())
}

/// A change or deletion: a line for people, the server's answer (if any) for scripts.
fn done(c: &Client, v: &Value, line: &str) -> Outcome {
    if !c.json {
        println!("{line}");
        return Ok(());
    }
    match v {
        Value::Null => print_json(&json!({"ok": true})),
        v => print_json(&without_secret(v)),
    }
}

fn cell(v: &Value, kind: Kind, now: DateTime<Utc>) -> String {
    match (kind, v) {
        (Kind::Time, Value::Null) => "never".to_owned(),
        (_, Value::Null) => "-".to_owned(),
        (Kind::Time, Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map_or_else(|_| s.clone(), |t| relative(t.with_timezone(&Utc), now)),
        (Kind::Bool, Value::Bool(b)) => if *b { "yes" } else { "no" }.to_owned(),
        (Kind::List, Value::Array(items)) if items.is_empty() => "-".to_owned(),
        (Kind::List, Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        (_, Value::String(s)) if s.is_empty() => "-".to_owned(),
        (_, Value::String(s)) => s.clone(),
        (_, other) => other.to_string(),
    }
}

/// "3 minutes ago", "in 2 days".
fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (t - now).num_seconds();
    let span = secs.unsigned_abs();
    if span == 0 {
        return if t <= now {
            "moments ago"
        } else {
            "in moments"
        }
        .to_owned();
    }
    let text = amount(span);
    if secs < 0 {
        format!("{text} ago")
    } else {
        format!("in {text}")
    }
}

fn amount(secs: u64) -> String {
    const UNITS: &[(u64, &str)] = &[
        (365 * 86_400, "year"),
        (30 * 86_400, "month"),
        (86_400, "day"),
        (3_600, "hour"),
        (60, "minute"),
        (1, "second"),
    ];
    let (size, unit) = UNITS
        .iter()
        .copied()
        .find(|(size, _)| secs >= *size)
        .unwrap_or((1, "second"));
    let n = secs / size;
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times() {
        let now = Utc::now();
        assert_eq!(
            relative(now - chrono::Duration::minutes(3), now),
            "3 minutes ago"
        );
        assert_eq!(relative(now + chrono::Duration::days(2), now), "in 2 days");
        assert_eq!(relative(now, now), "moments ago");
        assert_eq!(cell(&Value::Null, Kind::Time, now), "never");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["ID".into(), "NAME".into()],
            &[vec!["a-long-id".into(), "x".into()]],
        );
        assert_eq!(t, "ID         NAME\na-long-id  x\n");
    }
}
