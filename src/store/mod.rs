//! What the gateway remembers between requests and shares between its processes, behind the
//! [`EdgeStore`] trait. [`redis::RedisStore`] is the real implementation; every call it makes
//! has a deadline, and the callers treat any [`StoreError`] as "nothing known" and forward.

pub(crate) mod keys;
pub mod memory;
pub mod redis;
pub mod seal;
pub mod token_hash;

use async_trait::async_trait;
use std::fmt;
use std::time::Duration;

/// The store could not answer in time (down, frozen, or an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store unavailable: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

pub type StoreResult<T> = Result<T, StoreError>;

/// What the gateway knows about one node, from traffic it forwarded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRecord {
    /// Salted hash of the node's current agent token ([`token_hash`]), if known.
    pub token_hash: Option<String>,
    /// The `callback_url` (normalised) of the last heartbeat Ironic accepted with that token.
    pub agent_url: Option<String>,
    /// The last heartbeat Ironic accepted: its fingerprint (everything but the token, which
    /// `token_hash` covers) and when, in Unix milliseconds.
    pub last_heartbeat: Option<(String, u64)>,
    /// When Ironic last showed it holds that token (it minted it, or accepted a heartbeat
    /// with it), in Unix milliseconds: newer than the node index, this knowledge wins.
    pub token_seen_ms: Option<u64>,
    /// When the gateway forwarded an action on the node (a power or provision change, an
    /// edit) that may have ended its agent session, in Unix milliseconds: until a new token is
    /// minted or the index shows the node settled after it, nothing is answered at the edge
    /// from this record ([`crate::agent::session`]).
    pub unsettled_since_ms: Option<u64>,
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A node's `driver_info.fast_track` as Ironic reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FastTrack {
    /// Not set: Ironic's `[deploy]fast_track` applies.
    Default,
    On,
    Off,
    /// A value Ironic refuses (its lookup answers 400): never decided at the edge.
    Invalid,
}

/// What the node index knows of one node (kept fresh by the sync service).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexedNode {
    pub uuid: String,
    pub name: Option<String>,
    pub provision_state: String,
    pub fast_track: FastTrack,
    pub maintenance: bool,
    /// `agent_secret_token` present in `driver_internal_info`.
    pub token_held: bool,
    pub agent_url: Option<String>,
    /// A power or provision change is under way (`target_power_state` or
    /// `target_provision_state` set): the token and `agent_url` may be about to be wiped.
    #[serde(default)]
    pub in_transition: bool,
    /// When the node was read from Ironic (the start of the round or refresh), in Unix
    /// milliseconds (0: unknown, an entry written before this field existed).
    #[serde(default)]
    pub read_at_ms: u64,
}

/// One write to the index: entries to set and entries to drop, and the time of the round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexUpdate {
    pub nodes: Vec<IndexedNode>,
    /// `(mac, node uuid)`.
    pub ports: Vec<(String, String)>,
    pub removed_nodes: Vec<String>,
    pub removed_macs: Vec<String>,
    /// Unix milliseconds of the round, written as the index's freshness; `None` for an
    /// event-driven refresh that does not vouch for the whole index.
    pub synced_at_ms: Option<u64>,
    /// The index generation the round vouches for (with `synced_at_ms`): a full round starts a
    /// new one; an incremental round only carries on the one it read, and its freshness is not
    /// written if the index in Redis is no longer of that generation (Redis lost it meanwhile).
    pub generation: Option<String>,
    /// A full round: everything Ironic has, written under a new `generation`.
    pub full_round: bool,
}

/// A kept minted answer, as taken: the node it was kept for and the sealed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptMinted {
    pub uuid: String,
    pub sealed: Vec<u8>,
}

/// The outcome of a lookup flight, shared with the identical lookups that waited for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlightResult {
    /// Ironic's answer, to repeat to every waiter (errors only: never a 200, which carries
    /// node data and a token that belongs to one caller).
    Shared { status: u16, body: String },
    /// The answer was a success: each waiter asks Ironic itself.
    AskUpstream,
}

/// Where a flight stands, as seen by a waiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlightState {
    Running,
    Done(FlightResult),
    /// No leader and no result (the leader died, or its result expired).
    Gone,
}

