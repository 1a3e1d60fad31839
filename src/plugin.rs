//! The plugin trait the proxy runs from `request_filter`, its typed outcome, and the one
//! explicit list of plugins.

use crate::disposition::Disposition;
use crate::edge::Edge;
use crate::metrics::Route;
use async_trait::async_trait;
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::Instant;

/// Per-request state the proxy and the plugins share.
pub struct RequestCtx {
    pub started: Instant,
    /// The route the request is counted under, set by whichever plugin answers it (a request
    /// proxied unchanged counts as "other").
    pub route: Route,
    /// What the request is by its method and path ([`crate::agent::route_of`]), computed once
    /// when its head is in (`early_request_filter`), for every rule that asks.
    pub(crate) kind: Route,
    /// How the request was answered, once it was (counted once, read by the access log).
    pub answered: Option<crate::metrics::Outcome>,
    /// The status the client got, for the access log.
    pub status: Option<u16>,
    /// The rule that decided the request (in shadow mode: what the edge would have answered
    /// by), for the access log.
    pub(crate) rule: Option<crate::disposition::Rule>,
    /// Shadow mode: what the edge would have answered a request it leaves to the proxy.
    pub(crate) predicted: Option<crate::disposition::Predicted>,
    /// Who sent the request (see `client_addr`), computed once in `early_request_filter`;
    /// `None` only for a peer without an IP address.
    pub client: Option<crate::client_addr::ClientAddr>,
    /// An agent request's place among its source's (`source_limits`), held until it ends.
    pub(crate) source: Option<crate::source_limits::Admitted>,
    /// When the proxy asked Ironic for a request it passes through unchanged.
    pub(crate) upstream_started: Option<Instant>,
    /// How long Ironic took, when it was asked (for the access log).
    pub(crate) upstream_ms: Option<u64>,
    /// Passed through unchanged (not answered nor forwarded by a plugin).
    pub(crate) proxied: bool,
}

impl Default for RequestCtx {
    fn default() -> Self {
        RequestCtx {
            started: Instant::now(),
            route: Route::Other,
            kind: Route::Other,
            answered: None,
            status: None,
            rule: None,
            predicted: None,
            client: None,
            source: None,
            upstream_started: None,
            upstream_ms: None,
            proxied: false,
        }
    }
}

#[async_trait]
pub(crate) trait Plugin: Send + Sync {
    /// Decides the request: [`Disposition::Continue`] to let the next plugin (and finally the
    /// proxy) carry on; any other disposition is written and counted by the proxy.
    async fn handle(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Disposition>;
}

/// The plugins, in the order they run. Each is built from its part of the configuration;
/// an error names the offending field.
pub(crate) fn build_plugins(
    edge: &Arc<Edge>,
) -> Result<Vec<Box<dyn Plugin>>, crate::config::ConfigError> {
    // A policy with nothing to refuse makes no plugin: each call costs the request a boxed
    // future.
    let mut plugins: Vec<Box<dyn Plugin>> = Vec::with_capacity(3);
    if let Some(source_policy) = crate::source_policy::SourcePolicyPlugin::new(edge.clone())? {
        plugins.push(Box::new(source_policy));
    }
    if let Some(route_policy) = crate::route_policy::RoutePolicyPlugin::new(edge.clone())? {
        plugins.push(Box::new(route_policy));
    }
    plugins.push(Box::new(crate::agent::AgentPlugin::new(edge.clone())?));
    Ok(plugins)
}
