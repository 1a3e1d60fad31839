//! Ironic-shaped error responses (spec section 4).

use super::pyjson::dumps_str;
use super::version::{ApiVersion, VersionRange};
// The fixed answers the edge gives in storms (an index 404, a wrong token) are built once:
// each was three `format!`s and two JSON string encodings per answer.
use bytes::Bytes;
use once_cell::sync::Lazy;

/// Which Ironic version headers an answer carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderSet {
    /// Minimum, maximum and the negotiated version (every answer of the root controller).
    Versions,
    /// Minimum and maximum only (406 for an out-of-range version).
    RangeOnly,
    /// No version headers (405; 406 for an unparseable version header).
    None,
}

/// An error answer exactly as Ironic would send it: status, JSON body, and which headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IronicError {
    pub status: u16,
    /// The complete body, byte-exact, UTF-8 (`Content-Type: application/json`; empty for the
    /// bare 500, see [`IronicError::content_type`]). Shared, not copied, by every answer made
    /// of it: the fixed errors of a storm (an index 404, a wrong token) are built once.
    pub body: Bytes,
    pub headers: HeaderSet,
    /// `Allow` header value for 405s.
    pub allow: Option<&'static str>,
}

impl IronicError {
    /// A controller exception: `{"error_message": "{\"faultcode\": \"Client\"|\"Server\", \"faultstring\": ..., \"debuginfo\": null}"}`.
    /// `Client` below 500, `Server` from 500.
    pub fn fault(status: u16, faultstring: &str) -> Self {
        let faultcode = if status < 500 { "Client" } else { "Server" };
        // Built in place: local 404s and 400s make one per answer.
        let faultstring = dumps_str(faultstring);
        let mut inner = String::with_capacity(64 + faultstring.len());
        inner.push_str("{\"faultcode\": \"");
        inner.push_str(faultcode);
        inner.push_str("\", \"faultstring\": ");
        inner.push_str(&faultstring);
        inner.push_str(", \"debuginfo\": null}");
        IronicError {
            status,
            body: wrap(&inner).into(),
            headers: HeaderSet::Versions,
            allow: None,
        }
    }
    /// A framework error (405, 406): `{"error_message": "{\"code\": N, \"title\": ..., \"description\": ...}"}`.
    pub fn framework(status: u16, title: &str, description: &str, headers: HeaderSet) -> Self {
        let inner = format!(
            "{{\"code\": {status}, \"title\": {}, \"description\": {}}}",
            dumps_str(title),
            dumps_str(description)
        );
        IronicError {
            status,
            body: wrap(&inner).into(),
            headers,
            allow: None,
        }
    }
    /// The body-limit middleware's flat, unwrapped `{"faultcode": "Client", "faultstring": ...}`.
    /// It answers before routing and version negotiation, so it carries no version headers.
    pub fn flat(status: u16, faultstring: &str) -> Self {
        IronicError {
            status,
            body: format!(
                "{{\"faultcode\": \"Client\", \"faultstring\": {}}}",
                dumps_str(faultstring)
            )
            .into(),
            headers: HeaderSet::None,
            allow: None,
        }
    }
    /// A 405 as pecan sends it: `Method Not Allowed`, empty description, no version headers,
    /// with `Allow` when given.
    pub fn method_not_allowed(allow: Option<&'static str>) -> Self {
        IronicError {
            allow,
            ..IronicError::framework(405, "Method Not Allowed", "", HeaderSet::None)
        }
    }
    /// The bare 500 the WSGI server sends when the application crashes outside of Ironic's
    /// error handling (e.g. an unknown `charset` in `Content-Type`): empty body,
    /// `Content-Type: text/plain`, no version headers. See [`IronicError::content_type`].
    pub fn bare_server_error() -> Self {
        IronicError {
            status: 500,
            body: Bytes::new(),
            headers: HeaderSet::None,
            allow: None,
        }
    }
    /// The `Content-Type` this answer carries: `text/plain` for [`IronicError::bare_server_error`]
    /// (empty body), `application/json` for everything else.
    pub fn content_type(&self) -> &'static str {
        if self.body.is_empty() {
            "text/plain"
        } else {
            "application/json"
        }
    }
    /// The faultstring (or description) carried by this error, for logs.
    pub fn message(&self) -> String {
        let text = || String::from_utf8_lossy(&self.body).into_owned();
        let Ok(outer) = serde_json::from_slice::<serde_json::Value>(&self.body) else {
            return text();
        };
        let inner_text = match outer.get("error_message") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => return pick_message(&outer).unwrap_or_else(text),
        };
        match serde_json::from_str::<serde_json::Value>(&inner_text) {
            Ok(inner) => pick_message(&inner).unwrap_or(inner_text),
            Err(_) => inner_text,
        }
    }
}

