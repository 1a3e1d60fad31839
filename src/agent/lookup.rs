//! The lookup path, `GET /v1/lookup`:
//! 1. Ironic's argument checks, in Ironic's order, answered at the edge;
//! 2. a remembered upstream 404 for the same normalised request: answered at the edge;
//! 3. otherwise one request per normalised key goes upstream (single flight, in a task of its
//!    own that runs to its end), a 409 (node locked while the token is minted) is retried
//!    within a short budget, and the answer is relayed; if Ironic has not answered by the
//!    agent's deadline, the agent gets 503 (it retries) and the answer is kept for the retry.
//!    A minted token is handed to the requesting agent only: Redis keeps its salted hash and
//!    the node data with the token masked.

use super::flight::{FlightAnswer, FlightEnd, Flights};
use super::forward;
use super::AgentRequest;
use crate::config::SyncConfig;
use crate::disposition::{AfterWrite, Disposition, Predicted, Rule};
use crate::edge::{Edge, LocalAnswer};
use crate::ironic::error::resource_not_found;
use crate::ironic::ident::Mac;
use crate::ironic::lookup::{check_lookup, LookupQuery};
use crate::ironic::states::lookup_allowed;
use crate::ironic::token::{lookup_token, replace_token, LookupToken, MASK};
use crate::ironic::version::ApiVersion;
use crate::ironic::{version, HeaderSet};
use crate::plugin::RequestCtx;
use crate::store::seal::SealedPlace;
use crate::store::{token_hash, FlightResult, KeptMinted, ReadStep, WriteStep};
use crate::store::{FastTrack, IndexKey, IndexRead, IndexedNode};
use crate::upstream::governor::Class;
use crate::upstream::UpstreamResponse;
use bytes::Bytes;
use pingora::proxy::Session;
use rand::Rng;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// What a lookup's trip to Ironic got.
enum Asked {
    Answer(Box<UpstreamResponse>),
    Unreachable,
}

