//! Issue 8, item 3: below API 1.62 no raw stored token leaves the gateway, whatever the
//! `Accept` header and however the lookup path is spelled.
//!
//! Ironic (webob) answers a lookup in JSON for far more `Accept` values than "contains
//! application/json" (an unparsable or zero-weight value counts as absent), and its router
//! takes many spellings of the lookup path; below 1.62 every such 200 carries the node's
//! stored raw token. The fake here (MiniIronic) answers every spelling like the real one, for
//! any `Accept`, so the test proves the gateway's rule, not Ironic's content negotiation
//! (that is the conformance suite's job).

mod common;

use common::*;

/// A token is minted through the gateway at 1.62; returns the node's MAC and the raw token.
fn minted(env: &Env, mini: &MiniIronic) -> (String, String) {
    let mac = ironic::random_mac();
    let uuid = mini.add_node(&[&mac]);
    let r = env.send(
        &Request::get(&format!("/v1/lookup?addresses={mac}"))
            .version("1.62")
            .header("Accept", "application/json"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let token = mini.node(&uuid).unwrap().token.expect("minted");
    assert_eq!(r.json()["config"]["agent_token"], serde_json::json!(token));
    (mac, token)
}

/// Every spelling Ironic's router sends to the lookup controller (and some it does not),
/// answered by the mini Ironic as a lookup.
const PATHS: &[&str] = &[
    "/v1/lookup",
    "/v1/lookup/",
    "/lookup",
    "/lookup/",
    "/v1/lookup.json",
    "/lookup.json",
    "/v1/lookup/.json",
    "/v1/lookup.json/",
    "/v1/%6Cookup",
    "/v1/%6cookup",
    "/%76%31/lookup",
    "/v1/lookup%2ejson",
    "/v1//lookup",
    "//v1/lookup",
    "//lookup",
    "/v1/lookup//",
];

/// `Accept` values for which Ironic answers a lookup in JSON though the gateway used to think
/// the client did not accept JSON, the ones it refuses, and the agent's own.
const ACCEPTS: &[Option<&str>] = &[
    Some("text/html;q=2"),
    Some("*"),
    Some("application/json;q=0"),
    Some(""),
    Some("a"),
    Some("text/html,application/json"),
    Some("text/plain, application/json;q=0.5"),
    Some("application/jsonx"),
    Some("text/html"),
    Some("text/plain"),
    Some(","),
    Some("application/json"),
    Some("*/*"),
    None,
];

fn install_aliases(env: &Env, mini: &std::sync::Arc<MiniIronic>) {
    for p in PATHS {
        let m = mini.clone();
        env.fake.route("GET", p, move |req, ctx| m.lookup(req, ctx));
    }
}

fn assert_no_leak(env: &Env, mac: &str, token: &str, versions: &[&str]) {
    let mut leaks = Vec::new();
    for v in versions {
        for path in PATHS {
            for accept in ACCEPTS {
                let mut req = Request::get(&format!("{path}?addresses={mac}")).version(v);
                if let Some(a) = accept {
                    req = req.header("Accept", a);
                }
                let r = env.send(&req);
                if r.text().contains(token) {
                    leaks.push(format!("{v} {path} Accept: {accept:?} -> {}", r.status));
                }
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "the raw stored token left the gateway {} times:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
}

#[test]
fn no_raw_token_below_1_62_for_any_accept_or_path_spelling() {
    let env = Env::start();
    let mini = MiniIronic::install(&env.fake);
    install_aliases(&env, &mini);
    let (mac, token) = minted(&env, &mini);
    assert_no_leak(&env, &mac, &token, &["1.22", "1.30", "1.61"]);
}

#[test]
fn the_answer_below_1_62_is_otherwise_ironics() {
    let env = Env::start();
    let mini = MiniIronic::install(&env.fake);
    install_aliases(&env, &mini);
    let (mac, token) = minted(&env, &mini);
    for (path, accept) in [
        ("/v1/lookup", "text/html;q=2"),
        ("/v1//lookup", "application/json"),
        ("/v1/%6Cookup", "*"),
    ] {
        let r = env.send(
            &Request::get(&format!("{path}?addresses={mac}"))
                .version("1.61")
                .header("Accept", accept),
        );
        assert_eq!(r.status, 200, "{path} {accept}: {}", r.text());
        assert!(!r.text().contains(&token), "{path} {accept}");
        assert_eq!(
            r.json()["config"]["agent_token"],
            serde_json::Value::Null,
            "{path} {accept}: the token is replaced by null"
        );
        assert_eq!(r.header("X-OpenStack-Ironic-API-Version"), Some("1.61"));
    }
}

#[test]
fn at_1_62_the_masked_token_is_relayed_unchanged() {
    let env = Env::start();
    let mini = MiniIronic::install(&env.fake);
    install_aliases(&env, &mini);
    let (mac, _) = minted(&env, &mini);
    let r = env.send(
        &Request::get(&format!("/v1//lookup?addresses={mac}"))
            .version("1.62")
            .header("Accept", "*"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["config"]["agent_token"],
        serde_json::json!("******")
    );
}

/// While the upstream's version range is unknown (its `GET /` fails), lookups are still
/// relayed without the stored token.
#[test]
fn no_raw_token_while_the_version_range_is_unknown() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    let mac = ironic::random_mac();
    let uuid = mini.add_node(&[&mac]);
    // Minted straight on the fake: the gateway never saw it.
    let mut direct = Client::connect(fake.addr());
    let r = direct.send(&Request::get(&format!("/v1/lookup?addresses={mac}")).version("1.62"));
    assert_eq!(r.status, 200);
    let token = mini.node(&uuid).unwrap().token.unwrap();
    fake.route("GET", "/", |_, _| FakeResponse::new(500).body("down"));
    let redis = RedisServer::start();
    let cfg = GatewayConfig::new(&fake.url(), &redis.url());
    // `GET /` fails, so the range stays unknown (no wait needed: it never becomes known).
    let gw = Gateway::start(cfg);
    for accept in [None, Some("application/json"), Some("*")] {
        let mut req = Request::get(&format!("/v1/lookup?addresses={mac}")).version("1.61");
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        let r = gw.send(&req);
        assert_eq!(r.status, 200, "{accept:?}: {}", r.text());
        assert!(!r.text().contains(&token), "{accept:?}: raw token leaked");
    }
}

/// With the range unknown and Ironic unreachable, a guarded lookup gets the same 503 as any
/// proxied request: Ironic's error shape, no version headers.
#[test]
fn guarded_lookup_with_ironic_unreachable_from_the_start_gets_the_proxys_503() {
    let redis = RedisServer::start();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gw = Gateway::start(GatewayConfig::new(&dead, &redis.url()));
    let want = ironic::fault_body(503, ironic::UNAVAILABLE);
    for target in [
        "/v1/nodes",
        "/v1/lookup?addresses=52:54:00:00:00:01",
        "/v1//lookup",
    ] {
        let r = gw.send(&Request::get(target).version("1.61").header("Accept", "*"));
        assert_eq!((r.status, r.text()), (503, want.clone()), "{target}");
        assert_eq!(r.versions(), (None, None, None), "{target}");
        assert_eq!(r.header("Content-Type"), Some("application/json"));
    }
}
