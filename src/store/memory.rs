//! An in-process [`EdgeStore`] with the same semantics as the Redis one (TTLs included), for
//! unit tests of the agent paths and for running without Redis in a single process.

use super::{
    EdgeStore, FlightResult, FlightState, IndexUpdate, IndexedNode, KeptMinted, NodeRecord,
    StoreError, StoreResult,
};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone)]
enum Entry {
    Flag,
    Text(String),
    Bytes(Vec<u8>),
    Node(NodeRecord),
    Indexed(IndexedNode),
}

#[derive(Default)]
pub struct MemoryStore {
    entries: Mutex<HashMap<String, (Entry, Option<Instant>)>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut HashMap<String, (Entry, Option<Instant>)>) -> T,
    ) -> StoreResult<T> {
        let mut map = self
            .entries
            .lock()
            .map_err(|_| StoreError("poisoned".into()))?;
        let now = Instant::now();
        map.retain(|_, (_, exp)| exp.is_none_or(|e| e > now));
        Ok(f(&mut map))
    }

    fn set(&self, key: String, entry: Entry, ttl: Duration, nx: bool) -> StoreResult<bool> {
        self.with(|m| {
            if nx && m.contains_key(&key) {
                return false;
            }
            m.insert(key, (entry, Some(Instant::now() + ttl)));
            true
        })
    }

    fn exists(&self, key: &str) -> StoreResult<bool> {
        self.with(|m| m.contains_key(key))
    }

    fn update_node(
        &self,
        uuid: &str,
        ttl: Duration,
        f: impl FnOnce(&mut NodeRecord),
    ) -> StoreResult<()> {
        self.with(|m| {
            let key = format!("node:{uuid}");
            let mut rec = match m.get(&key) {
                Some((Entry::Node(r), _)) => r.clone(),
                _ => NodeRecord::default(),
            };
            f(&mut rec);
            m.insert(key, (Entry::Node(rec), Some(Instant::now() + ttl)));
        })
    }
}

/// The index's freshness and generation, if its generation marker agrees.
fn index_marker(m: &HashMap<String, (Entry, Option<Instant>)>) -> Option<(u64, String)> {
    let Some((Entry::Text(synced), _)) = m.get("idx:synced_at") else {
        return None;
    };
    let Some((Entry::Text(generation), _)) = m.get("idx:gen") else {
        return None;
    };
    super::redis::parse_synced_at(synced).filter(|(_, g)| g == generation)
}

fn incomplete() -> StoreError {
    StoreError("the node index is not complete (its generation changed)".into())
}

