//! Everything that is not an agent endpoint: forwarded unchanged (status, headers, body bytes,
//! streaming), with X-Forwarded-* added, and the `ramdisk` route policy.

mod common;

use common::fake_ironic::pattern;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn root_and_v1_are_ironics_answers() {
    let env = Env::start();
    let r = env.send(&Request::get("/").header("Accept", "application/json"));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), ironic::root_body(&env.fake.url(), "1.115"));
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.versions(), (Some("1.1"), Some("1.115"), Some("1.1")));
    // IPA reads default_version.version from it.
    assert_eq!(r.json()["default_version"]["version"], "1.115");

    let r = env.send(&Request::get("/v1/").version("1.62"));
    assert_eq!(r.status, 200);
    assert_eq!(env.fake.count("/v1/"), 1);
    assert_eq!(r.header("X-OpenStack-Ironic-API-Version"), Some("1.62"));
}

#[test]
fn large_streamed_response_is_passed_through_byte_for_byte() {
    // Pingora's debug log prints every body chunk (10 s for 16 MiB): info level here.
    let env = Env::start_with(|c| {
        c.env("RUST_LOG", "info");
    });
    let total = 16 * 1024 * 1024 + 12345;
    env.fake.route("GET", "/v1/nodes/big/bios", move |_, _| {
        FakeResponse::new(200)
            .header("Content-Type", "application/octet-stream")
            .header("X-Custom", "one")
            .header("X-Custom", "two")
            .streamed(total, 64 * 1024 + 7)
    });
    let t0 = Instant::now();
    let r = env.send(&Request::get("/v1/nodes/big/bios?fields=a,b").version("1.80"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), total);
    assert!(r.body == pattern(total), "streamed body changed");
    assert_eq!(r.header("Content-Type"), Some("application/octet-stream"));
    assert_eq!(r.header_all("X-Custom"), vec!["one", "two"]);
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    let seen = env.fake.requests_to("/v1/nodes/big/bios");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/v1/nodes/big/bios?fields=a,b");
}

