//! The plugin trait the proxy runs from `request_filter`, its typed outcome, and the one
//! explicit list of plugins.

use crate::edge::Edge;
use crate::metrics::Route;
use async_trait::async_trait;
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::Instant;

/// What a plugin did with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The plugin wrote the whole response (locally, or after asking the upstream itself).
    Answered,
    /// Not this plugin's business: the next plugin, and finally the proxy, carries on.
    Forward,
}

/// Per-request state the proxy and the plugins share.
pub struct RequestCtx {
    pub started: Instant,
    pub route: Route,
    /// Set by the plugin that answered: whether the upstream was asked for this answer.
    pub answered_locally: Option<bool>,
    /// The status the plugin answered with, for the access log.
    pub status: Option<u16>,
    /// Who sent the request (see `client_addr`), computed once in `early_request_filter`;
    /// `None` only for a peer without an IP address.
    pub client: Option<crate::client_addr::ClientAddr>,
}

impl Default for RequestCtx {
    fn default() -> Self {
        RequestCtx {
            started: Instant::now(),
            route: Route::Other,
            answered_locally: None,
            status: None,
            client: None,
        }
    }
}

#[async_trait]
pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;
    async fn handle(&self, session: &mut Session, ctx: &mut RequestCtx)
        -> pingora::Result<Outcome>;
}

/// The plugins, in the order they run. Each is built from its part of the configuration;
/// an error names the offending field.
pub fn build_plugins(edge: &Arc<Edge>) -> Result<Vec<Box<dyn Plugin>>, crate::config::ConfigError> {
    Ok(vec![
        Box::new(crate::route_policy::RoutePolicyPlugin::new(edge.clone())?),
        Box::new(crate::agent::AgentPlugin::new(edge.clone())?),
    ])
}
