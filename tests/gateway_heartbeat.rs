//! `POST /v1/heartbeat/{node}` through the gateway: local validation, body fidelity, the edge
//! token and callback_url checks, cached unknown nodes, and secrets never stored or logged.

mod common;

use common::ironic::{fault_body, framework_body, CALLBACK_CHANGED, INVALID_TOKEN, NOT_FOUND};
use common::*;
use std::time::{Duration, Instant};

const MAX: &str = "1.115";
const CB: &str = "https://10.0.0.5:9999";

/// Installs a mini Ironic, adds a node, looks it up through the gateway (minting its token):
/// returns (mini, node uuid, mac, raw token the agent received).
fn boot_agent(env: &Env) -> (std::sync::Arc<MiniIronic>, String, String, String) {
    let mini = MiniIronic::install(&env.fake);
    let mac = ironic::random_mac();
    let uuid = mini.add_node(&[&mac]);
    let r = env.send(&lookup(&mac));
    assert_eq!(r.status, 200, "lookup through the gateway: {}", r.text());
    let token = r.json()["config"]["agent_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(token.len(), 43);
    assert_eq!(
        mini.node(&uuid).unwrap().token.as_deref(),
        Some(token.as_str())
    );
    (mini, uuid, mac, token)
}

/// Heartbeats the fake received carrying this token.

#[test]
fn heartbeat_validation_table_is_answered_locally() {
    let env = Env::start();
    let u = ironic::random_uuid();
    let t = ironic::random_token();
    let ok_body = format!("{{\"callback_url\": \"{CB}\", \"agent_token\": \"{t}\"");
    type Case = (
        String,
        Option<&'static str>,
        String,
        u16,
        String,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            u.clone(),
            Some("1.68"),
            "{}".into(),
            400,
            "Missing mandatory parameter: callback_url".into(),
            "1.68",
        ),
        (
            u.clone(),
            Some("1.68"),
            format!("{{\"agent_token\": \"{t}\"}}"),
            400,
            "Missing mandatory parameter: callback_url".into(),
            "1.68",
        ),
        (
            u.clone(),
            Some("1.68"),
            format!("{ok_body}, \"foo\": 1}}"),
            400,
            "Unexpected arguments: foo".into(),
            "1.68",
        ),
        (
            u.clone(),
            Some("1.68"),
            format!("{{\"callback_url\": \"{CB}\", \"agent_token\": 123}}"),
            400,
            "Expected string for agent_token: 123".into(),
            "1.68",
        ),
        (
            u.clone(),
            Some("1.68"),
            format!("{ok_body}, \"agent_version\": 5}}"),
            400,
            "Expected string for agent_version: 5".into(),
            "1.68",
        ),
        (
            u.clone(),
            Some("1.62"),
            format!("{ok_body}, \"agent_verify_ca\": \"x\"}}"),
            400,
            "Field \"agent_verify_ca\" not recognised in this version".into(),
            "1.62",
        ),
        (
            u.clone(),
            Some("1.30"),
            format!("{ok_body}, \"agent_version\": \"1\"}}"),
            400,
            "Field \"agent_version\" not recognised".into(),
            "1.30",
        ),
        (
            u.clone(),
            Some("1.68"),
            format!("{ok_body}, \"agent_status\": \"start\"}}"),
            400,
            "Fields \"agent_status\" and \"agent_status_message\" not recognised.".into(),
            "1.68",
        ),
        (
            u.clone(),
            None,
            format!("{ok_body}}}"),
            404,
            NOT_FOUND.into(),
            "1.1",
        ),
        (
            u.clone(),
            Some("1.21"),
            format!("{ok_body}}}"),
            404,
            NOT_FOUND.into(),
            "1.21",
        ),
    ];
    let mut failures = Vec::new();
    for (ident, ver, body, status, msg, neg) in &cases {
        let mut req = Request::post(&format!("/v1/heartbeat/{ident}")).json_body(body);
        if let Some(v) = ver {
            req = req.version(v);
        }
        let r = env.send(&req);
        let want = fault_body(*status, msg);
        let ok = r.status == *status
            && r.text() == want
            && r.header("Content-Type") == Some("application/json")
            && r.versions() == (Some("1.1"), Some(MAX), Some(*neg));
        if !ok {
            failures.push(format!(
                "{ident} {ver:?} {body}: got {} {:?} {}",
                r.status,
                r.headers,
                r.text()
            ));
        }
    }
    // An unparseable version: Ironic's 406 without version headers.
    let r = env.send(
        &Request::post(&format!("/v1/heartbeat/{u}"))
            .version("abc")
            .json_body("{}"),
    );
    if r.status != 406
        || r.text()
            != framework_body(
                406,
                "Not Acceptable",
                "Invalid value for X-OpenStack-Ironic-API-Version header",
            )
        || r.versions() != (None, None, None)
    {
        failures.push(format!(
            "406: got {} {:?} {}",
            r.status,
            r.headers,
            r.text()
        ));
    }
    assert!(
        failures.is_empty(),
        "wrong answers:\n{}",
        failures.join("\n")
    );
    assert_eq!(
        env.fake.heartbeats(),
        0,
        "validation failures must not reach Ironic"
    );

    // An ident outside the public-route regex `[a-z0-9-]+` is not the agent's: forwarded
    // unchanged (spec 7.6), Ironic decides.
    let r = env.send(
        &Request::post("/v1/heartbeat/bad%20ident")
            .version("1.68")
            .json_body(&heartbeat_body(CB, &t)),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let seen = env.fake.requests_to("/v1/heartbeat/bad%20ident");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/v1/heartbeat/bad%20ident");
}

#[test]
fn heartbeat_body_and_headers_reach_ironic_unchanged() {
    let env = Env::start();
    let node = ironic::random_uuid();
    let path = format!("/v1/heartbeat/{node}");
    env.fake.route("POST", "/v1/heartbeat/*", |req, ctx| {
        let mut r = FakeResponse::new(202);
        for (k, v) in ironic::version_headers(&ctx.max_version, &ctx.negotiated(req)) {
            r = r.header(&k, &v);
        }
        r.header("Content-Length", "0")
            .header(
                "x-openstack-request-id",
                "req-12345678-aaaa-bbbb-cccc-1234567890ab",
            )
            .header(
                "openstack-request-id",
                "req-12345678-aaaa-bbbb-cccc-1234567890ab",
            )
    });
    let pem_line = "MIIBszCCAVmgAwIBAgIUQ2VydGlmaWNhdGUrL2Jhc2U2NCs9PQ==";
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\\n{}-----END CERTIFICATE-----\\n",
        format!("{pem_line}\\n").repeat(60)
    );
    // Odd spacing, key order, escapes and a trailing newline: all must survive.
    let body = format!(
        "{{\"agent_version\":\"13.0.0\",  \"callback_url\": \"https://[fd00::5]:9999\",\n \"agent_token\": \"{}\", \"agent_verify_ca\": \"{pem}\"}}\n",
        ironic::random_token()
    );
    let send = |req: Request| {
        let r = env.send(&req);
        assert_eq!(r.status, 202, "{}", r.text());
        assert!(r.body.is_empty());
        assert!(
            !r.has_header("Content-Type"),
            "a 202 has no Content-Type: {:?}",
            r.headers
        );
        assert!(
            r.header("Content-Length") == Some("0")
                || (!r.has_header("Content-Length") && !r.chunked),
            "{:?}",
            r.headers
        );
        assert_eq!(r.versions(), (Some("1.1"), Some(MAX), Some("1.68")));
        assert_eq!(
            r.header("x-openstack-request-id"),
            Some("req-12345678-aaaa-bbbb-cccc-1234567890ab"),
            "Ironic's answer headers reach the agent"
        );
    };
    let base = Request::post(&path)
        .version("1.68")
        .header("Content-Type", "application/json; charset=UTF-8")
        .header("Accept", "application/json")
        .header("User-Agent", "python-requests/2.32.3")
        .header(
            "X-OpenStack-Request-ID",
            "req-99999999-8888-7777-6666-555555555555",
        )
        .body(body.clone().into_bytes());
    send(base.clone());
    send(base.clone().chunked(97));
    // A large certificate (about 600 KB, below max_body_bytes).
    let big = format!(
        "{{\"callback_url\": \"{CB}\", \"agent_token\": \"{}\", \"agent_version\": \"13.0.0\", \"agent_verify_ca\": \"{}\"}}",
        ironic::random_token(),
        format!("{pem_line}\\n").repeat(12_000)
    );
    assert!(big.len() > 600_000 && big.len() < 1_048_576);
    send(base.clone().body(big.clone().into_bytes()));

    let seen = env.fake.requests_to(&path);
    assert_eq!(seen.len(), 3);
    for (i, want) in [body.as_bytes(), body.as_bytes(), big.as_bytes()]
        .iter()
        .enumerate()
    {
        let s = &seen[i];
        assert_eq!(s.method, "POST");
        assert_eq!(s.target, path);
        assert!(
            s.body == *want,
            "heartbeat {i}: body changed ({} vs {} bytes)",
            s.body.len(),
            want.len()
        );
        assert_eq!(
            s.header("Content-Type"),
            Some("application/json; charset=UTF-8")
        );
        assert_eq!(s.header("X-OpenStack-Ironic-API-Version"), Some("1.68"));
        assert_eq!(s.header("User-Agent"), Some("python-requests/2.32.3"));
        assert_eq!(
            s.header("X-OpenStack-Request-ID"),
            Some("req-99999999-8888-7777-6666-555555555555")
        );
    }
}

