//! The heartbeat path, `POST /v1/heartbeat/{node}`:
//! 1. the body is read (bounded) and Ironic's API-side checks run in Ironic's order; the
//!    errors Ironic raises before looking the node up are answered at the edge;
//! 2. a node the upstream recently called unknown gets its 404 at the edge;
//! 3. with a known token hash for the node, a matching token is forwarded (after the
//!    `callback_url` check against the URL Ironic accepted), and a mismatched one is forwarded
//!    at most once per node per interval (a new token may have been minted elsewhere), the
//!    rest get Ironic's 400 at the edge;
//! 4. a forwarded heartbeat carries the agent's exact bytes, and the agent gets Ironic's answer.

use super::forward;
use super::AgentRequest;
use crate::edge::Edge;
use crate::ironic::error::{callback_url_changed, invalid_token, node_not_found};
use crate::ironic::heartbeat::{
    check_body_limit, check_heartbeat_with_agent_url, CheckedHeartbeat, HeartbeatRejection,
};
use crate::ironic::{ident, IronicError};
use crate::plugin::RequestCtx;
use crate::store::{token_hash, NodeRecord, StoreError};
use bytes::Bytes;
use pingora::proxy::Session;
use std::time::Duration;

/// What to do with a heartbeat that passed the API-side checks, given what is known of the
/// node. Pure: the I/O around it is in [`handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Forward,
    Answer(IronicError),
    /// Forward if this node's mismatch slot is free, else answer this.
    ForwardIfSlot(IronicError),
}

pub fn decide(hb: &CheckedHeartbeat, record: Option<&NodeRecord>) -> Decision {
    let Some(stored) = record.and_then(|r| r.token_hash.as_deref()) else {
        return Decision::Forward;
    };
    let agent_url = record.and_then(|r| r.agent_url.as_deref());
    // Ironic compares the normalised callback_url with the stored agent_url before the token.
    let url_changed = agent_url.is_some_and(|u| u != hb.normalized_callback_url);
    let token = hb.request.agent_token.as_deref().unwrap_or_default();
    if token_hash::verify_token(stored, token) {
        if url_changed {
            Decision::Answer(callback_url_changed())
        } else {
            Decision::Forward
        }
    } else if url_changed {
        Decision::ForwardIfSlot(callback_url_changed())
    } else {
        Decision::ForwardIfSlot(invalid_token())
    }
}

/// Reads the body (bounded) and applies Ironic's JSON body limits, which Ironic enforces
/// before anything else. The outer error is the connection's; the inner one is the answer.
pub async fn read_checked_body(
    edge: &Edge,
    session: &mut Session,
) -> pingora::Result<Result<Bytes, IronicError>> {
    let content_type = content_type(session);
    let too_large = || {
        IronicError::flat(
            413,
            "Request body is too large. Please contact the service administrator.",
        )
    };
    let Some(body) = read_body(session, edge.config.heartbeat.max_body_bytes).await? else {
        return Ok(Err(too_large()));
    };
    Ok(check_body_limit(content_type.as_deref(), &body).map(|()| body))
}

