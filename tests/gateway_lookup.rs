//! `GET /v1/lookup` through the gateway: local validation, version headers, the negative cache,
//! single flight, 409 retries, and what must never be cached or leaked.

mod common;

use common::ironic::{fault_body, framework_body, LOOKUP_NEEDS_ARGS, NOT_FOUND};
use common::*;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const MAX: &str = "1.115";

struct Case {
    target: String,
    headers: Vec<(&'static str, &'static str)>,
    status: u16,
    faultstring: String,
    negotiated: &'static str,
}

fn case(
    target: &str,
    headers: &[(&'static str, &'static str)],
    status: u16,
    msg: &str,
    neg: &'static str,
) -> Case {
    Case {
        target: target.to_string(),
        headers: headers.to_vec(),
        status,
        faultstring: msg.to_string(),
        negotiated: neg,
    }
}

const V162: (&str, &str) = ("X-OpenStack-Ironic-API-Version", "1.62");

#[test]
fn lookup_validation_table_is_answered_locally_with_ironic_bytes() {
    let env = Env::start();
    let mac = ironic::random_mac();
    let cases = vec![
        case(
            "/v1/lookup?foo=1",
            &[V162],
            400,
            "Unexpected arguments: foo",
            "1.62",
        ),
        case(
            "/v1/lookup?addresses=52:54:00:12:34:56&foo=1&bar=2",
            &[V162],
            400,
            "Unexpected arguments: foo, bar",
            "1.62",
        ),
        case(
            "/v1/lookup?node_uuid=zzz&foo=1",
            &[V162],
            400,
            "Unexpected arguments: foo",
            "1.62",
        ),
        case(
            "/v1/lookup?addresses=52%3A54%3A00%3A12%3A34%3A56&foo=1",
            &[V162],
            400,
            "Unexpected arguments: foo",
            "1.62",
        ),
        case(
            "/v1/lookup?node_uuid=",
            &[V162],
            400,
            "Expected UUID for node_uuid: ",
            "1.62",
        ),
        case(
            "/v1/lookup?node_uuid=abc",
            &[V162],
            400,
            "Expected UUID for node_uuid: abc",
            "1.62",
        ),
        case(
            "/v1/lookup?node_uuid=abc&addresses=52:54:00:12:34:56",
            &[V162],
            400,
            "Expected UUID for node_uuid: abc",
            "1.62",
        ),
        case(
            "/v1/lookup?addresses=",
            &[V162],
            400,
            LOOKUP_NEEDS_ARGS,
            "1.62",
        ),
        case(
            "/v1/lookup?addresses=meow",
            &[V162],
            400,
            LOOKUP_NEEDS_ARGS,
            "1.62",
        ),
        case("/v1/lookup", &[V162], 400, LOOKUP_NEEDS_ARGS, "1.62"),
        case(
            "/v1/lookup?addresses=52-54-00-12-34-56",
            &[V162],
            400,
            LOOKUP_NEEDS_ARGS,
            "1.62",
        ),
        case(
            "/v1/lookup?addresses=525400123456,meow",
            &[V162],
            400,
            LOOKUP_NEEDS_ARGS,
            "1.62",
        ),
        // Arguments are checked before the version gate.
        case(
            "/v1/lookup?foo=1",
            &[],
            400,
            "Unexpected arguments: foo",
            "1.1",
        ),
        // No header means 1.1: below 1.22 the endpoint does not exist.
        case(
            &format!("/v1/lookup?addresses={mac}"),
            &[],
            404,
            NOT_FOUND,
            "1.1",
        ),
        case(
            &format!("/v1/lookup?addresses={mac}"),
            &[("X-OpenStack-Ironic-API-Version", "1.21")],
            404,
            NOT_FOUND,
            "1.21",
        ),
        // The standard header wins over Ironic's own.
        case(
            &format!("/v1/lookup?addresses={mac}"),
            &[("OpenStack-API-Version", "baremetal 1.21"), V162],
            404,
            NOT_FOUND,
            "1.21",
        ),
        // `latest` (any case) is the upstream's maximum.
        case(
            "/v1/lookup?foo=1",
            &[("X-OpenStack-Ironic-API-Version", "latest")],
            400,
            "Unexpected arguments: foo",
            MAX,
        ),
        case(
            "/v1/lookup?node_uuid=abc",
            &[("X-OpenStack-Ironic-API-Version", "LATEST")],
            400,
            "Expected UUID for node_uuid: abc",
            MAX,
        ),
    ];
    let mut failures = Vec::new();
    for c in &cases {
        let mut req = Request::get(&c.target).header("Accept", "application/json");
        for (k, v) in &c.headers {
            req = req.header(k, v);
        }
        let r = env.send(&req);
        let want_body = fault_body(c.status, &c.faultstring);
        let ok = r.status == c.status
            && r.text() == want_body
            && r.header("Content-Type") == Some("application/json")
            && r.header("Content-Length") == Some(want_body.len().to_string().as_str())
            && r.versions() == (Some("1.1"), Some(MAX), Some(c.negotiated));
        if !ok {
            failures.push(format!(
                "{} {:?}: got {} {:?} {}",
                c.target,
                c.headers,
                r.status,
                r.headers,
                r.text()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "wrong answers:\n{}",
        failures.join("\n")
    );
    assert_eq!(
        env.fake.lookups(),
        0,
        "validation failures must not reach Ironic: {:?}",
        env.fake.requests()
    );
}

#[test]
fn lookup_bad_versions_get_ironic_406() {
    let env = Env::start();
    let mac = ironic::random_mac();
    let target = format!("/v1/lookup?addresses={mac}");
    for bad in ["abc", "1", "1.2.3"] {
        let r = env.send(&Request::get(&target).version(bad));
        assert_eq!(r.status, 406, "{bad}");
        assert_eq!(
            r.text(),
            framework_body(
                406,
                "Not Acceptable",
                "Invalid value for X-OpenStack-Ironic-API-Version header"
            ),
            "{bad}"
        );
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        // Unparseable: no version headers at all.
        assert_eq!(r.versions(), (None, None, None), "{bad}: {:?}", r.headers);
    }
    let r = env.send(&Request::get(&target).version("2.1"));
    assert_eq!(r.status, 406);
    assert_eq!(
        r.text(),
        framework_body(
            406,
            "Not Acceptable",
            "Mutually exclusive versions requested. Version 2.1 requested but not supported by this service. The supported version range is: [1.1, 1.115]."
        )
    );
    assert_eq!(r.versions(), (Some("1.1"), Some(MAX), None));
    let r = env.send(&Request::get(&target).version("1.999"));
    assert_eq!(r.status, 406);
    assert_eq!(
        r.text(),
        framework_body(
            406,
            "Not Acceptable",
            &ironic::minor_unsupported("1.999", "1.1", MAX)
        )
    );
    assert_eq!(r.versions(), (Some("1.1"), Some(MAX), None));
    assert_eq!(env.fake.lookups(), 0);
}

#[test]
fn version_range_is_learned_from_upstream_and_refreshed() {
    let fake = FakeIronic::start();
    fake.set_max_version("1.99");
    let env = Env::start_with_fake(fake, |_| {});
    let r = env.send(&Request::get("/v1/lookup?foo=1").version("latest"));
    assert_ironic_error(&r, 400, "Unexpected arguments: foo", "1.99", "1.99");
    let r = env.send(&Request::get("/v1/lookup?foo=1").version("1.100"));
    assert_eq!(r.status, 406);
    assert_eq!(
        r.text(),
        framework_body(
            406,
            "Not Acceptable",
            &ironic::minor_unsupported("1.100", "1.1", "1.99")
        )
    );
    assert_eq!(r.versions(), (Some("1.1"), Some("1.99"), None));

    // The upstream is upgraded: within a few refresh periods (1 s) the gateway follows.
    env.fake.set_max_version("1.105");
    let seen = wait_for(Duration::from_secs(6), || {
        let r = env.send(&Request::get("/v1/lookup?foo=1").version("1.100"));
        (r.status == 400).then_some(r)
    });
    let r = seen.expect("the gateway never learned the new maximum 1.105");
    assert_ironic_error(&r, 400, "Unexpected arguments: foo", "1.105", "1.100");
    assert_eq!(env.fake.lookups(), 0);
    assert!(
        env.fake.count("/") >= 1,
        "the range comes from the upstream's GET /"
    );
}

#[test]
fn negative_cache_hit_then_expiry() {
    // A 2 s TTL leaves room for a slow machine between the first miss and the checks.
    let env = Env::start_with(|c| {
        c.set("ironic_edge.lookup.not_found_ttl_seconds", 2);
    });
    let mac = ironic::random_mac();
    let miss = fault_body(404, NOT_FOUND);
    let t0 = Instant::now();

    let r = env.send(&lookup(&mac));
    assert_ironic_error(&r, 404, NOT_FOUND, MAX, "1.62");
    assert_eq!(env.fake.lookups(), 1);

    // Within the TTL: answered at the edge, same bytes, version headers of *this* request.
    let r = env.send(&lookup(&mac));
    assert_ironic_error(&r, 404, NOT_FOUND, MAX, "1.62");
    let r = env.send(&Request::get(&format!("/v1/lookup?addresses={mac}")).version("1.70"));
    assert_ironic_error(&r, 404, NOT_FOUND, MAX, "1.70");
    assert_eq!(r.text(), miss);
    assert_eq!(env.fake.lookups(), 1, "cached 404s must not reach Ironic");

    // The node appears in Ironic; the cached 404 still answers until it expires...
    let uuid = ironic::random_uuid();
    let token = ironic::random_token();
    let (u2, t2) = (uuid.clone(), token.clone());
    env.fake.route("GET", "/v1/lookup", move |req, ctx| {
        ctx.lookup_ok(req, &u2, Some(&t2))
    });
    let r = env.send(&lookup(&mac));
    assert_eq!(r.status, 404);
    assert_eq!(env.fake.lookups(), 1);

    assert!(
        t0.elapsed() < Duration::from_millis(1800),
        "too slow to test the TTL"
    );
    // ...and not after: 2 s TTL.
    std::thread::sleep(Duration::from_millis(2400).saturating_sub(t0.elapsed()));
    let r = env.send(&lookup(&mac));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        ironic::lookup_body(&uuid, Some(&token), &env.fake.url())
    );
    assert_eq!(env.fake.lookups(), 2);
}

#[test]
fn negative_cache_key_is_normalised() {
    let env = Env::start();
    let (m1, m2, m3) = (
        ironic::random_mac(),
        ironic::random_mac(),
        ironic::random_mac(),
    );
    let r = env.send(&lookup(&format!("{m1},{m2}")));
    assert_eq!(r.status, 404);
    assert_eq!(env.fake.lookups(), 1);

    let enc = |m: &str| m.replace(':', "%3A");
    let variants = vec![
        format!("{},{}", m2.to_uppercase(), m1), // order and case
        format!("{}%2C{}", enc(&m1), enc(&m2)),  // percent-encoded, as IPA sends
        format!("meow,{m1},{m2},{m1}"),          // invalid dropped, duplicate
        format!("%20{m1}%20,{m2},,"),            // white space, empty items
        format!("{m2},52-54-00-aa-bb-cc,{}", m1.to_uppercase()), // non-colon form is invalid
    ];
    for v in &variants {
        let r = env.send(&lookup(v));
        assert_ironic_error(&r, 404, NOT_FOUND, MAX, "1.62");
        assert_eq!(
            env.fake.lookups(),
            1,
            "addresses={v} should hit the cached 404"
        );
    }
    // Another MAC set is another question.
    let r = env.send(&lookup(&m3));
    assert_eq!(r.status, 404);
    assert_eq!(env.fake.lookups(), 2, "a different MAC must reach Ironic");
}

#[test]
fn node_uuid_alone_decides_the_cache_key() {
    let env = Env::start();
    let (m1, m2) = (ironic::random_mac(), ironic::random_mac());
    let u = ironic::random_uuid();
    let r = env.send(&lookup(&format!("{m1}&node_uuid={u}")));
    assert_eq!(r.status, 404);
    assert_eq!(env.fake.lookups(), 1);
    // Ironic ignores the addresses when node_uuid is given.
    let r = env.send(&lookup(&format!("{m2}&node_uuid={u}")));
    assert_ironic_error(&r, 404, NOT_FOUND, MAX, "1.62");
    let r = env.send(&Request::get(&format!("/v1/lookup?node_uuid={u}")).version("1.62"));
    assert_ironic_error(&r, 404, NOT_FOUND, MAX, "1.62");
    assert_eq!(env.fake.lookups(), 1);
    // A miss by UUID says nothing about the MACs.
    let r = env.send(&lookup(&m1));
    assert_eq!(r.status, 404);
    assert_eq!(
        env.fake.lookups(),
        2,
        "addresses-only lookup must not use the node_uuid entry"
    );
}

#[test]
fn single_flight_many_concurrent_lookups_one_upstream_request() {
    let env = Env::start();
    env.fake.route("GET", "/v1/lookup", |req, ctx| {
        ctx.lookup_not_found(req).delay(Duration::from_millis(800))
    });
    let (m1, m2) = (ironic::random_mac(), ironic::random_mac());
    let n = 20;
    let barrier = Arc::new(Barrier::new(n));
    let addr = env.gw.addr();
    let t0 = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let b = barrier.clone();
            let q = if i % 2 == 0 {
                format!("{m1},{m2}")
            } else {
                format!("{},{}", m2.to_uppercase(), m1)
            };
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                b.wait();
                c.send(&lookup(&q))
            })
        })
        .collect();
    let answers: Vec<Response> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let elapsed = t0.elapsed();
    for r in &answers {
        assert_ironic_error(r, 404, NOT_FOUND, MAX, "1.62");
    }
    assert_eq!(
        env.fake.lookups(),
        1,
        "{n} identical lookups must make one upstream request"
    );
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
}

