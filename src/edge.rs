//! The gateway's shared state, built once at start-up and shared by every request, and the
//! one way local answers are written (so that they carry Ironic's headers).

use crate::config::EdgeConfig;
use crate::ironic::error::version_header_values;
use crate::ironic::{ApiVersion, HeaderSet, IronicError};
use crate::metrics::Metrics;
use crate::store::Stores;
use crate::upstream::{UpstreamClient, UpstreamInfo, UpstreamResponse, VersionState};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use rand::RngCore;
use std::sync::Arc;
use std::time::SystemTime;

pub struct Edge {
    pub config: EdgeConfig,
    /// What the gateway remembers in Redis, one handle per concern.
    pub(crate) store: Stores,
    pub upstream: Arc<UpstreamClient>,
    pub versions: Arc<VersionState>,
    pub metrics: Arc<Metrics>,
    /// Lookups answered 404, by MAC set and source (`GET /agents/unknown`).
    pub(crate) unknown: Arc<crate::unknown::UnknownMachines>,
    /// Whether the listeners speak TLS (for `X-Forwarded-Proto`), by local port.
    pub tls_ports: Vec<u16>,
    /// Changes the gateway forwarded, for the node sync (bounded; dropped when full: the
    /// next sync round finds them anyway).
    pub sync_events: tokio::sync::mpsc::Sender<crate::sync::SyncEvent>,
    /// Seals what must carry an agent token through Redis (`seal_key_file`); `None`: the
    /// features that need it are off.
    pub(crate) sealer: Option<Arc<crate::store::seal::Sealer>>,
    /// Ironic's `[api]ramdisk_heartbeat_timeout` in seconds, as its lookup answers hand it to
    /// agents (`config.heartbeat_timeout`; 0: not seen yet): it caps the coalescing window.
    pub(crate) heartbeat_timeout_s: std::sync::atomic::AtomicU64,
    /// The one budget for everything sent to Ironic ([`crate::upstream::governor`]).
    pub(crate) governor: Arc<crate::upstream::governor::Governor>,
    /// Agent requests per source (`limits.per_source_*`).
    pub(crate) source_limits: crate::source_limits::SourceLimits,
    /// Shadow mode's comparisons (`ironic_edge.mode: shadow`; nothing counted in enforce).
    pub(crate) shadow: Arc<crate::shadow::Shadow>,
    /// When this process last accepted each node's heartbeat at the edge (`GET /agents`).
    pub(crate) accepted_at_edge: crate::edge_accepts::EdgeAccepts,
}

impl Edge {
    /// Whether the gateway runs in shadow mode: it decides, Ironic answers.
    pub(crate) fn shadow_mode(&self) -> bool {
        self.config.mode == crate::config::Mode::Shadow
    }
}

/// A fresh Ironic-style request id, `req-<uuid4>`.
pub fn request_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    // On every answer: one hex pass and one string, not a `format!` per byte.
    let h = crate::store::token_hash::hex(&b);
    let mut id = String::with_capacity(40);
    id.push_str("req-");
    for (i, part) in [&h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            id.push('-');
        }
        id.push_str(part);
    }
    id
}

/// A response the gateway writes itself.
pub struct LocalAnswer {
    pub status: u16,
    /// `Some` for JSON bodies; a 202 heartbeat has no Content-Type.
    pub content_type: Option<&'static str>,
    pub body: Bytes,
    pub header_set: HeaderSet,
    pub allow: Option<&'static str>,
}

impl LocalAnswer {
    pub fn error(e: &IronicError) -> Self {
        LocalAnswer {
            status: e.status,
            content_type: Some(e.content_type()),
            body: e.body.clone(),
            header_set: e.headers,
            allow: e.allow,
        }
    }

    /// Heartbeat accepted: 202, `Content-Length: 0`, no Content-Type.
    pub fn accepted() -> Self {
        LocalAnswer {
            status: 202,
            content_type: None,
            body: Bytes::new(),
            header_set: HeaderSet::Versions,
            allow: None,
        }
    }
}

