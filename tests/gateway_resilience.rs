//! Outages: Redis killed and restarted, Redis frozen, Ironic unreachable or failing.

mod common;

use common::ironic::{fault_body, NOT_FOUND, UNAVAILABLE};
use common::*;
use std::time::{Duration, Instant};

const MAX: &str = "1.115";

/// Sends and asserts the answer came within `limit`.
#[track_caller]
fn timed(env: &Env, req: &Request, limit: Duration) -> Response {
    let t0 = Instant::now();
    let r = env.send(req);
    let el = t0.elapsed();
    assert!(
        el < limit,
        "{} {} took {el:?} (limit {limit:?})",
        req.method,
        req.target
    );
    r
}

/// Whether the negative cache works right now: a fresh MAC is forwarded once, then answered at
/// the edge.
fn negative_cache_works(env: &Env) -> bool {
    let mac = ironic::random_mac();
    let before = env.fake.lookups();
    let r1 = env.send(&lookup(&mac));
    let r2 = env.send(&lookup(&mac));
    r1.status == 404 && r2.status == 404 && env.fake.lookups() == before + 1
}

#[test]
fn redis_killed_mid_test_then_restarted() {
    let mut env = Env::start();
    assert!(
        negative_cache_works(&env),
        "baseline: the negative cache works with Redis up"
    );

    env.redis.kill();
    let limit = Duration::from_millis(2000);
    // Lookups are forwarded and answered correctly, quickly.
    for _ in 0..3 {
        let before = env.fake.lookups();
        let r = timed(&env, &lookup(&ironic::random_mac()), limit);
        assert_ironic_error(&r, 404, NOT_FOUND, MAX, "1.62");
        assert_eq!(env.fake.lookups(), before + 1);
    }
    // A known node's lookup still returns Ironic's 200 with its token.
    let uuid = ironic::random_uuid();
    let token = ironic::random_token();
    let (u, t) = (uuid.clone(), token.clone());
    let mac = ironic::random_mac();
    let m2 = mac.clone();
    env.fake.route("GET", "/v1/lookup", move |req, ctx| {
        if req.query.as_deref().unwrap_or("").contains(&m2) {
            ctx.lookup_ok(req, &u, Some(&t))
        } else {
            ctx.lookup_not_found(req)
        }
    });
    let r = timed(&env, &lookup(&mac), limit);
    assert_eq!(
        r.text(),
        ironic::lookup_body(&uuid, Some(&token), &env.fake.url())
    );
    // Heartbeats are forwarded.
    let r = timed(
        &env,
        &heartbeat(&uuid, "https://10.0.0.5:9999", &token),
        limit,
    );
    assert_eq!(r.status, 202);
    assert!(env.fake.heartbeats() >= 1);
    // Local validation needs no Redis.
    let r = timed(
        &env,
        &Request::get("/v1/lookup?foo=1").version("1.62"),
        limit,
    );
    assert_ironic_error(&r, 400, "Unexpected arguments: foo", MAX, "1.62");
    // Passthrough needs no Redis.
    assert_eq!(timed(&env, &Request::get("/"), limit).status, 200);

    // Redis comes back (empty): the gateway uses it again without a restart.
    env.redis.restart();
    let ok = wait_for(Duration::from_secs(8), || {
        negative_cache_works(&env).then_some(())
    });
    assert!(
        ok.is_some(),
        "the negative cache did not work again after Redis came back"
    );
    assert!(
        !env.redis.keys().is_empty(),
        "nothing written to the restarted Redis"
    );
    let st = http::get(env.gw.ops_addr(), "/status", &[]);
    assert_eq!(st.status, 200);
}

#[test]
fn redis_frozen_requests_are_still_served_by_forwarding() {
    let mut env = Env::start(); // redis.command_timeout_ms: 250
    assert!(negative_cache_works(&env));
    env.redis.freeze();
    let limit = Duration::from_millis(2500);
    let t0 = Instant::now();
    for _ in 0..3 {
        let before = env.fake.lookups();
        let r = timed(&env, &lookup(&ironic::random_mac()), limit);
        assert_ironic_error(&r, 404, NOT_FOUND, MAX, "1.62");
        assert_eq!(env.fake.lookups(), before + 1, "answered by forwarding");
    }
    let r = timed(
        &env,
        &heartbeat(
            &ironic::random_uuid(),
            "https://10.0.0.5:9999",
            &ironic::random_token(),
        ),
        limit,
    );
    assert_eq!(r.status, 202);
    let r = timed(
        &env,
        &Request::get("/v1/lookup?foo=1").version("1.62"),
        limit,
    );
    assert_eq!(r.status, 400);
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "{:?} for 5 requests",
        t0.elapsed()
    );

    // Several agents at once while Redis hangs: all answered within the bound.
    let addr = env.gw.addr();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let mac = ironic::random_mac();
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = http::send(addr, &lookup(&mac));
                (r.status, t.elapsed())
            })
        })
        .collect();
    for h in handles {
        let (status, el) = h.join().unwrap();
        assert_eq!(status, 404);
        assert!(el < Duration::from_millis(3000), "{el:?}");
    }

    env.redis.thaw();
    let ok = wait_for(Duration::from_secs(8), || {
        negative_cache_works(&env).then_some(())
    });
    assert!(
        ok.is_some(),
        "the negative cache did not work again after Redis thawed"
    );
}

