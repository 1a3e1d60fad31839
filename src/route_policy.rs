//! The route policy plugin: with `route_policy: ramdisk`, only what a ramdisk needs passes
//! (Ironic's public routes: `/`, `/v1`, lookup, heartbeat, continue_inspection); everything
//! else gets Ironic's 403 at the edge.

use crate::config::{ConfigError, RoutePolicy};
use crate::disposition::{Disposition, Rule};
use crate::edge::{Edge, LocalAnswer};
use crate::ironic::error::access_denied;
use crate::plugin::{Plugin, RequestCtx};
use async_trait::async_trait;
use pingora::proxy::Session;
use std::sync::Arc;

pub struct RoutePolicyPlugin {
    edge: Arc<Edge>,
}

impl RoutePolicyPlugin {
    /// The plugin of `route_policy: ramdisk`; `None` for `all`: it would let every request
    /// through.
    pub fn new(edge: Arc<Edge>) -> Result<Option<Self>, ConfigError> {
        if edge.config.route_policy == RoutePolicy::All {
            return Ok(None);
        }
        Ok(Some(RoutePolicyPlugin { edge }))
    }
}

/// Ironic's `acl_public_routes`, matched as its `AuthPublicRoutes` middleware does: trailing
/// `/` stripped, then the whole path must match, optionally with `.json`/`.xml`.
pub fn is_ramdisk_route(path: &str) -> bool {
    let p = path.trim_end_matches('/');
    let p = p
        .strip_suffix(".json")
        .or_else(|| p.strip_suffix(".xml"))
        .unwrap_or(p);
    match p {
        "" | "/v1" | "/v1/lookup" | "/v1/continue_inspection" => true,
        _ => p.strip_prefix("/v1/heartbeat/").is_some_and(|ident| {
            !ident.is_empty()
                && ident
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        }),
    }
}

#[async_trait]
impl Plugin for RoutePolicyPlugin {
    async fn handle(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<Disposition> {
        let path = session.req_header().uri.path().to_string();
        if is_ramdisk_route(&path) {
            return Ok(Disposition::Continue);
        }
        let info = self.edge.versions.get();
        let version = info.as_ref().and_then(|i| {
            crate::ironic::version::negotiate(&session.req_header().headers, &i.range).ok()
        });
        let err = access_denied(&path);
        Ok(Disposition::answer(
            Rule::Denied,
            LocalAnswer::error(&err),
            info,
            version,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_routes() {
        for p in [
            "/",
            "/v1",
            "/v1/",
            "/v1/lookup",
            "/v1/lookup/",
            "/v1/lookup.json",
            "/v1/heartbeat/1be26c0b-03f2-4d2e-ae87-c02d7f33c123",
            "/v1/heartbeat/node-1",
            "/v1/continue_inspection",
        ] {
            assert!(is_ramdisk_route(p), "{p}");
        }
        for p in [
            "/v1/nodes",
            "/v1/nodes/x/states/power",
            "/lookup",
            "/v1/heartbeat/",
            "/v1/heartbeat/Node.One",
            "/v1/heartbeat/a/b",
            "/v1/ports",
            "/foo",
        ] {
            assert!(!is_ramdisk_route(p), "{p}");
        }
    }
}