#[async_trait]
pub trait EdgeStore: Send + Sync {
    /// Is an upstream 404 for this lookup key still remembered?
    async fn lookup_not_found(&self, key: &str) -> StoreResult<bool>;
    async fn remember_lookup_not_found(&self, key: &str, ttl: Duration) -> StoreResult<()>;

    /// Tries to become the one process that sends this lookup upstream. `true`: lead it.
    async fn begin_flight(&self, key: &str, owner: &str, ttl: Duration) -> StoreResult<bool>;
    async fn flight_state(&self, key: &str) -> StoreResult<FlightState>;
    /// Publishes the result for the waiters (kept `ttl`) and ends the flight.
    async fn end_flight(
        &self,
        key: &str,
        owner: &str,
        result: &FlightResult,
        ttl: Duration,
    ) -> StoreResult<()>;

    async fn node(&self, uuid: &str) -> StoreResult<Option<NodeRecord>>;
    /// A new token was minted for the node: remember its hash, forget the old `agent_url`,
    /// and keep the node data (already masked by the caller) for later use.
    async fn record_token_minted(
        &self,
        uuid: &str,
        token_hash: &str,
        node_data: &[u8],
        ttl: Duration,
    ) -> StoreResult<()>;
    /// Ironic accepted a heartbeat with this token and `callback_url`.
    async fn record_heartbeat_accepted(
        &self,
        uuid: &str,
        token_hash: &str,
        agent_url: &str,
        ttl: Duration,
    ) -> StoreResult<()>;
    /// Remembers the last heartbeat Ironic accepted (fingerprint, Unix ms).
    async fn record_heartbeat_forwarded(
        &self,
        uuid: &str,
        fingerprint: &str,
        at_ms: u64,
    ) -> StoreResult<()>;
    /// Ironic no longer knows the token we had (it was wiped).
    async fn forget_token(&self, uuid: &str) -> StoreResult<()>;
    /// The gateway forwarded an action on the node at `at_ms` that may end its agent session.
    async fn record_node_action(&self, uuid: &str, at_ms: u64, ttl: Duration) -> StoreResult<()>;
    /// Claims the right to forward one heartbeat of this node whose token the gateway cannot
    /// verify, for the presented token `token_tag` (a short digest of it, never the token): each
    /// presented token has a slot of its own per `interval` (a flooded token holds only its own),
    /// and at most `per_node` presented tokens of one node are forwarded per `interval` (a flood
    /// of random tokens costs Ironic a few requests, and Redis a few keys, per node).
    async fn claim_mismatch_forward(
        &self,
        ident: &str,
        token_tag: &str,
        interval: Duration,
        per_node: u32,
    ) -> StoreResult<bool>;

    async fn heartbeat_not_found(&self, ident: &str) -> StoreResult<bool>;
    async fn remember_heartbeat_not_found(&self, ident: &str, ttl: Duration) -> StoreResult<()>;
    /// A node became known (a lookup found it): drop any cached heartbeat 404 for it.
    async fn forget_heartbeat_not_found(&self, ident: &str) -> StoreResult<()>;

    /// Keeps a minted lookup answer (sealed) for one replay to the same caller, `ttl` long;
    /// the node remembers it so that its first accepted heartbeat drops it.
    async fn put_minted_answer(
        &self,
        replay_key: &str,
        uuid: &str,
        sealed: &[u8],
        ttl: Duration,
    ) -> StoreResult<()>;
    /// Claims a kept minted answer for `claim_ttl`: it stays kept (a take that runs late, after
    /// its caller gave up, loses nothing) but no other take gets it while the claim holds. The
    /// caller confirms it once delivered ([`Self::confirm_minted_answer`]: handed out at most
    /// once) or releases it.
    async fn take_minted_answer(
        &self,
        replay_key: &str,
        claim: &str,
        claim_ttl: Duration,
    ) -> StoreResult<Option<KeptMinted>>;
    /// The claimed answer was delivered: it is deleted (if the claim is still this one).
    async fn confirm_minted_answer(&self, replay_key: &str, claim: &str) -> StoreResult<()>;
    /// The claimed answer was not delivered (or the take failed): it can be taken again. A
    /// take with this claim that runs later still (a stall) is refused for `claim_ttl`.
    async fn release_minted_answer(
        &self,
        replay_key: &str,
        claim: &str,
        claim_ttl: Duration,
    ) -> StoreResult<()>;
    /// Drops the node's kept minted answer (its agent's token works: nothing was lost).
    async fn drop_minted_answer(&self, uuid: &str) -> StoreResult<()>;

