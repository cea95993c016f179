//! Which address a request comes from, for `limits.failures_per_minute`. The peer's address,
//! unless the peer is one of `server.trusted_proxies` (a load balancer, an ingress): then
//! `X-Forwarded-For` is read from the right, past every trusted hop, to the first address
//! that isn't one. Anything to the left of it was written by the client and proves nothing.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    /// `10.0.0.0/8`, `2001:db8::/32`, or one address.
    pub fn parse_net(text: &str) -> Result<IpNet, String> {
        let text = text.trim();
        text.parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| format!("{text:?}: not an address or a network like 10.0.0.0/8"))
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.0.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let mut nearest = peer;
        for value in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(text) = value.to_str() else {
                return nearest;
            };
            for hop in text.rsplit(',') {
                let Some(ip) = parse_hop(hop) else {
                    // Garbled: nothing beyond the last trusted hop can be believed.
                    return nearest;
                };
                if !self.trusts(ip) {
                    return ip;
                }
                nearest = ip;
            }
        }
        nearest
    }
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            nets.iter()
                .map(|n| TrustedProxies::parse_net(n).unwrap())
                .collect(),
        )
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_peer() {
        let t = proxies(&["10.0.0.0/8", "192.168.1.1"]);
        let h = xff(&["203.0.113.7"]);
        assert_eq!(t.client(ip("198.51.100.1"), &h), ip("198.51.100.1"));
        assert_eq!(t.client(ip("10.1.2.3"), &h), ip("203.0.113.7"));
        assert_eq!(t.client(ip("192.168.1.1"), &h), ip("203.0.113.7"));
        assert_eq!(
            TrustedProxies::default().client(ip("10.1.2.3"), &h),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let t = proxies(&["10.0.0.0/8"]);
        // The client wrote the first entry itself; the trusted proxies appended the rest.
        let h = xff(&["1.1.1.1, 203.0.113.7", "10.0.0.2"]);
        assert_eq!(t.client(ip("10.0.0.1"), &h), ip("203.0.113.7"));
        let h = xff(&["203.0.113.7:5555, 10.0.0.2"]);
        assert_eq!(t.client(ip("10.0.0.1"), &h), ip("203.0.113.7"));
        // Every hop trusted: the farthest one.
        let h = xff(&["10.0.0.3, 10.0.0.2"]);
        assert_eq!(t.client(ip("10.0.0.1"), &h), ip("10.0.0.3"));
        // Garbled: stop at the last trusted hop.
        let h = xff(&["203.0.113.7, nonsense, 10.0.0.2"]);
        assert_eq!(t.client(ip("10.0.0.1"), &h), ip("10.0.0.2"));
        // No header: the peer.
        assert_eq!(t.client(ip("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
        // An IPv4 peer seen as IPv6-mapped.
        assert_eq!(
            t.client(ip("::ffff:10.0.0.1"), &xff(&["203.0.113.7"])),
            ip("203.0.113.7")
        );
    }
}