#[test]
fn lookup_200_is_passed_through_and_never_stored() {
    let env = Env::start();
    let mac = ironic::random_mac();
    let uuid = ironic::random_uuid();
    let (t1, t2) = (ironic::random_token(), ironic::random_token());
    let answers: Vec<Answer> = vec![
        {
            let (u, t) = (uuid.clone(), t1.clone());
            Box::new(move |req, ctx| {
                ctx.lookup_ok(req, &u, Some(&t))
                    .header("X-Custom-Answer", "first")
            })
        },
        {
            let u = uuid.clone();
            Box::new(move |req, ctx| ctx.lookup_ok(req, &u, Some("******")))
        },
        {
            let (u, t) = (uuid.clone(), t2.clone());
            Box::new(move |req, ctx| ctx.lookup_ok(req, &u, Some(&t)))
        },
        Box::new(|req, ctx| ctx.error(req, 503, ironic::UNAVAILABLE)),
    ];
    env.fake.route_seq("GET", "/v1/lookup", answers);
    let url = env.fake.url();

    // First boot: the raw token, byte for byte, with Ironic's headers.
    let r = env.send(&lookup(&mac));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), ironic::lookup_body(&uuid, Some(&t1), &url));
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.header("X-Custom-Answer"), Some("first"));
    assert_eq!(r.versions(), (Some("1.1"), Some(MAX), Some("1.62")));
    assert!(r.header("x-openstack-request-id").is_some());
    assert_eq!(env.fake.lookups(), 1);

    // Ironic itself says "******": passed through (it is Ironic's answer to this request).
    let r = env.send(&lookup(&mac));
    assert_eq!(r.text(), ironic::lookup_body(&uuid, Some("******"), &url));
    assert_eq!(env.fake.lookups(), 2);

    // After a reboot Ironic mints a new token: the agent must get it, not a stored answer.
    let r = env.send(&lookup(&mac));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["config"]["agent_token"], serde_json::json!(t2));
    assert_eq!(env.fake.lookups(), 3);

    // Ironic failing: the agent sees the failure, never a remembered 200.
    for i in 0..2 {
        let r = env.send(&lookup(&mac));
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(!r.text().contains("agent_token"));
        assert_eq!(env.fake.lookups(), 4 + i, "a 503 must not be cached");
    }
}

