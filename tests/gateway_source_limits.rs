//! Per-source limits on the agent routes: one source flooding lookups or unverifiable
//! heartbeats gets Ironic's error shape with 429 past its limits, so Ironic sees no more than
//! the limits let through; a verified heartbeat is still accepted; other sources are untouched.

mod common;

use common::{Env, FakeIronic, FakeResponse, MiniIronic, Request, Response};
use std::time::Duration;

const TOO_MANY: &str = "Too many requests from this source, please retry later.";

fn limits(cfg: &mut common::GatewayConfig, per_second: u32, in_flight: u32) {
    cfg.set(
        "ironic_edge.limits.per_source_requests_per_second",
        per_second,
    )
    .set("ironic_edge.limits.per_source_in_flight", in_flight);
}

fn over_limit_count(env: &Env) -> f64 {
    env.gw
        .metric("ironic_edge_requests_total", &[("outcome", "over_limit")])
        .unwrap_or(0.0)
}

fn is_too_many(r: &Response) -> bool {
    r.status == 429 && r.faultstring().as_deref() == Some(TOO_MANY)
}

/// `threads` clients each send `each` requests made by `make(thread, i)`; all answers.
fn flood(
    env: &Env,
    threads: usize,
    each: usize,
    make: impl Fn(usize, usize) -> Request + Sync,
) -> Vec<Response> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let make = &make;
                s.spawn(move || (0..each).map(|i| env.send(&make(t, i))).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

#[test]
fn a_source_flooding_lookups_gets_429_past_its_rate_and_ironic_sees_the_rest_only() {
    let env = Env::start_with(|c| limits(c, 5, 0));
    let before = over_limit_count(&env);
    let answers = flood(&env, 6, 10, |t, i| {
        common::lookup(&format!("52:54:0c:00:{t:02x}:{i:02x}"))
    });
    let refused = answers.iter().filter(|r| is_too_many(r)).count();
    let others: Vec<_> = answers.iter().filter(|r| r.status != 429).collect();
    assert!(
        refused >= 1,
        "60 lookups at once from one source, none refused"
    );
    for r in &others {
        assert_eq!(r.status, 404, "a lookup within the limit: {}", r.text());
    }
    assert_eq!(refused + others.len(), 60, "every 429 is the edge's own");
    assert_eq!(
        env.fake.lookups(),
        others.len(),
        "Ironic saw exactly the lookups within the limit"
    );
    assert_eq!(over_limit_count(&env) - before, refused as f64);
}

#[test]
fn requests_in_flight_per_source_are_capped() {
    let fake = FakeIronic::start();
    fake.route("GET", "/v1/lookup", |req, ctx| {
        ctx.lookup_not_found(req).delay(Duration::from_millis(800))
    });
    let env = Env::start_with_fake(fake, |c| limits(c, 0, 2));
    let answers = flood(&env, 6, 1, |t, _| {
        common::lookup(&format!("52:54:0c:01:00:{t:02x}"))
    });
    let refused = answers.iter().filter(|r| is_too_many(r)).count();
    assert!(
        refused >= 1,
        "six slow lookups at once, two allowed in flight"
    );
    assert_eq!(
        env.fake.lookups(),
        6 - refused,
        "the refused never reached Ironic, the others did"
    );
    // Once they are answered the source has its places back.
    let r = env.send(&common::lookup("52:54:0c:01:01:01"));
    assert_eq!(r.status, 404, "{}", r.text());
}

fn heartbeat(uuid: &str, token: &str, n: usize) -> Request {
    common::versioned_heartbeat(uuid, token, &format!("13.0.{n}"))
}

#[test]
fn a_verified_heartbeat_over_the_limit_is_still_accepted_and_an_unverified_one_is_not() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    let mac = "52:54:0c:02:00:01";
    let uuid = mini.add_node(&[mac]);
    let env = Env::start_with_fake(fake, |c| {
        limits(c, 2, 0);
        c.with_seal_key()
            .set("ironic_edge.heartbeat.relay_when_upstream_fails", true);
    });
    let token = common::minted_token(&env, mac);
    let answers = flood(&env, 4, 5, |t, i| heartbeat(&uuid, &token, t * 10 + i));
    for r in &answers {
        assert_eq!(
            (r.status, r.text()),
            (202, String::new()),
            "a verified heartbeat, however often"
        );
    }
    assert!(
        over_limit_count(&env) >= 1.0,
        "20 heartbeats at once were over a limit of 2 a second"
    );
    let wrong = flood(&env, 4, 2, |t, i| {
        heartbeat(&uuid, "not-the-token", t * 10 + i)
    });
    assert!(
        wrong.iter().any(is_too_many),
        "unverified heartbeats over the limit: {:?}",
        wrong.iter().map(|r| r.status).collect::<Vec<_>>()
    );
}

#[test]
fn behind_a_trusted_proxy_each_client_has_its_own_limit() {
    let fake = FakeIronic::start();
    fake.route("GET", "/v1/lookup", |req, ctx| -> FakeResponse {
        ctx.lookup_not_found(req)
    });
    let env = Env::start_with_fake(fake, |c| {
        limits(c, 3, 0);
        c.set("ironic_edge.trusted_proxies", vec!["127.0.0.1"]);
    });
    let from = |client: &str, i: usize| {
        common::lookup(&format!("52:54:0c:03:00:{i:02x}")).header("X-Forwarded-For", client)
    };
    let flooding = flood(&env, 4, 6, |_, i| from("10.1.0.7", i));
    assert!(flooding.iter().any(is_too_many));
    let quiet = env.send(&from("10.1.0.8", 99));
    assert_eq!(quiet.status, 404, "another client: {}", quiet.text());
}
