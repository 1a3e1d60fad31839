//! Every Redis key the gateway uses, named here and nowhere else. All keys are under
//! `redis.key_prefix`; lookup keys are hashed so that MAC lists never appear in Redis.
//!
//! - `lookup:nf:<sha256(key)>`: an upstream 404 for that lookup, with a short TTL
//! - `lookup:flight:<sha256(key)>` / `lookup:result:<sha256(key)>`: single flight
//! - `node:<uuid>`: hash {`token` (salted hash), `token_at`, `agent_url`, `hb_fp`, `hb_at`,
//!   `reset_at`, `node` (masked node data), `minted` (the key of its kept minted answer)}
//! - `hb:nf:<ident>`: heartbeat 404 cache; `hb:mismatch:<ident>:<token tag>` and the count
//!   `hb:mismatch:<ident>`: forward slots for heartbeats whose token cannot be verified
//! - hashes `idx:v2:nodes` (uuid → JSON, and `name:<name>` → uuid) and `idx:v2:macs` (MAC →
//!   uuid), each with the field `@gen` (the generation it belongs to; `@building` while a full
//!   round rebuilds it), `idx:v2:synced_at` (`<Unix ms> <generation>`), `idx:sync_marks`: the
//!   node index the sync service keeps. One key per half, so that Redis loses a half whole or
//!   not at all (an eviction takes whole keys)
//! - `lease:<name>`: leases (one syncing process at a time)
//! - `pending:hb:<uuid>` (sealed), set `pending:hb` (takeable), hash `pending:hb-claims`
//!   (uuid → claim), zset `pending:hb-claimed` (uuid → claim expiry), `pending:hb-claim:<claim>`
//!   (uuid): heartbeats waiting for Ironic, each taken by a claim and deleted only once relayed;
//!   zset `pending:hb-since` (uuid → Unix ms since when the node has had one kept: the relay's
//!   backlog age)
//! - `lookup:minted:<sha256(key, caller)>` (`<uuid>\n<sealed>`), `…:claim` and
//!   `…:released:<claim>`: a minted answer kept for one replay, deleted only once delivered (the
//!   script that drops a node's kept answer appends `:claim` to the key its record holds)

use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The key names under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: Arc<str>,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    fn full(&self, logical: &str) -> String {
        self.full_of(&[logical])
    }

    /// The key whose logical name is `parts` joined: every agent request names a few keys,
    /// one allocation each.
    fn full_of(&self, parts: &[&str]) -> String {
        let len = self.prefix.len() + parts.iter().map(|p| p.len()).sum::<usize>();
        let mut key = String::with_capacity(len);
        key.push_str(&self.prefix);
        for part in parts {
            key.push_str(part);
        }
        key
    }

    /// An upstream 404 for this lookup key.
    pub(crate) fn lookup_not_found(&self, key: &str) -> String {
        self.full(&lookup_key_name("nf", key))
    }

    /// The lease of the process leading the lookup flight of this key.
    pub(crate) fn flight(&self, key: &str) -> String {
        self.full(&lookup_key_name("flight", key))
    }

    /// The published result of the lookup flight of this key.
    pub(crate) fn flight_result(&self, key: &str) -> String {
        self.full(&lookup_key_name("result", key))
    }

    /// The minted answer kept for `replay_key`.
    pub(crate) fn minted(&self, replay_key: &str) -> String {
        self.full(&minted_key_name(replay_key))
    }

    /// The claim on the minted answer kept under `minted` ([`Self::minted`]).
    pub(crate) fn minted_claim(minted: &str) -> String {
        format!("{minted}:claim")
    }

    /// The mark a release of `claim` leaves on the minted answer kept under `minted`.
    pub(crate) fn minted_released(minted: &str, claim: &str) -> String {
        format!("{minted}:released:{claim}")
    }

    /// A node's record.
    pub(crate) fn node(&self, uuid: &str) -> String {
        self.full_of(&["node:", uuid])
    }

    /// A heartbeat 404 for this ident.
    pub(crate) fn heartbeat_not_found(&self, ident: &str) -> String {
        self.full_of(&["hb:nf:", ident])
    }

    /// The forward slot of one presented token of a node.
    pub(crate) fn mismatch_slot(&self, ident: &str, token_tag: &str) -> String {
        self.full_of(&["hb:mismatch:", ident, ":", token_tag])
    }

    /// How many presented tokens of a node were forwarded this interval.
    pub(crate) fn mismatch_count(&self, ident: &str) -> String {
        self.full_of(&["hb:mismatch:", ident])
    }

    /// The index's half uuid → node JSON (and `name:<name>` → uuid).
    pub(crate) fn index_nodes(&self) -> String {
        self.full("idx:v2:nodes")
    }

    /// The index's half MAC → uuid.
    pub(crate) fn index_macs(&self) -> String {
        self.full("idx:v2:macs")
    }

    /// The index's freshness, `<Unix ms> <generation>`.
    pub(crate) fn index_synced_at(&self) -> String {
        self.full("idx:v2:synced_at")
    }

    /// Where the sync resumes (its watermarks).
    pub(crate) fn sync_marks(&self) -> String {
        self.full("idx:sync_marks")
    }

    pub(crate) fn lease(&self, name: &str) -> String {
        self.full(&format!("lease:{name}"))
    }

    /// A node's kept heartbeat; with an empty `uuid`, the prefix of every kept heartbeat's key.
    pub(crate) fn pending(&self, uuid: &str) -> String {
        self.full(&pending_key_name(uuid))
    }

    /// The set of takeable kept heartbeats (node uuids).
    pub(crate) fn pending_takeable(&self) -> String {
        self.full("pending:hb")
    }

    /// The claims on kept heartbeats (uuid → claim).
    pub(crate) fn pending_claims(&self) -> String {
        self.full("pending:hb-claims")
    }

    /// When each claim on a kept heartbeat expires (zset uuid → Unix ms).
    pub(crate) fn pending_claimed(&self) -> String {
        self.full("pending:hb-claimed")
    }

    /// Since when each node has had a heartbeat kept (zset uuid → Unix ms).
    pub(crate) fn pending_since(&self) -> String {
        self.full("pending:hb-since")
    }

    /// The node a claim holds.
    pub(crate) fn pending_claim(&self, claim: &str) -> String {
        self.full(&format!("pending:hb-claim:{claim}"))
    }
}

