//! The node sync against the real Ironic 39: the index follows changes made directly on
//! Ironic within the staleness bound, changes forwarded by the gateway refresh it at once, and
//! with two gateway processes sharing one Redis one syncs and the other takes over when it dies.

mod common;
mod peer;

use common::{http, Gateway, GatewayConfig, RedisServer, Request};
use peer::{PeerOptions, RealIronic};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .parse()
        .expect("loopback URL")
}

/// A call straight to Ironic (not through the gateway).
fn ironic_call(
    ironic: &RealIronic,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> http::Response {
    let mut req = Request::new(method, path).version("latest");
    if let Some(b) = body {
        req = req.json_body(b);
    }
    http::send(addr_of(&ironic.url), &req)
}

fn sync_config(ironic: &RealIronic, redis: &RedisServer, interval: u64) -> GatewayConfig {
    let mut cfg = GatewayConfig::new(&ironic.url, &redis.url());
    cfg.set("ironic_edge.sync.enabled", true)
        .set("ironic_edge.sync.interval_seconds", interval)
        .set("ironic_edge.sync.full_resync_seconds", 600)
        .set("ironic_edge.sync.lease_seconds", 2)
        .set("ironic_edge.lookup.not_found_ttl_seconds", 1);
    cfg
}

fn metric(gw: &Gateway, line: &str) -> u64 {
    let text = http::send(gw.ops_addr(), &Request::get("/metrics")).text();
    text.lines()
        .find_map(|l| l.strip_prefix(line).map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0)
}

const LOCAL_LOOKUPS: &str = "ironic_edge_requests_total{outcome=\"local\",route=\"lookup\"}";
const SYNC_REQUESTS: &str = "ironic_edge_sync_requests_total";

/// Sends a lookup through the gateway; returns (status, answered locally).
fn lookup(gw: &Gateway, macs: &str) -> (u16, bool) {
    let before = metric(gw, LOCAL_LOOKUPS);
    let r = http::send(gw.addr(), &common::lookup(macs));
    (r.status, metric(gw, LOCAL_LOOKUPS) > before)
}

/// Polls `f` until it returns true; panics after `timeout` with `what`.
fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < timeout,
            "{what} did not happen within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    t0.elapsed()
}