#[test]
fn upstream_down_gives_ironic_shaped_503() {
    let mut env = Env::start();
    env.fake.stop(); // nothing listens on the upstream port any more
    let want = fault_body(503, UNAVAILABLE);
    let limit = Duration::from_millis(3000);
    let reqs = vec![
        lookup(&ironic::random_mac()),
        heartbeat(
            &ironic::random_uuid(),
            "https://10.0.0.5:9999",
            &ironic::random_token(),
        ),
        Request::get("/v1/nodes").version("1.62"),
    ];
    for req in &reqs {
        let r = timed(&env, req, limit);
        assert_eq!(
            (r.status, r.text()),
            (503, want.clone()),
            "{} {}: {:?}",
            req.method,
            req.target,
            r.headers
        );
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(
            r.header("Content-Length"),
            Some(want.len().to_string().as_str())
        );
        // Ironic's error body: IPA reads faultstring from it.
        assert_eq!(r.faultstring().as_deref(), Some(UNAVAILABLE));
    }
    // A 503 is not a negative answer: nothing cached, validation still local.
    let r = timed(
        &env,
        &Request::get("/v1/lookup?foo=1").version("1.62"),
        limit,
    );
    assert_ironic_error(&r, 400, "Unexpected arguments: foo", MAX, "1.62");
    // The version headers of a lookup 503 follow the known range.
    let r = timed(&env, &lookup(&ironic::random_mac()), limit);
    assert_eq!(r.status, 503);
    let st = http::get(env.gw.ops_addr(), "/status", &[]);
    assert_eq!(st.status, 200, "the gateway itself is up");
    // Each of those 503s is the edge's own, counted as such on every route (not "forwarded":
    // Ironic answered none of them).
    for (route, n) in [("lookup", 2.0), ("heartbeat", 1.0), ("other", 1.0)] {
        let count = |outcome: &str| {
            env.gw
                .metric(
                    "ironic_edge_requests_total",
                    &[("route", route), ("outcome", outcome)],
                )
                .unwrap_or(0.0)
        };
        assert_eq!(count("unavailable"), n, "{route}");
        assert_eq!(count("forwarded"), 0.0, "{route}");
    }
}

#[test]
fn upstream_back_after_outage_is_used_again() {
    let mut env = Env::start();
    let port = env.fake.port();
    env.fake.stop();
    let r = env.send(&lookup(&ironic::random_mac()));
    assert_eq!(r.status, 503);
    // Ironic restarts on the same address.
    env.fake = FakeIronic::start_on(port);
    let ok = wait_for(Duration::from_secs(6), || {
        let r = env.send(&lookup(&ironic::random_mac()));
        (r.status == 404).then_some(())
    });
    assert!(
        ok.is_some(),
        "the gateway did not reach the restarted upstream"
    );
    assert!(env.fake.lookups() >= 1);
}

#[test]
fn upstream_unreachable_from_the_start() {
    let redis = RedisServer::start();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gw = Gateway::start(GatewayConfig::new(&dead, &redis.url()));
    let want = fault_body(503, UNAVAILABLE);
    for target in ["/v1/nodes", "/"] {
        let t0 = Instant::now();
        let r = gw.send(&Request::get(target).version("1.62"));
        assert!(t0.elapsed() < Duration::from_secs(3));
        assert_eq!(
            (r.status, r.text()),
            (503, want.clone()),
            "{target}: {:?}",
            r.headers
        );
        assert_eq!(r.header("Content-Type"), Some("application/json"));
    }
}

#[test]
fn upstream_resetting_connections_gives_ironic_shaped_503() {
    let env = Env::start();
    env.fake
        .route("*", "/v1/nodes*", |_, _| FakeResponse::drop_connection());
    env.fake
        .route("GET", "/v1/lookup", |_, _| FakeResponse::drop_connection());
    let want = fault_body(503, UNAVAILABLE);
    for req in [
        Request::get("/v1/nodes").version("1.62"),
        lookup(&ironic::random_mac()),
    ] {
        let r = env.send(&req);
        assert_eq!(
            (r.status, r.text()),
            (503, want.clone()),
            "{}: {:?}",
            req.target,
            r.headers
        );
    }
    assert!(env.fake.count("/v1/nodes") >= 1);
}

#[test]
fn upstream_slower_than_read_timeout_gives_503() {
    let env = Env::start_with(|c| {
        c.set("ironic_edge.upstream.read_timeout_ms", 500);
    });
    env.fake.route("GET", "/v1/nodes", |req, ctx| {
        ctx.json(req, 200, "{}").delay(Duration::from_millis(2500))
    });
    let t0 = Instant::now();
    let r = env.send(&Request::get("/v1/nodes").version("1.62"));
    assert!(
        t0.elapsed() < Duration::from_millis(2000),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.faultstring().as_deref(), Some(UNAVAILABLE));
}
