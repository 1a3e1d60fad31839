//! Hostile inputs through the real gateway: bodies and queries shaped to hit the worst case of
//! each parser (a 1 MiB form of distinct names, a JSON object of ~100k keys, duplicated keys,
//! tens of thousands of addresses) get Ironic's own answer, and the gateway keeps answering
//! cheap requests while such requests are in flight.
//!
//! No assertion here is on wall time: a client read timeout of a few seconds only detects a
//! worker that is stuck (the quadratic parsers took tens of seconds per request in a release
//! build, minutes in a debug one). A lookup's query is capped at about 64 KiB by the HTTP
//! stack, so the lookups here check Ironic's answer at that size; their cost per input size is
//! proven by the step-count tests of `src/ironic` instead.

mod common;

use common::ironic::{fault_body, framework_body, LOOKUP_NEEDS_ARGS};
use common::*;
use std::time::Duration;

/// How long a client waits for an answer before calling the gateway stuck. A linear parse of
/// 1 MiB takes well under a second of CPU in a debug build, but the test machines are shared
/// 2-core ones (a load of 12 was seen): generous, while the quadratic parsers needed minutes
/// per request in a debug build.
const PATIENCE: Duration = Duration::from_secs(20);

/// The largest heartbeat body the shipped conf reads (and Ironic's JSON limit).
const MIB: usize = 1024 * 1024;

/// Sends one request on a fresh connection and waits at most [`PATIENCE`] for the answer.
fn send_patiently(env: &Env, req: &Request) -> Response {
    let mut c = Client::connect(env.gw.addr());
    c.set_read_timeout(PATIENCE);
    c.try_send(req).unwrap_or_else(|e| {
        panic!(
            "{} {} (body {} bytes): no answer within {PATIENCE:?}: {e}",
            req.method,
            req.target,
            req.body.len()
        )
    })
}

/// `f0&f1&f2&...` up to `limit` bytes; returns the body and the names in order.
fn form_of_distinct_names(limit: usize) -> (Vec<u8>, Vec<String>) {
    let mut body = Vec::with_capacity(limit);
    let mut names = Vec::new();
    for i in 0.. {
        let name = format!("f{i}");
        if body.len() + name.len() + 1 > limit {
            break;
        }
        if i > 0 {
            body.push(b'&');
        }
        body.extend_from_slice(name.as_bytes());
        names.push(name);
    }
    (body, names)
}

/// `{"0":0,"1":0,...}` up to `limit` bytes; returns the body and the keys in order.
fn json_of_distinct_keys(limit: usize) -> (Vec<u8>, Vec<String>) {
    let mut body = b"{".to_vec();
    let mut keys = Vec::new();
    for i in 0.. {
        let entry = format!("\"{i}\":0");
        if body.len() + entry.len() + 2 > limit {
            break;
        }
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(entry.as_bytes());
        keys.push(i.to_string());
    }
    body.push(b'}');
    (body, keys)
}

fn hostile_form(node: &str, body: Vec<u8>) -> Request {
    Request::post(&format!("/v1/heartbeat/{node}"))
        .version("1.68")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
}

fn unexpected(names: &[String]) -> String {
    format!("Unexpected arguments: {}", names.join(", "))
}

#[test]
fn form_body_of_a_mebibyte_of_distinct_names_gets_ironics_400() {
    let env = Env::start();
    let node = ironic::random_uuid();
    let (body, names) = form_of_distinct_names(MIB);
    assert!(names.len() > 140_000, "{} names", names.len());
    let r = send_patiently(&env, &hostile_form(&node, body));
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), fault_body(400, &unexpected(&names)));
    assert_eq!(env.fake.heartbeats(), 0);
}

