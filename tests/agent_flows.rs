//! Issue 3, part 3: agent flows with the real IPA 13.0.0 `APIClient` (`scripts/ipa-client.py`)
//! pointed at the gateway, in front of the real Ironic 39.0.0.
//!
//! - `agent_reboot_cycle_through_the_gateway`: version discovery through the gateway's `GET /`,
//!   the lookup that mints the token (the agent gets the raw token, once), heartbeats accepted;
//!   a power off through the gateway's passthrough (Ironic wipes the token); a new agent boot
//!   whose lookup through the gateway gets a NEW raw token (never a stale `"******"`), its
//!   heartbeats accepted, and the old token refused (by Ironic, then at the edge).
//! - `clean_wait_first_heartbeat_reaches_the_conductor`: a node genuinely in `clean wait`
//!   (no fast track): the agent's first heartbeat through the gateway makes the conductor call
//!   the agent back at its `callback_url` (a listener in the test sees the connection) and
//!   moves the node on (Ironic's node state afterwards); an agent whose node is in a state
//!   that refuses lookup keeps retrying, and only its first lookup reaches Ironic.

mod common;
mod peer;

#[path = "conformance/engine.rs"]
mod engine;

use common::{http, Gateway, GatewayConfig, RedisServer, Request};
use peer::{PeerOptions, RealIronic};
use serde_json::Value;
use std::io::Read;
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn wait_versions_known(gw: &Gateway) {
    let ok = common::wait_for(Duration::from_secs(20), || {
        let r = http::get(gw.ops_addr(), "/status", &[]);
        r.json()["upstream"]["versions_known"]
            .as_bool()
            .filter(|k| *k)
    });
    assert!(ok.is_some(), "versions never known:\n{}", gw.logs());
}

fn step(lines: &[Value], name: &str) -> Value {
    lines
        .iter()
        .find(|l| l["step"] == name)
        .cloned()
        .unwrap_or_default()
}

