//! Where a request comes from: the client address (forwarding headers believed only from trusted proxies) and per-account allow-lists replaceable at run time.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, header};
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

/// A request's forwarding headers (`X-Forwarded-For`, `Forwarded`) and no others: the
/// `HeaderMap` extractor would copy every header of every push.
pub struct Forwarding(pub HeaderMap);

impl<S: Send + Sync> FromRequestParts<S> for Forwarding {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        const NAMES: [HeaderName; 2] = [
            HeaderName::from_static("x-forwarded-for"),
            header::FORWARDED,
        ];
        let mut headers = HeaderMap::new();
        for name in NAMES {
            for value in parts.headers.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        Ok(Forwarding(headers))
    }
}

/// Reverse proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies(nets)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the direct peer, or, when the peer is a trusted proxy, the
    /// nearest untrusted address in `X-Forwarded-For` (else `Forwarded`). `None` when a
    /// trusted proxy forwarded an address that cannot be read.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return Some(peer);
        }
        let mut hops = forwarded_for(headers);
        if hops.is_empty() {
            return Some(peer);
        }
        while let Some(hop) = hops.pop() {
            let ip = hop?.to_canonical();
            if !self.trusts(ip) {
                return Some(ip);
            }
        }
        Some(peer)
    }
}

/// The addresses a request passed, first hop first: `X-Forwarded-For`, or `Forwarded: for=`.
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let xff: Vec<Option<IpAddr>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(|s| parse_addr(s.trim()))
        .collect();
    if !xff.is_empty() {
        return xff;
    }
    headers
        .get_all("forwarded")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("for=?").split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_addr(v.trim().trim_matches('"')))
            })
        })
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]` or `[::1]:5678`.
fn parse_addr(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':').and_then(|(host, _)| host.parse().ok())
}

/// The addresses allowed to push to one account; `None` allows all. Shared with whatever
/// refreshes it (WeChat publishes its ranges through `getcallbackip`).
#[derive(Debug, Default)]
pub struct AllowList(RwLock<Option<Arc<Vec<IpNet>>>>);

impl AllowList {
    pub fn new(nets: Option<Vec<IpNet>>) -> AllowList {
        AllowList(RwLock::new(nets.map(Arc::new)))
    }

    /// Replaces the list while the service runs.
    pub fn replace(&self, nets: Option<Vec<IpNet>>) {
        if let Ok(mut list) = self.0.write() {
            *list = nets.map(Arc::new);
        }
    }

    /// Whether `client` may push (an unknown client passes only when there is no list).
    pub fn allows(&self, client: Option<IpAddr>) -> bool {
        let list = self.0.read().ok().and_then(|l| l.clone());
        match (list, client) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(nets), Some(ip)) => nets.iter().any(|n| n.contains(&ip.to_canonical())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let proxies = TrustedProxies::new(vec![
            "127.0.0.0/8".parse().expect("net"),
            "10.0.0.0/8".parse().expect("net"),
        ]);
        let spoofed = headers(&[("x-forwarded-for", "101.226.103.5")]);
        assert_eq!(
            proxies.client(ip("203.0.113.9"), &spoofed),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            proxies.client(ip("127.0.0.1"), &spoofed),
            Some(ip("101.226.103.5"))
        );
        // A client-supplied first entry does not win over the address the proxy saw.
        let chain = headers(&[("x-forwarded-for", "1.1.1.1, 101.226.103.5, 10.0.0.2")]);
        assert_eq!(
            proxies.client(ip("127.0.0.1"), &chain),
            Some(ip("101.226.103.5"))
        );
        let fwd = headers(&[("forwarded", "for=\"[2001:db8::1]:4711\";proto=https")]);
        assert_eq!(
            proxies.client(ip("127.0.0.1"), &fwd),
            Some(ip("2001:db8::1"))
        );
        let garbage = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(proxies.client(ip("127.0.0.1"), &garbage), None);
        assert_eq!(
            proxies.client(ip("::ffff:127.0.0.1"), &spoofed),
            Some(ip("101.226.103.5"))
        );
    }

    #[test]
    fn allow_lists_are_replaceable() {
        let list = AllowList::new(Some(vec!["101.226.103.0/25".parse().expect("net")]));
        assert!(list.allows(Some(ip("101.226.103.5"))));
        assert!(!list.allows(Some(ip("101.226.103.200"))));
        assert!(!list.allows(None));
        list.replace(Some(vec!["101.226.103.128/25".parse().expect("net")]));
        assert!(list.allows(Some(ip("101.226.103.200"))));
        list.replace(None);
        assert!(list.allows(None));
    }
}
