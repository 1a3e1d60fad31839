//! The ops listener's metrics (`/metrics`), on the `prometheus` crate, with bounded labels
//! only (a route template, an outcome, a failure kind, a governor class or lane, never a node
//! UUID, name, MAC or address).

use crate::disposition::Rule;
use crate::upstream::governor::{Class, GovernorStats, Lane};
use crate::upstream::{UpstreamError, UpstreamResponse};
use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{
    CounterVec, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

/// Why an exchange with Ironic failed, as far as the gateway can tell (`kind` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UpstreamFailure {
    /// Not connected: refused, no route, connect timeout, TLS handshake.
    Connect = 0,
    /// Connected, no answer in time (read or write timeout, the exchange's deadline): Ironic
    /// took the request and did not keep up.
    Timeout = 1,
    /// Connected, then the exchange broke off (reset, closed, a protocol error).
    Broken = 2,
    /// The answer was larger than the agent paths buffer.
    TooLarge = 3,
    /// Ironic answered with a 5xx (503 for no free conductor workers among them).
    Status5xx = 4,
}

impl UpstreamFailure {
    pub(crate) const ALL: [UpstreamFailure; 5] = [
        UpstreamFailure::Connect,
        UpstreamFailure::Timeout,
        UpstreamFailure::Broken,
        UpstreamFailure::TooLarge,
        UpstreamFailure::Status5xx,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Broken => "broken",
            UpstreamFailure::TooLarge => "too_large",
            UpstreamFailure::Status5xx => "status_5xx",
        }
    }

    /// The failure of an exchange the gateway's own client made; `None` for a request that
    /// was never sent (no place in the budget: counted as deferred).
    pub(crate) fn of_error(e: &UpstreamError) -> Option<Self> {
        match e {
            UpstreamError::Connect(_) => Some(UpstreamFailure::Connect),
            // The same reading as the governor's (`governor::sample_of`): Pingora's
            // `ReadTimedout`/`WriteTimedout`, or the client's own deadline.
            UpstreamError::Exchange(e)
                if e.contains("Timedout") || e.contains("deadline exceeded") =>
            {
                Some(UpstreamFailure::Timeout)
            }
            UpstreamError::Exchange(_) => Some(UpstreamFailure::Broken),
            UpstreamError::TooLarge => Some(UpstreamFailure::TooLarge),
            UpstreamError::Busy => None,
        }
    }

    /// The failure of a request Pingora proxied, from its error type.
    pub(crate) fn of_pingora(etype: &pingora::ErrorType) -> Self {
        use pingora::ErrorType as E;
        match etype {
            E::ConnectTimedout
            | E::ConnectRefused
            | E::ConnectNoRoute
            | E::TLSWantX509Lookup
            | E::TLSHandshakeFailure
            | E::TLSHandshakeTimedout
            | E::InvalidCert
            | E::HandshakeError
            | E::ConnectError
            | E::BindError
            | E::SocketError
            | E::ConnectProxyFailure => UpstreamFailure::Connect,
            E::ReadTimedout | E::WriteTimedout => UpstreamFailure::Timeout,
            _ => UpstreamFailure::Broken,
        }
    }
}

/// How a sync round ended (`result` label of the round histogram).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SyncRound {
    Full = 0,
    Incremental = 1,
    Failed = 2,
}

impl SyncRound {
    pub(crate) const ALL: [SyncRound; 3] =
        [SyncRound::Full, SyncRound::Incremental, SyncRound::Failed];

    pub(crate) fn label(self) -> &'static str {
        match self {
            SyncRound::Full => "full",
            SyncRound::Incremental => "incremental",
            SyncRound::Failed => "failed",
        }
    }

    /// The round's label from what [`crate::sync::NodeSync::round`] returned.
    pub(crate) fn of<E>(outcome: &Result<bool, E>) -> Self {
        match outcome {
            Ok(true) => SyncRound::Full,
            Ok(false) => SyncRound::Incremental,
            Err(_) => SyncRound::Failed,
        }
    }
}