fn count(gw: &Gateway, route: &str, outcome: &str) -> f64 {
    gw.metric(
        "ironic_edge_requests_total",
        &[("route", route), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

fn upstream(gw: &Gateway, route: &str) -> f64 {
    gw.metric("ironic_edge_upstream_requests_total", &[("route", route)])
        .unwrap_or(0.0)
}

/// Waits (briefly) for a counter to reach `at_least`: the gateway bumps it right after the
/// answer is written.
fn wait_count(gw: &Gateway, route: &str, outcome: &str, at_least: f64) -> f64 {
    let mut v = count(gw, route, outcome);
    let deadline = Instant::now() + Duration::from_secs(3);
    while v < at_least && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        v = count(gw, route, outcome);
    }
    v
}

#[test]
fn agent_reboot_cycle_through_the_gateway() {
    let redis = RedisServer::start();
    let ironic = RealIronic::start(PeerOptions {
        seed: 2,
        ports_per_node: 2,
        ..PeerOptions::default()
    });
    let mut cfg = GatewayConfig::new(&ironic.url, &redis.url());
    cfg.set("ironic_edge.heartbeat.token_mismatch_forward_seconds", 300)
        .env("RUST_LOG", "info");
    let gw = Gateway::start(cfg);
    wait_versions_known(&gw);
    let node = ironic.nodes[0].clone();
    let macs = node.macs.join(",");

    // Version discovery: what the agent reads from the gateway's GET / is Ironic's answer
    // (links apart, which name the address asked).
    let root_gw = gw.send(&Request::get("/"));
    let root_ir = http::send(
        ironic.url.trim_start_matches("http://").parse().unwrap(),
        &Request::get("/"),
    );
    assert_eq!(root_gw.status, 200);
    assert_eq!(
        root_gw.json()["default_version"]["version"],
        root_ir.json()["default_version"]["version"]
    );

    // First boot: GET / (discovery), lookup (mints), 3 heartbeats.
    let other0 = count(&gw, "other", "local");
    let (lines, ok, out) = ironic.ipa_client(&gw.url(), &["--macs", &macs, "--heartbeats", "3"]);
    assert!(
        ok,
        "first boot through the gateway failed:\n{out}\n{}",
        gw.logs()
    );
    let lookup = step(&lines, "lookup");
    assert_eq!(lookup["node_uuid"], node.uuid.as_str(), "{out}");
    assert_eq!(
        lookup["detected_api_version"], "1.115",
        "IPA discovered Ironic's maximum through the gateway's GET /: {out}"
    );
    assert!(
        wait_count(&gw, "other", "local", other0 + 1.0) > other0,
        "the agent's GET / was answered at the edge"
    );
    let token1 = lookup["agent_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        engine::is_raw_token(&token1),
        "the agent received the raw token: {out}"
    );
    for i in 1..=3 {
        assert_eq!(step(&lines, &format!("heartbeat {i}"))["ok"], true, "{out}");
    }
    assert_eq!(wait_count(&gw, "lookup", "forwarded", 1.0), 1.0);
    assert!(wait_count(&gw, "heartbeat", "forwarded", 3.0) >= 3.0);
    let n = ironic.node(&node.uuid);
    assert_eq!(
        n["driver_internal_info"]["agent_url"], "https://127.0.0.1:9999",
        "Ironic recorded the heartbeats: {n}"
    );
    // The raw token went to the agent only: it is kept as a salted hash, never logged.
    redis.assert_absent(&token1);
    assert!(!gw.logs().contains(&token1), "raw token in the gateway log");

    // A second lookup of the running agent (IPA does one before writing the image): masked.
    let again = gw.send(&common::lookup(&macs));
    assert_eq!(again.json()["config"]["agent_token"], "******");

    // Power off through the gateway's passthrough: Ironic wipes the token and agent_url.
    let proxied0 = count(&gw, "other", "forwarded");
    ironic.power_off_via(&gw.url(), &node.uuid);
    assert!(wait_count(&gw, "other", "forwarded", proxied0 + 2.0) >= proxied0 + 2.0);
    let n = ironic.node(&node.uuid);
    assert!(
        n["driver_internal_info"]
            .get("agent_secret_token")
            .is_none()
            && n["driver_internal_info"].get("agent_url").is_none(),
        "Ironic wiped the token: {n}"
    );

    // New agent boot: a NEW raw token through the gateway, never the stale "******".
    let (lines, ok, out) = ironic.ipa_client(&gw.url(), &["--macs", &macs, "--heartbeats", "2"]);
    assert!(
        ok,
        "second boot through the gateway failed:\n{out}\n{}",
        gw.logs()
    );
    let token2 = step(&lines, "lookup")["agent_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        engine::is_raw_token(&token2),
        "a new raw token, not '******': {out}"
    );
    assert_ne!(token2, token1);
    for i in 1..=2 {
        assert_eq!(step(&lines, &format!("heartbeat {i}"))["ok"], true, "{out}");
    }
    assert_eq!(wait_count(&gw, "lookup", "forwarded", 3.0), 3.0);
    redis.assert_absent(&token2);
    assert!(!gw.logs().contains(&token2), "raw token in the gateway log");

    // The old token is refused: by Ironic first (forwarded once), then at the edge; the same
    // bytes either way.
    let local0 = count(&gw, "heartbeat", "local");
    let up0 = upstream(&gw, "heartbeat");
    let stale = common::heartbeat(&node.uuid, "https://127.0.0.1:9999", &token1);
    let first = gw.send(&stale);
    common::assert_ironic_error(&first, 400, common::ironic::INVALID_TOKEN, "1.115", "1.68");
    assert_eq!(upstream(&gw, "heartbeat"), up0 + 1.0, "forwarded to Ironic");
    let second = gw.send(&stale);
    assert_eq!(second.text(), first.text());
    assert_eq!(second.versions(), first.versions());
    assert_eq!(
        wait_count(&gw, "heartbeat", "local", local0 + 1.0),
        local0 + 1.0
    );
    assert_eq!(
        upstream(&gw, "heartbeat"),
        up0 + 1.0,
        "answered at the edge"
    );

    // And the new agent is not disturbed by the stale one: its next heartbeat passes.
    let (lines, ok, out) = ironic.ipa_client(
        &gw.url(),
        &[
            "--macs",
            &macs,
            &format!("--token={token2}"),
            "--heartbeats",
            "1",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(step(&lines, "lookup")["agent_token"], "******", "{out}");
    assert_eq!(step(&lines, "heartbeat 1")["ok"], true, "{out}");
}

/// Accepts connections on a loopback port and reports each one's first bytes.
fn callback_listener() -> (u16, mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 16];
            let n = c.read(&mut buf).unwrap_or(0);
            if tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

#[test]
fn clean_wait_first_heartbeat_reaches_the_conductor() {
    let redis = RedisServer::start();
    // The gateway's address is known before it starts: it is the Ironic URL handed to agents.
    let mut cfg = GatewayConfig::new("http://127.0.0.1:1", &redis.url());
    let ironic = RealIronic::start(PeerOptions {
        seed: 1,
        state: "clean-wait",
        public_url: Some(format!("http://{}", cfg.listen)),
        ..PeerOptions::default()
    });
    let refused = ironic.seed_more(1, "enroll-no-fasttrack", 1);
    cfg.set("ironic_edge.upstream.url", &ironic.url)
        .set("ironic_edge.lookup.not_found_ttl_seconds", 60)
        .env("RUST_LOG", "info");
    let gw = Gateway::start(cfg);
    wait_versions_known(&gw);
    let node = ironic.nodes[0].clone();
    assert_eq!(node.provision_state, "clean wait");

    let (port, calls) = callback_listener();
    let hb0 = upstream(&gw, "heartbeat");
    let (lines, ok, out) = ironic.ipa_client(
        &gw.url(),
        &[
            "--macs",
            &node.macs.join(","),
            "--callback",
            &format!("127.0.0.1:{port}"),
            "--heartbeats",
            "1",
        ],
    );
    assert!(ok, "IPA through the gateway failed:\n{out}\n{}", gw.logs());
    let token = step(&lines, "lookup")["agent_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(engine::is_raw_token(&token), "{out}");
    assert_eq!(step(&lines, "heartbeat 1")["ok"], true, "{out}");
    assert_eq!(
        upstream(&gw, "heartbeat"),
        hb0 + 1.0,
        "the heartbeat was forwarded"
    );

    // The conductor acted on it: it called the agent back at callback_url (a TLS ClientHello,
    // since the agent advertised https)...
    let hello = calls
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            panic!(
                "the conductor never called the agent back:\n{}\n{}",
                ironic.log_tail(),
                gw.logs()
            )
        });
    assert_eq!(hello.first(), Some(&0x16), "a TLS handshake: {hello:?}");
    // ...and, with no real agent behind that port, moved the node on: `cleaning` while it
    // retries the agent, then `clean failed`.
    let n = ironic.wait_node(&node.uuid, Duration::from_secs(60), |n| {
        !matches!(
            n["provision_state"].as_str(),
            Some("clean wait" | "cleaning")
        )
    });
    assert_eq!(n["provision_state"], "clean failed", "{n}");
    let dii = &n["driver_internal_info"];
    assert_eq!(dii["agent_version"], "13.0.0", "{n}");
    assert!(dii["agent_last_heartbeat"].is_string(), "{n}");
    assert!(
        n["last_error"].as_str().is_some_and(
            |e| e.contains("Connection to agent failed") && e.contains("clean.get_clean_steps")
        ),
        "the conductor asked the agent for its clean steps: {n}"
    );

    // An agent whose node refuses lookup (enroll, no fast track) retries; Ironic is asked once.
    let up0 = upstream(&gw, "lookup");
    let (lines, ok, out) = ironic.ipa_client(
        &gw.url(),
        &[
            "--macs",
            &refused[0].macs[0],
            "--lookup-timeout",
            "4",
            "--expect-lookup-failure",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(step(&lines, "lookup")["lookup_failed"], true, "{out}");
    assert!(
        wait_count(&gw, "lookup", "local", 1.0) >= 1.0,
        "the retries were answered at the edge"
    );
    assert_eq!(
        upstream(&gw, "lookup"),
        up0 + 1.0,
        "one lookup reached Ironic"
    );
}

/// Issue 10: an agent session reset made *through the gateway* (an operator's power off
/// proxied to Ironic) ends the session at the edge too. Right after it, the old token's
/// heartbeat gets Ironic's answer (400 invalid token), never a coalesced 202; and the next
/// boot's first heartbeat, with its new token and a new `callback_url`, is Ironic's 202, never
/// the edge's "Detected change in ramdisk provided callback_url".
#[test]
fn agent_session_reset_through_the_gateway() {
    let redis = RedisServer::start();
    let ironic = RealIronic::start(PeerOptions {
        seed: 1,
        ports_per_node: 1,
        ..PeerOptions::default()
    });
    let mut cfg = GatewayConfig::new(&ironic.url, &redis.url());
    // The node index on, with rounds far apart: what the edge saw itself must decide.
    cfg.set("ironic_edge.sync.enabled", true)
        .set("ironic_edge.sync.interval_seconds", 300)
        .set("ironic_edge.heartbeat.coalesce_seconds", 120)
        .env("RUST_LOG", "info");
    let gw = Gateway::start(cfg);
    wait_versions_known(&gw);
    let node = ironic.nodes[0].clone();
    let macs = node.macs.join(",");
    // The index is complete and fresh once a never-seen MAC is answered at the edge.
    let ok = common::wait_for(Duration::from_secs(30), || {
        let before = count(&gw, "lookup", "local");
        let r = gw.send(&common::lookup(&common::ironic::random_mac()));
        (r.status == 404 && count(&gw, "lookup", "local") > before).then_some(())
    });
    assert!(ok.is_some(), "no node index:\n{}", gw.logs());

    // First boot, through the gateway: the token, then the same heartbeat twice (the second
    // one is Ironic's to record again only: coalesced at the edge).
    let minted = gw.send(&common::lookup(&macs));
    let token1 = minted.json()["config"]["agent_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(engine::is_raw_token(&token1), "{}", minted.text());
    let old = common::heartbeat(&node.uuid, "https://127.0.0.1:9999", &token1);
    assert_eq!(gw.send(&old).status, 202);
    let local0 = count(&gw, "heartbeat", "local");
    assert_eq!(gw.send(&old).status, 202);
    assert_eq!(
        wait_count(&gw, "heartbeat", "local", local0 + 1.0),
        local0 + 1.0,
        "the repeated heartbeat was coalesced at the edge"
    );

    // The operator powers the node off through the gateway: Ironic wipes the token.
    ironic.power_off_via(&gw.url(), &node.uuid);
    let stale = gw.send(&old);
    common::assert_ironic_error(&stale, 400, common::ironic::INVALID_TOKEN, "1.115", "1.68");

    // The agent boots again (the real IPA client): a new token, a new callback_url, accepted
    // by Ironic.
    let (lines, ok, out) = ironic.ipa_client(
        &gw.url(),
        &[
            "--macs",
            &macs,
            "--callback",
            "127.0.0.1:9998",
            "--heartbeats",
            "2",
        ],
    );
    assert!(
        ok,
        "second boot through the gateway failed:\n{out}\n{}",
        gw.logs()
    );
    let token2 = step(&lines, "lookup")["agent_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(engine::is_raw_token(&token2), "a new raw token: {out}");
    assert_ne!(token2, token1);
    for i in 1..=2 {
        assert_eq!(step(&lines, &format!("heartbeat {i}"))["ok"], true, "{out}");
    }
    let n = ironic.node(&node.uuid);
    assert_eq!(
        n["driver_internal_info"]["agent_url"], "https://127.0.0.1:9998",
        "Ironic recorded the new session's heartbeats: {n}"
    );
    // The old token stays refused, the new one accepted.
    assert_eq!(gw.send(&old).status, 400);
}
