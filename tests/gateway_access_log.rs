//! The structured access log (opt-in): one JSON line per request with its route, node,
//! source, disposition, status and times, and never a token or a query string.

mod common;

use common::{ironic, lookup, wait_for, Env, Request};
use std::time::Duration;

/// The access log's lines, once `done` says they are all there.
fn lines(
    path: &std::path::Path,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    // (Generous: the writer thread is starved on a loaded machine.)
    wait_for(Duration::from_secs(20), || {
        let text = std::fs::read_to_string(path).ok()?;
        let v: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        done(&v).then_some(v)
    })
    .unwrap_or_else(|| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        panic!("the access log's lines, so far:\n{text}")
    })
}

#[test]
fn each_request_is_one_line_without_tokens_or_queries() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let path = log.path().to_path_buf();
    let p = path.to_str().unwrap().to_string();
    let env = Env::start_with(|c| {
        c.set("ironic_edge.access_log", p.as_str());
    });
    let uuid = ironic::random_uuid();
    let token = "secret-agent-token-0123456789";
    env.send(&lookup(&ironic::random_mac()));
    env.send(
        &Request::post(&format!("/v1/heartbeat/{uuid}?agent_token={token}"))
            .version("1.68")
            .json_body(&format!(
                "{{\"callback_url\": \"https://127.0.0.1:9999\", \"agent_token\": \"{token}\"}}"
            )),
    );
    env.send(&Request::get("/v1/nodes?fields=uuid").version("1.62"));
    let all = lines(&path, |v| v.iter().any(|l| l["path"] == "/v1/nodes"));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(token), "a token in the access log");
    assert!(
        !text.contains("addresses="),
        "a query string in the access log"
    );
    // (The harness's start-up probes, lookups answered at the edge, come first.)
    let find = |f: &dyn Fn(&serde_json::Value) -> bool| {
        all.iter()
            .rev()
            .find(|l| f(l))
            .cloned()
            .expect("the request's line")
    };
    let got = [
        find(&|l| l["route"] == "lookup"),
        find(&|l| l["route"] == "heartbeat"),
        find(&|l| l["path"] == "/v1/nodes"),
    ];
    assert_eq!(got[0]["route"], "lookup");
    assert_eq!(got[0]["path"], "/v1/lookup");
    assert_eq!(got[0]["status"], 404);
    assert_eq!(got[0]["source"], "127.0.0.1");
    assert_eq!(got[0]["disposition"], "forwarded");
    assert!(got[0]["upstream_ms"].is_u64(), "{}", got[0]);
    assert!(got[0]["request_id"].as_str().unwrap().starts_with("req-"));
    assert_eq!(got[1]["route"], "heartbeat");
    assert_eq!(got[1]["node"], uuid.as_str());
    assert_eq!(got[2]["route"], "other");
    assert_eq!(got[2]["disposition"], "proxied");
    assert_eq!(got[2]["path"], "/v1/nodes");
    assert!(got[2]["upstream_ms"].is_u64());
    assert!(got.iter().all(|l| l["total_ms"].is_u64()));
    // The rule that decided each: the harness's probe (a lookup at 1.1) and the heartbeat
    // (no agent_version) were Ironic's errors made at the edge; the rest reached Ironic.
    let probe = find(&|l| l["route"] == "lookup" && l["disposition"] == "local");
    assert_eq!(probe["rule"], "edge_error", "{probe}");
    let rules: Vec<&str> = got.iter().map(|l| l["rule"].as_str().unwrap()).collect();
    assert_eq!(rules, ["forwarded", "edge_error", "forwarded"]);
}

/// The metrics count each request once under the rule that decided it, as the access log
/// names it (counted when the request ends, just after its answer left).
#[test]
fn decisions_are_counted_by_rule() {
    let env = Env::start_with(|_| {});
    // No version header is API 1.1, where Ironic has no lookup: its 404, made at the edge.
    env.send(&Request::get(&format!(
        "/v1/lookup?addresses={}",
        ironic::random_mac()
    )));
    env.send(&Request::get("/v1/nodes?fields=uuid").version("1.62"));
    let sum = |text: &str, family: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let counted = wait_for(Duration::from_secs(10), || {
        let text = env.gw.metrics();
        let requests = sum(&text, "ironic_edge_requests_total");
        (requests > 0.0 && sum(&text, "ironic_edge_decisions_total") == requests).then_some(())
    });
    assert!(counted.is_some(), "{}", env.gw.metrics());
    let get = |name: &str, labels: &[(&str, &str)]| env.gw.metric(name, labels).unwrap_or(0.0);
    assert_eq!(
        get("ironic_edge_decisions_total", &[("rule", "edge_error")]),
        get(
            "ironic_edge_requests_total",
            &[("route", "lookup"), ("outcome", "local")]
        ),
        "every lookup answered here was an edge error (the harness's probes and this one)"
    );
    let forwarded: f64 = ["lookup", "heartbeat", "other"]
        .iter()
        .map(|r| {
            get(
                "ironic_edge_requests_total",
                &[("route", r), ("outcome", "forwarded")],
            )
        })
        .sum();
    assert!(forwarded >= 1.0, "the GET /v1/nodes at least");
    assert_eq!(
        get("ironic_edge_decisions_total", &[("rule", "forwarded")]),
        forwarded,
        "what Ironic answered"
    );
}
