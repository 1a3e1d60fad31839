//! Ironic's version documents, as the gateway answers them at the edge: the root (`GET /`, the
//! same body at any version) and the v1 document (`GET /v1`, one body per negotiated version:
//! it links only the controllers that version has), with `links` built from the request's
//! `Host` as webob's `host_url` does (`<scheme>://<Host>`, the default port dropped), unless
//! Ironic has a fixed `[api]public_endpoint`. Pure.
//!
//! The gateway learns a document by asking for it with [`PROBE_HOST`] as its `Host`: where
//! that host shows in the links, Ironic builds them from the request; where it does not, the
//! links are fixed and the document is served as it is.

/// The `Host` the version discovery sends: a reserved name (RFC 6761) no client uses.
pub const PROBE_HOST: &str = "ironic-edge.invalid";

/// A version document learnt from Ironic (the root or the v1 document).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionDocument {
    body: String,
    /// `<scheme>://ironic-edge.invalid` as it appears in the links, with the scheme, when the
    /// links follow the request's host.
    probe: Option<(String, String)>,
}

impl VersionDocument {
    /// Learns the root document from Ironic's answer to a `GET /` sent with [`PROBE_HOST`].
    pub fn learn_root(body: &[u8]) -> Option<VersionDocument> {
        let text = std::str::from_utf8(body).ok()?;
        let doc: serde_json::Value = serde_json::from_str(text).ok()?;
        doc.get("default_version")?;
        Self::learn(text)
    }

    /// Learns the v1 document from Ironic's answer to a `GET /v1` sent with [`PROBE_HOST`].
    pub fn learn_v1(body: &[u8]) -> Option<VersionDocument> {
        let text = std::str::from_utf8(body).ok()?;
        let doc: serde_json::Value = serde_json::from_str(text).ok()?;
        (doc.get("id")?.as_str()? == "v1").then_some(())?;
        doc.get("media_types")?;
        Self::learn(text)
    }

    fn learn(body: &str) -> Option<VersionDocument> {
        let needle = format!("://{PROBE_HOST}");
        let probe = body.find(&needle).and_then(|at| {
            let scheme = &body[..at];
            let start = scheme
                .rfind(|c: char| !c.is_ascii_alphabetic())
                .map_or(0, |i| i + 1);
            let scheme = &scheme[start..];
            matches!(scheme, "http" | "https")
                .then(|| (format!("{scheme}{needle}"), scheme.to_string()))
        });
        Some(VersionDocument {
            body: body.to_string(),
            probe,
        })
    }

    /// The body Ironic would answer a request carrying `host` with; `None` where the gateway
    /// does not know it for sure (no `Host`, or one webob would rewrite): Ironic answers.
    pub fn render(&self, host: Option<&str>) -> Option<String> {
        let Some((probe, scheme)) = &self.probe else {
            return Some(self.body.clone());
        };
        let host = host?;
        if !plain_host(scheme, host) {
            return None;
        }
        Some(
            self.body
                .replace(probe.as_str(), &format!("{scheme}://{host}")),
        )
    }
}

/// A `Host` that webob's `host_url` keeps as it is and that JSON needs no escaping for: a
/// name or IPv4 address with an optional port other than the scheme's default (which webob
/// drops). Linear.
fn plain_host(scheme: &str, host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    let port_ok = match port {
        None => true,
        Some(p) => {
            let default = if scheme == "https" { "443" } else { "80" };
            !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) && p != default
        }
    };
    name_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(base: &str) -> String {
        format!(
            "{{\"name\": \"OpenStack Ironic API\", \"default_version\": {{\"id\": \"v1\", \"links\": [{{\"href\": \"{base}/v1/\", \"rel\": \"self\"}}], \"status\": \"CURRENT\", \"min_version\": \"1.1\", \"version\": \"1.115\"}}, \"versions\": [{{\"id\": \"v1\", \"links\": [{{\"href\": \"{base}/v1/\", \"rel\": \"self\"}}]}}]}}"
        )
    }

    #[test]
    fn links_follow_the_request_host() {
        let d = VersionDocument::learn_root(doc("http://ironic-edge.invalid").as_bytes()).unwrap();
        assert_eq!(
            d.render(Some("10.0.0.1:6385")).unwrap(),
            doc("http://10.0.0.1:6385")
        );
        assert_eq!(
            d.render(Some("ironic.example")).unwrap(),
            doc("http://ironic.example")
        );
        let tls =
            VersionDocument::learn_root(doc("https://ironic-edge.invalid").as_bytes()).unwrap();
        assert_eq!(tls.render(Some("h:8443")).unwrap(), doc("https://h:8443"));
    }

    #[test]
    fn hosts_webob_would_rewrite_or_json_would_escape_are_left_to_ironic() {
        let d = VersionDocument::learn_root(doc("http://ironic-edge.invalid").as_bytes()).unwrap();
        for host in [
            None,
            Some(""),
            Some("h:80"),
            Some("h:"),
            Some("[::1]:6385"),
            Some("h\"x"),
            Some("h/x"),
            Some("h:123456"),
        ] {
            assert_eq!(d.render(host), None, "{host:?}");
        }
        let tls =
            VersionDocument::learn_root(doc("https://ironic-edge.invalid").as_bytes()).unwrap();
        assert_eq!(tls.render(Some("h:443")), None);
        assert!(tls.render(Some("h:80")).is_some());
    }

    #[test]
    fn a_fixed_public_endpoint_is_served_as_it_is() {
        let body = doc("https://ironic.example:6385");
        let d = VersionDocument::learn_root(body.as_bytes()).unwrap();
        assert_eq!(d.render(Some("anything:1")).unwrap(), body);
        assert_eq!(d.render(None).unwrap(), body);
    }

    fn v1_doc(base: &str) -> String {
        format!(
            "{{\"id\": \"v1\", \"links\": [{{\"href\": \"{base}/v1/\", \"rel\": \"self\"}}, {{\"href\": \"https://docs.openstack.org//ironic/latest/contributor//webapi.html\", \"rel\": \"describedby\", \"type\": \"text/html\"}}], \"media_types\": {{\"base\": \"application/json\", \"type\": \"application/vnd.openstack.ironic.v1+json\"}}, \"nodes\": [{{\"href\": \"{base}/v1/nodes/\", \"rel\": \"self\"}}, {{\"href\": \"{base}/nodes/\", \"rel\": \"bookmark\"}}]}}"
        )
    }

    #[test]
    fn the_v1_document_links_follow_the_request_host_everywhere() {
        let d = VersionDocument::learn_v1(v1_doc("http://ironic-edge.invalid").as_bytes()).unwrap();
        assert_eq!(
            d.render(Some("10.0.0.1:6385")).unwrap(),
            v1_doc("http://10.0.0.1:6385")
        );
        assert_eq!(d.render(Some("h:80")), None);
    }

    #[test]
    fn a_root_document_is_not_a_v1_document_and_back() {
        let root = doc("http://ironic-edge.invalid");
        let v1 = v1_doc("http://ironic-edge.invalid");
        assert!(VersionDocument::learn_v1(root.as_bytes()).is_none());
        assert!(VersionDocument::learn_root(v1.as_bytes()).is_none());
        assert!(VersionDocument::learn_v1(br#"{"id": "v2", "media_types": {}}"#).is_none());
    }

    #[test]
    fn what_is_not_a_root_document_is_not_learnt() {
        assert!(VersionDocument::learn_root(b"<html>").is_none());
        assert!(VersionDocument::learn_root(b"{}").is_none());
        assert!(VersionDocument::learn_root(&[0xff, 0xfe]).is_none());
    }
}
