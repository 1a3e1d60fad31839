//! Leases: one process at a time holds a name (one syncing process).

use super::conn::{millis, Conn};
use super::StoreResult;
use std::time::Duration;

/// Named leases shared by every gateway process.
#[derive(Clone)]
pub(crate) struct Lease {
    conn: Conn,
}

impl Lease {
    pub(crate) fn new(conn: Conn) -> Self {
        Lease { conn }
    }

    /// Takes or renews the lease `name` for `owner`; `true` while `owner` holds it.
    pub(crate) async fn hold(&self, name: &str, owner: &str, ttl: Duration) -> StoreResult<bool> {
        let script = redis::Script::new(
            r"local cur = redis.call('GET', KEYS[1])
              if cur == false then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
              if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
              return 0",
        );
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.conn.keys.lease(name))
            .arg(owner)
            .arg(millis(ttl));
        let held: i64 = self.conn.run_script(invocation).await?;
        Ok(held == 1)
    }
}
