//! The heartbeat shield against a hostile provisioning network, with the real Ironic 39 and a
//! fresh node index: heartbeats for idents the index can decide (names included) never reach
//! Ironic; tokens the gateway cannot verify (never seen, or the node holds none) reach it once
//! per presented token per interval, at most a few per node; and a flooded wrong token does not
//! starve a new good one.

mod common;
mod peer;

use common::ironic::{fault_body, INVALID_TOKEN};
use common::{http, Gateway, GatewayConfig, RedisServer};
use peer::{PeerOptions, RealIronic};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const CB: &str = "https://10.0.0.5:9999";
/// The gateway's own bound (`heartbeat::UNVERIFIED_TOKENS_PER_INTERVAL`).
const PER_NODE: u64 = 4;

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .parse()
        .expect("loopback URL")
}

/// A gateway with the sync on (a round every 5 s: a loaded machine keeps it fresh) and a mismatch interval longer than any test.
fn gateway(ironic: &RealIronic, redis: &RedisServer) -> Gateway {
    let mut cfg = GatewayConfig::new(&ironic.url, &redis.url());
    cfg.set("ironic_edge.sync.enabled", true)
        .set("ironic_edge.sync.interval_seconds", 5)
        .set("ironic_edge.sync.lease_seconds", 2)
        .set("ironic_edge.heartbeat.token_mismatch_forward_seconds", 600);
    let gw = Gateway::start(cfg);
    // The index is complete and fresh once a never-seen MAC (not in the negative cache) is
    // answered at the edge.
    let t0 = Instant::now();
    loop {
        let before = local_lookups(&gw);
        let r = http::send(gw.addr(), &common::lookup(&common::ironic::random_mac()));
        if r.status == 404 && local_lookups(&gw) > before {
            return gw;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no node index");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn local_lookups(gw: &Gateway) -> f64 {
    gw.metric(
        "ironic_edge_requests_total",
        &[("route", "lookup"), ("outcome", "local")],
    )
    .unwrap_or(0.0)
}

/// Heartbeats the gateway sent to Ironic so far.
fn upstream_heartbeats(gw: &Gateway) -> u64 {
    gw.metric(
        "ironic_edge_upstream_requests_total",
        &[("route", "heartbeat")],
    )
    .unwrap_or(0.0) as u64
}

fn heartbeat(gw: &Gateway, ident: &str, token: &str) -> http::Response {
    http::send(gw.addr(), &common::heartbeat(ident, CB, token))
}

/// A lookup straight on Ironic (not through the gateway): mints the node's token there.
fn mint_on_ironic(ironic: &RealIronic, mac: &str) -> String {
    let r = http::send(addr_of(&ironic.url), &common::lookup(mac));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["config"]["agent_token"]
        .as_str()
        .expect("a minted token")
        .to_string()
}

#[test]
fn heartbeats_for_names_and_uuids_of_no_node_never_reach_ironic() {
    let redis = RedisServer::start();
    let ironic = RealIronic::start(PeerOptions {
        seed: 1,
        ..PeerOptions::default()
    });
    let gw = gateway(&ironic, &redis);
    let before = upstream_heartbeats(&gw);
    for i in 0..40 {
        let name = format!("no-such-node-{i}-{}", &common::ironic::random_uuid()[..8]);
        let r = heartbeat(&gw, &name, &common::ironic::random_token());
        assert_eq!(r.status, 404, "{}", r.text());
        assert_eq!(
            r.text(),
            fault_body(404, &format!("Node {name} could not be found.")),
            "Ironic's own answer"
        );
    }
    let uuid = common::ironic::random_uuid();
    assert_eq!(heartbeat(&gw, &uuid, "t").status, 404);
    assert_eq!(
        upstream_heartbeats(&gw),
        before,
        "every one was decided from the index"
    );
    // A real node's name is not refused at the edge: Ironic answers (here: a wrong token).
    let named = &ironic.nodes[0].name;
    let r = heartbeat(&gw, named, &common::ironic::random_token());
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(upstream_heartbeats(&gw), before + 1);
}

#[test]
fn a_node_holding_no_token_is_asked_a_few_times_not_for_every_heartbeat() {
    let redis = RedisServer::start();
    let ironic = RealIronic::start(PeerOptions {
        seed: 1,
        ..PeerOptions::default()
    });
    let gw = gateway(&ironic, &redis);
    let uuid = &ironic.nodes[0].uuid;
    let before = upstream_heartbeats(&gw);
    for _ in 0..40 {
        let r = heartbeat(&gw, uuid, &common::ironic::random_token());
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(
            r.text(),
            fault_body(400, INVALID_TOKEN),
            "Ironic's own answer"
        );
    }
    let sent = upstream_heartbeats(&gw) - before;
    assert!(
        (1..=PER_NODE).contains(&sent),
        "{sent} of 40 random tokens reached Ironic"
    );
}

#[test]
fn a_token_minted_elsewhere_is_learnt_even_while_a_wrong_one_is_flooded() {
    let redis = RedisServer::start();
    let ironic = RealIronic::start(PeerOptions {
        seed: 1,
        ..PeerOptions::default()
    });
    let gw = gateway(&ironic, &redis);
    let node = &ironic.nodes[0];
    // Minted straight on Ironic: the gateway never saw this token.
    let token = mint_on_ironic(&ironic, &node.macs[0]);
    // Let the index see that the node now holds a token.
    std::thread::sleep(Duration::from_millis(6500));

    let before = upstream_heartbeats(&gw);
    let wrong = common::ironic::random_token();
    for _ in 0..30 {
        let r = heartbeat(&gw, &node.uuid, &wrong);
        assert_eq!(r.status, 400, "{}", r.text());
    }
    assert_eq!(
        upstream_heartbeats(&gw) - before,
        1,
        "a repeated wrong token reaches Ironic once"
    );
    let r = heartbeat(&gw, &node.uuid, &token);
    assert_eq!(r.status, 202, "the good token got its turn: {}", r.text());
    // Learnt: from now on the good token is verified at the edge and the wrong one refused.
    let r = heartbeat(&gw, &node.uuid, &token);
    assert_eq!(r.status, 202, "{}", r.text());
    let sent = upstream_heartbeats(&gw);
    let r = heartbeat(&gw, &node.uuid, &wrong);
    assert_eq!(r.status, 400);
    assert_eq!(
        upstream_heartbeats(&gw),
        sent,
        "the wrong token stays at the edge"
    );
}
