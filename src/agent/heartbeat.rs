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
use crate::disposition::{Disposition, Predicted, Rule};
use crate::edge::{Edge, LocalAnswer};
use crate::ironic::error::{callback_url_changed, invalid_token, node_not_found};
use crate::ironic::heartbeat::{
    check_body_limit, check_heartbeat_with_agent_url, CheckedHeartbeat, HeartbeatRejection,
};
use crate::ironic::states::{HEARTBEAT_DRIVES_WORK, HEARTBEAT_RECORD_ONLY};
use crate::ironic::{ident, IronicError};
use crate::plugin::RequestCtx;
use crate::store::{now_ms, token_hash, IndexedNode, NodeRecord, StoreError};
use crate::upstream::governor::Class;
use crate::upstream::{UpstreamError, UpstreamResponse};
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

/// What the gateway can tell of a heartbeat that passed the API-side checks, given what it
/// knows of the node. Pure: the I/O around it is in [`handle`].
///
/// `ironic` is the node as the (fresh) index shows it, corrected by what the gateway saw
/// after the round that wrote it ([`with_newer_token_knowledge`]): the freshest knowledge of
/// Ironic's token and `agent_url`. `record` is what the gateway learnt from traffic.
///
/// A heartbeat whose token the gateway cannot verify (it differs from the known one, the
/// gateway never saw the node's token, or Ironic holds none) for a node known to exist is
/// forwarded once per presented token per interval, else refused at the edge with Ironic's
/// answer: only Ironic can tell whether a token minted elsewhere is good, and a flood of
/// wrong tokens must not reach it. (The handler checks the token once: [`decide_with`].)
#[cfg(test)]
pub fn decide(
    hb: &CheckedHeartbeat,
    record: Option<&NodeRecord>,
    ironic: Option<&IndexedNode>,
) -> Decision {
    decide_with(hb, record, ironic, token_matches(hb, record))
}

/// Whether the heartbeat's token matches the token hash the record holds (`false` without
/// one). An HMAC per call: a heartbeat computes it once and hands it to [`decide_with`],
/// [`shield_with`] and [`is_verified_with`].
pub(crate) fn token_matches(hb: &CheckedHeartbeat, record: Option<&NodeRecord>) -> bool {
    record
        .and_then(|r| r.token_hash.as_deref())
        .is_some_and(|h| {
            token_hash::verify_token(h, hb.request.agent_token.as_deref().unwrap_or_default())
        })
}

/// `decide`, given whether the token matches the record's hash ([`token_matches`]).
pub(crate) fn decide_with(
    hb: &CheckedHeartbeat,
    record: Option<&NodeRecord>,
    ironic: Option<&IndexedNode>,
    token_matches: bool,
) -> Decision {
    let stored = record.and_then(|r| r.token_hash.as_deref());
    let agent_url = match ironic {
        Some(n) => n.agent_url.as_deref(),
        None => record.and_then(|r| r.agent_url.as_deref()),
    };
    // Ironic compares the normalised callback_url with the stored agent_url before the token.
    let url_changed = agent_url.is_some_and(|u| u != hb.normalized_callback_url);
    let held = ironic.is_none_or(|n| n.token_held);
    let verified = held && stored.is_some() && token_matches;
    let refusal = if url_changed {
        callback_url_changed()
    } else {
        invalid_token()
    };
    match (verified, stored.is_some() || ironic.is_some()) {
        (true, _) if url_changed => Decision::Answer(refusal),
        (true, _) => Decision::Forward,
        (false, true) => Decision::ForwardIfSlot(refusal),
        // Nothing known of the node: only Ironic can answer (404 or 400).
        (false, false) => Decision::Forward,
    }
}

/// How many different tokens of one node that the gateway cannot verify reach Ironic per
/// `token_mismatch_forward_seconds`: a new token minted elsewhere gets through even while
/// another (wrong) one is repeated, and a flood of random tokens costs Ironic a few requests.
pub const UNVERIFIED_TOKENS_PER_INTERVAL: u32 = 4;

/// The short digest that names a presented token's forward slot in Redis (never the token).
pub fn mismatch_tag(token: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("ironic-edge mismatch slot\0{token}").as_bytes());
    token_hash::hex(&digest[..8])
}

/// What the heartbeat shield does with a heartbeat that is to be forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shield {
    Forward,
    /// Answer 202 at the edge: Ironic would only record it again.
    Accept,
}

/// Everything of a heartbeat Ironic records, but the token (which the token hash covers).
pub fn fingerprint(hb: &CheckedHeartbeat) -> String {
    use sha2::{Digest, Sha256};
    let q = &hb.request;
    let mut h = Sha256::new();
    for part in [
        Some(hb.normalized_callback_url.as_str()),
        q.agent_version.as_deref(),
        q.agent_verify_ca.as_deref(),
        q.agent_status.as_deref(),
        q.agent_status_message.as_deref(),
    ] {
        // Presence and length first, so that no two different heartbeats collide by layout.
        match part {
            Some(p) => h.update(format!("+{}:", p.len()).as_bytes()),
            None => h.update(b"-"),
        }
        h.update(part.unwrap_or_default().as_bytes());
    }
    token_hash::hex(&h.finalize())
}

/// The state-aware heartbeat shield. In states where heartbeats drive work (`wait call-back`,
/// `clean wait`, `rescue wait`, `service wait`) or an unknown state, every heartbeat reaches
/// Ironic. In states where Ironic only records them, a heartbeat whose token the gateway
/// verified and that is identical to the last one Ironic accepted less than `coalesce` ago is
/// accepted at the edge: at least one per `coalesce` still reaches Ironic, so
/// `agent_last_heartbeat` stays fresh for fast track. Pure.
#[cfg(test)]
pub fn shield(
    hb: &CheckedHeartbeat,
    record: Option<&NodeRecord>,
    ironic: Option<&IndexedNode>,
    now_ms: u64,
    coalesce: Duration,
) -> Shield {
    let matches = token_matches(hb, record);
    shield_with(hb, record, ironic, now_ms, coalesce, matches)
}