#[async_trait]
impl EdgeStore for MemoryStore {
    async fn lookup_not_found(&self, key: &str) -> StoreResult<bool> {
        self.exists(&format!("lookup:nf:{key}"))
    }
    async fn remember_lookup_not_found(&self, key: &str, ttl: Duration) -> StoreResult<()> {
        self.set(format!("lookup:nf:{key}"), Entry::Flag, ttl, false)
            .map(|_| ())
    }
    async fn begin_flight(&self, key: &str, owner: &str, ttl: Duration) -> StoreResult<bool> {
        self.set(
            format!("lookup:flight:{key}"),
            Entry::Text(owner.into()),
            ttl,
            true,
        )
    }
    async fn flight_state(&self, key: &str) -> StoreResult<FlightState> {
        self.with(|m| {
            if let Some((Entry::Text(t), _)) = m.get(&format!("lookup:result:{key}")) {
                return FlightState::Done(super::redis::decode_result(t));
            }
            if m.contains_key(&format!("lookup:flight:{key}")) {
                FlightState::Running
            } else {
                FlightState::Gone
            }
        })
    }
    async fn end_flight(
        &self,
        key: &str,
        owner: &str,
        result: &FlightResult,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.with(|m| {
            m.insert(
                format!("lookup:result:{key}"),
                (
                    Entry::Text(super::redis::encode_result(result)),
                    Some(Instant::now() + ttl),
                ),
            );
            let fk = format!("lookup:flight:{key}");
            if matches!(m.get(&fk), Some((Entry::Text(o), _)) if o == owner) {
                m.remove(&fk);
            }
        })
    }
    async fn node(&self, uuid: &str) -> StoreResult<Option<NodeRecord>> {
        self.with(|m| match m.get(&format!("node:{uuid}")) {
            Some((Entry::Node(r), _)) => Some(r.clone()),
            _ => None,
        })
    }
    async fn record_token_minted(
        &self,
        uuid: &str,
        token_hash: &str,
        _node_data: &[u8],
        ttl: Duration,
    ) -> StoreResult<()> {
        self.update_node(uuid, ttl, |r| {
            r.token_hash = Some(token_hash.into());
            r.token_seen_ms = Some(super::now_ms());
            r.agent_url = None;
            r.last_heartbeat = None;
            r.unsettled_since_ms = None;
        })
    }
    async fn record_heartbeat_accepted(
        &self,
        uuid: &str,
        token_hash: &str,
        agent_url: &str,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.update_node(uuid, ttl, |r| {
            r.token_hash = Some(token_hash.into());
            r.token_seen_ms = Some(super::now_ms());
            r.agent_url = Some(agent_url.into());
        })
    }
    async fn record_heartbeat_forwarded(
        &self,
        uuid: &str,
        fingerprint: &str,
        at_ms: u64,
    ) -> StoreResult<()> {
        self.with(|m| {
            if let Some((Entry::Node(r), _)) = m.get_mut(&format!("node:{uuid}")) {
                r.last_heartbeat = Some((fingerprint.to_string(), at_ms));
            }
        })
    }
    async fn record_node_action(&self, uuid: &str, at_ms: u64, ttl: Duration) -> StoreResult<()> {
        self.update_node(uuid, ttl, |r| {
            r.unsettled_since_ms = r.unsettled_since_ms.max(Some(at_ms));
        })
    }
    async fn forget_token(&self, uuid: &str) -> StoreResult<()> {
        self.with(|m| {
            if let Some((Entry::Node(r), _)) = m.get_mut(&format!("node:{uuid}")) {
                r.token_hash = None;
                r.token_seen_ms = None;
                r.agent_url = None;
                r.last_heartbeat = None;
            }
        })
    }
    async fn claim_mismatch_forward(
        &self,
        ident: &str,
        token_tag: &str,
        interval: Duration,
        per_node: u32,
    ) -> StoreResult<bool> {
        let slot = format!("hb:mismatch:{ident}:{token_tag}");
        let count = format!("hb:mismatch:{ident}");
        self.with(|m| {
            if m.contains_key(&slot) {
                return false;
            }
            let until = Some(Instant::now() + interval);
            let n = match m.get(&count) {
                Some((Entry::Text(n), exp)) => (n.parse::<u32>().unwrap_or(0) + 1, *exp),
                _ => (1, until),
            };
            m.insert(count, (Entry::Text(n.0.to_string()), n.1));
            if n.0 > per_node {
                return false;
            }
            m.insert(slot, (Entry::Flag, until));
            true
        })
    }
    async fn heartbeat_not_found(&self, ident: &str) -> StoreResult<bool> {
        self.exists(&format!("hb:nf:{ident}"))
    }
    async fn remember_heartbeat_not_found(&self, ident: &str, ttl: Duration) -> StoreResult<()> {
        self.set(format!("hb:nf:{ident}"), Entry::Flag, ttl, false)
            .map(|_| ())
    }
    async fn forget_heartbeat_not_found(&self, ident: &str) -> StoreResult<()> {
        self.with(|m| {
            m.remove(&format!("hb:nf:{ident}"));
        })
    }

