//! The negative caches: upstream 404s of lookups (by normalised key) and of heartbeats (by
//! node ident), each a marker with a short TTL, read through the in-process view.

use super::conn::{marker, parsed, viewed, Conn, ReadStep, Slot, WriteStep};
use super::StoreResult;
use std::time::Duration;

/// The lookup and heartbeat negative caches.
#[derive(Clone)]
pub(crate) struct NegativeCache {
    conn: Conn,
}

impl NegativeCache {
    pub(crate) fn new(conn: Conn) -> Self {
        NegativeCache { conn }
    }

    /// Is an upstream 404 for this lookup key still remembered?
    #[cfg(test)]
    pub(crate) async fn lookup_not_found(&self, key: &str) -> StoreResult<bool> {
        let mut step = ReadStep::new();
        let slot = self.read_lookup_not_found(&mut step, key);
        self.conn.read_step(step).await?.take(slot)
    }

    /// Reads, in `step`, whether an upstream 404 for this lookup key is still remembered.
    pub(crate) fn read_lookup_not_found(&self, step: &mut ReadStep, key: &str) -> Slot<bool> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.conn.keys.lookup_not_found(key));
        step.read(viewed(cmd), parsed::<bool>)
    }

    /// Remembers Ironic's 404 for this lookup key, `ttl` long, in `step`.
    pub(crate) fn remember_lookup_not_found(&self, step: &mut WriteStep, key: &str, ttl: Duration) {
        step.write(marker(self.conn.keys.lookup_not_found(key), ttl));
    }

    /// Is an upstream 404 for a heartbeat of this node ident still remembered?
    pub(crate) async fn heartbeat_not_found(&self, ident: &str) -> StoreResult<bool> {
        let mut step = ReadStep::new();
        let slot = self.read_heartbeat_not_found(&mut step, ident);
        self.conn.read_step(step).await?.take(slot)
    }

    /// Reads, in `step`, whether an upstream 404 for a heartbeat of this node ident is still
    /// remembered.
    pub(crate) fn read_heartbeat_not_found(&self, step: &mut ReadStep, ident: &str) -> Slot<bool> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.conn.keys.heartbeat_not_found(ident));
        step.read(viewed(cmd), parsed::<bool>)
    }

    /// Remembers Ironic's 404 for heartbeats of this node ident, `ttl` long.
    pub(crate) async fn remember_heartbeat_not_found(
        &self,
        ident: &str,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.conn
            .set_marker(self.conn.keys.heartbeat_not_found(ident), ttl)
            .await
    }

    /// A node became known (a lookup found it): drop any cached heartbeat 404 for it, in
    /// `step`.
    pub(crate) fn forget_heartbeat_not_found(&self, step: &mut WriteStep, ident: &str) {
        step.write(
            redis::cmd("DEL")
                .arg(self.conn.keys.heartbeat_not_found(ident))
                .clone(),
        );
    }
}
