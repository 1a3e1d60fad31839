//! The load governor, black-box: what the gateway sends Ironic under a heartbeat storm into an
//! exhausted conductor pool (Ironic's 503 "lack of free conductor workers"), with a small
//! budget so that a few requests show what a thousand agents would.

mod common;

use common::{Env, FakeIronic, MiniIronic, Request};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn heartbeat(uuid: &str, token: &str, n: usize) -> Request {
    common::versioned_heartbeat(uuid, token, &format!("13.0.{n}"))
}

fn minted_token(env: &Env, mac: &str) -> String {
    common::minted_token(env, mac)
}

/// A small budget that does not grow (so that the storm's 503s can only push it down) and a
/// short answer deadline (so that a request held back for the rate shows as Ironic's 503).
fn small_budget(cfg: &mut common::GatewayConfig) {
    cfg.with_seal_key()
        .set("ironic_edge.heartbeat.relay_when_upstream_fails", true)
        .set("ironic_edge.upstream.budget.initial_per_second", 4)
        .set("ironic_edge.upstream.budget.min_per_second", 1)
        .set("ironic_edge.upstream.budget.max_per_second", 4)
        .set("ironic_edge.upstream.agent_answer_within_ms", 3000);
}

fn mac(group: u8, i: usize) -> String {
    format!("52:54:0b:00:{group:02x}:{i:02x}")
}

