//! The handles against a real redis-server: the claims, scripts and generation markers as
//! Redis runs them.

use super::replay::KeptMinted;
use super::testing::TestRedis;
use super::*;
use std::time::Duration;

const CLAIM_TTL: Duration = Duration::from_secs(5);

#[tokio::test]
async fn flight_and_expiry() {
    let r = TestRedis::start().await;
    let s = &r.stores.flights;
    assert!(s.begin("k", "a", Duration::from_secs(5)).await.unwrap());
    assert!(!s.begin("k", "b", Duration::from_secs(5)).await.unwrap());
    assert_eq!(s.state("k").await.unwrap(), FlightState::Running);
    s.end(
        "k",
        "a",
        &FlightResult::AskUpstream,
        Duration::from_millis(30),
    )
    .await
    .unwrap();
    assert_eq!(
        s.state("k").await.unwrap(),
        FlightState::Done(FlightResult::AskUpstream)
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(s.state("k").await.unwrap(), FlightState::Gone);
}

#[tokio::test]
async fn node_records() {
    let r = TestRedis::start().await;
    let s = &r.stores.records;
    let ttl = Duration::from_secs(5);
    assert_eq!(s.get("u").await.unwrap(), None);
    s.token_minted("u", "h1", b"{}", ttl).await.unwrap();
    s.heartbeat_accepted("u", "h1", "https://a:9999", ttl)
        .await
        .unwrap();
    s.token_minted("u", "h2", b"{}", ttl).await.unwrap();
    let rec = s.get("u").await.unwrap().unwrap();
    assert_eq!(
        (rec.token_hash.as_deref(), rec.agent_url),
        (Some("h2"), None)
    );
    s.forget_token("u").await.unwrap();
    assert_eq!(s.get("u").await.unwrap().unwrap().token_hash, None);
}

#[tokio::test]
async fn negative_markers_are_seen_at_once_and_forgotten() {
    let r = TestRedis::start().await;
    let s = &r.stores.negative;
    let ttl = Duration::from_secs(5);
    assert!(!s.lookup_not_found("k").await.unwrap());
    let mut step = WriteStep::new();
    s.remember_lookup_not_found(&mut step, "k", ttl);
    r.stores.write(step).await.unwrap();
    assert!(s.lookup_not_found("k").await.unwrap());
    assert!(!s.heartbeat_not_found("u").await.unwrap());
    s.remember_heartbeat_not_found("u", ttl).await.unwrap();
    assert!(s.heartbeat_not_found("u").await.unwrap());
    let mut step = WriteStep::new();
    s.forget_heartbeat_not_found(&mut step, "u");
    r.stores.write(step).await.unwrap();
    assert!(!s.heartbeat_not_found("u").await.unwrap());
}

#[tokio::test]
async fn mismatch_slots_per_token_and_per_node() {
    let r = TestRedis::start().await;
    let s = &r.stores.mismatch;
    let interval = Duration::from_secs(5);
    assert!(s.claim("u", "t1", interval, 2).await.unwrap());
    assert!(!s.claim("u", "t1", interval, 2).await.unwrap());
    assert!(s.claim("u", "t2", interval, 2).await.unwrap());
    assert!(!s.claim("u", "t3", interval, 2).await.unwrap());
    assert!(s.claim("v", "t1", interval, 2).await.unwrap());
}

#[tokio::test]
async fn a_lease_is_held_by_one_owner() {
    let r = TestRedis::start().await;
    let s = &r.stores.lease;
    let ttl = Duration::from_secs(5);
    assert!(s.hold("sync", "a", ttl).await.unwrap());
    assert!(!s.hold("sync", "b", ttl).await.unwrap());
    assert!(s.hold("sync", "a", ttl).await.unwrap());
}

#[tokio::test]
async fn a_claimed_minted_answer_is_not_taken_twice() {
    let r = TestRedis::start().await;
    let s = &r.stores.replay;
    s.put("k", "u", b"sealed", Duration::from_secs(5))
        .await
        .unwrap();
    let kept = s.take("k", "c1", CLAIM_TTL).await.unwrap();
    assert_eq!(
        kept,
        Some(KeptMinted {
            uuid: "u".into(),
            sealed: b"sealed".to_vec()
        })
    );
    assert_eq!(s.take("k", "c2", CLAIM_TTL).await.unwrap(), None);
}

#[tokio::test]
async fn a_released_minted_answer_can_be_taken_again() {
    let r = TestRedis::start().await;
    let s = &r.stores.replay;
    s.put("k", "u", b"sealed", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(s.take("k", "c1", CLAIM_TTL).await.unwrap().is_some());
    s.release("k", "other", CLAIM_TTL).await.unwrap();
    assert_eq!(s.take("k", "c2", CLAIM_TTL).await.unwrap(), None);
    s.release("k", "c1", CLAIM_TTL).await.unwrap();
    assert!(s.take("k", "c2", CLAIM_TTL).await.unwrap().is_some());
}

#[tokio::test]
async fn an_unconfirmed_minted_claim_expires() {
    let r = TestRedis::start().await;
    let s = &r.stores.replay;
    s.put("k", "u", b"sealed", Duration::from_secs(5))
        .await
        .unwrap();
    let short = Duration::from_millis(20);
    assert!(s.take("k", "c1", short).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(s.take("k", "c2", CLAIM_TTL).await.unwrap().is_some());
}

#[tokio::test]
async fn a_confirmed_minted_answer_is_gone() {
    let r = TestRedis::start().await;
    let s = &r.stores.replay;
    s.put("k", "u", b"sealed", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(s.take("k", "c1", CLAIM_TTL).await.unwrap().is_some());
    s.confirm("k", "c1").await.unwrap();
    s.release("k", "c1", CLAIM_TTL).await.unwrap();
    assert_eq!(s.take("k", "c2", CLAIM_TTL).await.unwrap(), None);
}

#[tokio::test]
async fn a_node_drops_its_kept_minted_answer() {
    let r = TestRedis::start().await;
    let s = &r.stores.replay;
    s.put("k", "u", b"sealed", Duration::from_secs(5))
        .await
        .unwrap();
    s.drop_node("u").await.unwrap();
    assert_eq!(s.take("k", "c1", CLAIM_TTL).await.unwrap(), None);
}

#[tokio::test]
async fn a_claimed_heartbeat_stays_until_confirmed() {
    let r = TestRedis::start().await;
    let s = &r.stores.relay;
    let ttl = Duration::from_secs(5);
    s.put("u", b"v1", ttl).await.unwrap();
    let taken = s.take("c1", CLAIM_TTL).await.unwrap();
    assert_eq!(taken, Some(("u".to_string(), b"v1".to_vec())));
    assert_eq!(s.take("c2", CLAIM_TTL).await.unwrap(), None);
    assert_eq!(s.backlog().await.unwrap().0, 1);
    s.confirm("u", "c1", b"v1").await.unwrap();
    assert_eq!(s.backlog().await.unwrap().0, 0);
}

/// Kept heartbeats are taken the node that has waited longest first; a newer heartbeat of a
/// waiting node keeps its place, and a node whose heartbeat was delivered waits anew.
#[tokio::test]
async fn the_node_that_waited_longest_is_relayed_first() {
    let r = TestRedis::start().await;
    let s = &r.stores.relay;
    let ttl = Duration::from_secs(30);
    for u in ["a", "b", "c", "d", "e"] {
        s.put(u, b"v1", ttl).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    s.put("a", b"v2", ttl).await.unwrap();
    let first = s.take("c1", CLAIM_TTL).await.unwrap();
    assert_eq!(first, Some(("a".to_string(), b"v2".to_vec())));
    s.confirm("a", "c1", b"v2").await.unwrap();
    s.put("a", b"v3", ttl).await.unwrap();
    let mut order = Vec::new();
    for claim in ["c2", "c3", "c4", "c5", "c6"] {
        let (u, v) = s.take(claim, CLAIM_TTL).await.unwrap().expect("one kept");
        s.confirm(&u, claim, &v).await.unwrap();
        order.push(u);
    }
    assert_eq!(order, ["b", "c", "d", "e", "a"]);
}

#[tokio::test]
async fn a_released_heartbeat_can_be_taken_again() {
    let r = TestRedis::start().await;
    let s = &r.stores.relay;
    s.put("u", b"v1", Duration::from_secs(5)).await.unwrap();
    assert!(s.take("c1", CLAIM_TTL).await.unwrap().is_some());
    s.release("c1", CLAIM_TTL).await.unwrap();
    let again = s.take("c2", CLAIM_TTL).await.unwrap();
    assert_eq!(again, Some(("u".to_string(), b"v1".to_vec())));
}

#[tokio::test]
async fn a_newer_heartbeat_survives_the_confirmation_of_the_older() {
    let r = TestRedis::start().await;
    let s = &r.stores.relay;
    let ttl = Duration::from_secs(5);
    s.put("u", b"v1", ttl).await.unwrap();
    assert!(s.take("c1", CLAIM_TTL).await.unwrap().is_some());
    s.put("u", b"v2", ttl).await.unwrap();
    s.confirm("u", "c1", b"v1").await.unwrap();
    let newer = s.take("c2", CLAIM_TTL).await.unwrap();
    assert_eq!(newer, Some(("u".to_string(), b"v2".to_vec())));
}

#[tokio::test]
async fn a_dropped_heartbeat_is_not_taken() {
    let r = TestRedis::start().await;
    let s = &r.stores.relay;
    s.put("u", b"v1", Duration::from_secs(5)).await.unwrap();
    s.drop_node("u").await.unwrap();
    assert_eq!(s.take("c1", CLAIM_TTL).await.unwrap(), None);
    assert_eq!(s.backlog().await.unwrap().0, 0);
}

#[tokio::test]
async fn the_backlog_counts_and_ages_from_the_first_heartbeat_kept() {
    let r = TestRedis::start().await;
    let s = &r.stores.relay;
    let ttl = Duration::from_secs(5);
    assert_eq!(s.backlog().await.unwrap(), (0, None));
    let before = super::now_ms();
    s.put("a", b"a1", ttl).await.unwrap();
    let (n, since_a) = s.backlog().await.unwrap();
    let since_a = since_a.expect("a is kept");
    assert!(n == 1 && since_a >= before && since_a <= super::now_ms());
    // A newer heartbeat of the same node: the node's wait goes on.
    s.put("a", b"a2", ttl).await.unwrap();
    s.put("b", b"b1", ttl).await.unwrap();
    assert_eq!(s.backlog().await.unwrap(), (2, Some(since_a)));
    // `a` relayed: the oldest is now `b`'s.
    let taken = s.take("c1", CLAIM_TTL).await.unwrap().unwrap();
    s.confirm(&taken.0, "c1", &taken.1).await.unwrap();
    let (n, oldest) = s.backlog().await.unwrap();
    assert_eq!(n, 1);
    assert!(oldest.is_some());
    // A heartbeat gone by itself (expired) leaves no age behind; nor does a dropped one.
    let left = if taken.0 == "a" { "b" } else { "a" };
    let _: () = r
        .stores
        .conn
        .run(
            redis::cmd("DEL")
                .arg(r.stores.conn.keys.pending(left))
                .clone(),
        )
        .await
        .unwrap();
    assert_eq!(s.backlog().await.unwrap().1, None);
    s.put("d", b"d1", ttl).await.unwrap();
    s.drop_node("d").await.unwrap();
    assert_eq!(s.backlog().await.unwrap().1, None);
}

#[tokio::test]
async fn a_take_after_its_release_is_refused() {
    let r = TestRedis::start().await;
    let (replay, relay) = (&r.stores.replay, &r.stores.relay);
    let ttl = Duration::from_secs(5);
    replay.put("k", "u", b"sealed", ttl).await.unwrap();
    relay.put("u", b"v1", ttl).await.unwrap();
    // The release came first: the take it was meant to undo runs late.
    replay.release("k", "c1", CLAIM_TTL).await.unwrap();
    relay.release("c2", CLAIM_TTL).await.unwrap();
    assert_eq!(replay.take("k", "c1", CLAIM_TTL).await.unwrap(), None);
    assert_eq!(relay.take("c2", CLAIM_TTL).await.unwrap(), None);
    assert!(replay.take("k", "c3", CLAIM_TTL).await.unwrap().is_some());
    assert!(relay.take("c4", CLAIM_TTL).await.unwrap().is_some());
}

fn round(full: bool, generation: &str) -> IndexUpdate {
    IndexUpdate {
        nodes: vec![IndexedNode {
            uuid: "u".into(),
            name: Some("n".into()),
            provision_state: "active".into(),
            fast_track: FastTrack::Default,
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

/// What a lookup reads of the index, in a step of its own.
async fn lookup_read(r: &TestRedis, by: IndexKey<'_>) -> IndexRead {
    let mut step = ReadStep::new();
    let slot = r.stores.index.read_lookup(&mut step, by);
    let mut replies = r.stores.read(step).await.unwrap();
    r.stores
        .index
        .take_lookup(&mut replies, slot, by)
        .await
        .unwrap()
}

/// MACs are read in slices and the reading stops at the second distinct node; the entry comes
/// only with exactly one node.
#[tokio::test]
async fn a_lookup_reads_its_macs_in_slices_until_two_nodes() {
    let r = TestRedis::start().await;
    let mut u = round(true, "g1");
    u.ports.push(("m2".into(), "v".into()));
    r.stores.index.write(&u).await.unwrap();
    let mut macs: Vec<String> = (0..300).map(|i| format!("none-{i}")).collect();
    macs.push("m".into());
    let read = lookup_read(&r, IndexKey::Macs(&macs)).await;
    assert_eq!(
        (read.nodes, read.node.is_some()),
        (vec!["u".to_string()], true)
    );
    macs.insert(200, "m2".into());
    macs.push("m".into());
    let read = lookup_read(&r, IndexKey::Macs(&macs)).await;
    assert_eq!(read.nodes, vec!["v".to_string(), "u".to_string()]);
    assert_eq!(read.node, None);
}

/// Reads the agent path repeats come from the entry cache, and every write to the index (a
/// round, a refresh, a removal) makes them out of date at once.
#[tokio::test]
async fn a_cached_index_read_follows_every_write() {
    let r = TestRedis::start().await;
    let index = &r.stores.index;
    index.write(&round(true, "g1")).await.unwrap();
    let macs = vec!["m2".to_string()];
    let lookup_of_m2 = || lookup_read(&r, IndexKey::Macs(&macs));
    assert!(lookup_of_m2().await.nodes.is_empty());
    assert!(
        lookup_of_m2().await.nodes.is_empty(),
        "the same, from the cache"
    );
    assert_eq!(index.node("v").await.unwrap(), None);
    assert_eq!(index.node("v").await.unwrap(), None);

    // A refresh (no round, no new freshness) adds a node and its MAC.
    let mut refresh = round(false, "g1");
    refresh.nodes[0].uuid = "v".into();
    refresh.ports = vec![("m2".into(), "v".into())];
    refresh.synced_at_ms = None;
    refresh.generation = None;
    index.write(&refresh).await.unwrap();
    assert_eq!(lookup_of_m2().await.nodes, vec!["v".to_string()]);
    assert_eq!(
        index.node("v").await.unwrap().map(|n| n.uuid),
        Some("v".into())
    );
    let by_uuid = lookup_read(&r, IndexKey::Uuid("v")).await;
    assert_eq!(by_uuid.node.map(|n| n.uuid), Some("v".into()));

    // And a removal takes them away again.
    let removal = IndexUpdate {
        removed_nodes: vec!["v".into()],
        removed_macs: vec!["m2".into()],
        ..IndexUpdate::default()
    };
    index.write(&removal).await.unwrap();
    assert!(lookup_of_m2().await.nodes.is_empty());
    assert_eq!(index.node("v").await.unwrap(), None);
    assert_eq!(lookup_read(&r, IndexKey::Uuid("v")).await.node, None);
}

/// A half Redis lost takes its version tag with it: nothing cached of it is used again.
#[tokio::test]
async fn a_cached_index_read_is_not_used_after_redis_lost_the_index() {
    let r = TestRedis::start().await;
    r.stores.index.write(&round(true, "g1")).await.unwrap();
    let macs = vec!["m".to_string()];
    let read = lookup_read(&r, IndexKey::Macs(&macs)).await;
    assert_eq!((read.synced_at_ms, read.nodes.len()), (Some(1_000), 1));
    lookup_read(&r, IndexKey::Macs(&macs)).await;
    r.flush().await;
    let read = lookup_read(&r, IndexKey::Macs(&macs)).await;
    assert_eq!((read.synced_at_ms, read.nodes.len()), (None, 0));
}

/// One read step over several handles: a viewed read (answered by the view the second time),
/// a script that claims, and the index script, each answer where its slot says.
#[tokio::test]
async fn one_read_step_serves_every_handle() {
    let r = TestRedis::start().await;
    let ttl = Duration::from_secs(5);
    let mut step = WriteStep::new();
    r.stores
        .negative
        .remember_lookup_not_found(&mut step, "k", ttl);
    r.stores
        .replay
        .write_put(&mut step, "k", "u", b"sealed", ttl);
    r.stores.write(step).await.unwrap();
    for claim in ["c1", "c2"] {
        let mut step = ReadStep::new();
        let taken = r.stores.replay.read_take(&mut step, "k", claim, CLAIM_TTL);
        let index = r.stores.index.read_lookup(&mut step, IndexKey::Uuid("u"));
        let not_found = r.stores.negative.read_lookup_not_found(&mut step, "k");
        let mut replies = r.stores.read(step).await.unwrap();
        assert!(replies.take(not_found).unwrap());
        assert_eq!(
            r.stores
                .index
                .take_lookup(&mut replies, index, IndexKey::Uuid("u"))
                .await
                .unwrap()
                .synced_at_ms,
            None
        );
        let taken = replies.take(taken).unwrap();
        // Claimed by the first step: the second gets nothing while the claim holds.
        assert_eq!(taken.is_some(), claim == "c1", "{claim}");
    }
}

#[tokio::test]
async fn an_index_never_synced_cannot_tell() {
    let r = TestRedis::start().await;
    let s = &r.stores.index;
    assert_eq!(s.synced_at().await.unwrap(), None);
    assert_eq!(
        lookup_read(&r, IndexKey::Macs(&["m".to_string()])).await,
        IndexRead::default()
    );
    assert!(s.node("u").await.is_err());
}

#[tokio::test]
async fn a_full_round_starts_a_generation() {
    let r = TestRedis::start().await;
    let s = &r.stores.index;
    s.write(&round(true, "g1")).await.unwrap();
    assert_eq!(s.synced_at().await.unwrap(), Some(1_000));
    assert_eq!(s.generation().await.unwrap().as_deref(), Some("g1"));
    let read = lookup_read(&r, IndexKey::Macs(&["x".to_string(), "m".to_string()])).await;
    assert_eq!(
        (read.synced_at_ms, read.nodes, read.node.map(|n| n.uuid)),
        (Some(1_000), vec!["u".to_string()], Some("u".to_string()))
    );
    let read = lookup_read(&r, IndexKey::Uuid("u")).await;
    assert_eq!(read.node.map(|n| n.provision_state), Some("active".into()));
    let read = lookup_read(&r, IndexKey::Uuid("nope")).await;
    assert_eq!((read.synced_at_ms, read.node), (Some(1_000), None));
    assert_eq!(
        s.node_named("n").await.unwrap().map(|n| n.uuid),
        Some("u".into())
    );
    assert_eq!(
        s.members().await.unwrap(),
        (vec!["u".to_string()], vec!["m".to_string()])
    );
}

#[tokio::test]
async fn an_incremental_round_of_another_generation_does_not_vouch() {
    let r = TestRedis::start().await;
    let s = &r.stores.index;
    assert!(s.write(&round(false, "g0")).await.is_err());
    assert_eq!(s.synced_at().await.unwrap(), None);
    s.write(&round(true, "g1")).await.unwrap();
    assert!(s.write(&round(false, "g0")).await.is_err());
    s.write(&round(false, "g1")).await.unwrap();
}

#[tokio::test]
async fn sync_marks_round_trip() {
    let r = TestRedis::start().await;
    let s = &r.stores.index;
    assert_eq!(s.sync_marks().await.unwrap(), None);
    s.put_sync_marks("{\"a\":1}").await.unwrap();
    assert_eq!(s.sync_marks().await.unwrap().as_deref(), Some("{\"a\":1}"));
}
