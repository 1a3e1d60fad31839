//! The node sync: a background service that keeps the node index in Redis fresh from the
//! Ironic API (uuid, name, provision state, fast track, maintenance, token held, agent_url,
//! port MACs), so that lookups Ironic would refuse can be answered at the edge.
//!
//! Cheap for Ironic: one process syncs at a time (a lease in Redis); a round asks only for
//! what changed since the last one (nodes sorted by `updated_at` and by `created_at`, ports
//! by `created_at`, newest first, until older than the watermark: three small requests when
//! nothing changed), and a full round, which also notices deletions, runs rarely. Changes the
//! gateway forwards itself (power and provision actions, node and port edits) refresh the
//! affected node at once.

pub mod api;
pub mod timestamp;

use crate::config::SyncConfig;
use crate::edge::Edge;
use crate::ironic::states::parse_fast_track;
use crate::store::{now_ms, FastTrack, IndexUpdate, IndexedNode};
use api::IronicApi;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Node fields of a full listing; `driver_info` for fast track, `driver_internal_info` for the
/// token. (Ironic refuses `updated_at`/`created_at` in `fields`: the listings of changed nodes
/// use `/v1/nodes/detail`, which has them, and only ever return the few changed nodes.)
pub const NODE_FIELDS: &str = "uuid,name,provision_state,driver_info,maintenance,\
    driver_internal_info,target_power_state,target_provision_state";
pub const PORT_FIELDS: &str = "uuid,address,node_uuid,updated_at,created_at";

/// The listings a round makes: `(collection, path, fields)`.
const NODES_FULL: (&str, &str, Option<&str>) = ("nodes", "/v1/nodes", Some(NODE_FIELDS));
const NODES_CHANGED: (&str, &str, Option<&str>) = ("nodes", "/v1/nodes/detail", None);
const PORTS: (&str, &str, Option<&str>) = ("ports", "/v1/ports", Some(PORT_FIELDS));

/// Changes are looked for this far before the previous round started (by Ironic's clock), for
/// clock skew between Ironic hosts and for transactions that commit late.
const OVERLAP_SECONDS: i64 = 30;

/// Reads one node of the API's answer into an index entry.
pub(crate) fn indexed_node(v: &Value) -> Option<IndexedNode> {
    let uuid = v.get("uuid")?.as_str()?.to_string();
    let fast_track = match v.get("driver_info").and_then(|d| d.get("fast_track")) {
        None | Some(Value::Null) => FastTrack::Default,
        Some(ft) => match parse_fast_track(ft) {
            Some(true) => FastTrack::On,
            Some(false) => FastTrack::Off,
            None => FastTrack::Invalid,
        },
    };
    let dii = v.get("driver_internal_info");
    Some(IndexedNode {
        uuid,
        name: v.get("name").and_then(|n| n.as_str()).map(str::to_string),
        provision_state: v.get("provision_state")?.as_str()?.to_string(),
        fast_track,
        maintenance: v
            .get("maintenance")
            .and_then(|m| m.as_bool())
            .unwrap_or(false),
        token_held: dii
            .and_then(|d| d.get("agent_secret_token"))
            .is_some_and(|t| !t.is_null()),
        agent_url: dii
            .and_then(|d| d.get("agent_url"))
            .and_then(|u| u.as_str())
            .map(str::to_string),
        in_transition: ["target_power_state", "target_provision_state"]
            .iter()
            .any(|f| v.get(*f).is_some_and(|t| !t.is_null())),
        read_at_ms: 0,
    })
}

/// Reads one node of the API's answer, read from Ironic at `read_at_ms`, into an index entry.
fn indexed_node_read_at(v: &Value, read_at_ms: u64) -> Option<IndexedNode> {
    indexed_node(v).map(|n| IndexedNode { read_at_ms, ..n })
}

fn port_entry(v: &Value) -> Option<(String, String)> {
    let mac = v.get("address")?.as_str()?.to_ascii_lowercase();
    let node = v.get("node_uuid")?.as_str()?.to_string();
    Some((mac, node))
}

