//! Issue 3, part 2: the differential conformance suite.
//!
//! Every case is one request, sent once straight to the real Ironic 39.0.0 and once through
//! the gateway fronting that same Ironic; the two answers must agree (status, header set,
//! version headers, `Content-Type`, `Content-Length`, `Allow`, `Server`, request-id shape,
//! body as JSON and byte for byte). The few legitimate differences are normalised, each for a
//! written reason: see `engine::NORMALISATIONS` (printed with the summary). Each case also
//! states how the gateway must produce its answer — locally, forwarded by the agent plugin,
//! or proxied like any other route — which is checked on the gateway's ops metrics (request
//! counters by route and outcome, and its upstream request counter).
//!
//! Normalisations (details and reasons in `engine::NORMALISATIONS`, printed with the summary):
//! - `request-id`: fresh `req-<uuid>` per answer on both sides; compared by shape only;
//! - `date`: the time of each answer; compared by presence only;
//! - `hop-by-hop`: `Connection`/`Keep-Alive` belong to each connection; ignored;
//! - `links-host`: Ironic builds `links` from the request's `Host` (its own address directly,
//!   the gateway's through it); both become `http://HOST`, lengths compared after that;
//! - `minted-token`: only the first lookup after a wipe gets the raw token, so such cases go
//!   through the gateway first (raw, 43 characters checked) and to Ironic second (`"******"`);
//! - `unexpected-arguments-order`: Ironic joins a Python set (hash-seed order); sorted.
//!
//! Groups (each its own Ironic + Redis + gateway, so they run in parallel; every node a case
//! needs is seeded before the gateway starts):
//! - `lookup_versions_and_routing`: spec sections 1, 3 and 4 for `GET /v1/lookup`, `GET /`,
//!   `GET /v1`, aliases and wrong methods, every version-header form;
//! - `heartbeat_parameters_and_gates`: spec section 2 (and 3, 4 for heartbeats);
//! - `heartbeat_http_callbacks_without_require_tls`: `[agent]require_tls = false`;
//! - `negative_cache`: refused lookups reach Ironic once, then come from the edge (node index
//!   off, when the gateway has one);
//! - `concurrent_lookups`: identical lookups in flight share one upstream answer;
//! - `deliberate_deviations`: the README's deviations, each pinned;
//! - divergences this suite found and that were fixed, each kept as a test: `Accept` other
//!   than JSON, large non-JSON heartbeat bodies, lookup alias paths below 1.62, a power off
//!   made straight on Ironic (index on), a node enrolled straight on Ironic (the staleness
//!   bound, a deliberate deviation);
//! - `accept_as_webob_decides_and_no_stored_token_below_1_62` (issue 8): the measured `Accept`
//!   table (spec section 9) at 1.62 and with bad versions, `/v1//lookup`, `_method`, HEAD,
//!   vendor passthru; below 1.62 every `Accept` and path spelling gets Ironic's answer with
//!   the stored token replaced by null;
//! - `known_difference_*` (ignored): an accepted difference, listed in the README; run it with
//!   `cargo test --test conformance -- --ignored`.
//!
//! Shadow mode (issue 11): the lookup, heartbeat, `require_tls=false` and negative-cache groups
//! start with `Stack::start_shadowed`: a second gateway in `mode: shadow` (its own Redis, the
//! node index on) in front of the same Ironic. Every agent case is sent through it after its
//! other sends; its status must be Ironic's, it must have compared every one, and the group
//! fails on any `ironic_edge_shadow_total{verdict="mismatch"}` (documented deviations count
//! as `deviation`). One summary line per group gives its counts by rule and verdict.
//!
//! The suite prints (to the real stderr, also when it passes) one summary line per group and
//! a running total: cases, answers compared, how many were answered locally, and how often
//! each normalisation was needed.

mod common;
mod peer;

#[path = "conformance/engine.rs"]
mod engine;

use common::{http, Request};
use engine::{case, Diff, Stack, Via::*};

const CB: &str = "https://127.0.0.1:9999";
const UNKNOWN_UUID: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

/// A lookup as IPA sends it (`Accept` and `Content-Type: application/json`), no version.
fn lookup(query: &str) -> Request {
    let target = if query.is_empty() {
        "/v1/lookup".to_string()
    } else {
        format!("/v1/lookup?{query}")
    };
    Request::get(&target)
        .header("Accept", "application/json")
        .header("Content-Type", "application/json")
}

fn lookup_at(query: &str, v: &str) -> Request {
    lookup(query).version(v)
}

/// MACs never seeded (the seeder's unknown MACs are 52:54:fe:…; these are 52:54:fd:…).
fn unknown_mac(n: u8) -> String {
    format!("52:54:fd:00:00:{n:02x}")
}

/// A heartbeat: `ident`, version header (if any), `Content-Type` (if any), query, body.
fn hb(ident: &str, v: Option<&str>, ct: Option<&str>, query: &str, body: &str) -> Request {
    let mut r = Request::post(&format!("/v1/heartbeat/{ident}{query}"))
        .header("Accept", "application/json");
    if let Some(v) = v {
        r = r.version(v);
    }
    if let Some(ct) = ct {
        r = r.header("Content-Type", ct);
    }
    r.body(body.as_bytes().to_vec())
}

/// A JSON heartbeat at version `v`.
fn hb_json(ident: &str, v: &str, body: &str) -> Request {
    hb(ident, Some(v), Some("application/json"), "", body)
}

