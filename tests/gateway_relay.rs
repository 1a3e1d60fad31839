//! The heartbeat relay: while Ironic fails, verified heartbeats get 202 at the edge and each
//! node's latest one is kept (sealed); once Ironic answers again every node's latest heartbeat
//! reaches it exactly once. Unverified heartbeats still see Ironic's failure.

mod common;

use common::{http, Env, FakeIronic, MiniIronic, Request};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::mini::NO_WORKERS;

fn heartbeat_with_version(uuid: &str, token: &str, version: &str) -> Request {
    common::versioned_heartbeat(uuid, token, version)
}

fn minted_token(env: &Env, mac: &str) -> String {
    common::minted_token(env, mac)
}

fn metric(env: &Env, name: &str) -> u64 {
    env.counter(name)
}

#[test]
fn every_nodes_latest_heartbeat_reaches_ironic_once_it_is_back() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    // Ironic "without free conductor workers" while this is set.
    let failing = mini.fail_heartbeats_while(&fake);
    let nodes: Vec<(String, String)> = (0..3)
        .map(|i| {
            let mac = format!("52:54:0a:00:00:0{i}");
            (mini.add_node(&[mac.as_str()]), mac)
        })
        .collect();
    let env = Env::start_with_fake(fake, |cfg| {
        cfg.with_seal_key()
            .set("ironic_edge.heartbeat.relay_when_upstream_fails", true);
    });

    // Each agent looks up (the token is minted and learnt) and heartbeats once.
    let mut tokens = Vec::new();
    for (uuid, mac) in &nodes {
        let token = minted_token(&env, mac);
        let r = env.send(&heartbeat_with_version(uuid, &token, "13.0.0"));
        assert_eq!(r.status, 202, "{}", r.text());
        tokens.push(token);
    }

    // Ironic fails: verified heartbeats are accepted at the edge, the latest kept.
    failing.store(true, Ordering::SeqCst);
    for round in 1..=3 {
        for ((uuid, _), token) in nodes.iter().zip(&tokens) {
            let r = env.send(&heartbeat_with_version(
                uuid,
                token,
                &format!("13.0.{round}"),
            ));
            assert_eq!(
                (r.status, r.text()),
                (202, String::new()),
                "a verified heartbeat during the outage"
            );
        }
    }
    // An unverified one (wrong token, first mismatch forwarded) sees Ironic's failure.
    let r = env.send(&heartbeat_with_version(
        &nodes[0].0,
        "not-the-token",
        "13.0.9",
    ));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(metric(&env, "ironic_edge_heartbeats_deferred_total"), 9);
    // The gauge shows what waits, one per node, as the relay counts it between its waves.
    let kept = |n: u64| {
        common::wait_for(Duration::from_secs(5), || {
            (metric(&env, "ironic_edge_heartbeats_kept") == n).then_some(())
        })
    };
    assert!(
        kept(3).is_some(),
        "ironic_edge_heartbeats_kept never read 3"
    );
    // Kept sealed: no token in Redis.
    for t in &tokens {
        env.redis.assert_absent(t);
    }

    // Ironic is back: each node's latest heartbeat arrives, once.
    env.fake.clear_log();
    failing.store(false, Ordering::SeqCst);
    let relayed = common::wait_for(Duration::from_secs(10), || {
        (metric(&env, "ironic_edge_heartbeats_relayed_total") >= 3).then_some(())
    });
    assert!(
        relayed.is_some(),
        "relay did not finish:\n{}",
        env.gw.logs()
    );
    assert!(
        kept(0).is_some(),
        "ironic_edge_heartbeats_kept never read 0"
    );
    std::thread::sleep(Duration::from_millis(1500));
    // (The version discovery's GET / goes on meanwhile: only heartbeats count here.)
    let got: Vec<_> = env
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/v1/heartbeat/"))
        .collect();
    assert_eq!(
        got.len(),
        3,
        "one relayed heartbeat per node, none twice: {got:#?}"
    );
    for ((uuid, _), token) in nodes.iter().zip(&tokens) {
        let hb: Vec<_> = got
            .iter()
            .filter(|r| r.path.contains(uuid.as_str()))
            .collect();
        assert_eq!(hb.len(), 1, "{uuid}");
        let body = hb[0].json();
        assert_eq!(
            body["agent_version"], "13.0.3",
            "the latest heartbeat of {uuid}"
        );
        assert_eq!(
            body["agent_token"],
            token.as_str(),
            "the agent's own token, intact"
        );
        assert_eq!(hb[0].header("X-OpenStack-Ironic-API-Version"), Some("1.68"));
    }
    assert_eq!(metric(&env, "ironic_edge_heartbeats_relayed_total"), 3);
}