#[test]
fn streamed_response_is_not_buffered_whole() {
    let env = Env::start();
    // 20 chunks, 100 ms apart: a streaming proxy delivers the first bytes long before the end.
    env.fake.route("GET", "/v1/nodes/slow", |_, _| {
        FakeResponse::new(200).streamed_with_pause(20 * 1000, 1000, Duration::from_millis(100))
    });
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(env.gw.addr()).unwrap();
    let t0 = Instant::now();
    s.write_all(b"GET /v1/nodes/slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    let first = t0.elapsed();
    assert!(n > 0);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let all = t0.elapsed();
    assert!(
        all >= Duration::from_millis(1500),
        "the fake streams for about 2 s: {all:?}"
    );
    assert!(
        first < Duration::from_millis(1000),
        "first bytes after {first:?} (whole answer after {all:?}): the response is buffered"
    );
}

#[test]
fn large_request_bodies_reach_ironic_unchanged() {
    // Pingora's debug log prints every body chunk (10 s for 16 MiB): info level here.
    let env = Env::start_with(|c| {
        c.env("RUST_LOG", "info");
    });
    env.fake
        .route("*", "/v1/nodes/*", |req, ctx| ctx.json(req, 200, "{}"));
    let body: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let target = "/v1/nodes/n1/states/raid?x=1&x=2&y=%2F%20";
    let r = env.send(
        &Request::new("PUT", target)
            .version("1.80")
            .header("Content-Type", "application/octet-stream")
            .header("X-Auth-Token", "gAAAAA-keystone-token")
            .body(body.clone()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = env.send(
        &Request::new("PATCH", "/v1/nodes/n2")
            .header("Content-Type", "application/json-patch+json")
            .body(body[..2 * 1024 * 1024].to_vec())
            .chunked(8191),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = env.fake.requests();
    let put = seen
        .iter()
        .find(|r| r.method == "PUT")
        .expect("PUT forwarded");
    assert_eq!(put.target, target);
    assert!(
        put.body == body,
        "PUT body changed ({} bytes)",
        put.body.len()
    );
    assert_eq!(put.header("X-Auth-Token"), Some("gAAAAA-keystone-token"));
    assert_eq!(put.header("Content-Type"), Some("application/octet-stream"));
    assert_eq!(put.header("X-OpenStack-Ironic-API-Version"), Some("1.80"));
    let patch = seen
        .iter()
        .find(|r| r.method == "PATCH")
        .expect("PATCH forwarded");
    assert_eq!(patch.path, "/v1/nodes/n2");
    assert!(
        patch.body == body[..2 * 1024 * 1024],
        "chunked PATCH body changed ({} bytes)",
        patch.body.len()
    );
}

#[test]
fn upstream_status_headers_and_body_are_passed_through() {
    let env = Env::start();
    env.fake.route("DELETE", "/v1/nodes/x1", |req, ctx| {
        ctx.error(
            req,
            409,
            "Node x1 is locked by host c1, please retry after the current operation is completed.",
        )
        .header("X-Extra", "a")
        .header("X-Extra", "b")
    });
    let r = env.send(&Request::new("DELETE", "/v1/nodes/x1").version("1.60"));
    assert_eq!(r.status, 409);
    assert_eq!(
        r.text(),
        ironic::fault_body(
            409,
            "Node x1 is locked by host c1, please retry after the current operation is completed."
        )
    );
    assert_eq!(r.header_all("X-Extra"), vec!["a", "b"]);
    assert_eq!(r.versions(), (Some("1.1"), Some("1.115"), Some("1.60")));
    assert!(r
        .header("openstack-request-id")
        .unwrap()
        .starts_with("req-"));
    // HEAD: no body, headers kept.
    env.fake.route("HEAD", "/v1/nodes/x2", |req, ctx| {
        ctx.json(req, 200, "{\"a\": 1}")
    });
    let r = env.send(&Request::new("HEAD", "/v1/nodes/x2"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Length"), Some("8"));
}

#[test]
fn x_forwarded_headers_are_added_on_passthrough() {
    let env = Env::start();
    env.fake.route("GET", "/v1/nodes", |req, ctx| {
        ctx.json(req, 200, "{\"nodes\": []}")
    });
    let r = env.send(
        &Request::get("/v1/nodes?fields=uuid")
            .header("Host", "ironic.example.org:6385")
            .version("1.62"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "{\"nodes\": []}");
    let seen = env.fake.requests_to("/v1/nodes");
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    let xff = s.header_all("X-Forwarded-For").join(",");
    assert!(
        xff.contains("127.0.0.1"),
        "X-Forwarded-For: {xff:?} ({:?})",
        s.headers
    );
    assert_eq!(
        s.header("X-Forwarded-Proto"),
        Some("http"),
        "{:?}",
        s.headers
    );
    assert_eq!(
        s.header("X-Forwarded-Host"),
        Some("ironic.example.org:6385"),
        "{:?}",
        s.headers
    );
    assert_eq!(s.target, "/v1/nodes?fields=uuid");
}

#[test]
fn keep_alive_connection_mixes_local_and_forwarded_answers() {
    let env = Env::start();
    let mac = ironic::random_mac();
    let mut c = Client::connect(env.gw.addr());
    let steps: Vec<(Request, u16)> = vec![
        (Request::get("/v1/lookup?foo=1").version("1.62"), 400), // local
        (lookup(&mac), 404),                                     // forwarded
        (lookup(&mac), 404),                                     // cached, local
        (
            heartbeat(
                &ironic::random_uuid(),
                "https://10.0.0.5:9999",
                &ironic::random_token(),
            ),
            202,
        ), // body read, forwarded
        (
            Request::post("/v1/heartbeat/x")
                .version("1.68")
                .json_body("{}"),
            400,
        ), // body read, local
        (Request::get("/"), 200),                                // passthrough
        (Request::get("/v1/lookup?foo=1").version("1.62"), 400),
    ];
    for (i, (req, status)) in steps.iter().enumerate() {
        let r = c
            .try_send(req)
            .unwrap_or_else(|e| panic!("step {i} {} {}: {e}", req.method, req.target));
        assert_eq!(
            r.status,
            *status,
            "step {i} {} {}: {}",
            req.method,
            req.target,
            r.text()
        );
        assert!(
            !c.closed,
            "step {i}: the gateway closed the keep-alive connection ({:?})",
            r.headers
        );
    }
    assert_eq!(env.fake.lookups(), 1);
    assert_eq!(env.fake.heartbeats(), 1);
}

#[test]
fn ramdisk_route_policy_denies_the_admin_api() {
    let env = Env::start_with(|c| {
        c.set("ironic_edge.route_policy", "ramdisk");
    });
    for (m, p) in [
        ("GET", "/v1/nodes"),
        ("GET", "/v1/nodes/abc?fields=driver_info"),
        ("DELETE", "/v1/nodes/abc"),
        ("GET", "/v1/ports"),
        ("GET", "/v1/conductors"),
        ("PATCH", "/v1/nodes/abc"),
    ] {
        let mut req = Request::new(m, p).version("1.62");
        if m == "PATCH" {
            req = req.json_body("[]");
        }
        let r = env.send(&req);
        assert_eq!(r.status, 403, "{m} {p}: {}", r.text());
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        let fs = r
            .faultstring()
            .unwrap_or_else(|| panic!("{m} {p}: not an Ironic error: {}", r.text()));
        assert!(
            fs.starts_with("Access was denied to the following resource: "),
            "{fs}"
        );
        let v: serde_json::Value =
            serde_json::from_str(r.json()["error_message"].as_str().unwrap()).unwrap();
        assert_eq!(v["faultcode"], "Client");
    }
    assert_eq!(env.fake.count_prefix("/v1/nodes"), 0);
    assert_eq!(env.fake.count_prefix("/v1/ports"), 0);
    assert_eq!(env.fake.count_prefix("/v1/conductors"), 0);

    // What a ramdisk needs still goes through.
    assert_eq!(env.send(&Request::get("/")).status, 200);
    assert_eq!(env.send(&Request::get("/v1").version("1.62")).status, 200);
    // (The gateway's own probe for the v1 document comes with its reserved `Host`.)
    let forwarded_v1 = env
        .fake
        .requests_to("/v1")
        .iter()
        .filter(|r| r.header("host") != Some("ironic-edge.invalid"))
        .count();
    assert_eq!(forwarded_v1, 1);
    let r = env.send(&Request::post("/v1/continue_inspection").json_body("{\"inventory\": {}}"));
    assert_eq!(r.status, 200);
    assert_eq!(env.fake.count("/v1/continue_inspection"), 1);
    assert_eq!(env.send(&lookup(&ironic::random_mac())).status, 404);
    assert_eq!(env.fake.lookups(), 1);
    let r = env.send(&heartbeat(
        &ironic::random_uuid(),
        "https://10.0.0.5:9999",
        &ironic::random_token(),
    ));
    assert_eq!(r.status, 202);
    assert_eq!(env.fake.heartbeats(), 1);
}

#[test]
fn all_route_policy_forwards_the_admin_api() {
    let env = Env::start(); // route_policy: all
    env.fake
        .route("*", "/v1/*", |req, ctx| ctx.json(req, 200, "{}"));
    for (m, p) in [
        ("GET", "/v1/nodes"),
        ("DELETE", "/v1/nodes/abc"),
        ("GET", "/v1/conductors"),
    ] {
        let r = env.send(&Request::new(m, p).version("1.62"));
        assert_eq!(r.status, 200, "{m} {p}: {}", r.text());
    }
    assert_eq!(env.fake.count("/v1/nodes"), 1);
    assert_eq!(env.fake.count("/v1/nodes/abc"), 1);
    assert_eq!(env.fake.count("/v1/conductors"), 1);
}

/// IPA's version discovery (`GET /`, twice per boot) is answered at the edge from the root
/// document learnt from Ironic: a boot storm's discovery never reaches Ironic.
#[test]
fn get_root_is_answered_at_the_edge_from_the_learnt_document() {
    let env = Env::start();
    let direct = http::send(env.fake.addr(), &Request::get("/"));
    assert_eq!(direct.status, 200);
    env.fake.clear_log();
    for version in [None, Some("1.62"), Some("latest")] {
        let mut req = Request::get("/");
        if let Some(v) = version {
            req = req.version(v);
        }
        let r = env.send(&req);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), direct.text(), "Ironic's document");
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(
            r.header("X-OpenStack-Ironic-API-Maximum-Version"),
            direct.header("X-OpenStack-Ironic-API-Maximum-Version")
        );
    }
    let r = env.send(&Request::get("/").version("abc"));
    assert_eq!(r.status, 406, "Ironic's negotiation");
    let roots = env
        .fake
        .requests()
        .iter()
        .filter(|r| r.path == "/" && r.header("Host") != Some("ironic-edge.invalid"))
        .count();
    assert_eq!(roots, 0, "no agent's GET / reached Ironic");
}
