//! The agent-endpoints plugin: `GET /v1/lookup` ([`lookup`]) and
//! `POST /v1/heartbeat/{node}` ([`heartbeat`]). Everything else is forwarded untouched, and so
//! is a heartbeat while the upstream's API versions are unknown or whose `Accept` only Ironic
//! answers ([`crate::ironic::accept`]); a GET that may reach Ironic's lookup controller in any
//! spelling ([`may_route_to_lookup`]) and that the plugin does not answer is forwarded with the
//! token guard (no raw stored token below 1.62).

pub(crate) mod flight;
pub mod forward;
pub(crate) mod heartbeat;
pub(crate) mod lookup;
pub(crate) mod session;

use crate::config::ConfigError;
use crate::disposition::{Disposition, Rule};
use crate::edge::{Edge, LocalAnswer};
use crate::ironic::{accept, version, ApiVersion, IronicError};
use crate::metrics::Route;
use crate::plugin::{Plugin, RequestCtx};
use crate::upstream::UpstreamInfo;
use async_trait::async_trait;
use pingora::proxy::Session;
use std::sync::Arc;

/// Which agent endpoint a request is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentRoute {
    Lookup,
    Heartbeat { ident: String },
}

/// Only the exact forms agents use are handled here; every variant (`/lookup` without
/// `/v1`, `.json` suffixes, other methods, idents outside Ironic's public-route pattern) is
/// forwarded so that Ironic answers it with its own routing and authentication (lookup
/// variants with the token guard, see [`may_route_to_lookup`]).
pub fn classify(method: &str, path: &str) -> Option<AgentRoute> {
    match (method, path) {
        ("GET", "/v1/lookup" | "/v1/lookup/") => Some(AgentRoute::Lookup),
        ("POST", p) => heartbeat_ident(p).map(|ident| AgentRoute::Heartbeat {
            ident: ident.to_string(),
        }),
        _ => None,
    }
}

/// Whether [`classify`] names an agent endpoint, without copying the node's ident (asked of
/// every request before it is handled).
pub(crate) fn is_agent_endpoint(method: &str, path: &str) -> bool {
    match (method, path) {
        ("GET", "/v1/lookup" | "/v1/lookup/") => true,
        ("POST", p) => heartbeat_ident(p).is_some(),
        _ => false,
    }
}

/// The node ident of a heartbeat path, within Ironic's public-route pattern.
fn heartbeat_ident(path: &str) -> Option<&str> {
    let ident = path.strip_prefix("/v1/heartbeat/")?;
    let public = !ident.is_empty()
        && ident.len() <= 255
        && ident
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    public.then_some(ident)
}

/// What an agent request is (for the per-source limits, and the route a refusal is counted
/// under): every GET that may reach the lookup controller is a lookup, a heartbeat is one by
/// [`classify`], the rest is other API traffic.
pub(crate) fn route_of(method: &http::Method, path: &str) -> Route {
    if method == http::Method::GET && may_route_to_lookup(path) {
        return Route::Lookup;
    }
    // (The exact lookup path is among those that may route to the lookup controller.)
    if method == http::Method::POST && heartbeat_ident(path).is_some() {
        return Route::Heartbeat;
    }
    Route::Other
}

/// Whether a request may reach Ironic's lookup controller, whatever the spelling of its path
/// (such a request never leaves with a raw stored token below 1.62, see [`AgentPlugin`]).
///
/// Why this is complete: pecan reaches `LookupController` only through
/// `v1.Controller._lookup`, which looks the segment up in `_subcontroller_map` by exact key
/// `"lookup"` (the root's `_lookup` only prepends `v1` when it is missing); the WSGI server
/// percent-decodes the path once (`PATH_INFO`) and nothing decodes it again. So every path
/// routed there contains `lookup` once percent-decoded, whatever surrounds it (`/lookup`,
/// `//`, a trailing `/`, `.json`, `%6C`). Matching the bare substring, ASCII case-insensitively,
/// over-includes a few paths (`/v1/nodes/lookup-1`), which then only take the plugin's
/// client instead of the proxy: same request, same answer.
pub(crate) fn may_route_to_lookup(path: &str) -> bool {
    let bytes = path.as_bytes();
    if !bytes.contains(&b'%') {
        // Nothing to decode (most paths): the bytes are the decoded path.
        return bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"lookup"));
    }
    decoded_contains_lookup(bytes)
}

