//! What the gateway knows of each node from traffic it forwarded (`node:<uuid>`), read through
//! the in-process view; every write settles the view before it is reported done.

use super::conn::{parsed, viewed, Conn, ReadStep, Slot, WriteStep};
use super::StoreResult;
use std::time::Duration;

/// What the gateway knows about one node, from traffic it forwarded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NodeRecord {
    /// Salted hash of the node's current agent token ([`super::token_hash`]), if known.
    pub(crate) token_hash: Option<String>,
    /// The `callback_url` (normalised) of the last heartbeat Ironic accepted with that token.
    pub(crate) agent_url: Option<String>,
    /// The last heartbeat Ironic accepted: its fingerprint (everything but the token, which
    /// `token_hash` covers) and when, in Unix milliseconds.
    pub(crate) last_heartbeat: Option<(String, u64)>,
    /// When Ironic last showed it holds that token (it minted it, or accepted a heartbeat
    /// with it), in Unix milliseconds: newer than the node index, this knowledge wins.
    pub(crate) token_seen_ms: Option<u64>,
    /// When the gateway forwarded an action on the node (a power or provision change, an
    /// edit) that may have ended its agent session, in Unix milliseconds: until a new token is
    /// minted or the index shows the node settled after it, nothing is answered at the edge
    /// from this record ([`crate::agent::session`]).
    pub(crate) unsettled_since_ms: Option<u64>,
}

/// A record from its fields as [`NodeRecords::get`] reads them (`None`: none set).
fn record_of(fields: Vec<Option<String>>) -> Option<NodeRecord> {
    if fields.iter().all(Option::is_none) {
        return None;
    }
    let field = |i: usize| fields.get(i).cloned().flatten();
    let last_heartbeat = match (field(2), field(3).and_then(|a| a.parse().ok())) {
        (Some(fp), Some(at)) => Some((fp, at)),
        _ => None,
    };
    Some(NodeRecord {
        token_hash: field(0),
        agent_url: field(1),
        last_heartbeat,
        token_seen_ms: field(5).and_then(|a| a.parse().ok()),
        unsettled_since_ms: field(6).and_then(|a| a.parse().ok()),
    })
}

/// The node records.
#[derive(Clone)]
pub(crate) struct NodeRecords {
    conn: Conn,
}

impl NodeRecords {
    pub(crate) fn new(conn: Conn) -> Self {
        NodeRecords { conn }
    }

    /// The node's record (`None`: nothing known).
    #[cfg(test)]
    pub(crate) async fn get(&self, uuid: &str) -> StoreResult<Option<NodeRecord>> {
        let mut step = ReadStep::new();
        let slot = self.read(&mut step, uuid);
        self.conn.read_step(step).await?.take(slot)
    }

    /// Reads the node's record in `step`, through the in-process view (`None`: nothing known).
    pub(crate) fn read(&self, step: &mut ReadStep, uuid: &str) -> Slot<Option<NodeRecord>> {
        step.read(viewed(self.record_read(uuid)), parse_record)
    }

    /// The node's record, read in `step` from Redis itself, never through the in-process view:
    /// for the operator's listing of many nodes, which would push the agent path's hot entries
    /// out of the view.
    pub(crate) fn read_get(&self, step: &mut ReadStep, uuid: &str) -> Slot<Option<NodeRecord>> {
        step.read(self.record_read(uuid), parse_record)
    }