/// Ironic is slower than the agent waits (a conductor short of workers): a verified heartbeat
/// gets 202 within the agent's deadline instead of a timeout (which would send IPA into its
/// 5-10 s retry mode), and when the late answer turns out to be a failure, the heartbeat is
/// relayed, so it still reaches Ironic.
#[test]
fn a_verified_heartbeat_slower_than_the_agent_is_accepted_and_relayed_if_it_fails() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    // The next this-many heartbeats get a 503 after 2.5 s.
    let slow_failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let (slow, mini) = (slow_failures.clone(), mini.clone());
        fake.route("POST", "/v1/heartbeat/*", move |req, ctx| {
            let take = slow.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if take.is_ok() {
                ctx.error(req, 503, NO_WORKERS)
                    .delay(Duration::from_millis(2500))
            } else {
                mini.heartbeat(req, ctx)
            }
        });
    }
    let mac = "52:54:0a:00:01:01";
    let uuid = mini.add_node(&[mac]);
    let env = Env::start_with_fake(fake, |cfg| {
        cfg.with_seal_key()
            .set("ironic_edge.heartbeat.relay_when_upstream_fails", true)
            .set("ironic_edge.upstream.agent_answer_within_ms", 1000);
    });
    let token = minted_token(&env, mac);
    let r = env.send(&heartbeat_with_version(&uuid, &token, "13.0.0"));
    assert_eq!(r.status, 202, "{}", r.text());

    slow_failures.store(1, Ordering::SeqCst);
    // The agent gives up after 2 s here (IPA: 30 s, against the gateway's 25).
    let mut agent = http::Client::connect(env.gw.addr());
    agent.set_read_timeout(Duration::from_secs(2));
    let r = agent
        .try_send(&heartbeat_with_version(&uuid, &token, "13.0.1"))
        .expect("an answer before the agent gives up");
    assert_eq!(
        (r.status, r.text()),
        (202, String::new()),
        "accepted at the agent's deadline"
    );
    assert_eq!(
        slow_failures.load(Ordering::SeqCst),
        0,
        "the heartbeat did reach Ironic"
    );
    let relayed = common::wait_for(Duration::from_secs(10), || {
        (metric(&env, "ironic_edge_heartbeats_relayed_total") >= 1).then_some(())
    });
    assert!(relayed.is_some(), "not relayed:\n{}", env.gw.logs());
    let got: Vec<_> = env.fake.requests_to(&format!("/v1/heartbeat/{uuid}"));
    assert_eq!(got.len(), 3, "first, the slow failure, the relayed one");
    assert_eq!(got[2].json()["agent_version"], "13.0.1");
    assert_eq!(got[2].json()["agent_token"], token.as_str());
}

/// A 409 (the node locked by another operation) sends IPA into its 5-10 s retry mode just as
/// a 503 does: for a verified heartbeat it is accepted and relayed too.
#[test]
fn a_verified_heartbeat_refused_with_409_is_accepted_and_relayed() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    let locked = Arc::new(AtomicBool::new(false));
    {
        let (locked, mini) = (locked.clone(), mini.clone());
        fake.route("POST", "/v1/heartbeat/*", move |req, ctx| {
            if locked.swap(false, Ordering::SeqCst) {
                ctx.error(req, 409, "Node is locked by host conductor-1, please retry after the current operation is completed.")
            } else {
                mini.heartbeat(req, ctx)
            }
        });
    }
    let mac = "52:54:0a:00:02:01";
    let uuid = mini.add_node(&[mac]);
    let env = Env::start_with_fake(fake, |cfg| {
        cfg.with_seal_key()
            .set("ironic_edge.heartbeat.relay_when_upstream_fails", true);
    });
    let token = minted_token(&env, mac);
    assert_eq!(
        env.send(&heartbeat_with_version(&uuid, &token, "13.0.0"))
            .status,
        202
    );
    locked.store(true, Ordering::SeqCst);
    let r = env.send(&heartbeat_with_version(&uuid, &token, "13.0.1"));
    assert_eq!((r.status, r.text()), (202, String::new()));
    let relayed = common::wait_for(Duration::from_secs(10), || {
        (metric(&env, "ironic_edge_heartbeats_relayed_total") >= 1).then_some(())
    });
    assert!(relayed.is_some(), "not relayed:\n{}", env.gw.logs());
    let got = env.fake.requests_to(&format!("/v1/heartbeat/{uuid}"));
    assert_eq!(got.len(), 3, "first, the refused one, the relayed one");
    assert_eq!(got[2].json()["agent_version"], "13.0.1");
}