/// Whether the percent-decoded `path` contains `lookup`, ASCII case-insensitively: a sliding
/// window over the decoded bytes, no allocation.
fn decoded_contains_lookup(path: &[u8]) -> bool {
    let mut window = [0u8; 6];
    for (i, b) in percent_encoding::percent_decode(path).enumerate() {
        window.rotate_left(1);
        window[5] = b.to_ascii_lowercase();
        if i >= 5 && &window == b"lookup" {
            return true;
        }
    }
    false
}

/// What every agent-path handler needs for one request.
pub struct AgentRequest<'a> {
    pub edge: &'a Arc<Edge>,
    pub info: UpstreamInfo,
    pub version: ApiVersion,
}

impl AgentRequest<'_> {
    /// Whether the node index is on, complete and fresh ([`crate::sync::index_is_fresh`]).
    pub async fn index_is_fresh(&self) -> bool {
        self.fresh_index_synced_at().await.is_some()
    }

    /// When the last sync round started (Unix ms), if the index is fresh.
    pub(crate) async fn fresh_index_synced_at(&self) -> Option<u64> {
        let sync = &self.edge.config.sync;
        if !sync.enabled {
            return None;
        }
        match self.edge.store.index.synced_at().await {
            Ok(Some(at)) => crate::sync::index_is_fresh(sync, at).then_some(at),
            Ok(None) => None,
            Err(e) => {
                self.edge.metrics.store_error();
                log::debug!("node index: {e}");
                None
            }
        }
    }

    /// An Ironic error answer made at the edge by `rule`.
    pub(crate) fn answer_error(&self, rule: Rule, e: &IronicError) -> Disposition {
        self.answer_local(rule, LocalAnswer::error(e))
    }

    /// An answer made at the edge by `rule`, with this request's version headers.
    pub(crate) fn answer_local(&self, rule: Rule, a: LocalAnswer) -> Disposition {
        Disposition::answer(rule, a, Some(self.info.clone()), Some(self.version))
    }

    /// Whether the gateway runs in shadow mode (`crate::shadow`).
    pub(crate) fn shadow(&self) -> bool {
        self.edge.shadow_mode()
    }

    /// The answer to a source over its limits (`source_limits`): a verified heartbeat is
    /// accepted as any other, anything else gets Ironic's error shape with 429.
    pub(crate) fn answer_over_limit(&self, accepted: bool) -> Disposition {
        let answer = if accepted {
            LocalAnswer::accepted()
        } else {
            LocalAnswer::error(&crate::ironic::error::too_many_requests())
        };
        Disposition::answer(
            Rule::OverLimit,
            answer,
            Some(self.info.clone()),
            Some(self.version),
        )
    }
}

/// Whether the request's source is over its limits ([`crate::source_limits`]).
pub(crate) fn over_source_limit(ctx: &RequestCtx) -> bool {
    ctx.source.as_ref().is_some_and(|s| s.over)
}

pub struct AgentPlugin {
    edge: Arc<Edge>,
    flights: Arc<flight::Flights>,
}

impl AgentPlugin {
    pub fn new(edge: Arc<Edge>) -> Result<Self, ConfigError> {
        Ok(AgentPlugin {
            flights: Arc::new(flight::Flights::new(edge.store.flights.clone())),
            edge,
        })
    }
}

