//! Forward slots for heartbeats whose token the gateway cannot verify.

use super::conn::{millis, Conn};
use super::StoreResult;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The forward slots of unverifiable heartbeats, per node and presented token.
#[derive(Clone)]
pub(crate) struct MismatchSlots {
    conn: Conn,
    /// Slots known to be taken, until when (by slot key): a wrong token repeated at the edge
    /// (the edge 400) is refused without a Redis round trip until the slot Redis holds, or the
    /// node's count that refused it, expires. Only ever refuses what Redis would refuse in that
    /// time (Redis sets nothing back: a slot and a count only expire), so the security rule
    /// (each presented token once, at most `per_node` tokens per node per interval) stands.
    taken: Arc<Mutex<HashMap<String, Instant>>>,
}

/// Slot keys remembered as taken at most (a flood of random tokens for many nodes then asks
/// Redis again, as it always did).
const TAKEN_ENTRIES: usize = 4096;

impl MismatchSlots {
    pub(crate) fn new(conn: Conn) -> Self {
        MismatchSlots {
            conn,
            taken: Arc::default(),
        }
    }

    /// Claims the right to forward one heartbeat of this node whose token the gateway cannot
    /// verify, for the presented token `token_tag` (a short digest of it, never the token): each
    /// presented token has a slot of its own per `interval` (a flooded token holds only its own),
    /// and at most `per_node` presented tokens of one node are forwarded per `interval` (a flood
    /// of random tokens costs Ironic a few requests, and Redis a few keys, per node).
    pub(crate) async fn claim(
        &self,
        ident: &str,
        token_tag: &str,
        interval: Duration,
        per_node: u32,
    ) -> StoreResult<bool> {
        let slot = self.conn.keys.mismatch_slot(ident, token_tag);
        if self.known_taken(&slot) {
            return Ok(false);
        }
        // One script: a late run (after the caller gave up on it) only uses up a slot. It
        // answers whether the slot was claimed and, if not, how long what refused it lasts.
        let script = redis::Script::new(
            r"if redis.call('EXISTS', KEYS[1]) == 1 then return {0, redis.call('PTTL', KEYS[1])} end
              local n = redis.call('INCR', KEYS[2])
              if n == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[1]) end
              if n > tonumber(ARGV[2]) then return {0, redis.call('PTTL', KEYS[2])} end
              redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
              return {1, tonumber(ARGV[1])}",
        );
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&slot)
            .key(self.conn.keys.mismatch_count(ident))
            .arg(millis(interval))
            .arg(per_node);
        let asked = Instant::now();
        let (claimed, lasts_ms): (i64, i64) = self.conn.run_script(invocation).await?;
        // Taken from now on, by this claim or another: until what Redis holds expires
        // (measured from before the call, so never past Redis's own expiry). A key without an
        // expiry (PTTL -1) or gone (-2) is not remembered.
        if let Ok(ms) = u64::try_from(lasts_ms) {
            if ms > 0 {
                self.remember_taken(slot, asked + Duration::from_millis(ms));
            }
        }
        Ok(claimed == 1)
    }

    fn known_taken(&self, slot: &str) -> bool {
        let Ok(mut taken) = self.taken.lock() else {
            return false;
        };
        match taken.get(slot) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                taken.remove(slot);
                false
            }
            None => false,
        }
    }

    fn remember_taken(&self, slot: String, until: Instant) {
        let Ok(mut taken) = self.taken.lock() else {
            return;
        };
        if taken.len() >= TAKEN_ENTRIES && !taken.contains_key(&slot) {
            let now = Instant::now();
            taken.retain(|_, until| *until > now);
            if taken.len() >= TAKEN_ENTRIES {
                taken.clear();
            }
        }
        taken.insert(slot, until);
    }
}
