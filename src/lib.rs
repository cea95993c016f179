//! tokengate: an authenticating reverse proxy for HTTP APIs, on Pingora.
//!
//! A request's way through the modules:
//! 1. [`proxy`] receives it (Pingora's `ProxyHttp`) and hands its parts to the [`engine`].
//! 2. [`policy`] finds the route and the app it targets (first match wins; none: `no_route`).
//! 3. [`credential`] finds the credential (header, query, cookie) and its kind.
//! 4. [`verify`] checks it against the [`cache`] (moka), which asks the [`store`] (embedded
//!    redb or Redis) only on a miss.
//! 5. [`policy`] applies the route's rules to the identity ([`model::Identity`]).
//! 6. A denial becomes a response in [`error`]; an admission goes upstream after [`headers`]
//!    removes forged identity and used credentials and sets the identity headers.
//!
//! Around it: [`admin`] (the admin API, `/metrics`, health), [`config`], [`metrics`],
//! [`server`] (assembly), [`cli`]. [`echo`] is the built-in upstream of the default config.

pub mod admin;
pub mod assertion;
pub mod bus;
pub mod cache;
pub mod cli;
pub mod client_addr;
pub mod clock;
pub mod config;
pub mod credential;
pub mod echo;
pub mod endpoints;
pub mod engine;
pub mod error;
pub mod headers;
pub mod jwt;
pub mod layer;
pub mod limiter;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod password;
pub mod policy;
pub mod proxy;
pub mod server;
pub mod sessions;
pub mod store;
pub mod tickets;
pub mod tls;
pub mod usage;
pub mod verify;