/// Histogram buckets, in seconds, for what each histogram measures. Each list is completed
/// with the deadline that bounds what it measures ([`with_bound`]), so that the histogram
/// tells exactly how many ran up to it.
pub(crate) mod buckets {
    /// Agent and proxied answers: sub-millisecond from memory, a few ms after Redis, tens to
    /// hundreds of ms through Ironic, seconds to tens of seconds when held (a lookup waiting
    /// for one in flight, a request waiting for a place in Ironic's budget; IPA gives up
    /// after 30 s).
    pub(crate) const REQUEST: [f64; 19] = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 20.0, 30.0, 60.0,
    ];
    /// Ironic's answers: a Python API behind a database, milliseconds at best, up to its
    /// 60 s RPC timeout at worst.
    pub(crate) const UPSTREAM: [f64; 16] = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
        60.0,
    ];
    /// Redis calls: tens of microseconds on loopback (none when the in-process view answers),
    /// bounded by the per-call deadline (`redis.command_timeout_ms`).
    pub(crate) const REDIS: [f64; 13] = [
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    ];
    /// Sync rounds: three small listings when nothing changed (tens of ms), a full listing of
    /// ten thousand nodes in pages (minutes on a loaded Ironic).
    pub(crate) const SYNC_ROUND: [f64; 15] = [
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 600.0,
    ];

    /// `base` with `bound` (seconds) as a bucket of its own, in order (unchanged if it is one
    /// already, or not a positive finite number).
    pub(crate) fn with_bound(base: &[f64], bound: f64) -> Vec<f64> {
        let mut v = base.to_vec();
        if bound.is_finite() && bound > 0.0 && !v.contains(&bound) {
            v.push(bound);
            v.sort_by(f64::total_cmp);
        }
        v
    }
}

/// The Redis calls' latency and deadline misses, kept by the store's connection
/// ([`crate::store::conn`], which every call goes through) and exposed by [`Metrics`].
#[derive(Clone)]
pub(crate) struct RedisCalls {
    seconds: Histogram,
    deadline_misses: IntCounter,
    /// With `redis.sentinel`: how the process follows the master (see [`RedisMaster`]).
    pub(crate) master: RedisMaster,
}

/// How the process follows a Sentinel-managed master (all 0 without `redis.sentinel`).
#[derive(Clone)]
pub(crate) struct RedisMaster {
    /// Times this process moved to another master (a failover, or a master at another address).
    pub(crate) switches: IntCounter,
    /// 1 while the process has a master to talk to (the sentinels named it and it says it is
    /// one); 0 while it forwards for want of one.
    pub(crate) known: IntGauge,
    /// 1 while the process distrusts what Redis holds (it found the master on another
    /// replication history: a promoted replica or a restarted master may have lost the last
    /// writes), until the node index is rebuilt there by a full sync round.
    pub(crate) distrusted: IntGauge,
    /// Times the process found its master on another replication history.
    pub(crate) rollbacks: IntCounter,
}

impl Default for RedisMaster {
    fn default() -> Self {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("a valid gauge");
        let counter =
            |name: &str, help: &str| IntCounter::new(name, help).expect("a valid counter");
        RedisMaster {
            switches: counter(
                "ironic_edge_redis_master_switches_total",
                "Times this process moved to another Redis master (redis.sentinel: a failover).",
            ),
            known: gauge(
                "ironic_edge_redis_master_known",
                "1 while this process has a Redis master to talk to (redis.sentinel); 0 while \
                 it forwards for want of one.",
            ),
            distrusted: gauge(
                "ironic_edge_redis_master_distrusted",
                "1 while this process distrusts what Redis holds (its master is on another \
                 replication history and may have lost the last writes) and forwards what it \
                 would answer from it, until a full sync round rebuilds the node index there.",
            ),
            rollbacks: counter(
                "ironic_edge_redis_rollbacks_total",
                "Times this process found its Redis master on another replication history \
                 (a promoted replica, a restarted master): what Redis held may be older.",
            ),
        }
    }
}

impl RedisCalls {
    /// For calls with this per-call deadline.
    pub(crate) fn new(deadline: Duration) -> Self {
        let opts = HistogramOpts::new(
            "ironic_edge_redis_duration_seconds",
            "Redis calls (a command, a pipeline, a script) by how long they took, failures \
             and deadline misses included; reads the in-process view answers take microseconds.",
        )
        .buckets(buckets::with_bound(&buckets::REDIS, deadline.as_secs_f64()));
        RedisCalls {
            seconds: Histogram::with_opts(opts).expect("a valid histogram"),
            deadline_misses: IntCounter::new(
                "ironic_edge_redis_deadline_misses_total",
                "Redis calls that missed their deadline (redis.command_timeout_ms): Redis \
                 frozen, slow or being reconnected to; the request went on without it.",
            )
            .expect("a valid counter"),
            master: RedisMaster::default(),
        }
    }

    /// One call, `took` long; `missed` its deadline.
    pub(crate) fn observe(&self, took: Duration, missed: bool) {
        self.seconds.observe(took.as_secs_f64());
        if missed {
            self.deadline_misses.inc();
        }
    }
}

impl Default for RedisCalls {
    fn default() -> Self {
        Self::new(Duration::from_millis(
            crate::config::EdgeConfig::default()
                .redis
                .command_timeout_ms,
        ))
    }
}

/// What the metrics need of the configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MetricsSetup {
    /// `upstream.agent_answer_within_ms`: the longest an agent request is held.
    pub answer_within: Duration,
    /// The node index's staleness bound, when the sync is on.
    pub sync_staleness_bound: Option<Duration>,
}

