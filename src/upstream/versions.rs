//! What the gateway knows of the upstream Ironic's API: its version range (learned from its
//! `GET /`, as IPA does) and its `Server` header. While nothing is known, the agent plugin
//! forwards everything: it cannot negotiate versions without the range.

use super::client::UpstreamClient;
use super::governor::{Class, Governor};
use crate::ironic::root::{RootDocument, PROBE_HOST};
use crate::ironic::{ApiVersion, VersionRange};
use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamInfo {
    pub range: VersionRange,
    /// The upstream's `Server` header (`ironic_api`), repeated on local answers.
    pub server: Option<String>,
    /// Ironic's root document, for `GET /` at the edge (`None`: not learnt, forwarded).
    pub(crate) root: Option<Arc<RootDocument>>,
}

/// The current knowledge, shared by every request.
#[derive(Default)]
pub struct VersionState {
    info: RwLock<Option<UpstreamInfo>>,
}

impl VersionState {
    pub fn get(&self) -> Option<UpstreamInfo> {
        self.info.read().ok().and_then(|g| g.clone())
    }

    pub fn set(&self, info: Option<UpstreamInfo>) {
        if let Ok(mut g) = self.info.write() {
            if *g != info {
                match &info {
                    Some(i) => log::info!(
                        "upstream API versions {}..{} (server {:?})",
                        i.range.min,
                        i.range.max,
                        i.server
                    ),
                    None => log::warn!(
                        "upstream API versions unknown; agent requests are forwarded as they are"
                    ),
                }
            }
            *g = info;
        }
    }

    /// Updates the maximum from a version header seen on any upstream answer, so that a
    /// upgraded (or pinned) Ironic is noticed without waiting for the next refresh.
    pub fn observe_headers(&self, headers: &http::HeaderMap) {
        let parse = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(ApiVersion::parse)
        };
        let (Some(min), Some(max)) = (
            parse("x-openstack-ironic-api-minimum-version"),
            parse("x-openstack-ironic-api-maximum-version"),
        ) else {
            return;
        };
        if let Some(mut cur) = self.get() {
            if cur.range.min != min || cur.range.max != max {
                cur.range = VersionRange { min, max };
                self.set(Some(cur));
            }
        }
    }
}

/// Parses Ironic's root document (`GET /`): `default_version.min_version` and `.version`.
pub fn parse_root(body: &[u8]) -> Option<VersionRange> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let dv = v.get("default_version")?;
    let min = ApiVersion::parse(dv.get("min_version")?.as_str()?)?;
    let max = ApiVersion::parse(dv.get("version")?.as_str()?)?;
    (min <= max).then_some(VersionRange { min, max })
}

/// The background service that keeps [`VersionState`] fresh.
pub struct VersionDiscovery {
    pub client: Arc<UpstreamClient>,
    pub state: Arc<VersionState>,
    pub refresh: Duration,
    /// Ironic's budget: the discovery counts in it like every other request.
    pub(crate) governor: Arc<Governor>,
}

impl VersionDiscovery {
    /// One refresh: `Ok` with what was learned, `Err` with why nothing was.
    pub async fn refresh_once(&self) -> Result<UpstreamInfo, String> {
        let mut req = RequestHeader::build("GET", b"/", None).map_err(|e| e.to_string())?;
        // A host no client sends: where it shows in the links, Ironic builds them from the
        // request's host, and the edge can answer `GET /` for any host.
        req.insert_header("Host", PROBE_HOST)
            .map_err(|e| e.to_string())?;
        req.insert_header("Accept", "application/json")
            .map_err(|e| e.to_string())?;
        req.insert_header("User-Agent", "ironic-edge")
            .map_err(|e| e.to_string())?;
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        let permit = self
            .governor
            .enter(Class::Mint, "version discovery", until)
            .await
            .map_err(|_| "no place in Ironic's budget".to_string())?;
        let sent = self.client.send(&req, b"").await;
        permit.answered(super::governor::sample_of(&sent));
        let resp = sent.map_err(|e| e.to_string())?;
        if resp.status() != 200 {
            return Err(format!("GET / answered {}", resp.status()));
        }
        let range = parse_root(&resp.body).ok_or("GET / has no usable default_version")?;
        let server = resp
            .header
            .headers
            .get("server")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let root = RootDocument::learn(&resp.body).map(Arc::new);
        Ok(UpstreamInfo {
            range,
            server,
            root,
        })
    }
}

#[async_trait]
impl BackgroundService for VersionDiscovery {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            // While the range is unknown, retry every second; once known, every `refresh`.
            let wait = match self.refresh_once().await {
                Ok(info) => {
                    self.state.set(Some(info));
                    self.refresh
                }
                Err(e) => {
                    // Keep a known range through an upstream outage: Ironic's range does not
                    // change while it is down, and local answers stay correct meanwhile.
                    if self.state.get().is_none() {
                        log::debug!("upstream version discovery: {e}");
                    } else {
                        log::warn!("upstream version refresh failed: {e}");
                    }
                    if self.state.get().is_some() {
                        self.refresh.min(Duration::from_secs(5))
                    } else {
                        Duration::from_secs(1)
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_document() {
        let body = br#"{"name": "OpenStack Ironic API", "default_version": {"id": "v1", "links": [], "status": "CURRENT", "min_version": "1.1", "version": "1.115"}, "versions": []}"#;
        let r = parse_root(body).unwrap();
        assert_eq!(r.min, ApiVersion::new(1, 1));
        assert_eq!(r.max, ApiVersion::new(1, 115));
        assert!(parse_root(b"<html>").is_none());
        assert!(
            parse_root(br#"{"default_version": {"min_version": "1.9", "version": "1.2"}}"#)
                .is_none()
        );
    }

    #[test]
    fn headers_update_a_known_range() {
        let state = VersionState::default();
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-openstack-ironic-api-minimum-version",
            "1.1".parse().unwrap(),
        );
        h.insert(
            "x-openstack-ironic-api-maximum-version",
            "1.96".parse().unwrap(),
        );
        state.observe_headers(&h);
        assert!(
            state.get().is_none(),
            "headers alone do not make a range known"
        );
        state.set(Some(UpstreamInfo {
            range: VersionRange {
                min: ApiVersion::new(1, 1),
                max: ApiVersion::new(1, 115),
            },
            server: None,
            root: None,
        }));
        state.observe_headers(&h);
        assert_eq!(state.get().unwrap().range.max, ApiVersion::new(1, 96));
    }
}