    async fn put_minted_answer(
        &self,
        replay_key: &str,
        uuid: &str,
        sealed: &[u8],
        ttl: Duration,
    ) -> StoreResult<()> {
        let value = super::redis::encode_minted(uuid, sealed);
        self.with(|m| {
            m.remove(&format!("minted-claim:{replay_key}"));
        })?;
        self.set(
            format!("minted:{replay_key}"),
            Entry::Bytes(value),
            ttl,
            false,
        )?;
        self.set(
            format!("minted-of:{uuid}"),
            Entry::Text(replay_key.to_string()),
            ttl,
            false,
        )
        .map(|_| ())
    }
    async fn take_minted_answer(
        &self,
        replay_key: &str,
        claim: &str,
        claim_ttl: Duration,
    ) -> StoreResult<Option<KeptMinted>> {
        self.with(|m| {
            if m.contains_key(&format!("released:{claim}")) {
                return None;
            }
            let Some((Entry::Bytes(value), _)) = m.get(&format!("minted:{replay_key}")) else {
                return None;
            };
            let value = value.clone();
            let ck = format!("minted-claim:{replay_key}");
            if m.contains_key(&ck) {
                return None;
            }
            m.insert(
                ck,
                (
                    Entry::Text(claim.to_string()),
                    Some(Instant::now() + claim_ttl),
                ),
            );
            super::redis::decode_minted(&value)
        })
    }
    async fn confirm_minted_answer(&self, replay_key: &str, claim: &str) -> StoreResult<()> {
        self.with(|m| {
            let ck = format!("minted-claim:{replay_key}");
            if matches!(m.get(&ck), Some((Entry::Text(c), _)) if c == claim) {
                m.remove(&ck);
                m.remove(&format!("minted:{replay_key}"));
            }
        })
    }
    async fn release_minted_answer(
        &self,
        replay_key: &str,
        claim: &str,
        claim_ttl: Duration,
    ) -> StoreResult<()> {
        self.with(|m| {
            let ck = format!("minted-claim:{replay_key}");
            if matches!(m.get(&ck), Some((Entry::Text(c), _)) if c == claim) {
                m.remove(&ck);
            }
            m.insert(
                format!("released:{claim}"),
                (Entry::Flag, Some(Instant::now() + claim_ttl)),
            );
        })
    }
    async fn drop_minted_answer(&self, uuid: &str) -> StoreResult<()> {
        self.with(|m| {
            if let Some((Entry::Text(k), _)) = m.remove(&format!("minted-of:{uuid}")) {
                m.remove(&format!("minted:{k}"));
                m.remove(&format!("minted-claim:{k}"));
            }
        })
    }
    async fn put_pending_heartbeat(
        &self,
        uuid: &str,
        sealed: &[u8],
        ttl: Duration,
    ) -> StoreResult<()> {
        self.set(
            format!("pending:hb:{uuid}"),
            Entry::Bytes(sealed.to_vec()),
            ttl,
            false,
        )
        .map(|_| ())
    }
    async fn take_pending_heartbeat(
        &self,
        claim: &str,
        claim_ttl: Duration,
    ) -> StoreResult<Option<(String, Vec<u8>)>> {
        self.with(|m| {
            if m.contains_key(&format!("released:{claim}")) {
                return None;
            }
            let (uuid, value) = m.iter().find_map(|(k, (e, _))| {
                let uuid = k.strip_prefix("pending:hb:")?;
                let Entry::Bytes(v) = e else { return None };
                (!m.contains_key(&format!("pending-claim:{uuid}")))
                    .then(|| (uuid.to_string(), v.clone()))
            })?;
            let until = Some(Instant::now() + claim_ttl);
            m.insert(
                format!("pending-claim:{uuid}"),
                (Entry::Text(claim.to_string()), until),
            );
            m.insert(format!("claim:{claim}"), (Entry::Text(uuid.clone()), until));
            Some((uuid, value))
        })
    }
    async fn confirm_pending_heartbeat(
        &self,
        uuid: &str,
        claim: &str,
        sealed: &[u8],
    ) -> StoreResult<()> {
        self.with(|m| {
            let ck = format!("pending-claim:{uuid}");
            if !matches!(m.get(&ck), Some((Entry::Text(c), _)) if c == claim) {
                return;
            }
            m.remove(&ck);
            m.remove(&format!("claim:{claim}"));
            let key = format!("pending:hb:{uuid}");
            if matches!(m.get(&key), Some((Entry::Bytes(v), _)) if v == sealed) {
                m.remove(&key);
            }
        })
    }
    async fn release_pending_heartbeat(&self, claim: &str, claim_ttl: Duration) -> StoreResult<()> {
        self.with(|m| {
            if let Some((Entry::Text(uuid), _)) = m.remove(&format!("claim:{claim}")) {
                let ck = format!("pending-claim:{uuid}");
                if matches!(m.get(&ck), Some((Entry::Text(c), _)) if c == claim) {
                    m.remove(&ck);
                }
            }
            m.insert(
                format!("released:{claim}"),
                (Entry::Flag, Some(Instant::now() + claim_ttl)),
            );
        })
    }
    async fn pending_heartbeats(&self) -> StoreResult<u64> {
        self.with(|m| m.keys().filter(|k| k.starts_with("pending:hb:")).count() as u64)
    }
    async fn drop_pending_heartbeat(&self, uuid: &str) -> StoreResult<()> {
        self.with(|m| {
            m.remove(&format!("pending:hb:{uuid}"));
        })
    }
    async fn index_synced_at(&self) -> StoreResult<Option<u64>> {
        self.with(|m| index_marker(m).map(|(at, _)| at))
    }
    async fn index_generation(&self) -> StoreResult<Option<String>> {
        self.with(|m| index_marker(m).map(|(_, g)| g))
    }
    async fn sync_marks(&self) -> StoreResult<Option<String>> {
        self.with(|m| match m.get("idx:sync_marks") {
            Some((Entry::Text(t), _)) => Some(t.clone()),
            _ => None,
        })
    }
    async fn put_sync_marks(&self, marks: &str) -> StoreResult<()> {
        self.with(|m| {
            m.insert(
                "idx:sync_marks".into(),
                (Entry::Text(marks.to_string()), None),
            );
        })
    }
    async fn index_macs(&self, macs: &[String]) -> StoreResult<Vec<Option<String>>> {
        self.with(|m| {
            index_marker(m)?;
            Some(
                macs.iter()
                    .map(|mac| match m.get(&format!("idx:mac:{mac}")) {
                        Some((Entry::Text(u), _)) => Some(u.clone()),
                        _ => None,
                    })
                    .collect(),
            )
        })?
        .ok_or_else(incomplete)
    }
    async fn index_node(&self, uuid: &str) -> StoreResult<Option<IndexedNode>> {
        self.with(|m| {
            index_marker(m)?;
            Some(match m.get(&format!("idx:node:{uuid}")) {
                Some((Entry::Indexed(n), _)) => Some(n.clone()),
                _ => None,
            })
        })?
        .ok_or_else(incomplete)
    }
    async fn index_node_named(&self, name: &str) -> StoreResult<Option<IndexedNode>> {
        self.with(|m| {
            m.values().find_map(|(e, _)| match e {
                Entry::Indexed(n) if n.name.as_deref() == Some(name) => Some(n.clone()),
                _ => None,
            })
        })
    }
    async fn index_members(&self) -> StoreResult<(Vec<String>, Vec<String>)> {
        self.with(|m| {
            let mut nodes = Vec::new();
            let mut macs = Vec::new();
            for k in m.keys() {
                if let Some(u) = k.strip_prefix("idx:node:") {
                    nodes.push(u.to_string());
                } else if let Some(mac) = k.strip_prefix("idx:mac:") {
                    macs.push(mac.to_string());
                }
            }
            (nodes, macs)
        })
    }
    async fn index_write(&self, u: &IndexUpdate) -> StoreResult<()> {
        let text = |m: &HashMap<String, (Entry, Option<Instant>)>, k: &str| match m.get(k) {
            Some((Entry::Text(t), _)) => Some(t.clone()),
            _ => None,
        };
        let vouched = self.with(|m| {
            for n in &u.nodes {
                m.insert(
                    format!("idx:node:{}", n.uuid),
                    (Entry::Indexed(n.clone()), None),
                );
            }
            for (mac, uuid) in &u.ports {
                m.insert(format!("idx:mac:{mac}"), (Entry::Text(uuid.clone()), None));
            }
            for uuid in &u.removed_nodes {
                m.remove(&format!("idx:node:{uuid}"));
            }
            for mac in &u.removed_macs {
                m.remove(&format!("idx:mac:{mac}"));
            }
            let (Some(at), Some(generation)) = (u.synced_at_ms, u.generation.as_ref()) else {
                return true;
            };
            // A full round always vouches here (nothing can wipe it in the middle of this
            // one step); an incremental round only for the generation the index is of.
            if !u.full_round && text(m, "idx:gen").as_ref() != Some(generation) {
                return false;
            }
            m.insert("idx:gen".into(), (Entry::Text(generation.clone()), None));
            m.insert(
                "idx:synced_at".into(),
                (Entry::Text(format!("{at} {generation}")), None),
            );
            true
        })?;
        if vouched {
            Ok(())
        } else {
            Err(incomplete())
        }
    }
    async fn lease(&self, name: &str, owner: &str, ttl: Duration) -> StoreResult<bool> {
        self.with(|m| {
            let key = format!("lease:{name}");
            match m.get(&key) {
                Some((Entry::Text(o), _)) if o != owner => false,
                _ => {
                    m.insert(
                        key,
                        (Entry::Text(owner.to_string()), Some(Instant::now() + ttl)),
                    );
                    true
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn flight_and_expiry() {
        let s = MemoryStore::new();
        assert!(s
            .begin_flight("k", "a", Duration::from_secs(5))
            .await
            .unwrap());
        assert!(!s
            .begin_flight("k", "b", Duration::from_secs(5))
            .await
            .unwrap());
        assert_eq!(s.flight_state("k").await.unwrap(), FlightState::Running);
        s.end_flight(
            "k",
            "a",
            &FlightResult::AskUpstream,
            Duration::from_millis(30),
        )
        .await
        .unwrap();
        assert_eq!(
            s.flight_state("k").await.unwrap(),
            FlightState::Done(FlightResult::AskUpstream)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(s.flight_state("k").await.unwrap(), FlightState::Gone);
    }

    #[tokio::test]
    async fn node_records() {
        let s = MemoryStore::new();
        let ttl = Duration::from_secs(5);
        assert_eq!(s.node("u").await.unwrap(), None);
        s.record_token_minted("u", "h1", b"{}", ttl).await.unwrap();
        s.record_heartbeat_accepted("u", "h1", "https://a:9999", ttl)
            .await
            .unwrap();
        s.record_token_minted("u", "h2", b"{}", ttl).await.unwrap();
        let r = s.node("u").await.unwrap().unwrap();
        assert_eq!((r.token_hash.as_deref(), r.agent_url), (Some("h2"), None));
        s.forget_token("u").await.unwrap();
        assert_eq!(s.node("u").await.unwrap().unwrap().token_hash, None);
    }

    const CLAIM_TTL: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_claimed_minted_answer_is_not_taken_twice() {
        let s = MemoryStore::new();
        s.put_minted_answer("k", "u", b"sealed", Duration::from_secs(5))
            .await
            .unwrap();
        let kept = s.take_minted_answer("k", "c1", CLAIM_TTL).await.unwrap();
        assert_eq!(
            kept,
            Some(KeptMinted {
                uuid: "u".into(),
                sealed: b"sealed".to_vec()
            })
        );
        assert_eq!(
            s.take_minted_answer("k", "c2", CLAIM_TTL).await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn a_released_minted_answer_can_be_taken_again() {
        let s = MemoryStore::new();
        s.put_minted_answer("k", "u", b"sealed", Duration::from_secs(5))
            .await
            .unwrap();
        assert!(s
            .take_minted_answer("k", "c1", CLAIM_TTL)
            .await
            .unwrap()
            .is_some());
        s.release_minted_answer("k", "other", CLAIM_TTL)
            .await
            .unwrap();
        assert_eq!(
            s.take_minted_answer("k", "c2", CLAIM_TTL).await.unwrap(),
            None
        );
        s.release_minted_answer("k", "c1", CLAIM_TTL).await.unwrap();
        assert!(s
            .take_minted_answer("k", "c2", CLAIM_TTL)
            .await
            .unwrap()
            .is_some());
    }

    #[tokio::test]
    async fn an_unconfirmed_minted_claim_expires() {
        let s = MemoryStore::new();
        s.put_minted_answer("k", "u", b"sealed", Duration::from_secs(5))
            .await
            .unwrap();
        let short = Duration::from_millis(20);
        assert!(s
            .take_minted_answer("k", "c1", short)
            .await
            .unwrap()
            .is_some());
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(s
            .take_minted_answer("k", "c2", CLAIM_TTL)
            .await
            .unwrap()
            .is_some());
    }

    #[tokio::test]
    async fn a_confirmed_minted_answer_is_gone() {
        let s = MemoryStore::new();
        s.put_minted_answer("k", "u", b"sealed", Duration::from_secs(5))
            .await
            .unwrap();
        assert!(s
            .take_minted_answer("k", "c1", CLAIM_TTL)
            .await
            .unwrap()
            .is_some());
        s.confirm_minted_answer("k", "c1").await.unwrap();
        s.release_minted_answer("k", "c1", CLAIM_TTL).await.unwrap();
        assert_eq!(
            s.take_minted_answer("k", "c2", CLAIM_TTL).await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn a_claimed_heartbeat_stays_until_confirmed() {
        let s = MemoryStore::new();
        let ttl = Duration::from_secs(5);
        s.put_pending_heartbeat("u", b"v1", ttl).await.unwrap();
        let taken = s.take_pending_heartbeat("c1", CLAIM_TTL).await.unwrap();
        assert_eq!(taken, Some(("u".to_string(), b"v1".to_vec())));
        assert_eq!(
            s.take_pending_heartbeat("c2", CLAIM_TTL).await.unwrap(),
            None
        );
        assert_eq!(s.pending_heartbeats().await.unwrap(), 1);
        s.confirm_pending_heartbeat("u", "c1", b"v1").await.unwrap();
        assert_eq!(s.pending_heartbeats().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_released_heartbeat_can_be_taken_again() {
        let s = MemoryStore::new();
        s.put_pending_heartbeat("u", b"v1", Duration::from_secs(5))
            .await
            .unwrap();
        assert!(s
            .take_pending_heartbeat("c1", CLAIM_TTL)
            .await
            .unwrap()
            .is_some());
        s.release_pending_heartbeat("c1", CLAIM_TTL).await.unwrap();
        let again = s.take_pending_heartbeat("c2", CLAIM_TTL).await.unwrap();
        assert_eq!(again, Some(("u".to_string(), b"v1".to_vec())));
    }

    #[tokio::test]
    async fn a_newer_heartbeat_survives_the_confirmation_of_the_older() {
        let s = MemoryStore::new();
        let ttl = Duration::from_secs(5);
        s.put_pending_heartbeat("u", b"v1", ttl).await.unwrap();
        assert!(s
            .take_pending_heartbeat("c1", CLAIM_TTL)
            .await
            .unwrap()
            .is_some());
        s.put_pending_heartbeat("u", b"v2", ttl).await.unwrap();
        s.confirm_pending_heartbeat("u", "c1", b"v1").await.unwrap();
        let newer = s.take_pending_heartbeat("c2", CLAIM_TTL).await.unwrap();
        assert_eq!(newer, Some(("u".to_string(), b"v2".to_vec())));
    }

    #[tokio::test]
    async fn a_take_after_its_release_is_refused() {
        let s = MemoryStore::new();
        let ttl = Duration::from_secs(5);
        s.put_minted_answer("k", "u", b"sealed", ttl).await.unwrap();
        s.put_pending_heartbeat("u", b"v1", ttl).await.unwrap();
        // The release came first: the take it was meant to undo runs late.
        s.release_minted_answer("k", "c1", CLAIM_TTL).await.unwrap();
        s.release_pending_heartbeat("c2", CLAIM_TTL).await.unwrap();
        assert_eq!(
            s.take_minted_answer("k", "c1", CLAIM_TTL).await.unwrap(),
            None
        );
        assert_eq!(
            s.take_pending_heartbeat("c2", CLAIM_TTL).await.unwrap(),
            None
        );
        assert!(s
            .take_minted_answer("k", "c3", CLAIM_TTL)
            .await
            .unwrap()
            .is_some());
        assert!(s
            .take_pending_heartbeat("c4", CLAIM_TTL)
            .await
            .unwrap()
            .is_some());
    }

    fn round(full: bool, generation: &str) -> IndexUpdate {
        IndexUpdate {
            nodes: vec![IndexedNode {
                uuid: "u".into(),
                name: None,
                provision_state: "active".into(),
                fast_track: crate::store::FastTrack::Default,
                maintenance: false,
                token_held: false,
                agent_url: None,
                in_transition: false,
                read_at_ms: 0,
            }],
            ports: vec![("m".into(), "u".into())],
            synced_at_ms: Some(1_000),
            generation: Some(generation.into()),
            full_round: full,
            ..IndexUpdate::default()
        }
    }

    #[tokio::test]
    async fn an_index_never_synced_cannot_tell() {
        let s = MemoryStore::new();
        assert_eq!(s.index_synced_at().await.unwrap(), None);
        assert!(s.index_macs(&["m".to_string()]).await.is_err());
        assert!(s.index_node("u").await.is_err());
    }

    #[tokio::test]
    async fn a_full_round_starts_a_generation() {
        let s = MemoryStore::new();
        s.index_write(&round(true, "g1")).await.unwrap();
        assert_eq!(s.index_synced_at().await.unwrap(), Some(1_000));
        assert_eq!(s.index_generation().await.unwrap().as_deref(), Some("g1"));
        assert_eq!(
            s.index_macs(&["m".to_string()]).await.unwrap(),
            vec![Some("u".to_string())]
        );
    }

    #[tokio::test]
    async fn an_incremental_round_of_another_generation_does_not_vouch() {
        let s = MemoryStore::new();
        assert!(s.index_write(&round(false, "g0")).await.is_err());
        assert_eq!(s.index_synced_at().await.unwrap(), None);
        s.index_write(&round(true, "g1")).await.unwrap();
        assert!(s.index_write(&round(false, "g0")).await.is_err());
        s.index_write(&round(false, "g1")).await.unwrap();
    }
}