impl MetricsSetup {
    pub(crate) fn of(cfg: &crate::config::EdgeConfig) -> Self {
        MetricsSetup {
            answer_within: Duration::from_millis(cfg.upstream.agent_answer_within_ms),
            sync_staleness_bound: cfg
                .sync
                .enabled
                .then(|| crate::sync::staleness_bound(&cfg.sync)),
        }
    }
}

/// The gateway's metrics: one private registry per process (never the crate's global one),
/// every series of bounded labels created up front (so they show as 0 before their first
/// event), and what others keep (the governor, the sync's freshness, the relay's oldest
/// heartbeat) read at scrape time.
pub struct Metrics {
    registry: Registry,
    requests: [[IntCounter; Outcome::ALL.len()]; 3],
    decisions: [IntCounter; Rule::ALL.len()],
    request_seconds: [[Histogram; Outcome::ALL.len()]; 3],
    upstream_requests: [IntCounter; 3],
    upstream_errors: [IntCounter; 3],
    upstream_failures: [[IntCounter; UpstreamFailure::ALL.len()]; 3],
    upstream_seconds: [Histogram; 3],
    store_errors: IntCounter,
    sync_requests: IntCounter,
    sync_rounds: [Histogram; SyncRound::ALL.len()],
    heartbeats_deferred: IntCounter,
    heartbeats_relayed: IntCounter,
    heartbeats_dropped: IntCounter,
    sealed_unopenable: IntCounter,
    /// Requests that found no place in Ironic's budget in time, by governor class.
    deferred: [IntCounter; Class::ALL.len()],
    /// Kept heartbeats waiting for the relay, as the relay last counted them.
    heartbeats_kept: IntGauge,
    /// When the oldest kept heartbeat was kept (Unix ms, 0: none), as the relay last read it.
    relay_oldest_kept_ms: AtomicU64,
    /// Start of the round the index in Redis vouches for (Unix ms, 0: no complete index seen).
    index_synced_at_ms: AtomicU64,
    sync_staleness_bound: Option<Duration>,
    /// When this process started (Unix ms): the index is at least this old until one is seen.
    started_ms: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(
            RedisCalls::default(),
            MetricsSetup::of(&crate::config::EdgeConfig::default()),
        )
    }
}

/// Registers `c` and hands it back. The names and labels are fixed in this file (a unit test
/// builds them all): an error here is a programming error.
fn registered<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique and valid");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("a valid counter family"),
    )
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(
        registry,
        IntCounter::new(name, help).expect("a valid counter"),
    )
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    registered(
        registry,
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .expect("a valid histogram family"),
    )
}

