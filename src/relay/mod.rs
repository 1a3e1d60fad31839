//! The heartbeat relay. While Ironic fails (unreachable, timing out, 5xx, 503 for no free
//! conductor workers), a heartbeat whose token the gateway verified gets 202 at the edge
//! instead of an error (an error would send the agent into its 5-10 s retry mode and make the
//! storm worse), and the node's latest heartbeat is kept in Redis, sealed, since it carries
//! the agent token. This background service relays each kept heartbeat to Ironic once it
//! answers again, a bounded number at a time: every node's latest heartbeat reaches Ironic.
//! A relayer claims a kept heartbeat and deletes it only once Ironic took it, so that neither
//! a relayer that dies nor a take that runs late in a stalled Redis loses it; while the claim
//! holds no other relayer sends it.

use crate::edge::Edge;
use crate::upstream::governor::{Class, Lane};
use async_trait::async_trait;
use base64::Engine;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// What is sealed: the heartbeat exactly as the agent sent it (path with query, the headers
/// Ironic reads, body bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingHeartbeat {
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// base64
    pub body: String,
}

/// The request headers worth keeping: what Ironic reads to parse and version a heartbeat.
const KEPT_HEADERS: [&str; 6] = [
    "content-type",
    "x-openstack-ironic-api-version",
    "openstack-api-version",
    "accept",
    "user-agent",
    "x-openstack-request-id",
];

impl PendingHeartbeat {
    pub fn from_request(req: &RequestHeader, body: &[u8]) -> Self {
        let headers = req
            .headers
            .iter()
            .filter(|(n, _)| KEPT_HEADERS.contains(&n.as_str()))
            .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        PendingHeartbeat {
            path: req
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .to_string(),
            headers,
            body: base64::engine::general_purpose::STANDARD.encode(body),
        }
    }

    fn request(&self, host: &str) -> Option<(RequestHeader, Vec<u8>)> {
        let body = base64::engine::general_purpose::STANDARD
            .decode(&self.body)
            .ok()?;
        let mut req =
            RequestHeader::build("POST", self.path.as_bytes(), Some(self.headers.len() + 2))
                .ok()?;
        for (n, v) in &self.headers {
            req.append_header(n.clone(), v.as_str()).ok()?;
        }
        req.insert_header("Host", host).ok()?;
        req.insert_header("Content-Length", body.len().to_string())
            .ok()?;
        Some((req, body))
    }
}

/// Seals and keeps a heartbeat for the relay; `false` if it could not be kept (no key, Redis
/// down), in which case the caller must not pretend Ironic got it.
/// Whether Ironic did not take a heartbeat for now and it is worth sending again later: a
/// server failure (no free conductor workers among them), or 409, the node locked by another
/// operation (IPA would come back in 5-10 s for either).
pub fn ironic_did_not_take_it(status: u16) -> bool {
    status >= 500 || status == 409
}

pub async fn defer(edge: &Edge, uuid: &str, pending: &PendingHeartbeat) -> bool {
    let Some(sealer) = edge.sealer.as_ref() else {
        return false;
    };
    let Ok(plain) = serde_json::to_vec(pending) else {
        return false;
    };
    let place = crate::store::seal::SealedPlace::PendingHeartbeat { node: uuid };
    let Some(sealed) = sealer.seal(&place, &plain) else {
        return false;
    };
    let ttl = Duration::from_secs(edge.config.heartbeat.relay_ttl_seconds);
    match edge.store.relay.put(uuid, &sealed, ttl).await {
        Ok(()) => {
            edge.metrics.heartbeat_deferred();
            true
        }
        Err(e) => {
            edge.metrics.store_error();
            log::debug!("heartbeat of {uuid} could not be kept for the relay: {e}");
            false
        }
    }
}

