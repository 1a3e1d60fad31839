//! What the gateway knows of the upstream Ironic's API: its version range (learned from its
//! `GET /`, as IPA does), its `Server` header, and its version documents (`GET /`, and
//! `GET /v1` per negotiated version, learnt for the versions clients ask for). While nothing is
//! known, the agent plugin forwards everything: it cannot negotiate versions without the range.

use super::client::UpstreamClient;
use super::governor::{Class, Governor, Lane};
use crate::ironic::root::{VersionDocument, PROBE_HOST};
use crate::ironic::{ApiVersion, VersionRange};
use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Notify;

/// How many versions' v1 documents are kept (clients use a handful; the range has about 115).
const MAX_V1_DOCUMENTS: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamInfo {
    pub range: VersionRange,
    /// The upstream's `Server` header (`ironic_api`), repeated on local answers (shared: the
    /// info is copied for every agent request).
    pub server: Option<Arc<str>>,
    /// Ironic's root document, for `GET /` at the edge (`None`: not learnt, forwarded).
    pub(crate) root: Option<Arc<VersionDocument>>,
}

/// The v1 documents (`GET /v1`), one per negotiated version: learnt for the versions clients
/// asked for (`None`: asked for, not learnt yet), at most [`MAX_V1_DOCUMENTS`].
#[derive(Default)]
struct V1Documents {
    by_version: Mutex<HashMap<ApiVersion, Option<Arc<VersionDocument>>>>,
    asked: Notify,
}

/// The current knowledge, shared by every request.
#[derive(Default)]
pub struct VersionState {
    info: RwLock<Option<UpstreamInfo>>,
    v1: V1Documents,
}

impl VersionState {
    pub fn get(&self) -> Option<UpstreamInfo> {
        self.info.read().ok().and_then(|g| g.clone())
    }

    /// The v1 document of `version`, when learnt. A miss asks the discovery to learn it (the
    /// request that missed is forwarded).
    pub(crate) fn v1_document(&self, version: ApiVersion) -> Option<Arc<VersionDocument>> {
        let mut docs = self.v1.by_version.lock().ok()?;
        if let Some(known) = docs.get(&version) {
            return known.clone();
        }
        if docs.len() < MAX_V1_DOCUMENTS {
            docs.insert(version, None);
            self.v1.asked.notify_one();
        }
        None
    }

    /// The versions whose v1 document is asked for; all of them, or only those not learnt.
    fn v1_versions(&self, only_missing: bool) -> Vec<ApiVersion> {
        let Ok(docs) = self.v1.by_version.lock() else {
            return Vec::new();
        };
        let mut versions: Vec<ApiVersion> = docs
            .iter()
            .filter(|(_, d)| !only_missing || d.is_none())
            .map(|(v, _)| *v)
            .collect();
        versions.sort();
        versions
    }

    fn set_v1_document(&self, version: ApiVersion, doc: Option<Arc<VersionDocument>>) {
        if let Ok(mut docs) = self.v1.by_version.lock() {
            if let Some(slot) = docs.get_mut(&version) {
                *slot = doc;
            }
        }
    }

    /// Forgets every learnt v1 document (the range changed: Ironic was upgraded or pinned, and
    /// its documents with it); they are learnt again.
    fn forget_v1_documents(&self) {
        if let Ok(mut docs) = self.v1.by_version.lock() {
            for d in docs.values_mut() {
                *d = None;
            }
        }
        self.v1.asked.notify_one();
    }