pub(crate) async fn handle(
    r: &AgentRequest<'_>,
    flights: &Arc<Flights>,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> pingora::Result<Disposition> {
    let query = match check_lookup(session.req_header().uri.query(), r.version) {
        Ok(q) => q,
        Err(e) => {
            let refusal = r.answer_error(Rule::EdgeError, &e);
            if !r.shadow() {
                return Ok(refusal);
            }
            // Shadow mode: Ironic answers (with the token guard), compared with the refusal.
            let subject = session.req_header().uri.query().unwrap_or_default();
            let predicted = refusal.prediction(subject);
            let relayed = forward_protected(r, true, session, ctx).await?;
            return Ok(relayed.predicting(predicted));
        }
    };
    let cache_key = query.cache_key();
    // Who keeps getting 404 (`crate::unknown`): the MAC set as shown, bounded.
    let mac_set = crate::unknown::mac_set_of(&cache_key);
    let answer = decide_and_answer(r, flights, query, cache_key, session, ctx).await?;
    if answer.status() == Some(404) {
        let source = ctx.client.as_ref().map(|c| c.ip);
        r.edge.unknown.not_found(&mac_set, source);
    }
    Ok(answer)
}

async fn decide_and_answer(
    r: &AgentRequest<'_>,
    flights: &Arc<Flights>,
    query: crate::ironic::lookup::LookupQuery,
    cache_key: String,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> pingora::Result<Disposition> {
    if query.invalid_macs > 0 {
        // The count only: the addresses are the caller's input, of any length.
        log::debug!(
            "lookup: ignoring {} invalid MAC addresses",
            query.invalid_macs
        );
    }
    let key = bounded_key(cache_key);
    let caller = replay_key(r.edge, &key, ctx);
    let mut facts = read_facts(r, &query, &key, caller.as_deref()).await;
    // Shadow mode: what the edge would have answered, Ironic answering instead.
    let mut predicted = None;
    match decide_lookup(&query, &facts, &r.edge.config.sync, crate::store::now_ms()) {
        LookupDecision::HandOver => {
            if let Some(replay) = facts.replay.take() {
                if !r.shadow() {
                    return hand_over(r, replay);
                }
                predicted = replayed_in_shadow(r, replay, &key).await;
            }
        }
        LookupDecision::NotFound(rule) => {
            let not_found = r.answer_error(rule, &resource_not_found());
            if !r.shadow() {
                return Ok(not_found);
            }
            predicted = not_found.prediction(&key);
        }
        LookupDecision::AskIronic => {}
    }
    // Nothing of the parsed request is needed past this point: what waits for Ironic holds
    // the request itself (shared, not copied: see `forward::Recipe`) and a key of fixed
    // size, never a copy of the caller's MAC list.
    let sent_query = capped_query(&query);
    drop(query);

    let sent = sent_query.as_deref();
    let until = forward::answer_deadline(r.edge, ctx);
    if predicted.is_some() {
        // Not a lookup the edge would have sent: no flight to join.
        return ask_detached(r, &key, sent, caller, predicted, session, ctx, until).await;
    }
    let trip = match LookupTrip::prepare(r, session, ctx, &key, sent, caller.clone()) {
        Ok(trip) => trip,
        Err(_) => return Ok(forward::unavailable(r)),
    };
    let lease = Duration::from_millis(r.edge.config.upstream.agent_answer_within_ms);
    let answer = flights
        .join_or_start(&key, lease, move |end| trip.run(Some(end)))
        .wait(until)
        .await;
    match answer {
        FlightAnswer::Led(Asked::Answer(resp)) => {
            relay_answer(r, &key, caller.as_deref(), &resp, None).await
        }
        FlightAnswer::Led(Asked::Unreachable) => Ok(forward::unavailable(r)),
        FlightAnswer::Shared { status, body } => {
            let a = LocalAnswer {
                status,
                content_type: Some("application/json"),
                body: Bytes::from(body),
                header_set: HeaderSet::Versions,
                allow: None,
            };
            let shared = r.answer_local(Rule::Shared, a);
            if !r.shadow() {
                return Ok(shared);
            }
            let predicted = shared.prediction(&key);
            ask_detached(r, &key, sent, caller, predicted, session, ctx, until).await
        }
        // The flight succeeded: if it was this caller's own earlier attempt (same request, same
        // address) that minted a token, it gets that answer, once; otherwise it asks Ironic.
        FlightAnswer::AskUpstream => {
            let predicted = match take_replay(r.edge, r.version, caller.as_deref()).await {
                Some(replay) if !r.shadow() => return hand_over(r, replay),
                Some(replay) => replayed_in_shadow(r, replay, &key).await,
                None => None,
            };
            ask_detached(r, &key, sent, caller, predicted, session, ctx, until).await
        }
        FlightAnswer::StillRunning => still_at_ironic(r),
    }
}

/// One lookup's trip to Ironic, owning all it needs: it runs to its end in a task of its own,
/// so that an answer that minted a token is always recorded (and kept for a replay), even when
/// the agent stopped waiting for it.
struct LookupTrip {
    prepared: forward::Prepared,
    version: ApiVersion,
    key: String,
    caller: Option<String>,
}

impl LookupTrip {
    /// `query`: sent in place of the agent's ([`capped_query`]).
    fn prepare(
        r: &AgentRequest<'_>,
        session: &Session,
        ctx: &RequestCtx,
        key: &str,
        query: Option<&str>,
        caller: Option<String>,
    ) -> Result<Self, crate::upstream::UpstreamError> {
        let mut prepared = forward::prepare(r, session, ctx, Class::Mint, key, &Bytes::new())?;
        if let Some(q) = query {
            prepared.set_query(q)?;
        }
        Ok(LookupTrip {
            prepared,
            version: r.version,
            key: key.to_string(),
            caller,
        })
    }

    /// Asks Ironic; returns the answer and what the flight's waiters get. What the answer
    /// taught is written in one step, with the end of the flight (`end`) if it led one.
    async fn run(self, end: Option<FlightEnd>) -> (Asked, FlightResult) {
        let asked = ask_with_conflict_retries(&self.prepared).await;
        let answer = match &asked {
            Asked::Answer(resp) => Some(&**resp),
            Asked::Unreachable => None,
        };
        let edge = &self.prepared.edge;
        let caller = self.caller.as_deref();
        let shared =
            after_upstream_answer(edge, self.version, &self.key, caller, answer, end.as_ref())
                .await;
        (asked, shared)
    }
}

/// Asks Ironic outside a flight, in a trip of its own, waiting for it until `until`;
/// `predicted`: what the edge would have answered instead (shadow mode).
#[allow(clippy::too_many_arguments)]
async fn ask_detached(
    r: &AgentRequest<'_>,
    key: &str,
    query: Option<&str>,
    caller: Option<String>,
    predicted: Option<Predicted>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    until: tokio::time::Instant,
) -> pingora::Result<Disposition> {
    let trip = match LookupTrip::prepare(r, session, ctx, key, query, caller.clone()) {
        Ok(trip) => trip,
        Err(_) => return Ok(forward::unavailable(r)),
    };
    let running = tokio::spawn(trip.run(None));
    match tokio::time::timeout_at(until, running).await {
        Ok(Ok((Asked::Answer(resp), _))) => {
            relay_answer(r, key, caller.as_deref(), &resp, predicted).await
        }
        Ok(Ok((Asked::Unreachable, _))) | Ok(Err(_)) => Ok(forward::unavailable(r)),
        Err(_) => still_at_ironic(r),
    }
}

/// The agent's time is nearly up and Ironic has not answered: a 503 now (IPA retries a lookup
/// after any failure, a timeout or a 503 alike) beats a timeout, and the trip runs on, its
/// answer kept for the retry.
fn still_at_ironic(r: &AgentRequest<'_>) -> pingora::Result<Disposition> {
    log::warn!(
        "lookup: Ironic has not answered within {} ms; 503 to the agent, whose retry gets the answer",
        r.edge.config.upstream.agent_answer_within_ms
    );
    Ok(forward::unavailable(r))
}

/// Relays Ironic's lookup answer. An answer of `"******"` (a token is held) may be the trace
/// of this caller's own earlier attempt, whose minted answer arrived meanwhile: that is handed
/// over instead, since `"******"` would shut the agent down (in shadow mode, Ironic's answer
/// is relayed and the hand-over only predicted). `predicted`: what the edge would have
/// answered (shadow mode).
async fn relay_answer(
    r: &AgentRequest<'_>,
    key: &str,
    caller: Option<&str>,
    resp: &UpstreamResponse,
    mut predicted: Option<Predicted>,
) -> pingora::Result<Disposition> {
    let masked =
        resp.status() == 200 && matches!(lookup_token(&resp.body), Some(LookupToken::Masked));
    if masked && predicted.is_none() {
        if let Some(replay) = take_replay(r.edge, r.version, caller).await {
            if !r.shadow() {
                return hand_over(r, replay);
            }
            predicted = replayed_in_shadow(r, replay, key).await;
        }
    }
    let body = protect_token(r, resp);
    Ok(forward::relay(resp, &body).predicting(predicted))
}

/// Shadow mode: a kept minted answer the edge would have handed over is only predicted, and
/// used up as the hand-over would have (so that later lookups are decided as in enforce mode).
async fn replayed_in_shadow(r: &AgentRequest<'_>, replay: Replay, key: &str) -> Option<Predicted> {
    let predicted = r
        .answer_local(Rule::Replayed, replay.answer)
        .prediction(key);
    minted_answer_handed_over(r.edge, &replay.caller, &replay.claim, true).await;
    predicted
}

/// What a lookup's decision needs, read in one step ([`read_facts`]). `R`: a kept minted
/// answer taken for this caller (a [`Replay`]; anything in tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LookupFacts<R> {
    /// This caller's kept minted answer, taken (claimed) and opened for it.
    pub(crate) replay: Option<R>,
    /// Ironic answered 404 to this normalised lookup less than `not_found_ttl_seconds` ago.
    pub(crate) not_found: bool,
    /// What the node index holds for it (`None`: not read, or unreadable).
    pub(crate) index: Option<IndexRead>,
}

impl<R> Default for LookupFacts<R> {
    /// Nothing known (Redis did not answer): the lookup is Ironic's.
    fn default() -> Self {
        LookupFacts {
            replay: None,
            not_found: false,
            index: None,
        }
    }
}

/// How a lookup is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LookupDecision {
    /// With this caller's kept minted answer, once.
    HandOver,
    /// Ironic's 404, at the edge, by the node index or the negative cache.
    NotFound(Rule),
    /// Only Ironic can answer (or nothing known tells).
    AskIronic,
}

