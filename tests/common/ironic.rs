//! Exact Ironic 39.0 answers (spec sections 1.4, 3 and 4), as bodies and as fake responses.

use super::fake_ironic::{FakeResponse, Recorded};
use rand::Rng;

/// Python `json.dumps` string literal (ensure_ascii): `"` `\\` control chars and non-ASCII escaped.
pub fn py_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{:04x}", u));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A controller error body: `{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": ..., \"debuginfo\": null}"}`.
pub fn fault_body(status: u16, faultstring: &str) -> String {
    let code = if status >= 500 { "Server" } else { "Client" };
    let inner = format!(
        "{{\"faultcode\": \"{code}\", \"faultstring\": {}, \"debuginfo\": null}}",
        py_str(faultstring)
    );
    format!("{{\"error_message\": {}}}", py_str(&inner))
}

/// A framework error body (405, 406, unknown path): `{"error_message": "{\"code\": N, \"title\": ..., \"description\": ...}"}`.
pub fn framework_body(code: u16, title: &str, description: &str) -> String {
    let inner = format!(
        "{{\"code\": {code}, \"title\": {}, \"description\": {}}}",
        py_str(title),
        py_str(description)
    );
    format!("{{\"error_message\": {}}}", py_str(&inner))
}

/// The body-limit middleware's flat, unwrapped body.
pub fn flat_body(faultstring: &str) -> String {
    format!(
        "{{\"faultcode\": \"Client\", \"faultstring\": {}}}",
        py_str(faultstring)
    )
}

pub const NOT_FOUND: &str = "Resource could not be found.";
pub const INVALID_TOKEN: &str = "Invalid or missing agent token received.";
pub const CALLBACK_CHANGED: &str = "Detected change in ramdisk provided \"callback_url\"";
pub const UNAVAILABLE: &str = "Resource temporarily unavailable, please retry.";
pub const LOOKUP_NEEDS_ARGS: &str =
    "At least one of 'addresses' and 'node_uuid' parameters is required";

/// `406 Not Acceptable` description for a version out of the minor range.
pub fn minor_unsupported(requested: &str, min: &str, max: &str) -> String {
    format!(
        "Version {requested} was requested but the minor version is not supported by this service. The supported version range is: [{min}, {max}]."
    )
}

/// `409` message for a locked node.
pub fn locked_message(uuid: &str, host: &str) -> String {
    format!("Node {uuid} is locked by host {host}, please retry after the current operation is completed.")
}

/// A random `req-<uuid>` request id.
pub fn request_id() -> String {
    format!("req-{}", random_uuid())
}

/// A random lower-case v4 UUID.
pub fn random_uuid() -> String {
    let b: [u8; 16] = rand::thread_rng().gen();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// A random 43-character `secrets.token_urlsafe()`-like token.
pub fn random_token() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    (0..43)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

/// A random lower-case MAC `52:54:xx:xx:xx:xx`.
pub fn random_mac() -> String {
    let b: [u8; 4] = rand::thread_rng().gen();
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

/// The `GET /` body of Ironic 39.0, with `public_url` (no trailing slash) and max version.
pub fn root_body(public_url: &str, max: &str) -> String {
    let v = format!(
        "{{\"id\": \"v1\", \"links\": [{{\"href\": \"{public_url}/v1/\", \"rel\": \"self\"}}], \"status\": \"CURRENT\", \"min_version\": \"1.1\", \"version\": \"{max}\"}}"
    );
    format!(
        "{{\"name\": \"OpenStack Ironic API\", \"description\": \"Ironic is an OpenStack project which enables the provision and management of baremetal machines.\", \"default_version\": {v}, \"versions\": [{v}]}}"
    )
}

/// A 39.0 lookup body (spec 1.4). `token`: `None` → `null`, else that string (raw or `******`).
pub fn lookup_body(uuid: &str, token: Option<&str>, public_url: &str) -> String {
    let token = match token {
        Some(t) => py_str(t),
        None => "null".to_string(),
    };
    format!(
        "{{\"node\": {{\"uuid\": \"{uuid}\", \"properties\": {{\"root_device\": {{\"serial\": \"abc\"}}, \"cpu_arch\": \"x86_64\"}}, \
\"instance_info\": {{\"image_source\": \"http://x/img.qcow2\", \"image_url\": \"******\", \"configdrive\": \"******\", \"root_gb\": 10}}, \
\"driver_internal_info\": {{\"agent_url\": \"https://10.0.0.5:9999\", \"agent_secret_token\": \"******\", \"agent_last_heartbeat\": \"2026-01-01T00:00:00.000000\", \"clean_steps\": null}}, \
\"links\": [{{\"href\": \"{public_url}/v1/nodes/{uuid}\", \"rel\": \"self\"}}, {{\"href\": \"{public_url}/nodes/{uuid}\", \"rel\": \"bookmark\"}}]}}, \
\"config\": {{\"metrics\": {{\"backend\": \"noop\", \"prepend_host\": false, \"prepend_uuid\": false, \"prepend_host_reverse\": true, \"global_prefix\": null}}, \
\"metrics_statsd\": {{\"statsd_host\": \"localhost\", \"statsd_port\": 8125}}, \"heartbeat_timeout\": 300, \
\"agent_containers\": {{\"allow_arbitrary_containers\": false, \"allowed_containers\": [], \"container_steps_file\": \"/etc/ironic-python-agent.d/mysteps.yaml\", \"runner\": \"podman\", \"pull_options\": [], \"run_options\": [\"--rm\", \"--network=host\"]}}, \
\"agent_token\": {token}, \"agent_token_required\": true, \"agent_md5_checksum_enable\": true, \"disable_deep_image_inspection\": false, \
\"permitted_image_formats\": [\"raw\", \"gpt\", \"qcow2\", \"iso\"], \"agent_skip_bmc_detect\": true, \"enable_bios_bootloader_install\": false, \
\"tls_min_version\": \"1.3\", \"tls_cipher_suites\": null}}}}"
    )
}

/// The negotiated version of a request, as Ironic does it (`OpenStack-API-Version: baremetal X`
/// wins, `latest` is the max, absent is 1.1). Invalid values are returned as-is.
pub fn negotiated(req: &Recorded, max: &str) -> String {
    let from_std = req.header("OpenStack-API-Version").and_then(|v| {
        let mut it = v.split_whitespace();
        match (it.next(), it.next()) {
            (Some(s), Some(ver)) if s.eq_ignore_ascii_case("baremetal") => Some(ver.to_string()),
            _ => None,
        }
    });
    let v = from_std
        .or_else(|| {
            req.header("X-OpenStack-Ironic-API-Version")
                .map(str::to_string)
        })
        .unwrap_or_else(|| "1.1".to_string());
    if v.eq_ignore_ascii_case("latest") {
        max.to_string()
    } else {
        v
    }
}

/// The three version headers in Ironic's order.
pub fn version_headers(max: &str, negotiated: &str) -> Vec<(String, String)> {
    vec![
        (
            "X-OpenStack-Ironic-API-Minimum-Version".into(),
            "1.1".into(),
        ),
        ("X-OpenStack-Ironic-API-Maximum-Version".into(), max.into()),
        ("X-OpenStack-Ironic-API-Version".into(), negotiated.into()),
    ]
}

fn request_id_headers(resp: FakeResponse) -> FakeResponse {
    let id = request_id();
    resp.header("x-openstack-request-id", &id)
        .header("openstack-request-id", &id)
        .header("Server", "ironic_api")
}

/// A JSON answer with Ironic's version headers for `req`.
pub fn json_response(req: &Recorded, max: &str, status: u16, body: &str) -> FakeResponse {
    let neg = negotiated(req, max);
    let mut r = FakeResponse::new(status);
    for (k, v) in version_headers(max, &neg) {
        r = r.header(&k, &v);
    }
    r = r
        .header("Content-Type", "application/json")
        .header("Content-Length", &body.len().to_string());
    request_id_headers(r).body(body.as_bytes().to_vec())
}

/// A controller error with version headers.
pub fn error(req: &Recorded, max: &str, status: u16, faultstring: &str) -> FakeResponse {
    json_response(req, max, status, &fault_body(status, faultstring))
}

/// A framework error (405 with `Allow`, 404 for unknown paths): no version headers.
pub fn framework_error(status: u16, title: &str, allow: Option<&str>) -> FakeResponse {
    let body = framework_body(status, title, "");
    let mut r = FakeResponse::new(status);
    if let Some(a) = allow {
        r = r.header("Allow", a);
    }
    r = r
        .header("Content-Type", "application/json")
        .header("Content-Length", &body.len().to_string());
    request_id_headers(r).body(body.into_bytes())
}

/// `202 Accepted` for a heartbeat: `Content-Length: 0`, no `Content-Type`.
pub fn heartbeat_accepted(req: &Recorded, max: &str) -> FakeResponse {
    let neg = negotiated(req, max);
    let mut r = FakeResponse::new(202);
    for (k, v) in version_headers(max, &neg) {
        r = r.header(&k, &v);
    }
    request_id_headers(r.header("Content-Length", "0"))
}

/// `200` lookup answer.
pub fn lookup_ok(
    req: &Recorded,
    max: &str,
    uuid: &str,
    token: Option<&str>,
    public_url: &str,
) -> FakeResponse {
    json_response(req, max, 200, &lookup_body(uuid, token, public_url))
}

/// `409` node locked.
pub fn locked(req: &Recorded, max: &str, uuid: &str) -> FakeResponse {
    error(req, max, 409, &locked_message(uuid, "conductor-1"))
}

/// `404 Node <ident> could not be found.`
pub fn node_not_found(req: &Recorded, max: &str, ident: &str) -> FakeResponse {
    error(req, max, 404, &format!("Node {ident} could not be found."))
}
