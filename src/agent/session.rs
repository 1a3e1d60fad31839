//! A node's agent session, as the edge knows it. Pure.
//!
//! A session starts when a lookup through the gateway mints a token (a new token hash, no
//! accepted `callback_url`, no heartbeat fingerprint) and ends when Ironic wipes the token: a
//! heartbeat Ironic refused for its token, the index showing no token, or an action forwarded
//! through the gateway (a power or provision change, an edit) that may wipe it. Ironic applies
//! such an action after its 202, in a conductor thread, so what the gateway reads of the node
//! right after it is not yet the outcome: the node's session is *unsettled*, and nothing is
//! answered at the edge from what the gateway knew of it (no coalesced 202, no edge 400 from an
//! old `callback_url`) until Ironic's view after the action is known: a new token minted through
//! the gateway, or the node read by a round or refresh that started after the action, with no
//! power or provision change under way.
//!
//! The node records write the transitions ([`crate::store::NodeRecords`]: `token_minted`,
//! `heartbeat_accepted`, `forget_token`, `node_action`); [`view`] is what every heartbeat decision reads.

use crate::edge::Edge;
use crate::store::{IndexedNode, NodeRecord};
use std::time::Duration;

/// Where a node's agent session stands for the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SessionState {
    /// The gateway has seen nothing of it (no record).
    Unknown,
    /// A forwarded action may have ended it; Ironic's outcome is not known yet.
    Unsettled,
    /// The gateway knows it: what it saw, corrected by the index, decides.
    Known,
}

/// Where the session stands, from the node's record and its index entry.
pub(crate) fn state(record: Option<&NodeRecord>, indexed: Option<&IndexedNode>) -> SessionState {
    let Some(record) = record else {
        return SessionState::Unknown;
    };
    let Some(since) = record.unsettled_since_ms else {
        return SessionState::Known;
    };
    // (A token minted through the gateway starts a new session: the store forgets the action
    // then.) Ironic's own view, read after the action, with nothing left under way: a
    // heartbeat Ironic accepts after the action is no proof, the conductor may wipe the token
    // a moment later.
    let settled_in_index = indexed.is_some_and(|n| n.read_at_ms > since && !n.in_transition);
    if settled_in_index {
        SessionState::Known
    } else {
        SessionState::Unsettled
    }
}

/// What a heartbeat decision may use of the node: while the session is unsettled, the token
/// hash only (a heartbeat with the old token is forwarded, never refused or coalesced at the
/// edge), without the `callback_url`, the last heartbeat or the index entry, any of which may
/// be from before the action.
pub(crate) fn view(
    record: Option<NodeRecord>,
    indexed: Option<IndexedNode>,
) -> (Option<NodeRecord>, Option<IndexedNode>) {
    match state(record.as_ref(), indexed.as_ref()) {
        SessionState::Unsettled => {
            let record = record.map(|r| NodeRecord {
                agent_url: None,
                last_heartbeat: None,
                ..r
            });
            (record, None)
        }
        SessionState::Unknown | SessionState::Known => (record, indexed),
    }
}

/// Records that the gateway forwarded an action on `ident` that Ironic accepted (a 2xx to a
/// change under `/v1/nodes/<ident>`): its agent session is unsettled from now. A name is
/// resolved through the node index; one the index does not know has no session the gateway
/// answers from (records are kept by UUID, which lookups hand out).
pub(crate) async fn note_node_action(edge: &Edge, ident: &str) {
    let uuid = if ident.len() == 36 && crate::ironic::ident::is_uuid_like(ident) {
        ident.to_ascii_lowercase()
    } else {
        match edge.store.index.node_named(ident).await {
            Ok(Some(node)) => node.uuid,
            Ok(None) => return,
            Err(e) => {
                log::warn!("agent session of {ident} not unsettled: {e}");
                return;
            }
        }
    };
    let ttl = Duration::from_secs(edge.config.node_ttl_seconds);
    if let Err(e) = edge
        .store
        .records
        .node_action(&uuid, crate::store::now_ms(), ttl)
        .await
    {
        log::warn!("agent session of {uuid} not unsettled: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FastTrack;

    const ACTION: u64 = 10_000;

    fn record(unsettled: Option<u64>, token_seen: Option<u64>, url: bool) -> NodeRecord {
        NodeRecord {
            token_hash: Some("h".into()),
            agent_url: url.then(|| "https://10.0.0.1:9999".into()),
            last_heartbeat: url.then(|| ("fp".into(), 9_000)),
            token_seen_ms: token_seen,
            unsettled_since_ms: unsettled,
        }
    }

    fn indexed(read_at_ms: u64, in_transition: bool) -> IndexedNode {
        IndexedNode {
            uuid: "u".into(),
            name: None,
            provision_state: "active".into(),
            fast_track: FastTrack::Default,
            maintenance: false,
            token_held: true,
            agent_url: Some("https://10.0.0.1:9999".into()),
            in_transition,
            read_at_ms,
        }
    }

    #[test]
    fn transitions() {
        use SessionState::*;
        let cases: &[(&str, Option<NodeRecord>, Option<IndexedNode>, SessionState)] = &[
            ("nothing seen", None, Some(indexed(1, false)), Unknown),
            (
                "a session, no action",
                Some(record(None, Some(5_000), true)),
                None,
                Known,
            ),
            (
                "an action forwarded: unsettled",
                Some(record(Some(ACTION), Some(5_000), true)),
                None,
                Unsettled,
            ),
            (
                "the index read before the action does not settle it",
                Some(record(Some(ACTION), Some(5_000), true)),
                Some(indexed(ACTION - 1, false)),
                Unsettled,
            ),
            (
                "read after the action, the change still under way",
                Some(record(Some(ACTION), Some(5_000), true)),
                Some(indexed(ACTION + 1, true)),
                Unsettled,
            ),
            (
                "read after the action, settled",
                Some(record(Some(ACTION), Some(5_000), true)),
                Some(indexed(ACTION + 1, false)),
                Known,
            ),
            (
                "a token minted after the action (the store forgot the action)",
                Some(record(None, Some(ACTION + 5), false)),
                Some(indexed(ACTION - 1, true)),
                Known,
            ),
            (
                "a heartbeat Ironic accepted after the action does not settle it",
                Some(record(Some(ACTION), Some(ACTION + 5), true)),
                None,
                Unsettled,
            ),
        ];
        for (name, r, i, want) in cases {
            assert_eq!(state(r.as_ref(), i.as_ref()), *want, "{name}");
        }
    }

    #[test]
    fn an_unsettled_view_keeps_the_token_hash_only() {
        let (r, i) = view(
            Some(record(Some(ACTION), Some(5_000), true)),
            Some(indexed(ACTION - 1, false)),
        );
        let r = r.unwrap();
        assert_eq!(r.token_hash.as_deref(), Some("h"));
        assert_eq!(r.agent_url, None);
        assert_eq!(r.last_heartbeat, None);
        assert_eq!(i, None);
    }

    #[test]
    fn a_known_view_is_what_the_gateway_knows() {
        let r = record(None, Some(5_000), true);
        let i = indexed(1, false);
        assert_eq!(view(Some(r.clone()), Some(i.clone())), (Some(r), Some(i)));
    }
}