#[test]
fn below_1_62_the_raw_stored_token_is_never_returned() {
    let env = Env::start();
    let mini = MiniIronic::install(&env.fake);
    let mac = ironic::random_mac();
    let uuid = mini.add_node(&[&mac]);
    // 1.62: the token is minted and handed out once.
    let r = env.send(&lookup(&mac));
    assert_eq!(r.status, 200);
    let token = mini.node(&uuid).unwrap().token.unwrap();
    assert_eq!(r.json()["config"]["agent_token"], serde_json::json!(token));

    // Below 1.62 Ironic returns the stored raw token (spec 1.2 step 11): the gateway must not.
    for v in ["1.22", "1.31", "1.61"] {
        let before = env.fake.lookups();
        let r = env.send(&Request::get(&format!("/v1/lookup?addresses={mac}")).version(v));
        assert_eq!(r.status, 200, "{v}: {}", r.text());
        assert_eq!(
            env.fake.lookups(),
            before + 1,
            "{v}: the lookup goes to Ironic"
        );
        assert!(
            !r.text().contains(&token),
            "{v}: raw token leaked: {}",
            r.text()
        );
        let mut got = r.json();
        let t = got["config"]["agent_token"].clone();
        assert!(
            t.is_null() || t == serde_json::json!("******"),
            "{v}: agent_token {t}"
        );
        // Everything else is Ironic's answer unchanged.
        got["config"]["agent_token"] = serde_json::Value::Null;
        let want: serde_json::Value =
            serde_json::from_str(&ironic::lookup_body(&uuid, None, &env.fake.url())).unwrap();
        assert_eq!(got, want, "{v}");
        assert_eq!(r.header("X-OpenStack-Ironic-API-Version"), Some(v));
    }
}