#[test]
fn heartbeat_params_in_the_query_string_are_forwarded_unchanged() {
    let env = Env::start();
    let node = ironic::random_uuid();
    let t = ironic::random_token();
    let target = format!(
        "/v1/heartbeat/{node}?callback_url=https%3A%2F%2F10.0.0.5%3A9999&agent_token={t}&agent_version=13.0.0"
    );
    let r = env.send(&Request::post(&target).version("1.68"));
    assert_eq!(r.status, 202, "{}", r.text());
    let seen = env.fake.requests_to(&format!("/v1/heartbeat/{node}"));
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, target);
}

#[test]
fn wrong_token_reaches_ironic_at_most_once_per_interval() {
    let env = Env::start_with(|c| {
        c.set("ironic_edge.heartbeat.token_mismatch_forward_seconds", 3);
    });
    let (_mini, uuid, _mac, token) = boot_agent(&env);
    let wrong = ironic::random_token();

    let r = env.send(&heartbeat(&uuid, CB, &token));
    assert_eq!(r.status, 202, "the right token is forwarded: {}", r.text());
    assert_eq!(env.heartbeats_forwarded_with(&token), 1);

    let t0 = Instant::now(); // the interval starts with the first wrong token
    for _ in 0..4 {
        let r = env.send(&heartbeat(&uuid, CB, &wrong));
        assert_ironic_error(&r, 400, INVALID_TOKEN, MAX, "1.68");
    }
    assert_eq!(
        env.heartbeats_forwarded_with(&wrong),
        1,
        "within one interval a wrong token reaches Ironic once, then the edge answers"
    );

    // The right token still goes through.
    let r = env.send(&heartbeat(&uuid, CB, &token));
    assert_eq!(r.status, 202);
    assert_eq!(env.heartbeats_forwarded_with(&token), 2);

    assert!(
        t0.elapsed() < Duration::from_millis(2800),
        "too slow to stay in one interval"
    );
    // Next interval: one more may reach Ironic.
    std::thread::sleep(Duration::from_millis(3300).saturating_sub(t0.elapsed()));
    for _ in 0..3 {
        let r = env.send(&heartbeat(&uuid, CB, &wrong));
        assert_ironic_error(&r, 400, INVALID_TOKEN, MAX, "1.68");
    }
    assert_eq!(env.heartbeats_forwarded_with(&wrong), 2);
}