/// `shield`, given whether the token matches the record's hash ([`token_matches`]).
pub(crate) fn shield_with(
    hb: &CheckedHeartbeat,
    record: Option<&NodeRecord>,
    ironic: Option<&IndexedNode>,
    now_ms: u64,
    coalesce: Duration,
    token_matches: bool,
) -> Shield {
    let (Some(record), Some(node)) = (record, ironic) else {
        return Shield::Forward;
    };
    let verified = node.token_held && record.token_hash.is_some() && token_matches;
    let record_only = HEARTBEAT_RECORD_ONLY.contains(&node.provision_state.as_str())
        && !HEARTBEAT_DRIVES_WORK.contains(&node.provision_state.as_str());
    let recent_same = record.last_heartbeat.as_ref().is_some_and(|(fp, at)| {
        *fp == fingerprint(hb) && now_ms.saturating_sub(*at) < coalesce.as_millis() as u64
    });
    if verified
        && record_only
        && recent_same
        && node.agent_url.as_deref() == Some(hb.normalized_callback_url.as_str())
    {
        Shield::Accept
    } else {
        Shield::Forward
    }
}

/// The coalescing window: the configured one, capped at a third of the `heartbeat_timeout`
/// Ironic hands agents (0: not seen). IPA heartbeats every 0.3-0.6 of that timeout, so Ironic
/// then sees one at least every 0.34 + 0.6 < 1 timeouts: within `[deploy]fast_track_timeout`
/// (which Ironic requires to be at most the heartbeat timeout), so fast track and the
/// conductor's own timeouts never miss a heartbeat the edge held back. Pure.
pub(crate) fn coalesce_window(configured_s: u64, heartbeat_timeout_s: u64) -> Duration {
    let cap_ms = match heartbeat_timeout_s {
        0 => u64::MAX,
        t => t * 1000 / 3,
    };
    Duration::from_millis((configured_s * 1000).min(cap_ms))
}

/// What a heartbeat to be forwarded is for, in the load governor's terms. Pure.
///
/// Heartbeats drive the deploy, clean, rescue and service steps in their wait states, and an
/// unknown state may be one of those: they come right after lookups. In states where Ironic
/// only records them, the first of an agent session (no `agent_url` accepted yet, or not
/// verified) comes before the refreshes of sessions Ironic already knows, which can wait or be
/// kept for the relay.
pub(crate) fn class_of(
    hb: &CheckedHeartbeat,
    record: Option<&NodeRecord>,
    ironic: Option<&IndexedNode>,
    verified: bool,
) -> Class {
    let Some(node) = ironic else {
        return Class::Drive;
    };
    let state = node.provision_state.as_str();
    if HEARTBEAT_DRIVES_WORK.contains(&state) || !HEARTBEAT_RECORD_ONLY.contains(&state) {
        return Class::Drive;
    }
    let accepted = node
        .agent_url
        .as_deref()
        .or(record.and_then(|r| r.agent_url.as_deref()));
    if verified && accepted == Some(hb.normalized_callback_url.as_str()) {
        Class::Refresh
    } else {
        Class::First
    }
}

/// The outcome of reading a heartbeat's body.
pub enum BodyRead {
    Body(Bytes),
    /// Ironic's JSON body limits refuse it (413 too large, 400 too deep): answer this, with
    /// what of the body was read (shadow mode lets Ironic answer when it can).
    Refused(IronicError, BodyKept),
    /// Declared larger than the gateway reads, and not JSON (which Ironic does not limit):
    /// nothing was read, the proxy forwards it.
    TooLargeToCheck,
}

/// What of a refused heartbeat body was read.
pub enum BodyKept {
    Whole(Bytes),
    /// Nothing: still to be read (declared too large).
    Nothing,
    /// Part of it (chunked, over the limit): what was read cannot be put back.
    Part,
}

/// Reads the body (bounded) and applies Ironic's JSON body limits, which Ironic enforces
/// before anything else.
pub async fn read_checked_body(edge: &Edge, session: &mut Session) -> pingora::Result<BodyRead> {
    let content_type = content_type(session);
    let content_type = content_type.as_ref().and_then(|v| v.to_str().ok());
    let is_json = content_type.is_some_and(|c| c.contains("json"));
    let limit = edge.config.heartbeat.max_body_bytes;
    let declared = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if !is_json && declared.is_some_and(|n| n > limit) {
        return Ok(BodyRead::TooLargeToCheck);
    }
    let too_large = || {
        IronicError::flat(
            413,
            "Request body is too large. Please contact the service administrator.",
        )
    };
    if declared.is_some_and(|n| n > limit) {
        return Ok(BodyRead::Refused(too_large(), BodyKept::Nothing));
    }
    let Some(body) = read_body(session, limit).await? else {
        // JSON over the limit is Ironic's 413; a chunked non-JSON body over it gets the same
        // answer (the part read cannot be put back).
        return Ok(BodyRead::Refused(too_large(), BodyKept::Part));
    };
    Ok(match check_body_limit(content_type, &body) {
        Ok(()) => BodyRead::Body(body),
        Err(e) => BodyRead::Refused(e, BodyKept::Whole(body)),
    })
}

/// The request's `Content-Type`, shared with the request (not copied): read while the
/// session is borrowed for the body.
fn content_type(session: &Session) -> Option<http::HeaderValue> {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_TYPE)
        .cloned()
}