#[test]
fn conflict_409_is_retried_until_success() {
    let env = Env::start();
    let mac = ironic::random_mac();
    let uuid = ironic::random_uuid();
    let token = ironic::random_token();
    let (u1, u2, u3, t3) = (uuid.clone(), uuid.clone(), uuid.clone(), token.clone());
    let answers: Vec<Answer> = vec![
        Box::new(move |req, ctx| ctx.locked(req, &u1)),
        Box::new(move |req, ctx| ctx.locked(req, &u2)),
        Box::new(move |req, ctx| ctx.lookup_ok(req, &u3, Some(&t3))),
    ];
    env.fake.route_seq("GET", "/v1/lookup", answers);
    let t0 = Instant::now();
    let r = env.send(&lookup(&mac));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        ironic::lookup_body(&uuid, Some(&token), &env.fake.url())
    );
    assert!(
        t0.elapsed() < Duration::from_millis(3000),
        "{:?}",
        t0.elapsed()
    );
    let seen = env.fake.requests_to("/v1/lookup");
    assert_eq!(seen.len(), 3, "two 409s then a 200");
    for s in &seen {
        assert_eq!(
            s.target,
            format!("/v1/lookup?addresses={mac}"),
            "retries resend the same request"
        );
        assert_eq!(s.header("X-OpenStack-Ironic-API-Version"), Some("1.62"));
    }
}

