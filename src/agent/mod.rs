//! The agent-endpoints plugin: `GET /v1/lookup` ([`lookup`]) and
//! `POST /v1/heartbeat/{node}` ([`heartbeat`]). Everything else, and everything here while the
//! upstream's API versions are unknown, is forwarded untouched.

pub mod flight;
pub mod forward;
pub mod heartbeat;
pub mod lookup;

use crate::config::ConfigError;
use crate::edge::{write_local, Edge, LocalAnswer};
use crate::ironic::{version, ApiVersion, IronicError};
use crate::metrics::{Outcome as Counted, Route};
use crate::plugin::{Outcome, Plugin, RequestCtx};
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
/// forwarded so that Ironic answers it with its own routing and authentication.
pub fn classify(method: &str, path: &str) -> Option<AgentRoute> {
    match (method, path) {
        ("GET", "/v1/lookup" | "/v1/lookup/") => Some(AgentRoute::Lookup),
        ("POST", p) => {
            let ident = p.strip_prefix("/v1/heartbeat/")?;
            let public = !ident.is_empty()
                && ident.len() <= 255
                && ident
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            public.then(|| AgentRoute::Heartbeat {
                ident: ident.to_string(),
            })
        }
        _ => None,
    }
}

/// Ironic answers in JSON only when the client accepts it (its error middleware turns a
/// missing or `*/*` Accept into JSON); any other Accept gets webob's own 406 page, which only
/// Ironic can write, so such requests are forwarded.
pub fn accepts_json(accept: Option<&str>) -> bool {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return true;
    };
    accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = parts.any(|p| {
            let p = p.trim().to_ascii_lowercase();
            p.strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        !refused && matches!(media.as_str(), "*/*" | "application/*" | "application/json")
    })
}

/// Whether a path Ironic routes to the lookup controller, other than the two forms the
/// plugin answers (`/lookup`, `.json` and `.xml` suffixes, trailing slashes,
/// percent-encoded letters): such lookups are forwarded, but the answer still never carries
/// a stored token below 1.62.
pub fn is_lookup_alias(path: &str) -> bool {
    let decoded: Vec<u8> = percent_encoding::percent_decode(path.as_bytes()).collect();
    let Ok(p) = std::str::from_utf8(&decoded) else {
        return false;
    };
    // Ironic's JSON-extension middleware and router forgive a suffix and slashes on either
    // side of it (`/v1/lookup/.json`).
    let p = p.trim_end_matches('/');
    let p = p
        .strip_suffix(".json")
        .or_else(|| p.strip_suffix(".xml"))
        .unwrap_or(p);
    let p = p.trim_end_matches('/');
    matches!(p, "/lookup" | "/v1/lookup")
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
        match self.edge.store.index_synced_at().await {
            Ok(Some(at)) => crate::sync::index_is_fresh(sync, at).then_some(at),
            Ok(None) => None,
            Err(e) => {
                self.edge.metrics.store_error();
                log::warn!("node index: {e}");
                None
            }
        }
    }

    /// Ironic's view of a node from a fresh index: `Some(None)` if the index says the node
    /// does not exist, `None` if the index cannot tell.
    pub async fn indexed_node(&self, uuid: &str) -> Option<Option<crate::store::IndexedNode>> {
        self.indexed_node_with_time(uuid)
            .await
            .map(|(node, _)| node)
    }

    /// [`Self::indexed_node`], with when the round that wrote the index started (Unix ms).
    pub async fn indexed_node_with_time(
        &self,
        uuid: &str,
    ) -> Option<(Option<crate::store::IndexedNode>, u64)> {
        let synced_at = self.fresh_index_synced_at().await?;
        let node = self.edge.store.index_node(uuid).await.ok()?;
        Some((node, synced_at))
    }

    /// Writes an Ironic error answer made at the edge.
    pub async fn answer_error(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        e: &IronicError,
    ) -> pingora::Result<()> {
        self.answer_local(session, ctx, &LocalAnswer::error(e))
            .await
    }

    pub async fn answer_local(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        a: &LocalAnswer,
    ) -> pingora::Result<()> {
        // Counted before the answer leaves, so that a client reading the metrics after the
        // answer always sees it.
        self.edge.metrics.request(ctx.route, Counted::Local);
        ctx.answered_locally = Some(true);
        ctx.status = Some(a.status);
        write_local(session, a, Some(&self.info), Some(self.version)).await
    }
}

pub struct AgentPlugin {
    edge: Arc<Edge>,
    flights: Arc<flight::Flights>,
}

impl AgentPlugin {
    pub fn new(edge: Arc<Edge>) -> Result<Self, ConfigError> {
        Ok(AgentPlugin {
            flights: Arc::new(flight::Flights::new(edge.store.clone())),
            edge,
        })
    }
}

