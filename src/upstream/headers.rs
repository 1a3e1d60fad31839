//! Header rules shared by both forwarding paths (the proxy and the agent client).

use http::{HeaderMap, HeaderValue};

/// Hop-by-hop headers (RFC 9110 7.6.1): never copied between the two connections.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
];

pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) || name.eq_ignore_ascii_case("upgrade")
}

/// The `X-Forwarded-Proto` and `X-Forwarded-Host` values to set on a forwarded request: the
/// scheme the client used, and the client's `Host` if it is text (its value shared, not
/// copied: this runs on every forwarded request). `X-Forwarded-For` is the chain
/// `crate::client_addr` vouches for, set by each caller.
pub fn forwarded_values(
    headers: &HeaderMap,
    tls: bool,
) -> impl Iterator<Item = (&'static str, HeaderValue)> {
    let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    let host = headers
        .get(http::header::HOST)
        .filter(|h| h.to_str().is_ok())
        .cloned();
    std::iter::once(("X-Forwarded-Proto", proto)).chain(host.map(|h| ("X-Forwarded-Host", h)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(h: &HeaderMap, tls: bool) -> Vec<(&'static str, String)> {
        forwarded_values(h, tls)
            .map(|(n, v)| (n, v.to_str().unwrap().to_string()))
            .collect()
    }

    #[test]
    fn forwarded_proto_and_host() {
        let mut h = HeaderMap::new();
        h.insert("host", "gw:6385".parse().unwrap());
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        assert_eq!(
            values(&h, false),
            vec![
                ("X-Forwarded-Proto", "http".to_string()),
                ("X-Forwarded-Host", "gw:6385".to_string()),
            ]
        );
        assert_eq!(
            values(&h, true)[0],
            ("X-Forwarded-Proto", "https".to_string())
        );
    }

    #[test]
    fn a_host_that_is_not_text_is_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_bytes(b"gw\xff").unwrap());
        assert_eq!(
            values(&h, false),
            vec![("X-Forwarded-Proto", "http".to_string())]
        );
        assert_eq!(values(&HeaderMap::new(), false).len(), 1);
    }

    #[test]
    fn hop_by_hop_names() {
        assert!(is_hop_by_hop("Connection"));
        assert!(is_hop_by_hop("transfer-encoding"));
        assert!(!is_hop_by_hop("content-length"));
        assert!(!is_hop_by_hop("x-openstack-request-id"));
    }
}
