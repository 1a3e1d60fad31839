//! The upstream concurrency cap for agent requests: at most `max_in_flight` lookups and
//! heartbeats in flight to Ironic (its API answers a handful at a time; more only queue up in
//! its listen backlog and time out), the rest waiting in a bounded, first-come queue in which
//! each node holds at most one place (a node retrying in a storm cannot crowd others out).
//! A full queue, or a second waiter of the same node, is refused at once: the heartbeat path
//! then treats it as an Ironic failure (a verified heartbeat is accepted and relayed later).
//! A wait also ends at the caller's deadline: an agent gives up after 30 s, so a request still
//! queued by then is not worth sending (and a lookup sent that late could mint a token nobody
//! receives).

use std::collections::HashSet;
use std::sync::Mutex;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

pub struct UpstreamGate {
    permits: Semaphore,
    max_queued: usize,
    queued: Mutex<HashSet<String>>,
}

/// No place for this request (queue full, its node already waits, or its deadline passed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateFull;

/// Frees the node's place in the queue however the wait ends (including cancellation).
struct Place<'a> {
    gate: &'a UpstreamGate,
    key: String,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if let Ok(mut q) = self.gate.queued.lock() {
            q.remove(&self.key);
        }
    }
}

impl UpstreamGate {
    pub fn new(max_in_flight: usize, max_queued: usize) -> Self {
        UpstreamGate {
            permits: Semaphore::new(max_in_flight.max(1)),
            max_queued,
            queued: Mutex::new(HashSet::new()),
        }
    }

    /// Waits, until `deadline` at most, for a place in flight for a request of node `key`.
    pub async fn enter(
        &self,
        key: &str,
        deadline: Instant,
    ) -> Result<SemaphorePermit<'_>, GateFull> {
        if let Ok(permit) = self.permits.try_acquire() {
            return Ok(permit);
        }
        {
            let mut q = self.queued.lock().map_err(|_| GateFull)?;
            if q.len() >= self.max_queued || q.contains(key) {
                return Err(GateFull);
            }
            q.insert(key.to_string());
        }
        let _place = Place {
            gate: self,
            key: key.to_string(),
        };
        match tokio::time::timeout_at(deadline, self.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(GateFull),
        }
    }

    pub fn queued(&self) -> usize {
        self.queued.lock().map(|q| q.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn caps_queues_and_is_fair_per_node() {
        let gate = Arc::new(UpstreamGate::new(1, 2));
        let later = || Instant::now() + Duration::from_secs(5);
        let first = gate.enter("a", later()).await.unwrap();
        // Queued: node b waits; a second waiter of b is refused; c fills the queue; d is refused.
        let g = gate.clone();
        let b = tokio::spawn(async move { g.enter("b", later()).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(gate.enter("b", later()).await.err(), Some(GateFull));
        let g = gate.clone();
        let c = tokio::spawn(async move { g.enter("c", later()).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(gate.queued(), 2);
        assert_eq!(gate.enter("d", later()).await.err(), Some(GateFull));
        drop(first);
        assert_eq!(b.await.unwrap(), Ok(()));
        assert_eq!(c.await.unwrap(), Ok(()));
        assert_eq!(gate.queued(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_frees_its_place() {
        let gate = UpstreamGate::new(1, 1);
        let far = Instant::now() + Duration::from_secs(5);
        let _held = gate.enter("a", far).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_millis(20), gate.enter("b", far)).await;
        assert_eq!(gate.queued(), 0);
    }

    #[tokio::test]
    async fn a_wait_ends_at_its_deadline() {
        let gate = UpstreamGate::new(1, 4);
        let _held = gate.enter("a", Instant::now()).await.unwrap();
        let soon = Instant::now() + Duration::from_millis(30);
        assert_eq!(gate.enter("b", soon).await.err(), Some(GateFull));
        assert_eq!(gate.queued(), 0);
    }
}