impl Metrics {
    pub(crate) fn new(redis: RedisCalls, setup: MetricsSetup) -> Self {
        let r = Registry::new();
        let requests = counter_vec(
            &r,
            "ironic_edge_requests_total",
            "Requests by route template and how they were answered.",
            &["route", "outcome"],
        );
        let decisions = counter_vec(
            &r,
            "ironic_edge_decisions_total",
            "Requests by the rule that decided them (in shadow mode: the rule that would have).",
            &["rule"],
        );
        let request_seconds = histogram_vec(
            &r,
            "ironic_edge_request_duration_seconds",
            "Requests by how long the gateway took to decide their answer (local answers) or to \
             get Ironic's answer (forwarded ones), by route and outcome.",
            &["route", "outcome"],
            buckets::with_bound(&buckets::REQUEST, setup.answer_within.as_secs_f64()),
        );
        let upstream_requests = counter_vec(
            &r,
            "ironic_edge_upstream_requests_total",
            "Requests the gateway sent to Ironic.",
            &["route"],
        );
        let upstream_errors = counter_vec(
            &r,
            "ironic_edge_upstream_errors_total",
            "Upstream exchanges that produced no answer.",
            &["route"],
        );
        let upstream_failures = counter_vec(
            &r,
            "ironic_edge_upstream_failures_total",
            "Upstream exchanges that failed, by kind: connect (not connected), timeout (no \
             answer in time), broken (the exchange broke off), too_large, status_5xx (an \
             answer, a server error).",
            &["route", "kind"],
        );
        let upstream_seconds = histogram_vec(
            &r,
            "ironic_edge_upstream_duration_seconds",
            "Ironic's answers (any status) by how long they took, by route; failed exchanges \
             are in ironic_edge_upstream_failures_total.",
            &["route"],
            buckets::UPSTREAM.to_vec(),
        );
        let sync_rounds = histogram_vec(
            &r,
            "ironic_edge_sync_round_duration_seconds",
            "Node sync rounds of this process by how long they took, by result (full, \
             incremental, failed).",
            &["result"],
            buckets::SYNC_ROUND.to_vec(),
        );
        let deferred = counter_vec(
            &r,
            "ironic_edge_budget_deferred_total",
            "Requests to Ironic that found no place in its budget in time, by class.",
            &["class"],
        );
        let build_info = registered(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "ironic_edge_build_info",
                    "The gateway's version (always 1).",
                ),
                &["version"],
            )
            .expect("a valid gauge family"),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registered(&r, redis.seconds.clone());
        registered(&r, redis.deadline_misses.clone());
        registered(&r, redis.master.switches.clone());
        registered(&r, redis.master.known.clone());
        registered(&r, redis.master.distrusted.clone());
        registered(&r, redis.master.rollbacks.clone());
        let routes = Route::ALL.map(Route::label);
        Metrics {
            decisions: Rule::ALL.map(|rule| decisions.with_label_values(&[rule.label()])),
            requests: Route::ALL.map(|route| {
                Outcome::ALL.map(|o| requests.with_label_values(&[route.label(), o.label()]))
            }),
            request_seconds: Route::ALL.map(|route| {
                Outcome::ALL.map(|o| request_seconds.with_label_values(&[route.label(), o.label()]))
            }),
            upstream_requests: routes.map(|route| upstream_requests.with_label_values(&[route])),
            upstream_errors: routes.map(|route| upstream_errors.with_label_values(&[route])),
            upstream_failures: routes.map(|route| {
                UpstreamFailure::ALL
                    .map(|k| upstream_failures.with_label_values(&[route, k.label()]))
            }),
            upstream_seconds: routes.map(|route| upstream_seconds.with_label_values(&[route])),
            store_errors: counter(
                &r,
                "ironic_edge_store_errors_total",
                "Redis calls that failed or missed their deadline.",
            ),
            sync_requests: counter(
                &r,
                "ironic_edge_sync_requests_total",
                "Requests the node sync sent to Ironic.",
            ),
            sync_rounds: SyncRound::ALL.map(|s| sync_rounds.with_label_values(&[s.label()])),
            heartbeats_deferred: counter(
                &r,
                "ironic_edge_heartbeats_deferred_total",
                "Verified heartbeats accepted while Ironic failed, kept for the relay.",
            ),
            heartbeats_relayed: counter(
                &r,
                "ironic_edge_heartbeats_relayed_total",
                "Kept heartbeats Ironic has received since.",
            ),
            heartbeats_dropped: counter(
                &r,
                "ironic_edge_heartbeats_dropped_total",
                "Kept heartbeats dropped after Ironic refused them repeatedly (5xx, 409).",
            ),
            sealed_unopenable: counter(
                &r,
                "ironic_edge_sealed_unopenable_total",
                "Kept heartbeats and minted answers that could not be opened (another seal \
                 key, or moved to another key in Redis): dropped.",
            ),
            deferred: Class::ALL.map(|c| deferred.with_label_values(&[c.label()])),
            heartbeats_kept: registered(
                &r,
                IntGauge::new(
                    "ironic_edge_heartbeats_kept",
                    "Kept heartbeats waiting for the relay (all gateway processes), as the relay \
                     last counted them.",
                )
                .expect("a valid gauge"),
            ),
            relay_oldest_kept_ms: AtomicU64::new(0),
            index_synced_at_ms: AtomicU64::new(0),
            sync_staleness_bound: setup.sync_staleness_bound,
            started_ms: crate::store::now_ms(),
            registry: r,
        }
    }

    /// One answer, counted once, `took` after the request began.
    pub fn request(&self, route: Route, outcome: Outcome, took: Duration) {
        self.requests[route as usize][outcome as usize].inc();
        self.request_seconds[route as usize][outcome as usize].observe(took.as_secs_f64());
    }
    /// The rule that decided a request, counted once when it ends.
    pub(crate) fn decision(&self, rule: Rule) {
        self.decisions[rule as usize].inc();
    }
    pub fn upstream_request(&self, route: Route) {
        self.upstream_requests[route as usize].inc();
    }
    /// Ironic answered (any status) after `took`.
    pub(crate) fn upstream_answered(&self, route: Route, status: u16, took: Duration) {
        self.upstream_seconds[route as usize].observe(took.as_secs_f64());
        if status >= 500 {
            self.upstream_failures[route as usize][UpstreamFailure::Status5xx as usize].inc();
        }
    }
    /// An exchange with Ironic that produced no answer.
    pub(crate) fn upstream_failed(&self, route: Route, failure: UpstreamFailure) {
        if failure != UpstreamFailure::Status5xx {
            self.upstream_errors[route as usize].inc();
        }
        self.upstream_failures[route as usize][failure as usize].inc();
    }
    /// What one exchange of the gateway's own client ended with, `took` long.
    pub(crate) fn upstream_exchange(
        &self,
        route: Route,
        result: &Result<UpstreamResponse, UpstreamError>,
        took: Duration,
    ) {
        match result {
            Ok(resp) => self.upstream_answered(route, resp.status(), took),
            Err(e) => {
                if let Some(failure) = UpstreamFailure::of_error(e) {
                    self.upstream_failed(route, failure);
                }
            }
        }
    }
    pub fn store_error(&self) {
        self.store_errors.inc();
    }
    pub fn sync_request(&self) {
        self.sync_requests.inc();
    }
    /// A sync round of this process ended, `took` long.
    pub(crate) fn sync_round(&self, round: SyncRound, took: Duration) {
        self.sync_rounds[round as usize].observe(took.as_secs_f64());
    }
    /// The start of the round the index in Redis vouches for, as last read (`None`: no
    /// complete index; the lag then counts from the last one seen, or the process's start).
    pub(crate) fn index_synced_at(&self, at_ms: Option<u64>) {
        if let Some(at) = at_ms {
            self.index_synced_at_ms.store(at, Ordering::Relaxed);
        }
    }
    pub fn heartbeat_deferred(&self) {
        self.heartbeats_deferred.inc();
    }
    pub fn heartbeat_relayed(&self) {
        self.heartbeats_relayed.inc();
    }
    pub(crate) fn deferred(&self, class: Class) {
        self.deferred[class as usize].inc();
    }
    pub(crate) fn heartbeat_dropped(&self) {
        self.heartbeats_dropped.inc();
    }
    /// The relay's backlog as it last read it: how many are kept, and since when the oldest
    /// (Unix ms; `None`: nothing kept).
    pub(crate) fn set_relay_backlog(&self, kept: u64, oldest_kept_ms: Option<u64>) {
        self.heartbeats_kept
            .set(i64::try_from(kept).unwrap_or(i64::MAX));
        self.relay_oldest_kept_ms
            .store(oldest_kept_ms.unwrap_or(0), Ordering::Relaxed);
    }
    pub fn sealed_unopenable(&self) {
        self.sealed_unopenable.inc();
    }
    pub fn requests(&self, route: Route, outcome: Outcome) -> u64 {
        self.requests[route as usize][outcome as usize].get()
    }

    /// The Prometheus text exposition, with the load governor's state.
    pub(crate) fn render_with(&self, governor: &GovernorStats) -> String {
        let mut families = self.registry.gather();
        families.extend(self.scraped(governor, crate::store::now_ms()));
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&families, &mut out) {
            log::warn!("metrics: the exposition could not be written: {e}");
        }
        out
    }

    /// The families read at scrape time from what others keep.
    fn scraped(&self, governor: &GovernorStats, now_ms: u64) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        let lanes: Vec<(&str, f64)> = Lane::ALL
            .iter()
            .map(|l| (l.label(), governor.overloaded[*l as usize] as f64))
            .collect();
        out.extend(scrape_counter(
            "ironic_edge_budget_overloaded_total",
            "Ironic's answers that said it was overloaded (5xx, timeouts, slow answers), by lane (its API, its conductor's worker pool).",
            "lane",
            &lanes,
        ));
        let classes: Vec<(&str, f64)> = Class::ALL
            .iter()
            .map(|c| (c.label(), governor.waiting[*c as usize] as f64))
            .collect();
        out.extend(scrape_gauge(
            "ironic_edge_budget_waiting",
            "Requests waiting for a place in Ironic's budget, by class.",
            Some("class"),
            &classes,
        ));
        out.extend(scrape_gauge(
            "ironic_edge_budget_in_flight",
            "Requests in flight to Ironic.",
            None,
            &[("", governor.in_flight as f64)],
        ));
        let per_budget = |v: &[u64; 2]| -> Vec<(&str, f64)> {
            ["ironic", "conductor_pool"]
                .into_iter()
                .zip(v)
                .map(|(name, millis)| (name, *millis as f64 / 1000.0))
                .collect()
        };
        out.extend(scrape_gauge(
            "ironic_edge_budget_rate_per_second",
            "The rate the budget allows now (learnt): everything sent to Ironic, and heartbeats (its conductor's worker pool).",
            Some("budget"),
            &per_budget(&governor.rate_millis),
        ));
        out.extend(scrape_gauge(
            "ironic_edge_budget_proven_per_second",
            "The best rate Ironic answered without an overload answer over 10 s, by budget: for a minute after an outage the rate is no higher.",
            Some("budget"),
            &per_budget(&governor.proven_millis),
        ));
        out.extend(scrape_gauge(
            "ironic_edge_relay_oldest_age_seconds",
            "How long the oldest kept heartbeat has waited for the relay (0: none kept), as the \
             relay last read it.",
            None,
            &[(
                "",
                age_seconds(self.relay_oldest_kept_ms.load(Ordering::Relaxed), now_ms),
            )],
        ));
        if let Some(bound) = self.sync_staleness_bound {
            out.extend(scrape_gauge(
                "ironic_edge_sync_lag_seconds",
                "Seconds since the start of the round the node index in Redis vouches for (as \
                 this process last read it; since the process started while it has seen none). \
                 Above ironic_edge_sync_staleness_bound_seconds the index answers nothing.",
                None,
                &[(
                    "",
                    sync_lag_seconds(
                        self.index_synced_at_ms.load(Ordering::Relaxed),
                        self.started_ms,
                        now_ms,
                    ),
                )],
            ));
            out.extend(scrape_gauge(
                "ironic_edge_sync_staleness_bound_seconds",
                "The node index's staleness bound (2 x sync.interval_seconds + 5 s): an older \
                 index is not used.",
                None,
                &[("", bound.as_secs_f64())],
            ));
        }
        out
    }
}

