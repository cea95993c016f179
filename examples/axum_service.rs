//! An axum service that checks credentials itself, with tokengate's decision as a tower layer:
//! no proxy hop, the same routes, rules, cache and store as `tokengate serve`.
//!
//!   cargo run --example axum_service -- config/tokengate.toml
//!
//! It serves on the config's `server.listen`; manage users and tokens with the admin API of a
//! `tokengate serve` sharing the store (Redis), or with the embedded store's file.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Extension, Request};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::routing::get;
use tokengate::clock::SystemClock;
use tokengate::config::Config;
use tokengate::engine::Engine;
use tokengate::headers::IdentityHeaders;
use tokengate::layer::{AuthLayer, ClientAddr};
use tokengate::model::Identity;
use tokengate::server::{build, open_store};

/// The service: its own routes, each behind tokengate's decision.
pub fn app(engine: Arc<Engine>, identity: IdentityHeaders) -> Router {
    Router::new()
        .route("/db/{app}", get(hello))
        .layer(AuthLayer::new(engine, identity))
        // The client's address, for tokengate's failure limit.
        .layer(middleware::from_fn(client_addr))
}

async fn hello(Extension(who): Extension<Identity>) -> impl IntoResponse {
    format!(
        "hello {} ({}), by {}\n",
        who.user.name,
        who.app_id().unwrap_or("no app"),
        who.method().as_str()
    )
}

async fn client_addr(mut req: Request, next: Next) -> impl IntoResponse {
    if let Some(ConnectInfo(addr)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() {
        req.extensions_mut().insert(ClientAddr(addr.ip()));
    }
    next.run(req).await
}

#[allow(dead_code)] // the test includes this file and starts its own server
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "config/tokengate.toml".into());
    let config =
        Config::load(std::path::Path::new(&path), std::env::vars()).map_err(|e| e.to_string())?;
    let store = open_store(&config.store)?;
    let parts = build(&config, store, Arc::new(SystemClock)).map_err(|e| e.to_string())?;
    // Last use is written behind, once a second.
    let usage = parts.engine.usage().clone();
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move { usage.run(std::time::Duration::from_secs(1), stopped).await });
    let identity = IdentityHeaders::new(&config.header_prefix)?;
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(
        listener,
        app(parts.engine, identity).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
