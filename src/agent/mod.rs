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

/// What every agent-path handler needs for one request.
pub struct AgentRequest<'a> {
    pub edge: &'a Edge,
    pub info: UpstreamInfo,
    pub version: ApiVersion,
}

impl AgentRequest<'_> {
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
    flights: flight::Flights,
}

impl AgentPlugin {
    pub fn new(edge: Arc<Edge>) -> Result<Self, ConfigError> {
        Ok(AgentPlugin {
            flights: flight::Flights::new(edge.store.clone()),
            edge,
        })
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
                    Ok(body) => Some(body),
                    Err(e) => {
                        answer_unversioned(&self.edge, session, ctx, &info, &e).await?;
                        return Ok(Outcome::Answered);
                    }
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
