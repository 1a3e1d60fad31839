//! `GET /agents` on the ops listener: what the edge knows of each node's agent, read from the
//! store the agent path writes (node records, the node index, the relay's kept heartbeats),
//! never a copy of it. Never the agent token, its hash or the heartbeat fingerprint.
//!
//! `?node=<uuid>`: one node. Otherwise a page over the node index, by uuid: `limit` (100, at
//! most 1000) nodes after `marker` (the last uuid of the previous page). The index is a Redis
//! hash, unordered: a page scans it in slices and keeps only the `limit` smallest uuids after
//! the marker ([`Page`]), so what a request holds is bounded by its page, at the price of
//! reading the whole hash for every page (an operator's listing, not a hot path).

use crate::agent::session::{state, SessionState};
use crate::edge::Edge;
use crate::store::{IndexedNode, NodeRecord, ReadStep, StoreResult};
use serde_json::{json, Value};
use std::collections::BinaryHeap;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Fields asked of Redis per slice of the index scan.
const SCAN_COUNT: usize = 500;

/// What was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AgentsQuery {
    One(String),
    Page {
        limit: usize,
        marker: Option<String>,
    },
}

fn uuid_param(name: &str, value: &str) -> Result<String, String> {
    if value.len() == 36 && crate::ironic::ident::is_uuid_like(value) {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(format!("{name} must be a node UUID"))
    }
}

/// The query string of `GET /agents`. Pure.
pub(crate) fn parse_query(query: Option<&str>) -> Result<AgentsQuery, String> {
    let (mut node, mut limit, mut marker) = (None, None, None);
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "node" if node.is_none() => node = Some(uuid_param("node", &v)?),
            "marker" if marker.is_none() => marker = Some(uuid_param("marker", &v)?),
            "limit" if limit.is_none() => {
                let n: usize = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| format!("limit must be 1 to {MAX_LIMIT}"))?;
                limit = Some(n);
            }
            "node" | "marker" | "limit" => return Err(format!("{k} given twice")),
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    match node {
        Some(_) if limit.is_some() || marker.is_some() => {
            Err("node does not go with limit or marker".into())
        }
        Some(uuid) => Ok(AgentsQuery::One(uuid)),
        None => Ok(AgentsQuery::Page {
            limit: limit.unwrap_or(DEFAULT_LIMIT),
            marker,
        }),
    }
}

/// The page being gathered: the `limit` smallest uuids after `marker`, seen in any order, in
/// memory bounded by `limit`.
pub(crate) struct Page {
    limit: usize,
    marker: Option<String>,
    /// A max-heap: its top is the first to go when a smaller one comes.
    kept: BinaryHeap<String>,
}

impl Page {
    pub(crate) fn new(limit: usize, marker: Option<String>) -> Self {
        Page {
            limit,
            marker,
            kept: BinaryHeap::with_capacity(limit + 1),
        }
    }

    pub(crate) fn offer(&mut self, uuid: String) {
        if self.marker.as_ref().is_some_and(|m| uuid <= *m) {
            return;
        }
        if self.kept.len() == self.limit && self.kept.peek().is_some_and(|top| uuid >= *top) {
            return;
        }
        // A hash scan may return a field twice (a rehash while it runs).
        if self.kept.iter().any(|u| *u == uuid) {
            return;
        }
        self.kept.push(uuid);
        if self.kept.len() > self.limit {
            self.kept.pop();
        }
    }

    /// The page's uuids in order, and the marker of the next page (`None`: this one is the
    /// last).
    pub(crate) fn finish(self) -> (Vec<String>, Option<String>) {
        let full = self.kept.len() == self.limit;
        let uuids = self.kept.into_sorted_vec();
        let next = full.then(|| uuids.last().cloned()).flatten();
        (uuids, next)
    }
}