/// The newest of `updated_at`/`created_at`, in seconds.
fn changed_at(v: &Value) -> Option<i64> {
    let ts = |k: &str| {
        v.get(k)
            .and_then(|t| t.as_str())
            .and_then(timestamp::seconds)
    };
    ts("updated_at").max(ts("created_at"))
}

/// Whether an index whose last round started at `synced_at_ms` is fresh enough to answer
/// from: rounds start every `interval_seconds` and take a moment (longer on a loaded Ironic),
/// so two intervals and a 5 s margin.
pub fn index_is_fresh(cfg: &SyncConfig, synced_at_ms: u64) -> bool {
    index_is_fresh_at(cfg, synced_at_ms, now_ms())
}

/// [`index_is_fresh`] at `now_ms` (Unix ms).
pub fn index_is_fresh_at(cfg: &SyncConfig, synced_at_ms: u64, now_ms: u64) -> bool {
    let fresh_ms = staleness_bound(cfg).as_millis() as u64;
    now_ms.saturating_sub(synced_at_ms) <= fresh_ms
}

/// Whether an index too old to answer from (see [`index_is_fresh_at`]) still tells the load
/// governor what a heartbeat is likely for: while a boot storm slows the rounds, what Ironic
/// said of a node at most a full-round interval ago (its provision state changes only through
/// an action, and one forwarded through the gateway unsettles the node's session) ranks its
/// heartbeat better than "may drive a step". A wrong guess only changes when the heartbeat is
/// sent (a step's heartbeat kept for the relay instead of held), never an answer.
pub fn index_guides_class_at(cfg: &SyncConfig, synced_at_ms: u64, now_ms: u64) -> bool {
    let bound = Duration::from_secs(cfg.full_resync_seconds).max(staleness_bound(cfg));
    now_ms.saturating_sub(synced_at_ms) <= bound.as_millis() as u64
}

/// How old the index may be and still answer: two intervals and 5 s.
pub fn staleness_bound(cfg: &SyncConfig) -> Duration {
    Duration::from_secs(2 * cfg.interval_seconds + 5)
}

/// Whether what this process knows (the generation it wrote, or the one its watermarks
/// belong to) is of the index Redis holds (`held`: `None` when Redis holds no complete index).
/// An empty generation (watermarks of a gateway without generations) is of none.
fn same_generation(known: Option<&str>, held: Option<&str>) -> bool {
    matches!((known, held), (Some(k), Some(h)) if !k.is_empty() && k == h)
}

#[derive(Default)]
struct SyncState {
    /// Where the next round's listings of changes start (seconds, Ironic's clock): when the
    /// previous round started (or, if Ironic sends no `Date`, the newest change it saw).
    node_mark: Option<i64>,
    port_mark: Option<i64>,
    last_full: Option<Instant>,
    last_round: Option<Instant>,
    /// Set when a forwarded request deleted something: the next round is a full one.
    full_wanted: bool,
    /// The index generation this process wrote (or resumed): incremental rounds carry on only
    /// while Redis still holds it; anything else (Redis lost its data, another process
    /// rebuilt the index) means a full round.
    generation: Option<String>,
}

/// Where the sync resumes, shared through the store with the process that takes over.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct SyncMarks {
    node_mark: i64,
    port_mark: i64,
    /// Unix milliseconds of the last full round.
    last_full_ms: u64,
    /// The index generation these watermarks belong to (marks of another generation, or of
    /// an older gateway without one, are not resumed from).
    #[serde(default)]
    generation: String,
}

/// What a forwarded request changed, as far as the index is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncEvent {
    /// A node was changed (an action, an edit): refresh it now.
    Refresh(String),
    /// Something was created: an incremental round now finds it.
    RoundNow,
    /// Something was deleted: only a full round notices.
    FullRound,
}

/// Which index event a forwarded, successful request means (`None`: nothing changed).
pub fn event_for(method: &str, path: &str) -> Option<SyncEvent> {
    if matches!(method, "GET" | "HEAD" | "OPTIONS") {
        return None;
    }
    let path = path.trim_end_matches('/');
    if let Some(rest) = path.strip_prefix("/v1/nodes/") {
        let ident = rest.split('/').next().filter(|i| !i.is_empty())?;
        let whole_node = !rest.contains('/');
        return Some(if method == "DELETE" && whole_node {
            SyncEvent::FullRound
        } else {
            SyncEvent::Refresh(ident.to_string())
        });
    }
    match path {
        "/v1/nodes" | "/v1/ports" => Some(SyncEvent::RoundNow),
        p if p.starts_with("/v1/ports/") => Some(if method == "DELETE" {
            SyncEvent::FullRound
        } else {
            SyncEvent::RoundNow
        }),
        _ => None,
    }
}