#[test]
fn a_flooded_wrong_token_does_not_starve_a_new_one() {
    let env = Env::start_with(|c| {
        c.set("ironic_edge.heartbeat.token_mismatch_forward_seconds", 600);
    });
    let (mini, uuid, _mac, _token) = boot_agent(&env);
    let flooded = ironic::random_token();
    for _ in 0..20 {
        let r = env.send(&heartbeat(&uuid, CB, &flooded));
        assert_ironic_error(&r, 400, INVALID_TOKEN, MAX, "1.68");
    }
    assert_eq!(env.heartbeats_forwarded_with(&flooded), 1);
    // A token minted where the gateway did not see it (another API, an alias path...) gets
    // its own turn while the flood goes on, and Ironic accepts it.
    mini.wipe(&uuid);
    let fresh = mini.mint(&uuid);
    let r = env.send(&heartbeat(&uuid, CB, &fresh));
    assert_eq!(r.status, 202, "the new token reached Ironic: {}", r.text());
    assert_eq!(env.heartbeats_forwarded_with(&fresh), 1);
    // The flood still gets the edge's answer.
    let r = env.send(&heartbeat(&uuid, CB, &flooded));
    assert_ironic_error(&r, 400, INVALID_TOKEN, MAX, "1.68");
    assert_eq!(env.heartbeats_forwarded_with(&flooded), 1);
}

