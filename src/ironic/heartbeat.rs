//! `POST /v1/heartbeat/{node_ident}`: parameters and the API-side checks (spec 2.1-2.3).

use super::error::{callback_url_changed, resource_not_found, IronicError};
use super::ident::{is_uuid_like, is_valid_logical_name};
use super::params::{gather_post_params, mixed};
use super::pyjson::PyValue;
use super::urlparse::{geturl, urlparse};
use super::version::{
    ApiVersion, AGENT_VERSION_IN_HEARTBEAT, RAMDISK_ENDPOINTS, STATUS_IN_HEARTBEAT,
    VERIFY_CA_IN_HEARTBEAT,
};
use super::work::step;

/// The largest JSON body Ironic accepts (`[api]max_json_body_size`, 1024 KiB).
pub const MAX_JSON_BODY: usize = 1024 * 1024;

/// A heartbeat whose parameters passed the checks that need no node data.
///
/// Values come from the query string, form fields or the JSON body, decoded as Ironic decodes
/// them (a lone UTF-16 surrogate escaped in the JSON body is carried as a plane-16 private-use
/// character, see [`super::pyjson`]). `agent_token` is the raw secret: never log it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatRequest {
    /// The percent-decoded path segment (or the `node_ident` parameter when the path has none).
    pub node_ident: String,
    /// As sent by the agent (before normalisation).
    pub callback_url: String,
    pub agent_token: Option<String>,
    pub agent_version: Option<String>,
    pub agent_verify_ca: Option<String>,
    pub agent_status: Option<String>,
    pub agent_status_message: Option<String>,
}

/// Where in Ironic's order an error arises: before the node is looked up (so Ironic answers it
/// whatever the node), or after (so Ironic answers `Node X could not be found.` instead when the
/// node does not exist).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeartbeatRejection {
    BeforeNodeLookup(IronicError),
    AfterNodeLookup(IronicError),
}

/// What the API-side checks say about a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedHeartbeat {
    pub request: HeartbeatRequest,
    /// The `callback_url` as Ironic normalises it (`urlparse(...).geturl()`), compared with the
    /// stored `agent_url`.
    pub normalized_callback_url: String,
}

/// The largest JSON nesting `[api]max_json_body_depth` allows.
pub const MAX_JSON_DEPTH: usize = 25;

/// The `Allow` value of the heartbeat's 405s.
pub const ALLOW: &str = "POST";

/// The agent statuses Ironic accepts (`AGENT_VALID_STATES`).
pub const AGENT_VALID_STATES: [&str; 3] = ["start", "end", "error"];

/// The parameters `HeartbeatController.post` declares, in its signature order (the order in
/// which `args.validate` checks them).
const PARAMS: [&str; 7] = [
    "node_ident",
    "callback_url",
    "agent_version",
    "agent_token",
    "agent_verify_ca",
    "agent_status",
    "agent_status_message",
];

/// Ironic's `JsonDepthMiddleware` (`ironic/api/middleware/json_depth.py`, outside every other
/// layer of the API: it answers before version negotiation, routing and authentication, on
/// **any** path and method). It only looks at requests whose `Content-Type` contains `json`
/// (case-sensitive: `Application/JSON` is not checked) and a non-empty body:
/// - more than [`MAX_JSON_BODY`] bytes → 413 flat `Request body is too large. ...`;
/// - nesting deeper than [`MAX_JSON_DEPTH`] → 400 flat `Request body JSON is nested too
///   deeply. ...`. Depth is counted on the raw bytes: `{` and `[` outside strings add one, `}`
///   and `]` subtract one (it may go negative: `]]{{` is depth 2 at most), string boundaries
///   honour backslash escapes; the body need not be valid JSON.
///
/// Both answers are flat (not wrapped in `error_message`) and carry no version headers.
pub fn check_body_limit(content_type: Option<&str>, body: &[u8]) -> Result<(), IronicError> {
    if !content_type.unwrap_or("").contains("json") || body.is_empty() {
        return Ok(());
    }
    if body.len() > MAX_JSON_BODY {
        return Err(IronicError::flat(
            413,
            "Request body is too large. Please contact the service administrator.",
        ));
    }
    if !depth_within(body, MAX_JSON_DEPTH) {
        return Err(IronicError::flat(
            400,
            "Request body JSON is nested too deeply. Please contact the service administrator.",
        ));
    }
    Ok(())
}

/// `json_depth.check_depth`.
fn depth_within(raw: &[u8], max_depth: usize) -> bool {
    let mut depth: i64 = 0;
    let mut in_string = false;
    let mut escape = false;
    for &b in raw {
        step();
        if escape {
            escape = false;
            continue;
        }
        if in_string {
            if b == b'\\' {
                escape = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth as i64 {
                    return false;
                }
            }
            b'}' | b']' => depth -= 1,
            _ => {}
        }
    }
    true
}

/// What the API does with a `callback_url` (`urlparse(url)`, the scheme must contain `http`,
/// then `geturl()`): `Ok(normalized)` or the 400 `An issue with the supplied "callback_url"
/// has been detected.`. The empty string is accepted as is (anaconda's one-way heartbeat).
/// Normalisation lower-cases the scheme, drops an empty `?`/`#`, strips leading C0 controls
/// and spaces and removes tabs and line breaks (`"HTTPS://h:1/?"` → `"https://h:1/"`).
pub fn normalize_callback_url(callback_url: &str) -> Result<String, IronicError> {
    match urlparse(callback_url) {
        Ok(p) if p.scheme.contains("http") => Ok(geturl(&p)),
        _ if callback_url.is_empty() => Ok(String::new()),
        _ => Err(IronicError::fault(
            400,
            "An issue with the supplied \"callback_url\" has been detected.",
        )),
    }
}