fn date(ms: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

fn opt_date(ms: Option<u64>) -> Value {
    ms.map_or(Value::Null, |ms| Value::String(date(ms)))
}

/// What is known of a node's agent, as shown. Pure: no token, no hash, no fingerprint.
/// `kept_ttl_ms` is what the node's kept heartbeat has left to live, of `relay_ttl_ms`.
pub(crate) fn agent_doc(
    uuid: &str,
    record: Option<&NodeRecord>,
    indexed: Option<&IndexedNode>,
    kept_ttl_ms: Option<u64>,
    edge_accepted_ms: Option<u64>,
    relay_ttl_ms: u64,
    now_ms: u64,
) -> Value {
    let session = match state(record, indexed) {
        SessionState::Unknown => "unknown",
        SessionState::Unsettled => "unsettled",
        SessionState::Known => "known",
    };
    let kept = kept_ttl_ms.map(|left| {
        // Each kept heartbeat sets its key afresh for the relay's time to live.
        let kept_at = now_ms.saturating_sub(relay_ttl_ms.saturating_sub(left));
        json!({"kept_at": date(kept_at)})
    });
    json!({
        "uuid": uuid,
        "session": session,
        "token_known": record.is_some_and(|r| r.token_hash.is_some()),
        "token_seen_at": opt_date(record.and_then(|r| r.token_seen_ms)),
        "callback_url": record.and_then(|r| r.agent_url.as_deref()),
        "last_heartbeat_edge_accepted_at": opt_date(edge_accepted_ms),
        "last_heartbeat_ironic_accepted_at":
            opt_date(record.and_then(|r| r.last_heartbeat.as_ref()).map(|(_, at)| *at)),
        "heartbeat_kept_for_relay": kept,
        "unsettled_since": opt_date(record.and_then(|r| r.unsettled_since_ms)),
        "index": indexed.map(|n| json!({
            "provision_state": n.provision_state,
            "maintenance": n.maintenance,
            "token_held": n.token_held,
            "in_transition": n.in_transition,
            "read_at": opt_date((n.read_at_ms > 0).then_some(n.read_at_ms)),
        })),
    })
}

/// What the store knows of these nodes, read in one round trip: the index entries (and
/// whether the index is complete), the records, the kept heartbeats.
async fn docs(edge: &Edge, uuids: &[String]) -> StoreResult<(Vec<Value>, Option<u64>)> {
    let store = &edge.store;
    let mut step = ReadStep::new();
    let entries = store.index.read_entries(&mut step, uuids);
    let per_node: Vec<_> = uuids
        .iter()
        .map(|u| {
            (
                store.records.read_get(&mut step, u),
                store.relay.read_kept(&mut step, u),
            )
        })
        .collect();
    let mut replies = store.read(step).await?;
    let entries = replies.take(entries)?;
    let relay_ttl_ms = edge.config.heartbeat.relay_ttl_seconds.saturating_mul(1000);
    let now = crate::store::now_ms();
    let mut out = Vec::with_capacity(uuids.len());
    for ((uuid, (record, kept)), indexed) in uuids.iter().zip(per_node).zip(entries.nodes) {
        let (record, kept) = (replies.take(record)?, replies.take(kept)?);
        out.push(agent_doc(
            uuid,
            record.as_ref(),
            indexed.as_ref(),
            kept,
            edge.accepted_at_edge.last(uuid),
            relay_ttl_ms,
            now,
        ));
    }
    Ok((out, entries.synced_at_ms))
}

/// The answer to `GET /agents?<query>`: status and JSON document.
pub(crate) async fn answer(edge: &Edge, query: Option<&str>) -> (u16, Value) {
    let query = match parse_query(query) {
        Ok(q) => q,
        Err(e) => return (400, json!({"error": e})),
    };
    let result = match query {
        AgentsQuery::One(uuid) => one(edge, uuid).await,
        AgentsQuery::Page { limit, marker } => page(edge, limit, marker).await,
    };
    result.unwrap_or_else(|e| (503, json!({"error": e.to_string()})))
}

async fn one(edge: &Edge, uuid: String) -> StoreResult<(u16, Value)> {
    let (mut docs, _) = docs(edge, std::slice::from_ref(&uuid)).await?;
    let doc = docs.pop().unwrap_or(Value::Null);
    let nothing = doc["session"] == "unknown"
        && doc["index"].is_null()
        && doc["heartbeat_kept_for_relay"].is_null()
        && doc["last_heartbeat_edge_accepted_at"].is_null();
    Ok(if nothing {
        (
            404,
            json!({"error": format!("nothing known of node {uuid}")}),
        )
    } else {
        (200, doc)
    })
}

async fn page(edge: &Edge, limit: usize, marker: Option<String>) -> StoreResult<(u16, Value)> {
    let mut page = Page::new(limit, marker);
    let mut cursor = 0;
    loop {
        let (next, uuids) = edge.store.index.scan_nodes(cursor, SCAN_COUNT).await?;
        for u in uuids {
            page.offer(u);
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let (uuids, next_marker) = page.finish();
    let (agents, synced_at) = docs(edge, &uuids).await?;
    Ok((
        200,
        json!({
            "agents": agents,
            "limit": limit,
            "next_marker": next_marker,
            "index": {"complete": synced_at.is_some(), "synced_at": opt_date(synced_at)},
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123";

    #[test]
    fn queries() {
        let page = |limit, marker: Option<&str>| -> Result<AgentsQuery, ()> {
            Ok(AgentsQuery::Page {
                limit,
                marker: marker.map(str::to_string),
            })
        };
        let cases: Vec<(Option<String>, Result<AgentsQuery, ()>)> = vec![
            (None, page(100, None)),
            (
                Some(format!("node={}", A.to_uppercase())),
                Ok(AgentsQuery::One(A.into())),
            ),
            (Some(format!("limit=5&marker={A}")), page(5, Some(A))),
            (Some("limit=1000".into()), page(1000, None)),
            (Some("limit=0".into()), Err(())),
            (Some("limit=1001".into()), Err(())),
            (Some("limit=x".into()), Err(())),
            (Some("node=node-1".into()), Err(())),
            (Some("marker=abc".into()), Err(())),
            (Some(format!("node={A}&limit=5")), Err(())),
            (Some("limit=5&limit=6".into()), Err(())),
            (Some("detail=true".into()), Err(())),
        ];
        for (q, want) in cases {
            assert_eq!(parse_query(q.as_deref()).map_err(|_| ()), want, "{q:?}");
        }
    }

    #[test]
    fn a_page_keeps_the_smallest_after_the_marker_in_any_order() {
        let uuids: Vec<String> = (0..50).map(|i| format!("{i:02}")).collect();
        let mut shuffled = uuids.clone();
        shuffled.reverse();
        shuffled.swap(3, 40);
        shuffled.push("07".into()); // seen twice
        let cases = [
            (10, None, 0..10, Some("09")),
            (10, Some("09"), 10..20, Some("19")),
            (10, Some("44"), 45..50, None),
            (10, Some("49"), 50..50, None),
            (50, None, 0..50, Some("49")),
        ];
        for (limit, marker, want, next) in cases {
            let mut page = Page::new(limit, marker.map(str::to_string));
            for u in &shuffled {
                page.offer(u.clone());
                assert!(page.kept.len() <= limit);
            }
            let (got, next_marker) = page.finish();
            assert_eq!(got, uuids[want].to_vec(), "{limit} after {marker:?}");
            assert_eq!(next_marker.as_deref(), next, "{limit} after {marker:?}");
        }
    }

    fn record() -> NodeRecord {
        NodeRecord {
            token_hash: Some("secret-hash".into()),
            agent_url: Some("https://10.0.0.5:9999".into()),
            last_heartbeat: Some(("secret-fingerprint".into(), 1_700_000_000_000)),
            token_seen_ms: Some(1_699_999_990_000),
            unsettled_since_ms: None,
        }
    }

    #[test]
    fn a_known_agent_shows_what_the_edge_knows_and_no_secret() {
        let now = 1_700_000_100_000;
        let doc = agent_doc(
            A,
            Some(&record()),
            None,
            Some(3_590_000),
            Some(now - 5),
            3_600_000,
            now,
        );
        assert_eq!(doc["session"], "known");
        assert_eq!(doc["token_known"], true);
        assert_eq!(doc["callback_url"], "https://10.0.0.5:9999");
        assert_eq!(
            doc["last_heartbeat_ironic_accepted_at"],
            "Tue, 14 Nov 2023 22:13:20 GMT"
        );
        // Kept 10 s ago: 3,590 s of 3,600 left.
        assert_eq!(
            doc["heartbeat_kept_for_relay"]["kept_at"],
            date(now - 10_000)
        );
        assert_eq!(doc["last_heartbeat_edge_accepted_at"], date(now - 5));
        assert_eq!(doc["index"], Value::Null);
        let text = doc.to_string();
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn nothing_known() {
        let doc = agent_doc(A, None, None, None, None, 3_600_000, 0);
        assert_eq!(doc["session"], "unknown");
        assert_eq!(doc["token_known"], false);
        assert_eq!(doc["heartbeat_kept_for_relay"], Value::Null);
        assert_eq!(doc["last_heartbeat_edge_accepted_at"], Value::Null);
    }
}
