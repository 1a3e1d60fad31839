//! The lookup path, `GET /v1/lookup`:
//! 1. Ironic's argument checks, in Ironic's order, answered at the edge;
//! 2. a remembered upstream 404 for the same normalised request: answered at the edge;
//! 3. otherwise one request per normalised key goes upstream (single flight), a 409 (node
//!    locked while the token is minted) is retried within a short budget, and the answer is
//!    relayed. A minted token is handed to the requesting agent only: Redis keeps its salted
//!    hash and the node data with the token masked.

use super::flight::{FlightAnswer, Flights};
use super::forward;
use super::AgentRequest;
use crate::edge::LocalAnswer;
use crate::ironic::error::resource_not_found;
use crate::ironic::lookup::check_lookup;
use crate::ironic::token::{lookup_token, replace_token, LookupToken, MASK};
use crate::ironic::{version, HeaderSet};
use crate::plugin::RequestCtx;
use crate::store::{token_hash, FlightResult};
use crate::upstream::UpstreamResponse;
use bytes::Bytes;
use pingora::proxy::Session;
use rand::Rng;
use std::time::Duration;

/// What the leader of a lookup flight got.
enum Asked {
    Answer(Box<UpstreamResponse>),
    Unreachable,
}

pub async fn handle(
    r: &AgentRequest<'_>,
    flights: &Flights,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> pingora::Result<()> {
    let query = match check_lookup(session.req_header().uri.query(), r.version) {
        Ok(q) => q,
        Err(e) => return r.answer_error(session, ctx, &e).await,
    };
    if !query.invalid_macs.is_empty() {
        log::warn!(
            "lookup: ignoring invalid MAC addresses {:?}",
            query.invalid_macs
        );
    }
    let key = query.cache_key();
    let cfg = &r.edge.config.lookup;
    match r.edge.store.lookup_not_found(&key).await {
        Ok(true) => return r.answer_error(session, ctx, &resource_not_found()).await,
        Ok(false) => {}
        Err(e) => store_error(r, &e),
    }

    let wait = Duration::from_millis(cfg.flight_wait_ms);
    let answer = flights
        .run(&key, wait, || async {
            let asked = ask_with_conflict_retries(r, session, ctx).await;
            let shared = match &asked {
                Asked::Answer(resp) => after_upstream_answer(r, &key, resp).await,
                Asked::Unreachable => {
                    let e = crate::ironic::error::upstream_unavailable();
                    FlightResult::Shared {
                        status: e.status,
                        body: e.body,
                    }
                }
            };
            (asked, shared)
        })
        .await;
    match answer {
        FlightAnswer::Led(Asked::Answer(resp)) => {
            let body = protect_token(r, &resp);
            forward::relay(r, session, ctx, &resp, &body).await
        }
        FlightAnswer::Led(Asked::Unreachable) => forward::unavailable(r, session, ctx).await,
        FlightAnswer::Shared { status, body } => {
            let a = LocalAnswer {
                status,
                content_type: Some("application/json"),
                body: Bytes::from(body),
                header_set: HeaderSet::Versions,
                allow: None,
            };
            r.answer_local(session, ctx, &a).await
        }
        FlightAnswer::AskUpstream => match ask_with_conflict_retries(r, session, ctx).await {
            Asked::Answer(resp) => {
                let _ = after_upstream_answer(r, &key, &resp).await;
                let body = protect_token(r, &resp);
                forward::relay(r, session, ctx, &resp, &body).await
            }
            Asked::Unreachable => forward::unavailable(r, session, ctx).await,
        },
    }
}

/// Asks Ironic, retrying a 409 (node locked while minting the token: it fails fast since
/// Ironic 23) a few times with jitter inside the configured budget. IPA itself would sleep
/// 5-30 s on a 409, so absorbing a short lock here saves the agent a long pause.
async fn ask_with_conflict_retries(
    r: &AgentRequest<'_>,
    session: &Session,
    ctx: &RequestCtx,
) -> Asked {
    let cfg = &r.edge.config.lookup;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(cfg.conflict_budget_ms);
    let mut attempt = 0u32;
    loop {
        let resp = match forward::send(r, session, ctx, b"").await {
            Ok(resp) => resp,
            Err(_) => return Asked::Unreachable,
        };
        if resp.status() != 409 || attempt >= cfg.conflict_retries {
            return Asked::Answer(Box::new(resp));
        }
        let base = 50u64 << attempt.min(6);
        let pause = Duration::from_millis(rand::thread_rng().gen_range(base / 2..=base * 2));
        if tokio::time::Instant::now() + pause >= deadline {
            return Asked::Answer(Box::new(resp));
        }
        tokio::time::sleep(pause).await;
        attempt += 1;
    }
}

/// Learns from Ironic's answer: a 404 is remembered for the key; a freshly minted token's
/// hash (and the node data, token masked) is recorded for the heartbeat path. Returns what
/// the flight's waiters get.
async fn after_upstream_answer(
    r: &AgentRequest<'_>,
    key: &str,
    resp: &UpstreamResponse,
) -> FlightResult {
    let status = resp.status();
    let body = &resp.body;
    let store = &r.edge.store;
    if status == 404 {
        let ttl = Duration::from_secs(r.edge.config.lookup.not_found_ttl_seconds);
        if let Err(e) = store.remember_lookup_not_found(key, ttl).await {
            store_error(r, &e);
        }
    }
    if status != 200 {
        return FlightResult::Shared {
            status,
            body: String::from_utf8_lossy(body).into_owned(),
        };
    }
    // Only at 1.62+ does Ironic mint; below, a raw token is a stored one leaking.
    if r.version >= version::AGENT_TOKEN {
        if let (Some(LookupToken::Raw(token)), Some(uuid)) = (lookup_token(body), node_uuid(body)) {
            let masked = replace_token(body, &token, &format!("\"{MASK}\"")).unwrap_or_default();
            let ttl = Duration::from_secs(r.edge.config.node_ttl_seconds);
            if let Err(e) = store
                .record_token_minted(&uuid, &token_hash::hash_token(&token), &masked, ttl)
                .await
            {
                store_error(r, &e);
            }
            if let Err(e) = store.forget_heartbeat_not_found(&uuid).await {
                store_error(r, &e);
            }
        }
    }
    FlightResult::AskUpstream
}

/// Below 1.62 Ironic returns the stored token itself to anyone who asks; the gateway answers
/// `null` there (what Ironic answers when no token is stored), so it never leaks.
fn protect_token(r: &AgentRequest<'_>, resp: &UpstreamResponse) -> Bytes {
    let body = resp.body.clone();
    if resp.status() != 200 || r.version >= version::AGENT_TOKEN {
        return body;
    }
    match lookup_token(&body) {
        Some(LookupToken::Raw(token)) => match replace_token(&body, &token, "null") {
            Some(clean) => Bytes::from(clean),
            None => reserialize_without_token(&body),
        },
        _ => body,
    }
}

/// The fallback when the token cannot be replaced in place: rebuild the JSON with
/// `config.agent_token = null`.
fn reserialize_without_token(body: &[u8]) -> Bytes {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut v) => {
            if let Some(cfg) = v.get_mut("config").and_then(|c| c.as_object_mut()) {
                cfg.insert("agent_token".into(), serde_json::Value::Null);
            }
            Bytes::from(crate::ironic::pyjson::dumps(&v))
        }
        Err(_) => Bytes::new(),
    }
}

fn node_uuid(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let uuid = v.get("node")?.get("uuid")?.as_str()?;
    crate::ironic::ident::is_uuid_like(uuid).then(|| uuid.to_string())
}

fn store_error(r: &AgentRequest<'_>, e: &crate::store::StoreError) {
    r.edge.metrics.store_error();
    log::warn!("lookup: {e}; carrying on without the store");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_uuid_is_read_from_the_answer() {
        let body = br#"{"node": {"uuid": "1be26c0b-03f2-4d2e-ae87-c02d7f33c123"}, "config": {}}"#;
        assert_eq!(
            node_uuid(body).as_deref(),
            Some("1be26c0b-03f2-4d2e-ae87-c02d7f33c123")
        );
        assert_eq!(node_uuid(br#"{"node": {"uuid": "../x"}}"#), None);
        assert_eq!(node_uuid(b"nope"), None);
    }

    #[test]
    fn fallback_drops_the_token() {
        let body = br#"{"node": {}, "config": {"agent_token": "abcdefghijabcdefghijabcdefghijabcdefghij123", "x": 1}}"#;
        let out = reserialize_without_token(body);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(!text.contains("abcdefghij"));
        assert!(text.contains("\"agent_token\": null"));
    }
}