#[test]
fn without_a_seal_key_ironics_failure_reaches_the_agent() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    let uuid = mini.add_node(&["52:54:0b:00:00:01"]);
    let env = Env::start_with_fake(fake, |_| {});
    let r = env.send(&common::lookup("52:54:0b:00:00:01"));
    let token = r.json()["config"]["agent_token"]
        .as_str()
        .unwrap()
        .to_string();
    env.fake.route("POST", "/v1/heartbeat/*", |req, ctx| {
        ctx.error(req, 503, NO_WORKERS)
    });
    let r = env.send(&heartbeat_with_version(&uuid, &token, "13.0.0"));
    assert_eq!(r.status, 503);
    assert_eq!(r.faultstring().as_deref(), Some(NO_WORKERS));
    let r = http::send(env.gw.ops_addr(), &Request::get("/metrics"));
    assert!(r.text().contains("ironic_edge_heartbeats_deferred_total 0"));
}

/// The concurrency cap: at most `max_agent_requests_in_flight` agent requests reach Ironic at
/// once, one queued place per node; a verified heartbeat refused for lack of a place is
/// accepted and relayed later, like one Ironic failed.
#[test]
fn the_upstream_cap_queues_and_relays_what_does_not_fit() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let (mini, in_flight, most) = (mini.clone(), in_flight.clone(), most.clone());
        fake.route("POST", "/v1/heartbeat/*", move |req, ctx| {
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(400));
            in_flight.fetch_sub(1, Ordering::SeqCst);
            mini.heartbeat(req, ctx)
        });
    }
    let nodes: Vec<(String, String)> = (0..3)
        .map(|i| {
            let mac = format!("52:54:0d:00:00:0{i}");
            (mini.add_node(&[mac.as_str()]), mac)
        })
        .collect();
    let env = Env::start_with_fake(fake, |cfg| {
        cfg.with_seal_key()
            .set("ironic_edge.upstream.max_agent_requests_in_flight", 1)
            .set("ironic_edge.upstream.max_agent_requests_queued", 1);
    });
    let tokens: Vec<String> = nodes
        .iter()
        .map(|(_, mac)| minted_token(&env, mac))
        .collect();
    let addr = env.gw.addr();
    let handles: Vec<_> = nodes
        .iter()
        .zip(&tokens)
        .enumerate()
        .map(|(i, ((uuid, _), token))| {
            let req = heartbeat_with_version(uuid, token, "13.0.0");
            std::thread::sleep(Duration::from_millis(if i == 0 { 0 } else { 50 }));
            std::thread::spawn(move || http::send(addr, &req).status)
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        statuses,
        vec![202, 202, 202],
        "every verified heartbeat is accepted"
    );
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "never more than one in flight to Ironic"
    );
    assert_eq!(
        metric(&env, "ironic_edge_heartbeats_deferred_total"),
        1,
        "the one without a place is kept"
    );
    let relayed = common::wait_for(Duration::from_secs(10), || {
        (metric(&env, "ironic_edge_heartbeats_relayed_total") >= 1).then_some(())
    });
    assert!(relayed.is_some(), "and relayed:\n{}", env.gw.logs());
    let per_node: Vec<usize> = nodes
        .iter()
        .map(|(uuid, _)| {
            env.fake
                .requests()
                .iter()
                .filter(|r| r.path.contains(uuid.as_str()))
                .count()
        })
        .collect();
    assert_eq!(
        per_node,
        vec![1, 1, 1],
        "each node's heartbeat reached Ironic exactly once"
    );
}

