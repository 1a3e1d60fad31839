//! Forward slots for heartbeats whose token the gateway cannot verify.

use super::conn::{millis, Conn};
use super::StoreResult;
use std::time::Duration;

/// The forward slots of unverifiable heartbeats, per node and presented token.
#[derive(Clone)]
pub(crate) struct MismatchSlots {
    conn: Conn,
}

impl MismatchSlots {
    pub(crate) fn new(conn: Conn) -> Self {
        MismatchSlots { conn }
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
        // One script: a late run (after the caller gave up on it) only uses up a slot.
        let script = redis::Script::new(
            r"if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
              local n = redis.call('INCR', KEYS[2])
              if n == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[1]) end
              if n > tonumber(ARGV[2]) then return 0 end
              redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
              return 1",
        );
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.conn.keys.mismatch_slot(ident, token_tag))
            .key(self.conn.keys.mismatch_count(ident))
            .arg(millis(interval))
            .arg(per_node);
        let claimed: i64 = self.conn.run_script(invocation).await?;
        Ok(claimed == 1)
    }
}