#[test]
fn conflict_409_exhausted_returns_ironic_409() {
    let env = Env::start(); // conflict_retries 3, conflict_budget_ms 2000
    let mac = ironic::random_mac();
    let uuid = ironic::random_uuid();
    let u = uuid.clone();
    env.fake
        .route("GET", "/v1/lookup", move |req, ctx| ctx.locked(req, &u));
    let t0 = Instant::now();
    let r = env.send(&lookup(&mac));
    let elapsed = t0.elapsed();
    assert_ironic_error(
        &r,
        409,
        &ironic::locked_message(&uuid, "conductor-1"),
        MAX,
        "1.62",
    );
    let n = env.fake.lookups();
    assert!(
        (2..=4).contains(&n),
        "upstream saw {n} lookups (1 + up to 3 retries)"
    );
    assert!(
        elapsed < Duration::from_millis(3500),
        "{elapsed:?} exceeds the 2 s budget"
    );
    // A 409 is not a negative answer: the next lookup goes upstream again.
    let _ = env.send(&lookup(&mac));
    assert!(env.fake.lookups() > n);
}

#[test]
fn forwarded_lookup_is_the_agents_request_unchanged() {
    let env = Env::start();
    let target = "/v1/lookup?addresses=52%3A54%3A00%3AAA%3Abb%3Acc%2C52%3A54%3A00%3A11%3A22%3A33";
    let r = env.send(
        &Request::get(target)
            .version("1.62")
            .header("Accept", "application/json")
            .header("Content-Type", "application/json")
            .header("User-Agent", "python-requests/2.32.3")
            .header(
                "X-OpenStack-Request-ID",
                "req-0a0b0c0d-1111-2222-3333-444455556666",
            ),
    );
    assert_eq!(r.status, 404);
    let seen = env.fake.requests_to("/v1/lookup");
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, "GET");
    assert_eq!(
        s.target, target,
        "no parameter added, removed or re-encoded"
    );
    assert_eq!(s.header("X-OpenStack-Ironic-API-Version"), Some("1.62"));
    assert_eq!(s.header("User-Agent"), Some("python-requests/2.32.3"));
    assert_eq!(s.header("Accept"), Some("application/json"));
    assert_eq!(
        s.header("X-OpenStack-Request-ID"),
        Some("req-0a0b0c0d-1111-2222-3333-444455556666")
    );
    assert!(s.body.is_empty());
}