/// While Ironic is down, a heartbeat carrying the node's token but another `callback_url` (an
/// attacker who learnt the token) must not be accepted, kept or relayed: the `agent_url` Ironic
/// accepted in this agent session is fresher than the index's, which still shows none.
#[test]
fn a_forged_callback_url_is_never_kept_or_relayed_while_ironic_is_down() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install_with_listings(&fake);
    let failing = mini.fail_heartbeats_while(&fake);
    let mac = "52:54:0b:00:00:01";
    let uuid = mini.add_node(&[mac]);
    // One round at start, then none for the whole test: the index shows the node as it was
    // before its agent booted.
    let env = Env::start_with_fake(fake, |cfg| {
        cfg.with_seal_key()
            .set("ironic_edge.sync.enabled", true)
            .set("ironic_edge.sync.interval_seconds", 120)
            .set("ironic_edge.heartbeat.relay_when_upstream_fails", true);
    });
    env.wait_for_index();

    let token = minted_token(&env, mac);
    let genuine = |version: &str| {
        Request::post(&format!("/v1/heartbeat/{uuid}"))
            .version("1.68")
            .json_body(&format!(
                "{{\"callback_url\": \"https://127.0.0.1:9999\", \"agent_token\": \"{token}\", \"agent_version\": \"{version}\"}}"
            ))
    };
    let r = env.send(&genuine("13.0.0"));
    assert_eq!(r.status, 202, "{}", r.text());

    failing.store(true, Ordering::SeqCst);
    let r = env.send(&genuine("13.0.1"));
    assert_eq!(r.status, 202, "the genuine agent is accepted and kept");
    let forged = Request::post(&format!("/v1/heartbeat/{uuid}"))
        .version("1.68")
        .json_body(&format!(
            "{{\"callback_url\": \"https://198.51.100.66:9999\", \"agent_token\": \"{token}\", \"agent_version\": \"13.0.2\"}}"
        ));
    let r = env.send(&forged);
    common::assert_ironic_error(&r, 400, common::ironic::CALLBACK_CHANGED, "1.115", "1.68");

    env.fake.clear_log();
    failing.store(false, Ordering::SeqCst);
    let relayed = common::wait_for(Duration::from_secs(10), || {
        (metric(&env, "ironic_edge_heartbeats_relayed_total") >= 1).then_some(())
    });
    assert!(relayed.is_some(), "relay did not run:\n{}", env.gw.logs());
    std::thread::sleep(Duration::from_millis(1000));
    let got: Vec<_> = env
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/v1/heartbeat/"))
        .collect();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].json()["agent_version"], "13.0.1", "the genuine one");
    assert_eq!(
        mini.node(&uuid).unwrap().agent_url.as_deref(),
        Some("https://127.0.0.1:9999")
    );
}

/// A token minted through a lookup alias the gateway relays (`/v1/lookup.json`) is learnt as
/// well: the agent's first heartbeat, while Ironic fails, is verified, accepted and kept.
#[test]
fn a_token_minted_through_an_alias_path_is_learnt() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    let failing = mini.fail_heartbeats_while(&fake);
    let mac = "52:54:0c:00:00:01";
    let uuid = mini.add_node(&[mac]);
    let env = Env::start_with_fake(fake, |cfg| {
        cfg.with_seal_key()
            .set("ironic_edge.heartbeat.relay_when_upstream_fails", true);
    });
    let r = env.send(
        &Request::get(&format!("/v1/lookup.json?addresses={mac}"))
            .version("1.68")
            .header("Accept", "application/json"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["config"]["agent_token"]
        .as_str()
        .expect("a raw token")
        .to_string();
    failing.store(true, Ordering::SeqCst);
    let r = env.send(&heartbeat_with_version(&uuid, &token, "13.0.0"));
    assert_eq!(
        r.status,
        202,
        "verified with the learnt token, kept for the relay: {}",
        r.text()
    );
    failing.store(false, Ordering::SeqCst);
    let relayed = common::wait_for(Duration::from_secs(10), || {
        (metric(&env, "ironic_edge_heartbeats_relayed_total") >= 1).then_some(())
    });
    assert!(relayed.is_some(), "relay did not run:\n{}", env.gw.logs());
}

/// A kept heartbeat that Ironic keeps refusing (503, never taking it) is dropped after a few
/// tries and counted, not retried forever into an Ironic that cannot take it.
#[test]
fn a_kept_heartbeat_ironic_keeps_refusing_is_dropped_after_a_few_tries() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    let failing = mini.fail_heartbeats_while(&fake);
    let mac = "52:54:0c:00:00:02";
    let uuid = mini.add_node(&[mac]);
    let env = Env::start_with_fake(fake, |cfg| {
        cfg.with_seal_key()
            .set("ironic_edge.heartbeat.relay_when_upstream_fails", true);
    });
    let token = minted_token(&env, mac);
    assert_eq!(
        env.send(&heartbeat_with_version(&uuid, &token, "13.0.0"))
            .status,
        202
    );
    failing.store(true, Ordering::SeqCst);
    assert_eq!(
        env.send(&heartbeat_with_version(&uuid, &token, "13.0.1"))
            .status,
        202,
        "accepted and kept"
    );
    let dropped = common::wait_for(Duration::from_secs(30), || {
        (metric(&env, "ironic_edge_heartbeats_dropped_total") >= 1).then_some(())
    });
    assert!(dropped.is_some(), "never dropped:\n{}", env.gw.logs());
    let tries = env
        .fake
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1/heartbeat/") && r.json()["agent_version"] == "13.0.1")
        .count();
    // The agent's own attempt, then the relay's: a bounded number.
    assert!((2..=7).contains(&tries), "{tries} attempts reached Ironic");
    std::thread::sleep(Duration::from_millis(2500));
    let later = env
        .fake
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1/heartbeat/"))
        .count();
    assert!(later <= tries + 1, "no more tries once dropped ({later})");
    assert_eq!(metric(&env, "ironic_edge_heartbeats_relayed_total"), 0);
}