/// Seconds from `since_ms` to `now_ms` (0 when `since_ms` is 0: nothing).
fn age_seconds(since_ms: u64, now_ms: u64) -> f64 {
    if since_ms == 0 {
        return 0.0;
    }
    now_ms.saturating_sub(since_ms) as f64 / 1000.0
}

/// The index's lag: from the start of the round it vouches for, or from the process's start
/// while none was seen (the index is at least that old as far as this process knows).
fn sync_lag_seconds(synced_at_ms: u64, started_ms: u64, now_ms: u64) -> f64 {
    let since = if synced_at_ms == 0 {
        started_ms
    } else {
        synced_at_ms
    };
    now_ms.saturating_sub(since) as f64 / 1000.0
}

/// A counter family of values others keep (`rows`: label value, value), made at scrape time.
fn scrape_counter(name: &str, help: &str, label: &str, rows: &[(&str, f64)]) -> Vec<MetricFamily> {
    let Ok(family) = CounterVec::new(Opts::new(name, help), &[label]) else {
        return Vec::new();
    };
    for (value, n) in rows {
        family.with_label_values(&[value]).inc_by(*n);
    }
    family.collect()
}

/// A gauge family of values others keep, made at scrape time (`label` `None`: one unlabelled
/// row).
fn scrape_gauge(
    name: &str,
    help: &str,
    label: Option<&str>,
    rows: &[(&str, f64)],
) -> Vec<MetricFamily> {
    match label {
        Some(label) => {
            let Ok(family) = GaugeVec::new(Opts::new(name, help), &[label]) else {
                return Vec::new();
            };
            for (value, v) in rows {
                family.with_label_values(&[value]).set(*v);
            }
            family.collect()
        }
        None => {
            let Ok(gauge) = Gauge::new(name, help) else {
                return Vec::new();
            };
            gauge.set(rows.first().map_or(0.0, |r| r.1));
            gauge.collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(m: &Metrics) -> String {
        m.render_with(&GovernorStats::default())
    }

    #[test]
    fn renders_bounded_labels() {
        let m = Metrics::default();
        m.request(Route::Lookup, Outcome::Local, Duration::from_micros(300));
        m.request(Route::Lookup, Outcome::Local, Duration::from_micros(300));
        m.upstream_request(Route::Heartbeat);
        m.set_relay_backlog(4, None);
        let text = page(&m);
        assert!(text.contains("ironic_edge_requests_total{outcome=\"local\",route=\"lookup\"} 2\n"));
        assert!(text.contains("ironic_edge_upstream_requests_total{route=\"heartbeat\"} 1\n"));
        assert!(text
            .contains("# TYPE ironic_edge_heartbeats_kept gauge\nironic_edge_heartbeats_kept 4\n"));
        // 3 routes x every outcome, and nothing else labelled.
        assert_eq!(
            text.matches("ironic_edge_requests_total{").count(),
            3 * Outcome::ALL.len()
        );
        // Both observations fell in the 500 µs bucket, none in the one below.
        assert!(text.contains(
            "ironic_edge_request_duration_seconds_bucket{outcome=\"local\",route=\"lookup\",le=\"0.0005\"} 2\n"
        ));
        assert!(text.contains(
            "ironic_edge_request_duration_seconds_bucket{outcome=\"local\",route=\"lookup\",le=\"0.00025\"} 0\n"
        ));
        assert!(text.contains(&format!(
            "ironic_edge_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
    }

    /// Every family the ops listener shows, with its type: what the dashboard, the alert rules
    /// and `tests/gateway_dashboards.rs` rely on.
    #[test]
    fn every_family_is_there_before_its_first_event() {
        let m = Metrics::new(
            RedisCalls::default(),
            MetricsSetup {
                answer_within: Duration::from_secs(25),
                sync_staleness_bound: Some(Duration::from_secs(25)),
            },
        );
        let text = page(&m);
        for (name, kind) in [
            ("ironic_edge_requests_total", "counter"),
            ("ironic_edge_request_duration_seconds", "histogram"),
            ("ironic_edge_upstream_requests_total", "counter"),
            ("ironic_edge_upstream_errors_total", "counter"),
            ("ironic_edge_upstream_failures_total", "counter"),
            ("ironic_edge_upstream_duration_seconds", "histogram"),
            ("ironic_edge_store_errors_total", "counter"),
            ("ironic_edge_redis_duration_seconds", "histogram"),
            ("ironic_edge_redis_deadline_misses_total", "counter"),
            ("ironic_edge_redis_master_switches_total", "counter"),
            ("ironic_edge_redis_master_known", "gauge"),
            ("ironic_edge_redis_master_distrusted", "gauge"),
            ("ironic_edge_redis_rollbacks_total", "counter"),
            ("ironic_edge_sync_requests_total", "counter"),
            ("ironic_edge_sync_round_duration_seconds", "histogram"),
            ("ironic_edge_sync_lag_seconds", "gauge"),
            ("ironic_edge_sync_staleness_bound_seconds", "gauge"),
            ("ironic_edge_heartbeats_deferred_total", "counter"),
            ("ironic_edge_heartbeats_relayed_total", "counter"),
            ("ironic_edge_heartbeats_dropped_total", "counter"),
            ("ironic_edge_heartbeats_kept", "gauge"),
            ("ironic_edge_relay_oldest_age_seconds", "gauge"),
            ("ironic_edge_sealed_unopenable_total", "counter"),
            ("ironic_edge_budget_deferred_total", "counter"),
            ("ironic_edge_budget_overloaded_total", "counter"),
            ("ironic_edge_budget_waiting", "gauge"),
            ("ironic_edge_budget_in_flight", "gauge"),
            ("ironic_edge_budget_rate_per_second", "gauge"),
            ("ironic_edge_budget_proven_per_second", "gauge"),
            ("ironic_edge_build_info", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} ({kind}) missing:\n{text}"
            );
        }
        // The answer deadline (25 s) is a bucket of its own.
        assert!(text.contains("le=\"25\""));
        // No sync, no lag.
        let no_sync = Metrics::new(
            RedisCalls::default(),
            MetricsSetup {
                answer_within: Duration::from_secs(25),
                sync_staleness_bound: None,
            },
        );
        assert!(!page(&no_sync).contains("ironic_edge_sync_lag_seconds"));
    }

    #[test]
    fn governor_state_is_read_at_scrape_time() {
        let m = Metrics::default();
        let stats = GovernorStats {
            rate_millis: [12_500, 3_000],
            proven_millis: [20_000, 0],
            in_flight: 3,
            waiting: [0, 1, 0, 0, 7],
            overloaded: [2, 5],
        };
        let text = m.render_with(&stats);
        for line in [
            "ironic_edge_budget_rate_per_second{budget=\"ironic\"} 12.5\n",
            "ironic_edge_budget_rate_per_second{budget=\"conductor_pool\"} 3\n",
            "ironic_edge_budget_proven_per_second{budget=\"ironic\"} 20\n",
            "ironic_edge_budget_in_flight 3\n",
            "ironic_edge_budget_waiting{class=\"refresh\"} 7\n",
            "# TYPE ironic_edge_budget_overloaded_total counter\n",
        ] {
            assert!(text.contains(line), "{line:?} missing:\n{text}");
        }
        assert_eq!(
            text.matches("ironic_edge_budget_overloaded_total{lane=")
                .count(),
            2
        );
    }

    #[test]
    fn upstream_failures_by_kind() {
        let err = |e: UpstreamError| UpstreamFailure::of_error(&e);
        for (e, want) in [
            (
                UpstreamError::Connect("Connection refused".into()),
                Some(UpstreamFailure::Connect),
            ),
            (
                UpstreamError::Exchange(" ReadTimedout context: timeout".into()),
                Some(UpstreamFailure::Timeout),
            ),
            (
                UpstreamError::Exchange("deadline exceeded".into()),
                Some(UpstreamFailure::Timeout),
            ),
            (
                UpstreamError::Exchange(" ConnectionClosed".into()),
                Some(UpstreamFailure::Broken),
            ),
            (UpstreamError::TooLarge, Some(UpstreamFailure::TooLarge)),
            (UpstreamError::Busy, None),
        ] {
            assert_eq!(err(e), want);
        }
        use pingora::ErrorType as E;
        for (etype, want) in [
            (E::ConnectRefused, UpstreamFailure::Connect),
            (E::ConnectTimedout, UpstreamFailure::Connect),
            (E::TLSHandshakeFailure, UpstreamFailure::Connect),
            (E::ReadTimedout, UpstreamFailure::Timeout),
            (E::WriteTimedout, UpstreamFailure::Timeout),
            (E::ConnectionClosed, UpstreamFailure::Broken),
            (E::H1Error, UpstreamFailure::Broken),
        ] {
            assert_eq!(UpstreamFailure::of_pingora(&etype), want, "{etype:?}");
        }
    }

    #[test]
    fn upstream_errors_count_no_answers_and_failures_count_5xx_too() {
        let m = Metrics::default();
        m.upstream_answered(Route::Heartbeat, 503, Duration::from_millis(40));
        m.upstream_answered(Route::Heartbeat, 202, Duration::from_millis(40));
        m.upstream_failed(Route::Heartbeat, UpstreamFailure::Connect);
        let text = page(&m);
        for line in [
            "ironic_edge_upstream_errors_total{route=\"heartbeat\"} 1\n",
            "ironic_edge_upstream_failures_total{kind=\"status_5xx\",route=\"heartbeat\"} 1\n",
            "ironic_edge_upstream_failures_total{kind=\"connect\",route=\"heartbeat\"} 1\n",
            "ironic_edge_upstream_duration_seconds_count{route=\"heartbeat\"} 2\n",
            "ironic_edge_upstream_duration_seconds_bucket{route=\"heartbeat\",le=\"0.05\"} 2\n",
        ] {
            assert!(text.contains(line), "{line:?} missing:\n{text}");
        }
    }

    #[test]
    fn sync_rounds_lag_and_relay_age() {
        assert_eq!(SyncRound::of::<()>(&Ok(true)), SyncRound::Full);
        assert_eq!(SyncRound::of::<()>(&Ok(false)), SyncRound::Incremental);
        assert_eq!(SyncRound::of(&Err("x")), SyncRound::Failed);
        // From the round the index vouches for; from the start while none was seen.
        assert_eq!(sync_lag_seconds(10_000, 1_000, 12_500), 2.5);
        assert_eq!(sync_lag_seconds(0, 1_000, 12_500), 11.5);
        assert_eq!(sync_lag_seconds(20_000, 1_000, 12_500), 0.0, "clock skew");
        assert_eq!(age_seconds(0, 12_500), 0.0, "nothing kept");
        assert_eq!(age_seconds(2_500, 12_500), 10.0);
        let m = Metrics::default();
        m.index_synced_at(Some(5_000));
        m.index_synced_at(None);
        assert_eq!(m.index_synced_at_ms.load(Ordering::Relaxed), 5_000, "kept");
    }

    #[test]
    fn redis_calls_and_their_deadline() {
        let calls = RedisCalls::new(Duration::from_millis(250));
        let m = Metrics::new(calls.clone(), MetricsSetup::of(&Default::default()));
        calls.observe(Duration::from_micros(80), false);
        calls.observe(Duration::from_millis(251), true);
        let text = page(&m);
        for line in [
            "ironic_edge_redis_deadline_misses_total 1\n",
            "ironic_edge_redis_duration_seconds_bucket{le=\"0.0001\"} 1\n",
            "ironic_edge_redis_duration_seconds_bucket{le=\"0.25\"} 1\n",
            "ironic_edge_redis_duration_seconds_count 2\n",
        ] {
            assert!(text.contains(line), "{line:?} missing:\n{text}");
        }
    }

    #[test]
    fn buckets_fit_what_they_measure() {
        for (name, b) in [
            ("request", &buckets::REQUEST[..]),
            ("upstream", &buckets::UPSTREAM[..]),
            ("redis", &buckets::REDIS[..]),
            ("sync", &buckets::SYNC_ROUND[..]),
        ] {
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{name}: increasing");
        }
        // Local answers from memory (sub-ms) apart from Redis round trips (ms); IPA's 30 s.
        assert!(buckets::REQUEST[0] <= 0.0001 && buckets::REQUEST.contains(&30.0));
        // Ironic's RPC timeout (60 s); Redis on loopback (tens of µs) to its default deadline.
        assert_eq!(buckets::UPSTREAM.last(), Some(&60.0));
        assert!(buckets::REDIS[0] <= 0.0001 && buckets::REDIS.contains(&0.25));
        // A deadline becomes a bucket of its own, once, in order.
        assert_eq!(buckets::with_bound(&[0.1, 1.0], 0.3), vec![0.1, 0.3, 1.0]);
        assert_eq!(buckets::with_bound(&[0.1, 1.0], 1.0), vec![0.1, 1.0]);
        assert_eq!(buckets::with_bound(&[0.1, 1.0], 0.0), vec![0.1, 1.0]);
        assert_eq!(buckets::with_bound(&[0.1, 1.0], f64::NAN), vec![0.1, 1.0]);
    }
}