/// Decides a lookup from the facts read for it, at `now_ms` (Unix ms). Pure. In order: the
/// caller's lost minted answer; the node index, if it may decide ([`index_may_decide`]) and is
/// complete and fresh; a remembered 404; else Ironic.
pub(crate) fn decide_lookup<R>(
    query: &LookupQuery,
    facts: &LookupFacts<R>,
    sync: &SyncConfig,
    now_ms: u64,
) -> LookupDecision {
    if facts.replay.is_some() {
        return LookupDecision::HandOver;
    }
    if let Some(index) = facts
        .index
        .as_ref()
        .filter(|_| index_may_decide(query, sync))
    {
        let fresh = index
            .synced_at_ms
            .is_some_and(|at| crate::sync::index_is_fresh_at(sync, at, now_ms));
        if fresh
            && decide_from_index(query, &index.nodes, index.node.as_ref(), sync)
                == IndexVerdict::NotFound
        {
            return LookupDecision::NotFound(Rule::IndexNotFound);
        }
    }
    if facts.not_found {
        return LookupDecision::NotFound(Rule::NegativeCache);
    }
    LookupDecision::AskIronic
}

/// What the node index says of a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexVerdict {
    /// Ironic would answer 404 (no such node, MACs of no node or of two nodes, a state in
    /// which lookup is refused).
    NotFound,
    /// Only Ironic can answer (or the index cannot tell).
    AskIronic,
}

/// Decides a lookup from a complete, fresh index: `nodes` are the distinct nodes of its valid
/// MACs (two at most are enough), `node` the one node the request designates (if the index
/// has it). Pure.
pub fn decide_from_index(
    query: &LookupQuery,
    nodes: &[String],
    node: Option<&IndexedNode>,
    sync: &SyncConfig,
) -> IndexVerdict {
    if query.node_uuid.is_none() {
        let distinct: HashSet<&str> = nodes.iter().map(String::as_str).collect();
        if distinct.len() != 1 {
            return IndexVerdict::NotFound;
        }
    }
    let Some(node) = node else {
        // A uuid the index does not know is unknown to Ironic too; a MAC whose node entry is
        // missing is an inconsistency of the index: let Ironic answer.
        return if query.node_uuid.is_some() {
            IndexVerdict::NotFound
        } else {
            IndexVerdict::AskIronic
        };
    };
    let fast_track = match node.fast_track {
        FastTrack::Default => sync.fast_track_default,
        FastTrack::On => true,
        FastTrack::Off => false,
        // Ironic answers 400 for this: only Ironic can say it.
        FastTrack::Invalid => return IndexVerdict::AskIronic,
    };
    if lookup_allowed(&node.provision_state, fast_track, sync.restrict_lookup) {
        IndexVerdict::AskIronic
    } else {
        IndexVerdict::NotFound
    }
}