impl AgentPlugin {
    /// A lookup the plugin does not answer itself (an alias path, an `Accept` only Ironic
    /// answers, an unknown version range): forwarded with the plugin's client so that the
    /// answer is cleaned of a stored token below 1.62 (Ironic returns it to anyone there).
    async fn forward_guarded_lookup(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Disposition> {
        let (info, version, range_known) = match self.edge.versions.get() {
            // A version Ironic refuses gets Ironic's 406 (no token in it). The version Ironic
            // states on its answer decides the protection; this one only when it states none,
            // so a version the gateway cannot negotiate counts as below 1.62.
            Some(info) => {
                let version = version::negotiate(&session.req_header().headers, &info.range)
                    .unwrap_or(version::ApiVersion::new(1, 1));
                (info, version, true)
            }
            // Nothing to negotiate with: the answer's own version header decides, and without
            // one the token is removed.
            None => {
                // A placeholder: with the range unknown, `forward_protected` writes its 503
                // without version headers, as the proxy does.
                let placeholder = UpstreamInfo {
                    range: crate::ironic::VersionRange {
                        min: version::ApiVersion::new(1, 1),
                        max: version::ApiVersion::new(1, 1),
                    },
                    server: None,
                    root: None,
                };
                (placeholder, version::ApiVersion::new(1, 1), false)
            }
        };
        let request = AgentRequest {
            edge: &self.edge,
            info,
            version,
        };
        lookup::forward_protected(&request, range_known, session, ctx).await
    }
}

impl AgentPlugin {
    /// In shadow mode, Ironic's answer in place of `would`, the edge's own answer made here
    /// (before a lookup or heartbeat handler runs: a version error, a body limit, a source
    /// over its limits, a version document), which the proxy compares with it. A GET that may
    /// reach the lookup controller goes with the token guard; a heartbeat goes with `body`,
    /// as read; a request whose body was not read is left to the proxy, which compares the
    /// status only (the body streams past). In enforce mode, and for answers that do not
    /// stand in for Ironic's, `would` itself.
    async fn instead_of(
        &self,
        would: Disposition,
        body: Option<&bytes::Bytes>,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Disposition> {
        if !self.edge.shadow_mode() {
            return Ok(would);
        }
        let req = session.req_header();
        let Some(predicted) = would.prediction(req.uri.path()) else {
            return Ok(would);
        };
        if ctx.kind == Route::Lookup {
            let relayed = self.forward_guarded_lookup(session, ctx).await?;
            return Ok(relayed.predicting(Some(predicted)));
        }
        self.send_plain(Some(predicted), body, session, ctx).await
    }

    /// Sends the request to Ironic with the plugin's client (with `body`, as read) and relays
    /// the answer, with what the edge would have answered (shadow mode); a request with a
    /// body not read (or the range unknown) is left to the proxy. Not for lookups (their
    /// token guard).
    async fn send_plain(
        &self,
        predicted: Option<crate::disposition::Predicted>,
        body: Option<&bytes::Bytes>,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Disposition> {
        let req = session.req_header();
        let (Some(info), true) = (
            self.edge.versions.get(),
            body.is_some() || req.method == http::Method::GET,
        ) else {
            // Nothing of its body read (a read one needs the range known first): the proxy
            // streams it, and compares what it can.
            ctx.predicted = predicted;
            return Ok(Disposition::Continue);
        };
        let version = version::negotiate(&req.headers, &info.range).unwrap_or(info.range.min);
        let node = req.uri.path().to_string();
        let r = AgentRequest {
            edge: &self.edge,
            info,
            version,
        };
        let empty = bytes::Bytes::new();
        let class = crate::upstream::governor::Class::Drive;
        let sent = forward::send(&r, session, ctx, class, &node, body.unwrap_or(&empty)).await;
        Ok(match sent {
            Ok(resp) => forward::relay(&resp, &resp.body).predicting(predicted),
            Err(_) => forward::unavailable(&r),
        })
    }

    /// Ironic's error shape with 429, at the request's version when the range is known.
    fn refuse_over_limit(&self, session: &Session) -> Disposition {
        let e = crate::ironic::error::too_many_requests();
        match self.edge.versions.get() {
            Some(info) => match version::negotiate(&session.req_header().headers, &info.range) {
                Ok(version) => AgentRequest {
                    edge: &self.edge,
                    info,
                    version,
                }
                .answer_over_limit(false),
                Err(_) => {
                    Disposition::answer(Rule::OverLimit, LocalAnswer::error(&e), Some(info), None)
                }
            },
            None => Disposition::answer(Rule::OverLimit, LocalAnswer::error(&e), None, None),
        }
    }
}

#[async_trait]
impl Plugin for AgentPlugin {
    async fn handle(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Disposition> {
        let req = session.req_header();
        // Who may answer is Ironic's content negotiation, decided as webob does
        // (`crate::ironic::accept`): a value only Ironic answers is forwarded.
        let edge_may_answer = accept::negotiate_headers(&req.headers).edge_may_answer();
        let path = req.uri.path();
        // A source over its limits: no lookup, and no heartbeat the gateway cannot verify, goes
        // on (a verified heartbeat is still accepted: `heartbeat::handle`).
        if over_source_limit(ctx) {
            let verifiable = ctx.kind == Route::Heartbeat
                && edge_may_answer
                && self.edge.versions.get().is_some();
            if !verifiable {
                ctx.route = ctx.kind;
                let refusal = self.refuse_over_limit(session);
                return self.instead_of(refusal, None, session, ctx).await;
            }
        }
        // One rule for every lookup answer that leaves the gateway: a GET that may reach the
        // lookup controller is answered by `lookup::handle` (its exact form, an `Accept` the
        // edge answers, a known version range) or forwarded with the token guard; no other
        // way out exists. HEAD answers carry no body; any other method reaches the controller
        // only through pecan's `_method`, which Ironic then refuses as an unexpected argument
        // (400): those are proxied.
        // (`ctx.kind` is Lookup exactly for a GET that may route to the lookup controller.)
        if ctx.kind == Route::Lookup {
            ctx.route = Route::Lookup;
            let exact = classify("GET", path) == Some(AgentRoute::Lookup);
            if !(exact && edge_may_answer) {
                return self.forward_guarded_lookup(session, ctx).await;
            }
        } else if !edge_may_answer {
            return Ok(Disposition::Continue);
        }
        if req.method == http::Method::GET && req.uri.query().is_none() {
            match path {
                "/" => {
                    return self
                        .answer_version_document(Document::Root, session, ctx)
                        .await
                }
                "/v1" | "/v1/" => {
                    return self
                        .answer_version_document(Document::V1, session, ctx)
                        .await
                }
                _ => {}
            }
        }
        let Some(route) = classify(req.method.as_str(), req.uri.path()) else {
            return Ok(Disposition::Continue);
        };
        ctx.route = match route {
            AgentRoute::Lookup => Route::Lookup,
            AgentRoute::Heartbeat { .. } => Route::Heartbeat,
        };
        // Without the upstream's range the gateway cannot negotiate as Ironic would.
        let Some(info) = self.edge.versions.get() else {
            return match route {
                AgentRoute::Lookup => self.forward_guarded_lookup(session, ctx).await,
                AgentRoute::Heartbeat { .. } => Ok(Disposition::Continue),
            };
        };
        // A heartbeat's body is read first: Ironic's JSON body limits answer before version
        // negotiation (413/400 win over 406).
        let body = match &route {
            AgentRoute::Heartbeat { .. } => {
                match heartbeat::read_checked_body(&self.edge, session).await? {
                    heartbeat::BodyRead::Body(body) => Some(body),
                    heartbeat::BodyRead::Refused(e, kept) => {
                        let refusal = answer_unversioned(&info, &e);
                        let body = match kept {
                            heartbeat::BodyKept::Whole(body) => Some(body),
                            heartbeat::BodyKept::Nothing => None,
                            // What was read cannot be put back, in either mode.
                            heartbeat::BodyKept::Part => return Ok(refusal),
                        };
                        return self.instead_of(refusal, body.as_ref(), session, ctx).await;
                    }
                    // Larger than the gateway reads and not JSON: Ironic has no limit there.
                    heartbeat::BodyRead::TooLargeToCheck if over_source_limit(ctx) => {
                        let refusal = self.refuse_over_limit(session);
                        return self.instead_of(refusal, None, session, ctx).await;
                    }
                    heartbeat::BodyRead::TooLargeToCheck => return Ok(Disposition::Continue),
                }
            }
            AgentRoute::Lookup => None,
        };
        let version = match version::negotiate(&session.req_header().headers, &info.range) {
            Ok(v) => v,
            Err(e) => {
                let refusal = answer_unversioned(&info, &e);
                return self.instead_of(refusal, body.as_ref(), session, ctx).await;
            }
        };
        let request = AgentRequest {
            edge: &self.edge,
            info,
            version,
        };
        match (route, body) {
            (AgentRoute::Heartbeat { ident }, Some(body)) => {
                heartbeat::handle(&request, &ident, &body, session, ctx).await
            }
            _ => lookup::handle(&request, &self.flights, session, ctx).await,
        }
    }
}

/// The version documents the edge answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Document {
    /// `GET /`: IPA's version discovery, the same body at every version.
    Root,
    /// `GET /v1` (and `/v1/`): one body per negotiated version.
    V1,
}

impl AgentPlugin {
    /// The version documents; in shadow mode one the edge would forward is sent by the
    /// plugin too, so that it is counted among the agents' requests (IPA's discovery).
    async fn answer_version_document(
        &self,
        document: Document,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Disposition> {
        let answer = self.version_document(document, session, ctx).await?;
        if self.edge.shadow_mode() && matches!(answer, Disposition::Continue) {
            return self.send_plain(None, None, session, ctx).await;
        }
        Ok(answer)
    }

    /// `GET /`, IPA's version discovery (twice per boot: a thousand booting agents are a
    /// thousand requests), and `GET /v1`: answered at the edge from the documents learnt from
    /// Ironic, with Ironic's version negotiation and headers; forwarded while a document is
    /// not known, and when a proxy header could make Ironic build other links.
    async fn version_document(
        &self,
        document: Document,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Disposition> {
        let Some(info) = self.edge.versions.get() else {
            return Ok(Disposition::Continue);
        };
        let headers = &session.req_header().headers;
        // oslo's proxy-header middleware, when an operator enables it, builds the links from
        // these instead of `Host`: Ironic answers them.
        if ["forwarded", "x-forwarded-host", "x-forwarded-proto"]
            .iter()
            .any(|h| headers.contains_key(*h))
        {
            return Ok(Disposition::Continue);
        }
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok());
        let version = match version::negotiate(headers, &info.range) {
            Ok(v) => v,
            // The v1 routes' version errors are pecan's; Ironic answers those (rare).
            Err(_) if document == Document::V1 => return Ok(Disposition::Continue),
            Err(e) => {
                if info
                    .root
                    .as_ref()
                    .and_then(|doc| doc.render(host))
                    .is_none()
                {
                    return Ok(Disposition::Continue);
                }
                // The root controller raises the version errors itself: Ironic's controller
                // form (`faultcode`), not the framework form of the v1 routes, same headers.
                let e = IronicError {
                    headers: e.headers,
                    ..IronicError::fault(e.status, &e.message())
                };
                let refusal = answer_unversioned(&info, &e);
                return self.instead_of(refusal, None, session, ctx).await;
            }
        };
        let doc = match document {
            Document::Root => info.root.clone(),
            Document::V1 => self.edge.versions.v1_document(version),
        };
        let Some(body) = doc.and_then(|doc| doc.render(host)) else {
            return Ok(Disposition::Continue);
        };
        let answer = LocalAnswer {
            status: 200,
            content_type: Some("application/json"),
            body: bytes::Bytes::from(body),
            header_set: crate::ironic::HeaderSet::Versions,
            allow: None,
        };
        let request = AgentRequest {
            edge: &self.edge,
            info,
            version,
        };
        let document = request.answer_local(Rule::Document, answer);
        if self.edge.shadow_mode() {
            return self.instead_of(document, None, session, ctx).await;
        }
        Ok(document)
    }
}

/// An error answered before a version is negotiated (body limits, 406).
fn answer_unversioned(info: &UpstreamInfo, e: &IronicError) -> Disposition {
    Disposition::answer(
        Rule::EdgeError,
        LocalAnswer::error(e),
        Some(info.clone()),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_the_lookup_path_is_guarded() {
        for p in [
            "/v1/lookup",
            "/v1/lookup/",
            "/lookup",
            "/lookup/",
            "/lookup.json",
            "/v1/lookup.json",
            "/v1/lookup.json/",
            "/v1/lookup/.json",
            "/v1/lookup.xml",
            "/v1/%6Cookup",
            "/v1/%6cookup",
            "/%76%31/lookup",
            "/v1/lookup%2ejson",
            "//v1/lookup",
            "/v1//lookup",
            "//lookup",
            "/v1/lookup//",
            "/v1/./lookup",
            "/v1/x/../lookup",
            "/v1/LOOKUP",
            "/v1/lookup/52:54:00:00:00:00/get_all",
        ] {
            assert!(may_route_to_lookup(p), "{p}");
        }
    }

    proptest::proptest! {
        /// The plain-path shortcut and the decoding walk agree on every path (letters of
        /// `lookup` in both cases, escapes, separators).
        #[test]
        fn the_plain_path_shortcut_agrees_with_decoding(
            path in "[lokupLOKUP%0-9a-fA-F/.x]{0,24}"
        ) {
            let shortcut = may_route_to_lookup(&path);
            proptest::prop_assert_eq!(shortcut, decoded_contains_lookup(path.as_bytes()));
        }
    }

    #[test]
    fn paths_without_lookup_are_not_guarded() {
        for p in [
            "/",
            "/v1",
            "/v1/nodes",
            "/v1/heartbeat/abc",
            "/v1/look%75",
            "/v1/%256Cookup",
            "/v1/look/up",
        ] {
            assert!(!may_route_to_lookup(p), "{p}");
        }
    }

    #[test]
    fn routes() {
        assert_eq!(classify("GET", "/v1/lookup"), Some(AgentRoute::Lookup));
        assert_eq!(classify("GET", "/v1/lookup/"), Some(AgentRoute::Lookup));
        assert_eq!(
            classify("POST", "/v1/heartbeat/1be26c0b-03f2-4d2e-ae87-c02d7f33c123"),
            Some(AgentRoute::Heartbeat {
                ident: "1be26c0b-03f2-4d2e-ae87-c02d7f33c123".into()
            })
        );
        for (m, p) in [
            ("POST", "/v1/lookup"),
            ("GET", "/lookup"),
            ("GET", "/v1/lookup.json"),
            ("GET", "/v1/heartbeat/abc"),
            ("POST", "/v1/heartbeat/"),
            ("POST", "/v1/heartbeat/Node"),
            ("POST", "/v1/heartbeat/node.json"),
            ("POST", "/v1/heartbeat/a/b"),
            ("GET", "/v1/nodes"),
        ] {
            assert_eq!(classify(m, p), None, "{m} {p}");
            assert!(!is_agent_endpoint(m, p), "{m} {p}");
        }
        for (m, p) in [
            ("GET", "/v1/lookup"),
            ("GET", "/v1/lookup/"),
            ("POST", "/v1/heartbeat/node-1"),
        ] {
            assert!(is_agent_endpoint(m, p), "{m} {p}");
        }
        let post = http::Method::POST;
        assert_eq!(route_of(&post, "/v1/heartbeat/node-1"), Route::Heartbeat);
        assert_eq!(route_of(&post, "/v1/heartbeat/Node"), Route::Other);
        assert_eq!(route_of(&http::Method::GET, "/v1/lookup"), Route::Lookup);
        assert_eq!(route_of(&http::Method::GET, "/v1/nodes"), Route::Other);
    }
}
