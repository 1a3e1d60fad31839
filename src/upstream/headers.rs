//! Header rules shared by both forwarding paths (the proxy and the agent client).

use http::HeaderMap;

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

/// The `X-Forwarded-*` values to set on a forwarded request: the client address appended to
/// any `X-Forwarded-For` already present, the scheme the client used, and the client's `Host`.
pub fn forwarded_values(
    headers: &HeaderMap,
    client_ip: Option<std::net::IpAddr>,
    tls: bool,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(3);
    if let Some(ip) = client_ip {
        let prior: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let value = if prior.is_empty() {
            ip.to_string()
        } else {
            format!("{}, {ip}", prior.join(", "))
        };
        out.push(("X-Forwarded-For", value));
    }
    out.push((
        "X-Forwarded-Proto",
        if tls { "https" } else { "http" }.to_string(),
    ));
    if let Some(host) = headers.get("host").and_then(|h| h.to_str().ok()) {
        out.push(("X-Forwarded-Host", host.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert("host", "gw:6385".parse().unwrap());
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        let v = forwarded_values(&h, Some("127.0.0.2".parse().unwrap()), false);
        assert_eq!(
            v,
            vec![
                ("X-Forwarded-For", "10.0.0.1, 127.0.0.2".to_string()),
                ("X-Forwarded-Proto", "http".to_string()),
                ("X-Forwarded-Host", "gw:6385".to_string()),
            ]
        );
    }

    #[test]
    fn hop_by_hop_names() {
        assert!(is_hop_by_hop("Connection"));
        assert!(is_hop_by_hop("transfer-encoding"));
        assert!(!is_hop_by_hop("content-length"));
        assert!(!is_hop_by_hop("x-openstack-request-id"));
    }
}
