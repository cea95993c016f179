//! Logs: JSON lines on stderr (tracing), level from `RUST_LOG` when it is set, else
//! `server.log_level` (default `info`). Pingora's own `log` records are carried into the same
//! stream. Nothing logs a secret.

use tracing_subscriber::EnvFilter;

pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