/// Runs Ironic's checks in order: the JSON body-limit middleware (413 too large, 400 too deep;
/// only for content types containing `json`), argument parsing (JSON object body merged with
/// the query string for `application/json`/`application/javascript`, else query plus form
/// fields; unknown keys, non-string values, keys given twice, missing `callback_url`,
/// `node_ident` format), version below 1.22 (404), the 1.36/1.72/1.68 field gates - all
/// `BeforeNodeLookup`; then the `callback_url` scheme check, the token presence check and the
/// `agent_status` value check - `AfterNodeLookup`.
///
/// This is [`check_heartbeat_with_agent_url`] for a node without a stored `agent_url`. Once the
/// node's `driver_internal_info.agent_url` is known, call that one: Ironic's "callback_url
/// changed" check sits between the scheme check and the token check.
pub fn check_heartbeat(
    node_ident: &str,
    raw_query: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
    version: ApiVersion,
) -> Result<CheckedHeartbeat, HeartbeatRejection> {
    check_heartbeat_with_agent_url(node_ident, raw_query, content_type, body, version, None)
}

/// Every API-side check of a heartbeat in Ironic 39.0.0's order (all verified on the wire),
/// given the node's stored `agent_url` (`None` if unset or unknown):
///
/// `BeforeNodeLookup` (Ironic answers these whatever the node):
/// 1. [`check_body_limit`] (flat 413/400, no version headers; in Ironic it even precedes the
///    version 406s, so callers should run it before [`super::version::negotiate`] too);
/// 2. query string not UTF-8 → framework 400 (no version headers); a non-UTF-8 form
///    `charset`, an unknown JSON `charset` or a multipart body without a valid boundary → the
///    bare 500 ([`IronicError::bare_server_error`]);
/// 3. `_method` (query, else form): `post` routes normally, anything else → 405 `Allow: POST`
///    (no version headers);
/// 4. `Unexpected arguments: a, b` (names in first-appearance order; Ironic's order is that of a
///    Python `set`, i.e. random per process); `self` is silently dropped;
/// 5. `node_ident` (the percent-decoded path segment) neither a logical name nor UUID-like →
///    `Expected UUID or name for node_ident: <v>`. An empty `node_ident` means the path had
///    none (`/v1/heartbeat`, `/v1/heartbeat/`): then a `node_ident` parameter is the ident, and
///    without one → `Missing mandatory parameter: node_ident`;
/// 6. `callback_url` absent → `Missing mandatory parameter: callback_url`; then for
///    `callback_url`, `agent_version`, `agent_token`, `agent_verify_ca`, `agent_status`,
///    `agent_status_message` in this order: a value that is neither a string nor JSON `null` →
///    `Expected string for <field>: <str(value)>` (a key given twice, e.g. in the query and the
///    body, is a list: `['y', 'x']`);
/// 7. a `node_ident` parameter besides the path → 500 `HeartbeatController.post() got multiple
///    values for argument 'node_ident'` (faultcode `Server`);
/// 8. version < 1.22 → 404 `Resource could not be found.`;
/// 9. non-empty `agent_version` below 1.36 → `Field "agent_version" not recognised`;
/// 10. non-empty `agent_status` or `agent_status_message` below 1.72 → `Fields "agent_status"
///     and "agent_status_message" not recognised.`;
/// 11. `agent_verify_ca` present (even empty) below 1.68 → `Field "agent_verify_ca" not
///     recognised in this version`.
///
/// (Ironic then loads the node: `Node <ident> could not be found.` wins over what follows; a
/// JSON `null` `node_ident` parameter gives `Expected a logical name or UUID but received
/// None.` there, returned as `BeforeNodeLookup`.)
///
/// Extra path segments (`/v1/heartbeat/<ident>/<x>`) are not handled here: pecan passes them
/// positionally as `callback_url`, `agent_version`, ... Forward such requests.
///
/// `AfterNodeLookup`:
/// 12. `callback_url` JSON `null` → 500 `a bytes-like object is required, not 'str'`
///     (faultcode `Server`); a scheme without `http` or a URL `urlparse` refuses →
///     `An issue with the supplied "callback_url" has been detected.` (`""` passes);
/// 13. `stored_agent_url` set and different from the normalised URL → `Detected change in
///     ramdisk provided "callback_url"`;
/// 14. no `agent_token` (absent or `null`) → `Agent token is required for heartbeat
///     processing.`;
/// 15. `agent_status` not one of start/end/error → `Agent status is invalid. Valid states are
///     start,end,error.`.
///
/// Not checked here: `[api]enable_ramdisk_endpoints` (403, between 7 and 8), the policy (403,
/// between 10 and 11), and the conductor's checks (token value, TLS, agent version, ...).
pub fn check_heartbeat_with_agent_url(
    node_ident: &str,
    raw_query: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
    version: ApiVersion,
    stored_agent_url: Option<&str>,
) -> Result<CheckedHeartbeat, HeartbeatRejection> {
    use HeartbeatRejection::{AfterNodeLookup, BeforeNodeLookup};
    let before = |e: IronicError| BeforeNodeLookup(e);
    let bad = |m: String| BeforeNodeLookup(IronicError::fault(400, &m));

    check_body_limit(content_type, body).map_err(before)?;
    let gathered = gather_post_params(raw_query, content_type, body).map_err(before)?;
    if let Some(m) = &gathered.method_override {
        if m.to_lowercase() != "post" {
            return Err(BeforeNodeLookup(IronicError::method_not_allowed(Some(
                ALLOW,
            ))));
        }
    }
    let params = mixed(
        gathered
            .params
            .into_iter()
            .filter(|(k, _)| k != "self")
            .collect(),
    );
    let unexpected: Vec<&str> = params
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !PARAMS.contains(k))
        .collect();
    if !unexpected.is_empty() {
        return Err(bad(format!(
            "Unexpected arguments: {}",
            unexpected.join(", ")
        )));
    }
    let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    // pecan drops empty path segments: with no ident in the path, a `node_ident` parameter
    // (if any) is the ident.
    let from_path = !node_ident.is_empty();
    let ident: Option<String> = if from_path {
        Some(node_ident.to_string())
    } else {
        match get("node_ident") {
            None => return Err(bad("Missing mandatory parameter: node_ident".to_string())),
            Some(PyValue::None) => None,
            Some(PyValue::Str(s)) => Some(s.clone()),
            Some(other) => {
                return Err(bad(format!(
                    "Expected UUID or name for node_ident: {}",
                    other.to_py_str()
                )))
            }
        }
    };
    if let Some(ident) = &ident {
        if !is_valid_logical_name(ident) && !is_uuid_like(ident) {
            return Err(bad(format!(
                "Expected UUID or name for node_ident: {ident}"
            )));
        }
    }
    if get("callback_url").is_none() {
        return Err(bad("Missing mandatory parameter: callback_url".to_string()));
    }
    // args.string on each declared parameter, in signature order.
    let mut values: Vec<Option<String>> = Vec::new();
    for name in &PARAMS[1..] {
        match get(name) {
            None | Some(PyValue::None) => values.push(None),
            Some(PyValue::Str(s)) => values.push(Some(s.clone())),
            Some(other) => {
                return Err(bad(format!(
                    "Expected string for {name}: {}",
                    other.to_py_str()
                )))
            }
        }
    }
    if from_path && get("node_ident").is_some() {
        return Err(BeforeNodeLookup(IronicError::fault(
            500,
            "HeartbeatController.post() got multiple values for argument 'node_ident'",
        )));
    }
    let mut it = values.into_iter();
    let mut next = || it.next().flatten();
    let callback_url = next();
    let request = HeartbeatRequest {
        node_ident: ident.clone().unwrap_or_default(),
        callback_url: callback_url.clone().unwrap_or_default(),
        agent_version: next(),
        agent_token: next(),
        agent_verify_ca: next(),
        agent_status: next(),
        agent_status_message: next(),
    };
    if version < RAMDISK_ENDPOINTS {
        return Err(BeforeNodeLookup(resource_not_found()));
    }
    let truthy = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    if truthy(&request.agent_version) && version < AGENT_VERSION_IN_HEARTBEAT {
        return Err(bad("Field \"agent_version\" not recognised".to_string()));
    }
    if (truthy(&request.agent_status) || truthy(&request.agent_status_message))
        && version < STATUS_IN_HEARTBEAT
    {
        return Err(bad(
            "Fields \"agent_status\" and \"agent_status_message\" not recognised.".to_string(),
        ));
    }
    if request.agent_verify_ca.is_some() && version < VERIFY_CA_IN_HEARTBEAT {
        return Err(bad(
            "Field \"agent_verify_ca\" not recognised in this version".to_string(),
        ));
    }

    // The node lookup itself refuses a `null` ident (only possible as a parameter).
    if ident.is_none() {
        return Err(bad(
            "Expected a logical name or UUID but received None.".to_string()
        ));
    }

    // After the node lookup.
    let Some(url) = callback_url else {
        return Err(AfterNodeLookup(IronicError::fault(
            500,
            "a bytes-like object is required, not 'str'",
        )));
    };
    let normalized_callback_url = normalize_callback_url(&url).map_err(AfterNodeLookup)?;
    if let Some(stored) = stored_agent_url {
        if stored != normalized_callback_url {
            return Err(AfterNodeLookup(callback_url_changed()));
        }
    }
    if request.agent_token.is_none() {
        return Err(AfterNodeLookup(IronicError::fault(
            400,
            "Agent token is required for heartbeat processing.",
        )));
    }
    if let Some(status) = &request.agent_status {
        if !AGENT_VALID_STATES.contains(&status.as_str()) {
            return Err(AfterNodeLookup(IronicError::fault(
                400,
                "Agent status is invalid. Valid states are start,end,error.",
            )));
        }
    }
    Ok(CheckedHeartbeat {
        request,
        normalized_callback_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ironic::HeaderSet;

    const N: &str = "808a5551-9a5d-4b12-bf3f-1389a674b400";
    const J: Option<&str> = Some("application/json");
    const V68: ApiVersion = ApiVersion::new(1, 68);
    const GOOD: &str = r#"{"callback_url": "https://1.2.3.4:9999", "agent_token": "x"}"#;

    fn run(
        q: Option<&str>,
        ct: Option<&str>,
        body: &str,
        v: ApiVersion,
    ) -> Result<CheckedHeartbeat, HeartbeatRejection> {
        check_heartbeat(N, q, ct, body.as_bytes(), v)
    }

    fn before(r: Result<CheckedHeartbeat, HeartbeatRejection>) -> IronicError {
        match r {
            Err(HeartbeatRejection::BeforeNodeLookup(e)) => e,
            other => panic!("expected BeforeNodeLookup, got {other:?}"),
        }
    }

    fn after(r: Result<CheckedHeartbeat, HeartbeatRejection>) -> IronicError {
        match r {
            Err(HeartbeatRejection::AfterNodeLookup(e)) => e,
            other => panic!("expected AfterNodeLookup, got {other:?}"),
        }
    }

    fn bmsg(body: &str) -> String {
        before(run(None, J, body, V68)).message()
    }

    fn amsg(body: &str, v: ApiVersion) -> String {
        after(run(None, J, body, v)).message()
    }

    #[test]
    fn accepted_ipa_heartbeat() {
        let body = r#"{"callback_url": "https://10.0.0.5:9999", "agent_token": "tok", "agent_version": "13.0.0", "agent_verify_ca": "-----BEGIN CERTIFICATE-----\n..."}"#;
        let c = run(None, J, body, V68).unwrap();
        assert_eq!(c.normalized_callback_url, "https://10.0.0.5:9999");
        assert_eq!(
            c.request,
            HeartbeatRequest {
                node_ident: N.to_string(),
                callback_url: "https://10.0.0.5:9999".into(),
                agent_token: Some("tok".into()),
                agent_version: Some("13.0.0".into()),
                agent_verify_ca: Some("-----BEGIN CERTIFICATE-----\n...".into()),
                agent_status: None,
                agent_status_message: None,
            }
        );
        let c = run(
            None,
            Some("application/json; charset=utf-8"),
            GOOD,
            ApiVersion::new(1, 22),
        )
        .unwrap();
        assert_eq!(c.request.agent_token.as_deref(), Some("x"));
    }

    #[test]
    fn unexpected_arguments_first() {
        assert_eq!(
            bmsg(r#"{"callback_url": "https://1.2.3.4:9999", "foo": 1}"#),
            "Unexpected arguments: foo"
        );
        assert_eq!(
            bmsg(r#"{"callback_url": 1, "foo": 1}"#),
            "Unexpected arguments: foo"
        );
        let e = before(check_heartbeat(
            "BAD!",
            None,
            J,
            br#"{"bad": 1}"#,
            ApiVersion::new(1, 1),
        ));
        assert_eq!(e.message(), "Unexpected arguments: bad");
        assert_eq!(
            bmsg(r#"{"b": 1, "a": 2, "callback_url": "x"}"#),
            "Unexpected arguments: b, a"
        );
        let e = before(run(Some("z=1"), J, r#"{"a": 1}"#, V68));
        assert_eq!(e.message(), "Unexpected arguments: z, a");
        assert_eq!(e.headers, HeaderSet::Versions);
        assert_eq!(
            bmsg(&GOOD.replace('}', r#", "_method": "get"}"#)),
            "Unexpected arguments: _method"
        );
    }

    #[test]
    fn self_is_dropped() {
        assert!(run(
            None,
            J,
            r#"{"callback_url": "https://1.2.3.4:9999", "agent_token": "x", "self": 5}"#,
            V68
        )
        .is_ok());
        assert!(run(Some("self=1"), J, GOOD, V68).is_ok());
    }

    #[test]
    fn node_ident_format() {
        let e = before(check_heartbeat(
            "BAD!",
            None,
            J,
            br#"{"callback_url": 1, "agent_token": 2}"#,
            V68,
        ));
        assert_eq!(e.message(), "Expected UUID or name for node_ident: BAD!");
        let e = before(check_heartbeat("BAD!", None, J, b"{}", V68));
        assert_eq!(e.message(), "Expected UUID or name for node_ident: BAD!");
        // Before the version check too.
        let e = before(check_heartbeat(
            "a b",
            None,
            J,
            GOOD.as_bytes(),
            ApiVersion::new(1, 1),
        ));
        assert_eq!(e.message(), "Expected UUID or name for node_ident: a b");
        for ok in [
            "node.two",
            "peer-node-00001",
            "{a35f58fba7bd47faa6f403544656895c}",
            "Node_1~",
        ] {
            assert!(
                check_heartbeat(ok, None, J, GOOD.as_bytes(), V68).is_ok(),
                "{ok}"
            );
        }
    }

    #[test]
    fn missing_and_non_string() {
        assert_eq!(
            bmsg(r#"{"agent_token": 2}"#),
            "Missing mandatory parameter: callback_url"
        );
        assert_eq!(
            bmsg(r#"{"agent_token": "x"}"#),
            "Missing mandatory parameter: callback_url"
        );
        assert_eq!(bmsg("{}"), "Missing mandatory parameter: callback_url");
        assert_eq!(
            bmsg(r#"{"callback_url": 1, "agent_token": 2}"#),
            "Expected string for callback_url: 1"
        );
        assert_eq!(
            bmsg(r#"{"callback_url": "https://1.2.3.4:9999", "agent_token": ["a", "b"]}"#),
            "Expected string for agent_token: ['a', 'b']"
        );
        assert_eq!(
            bmsg(
                r#"{"callback_url": "https://1.2.3.4:9999", "agent_token": {"a": 1.0, "b": true}}"#
            ),
            "Expected string for agent_token: {'a': 1.0, 'b': True}"
        );
        assert_eq!(
            bmsg(r#"{"callback_url": "u", "agent_version": 1e5}"#),
            "Expected string for agent_version: 100000.0"
        );
        assert_eq!(
            bmsg(r#"{"callback_url": "u", "agent_token": 123}"#),
            "Expected string for agent_token: 123"
        );
        assert_eq!(
            bmsg(r#"{"callback_url": "u", "agent_token": false}"#),
            "Expected string for agent_token: False"
        );
        assert_eq!(
            bmsg(r#"{"callback_url": "u", "agent_token": NaN}"#),
            "Expected string for agent_token: nan"
        );
        assert_eq!(
            bmsg(r#"{"callback_url": "u", "agent_status_message": 1, "agent_verify_ca": 2}"#),
            "Expected string for agent_verify_ca: 2"
        );
        assert_eq!(
            bmsg(r#"{"callback_url": "u", "agent_token": ["it's", "\u00e9\n"]}"#),
            "Expected string for agent_token: [\"it's\", 'é\\n']"
        );
    }

    #[test]
    fn key_in_query_and_body_is_a_list() {
        let e = before(run(Some("agent_token=y"), J, GOOD, V68));
        assert_eq!(e.message(), "Expected string for agent_token: ['y', 'x']");
        let e = before(run(
            Some("agent_token=y"),
            Some("application/x-www-form-urlencoded"),
            "callback_url=https://1.2.3.4:9999&agent_token=x",
            V68,
        ));
        assert_eq!(e.message(), "Expected string for agent_token: ['y', 'x']");
        let e = before(run(
            Some("callback_url=a&callback_url=b"),
            Some("text/plain"),
            "",
            V68,
        ));
        assert_eq!(e.message(), "Expected string for callback_url: ['a', 'b']");
    }

    #[test]
    fn node_ident_parameter_is_a_server_error() {
        for (q, body) in [
            (Some("node_ident=abc"), GOOD.to_string()),
            (None, GOOD.replace('}', r#", "node_ident": 5}"#)),
        ] {
            let e = before(run(q, J, &body, V68));
            assert_eq!(e.status, 500);
            assert_eq!(
                e.body,
                r#"{"error_message": "{\"faultcode\": \"Server\", \"faultstring\": \"HeartbeatController.post() got multiple values for argument 'node_ident'\", \"debuginfo\": null}"}"#
            );
        }
        // Type errors come first.
        assert_eq!(
            before(run(
                Some("node_ident=abc"),
                J,
                r#"{"callback_url": "u", "agent_token": 1}"#,
                V68
            ))
            .status,
            400
        );
    }

    #[test]
    fn version_gates_in_order() {
        let e = before(run(None, J, GOOD, ApiVersion::new(1, 21)));
        assert_eq!(e.status, 404);
        assert_eq!(e.message(), "Resource could not be found.");
        assert_eq!(e.headers, HeaderSet::Versions);
        assert_eq!(
            before(run(None, J, GOOD, ApiVersion::new(1, 1))).status,
            404
        );
        // 1.36 before 1.72.
        let b = r#"{"callback_url": "https://1.2.3.4:9999", "agent_token": "x", "agent_version": "1", "agent_status": "s"}"#;
        assert_eq!(
            before(run(None, J, b, ApiVersion::new(1, 35))).message(),
            "Field \"agent_version\" not recognised"
        );
        // 1.72 before 1.68.
        let b = r#"{"callback_url": "https://1.2.3.4:9999", "agent_token": "x", "agent_verify_ca": "", "agent_status": "s"}"#;
        assert_eq!(
            before(run(None, J, b, ApiVersion::new(1, 67))).message(),
            "Fields \"agent_status\" and \"agent_status_message\" not recognised."
        );
        let b = r#"{"callback_url": "https://1.2.3.4:9999", "agent_token": "x", "agent_status_message": "m"}"#;
        assert_eq!(
            before(run(None, J, b, ApiVersion::new(1, 71))).message(),
            "Fields \"agent_status\" and \"agent_status_message\" not recognised."
        );
        // An empty agent_verify_ca is still "present".
        let b = r#"{"callback_url": "https://1.2.3.4:9999", "agent_token": "x", "agent_verify_ca": ""}"#;
        assert_eq!(
            before(run(None, J, b, ApiVersion::new(1, 67))).message(),
            "Field \"agent_verify_ca\" not recognised in this version"
        );
        assert!(run(None, J, b, V68).is_ok());
        // Empty agent_version / status are falsy: no gate.
        let b = r#"{"callback_url": "https://1.2.3.4:9999", "agent_token": "x", "agent_version": "", "agent_status_message": ""}"#;
        assert!(run(None, J, b, ApiVersion::new(1, 35)).is_ok());
        let b = r#"{"callback_url": "https://1.2.3.4:9999", "agent_token": "x", "agent_verify_ca": null}"#;
        assert!(run(None, J, b, ApiVersion::new(1, 67)).is_ok());
        // agent_token has no gate.
        assert!(run(None, J, GOOD, ApiVersion::new(1, 22)).is_ok());
    }

    #[test]
    fn after_node_lookup_checks() {
        let e = after(run(
            None,
            J,
            r#"{"callback_url": "ftp://1.2.3.4:9999", "agent_token": "x"}"#,
            V68,
        ));
        assert_eq!(
            e.body,
            r#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"An issue with the supplied \\\"callback_url\\\" has been detected.\", \"debuginfo\": null}"}"#
        );
        assert_eq!(
            amsg(
                r#"{"callback_url": "https://[::1", "agent_token": "x"}"#,
                V68
            ),
            "An issue with the supplied \"callback_url\" has been detected."
        );
        assert_eq!(
            amsg(r#"{"callback_url": "1.2.3.4:9999"}"#, V68),
            "An issue with the supplied \"callback_url\" has been detected."
        );
        // Scheme check before the token check.
        assert_eq!(
            amsg(r#"{"callback_url": "nope"}"#, V68),
            "An issue with the supplied \"callback_url\" has been detected."
        );
        assert_eq!(
            amsg(r#"{"callback_url": "https://1.2.3.4:9999"}"#, V68),
            "Agent token is required for heartbeat processing."
        );
        assert_eq!(
            amsg(
                r#"{"callback_url": "https://1.2.3.4:9999", "agent_token": null}"#,
                V68
            ),
            "Agent token is required for heartbeat processing."
        );
        let b = r#"{"callback_url": "https://1.2.3.4:9999", "agent_token": "x", "agent_status": "bogus"}"#;
        assert_eq!(
            amsg(b, ApiVersion::new(1, 72)),
            "Agent status is invalid. Valid states are start,end,error."
        );
        let b = r#"{"callback_url": "", "agent_token": "x", "agent_status": ""}"#;
        assert_eq!(
            amsg(b, ApiVersion::new(1, 72)),
            "Agent status is invalid. Valid states are start,end,error."
        );
        // Token check before the status check.
        let b = r#"{"callback_url": "https://1.2.3.4:9999", "agent_status": "bogus"}"#;
        assert_eq!(
            amsg(b, ApiVersion::new(1, 72)),
            "Agent token is required for heartbeat processing."
        );
        for s in AGENT_VALID_STATES {
            let b = format!(r#"{{"callback_url": "", "agent_token": "x", "agent_status": "{s}"}}"#);
            assert!(run(None, J, &b, ApiVersion::new(1, 72)).is_ok());
        }
    }

    #[test]
    fn null_callback_url_crashes_after_lookup() {
        let e = after(run(
            None,
            J,
            r#"{"callback_url": null, "agent_token": "x"}"#,
            V68,
        ));
        assert_eq!(e.status, 500);
        assert_eq!(e.message(), "a bytes-like object is required, not 'str'");
        assert!(std::str::from_utf8(&e.body)
            .unwrap()
            .contains(r#"\"faultcode\": \"Server\""#));
        assert_eq!(e.headers, HeaderSet::Versions);
    }

    #[test]
    fn callback_url_normalisation_and_change() {
        let c = run(
            None,
            J,
            r#"{"callback_url": "HTTPS://1.2.3.4:9999/?", "agent_token": "x"}"#,
            V68,
        )
        .unwrap();
        assert_eq!(c.request.callback_url, "HTTPS://1.2.3.4:9999/?");
        assert_eq!(c.normalized_callback_url, "https://1.2.3.4:9999/");
        let c = run(None, J, r#"{"callback_url": "", "agent_token": "x"}"#, V68).unwrap();
        assert_eq!(c.normalized_callback_url, "");
        let c = run(
            None,
            J,
            r#"{"callback_url": "xhttpx://h", "agent_token": "x"}"#,
            V68,
        )
        .unwrap();
        assert_eq!(c.normalized_callback_url, "xhttpx://h");

        let with = |body: &str, stored: Option<&str>| {
            check_heartbeat_with_agent_url(N, None, J, body.as_bytes(), V68, stored)
        };
        assert!(with(
            r#"{"callback_url": "HTTPS://h:1/?", "agent_token": "x"}"#,
            Some("https://h:1/")
        )
        .is_ok());
        let e = after(with(
            r#"{"callback_url": "https://h:1", "agent_token": "x"}"#,
            Some("https://h:1/"),
        ));
        assert_eq!(
            e.message(),
            "Detected change in ramdisk provided \"callback_url\""
        );
        // The change check sits between the scheme check and the token check.
        let e = after(with(
            r#"{"callback_url": "https://h:2"}"#,
            Some("https://h:1"),
        ));
        assert_eq!(
            e.message(),
            "Detected change in ramdisk provided \"callback_url\""
        );
        let e = after(with(
            r#"{"callback_url": "ftp://h:2"}"#,
            Some("https://h:1"),
        ));
        assert_eq!(
            e.message(),
            "An issue with the supplied \"callback_url\" has been detected."
        );
        let e = after(with(r#"{"callback_url": ""}"#, Some("https://h:1")));
        assert_eq!(
            e.message(),
            "Detected change in ramdisk provided \"callback_url\""
        );
        assert_eq!(
            normalize_callback_url(" https://h\n:1").unwrap(),
            "https://h:1"
        );
        assert_eq!(normalize_callback_url("http:foo").unwrap(), "http:///foo");
        assert!(normalize_callback_url("file:///x").is_err());
    }

    #[test]
    fn parameter_sources() {
        // Query string only.
        assert!(run(
            Some("callback_url=https://1.2.3.4:9999&agent_token=x"),
            None,
            "",
            V68
        )
        .is_ok());
        // A JSON body with text/plain (or a wrong spelling) is ignored.
        for ct in [
            "text/plain",
            "Application/JSON",
            "application/json ; charset=utf-8",
            "text/json",
            "application/json-patch+json",
        ] {
            assert_eq!(
                before(run(None, Some(ct), GOOD, V68)).message(),
                "Missing mandatory parameter: callback_url",
                "{ct}"
            );
        }
        assert!(run(None, Some("application/javascript"), GOOD, V68).is_ok());
        assert!(run(None, Some("application/json;charset=UTF8"), GOOD, V68).is_ok());
        // A non-object or invalid JSON body falls back to the query string.
        for body in [
            "[1,2]",
            "not json",
            "\"str\"",
            "",
            "{\"callback_url\": \"x\"",
        ] {
            assert!(
                run(
                    Some("callback_url=https://1.2.3.4:9999&agent_token=z"),
                    J,
                    body,
                    V68
                )
                .is_ok(),
                "{body}"
            );
        }
        // No Content-Type: the JSON text becomes one form field name.
        assert_eq!(
            before(run(None, None, GOOD, V68)).message(),
            r#"Unexpected arguments: {"callback_url": "https://1.2.3.4:9999", "agent_token": "x"}"#
        );
        assert!(run(
            None,
            None,
            "callback_url=https://1.2.3.4:9999&agent_token=x",
            V68
        )
        .is_ok());
        // ';' does not separate form fields.
        assert_eq!(
            after(run(
                None,
                Some("application/x-www-form-urlencoded"),
                "callback_url=https://1.2.3.4:9999;agent_token=x",
                V68
            ))
            .message(),
            "Agent token is required for heartbeat processing."
        );
        // Multipart form with a file field.
        let mp = "--XX\r\nContent-Disposition: form-data; name=\"callback_url\"\r\n\r\nhttps://1.2.3.4:9999\r\n--XX\r\nContent-Disposition: form-data; name=\"agent_token\"; filename=\"a.txt\"\r\n\r\nx\r\n--XX--\r\n";
        assert_eq!(
            before(run(None, Some("multipart/form-data; boundary=XX"), mp, V68)).message(),
            "Expected string for agent_token: FieldStorage('agent_token', 'a.txt')"
        );
    }

    #[test]
    fn server_crashes() {
        for ct in [
            "application/json; charset=foo",
            "application/x-www-form-urlencoded; charset=latin-1",
            "multipart/form-data",
        ] {
            let e = before(run(None, Some(ct), GOOD, V68));
            assert_eq!(e, IronicError::bare_server_error(), "{ct}");
        }
        assert!(run(None, Some("application/json; charset=latin-1"), GOOD, V68).is_ok());
        assert_eq!(
            before(run(
                None,
                Some("application/json; charset=utf-16"),
                GOOD,
                V68
            ))
            .status,
            400
        );
    }

    #[test]
    fn ident_from_parameters_when_path_has_none() {
        let hb = |q: Option<&str>, body: &str| check_heartbeat("", q, J, body.as_bytes(), V68);
        let c = hb(None, r#"{"callback_url": "https://1.2.3.4:9999", "agent_token": "x", "node_ident": "peer-node-00001"}"#).unwrap();
        assert_eq!(c.request.node_ident, "peer-node-00001");
        let c = hb(Some("node_ident=peer-node-00001"), GOOD).unwrap();
        assert_eq!(c.request.node_ident, "peer-node-00001");
        assert_eq!(
            before(hb(None, r#"{"agent_token": "x"}"#)).message(),
            "Missing mandatory parameter: node_ident"
        );
        assert_eq!(
            before(hb(None, r#"{"foo": 1}"#)).message(),
            "Unexpected arguments: foo"
        );
        assert_eq!(
            before(hb(
                None,
                r#"{"callback_url": 5, "agent_token": "x", "node_ident": "BAD!"}"#
            ))
            .message(),
            "Expected UUID or name for node_ident: BAD!"
        );
        assert_eq!(
            before(hb(
                None,
                r#"{"callback_url": "u", "agent_token": "x", "node_ident": 5}"#
            ))
            .message(),
            "Expected UUID or name for node_ident: 5"
        );
        assert_eq!(
            before(hb(None, r#"{"callback_url": "https://1.2.3.4:9999", "agent_token": "x", "node_ident": null}"#)).message(),
            "Expected a logical name or UUID but received None."
        );
        // The null ident is only refused after the version gates.
        assert_eq!(
            before(check_heartbeat(
                "",
                None,
                J,
                br#"{"callback_url": "u", "node_ident": null}"#,
                ApiVersion::new(1, 1)
            ))
            .status,
            404
        );
    }

    #[test]
    fn messages_seen_on_the_wire() {
        assert_eq!(
            bmsg(r#"{"callback_url": "u", "agent_token": ["it's", "\u00e9\n", "a\"b", "\u200b"]}"#),
            "Expected string for agent_token: [\"it's\", 'é\\n', 'a\"b', '\\u200b']"
        );
        assert_eq!(
            bmsg(r#"{"callback_url": "u", "agent_token": [1e16, 1e-5, 0.1, -0.0, 1E400, 12345678901234567890.5]}"#),
            "Expected string for agent_token: [1e+16, 1e-05, 0.1, -0.0, inf, 1.2345678901234567e+19]"
        );
        let e = before(run(None, J, r#"{"\ud800x": 1, "callback_url": "u"}"#, V68));
        assert_eq!(
            e.body,
            r#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"Unexpected arguments: \\ud800x\", \"debuginfo\": null}"}"#
        );
        assert_eq!(
            bmsg(r#"{"callback_url": "u", "agent_token": 99999999999999999999}"#),
            "Expected string for agent_token: 99999999999999999999"
        );
        // An integer over 4300 digits is a ValueError: the body is ignored.
        let big = format!(r#"{{"agent_token": {}}}"#, "9".repeat(4301));
        assert_eq!(
            after(run(Some("callback_url=https://1.2.3.4:9999"), J, &big, V68)).message(),
            "Agent token is required for heartbeat processing."
        );
        // A UTF-8 BOM makes the JSON invalid.
        assert_eq!(
            after(check_heartbeat(
                N,
                Some("callback_url=https://1.2.3.4:9999"),
                J,
                b"\xef\xbb\xbf{\"agent_token\": \"x\"}",
                V68
            ))
            .message(),
            "Agent token is required for heartbeat processing."
        );
        // UTF-16 with its charset.
        let utf16: Vec<u8> = [0xff, 0xfe]
            .into_iter()
            .chain(GOOD.encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert!(check_heartbeat(
            N,
            None,
            Some("application/json; charset=utf-16"),
            &utf16,
            V68
        )
        .is_ok());
    }

    #[test]
    fn javascript_bodies_skip_the_depth_limit() {
        let q = Some("callback_url=https://1.2.3.4:9999");
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(
            after(run(q, Some("application/javascript"), &deep(500), V68)).message(),
            "Agent token is required for heartbeat processing."
        );
        // Ironic's worker dies at about 800 levels; we answer a 500.
        assert_eq!(
            before(run(q, Some("application/javascript"), &deep(800), V68)),
            IronicError::bare_server_error()
        );
    }

    #[test]
    fn method_override() {
        for q in [
            "_method=get",
            "_method=delete",
            "_method=put",
            "_method=patch",
            "_method=",
            "_method=post&_method=get",
        ] {
            let e = before(run(Some(q), J, GOOD, V68));
            assert_eq!(
                (e.status, e.allow, e.headers),
                (405, Some("POST"), HeaderSet::None),
                "{q}"
            );
        }
        for q in ["_method=post", "_method=POST", "_method=get&_method=post"] {
            assert_eq!(
                before(run(Some(q), J, GOOD, V68)).message(),
                "Unexpected arguments: _method",
                "{q}"
            );
        }
        let e = before(run(
            None,
            Some("application/x-www-form-urlencoded"),
            "callback_url=x&_method=get",
            V68,
        ));
        assert_eq!(e.status, 405);
        assert_eq!(
            before(run(
                Some("_method=post"),
                Some("application/x-www-form-urlencoded"),
                "_method=get&callback_url=x",
                V68
            ))
            .message(),
            "Unexpected arguments: _method"
        );
    }

    #[test]
    fn query_decoding() {
        let e = before(run(Some("%ff=1"), J, GOOD, V68));
        assert_eq!((e.status, e.headers), (400, HeaderSet::None));
        assert_eq!(
            e.body,
            r#"{"error_message": "{\"code\": 400, \"title\": \"Bad Request\", \"description\": \"\"}"}"#
        );
    }

    #[test]
    fn body_limit() {
        let deep = "{".repeat(30);
        let e = before(run(None, J, &deep, V68));
        assert_eq!(e.status, 400);
        assert_eq!(
            e.body,
            r#"{"faultcode": "Client", "faultstring": "Request body JSON is nested too deeply. Please contact the service administrator."}"#
        );
        assert_eq!(e.headers, HeaderSet::None);
        // The limit runs before everything else (even with an invalid node_ident).
        assert_eq!(
            before(check_heartbeat(
                "BAD!",
                Some("%ff"),
                J,
                deep.as_bytes(),
                V68
            ))
            .status,
            400
        );
        // 25 levels pass, 26 do not.
        let ok = format!("{}{}", "[".repeat(25), "]".repeat(25));
        assert!(check_body_limit(J, ok.as_bytes()).is_ok());
        let bad = format!("{}{}", "[".repeat(26), "]".repeat(26));
        assert!(check_body_limit(J, bad.as_bytes()).is_err());
        // Brackets in strings, escaped quotes, and negative depth.
        let s = format!("{{\"a\": \"{}\\\"{}\"}}", "[".repeat(40), "{".repeat(40));
        assert!(check_body_limit(J, s.as_bytes()).is_ok());
        let neg = format!("{}{}", "]".repeat(5), "[".repeat(30));
        assert!(check_body_limit(J, neg.as_bytes()).is_ok());
        // Only content types containing "json" (case-sensitive).
        assert!(check_body_limit(Some("Application/JSON"), deep.as_bytes()).is_ok());
        assert!(check_body_limit(Some("text/plain"), deep.as_bytes()).is_ok());
        assert!(check_body_limit(None, deep.as_bytes()).is_ok());
        assert!(check_body_limit(Some("application/x-json-whatever"), deep.as_bytes()).is_err());
        // Size.
        let big = vec![b' '; MAX_JSON_BODY + 1];
        let e = check_body_limit(J, &big).unwrap_err();
        assert_eq!(e.status, 413);
        assert_eq!(
            e.body,
            r#"{"faultcode": "Client", "faultstring": "Request body is too large. Please contact the service administrator."}"#
        );
        assert!(check_body_limit(J, &big[1..]).is_ok());
        assert!(check_body_limit(Some("text/plain"), &big).is_ok());
        assert!(check_body_limit(J, b"").is_ok());
    }
}
