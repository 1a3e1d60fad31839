//! The metrics an on-call engineer reads (issue 11, items 4 and 7): the new families move with
//! the traffic that should move them, and the shipped Grafana dashboard
//! (`deploy/grafana-dashboard.json`) and Prometheus alert rules
//! (`deploy/prometheus-alerts.yaml`) use only metrics, labels and label values the gateway
//! exposes, in expressions that parse (`promql-parser`): a renamed metric or label value fails
//! here, not on a dashboard at 3 a.m.

mod common;

use common::gateway::metric_value;
use common::{lookup, wait_for, Env, FakeIronic, MiniIronic, Request};
use promql_parser::parser::{self, Expr};
use promql_parser::util::{walk_expr, ExprVisitor};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

const CB: &str = "https://10.0.0.5:9999";

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

/// The series of a Prometheus text page: sample name (`_bucket`, `_count`... included) → the
/// label sets it has.
type Exposed = BTreeMap<String, Vec<BTreeMap<String, String>>>;

fn exposed(text: &str) -> Exposed {
    let mut out = Exposed::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        out.entry(name.to_string()).or_default().push(labels);
    }
    out
}

/// Series Prometheus makes itself, or labels it attaches to every series it scrapes.
const PROMETHEUS_OWN: [&str; 1] = ["up"];
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// What one selector asks for: the metric, and its label matchers (name, `Some(value)` for an
/// equality matcher).
#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<(String, Option<String>)>,
}

/// Labels an aggregation keeps (`by (...)`), with the metric names below it.
#[derive(Debug)]
struct Grouping {
    labels: Vec<String>,
    metrics: Vec<String>,
}

#[derive(Default)]
struct Collect {
    selectors: Vec<Selector>,
    groupings: Vec<Grouping>,
}

fn selector_of(vs: &parser::VectorSelector) -> Option<Selector> {
    use promql_parser::label::MatchOp;
    let name = vs.name.clone().or_else(|| {
        vs.matchers
            .matchers
            .iter()
            .find(|m| m.name == "__name__")
            .map(|m| m.value.clone())
    })?;
    let matchers = vs
        .matchers
        .matchers
        .iter()
        .filter(|m| m.name != "__name__")
        .map(|m| {
            let value = matches!(m.op, MatchOp::Equal).then(|| m.value.clone());
            (m.name.clone(), value)
        })
        .collect();
    Some(Selector { name, matchers })
}

/// The metric names an expression selects.
fn names_below(expr: &Expr) -> Vec<String> {
    let mut c = Collect::default();
    let _ = walk_expr(&mut c, expr);
    c.selectors.into_iter().map(|s| s.name).collect()
}

impl ExprVisitor for Collect {
    type Error = ();

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, ()> {
        match expr {
            Expr::VectorSelector(vs) => self.selectors.extend(selector_of(vs)),
            Expr::MatrixSelector(ms) => self.selectors.extend(selector_of(&ms.vs)),
            Expr::Aggregate(agg) => {
                if let Some(parser::LabelModifier::Include(labels)) = &agg.modifier {
                    self.groupings.push(Grouping {
                        labels: labels.labels.clone(),
                        metrics: names_below(&agg.expr),
                    });
                }
            }
            _ => {}
        }
        Ok(true)
    }
}

/// Grafana's variables replaced by what Prometheus would receive.
fn as_prometheus_sees_it(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("${instance}", ".*")
        .replace("$instance", ".*")
}

