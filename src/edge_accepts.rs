//! When this process last accepted a node's heartbeat at the edge (coalesced, or kept for the
//! relay), for `GET /agents`: in memory only (recording it in Redis would add a write to the
//! steady-state path the edge exists to make cheap), bounded in nodes.

use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::Mutex;

/// Nodes remembered: more than any site's agents booted at once; the least recent go first.
const NODES: usize = 16_384;

pub(crate) struct EdgeAccepts(Mutex<LruCache<String, u64>>);

impl Default for EdgeAccepts {
    fn default() -> Self {
        Self::with_capacity(NODES)
    }
}

impl EdgeAccepts {
    fn with_capacity(nodes: usize) -> Self {
        let nodes = NonZeroUsize::new(nodes).unwrap_or(NonZeroUsize::MIN);
        EdgeAccepts(Mutex::new(LruCache::new(nodes)))
    }

    /// The edge accepted a heartbeat of `uuid` at `at_ms` (Unix ms).
    pub(crate) fn note(&self, uuid: &str, at_ms: u64) {
        if let Ok(mut nodes) = self.0.lock() {
            match nodes.get_mut(uuid) {
                Some(at) => *at = (*at).max(at_ms),
                None => {
                    nodes.put(uuid.to_string(), at_ms);
                }
            }
        }
    }

    /// When it last did (`None`: not since this process started, or long forgotten).
    pub(crate) fn last(&self, uuid: &str) -> Option<u64> {
        self.0.lock().ok()?.peek(uuid).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_accept_is_kept_and_the_nodes_are_bounded() {
        let accepts = EdgeAccepts::with_capacity(2);
        accepts.note("a", 10);
        accepts.note("a", 5);
        assert_eq!(
            accepts.last("a"),
            Some(10),
            "a late note does not go back in time"
        );
        accepts.note("b", 20);
        accepts.note("c", 30);
        assert_eq!(accepts.last("a"), None, "the least recent node went");
        assert_eq!((accepts.last("b"), accepts.last("c")), (Some(20), Some(30)));
    }
}
