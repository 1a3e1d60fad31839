//! The operations listener (loopback only): `GET /metrics` (Prometheus text) and
//! `GET /status` (JSON: up, and whether the upstream's API versions are known), and
//! `GET /agents/unknown` (JSON: the MAC sets and sources that keep getting lookup 404s), and
//! `GET /agents` (JSON: what the edge knows of each node's agent, [`crate::agents_view`]).

use crate::metrics::Metrics;
use crate::upstream::VersionState;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

pub struct OpsApp {
    pub metrics: Arc<Metrics>,
    pub versions: Arc<VersionState>,
    pub(crate) governor: Arc<crate::upstream::governor::Governor>,
    pub(crate) unknown: Arc<crate::unknown::UnknownMachines>,
    /// For `GET /agents`: the store the agent path writes.
    pub(crate) edge: Arc<crate::edge::Edge>,
    pub(crate) shadow: Arc<crate::shadow::Shadow>,
}

fn reply(status: u16, content_type: &str, body: String) -> Response<Vec<u8>> {
    let body = body.into_bytes();
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len())
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for OpsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" => reply(
                200,
                "text/plain; version=0.0.4",
                self.metrics.render_with(&self.governor.stats()) + &self.shadow.render(),
            ),
            "/status" => {
                let upstream = match self.versions.get() {
                    Some(i) => serde_json::json!({
                        "versions_known": true,
                        "min_version": i.range.min.to_string(),
                        "max_version": i.range.max.to_string(),
                    }),
                    None => serde_json::json!({"versions_known": false}),
                };
                let doc = serde_json::json!({"status": "ok", "upstream": upstream});
                reply(200, "application/json", doc.to_string())
            }
            "/agents" => {
                let query = session.req_header().uri.query().map(str::to_string);
                let (status, doc) = crate::agents_view::answer(&self.edge, query.as_deref()).await;
                reply(status, "application/json", doc.to_string())
            }
            "/agents/unknown" => {
                reply(200, "application/json", self.unknown.document().to_string())
            }
            _ => reply(404, "text/plain", "not found\n".into()),
        }
    }
}