/// Checks one expression against what the gateway exposes: it parses, every metric it selects
/// is exposed (or is Prometheus's own), every label it matches or groups by is one of that
/// metric's, and every value it matches with `=` is one the gateway writes.
fn check_expr(expr: &str, exposed: &Exposed) -> Result<(), String> {
    let ast = parser::parse(&as_prometheus_sees_it(expr)).map_err(|e| format!("{expr}: {e}"))?;
    let mut c = Collect::default();
    let _ = walk_expr(&mut c, &ast);
    if c.selectors.is_empty() {
        return Err(format!("{expr}: selects no metric"));
    }
    let labels_of = |name: &str| -> BTreeSet<String> {
        exposed
            .get(name)
            .into_iter()
            .flatten()
            .flat_map(|l| l.keys().cloned())
            .chain(TARGET_LABELS.iter().map(|l| l.to_string()))
            .collect()
    };
    for s in &c.selectors {
        if PROMETHEUS_OWN.contains(&s.name.as_str()) {
            continue;
        }
        let Some(series) = exposed.get(&s.name) else {
            return Err(format!("{expr}: {} is not exposed by the gateway", s.name));
        };
        for (label, value) in &s.matchers {
            if TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            if !labels_of(&s.name).contains(label) {
                return Err(format!("{expr}: {} has no label {label}", s.name));
            }
            if let Some(v) = value {
                if !series.iter().any(|l| l.get(label) == Some(v)) {
                    return Err(format!(
                        "{expr}: {}{{{label}=\"{v}\"}} is never written",
                        s.name
                    ));
                }
            }
        }
    }
    for g in &c.groupings {
        for label in &g.labels {
            if label == "le" || TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            if !g.metrics.iter().all(|m| labels_of(m).contains(label)) {
                return Err(format!(
                    "{expr}: grouped by {label}, which {:?} lack",
                    g.metrics
                ));
            }
        }
    }
    Ok(())
}

// ---- the alert rules, as Prometheus reads them ----

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<AlertRule>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertRule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn alert_rules() -> RuleFile {
    let text = std::fs::read_to_string(deploy("prometheus-alerts.yaml")).expect("the rule file");
    serde_yaml::from_str(&text).expect("groups/rules/alert/expr/for/labels/annotations")
}

/// Every expression of the dashboard (panel targets, and the metric its variables read),
/// named by where it is.
fn dashboard_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy("grafana-dashboard.json")).expect("the dashboard");
    let d: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    for field in ["title", "uid"] {
        assert!(
            d[field].as_str().is_some_and(|s| !s.is_empty()),
            "dashboard {field}"
        );
    }
    assert!(d["schemaVersion"].as_u64().is_some(), "schemaVersion");
    let panels = d["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{title}: id twice"
        );
        for g in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][g].as_u64().is_some(), "{title}: gridPos.{g}");
        }
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().expect("a panel has targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(refs.insert(t["refId"].as_str().expect("refId")), "{title}");
            let expr = t["expr"].as_str().expect("every target has an expr");
            exprs.push((format!("panel {title:?}"), expr.to_string()));
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        let q = v["query"]["query"].as_str().or_else(|| v["query"].as_str());
        // `label_values(<metric>, <label>)`: the metric must be exposed, with that label.
        if let Some(inner) = q
            .and_then(|q| q.strip_prefix("label_values("))
            .and_then(|q| q.strip_suffix(')'))
        {
            let (metric, label) = inner.split_once(',').expect("label_values(metric, label)");
            exprs.push((
                format!("variable {}", v["name"]),
                format!("count by ({}) ({})", label.trim(), metric.trim()),
            ));
        }
    }
    exprs
}

/// A gateway with the node sync on (the sync's gauges show only then) after some traffic:
/// lookups, a heartbeat, a proxied request.
fn scraped_after_traffic() -> String {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install_with_listings(&fake);
    let mac = common::ironic::random_mac();
    let uuid = mini.add_node(&[&mac]);
    let env = Env::start_with_fake(fake, |c| {
        c.set("ironic_edge.sync.enabled", true)
            .set("ironic_edge.sync.interval_seconds", 1);
    });
    env.wait_for_index();
    let token = common::minted_token(&env, &mac);
    assert_eq!(env.send(&common::heartbeat(&uuid, CB, &token)).status, 202);
    env.send(&lookup(&common::ironic::random_mac()));
    env.send(&Request::get("/v1/nodes?fields=uuid").version("1.62"));
    env.gw.metrics()
}