#[test]
fn json_object_of_a_hundred_thousand_keys_gets_ironics_400() {
    let env = Env::start();
    let node = ironic::random_uuid();
    let (body, keys) = json_of_distinct_keys(MIB);
    assert!(body.len() <= MIB);
    assert!(keys.len() > 100_000, "{} keys", keys.len());
    let req = Request::post(&format!("/v1/heartbeat/{node}"))
        .version("1.68")
        .header("Content-Type", "application/json")
        .body(body);
    let r = send_patiently(&env, &req);
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), fault_body(400, &unexpected(&keys)));
    assert_eq!(env.fake.heartbeats(), 0);
}

/// Python's `dict` keeps a duplicated key at its first position with its last value: the
/// message that prints the nested object shows exactly that.
#[test]
fn json_of_duplicated_keys_keeps_first_position_and_last_value() {
    let env = Env::start();
    let node = ironic::random_uuid();
    let n = 40_000;
    let mut inner: Vec<String> = (0..n).map(|i| format!("\"{i}\":0")).collect();
    inner.extend((0..n).rev().map(|i| format!("\"{i}\":1")));
    let body = format!(
        "{{\"callback_url\": \"https://10.0.0.5:9999\", \"agent_token\": {{{}}}}}",
        inner.join(",")
    );
    assert!(body.len() <= MIB, "{} bytes", body.len());
    let req = Request::post(&format!("/v1/heartbeat/{node}"))
        .version("1.68")
        .json_body(&body);
    let r = send_patiently(&env, &req);
    assert_eq!(r.status, 400);
    let shown: Vec<String> = (0..n).map(|i| format!("'{i}': 1")).collect();
    let message = format!("Expected string for agent_token: {{{}}}", shown.join(", "));
    assert_eq!(r.text(), fault_body(400, &message));
    assert_eq!(env.fake.heartbeats(), 0);
}

/// The longest request target the gateway's HTTP stack takes (`http::Uri` refuses 65,534
/// bytes and more, before the gateway sees the request): lookups are as hostile as that allows.
const MAX_TARGET: usize = 65_000;

/// Joins `items` with `sep` after `prefix`, as many as fit in [`MAX_TARGET`]; returns the
/// target and how many items it holds.
fn longest_target(prefix: &str, items: &[String], sep: &str) -> (String, usize) {
    let mut target = prefix.to_string();
    let mut n = 0;
    for item in items {
        let extra = if n == 0 { 0 } else { sep.len() };
        if target.len() + extra + item.len() > MAX_TARGET {
            break;
        }
        if n > 0 {
            target.push_str(sep);
        }
        target.push_str(item);
        n += 1;
    }
    (target, n)
}

/// `n` distinct MAC-shaped strings; `valid` picks real MACs, else one hex digit too many.
fn distinct_macs(n: usize, valid: bool) -> Vec<String> {
    (0..n)
        .map(|i| {
            let b = (i as u64).to_be_bytes();
            let mac = format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", b[4], b[5], b[6], b[7]);
            if valid {
                mac
            } else {
                format!("{mac}0")
            }
        })
        .collect()
}

#[test]
fn lookup_of_thousands_of_invalid_addresses_gets_ironics_400() {
    let env = Env::start();
    let macs = distinct_macs(10_000, false);
    let (target, n) = longest_target("/v1/lookup?addresses=", &macs, ",");
    assert!(n > 3000, "{n} addresses");
    let r = send_patiently(&env, &Request::get(&target).version("1.62"));
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), fault_body(400, LOOKUP_NEEDS_ARGS));
    assert_eq!(env.fake.lookups(), 0);
}

#[test]
fn lookup_of_thousands_of_valid_addresses_gets_ironics_answer() {
    let env = Env::start();
    let macs = distinct_macs(10_000, true);
    let (target, n) = longest_target("/v1/lookup?addresses=", &macs, ",");
    assert!(n > 3000, "{n} addresses");
    let r = send_patiently(&env, &Request::get(&target).version("1.62"));
    // The fake Ironic knows no node: its 404 is relayed.
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.faultstring().as_deref(), Some(ironic::NOT_FOUND));
    assert_eq!(env.fake.lookups(), 1);
}