/// Writes a local answer with the headers Ironic would send, in Ironic's order.
pub async fn write_local(
    session: &mut Session,
    answer: &LocalAnswer,
    info: Option<&UpstreamInfo>,
    version: Option<ApiVersion>,
) -> pingora::Result<()> {
    let versions = match (info, version) {
        (Some(info), Some(v)) => Some((answer.header_set, info.range, v)),
        (Some(info), None) if answer.header_set != HeaderSet::None => {
            Some((HeaderSet::RangeOnly, info.range, info.range.min))
        }
        _ => None,
    };
    let shape = AnswerShape {
        status: answer.status,
        versions,
        allow: answer.allow,
        content_type: answer.content_type,
        content_length: answer.body.len(),
        server: info.and_then(|i| i.server.clone()),
    };
    let mut resp = shape.head()?;
    // The head holds these already (placeholders): set in place, they keep their order and
    // the head its size. One buffer for both request-id headers (a clone shares it).
    let rid = http::HeaderValue::from_maybe_shared(Bytes::from(request_id()))
        .map_err(|e| pingora::Error::because(pingora::ErrorType::InvalidHTTPHeader, "id", e))?;
    resp.insert_header(REQUEST_ID, rid.clone())?;
    resp.insert_header(REQUEST_ID_STANDARD, rid)?;
    resp.insert_header("Date", date_value())?;
    let empty = answer.body.is_empty();
    session.write_response_header(Box::new(resp), empty).await?;
    if !empty {
        session
            .write_response_body(Some(answer.body.clone()), true)
            .await?;
    }
    Ok(())
}

/// The request-id headers of every answer, as Ironic spells them.
const REQUEST_ID: &str = "x-openstack-request-id";
const REQUEST_ID_STANDARD: &str = "openstack-request-id";

/// What a local answer's head is made of apart from its request ids and Date: the same few
/// shapes repeat on every local answer.
#[derive(Clone, PartialEq, Eq)]
struct AnswerShape {
    status: u16,
    versions: Option<(HeaderSet, crate::ironic::VersionRange, ApiVersion)>,
    allow: Option<&'static str>,
    content_type: Option<&'static str>,
    content_length: usize,
    server: Option<Arc<str>>,
}

/// Heads kept per thread ([`AnswerShape::head`]): more than the shapes a steady load repeats
/// (a few statuses at one version), few enough to search in a glance.
const KEPT_HEADS: usize = 8;

impl AnswerShape {
    /// The head of this shape, built once per thread and cloned after: building one parses
    /// every header name again (Pingora keeps their case), a good part of a local answer's
    /// allocations.
    fn head(&self) -> pingora::Result<ResponseHeader> {
        thread_local! {
            static KEPT: std::cell::RefCell<Vec<(AnswerShape, ResponseHeader)>> =
                const { std::cell::RefCell::new(Vec::new()) };
        }
        if let Some(head) = KEPT.with(|kept| {
            let kept = kept.borrow();
            kept.iter().find(|(s, _)| s == self).map(|(_, h)| h.clone())
        }) {
            return Ok(head);
        }
        let head = self.build()?;
        KEPT.with(|kept| {
            let mut kept = kept.borrow_mut();
            if kept.len() == KEPT_HEADS {
                kept.remove(0);
            }
            kept.push((self.clone(), head.clone()));
        });
        Ok(head)
    }

    fn build(&self) -> pingora::Result<ResponseHeader> {
        let mut resp = ResponseHeader::build(self.status, Some(10))?;
        if let Some((set, range, v)) = self.versions {
            for (name, value) in version_values(set, range, v) {
                resp.append_header(name, value)?;
            }
        }
        if let Some(allow) = self.allow {
            resp.append_header("Allow", http::HeaderValue::from_static(allow))?;
        }
        if let Some(ct) = self.content_type {
            resp.append_header("Content-Type", http::HeaderValue::from_static(ct))?;
        }
        resp.append_header(
            "Content-Length",
            http::HeaderValue::from(self.content_length),
        )?;
        let placeholder = http::HeaderValue::from_static("");
        resp.append_header(REQUEST_ID, placeholder.clone())?;
        resp.append_header(REQUEST_ID_STANDARD, placeholder.clone())?;
        resp.append_header("Date", placeholder)?;
        if let Some(server) = &self.server {
            resp.append_header("Server", &**server)?;
        }
        Ok(resp)
    }
}

/// The version headers of an answer (`set` at `negotiated` within `range`), as
/// [`version_header_values`] renders them.
fn version_values(
    set: HeaderSet,
    range: crate::ironic::VersionRange,
    negotiated: ApiVersion,
) -> Vec<(&'static str, http::HeaderValue)> {
    version_header_values(set, &range, negotiated)
        .into_iter()
        .filter_map(|(name, value)| Some((name, http::HeaderValue::try_from(value).ok()?)))
        .collect()
}

/// The `Date` header of an answer written now: rendered once per second per thread
/// (`httpdate`'s resolution is the second).
fn date_value() -> http::HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(u64, http::HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match last.as_ref() {
            Some((at, value)) if *at == second => value.clone(),
            _ => {
                let value = http::HeaderValue::try_from(httpdate::fmt_http_date(now))
                    .unwrap_or_else(|_| http::HeaderValue::from_static(""));
                *last = Some((second, value.clone()));
                value
            }
        }
    })
}

