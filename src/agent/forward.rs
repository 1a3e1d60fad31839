//! Forwarding an agent request with the gateway's own upstream client: the request as the
//! agent sent it (path, query, headers, body bytes), plus `X-Forwarded-*`.

use crate::disposition::{Disposition, Rule};
use crate::edge::Edge;
use crate::ironic::error::upstream_unavailable;
use crate::metrics::Route;
use crate::plugin::RequestCtx;
use crate::upstream::governor::{self, Class, Lane};
use crate::upstream::headers::{forwarded_values, is_hop_by_hop};
use crate::upstream::{UpstreamError, UpstreamResponse};
use bytes::Bytes;
use http::uri::PathAndQuery;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use super::AgentRequest;

/// What the upstream request for an agent's request is made of, taken from the session
/// without copying the caller's input: the path and query and the header values are the
/// session's own bytes (reference counted). A request waiting for a place in Ironic's budget
/// holds this, never a second copy of a long query; the request is built once the place is
/// granted ([`Recipe::build`]).
pub(crate) struct Recipe {
    method: http::Method,
    path_and_query: Option<PathAndQuery>,
    headers: http::HeaderMap,
    forwarded_for: Option<String>,
    tls: bool,
}

impl Recipe {
    pub(crate) fn of(
        session: &Session,
        client: Option<&crate::client_addr::ClientAddr>,
        tls: bool,
    ) -> Recipe {
        let src = session.req_header();
        Recipe {
            method: src.method.clone(),
            path_and_query: src.uri.path_and_query().cloned(),
            headers: src.headers.clone(),
            forwarded_for: client.map(|c| c.forwarded_for.clone()),
            tls,
        }
    }

    /// Replaces the query (the path stays): `query` is sent as it is.
    pub(crate) fn set_query(&mut self, query: &str) -> Result<(), UpstreamError> {
        let path = self.path_and_query.as_ref().map_or("/", |pq| pq.path());
        let pq = PathAndQuery::try_from(format!("{path}?{query}"))
            .map_err(|e| UpstreamError::Exchange(format!("bad query: {e}")))?;
        self.path_and_query = Some(pq);
        Ok(())
    }