    /// Keeps a node's latest heartbeat (sealed) for the relay; a newer one replaces it.
    async fn put_pending_heartbeat(
        &self,
        uuid: &str,
        sealed: &[u8],
        ttl: Duration,
    ) -> StoreResult<()>;
    /// Claims one kept heartbeat for `claim_ttl` (node uuid, sealed value). It stays kept until
    /// [`Self::confirm_pending_heartbeat`]; a claim released or expired (its relayer died, or
    /// the take ran late after its caller gave up) makes it takeable again.
    async fn take_pending_heartbeat(
        &self,
        claim: &str,
        claim_ttl: Duration,
    ) -> StoreResult<Option<(String, Vec<u8>)>>;
    /// The claimed heartbeat reached Ironic: it is deleted, unless a newer one replaced it
    /// meanwhile (that one stays, takeable).
    async fn confirm_pending_heartbeat(
        &self,
        uuid: &str,
        claim: &str,
        sealed: &[u8],
    ) -> StoreResult<()>;
    /// Gives up a claim (the relay failed, or the take's answer was lost): whatever it claimed
    /// can be taken again, and a take with this claim that runs later still (a stall) is
    /// refused for `claim_ttl`.
    async fn release_pending_heartbeat(&self, claim: &str, claim_ttl: Duration) -> StoreResult<()>;
    async fn pending_heartbeats(&self) -> StoreResult<u64>;
    /// Ironic accepted a newer heartbeat of the node directly: its kept one is obsolete and is
    /// dropped (one already claimed by a relayer still goes, once).
    async fn drop_pending_heartbeat(&self, uuid: &str) -> StoreResult<()>;

    /// Unix milliseconds of the last completed sync round (`None`: no complete index: never
    /// synced, or its generation marker is missing or inconsistent, as after Redis lost data).
    async fn index_synced_at(&self) -> StoreResult<Option<u64>>;
    /// The generation of the complete index in the store (`None`: none, or its markers
    /// disagree): the sync carries on incrementally only from the generation it wrote.
    async fn index_generation(&self) -> StoreResult<Option<String>>;
    /// Where the sync resumes (its watermarks, as JSON): a process taking the lease over
    /// carries on from there instead of starting with a full round.
    async fn sync_marks(&self) -> StoreResult<Option<String>>;
    async fn put_sync_marks(&self, marks: &str) -> StoreResult<()>;
    /// The node uuid of each MAC (same order), from the index; an error if the index is not
    /// the complete one [`Self::index_synced_at`] vouched for (its generation changed).
    async fn index_macs(&self, macs: &[String]) -> StoreResult<Vec<Option<String>>>;
    /// A node of the index; an error if the index is not the complete one (as for
    /// [`Self::index_macs`]): a missing entry means "no such node" only in a complete index.
    async fn index_node(&self, uuid: &str) -> StoreResult<Option<IndexedNode>>;
    /// The indexed node with this name (`None`: no indexed node has it).
    async fn index_node_named(&self, name: &str) -> StoreResult<Option<IndexedNode>>;
    /// Every node uuid and MAC in the index (for a full round to find what disappeared).
    async fn index_members(&self) -> StoreResult<(Vec<String>, Vec<String>)>;
    /// Writes a round (or a refresh). A round's freshness is written only if the index is
    /// still of its generation (a full round: if nothing wiped what it wrote meanwhile);
    /// otherwise an error, and the next round must be a full one.
    async fn index_write(&self, update: &IndexUpdate) -> StoreResult<()>;
    /// Takes or renews the lease `name` for `owner`; `true` while `owner` holds it.
    async fn lease(&self, name: &str, owner: &str, ttl: Duration) -> StoreResult<bool>;
}