/// Whether the node index may decide this lookup: the sync is on and, by `node_uuid`, only its
/// canonical form (Ironic matches `node_uuid` verbatim, case-sensitively on SQLite, not on
/// MySQL; the index holds the canonical form).
fn index_may_decide(query: &LookupQuery, sync: &SyncConfig) -> bool {
    if !sync.enabled {
        return false;
    }
    match &query.node_uuid {
        Some(u) => {
            u.len() == 36 && crate::ironic::ident::is_uuid_like(u) && *u == u.to_ascii_lowercase()
        }
        None => true,
    }
}

/// Reads what the lookup's decision needs in one step (one Redis round trip, none for what
/// the view holds): this caller's kept minted answer (taken with a claim), the node index's
/// entries with its markers, the remembered 404. Redis not answering is nothing known; a take
/// that may still run in Redis is released behind it.
async fn read_facts(
    r: &AgentRequest<'_>,
    query: &LookupQuery,
    key: &str,
    caller: Option<&str>,
) -> LookupFacts<Replay> {
    let edge = r.edge;
    let store = &edge.store;
    let mut step = ReadStep::new();
    let take = replay_taker(edge, r.version, caller).map(|caller| {
        let claim = crate::edge::request_id();
        let slot = store
            .replay
            .read_take(&mut step, caller, &claim, REPLAY_CLAIM);
        (caller, claim, slot)
    });
    let macs: Vec<String>;
    let index = if index_may_decide(query, &edge.config.sync) {
        let by = match &query.node_uuid {
            Some(u) => IndexKey::Uuid(u),
            None => {
                macs = query.macs.iter().map(Mac::to_string).collect();
                IndexKey::Macs(&macs)
            }
        };
        Some((store.index.read_lookup(&mut step, by), by))
    } else {
        None
    };
    let not_found = store.negative.read_lookup_not_found(&mut step, key);
    let mut replies = match store.read(step).await {
        Ok(replies) => replies,
        Err(e) => {
            store_error(edge, &e);
            if let Some((caller, claim, _)) = take {
                release_late(edge, caller, claim);
            }
            return LookupFacts::default();
        }
    };
    let mut facts = LookupFacts::default();
    if let Some((caller, claim, slot)) = take {
        match replies.take(slot) {
            Ok(Some(kept)) => facts.replay = open_replay(edge, caller, claim, kept).await,
            Ok(None) => {}
            Err(e) => {
                store_error(edge, &e);
                release_late(edge, caller, claim);
            }
        }
    }
    if let Some((slot, by)) = index {
        match store.index.take_lookup(&mut replies, slot, by).await {
            Ok(read) => facts.index = Some(read),
            Err(e) => store_error(edge, &e),
        }
    }
    match replies.take(not_found) {
        Ok(found) => facts.not_found = found,
        Err(e) => store_error(edge, &e),
    }
    facts
}