    /// The upstream request: the agent's, carrying `body_len` bytes of body, with the
    /// gateway's `X-Forwarded-*` and without hop-by-hop headers.
    pub(crate) fn build(&self, body_len: usize) -> pingora::Result<RequestHeader> {
        let src = &self.headers;
        let mut req = RequestHeader::build(self.method.clone(), b"/", Some(src.len() + 4))?;
        // The path and query shared, not copied (`set_uri` keeps no raw bytes of its own).
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(
            self.path_and_query
                .clone()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        let uri = http::Uri::from_parts(parts).map_err(|e| {
            pingora::Error::because(pingora::ErrorType::InvalidHTTPHeader, "upstream uri", e)
        })?;
        req.set_uri(uri);
        for (name, value) in src.iter() {
            let n = name.as_str();
            if is_hop_by_hop(n)
                || n.eq_ignore_ascii_case("content-length")
                || n.eq_ignore_ascii_case("expect")
                || n.starts_with("x-forwarded-")
            {
                continue;
            }
            req.append_header(name.clone(), value.clone())?;
        }
        // X-Forwarded-For is the chain the gateway vouches for, not what the client sent.
        for (name, value) in forwarded_values(src, self.tls) {
            req.insert_header(name, value)?;
        }
        if let Some(chain) = &self.forwarded_for {
            req.insert_header("X-Forwarded-For", chain.as_str())?;
        }
        if body_len > 0 || self.method == http::Method::POST {
            req.insert_header("Content-Length", body_len.to_string())?;
        }
        Ok(req)
    }
}

/// An agent request ready to go upstream, owning all it needs: a lookup's trip to Ironic must
/// be able to outlive the agent's wait for it (see `lookup`).
pub struct Prepared {
    pub edge: Arc<Edge>,
    route: Route,
    /// What the request is for: the governor serves higher classes first.
    class: Class,
    /// The request's node as far as it is known (the lookup key, the heartbeat's ident): the
    /// governor's queue holds one place per node and class.
    node: String,
    /// Built into the request once the governor grants a place.
    recipe: Recipe,
    body: Bytes,
    /// Not sent if still waiting for the governor by then.
    deadline: Instant,
    /// How long it waits for the governor at most, if less than until the deadline.
    queue_wait: Option<Duration>,
}

/// How long a record-only refresh waits for the governor: past that it is kept for the relay
/// (a verified one) rather than keeping its agent waiting while others need Ironic more.
const REFRESH_WAIT: Duration = Duration::from_millis(500);

/// How long the verified first heartbeat of a session waits for the governor where Ironic
/// only records heartbeats: past that it is kept for the relay, which sends it before any
/// refresh (holding the agent for the whole deadline would teach Ironic nothing sooner).
pub(crate) const FIRST_WAIT: Duration = Duration::from_secs(2);

/// The instant by which the agent's request must be answered. In shadow mode the agent waits
/// for Ironic as it would without the gateway: the edge answers no 503 of its own while Ironic
/// may still answer (the upstream client's own deadline, its three timeouts, comes first).
pub fn answer_deadline(edge: &Edge, ctx: &RequestCtx) -> Instant {
    let u = &edge.config.upstream;
    let within = if edge.shadow_mode() {
        u.connect_timeout_ms + u.write_timeout_ms + u.read_timeout_ms + 1000
    } else {
        u.agent_answer_within_ms
    };
    Instant::from_std(ctx.started) + Duration::from_millis(within)
}

/// Gets the agent's request ready to go upstream (the request itself is built when it goes).
pub(crate) fn prepare(
    r: &AgentRequest<'_>,
    session: &Session,
    ctx: &RequestCtx,
    class: Class,
    node: &str,
    body: &Bytes,
) -> Result<Prepared, UpstreamError> {
    let tls = session
        .server_addr()
        .and_then(|a| a.as_inet())
        .is_some_and(|a| r.edge.tls_ports.contains(&a.port()));
    Ok(Prepared {
        edge: r.edge.clone(),
        route: ctx.route,
        class,
        node: node.to_string(),
        recipe: Recipe::of(session, ctx.client.as_ref(), tls),
        body: body.clone(),
        deadline: answer_deadline(r.edge, ctx),
        queue_wait: (class == Class::Refresh).then_some(REFRESH_WAIT),
    })
}

impl Prepared {
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Waits for the governor no longer than `wait` (the caller keeps the request if it
    /// finds no place by then).
    pub(crate) fn wait_at_most(&mut self, wait: Duration) {
        self.queue_wait = Some(self.queue_wait.map_or(wait, |w| w.min(wait)));
    }

    /// Sends `query` upstream in place of the agent's (see `lookup`'s cap).
    pub(crate) fn set_query(&mut self, query: &str) -> Result<(), UpstreamError> {
        self.recipe.set_query(query)
    }

    /// Sends the request upstream (through the governor) and returns the answer (not yet
    /// written).
    pub async fn send(&self) -> Result<UpstreamResponse, UpstreamError> {
        let edge = &self.edge;
        let until = match self.queue_wait {
            Some(wait) => self.deadline.min(Instant::now() + wait),
            None => self.deadline,
        };
        let lane = match self.route {
            Route::Heartbeat => Lane::Conductor,
            _ => Lane::Api,
        };
        // Shadow mode paces nothing of the agents' (they reach Ironic as without the gateway,
        // and never get the edge's 503 for a place in the budget): the governor only sees the
        // gateway's own requests (the sync, the version discovery).
        let permit = if edge.shadow_mode() {
            None
        } else {
            match edge
                .governor
                .enter(self.class, lane, &self.node, until)
                .await
            {
                Ok(p) => Some(p),
                Err(_) => {
                    log::debug!(
                        "{} ({}) not sent: no place in Ironic's budget in time",
                        self.route.label(),
                        self.class.label()
                    );
                    edge.metrics.deferred(self.class);
                    return Err(UpstreamError::Busy);
                }
            }
        };
        let req = match self.recipe.build(self.body.len()) {
            Ok(req) => req,
            // (Made of a request Pingora parsed: not expected. The place is given back.)
            Err(e) => return Err(UpstreamError::Exchange(e.to_string())),
        };
        edge.metrics.upstream_request(self.route);
        let sent_at = Instant::now();
        let result = match self.route {
            Route::Lookup => edge.upstream.send_lookup(&req, &self.body).await,
            _ => edge.upstream.send(&req, &self.body).await,
        };
        edge.metrics
            .upstream_exchange(self.route, &result, sent_at.elapsed());
        if let Some(permit) = permit {
            permit.answered(governor::sample_of(&result));
        }
        match &result {
            Ok(resp) => edge.versions.observe_headers(&resp.header.headers),
            Err(e) => {
                // (Ironic's failures are logged once per incident: `crate::incident`.)
                log::debug!("{} forward failed: {e}", self.route.label());
            }
        }
        result
    }
}

/// Sends the agent's request upstream and returns the answer (not yet written).
pub(crate) async fn send(
    r: &AgentRequest<'_>,
    session: &Session,
    ctx: &RequestCtx,
    class: Class,
    node: &str,
    body: &Bytes,
) -> Result<UpstreamResponse, UpstreamError> {
    prepare(r, session, ctx, class, node, body)?.send().await
}

/// Ironic's answer, relayed with `body` in place of its own (e.g. with a token removed).
pub(crate) fn relay(resp: &UpstreamResponse, body: &Bytes) -> Disposition {
    Disposition::relayed(resp.clone(), body.clone())
}

/// The answer when the upstream could not be asked, or did not answer in time: Ironic's 503.
pub(crate) fn unavailable(r: &AgentRequest<'_>) -> Disposition {
    r.answer_error(Rule::Unavailable, &upstream_unavailable())
}
