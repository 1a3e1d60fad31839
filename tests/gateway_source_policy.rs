//! Source policy per listener: `allow` / `deny` blocks, checked before anything else, on the
//! client address as the trusted-proxy rule resolves it; a refused source gets Ironic's 403
//! and is counted, and Ironic never hears of it.

mod common;

use common::{Env, Request};

/// The test listener, with `allow` and `deny` lists.
fn listener_with<'a>(
    cfg: &'a mut common::GatewayConfig,
    allow: &[&str],
    deny: &[&str],
) -> &'a mut common::GatewayConfig {
    let listen = cfg.listen.to_string();
    cfg.set(
        "ironic_edge.listeners",
        serde_json::json!([{"address": listen, "allow": allow, "deny": deny}]),
    )
}

fn refused_sources(env: &Env, route: &str) -> f64 {
    env.gw
        .metric(
            "ironic_edge_requests_total",
            &[("route", route), ("outcome", "refused_source")],
        )
        .unwrap_or(0.0)
}

fn assert_refused(r: &common::Response, path: &str) {
    assert_eq!(r.status, 403, "{path}: {}", r.text());
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(
        r.faultstring().as_deref(),
        Some(format!("Access was denied to the following resource: {path}").as_str()),
        "{}",
        r.text()
    );
}

#[test]
fn a_denied_source_gets_ironics_403_on_every_route_and_ironic_hears_nothing() {
    let env = Env::start_with(|c| {
        listener_with(c, &[], &["127.0.0.0/8"]);
    });
    env.fake.clear_log();
    // (The harness's own start-up probes were lookups, refused too.)
    let lookups_before = refused_sources(&env, "lookup");
    assert!(lookups_before >= 1.0);
    let lookup = env.send(&common::lookup("52:54:00:12:34:56"));
    assert_refused(&lookup, "/v1/lookup");
    let heartbeat = env.send(
        &Request::post("/v1/heartbeat/1be26c0b-03f2-4d2e-ae87-c02d7f33c123")
            .version("1.68")
            .json_body("{\"callback_url\": \"https://127.0.0.1:9999\"}"),
    );
    assert_refused(
        &heartbeat,
        "/v1/heartbeat/1be26c0b-03f2-4d2e-ae87-c02d7f33c123",
    );
    let api = env.send(&Request::get("/v1/nodes").version("1.62"));
    assert_refused(&api, "/v1/nodes");
    let agent_requests = env
        .fake
        .requests()
        .iter()
        .filter(|r| {
            r.path.starts_with("/v1/lookup")
                || r.path.starts_with("/v1/heartbeat")
                || r.path == "/v1/nodes"
        })
        .count();
    assert_eq!(agent_requests, 0, "refused before reaching Ironic");
    assert_eq!(refused_sources(&env, "lookup") - lookups_before, 1.0);
    assert_eq!(refused_sources(&env, "heartbeat"), 1.0);
    assert_eq!(refused_sources(&env, "other"), 1.0);
}

#[test]
fn an_allow_list_serves_its_blocks_only() {
    let outside = Env::start_with(|c| {
        listener_with(c, &["10.20.0.0/16", "fd00:20::/64"], &[]);
    });
    assert_refused(
        &outside.send(&common::lookup("52:54:00:12:34:56")),
        "/v1/lookup",
    );
    let inside = Env::start_with(|c| {
        listener_with(c, &["10.20.0.0/16", "127.0.0.1"], &[]);
    });
    let r = inside.send(&Request::get("/v1/nodes").version("1.62"));
    assert_ne!(r.status, 403, "{}", r.text());
    assert_eq!(refused_sources(&inside, "other"), 0.0);
}

#[test]
fn behind_a_trusted_proxy_the_forwarded_client_is_judged() {
    let env = Env::start_with(|c| {
        listener_with(c, &["10.20.0.0/16"], &["10.20.9.0/24"])
            .set("ironic_edge.trusted_proxies", vec!["127.0.0.1"]);
    });
    let via_proxy = |client: &str| {
        env.send(
            &Request::get("/v1/nodes")
                .version("1.62")
                .header("X-Forwarded-For", client),
        )
    };
    let r = via_proxy("10.20.1.7");
    assert_ne!(r.status, 403, "an allowed client: {}", r.text());
    assert_refused(&via_proxy("10.20.9.7"), "/v1/nodes");
    assert_refused(&via_proxy("192.0.2.1"), "/v1/nodes");
    // The proxy itself, with no client named, is not in the allowed blocks.
    assert_refused(
        &env.send(&Request::get("/v1/nodes").version("1.62")),
        "/v1/nodes",
    );
}