    pub fn set(&self, info: Option<UpstreamInfo>) {
        if let Ok(mut g) = self.info.write() {
            let range_changed = g.as_ref().map(|i| i.range) != info.as_ref().map(|i| i.range);
            if range_changed {
                self.forget_v1_documents();
            }
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
                // The root document names the old range: forwarded until the next refresh.
                cur.root = None;
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
            .enter(Class::Upkeep, Lane::Api, "version discovery", until)
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
            .map(Arc::from);
        let root = VersionDocument::learn_root(&resp.body).map(Arc::new);
        Ok(UpstreamInfo {
            range,
            server,
            root,
        })
    }

    /// Learns the v1 document of `version` (`GET /v1` at that version, with [`PROBE_HOST`]);
    /// `None` when Ironic did not answer it with one. At the lowest class: while Ironic is
    /// busy, `GET /v1` is forwarded as it always was.
    async fn learn_v1(&self, version: ApiVersion) -> Option<VersionDocument> {
        let mut req = RequestHeader::build("GET", b"/v1", None).ok()?;
        req.insert_header("Host", PROBE_HOST).ok()?;
        req.insert_header("Accept", "application/json").ok()?;
        req.insert_header("User-Agent", "ironic-edge").ok()?;
        req.insert_header(crate::ironic::version::LEGACY_HEADER, version.to_string())
            .ok()?;
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        let permit = self
            .governor
            .enter(Class::Refresh, Lane::Api, "version documents", until)
            .await
            .ok()?;
        let sent = self.client.send(&req, b"").await;
        permit.answered(super::governor::sample_of(&sent));
        let resp = sent.ok()?;
        // The document of exactly that version (an Ironic that negotiated another one, e.g. one
        // downgraded since the range was learnt, is asked again after the next refresh).
        let answered_version = resp
            .header
            .headers
            .get(crate::ironic::version::LEGACY_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(ApiVersion::parse);
        if resp.status() != 200 || answered_version != Some(version) {
            return None;
        }
        VersionDocument::learn_v1(&resp.body)
    }

    /// Learns the asked-for v1 documents: all of them after a refresh, else those missing.
    async fn learn_v1_documents(&self, all: bool) {
        for version in self.state.v1_versions(!all) {
            if let Some(doc) = self.learn_v1(version).await {
                self.state.set_v1_document(version, Some(Arc::new(doc)));
            }
        }
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
                    self.learn_v1_documents(true).await;
                    self.refresh
                }
                Err(e) => {
                    // Keep a known range through an upstream outage: Ironic's range does not
                    // change while it is down, and local answers stay correct meanwhile.
                    if self.state.get().is_none() {
                        log::debug!("upstream version discovery: {e}");
                    } else {
                        log::debug!("upstream version refresh failed: {e}");
                    }
                    if self.state.get().is_some() {
                        self.refresh.min(Duration::from_secs(5))
                    } else {
                        Duration::from_secs(1)
                    }
                }
            };
            let next_refresh = tokio::time::sleep(wait);
            tokio::pin!(next_refresh);
            loop {
                tokio::select! {
                    _ = &mut next_refresh => break,
                    _ = self.state.v1.asked.notified() => {
                        if self.state.get().is_some() {
                            self.learn_v1_documents(false).await;
                        }
                    }
                    _ = shutdown.changed() => return,
                }
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

    fn info(max: u32) -> UpstreamInfo {
        UpstreamInfo {
            range: VersionRange {
                min: ApiVersion::new(1, 1),
                max: ApiVersion::new(1, max),
            },
            server: None,
            root: None,
        }
    }

    fn a_v1_document() -> Arc<VersionDocument> {
        Arc::new(
            VersionDocument::learn_v1(br#"{"id": "v1", "links": [], "media_types": {}}"#).unwrap(),
        )
    }

    #[test]
    fn a_missed_v1_document_is_asked_for_once_and_served_once_learnt() {
        let state = VersionState::default();
        state.set(Some(info(115)));
        let v = ApiVersion::new(1, 68);
        assert!(state.v1_document(v).is_none());
        assert!(state.v1_document(v).is_none());
        assert_eq!(state.v1_versions(true), vec![v]);
        state.set_v1_document(v, Some(a_v1_document()));
        assert!(state.v1_document(v).is_some());
        assert!(state.v1_versions(true).is_empty());
        assert_eq!(state.v1_versions(false), vec![v]);
    }

    #[test]
    fn a_changed_range_forgets_the_v1_documents() {
        let state = VersionState::default();
        state.set(Some(info(115)));
        let v = ApiVersion::new(1, 68);
        state.v1_document(v);
        state.set_v1_document(v, Some(a_v1_document()));
        // A refresh that finds the same range keeps them.
        state.set(Some(info(115)));
        assert!(state.v1_document(v).is_some());
        state.set(Some(info(96)));
        assert!(state.v1_document(v).is_none());
        assert_eq!(state.v1_versions(true), vec![v], "asked for again");
    }

    #[test]
    fn the_v1_documents_asked_for_are_bounded() {
        let state = VersionState::default();
        state.set(Some(info(115)));
        for minor in 1..=115 {
            state.v1_document(ApiVersion::new(1, minor));
        }
        assert_eq!(state.v1_versions(false).len(), MAX_V1_DOCUMENTS);
    }
}