/// A lookup by `node_uuid` with more addresses than any agent sends (over 128) reaches Ironic
/// with its `node_uuid` alone: Ironic never reads the addresses then, so the answer is the
/// same (the conformance suite compares it with the real Ironic's). Otherwise the agent's
/// query goes as it is, a long list of MACs alone too.
#[test]
fn a_node_uuid_lookup_with_hundreds_of_addresses_reaches_ironic_with_its_node_uuid_alone() {
    let env = Env::start();
    let many = |n: usize| {
        (0..n)
            .map(|_| ironic::random_mac())
            .collect::<Vec<_>>()
            .join(",")
    };
    let sent = |target: &str| -> String {
        env.fake.clear_log();
        let r = env.send(
            &Request::get(target)
                .version("1.62")
                .header("Accept", "application/json"),
        );
        assert_ironic_error(&r, 404, NOT_FOUND, MAX, "1.62");
        let seen: Vec<Recorded> = env
            .fake
            .requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/v1/lookup"))
            .collect();
        assert_eq!(seen.len(), 1, "{} lookups reached Ironic", seen.len());
        assert_eq!(
            seen[0].header("X-OpenStack-Ironic-API-Version"),
            Some("1.62")
        );
        seen[0].target.clone()
    };
    let u = ironic::random_uuid();
    let target = format!("/v1/lookup?addresses={},zz,%20&node_uuid={u}", many(200));
    assert_eq!(sent(&target), format!("/v1/lookup?node_uuid={u}"));
    // Any accepted spelling, as Ironic decodes it; the path as the agent sent it.
    let u = ironic::random_uuid().replace('-', "");
    let target = format!("/v1/lookup/?node_uuid=%7B{u}%7D&addresses={}", many(200));
    assert_eq!(sent(&target), format!("/v1/lookup/?node_uuid=%7B{u}%7D"));
    let u = ironic::random_uuid();
    let target = format!("/v1/lookup?node_uuid=urn:uuid:{u}&addresses={}", many(200));
    assert_eq!(
        sent(&target),
        format!("/v1/lookup?node_uuid=urn%3Auuid%3A{u}")
    );
    // 128 addresses: as they are.
    let target = format!(
        "/v1/lookup?addresses={}&node_uuid={}",
        many(128),
        ironic::random_uuid()
    );
    assert_eq!(sent(&target), target);
    // MACs alone: every one decides (one of another node makes it a 404).
    let target = format!("/v1/lookup?addresses={}", many(300));
    assert_eq!(sent(&target), target);
}

#[test]
fn only_404_is_cached() {
    let env = Env::start();
    let mac = ironic::random_mac();
    env.fake.route("GET", "/v1/lookup", |req, ctx| {
        ctx.error(req, 400, "Invalid value of fast_track: maybe")
    });
    for i in 1..=3 {
        let r = env.send(&lookup(&mac));
        assert_ironic_error(&r, 400, "Invalid value of fast_track: maybe", MAX, "1.62");
        assert_eq!(env.fake.lookups(), i);
    }
    // A 404 from Ironic with another body is passed through as-is.
    env.fake.route("GET", "/v1/lookup", |_, _| {
        FakeResponse::new(404)
            .header("Content-Type", "text/plain")
            .body("nope")
    });
    let r = env.send(&lookup(&ironic::random_mac()));
    assert_eq!((r.status, r.text()), (404, "nope".to_string()));
}