    fn record_read(&self, uuid: &str) -> redis::Cmd {
        // Built in place (no `.clone()` of the builder): on every heartbeat.
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.conn.keys.node(uuid))
            .arg("token")
            .arg("agent_url")
            .arg("hb_fp")
            .arg("hb_at")
            .arg("node")
            .arg("token_at")
            .arg("reset_at");
        cmd
    }

    /// A new token was minted for the node: remember its hash, forget the old `agent_url`,
    /// and keep the node data (already masked by the caller) for later use.
    #[cfg(test)]
    pub(crate) async fn token_minted(
        &self,
        uuid: &str,
        token_hash: &str,
        node_data: &[u8],
        ttl: Duration,
    ) -> StoreResult<()> {
        let mut step = WriteStep::new();
        self.write_token_minted(&mut step, uuid, token_hash, node_data, ttl);
        self.conn.write_step(step).await
    }

    /// [`Self::token_minted`], in `step`.
    pub(crate) fn write_token_minted(
        &self,
        step: &mut WriteStep,
        uuid: &str,
        token_hash: &str,
        node_data: &[u8],
        ttl: Duration,
    ) {
        let key = self.conn.keys.node(uuid);
        step.write(
            redis::cmd("HSET")
                .arg(&key)
                .arg("token")
                .arg(token_hash)
                .arg("token_at")
                .arg(super::now_ms())
                .arg("node")
                .arg(node_data)
                .clone(),
        );
        step.write(
            redis::cmd("HDEL")
                .arg(&key)
                .arg("agent_url")
                .arg("hb_fp")
                .arg("hb_at")
                .arg("reset_at")
                .clone(),
        );
        step.write(
            redis::cmd("EXPIRE")
                .arg(&key)
                .arg(ttl.as_secs().max(1))
                .clone(),
        );
    }

    /// Ironic accepted a heartbeat with this token and `callback_url`.
    pub(crate) async fn heartbeat_accepted(
        &self,
        uuid: &str,
        token_hash: &str,
        agent_url: &str,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.conn
            .settled(async {
                let key = self.conn.keys.node(uuid);
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("HSET")
                    .arg(&key)
                    .arg("token")
                    .arg(token_hash)
                    .arg("token_at")
                    .arg(super::now_ms())
                    .arg("agent_url")
                    .arg(agent_url)
                    .ignore()
                    .cmd("EXPIRE")
                    .arg(&key)
                    .arg(ttl.as_secs().max(1))
                    .ignore();
                self.conn.run_pipe(pipe).await
            })
            .await
    }

    /// Remembers the last heartbeat Ironic accepted (fingerprint, Unix ms).
    pub(crate) async fn heartbeat_forwarded(
        &self,
        uuid: &str,
        fingerprint: &str,
        at_ms: u64,
    ) -> StoreResult<()> {
        self.conn
            .settled(async {
                self.conn
                    .run(
                        redis::cmd("HSET")
                            .arg(self.conn.keys.node(uuid))
                            .arg("hb_fp")
                            .arg(fingerprint)
                            .arg("hb_at")
                            .arg(at_ms)
                            .clone(),
                    )
                    .await
            })
            .await
    }

    /// Ironic no longer knows the token we had (it was wiped).
    pub(crate) async fn forget_token(&self, uuid: &str) -> StoreResult<()> {
        self.conn
            .settled(async {
                self.conn
                    .run(
                        redis::cmd("HDEL")
                            .arg(self.conn.keys.node(uuid))
                            .arg("token")
                            .arg("token_at")
                            .arg("agent_url")
                            .arg("hb_fp")
                            .arg("hb_at")
                            .clone(),
                    )
                    .await
            })
            .await
    }

    /// The gateway forwarded an action on the node at `at_ms` that may end its agent session.
    pub(crate) async fn node_action(
        &self,
        uuid: &str,
        at_ms: u64,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.conn.settled(async {
        let key = self.conn.keys.node(uuid);
        let mut pipe = redis::pipe();
        // The latest action wins: a late write of an older one must not shorten the unsettled
        // time of a newer one (`reset_at` only grows).
        pipe.atomic()
            .cmd("EVAL")
            .arg(
                "local cur = tonumber(redis.call('HGET', KEYS[1], 'reset_at') or '0') \
                 if tonumber(ARGV[1]) > cur then redis.call('HSET', KEYS[1], 'reset_at', ARGV[1]) end \
                 if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end \
                 return 0",
            )
            .arg(1)
            .arg(&key)
            .arg(at_ms)
            .arg(ttl.as_secs().max(1))
            .ignore();
        self.conn.run_pipe(pipe).await
        })
        .await
    }
}

/// A record from its `HMGET` answer (every field missing: nothing known).
fn parse_record(value: redis::Value) -> StoreResult<Option<NodeRecord>> {
    let changed_at = super::sentinel::history_changed_at_ms();
    parsed(value).map(|fields| record_of(fields).map(|r| without_stale_token(r, changed_at)))
}

/// The record without its token knowledge if it was learnt before the master's history
/// changed at `changed_at_ms` (a failover: the writes that replaced or removed it may be lost).
fn without_stale_token(record: NodeRecord, changed_at_ms: u64) -> NodeRecord {
    if super::sentinel::learnt_before_history_changed(record.token_seen_ms, changed_at_ms)
        && record.token_hash.is_some()
    {
        NodeRecord {
            token_hash: None,
            agent_url: None,
            last_heartbeat: None,
            token_seen_ms: None,
            ..record
        }
    } else {
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learnt_at(seen: Option<u64>) -> NodeRecord {
        NodeRecord {
            token_hash: Some("h".into()),
            agent_url: Some("https://a:9999".into()),
            last_heartbeat: Some(("fp".into(), 7)),
            token_seen_ms: seen,
            unsettled_since_ms: Some(3),
        }
    }

    #[test]
    fn a_token_learnt_before_a_failover_is_dropped_with_its_agent_url() {
        let r = without_stale_token(learnt_at(Some(900)), 1_000);
        assert_eq!(
            r,
            NodeRecord {
                unsettled_since_ms: Some(3),
                ..NodeRecord::default()
            }
        );
    }

    #[test]
    fn a_token_learnt_since_the_failover_is_kept() {
        assert_eq!(
            without_stale_token(learnt_at(Some(1_000)), 1_000),
            learnt_at(Some(1_000))
        );
    }

    #[test]
    fn without_a_failover_the_record_is_as_read() {
        assert_eq!(without_stale_token(learnt_at(None), 0), learnt_at(None));
    }
}