/// Forwards a lookup as it is (an alias path, an `Accept` only Ironic answers, an unknown
/// version range: `range_known` false, then an unreachable Ironic gets the proxy's 503
/// without version headers) and relays the answer without a stored token.
pub(crate) async fn forward_protected(
    r: &AgentRequest<'_>,
    range_known: bool,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> pingora::Result<Disposition> {
    let node = session.req_header().uri.to_string();
    match forward::send(r, session, ctx, Class::Mint, &node, &Bytes::new()).await {
        Ok(resp) => {
            if resp.status() == 200 {
                let mut step = WriteStep::new();
                learn_minted(
                    r.edge,
                    served_version(r, &resp),
                    None,
                    &resp.body,
                    &mut step,
                );
                if let Err(e) = r.edge.store.write(step).await {
                    store_error(r.edge, &e);
                }
            }
            let body = protect_token(r, &resp);
            Ok(forward::relay(&resp, &body))
        }
        Err(_) if range_known => Ok(forward::unavailable(r)),
        // With the range unknown, the 503 carries no version headers, as the proxy's does.
        Err(_) => Ok(Disposition::answer(
            Rule::Unavailable,
            LocalAnswer::error(&crate::ironic::error::upstream_unavailable()),
            None,
            None,
        )),
    }
}

/// Asks Ironic, retrying a 409 (node locked while minting the token: it fails fast since
/// Ironic 23) a few times with jitter inside the configured budget. IPA itself would sleep
/// 5-30 s on a 409, so absorbing a short lock here saves the agent a long pause.
async fn ask_with_conflict_retries(p: &forward::Prepared) -> Asked {
    let cfg = &p.edge.config.lookup;
    let deadline = (tokio::time::Instant::now() + Duration::from_millis(cfg.conflict_budget_ms))
        .min(p.deadline());
    let mut attempt = 0u32;
    loop {
        let resp = match p.send().await {
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

/// Learns from Ironic's answer (`None`: Ironic was not reached), in one write step with the
/// end of the flight the trip led (`end`): a 404 is remembered for the key; a freshly minted
/// token's hash (and the node data, token masked) is recorded for the heartbeat path. Returns
/// what the flight's waiters get.
async fn after_upstream_answer(
    edge: &Edge,
    version: ApiVersion,
    key: &str,
    caller: Option<&str>,
    resp: Option<&UpstreamResponse>,
    end: Option<&FlightEnd>,
) -> FlightResult {
    let mut step = WriteStep::new();
    let shared = match resp {
        Some(resp) => learn_answer(edge, version, key, caller, resp, &mut step),
        None => {
            let e = crate::ironic::error::upstream_unavailable();
            FlightResult::Shared {
                status: e.status,
                body: String::from_utf8_lossy(&e.body).into_owned(),
            }
        }
    };
    // Last: a waiter that asks again once the flight ended finds what it wrote.
    if let Some(end) = end {
        end.write(&mut step, &shared);
    }
    match edge.store.write(step).await {
        Ok(()) => {
            if let Some(end) = end {
                end.written();
            }
        }
        Err(e) => store_error(edge, &e),
    }
    shared
}

/// What Ironic's answer teaches, added to `step`; returns what the flight's waiters get.
fn learn_answer(
    edge: &Edge,
    version: ApiVersion,
    key: &str,
    caller: Option<&str>,
    resp: &UpstreamResponse,
    step: &mut WriteStep,
) -> FlightResult {
    let status = resp.status();
    let body = &resp.body;
    if status == 404 {
        let ttl = Duration::from_secs(edge.config.lookup.not_found_ttl_seconds);
        edge.store
            .negative
            .remember_lookup_not_found(step, key, ttl);
    }
    if status != 200 {
        return FlightResult::Shared {
            status,
            body: String::from_utf8_lossy(body).into_owned(),
        };
    }
    learn_minted(edge, version, caller, body, step);
    FlightResult::AskUpstream
}

/// A successful lookup answer in which Ironic minted the node's token (a raw token at 1.62+;
/// below, a raw token is a stored one leaking): its hash and the node data (token masked) are
/// recorded for the heartbeat path, whichever lookup form carried it, any remembered heartbeat
/// 404 of the node is forgotten, and the answer is kept for one replay to `caller`; all in
/// `step`.
fn learn_minted(
    edge: &Edge,
    version: ApiVersion,
    caller: Option<&str>,
    body: &[u8],
    step: &mut WriteStep,
) {
    learn_heartbeat_timeout(edge, body);
    if version < version::AGENT_TOKEN {
        return;
    }
    let (Some(LookupToken::Raw(token)), Some(uuid)) = (lookup_token(body), node_uuid(body)) else {
        return;
    };
    let store = &edge.store;
    let masked = replace_token(body, &token, &format!("\"{MASK}\"")).unwrap_or_default();
    let ttl = Duration::from_secs(edge.config.node_ttl_seconds);
    let hash = token_hash::hash_token(&token);
    store
        .records
        .write_token_minted(step, &uuid, &hash, &masked, ttl);
    store.negative.forget_heartbeat_not_found(step, &uuid);
    keep_for_replay(edge, caller, &uuid, body, step);
}

/// More addresses than a machine has NICs: no agent sends that many.
const MAX_SANE_ADDRESSES: usize = 128;

/// The characters of a `node_uuid` sent as they are in the capped query (the rest are
/// percent-encoded, and webob decodes them back to the same string).
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-');

/// The query Ironic is sent in place of the agent's, where a shorter one is sure to get the
/// same answer: a lookup by `node_uuid` with more addresses than any agent sends goes with
/// its `node_uuid` alone. Ironic reads the addresses only to log the invalid ones and to
/// refuse a lookup with neither a valid MAC nor a `node_uuid` (`LookupController.get_all`:
/// with a `node_uuid`, `Node.get_by_uuid(node_uuid)`, the addresses unread); whether the
/// query passes its argument checks does not depend on them either (`args.string_list`
/// takes any string or list), and the edge has already run those checks on the whole
/// query, in Ironic's order.
///
/// A list of MACs alone is sent as it is, however long: its answer depends on every
/// address (any of them belonging to a second node makes it a 404), and the node index,
/// which lags Ironic by up to its staleness bound, cannot prove that an address it does
/// not know is no port (one created since the last round may be another node's).
fn capped_query(query: &LookupQuery) -> Option<String> {
    let uuid = query.node_uuid.as_deref()?;
    if query.addresses_given <= MAX_SANE_ADDRESSES {
        return None;
    }
    log::debug!(
        "lookup: {} addresses with a node_uuid; Ironic is asked with the node_uuid alone",
        query.addresses_given
    );
    let encoded = percent_encoding::utf8_percent_encode(uuid, QUERY_VALUE);
    Some(format!("node_uuid={encoded}"))
}

/// The longest lookup key kept as it is; longer ones (long MAC lists) are replaced by their
/// digest before they are stored or copied into the flight, the trip, the queue and the replay.
const MAX_PLAIN_KEY: usize = 96;

/// The lookup's normalised key, of bounded size: the same request always gives the same key.
fn bounded_key(key: String) -> String {
    if key.len() <= MAX_PLAIN_KEY {
        return key;
    }
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    format!("digest:{}", token_hash::hex(&digest))
}

/// Whom a kept minted answer belongs to: the normalised request and the caller's address
/// (behind a trusted proxy, the client it forwarded for). `None` where nothing is kept for a
/// replay (no seal key, or the window off): every use of it stops there.
fn replay_key(edge: &Edge, key: &str, ctx: &RequestCtx) -> Option<String> {
    if edge.sealer.is_none() || edge.config.lookup.replay_window_seconds == 0 {
        return None;
    }
    let ip = ctx.client.as_ref()?.ip;
    Some(format!("{key}\0{ip}"))
}

/// Keeps the answer that carried a freshly minted token, sealed, for one replay, in `step`.
fn keep_for_replay(
    edge: &Edge,
    caller: Option<&str>,
    uuid: &str,
    body: &[u8],
    step: &mut WriteStep,
) {
    let window = edge.config.lookup.replay_window_seconds;
    let (Some(sealer), Some(caller)) = (edge.sealer.as_ref(), caller) else {
        return;
    };
    if window == 0 {
        return;
    }
    let place = SealedPlace::MintedAnswer {
        replay_key: caller,
        node: uuid,
    };
    let Some(sealed) = sealer.seal(&place, body) else {
        return;
    };
    let ttl = Duration::from_secs(window);
    edge.store
        .replay
        .write_put(step, caller, uuid, &sealed, ttl);
}

/// How long a taken minted answer stays claimed for its delivery (a local answer of a few KB):
/// a claim its taker could not confirm (the delivery failed, or the take ran late in a stalled
/// Redis) frees the answer for the next retry after this.
const REPLAY_CLAIM: Duration = Duration::from_secs(5);

/// A kept minted answer taken for one caller: delivered, then confirmed (so handed out at most
/// once).
struct Replay {
    answer: LocalAnswer,
    caller: String,
    claim: String,
}

/// The caller whose kept minted answer a lookup may take (`None`: no replay: no seal key, the
/// window off, a version without tokens, or no caller address).
fn replay_taker<'a>(edge: &Edge, version: ApiVersion, caller: Option<&'a str>) -> Option<&'a str> {
    edge.sealer.as_ref()?;
    if edge.config.lookup.replay_window_seconds == 0 || version < version::AGENT_TOKEN {
        return None;
    }
    caller
}

/// A kept minted answer for this caller, claimed for its delivery ([`hand_over`]).
async fn take_replay(edge: &Edge, version: ApiVersion, caller: Option<&str>) -> Option<Replay> {
    let caller = replay_taker(edge, version, caller)?;
    let claim = crate::edge::request_id();
    match edge.store.replay.take(caller, &claim, REPLAY_CLAIM).await {
        Ok(found) => open_replay(edge, caller, claim, found?).await,
        Err(e) => {
            store_error(edge, &e);
            release_late(edge, caller, claim);
            None
        }
    }
}

/// A take that failed may still run in Redis (a stall): sent after it on the same connection,
/// the release undoes its claim, so that the next retry finds the answer.
fn release_late(edge: &Edge, caller: &str, claim: String) {
    let (replay, caller) = (edge.store.replay.clone(), caller.to_string());
    tokio::spawn(async move {
        // Until Redis answers again (the claim expires by itself meanwhile anyway).
        for _ in 0..10 {
            let released = replay.release(&caller, &claim, REPLAY_CLAIM);
            if released.await.is_ok() {
                break;
            }
            tokio::time::sleep(REPLAY_CLAIM / 10).await;
        }
    });
}

/// Opens a kept minted answer taken for `caller` with `claim`; one that does not open (another
/// seal key, or moved from another caller's key) is dropped.
async fn open_replay(edge: &Edge, caller: &str, claim: String, kept: KeptMinted) -> Option<Replay> {
    let sealer = edge.sealer.as_ref()?;
    let place = SealedPlace::MintedAnswer {
        replay_key: caller,
        node: &kept.uuid,
    };
    let opened = sealer.open(&place, &kept.sealed);
    // Bound to its node twice: in the seal, and the answer's own node.
    let Some(body) = opened.filter(|b| node_uuid(b).as_deref() == Some(kept.uuid.as_str())) else {
        log::warn!(
            "lookup: a kept minted answer could not be opened (another seal key, or moved from \
             another caller's key): dropped"
        );
        edge.metrics.sealed_unopenable();
        if let Err(e) = edge.store.replay.confirm(caller, &claim).await {
            store_error(edge, &e);
        }
        return None;
    };
    log::info!("lookup: the caller's earlier answer was lost; handing its minted answer over once");
    Some(Replay {
        answer: LocalAnswer {
            status: 200,
            content_type: Some("application/json"),
            body: Bytes::from(body),
            header_set: HeaderSet::Versions,
            allow: None,
        },
        caller: caller.to_string(),
        claim,
    })
}

/// Hands a taken minted answer over: deleted once delivered, takeable again if not
/// ([`minted_answer_handed_over`], once the proxy wrote it).
fn hand_over(r: &AgentRequest<'_>, replay: Replay) -> pingora::Result<Disposition> {
    Ok(r.answer_local(Rule::Replayed, replay.answer)
        .then(AfterWrite::MintedAnswerHandedOver {
            caller: replay.caller,
            claim: replay.claim,
        }))
}

/// A kept minted answer was written to its caller (`delivered`) or not: deleted, or takeable
/// again for the caller's next retry.
pub(crate) async fn minted_answer_handed_over(
    edge: &Edge,
    caller: &str,
    claim: &str,
    delivered: bool,
) {
    let store = &edge.store;
    let done = if delivered {
        store.replay.confirm(caller, claim).await
    } else {
        store.replay.release(caller, claim, REPLAY_CLAIM).await
    };
    if let Err(e) = done {
        store_error(edge, &e);
    }
}

/// Below 1.62 Ironic returns the stored token itself to anyone who asks; the gateway answers
/// `null` there (what Ironic answers when no token is stored), so it never leaks. The version
/// that decides is the one Ironic states on its answer (it served that one), else the
/// request's; any answer that carries a raw token is checked, whatever its status.
fn protect_token(r: &AgentRequest<'_>, resp: &UpstreamResponse) -> Bytes {
    let body = resp.body.clone();
    if served_version(r, resp) >= version::AGENT_TOKEN {
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

/// Remembers the `heartbeat_timeout` Ironic hands agents (it caps the coalescing window).
fn learn_heartbeat_timeout(edge: &Edge, body: &[u8]) {
    let timeout = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("config")?.get("heartbeat_timeout")?.as_u64());
    if let Some(t) = timeout.filter(|t| *t > 0) {
        edge.heartbeat_timeout_s
            .store(t, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The version Ironic says it served the answer at (else the request's).
fn served_version(r: &AgentRequest<'_>, resp: &UpstreamResponse) -> ApiVersion {
    resp.header
        .headers
        .get(version::LEGACY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(ApiVersion::parse)
        .unwrap_or(r.version)
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

fn store_error(edge: &Edge, e: &crate::store::StoreError) {
    edge.metrics.store_error();
    // (Redis's failures are logged once per incident: `crate::incident`.)
    log::debug!("lookup: {e}; carrying on without the store");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_keys_are_bounded_whatever_the_request() {
        let short = "macs:52:54:00:00:00:01".to_string();
        assert_eq!(bounded_key(short.clone()), short);
        let macs: Vec<String> = (0..1500)
            .map(|i| format!("52:54:00:00:{:02x}:{:02x}", i / 256, i % 256))
            .collect();
        let long = format!("macs:{}", macs.join(","));
        let a = bounded_key(long.clone());
        assert!(a.len() <= MAX_PLAIN_KEY, "{} bytes", a.len());
        assert_eq!(
            a,
            bounded_key(long.clone()),
            "the same request, the same key"
        );
        assert_ne!(a, bounded_key(format!("{long},52:54:00:00:ff:ff")));
        // A plain key never collides with a digest.
        assert!(!short.starts_with("digest:"));
    }

    fn node(state: &str, fast_track: FastTrack) -> IndexedNode {
        IndexedNode {
            uuid: "1be26c0b-03f2-4d2e-ae87-c02d7f33c123".into(),
            name: None,
            provision_state: state.into(),
            fast_track,
            maintenance: false,
            token_held: false,
            agent_url: None,
            in_transition: false,
            read_at_ms: 0,
        }
    }

    fn by_macs(macs: &[&str]) -> LookupQuery {
        LookupQuery {
            node_uuid: None,
            macs: macs.iter().map(|m| Mac::parse(m).unwrap()).collect(),
            addresses_given: macs.len(),
            invalid_macs: 0,
        }
    }

    #[test]
    fn index_decisions() {
        let sync = SyncConfig::default();
        let u = || Some("1be26c0b-03f2-4d2e-ae87-c02d7f33c123".to_string());
        let n = || "1be26c0b-03f2-4d2e-ae87-c02d7f33c123".to_string();
        let q = by_macs(&["52:54:00:00:00:01", "52:54:00:00:00:02"]);
        // No MAC known: 404.
        assert_eq!(
            decide_from_index(&q, &[], None, &sync),
            IndexVerdict::NotFound
        );
        // MACs of two nodes: 404.
        assert_eq!(
            decide_from_index(&q, &[n(), "other".into()], None, &sync),
            IndexVerdict::NotFound
        );
        // One node, lookup state: ask Ironic (it mints the token).
        let cw = node("clean wait", FastTrack::Default);
        assert_eq!(
            decide_from_index(&q, &[n()], Some(&cw), &sync),
            IndexVerdict::AskIronic
        );
        // Wrong state, fast track aware.
        let m = node("manageable", FastTrack::Default);
        assert_eq!(
            decide_from_index(&q, &[n(), n()], Some(&m), &sync),
            IndexVerdict::NotFound
        );
        let m_ft = node("manageable", FastTrack::On);
        assert_eq!(
            decide_from_index(&q, &[n(), n()], Some(&m_ft), &sync),
            IndexVerdict::AskIronic
        );
        let ft_default_on = SyncConfig {
            fast_track_default: true,
            ..SyncConfig::default()
        };
        assert_eq!(
            decide_from_index(&q, &[n()], Some(&m), &ft_default_on),
            IndexVerdict::AskIronic
        );
        let active = node("active", FastTrack::On);
        assert_eq!(
            decide_from_index(&q, &[n()], Some(&active), &sync),
            IndexVerdict::NotFound
        );
        // Junk fast track: Ironic's 400, not ours to give.
        let junk = node("manageable", FastTrack::Invalid);
        assert_eq!(
            decide_from_index(&q, &[n()], Some(&junk), &sync),
            IndexVerdict::AskIronic
        );
        // A known MAC whose node entry is missing: ask Ironic.
        assert_eq!(
            decide_from_index(&q, &[n()], None, &sync),
            IndexVerdict::AskIronic
        );
        // By uuid: unknown is 404, the MACs do not matter.
        let by_uuid = LookupQuery {
            node_uuid: u(),
            ..by_macs(&["52:54:00:00:00:09"])
        };
        assert_eq!(
            decide_from_index(&by_uuid, &[], None, &sync),
            IndexVerdict::NotFound
        );
        assert_eq!(
            decide_from_index(&by_uuid, &[], Some(&cw), &sync),
            IndexVerdict::AskIronic
        );
    }

    /// The lookup's whole decision, from the facts read for it: one row per case.
    #[test]
    fn lookup_decisions() {
        use LookupDecision::*;
        const NOW: u64 = 1_700_000_000_000;
        let sync = SyncConfig {
            enabled: true,
            interval_seconds: 10,
            ..SyncConfig::default()
        };
        let uuid = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123";
        let cw = node("clean wait", FastTrack::Default);
        let active = node("active", FastTrack::Default);
        // A complete index read `age_ms` before NOW.
        let index = |age_ms: u64, nodes: &[&str], node: Option<&IndexedNode>| IndexRead {
            synced_at_ms: Some(NOW - age_ms),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            node: node.cloned(),
        };
        let incomplete = IndexRead {
            synced_at_ms: None,
            ..index(0, &[], None)
        };
        let facts = |replay: bool, not_found: bool, index: Option<IndexRead>| LookupFacts {
            replay: replay.then_some(()),
            not_found,
            index,
        };
        let macs = by_macs(&["52:54:00:00:00:01"]);
        let by_uuid = |u: &str| LookupQuery {
            node_uuid: Some(u.to_string()),
            ..by_macs(&[])
        };
        let upper = uuid.to_ascii_uppercase();
        let sync_off = SyncConfig {
            enabled: false,
            ..sync.clone()
        };
        let rows: Vec<(
            &str,
            LookupQuery,
            LookupFacts<()>,
            &SyncConfig,
            LookupDecision,
        )> = vec![
            (
                "nothing known",
                macs.clone(),
                facts(false, false, None),
                &sync,
                AskIronic,
            ),
            (
                "kept answer first",
                macs.clone(),
                facts(true, true, Some(index(0, &[], None))),
                &sync,
                HandOver,
            ),
            (
                "MACs of no node",
                macs.clone(),
                facts(false, false, Some(index(0, &[], None))),
                &sync,
                NotFound(Rule::IndexNotFound),
            ),
            (
                "MACs of two nodes",
                macs.clone(),
                facts(false, false, Some(index(0, &[uuid, "other"], None))),
                &sync,
                NotFound(Rule::IndexNotFound),
            ),
            (
                "one node, lookup state",
                macs.clone(),
                facts(false, false, Some(index(0, &[uuid], Some(&cw)))),
                &sync,
                AskIronic,
            ),
            (
                "one node, refusing state",
                macs.clone(),
                facts(false, false, Some(index(0, &[uuid], Some(&active)))),
                &sync,
                NotFound(Rule::IndexNotFound),
            ),
            (
                "index entry missing",
                macs.clone(),
                facts(false, false, Some(index(0, &[uuid], None))),
                &sync,
                AskIronic,
            ),
            (
                "remembered 404",
                macs.clone(),
                facts(false, true, Some(index(0, &[uuid], Some(&cw)))),
                &sync,
                NotFound(Rule::NegativeCache),
            ),
            (
                "remembered 404, no index",
                macs.clone(),
                facts(false, true, None),
                &sync,
                NotFound(Rule::NegativeCache),
            ),
            (
                "index just fresh",
                macs.clone(),
                facts(false, false, Some(index(25_000, &[], None))),
                &sync,
                NotFound(Rule::IndexNotFound),
            ),
            (
                "index stale",
                macs.clone(),
                facts(false, false, Some(index(25_001, &[], None))),
                &sync,
                AskIronic,
            ),
            (
                "index incomplete",
                macs.clone(),
                facts(false, false, Some(incomplete.clone())),
                &sync,
                AskIronic,
            ),
            (
                "sync off",
                macs.clone(),
                facts(false, false, Some(index(0, &[], None))),
                &sync_off,
                AskIronic,
            ),
            (
                "unknown uuid",
                by_uuid(uuid),
                facts(false, false, Some(index(0, &[uuid], None))),
                &sync,
                NotFound(Rule::IndexNotFound),
            ),
            (
                "known uuid",
                by_uuid(uuid),
                facts(false, false, Some(index(0, &[uuid], Some(&cw)))),
                &sync,
                AskIronic,
            ),
            (
                "uuid not canonical",
                by_uuid(&upper),
                facts(false, false, Some(index(0, &[], None))),
                &sync,
                AskIronic,
            ),
            (
                "uuid not canonical, 404 remembered",
                by_uuid(&upper),
                facts(false, true, None),
                &sync,
                NotFound(Rule::NegativeCache),
            ),
        ];
        for (case, query, facts, sync, expected) in rows {
            assert_eq!(decide_lookup(&query, &facts, sync, NOW), expected, "{case}");
        }
    }

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
