//! The in-process view (issue 10, item 3): what the agent path reads most (node records,
//! negative caches, the index's markers) is served from the process's own memory, kept
//! consistent by Redis (`CLIENT TRACKING`: Redis pushes an invalidation whenever anyone changes
//! a key the process read). A repeated local answer costs one Redis command (the index entry,
//! which is never kept: see `src/store/index.rs`) instead of six; a change made elsewhere is
//! seen at once. Counted with Redis's own `total_commands_processed` ([`RedisConn::stats`]), not
//! timed.

mod common;

use common::*;
use std::time::{Duration, Instant};

const CB: &str = "https://10.0.0.5:9999";

fn local(env: &Env, route: &str) -> f64 {
    env.gw
        .metric(
            "ironic_edge_requests_total",
            &[("route", route), ("outcome", "local")],
        )
        .unwrap_or(0.0)
}

/// A gateway with the node index on, one node whose agent booted through it and whose
/// repeated heartbeat is coalesced at the edge: (env, node uuid, token).
fn booted(view_entries: usize) -> (Env, String, String) {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install_with_listings(&fake);
    let mac = ironic::random_mac();
    let uuid = mini.add_node(&[&mac]);
    let env = Env::start_with_fake(fake, |c| {
        c.with_index_and_coalescing()
            .set("ironic_edge.heartbeat.token_mismatch_forward_seconds", 600)
            .set("ironic_edge.redis.view_entries", view_entries as i64);
    });
    env.wait_for_index();
    let r = env.send(&lookup(&mac));
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["config"]["agent_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(env.send(&heartbeat(&uuid, CB, &token)).status, 202);
    env.wait_until_coalesced(&token, || env.send(&heartbeat(&uuid, CB, &token)));
    (env, uuid, token)
}

/// Sends `rounds` times each of: a lookup of MACs of no node (the index's 404), a heartbeat
/// of a node Ironic does not have (404), the coalesced heartbeat; returns Redis commands
/// processed per request beyond what the gateway's background work (sync, lease, relay) did in
/// the same time, measured right after while idle.
fn redis_commands_per_local_answer(env: &Env, uuid: &str, token: &str, rounds: usize) -> f64 {
    let unknown_macs = format!("{},{}", ironic::random_mac(), ironic::random_mac());
    let unknown_node = ironic::random_uuid();
    let send_all = || {
        assert_eq!(env.send(&lookup(&unknown_macs)).status, 404);
        assert_eq!(
            env.send(&heartbeat(&unknown_node, CB, &ironic::random_token()))
                .status,
            404
        );
        assert_eq!(env.send(&heartbeat(uuid, CB, token)).status, 202);
    };
    // The first of each fills the view.
    send_all();
    send_all();
    let (lookups, heartbeats) = (local(env, "lookup"), local(env, "heartbeat"));
    let mut redis = env.redis.conn();
    let before = redis.stats();
    let started = Instant::now();
    for _ in 0..rounds {
        send_all();
    }
    let busy = redis.stats().since(&before).commands;
    let took = started.elapsed();
    assert_eq!(
        local(env, "lookup"),
        lookups + rounds as f64,
        "answered at the edge"
    );
    assert_eq!(
        local(env, "heartbeat"),
        heartbeats + 2.0 * rounds as f64,
        "answered at the edge"
    );
    let idle_before = redis.stats();
    std::thread::sleep(took);
    let idle = redis.stats().since(&idle_before).commands;
    let requests = 3 * rounds;
    eprintln!(
        "{busy} Redis commands during {requests} local answers ({took:?}), {idle} while idle"
    );
    (busy - idle).max(0) as f64 / requests as f64
}

/// The index 404, the unknown node's 404 and the coalesced heartbeat, repeated: the view
/// answers the markers and the node record, the entry cache the index entries (one command
/// each before it: the lookup script, the node's `HMGET`).
#[test]
fn repeated_local_answers_need_no_redis_round_trip() {
    let (env, uuid, token) = booted(10_000);
    let per_request = redis_commands_per_local_answer(&env, &uuid, &token, 100);
    assert!(
        per_request < 0.3,
        "{per_request:.2} Redis commands per local answer"
    );
}

/// The edge 400 (a wrong token for a node whose token the gateway knows), repeated: once its
/// forward slot was claimed (the first one reached Ironic), the others are refused without a
/// Redis round trip until the slot expires (each one ran the slot script before: 2 commands
/// and a round trip per refusal).
#[test]
fn a_repeated_wrong_token_needs_no_redis_round_trip() {
    let (env, uuid, _token) = booted(10_000);
    let wrong = ironic::random_token();
    let refused = || assert_eq!(env.send(&heartbeat(&uuid, CB, &wrong)).status, 400);
    // The first one takes the token's forward slot and reaches Ironic.
    refused();
    refused();
    let locals = local(&env, "heartbeat");
    let mut redis = env.redis.conn();
    let before = redis.stats();
    let started = Instant::now();
    let rounds = 100;
    for _ in 0..rounds {
        refused();
    }
    let busy = redis.stats().since(&before).commands;
    let took = started.elapsed();
    assert_eq!(
        local(&env, "heartbeat"),
        locals + rounds as f64,
        "refused at the edge"
    );
    let idle_before = redis.stats();
    std::thread::sleep(took);
    let idle = redis.stats().since(&idle_before).commands;
    let per_request = (busy - idle).max(0) as f64 / rounds as f64;
    eprintln!("{busy} Redis commands during {rounds} edge 400s ({took:?}), {idle} while idle");
    assert!(
        per_request < 0.3,
        "{per_request:.2} Redis commands per edge 400"
    );
}

#[test]
fn without_the_view_every_local_answer_asks_redis() {
    let (env, uuid, token) = booted(0);
    let per_request = redis_commands_per_local_answer(&env, &uuid, &token, 100);
    assert!(
        per_request >= 3.0,
        "{per_request:.2} Redis commands per local answer"
    );
}

/// A change another process makes in Redis is seen at once: Redis invalidates the view.
#[test]
fn a_change_made_elsewhere_is_seen_at_once() {
    let (env, uuid, token) = booted(10_000);
    // Another gateway's knowledge of the node changes (here: forgotten).
    let key = format!("ironic-edge:node:{uuid}");
    assert_eq!(env.redis.cmd(&["DEL", &key]).as_int(), Some(1));
    // Redis pushes the invalidation as it runs the DEL; the gateway drops the entry when its
    // connection reads the push (well under a millisecond; room for a loaded machine).
    std::thread::sleep(Duration::from_millis(100));
    let before = env.heartbeats_forwarded_with(&token);
    assert_eq!(env.send(&heartbeat(&uuid, CB, &token)).status, 202);
    assert_eq!(
        env.heartbeats_forwarded_with(&token),
        before + 1,
        "no longer coalesced from a record Redis no longer holds"
    );
    // Redis loses everything: the index is not trusted, lookups reach Ironic.
    env.redis.cmd(&["FLUSHALL"]);
    std::thread::sleep(Duration::from_millis(100));
    let mac = ironic::random_mac();
    let asked = env.fake.requests().len();
    env.send(&lookup(&mac));
    assert!(
        env.fake.requests()[asked..]
            .iter()
            .any(|r| r.path == "/v1/lookup"),
        "a lookup the emptied index cannot decide reaches Ironic"
    );
}

/// Two gateways over one Redis (issue 10, item 7): a token minted through one is honoured by
/// the other, and the other's view of the node's old session ends with it: its old token is
/// refused within the view's bound and never coalesced at the edge again. (Not "at
/// once": B's view drops the record when its connection reads Redis's push, which a loaded
/// machine can delay past B's next request; `make test` once saw the old token coalesced
/// right after the mint. Whatever Redis pushed, the view reads an entry again after
/// `VIEW_ENTRY_TTL`, 2 s.)
#[test]
fn a_mint_on_one_gateway_is_honoured_by_the_other_at_once() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install_with_listings(&fake);
    let mac = ironic::random_mac();
    let uuid = mini.add_node(&[&mac]);
    let settings = |c: &mut GatewayConfig| {
        c.with_index_and_coalescing();
    };
    let a = Env::start_with_fake(fake, settings);
    let mut cfg_b = GatewayConfig::new(&a.fake.url(), &a.redis.url());
    settings(&mut cfg_b);
    let b = Gateway::start(cfg_b);
    a.wait_for_index();
    let send_b = |req: &Request| http::send(b.addr(), req);

    // First session: minted through A, heartbeats through B until B coalesces them.
    let t1 = a.send(&lookup(&mac)).json()["config"]["agent_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(send_b(&heartbeat(&uuid, CB, &t1)).status, 202);
    // (counted at the fake Ironic both gateways share)
    a.wait_until_coalesced(&t1, || send_b(&heartbeat(&uuid, CB, &t1)));

    // The agent reboots: Ironic wipes the token; the new lookup mints through A.
    mini.wipe(&uuid);
    let t2 = a.send(&lookup(&mac)).json()["config"]["agent_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(t1, t2);
    // Through B, within the view's bound: the old token is Ironic's to refuse, and stays so.
    let refused = common::wait_for(Duration::from_millis(2500), || {
        (send_b(&heartbeat(&uuid, CB, &t1)).status == 400).then_some(())
    });
    assert!(refused.is_some(), "B no longer holds the old session");
    for _ in 0..3 {
        let old = send_b(&heartbeat(&uuid, CB, &t1));
        assert_eq!(
            old.status,
            400,
            "the old session stays ended: {}",
            old.text()
        );
    }
    // The new token, accepted through B.
    let new = send_b(&heartbeat(&uuid, CB, &t2));
    assert_eq!(new.status, 202, "{}", new.text());
}