#[test]
fn the_dashboard_and_the_alert_rules_use_only_what_the_gateway_exposes() {
    let page = scraped_after_traffic();
    let exposed = exposed(&page);
    let rules = alert_rules();
    assert!(!rules.groups.is_empty());
    let mut failures = Vec::new();
    let mut alerts = BTreeSet::new();
    for group in &rules.groups {
        assert!(!group.name.is_empty() && !group.rules.is_empty());
        for r in &group.rules {
            assert!(alerts.insert(r.alert.clone()), "{} twice", r.alert);
            promql_parser::util::parse_duration(&r.for_)
                .unwrap_or_else(|e| panic!("{}: for {:?}: {e}", r.alert, r.for_));
            assert!(
                ["critical", "warning", "info"].contains(&r.labels["severity"].as_str()),
                "{}: severity",
                r.alert
            );
            for a in ["summary", "description"] {
                assert!(
                    r.annotations.get(a).is_some_and(|t| t.len() > 20),
                    "{}: annotation {a} says what to do",
                    r.alert
                );
            }
            if let Err(e) = check_expr(&r.expr, &exposed) {
                failures.push(format!("alert {}: {e}", r.alert));
            }
        }
    }
    let exprs = dashboard_exprs();
    assert!(exprs.len() > 20, "the dashboard's expressions");
    for (place, expr) in &exprs {
        if let Err(e) = check_expr(expr, &exposed) {
            failures.push(format!("{place}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\n\nexposed:\n{page}");
    // What the on-call engineer is promised is there, labelled as documented.
    for (name, labels) in [
        (
            "ironic_edge_request_duration_seconds_bucket",
            &[("route", "lookup"), ("outcome", "local")][..],
        ),
        (
            "ironic_edge_upstream_duration_seconds_count",
            &[("route", "heartbeat")],
        ),
        (
            "ironic_edge_upstream_failures_total",
            &[("kind", "connect")],
        ),
        ("ironic_edge_redis_duration_seconds_count", &[]),
        (
            "ironic_edge_sync_round_duration_seconds_count",
            &[("result", "full")],
        ),
        ("ironic_edge_sync_lag_seconds", &[]),
        ("ironic_edge_relay_oldest_age_seconds", &[]),
        (
            "ironic_edge_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
        ),
    ] {
        assert!(
            metric_value(&page, name, labels).is_some(),
            "{name} {labels:?}:\n{page}"
        );
    }
    // Optional: Prometheus's own checker, where it is installed.
    if let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy("prometheus-alerts.yaml"))
        .output()
    {
        assert!(
            out.status.success(),
            "promtool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The check itself: it would catch a renamed metric, label or label value, and a broken
/// expression (a synthetic page, no gateway).
#[test]
fn the_check_fails_for_what_a_rename_would_break() {
    let page = "ironic_edge_requests_total{outcome=\"local\",route=\"lookup\"} 1\n\
                ironic_edge_x_seconds_bucket{le=\"0.1\"} 1\n";
    let exposed = exposed(page);
    let ok = [
        "sum by (route) (rate(ironic_edge_requests_total{outcome=\"local\",instance=~\"$instance\"}[$__rate_interval]))",
        "histogram_quantile(0.99, sum by (le) (rate(ironic_edge_x_seconds_bucket[5m])))",
        "up{job=\"ironic-edge\"} == 0",
    ];
    for e in ok {
        assert_eq!(check_expr(e, &exposed), Ok(()), "{e}");
    }
    for bad in [
        "rate(ironic_edge_request_total[5m])",
        "ironic_edge_requests_total{path=\"/v1/lookup\"}",
        "ironic_edge_requests_total{outcome=\"cached\"}",
        "sum by (kind) (ironic_edge_requests_total)",
        "rate(ironic_edge_requests_total[5m]",
        "42",
    ] {
        assert!(check_expr(bad, &exposed).is_err(), "{bad} passes");
    }
}

/// The new families move with the traffic that should move them: answers and their latency
/// are counted together, a failing Ironic shows as 5xx failures and an aging relay backlog
/// that drains once it is back, a frozen Redis as deadline misses.
#[test]
fn the_new_metrics_follow_what_happens() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install_with_listings(&fake);
    let failing = mini.fail_heartbeats_while(&fake);
    let mac = common::ironic::random_mac();
    let uuid = mini.add_node(&[&mac]);
    let mut env = Env::start_with_fake(fake, |c| {
        c.with_seal_key()
            .set("ironic_edge.heartbeat.relay_when_upstream_fails", true)
            .set("ironic_edge.sync.enabled", true)
            .set("ironic_edge.sync.interval_seconds", 1);
    });
    env.wait_for_index();
    let m = |name: &str, labels: &[(&str, &str)]| env.gw.metric(name, labels).unwrap_or(0.0);
    let bound = m("ironic_edge_sync_staleness_bound_seconds", &[]);
    assert_eq!(bound, 7.0, "2 x 1 s + 5 s");
    assert!(m("ironic_edge_sync_lag_seconds", &[]) <= bound);
    assert!(
        m(
            "ironic_edge_sync_round_duration_seconds_count",
            &[("result", "full")]
        ) >= 1.0
    );

    let token = common::minted_token(&env, &mac);
    let first = env.send(&common::versioned_heartbeat(&uuid, &token, "13.0.0"));
    assert_eq!(first.status, 202, "{}", first.text());
    failing.store(true, Ordering::SeqCst);
    // (Another agent version: not a repeat the edge would coalesce.)
    let r = env.send(&common::versioned_heartbeat(&uuid, &token, "13.0.1"));
    assert_eq!(
        r.status,
        202,
        "a verified heartbeat while Ironic fails: {}",
        r.text()
    );
    assert!(
        m(
            "ironic_edge_upstream_failures_total",
            &[("route", "heartbeat"), ("kind", "status_5xx")]
        ) >= 1.0
    );
    // The relay reads its backlog between waves: one node, waiting.
    let aging = wait_for(Duration::from_secs(10), || {
        let page = env.gw.metrics();
        let kept = metric_value(&page, "ironic_edge_heartbeats_kept", &[])?;
        let age = metric_value(&page, "ironic_edge_relay_oldest_age_seconds", &[])?;
        (kept == 1.0 && age > 0.0).then_some(())
    });
    assert!(aging.is_some(), "{}", env.gw.metrics());
    failing.store(false, Ordering::SeqCst);
    let drained = wait_for(Duration::from_secs(15), || {
        let page = env.gw.metrics();
        let relayed = metric_value(&page, "ironic_edge_heartbeats_relayed_total", &[])?;
        let age = metric_value(&page, "ironic_edge_relay_oldest_age_seconds", &[])?;
        (relayed >= 1.0 && age == 0.0).then_some(())
    });
    assert!(drained.is_some(), "{}", env.gw.metrics());

    // Redis frozen: calls miss their deadline, and the request is still answered (forwarded).
    let misses = m("ironic_edge_redis_deadline_misses_total", &[]);
    env.redis.freeze();
    let r = env.send(&lookup(&common::ironic::random_mac()));
    env.redis.thaw();
    assert_eq!(r.status, 404);
    assert!(m("ironic_edge_redis_deadline_misses_total", &[]) > misses);
    assert!(m("ironic_edge_redis_duration_seconds_count", &[]) > 0.0);

    // Every answer counted is observed once, under the same labels.
    let page = env.gw.metrics();
    for route in ["lookup", "heartbeat", "other"] {
        for outcome in ["local", "forwarded", "unavailable"] {
            let labels = [("route", route), ("outcome", outcome)];
            assert_eq!(
                metric_value(&page, "ironic_edge_requests_total", &labels),
                metric_value(&page, "ironic_edge_request_duration_seconds_count", &labels),
                "{route} {outcome}"
            );
        }
    }
    assert!(
        metric_value(
            &page,
            "ironic_edge_upstream_duration_seconds_count",
            &[("route", "lookup")]
        )
        .unwrap()
            >= 1.0
    );
}
