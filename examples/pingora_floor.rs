//! The floor: the smallest Pingora pass-through, with no authentication, no logging and no
//! metrics. The load comparison (`benches/load.py`) runs it beside tokengate so that what
//! tokengate adds on top of Pingora itself can be told apart from what Pingora costs.
//!
//! `cargo run --release --example pingora_floor -- <listen> <upstream>`

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct Floor(String);

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.0.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: pingora_floor <listen address> <upstream address>");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Floor(upstream));
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
