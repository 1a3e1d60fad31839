//! Config validation (`-t`), process lifecycle, ops endpoints, and self-tests of the harness.

mod common;

use common::gateway::{run_bin, shipped_conf};
use common::*;
use std::time::{Duration, Instant};

/// `-t` on `cfg` with one edit applied; returns (exit code, stderr).
fn check_with(edit: impl FnOnce(&mut GatewayConfig)) -> (Option<i32>, String) {
    let mut cfg = GatewayConfig::new("http://127.0.0.1:6385", "redis://127.0.0.1:6379/0");
    edit(&mut cfg);
    let path = cfg.write();
    let out = run_bin(&["-t", "-c", path.to_str().unwrap()]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn shipped_conf_passes_test_mode() {
    let out = run_bin(&["-t", "-c", shipped_conf().to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn test_config_passes_test_mode_without_redis_or_upstream() {
    // Nothing listens on these ports: -t must validate offline.
    let (code, stderr) = check_with(|c| {
        c.set(
            "ironic_edge.upstream.url",
            format!("http://127.0.0.1:{}", free_port()),
        );
        c.set(
            "ironic_edge.redis.url",
            format!("redis://127.0.0.1:{}/0", free_port()),
        );
    });
    assert_eq!(code, Some(0), "stderr: {stderr}");
}

#[test]
fn bad_configs_exit_1_naming_the_field() {
    type Edit = Box<dyn FnOnce(&mut GatewayConfig)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "ironic_edge.upstream.url",
            Box::new(|c| {
                c.set("ironic_edge.upstream.url", "ftp://127.0.0.1:6385");
            }),
        ),
        (
            "ironic_edge.redis.url",
            Box::new(|c| {
                c.set("ironic_edge.redis.url", "http://127.0.0.1:6379");
            }),
        ),
        (
            "ironic_edge.ops_address",
            Box::new(|c| {
                c.set("ironic_edge.ops_address", "0.0.0.0:9380");
            }),
        ),
        (
            "ironic_edge.listeners",
            Box::new(|c| {
                c.set("ironic_edge.listeners", Vec::<String>::new());
            }),
        ),
        (
            "ironic_edge.listeners[0].address",
            Box::new(|c| {
                c.edit(|y| {
                    y["ironic_edge"]["listeners"][0]["address"] = "nowhere".into();
                });
            }),
        ),
        (
            "ironic_edge.lookup.not_found_ttl_seconds",
            Box::new(|c| {
                c.set("ironic_edge.lookup.not_found_ttl_seconds", 0);
            }),
        ),
        (
            "ironic_edge.heartbeat.max_body_bytes",
            Box::new(|c| {
                c.set("ironic_edge.heartbeat.max_body_bytes", 10);
            }),
        ),
        (
            "ironic_edge.heartbeat.not_found_ttl_seconds",
            Box::new(|c| {
                c.set("ironic_edge.heartbeat.not_found_ttl_seconds", "soon");
            }),
        ),
        (
            "ironic_edge.route_policy",
            Box::new(|c| {
                c.set("ironic_edge.route_policy", "some");
            }),
        ),
        (
            "ironic_edge.mode",
            Box::new(|c| {
                c.set("ironic_edge.mode", "dry-run");
            }),
        ),
        (
            "ironic_edge.lookup",
            Box::new(|c| {
                c.set("ironic_edge.lookup.not_found_ttl", 3);
            }),
        ),
        (
            "ironic_edge.limits.request_head_timeout_ms",
            Box::new(|c| {
                c.set("ironic_edge.limits.request_head_timeout_ms", 0);
            }),
        ),
        (
            "ironic_edge.limits.idle_timeout_ms",
            Box::new(|c| {
                c.set("ironic_edge.limits.idle_timeout_ms", 5);
            }),
        ),
        (
            "ironic_edge.limits.agent_body_min_bytes_per_second",
            Box::new(|c| {
                c.set("ironic_edge.limits.agent_body_min_bytes_per_second", 10);
            }),
        ),
        (
            "ironic_edge.limits.max_connections_per_source",
            Box::new(|c| {
                c.set("ironic_edge.limits.max_connections_per_source", "many");
            }),
        ),
        (
            "ironic_edge.trusted_proxies[0]",
            Box::new(|c| {
                c.set("ironic_edge.trusted_proxies", vec!["10.0.0.1/8"]);
            }),
        ),
        (
            "ironic_edge.listeners[0].allow[1]",
            Box::new(|c| {
                let listen = c.listen.to_string();
                c.set(
                    "ironic_edge.listeners",
                    serde_json::json!([{"address": listen, "allow": ["10.0.0.0/8", "10.1.0.0/33"]}]),
                );
            }),
        ),
        (
            "ironic_edge.listeners[0].deny[0]",
            Box::new(|c| {
                let listen = c.listen.to_string();
                c.set(
                    "ironic_edge.listeners",
                    serde_json::json!([{"address": listen, "deny": ["provisioning-net"]}]),
                );
            }),
        ),
        (
            "ironic_edge.trusted_proxies[1]",
            Box::new(|c| {
                c.set(
                    "ironic_edge.trusted_proxies",
                    vec!["fd00::/64", "proxy.example"],
                );
            }),
        ),
    ];
    let mut failures = Vec::new();
    for (field, edit) in cases {
        let (code, stderr) = check_with(edit);
        let want = format!("config error: {field}:");
        if code != Some(1) || !stderr.contains(&want) {
            failures.push(format!("{field}: exit {code:?}, stderr {stderr:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "bad configs not reported as expected:\n{}",
        failures.join("\n")
    );
}

/// `listeners[].tls`: client certificates, protocol policy, cipher suites, and the files
/// themselves, all checked by `-t` (certificates made by the test).
#[test]
fn tls_listener_configs_are_checked_by_test_mode() {
    use common::tls::Ca;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server_ca = Ca::new("server CA");
    let (cert, key) = server_ca.server().write(d, "gateway");
    let (_, other_key) = server_ca.server().write(d, "other");
    let ca = Ca::new("agent CA").write(d, "agent-ca");
    let garbage = d.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let tls = |extra: serde_json::Value| {
        let mut t = serde_json::json!({"cert": cert, "key": key});
        t.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        t
    };
    let good = tls(serde_json::json!({
        "client_ca": ca, "client_auth": "required", "min_version": "1.2",
        "cipher_suites": ["TLS_AES_256_GCM_SHA384", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"],
    }));
    let f = "ironic_edge.listeners[0].tls";
    let cases: Vec<(Option<String>, serde_json::Value)> = vec![
        (None, good),
        (
            None,
            tls(serde_json::json!({"client_ca": ca, "client_auth": "optional"})),
        ),
        (None, tls(serde_json::json!({"min_version": 1.3}))),
        (
            Some(format!("{f}.client_ca")),
            tls(serde_json::json!({"client_ca": d.join("missing.pem"), "client_auth": "required"})),
        ),
        (
            Some(format!("{f}.client_ca")),
            tls(serde_json::json!({"client_ca": garbage, "client_auth": "required"})),
        ),
        (
            Some(format!("{f}.client_ca")),
            tls(serde_json::json!({"client_ca": key, "client_auth": "optional"})),
        ),
        (
            Some(format!("{f}.client_auth")),
            tls(serde_json::json!({"client_auth": "required"})),
        ),
        (
            Some(format!("{f}.client_auth")),
            tls(serde_json::json!({"client_auth": "optional"})),
        ),
        (
            Some(format!("{f}.client_auth")),
            tls(serde_json::json!({"client_ca": ca})),
        ),
        (
            Some(format!("{f}.client_auth")),
            tls(serde_json::json!({"client_ca": ca, "client_auth": "always"})),
        ),
        (
            Some(format!("{f}.min_version")),
            tls(serde_json::json!({"min_version": "1.1"})),
        ),
        (
            Some(format!("{f}.min_version")),
            tls(serde_json::json!({"min_version": 1.0})),
        ),
        (
            Some(format!("{f}.min_version")),
            tls(serde_json::json!({"min_version": "TLSv1.3"})),
        ),
        (
            Some(format!("{f}.cipher_suites[1]")),
            tls(serde_json::json!({"cipher_suites": ["TLS_AES_128_GCM_SHA256", "RC4-MD5"]})),
        ),
        (
            Some(format!("{f}.cipher_suites")),
            tls(
                serde_json::json!({"min_version": "1.2", "cipher_suites": ["TLS_AES_128_GCM_SHA256"]}),
            ),
        ),
        (
            Some(format!("{f}.cert")),
            tls(serde_json::json!({"cert": garbage})),
        ),
        (
            Some(format!("{f}.key")),
            tls(serde_json::json!({"key": garbage})),
        ),
        (
            Some(format!("{f}.key")),
            tls(serde_json::json!({"key": other_key})),
        ),
        (
            Some(f.to_string()),
            tls(serde_json::json!({"verify_client": true})),
        ),
    ];
    let mut failures = Vec::new();
    for (field, tls) in cases {
        let shown = tls.to_string();
        let (code, stderr) = check_with(|c| {
            let listen = c.listen.to_string();
            c.set(
                "ironic_edge.listeners",
                serde_json::json!([{"address": listen, "tls": tls}]),
            );
        });
        let ok = match &field {
            None => code == Some(0),
            Some(field) => code == Some(1) && stderr.contains(&format!("config error: {field}:")),
        };
        if !ok {
            failures.push(format!(
                "{shown}: want {field:?}, exit {code:?}, stderr {stderr:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn missing_config_file_exits_1() {
    let out = run_bin(&["-t", "-c", "/nonexistent/ironic-edge.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("config error:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_config_without_test_mode_exits_1_and_never_listens() {
    let mut cfg = GatewayConfig::new("http://127.0.0.1:6385", "redis://127.0.0.1:6379/0");
    cfg.set("ironic_edge.upstream.agent_answer_within_ms", 40000);
    let listen = cfg.listen;
    let path = cfg.write();
    let out = run_bin(&["-c", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("config error: ironic_edge.upstream.agent_answer_within_ms:"),
        "{stderr}"
    );
    assert!(std::net::TcpStream::connect(listen).is_err());
}

#[test]
fn status_and_metrics_on_the_ops_listener() {
    let env = Env::start();
    let st = http::get(env.gw.ops_addr(), "/status", &[]);
    assert_eq!(st.status, 200);
    let _ = st.json();
    // The ops listener is not the agent listener: /status there is an Ironic path (forwarded).
    assert!(env.fake.count("/status") == 0);

    // One local lookup answer (validation) and one forwarded lookup.
    let r = env.send(&Request::get("/v1/lookup?foo=1").version("1.62"));
    assert_eq!(r.status, 400);
    let r = env.send(&lookup(&ironic::random_mac()));
    assert_eq!(r.status, 404);
    assert_eq!(env.fake.lookups(), 1);

    let text = env.gw.metrics();
    let local = common::gateway::metric_value(
        &text,
        "ironic_edge_requests_total",
        &[("route", "lookup"), ("outcome", "local")],
    );
    let fwd = common::gateway::metric_value(
        &text,
        "ironic_edge_requests_total",
        &[("route", "lookup"), ("outcome", "forwarded")],
    );
    let up = common::gateway::metric_value(
        &text,
        "ironic_edge_upstream_requests_total",
        &[("route", "lookup")],
    );
    // The readiness probes were local lookups too, so "at least".
    assert!(
        local.unwrap_or(0.0) >= 1.0,
        "local lookups metric: {local:?}\n{text}"
    );
    assert!(
        fwd.unwrap_or(0.0) >= 1.0,
        "forwarded lookups metric: {fwd:?}\n{text}"
    );
    assert!(
        up.unwrap_or(0.0) >= 1.0,
        "upstream lookups metric: {up:?}\n{text}"
    );
}

#[test]
fn sigterm_stops_quickly_with_grace_0() {
    let mut env = Env::start();
    let pid = env.gw.pid().unwrap();
    let t = Instant::now();
    let st = env.gw.terminate(Duration::from_secs(5));
    let st =
        st.unwrap_or_else(|| panic!("still running 5 s after SIGTERM; log:\n{}", env.gw.logs()));
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    assert!(st.success() || st.code().is_none(), "exit status {st}");
    assert!(!alive(pid));
    assert!(
        std::net::TcpStream::connect(env.gw.addr()).is_err(),
        "agent port still open"
    );
}

// ---- harness self-tests (they need no gateway) ----

#[test]
fn harness_fake_ironic_records_and_answers() {
    let fake = FakeIronic::start();
    // Default root answer: Ironic's exact body and version headers.
    let r = http::get(fake.addr(), "/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), ironic::root_body(&fake.url(), "1.115"));
    assert_eq!(r.versions(), (Some("1.1"), Some("1.115"), Some("1.1")));
    assert!(r
        .header("x-openstack-request-id")
        .unwrap()
        .starts_with("req-"));
    // Chunked request bodies are recorded de-chunked; keep-alive works.
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut c = Client::connect(fake.addr());
    let r = c.send(
        &Request::post("/v1/heartbeat/abc")
            .version("1.68")
            .body(body.clone())
            .chunked(777),
    );
    assert_eq!(r.status, 202);
    assert!(!r.has_header("Content-Type"));
    let r = c.send(&Request::get("/v1/lookup?addresses=52:54:00:00:00:01").version("1.62"));
    assert_eq!(r.text(), ironic::fault_body(404, ironic::NOT_FOUND));
    let recs = fake.requests();
    assert_eq!(recs.len(), 3);
    assert!(recs[1].chunked);
    assert_eq!(recs[1].body, body);
    assert_eq!(
        recs[2].query.as_deref(),
        Some("addresses=52:54:00:00:00:01")
    );
    assert_eq!(fake.count("/v1/lookup"), 1);
    // Streamed answers.
    fake.route("GET", "/big", |_, _| {
        FakeResponse::new(200).streamed(300_000, 4096)
    });
    let r = http::get(fake.addr(), "/big", &[]);
    assert!(r.chunked);
    assert_eq!(r.body, common::fake_ironic::pattern(300_000));
    // Exact bytes of Ironic's error bodies (captured from Ironic 39.0).
    assert_eq!(
        ironic::fault_body(404, ironic::NOT_FOUND),
        r#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"Resource could not be found.\", \"debuginfo\": null}"}"#
    );
    assert_eq!(ironic::fault_body(404, ironic::NOT_FOUND).len(), 120);
    assert_eq!(
        ironic::framework_body(405, "Method Not Allowed", ""),
        r#"{"error_message": "{\"code\": 405, \"title\": \"Method Not Allowed\", \"description\": \"\"}"}"#
    );
    assert_eq!(
        ironic::fault_body(400, "Field \"agent_version\" not recognised").len(),
        134
    );
}

#[test]
fn harness_redis_scan_and_outages() {
    let mut redis = RedisServer::start();
    redis.cmd(&["SET", "k1", "v-secret-1"]);
    redis.cmd(&["HSET", "h1", "f", "v-secret-2"]);
    redis.cmd(&["SADD", "s1", "v-secret-3"]);
    let all = redis.scan_all();
    let text = format!("{all:?}");
    for s in ["v-secret-1", "v-secret-2", "v-secret-3"] {
        assert!(text.contains(s), "{text}");
    }
    redis.freeze();
    let mut c =
        common::redis::RedisConn::connect(redis.port(), Duration::from_millis(300)).unwrap();
    assert!(c.cmd(&["PING"]).is_err(), "a frozen redis answered");
    redis.thaw();
    assert_eq!(
        redis.cmd(&["PING"]),
        common::redis::Resp::Simple("PONG".into())
    );
    redis.kill();
    assert!(common::redis::RedisConn::connect(redis.port(), Duration::from_millis(300)).is_err());
    redis.restart();
    assert!(redis.keys().is_empty(), "a restarted redis starts empty");
}

#[test]
fn harness_leaves_no_process_behind_on_panic() {
    let pid = std::sync::Arc::new(std::sync::Mutex::new(0u32));
    let p2 = pid.clone();
    let res = std::panic::catch_unwind(move || {
        let r = RedisServer::start();
        *p2.lock().unwrap() = r.pid().unwrap();
        panic!("test failure inside");
    });
    assert!(res.is_err());
    let pid = *pid.lock().unwrap();
    assert!(pid != 0);
    assert!(!alive(pid), "redis-server {pid} survived a panicking test");
}

/// The ops `/status` answers 200 only once the agents' listener accepts: a health check that
/// passes must not send agents to a port that still refuses them (Pingora binds each service
/// on its own runtime; the ops one used to be up first).
#[test]
fn status_answers_200_only_once_the_agents_listener_accepts() {
    let redis = RedisServer::start();
    let fake = FakeIronic::start();
    for round in 0..6 {
        let gw = Gateway::spawn(GatewayConfig::new(&fake.url(), &redis.url()));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "no /status 200:\n{}", gw.logs());
            let status = http::Client::try_connect(gw.ops_addr())
                .and_then(|mut c| c.try_send(&Request::get("/status")))
                .map(|r| r.status);
            if let Ok(200) = status {
                let agents = std::net::TcpStream::connect(gw.addr());
                assert!(
                    agents.is_ok(),
                    "round {round}: /status said 200, the agents' listener refused: {agents:?}"
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