/// `json.dumps({"error_message": inner})` (the `ParsableErrorMiddleware` wrapper).
fn wrap(inner: &str) -> String {
    let quoted = dumps_str(inner);
    let mut out = String::with_capacity(20 + quoted.len());
    out.push_str("{\"error_message\": ");
    out.push_str(&quoted);
    out.push('}');
    out
}

fn pick_message(v: &serde_json::Value) -> Option<String> {
    for key in ["faultstring", "description", "title"] {
        if let Some(serde_json::Value::String(s)) = v.get(key) {
            return Some(s.clone());
        }
    }
    None
}

/// 404 `Resource could not be found.` (lookup misses, wrong state, version below 1.22).
pub fn resource_not_found() -> IronicError {
    static FIXED: Lazy<IronicError> =
        Lazy::new(|| IronicError::fault(404, "Resource could not be found."));
    FIXED.clone()
}

/// 404 `Node <ident> could not be found.` (heartbeat for an unknown node).
pub fn node_not_found(ident: &str) -> IronicError {
    IronicError::fault(404, &format!("Node {ident} could not be found."))
}

/// 400 `Invalid or missing agent token received.` (the conductor's token check).
pub fn invalid_token() -> IronicError {
    static FIXED: Lazy<IronicError> =
        Lazy::new(|| IronicError::fault(400, "Invalid or missing agent token received."));
    FIXED.clone()
}

/// 400 `Detected change in ramdisk provided "callback_url"`.
pub fn callback_url_changed() -> IronicError {
    static FIXED: Lazy<IronicError> = Lazy::new(|| {
        IronicError::fault(400, "Detected change in ramdisk provided \"callback_url\"")
    });
    FIXED.clone()
}

/// 503 for an unreachable or failing upstream (`Resource temporarily unavailable, please retry.`).
pub fn upstream_unavailable() -> IronicError {
    IronicError::fault(503, "Resource temporarily unavailable, please retry.")
}

/// 429 for a source over the edge's per-source limits (Ironic has no such limit; the shape is
/// its controller error's).
pub fn too_many_requests() -> IronicError {
    IronicError::fault(
        429,
        "Too many requests from this source, please retry later.",
    )
}

/// 403 `Access was denied to the following resource: <what>`.
pub fn access_denied(what: &str) -> IronicError {
    IronicError::fault(
        403,
        &format!("Access was denied to the following resource: {what}"),
    )
}

/// Header names Ironic uses, in the order it sends them.
pub const MIN_VERSION_HEADER: &str = "X-OpenStack-Ironic-API-Minimum-Version";
pub const MAX_VERSION_HEADER: &str = "X-OpenStack-Ironic-API-Maximum-Version";
pub const VERSION_HEADER: &str = "X-OpenStack-Ironic-API-Version";

