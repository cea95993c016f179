//! The built-in `echo` upstream: answers every request with the request it received, as JSON
//! (`method`, `path`, `query`, `headers`, `body`), so a newcomer sees the identity headers at
//! once. It runs in-process on a loopback port and is reached like any other upstream.

use std::net::TcpListener;
use std::sync::Mutex;

use async_trait::async_trait;
use axum::Json;
use axum::body::Bytes;
use axum::extract::Request;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::{Map, Value, json};

async fn echo(req: Request) -> Json<Value> {
    let (parts, body) = req.into_parts();
    let body: Bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let mut headers = Map::new();
    for (name, value) in &parts.headers {
        headers.insert(
            name.as_str().to_owned(),
            Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        );
    }
    Json(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query().unwrap_or(""),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
}

pub struct EchoService {
    listener: Mutex<Option<TcpListener>>,
}

impl EchoService {
    pub fn new(listener: TcpListener) -> Self {
        Self {
            listener: Mutex::new(Some(listener)),
        }
    }
}

#[async_trait]
impl BackgroundService for EchoService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(listener) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        let app = axum::Router::new().fallback(echo);
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.changed().await;
            })
            .await;
    }
}
