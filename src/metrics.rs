//! Counters for the ops listener, with bounded labels only (a route template and an outcome,
//! never a node UUID, name or MAC).

use crate::upstream::governor::{Class, GovernorStats, Lane};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The route template of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Lookup = 0,
    Heartbeat = 1,
    Other = 2,
}

impl Route {
    pub const ALL: [Route; 3] = [Route::Lookup, Route::Heartbeat, Route::Other];
    pub fn label(self) -> &'static str {
        match self {
            Route::Lookup => "lookup",
            Route::Heartbeat => "heartbeat",
            Route::Other => "other",
        }
    }
}

/// How a request was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered by the gateway without the upstream.
    Local = 0,
    /// Answered by the upstream.
    Forwarded = 1,
    /// Denied by the route policy.
    Denied = 2,
    /// The edge's own 503: Ironic could not be asked (unreachable, or no place in its budget
    /// in time) or did not answer in time.
    Unavailable = 3,
    /// Refused: the source is not one its listener serves (`listeners[].allow`/`deny`).
    RefusedSource = 4,
    /// The source was over a per-source limit (`limits.per_source_*`): Ironic's error shape
    /// with 429, or a verified heartbeat accepted at the edge.
    OverLimit = 5,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Local,
        Outcome::Forwarded,
        Outcome::Denied,
        Outcome::Unavailable,
        Outcome::RefusedSource,
        Outcome::OverLimit,
    ];
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Local => "local",
            Outcome::Forwarded => "forwarded",
            Outcome::Denied => "denied",
            Outcome::Unavailable => "unavailable",
            Outcome::RefusedSource => "refused_source",
            Outcome::OverLimit => "over_limit",
        }
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: [[AtomicU64; Outcome::ALL.len()]; 3],
    upstream_requests: [AtomicU64; 3],
    upstream_errors: [AtomicU64; 3],
    store_errors: AtomicU64,
    sync_requests: AtomicU64,
    heartbeats_deferred: AtomicU64,
    heartbeats_relayed: AtomicU64,
    /// Requests that found no place in Ironic's budget in time, by governor class.
    deferred: [AtomicU64; Class::COUNT],
    sealed_unopenable: AtomicU64,
    heartbeats_dropped: AtomicU64,
    /// Kept heartbeats waiting for the relay, as the relay last counted them (a gauge).
    heartbeats_kept: AtomicU64,
}