pub struct HeartbeatRelay {
    edge: Arc<Edge>,
    /// Numbers the relay attempts: each waits in the governor's queue under a key of its own.
    workers: std::sync::atomic::AtomicUsize,
    /// Claims whose release failed (Redis stalled): released again before each wave, so that
    /// what they hold is relayed as soon as Redis answers, not only when they expire.
    unreleased: std::sync::Mutex<Vec<String>>,
    /// How often Ironic refused each node's kept heartbeat (in this process).
    refusals: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

/// A kept heartbeat Ironic answered without taking it (5xx, 409) this many times is dropped.
const MAX_REFUSALS: u32 = 5;

/// At most this many nodes' refusals are counted at once.
const MAX_REFUSAL_COUNTS: usize = 16_384;

/// At most this many failed releases are remembered (the rest expire by themselves).
const MAX_UNRELEASED: usize = 1024;

/// What one relay attempt came to.
enum Relayed {
    /// Nothing was waiting.
    Idle,
    Done,
    /// Ironic still fails: put back, try later.
    Failed,
}

impl HeartbeatRelay {
    pub fn new(edge: Arc<Edge>) -> Self {
        HeartbeatRelay {
            edge,
            workers: std::sync::atomic::AtomicUsize::new(0),
            unreleased: std::sync::Mutex::new(Vec::new()),
            refusals: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// How long a relayer holds a kept heartbeat it took: longer than a relay can take (the
    /// place in Ironic's budget is taken before the heartbeat, so the exchange with Ironic, with
    /// a margin of the agent's whole deadline), so that no other relayer takes it meanwhile; a
    /// relayer that dies holds it that long at most.
    fn claim_ttl(&self) -> Duration {
        let c = &self.edge.config.upstream;
        Duration::from_millis(
            c.agent_answer_within_ms
                + c.connect_timeout_ms
                + c.write_timeout_ms
                + c.read_timeout_ms
                + 5000,
        )
    }

    /// Gives a claim back (the relay failed, or the take's answer never came): the heartbeat is
    /// takeable again. If this fails too, the claim expires.
    async fn release(&self, uuid: &str, claim: &str) {
        let released = self.edge.store.relay.release(claim, self.claim_ttl()).await;
        if let Err(e) = released {
            log::debug!("kept heartbeat {uuid}: claim not released ({e}); released again later");
            if let Ok(mut list) = self.unreleased.lock() {
                if list.len() < MAX_UNRELEASED {
                    list.push(claim.to_string());
                }
            }
        }
    }

    /// Releases again the claims whose release failed.
    async fn retry_releases(&self) {
        let claims = match self.unreleased.lock() {
            Ok(mut list) => std::mem::take(&mut *list),
            Err(_) => return,
        };
        for claim in claims {
            self.release("(unknown)", &claim).await;
        }
    }

    async fn relay_one(&self) -> Relayed {
        let Some(sealer) = self.edge.sealer.as_ref() else {
            return Relayed::Idle;
        };
        // The place in Ironic's budget first, then the heartbeat: a relay never holds a kept
        // heartbeat while it waits (a newer one of the same node would then be relayed too).
        // It goes with the first heartbeats of sessions (what it keeps is mostly those, and
        // their nodes' sessions are unknown to Ironic until it arrives), before refreshes,
        // after lookups and heartbeats that drive a step.
        let worker = self
            .workers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        let permit = match self
            .edge
            .governor
            .enter(
                Class::First,
                Lane::Conductor,
                &format!("relay-{worker}"),
                until,
            )
            .await
        {
            Ok(p) => p,
            Err(_) => return Relayed::Failed,
        };
        let claim = crate::edge::request_id();
        let (uuid, sealed) = match self.edge.store.relay.take(&claim, self.claim_ttl()).await {
            Ok(Some(t)) => t,
            Ok(None) => return Relayed::Idle,
            Err(_) => {
                // The take may still run in Redis (a stall): sent after it on the same
                // connection, the release undoes its claim.
                self.release("(unknown)", &claim).await;
                return Relayed::Failed;
            }
        };
        let place = crate::store::seal::SealedPlace::PendingHeartbeat { node: &uuid };
        let pending = sealer
            .open(&place, &sealed)
            .and_then(|plain| serde_json::from_slice::<PendingHeartbeat>(&plain).ok());
        let t = self.edge.upstream.target();
        let Some((req, body)) = pending.and_then(|p| p.request(&format!("{}:{}", t.host, t.port)))
        else {
            log::warn!(
                "a kept heartbeat of {uuid} could not be opened (another seal key, or moved \
                 from another node's key): dropped"
            );
            self.edge.metrics.sealed_unopenable();
            self.confirm(&uuid, &claim, &sealed).await;
            return Relayed::Done;
        };
        self.edge
            .metrics
            .upstream_request(crate::metrics::Route::Heartbeat);
        let sent_at = std::time::Instant::now();
        let sent = self.edge.upstream.send(&req, &body).await;
        self.edge.metrics.upstream_exchange(
            crate::metrics::Route::Heartbeat,
            &sent,
            sent_at.elapsed(),
        );
        permit.answered(crate::upstream::governor::sample_of(&sent));
        match sent {
            Ok(resp) if !ironic_did_not_take_it(resp.status()) => {
                // Ironic has it (or refuses it for good, e.g. a token wiped meanwhile).
                self.forget_refusals(&uuid);
                self.edge.metrics.heartbeat_relayed();
                log::info!("relayed the kept heartbeat of {uuid}: {}", resp.status());
                self.confirm(&uuid, &claim, &sealed).await;
                Relayed::Done
            }
            Ok(resp) => {
                // Ironic answered and did not take it (5xx, 409): counted, and dropped after a
                // few such answers rather than retried forever into an Ironic that refuses it.
                if self.refused_again(&uuid) {
                    log::warn!(
                        "kept heartbeat of {uuid}: refused {MAX_REFUSALS} times ({}); dropped",
                        resp.status()
                    );
                    self.edge.metrics.heartbeat_dropped();
                    self.confirm(&uuid, &claim, &sealed).await;
                    return Relayed::Done;
                }
                self.release(&uuid, &claim).await;
                Relayed::Failed
            }
            Err(e) => {
                // Not reached: an outage, not a refusal; the heartbeat waits for Ironic.
                log::debug!("relay of {uuid}: {e}");
                self.release(&uuid, &claim).await;
                Relayed::Failed
            }
        }
    }

    /// Counts one more refusal of the node's kept heartbeat; `true` once it has had
    /// [`MAX_REFUSALS`] (its count is then forgotten).
    fn refused_again(&self, uuid: &str) -> bool {
        let Ok(mut counts) = self.refusals.lock() else {
            return false;
        };
        if counts.len() >= MAX_REFUSAL_COUNTS && !counts.contains_key(uuid) {
            // Bounded: past this many nodes refused at once, counting starts over.
            counts.clear();
        }
        let n = counts.entry(uuid.to_string()).or_insert(0);
        *n += 1;
        if *n >= MAX_REFUSALS {
            counts.remove(uuid);
            return true;
        }
        false
    }

    fn forget_refusals(&self, uuid: &str) {
        if let Ok(mut counts) = self.refusals.lock() {
            counts.remove(uuid);
        }
    }

    /// The claimed heartbeat is done with: deleted (unless a newer one replaced it). If this
    /// fails, the claim expires and the heartbeat is relayed once more (Ironic records it again).
    async fn confirm(&self, uuid: &str, claim: &str, sealed: &[u8]) {
        if let Err(e) = self.edge.store.relay.confirm(uuid, claim, sealed).await {
            log::warn!("kept heartbeat of {uuid}: relayed, not deleted ({e}); it may go again");
        }
    }
}

#[async_trait]
impl BackgroundService for HeartbeatRelay {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if self.edge.sealer.is_none() || !self.edge.config.heartbeat.relay_when_upstream_fails {
            return;
        }
        let concurrency = self.edge.config.heartbeat.relay_concurrency;
        loop {
            // Nothing kept: no place in Ironic's budget is taken for nothing.
            let backlog = self.edge.store.relay.backlog().await;
            if let Ok((n, oldest)) = backlog {
                self.edge.metrics.set_relay_backlog(n, oldest);
            }
            if matches!(backlog, Ok((0, _))) {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
            // A wave of at most `concurrency` relays; an empty queue or a failing Ironic
            // pauses the next wave.
            self.retry_releases().await;
            let wave: Vec<Relayed> = futures_join(concurrency, || self.relay_one()).await;
            let pause = if wave.iter().any(|r| matches!(r, Relayed::Failed)) {
                Duration::from_secs(1)
            } else if wave.iter().all(|r| matches!(r, Relayed::Idle)) {
                Duration::from_millis(500)
            } else {
                Duration::ZERO
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Runs `n` copies of a future concurrently and collects their outputs.
async fn futures_join<T, F, Fut>(n: usize, make: F) -> Vec<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut set = Vec::with_capacity(n);
    for _ in 0..n {
        set.push(make());
    }
    let mut out = Vec::with_capacity(n);
    // Poll them together: a small join-all without another dependency.
    let mut pinned: Vec<_> = set.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<T>> = (0..n).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => done[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.extend(done.into_iter().flatten());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_ironic_reads() {
        let mut req = RequestHeader::build("POST", b"/v1/heartbeat/u?x=1", None).unwrap();
        req.insert_header("Content-Type", "application/json")
            .unwrap();
        req.insert_header("X-OpenStack-Ironic-API-Version", "1.68")
            .unwrap();
        req.insert_header("Cookie", "nope").unwrap();
        let p = PendingHeartbeat::from_request(&req, b"{\"a\": 1}");
        assert_eq!(p.path, "/v1/heartbeat/u?x=1");
        assert_eq!(p.headers.len(), 2);
        let (rebuilt, body) = p.request("ironic:6385").unwrap();
        assert_eq!(body, b"{\"a\": 1}");
        assert_eq!(rebuilt.headers.get("content-length").unwrap(), "8");
        assert_eq!(
            rebuilt
                .headers
                .get("x-openstack-ironic-api-version")
                .unwrap(),
            "1.68"
        );
        assert!(rebuilt.headers.get("cookie").is_none());
    }

    #[tokio::test]
    async fn join_runs_all() {
        let out = futures_join(4, || async { 7 }).await;
        assert_eq!(out, vec![7, 7, 7, 7]);
    }
}