/// The values of the three version headers for an answer, in Ironic's order (minimum, maximum,
/// negotiated); only minimum and maximum for [`HeaderSet::RangeOnly`], none for [`HeaderSet::None`].
pub fn version_header_values(
    set: HeaderSet,
    range: &VersionRange,
    negotiated: ApiVersion,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(3);
    if set == HeaderSet::None {
        return out;
    }
    out.push((MIN_VERSION_HEADER, range.min.to_string()));
    out.push((MAX_VERSION_HEADER, range.max.to_string()));
    if set == HeaderSet::Versions {
        out.push((VERSION_HEADER, negotiated.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range() -> VersionRange {
        VersionRange {
            min: ApiVersion::new(1, 1),
            max: ApiVersion::new(1, 115),
        }
    }

    #[test]
    fn lookup_miss_is_byte_exact() {
        let e = resource_not_found();
        assert_eq!(
            e.body,
            r#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"Resource could not be found.\", \"debuginfo\": null}"}"#
        );
        assert_eq!(e.body.len(), 120);
        assert_eq!(e.status, 404);
        assert_eq!(e.headers, HeaderSet::Versions);
        assert_eq!(e.allow, None);
        assert_eq!(e.message(), "Resource could not be found.");
        assert_eq!(e.content_type(), "application/json");
    }

    #[test]
    fn quotes_are_escaped_twice() {
        let e = IronicError::fault(
            400,
            "An issue with the supplied \"callback_url\" has been detected.",
        );
        assert_eq!(
            e.body,
            r#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"An issue with the supplied \\\"callback_url\\\" has been detected.\", \"debuginfo\": null}"}"#
        );
        assert_eq!(
            e.message(),
            "An issue with the supplied \"callback_url\" has been detected."
        );
    }

    #[test]
    fn non_ascii_is_escaped_twice() {
        // Verified on the wire: node_uuid=%C3%A9 → `... node_uuid: \\u00e9\" ...`.
        let e = IronicError::fault(400, "Expected UUID for node_uuid: é");
        assert_eq!(
            e.body,
            r#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"Expected UUID for node_uuid: \\u00e9\", \"debuginfo\": null}"}"#
        );
        assert_eq!(e.body.len(), 128);
        assert_eq!(e.message(), "Expected UUID for node_uuid: é");
    }

    #[test]
    fn server_faults() {
        let e = upstream_unavailable();
        assert_eq!(e.status, 503);
        assert!(std::str::from_utf8(&e.body)
            .unwrap()
            .contains(r#"\"faultcode\": \"Server\""#));
        let e = IronicError::fault(500, "a bytes-like object is required, not 'str'");
        assert_eq!(
            e.body,
            r#"{"error_message": "{\"faultcode\": \"Server\", \"faultstring\": \"a bytes-like object is required, not 'str'\", \"debuginfo\": null}"}"#
        );
        assert!(std::str::from_utf8(&IronicError::fault(499, "x").body)
            .unwrap()
            .contains("Client"));
    }

    #[test]
    fn helpers_messages() {
        assert_eq!(
            node_not_found("abc").message(),
            "Node abc could not be found."
        );
        assert_eq!(
            invalid_token().message(),
            "Invalid or missing agent token received."
        );
        assert_eq!(
            callback_url_changed().message(),
            "Detected change in ramdisk provided \"callback_url\""
        );
        assert_eq!(
            access_denied("/v1/lookup").message(),
            "Access was denied to the following resource: /v1/lookup"
        );
        assert_eq!(invalid_token().status, 400);
        assert_eq!(access_denied("x").status, 403);
    }

    #[test]
    fn framework_405_is_byte_exact() {
        let e = IronicError::method_not_allowed(Some("GET"));
        assert_eq!(
            e.body,
            r#"{"error_message": "{\"code\": 405, \"title\": \"Method Not Allowed\", \"description\": \"\"}"}"#
        );
        assert_eq!(e.body.len(), 94);
        assert_eq!(e.allow, Some("GET"));
        assert_eq!(e.headers, HeaderSet::None);
        assert_eq!(e.message(), "");
        assert_eq!(IronicError::method_not_allowed(None).allow, None);
    }

    #[test]
    fn framework_406_is_byte_exact() {
        let e = IronicError::framework(
            406,
            "Not Acceptable",
            "Invalid value for X-OpenStack-Ironic-API-Version header",
            HeaderSet::None,
        );
        assert_eq!(
            e.body,
            r#"{"error_message": "{\"code\": 406, \"title\": \"Not Acceptable\", \"description\": \"Invalid value for X-OpenStack-Ironic-API-Version header\"}"}"#
        );
        assert_eq!(e.body.len(), 145);
        assert_eq!(
            e.message(),
            "Invalid value for X-OpenStack-Ironic-API-Version header"
        );
    }

    #[test]
    fn flat_bodies_are_byte_exact() {
        let e = IronicError::flat(
            400,
            "Request body JSON is nested too deeply. Please contact the service administrator.",
        );
        assert_eq!(
            e.body,
            r#"{"faultcode": "Client", "faultstring": "Request body JSON is nested too deeply. Please contact the service administrator."}"#
        );
        assert_eq!(e.body.len(), 123);
        assert_eq!(e.headers, HeaderSet::None);
        assert_eq!(
            e.message(),
            "Request body JSON is nested too deeply. Please contact the service administrator."
        );
        let e = IronicError::flat(
            413,
            "Request body is too large. Please contact the service administrator.",
        );
        assert_eq!(
            e.body,
            r#"{"faultcode": "Client", "faultstring": "Request body is too large. Please contact the service administrator."}"#
        );
    }

    #[test]
    fn bare_500() {
        let e = IronicError::bare_server_error();
        assert_eq!(e.status, 500);
        assert_eq!(e.body, "");
        assert_eq!(e.headers, HeaderSet::None);
        assert_eq!(e.content_type(), "text/plain");
        assert_eq!(e.message(), "");
    }

    #[test]
    fn version_headers_in_ironic_order() {
        let v = version_header_values(HeaderSet::Versions, &range(), ApiVersion::new(1, 62));
        assert_eq!(
            v,
            vec![
                ("X-OpenStack-Ironic-API-Minimum-Version", "1.1".to_string()),
                (
                    "X-OpenStack-Ironic-API-Maximum-Version",
                    "1.115".to_string()
                ),
                ("X-OpenStack-Ironic-API-Version", "1.62".to_string()),
            ]
        );
        let v = version_header_values(HeaderSet::RangeOnly, &range(), ApiVersion::new(1, 62));
        assert_eq!(
            v,
            vec![
                ("X-OpenStack-Ironic-API-Minimum-Version", "1.1".to_string()),
                (
                    "X-OpenStack-Ironic-API-Maximum-Version",
                    "1.115".to_string()
                ),
            ]
        );
        assert!(version_header_values(HeaderSet::None, &range(), ApiVersion::new(1, 1)).is_empty());
    }
}