pub struct NodeSync {
    edge: Arc<Edge>,
    api: IronicApi,
    cfg: SyncConfig,
    owner: String,
    state: Mutex<SyncState>,
    events: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<SyncEvent>>,
}

impl NodeSync {
    pub fn new(edge: Arc<Edge>, events: tokio::sync::mpsc::Receiver<SyncEvent>) -> Self {
        let cfg = edge.config.sync.clone();
        NodeSync {
            api: IronicApi::new(edge.clone(), &cfg.auth),
            owner: crate::edge::request_id(),
            edge,
            cfg,
            state: Mutex::new(SyncState::default()),
            events: tokio::sync::Mutex::new(events),
        }
    }

    async fn on_event(&self, event: SyncEvent) {
        match event {
            SyncEvent::Refresh(ident) => self.refresh_node(&ident).await,
            SyncEvent::RoundNow => self.with_state(|s| s.last_round = None).unwrap_or(()),
            SyncEvent::FullRound => self.want_full_round(),
        }
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut SyncState) -> T) -> Option<T> {
        self.state.lock().ok().map(|mut s| f(&mut s))
    }

    /// Asks for a full round next time (something may have been deleted).
    pub fn want_full_round(&self) {
        self.with_state(|s| s.full_wanted = true);
    }

    /// Whether the index in Redis is still the generation this process wrote: `false` when
    /// Redis lost it (a flush, a restart without persistence, an eviction) or someone else
    /// rebuilt it, and then only a full round may vouch for it again.
    async fn index_is_ours(&self, ours: Option<&str>) -> Result<bool, String> {
        let Some(ours) = ours else {
            return Ok(false);
        };
        let held = self
            .edge
            .store
            .index
            .generation()
            .await
            .map_err(|e| e.to_string())?;
        if !same_generation(Some(ours), held.as_deref()) {
            log::warn!(
                "node sync: the index in Redis is not the one this process wrote (Redis lost \
                 data?): a full round rebuilds it, and it is not used until then"
            );
            return Ok(false);
        }
        Ok(true)
    }

    /// One sync round; `Ok(true)` if it was a full one.
    pub async fn round(&self) -> Result<bool, String> {
        // Rounds are due `interval` after the previous one *started*: counted from its end,
        // rounds slowed by a boot storm started more than the freshness bound (2 x interval
        // + 5 s from a round's start) apart, and the index went stale between them.
        let began = Instant::now();
        let (due_full, ours) = self
            .with_state(|s| {
                let due = s.full_wanted
                    || s.node_mark.is_none()
                    || s.last_full.is_none_or(|t| {
                        t.elapsed() >= Duration::from_secs(self.cfg.full_resync_seconds)
                    });
                (due, s.generation.clone())
            })
            .unwrap_or((true, None));
        let full = due_full || !self.index_is_ours(ours.as_deref()).await?;
        // A full round writes a new generation; an incremental one carries on this process's.
        let generation = if full {
            crate::edge::request_id()
        } else {
            ours.unwrap_or_default()
        };
        let started = now_ms();
        let page = self.cfg.page_size;
        // Listings of changes are mostly empty: small pages, so that a quiet round costs Ironic
        // a few documents, not `page_size` full ones (`/v1/nodes/detail` is about 3 KB a node).
        let changed_page = page.min(50);
        // Ironic's clock when the round started: the `Date` of its first answer.
        let mut ironic_start = None;
        // Each listed document is read into what the index keeps (and the newest change it
        // shows) as its page arrives: the round never holds Ironic's documents, only entries.
        let node_of = |v: &Value| Some((indexed_node_read_at(v, started), changed_at(v)));
        let port_of = |v: &Value| Some((port_entry(v), changed_at(v)));
        let (nodes, ports, node_mark, port_mark) = if full {
            let listing = self
                .api
                .list(NODES_FULL, None, page, false, node_of)
                .await?;
            let nodes = listing.items;
            ironic_start = listing.started;
            // Without a `Date` from Ironic, the next round resumes from the newest change seen
            // before the listing (the light full listing carries no timestamps): a probe.
            let mut probe = None;
            if ironic_start.is_none() {
                for key in ["updated_at", "created_at"] {
                    let listing = self
                        .api
                        .list(NODES_CHANGED, Some((key, None)), 1, true, changed_at)
                        .await?;
                    probe = probe.max(listing.items.into_iter().max());
                }
            }
            let ports = self
                .api
                .list(PORTS, None, page, false, port_of)
                .await?
                .items;
            (nodes, ports, probe, None)
        } else {
            let (nm, pm) = self
                .with_state(|s| (s.node_mark, s.port_mark))
                .unwrap_or_default();
            let since = |m: Option<i64>| m.map(|m| m - OVERLAP_SECONDS);
            let mut nodes = Vec::new();
            let mut ports = Vec::new();
            for key in ["updated_at", "created_at"] {
                let listing = self
                    .api
                    .list(
                        NODES_CHANGED,
                        Some((key, since(nm))),
                        changed_page,
                        false,
                        node_of,
                    )
                    .await?;
                nodes.extend(listing.items);
                ironic_start = ironic_start.or(listing.started);
            }
            // New ports only: a port is rarely edited in place (the gateway's own forwarded
            // edits refresh at once; others wait for the full round), and never-edited ports
            // have no `updated_at` to page by.
            ports.extend(
                self.api
                    .list(
                        PORTS,
                        Some(("created_at", since(pm))),
                        changed_page,
                        false,
                        port_of,
                    )
                    .await?
                    .items,
            );
            (nodes, ports, nm, pm)
        };
        let newest = |changes: &mut dyn Iterator<Item = Option<i64>>, old: Option<i64>| {
            changes.flatten().max().max(old)
        };
        // Resuming from the newest change seen would re-list the last burst of changes every
        // round until a newer one comes; from the round's start, only the overlap is re-listed.
        let (nm, pm) = match ironic_start {
            Some(t) => (Some(t), Some(t)),
            None => (
                newest(&mut nodes.iter().map(|n| n.1), node_mark),
                newest(&mut ports.iter().map(|p| p.1), port_mark),
            ),
        };
        let mut update = IndexUpdate {
            nodes: nodes.into_iter().filter_map(|n| n.0).collect(),
            ports: ports.into_iter().filter_map(|p| p.0).collect(),
            synced_at_ms: Some(started),
            generation: Some(generation.clone()),
            full_round: full,
            ..IndexUpdate::default()
        };
        dedupe(&mut update);
        if full {
            let (old_nodes, old_macs) = self
                .edge
                .store
                .index
                .members()
                .await
                .map_err(|e| e.to_string())?;
            let seen_nodes: HashSet<&str> = update.nodes.iter().map(|n| n.uuid.as_str()).collect();
            let seen_macs: HashSet<&str> = update.ports.iter().map(|p| p.0.as_str()).collect();
            update.removed_nodes = old_nodes
                .into_iter()
                .filter(|u| !seen_nodes.contains(u.as_str()))
                .collect();
            update.removed_macs = old_macs
                .into_iter()
                .filter(|m| !seen_macs.contains(m.as_str()))
                .collect();
        }
        if let Err(e) = self.edge.store.index.write(&update).await {
            // Whatever the index holds now, only a full round vouches for it again.
            self.with_state(|s| s.generation = None);
            return Err(e.to_string());
        }
        let last_full_ms = self
            .with_state(|s| {
                s.node_mark = nm.or(Some(0));
                s.port_mark = pm.or(Some(0));
                s.last_round = Some(began);
                s.generation = Some(generation.clone());
                if full {
                    s.last_full = Some(Instant::now());
                    s.full_wanted = false;
                }
                s.last_full
                    .map(|t| now_ms().saturating_sub(t.elapsed().as_millis() as u64))
            })
            .flatten();
        let marks = SyncMarks {
            node_mark: nm.unwrap_or(0),
            port_mark: pm.unwrap_or(0),
            last_full_ms: last_full_ms.unwrap_or(started),
            generation,
        };
        if let Ok(json) = serde_json::to_string(&marks) {
            if let Err(e) = self.edge.store.index.put_sync_marks(&json).await {
                log::debug!("node sync: watermarks not shared: {e}");
            }
        }
        log::debug!(
            "node sync: {} round, {} nodes and {} ports written, {} nodes and {} ports removed",
            if full { "full" } else { "incremental" },
            update.nodes.len(),
            update.ports.len(),
            update.removed_nodes.len(),
            update.removed_macs.len()
        );
        Ok(full)
    }

    /// Refreshes one node (and its ports) now: after the gateway forwarded a change to it.
    pub async fn refresh_node(&self, ident: &str) {
        let read_at = now_ms();
        match self.api.node_with_ports(ident).await {
            Ok(Some((node, ports))) => {
                let Some(n) = indexed_node_read_at(&node, read_at) else {
                    return;
                };
                let update = IndexUpdate {
                    ports: ports.iter().filter_map(port_entry).collect(),
                    nodes: vec![n],
                    ..IndexUpdate::default()
                };
                if let Err(e) = self.edge.store.index.write(&update).await {
                    log::debug!("node refresh of {ident}: {e}");
                }
            }
            // Gone (deleted): the next round is a full one, which drops it and its ports.
            Ok(None) => self.want_full_round(),
            Err(e) => log::debug!("node refresh of {ident}: {e}"),
        }
    }

    /// On taking the lease over: carries on from the previous syncing process's watermarks if
    /// its index is fresh, so that a take-over costs Ironic an incremental round, not a full
    /// one (the next full round comes when the previous one's is due). What Redis holds
    /// decides, never this process's memory: the watermarks must belong to the generation of
    /// the complete index Redis holds now.
    async fn resume_from_shared_marks(&self) {
        match self.edge.store.index.synced_at().await {
            Ok(Some(at)) if index_is_fresh(&self.cfg, at) => {}
            _ => return,
        }
        let Ok(Some(generation)) = self.edge.store.index.generation().await else {
            return;
        };
        let Some(marks) = self
            .edge
            .store
            .index
            .sync_marks()
            .await
            .ok()
            .flatten()
            .and_then(|j| serde_json::from_str::<SyncMarks>(&j).ok())
        else {
            return;
        };
        if !same_generation(Some(&marks.generation), Some(&generation)) {
            return;
        }
        let full_age = Duration::from_millis(now_ms().saturating_sub(marks.last_full_ms));
        self.with_state(|s| {
            s.node_mark = Some(marks.node_mark);
            s.port_mark = Some(marks.port_mark);
            s.last_full = Instant::now().checked_sub(full_age);
            s.generation = Some(generation);
        });
        log::info!("node sync: resuming from the previous process's watermarks");
    }

    fn round_due(&self) -> bool {
        self.with_state(|s| {
            s.full_wanted
                || s.last_round
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(self.cfg.interval_seconds))
        })
        .unwrap_or(true)
    }
}

