//! Shadow mode (`ironic_edge.mode: shadow`) with the fake Ironic: every agent request reaches
//! Ironic and the agent gets Ironic's answer, while the gateway counts how what it would have
//! answered compares (`ironic_edge_shadow_total{rule, verdict}`) and logs a mismatch once per
//! rule and subject, tokens masked.

mod common;

use common::ironic;
use common::mini::MiniIronic;
use common::{heartbeat, http, lookup, Env, FakeIronic, Gateway, GatewayConfig, RedisServer};
use std::time::Duration;

const CB: &str = "https://10.0.0.5:9999";

/// A gateway in shadow mode in front of a mini Ironic with node listings, the sync on (a
/// round every second), once it knows Ironic's versions (in shadow mode no answer tells it
/// from the edge: `/status` does).
fn shadow_env(fake: FakeIronic, f: impl FnOnce(&mut GatewayConfig)) -> Env {
    let redis = RedisServer::start();
    let mut c = GatewayConfig::new(&fake.url(), &redis.url());
    c.set("ironic_edge.mode", "shadow")
        .set("ironic_edge.sync.enabled", true)
        .set("ironic_edge.sync.interval_seconds", 1)
        .set("ironic_edge.heartbeat.coalesce_seconds", 60);
    f(&mut c);
    let gw = Gateway::start(c);
    let known = common::wait_for(Duration::from_secs(10), || {
        let r = http::get(gw.ops_addr(), "/status", &[]);
        r.json()["upstream"]["versions_known"]
            .as_bool()
            .filter(|k| *k)
    });
    assert!(known.is_some(), "versions never known:\n{}", gw.logs());
    fake.clear_log();
    Env { gw, redis, fake }
}

fn shadow_count(env: &Env, rule: &str, verdict: &str) -> u64 {
    env.gw
        .metric(
            "ironic_edge_shadow_total",
            &[("rule", rule), ("verdict", verdict)],
        )
        .unwrap_or(0.0) as u64
}