#[test]
fn lookup_of_ten_thousand_unknown_parameters_gets_ironics_400() {
    let env = Env::start();
    let names: Vec<String> = (0..20_000).map(|i| format!("p{i}")).collect();
    let (target, n) = longest_target("/v1/lookup?", &names, "&");
    assert!(n > 10_000, "{n} names");
    let r = send_patiently(&env, &Request::get(&target).version("1.62"));
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), fault_body(400, &unexpected(&names[..n])));
    assert_eq!(env.fake.lookups(), 0);
}

/// Two hostile bodies are written, and the gateway has had a moment to start on them, before
/// a cheap request is sent: the cheap one is answered, and so are the hostile ones. (The
/// gateway under test runs 2 worker threads: two stuck requests stopped it entirely.)
#[test]
fn cheap_request_is_answered_while_two_hostile_ones_are_in_flight() {
    let env = Env::start();
    let node = ironic::random_uuid();
    let (form, names) = form_of_distinct_names(MIB);
    let (json, keys) = json_of_distinct_keys(MIB);
    let host = env.gw.addr().to_string();
    let hostile = [
        hostile_form(&node, form),
        Request::post(&format!("/v1/heartbeat/{node}"))
            .version("1.68")
            .header("Content-Type", "application/json")
            .body(json),
    ];
    let mut in_flight: Vec<Client> = hostile
        .iter()
        .map(|req| {
            let mut c = Client::connect(env.gw.addr());
            c.set_read_timeout(PATIENCE);
            c.write_raw(&req.to_bytes(&host)).unwrap();
            c
        })
        .collect();
    // Written is not yet read: loopback socket buffers hold a mebibyte. A pause (not an
    // assertion) lets the gateway read both bodies and start on them before the cheap request.
    std::thread::sleep(Duration::from_secs(1));

    let cheap = Request::get("/v1/lookup?addresses=zz").version("1.62");
    let r = send_patiently(&env, &cheap);
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), fault_body(400, LOOKUP_NEEDS_ARGS));

    let expected = [unexpected(&names), unexpected(&keys)];
    for (c, message) in in_flight.iter_mut().zip(expected) {
        let r = c
            .read_response(false)
            .unwrap_or_else(|e| panic!("hostile request: no answer within {PATIENCE:?}: {e}"));
        assert_eq!(r.status, 400);
        assert_eq!(r.text(), fault_body(400, &message));
    }
}

/// Python's `int()` refuses more than 4,300 digits (`ValueError`, CPython 3.11): a version
/// header with a longer number is Ironic's "Invalid value" 406, without version headers,
/// not the "minor version is not supported" one.
#[test]
fn version_of_more_than_4300_digits_gets_ironics_invalid_value_406() {
    let env = Env::start();
    let invalid = framework_body(
        406,
        "Not Acceptable",
        "Invalid value for X-OpenStack-Ironic-API-Version header",
    );
    for v in [
        format!("1.{}", "1".repeat(4301)),
        format!("1.{}", "0".repeat(4301)),
        format!("{}.5", "0".repeat(4301)),
    ] {
        for (name, value) in [
            ("X-OpenStack-Ironic-API-Version", v.clone()),
            ("OpenStack-API-Version", format!("baremetal {v}")),
        ] {
            let req = Request::get("/v1/lookup?addresses=52:54:00:12:34:56").header(name, &value);
            let r = send_patiently(&env, &req);
            assert_eq!(r.status, 406, "{name}: {}", r.text());
            assert_eq!(r.text(), invalid, "{name}");
            assert_eq!(r.versions(), (None, None, None), "{name}");
        }
    }
    // 4,300 digits are still a number (underscores and leading zeros as Python counts them).
    let r = send_patiently(
        &env,
        &Request::get("/v1/lookup?addresses=zz").version(&format!("1.{}22", "0".repeat(4298))),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.text(), fault_body(400, LOOKUP_NEEDS_ARGS));
}
