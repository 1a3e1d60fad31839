//! The `ProxyHttp` implementation, kept thin: it runs the plugin list from
//! `request_filter` and writes and counts whatever they decided, in one place
//! ([`EdgeProxy::respond`]); forwards everything else to the pre-built upstream peer with
//! `X-Forwarded-*`, answers an unreachable upstream with Ironic's 503, and logs.

use crate::client_addr::TrustedProxies;
use crate::conn_guard::clock_of;
use crate::disposition::{AfterWrite, Disposition, Rule};
use crate::edge::{write_local, write_upstream, Edge, LocalAnswer};
use crate::ironic::error::upstream_unavailable;
use crate::metrics::Outcome as Counted;
use crate::plugin::{Plugin, RequestCtx};
use crate::upstream::headers::forwarded_values;
use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;

pub struct EdgeProxy {
    edge: Arc<Edge>,
    plugins: Vec<Box<dyn Plugin>>,
    trusted: TrustedProxies,
    access_log: Option<crate::access_log::AccessLog>,
}

impl EdgeProxy {
    pub(crate) fn new(
        edge: Arc<Edge>,
        plugins: Vec<Box<dyn Plugin>>,
        trusted: TrustedProxies,
    ) -> Self {
        EdgeProxy {
            edge,
            plugins,
            trusted,
            access_log: None,
        }
    }

    /// Writes one JSON line per request to `log` ([`crate::access_log`]).
    pub(crate) fn with_access_log(mut self, log: crate::access_log::AccessLog) -> Self {
        self.access_log = Some(log);
        self
    }