/// Every mismatch counted, whatever the rule.
fn mismatches(env: &Env) -> u64 {
    env.gw
        .metrics()
        .lines()
        .filter(|l| {
            l.starts_with("ironic_edge_shadow_total{") && l.contains("verdict=\"mismatch\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// Sends lookups of never-seen MACs until the fresh index would have answered one (404 by
/// the index: the shadow counts it); returns how many it took.
fn wait_for_index(env: &Env) -> u64 {
    let mut sent = 0;
    let ready = common::wait_for(Duration::from_secs(20), || {
        let before = shadow_count(env, "index_404", "agree");
        let r = env.send(&lookup(&ironic::random_mac()));
        sent += 1;
        assert_eq!(r.status, 404, "{}", r.text());
        (shadow_count(env, "index_404", "agree") > before).then_some(())
    });
    assert!(ready.is_some(), "no node index:\n{}", env.gw.logs());
    sent
}

#[test]
fn an_unknown_mac_reaches_ironic_and_the_index_404_agrees() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install_with_listings(&fake);
    mini.add_node(&[&ironic::random_mac()]);
    let log = tempfile::NamedTempFile::new().unwrap();
    let log_path = log.path().to_str().unwrap().to_string();
    let env = shadow_env(fake, |c| {
        c.set("ironic_edge.access_log", log_path.as_str());
    });
    let sent = wait_for_index(&env);
    // Every one reached Ironic, and the agent got Ironic's 404.
    assert_eq!(env.fake.lookups() as u64, sent);
    let before = shadow_count(&env, "index_404", "agree");
    let r = env.send(&lookup(&ironic::random_mac()));
    assert_eq!(r.status, 404);
    assert_eq!(env.fake.lookups() as u64, sent + 1, "Ironic answered it");
    assert_eq!(shadow_count(&env, "index_404", "agree"), before + 1);
    assert_eq!(mismatches(&env), 0, "{}", env.gw.logs());
    // Nothing is answered at the edge in shadow mode.
    let local = env.gw.metric(
        "ironic_edge_requests_total",
        &[("route", "lookup"), ("outcome", "local")],
    );
    assert_eq!(local, Some(0.0));
    // The access log names the rule that decided, and how the agent was answered.
    let found = common::wait_for(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(log.path()).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["rule"] == "index_404")
    })
    .expect("an access log line with rule index_404");
    assert_eq!(found["disposition"], "forwarded");
    assert_eq!(found["status"], 404);
}

#[test]
fn a_heartbeat_the_edge_would_coalesce_reaches_ironic_and_agrees() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install_with_listings(&fake);
    let mac = ironic::random_mac();
    let uuid = mini.add_node(&[&mac]);
    let env = shadow_env(fake, |_| {});
    wait_for_index(&env);
    // The minted token is learnt in shadow mode too: heartbeats can be verified.
    let token = common::minted_token(&env, &mac);
    assert_eq!(env.send(&heartbeat(&uuid, CB, &token)).status, 202);
    // Once the index shows the accepted agent_url, the edge would coalesce the repeats; each
    // one still reaches Ironic.
    let coalesced = common::wait_for(Duration::from_secs(10), || {
        let before = env.heartbeats_forwarded_with(&token);
        let r = env.send(&heartbeat(&uuid, CB, &token));
        assert_eq!(r.status, 202, "{}", r.text());
        assert_eq!(env.heartbeats_forwarded_with(&token), before + 1);
        (shadow_count(&env, "coalesced_202", "agree") > 0).then_some(())
    });
    assert!(coalesced.is_some(), "never coalesced:\n{}", env.gw.logs());
    assert!(
        shadow_count(&env, "forwarded", "agree") >= 2,
        "the mint, the first heartbeat"
    );
    assert_eq!(mismatches(&env), 0, "{}", env.gw.logs());
    let local = env.gw.metric(
        "ironic_edge_requests_total",
        &[("route", "heartbeat"), ("outcome", "local")],
    );
    assert_eq!(local, Some(0.0));
}

#[test]
fn a_planted_disagreement_is_counted_and_logged_once_with_the_token_masked() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install_with_listings(&fake);
    mini.add_node(&[&ironic::random_mac()]);
    // A machine the node index does not know (so the edge would answer 404), but that this
    // Ironic answers with a freshly minted token.
    let planted = ironic::random_mac();
    let ghost = ironic::random_uuid();
    let token = ironic::random_token();
    {
        let (planted, ghost, token, mini) = (planted.clone(), ghost.clone(), token.clone(), mini);
        fake.route("GET", "/v1/lookup", move |req, ctx| {
            if req.target.contains(&planted) {
                ctx.lookup_ok(req, &ghost, Some(&token))
            } else {
                mini.lookup(req, ctx)
            }
        });
    }
    let env = shadow_env(fake, |_| {});
    wait_for_index(&env);
    let r = env.send(&lookup(&planted));
    assert_eq!(
        r.status,
        200,
        "the agent gets Ironic's answer: {}",
        r.text()
    );
    assert_eq!(r.json()["config"]["agent_token"], token.as_str());
    assert_eq!(shadow_count(&env, "index_404", "mismatch"), 1);
    assert_eq!(mismatches(&env), 1);
    // Again: counted again, not logged again.
    assert_eq!(env.send(&lookup(&planted)).status, 200);
    assert_eq!(shadow_count(&env, "index_404", "mismatch"), 2);
    let logs = env.gw.logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("shadow: mismatch"))
        .collect();
    assert_eq!(lines.len(), 1, "logged once:\n{logs}");
    let line = lines[0];
    assert!(line.contains("index_404"), "{line}");
    assert!(line.contains("would have answered 404"), "{line}");
    assert!(line.contains("Ironic answered 200"), "{line}");
    assert!(line.contains("\"agent_token\": \"******\""), "{line}");
    assert!(!logs.contains(&token), "the raw token is never logged");
}