/// `lookup:<kind>:<sha256(key)>`, without the prefix: lookup keys are hashed so that MAC lists
/// never appear in Redis.
fn lookup_key_name(kind: &str, key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex = super::token_hash::hex(&digest);
    let mut name = String::with_capacity(8 + kind.len() + hex.len());
    name.push_str("lookup:");
    name.push_str(kind);
    name.push(':');
    name.push_str(&hex);
    name
}

/// The logical key (no prefix) of the minted answer kept for `replay_key`: what its seal is
/// bound to.
pub(crate) fn minted_key_name(replay_key: &str) -> String {
    lookup_key_name("minted", replay_key)
}

/// The logical key (no prefix) of a node's kept heartbeat: what its seal is bound to.
pub(crate) fn pending_key_name(uuid: &str) -> String {
    format!("pending:hb:{uuid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names are what Redis already holds: a renamed key strands what is kept.
    #[test]
    fn key_names_are_stable() {
        let k = Keys::new("p:");
        let sha_k = "8254c329a92850f6d539dd376f4816ee2764517da5e0235514af433164480d7a";
        assert_eq!(k.lookup_not_found("k"), format!("p:lookup:nf:{sha_k}"));
        assert_eq!(k.flight("k"), format!("p:lookup:flight:{sha_k}"));
        assert_eq!(k.flight_result("k"), format!("p:lookup:result:{sha_k}"));
        let minted = k.minted("k");
        assert_eq!(minted, format!("p:lookup:minted:{sha_k}"));
        assert_eq!(Keys::minted_claim(&minted), format!("{minted}:claim"));
        assert_eq!(
            Keys::minted_released(&minted, "c"),
            format!("{minted}:released:c")
        );
        assert_eq!(minted_key_name("k"), format!("lookup:minted:{sha_k}"));
        assert_eq!(k.node("u"), "p:node:u");
        assert_eq!(k.heartbeat_not_found("u"), "p:hb:nf:u");
        assert_eq!(k.mismatch_slot("u", "t"), "p:hb:mismatch:u:t");
        assert_eq!(k.mismatch_count("u"), "p:hb:mismatch:u");
        assert_eq!(k.index_nodes(), "p:idx:v2:nodes");
        assert_eq!(k.index_macs(), "p:idx:v2:macs");
        assert_eq!(k.index_synced_at(), "p:idx:v2:synced_at");
        assert_eq!(k.sync_marks(), "p:idx:sync_marks");
        assert_eq!(k.lease("sync"), "p:lease:sync");
        assert_eq!(k.pending("u"), "p:pending:hb:u");
        assert_eq!(k.pending(""), "p:pending:hb:");
        assert_eq!(pending_key_name("u"), "pending:hb:u");
        assert_eq!(k.pending_takeable(), "p:pending:hb");
        assert_eq!(k.pending_claims(), "p:pending:hb-claims");
        assert_eq!(k.pending_claimed(), "p:pending:hb-claimed");
        assert_eq!(k.pending_claim("c"), "p:pending:hb-claim:c");
        assert_eq!(k.pending_since(), "p:pending:hb-since");
    }
}
