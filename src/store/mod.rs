//! What the gateway remembers between requests and shares between its processes, in Redis:
//! one small handle per concern ([`Stores`]), all over one shared connection ([`conn`]) and one
//! set of key names ([`keys`]). Every call has a deadline, and the callers treat any
//! [`StoreError`] as "nothing known" and forward.
//!
//! Every write is safe if it runs late, after its caller gave up on it (a frozen Redis runs
//! what it had received when it thaws): nothing is deleted on a take, only claimed.

mod conn;
mod entry_cache;
mod flights;
mod index;
pub(crate) mod keys;
mod lease;
mod mismatch;
mod negative;
mod records;
mod relay_queue;
mod replay;
pub(crate) mod seal;
pub(crate) mod sentinel;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
pub(crate) mod token_hash;

pub(crate) use conn::{ReadStep, Replies, WriteStep};
pub(crate) use flights::{FlightBoard, FlightResult, FlightState};
pub(crate) use index::{FastTrack, IndexKey, IndexRead, IndexUpdate, IndexedNode, NodeIndex};
pub(crate) use lease::Lease;
pub(crate) use mismatch::MismatchSlots;
pub(crate) use negative::NegativeCache;
pub(crate) use records::{NodeRecord, NodeRecords};
pub(crate) use relay_queue::RelayQueue;
pub(crate) use replay::{KeptMinted, ReplayBox};

use crate::config::{ConfigError, EdgeConfig};
use std::fmt;

/// The store could not answer in time (down, frozen, or an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoreError(pub(crate) String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store unavailable: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

pub(crate) type StoreResult<T> = Result<T, StoreError>;

/// The store's handles, each over the same connection.
#[derive(Clone)]
pub(crate) struct Stores {
    pub(crate) negative: NegativeCache,
    pub(crate) flights: FlightBoard,
    pub(crate) records: NodeRecords,
    pub(crate) mismatch: MismatchSlots,
    pub(crate) replay: ReplayBox,
    pub(crate) relay: RelayQueue,
    pub(crate) index: NodeIndex,
    pub(crate) lease: Lease,
    conn: conn::Conn,
}

impl Stores {
    /// The handles over one lazily made connection (nothing is connected until first used).
    pub(crate) fn new(cfg: &EdgeConfig) -> Result<Self, ConfigError> {
        let conn = conn::Conn::new(cfg)?;
        Ok(Stores {
            negative: NegativeCache::new(conn.clone()),
            flights: FlightBoard::new(conn.clone()),
            records: NodeRecords::new(conn.clone()),
            mismatch: MismatchSlots::new(conn.clone()),
            replay: ReplayBox::new(conn.clone()),
            relay: RelayQueue::new(conn.clone()),
            index: NodeIndex::new(conn.clone()),
            lease: Lease::new(conn.clone()),
            conn,
        })
    }

    /// The Redis calls' latency and deadline misses (every handle's, one connection).
    pub(crate) fn redis_calls(&self) -> &crate::metrics::RedisCalls {
        self.conn.calls()
    }

    /// Runs reads the handles added to `step` (`read_*`), in one round trip.
    pub(crate) async fn read(&self, step: ReadStep) -> StoreResult<Replies> {
        self.conn.read_step(step).await
    }

    /// Runs writes the handles added to `step`, in one round trip, as one transaction; the
    /// view is settled when it returns.
    pub(crate) async fn write(&self, step: WriteStep) -> StoreResult<()> {
        self.conn.write_step(step).await
    }
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