#[test]
fn lookups_keep_minting_while_the_conductor_pool_refuses_heartbeats() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    let failing = mini.fail_heartbeats_while(&fake);
    let storm: Vec<(String, String)> = (0..6)
        .map(|i| (mini.add_node(&[mac(1, i).as_str()]), mac(1, i)))
        .collect();
    let booting: Vec<String> = (0..6)
        .map(|i| {
            let m = mac(2, i);
            mini.add_node(&[m.as_str()]);
            m
        })
        .collect();
    let env = Env::start_with_fake(fake, small_budget);
    let tokens: Vec<String> = storm.iter().map(|(_, m)| minted_token(&env, m)).collect();

    // The pool is exhausted: for 3 s the storm's agents heartbeat, each answered at the edge
    // (verified, kept for the relay) while every one forwarded gets Ironic's 503.
    failing.store(true, Ordering::SeqCst);
    let storm_end = Instant::now() + Duration::from_secs(3);
    std::thread::scope(|s| {
        for ((uuid, _), token) in storm.iter().zip(&tokens) {
            let env = &env;
            s.spawn(move || {
                let mut n = 0;
                while Instant::now() < storm_end {
                    n += 1;
                    let r = env.send(&heartbeat(uuid, token, n));
                    assert_eq!(r.status, 202, "a verified heartbeat: {}", r.text());
                }
            });
        }
    });
    let refused = env
        .fake
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1/heartbeat/"))
        .count();
    assert!(
        refused >= 2,
        "the storm reached the refusing pool: {refused}"
    );

    // New agents boot meanwhile: their lookups (Ironic's API, not its pool) all mint.
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = booting
            .iter()
            .map(|m| {
                let env = &env;
                s.spawn(move || {
                    let r = env.send(&common::lookup(m));
                    (r.status, r.text())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (status, body) in &answers {
        assert_eq!(*status, 200, "a lookup behind the heartbeat storm: {body}");
    }
    let rate = |lane| {
        env.gw
            .metric("ironic_edge_budget_rate_per_second", &[("budget", lane)])
            .expect("the budget's rate, by lane")
    };
    let (api_rate, pool_rate) = (rate("ironic"), rate("conductor_pool"));
    assert!(
        pool_rate < api_rate,
        "the pool's refusals lowered its lane only: conductor {pool_rate}, api {api_rate}"
    );
}

/// A boot storm of lookups queued for Ironic does not starve the node sync: the index stays
/// fresh, so a machine that is not enrolled keeps getting its 404 at the edge. (Behind
/// hundreds of lookups in a 1,000-agent storm, the sync's requests waited past their deadline,
/// the index went stale 25 s in, and every agent request went to Ironic.)
#[test]
fn the_node_sync_keeps_the_index_fresh_behind_a_lookup_storm() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install_with_listings(&fake);
    let storm: Vec<String> = (0..24)
        .map(|i| {
            let m = mac(3, i);
            mini.add_node(&[m.as_str()]);
            m
        })
        .collect();
    // Ironic mints slowly: a lookup takes 2 s, and two are in flight at most, so 24 lookups
    // keep the queue full for 24 s, longer than the index's freshness bound (2 x 1 s + 5 s)
    // and the sync's 10 s wait for a place.
    let m = mini.clone();
    fake.route("GET", "/v1/lookup", move |req, ctx| {
        m.lookup(req, ctx).delay(Duration::from_secs(2))
    });
    let env = Env::start_with_fake(fake, |c| {
        c.with_seal_key()
            .set("ironic_edge.sync.enabled", true)
            .set("ironic_edge.sync.interval_seconds", 1)
            .set("ironic_edge.upstream.max_agent_requests_in_flight", 2)
            .set("ironic_edge.upstream.agent_answer_within_ms", 28000);
    });
    env.wait_for_index();
    let unknown = mac(4, 1);
    let client = || {
        // Held for Ironic longer than the harness's usual read timeout.
        let c = common::http::Client::connect(env.gw.addr());
        c.set_read_timeout(Duration::from_secs(40));
        c
    };
    std::thread::scope(|s| {
        for m in &storm {
            let client = &client;
            s.spawn(move || client().send(&common::lookup(m)));
        }
        std::thread::sleep(Duration::from_secs(14));
        let r = client().send(&common::lookup(&unknown));
        assert_eq!(r.status, 404, "{}", r.text());
    });
    let asked = env
        .fake
        .requests()
        .iter()
        .filter(|r| {
            let q = r.query.as_deref().unwrap_or_default();
            q.contains(&unknown) || q.contains(&unknown.replace(':', "%3A"))
        })
        .count();
    assert_eq!(
        asked, 0,
        "the unknown MAC was answered from a fresh index, not by Ironic"
    );
}

/// While a boot storm slows the node sync past the index's freshness bound, a manageable
/// node's first heartbeat is still ranked as one (what the index said of the node a moment
/// ago), not as one that may drive a step: it waits 2 s for a place and is kept for the relay,
/// instead of holding its agent for the whole deadline. (At 1,000 agents every boot heartbeat
/// was classed `drive` once rounds took 26 s, and waited 25 s.)
#[test]
fn a_stale_index_still_ranks_a_manageable_nodes_first_heartbeat() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install_with_listings(&fake);
    let node_mac = mac(5, 0);
    let uuid = mini.add_node(&[node_mac.as_str()]);
    let storm: Vec<String> = (1..4)
        .map(|i| {
            let m = mac(5, i);
            mini.add_node(&[m.as_str()]);
            m
        })
        .collect();
    let env = Env::start_with_fake(fake, |c| {
        c.with_seal_key()
            .set("ironic_edge.sync.enabled", true)
            .set("ironic_edge.sync.interval_seconds", 1)
            .set("ironic_edge.upstream.max_agent_requests_in_flight", 1)
            .set("ironic_edge.upstream.agent_answer_within_ms", 8000);
    });
    env.wait_for_index();
    let token = minted_token(&env, &node_mac);

    // The sync stops getting answers: the index goes stale (older than 2 x 1 s + 5 s).
    for path in ["/v1/nodes", "/v1/nodes/detail", "/v1/ports"] {
        env.fake
            .route("GET", path, |req, ctx| ctx.error(req, 503, "busy"));
    }
    let lag = || {
        env.gw
            .metric("ironic_edge_sync_lag_seconds", &[])
            .unwrap_or(0.0)
    };
    let stale = common::wait_for(Duration::from_secs(30), || (lag() > 8.0).then_some(()));
    assert!(stale.is_some(), "the index did not go stale: lag {}", lag());

    // A slow lookup holds the one place for Ironic past the heartbeat's deadline (8 s), and
    // more wait for it (a higher class): the heartbeat can only be held back.
    let m = mini.clone();
    env.fake.route("GET", "/v1/lookup", move |req, ctx| {
        m.lookup(req, ctx).delay(Duration::from_secs(10))
    });
    let deferred = |class| {
        env.gw
            .metric("ironic_edge_budget_deferred_total", &[("class", class)])
            .unwrap_or(0.0)
    };
    let (drive_before, first_before) = (deferred("drive"), deferred("first"));
    std::thread::scope(|s| {
        for m in &storm {
            let env = &env;
            s.spawn(move || {
                let mut c = common::http::Client::connect(env.gw.addr());
                c.set_read_timeout(Duration::from_secs(40));
                c.send(&common::lookup(m))
            });
        }
        std::thread::sleep(Duration::from_millis(500));
        let r = env.send(&heartbeat(&uuid, &token, 1));
        assert_eq!(r.status, 202, "a verified first heartbeat: {}", r.text());
    });
    assert_eq!(
        (
            deferred("drive") - drive_before,
            deferred("first") - first_before
        ),
        (0.0, 1.0),
        "the heartbeat was held back as a first heartbeat (drive, first)"
    );
}