#[test]
fn changed_callback_url_is_rejected_at_the_edge() {
    let env = Env::start();
    let (_mini, uuid, _mac, token) = boot_agent(&env);
    let r = env.send(&heartbeat(&uuid, CB, &token));
    assert_eq!(r.status, 202);
    assert_eq!(env.fake.heartbeats(), 1);

    // The same URL with an upper-case scheme is the same URL to Ironic (geturl()).
    let r = env.send(&heartbeat(&uuid, "HTTPS://10.0.0.5:9999", &token));
    assert_eq!(r.status, 202, "{}", r.text());

    let n = env.fake.heartbeats();
    let r = env.send(&heartbeat(&uuid, "https://10.0.0.6:9999", &token));
    assert_ironic_error(&r, 400, CALLBACK_CHANGED, MAX, "1.68");
    assert_eq!(
        env.fake.heartbeats(),
        n,
        "a changed callback_url is answered at the edge"
    );

    let r = env.send(&heartbeat(&uuid, CB, &token));
    assert_eq!(r.status, 202);
    assert_eq!(env.fake.heartbeats(), n + 1);
}

#[test]
fn a_new_token_from_lookup_starts_a_new_agent_session() {
    let env = Env::start();
    let (mini, uuid, mac, t1) = boot_agent(&env);
    let r = env.send(&heartbeat(&uuid, CB, &t1));
    assert_eq!(r.status, 202);

    // Power off: Ironic wipes the token and agent_url; the new ramdisk looks up again.
    mini.wipe(&uuid);
    let r = env.send(&lookup(&mac));
    assert_eq!(r.status, 200);
    let t2 = r.json()["config"]["agent_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(t1, t2);
    assert_eq!(t2.len(), 43, "the fresh raw token reaches the agent");

    // New session: another callback_url and the new token are accepted.
    let cb2 = "https://10.0.0.77:9999";
    let n = env.heartbeats_forwarded_with(&t2);
    let r = env.send(&heartbeat(&uuid, cb2, &t2));
    assert_eq!(
        r.status,
        202,
        "the new agent must not be held to the old callback_url: {}",
        r.text()
    );
    assert_eq!(env.heartbeats_forwarded_with(&t2), n + 1);
    assert_eq!(mini.node(&uuid).unwrap().agent_url.as_deref(), Some(cb2));

    // The old token is now wrong.
    let r = env.send(&heartbeat(&uuid, cb2, &t1));
    assert_ironic_error(&r, 400, INVALID_TOKEN, MAX, "1.68");
}

#[test]
fn unknown_node_404_is_cached_for_not_found_ttl() {
    let env = Env::start_with(|c| {
        c.set("ironic_edge.heartbeat.not_found_ttl_seconds", 2);
    });
    let _mini = MiniIronic::install(&env.fake);
    let node = ironic::random_uuid();
    let msg = format!("Node {node} could not be found.");
    let t = ironic::random_token();

    let r = env.send(&heartbeat(&node, CB, &t));
    assert_ironic_error(&r, 404, &msg, MAX, "1.68");
    assert_eq!(env.fake.heartbeats(), 1);

    let t0 = Instant::now();
    let r = env.send(&heartbeat(&node, CB, &t));
    assert_ironic_error(&r, 404, &msg, MAX, "1.68");
    let r = env.send(
        &Request::post(&format!("/v1/heartbeat/{node}"))
            .version("1.72")
            .json_body(&heartbeat_body(CB, &t)),
    );
    assert_ironic_error(&r, 404, &msg, MAX, "1.72");
    assert_eq!(
        env.fake.heartbeats(),
        1,
        "an unknown node is answered at the edge within the TTL"
    );
    assert!(
        t0.elapsed() < Duration::from_millis(1800),
        "too slow to test the TTL"
    );

    // Another node is another question.
    let other = ironic::random_uuid();
    let r = env.send(&heartbeat(&other, CB, &t));
    assert_eq!(r.status, 404);
    assert_eq!(env.fake.heartbeats(), 2);

    std::thread::sleep(Duration::from_millis(2400).saturating_sub(t0.elapsed()));
    let r = env.send(&heartbeat(&node, CB, &t));
    assert_ironic_error(&r, 404, &msg, MAX, "1.68");
    assert_eq!(
        env.fake.heartbeats(),
        3,
        "after the TTL the heartbeat goes to Ironic again"
    );
}

#[test]
fn no_raw_token_in_redis_or_in_the_logs() {
    let env = Env::start();
    let (mini, uuid, mac, token) = boot_agent(&env);
    let wrong = ironic::random_token();
    // Exercise every path that handles tokens.
    assert_eq!(env.send(&heartbeat(&uuid, CB, &token)).status, 202);
    assert_eq!(env.send(&heartbeat(&uuid, CB, &wrong)).status, 400);
    assert_eq!(env.send(&heartbeat(&uuid, CB, &wrong)).status, 400);
    assert_eq!(
        env.send(&heartbeat(&uuid, "https://10.9.9.9:9999", &token))
            .status,
        400
    );
    let q = format!("/v1/heartbeat/{uuid}?callback_url=https%3A%2F%2F10.0.0.5%3A9999&agent_token={token}&agent_version=13.0.0");
    assert_eq!(env.send(&Request::post(&q).version("1.68")).status, 202);
    // Ironic's own leak below 1.62 goes through the gateway too.
    let r = env.send(&Request::get(&format!("/v1/lookup?addresses={mac}")).version("1.31"));
    assert_eq!(r.status, 200);
    // A second session, and a negative-cache entry so that Redis is not empty.
    mini.wipe(&uuid);
    let r = env.send(&lookup(&mac));
    let token2 = r.json()["config"]["agent_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(env.send(&heartbeat(&uuid, CB, &token2)).status, 202);
    assert_eq!(env.send(&lookup(&ironic::random_mac())).status, 404);

    let all = env.redis.scan_all();
    assert!(
        !all.is_empty(),
        "the gateway stored nothing in Redis, so this test proves nothing"
    );
    for (k, _) in &all {
        assert!(
            k.starts_with("db0:ironic-edge:"),
            "key outside the prefix: {k}"
        );
    }
    for secret in [&token, &wrong, &token2] {
        env.redis.assert_absent(secret);
    }
    // Give the logger a moment to flush.
    std::thread::sleep(Duration::from_millis(200));
    let logs = env.gw.logs();
    assert!(!logs.is_empty(), "no log captured (RUST_LOG=debug)");
    for secret in [&token, &wrong, &token2] {
        assert!(
            !logs.contains(secret.as_str()),
            "a raw token is in the gateway log"
        );
    }
}

#[test]
fn tokens_on_alias_and_non_canonical_paths_never_reach_the_logs() {
    // Ironic's router accepts `/lookup`, `/v1/lookup/` and `.json`; heartbeat params may come in
    // the query string; an upper-case ident is not the agent's usual path. Whatever the
    // gateway does with these (answer, forward), a raw token must not be logged (RUST_LOG=debug).
    let env = Env::start();
    let mini = MiniIronic::install(&env.fake);
    let mut secrets = Vec::new();
    for path in ["/lookup", "/v1/lookup/", "/v1/lookup.json"] {
        let mac = ironic::random_mac();
        let uuid = mini.add_node(&[&mac]);
        let r = env.send(&Request::get(&format!("{path}?addresses={mac}")).version("1.62"));
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let token = r.json()["config"]["agent_token"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(token.len(), 43, "{path}: the agent gets its raw token");
        let q = format!(
            "callback_url=https%3A%2F%2F10.0.0.5%3A9999&agent_token={token}&agent_version=13.0.0"
        );
        let r = env.send(&Request::post(&format!("/heartbeat/{uuid}?{q}")).version("1.68"));
        assert_eq!(r.status, 202, "/heartbeat alias: {}", r.text());
        let r = env.send(
            &Request::post(&format!("/v1/heartbeat/{}?{q}", uuid.to_uppercase())).version("1.68"),
        );
        assert_eq!(r.status, 404, "upper-case ident: {}", r.text());
        let r = env.send(&Request::post(&format!("/v1/heartbeat/{uuid}.json?{q}")).version("1.68"));
        assert_eq!(r.status, 202, ".json ident: {}", r.text());
        secrets.push(token);
    }
    std::thread::sleep(Duration::from_millis(200));
    let logs = env.gw.logs();
    let mut leaks = Vec::new();
    for s in &secrets {
        env.redis.assert_absent(s);
        for line in logs.lines().filter(|l| l.contains(s.as_str())) {
            leaks.push(line.chars().take(160).collect::<String>());
        }
    }
    assert!(
        leaks.is_empty(),
        "raw tokens in the gateway log:\n{}",
        leaks.join("\n")
    );
}

/// The coalescing window never exceeds a third of the `heartbeat_timeout` Ironic hands agents
/// (here 3 s, against a configured 60 s): fast track and the conductor keep seeing heartbeats.
#[test]
fn coalescing_is_capped_by_the_heartbeat_timeout_ironic_hands_out() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install_with_listings(&fake);
    {
        let mini = mini.clone();
        fake.route("GET", "/v1/lookup", move |req, ctx| {
            let mut resp = mini.lookup(req, ctx);
            if let common::fake_ironic::Body::Bytes(b) = &mut resp.body {
                let text = String::from_utf8_lossy(b)
                    .replace("\"heartbeat_timeout\": 300", "\"heartbeat_timeout\": 3");
                *b = text.into_bytes();
                let len = b.len().to_string();
                for (k, v) in resp.headers.iter_mut() {
                    if k.eq_ignore_ascii_case("content-length") {
                        *v = len.clone();
                    }
                }
            }
            resp
        });
    }
    let mac = ironic::random_mac();
    let uuid = mini.add_node(&[&mac]);
    let env = Env::start_with_fake(fake, |c| {
        c.set("ironic_edge.sync.enabled", true)
            .set("ironic_edge.sync.interval_seconds", 1)
            .set("ironic_edge.heartbeat.coalesce_seconds", 60);
    });
    env.wait_for_index();
    let r = env.send(&lookup(&mac));
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["config"]["agent_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(env.send(&heartbeat(&uuid, CB, &token)).status, 202);
    // Once the index shows the accepted agent_url, a repeat is coalesced at the edge.
    env.wait_until_coalesced(&token, || env.send(&heartbeat(&uuid, CB, &token)));
    // Past a third of the heartbeat timeout, the next one reaches Ironic again.
    std::thread::sleep(Duration::from_millis(1300));
    let before = env.heartbeats_forwarded_with(&token);
    assert_eq!(env.send(&heartbeat(&uuid, CB, &token)).status, 202);
    assert_eq!(
        env.heartbeats_forwarded_with(&token),
        before + 1,
        "the window is 1 s, not the configured 60 s"
    );
}