fn content_type(session: &Session) -> Option<String> {
    session
        .req_header()
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

pub async fn handle(
    r: &AgentRequest<'_>,
    ident: &str,
    body: &Bytes,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> pingora::Result<()> {
    let content_type = content_type(session);
    let query = session.req_header().uri.query().map(str::to_string);
    let check = |agent_url: Option<&str>| {
        check_heartbeat_with_agent_url(
            ident,
            query.as_deref(),
            content_type.as_deref(),
            body,
            r.version,
            agent_url,
        )
    };
    let checked = check(None);
    let store = &r.edge.store;
    let checked = match checked {
        Err(HeartbeatRejection::BeforeNodeLookup(e)) => {
            return r.answer_error(session, ctx, &e).await
        }
        Err(HeartbeatRejection::AfterNodeLookup(e)) => {
            // Ironic says this only for a node that exists; otherwise "not found" wins.
            if known_missing(r, ident).await {
                return r.answer_error(session, ctx, &node_not_found(ident)).await;
            }
            match store.node(ident).await {
                Ok(Some(rec)) => {
                    // With the accepted agent_url known, Ironic's "callback_url changed" check
                    // (between the scheme and the token checks) applies too.
                    let e = match check(rec.agent_url.as_deref()) {
                        Err(HeartbeatRejection::AfterNodeLookup(e2)) => e2,
                        _ => e,
                    };
                    return r.answer_error(session, ctx, &e).await;
                }
                Ok(None) => {}
                Err(err) => store_error(r, &err),
            }
            return forward_and_learn(r, ident, None, None, session, ctx, body).await;
        }
        Ok(c) => c,
    };
    if known_missing(r, ident).await {
        return r.answer_error(session, ctx, &node_not_found(ident)).await;
    }
    let record = match store.node(ident).await {
        Ok(rec) => rec,
        Err(err) => {
            store_error(r, &err);
            None
        }
    };
    match decide(&checked, record.as_ref()) {
        Decision::Forward => {}
        Decision::Answer(e) => return r.answer_error(session, ctx, &e).await,
        Decision::ForwardIfSlot(e) => {
            let interval =
                Duration::from_secs(r.edge.config.heartbeat.token_mismatch_forward_seconds);
            match store.claim_mismatch_forward(ident, interval).await {
                Ok(true) => log::info!(
                    "heartbeat for {ident}: token differs from the known one; forwarding once"
                ),
                Ok(false) => return r.answer_error(session, ctx, &e).await,
                Err(err) => store_error(r, &err),
            }
        }
    }
    forward_and_learn(
        r,
        ident,
        Some(&checked),
        record.as_ref(),
        session,
        ctx,
        body,
    )
    .await
}

/// Forwards the heartbeat with the agent's exact body and learns from Ironic's answer.
async fn forward_and_learn(
    r: &AgentRequest<'_>,
    ident: &str,
    checked: Option<&CheckedHeartbeat>,
    record: Option<&NodeRecord>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    body: &Bytes,
) -> pingora::Result<()> {
    let resp = match forward::send(r, session, ctx, body).await {
        Ok(resp) => resp,
        Err(_) => return forward::unavailable(r, session, ctx).await,
    };
    let store = &r.edge.store;
    let cfg = &r.edge.config;
    let result = match (resp.status(), checked) {
        (202, Some(hb)) => {
            // Record under the node's UUID only; agents heartbeat by the UUID lookup gave them.
            let token = hb.request.agent_token.as_deref().unwrap_or_default();
            let canonical = ident::is_uuid_like(ident) && ident.len() == 36;
            let unchanged = record.is_some_and(|rec| {
                rec.agent_url.as_deref() == Some(hb.normalized_callback_url.as_str())
                    && rec
                        .token_hash
                        .as_deref()
                        .is_some_and(|h| token_hash::verify_token(h, token))
            });
            if canonical && !unchanged {
                let ttl = Duration::from_secs(cfg.node_ttl_seconds);
                store
                    .record_heartbeat_accepted(
                        ident,
                        &token_hash::hash_token(token),
                        &hb.normalized_callback_url,
                        ttl,
                    )
                    .await
            } else {
                Ok(())
            }
        }
        (404, _) => {
            let ttl = Duration::from_secs(cfg.heartbeat.not_found_ttl_seconds);
            store.remember_heartbeat_not_found(ident, ttl).await
        }
        (400, Some(hb)) if is_invalid_token_answer(&resp.body) => {
            // Ironic refused a token we thought current: it was wiped (power off, end of
            // deploy...). Forget it so the next agent's token is learnt afresh.
            let token = hb.request.agent_token.as_deref().unwrap_or_default();
            let was_known = record
                .and_then(|rec| rec.token_hash.as_deref())
                .is_some_and(|h| token_hash::verify_token(h, token));
            if was_known {
                store.forget_token(ident).await
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    };
    if let Err(e) = result {
        store_error(r, &e);
    }
    let body = resp.body.clone();
    forward::relay(r, session, ctx, &resp, &body).await
}

fn is_invalid_token_answer(body: &[u8]) -> bool {
    let needle = b"Invalid or missing agent token received.";
    body.windows(needle.len()).any(|w| w == needle)
}

async fn known_missing(r: &AgentRequest<'_>, ident: &str) -> bool {
    match r.edge.store.heartbeat_not_found(ident).await {
        Ok(v) => v,
        Err(e) => {
            store_error(r, &e);
            false
        }
    }
}

/// Reads the whole request body; `None` if it is larger than `limit`.
async fn read_body(session: &mut Session, limit: usize) -> pingora::Result<Option<Bytes>> {
    let declared = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Ok(None);
    }
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    while let Some(chunk) = session.read_request_body().await? {
        if buf.len() + chunk.len() > limit {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(Bytes::from(buf)))
}

fn store_error(r: &AgentRequest<'_>, e: &StoreError) {
    r.edge.metrics.store_error();
    log::warn!("heartbeat: {e}; carrying on without the store");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ironic::heartbeat::HeartbeatRequest;

    fn hb(token: &str, url: &str) -> CheckedHeartbeat {
        CheckedHeartbeat {
            request: HeartbeatRequest {
                node_ident: "n".into(),
                callback_url: url.into(),
                agent_token: Some(token.into()),
                agent_version: Some("13.0.0".into()),
                agent_verify_ca: None,
                agent_status: None,
                agent_status_message: None,
            },
            normalized_callback_url: url.into(),
        }
    }

    fn rec(token: Option<&str>, url: Option<&str>) -> NodeRecord {
        NodeRecord {
            token_hash: token.map(token_hash::hash_token),
            agent_url: url.map(str::to_string),
        }
    }

    #[test]
    fn unknown_node_or_token_is_forwarded() {
        assert_eq!(decide(&hb("t", "https://a:9999"), None), Decision::Forward);
        assert_eq!(
            decide(&hb("t", "https://a:9999"), Some(&rec(None, None))),
            Decision::Forward
        );
    }

    #[test]
    fn matching_token_is_forwarded() {
        let r = rec(Some("good"), Some("https://a:9999"));
        assert_eq!(
            decide(&hb("good", "https://a:9999"), Some(&r)),
            Decision::Forward
        );
        assert_eq!(
            decide(
                &hb("good", "https://a:9999"),
                Some(&rec(Some("good"), None))
            ),
            Decision::Forward
        );
    }

    #[test]
    fn changed_callback_with_matching_token_is_refused() {
        let r = rec(Some("good"), Some("https://a:9999"));
        assert_eq!(
            decide(&hb("good", "https://b:9999"), Some(&r)),
            Decision::Answer(callback_url_changed())
        );
    }

    #[test]
    fn mismatched_token_gets_one_forward_slot() {
        let r = rec(Some("good"), Some("https://a:9999"));
        assert_eq!(
            decide(&hb("bad", "https://a:9999"), Some(&r)),
            Decision::ForwardIfSlot(invalid_token())
        );
        // Ironic checks the URL first, so that is the message when both differ.
        assert_eq!(
            decide(&hb("bad", "https://b:9999"), Some(&r)),
            Decision::ForwardIfSlot(callback_url_changed())
        );
    }

    #[test]
    fn invalid_token_answer_is_recognised() {
        let body = br#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"Invalid or missing agent token received.\", \"debuginfo\": null}"}"#;
        assert!(is_invalid_token_answer(body));
        assert!(!is_invalid_token_answer(b"{}"));
    }
}