#[test]
fn nothing_is_kept_for_the_relay_in_shadow_mode() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install_with_listings(&fake);
    let mac = ironic::random_mac();
    let uuid = mini.add_node(&[&mac]);
    let failing = mini.fail_heartbeats_while(&fake);
    let env = shadow_env(fake, |c| {
        c.with_seal_key();
    });
    wait_for_index(&env);
    let token = common::minted_token(&env, &mac);
    let beat = |v| common::versioned_heartbeat(&uuid, &token, v);
    assert_eq!(env.send(&beat("13.0.0")).status, 202);
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    // Enforce mode would accept it and keep it; in shadow mode the agent gets Ironic's 503.
    // (Another agent version: not a repeat the edge would coalesce.)
    let r = env.send(&beat("13.0.1"));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(shadow_count(&env, "kept_202", "deviation"), 1);
    assert_eq!(env.counter("ironic_edge_heartbeats_deferred_total"), 0);
    assert_eq!(mismatches(&env), 0, "{}", env.gw.logs());
}

#[test]
fn a_body_the_edge_would_refuse_unread_reaches_ironic_and_its_status_is_compared() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install_with_listings(&fake);
    let uuid = mini.add_node(&[&ironic::random_mac()]);
    // This Ironic refuses large bodies with its 413 (the edge would have, unread).
    fake.route("POST", &format!("/v1/heartbeat/{uuid}"), |req, ctx| {
        ctx.error(req, 413, "Request body is too large.")
    });
    let env = shadow_env(fake, |c| {
        c.set("ironic_edge.heartbeat.max_body_bytes", 4096);
    });
    let big = format!(
        "{{\"callback_url\": \"{CB}\", \"pad\": \"{}\"}}",
        "x".repeat(8192)
    );
    let req = common::Request::post(&format!("/v1/heartbeat/{uuid}"))
        .version("1.68")
        .json_body(&big);
    let r = env.send(&req);
    assert_eq!(r.status, 413, "{}", r.text());
    let at_ironic = env.fake.requests_to(&format!("/v1/heartbeat/{uuid}"));
    assert_eq!(at_ironic.len(), 1, "Ironic answered it");
    assert_eq!(
        at_ironic[0].body.len(),
        big.len(),
        "the whole body reached Ironic"
    );
    assert_eq!(shadow_count(&env, "edge_error", "agree"), 1);
    assert_eq!(mismatches(&env), 0, "{}", env.gw.logs());
}

#[test]
fn a_lookup_that_would_share_one_in_flight_asks_ironic_itself_and_agrees() {
    let fake = FakeIronic::start();
    // Ironic is slow to answer this machine's lookup (404): identical lookups meet in flight.
    fake.route("GET", "/v1/lookup", |req, ctx| {
        ctx.lookup_not_found(req).delay(Duration::from_millis(1500))
    });
    // No node index: only the single flight decides.
    let env = shadow_env(fake, |c| {
        c.set("ironic_edge.sync.enabled", false);
    });
    let mac = ironic::random_mac();
    let addr = env.gw.addr();
    let first = {
        let mac = mac.clone();
        std::thread::spawn(move || http::send(addr, &lookup(&mac)))
    };
    // The second starts once the first is at Ironic.
    let at_ironic = common::wait_for(Duration::from_secs(5), || {
        (env.fake.lookups() == 1).then_some(())
    });
    assert!(at_ironic.is_some());
    let second = env.send(&lookup(&mac));
    assert_eq!(first.join().unwrap().status, 404);
    assert_eq!(second.status, 404);
    // Enforce mode would have repeated the first's 404 to the second; shadow mode asks.
    assert_eq!(env.fake.lookups(), 2, "each lookup reached Ironic");
    assert_eq!(
        shadow_count(&env, "shared_answer", "agree"),
        1,
        "{}",
        env.gw.metrics()
    );
    assert_eq!(shadow_count(&env, "forwarded", "agree"), 1);
    assert_eq!(mismatches(&env), 0, "{}", env.gw.logs());
}