/// Keeps the last entry per node uuid and per MAC (a node changed twice within a round
/// appears in both the `updated_at` and the `created_at` listings).
/// Hands the memory a full round freed back to the system. A full round holds every node
/// and port of Ironic at once (the listings' JSON, the entries, the commands written): with
/// 10,000 nodes the process stayed at about 61 MiB after it (its peak), of which it used a
/// fraction, as glibc keeps freed memory in its arenas for reuse. Trimming every full round
/// (10 minutes by default) costs a few milliseconds.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free pages of glibc's heaps to the system; it is
    // thread-safe (it takes each arena's lock) and touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn dedupe(u: &mut IndexUpdate) {
    let mut seen = HashSet::new();
    u.nodes.reverse();
    u.nodes.retain(|n| seen.insert(n.uuid.clone()));
    let mut seen = HashSet::new();
    u.ports.reverse();
    u.ports.retain(|p| seen.insert(p.0.clone()));
}

#[async_trait]
impl BackgroundService for NodeSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if !self.cfg.enabled {
            return;
        }
        // The lease is renewed every tick, well inside its lifetime; a process that dies
        // stops renewing, and another takes over within `lease_seconds` plus a tick.
        let lease = Duration::from_secs(self.cfg.lease_seconds);
        let tick = (lease / 3).clamp(Duration::from_millis(200), Duration::from_secs(1));
        let mut leading = false;
        let mut events = self.events.lock().await;
        let mut lag_read: Option<Instant> = None;
        loop {
            // The lag every process's agent path sees (`ironic_edge_sync_lag_seconds`): the
            // index's marker, mostly answered by the in-process view; once a second at most,
            // however many events wake the loop.
            if lag_read.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                lag_read = Some(Instant::now());
                if let Ok(at) = self.edge.store.index.synced_at().await {
                    self.edge.metrics.index_synced_at(at);
                }
            }
            let held = matches!(
                self.edge.store.lease.hold("sync", &self.owner, lease).await,
                Ok(true)
            );
            if held != leading {
                log::info!(
                    "node sync: {}",
                    if held {
                        "this process syncs now"
                    } else {
                        "another process syncs"
                    }
                );
                self.with_state(|s| *s = SyncState::default());
                if held {
                    self.resume_from_shared_marks().await;
                }
                leading = held;
            }
            if held && self.edge.versions.get().is_some() && self.round_due() {
                // A full round of a large fleet outlasts the lease: keep renewing it meanwhile,
                // or another process takes over mid-round and starts a full round of its own.
                let renew = async {
                    loop {
                        tokio::time::sleep(tick).await;
                        let _ = self.edge.store.lease.hold("sync", &self.owner, lease).await;
                    }
                };
                let began = Instant::now();
                let outcome = tokio::select! {
                    r = self.round() => r,
                    _ = renew => Ok(false),
                };
                self.edge
                    .metrics
                    .sync_round(crate::metrics::SyncRound::of(&outcome), began.elapsed());
                match outcome {
                    // The round's buffers are dropped by now.
                    Ok(true) => release_freed_memory(),
                    Ok(false) => {}
                    Err(e) => {
                        log::warn!("node sync round failed: {e}");
                        self.with_state(|s| s.last_round = Some(Instant::now()));
                        // A full round that failed may have listed everything first.
                        release_freed_memory();
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                Some(event) = events.recv() => {
                    // Refreshes are idempotent writes: every process applies its own; round
                    // requests only matter to the process that syncs.
                    if held || matches!(event, SyncEvent::Refresh(_)) {
                        self.on_event(event).await;
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn node_entry_from_the_api() {
        let v = json!({"uuid": "u1", "name": "n1", "provision_state": "manageable",
            "driver_info": {"fast_track": "true", "ipmi_password": "******"}, "maintenance": false,
            "driver_internal_info": {"agent_secret_token": "******", "agent_url": "https://a:9999"}});
        let n = indexed_node(&v).unwrap();
        assert_eq!(n.fast_track, FastTrack::On);
        assert!(n.token_held);
        assert_eq!(n.agent_url.as_deref(), Some("https://a:9999"));
        let v = json!({"uuid": "u2", "name": null, "provision_state": "clean wait",
            "driver_info": {"fast_track": "perhaps"}, "maintenance": true, "driver_internal_info": {}});
        let n = indexed_node(&v).unwrap();
        assert_eq!(
            (n.fast_track, n.token_held, n.maintenance),
            (FastTrack::Invalid, false, true)
        );
        let v = json!({"uuid": "u3", "provision_state": "active", "driver_info": {}});
        assert_eq!(indexed_node(&v).unwrap().fast_track, FastTrack::Default);
        assert!(indexed_node(&json!({"uuid": "u4"})).is_none());
    }

    #[test]
    fn forwarded_changes_become_events() {
        let refresh = |i: &str| Some(SyncEvent::Refresh(i.to_string()));
        assert_eq!(event_for("PUT", "/v1/nodes/n1/states/power"), refresh("n1"));
        assert_eq!(
            event_for("PUT", "/v1/nodes/n1/states/provision"),
            refresh("n1")
        );
        assert_eq!(event_for("PATCH", "/v1/nodes/n1"), refresh("n1"));
        assert_eq!(
            event_for("DELETE", "/v1/nodes/n1"),
            Some(SyncEvent::FullRound)
        );
        assert_eq!(event_for("DELETE", "/v1/nodes/n1/traits/x"), refresh("n1"));
        assert_eq!(event_for("POST", "/v1/nodes"), Some(SyncEvent::RoundNow));
        assert_eq!(event_for("POST", "/v1/ports"), Some(SyncEvent::RoundNow));
        assert_eq!(
            event_for("PATCH", "/v1/ports/p1"),
            Some(SyncEvent::RoundNow)
        );
        assert_eq!(
            event_for("DELETE", "/v1/ports/p1"),
            Some(SyncEvent::FullRound)
        );
        assert_eq!(event_for("GET", "/v1/nodes/n1"), None);
        assert_eq!(event_for("POST", "/v1/lookup"), None);
        assert_eq!(event_for("POST", "/v1/heartbeat/n1"), None);
    }

    #[test]
    fn the_generation_written_is_the_one_held() {
        assert!(same_generation(Some("g1"), Some("g1")));
    }

    #[test]
    fn an_index_redis_lost_is_not_the_one_written() {
        assert!(!same_generation(Some("g1"), None));
    }

    #[test]
    fn an_index_rebuilt_by_another_process_is_not_the_one_written() {
        assert!(!same_generation(Some("g1"), Some("g2")));
    }

    #[test]
    fn a_process_that_wrote_nothing_has_no_generation() {
        assert!(!same_generation(None, Some("g1")));
        assert!(!same_generation(None, None));
    }

    #[test]
    fn watermarks_without_a_generation_are_of_none() {
        assert!(!same_generation(Some(""), Some("")));
        assert!(!same_generation(Some(""), Some("g1")));
    }

    #[test]
    fn old_watermarks_read_without_a_generation() {
        let old = r#"{"node_mark": 1, "port_mark": 2, "last_full_ms": 3}"#;
        let marks: SyncMarks = serde_json::from_str(old).unwrap();
        assert_eq!(marks.generation, "");
    }

    #[test]
    fn a_stale_index_guides_the_class_for_a_full_round_interval() {
        let cfg = SyncConfig {
            interval_seconds: 10,
            full_resync_seconds: 600,
            ..SyncConfig::default()
        };
        let synced = 1_000_000;
        for (age_s, fresh, guides) in [
            (0, true, true),
            (25, true, true),
            (26, false, true),
            (600, false, true),
            (601, false, false),
        ] {
            let now = synced + age_s * 1000;
            assert_eq!(
                index_is_fresh_at(&cfg, synced, now),
                fresh,
                "{age_s} s: fresh"
            );
            assert_eq!(
                index_guides_class_at(&cfg, synced, now),
                guides,
                "{age_s} s: class"
            );
        }
        // A full-round interval shorter than the freshness bound never guides less than it.
        let short = SyncConfig {
            full_resync_seconds: 1,
            ..cfg
        };
        assert!(index_guides_class_at(&short, synced, synced + 25_000));
    }

    #[test]
    fn ports_are_lower_cased() {
        let p = port_entry(&json!({"address": "52:54:00:AA:bb:01", "node_uuid": "u1"})).unwrap();
        assert_eq!(p, ("52:54:00:aa:bb:01".to_string(), "u1".to_string()));
    }

    #[test]
    fn dedupe_keeps_the_last() {
        let node = |state: &str| IndexedNode {
            uuid: "u".into(),
            name: None,
            provision_state: state.into(),
            fast_track: FastTrack::Default,
            maintenance: false,
            token_held: false,
            agent_url: None,
            in_transition: false,
            read_at_ms: 0,
        };
        let mut u = IndexUpdate {
            nodes: vec![node("enroll"), node("manageable")],
            ports: vec![("m".into(), "a".into()), ("m".into(), "b".into())],
            ..IndexUpdate::default()
        };
        dedupe(&mut u);
        assert_eq!(u.nodes.len(), 1);
        assert_eq!(u.nodes[0].provision_state, "manageable");
        assert_eq!(u.ports, vec![("m".to_string(), "b".to_string())]);
    }
}