/// Relays a buffered upstream answer to the client: status, headers (hop-by-hop removed,
/// `Content-Length` set to the body) and body.
pub async fn write_upstream(
    session: &mut Session,
    resp: &UpstreamResponse,
    body: &Bytes,
) -> pingora::Result<()> {
    // A clone keeps Ironic's header spelling (Pingora remembers the case it received).
    let mut out = resp.header.clone();
    let drop: Vec<http::HeaderName> = out
        .headers
        .keys()
        .filter(|n| {
            crate::upstream::headers::is_hop_by_hop(n.as_str())
                || *n == http::header::CONTENT_LENGTH
        })
        .cloned()
        .collect();
    for name in drop {
        out.remove_header(&name);
    }
    let no_body = body.is_empty();
    if !(no_body && resp.header.status.as_u16() == 204) {
        out.insert_header("Content-Length", body.len().to_string())?;
    }
    session
        .write_response_header(Box::new(out), no_body)
        .await?;
    if !no_body {
        session
            .write_response_body(Some(body.clone()), true)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_values_are_those_of_the_renderer() {
        let range = crate::ironic::VersionRange {
            min: ApiVersion::new(1, 1),
            max: ApiVersion::new(1, 99),
        };
        for (set, v) in [
            (HeaderSet::Versions, ApiVersion::new(1, 68)),
            (HeaderSet::Versions, ApiVersion::new(1, 62)),
            (HeaderSet::RangeOnly, ApiVersion::new(1, 1)),
            (HeaderSet::None, ApiVersion::new(1, 1)),
            (HeaderSet::Versions, ApiVersion::new(1, 68)),
        ] {
            let want: Vec<(&str, String)> = version_header_values(set, &range, v);
            let got: Vec<(&str, String)> = version_values(set, range, v)
                .into_iter()
                .map(|(n, v)| (n, v.to_str().unwrap().to_string()))
                .collect();
            assert_eq!(got, want, "{set:?} {v}");
        }
    }

    fn wire(head: &ResponseHeader) -> (u16, Vec<u8>) {
        let mut buf = Vec::new();
        head.header_to_h1_wire(&mut buf);
        (head.status.as_u16(), buf)
    }

    #[test]
    fn a_kept_head_is_the_head_its_shape_builds_and_no_other() {
        let range = crate::ironic::VersionRange {
            min: ApiVersion::new(1, 1),
            max: ApiVersion::new(1, 99),
        };
        let shape = |status, v: u32, len| AnswerShape {
            status,
            versions: Some((HeaderSet::Versions, range, ApiVersion::new(1, v))),
            allow: None,
            content_type: Some("application/json"),
            content_length: len,
            server: None,
        };
        // More shapes than are kept, asked twice in turn: every answer is its own shape's.
        let shapes: Vec<AnswerShape> = (0..KEPT_HEADS as u32 + 3)
            .map(|i| shape(if i % 2 == 0 { 404 } else { 400 }, 60 + i, 100 + i as usize))
            .chain([AnswerShape {
                status: 405,
                versions: None,
                allow: Some("GET"),
                content_type: Some("application/json"),
                content_length: 7,
                server: Some(Arc::from("ironic_api")),
            }])
            .collect();
        for _ in 0..2 {
            for s in &shapes {
                assert_eq!(wire(&s.head().unwrap()), wire(&s.build().unwrap()));
            }
        }
        let (a, b) = (shapes[0].head().unwrap(), shapes[1].head().unwrap());
        assert_ne!(wire(&a), wire(&b));
        let text = String::from_utf8(wire(&a).1).unwrap();
        assert!(
            text.contains("X-OpenStack-Ironic-API-Version: 1.60\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Length: 100\r\n"), "{text}");
    }

    #[test]
    fn the_date_is_an_http_date_of_now() {
        let before = SystemTime::now();
        let date = date_value();
        let parsed = httpdate::parse_http_date(date.to_str().unwrap()).unwrap();
        let after = SystemTime::now();
        // (Whole seconds: the parsed date is at most a second before `before`.)
        assert!(parsed <= after);
        assert!(before
            .duration_since(parsed)
            .map_or(true, |d| d.as_secs() < 1));
    }

    #[test]
    fn request_ids_look_like_ironics() {
        let a = request_id();
        assert_eq!(a.len(), 40);
        assert!(a.starts_with("req-"));
        assert_eq!(&a[18..19], "4", "version 4 uuid");
        assert_ne!(a, request_id());
    }
}