/// Where a heartbeat's decision leads.
enum Step {
    /// Answered at the edge; in shadow mode forwarded as the second says instead.
    Answer(Disposition, Forward),
    /// To Ironic.
    Forward(Forward),
}

/// What forwarding a heartbeat needs of its decision.
struct Forward {
    /// The heartbeat, when it passed the API-side checks.
    checked: Option<CheckedHeartbeat>,
    record: Option<NodeRecord>,
    /// The heartbeat's token matches `record`'s hash ([`token_matches`]).
    token_matches: bool,
    verified: bool,
    class: Class,
}

impl Forward {
    /// A heartbeat that did not pass the API-side checks: nothing verified, nothing to learn
    /// but Ironic's 404.
    fn unchecked() -> Forward {
        Forward {
            checked: None,
            record: None,
            token_matches: false,
            verified: false,
            class: Class::First,
        }
    }
}

pub(crate) async fn handle(
    r: &AgentRequest<'_>,
    ident: &str,
    body: &Bytes,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> pingora::Result<Disposition> {
    let (answer, forward) = match decide_heartbeat(r, ident, body, session, ctx).await {
        Step::Forward(f) => (None, f),
        Step::Answer(answer, f) => (Some(answer), f),
    };
    let predicted = match answer {
        // Shadow mode: Ironic answers instead, compared with what the edge would have said.
        Some(answer) if r.shadow() => match answer.prediction(ident) {
            Some(p) => Some(p),
            None => return Ok(answer),
        },
        Some(answer) => return Ok(answer),
        None => None,
    };
    forward_and_learn(r, ident, forward, predicted, session, ctx, body).await
}

/// Decides a heartbeat: answered at the edge, or forwarded (reading what is known of the
/// node once).
async fn decide_heartbeat(
    r: &AgentRequest<'_>,
    ident: &str,
    body: &Bytes,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Step {
    let content_type = content_type(session);
    let content_type = content_type.as_ref().and_then(|v| v.to_str().ok());
    // The URI shares its bytes with the request (a clone copies nothing).
    let uri = session.req_header().uri.clone();
    let check = |agent_url: Option<&str>| {
        check_heartbeat_with_agent_url(ident, uri.query(), content_type, body, r.version, agent_url)
    };
    let checked = check(None);
    let store = &r.edge.store;
    let unchecked = Forward::unchecked;
    let checked = match checked {
        Err(HeartbeatRejection::BeforeNodeLookup(e)) => {
            return Step::Answer(r.answer_error(Rule::EdgeError, &e), unchecked())
        }
        Err(HeartbeatRejection::AfterNodeLookup(e)) => {
            // Ironic says this only for a node that exists; otherwise "not found" wins.
            let facts = node_facts(r, ident).await;
            if let Some(rule) = facts.missing {
                return Step::Answer(r.answer_error(rule, &node_not_found(ident)), unchecked());
            }
            if facts.record.is_some() || facts.ironic.is_some() {
                // With the node's agent_url known, Ironic's "callback_url changed" check
                // (between the scheme and the token checks) applies too.
                let e = match check(facts.agent_url()) {
                    Err(HeartbeatRejection::AfterNodeLookup(e2)) => e2,
                    _ => e,
                };
                return Step::Answer(r.answer_error(Rule::EdgeError, &e), unchecked());
            }
            if super::over_source_limit(ctx) {
                return Step::Answer(r.answer_over_limit(false), unchecked());
            }
            return Step::Forward(unchecked());
        }
        Ok(c) => c,
    };
    let facts = node_facts(r, ident).await;
    if let Some(rule) = facts.missing {
        return Step::Answer(r.answer_error(rule, &node_not_found(ident)), unchecked());
    }
    let NodeFacts {
        record,
        ironic,
        class_hint,
        ..
    } = facts;
    let ironic = ironic.as_ref();
    // The token's HMAC, once for every check below.
    let matches = token_matches(&checked, record.as_ref());
    // Verified: the token the gateway knows, and Ironic (as far as the index shows) holds one.
    let verified =
        is_verified_with(&checked, record.as_ref(), matches) && ironic.is_none_or(|n| n.token_held);
    let class = class_of(
        &checked,
        record.as_ref(),
        ironic.or(class_hint.as_ref()),
        verified,
    );
    // What forwarding needs owns the heartbeat and the record (no copies on a local answer);
    // the decisions below read them from it.
    let forward = Forward {
        checked: Some(checked),
        record,
        token_matches: matches,
        verified,
        class,
    };
    let (Some(checked), record) = (forward.checked.as_ref(), forward.record.as_ref()) else {
        return Step::Forward(forward);
    };
    if super::over_source_limit(ctx) {
        let verified = is_verified_with(checked, record, matches);
        let answer = over_limit(r, ident, verified, session, body).await;
        return Step::Answer(answer, forward);
    }
    match decide_with(checked, record, ironic, matches) {
        Decision::Forward => {
            let coalesce = coalesce_window(
                r.edge.config.heartbeat.coalesce_seconds,
                r.edge
                    .heartbeat_timeout_s
                    .load(std::sync::atomic::Ordering::Relaxed),
            );
            if shield_with(checked, record, ironic, now_ms(), coalesce, matches) == Shield::Accept {
                log::debug!("heartbeat for {ident}: same as the one Ironic accepted recently; 202 at the edge");
                let accepted = r.answer_local(Rule::Coalesced, LocalAnswer::accepted());
                return Step::Answer(accepted, forward);
            }
        }
        Decision::Answer(e) => return Step::Answer(r.answer_error(Rule::EdgeError, &e), forward),
        Decision::ForwardIfSlot(e) => {
            let interval =
                Duration::from_secs(r.edge.config.heartbeat.token_mismatch_forward_seconds);
            let tag = mismatch_tag(checked.request.agent_token.as_deref().unwrap_or_default());
            let claim = store
                .mismatch
                .claim(ident, &tag, interval, UNVERIFIED_TOKENS_PER_INTERVAL);
            match claim.await {
                Ok(true) => log::info!(
                    "heartbeat for {ident}: a token the gateway cannot verify; forwarding it once"
                ),
                Ok(false) => {
                    return Step::Answer(r.answer_error(Rule::EdgeError, &e), forward);
                }
                Err(err) => store_error(r, &err),
            }
        }
    }
    Step::Forward(forward)
}

/// Forwards the heartbeat with the agent's exact body and learns from Ironic's answer.
/// `predicted`: in shadow mode, what the edge would have answered instead.
async fn forward_and_learn(
    r: &AgentRequest<'_>,
    ident: &str,
    forward: Forward,
    mut predicted: Option<Predicted>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    body: &Bytes,
) -> pingora::Result<Disposition> {
    let Forward {
        checked,
        record,
        token_matches,
        verified,
        class,
    } = forward;
    let (checked, record) = (checked.as_ref(), record.as_ref());
    let relay_configured =
        r.edge.config.heartbeat.relay_when_upstream_fails && r.edge.sealer.is_some();
    // Shadow mode keeps nothing for the relay: every heartbeat gets Ironic's answer.
    let relay_on = relay_configured && !r.shadow();
    let sent = if relay_on && verified {
        match send_within_deadline(r, session, ctx, class, ident, body).await {
            Some(sent) => sent,
            None => {
                log::info!("heartbeat for {ident}: Ironic is slow; accepted, relayed if it fails");
                return Ok(r.answer_local(Rule::Kept, LocalAnswer::accepted()));
            }
        }
    } else {
        forward::send(r, session, ctx, class, ident, body).await
    };
    // Ironic failing (unreachable, timing out, 5xx) or the node locked (409): a verified
    // heartbeat is kept for the relay and accepted, rather than sending the agent into its
    // 5-10 s retry mode.
    let failed = sent.as_ref().map_or(true, |resp| {
        crate::relay::ironic_did_not_take_it(resp.status())
    });
    if failed && relay_on && verified {
        let pending = crate::relay::PendingHeartbeat::from_request(session.req_header(), body);
        if crate::relay::defer(r.edge, ident, &pending).await {
            log::info!("heartbeat for {ident}: Ironic failed; accepted and kept for the relay");
            return Ok(r.answer_local(Rule::Kept, LocalAnswer::accepted()));
        }
    }
    if failed && relay_configured && verified && r.shadow() && predicted.is_none() {
        // Shadow mode: enforce mode would have accepted and kept it.
        predicted = r
            .answer_local(Rule::Kept, LocalAnswer::accepted())
            .prediction(ident);
    }
    let resp = match sent {
        Ok(resp) => resp,
        Err(_) => return Ok(forward::unavailable(r)),
    };
    // A repeat enforce mode would have coalesced does not move the window (it would not have
    // reached Ironic): shadow mode then predicts what enforce mode does.
    let refresh = !predicted
        .as_ref()
        .is_some_and(|p| p.rule == Rule::Coalesced);
    let store = &r.edge.store;
    let cfg = &r.edge.config;
    let result = match (resp.status(), checked) {
        (202, Some(hb)) => {
            // Record under the node's UUID only; agents heartbeat by the UUID lookup gave them.
            let token = hb.request.agent_token.as_deref().unwrap_or_default();
            let canonical = ident::is_uuid_like(ident) && ident.len() == 36;
            let unchanged = token_matches
                && record.is_some_and(|rec| {
                    rec.agent_url.as_deref() == Some(hb.normalized_callback_url.as_str())
                });
            if !canonical {
                Ok(())
            } else {
                let ttl = Duration::from_secs(cfg.node_ttl_seconds);
                async {
                    if !unchanged {
                        let hash = token_hash::hash_token(token);
                        let url = &hb.normalized_callback_url;
                        store
                            .records
                            .heartbeat_accepted(ident, &hash, url, ttl)
                            .await?;
                    }
                    // The agent's token works: no lost lookup answer to replay any more, and
                    // a heartbeat kept for the relay is older than this one Ironic just took.
                    store.replay.drop_node(ident).await?;
                    if relay_on {
                        store.relay.drop_node(ident).await?;
                    }
                    if !refresh {
                        return Ok(());
                    }
                    store
                        .records
                        .heartbeat_forwarded(ident, &fingerprint(hb), now_ms())
                        .await
                }
                .await
            }
        }
        // Only Ironic's "node not found" says the node is unknown: its other 404s (a version
        // gate, which shadow mode lets reach it) do not.
        (404, _) if is_node_not_found_answer(&resp.body, ident) => {
            let ttl = Duration::from_secs(cfg.heartbeat.not_found_ttl_seconds);
            store
                .negative
                .remember_heartbeat_not_found(ident, ttl)
                .await
        }
        (400, Some(_)) if is_invalid_token_answer(&resp.body) => {
            // Ironic refused a token we thought current: it was wiped (power off, end of
            // deploy...). Forget it so the next agent's token is learnt afresh.
            if token_matches {
                store.records.forget_token(ident).await
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
    Ok(forward::relay(&resp, &body).predicting(predicted))
}

/// A heartbeat from a source over its limits: accepted if verified (and kept for the relay,
/// so that Ironic still gets the node's latest), Ironic's error shape with 429 otherwise.
async fn over_limit(
    r: &AgentRequest<'_>,
    ident: &str,
    verified: bool,
    session: &Session,
    body: &Bytes,
) -> Disposition {
    // (Shadow mode keeps nothing for the relay: Ironic answers.)
    if verified && r.edge.config.heartbeat.relay_when_upstream_fails && !r.shadow() {
        let pending = crate::relay::PendingHeartbeat::from_request(session.req_header(), body);
        if !crate::relay::defer(r.edge, ident, &pending).await {
            log::debug!("heartbeat for {ident}: over its source's limits, not kept");
        }
    }
    r.answer_over_limit(verified)
}

/// Sends a verified heartbeat and waits for Ironic until the agent's deadline. Past it
/// (`None`), the agent is answered 202 while the exchange runs on; if it then fails, the
/// heartbeat is kept for the relay, as for any failure, so nothing is lost.
async fn send_within_deadline(
    r: &AgentRequest<'_>,
    session: &Session,
    ctx: &RequestCtx,
    class: Class,
    ident: &str,
    body: &Bytes,
) -> Option<Result<UpstreamResponse, UpstreamError>> {
    let mut prepared = match forward::prepare(r, session, ctx, class, ident, body) {
        Ok(p) => p,
        Err(e) => return Some(Err(e)),
    };
    if class == Class::First {
        // Verified, where Ironic only records it: kept for the relay rather than held.
        prepared.wait_at_most(forward::FIRST_WAIT);
    }
    let until = prepared.deadline();
    let mut running = tokio::spawn(async move { prepared.send().await });
    match tokio::time::timeout_at(until, &mut running).await {
        Ok(Ok(sent)) => Some(sent),
        Ok(Err(e)) => Some(Err(UpstreamError::Exchange(e.to_string()))),
        Err(_) => {
            let edge = r.edge.clone();
            let uuid = ident.to_string();
            let pending = crate::relay::PendingHeartbeat::from_request(session.req_header(), body);
            tokio::spawn(async move {
                let failed = match running.await {
                    Ok(Ok(resp)) => crate::relay::ironic_did_not_take_it(resp.status()),
                    _ => true,
                };
                if failed && crate::relay::defer(&edge, &uuid, &pending).await {
                    log::info!(
                        "heartbeat for {uuid}: the late exchange failed; kept for the relay"
                    );
                }
            });
            None
        }
    }
}

/// Does the heartbeat carry the token the gateway knows for the node (a UUID ident)?
/// `token_matches`: [`token_matches`] of the same heartbeat and record.
fn is_verified_with(
    hb: &CheckedHeartbeat,
    record: Option<&NodeRecord>,
    token_matches: bool,
) -> bool {
    let canonical =
        hb.request.node_ident.len() == 36 && ident::is_uuid_like(&hb.request.node_ident);
    canonical && record.is_some_and(|r| r.token_hash.is_some()) && token_matches
}

/// Ironic's `Node <ident> could not be found.`
fn is_node_not_found_answer(body: &[u8], ident: &str) -> bool {
    let needle = format!("Node {ident} could not be found.");
    body.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn is_invalid_token_answer(body: &[u8]) -> bool {
    let needle = b"Invalid or missing agent token received.";
    body.windows(needle.len()).any(|w| w == needle)
}

/// What is known of the heartbeat's node before deciding.
struct NodeFacts {
    /// Ironic would answer `Node X could not be found.`, by this rule (a cached upstream 404,
    /// or a fresh index without this UUID).
    missing: Option<Rule>,
    /// What the gateway learnt from traffic.
    record: Option<NodeRecord>,
    /// The node as the fresh index shows it (UUID idents only: the index is keyed by UUID).
    ironic: Option<IndexedNode>,
    /// The node as an index too old to answer from shows it, for the load governor's class
    /// only (`crate::sync::index_guides_class_at`), under the same session rule.
    class_hint: Option<IndexedNode>,
}

impl NodeFacts {
    /// Ironic's `agent_url` as best known: the index's, else the one Ironic last accepted.
    fn agent_url(&self) -> Option<&str> {
        match &self.ironic {
            Some(n) => n.agent_url.as_deref(),
            None => self.record.as_ref().and_then(|r| r.agent_url.as_deref()),
        }
    }
}

async fn node_facts(r: &AgentRequest<'_>, ident: &str) -> NodeFacts {
    let missing = |rule| NodeFacts {
        missing: Some(rule),
        record: None,
        ironic: None,
        class_hint: None,
    };
    if is_canonical_uuid(ident) {
        return match uuid_facts(r, ident).await {
            Ok((indexed, synced_at, record, hint)) => known_facts(indexed, synced_at, record, hint),
            Err(rule) => missing(rule),
        };
    }
    if known_missing(r, ident).await {
        return missing(Rule::NegativeCache);
    }
    let (indexed, synced_at) = match indexed_by_ident(r, ident).await {
        Some((node, at)) => (Some(node), at),
        None => (None, 0),
    };
    if matches!(indexed, Some(None)) {
        return missing(Rule::IndexNotFound);
    }
    // Records are kept under the node's UUID (agents heartbeat by the UUID lookup gave them):
    // an ident that is not one has none.
    known_facts(indexed, synced_at, None, None)
}

/// What the index says of a node (as [`indexed_by_ident`]), when its round started, the
/// node's record, and the entry of an index too old to answer from (the class hint).
type UuidFacts = (
    Option<Option<IndexedNode>>,
    u64,
    Option<NodeRecord>,
    Option<IndexedNode>,
);

/// What a canonical UUID's heartbeat needs, read in one step (one call into the view, no
/// Redis round trip for what it holds; it was four calls, each with its own deadline and
/// packing): the remembered 404, the fresh index's entry with when its round started, and the
/// node's record. `Err`: the node is missing, by the rule that says so (a remembered 404, or
/// the fresh index has no such node). Decided as the calls one after the other did, store
/// errors counted per read.
async fn uuid_facts(r: &AgentRequest<'_>, uuid: &str) -> Result<UuidFacts, Rule> {
    let store = &r.edge.store;
    let sync = &r.edge.config.sync;
    let mut step = crate::store::ReadStep::new();
    let not_found = store.negative.read_heartbeat_not_found(&mut step, uuid);
    let by = crate::store::IndexKey::Uuid(uuid);
    let index = sync.enabled.then(|| store.index.read_lookup(&mut step, by));
    let record = store.records.read(&mut step, uuid);
    let mut replies = match store.read(step).await {
        Ok(replies) => replies,
        Err(err) => {
            // Each read the calls made failed: the marker, the index, the record.
            for _ in 0..if sync.enabled { 3 } else { 2 } {
                store_error(r, &err);
            }
            return Ok((None, 0, None, None));
        }
    };
    match replies.take(not_found) {
        Ok(true) => return Err(Rule::NegativeCache),
        Ok(false) => {}
        Err(err) => store_error(r, &err),
    }
    let now = crate::store::now_ms();
    let (indexed, synced_at, hint) = match index {
        None => (None, 0, None),
        Some(slot) => match store.index.take_lookup(&mut replies, slot, by).await {
            Ok(read) => match read.synced_at_ms {
                Some(at) if crate::sync::index_is_fresh_at(sync, at, now) => {
                    (Some(read.node), at, None)
                }
                Some(at) if crate::sync::index_guides_class_at(sync, at, now) => {
                    (None, 0, read.node)
                }
                _ => (None, 0, None),
            },
            Err(err) => {
                store_error(r, &err);
                (None, 0, None)
            }
        },
    };
    if matches!(indexed, Some(None)) {
        return Err(Rule::IndexNotFound);
    }
    let record = match replies.take(record) {
        Ok(rec) => rec,
        Err(err) => {
            store_error(r, &err);
            None
        }
    };
    Ok((indexed, synced_at, record, hint))
}

/// The facts of a node known not to be missing.
fn known_facts(
    indexed: Option<Option<IndexedNode>>,
    synced_at: u64,
    record: Option<NodeRecord>,
    stale: Option<IndexedNode>,
) -> NodeFacts {
    let ironic = indexed
        .flatten()
        .map(|node| with_newer_token_knowledge(node, record.as_ref(), synced_at));
    // The hint obeys the session rule too: after a forwarded action, none.
    let class_hint = stale.filter(|n| {
        super::session::state(record.as_ref(), Some(n)) != super::session::SessionState::Unsettled
    });
    // After an action forwarded on the node, what the gateway knew of its agent session is
    // not used until Ironic's outcome is known.
    let (record, ironic) = super::session::view(record, ironic);
    NodeFacts {
        missing: None,
        record,
        ironic,
        class_hint,
    }
}

fn is_canonical_uuid(ident: &str) -> bool {
    ident.len() == 36 && ident::is_uuid_like(ident)
}

/// What a fresh index says of the heartbeat's node (`Some(None)`: Ironic has no such node),
/// with when its round started. A canonical UUID is looked up by UUID, a name by name (Ironic
/// looks any other ident up by name); a UUID-like ident in another spelling is not decided
/// here (Ironic matches it as the database does).
async fn indexed_by_ident(r: &AgentRequest<'_>, ident: &str) -> Option<(Option<IndexedNode>, u64)> {
    // (A canonical UUID is read by `uuid_facts`.)
    if ident::is_uuid_like(ident) {
        return None;
    }
    let synced_at = r.fresh_index_synced_at().await?;
    match r.edge.store.index.node_named(ident).await {
        Ok(node) => Some((node, synced_at)),
        Err(err) => {
            store_error(r, &err);
            None
        }
    }
}

/// The index's view of a node, corrected by what the gateway saw after the round that wrote
/// it started: the freshest knowledge wins. A token Ironic minted (or accepted) since is held,
/// whatever the index says (a freshly booted agent would otherwise count as unverified until
/// the next round, and under load rounds are slow), and the `agent_url` is the one Ironic
/// accepted in that agent session (none yet after a mint): an older `agent_url` in the index
/// must not let a heartbeat with another `callback_url` through, least of all into the relay
/// while Ironic is down. A token wiped since the gateway last saw it in use still shows.
pub fn with_newer_token_knowledge(
    mut node: IndexedNode,
    record: Option<&NodeRecord>,
    index_round_started_ms: u64,
) -> IndexedNode {
    let newer = record.filter(|r| r.token_hash.is_some()).filter(|r| {
        r.token_seen_ms
            .is_some_and(|at| at >= index_round_started_ms)
    });
    if let Some(r) = newer {
        node.token_held = true;
        node.agent_url = r.agent_url.clone();
    }
    node
}

async fn known_missing(r: &AgentRequest<'_>, ident: &str) -> bool {
    match r.edge.store.negative.heartbeat_not_found(ident).await {
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
    // (Redis's failures are logged once per incident: `crate::incident`.)
    log::debug!("heartbeat: {e}; carrying on without the store");
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
            last_heartbeat: None,
            token_seen_ms: None,
            unsettled_since_ms: None,
        }
    }

    #[test]
    fn unknown_node_or_token_is_forwarded() {
        assert_eq!(
            decide(&hb("t", "https://a:9999"), None, None),
            Decision::Forward
        );
        assert_eq!(
            decide(&hb("t", "https://a:9999"), Some(&rec(None, None)), None),
            Decision::Forward
        );
    }

    #[test]
    fn matching_token_is_forwarded() {
        let r = rec(Some("good"), Some("https://a:9999"));
        assert_eq!(
            decide(&hb("good", "https://a:9999"), Some(&r), None),
            Decision::Forward
        );
        assert_eq!(
            decide(
                &hb("good", "https://a:9999"),
                Some(&rec(Some("good"), None)),
                None
            ),
            Decision::Forward
        );
    }

    #[test]
    fn changed_callback_with_matching_token_is_refused() {
        let r = rec(Some("good"), Some("https://a:9999"));
        assert_eq!(
            decide(&hb("good", "https://b:9999"), Some(&r), None),
            Decision::Answer(callback_url_changed())
        );
    }

    #[test]
    fn mismatched_token_gets_one_forward_slot() {
        let r = rec(Some("good"), Some("https://a:9999"));
        assert_eq!(
            decide(&hb("bad", "https://a:9999"), Some(&r), None),
            Decision::ForwardIfSlot(invalid_token())
        );
        // Ironic checks the URL first, so that is the message when both differ.
        assert_eq!(
            decide(&hb("bad", "https://b:9999"), Some(&r), None),
            Decision::ForwardIfSlot(callback_url_changed())
        );
    }

    #[test]
    fn a_token_seen_after_the_index_round_started_is_held() {
        let view = IndexedNode {
            token_held: false,
            ..indexed("manageable", None)
        };
        let mut r = rec(Some("good"), None);
        // Minted after the round started: the index could not know yet.
        r.token_seen_ms = Some(2_000);
        assert!(with_newer_token_knowledge(view.clone(), Some(&r), 1_000).token_held);
        // Seen before the round started and the round found none: wiped since.
        assert!(!with_newer_token_knowledge(view.clone(), Some(&r), 3_000).token_held);
        // Nothing known, or no token: the index stands.
        assert!(!with_newer_token_knowledge(view.clone(), None, 0).token_held);
        let none = rec(None, None);
        assert!(!with_newer_token_knowledge(view.clone(), Some(&none), 0).token_held);
    }

    #[test]
    fn ironic_view_overrides_what_traffic_taught() {
        let r = rec(Some("good"), Some("https://a:9999"));
        let mut view = IndexedNode {
            token_held: false,
            ..indexed("manageable", None)
        };
        // Wiped on Ironic (a power off made there): Ironic refuses any token, but a new one
        // may have been minted since the round, so once per presented token per interval it
        // is asked.
        assert_eq!(
            decide(&hb("good", "https://b:9999"), Some(&r), Some(&view)),
            Decision::ForwardIfSlot(invalid_token())
        );
        assert_eq!(
            decide(&hb("bad", "https://b:9999"), Some(&r), Some(&view)),
            Decision::ForwardIfSlot(invalid_token())
        );
        // Token still held, agent_url as Ironic has it now.
        view.token_held = true;
        view.agent_url = Some("https://b:9999".into());
        assert_eq!(
            decide(&hb("good", "https://b:9999"), Some(&r), Some(&view)),
            Decision::Forward
        );
        assert_eq!(
            decide(&hb("good", "https://a:9999"), Some(&r), Some(&view)),
            Decision::Answer(callback_url_changed())
        );
    }

    #[test]
    fn a_node_known_to_exist_with_an_unverifiable_token_gets_slots() {
        let held = IndexedNode {
            token_held: true,
            ..indexed("manageable", Some("https://a:9999"))
        };
        let none_held = IndexedNode {
            token_held: false,
            ..indexed("manageable", None)
        };
        type Case<'a> = (&'a str, Option<&'a IndexedNode>, &'a str, Decision);
        let cases: [Case; 4] = [
            (
                "token never seen, node holds one",
                Some(&held),
                "https://a:9999",
                Decision::ForwardIfSlot(invalid_token()),
            ),
            (
                "token never seen, callback_url differs from Ironic's",
                Some(&held),
                "https://b:9999",
                Decision::ForwardIfSlot(callback_url_changed()),
            ),
            (
                "node holds no token",
                Some(&none_held),
                "https://b:9999",
                Decision::ForwardIfSlot(invalid_token()),
            ),
            (
                "nothing known of the node",
                None,
                "https://b:9999",
                Decision::Forward,
            ),
        ];
        for (what, view, url, want) in cases {
            assert_eq!(decide(&hb("t", url), None, view), want, "{what}");
        }
    }

    #[test]
    fn the_freshest_agent_url_wins() {
        let old_index = indexed("manageable", None);
        let mut r = rec(Some("good"), Some("https://a:9999"));
        r.token_seen_ms = Some(2_000);
        // The gateway saw Ironic accept https://a after the round began: a forged heartbeat
        // with the token and another callback_url is refused, never forwarded or kept.
        let view = with_newer_token_knowledge(old_index.clone(), Some(&r), 1_000);
        assert_eq!(view.agent_url.as_deref(), Some("https://a:9999"));
        assert_eq!(
            decide(&hb("good", "https://evil:9999"), Some(&r), Some(&view)),
            Decision::Answer(callback_url_changed())
        );
        // A round newer than what the gateway saw: Ironic's view stands.
        let newer_index = indexed("manageable", Some("https://c:9999"));
        let view = with_newer_token_knowledge(newer_index, Some(&r), 3_000);
        assert_eq!(view.agent_url.as_deref(), Some("https://c:9999"));
        // A token minted after the round, no heartbeat accepted yet: no agent_url, whatever an
        // earlier agent session left in the index.
        let minted = NodeRecord {
            agent_url: None,
            ..r.clone()
        };
        let stale = indexed("manageable", Some("https://old-session:9999"));
        assert_eq!(
            with_newer_token_knowledge(stale, Some(&minted), 1_000).agent_url,
            None
        );
    }

    #[test]
    fn the_coalescing_window_is_capped_by_the_heartbeat_timeout() {
        for (configured, timeout, want_ms) in [
            (60, 0, 60_000),
            (60, 300, 60_000),
            (240, 300, 100_000),
            (60, 30, 10_000),
            (0, 30, 0),
        ] {
            assert_eq!(
                coalesce_window(configured, timeout),
                Duration::from_millis(want_ms),
                "{configured} s, timeout {timeout} s"
            );
        }
    }

    #[test]
    fn mismatch_tags_name_tokens_without_showing_them() {
        let a = mismatch_tag("AAAA-token-of-forty-three-characters-xxxxxx");
        assert_eq!(
            a,
            mismatch_tag("AAAA-token-of-forty-three-characters-xxxxxx")
        );
        assert_ne!(
            a,
            mismatch_tag("AAAA-token-of-forty-three-characters-xxxxxy")
        );
        assert_eq!(a.len(), 16);
        assert!(!a.contains("AAAA"));
    }

    fn indexed(state: &str, agent_url: Option<&str>) -> IndexedNode {
        IndexedNode {
            uuid: "n".into(),
            name: None,
            provision_state: state.into(),
            fast_track: crate::store::FastTrack::On,
            maintenance: false,
            token_held: true,
            agent_url: agent_url.map(str::to_string),
            in_transition: false,
            read_at_ms: 0,
        }
    }

    #[test]
    fn shield_coalesces_only_verified_repeats_in_record_only_states() {
        let url = "https://a:9999";
        let beat = hb("good", url);
        let mut r = rec(Some("good"), Some(url));
        let now = 1_000_000;
        let window = Duration::from_secs(60);
        r.last_heartbeat = Some((fingerprint(&beat), now - 10_000));
        let node = indexed("manageable", Some(url));
        assert_eq!(
            shield(&beat, Some(&r), Some(&node), now, window),
            Shield::Accept
        );
        // At least one per window reaches Ironic.
        assert_eq!(
            shield(&beat, Some(&r), Some(&node), now + 60_000, window),
            Shield::Forward
        );
        // Heartbeats drive work here: every one is forwarded.
        for state in HEARTBEAT_DRIVES_WORK {
            assert_eq!(
                shield(
                    &beat,
                    Some(&r),
                    Some(&indexed(state, Some(url))),
                    now,
                    window
                ),
                Shield::Forward
            );
        }
        // Unknown state, unverified token, a changed field, coalescing off: forwarded.
        assert_eq!(shield(&beat, Some(&r), None, now, window), Shield::Forward);
        assert_eq!(
            shield(&hb("bad", url), Some(&r), Some(&node), now, window),
            Shield::Forward
        );
        let mut other = hb("good", url);
        other.request.agent_version = Some("13.0.1".into());
        assert_eq!(
            shield(&other, Some(&r), Some(&node), now, window),
            Shield::Forward
        );
        assert_eq!(
            shield(&beat, Some(&r), Some(&node), now, Duration::ZERO),
            Shield::Forward
        );
        // Ironic holds no token, or another agent_url: Ironic must see it.
        let mut wiped = node.clone();
        wiped.token_held = false;
        assert_eq!(
            shield(&beat, Some(&r), Some(&wiped), now, window),
            Shield::Forward
        );
        assert_eq!(
            shield(
                &beat,
                Some(&r),
                Some(&indexed("manageable", None)),
                now,
                window
            ),
            Shield::Forward
        );
    }

    #[test]
    fn the_token_checked_once_decides_as_each_check_did() {
        let url = "https://a:9999";
        let node = indexed("manageable", Some(url));
        let mut seen = rec(Some("good"), Some(url));
        let beat = hb("good", url);
        seen.last_heartbeat = Some((fingerprint(&beat), 1_000));
        let window = Duration::from_secs(60);
        for (what, beat, record) in [
            ("verified", hb("good", url), Some(seen.clone())),
            ("wrong token", hb("bad", url), Some(seen.clone())),
            (
                "other url",
                hb("good", "https://b:9999"),
                Some(seen.clone()),
            ),
            ("no hash", hb("good", url), Some(rec(None, Some(url)))),
            ("no record", hb("good", url), None),
        ] {
            let record = record.as_ref();
            let matches = token_matches(&beat, record);
            for ironic in [None, Some(&node)] {
                assert_eq!(
                    decide(&beat, record, ironic),
                    decide_with(&beat, record, ironic, matches),
                    "{what}"
                );
                assert_eq!(
                    shield(&beat, record, ironic, 2_000, window),
                    shield_with(&beat, record, ironic, 2_000, window, matches),
                    "{what}"
                );
            }
        }
        assert!(token_matches(&beat, Some(&seen)));
        assert!(!token_matches(&hb("bad", url), Some(&seen)));
        assert!(!token_matches(&beat, None));
    }

    #[test]
    fn fingerprints_tell_fields_apart() {
        let mut a = hb("t", "https://a:9999");
        let b = a.clone();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        a.request.agent_status = Some("".into());
        assert_ne!(fingerprint(&a), fingerprint(&b), "empty is not absent");
        assert_eq!(
            fingerprint(&hb("t1", "u")),
            fingerprint(&hb("t2", "u")),
            "the token is not part of it"
        );
    }

    #[test]
    fn invalid_token_answer_is_recognised() {
        let body = br#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"Invalid or missing agent token received.\", \"debuginfo\": null}"}"#;
        assert!(is_invalid_token_answer(body));
        assert!(!is_invalid_token_answer(b"{}"));
    }

    #[test]
    fn only_ironics_node_not_found_is_remembered() {
        let uuid = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123";
        let not_found = node_not_found(uuid);
        assert!(is_node_not_found_answer(&not_found.body[..], uuid));
        assert!(!is_node_not_found_answer(&not_found.body[..], "other"));
        let gate = crate::ironic::error::resource_not_found();
        assert!(!is_node_not_found_answer(&gate.body[..], uuid));
    }
}
