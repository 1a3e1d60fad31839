//! Two gateway processes over one Redis, the relay's side (issue 12, item 3): heartbeats both
//! kept while Ironic failed are relayed by both relayers, each node's latest exactly once, and
//! a heartbeat one gateway kept can be delivered by the other (same sealing key). The other
//! multi-gateway properties have their tests where the feature lives: one sync lease
//! (tests/sync.rs, two_gateways_one_syncs_and_the_other_takes_over), the in-process views
//! (tests/gateway_view.rs, a_mint_on_one_gateway_is_honoured_by_the_other_at_once).

mod common;

use common::gateway::GatewayConfig;
use common::{http, Env, FakeIronic, Gateway, MiniIronic, Request};
use std::sync::atomic::Ordering;
use std::time::Duration;

fn relay_config(c: &mut GatewayConfig) {
    c.with_seal_key()
        .set("ironic_edge.heartbeat.relay_when_upstream_fails", true);
}

fn counter(gw: &Gateway, name: &str) -> u64 {
    gw.metric(name, &[]).unwrap_or(0.0) as u64
}

#[test]
fn two_relayers_deliver_each_kept_heartbeat_once() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    let failing = mini.fail_heartbeats_while(&fake);
    let nodes: Vec<(String, String)> = (0..6)
        .map(|i| {
            let mac = format!("52:54:0c:00:00:0{i}");
            (mini.add_node(&[mac.as_str()]), mac)
        })
        .collect();
    let a = Env::start_with_fake(fake, relay_config);
    let mut cfg_b = GatewayConfig::new(&a.fake.url(), &a.redis.url());
    relay_config(&mut cfg_b);
    let b = Gateway::start(cfg_b);
    b.wait_versions(&a.fake);
    let send_b = |req: &Request| http::send(b.addr(), req);
    let tokens: Vec<String> = nodes
        .iter()
        .map(|(_, mac)| common::minted_token(&a, mac))
        .collect();

    // Ironic fails. Each agent talks to one gateway (as through DNS or a VIP); the first two
    // switch gateway half way (a VIP moved): their latest heartbeat is kept by the other one.
    failing.store(true, Ordering::SeqCst);
    for round in 1..=2 {
        for (i, ((uuid, _), token)) in nodes.iter().zip(&tokens).enumerate() {
            let req = common::versioned_heartbeat(uuid, token, &format!("13.0.{round}"));
            let via_a = (i % 2 == 0) != (i < 2 && round == 2);
            let r = if via_a { a.send(&req) } else { send_b(&req) };
            assert_eq!(
                (r.status, r.text()),
                (202, String::new()),
                "a verified heartbeat during the outage, node {i} round {round}"
            );
        }
    }
    let kept = |n: u64| {
        common::wait_for(Duration::from_secs(5), || {
            (counter(&b, "ironic_edge_heartbeats_kept") == n).then_some(())
        })
    };
    assert!(kept(6).is_some(), "one kept heartbeat per node, in Redis");

    // Ironic is back: both relayers run over the one queue.
    a.fake.clear_log();
    failing.store(false, Ordering::SeqCst);
    let relayed = || {
        counter(&a.gw, "ironic_edge_heartbeats_relayed_total")
            + counter(&b, "ironic_edge_heartbeats_relayed_total")
    };
    let done = common::wait_for(Duration::from_secs(15), || (relayed() >= 6).then_some(()));
    assert!(
        done.is_some(),
        "the relay did not finish:\nA:\n{}\nB:\n{}",
        a.gw.logs(),
        b.logs()
    );
    assert!(kept(0).is_some(), "nothing kept once relayed");
    // Room for a double delivery to show up (a second relayer's late take).
    std::thread::sleep(Duration::from_millis(1500));
    let got: Vec<_> = a
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/v1/heartbeat/"))
        .collect();
    let per_gateway = (
        counter(&a.gw, "ironic_edge_heartbeats_relayed_total"),
        counter(&b, "ironic_edge_heartbeats_relayed_total"),
    );
    assert_eq!(
        got.len(),
        6,
        "one relayed heartbeat per node, none twice (relayed by A, B: {per_gateway:?}): {got:#?}"
    );
    for ((uuid, _), token) in nodes.iter().zip(&tokens) {
        let hb: Vec<_> = got
            .iter()
            .filter(|r| r.path.contains(uuid.as_str()))
            .collect();
        assert_eq!(hb.len(), 1, "{uuid}");
        let body = hb[0].json();
        assert_eq!(
            body["agent_version"], "13.0.2",
            "the latest heartbeat of {uuid}"
        );
        assert_eq!(body["agent_token"], token.as_str(), "the agent's own token");
    }
    assert_eq!(relayed(), 6, "relayed by A, B: {per_gateway:?}");
}