impl Metrics {
    pub fn request(&self, route: Route, outcome: Outcome) {
        self.requests[route as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn upstream_request(&self, route: Route) {
        self.upstream_requests[route as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn upstream_error(&self, route: Route) {
        self.upstream_errors[route as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }
    pub fn sync_request(&self) {
        self.sync_requests.fetch_add(1, Ordering::Relaxed);
    }
    pub fn heartbeat_deferred(&self) {
        self.heartbeats_deferred.fetch_add(1, Ordering::Relaxed);
    }
    pub fn heartbeat_relayed(&self) {
        self.heartbeats_relayed.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn deferred(&self, class: Class) {
        self.deferred[class as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn heartbeat_dropped(&self) {
        self.heartbeats_dropped.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn set_heartbeats_kept(&self, n: u64) {
        self.heartbeats_kept.store(n, Ordering::Relaxed);
    }
    pub fn sealed_unopenable(&self) {
        self.sealed_unopenable.fetch_add(1, Ordering::Relaxed);
    }
    pub fn requests(&self, route: Route, outcome: Outcome) -> u64 {
        self.requests[route as usize][outcome as usize].load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition, with the load governor's state.
    pub(crate) fn render_with(&self, governor: &GovernorStats) -> String {
        let mut out = self.render();
        let per_class = |f: &dyn Fn(Class) -> u64| -> Vec<(String, u64)> {
            Class::ALL
                .iter()
                .map(|c| (format!("{{class=\"{}\"}}", c.label()), f(*c)))
                .collect()
        };
        family(
            &mut out,
            "ironic_edge_budget_deferred_total",
            "Requests to Ironic that found no place in its budget in time, by class.",
            &per_class(&|c| self.deferred[c as usize].load(Ordering::Relaxed)),
        );
        let per_lane = |v: &[u64; 2]| -> Vec<(String, u64)> {
            Lane::ALL
                .iter()
                .map(|l| (format!("{{lane=\"{}\"}}", l.label()), v[*l as usize]))
                .collect()
        };
        family(
            &mut out,
            "ironic_edge_budget_overloaded_total",
            "Ironic's answers that said it was overloaded (5xx, timeouts, slow answers), by lane (its API, its conductor's worker pool).",
            &per_lane(&governor.overloaded),
        );
        gauge(
            &mut out,
            "ironic_edge_budget_waiting",
            "Requests waiting for a place in Ironic's budget, by class.",
            &per_class(&|c| governor.waiting[c as usize] as u64),
        );
        gauge(
            &mut out,
            "ironic_edge_budget_in_flight",
            "Requests in flight to Ironic.",
            &[(String::new(), governor.in_flight as u64)],
        );
        let per_budget = |v: &[u64; 2]| -> Vec<(String, f64)> {
            ["ironic", "conductor_pool"]
                .iter()
                .zip(v)
                .map(|(name, millis)| (format!("{{budget=\"{name}\"}}"), *millis as f64 / 1000.0))
                .collect()
        };
        rate_gauge(
            &mut out,
            "ironic_edge_budget_rate_per_second",
            "The rate the budget allows now (learnt): everything sent to Ironic, and heartbeats (its conductor's worker pool).",
            &per_budget(&governor.rate_millis),
        );
        rate_gauge(
            &mut out,
            "ironic_edge_budget_proven_per_second",
            "The best rate Ironic answered without an overload answer over 10 s, by budget: for a minute after an outage the rate is no higher.",
            &per_budget(&governor.proven_millis),
        );
        out
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut rows = Vec::new();
        for r in Route::ALL {
            for o in Outcome::ALL {
                rows.push((
                    format!("{{route=\"{}\",outcome=\"{}\"}}", r.label(), o.label()),
                    self.requests(r, o),
                ));
            }
        }
        family(
            &mut out,
            "ironic_edge_requests_total",
            "Requests by route template and how they were answered.",
            &rows,
        );
        let per_route = |counters: &[AtomicU64; 3]| -> Vec<(String, u64)> {
            Route::ALL
                .iter()
                .map(|r| {
                    (
                        format!("{{route=\"{}\"}}", r.label()),
                        load(&counters[*r as usize]),
                    )
                })
                .collect()
        };
        family(
            &mut out,
            "ironic_edge_upstream_requests_total",
            "Requests the gateway sent to Ironic.",
            &per_route(&self.upstream_requests),
        );
        family(
            &mut out,
            "ironic_edge_upstream_errors_total",
            "Upstream exchanges that produced no answer.",
            &per_route(&self.upstream_errors),
        );
        for (name, help, counter) in [
            (
                "ironic_edge_store_errors_total",
                "Redis calls that failed or missed their deadline.",
                &self.store_errors,
            ),
            (
                "ironic_edge_sync_requests_total",
                "Requests the node sync sent to Ironic.",
                &self.sync_requests,
            ),
            (
                "ironic_edge_heartbeats_deferred_total",
                "Verified heartbeats accepted while Ironic failed, kept for the relay.",
                &self.heartbeats_deferred,
            ),
            (
                "ironic_edge_heartbeats_relayed_total",
                "Kept heartbeats Ironic has received since.",
                &self.heartbeats_relayed,
            ),
            (
                "ironic_edge_heartbeats_dropped_total",
                "Kept heartbeats dropped after Ironic refused them repeatedly (5xx, 409).",
                &self.heartbeats_dropped,
            ),
            (
                "ironic_edge_sealed_unopenable_total",
                "Kept heartbeats and minted answers that could not be opened (another seal \
                 key, or moved to another key in Redis): dropped.",
                &self.sealed_unopenable,
            ),
        ] {
            family(&mut out, name, help, &[(String::new(), load(counter))]);
        }
        gauge(
            &mut out,
            "ironic_edge_heartbeats_kept",
            "Kept heartbeats waiting for the relay (all gateway processes), as the relay last \
             counted them.",
            &[(String::new(), load(&self.heartbeats_kept))],
        );
        out
    }
}

/// One counter family: its HELP and TYPE lines, then one line per label set.
fn family(out: &mut String, name: &str, help: &str, rows: &[(String, u64)]) {
    typed(out, name, help, "counter", rows);
}

fn gauge(out: &mut String, name: &str, help: &str, rows: &[(String, u64)]) {
    typed(out, name, help, "gauge", rows);
}

fn rate_gauge(out: &mut String, name: &str, help: &str, rows: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (labels, value) in rows {
        let _ = writeln!(out, "{name}{labels} {value:.3}");
    }
}

fn typed(out: &mut String, name: &str, help: &str, kind: &str, rows: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in rows {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bounded_labels() {
        let m = Metrics::default();
        m.request(Route::Lookup, Outcome::Local);
        m.request(Route::Lookup, Outcome::Local);
        m.upstream_request(Route::Heartbeat);
        m.set_heartbeats_kept(4);
        let text = m.render();
        assert!(text.contains("ironic_edge_requests_total{route=\"lookup\",outcome=\"local\"} 2\n"));
        assert!(text.contains("ironic_edge_upstream_requests_total{route=\"heartbeat\"} 1\n"));
        assert!(text
            .contains("# TYPE ironic_edge_heartbeats_kept gauge\nironic_edge_heartbeats_kept 4\n"));
        // 3 routes x every outcome, and nothing else labelled.
        assert_eq!(
            text.matches("ironic_edge_requests_total{").count(),
            3 * Outcome::ALL.len()
        );
    }
}