    /// Writes and counts what a plugin decided: the one place answers leave from. Counted
    /// before the answer leaves, so that a client reading the metrics after the answer always
    /// sees it.
    async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        disposition: Disposition,
    ) -> pingora::Result<()> {
        if let Some(outcome) = disposition.outcome() {
            self.edge
                .metrics
                .request(ctx.route, outcome, ctx.started.elapsed());
            ctx.answered = Some(outcome);
        }
        ctx.status = disposition.status();
        crate::drain::close_after_answer(session);
        ctx.rule = disposition.rule();
        let accepted_here = matches!(
            ctx.rule,
            Some(Rule::Coalesced | Rule::Kept | Rule::OverLimit)
        ) && ctx.status == Some(202);
        if accepted_here && !self.edge.shadow_mode() {
            if let Some(uuid) = crate::access_log::node_of(session.req_header().uri.path()) {
                self.edge
                    .accepted_at_edge
                    .note(uuid, crate::store::now_ms());
            }
        }
        match disposition {
            Disposition::Continue => Ok(()),
            Disposition::Relayed {
                resp,
                body,
                predicted,
            } => {
                if self.edge.shadow_mode() {
                    // The rule that decided is the edge's, though Ironic answered.
                    if let Some(p) = &predicted {
                        ctx.rule = Some(p.rule);
                    }
                    let p = predicted.as_deref();
                    self.edge.shadow.observe(p, resp.status(), &body);
                }
                ctx.upstream_ms = Some(resp.elapsed_ms);
                write_upstream(session, &resp, &body).await
            }
            Disposition::Local(local) => {
                if self.edge.shadow_mode() && local.rule.stands_in_for_ironic() {
                    self.edge.shadow.unasked(local.rule);
                }
                let written =
                    write_local(session, &local.answer, local.info.as_ref(), local.version).await;
                if let Some(after) = local.after {
                    self.after_write(after, written.is_ok()).await;
                }
                written
            }
        }
    }

    async fn after_write(&self, after: AfterWrite, delivered: bool) {
        match after {
            AfterWrite::MintedAnswerHandedOver { caller, claim } => {
                crate::agent::lookup::minted_answer_handed_over(
                    &self.edge, &caller, &claim, delivered,
                )
                .await
            }
        }
    }

    fn listener_is_tls(&self, session: &Session) -> bool {
        session
            .server_addr()
            .and_then(|a| a.as_inet())
            .is_some_and(|a| self.edge.tls_ports.contains(&a.port()))
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    /// The head is in: who the client is, and which deadline its body gets.
    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let req = session.req_header();
        // What the request is, for the per-source limits; the route it is counted under is
        // set by whichever plugin answers it (a request proxied unchanged counts as "other").
        ctx.kind = crate::agent::route_of(&req.method, req.uri.path());
        if let Some(peer) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            // A value that is not text stops the walk like any unparsable entry.
            let forwarded = req
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .map(|v| v.to_str().unwrap_or(""));
            let client = crate::client_addr::resolve(peer, forwarded, &self.trusted);
            if ctx.kind != crate::metrics::Route::Other {
                ctx.source = Some(self.edge.source_limits.admit(client.ip));
            }
            ctx.client = Some(client);
        }
        if let Some(clock) = clock_of(session) {
            let agent = crate::agent::is_agent_endpoint(req.method.as_str(), req.uri.path());
            clock.head_done(agent && has_body(req));
        }
        Ok(())
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        let mut answered = false;
        for plugin in &self.plugins {
            let disposition = plugin.handle(session, ctx).await?;
            if !matches!(disposition, Disposition::Continue) {
                self.respond(session, ctx, disposition).await?;
                answered = true;
                break;
            }
        }
        // A body the plugins read is in; one still to stream upstream keeps its deadline
        // until `request_body_filter` sees its end.
        if answered || session.is_body_done() {
            if let Some(clock) = clock_of(session) {
                clock.body_done();
            }
        }
        Ok(answered)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if end_of_stream {
            if let Some(clock) = clock_of(session) {
                clock.body_done();
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        ctx.upstream_started = Some(std::time::Instant::now());
        Ok(Box::new(self.edge.upstream.peer().clone()))
    }

    /// Counts a proxied answer before it leaves, so that a client reading the metrics after
    /// the answer always sees it.
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut pingora::http::ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        crate::drain::close_after_answer(session);
        if ctx.answered.is_none() {
            self.edge
                .metrics
                .request(ctx.route, Counted::Forwarded, ctx.started.elapsed());
            ctx.answered = Some(Counted::Forwarded);
            ctx.proxied = true;
            let status = upstream_response.status.as_u16();
            ctx.status = Some(status);
            ctx.rule = Some(Rule::Forwarded);
            if let Some(took) = ctx.upstream_started.map(|t| t.elapsed()) {
                ctx.upstream_ms = Some(took.as_millis() as u64);
                self.edge.metrics.upstream_answered(ctx.route, status, took);
            }
            // An agent request the plugin let through (an `Accept` only Ironic answers, the
            // range unknown: forwarded in either mode; a body the edge did not read: compared
            // on the status).
            match ctx.predicted.take() {
                Some(p) if self.edge.shadow_mode() => {
                    ctx.rule = Some(p.rule);
                    self.edge.shadow.observe_status(&p, status);
                }
                _ if self.edge.shadow_mode() && ctx.route != crate::metrics::Route::Other => {
                    self.edge.shadow.observe(None, status, b"");
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let tls = self.listener_is_tls(session);
        for (name, value) in forwarded_values(&session.req_header().headers, tls) {
            upstream_request.insert_header(name, value)?;
        }
        // The chain the gateway vouches for replaces whatever the client wrote.
        match &ctx.client {
            Some(client) => {
                upstream_request.insert_header("X-Forwarded-For", client.forwarded_for.as_str())?
            }
            None => {
                upstream_request.remove_header("X-Forwarded-For");
            }
        }
        let base = &self.edge.upstream.target().base_path;
        if !base.is_empty() {
            let pq = upstream_request
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let uri = format!("{base}{pq}").parse::<http::Uri>().map_err(|e| {
                pingora::Error::because(pingora::ErrorType::InvalidHTTPHeader, "upstream path", e)
            })?;
            upstream_request.set_uri(uri);
        }
        self.edge.metrics.upstream_request(ctx.route);
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora::Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy
    where
        RequestCtx: Send + Sync,
    {
        use pingora::ErrorSource;
        let code = match e.esource() {
            // The upstream could not be reached or broke off: Ironic's own 503 shape, not a
            // proxy page, so clients parse it like any Ironic error.
            ErrorSource::Upstream => {
                self.edge.metrics.upstream_failed(
                    ctx.route,
                    crate::metrics::UpstreamFailure::of_pingora(e.etype()),
                );
                let answer = LocalAnswer::error(&upstream_unavailable());
                let info = self.edge.versions.get();
                let unavailable = Disposition::answer(Rule::Unavailable, answer, info, None);
                if let Err(we) = self.respond(session, ctx, unavailable).await {
                    log::debug!("could not write the 503: {we}");
                }
                503
            }
            ErrorSource::Downstream => match e.etype() {
                pingora::ErrorType::ReadError
                | pingora::ErrorType::WriteError
                | pingora::ErrorType::ConnectionClosed => 0,
                _ => {
                    let _ = session.respond_error(400).await;
                    400
                }
            },
            _ => {
                let _ = session.respond_error(500).await;
                500
            }
        };
        ctx.status = Some(code);
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Pingora puts this in its own error logs; the default shows the query string, which may
    /// carry a heartbeat's token.
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        format!(
            "{} {}",
            session.req_header().method,
            session.req_header().uri.path()
        )
    }

    async fn logging(
        &self,
        session: &mut Session,
        e: Option<&pingora::Error>,
        ctx: &mut RequestCtx,
    ) {
        if let Some(clock) = clock_of(session) {
            clock.request_done();
        }
        if ctx.answered.is_none() && ctx.status.is_none() && session.response_written().is_none() {
            // Nothing reached the client (the connection broke first): still a forwarded request.
            self.edge
                .metrics
                .request(ctx.route, Counted::Forwarded, ctx.started.elapsed());
        }
        let status = ctx
            .status
            .or_else(|| session.response_written().map(|r| r.status.as_u16()))
            .unwrap_or(0);
        if ctx.answered == Some(Counted::Forwarded) && (200..400).contains(&status) {
            let req = session.req_header();
            if let Some(event) = crate::sync::event_for(req.method.as_str(), req.uri.path()) {
                if let crate::sync::SyncEvent::Refresh(ident) = &event {
                    // Before the refresh reads the node: what it reads may predate the action.
                    crate::agent::session::note_node_action(&self.edge, ident).await;
                }
                let _ = self.edge.sync_events.try_send(event);
            }
        }
        if let Some(rule) = ctx.rule {
            self.edge.metrics.decision(rule);
        }
        let how = ctx.answered.map_or("upstream", Counted::label);
        if let Some(access) = &self.access_log {
            let req = session.req_header();
            let request_id = session
                .response_written()
                .and_then(|r| r.headers.get("x-openstack-request-id"))
                .and_then(|v| v.to_str().ok());
            access.write(&crate::access_log::AccessLine {
                time_ms: crate::store::now_ms(),
                request_id,
                method: req.method.as_str(),
                path: req.uri.path(),
                route: ctx.route.label(),
                node: crate::access_log::node_of(req.uri.path()),
                source: ctx.client.as_ref().map(|c| c.ip.to_string()),
                disposition: match ctx.answered {
                    _ if ctx.proxied => "proxied",
                    Some(outcome) => outcome.label(),
                    None => "none",
                },
                status,
                rule: ctx.rule.map(Rule::label),
                upstream_ms: ctx.upstream_ms,
                total_ms: ctx.started.elapsed().as_millis() as u64,
            });
        }
        // The path only: query strings may carry heartbeat tokens.
        log::info!(
            "{} {} {} {} {} {}ms{}",
            ctx.client
                .as_ref()
                .map(|c| c.ip.to_string())
                .unwrap_or_else(|| "-".into()),
            session.req_header().method,
            session.req_header().uri.path(),
            status,
            how,
            ctx.started.elapsed().as_millis(),
            e.map(|e| format!(" error={}", e.etype().as_str()))
                .unwrap_or_default()
        );
    }
}

/// Whether a request head announces a body: a `Content-Length` other than 0, or any
/// `Transfer-Encoding` (chunked).
fn has_body(req: &RequestHeader) -> bool {
    if req.headers.contains_key("transfer-encoding") {
        return true;
    }
    req.headers
        .get("content-length")
        .is_some_and(|v| v.to_str().map_or(true, |v| v.trim() != "0"))
}