/// IPA's heartbeat body (callback URL, token, version).
fn ipa_body(token: &str) -> String {
    format!(r#"{{"callback_url": "{CB}", "agent_token": "{token}", "agent_version": "13.0.0"}}"#)
}

/// The raw token a minting lookup relayed through the gateway.
fn minted(out: &engine::Outcome) -> String {
    let t = out.gateway[0].json()["config"]["agent_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        engine::is_raw_token(&t),
        "no raw token minted: {}",
        engine::describe(&out.gateway[0])
    );
    t
}

#[test]
fn lookup_versions_and_routing() {
    engine::print_normalisations();
    let (s, extra) = Stack::start_shadowed(
        engine::peer(8, 2, true),
        &[(1, "enroll-no-fasttrack", 1), (1, "clean-wait", 1)],
        |_| {},
    );
    let (enroll, clean_wait) = (extra[0].clone(), extra[1].clone());
    let n = s.ironic.nodes.clone();
    let mac = |i: usize, p: usize| n[i].macs[p].clone();
    let mut d = Diff::new(&s, "lookup");

    // --- GET /, GET /v1, unknown paths (section 3) -----------------------------------------
    let get = Request::get;
    // IPA's version discovery is answered at the edge from the root document learnt from
    // Ironic (links from the request's Host, Ironic's negotiation and headers).
    d.run(case(
        "GET / without a version header (IPA's version discovery)",
        get("/"),
        Local,
    ));
    d.run(case("GET / at latest", get("/").version("latest"), Local));
    d.run(case("GET / at 1.62", get("/").version("1.62"), Local));
    d.run(case(
        "GET / with a malformed version header",
        get("/").version("abc"),
        Local,
    ));
    d.run(case(
        "GET / at an unsupported minor version",
        get("/").version("1.999"),
        Local,
    ));
    d.run(case("GET / with a query string", get("/?a=b"), Proxied));
    d.run(case("HEAD /", Request::new("HEAD", "/"), Proxied));
    // `GET /v1` is answered at the edge too, from the v1 document learnt for each negotiated
    // version (a first request at a version is forwarded and has it learnt).
    for v in [None, Some("1.21"), Some("1.62"), Some("latest")] {
        let req = match v {
            Some(v) => get("/v1").version(v),
            None => get("/v1"),
        };
        d.warm_until_local(&req);
    }
    d.run(case("GET /v1", get("/v1"), Local));
    d.run(case("GET /v1/", get("/v1/"), Local));
    d.run(case(
        "GET /v1 at 1.21: no lookup/heartbeat links",
        get("/v1").version("1.21"),
        Local,
    ));
    d.run(case(
        "GET /v1 at 1.62: lookup and heartbeat links",
        get("/v1").version("1.62"),
        Local,
    ));
    d.run(case(
        "GET /v1 at latest",
        get("/v1").version("latest"),
        Local,
    ));
    d.run(case(
        "GET /v1 at a version not asked for yet: forwarded",
        get("/v1").version("1.30"),
        Proxied,
    ));
    d.run(case(
        "GET /v1 with a malformed version header",
        get("/v1").version("abc"),
        Proxied,
    ));
    d.run(case("GET /v1 with a query string", get("/v1?a=b"), Proxied));
    d.run(case("GET /nope: unknown path", get("/nope"), Proxied));
    d.run(case("POST /v1: 405", Request::post("/v1"), Proxied));

    // --- the token is minted once; every version-header form (sections 1.1, 1.5, 3) --------
    let both = format!("addresses={},{}", mac(0, 0), mac(0, 1));
    d.run(
        case(
            "lookup by both MACs of a node: the first lookup mints the token",
            lookup_at(&both, "1.62"),
            Forwarded,
        )
        .mints(),
    );
    d.run(case(
        "the same lookup again: the token is masked",
        lookup_at(&both, "1.62"),
        Forwarded,
    ));
    d.run(case("no version header (1.1): 404", lookup(&both), Local));
    d.run(case(
        "version latest",
        lookup_at(&both, "latest"),
        Forwarded,
    ));
    d.run(case(
        "version Latest (any case)",
        lookup_at(&both, "Latest"),
        Forwarded,
    ));
    d.run(case(
        "OpenStack-API-Version: baremetal 1.62",
        lookup(&both).header("OpenStack-API-Version", "baremetal 1.62"),
        Forwarded,
    ));
    d.run(case(
        "OpenStack-API-Version: baremetal latest",
        lookup(&both).header("OpenStack-API-Version", "baremetal latest"),
        Forwarded,
    ));
    d.run(case(
        "both headers: OpenStack-API-Version 1.62 wins over X-…-Version 1.1",
        lookup_at(&both, "1.1").header("OpenStack-API-Version", "baremetal 1.62"),
        Forwarded,
    ));
    d.run(case(
        "both headers: OpenStack-API-Version 1.21 wins over X-…-Version 1.62",
        lookup_at(&both, "1.62").header("OpenStack-API-Version", "baremetal 1.21"),
        Local,
    ));
    d.run(case(
        "OpenStack-API-Version for another service is ignored (1.1)",
        lookup(&both).header("OpenStack-API-Version", "compute 1.62"),
        Local,
    ));
    d.run(case(
        "OpenStack-API-Version: baremetal abc",
        lookup(&both).header("OpenStack-API-Version", "baremetal abc"),
        Local,
    ));
    d.run(case(
        "malformed version abc: 406 without min/max",
        lookup_at(&both, "abc"),
        Local,
    ));
    d.run(case("malformed version 1", lookup_at(&both, "1"), Local));
    d.run(case(
        "malformed version 1.2.3",
        lookup_at(&both, "1.2.3"),
        Local,
    ));
    d.run(case(
        "malformed version 1.62_",
        lookup_at(&both, "1.62_"),
        Local,
    ));
    d.run(case(
        "out of range 1.999: 406 with min/max",
        lookup_at(&both, "1.999"),
        Local,
    ));
    d.run(case(
        "out of range 1.116 (max + 1)",
        lookup_at(&both, "1.116"),
        Local,
    ));
    d.run(case(
        "out of range 1.0 (below min)",
        lookup_at(&both, "1.0"),
        Local,
    ));
    d.run(case(
        "major 2: mutually exclusive versions",
        lookup_at(&both, "2.1"),
        Local,
    ));
    d.run(case(
        "major 0: mutually exclusive versions",
        lookup_at(&both, "0.9"),
        Local,
    ));
    d.run(case(
        "1.115 (the maximum)",
        lookup_at(&both, "1.115"),
        Forwarded,
    ));
    d.run(case(
        "1.21: below the ramdisk endpoints, 404",
        lookup_at(&both, "1.21"),
        Local,
    ));
    d.run(case(
        "1.062 is 1.62 (integer minor)",
        lookup_at(&both, "1.062"),
        Forwarded,
    ));
    let fresh = format!("addresses={}", mac(7, 0));
    d.run(case(
        "1.22 on a node without a token: agent_token null",
        lookup_at(&fresh, "1.22"),
        Forwarded,
    ));
    d.run(case(
        "1.61 on a node without a token: no RPC, agent_token null",
        lookup_at(&fresh, "1.61"),
        Forwarded,
    ));

    // --- parameters (section 1.2) -----------------------------------------------------------
    let (m00, m01, m20) = (mac(0, 0), mac(0, 1), mac(2, 0));
    let u = |n: u8| unknown_mac(n);
    let v62 = |q: String| lookup_at(&q, "1.62");
    d.run(case(
        "one MAC, upper case",
        v62(format!("addresses={}", m00.to_uppercase())),
        Forwarded,
    ));
    d.run(case(
        "blanks around MACs and an empty item are dropped",
        v62(format!("addresses=%20{m00}%20,,%09{m01}")),
        Forwarded,
    ));
    d.run(case(
        "a single value with a trailing newline is stripped",
        v62(format!("addresses={m00}%0A")),
        Forwarded,
    ));
    d.run(case(
        "the same MAC twice",
        v62(format!("addresses={m00},{m00}")),
        Forwarded,
    ));
    d.run(case(
        "a dash-separated MAC is dropped, the valid one used",
        v62(format!("addresses=52-54-00-00-00-01,{m01}")),
        Forwarded,
    ));
    d.run(case(
        "only a dash-separated MAC: no usable MAC",
        v62("addresses=52-54-00-00-00-01".into()),
        Local,
    ));
    d.run(case(
        "a bare 12-digit MAC is invalid",
        v62("addresses=525400000001".into()),
        Local,
    ));
    d.run(case(
        "a 20-octet InfiniBand GID is invalid",
        v62("addresses=80:00:02:08:fe:80:00:00:00:00:00:00:00:02:c9:03:00:a0:1c:e1".into()),
        Local,
    ));
    d.run(case("addresses= (empty)", v62("addresses=".into()), Local));
    d.run(case("addresses=meow", v62("addresses=meow".into()), Local));
    d.run(case("no parameters at all", v62(String::new()), Local));
    d.run(case(
        "addresses repeated: each value kept as given",
        v62(format!("addresses={m00}&addresses={m01}")),
        Forwarded,
    ));
    d.run(case(
        "addresses repeated: a comma list as one value is one invalid MAC",
        v62(format!("addresses={m00},{m01}&addresses={}", u(1))),
        Miss,
    ));
    d.run(case(
        "addresses repeated: blanks are not stripped",
        v62(format!("addresses=%20{m00}&addresses={}", u(2))),
        Miss,
    ));
    d.run(case(
        "addresses repeated: a trailing newline passes the MAC check but matches no port",
        v62(format!("addresses={m00}%0A&addresses=x")),
        Miss,
    ));
    d.run(
        case(
            "an unknown MAC: 404, then again from the edge",
            v62(format!("addresses={}", u(3))),
            Miss,
        )
        .then(Local),
    );
    d.run(case(
        "the same unknown MAC in upper case and twice: same normalised key",
        v62(format!("addresses={},{}", u(3).to_uppercase(), u(3))),
        Local,
    ));
    d.run(case(
        "the same unknown MAC at latest: the local 404 carries the request's version",
        lookup_at(&format!("addresses={}", u(3)), "latest"),
        Local,
    ));
    d.run(case(
        "the same unknown MAC with an unknown parameter: the argument check comes first",
        v62(format!("addresses={}&foo=1", u(3))),
        Local,
    ));
    d.run(case(
        "the same unknown MAC without a version: 404 for the version",
        lookup(&format!("addresses={}", u(3))),
        Local,
    ));
    d.run(
        case(
            "a known MAC and an unknown one: any match is enough (mints)",
            v62(format!("addresses={},{}", u(4), mac(1, 0))),
            Forwarded,
        )
        .mints(),
    );
    d.run(
        case(
            "MACs of two nodes: 404, then again from the edge",
            v62(format!("addresses={m00},{m20}")),
            Miss,
        )
        .then(Local),
    );
    d.run(case(
        "by node_uuid only",
        v62(format!("node_uuid={}", n[0].uuid)),
        Forwarded,
    ));
    d.run(case(
        "by node_uuid and the node's own MACs",
        v62(format!("addresses={m00}&node_uuid={}", n[0].uuid)),
        Forwarded,
    ));
    d.run(case(
        "node_uuid wins over another node's MACs",
        v62(format!("addresses={m20}&node_uuid={}", n[0].uuid)),
        Forwarded,
    ));
    d.run(case(
        "node_uuid with only invalid MACs",
        v62(format!("addresses=meow&node_uuid={}", n[0].uuid)),
        Forwarded,
    ));
    // More addresses than any agent sends, with a node_uuid: Ironic is asked with the
    // node_uuid alone (it never reads the addresses then), and answers the same.
    let many: Vec<String> = (0..=255u8)
        .map(unknown_mac)
        .chain((0..100).map(|i| format!("junk{i}")))
        .collect();
    let many = many.join(",");
    d.run(case(
        "node_uuid with 357 addresses (no node's, invalid, another node's): node_uuid alone sent",
        v62(format!("addresses={many},{m20}&node_uuid={}", n[0].uuid)),
        Forwarded,
    ));
    d.run(case(
        "node_uuid in braces without hyphens and 356 addresses: valid, 404",
        v62(format!(
            "node_uuid=%7B{}%7D&addresses={many}",
            n[0].uuid.replace('-', "")
        )),
        Forwarded,
    ));
    d.run(
        case(
            "an unknown node_uuid with a valid MAC: no fallback, 404, then again from the edge",
            v62(format!("addresses={m00}&node_uuid={UNKNOWN_UUID}")),
            Miss,
        )
        .then(Local),
    );
    d.run(
        case(
            "node_uuid in upper case is matched verbatim: 404",
            v62(format!("node_uuid={}", n[0].uuid.to_uppercase())),
            Forwarded,
        )
        .then(Local),
    );
    d.run(case(
        "node_uuid without hyphens: valid, 404",
        v62(format!("node_uuid={}", n[0].uuid.replace('-', ""))),
        Forwarded,
    ));
    d.run(case(
        "node_uuid in braces: valid, 404",
        v62(format!("node_uuid=%7B{}%7D", n[0].uuid)),
        Forwarded,
    ));
    d.run(case(
        "node_uuid as urn:uuid: valid, 404",
        v62(format!("node_uuid=urn:uuid:{}", n[0].uuid)),
        Forwarded,
    ));
    d.run(case("node_uuid=abc", v62("node_uuid=abc".into()), Local));
    d.run(case("node_uuid= (empty)", v62("node_uuid=".into()), Local));
    d.run(case(
        "node_uuid repeated: a list",
        v62(format!("node_uuid={}&node_uuid={}", n[0].uuid, n[1].uuid)),
        Local,
    ));
    d.run(case(
        "an unknown parameter",
        v62(format!("addresses={m00}&foo=1")),
        Local,
    ));
    d.run(case(
        "three unknown parameters",
        v62("foo=1&bar=2&baz=3".into()),
        Local,
    ));
    d.run(case(
        "an unknown parameter wins over a bad node_uuid",
        v62("node_uuid=abc&foo=1".into()),
        Local,
    ));
    d.run(case(
        "an unknown parameter wins over the version check (no header)",
        lookup("foo=1"),
        Local,
    ));
    d.run(case(
        "a bad node_uuid wins over the version check (no header)",
        lookup("node_uuid=abc"),
        Local,
    ));
    d.run(case(
        "a malformed version wins over an unknown parameter",
        lookup_at("foo=1", "abc"),
        Local,
    ));
    d.run(case(
        "`self` is dropped by pecan",
        v62("self=1".into()),
        Local,
    ));
    d.run(case(
        "`;` separates parameters too",
        v62(format!("addresses={m00};foo=1")),
        Local,
    ));
    d.run(case(
        "a query that is not UTF-8 once decoded: framework 400",
        v62("addresses=%ff".into()),
        Local,
    ));
    d.run(case(
        "_method=delete: 405 without Allow",
        v62(format!("_method=delete&addresses={m00}")),
        Local,
    ));
    d.run(case(
        "_method=post: 405, Allow: GET",
        v62(format!("_method=post&addresses={m00}")),
        Local,
    ));
    d.run(case(
        "_method=get: an unexpected argument",
        v62(format!("_method=get&addresses={m00}")),
        Local,
    ));

    // --- provision states (sections 1.2 step 9, 1.3) --------------------------------------
    let e0 = format!("addresses={}", enroll[0].macs[0]);
    d.run(
        case(
            "a node in enroll without fast track: wrong state, 404, then again from the edge",
            v62(e0),
            Miss,
        )
        .then(Local),
    );
    d.run(
        case(
            "the same node by node_uuid (then again from the edge)",
            v62(format!("node_uuid={}", enroll[0].uuid)),
            Miss,
        )
        .then(Local),
    );
    d.run(
        case(
            "a node in clean wait (no fast track): allowed, mints",
            v62(format!("addresses={}", clean_wait[0].macs[0])),
            Forwarded,
        )
        .mints(),
    );
    d.run(
        case(
            "by node_uuid of a fresh node: mints",
            v62(format!("node_uuid={}", n[5].uuid)),
            Forwarded,
        )
        .mints(),
    );
    d.run(
        case(
            "OpenStack-API-Version: baremetal 1.62 on a fresh node: mints",
            lookup(&format!("addresses={}", mac(6, 1)))
                .header("OpenStack-API-Version", "baremetal 1.62"),
            Forwarded,
        )
        .mints(),
    );

    // --- routing variants and wrong methods (section 1.1) ----------------------------------
    let q4 = format!("addresses={}", mac(4, 0));
    d.run(
        case(
            "/v1/lookup/ (trailing slash) on a fresh node: mints",
            Request::get(&format!("/v1/lookup/?{q4}")).version("1.62"),
            Forwarded,
        )
        .mints(),
    );
    let q3 = format!("addresses={}", mac(3, 0));
    d.run(
        case(
            "/lookup without /v1 on a fresh node (forwarded by the plugin: token protection below 1.62): mints",
            Request::get(&format!("/lookup?{q3}")).version("1.62"),
            Forwarded,
        )
        .mints(),
    );
    d.run(case(
        "/lookup without a version header",
        Request::get(&format!("/lookup?{q3}")),
        Forwarded,
    ));
    d.run(case(
        "/v1/lookup.json",
        Request::get(&format!("/v1/lookup.json?addresses={m00}")).version("1.62"),
        Forwarded,
    ));
    // Every GET whose decoded path contains `lookup` goes through the plugin's client (so that
    // the token protection below 1.62 applies), whether Ironic routes it there or not.
    for (alias, how) in [
        ("/lookup/", Forwarded),
        ("/lookup.json", Forwarded),
        ("/v1/%6Cookup", Forwarded),
        ("/v1//lookup", Forwarded),
        ("/v1/lookup//", Forwarded),
        ("/v1/LOOKUP", Forwarded),
    ] {
        d.run(case(
            &format!("alias path {alias}"),
            Request::get(&format!("{alias}?addresses={m00}")).version("1.62"),
            how,
        ));
    }
    d.run(case(
        "POST /v1/lookup: 405, Allow: GET",
        Request::post(&format!("/v1/lookup?addresses={m00}")).version("1.62"),
        Proxied,
    ));
    d.run(case(
        "PUT /v1/lookup",
        Request::new("PUT", "/v1/lookup").version("1.62"),
        Proxied,
    ));
    d.run(case(
        "DELETE /v1/lookup",
        Request::new("DELETE", "/v1/lookup").version("1.62"),
        Proxied,
    ));
    d.run(case(
        "HEAD /v1/lookup",
        Request::new("HEAD", &format!("/v1/lookup?addresses={m00}")).version("1.62"),
        Proxied,
    ));

    // --- content negotiation and request ids (sections 3, 4) ------------------------------
    let m0q = format!("addresses={m00}");
    d.run(case(
        "Accept: */*",
        Request::get(&format!("/v1/lookup?{m0q}"))
            .version("1.62")
            .header("Accept", "*/*"),
        Forwarded,
    ));
    d.run(case(
        "no Accept header",
        Request::get(&format!("/v1/lookup?{m0q}")).version("1.62"),
        Forwarded,
    ));
    d.run(case(
        "Accept: text/plain, application/json;q=0.5",
        Request::get(&format!("/v1/lookup?{m0q}"))
            .version("1.62")
            .header("Accept", "text/plain, application/json;q=0.5"),
        Forwarded,
    ));
    d.run(case(
        "Accept: text/html on a forwarded lookup: Ironic's 406",
        Request::get(&format!("/v1/lookup?{m0q}"))
            .version("1.62")
            .header("Accept", "text/html"),
        Forwarded,
    ));
    d.run(case(
        "an inbound X-OpenStack-Request-ID",
        lookup_at(&m0q, "1.62").header(
            "X-OpenStack-Request-ID",
            "req-6a9f7c36-5c9e-4c8e-9b39-0d1f0b6e8a11",
        ),
        Forwarded,
    ));

    d.finish(90);
}

#[test]
fn heartbeat_parameters_and_gates() {
    engine::print_normalisations();
    let (s, extra) = Stack::start_shadowed(
        engine::peer(8, 1, true),
        &[(1, "enroll-no-fasttrack", 1)],
        |_| {},
    );
    let enroll = extra[0].clone();
    let n = s.ironic.nodes.clone();
    let mut d = Diff::new(&s, "heartbeat");

    // The tokens, minted through the gateway (which then knows their hashes).
    let mut tokens = Vec::new();
    for node in n.iter().take(6) {
        let out = d.run(
            case(
                &format!("lookup minting the token of {}", node.name),
                lookup_at(&format!("addresses={}", node.macs[0]), "1.62"),
                Forwarded,
            )
            .mints(),
        );
        tokens.push(minted(&out));
    }
    let (u0, t0) = (n[0].uuid.clone(), tokens[0].clone());
    let ok = ipa_body(&t0);
    let h = |name: &str, req: Request, via| case(name, req, via).node(&u0);

    // --- accepted heartbeats: where the parameters come from (section 2.2) -----------------
    d.run(h(
        "JSON body as IPA sends it (first heartbeat)",
        hb_json(&u0, "1.68", &ok),
        Forwarded,
    ));
    d.run(h("at latest", hb_json(&u0, "latest", &ok), Forwarded));
    d.run(h(
        "OpenStack-API-Version: baremetal 1.68",
        hb(&u0, None, Some("application/json"), "", &ok)
            .header("OpenStack-API-Version", "baremetal 1.68"),
        Forwarded,
    ));
    d.run(h("at 1.62", hb_json(&u0, "1.62", &ok), Forwarded));
    d.run(h(
        "at 1.36 (agent_version allowed)",
        hb_json(&u0, "1.36", &ok),
        Forwarded,
    ));
    let q = format!("?callback_url={CB}&agent_token={t0}&agent_version=13.0.0");
    d.run(h(
        "parameters in the query string, no body",
        hb(&u0, Some("1.68"), None, &q, ""),
        Forwarded,
    ));
    let form = format!(
        "callback_url=https%3A%2F%2F127.0.0.1%3A9999&agent_token={t0}&agent_version=13.0.0"
    );
    d.run(h(
        "parameters as a form",
        hb(
            &u0,
            Some("1.68"),
            Some("application/x-www-form-urlencoded"),
            "",
            &form,
        ),
        Forwarded,
    ));
    d.run(h(
        "application/json; charset=utf-8",
        hb(
            &u0,
            Some("1.68"),
            Some("application/json; charset=utf-8"),
            "",
            &ok,
        ),
        Forwarded,
    ));
    d.run(h(
        "application/javascript with a JSON object",
        hb(&u0, Some("1.68"), Some("application/javascript"), "", &ok),
        Forwarded,
    ));
    d.run(h(
        "a chunked JSON body",
        hb_json(&u0, "1.68", &ok).chunked(16),
        Forwarded,
    ));
    d.run(h(
        "callback_url in the query, the rest in the JSON body",
        hb(
            &u0,
            Some("1.68"),
            Some("application/json"),
            &format!("?callback_url={CB}"),
            &format!(r#"{{"agent_token": "{t0}", "agent_version": "13.0.0"}}"#),
        ),
        Forwarded,
    ));
    d.run(h("HTTPS in upper case: normalised to the stored URL", hb_json(&u0, "1.68", &format!(r#"{{"callback_url": "HTTPS://127.0.0.1:9999", "agent_token": "{t0}", "agent_version": "13.0.0"}}"#)), Forwarded));
    d.run(h(
        "an empty agent_version at 1.35 passes the version gate",
        hb_json(
            &u0,
            "1.35",
            &format!(r#"{{"callback_url": "{CB}", "agent_token": "{t0}", "agent_version": ""}}"#),
        ),
        Forwarded,
    ));

    // --- callback_url normalisation: urlparse(...).geturl() (section 2.2) -----------------
    let cb = |url: &str| {
        format!(r#"{{"callback_url": "{url}", "agent_token": "{t0}", "agent_version": "13.0.0"}}"#)
    };
    d.run(h(
        "callback_url with an empty fragment: the same URL once normalised",
        hb_json(&u0, "1.68", &cb(&format!("{CB}#"))),
        Forwarded,
    ));
    d.run(h(
        "callback_url with an empty query and fragment",
        hb_json(&u0, "1.68", &cb(&format!("{CB}?#"))),
        Forwarded,
    ));
    d.run(h(
        "callback_url with a leading blank (stripped by urlsplit)",
        hb_json(&u0, "1.68", &cb(&format!(" {CB}"))),
        Forwarded,
    ));
    d.run(h(
        "callback_url with a leading NUL (a C0 control, stripped)",
        hb_json(&u0, "1.68", &cb(&format!("\\u0000{CB}"))),
        Forwarded,
    ));
    d.run(h(
        "callback_url with a tab inside (removed by urlsplit)",
        hb_json(&u0, "1.68", &cb("https://127.0.0.1:99\\t99")),
        Forwarded,
    ));
    d.run(h(
        "callback_url with a trailing newline (removed by urlsplit)",
        hb_json(&u0, "1.68", &cb("https://127.0.0.1:9999\\n")),
        Forwarded,
    ));
    d.run(h(
        "callback_url scheme in mixed case",
        hb_json(&u0, "1.68", &cb("hTTpS://127.0.0.1:9999")),
        Forwarded,
    ));
    d.run(h(
        "callback_url with a trailing blank is a change",
        hb_json(&u0, "1.68", &cb(&format!("{CB} "))),
        Local,
    ));
    d.run(h(
        "callback_url with a trailing slash is a change",
        hb_json(&u0, "1.68", &cb(&format!("{CB}/"))),
        Local,
    ));
    d.run(h(
        "callback_url `https:` alone is a change",
        hb_json(&u0, "1.68", &cb("https:")),
        Local,
    ));
    d.run(h(
        "callback_url with an out-of-range port is a change",
        hb_json(&u0, "1.68", &cb("https://127.0.0.1:99999")),
        Local,
    ));
    d.run(h(
        "callback_url with credentials is a change",
        hb_json(&u0, "1.68", &cb("https://agent@127.0.0.1:9999")),
        Local,
    ));
    d.run(h(
        "callback_url with an unclosed IPv6 bracket: urlparse raises",
        hb_json(&u0, "1.68", &cb("https://[::1")),
        Local,
    ));
    d.run(h(
        "callback_url whose host changes under NFKC: urlsplit raises",
        hb_json(&u0, "1.68", &cb("https://127.0.0.1\\uff1a9999")),
        Local,
    ));

    // --- content types (section 2.2) -------------------------------------------------------
    d.run(h(
        "application/json;charset=latin-1",
        hb(
            &u0,
            Some("1.68"),
            Some("application/json;charset=latin-1"),
            "",
            &ok,
        ),
        Forwarded,
    ));
    d.run(h(
        "Application/JSON (media types are matched case-sensitively: a form)",
        hb(&u0, Some("1.68"), Some("Application/JSON"), "", &ok),
        Local,
    ));
    d.run(h(
        "text/json: not JSON for pecan",
        hb(&u0, Some("1.68"), Some("text/json"), "", &ok),
        Local,
    ));
    d.run(h(
        "application/json-patch+json: not JSON for pecan",
        hb(
            &u0,
            Some("1.68"),
            Some("application/json-patch+json"),
            "",
            &ok,
        ),
        Local,
    ));
    d.run(h(
        "Expect: 100-continue",
        hb_json(&u0, "1.68", &ok).header("Expect", "100-continue"),
        Forwarded,
    ));

    // --- parameter errors, answered at the edge (sections 2.2, 2.3) -----------------------
    d.run(h(
        "a JSON body sent as text/plain is ignored",
        hb(&u0, Some("1.68"), Some("text/plain"), "", &ok),
        Local,
    ));
    d.run(h(
        "a JSON body without Content-Type is read as a form",
        hb(&u0, Some("1.68"), None, "", &ok),
        Local,
    ));
    d.run(h(
        "a JSON array body",
        hb_json(&u0, "1.68", "[1, 2]"),
        Local,
    ));
    d.run(h("invalid JSON", hb_json(&u0, "1.68", "{bad"), Local));
    d.run(h("an empty JSON body", hb_json(&u0, "1.68", ""), Local));
    d.run(h(
        "a key in the query and in the JSON body: a list",
        hb(
            &u0,
            Some("1.68"),
            Some("application/json"),
            "?agent_token=x",
            &ok,
        ),
        Local,
    ));
    d.run(h(
        "a key repeated in the query: a list",
        hb(
            &u0,
            Some("1.68"),
            None,
            &format!("?callback_url={CB}&agent_token=x&agent_token=y&agent_version=1"),
            "",
        ),
        Local,
    ));
    d.run(h(
        "a key in the query and in a form: a list",
        hb(
            &u0,
            Some("1.68"),
            Some("application/x-www-form-urlencoded"),
            "?agent_token=x",
            &form,
        ),
        Local,
    ));
    d.run(h("an unknown key", hb_json(&u0, "1.68", &format!(r#"{{"callback_url": "{CB}", "agent_token": "{t0}", "agent_version": "1", "foo": 1}}"#)), Local));
    d.run(h(
        "two unknown keys",
        hb_json(
            &u0,
            "1.68",
            &format!(r#"{{"callback_url": "{CB}", "agent_token": "{t0}", "foo": 1, "bar": [2]}}"#),
        ),
        Local,
    ));
    d.run(h(
        "agent_token: 123",
        hb_json(
            &u0,
            "1.68",
            &format!(r#"{{"callback_url": "{CB}", "agent_token": 123, "agent_version": "1"}}"#),
        ),
        Local,
    ));
    d.run(h(
        "agent_token: true",
        hb_json(
            &u0,
            "1.68",
            &format!(r#"{{"callback_url": "{CB}", "agent_token": true, "agent_version": "1"}}"#),
        ),
        Local,
    ));
    d.run(h(
        "agent_version 1.5 and agent_token true: agent_version is checked first",
        hb_json(
            &u0,
            "1.68",
            &format!(r#"{{"callback_url": "{CB}", "agent_token": true, "agent_version": 1.5}}"#),
        ),
        Local,
    ));
    d.run(h("agent_token: an object", hb_json(&u0, "1.68", &format!(r#"{{"callback_url": "{CB}", "agent_token": {{"a": [1, null, "x"]}}, "agent_version": "1"}}"#)), Local));
    d.run(h(
        "agent_token: a list",
        hb_json(
            &u0,
            "1.68",
            &format!(
                r#"{{"callback_url": "{CB}", "agent_token": ["a", 2.0], "agent_version": "1"}}"#
            ),
        ),
        Local,
    ));
    d.run(h(
        "callback_url: 123",
        hb_json(
            &u0,
            "1.68",
            &format!(r#"{{"callback_url": 123, "agent_token": "{t0}"}}"#),
        ),
        Local,
    ));
    d.run(h(
        "callback_url: null counts as missing",
        hb_json(
            &u0,
            "1.68",
            &format!(r#"{{"callback_url": null, "agent_token": "{t0}"}}"#),
        ),
        Local,
    ));
    d.run(h(
        "no callback_url",
        hb_json(
            &u0,
            "1.68",
            &format!(r#"{{"agent_token": "{t0}", "agent_version": "1"}}"#),
        ),
        Local,
    ));
    d.run(h(
        "agent_token: null counts as missing",
        hb_json(
            &u0,
            "1.68",
            &format!(r#"{{"callback_url": "{CB}", "agent_token": null, "agent_version": "1"}}"#),
        ),
        Local,
    ));
    d.run(h(
        "no agent_token",
        hb_json(
            &u0,
            "1.68",
            &format!(r#"{{"callback_url": "{CB}", "agent_version": "1"}}"#),
        ),
        Local,
    ));
    d.run(h("callback_url without a scheme", hb_json(&u0, "1.68", &format!(r#"{{"callback_url": "127.0.0.1:9999", "agent_token": "{t0}", "agent_version": "1"}}"#)), Local));
    d.run(h("callback_url host:port (the host parses as the scheme)", hb_json(&u0, "1.68", &format!(r#"{{"callback_url": "localhost:9999", "agent_token": "{t0}", "agent_version": "1"}}"#)), Local));
    d.run(h(
        "callback_url file:///x",
        hb_json(
            &u0,
            "1.68",
            &format!(
                r#"{{"callback_url": "file:///x", "agent_token": "{t0}", "agent_version": "1"}}"#
            ),
        ),
        Local,
    ));
    d.run(h("callback_url changed, right token", hb_json(&u0, "1.68", &format!(r#"{{"callback_url": "https://127.0.0.2:9999", "agent_token": "{t0}", "agent_version": "1"}}"#)), Local));
    d.run(h(
        "callback_url with an empty query normalises to another URL",
        hb_json(
            &u0,
            "1.68",
            &format!(
                r#"{{"callback_url": "{CB}/?", "agent_token": "{t0}", "agent_version": "1"}}"#
            ),
        ),
        Local,
    ));
    d.run(
        h(
            "a wrong token: forwarded once, then answered at the edge",
            hb_json(&u0, "1.68", &ipa_body("wrong-token")),
            Forwarded,
        )
        .then(Local),
    );
    d.run(h("a changed callback_url and a wrong token: the URL check comes first", hb_json(&u0, "1.68", r#"{"callback_url": "https://127.0.0.2:9999", "agent_token": "wrong-token", "agent_version": "1"}"#), Local));
    // Each presented token the gateway cannot verify reaches Ironic once per interval.
    d.run(h(
        "a token of another node",
        hb_json(&u0, "1.68", &ipa_body(&tokens[5])),
        Forwarded,
    ));
    d.run(h(
        "a token of another node, again",
        hb_json(&u0, "1.68", &ipa_body(&tokens[5])),
        Local,
    ));

    // --- version gates (sections 2.2, 2.3, 3) -----------------------------------------------
    d.run(h(
        "no version header: 404",
        hb(&u0, None, Some("application/json"), "", &ok),
        Local,
    ));
    d.run(h("1.21: 404", hb_json(&u0, "1.21", &ok), Local));
    d.run(h(
        "1.22 with agent_version: not recognised",
        hb_json(&u0, "1.22", &ok),
        Local,
    ));
    d.run(h(
        "1.22 without agent_version: the conductor requires one",
        hb_json(
            &u0,
            "1.22",
            &format!(r#"{{"callback_url": "{CB}", "agent_token": "{t0}"}}"#),
        ),
        Forwarded,
    ));
    d.run(h(
        "1.68 without agent_version: the conductor requires one",
        hb_json(
            &u0,
            "1.68",
            &format!(r#"{{"callback_url": "{CB}", "agent_token": "{t0}"}}"#),
        ),
        Forwarded,
    ));
    d.run(h(
        "1.35 with agent_version: not recognised",
        hb_json(&u0, "1.35", &ok),
        Local,
    ));
    d.run(h("agent_verify_ca at 1.67", hb_json(&u0, "1.67", &format!(r#"{{"callback_url": "{CB}", "agent_token": "{t0}", "agent_version": "1", "agent_verify_ca": "pem"}}"#)), Local));
    d.run(h("an empty agent_verify_ca at 1.67 (it is not None)", hb_json(&u0, "1.67", &format!(r#"{{"callback_url": "{CB}", "agent_token": "{t0}", "agent_version": "1", "agent_verify_ca": ""}}"#)), Local));
    d.run(h(
        "agent_status at 1.71",
        hb_json(
            &u0,
            "1.71",
            &format!(
                r#"{{"callback_url": "{CB}", "agent_token": "{t0}", "agent_status": "start"}}"#
            ),
        ),
        Local,
    ));
    d.run(h("agent_status_message alone at 1.71", hb_json(&u0, "1.71", &format!(r#"{{"callback_url": "{CB}", "agent_token": "{t0}", "agent_version": "1", "agent_status_message": "m"}}"#)), Local));
    d.run(h("an empty agent_status at 1.71 passes the gate but is invalid", hb_json(&u0, "1.71", &format!(r#"{{"callback_url": "{CB}", "agent_token": "{t0}", "agent_version": "1", "agent_status": ""}}"#)), Local));
    d.run(h(
        "agent_status bogus at 1.72",
        hb_json(
            &u0,
            "1.72",
            &format!(
                r#"{{"callback_url": "{CB}", "agent_token": "{t0}", "agent_status": "bogus"}}"#
            ),
        ),
        Local,
    ));
    d.run(h(
        "agent_status bogus and no token: the token check comes first",
        hb_json(
            &u0,
            "1.72",
            &format!(r#"{{"callback_url": "{CB}", "agent_status": "bogus"}}"#),
        ),
        Local,
    ));
    d.run(h("malformed version", hb_json(&u0, "abc", &ok), Local));
    d.run(h("out of range 1.999", hb_json(&u0, "1.999", &ok), Local));
    d.run(h("major 2", hb_json(&u0, "2.1", &ok), Local));
    d.run(h(
        "a malformed version wins over a bad parameter",
        hb_json(&u0, "abc", "[1]"),
        Local,
    ));
    d.run(h(
        "a bad parameter wins over the missing version",
        hb(&u0, None, Some("application/json"), "", r#"{"foo": 1}"#),
        Local,
    ));

    // --- JSON body limits (section 4, third error format) --------------------------------
    let big = format!(
        r#"{{"callback_url": "{CB}", "agent_token": "{t0}", "x": "{}"}}"#,
        "a".repeat(1024 * 1024)
    );
    d.run(h(
        "a JSON body over 1 MiB: 413, flat body",
        hb_json(&u0, "1.68", &big),
        Local,
    ));
    d.run(h(
        "a chunked JSON body over 1 MiB",
        hb_json(&u0, "1.68", &big).chunked(64 * 1024),
        Local,
    ));
    let deep = |depth: usize| {
        format!(
            r#"{{"callback_url": {}1{}}}"#,
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
    };
    d.run(h(
        "JSON nested 26 deep: 400, flat body",
        hb_json(&u0, "1.68", &deep(26)),
        Local,
    ));
    d.run(h(
        "JSON nested 25 deep: within the limit",
        hb_json(&u0, "1.68", &deep(25)),
        Local,
    ));
    d.run(h(
        "brackets inside JSON strings do not count",
        hb_json(
            &u0,
            "1.68",
            &format!(
                r#"{{"callback_url": "{}", "agent_token": 1}}"#,
                "[".repeat(40)
            ),
        ),
        Local,
    ));

    // --- content negotiation (section 4) --------------------------------------------------
    // IPA's `Accept: application/json` plus `Accept: text/html`: folded by Ironic's server to
    // `application/json, text/html`, so the controller answers (202), but Ironic would render
    // its own errors as HTML pages: only Ironic answers such a request.
    d.run(h(
        "Accept: application/json and text/html on a heartbeat: proxied",
        hb_json(&u0, "1.68", &ok).header("Accept", "text/html"),
        Proxied,
    ));

    // --- other nodes: names, TLS, anaconda, certificates, status ---------------------------
    let (n1, t1) = (&n[1], &tokens[1]);
    d.run(
        case(
            "by node name",
            hb_json(&n1.name, "1.68", &ipa_body(t1)),
            Forwarded,
        )
        .node(&n1.uuid),
    );
    d.run(case(
        "by node name without a token (nodes are known by UUID only)",
        hb_json(
            &n1.name,
            "1.68",
            &format!(r#"{{"callback_url": "{CB}", "agent_version": "1"}}"#),
        ),
        Forwarded,
    ));
    let (u2, t2) = (&n[2].uuid, &tokens[2]);
    d.run(case("an http callback_url with [agent]require_tls: refused by the conductor", hb_json(u2, "1.68", &format!(r#"{{"callback_url": "http://127.0.0.1:9999", "agent_token": "{t2}", "agent_version": "1"}}"#)), Forwarded).node(u2));
    d.run(case("callback_url xhttpx:// passes the API check, refused by require_tls", hb_json(u2, "1.68", &format!(r#"{{"callback_url": "xhttpx://127.0.0.1:9999", "agent_token": "{t2}", "agent_version": "1"}}"#)), Forwarded).node(u2));
    let (u3, t3) = (&n[3].uuid, &tokens[3]);
    let ana = |status: &str| {
        format!(
            r#"{{"callback_url": "", "agent_token": "{t3}", "agent_status": "{status}", "agent_status_message": "anaconda says {status}"}}"#
        )
    };
    d.run(
        case(
            "anaconda: empty callback_url, agent_status start, no agent_version",
            hb_json(u3, "1.72", &ana("start")),
            Forwarded,
        )
        .node(u3),
    );
    d.run(
        case(
            "anaconda: agent_status end",
            hb_json(u3, "1.72", &ana("end")),
            Forwarded,
        )
        .node(u3),
    );
    d.run(
        case(
            "anaconda: agent_status error",
            hb_json(u3, "1.72", &ana("error")),
            Forwarded,
        )
        .node(u3),
    );
    d.run(
        case(
            "after the empty callback_url, an https one is a change",
            hb_json(
                u3,
                "1.72",
                &format!(
                    r#"{{"callback_url": "{CB}", "agent_token": "{t3}", "agent_status": "start"}}"#
                ),
            ),
            Local,
        )
        .node(u3),
    );
    let (u4, t4) = (&n[4].uuid, &tokens[4]);
    let ca = |pem: &str| {
        format!(
            r#"{{"callback_url": "{CB}", "agent_token": "{t4}", "agent_version": "13.0.0", "agent_verify_ca": "{pem}"}}"#
        )
    };
    let pem = "-----BEGIN CERTIFICATE-----\\nMIIBconformance\\n-----END CERTIFICATE-----\\n";
    d.run(
        case(
            "agent_verify_ca at 1.68: stored by the conductor",
            hb_json(u4, "1.68", &ca(pem)),
            Forwarded,
        )
        .node(u4),
    );
    d.run(
        case(
            "the same agent_verify_ca again",
            hb_json(u4, "1.68", &ca(pem)),
            Forwarded,
        )
        .node(u4),
    );
    d.run(
        case(
            "a different agent_verify_ca: refused by the conductor",
            hb_json(
                u4,
                "1.68",
                &ca("-----BEGIN CERTIFICATE-----\\nother\\n-----END CERTIFICATE-----\\n"),
            ),
            Forwarded,
        )
        .node(u4),
    );
    let (u5, t5) = (&n[5].uuid, &tokens[5]);
    d.run(case("agent_status start with agent_version at 1.72", hb_json(u5, "1.72", &format!(r#"{{"callback_url": "{CB}", "agent_token": "{t5}", "agent_version": "13.0.0", "agent_status": "start"}}"#)), Forwarded).node(u5));

    // --- unknown nodes and identifiers (section 2.1) ----------------------------------------
    d.run(
        case(
            "an unknown node UUID: 404, then from the cache",
            hb_json(UNKNOWN_UUID, "1.68", &ok),
            Forwarded,
        )
        .then(Local),
    );
    d.run(case(
        "the cached unknown node without a token: not found comes first",
        hb_json(
            UNKNOWN_UUID,
            "1.68",
            &format!(r#"{{"callback_url": "{CB}"}}"#),
        ),
        Local,
    ));
    d.run(case(
        "the cached unknown node with an unknown key: the argument check comes first",
        hb_json(UNKNOWN_UUID, "1.68", r#"{"foo": 1}"#),
        Local,
    ));
    d.run(
        case(
            "an unknown node name: 404, then from the cache",
            hb_json("no-such-node", "1.68", &ok),
            Forwarded,
        )
        .then(Local),
    );
    d.run(case(
        "a real node's UUID without hyphens: matched verbatim, 404",
        hb_json(&u0.replace('-', ""), "1.68", &ok),
        Forwarded,
    ));
    d.run(case(
        "a node whose lookup was refused (no token stored): the conductor refuses any token",
        hb_json(&enroll[0].uuid, "1.68", &ipa_body(&t0)),
        Forwarded,
    ));
    d.run(case(
        "an upper-case UUID: not a public route, proxied",
        hb_json(&u0.to_uppercase(), "1.68", &ok),
        Proxied,
    ));
    d.run(case(
        "a dotted name: proxied",
        hb_json("node.two", "1.68", &ok),
        Proxied,
    ));
    d.run(case(
        "an invalid identifier: proxied, 400",
        hb_json("bad%20name", "1.68", &ok),
        Proxied,
    ));
    d.run(
        case(
            "POST /v1/heartbeat/<uuid>.json: proxied",
            hb_json(&format!("{u0}.json"), "1.68", &ok),
            Proxied,
        )
        .node(&u0),
    );
    d.run(
        case(
            "POST /v1/heartbeat/<uuid>/ (trailing slash): proxied",
            hb_json(&format!("{u0}/"), "1.68", &ok),
            Proxied,
        )
        .node(&u0),
    );
    d.run(
        case(
            "POST /heartbeat/<uuid> without /v1: proxied",
            Request::post(&format!("/heartbeat/{u0}"))
                .version("1.68")
                .header("Content-Type", "application/json")
                .body(ok.clone().into_bytes()),
            Proxied,
        )
        .node(&u0),
    );
    d.run(case(
        "POST /v1/heartbeat/ without an identifier",
        hb_json("", "1.68", &ok),
        Proxied,
    ));
    d.run(case(
        "a 255-character name: a valid name, unknown",
        hb_json(&"n".repeat(255), "1.68", &ok),
        Forwarded,
    ));
    d.run(case(
        "a 256-character name: not a name (proxied)",
        hb_json(&"n".repeat(256), "1.68", &ok),
        Proxied,
    ));
    d.run(case(
        "a name of one dash: valid, unknown",
        hb_json("-", "1.68", &ok),
        Forwarded,
    ));
    d.run(case(
        "GET /v1/heartbeat/<uuid>: 405, Allow: POST",
        Request::get(&format!("/v1/heartbeat/{u0}")).version("1.68"),
        Proxied,
    ));
    d.run(case(
        "PUT /v1/heartbeat/<uuid>",
        Request::new("PUT", &format!("/v1/heartbeat/{u0}"))
            .version("1.68")
            .header("Content-Type", "application/json")
            .body(ok.clone().into_bytes()),
        Proxied,
    ));

    d.finish(90);
}

/// `[agent]require_tls = false`: http callbacks are accepted, and the URL rules still apply.
#[test]
fn heartbeat_http_callbacks_without_require_tls() {
    engine::print_normalisations();
    let (s, _) = Stack::start_shadowed(engine::peer(2, 1, false), &[], |_| {});
    let n = s.ironic.nodes.clone();
    let mut d = Diff::new(&s, "require_tls=false");
    let out = d.run(
        case(
            "lookup minting the token",
            lookup_at(&format!("addresses={}", n[0].macs[0]), "1.62"),
            Forwarded,
        )
        .mints(),
    );
    let (u, t) = (n[0].uuid.clone(), minted(&out));
    let body = |cb: &str| {
        format!(r#"{{"callback_url": "{cb}", "agent_token": "{t}", "agent_version": "13.0.0"}}"#)
    };
    d.run(
        case(
            "an http callback_url is accepted",
            hb_json(&u, "1.68", &body("http://127.0.0.1:9999")),
            Forwarded,
        )
        .node(&u),
    );
    d.run(
        case(
            "HTTP in upper case: the same URL once normalised",
            hb_json(&u, "1.68", &body("HTTP://127.0.0.1:9999")),
            Forwarded,
        )
        .node(&u),
    );
    d.run(
        case(
            "the https variant of the accepted URL is a change",
            hb_json(&u, "1.68", &body(CB)),
            Local,
        )
        .node(&u),
    );
    d.run(
        case(
            "another port is a change",
            hb_json(&u, "1.68", &body("http://127.0.0.1:9998")),
            Local,
        )
        .node(&u),
    );
    d.run(case("a wrong token with the accepted URL: forwarded once, then at the edge", hb_json(&u, "1.68", r#"{"callback_url": "http://127.0.0.1:9999", "agent_token": "nope", "agent_version": "1"}"#), Forwarded).then(Local));
    let out = d.run(
        case(
            "second node: lookup minting the token",
            lookup_at(&format!("addresses={}", n[1].macs[0]), "1.62"),
            Forwarded,
        )
        .mints(),
    );
    let (u1, t1) = (n[1].uuid.clone(), minted(&out));
    d.run(case("callback_url xhttpx:// is accepted without require_tls", hb_json(&u1, "1.68", &format!(r#"{{"callback_url": "xhttpx://127.0.0.1:9999", "agent_token": "{t1}", "agent_version": "1"}}"#)), Forwarded).node(&u1));
    d.run(case("then http:// is a change", hb_json(&u1, "1.68", &format!(r#"{{"callback_url": "http://127.0.0.1:9999", "agent_token": "{t1}", "agent_version": "1"}}"#)), Local).node(&u1));
    d.finish(9);
}

/// The negative cache on its own (the node index, if the gateway has one, turned off): each
/// lookup Ironic refuses reaches Ironic once, and the repeats are answered at the edge.
#[test]
fn negative_cache() {
    engine::print_normalisations();
    let (s, extra) = Stack::start_shadowed(
        engine::peer(3, 1, true),
        &[(1, "enroll-no-fasttrack", 1)],
        engine::disable_node_index,
    );
    let n = s.ironic.nodes.clone();
    let mut d = Diff::new(&s, "negative cache");
    let v62 = |q: String| lookup_at(&q, "1.62");
    d.run(
        case(
            "an unknown MAC: forwarded, then from the negative cache",
            v62(format!("addresses={}", unknown_mac(30))),
            Forwarded,
        )
        .then(Local)
        .then(Local),
    );
    d.run(case(
        "the same MAC in upper case: same key",
        v62(format!("addresses={}", unknown_mac(30).to_uppercase())),
        Local,
    ));
    d.run(case(
        "the same MAC at another version",
        lookup_at(&format!("addresses={}", unknown_mac(30)), "1.99"),
        Local,
    ));
    d.run(
        case(
            "MACs of two nodes: forwarded, then from the cache",
            v62(format!("addresses={},{}", n[0].macs[0], n[1].macs[0])),
            Forwarded,
        )
        .then(Local),
    );
    d.run(case(
        "the same two MACs in the other order: same key",
        v62(format!("addresses={},{}", n[1].macs[0], n[0].macs[0])),
        Local,
    ));
    d.run(
        case(
            "an unknown node_uuid: forwarded, then from the cache",
            v62(format!("node_uuid={UNKNOWN_UUID}")),
            Forwarded,
        )
        .then(Local),
    );
    d.run(
        case(
            "a refused state by MAC: forwarded, then from the cache",
            v62(format!("addresses={}", extra[0][0].macs[0])),
            Forwarded,
        )
        .then(Local),
    );
    d.run(
        case(
            "a refused state by node_uuid: forwarded, then from the cache",
            v62(format!("node_uuid={}", extra[0][0].uuid)),
            Forwarded,
        )
        .then(Local),
    );
    d.run(
        case(
            "a lookup that succeeds is never cached",
            v62(format!("addresses={}", n[2].macs[0])),
            Forwarded,
        )
        .mints()
        .then(Forwarded),
    );
    d.finish(9);
}

/// Identical lookups in flight together (README: "waits for it: its error answer is repeated
/// locally"): one reaches Ironic, the others get its answer from the edge, each with its own
/// version headers; every answer equals Ironic's answer to the same request.
#[test]
fn concurrent_lookups() {
    engine::print_normalisations();
    let (s, _) = Stack::start_with(engine::peer(1, 1, true), &[], engine::disable_node_index);
    let mut d = Diff::new(&s, "concurrent lookups");
    let versions = ["1.62", "latest", "1.22", "1.70", "1.115", "1.62"];
    for (n, what) in [
        (20u8, "an unknown MAC"),
        (21, "an unknown MAC (second storm)"),
    ] {
        let q = format!("addresses={}", unknown_mac(n));
        let reqs: Vec<Request> = versions.iter().map(|v| lookup_at(&q, v)).collect();
        let before = d.lookup_counters();
        let answers: Vec<common::Response> = std::thread::scope(|sc| {
            let hs: Vec<_> = reqs.iter().map(|r| sc.spawn(|| s.gw.send(r))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut after = d.lookup_counters();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while after.0 + after.1 < before.0 + before.1 + reqs.len() as u64
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
            after = d.lookup_counters();
        }
        let (local, forwarded, upstream) =
            (after.0 - before.0, after.1 - before.1, after.2 - before.2);
        for (i, (req, gw)) in reqs.iter().zip(&answers).enumerate() {
            let c = case(
                &format!(
                    "{what}, {} identical lookups at once: #{}",
                    reqs.len(),
                    i + 1
                ),
                req.clone(),
                Any,
            );
            d.stats.cases += 1;
            let direct = http::send(s.ironic_addr, req);
            // How each single answer was made is not observable under concurrency; the totals are.
            d.check(&c.name.clone(), &c, Any, &direct, gw, Ok(Any));
        }
        assert_eq!(upstream, 1, "one lookup of the storm reached Ironic");
        assert_eq!(
            (forwarded, local),
            (1, reqs.len() as u64 - 1),
            "the rest were answered locally"
        );
        d.stats.local += local as usize;
        d.stats.forwarded += forwarded as usize;
    }
    d.finish(12);
}

/// The README's deliberate deviations, each pinned: the gateway's exact answer and how it was
/// produced.
#[test]
fn deliberate_deviations() {
    engine::print_normalisations();
    let s = Stack::start(engine::peer(3, 1, true));
    let n = s.ironic.nodes.clone();
    let ir = s.ironic_addr;

    // 1. No raw token below 1.62: Ironic 1.22-1.61 returns the stored token to anyone; the
    //    gateway answers null there, otherwise Ironic's exact answer.
    let q = format!("addresses={}", n[0].macs[0]);
    let first = s.gw.send(&lookup_at(&q, "1.62"));
    let token = first.json()["config"]["agent_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(engine::is_raw_token(&token), "{}", engine::describe(&first));
    for v in ["1.22", "1.31", "1.61"] {
        for target in [format!("/v1/lookup?{q}"), format!("/v1/lookup/?{q}")] {
            let req = Request::get(&target).version(v);
            let direct = http::send(ir, &req);
            let gw = s.gw.send(&req);
            assert_eq!(
                direct.json()["config"]["agent_token"],
                token,
                "Ironic {v} leaks the stored token (the reason for the deviation)"
            );
            assert!(!gw.text().contains(&token), "{v} {target}: {}", gw.text());
            let expect = direct
                .text()
                .replace(&format!("\"{token}\""), "null")
                .replace(&format!("http://{ir}"), &format!("http://{}", s.gw.addr()));
            assert_eq!(gw.status, 200);
            assert_eq!(
                gw.text(),
                expect,
                "{v} {target}: Ironic's answer with a null token"
            );
            assert_eq!(
                gw.header("Content-Length").map(str::to_string),
                Some(expect.len().to_string())
            );
            assert_eq!(gw.versions(), direct.versions());
        }
    }

    // 2. Lookup successes are never shared or cached: concurrent identical lookups of a fresh
    //    node get exactly what Ironic gives concurrent callers, one raw token and "******".
    let q1 = format!("addresses={}", n[1].macs[0]);
    let answers: Vec<common::Response> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| sc.spawn(|| s.gw.send(&lookup_at(&q1, "1.62"))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let tokens: Vec<String> = answers
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "{}", engine::describe(r));
            r.json()["config"]["agent_token"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(
        tokens.iter().filter(|t| engine::is_raw_token(t)).count(),
        1,
        "exactly one caller gets the raw token: {tokens:?}"
    );
    assert_eq!(
        tokens.iter().filter(|t| *t == "******").count(),
        3,
        "{tokens:?}"
    );
    let again = s.gw.send(&lookup_at(&q1, "1.62"));
    assert_eq!(again.json()["config"]["agent_token"], "******");

    // 3. Edge token check: within token_mismatch_forward_seconds a wrong token gets Ironic's
    //    400 from the edge; Ironic is not asked.
    let u0 = n[0].uuid.clone();
    let good = s.gw.send(&hb_json(&u0, "1.68", &ipa_body(&token)));
    assert_eq!(good.status, 202, "{}", engine::describe(&good));
    let mut d = Diff::new(&s, "deviations");
    d.run(
        case(
            "a wrong token: forwarded once",
            hb_json(&u0, "1.68", &ipa_body("stale")),
            Forwarded,
        )
        .node(&u0),
    );
    let before = s.gw.metric("ironic_edge_upstream_requests_total", &[]);
    let out = d.run(
        case(
            "a wrong token again: answered at the edge, same bytes",
            hb_json(&u0, "1.68", &ipa_body("stale")),
            Local,
        )
        .node(&u0),
    );
    assert_eq!(
        s.gw.metric("ironic_edge_upstream_requests_total", &[]),
        before
    );
    common::assert_ironic_error(
        &out.gateway[0],
        400,
        common::ironic::INVALID_TOKEN,
        "1.115",
        "1.68",
    );

    // 4. Local answers carry Ironic's Server header and a fresh req-<uuid> each time.
    let a = s.gw.send(&lookup("foo=1"));
    let b = s.gw.send(&lookup("foo=1"));
    let direct = http::send(ir, &lookup("foo=1"));
    for r in [&a, &b] {
        assert_eq!(r.header("Server"), direct.header("Server"));
        let id = r.header("x-openstack-request-id").unwrap_or_default();
        assert!(engine::is_request_id(id), "{id:?}");
        assert_eq!(r.header("openstack-request-id"), Some(id));
    }
    assert_ne!(
        a.header("x-openstack-request-id"),
        b.header("x-openstack-request-id")
    );
    d.finish(2);
}

// ------------------------------------------------------------------------------------------
// Gateway bugs found by this suite (reported to the lead; each test keeps its assertions and
// is ignored until src/ is fixed: `cargo test --test conformance -- --ignored`).
// ------------------------------------------------------------------------------------------

/// Ironic's ParsableErrorMiddleware/pecan honour `Accept` (spec section 4): with `text/html`,
/// `application/xml`, `text/plain`… every answer is a 406 whose `error_message` wraps webob's
/// HTML or text page. The gateway's local answers ignore `Accept` and answer the JSON error.
#[test]
fn accept_header_other_than_json_gets_ironics_answer() {
    engine::print_normalisations();
    let s = Stack::start(engine::peer(1, 1, true));
    let n = s.ironic.nodes.clone();
    let mut d = Diff::new(&s, "bug: Accept");
    let out = d.run(
        case(
            "lookup minting the token",
            lookup_at(&format!("addresses={}", n[0].macs[0]), "1.62"),
            Forwarded,
        )
        .mints(),
    );
    let (u0, t0) = (n[0].uuid.clone(), minted(&out));
    let get =
        |q: &str, accept: &str| Request::get(&format!("/v1/lookup?{q}")).header("Accept", accept);
    d.run(case(
        "lookup, unknown parameter, Accept: text/html",
        get("foo=1", "text/html").version("1.62"),
        Any,
    ));
    d.run(case(
        "lookup, no version header, Accept: text/html",
        get(&format!("addresses={}", n[0].macs[0]), "text/html"),
        Any,
    ));
    d.run(case(
        "lookup, malformed version, Accept: application/xml",
        get("addresses=x", "application/xml").version("abc"),
        Any,
    ));
    d.run(case(
        "lookup, out-of-range version, Accept: text/plain",
        get("addresses=x", "text/plain").version("1.999"),
        Any,
    ));
    d.run(case(
        "lookup, no usable MAC, Accept: image/png",
        get("addresses=meow", "image/png").version("1.62"),
        Any,
    ));
    let unknown = format!("addresses={}", unknown_mac(9));
    d.run(case(
        "an unknown MAC (IPA's Accept): cached",
        lookup_at(&unknown, "1.62"),
        Forwarded,
    ));
    d.run(case(
        "the cached unknown MAC, Accept: text/html",
        get(&unknown, "text/html").version("1.62"),
        Any,
    ));
    let hb_accept = |body: &str, v: &str, accept: &str| {
        Request::post(&format!("/v1/heartbeat/{u0}"))
            .version(v)
            .header("Accept", accept)
            .header("Content-Type", "application/json")
            .body(body.as_bytes().to_vec())
    };
    d.run(case(
        "heartbeat, unknown key, Accept: text/html",
        hb_accept(r#"{"foo": 1}"#, "1.68", "text/html"),
        Any,
    ));
    d.run(case(
        "heartbeat, no version header, Accept: text/html",
        hb_accept(&ipa_body(&t0), "1.1", "text/html"),
        Any,
    ));
    d.run(
        case(
            "heartbeat accepted (the gateway learns the callback_url)",
            hb_json(&u0, "1.68", &ipa_body(&t0)),
            Forwarded,
        )
        .node(&u0),
    );
    d.run(case("heartbeat, changed callback_url, Accept: text/plain", hb_accept(&format!(r#"{{"callback_url": "https://10.0.0.1:1", "agent_token": "{t0}", "agent_version": "1"}}"#), "1.68", "text/plain"), Any));
    d.run(
        case(
            "heartbeat, wrong token (forwarded once, then from the edge), Accept: text/html",
            hb_accept(&ipa_body("wrong"), "1.68", "text/html"),
            Any,
        )
        .then(Any),
    );
    d.finish(12);
}

/// Ironic limits the body size only for a `Content-Type` containing `json` (spec section 4,
/// `json_depth.py`); any other body is read whole and its parameters (query string, form) are
/// used. The gateway answers 413 to any heartbeat body over `heartbeat.max_body_bytes`.
#[test]
fn large_non_json_heartbeat_body_gets_ironics_answer() {
    engine::print_normalisations();
    let s = Stack::start(engine::peer(1, 1, true));
    let n = s.ironic.nodes.clone();
    let mut d = Diff::new(&s, "bug: body limit");
    let out = d.run(
        case(
            "lookup minting the token",
            lookup_at(&format!("addresses={}", n[0].macs[0]), "1.62"),
            Forwarded,
        )
        .mints(),
    );
    let (u0, t0) = (n[0].uuid.clone(), minted(&out));
    let big = "a".repeat(1024 * 1024 + 10);
    let q = format!("?callback_url={CB}&agent_token={t0}&agent_version=13.0.0");
    d.run(
        case(
            "parameters in the query, a text/plain body over 1 MiB (ignored by Ironic)",
            hb(&u0, Some("1.68"), Some("text/plain"), &q, &big),
            Any,
        )
        .node(&u0),
    );
    let form = format!(
        "callback_url=https%3A%2F%2F127.0.0.1%3A9999&agent_token={t0}&agent_version=13.0.0&x={big}"
    );
    d.run(
        case(
            "a form over 1 MiB: Ironic reads it (unexpected argument x)",
            hb(
                &u0,
                Some("1.68"),
                Some("application/x-www-form-urlencoded"),
                "",
                &form,
            ),
            Any,
        )
        .node(&u0),
    );
    d.finish(3);
}

/// After a power off made straight on Ironic, the token and `agent_url` are wiped there, while
/// the gateway still holds the accepted `callback_url`. With the node index on, Ironic's view
/// wins as soon as the index has caught up (the staleness bound: here 1 s rounds), and the
/// gateway answers exactly as Ironic does. (Within the bound, the edge may answer "callback_url
/// changed" where Ironic checks the token: a 400 either way, listed in the README.)
#[test]
fn stale_callback_url_after_a_power_off_made_on_ironic() {
    engine::print_normalisations();
    let (s, _) = Stack::start_with(engine::peer(1, 1, true), &[], |cfg| {
        cfg.set("ironic_edge.sync.enabled", true)
            .set("ironic_edge.sync.interval_seconds", 1);
    });
    let n = s.ironic.nodes.clone();
    let mut d = Diff::new(&s, "power off on Ironic");
    let out = d.run(
        case(
            "lookup minting the token",
            lookup_at(&format!("addresses={}", n[0].macs[0]), "1.62"),
            Forwarded,
        )
        .mints(),
    );
    let (u0, t0) = (n[0].uuid.clone(), minted(&out));
    d.run(
        case(
            "heartbeat accepted",
            hb_json(&u0, "1.68", &ipa_body(&t0)),
            Forwarded,
        )
        .node(&u0),
    );
    s.ironic.power_off(&u0);
    // The staleness bound: a round after the wipe, with room for a loaded machine.
    std::thread::sleep(std::time::Duration::from_secs(8));
    let moved = |token: Option<&str>| {
        let tok = token
            .map(|t| format!(r#", "agent_token": "{t}""#))
            .unwrap_or_default();
        format!(r#"{{"callback_url": "https://10.1.2.3:9999"{tok}, "agent_version": "13.0.0"}}"#)
    };
    d.run(case(
        "after the power off: the old token from a new callback_url (Ironic: invalid token)",
        hb_json(&u0, "1.68", &moved(Some(&t0))),
        Any,
    ));
    d.run(case(
        "after the power off: no token from a new callback_url (Ironic: token required)",
        hb_json(&u0, "1.68", &moved(None)),
        Any,
    ));
    d.finish(4);
}

/// The "no raw token below 1.62" deviation holds for `/v1/lookup` and `/v1/lookup/` only:
/// Ironic routes `/lookup`, `/lookup/`, `/lookup.json`, `/v1/lookup.json` and percent-encoded
/// forms (`/v1/%6Cookup`) to the same controller, and the gateway proxies them unchanged, so
/// the stored token leaks through it at 1.22-1.61. In keystone mode `/v1/lookup.json` and
/// `/v1/%6Cookup` are public routes too (the public-route check runs on the decoded path and
/// allows a `.json` suffix).
#[test]
fn no_stored_token_below_1_62_through_lookup_alias_paths() {
    let s = Stack::start(engine::peer(1, 1, true));
    let n = s.ironic.nodes.clone();
    let q = format!("addresses={}", n[0].macs[0]);
    let first = s.gw.send(&lookup_at(&q, "1.62"));
    let token = first.json()["config"]["agent_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(engine::is_raw_token(&token), "{}", engine::describe(&first));
    let mut leaks = Vec::new();
    for alias in [
        "/lookup",
        "/lookup/",
        "/lookup.json",
        "/v1/lookup.json",
        "/v1/%6Cookup",
        "/v1/lookup/.json",
    ] {
        for v in ["1.22", "1.31", "1.61"] {
            let r = s.gw.send(&Request::get(&format!("{alias}?{q}")).version(v));
            if r.text().contains(&token) {
                leaks.push(format!("{alias} at {v}: {}", r.status));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "the stored raw token came back through the gateway: {leaks:#?}"
    );
}

/// Issue 8, item 3. `Accept` as webob decides it (spec section 9): every value measured, sent
/// straight to Ironic and through the gateway. At 1.62 (the node holds a token, so Ironic
/// answers `"******"`) the two answers must be identical; the values only Ironic answers
/// (406 pages, and JSON answers whose framework errors Ironic renders as pages) are forwarded
/// by the plugin, so also a bad version gets Ironic's own 406 page. Below 1.62 the gateway's
/// answer is Ironic's with the stored token replaced by null, for every value and every path
/// spelling.
#[test]
fn accept_as_webob_decides_and_no_stored_token_below_1_62() {
    engine::print_normalisations();
    let s = Stack::start(engine::peer(1, 1, true));
    let n = s.ironic.nodes.clone();
    let ir = s.ironic_addr;
    let q = format!("addresses={}", n[0].macs[0]);
    let first = s.gw.send(&lookup_at(&q, "1.62"));
    let token = first.json()["config"]["agent_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(engine::is_raw_token(&token), "{}", engine::describe(&first));
    let accepts: &[Option<&str>] = &[
        None,
        Some("application/json"),
        Some("APPLICATION/JSON"),
        Some("*/*"),
        Some("application/*"),
        Some("*"),
        Some("text/html;q=2"),
        Some("application/json;q=0"),
        Some("*/*;q=0.5, text/html"),
        Some("application/json, text/html;q=abc"),
        Some("text/plain"),
        Some(","),
        Some("text/html"),
        Some(""),
        Some("a"),
        Some("APPLICATION/JSON;q=0"),
        Some("text/html,application/json"),
        Some("text/html, application/json;q=0"),
        Some("text/plain, application/json;q=0.5"),
        Some("application/jsonx"),
        Some("application/json;charset=utf-8"),
        Some("*/*;q=0"),
    ];
    let with_accept = |r: Request, a: Option<&str>| match a {
        Some(a) => r.header("Accept", a),
        None => r,
    };
    let mut d = Diff::new(&s, "Accept (issue 8)");
    for &a in accepts {
        d.run(case(
            &format!("lookup at 1.62, Accept: {a:?}"),
            with_accept(Request::get(&format!("/v1/lookup?{q}")).version("1.62"), a),
            Forwarded,
        ));
    }
    // Framework errors: pecan's JSON form only for the agent's values (answered locally);
    // Ironic's HTML, text or webob JSON pages for the others (forwarded).
    for &(a, how) in &[
        (Some("application/json"), Local),
        (None, Local),
        (Some("*"), Forwarded),
        (Some("text/html;q=2"), Forwarded),
        (Some("application/json;q=0"), Forwarded),
        (Some("text/plain, application/json;q=0.5"), Forwarded),
        (Some(""), Forwarded),
        (Some("text/html"), Forwarded),
    ] {
        for v in ["abc", "1.999", "2.1"] {
            d.run(case(
                &format!("lookup at version {v}, Accept: {a:?}"),
                with_accept(Request::get(&format!("/v1/lookup?{q}")).version(v), a),
                how,
            ));
        }
        let hb_abc = Request::post(&format!("/v1/heartbeat/{}", n[0].uuid))
            .version("abc")
            .header("Content-Type", "application/json")
            .body(ipa_body(&token).into_bytes());
        d.run(case(
            &format!("heartbeat at version abc, Accept: {a:?}"),
            with_accept(hb_abc, a),
            if how == Local { Local } else { Proxied },
        ));
    }
    // Repeated headers are folded (`, `) as Ironic's HTTP server does.
    for (extra, how) in [("application/json;q=0", Local), ("text/html", Forwarded)] {
        d.run(case(
            &format!("lookup at version abc, Accept: application/json and Accept: {extra}"),
            lookup(&q).version("abc").header("Accept", extra),
            how,
        ));
    }
    for path in ["/v1//lookup", "/v1//lookup/"] {
        for v in ["1.61", "1.62"] {
            d.run(case(
                &format!("{path} at {v}: Ironic routes it to v1's index"),
                Request::get(&format!("{path}?{q}")).version(v),
                Forwarded,
            ));
        }
    }
    // Other methods reach the lookup controller only through pecan's `_method`, which Ironic
    // refuses as an unexpected argument: no token, proxied.
    for m in ["POST", "PUT", "DELETE", "PATCH"] {
        d.run(case(
            &format!("{m} /v1/lookup?_method=GET at 1.61"),
            Request::new(m, &format!("/v1/lookup?{q}&_method=GET")).version("1.61"),
            Proxied,
        ));
    }
    // The old vendor-passthru lookup is gone from Ironic 39 ("No handler for method lookup").
    for (m, target, how) in [
        (
            "GET",
            "/v1/drivers/fake-hardware/vendor_passthru/lookup",
            Forwarded,
        ),
        (
            "POST",
            "/v1/drivers/fake-hardware/vendor_passthru/lookup",
            Proxied,
        ),
        (
            "GET",
            "/v1/drivers/fake-hardware/vendor_passthru?method=lookup",
            Proxied,
        ),
    ] {
        d.run(case(
            &format!("{m} {target} at 1.61: no lookup there"),
            Request::new(m, target)
                .version("1.61")
                .header("Content-Type", "application/json")
                .body(if m == "POST" {
                    b"{}".to_vec()
                } else {
                    Vec::new()
                }),
            how,
        ));
    }
    d.run(case(
        "HEAD /v1/lookup at 1.61: no body",
        Request::new("HEAD", &format!("/v1/lookup?{q}")).version("1.61"),
        Proxied,
    ));
    d.finish(60);

    // Below 1.62: Ironic's answer, the stored token replaced by null.
    let mut leaks = Vec::new();
    let paths = [
        "/v1/lookup",
        "/v1/lookup/",
        "/lookup",
        "/lookup.json",
        "/v1/lookup.json",
        "/v1/%6Cookup",
        "/v1/lookup/.json",
        "/v1//lookup",
        "//v1/lookup",
    ];
    for v in ["1.22", "1.30", "1.61"] {
        for path in paths {
            for &a in accepts {
                let req = with_accept(Request::get(&format!("{path}?{q}")).version(v), a);
                let direct = http::send(ir, &req);
                let gw = s.gw.send(&req);
                let what = format!("{v} {path} Accept: {a:?}");
                if gw.text().contains(&token) {
                    leaks.push(what.clone());
                }
                let expect = direct
                    .text()
                    .replace(&format!("\"{token}\""), "null")
                    .replace(&format!("http://{ir}"), &format!("http://{}", s.gw.addr()));
                assert_eq!(gw.status, direct.status, "{what}");
                assert_eq!(gw.text(), expect, "{what}");
                assert_eq!(
                    gw.header("Content-Length").map(str::to_string),
                    Some(expect.len().to_string()),
                    "{what}"
                );
                assert_eq!(
                    gw.header("Content-Type"),
                    direct.header("Content-Type"),
                    "{what}"
                );
                assert_eq!(gw.versions(), direct.versions(), "{what}");
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "the stored raw token came back through the gateway {} times: {leaks:#?}",
        leaks.len()
    );
}

/// An answer that Ironic's HTTP server writes without a `Date` header (here its 400 for a
/// request target starting with `//`, "Absolute URI not allowed if server is not a proxy.")
/// gets a `Date` added by the gateway's proxy (Pingora); everything else is relayed as is.
#[test]
#[ignore = "known difference (README): Pingora's HTTP server adds Date to every answer, even where Ironic's server sent none"]
fn known_difference_date_added_to_an_answer_without_one() {
    engine::print_normalisations();
    let s = Stack::start(engine::peer(1, 1, true));
    let mut d = Diff::new(&s, "bug: Date");
    d.run(case(
        "GET //v1/lookup: Ironic's server answers 400 without Date",
        Request::get("//v1/lookup?addresses=52:54:00:00:00:00").version("1.62"),
        Forwarded,
    ));
    d.finish(1);
}

/// Deliberate deviation: the node index is as fresh as its staleness bound. A node enrolled
/// straight on Ironic (not through the gateway, whose forwarded creations trigger a round at
/// once) may get the index's 404 for at most two rounds and a margin; after that the lookup
/// reaches Ironic and mints the agent's token. (IPA retries a failed lookup with back-off for
/// 10 minutes, so a bounded delay costs an agent at most that long.)
#[test]
fn deviation_node_enrolled_on_ironic_is_known_within_the_staleness_bound() {
    let (s, _) = Stack::start_with(engine::peer(1, 1, true), &[], |cfg| {
        cfg.set("ironic_edge.sync.enabled", true)
            .set("ironic_edge.sync.interval_seconds", 1);
    });
    let fresh = s.ironic.seed_more(1, "enroll", 1);
    let q = format!("addresses={}", fresh[0].macs[0]);
    let t0 = std::time::Instant::now();
    // Two 1 s rounds, the 5 s freshness margin, and room for a loaded machine.
    let bound = std::time::Duration::from_secs(2 + 5 + 8);
    loop {
        let r = s.gw.send(&lookup_at(&q, "1.62"));
        if r.status == 200 {
            let token = r.json()["config"]["agent_token"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                engine::is_raw_token(&token),
                "the first lookup Ironic answers mints: {}",
                engine::describe(&r)
            );
            break;
        }
        assert_eq!(r.status, 404, "{}", engine::describe(&r));
        assert!(
            t0.elapsed() < bound,
            "still refused after {:?}",
            t0.elapsed()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