#[test]
fn index_follows_changes_made_directly_on_ironic() {
    let redis = RedisServer::start();
    let ironic = RealIronic::start(PeerOptions {
        seed: 2,
        ..PeerOptions::default()
    });
    let interval = 1;
    let gw = Gateway::start(sync_config(&ironic, &redis, interval));
    let (n0, n1) = (ironic.nodes[0].clone(), ironic.nodes[1].clone());

    // Once the index is there, Ironic's refusals are answered at the edge.
    eventually(Duration::from_secs(15), "the first sync", || {
        lookup(&gw, &ironic.unknown_macs[0]) == (404, true)
    });
    // (Each answer is Ironic's either way; "local" needs a fresh index, which a loaded machine
    // may briefly lack: hence `eventually`.)
    let two = format!("{},{}", n0.macs[0], n1.macs[0]);
    eventually(
        Duration::from_secs(10),
        "MACs of two nodes answered at the edge",
        || lookup(&gw, &two) == (404, true),
    );
    assert_eq!(
        lookup(&gw, &n0.macs[0]),
        (200, false),
        "a lookup Ironic allows is forwarded"
    );

    // Fast track off, straight on Ironic: a manageable node may no longer look up.
    let patch = |v: &str| {
        format!("[{{\"op\": \"add\", \"path\": \"/driver_info/fast_track\", \"value\": {v}}}]")
    };
    let r = ironic_call(
        &ironic,
        "PATCH",
        &format!("/v1/nodes/{}", n1.uuid),
        Some(&patch("false")),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let bound = Duration::from_secs(2 * interval + 10);
    let took = eventually(bound, "the index seeing fast track off", || {
        lookup(&gw, &n1.macs[0]) == (404, true)
    });
    // Ironic agrees with the edge's answer.
    let direct = http::send(addr_of(&ironic.url), &common::lookup(&n1.macs[0]));
    assert_eq!(direct.status, 404);
    eprintln!("fast track change seen after {took:?}");

    // A port added straight on Ironic becomes known within the bound as well.
    let new_mac = "52:54:0e:00:00:01";
    eventually(
        Duration::from_secs(10),
        "an unknown MAC answered at the edge",
        || lookup(&gw, new_mac) == (404, true),
    );
    let body = format!(
        "{{\"node_uuid\": \"{}\", \"address\": \"{new_mac}\"}}",
        n0.uuid
    );
    let r = ironic_call(&ironic, "POST", "/v1/ports", Some(&body));
    assert_eq!(r.status, 201, "{}", r.text());
    eventually(bound, "the index seeing the new port", || {
        lookup(&gw, new_mac).0 == 200
    });
}

#[test]
fn changes_forwarded_by_the_gateway_refresh_the_index_at_once() {
    let redis = RedisServer::start();
    let ironic = RealIronic::start(PeerOptions {
        seed: 1,
        ..PeerOptions::default()
    });
    // Rounds every 60 s: only the event can explain a prompt change.
    let gw = Gateway::start(sync_config(&ironic, &redis, 60));
    let n0 = ironic.nodes[0].clone();
    eventually(Duration::from_secs(15), "the first sync", || {
        lookup(&gw, &ironic.unknown_macs[0]) == (404, true)
    });
    assert_eq!(lookup(&gw, &n0.macs[0]).0, 200);
    let patch = "[{\"op\": \"add\", \"path\": \"/driver_info/fast_track\", \"value\": false}]";
    let r = http::send(
        gw.addr(),
        &Request::new("PATCH", &format!("/v1/nodes/{}", n0.uuid))
            .version("latest")
            .json_body(patch),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    eventually(
        Duration::from_secs(5),
        "the refresh after a forwarded PATCH",
        || lookup(&gw, &n0.macs[0]) == (404, true),
    );
}

#[test]
fn two_gateways_one_syncs_and_the_other_takes_over() {
    let redis = RedisServer::start();
    let ironic = RealIronic::start(PeerOptions {
        seed: 1,
        ..PeerOptions::default()
    });
    let a = Gateway::start(sync_config(&ironic, &redis, 1));
    let b = Gateway::start(sync_config(&ironic, &redis, 1));
    eventually(Duration::from_secs(15), "a first sync", || {
        metric(&a, SYNC_REQUESTS) + metric(&b, SYNC_REQUESTS) > 0
    });
    std::thread::sleep(Duration::from_secs(3));
    let (sa, sb) = (metric(&a, SYNC_REQUESTS), metric(&b, SYNC_REQUESTS));
    assert!(
        (sa == 0) != (sb == 0),
        "exactly one process syncs: a sent {sa}, b sent {sb}"
    );
    let (mut leader, follower) = if sa > 0 { (a, b) } else { (b, a) };
    // Both answer from the shared index.
    eventually(
        Duration::from_secs(10),
        "the other process answering from the index",
        || lookup(&follower, &ironic.unknown_macs[0]) == (404, true),
    );

    leader.kill();
    let took = eventually(
        Duration::from_secs(8),
        "the other process taking over",
        || metric(&follower, SYNC_REQUESTS) > 0,
    );
    eprintln!("take-over after {took:?}");
    // Its index being fresh, the new syncing process carries on incrementally from the
    // watermarks the dead one shared: no full round on a take-over.
    let logs = follower.logs();
    assert!(
        logs.contains("resuming from the previous process's watermarks"),
        "{logs}"
    );
    assert!(!logs.contains("node sync: full round"), "{logs}");
    eventually(
        Duration::from_secs(10),
        "answers from the index after the take-over",
        || lookup(&follower, &ironic.unknown_macs[1]) == (404, true),
    );
}

const LOCAL_HEARTBEATS: &str = "ironic_edge_requests_total{outcome=\"local\",route=\"heartbeat\"}";
const UPSTREAM_HEARTBEATS: &str = "ironic_edge_upstream_requests_total{route=\"heartbeat\"}";

/// The heartbeat shield: in a record-only state (manageable, fast track) a verified heartbeat
/// identical to the last one Ironic accepted is answered 202 at the edge, at least one per
/// window still reaches Ironic, and anything different is forwarded.
#[test]
fn identical_heartbeats_in_record_only_states_are_coalesced() {
    let redis = RedisServer::start();
    let ironic = RealIronic::start(PeerOptions {
        seed: 1,
        ..PeerOptions::default()
    });
    let mut cfg = sync_config(&ironic, &redis, 1);
    cfg.set("ironic_edge.heartbeat.coalesce_seconds", 4);
    let gw = Gateway::start(cfg);
    let n0 = ironic.nodes[0].clone();
    eventually(Duration::from_secs(15), "the first sync", || {
        lookup(&gw, &ironic.unknown_macs[0]) == (404, true)
    });
    let r = http::send(gw.addr(), &common::lookup(&n0.macs[0]));
    let token = r.json()["config"]["agent_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(token.len(), 43, "{}", r.text());
    let beat = || {
        http::send(
            gw.addr(),
            &common::heartbeat(&n0.uuid, "https://127.0.0.1:9999", &token),
        )
    };
    // The first heartbeat reaches Ironic (and may meet its lock while it records agent_url).
    eventually(
        Duration::from_secs(10),
        "a first accepted heartbeat",
        || beat().status == 202,
    );
    // Once the index shows the recorded agent_url, repeats are accepted at the edge.
    eventually(
        Duration::from_secs(15),
        "a heartbeat accepted at the edge",
        || {
            let before = metric(&gw, LOCAL_HEARTBEATS);
            beat().status == 202 && metric(&gw, LOCAL_HEARTBEATS) > before
        },
    );
    let (local0, up0) = (
        metric(&gw, LOCAL_HEARTBEATS),
        metric(&gw, UPSTREAM_HEARTBEATS),
    );
    for _ in 0..5 {
        let r = beat();
        assert_eq!((r.status, r.text()), (202, String::new()));
        assert!(!r.has_header("Content-Type"), "{:?}", r.headers);
    }
    assert_eq!(metric(&gw, LOCAL_HEARTBEATS), local0 + 5);
    assert_eq!(
        metric(&gw, UPSTREAM_HEARTBEATS),
        up0,
        "no repeat reached Ironic"
    );
    // A different heartbeat (a new agent version) is forwarded.
    let changed = http::send(
        gw.addr(),
        &Request::post(&format!("/v1/heartbeat/{}", n0.uuid)).version("1.68").json_body(&format!(
            "{{\"callback_url\": \"https://127.0.0.1:9999\", \"agent_token\": \"{token}\", \"agent_version\": \"13.0.1\"}}"
        )),
    );
    assert!(matches!(changed.status, 202 | 409), "{}", changed.text());
    assert_eq!(metric(&gw, UPSTREAM_HEARTBEATS), up0 + 1);
    // After the window, the same heartbeat reaches Ironic again.
    std::thread::sleep(Duration::from_secs(5));
    let up1 = metric(&gw, UPSTREAM_HEARTBEATS);
    let _ = beat();
    assert_eq!(
        metric(&gw, UPSTREAM_HEARTBEATS),
        up1 + 1,
        "one per window reaches Ironic"
    );
}
