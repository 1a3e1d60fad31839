//! Smoke test with real parts only: the real Ironic 39.0.0, the real IPA 13.0.0 `APIClient`,
//! a real redis-server and the real gateway binary in front. The agent discovers the API
//! version through the gateway's `GET /`, looks up (the token is minted once, raw, for it),
//! heartbeats; after a power-off straight on Ironic (token wiped) a new agent boot gets a NEW
//! raw token through the gateway, never a stale "******", and the old token is refused.

mod common;
mod peer;

use common::{http, Gateway, GatewayConfig, RedisServer, Request};
use peer::{PeerOptions, RealIronic};
use std::time::Duration;

fn wait_versions_known(gw: &Gateway) {
    let ok = common::wait_for(Duration::from_secs(20), || {
        let r = http::get(gw.ops_addr(), "/status", &[]);
        r.json()["upstream"]["versions_known"]
            .as_bool()
            .filter(|k| *k)
    });
    assert!(
        ok.is_some(),
        "gateway never learnt the upstream versions:\n{}",
        gw.logs()
    );
}

fn lookup_step(lines: &[serde_json::Value]) -> serde_json::Value {
    lines
        .iter()
        .find(|l| l["step"] == "lookup")
        .cloned()
        .unwrap_or_default()
}

#[test]
fn real_agent_through_the_gateway_against_real_ironic() {
    let redis = RedisServer::start();
    let ironic = RealIronic::start(PeerOptions {
        seed: 2,
        ..PeerOptions::default()
    });
    let mut cfg = GatewayConfig::new(&ironic.url, &redis.url());
    cfg.set("ironic_edge.lookup.not_found_ttl_seconds", 30)
        .set("ironic_edge.sync.enabled", true)
        .set("ironic_edge.heartbeat.token_mismatch_forward_seconds", 30);
    let gw = Gateway::start(cfg);
    wait_versions_known(&gw);
    let node = ironic.nodes[0].clone();
    let macs = node.macs.join(",");

    // First boot: discovery via GET /, lookup mints the token, heartbeats accepted.
    let (lines, ok, out) = ironic.ipa_client(&gw.url(), &["--macs", &macs, "--heartbeats", "3"]);
    assert!(ok, "IPA through the gateway failed:\n{out}\n{}", gw.logs());
    let first = lookup_step(&lines);
    assert_eq!(first["node_uuid"], node.uuid.as_str());
    assert_eq!(first["detected_api_version"], "1.115", "{out}");
    let token1 = first["agent_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        token1.len(),
        43,
        "a raw token, minted for this agent: {out}"
    );
    assert_eq!(lines.iter().filter(|l| l["ok"] == true).count(), 4, "{out}");
    let n = ironic.node(&node.uuid);
    assert_eq!(
        n["driver_internal_info"]["agent_url"], "https://127.0.0.1:9999",
        "Ironic recorded the heartbeat"
    );

    // The gateway knows the token only as a salted hash, and never logs it.
    redis.assert_absent(&token1);
    assert!(!gw.logs().contains(&token1), "raw token in the gateway log");

    // Power off straight on Ironic: the token is wiped. A new boot must get a new raw token.
    ironic.power_off(&node.uuid);
    let (lines, ok, out) = ironic.ipa_client(&gw.url(), &["--macs", &macs, "--heartbeats", "2"]);
    assert!(
        ok,
        "second boot through the gateway failed:\n{out}\n{}",
        gw.logs()
    );
    let token2 = lookup_step(&lines)["agent_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(token2.len(), 43, "a new raw token, not '******': {out}");
    assert_ne!(token2, token1);
    redis.assert_absent(&token2);

    // The old agent's token is refused (at the edge or by Ironic: the same 400 either way).
    let r = http::send(
        gw.addr(),
        &common::heartbeat(&node.uuid, "https://127.0.0.1:9999", &token1),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        r.faultstring().as_deref(),
        Some("Invalid or missing agent token received.")
    );

    // An unknown MAC: the agent keeps retrying; Ironic is asked once, then the edge answers.
    let (_, ok, out) = ironic.ipa_client(
        &gw.url(),
        &[
            "--macs",
            &ironic.unknown_macs[0],
            "--lookup-timeout",
            "3",
            "--expect-lookup-failure",
        ],
    );
    assert!(ok, "{out}");
    let metrics = http::send(gw.ops_addr(), &Request::get("/metrics")).text();
    assert!(
        metrics.contains("ironic_edge_requests_total{outcome=\"local\",route=\"lookup\"}")
            && !metrics
                .contains("ironic_edge_requests_total{outcome=\"local\",route=\"lookup\"} 0\n"),
        "retries of an unknown MAC are answered at the edge:\n{metrics}"
    );
}