impl AgentPlugin {
    /// A lookup on an alias path: forwarded with the plugin's client so that the answer can be
    /// cleaned of a stored token below 1.62 (Ironic returns it to anyone there).
    async fn forward_alias_lookup(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Outcome> {
        let Some(info) = self.edge.versions.get() else {
            return Ok(Outcome::Forward);
        };
        // An unparseable version gets Ironic's own answer (no token in a 406).
        let version = version::negotiate(&session.req_header().headers, &info.range)
            .unwrap_or(info.range.max);
        let request = AgentRequest {
            edge: &self.edge,
            info,
            version,
        };
        lookup::forward_protected(&request, session, ctx).await?;
        Ok(Outcome::Answered)
    }
}

#[async_trait]
impl Plugin for AgentPlugin {
    fn name(&self) -> &'static str {
        "agent"
    }

    async fn handle(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Outcome> {
        let req = session.req_header();
        let accept = req.headers.get("accept").and_then(|v| v.to_str().ok());
        if !accepts_json(accept) {
            return Ok(Outcome::Forward);
        }
        let path = req.uri.path();
        if req.method == http::Method::GET
            && is_lookup_alias(path)
            && classify("GET", path).is_none()
        {
            ctx.route = Route::Lookup;
            return self.forward_alias_lookup(session, ctx).await;
        }
        let Some(route) = classify(req.method.as_str(), req.uri.path()) else {
            return Ok(Outcome::Forward);
        };
        ctx.route = match route {
            AgentRoute::Lookup => Route::Lookup,
            AgentRoute::Heartbeat { .. } => Route::Heartbeat,
        };
        // Without the upstream's range the gateway cannot negotiate as Ironic would.
        let Some(info) = self.edge.versions.get() else {
            return Ok(Outcome::Forward);
        };
        // A heartbeat's body is read first: Ironic's JSON body limits answer before version
        // negotiation (413/400 win over 406).
        let body = match &route {
            AgentRoute::Heartbeat { .. } => {
                match heartbeat::read_checked_body(&self.edge, session).await? {
                    heartbeat::BodyRead::Body(body) => Some(body),
                    heartbeat::BodyRead::Refused(e) => {
                        answer_unversioned(&self.edge, session, ctx, &info, &e).await?;
                        return Ok(Outcome::Answered);
                    }
                    // Larger than the gateway reads and not JSON: Ironic has no limit there.
                    heartbeat::BodyRead::TooLargeToCheck => return Ok(Outcome::Forward),
                }
            }
            AgentRoute::Lookup => None,
        };
        let version = match version::negotiate(&session.req_header().headers, &info.range) {
            Ok(v) => v,
            Err(e) => {
                answer_unversioned(&self.edge, session, ctx, &info, &e).await?;
                return Ok(Outcome::Answered);
            }
        };
        let request = AgentRequest {
            edge: &self.edge,
            info,
            version,
        };
        match (route, body) {
            (AgentRoute::Heartbeat { ident }, Some(body)) => {
                heartbeat::handle(&request, &ident, &body, session, ctx).await?
            }
            _ => lookup::handle(&request, &self.flights, session, ctx).await?,
        }
        Ok(Outcome::Answered)
    }
}

/// An error answered before a version is negotiated (body limits, 406).
async fn answer_unversioned(
    edge: &Edge,
    session: &mut Session,
    ctx: &mut RequestCtx,
    info: &UpstreamInfo,
    e: &IronicError,
) -> pingora::Result<()> {
    edge.metrics.request(ctx.route, Counted::Local);
    ctx.answered_locally = Some(true);
    ctx.status = Some(e.status);
    write_local(session, &LocalAnswer::error(e), Some(info), None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers() {
        for a in [
            None,
            Some(""),
            Some("*/*"),
            Some("application/json"),
            Some("Application/JSON; charset=utf-8"),
            Some("text/html, application/json;q=0.5"),
            Some("application/*"),
        ] {
            assert!(accepts_json(a), "{a:?}");
        }
        for a in [
            "text/html",
            "image/png",
            "application/xml",
            "application/json;q=0",
            "text/*",
        ] {
            assert!(!accepts_json(Some(a)), "{a}");
        }
    }

    #[test]
    fn lookup_aliases() {
        for p in [
            "/lookup",
            "/lookup/",
            "/lookup.json",
            "/v1/lookup.json",
            "/v1/%6Cookup",
            "/v1/lookup.xml",
            "/v1/lookup/.json",
        ] {
            assert!(is_lookup_alias(p), "{p}");
        }
        for p in ["/v1/lookups", "/v1/nodes", "//v1/lookup", "/v2/lookup"] {
            assert!(!is_lookup_alias(p), "{p}");
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
        }
    }
}
