//! Heartbeats kept (sealed) for the relay while Ironic fails: a node's latest one, taken by a
//! claim and deleted only once relayed.

use super::conn::{millis, parsed, Conn, ReadStep, Slot};
use super::StoreResult;
use std::time::Duration;

/// The heartbeats kept for the relay.
#[derive(Clone)]
pub(crate) struct RelayQueue {
    conn: Conn,
}

impl RelayQueue {
    pub(crate) fn new(conn: Conn) -> Self {
        RelayQueue { conn }
    }

    /// Keeps a node's latest heartbeat (sealed) for the relay; a newer one replaces it (and
    /// the node's wait goes on from the first one kept: the backlog's age).
    pub(crate) async fn put(&self, uuid: &str, sealed: &[u8], ttl: Duration) -> StoreResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.conn.keys.pending(uuid))
            .arg(sealed)
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .ignore()
            .cmd("SADD")
            .arg(self.conn.keys.pending_takeable())
            .arg(uuid)
            .ignore()
            .cmd("ZADD")
            .arg(self.conn.keys.pending_since())
            .arg("NX")
            .arg(super::now_ms())
            .arg(uuid)
            .ignore();
        self.conn.run_pipe(pipe).await
    }

    /// Claims one kept heartbeat for `claim_ttl` (node uuid, sealed value). It stays kept until
    /// [`Self::confirm`]; a claim released or expired (its relayer died, or
    /// the take ran late after its caller gave up) makes it takeable again.
    pub(crate) async fn take(
        &self,
        claim: &str,
        claim_ttl: Duration,
    ) -> StoreResult<Option<(String, Vec<u8>)>> {
        // Claims whose time is up go back to the takeable set first (their relayer died, or
        // their take ran late after its caller gave up). Then one takeable, unclaimed heartbeat
        // is claimed and read, in one step: it stays in Redis until its relay is confirmed.
        // Redis's own clock times the claims (the same for every gateway process).
        let script = redis::Script::new(
            r"local t = redis.call('TIME')
              local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
              local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 64)
              for _, u in ipairs(expired) do
                redis.call('ZREM', KEYS[3], u)
                redis.call('HDEL', KEYS[2], u)
                redis.call('SADD', KEYS[1], u)
              end
              if redis.call('EXISTS', KEYS[4]) == 1 then return nil end
              -- The node that has waited longest first (KEYS[5]: since when each node has had
              -- one kept; a newer heartbeat of a waiting node keeps its place): a random pick
              -- left some nodes unheard by Ironic for over a minute after an outage.
              local function pick()
                for _, u in ipairs(redis.call('ZRANGE', KEYS[5], 0, 63)) do
                  if redis.call('SREM', KEYS[1], u) == 1 then return u end
                end
                return redis.call('SPOP', KEYS[1])
              end
              while true do
                local u = pick()
                if not u then return nil end
                if not redis.call('ZSCORE', KEYS[3], u) then
                  local v = redis.call('GET', ARGV[1] .. u)
                  if v then
                    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), u)
                    redis.call('HSET', KEYS[2], u, ARGV[2])
                    redis.call('SET', KEYS[4], u, 'PX', ARGV[3])
                    return {u, v}
                  end
                end
              end",
        );
        let mut invocation = self.pending_script(&script, claim);
        invocation
            .key(self.conn.keys.pending_since())
            .arg(claim)
            .arg(millis(claim_ttl));
        let taken: Option<(String, Vec<u8>)> = self.conn.run_script(invocation).await?;
        Ok(taken)
    }

    /// The claimed heartbeat reached Ironic: it is deleted, unless a newer one replaced it
    /// meanwhile (that one stays, takeable).
    pub(crate) async fn confirm(&self, uuid: &str, claim: &str, sealed: &[u8]) -> StoreResult<()> {
        // Deletes only the heartbeat that was relayed: a newer one that replaced it meanwhile
        // goes back to the takeable set.
        // The node's wait ends with the one relayed; a newer one waits from now (KEYS[5]:
        // since when each node has had one kept).
        let script = redis::Script::new(
            r"if redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[3] then return 0 end
              redis.call('HDEL', KEYS[2], ARGV[2])
              redis.call('ZREM', KEYS[3], ARGV[2])
              redis.call('DEL', KEYS[4])
              if redis.call('GET', ARGV[1] .. ARGV[2]) == ARGV[4] then
                redis.call('DEL', ARGV[1] .. ARGV[2])
                redis.call('ZREM', KEYS[5], ARGV[2])
              else
                redis.call('SADD', KEYS[1], ARGV[2])
                if redis.call('EXISTS', ARGV[1] .. ARGV[2]) == 1 then
                  redis.call('ZADD', KEYS[5], ARGV[5], ARGV[2])
                else
                  redis.call('ZREM', KEYS[5], ARGV[2])
                end
              end
              return 1",
        );
        let mut invocation = self.pending_script(&script, claim);
        invocation
            .key(self.conn.keys.pending_since())
            .arg(uuid)
            .arg(claim)
            .arg(sealed)
            .arg(super::now_ms());
        let _: i64 = self.conn.run_script(invocation).await?;
        Ok(())
    }

    /// Gives up a claim (the relay failed, or the take's answer was lost): whatever it claimed
    /// can be taken again, and a take with this claim that runs later still (a stall) is
    /// refused for `claim_ttl`.
    pub(crate) async fn release(&self, claim: &str, claim_ttl: Duration) -> StoreResult<()> {
        // The claim's key is left behind, empty, for the claim's time: a take with this claim
        // that runs even later (it may come on another connection, after this release) is
        // refused.
        let script = redis::Script::new(
            r"local u = redis.call('GET', KEYS[4])
              if u and u ~= '' and redis.call('HGET', KEYS[2], u) == ARGV[2] then
                redis.call('HDEL', KEYS[2], u)
                redis.call('ZREM', KEYS[3], u)
                redis.call('SADD', KEYS[1], u)
              end
              redis.call('SET', KEYS[4], '', 'PX', ARGV[3])
              return 1",
        );
        let mut invocation = self.pending_script(&script, claim);
        invocation.arg(claim).arg(millis(claim_ttl));
        let _: i64 = self.conn.run_script(invocation).await?;
        Ok(())
    }

    /// Whether a heartbeat of the node is kept, read in `step`: the milliseconds its key has
    /// left to live (`None`: none kept), from which its time of keeping follows (each kept
    /// heartbeat sets the key afresh for `relay_ttl_seconds`).
    pub(crate) fn read_kept(&self, step: &mut ReadStep, uuid: &str) -> Slot<Option<u64>> {
        step.read(
            redis::cmd("PTTL").arg(self.conn.keys.pending(uuid)).clone(),
            |v| {
                // -2: no such key; -1: no expiry (never written so).
                let ms: i64 = parsed(v)?;
                Ok(u64::try_from(ms).ok())
            },
        )
    }

    /// How many heartbeats are kept (takeable or claimed), and since when the node that has
    /// waited longest has had one kept (Unix ms; `None`: none kept).
    pub(crate) async fn backlog(&self) -> StoreResult<(u64, Option<u64>)> {
        // The oldest entry whose heartbeat is gone (it expired: its node stopped heartbeating
        // before Ironic came back) is dropped on the way, a bounded number per call.
        let script = redis::Script::new(
            r"local n = redis.call('SCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])
              for _ = 1, 64 do
                local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
                if #oldest == 0 then return {n, -1} end
                if redis.call('EXISTS', ARGV[1] .. oldest[1]) == 1 then
                  return {n, tonumber(oldest[2])}
                end
                redis.call('ZREM', KEYS[3], oldest[1])
              end
              return {n, -1}",
        );
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.conn.keys.pending_takeable())
            .key(self.conn.keys.pending_claimed())
            .key(self.conn.keys.pending_since())
            .arg(self.conn.keys.pending(""));
        let (kept, oldest): (u64, i64) = self.conn.run_script(invocation).await?;
        Ok((kept, u64::try_from(oldest).ok()))
    }

    /// Ironic accepted a newer heartbeat of the node directly: its kept one is obsolete and is
    /// dropped (one already claimed by a relayer still goes, once).
    pub(crate) async fn drop_node(&self, uuid: &str) -> StoreResult<()> {
        // A claimed one is relayed by its claimer with the copy it holds; its confirmation
        // then finds the value gone and the take after it skips the node.
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("DEL")
            .arg(self.conn.keys.pending(uuid))
            .ignore()
            .cmd("SREM")
            .arg(self.conn.keys.pending_takeable())
            .arg(uuid)
            .ignore()
            .cmd("ZREM")
            .arg(self.conn.keys.pending_since())
            .arg(uuid)
            .ignore();
        self.conn.run_pipe(pipe).await
    }

    /// A script over the kept heartbeats: KEYS are the takeable set, the claims (node → claim),
    /// the claimed (node → expiry) and this claim's own key; ARGV starts with the value prefix.
    fn pending_script<'s>(
        &self,
        script: &'s redis::Script,
        claim: &str,
    ) -> redis::ScriptInvocation<'s> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.conn.keys.pending_takeable())
            .key(self.conn.keys.pending_claims())
            .key(self.conn.keys.pending_claimed())
            .key(self.conn.keys.pending_claim(claim))
            .arg(self.conn.keys.pending(""));
        invocation
    }
}
