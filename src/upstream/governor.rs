//! The Ironic load governor: one budget for everything the gateway sends Ironic, so that the
//! gateway never becomes the storm, before, during or after an outage.
//!
//! Two limits hold every request: at most `max_in_flight` at once (Ironic's API answers a
//! handful at a time), and at most `rate` per second in its [`Lane`] (Ironic's API, or the
//! conductor's worker pool that takes heartbeats: a pool exhausted by a heartbeat storm must
//! not slow the lookups that mint tokens), where each lane's rate is learnt from its answers
//! (AIMD): it creeps up while Ironic keeps up and the budget is what holds requests
//! back, and halves when Ironic says it is overloaded (503 "no free conductor workers", other
//! 5xx, a timeout, an answer slower than `slow_answer_ms`). Heartbeats are handed to a
//! conductor pool that stays exhausted long after a burst (Ironic 39, futurist 3.5), so what
//! matters is the rate at which they arrive, not how many wait on the API: hence a rate, not
//! only a concurrency limit. An unreachable Ironic is no load signal: for a minute after an
//! outage each lane gets no more than Ironic proved it sustains ([`Budgets`]), and tokens never
//! pile up into a burst (the bucket holds one second's worth at most).
//!
//! Waiting requests are served by class ([`Class`]): in a lane, a lower class gets a token only
//! when no higher one waits; each node holds at most one waiting place among refreshes.
//! [`RateBudget`], [`Budgets`] and [`Queues`] are pure and table-tested; [`Governor`] is the
//! async shell.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// What a request to Ironic is for, highest priority first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Class {
    /// The gateway's own upkeep: node sync and version discovery. A few requests a round,
    /// without which the index goes stale and every agent request would reach Ironic: they
    /// come before the lookups of a boot storm (behind hundreds of them, a sync round missed
    /// its deadline, the index went stale, and the shield was down when it was needed most).
    Upkeep = 0,
    /// A lookup: only Ironic can mint the agent's token.
    Mint = 1,
    /// A heartbeat that drives a step (`wait call-back`, `clean wait`, `rescue wait`,
    /// `service wait`), or one whose node's state the gateway does not know.
    Drive = 2,
    /// The first heartbeat of an agent session (its `agent_url` is not known yet).
    First = 3,
    /// Record-only refreshes and relayed heartbeats: they can wait, or be kept for later.
    Refresh = 4,
}

impl Class {
    pub(crate) const COUNT: usize = 5;
    pub(crate) const ALL: [Class; Class::COUNT] = [
        Class::Upkeep,
        Class::Mint,
        Class::Drive,
        Class::First,
        Class::Refresh,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Class::Upkeep => "upkeep",
            Class::Mint => "mint",
            Class::Drive => "drive",
            Class::First => "first",
            Class::Refresh => "refresh",
        }
    }
}

/// What one answer from Ironic says about its load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sample {
    /// An answer (2xx, 4xx), this long after the request was sent.
    Answered { latency_ms: u64 },
    /// A 5xx answer (for a heartbeat mostly 503 "lack of free conductor workers": the pool is
    /// exhausted while the API itself answered).
    ServerError { latency_ms: u64 },
    /// No answer in time: Ironic took the request and did not keep up.
    Overloaded,
    /// Not reached (connection refused, reset before an answer): no load signal.
    Unreachable,
}

impl Sample {
    /// Classifies an HTTP status with its latency.
    pub(crate) fn of_status(status: u16, latency_ms: u64) -> Sample {
        if status >= 500 {
            Sample::ServerError { latency_ms }
        } else {
            Sample::Answered { latency_ms }
        }
    }

    /// The same sample `latency_ms` after its request was sent.
    fn with_latency(self, latency_ms: u64) -> Sample {
        match self {
            Sample::Answered { .. } => Sample::Answered { latency_ms },
            Sample::ServerError { .. } => Sample::ServerError { latency_ms },
            other => other,
        }
    }
}

/// What an exchange with Ironic says about its load.
pub(crate) fn sample_of(result: &Result<super::UpstreamResponse, super::UpstreamError>) -> Sample {
    match result {
        Ok(resp) => Sample::of_status(resp.status(), 0),
        // Pingora's read and write timeouts (`ReadTimedout`...) and the client's own deadline:
        // Ironic took the request and did not answer in time.
        Err(super::UpstreamError::Exchange(e))
            if e.contains("Timedout") || e.contains("deadline exceeded") =>
        {
            Sample::Overloaded
        }
        // Refused, reset, or never sent: no word from Ironic about its load.
        Err(_) => Sample::Unreachable,
    }
}

/// The settings of the budget (`upstream.budget`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct BudgetSettings {
    pub initial_per_second: f64,
    pub min_per_second: f64,
    pub max_per_second: f64,
    /// An answer slower than this counts as overload.
    pub slow_answer_ms: u64,
}

/// Which of Ironic's resources a request uses up, each with a budget of its own.
///
/// Ironic's API answers lookups, the node sync and version discovery itself; a heartbeat is
/// handed to the conductor's worker pool, which can be exhausted while the API keeps up (503
/// "lack of free conductor workers"). A heartbeat storm must not slow the lookups that mint
/// tokens, so each resource learns its own rate from its own answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Lane {
    /// Requests Ironic's API answers itself.
    Api = 0,
    /// Heartbeats (the agents' and the relay's): the conductor's worker pool.
    Conductor = 1,
}

impl Lane {
    pub(crate) const ALL: [Lane; 2] = [Lane::Api, Lane::Conductor];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Lane::Api => "api",
            Lane::Conductor => "conductor",
        }
    }
}

/// The adaptive rate of one lane: a token bucket whose rate follows Ironic's answers. Pure
/// (time is passed in, in milliseconds).
#[derive(Clone, Debug)]
pub(crate) struct RateBudget {
    settings: BudgetSettings,
    rate: f64,
    tokens: f64,
    refilled_at_ms: u64,
    /// The last decrease: one per second at most (one overloaded second halves the rate once,
    /// however many answers it carried).
    decreased_at_ms: Option<u64>,
    /// Whether, since the last increase, a request had to wait for a token: the rate only
    /// grows while it is what holds requests back (so it tracks what Ironic sustains, not an
    /// idle maximum that would let a burst through after an outage).
    held_back: bool,
    increased_at_ms: u64,
    /// What Ironic proved it sustains in this lane: the best rate of answers it gave in a
    /// window of [`PROOF_WINDOW_MS`] without any overload answer.
    proven: ProvenRate,
    /// After an outage: the rate grows no higher than this until then (`(cap, until_ms)`).
    ceiling: Option<(f64, u64)>,
    /// Answers slower than usual count as overload (the heartbeats' budget: see
    /// [`LatencyGradient`]).
    gradient: Option<LatencyGradient>,
}

/// Latency inflation as a load signal, as gradient concurrency limiters use it: Ironic's
/// conductor pool fills up long before it refuses (and once its pool has grown to the maximum,
/// Ironic 39 refuses every heartbeat until it restarts), but the API's answers to heartbeats
/// slow down as it fills: from a 35-100 ms baseline to 300-700 ms, measured here, seconds
/// before the first 503. So an answer stream much slower than the baseline is overload. Pure.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LatencyGradient {
    /// The usual latency: follows a faster answer at once, a slower one very slowly.
    baseline_ms: f64,
    /// The recent latency: a moving average over about the last five answers.
    recent_ms: f64,
}

/// Recent answers this many times slower than the baseline are overload...
const INFLATION: f64 = 4.0;
/// ...and at least this much slower (a fast baseline is noisy).
const INFLATION_MARGIN_MS: f64 = 150.0;

impl LatencyGradient {
    pub(crate) fn new() -> Self {
        LatencyGradient {
            baseline_ms: f64::MAX,
            recent_ms: 0.0,
        }
    }

    /// Learns one answer's latency; `true` if answers are now inflated.
    pub(crate) fn inflated(&mut self, latency_ms: u64) -> bool {
        let l = latency_ms as f64;
        if self.baseline_ms == f64::MAX {
            self.baseline_ms = l;
            self.recent_ms = l;
            return false;
        }
        self.recent_ms = 0.8 * self.recent_ms + 0.2 * l;
        if l < self.baseline_ms {
            self.baseline_ms = l;
        } else {
            // About a thousand answers to follow a lasting change (Ironic's database grew).
            self.baseline_ms += (l - self.baseline_ms) * 0.001;
        }
        self.recent_ms > (self.baseline_ms * INFLATION).max(self.baseline_ms + INFLATION_MARGIN_MS)
    }
}

/// The window over which Ironic's sustained rate is measured.
pub(crate) const PROOF_WINDOW_MS: u64 = 10_000;
/// An unreachable Ironic for this long is an outage: once back, it gets no more than it
/// proved it sustains (a restarted Ironic starts with a cold conductor pool, and every agent's
/// delayed request arrives at once).
pub(crate) const OUTAGE_MS: u64 = 5_000;
/// After an outage, the rates stay at or below what Ironic proved for this long: the minute in
/// which every agent's delayed request and every kept heartbeat arrive.
pub(crate) const RECOVERY_MS: u64 = 60_000;

/// The best rate of answers without overload over whole windows. Pure.
#[derive(Clone, Debug, Default)]
struct ProvenRate {
    best_per_second: f64,
    window_started_ms: u64,
    answered: u64,
    overloaded: bool,
}

impl ProvenRate {
    fn record(&mut self, now_ms: u64, overloaded: bool) {
        if now_ms.saturating_sub(self.window_started_ms) >= PROOF_WINDOW_MS {
            if !self.overloaded && self.window_started_ms > 0 {
                let rate = self.answered as f64 * 1000.0 / PROOF_WINDOW_MS as f64;
                self.best_per_second = self.best_per_second.max(rate);
            }
            *self = ProvenRate {
                best_per_second: self.best_per_second,
                window_started_ms: now_ms.max(1),
                answered: 0,
                overloaded: false,
            };
        }
        if overloaded {
            self.overloaded = true;
        } else {
            self.answered += 1;
        }
    }
}

impl RateBudget {
    pub(crate) fn new(settings: BudgetSettings, now_ms: u64) -> Self {
        let rate = settings
            .initial_per_second
            .clamp(settings.min_per_second, settings.max_per_second);
        RateBudget {
            settings,
            rate,
            // Full: a second's worth at start (a bucket that starts empty would hold back the
            // first requests of a freshly started gateway for nothing).
            tokens: rate.max(1.0),
            refilled_at_ms: now_ms,
            decreased_at_ms: None,
            held_back: false,
            increased_at_ms: now_ms,
            proven: ProvenRate::default(),
            ceiling: None,
            gradient: None,
        }
    }

    /// A budget that also counts inflated latency as overload ([`LatencyGradient`]).
    pub(crate) fn with_latency_gradient(mut self) -> Self {
        self.gradient = Some(LatencyGradient::new());
        self
    }

    /// The best rate Ironic answered without overload over a whole window (0: none yet).
    pub(crate) fn proven_rate(&self) -> f64 {
        self.proven.best_per_second
    }

    pub(crate) fn rate(&self) -> f64 {
        self.rate
    }

    /// The bucket holds one second's worth at most (and at least one token).
    fn capacity(&self) -> f64 {
        self.rate.max(1.0)
    }

    fn refill(&mut self, now_ms: u64) {
        let dt = now_ms.saturating_sub(self.refilled_at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity());
        self.refilled_at_ms = now_ms;
    }

    /// Takes a token if one is there.
    pub(crate) fn try_take(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.held_back = true;
            false
        }
    }

    /// Milliseconds until the next token (0: one is there).
    pub(crate) fn wait_ms(&mut self, now_ms: u64) -> u64 {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            0
        } else {
            (((1.0 - self.tokens) / self.rate) * 1000.0).ceil() as u64
        }
    }

    /// Whether an answer says Ironic is overloaded (`None`: it says nothing).
    fn overloaded(&mut self, sample: Sample) -> Option<bool> {
        match sample {
            Sample::Unreachable => None,
            Sample::Overloaded | Sample::ServerError { .. } => Some(true),
            Sample::Answered { latency_ms } => {
                let inflated = self
                    .gradient
                    .as_mut()
                    .is_some_and(|g| g.inflated(latency_ms));
                Some(inflated || latency_ms > self.settings.slow_answer_ms)
            }
        }
    }

    /// Holds the rate at or below `cap` until `until_ms` (after an outage).
    fn hold_at_most(&mut self, cap: f64, now_ms: u64, until_ms: u64) {
        let cap = cap.max(self.settings.min_per_second);
        self.rate = self.rate.min(cap);
        self.tokens = self.tokens.min(self.capacity());
        self.ceiling = Some((cap, until_ms));
        self.increased_at_ms = now_ms;
        self.held_back = false;
    }

    /// The highest rate allowed now.
    fn limit(&self, now_ms: u64) -> f64 {
        match self.ceiling {
            Some((cap, until)) if now_ms < until => cap,
            _ => self.settings.max_per_second,
        }
    }

    /// Learns from one answer.
    pub(crate) fn observe(&mut self, now_ms: u64, sample: Sample) {
        let Some(overloaded) = self.overloaded(sample) else {
            return;
        };
        self.proven.record(now_ms, overloaded);
        if overloaded {
            let recent = self
                .decreased_at_ms
                .is_some_and(|at| now_ms.saturating_sub(at) < 1000);
            if !recent {
                self.rate = (self.rate * 0.5).max(self.settings.min_per_second);
                self.tokens = self.tokens.min(self.capacity());
                self.decreased_at_ms = Some(now_ms);
            }
            self.held_back = false;
            self.increased_at_ms = now_ms;
        } else if self.held_back && now_ms.saturating_sub(self.increased_at_ms) >= 1000 {
            // Additive increase, once a second while the budget held requests back: about 10 %
            // a second, at least one request per second more.
            let step = (self.rate * 0.1).max(1.0);
            let limit = self.limit(now_ms);
            if self.rate < limit {
                self.rate = (self.rate + step).min(limit);
            }
            self.held_back = false;
            self.increased_at_ms = now_ms;
        }
    }
}

/// Ironic's two budgets: one for everything sent to it (its API and its CPU answer all of
/// it), and one more for heartbeats, whose work goes to the conductor's worker pool. A
/// heartbeat needs a token from both; anything else from the first only. A 5xx answer to a
/// heartbeat says the pool is exhausted, not the API (which answered it): only the pool's
/// budget learns it. Ironic unreachable for [`OUTAGE_MS`] is an outage: for [`RECOVERY_MS`]
/// after it each budget gets no more than Ironic proved it sustains. Pure.
#[derive(Clone, Debug)]
pub(crate) struct Budgets {
    ironic: RateBudget,
    pool: RateBudget,
    /// Since when Ironic has been unreachable (no answer at all), if it is.
    unreachable_since_ms: Option<u64>,
}

impl Budgets {
    pub(crate) fn new(settings: BudgetSettings, now_ms: u64) -> Self {
        Budgets {
            ironic: RateBudget::new(settings, now_ms),
            pool: RateBudget::new(settings, now_ms).with_latency_gradient(),
            unreachable_since_ms: None,
        }
    }

    /// The budget of everything sent to Ironic.
    pub(crate) fn ironic(&self) -> &RateBudget {
        &self.ironic
    }

    /// The budget of heartbeats (the conductor's worker pool).
    pub(crate) fn pool(&self) -> &RateBudget {
        &self.pool
    }

    /// Milliseconds until a request in `lane` may go (0: now).
    pub(crate) fn wait_ms(&mut self, lane: Lane, now_ms: u64) -> u64 {
        let all = self.ironic.wait_ms(now_ms);
        match lane {
            Lane::Api => all,
            Lane::Conductor => all.max(self.pool.wait_ms(now_ms)),
        }
    }

    /// Takes what a request in `lane` needs, if all of it is there.
    pub(crate) fn try_take(&mut self, lane: Lane, now_ms: u64) -> bool {
        if self.wait_ms(lane, now_ms) > 0 {
            self.hold_back(lane, now_ms);
            return false;
        }
        self.ironic.try_take(now_ms);
        if lane == Lane::Conductor {
            self.pool.try_take(now_ms);
        }
        true
    }

    /// Requests of `lane` wait for a rate: whichever budget lacks tokens is what holds them
    /// back, so it may grow.
    pub(crate) fn hold_back(&mut self, lane: Lane, now_ms: u64) {
        if self.ironic.wait_ms(now_ms) > 0 {
            self.ironic.held_back = true;
        }
        if lane == Lane::Conductor && self.pool.wait_ms(now_ms) > 0 {
            self.pool.held_back = true;
        }
    }

    /// Learns from one answer to a request of `lane`.
    pub(crate) fn observe(&mut self, lane: Lane, now_ms: u64, sample: Sample) {
        if sample == Sample::Unreachable {
            self.unreachable_since_ms.get_or_insert(now_ms);
            return;
        }
        if let Some(since) = self.unreachable_since_ms.take() {
            if now_ms.saturating_sub(since) >= OUTAGE_MS {
                self.recover(now_ms);
            }
        }
        match (lane, sample) {
            (Lane::Api, s) => self.ironic.observe(now_ms, s),
            (Lane::Conductor, Sample::ServerError { latency_ms }) => {
                // The pool refused it; the API answered.
                self.pool.observe(now_ms, sample);
                self.ironic.observe(now_ms, Sample::Answered { latency_ms });
            }
            (Lane::Conductor, s) => {
                self.pool.observe(now_ms, s);
                self.ironic.observe(now_ms, s);
            }
        }
    }

    /// Back after an outage: each budget gets no more than it proved (a budget that proved
    /// nothing keeps its rate: a fresh gateway).
    fn recover(&mut self, now_ms: u64) {
        for budget in [&mut self.ironic, &mut self.pool] {
            let proven = budget.proven_rate();
            if proven > 0.0 {
                budget.hold_at_most(proven, now_ms, now_ms + RECOVERY_MS);
            }
        }
    }
}

/// A waiting request: its node (one place per node among refreshes) and what it is told.
struct Waiter<T> {
    node: String,
    ticket: T,
}

/// The waiting requests, one queue per lane and class, first come first served within one.
/// Pure.
///
/// A node holds at most one waiting place among the record-only refreshes (an agent repeating
/// itself in a storm cannot crowd others out; a refused one is kept for the relay). Requests of
/// the other classes are never refused for their node: identical lookups after a flight each
/// ask Ironic, and refusing one would answer a genuine agent 503.
pub(crate) struct Queues<T> {
    by_lane: [[VecDeque<Waiter<T>>; Class::COUNT]; 2],
    refreshing: HashSet<String>,
    max_waiting: usize,
    len: usize,
}

/// Why a request was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queues are full.
    Full,
    /// A refresh of this node already waits.
    NodeWaits,
}

impl<T> Queues<T> {
    pub(crate) fn new(max_waiting: usize) -> Self {
        Queues {
            by_lane: Default::default(),
            refreshing: HashSet::new(),
            max_waiting,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// How many wait in `class`, in both lanes.
    pub(crate) fn waiting(&self, class: Class) -> usize {
        self.by_lane.iter().map(|l| l[class as usize].len()).sum()
    }

    /// How many wait in `lane`.
    pub(crate) fn waiting_in(&self, lane: Lane) -> usize {
        self.by_lane[lane as usize].iter().map(VecDeque::len).sum()
    }

    pub(crate) fn push(
        &mut self,
        lane: Lane,
        class: Class,
        node: &str,
        ticket: T,
    ) -> Result<(), Refused> {
        // Upkeep is a few requests by construction: a full queue of agents never refuses it.
        if self.len >= self.max_waiting && class != Class::Upkeep {
            return Err(Refused::Full);
        }
        if class == Class::Refresh && !self.refreshing.insert(node.to_string()) {
            return Err(Refused::NodeWaits);
        }
        self.by_lane[lane as usize][class as usize].push_back(Waiter {
            node: node.to_string(),
            ticket,
        });
        self.len += 1;
        Ok(())
    }

    /// The next waiter to serve among the lanes (and classes) that can send now: the oldest of
    /// the highest class (a lane waiting for its rate holds up nobody in the other lane).
    pub(crate) fn pop(&mut self, ready: impl Fn(Lane, Class) -> bool) -> Option<(Lane, Class, T)> {
        for class in Class::ALL {
            for lane in Lane::ALL {
                if !ready(lane, class) {
                    continue;
                }
                if let Some(w) = self.by_lane[lane as usize][class as usize].pop_front() {
                    if class == Class::Refresh {
                        self.refreshing.remove(&w.node);
                    }
                    self.len -= 1;
                    return Some((lane, class, w.ticket));
                }
            }
        }
        None
    }

    /// Whether a waiter of `class` or a higher one waits in `lane` (which a newcomer of
    /// `class` must not overtake).
    pub(crate) fn waits_at_or_above(&self, lane: Lane, class: Class) -> bool {
        Class::ALL
            .iter()
            .take_while(|c| **c <= class)
            .any(|c| !self.by_lane[lane as usize][*c as usize].is_empty())
    }

    /// Drops the waiters whose ticket says they are gone.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let mut len = 0;
        for lane in &mut self.by_lane {
            for class in Class::ALL {
                let q = &mut lane[class as usize];
                let refreshing = &mut self.refreshing;
                q.retain(|w| {
                    let k = keep(&w.ticket);
                    if !k && class == Class::Refresh {
                        refreshing.remove(&w.node);
                    }
                    k
                });
                len += q.len();
            }
        }
        self.len = len;
    }
}

/// Counters of what the governor did, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct GovernorStats {
    /// The rates now, per 1000 seconds: everything sent to Ironic, then heartbeats.
    pub rate_millis: [u64; 2],
    /// What Ironic proved it sustains ([`RateBudget::proven_rate`]), per 1000 seconds, in the
    /// same order.
    pub proven_millis: [u64; 2],
    pub in_flight: usize,
    pub waiting: [usize; Class::COUNT],
    /// Overload answers, by lane.
    pub overloaded: [u64; 2],
}

struct Inner {
    budgets: Budgets,
    queues: Queues<oneshot::Sender<()>>,
    /// In flight, by lane.
    in_flight: [usize; 2],
    max_in_flight: usize,
    ticker_running: bool,
    overloaded: [u64; 2],
}

impl Inner {
    /// Whether one more request of `lane` may be in flight: heartbeats hold at most half the
    /// places, so that lookups never wait behind heartbeats Ironic is slow to answer.
    /// Whether one more request of `class` may be in flight in `lane`: the gateway's upkeep
    /// (one sync request at a time, a version probe) is not an agent request and does not
    /// count against their cap, only against the rate.
    fn room_for(&self, lane: Lane, class: Class) -> bool {
        class == Class::Upkeep || self.room(lane)
    }

    fn room(&self, lane: Lane) -> bool {
        let total: usize = self.in_flight.iter().sum();
        total < self.max_in_flight
            && match lane {
                Lane::Api => true,
                Lane::Conductor => {
                    self.in_flight[Lane::Conductor as usize] < (self.max_in_flight / 2).max(1)
                }
            }
    }
}

/// The governor: requests [`enter`](Governor::enter) with their class and lane and get a
/// [`Permit`] when both their lane's rate and the in-flight limit allow; the permit reports
/// Ironic's answer.
pub(crate) struct Governor {
    inner: Mutex<Inner>,
    started: std::time::Instant,
}

/// No place in time (queues full, the node already waits, the deadline passed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Busy;

impl Governor {
    pub(crate) fn new(settings: BudgetSettings, max_in_flight: usize, max_waiting: usize) -> Self {
        Governor {
            inner: Mutex::new(Inner {
                budgets: Budgets::new(settings, 0),
                queues: Queues::new(max_waiting),
                in_flight: [0; 2],
                max_in_flight: max_in_flight.max(1),
                ticker_running: false,
                overloaded: [0; 2],
            }),
            started: std::time::Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Waits, until `deadline` at most, for a place to send one request of `class` in `lane`
    /// for `node`.
    pub(crate) async fn enter(
        self: &Arc<Self>,
        class: Class,
        lane: Lane,
        node: &str,
        deadline: Instant,
    ) -> Result<Permit, Busy> {
        let mut waiting = {
            let mut inner = self.inner.lock().map_err(|_| Busy)?;
            let now = self.now_ms();
            if let Some(permit) = self.take_now(&mut inner, class, lane, now) {
                return Ok(permit);
            }
            let (tx, rx) = oneshot::channel();
            inner.queues.push(lane, class, node, tx).map_err(|_| Busy)?;
            self.dispatch(&mut inner);
            self.ensure_ticker(&mut inner);
            Waiting {
                rx: Some(rx),
                lane,
                governor: self.clone(),
            }
        };
        let granted = tokio::time::timeout_at(deadline, waiting.granted()).await;
        match granted {
            Ok(true) => Ok(self.permit(lane, self.now_ms())),
            // Timed out: `Waiting`'s drop gives back a grant that raced the deadline.
            _ => Err(Busy),
        }
    }

    /// Takes a place now or not at all.
    #[cfg(test)]
    pub(crate) fn try_enter(self: &Arc<Self>, class: Class, lane: Lane) -> Option<Permit> {
        let mut inner = self.inner.lock().ok()?;
        let now = self.now_ms();
        self.take_now(&mut inner, class, lane, now)
    }

    /// A place now, if both limits allow and nobody of this class or a higher one waits in
    /// the lane (nothing jumps the queue).
    fn take_now(
        self: &Arc<Self>,
        inner: &mut Inner,
        class: Class,
        lane: Lane,
        now: u64,
    ) -> Option<Permit> {
        let free = inner.room_for(lane, class) && !inner.queues.waits_at_or_above(lane, class);
        if free && inner.budgets.try_take(lane, now) {
            inner.in_flight[lane as usize] += 1;
            return Some(self.permit(lane, now));
        }
        None
    }

    fn permit(self: &Arc<Self>, lane: Lane, now_ms: u64) -> Permit {
        Permit {
            governor: self.clone(),
            lane,
            sent_at_ms: now_ms,
            reported: false,
        }
    }

    /// Hands tokens to waiters in class order while both limits allow.
    fn dispatch(&self, inner: &mut Inner) {
        let now = self.now_ms();
        // Waiters that gave up (their receiver is gone) hold no place.
        inner.queues.retain(|tx| !tx.is_closed());
        while inner.queues.len() > 0 {
            let mut rated = [false; 2];
            for lane in Lane::ALL {
                let has_room = inner.room(lane);
                let waits = inner.queues.waiting_in(lane) > 0;
                rated[lane as usize] = inner.budgets.wait_ms(lane, now) == 0;
                if has_room && waits && !rated[lane as usize] {
                    // Requests wait for the rate: it is what holds them back, so it may grow.
                    inner.budgets.hold_back(lane, now);
                }
            }
            let room = Lane::ALL.map(|l| inner.room(l));
            let ready =
                |l: Lane, c: Class| rated[l as usize] && (c == Class::Upkeep || room[l as usize]);
            let Some((lane, _, tx)) = inner.queues.pop(ready) else {
                break;
            };
            if tx.send(()).is_ok() {
                inner.budgets.try_take(lane, now);
                inner.in_flight[lane as usize] += 1;
            }
        }
    }

    /// One task wakes the queues when the next token is due, while anything waits.
    fn ensure_ticker(self: &Arc<Self>, inner: &mut Inner) {
        if inner.ticker_running {
            return;
        }
        inner.ticker_running = true;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let wait = {
                    let Ok(mut inner) = me.inner.lock() else {
                        return;
                    };
                    me.dispatch(&mut inner);
                    if inner.queues.len() == 0 {
                        inner.ticker_running = false;
                        return;
                    }
                    let now = me.now_ms();
                    let mut wait = 50;
                    for lane in Lane::ALL {
                        if inner.queues.waiting_in(lane) > 0 {
                            wait = wait.min(inner.budgets.wait_ms(lane, now));
                        }
                    }
                    wait.clamp(1, 50)
                };
                tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
            }
        });
    }

    fn release(&self, lane: Lane, sent_at_ms: u64, sample: Option<Sample>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let held = &mut inner.in_flight[lane as usize];
        *held = held.saturating_sub(1);
        let now = self.now_ms();
        if let Some(s) = sample {
            let s = s.with_latency(now.saturating_sub(sent_at_ms));
            if matches!(s, Sample::Overloaded | Sample::ServerError { .. }) {
                inner.overloaded[lane as usize] += 1;
            }
            inner.budgets.observe(lane, now, s);
        }
        self.dispatch(&mut inner);
    }

    pub(crate) fn stats(&self) -> GovernorStats {
        let Ok(inner) = self.inner.lock() else {
            return GovernorStats::default();
        };
        let mut stats = GovernorStats {
            in_flight: inner.in_flight.iter().sum(),
            overloaded: inner.overloaded,
            ..GovernorStats::default()
        };
        for c in Class::ALL {
            stats.waiting[c as usize] = inner.queues.waiting(c);
        }
        for (i, b) in [inner.budgets.ironic(), inner.budgets.pool()]
            .into_iter()
            .enumerate()
        {
            stats.rate_millis[i] = (b.rate() * 1000.0) as u64;
            stats.proven_millis[i] = (b.proven_rate() * 1000.0) as u64;
        }
        stats
    }
}

/// A request waiting for its grant. A grant delivered as the wait ends (deadline, or the
/// request dropped) is given back, so that no place leaks.
struct Waiting {
    rx: Option<oneshot::Receiver<()>>,
    lane: Lane,
    governor: Arc<Governor>,
}

impl Waiting {
    async fn granted(&mut self) -> bool {
        let Some(rx) = self.rx.as_mut() else {
            return false;
        };
        let ok = rx.await.is_ok();
        self.rx = None;
        ok
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if rx.try_recv().is_ok() {
                self.governor.release(self.lane, 0, None);
            }
        }
    }
}

/// A place to send one request; report Ironic's answer with [`Permit::answered`] (dropping
/// it unreported frees the place and teaches nothing).
pub(crate) struct Permit {
    governor: Arc<Governor>,
    lane: Lane,
    sent_at_ms: u64,
    reported: bool,
}

impl Permit {
    /// Ironic answered (or failed): frees the place and learns from it. The latency is
    /// measured from the grant; `Sample::Answered`'s own value is ignored.
    pub(crate) fn answered(mut self, sample: Sample) {
        self.reported = true;
        self.governor
            .release(self.lane, self.sent_at_ms, Some(sample));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported {
            self.governor.release(self.lane, self.sent_at_ms, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BudgetSettings {
        BudgetSettings {
            initial_per_second: 10.0,
            min_per_second: 1.0,
            max_per_second: 100.0,
            slow_answer_ms: 5000,
        }
    }

    const OK: Sample = Sample::Answered { latency_ms: 20 };

    /// How many tokens `b` hands out over `ms`, asked every millisecond.
    fn taken(b: &mut RateBudget, from_ms: u64, ms: u64) -> u64 {
        (from_ms..from_ms + ms).filter(|t| b.try_take(*t)).count() as u64
    }

    #[test]
    fn the_rate_holds_and_never_bursts() {
        let mut b = RateBudget::new(settings(), 0);
        // It starts with one second's worth, then 10/s: about 10 in each second after.
        let start = (0..100).filter(|_| b.try_take(0)).count();
        assert_eq!(start, 10, "a second's worth at start");
        let first = taken(&mut b, 1, 1000);
        assert!((10..=11).contains(&first), "{first}");
        let after_idle = taken(&mut b, 60_000, 100);
        assert!(
            after_idle <= 11,
            "idle time piles up no burst: {after_idle}"
        );
    }

    #[test]
    fn overload_halves_the_rate_once_a_second() {
        let mut b = RateBudget::new(settings(), 0);
        b.observe(100, Sample::Overloaded);
        assert_eq!(b.rate(), 5.0);
        // More 503s in the same second: the same overload.
        b.observe(200, Sample::Overloaded);
        b.observe(900, Sample::Overloaded);
        assert_eq!(b.rate(), 5.0);
        b.observe(1200, Sample::Overloaded);
        assert_eq!(b.rate(), 2.5);
        for t in 0..10 {
            b.observe(2000 + t * 1000, Sample::Overloaded);
        }
        assert_eq!(b.rate(), 1.0, "never below the minimum");
        // A slow answer is overload too.
        let mut b = RateBudget::new(settings(), 0);
        b.observe(10, Sample::Answered { latency_ms: 6000 });
        assert_eq!(b.rate(), 5.0);
    }

    #[test]
    fn answers_much_slower_than_usual_are_inflated() {
        let mut g = LatencyGradient::new();
        let feed = |g: &mut LatencyGradient, ms: u64, n: usize| -> Vec<bool> {
            (0..n).map(|_| g.inflated(ms)).collect()
        };
        assert!(feed(&mut g, 50, 50).iter().all(|i| !i), "a steady 50 ms");
        // The pool fills up: answers go to 400 ms; within a few answers that is overload.
        let filling = feed(&mut g, 400, 6);
        assert!(!filling[0], "one slow answer is not a trend");
        assert!(filling[5], "{filling:?}");
        // It drains: back to usual within a few answers.
        assert!(!*feed(&mut g, 50, 10).last().unwrap());
        // A fast baseline: 10 ms, then 100 ms is slower, but within the margin.
        let mut fast = LatencyGradient::new();
        feed(&mut fast, 10, 20);
        assert!(feed(&mut fast, 100, 20).iter().all(|i| !i));
        assert!(*feed(&mut fast, 300, 10).last().unwrap());
    }

    #[test]
    fn the_heartbeats_budget_backs_off_when_answers_slow_down() {
        let mut b = Budgets::new(settings(), 0);
        let mut now = 0;
        for _ in 0..40 {
            now += 100;
            b.observe(Lane::Conductor, now, Sample::Answered { latency_ms: 60 });
        }
        assert_eq!(b.pool().rate(), 10.0);
        for _ in 0..10 {
            now += 100;
            b.observe(Lane::Conductor, now, Sample::Answered { latency_ms: 600 });
        }
        assert_eq!(b.pool().rate(), 5.0, "halved once in that second");
        assert_eq!(b.ironic().rate(), 10.0, "lookups are not slowed by it");
    }

    #[test]
    fn the_rate_grows_only_while_it_holds_requests_back() {
        let mut b = RateBudget::new(settings(), 0);
        // Demand below the rate: Ironic keeps up, but the rate has no reason to grow.
        for t in 1..=30 {
            b.try_take(t * 1000);
            b.observe(t * 1000 + 10, OK);
        }
        assert_eq!(b.rate(), 10.0);
        // Demand above the rate: it grows by about 10 % a second.
        for t in 31..=40 {
            let now = t * 1000;
            taken(&mut b, now, 20);
            b.observe(now + 30, OK);
        }
        assert!(b.rate() > 15.0 && b.rate() <= 30.0, "{}", b.rate());
        let grown = b.rate();
        for t in 41..=400 {
            let now = t * 1000;
            taken(&mut b, now, 500);
            b.observe(now + 600, OK);
        }
        assert_eq!(b.rate(), 100.0, "never above the maximum (from {grown})");
    }

    #[test]
    fn an_unreachable_ironic_teaches_nothing() {
        let mut b = Budgets::new(settings(), 0);
        for t in 0..100 {
            b.observe(Lane::Conductor, t * 1000, Sample::Unreachable);
        }
        assert_eq!(b.pool().rate(), 10.0, "the rate from before");
        b.observe(Lane::Conductor, 100_000, OK);
        assert_eq!(b.pool().rate(), 10.0, "nothing proven caps nothing");
        assert_eq!(b.ironic().rate(), 10.0);
    }

    const POOL_503: Sample = Sample::ServerError { latency_ms: 30 };

    #[test]
    fn the_pools_refusals_lower_the_heartbeats_budget_only() {
        let mut b = Budgets::new(settings(), 0);
        // The conductor's pool is exhausted: heartbeats slow down, lookups do not.
        for t in 0..5 {
            b.observe(Lane::Conductor, 100 + t * 1000, POOL_503);
        }
        assert_eq!(b.pool().rate(), 1.0);
        assert_eq!(b.ironic().rate(), 10.0);
        // A lookup's 5xx, or a heartbeat Ironic did not answer in time: Ironic as a whole.
        b.observe(Lane::Api, 6000, POOL_503);
        assert_eq!(b.ironic().rate(), 5.0);
        b.observe(Lane::Conductor, 7100, Sample::Overloaded);
        assert_eq!(b.ironic().rate(), 2.5);
        assert_eq!(b.pool().rate(), 1.0, "never below the minimum");
    }

    #[test]
    fn a_heartbeat_needs_both_budgets_and_a_lookup_the_first_only() {
        let mut b = Budgets::new(settings(), 0);
        for t in 0..5 {
            b.observe(Lane::Conductor, 100 + t * 1000, POOL_503);
        }
        // At 1 a second, the pool's bucket holds one token, Ironic's ten.
        let now = 10_000;
        assert!(b.try_take(Lane::Conductor, now));
        assert!(
            !b.try_take(Lane::Conductor, now),
            "the pool's budget is spent"
        );
        let lookups = (0..20).filter(|_| b.try_take(Lane::Api, now)).count();
        assert_eq!(lookups, 9, "Ironic's bucket, less the heartbeat's token");
        assert!(b.wait_ms(Lane::Api, now) > 0);
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(
            Sample::of_status(503, 5),
            Sample::ServerError { latency_ms: 5 }
        );
        assert_eq!(
            Sample::of_status(500, 5),
            Sample::ServerError { latency_ms: 5 }
        );
        assert_eq!(
            Sample::of_status(202, 5),
            Sample::Answered { latency_ms: 5 }
        );
        assert_eq!(
            Sample::of_status(409, 5),
            Sample::Answered { latency_ms: 5 }
        );
    }

    #[test]
    fn queues_serve_higher_classes_first_and_one_place_per_node() {
        const C: Lane = Lane::Conductor;
        let mut q: Queues<&str> = Queues::new(5);
        q.push(C, Class::Refresh, "a", "refresh-a").unwrap();
        assert_eq!(
            q.push(C, Class::Refresh, "a", "again"),
            Err(Refused::NodeWaits),
            "one refresh per node"
        );
        q.push(C, Class::First, "b", "first-b").unwrap();
        q.push(C, Class::Refresh, "b", "refresh-b").unwrap();
        q.push(Lane::Api, Class::Mint, "c", "mint-c").unwrap();
        q.push(Lane::Api, Class::Mint, "c", "mint-c2").unwrap();
        assert_eq!(
            q.push(Lane::Api, Class::Mint, "d", "full"),
            Err(Refused::Full)
        );
        assert!(q.waits_at_or_above(C, Class::Refresh));
        assert!(
            !q.waits_at_or_above(C, Class::Drive),
            "mints wait in the API's lane"
        );
        assert!(q.waits_at_or_above(Lane::Api, Class::Mint));
        let order: Vec<_> = std::iter::from_fn(|| q.pop(|_, _| true).map(|(_, _, t)| t)).collect();
        assert_eq!(
            order,
            ["mint-c", "mint-c2", "first-b", "refresh-a", "refresh-b"]
        );
        assert_eq!(q.len(), 0);
        q.push(C, Class::Refresh, "b", "b-back").unwrap();
        q.retain(|t| *t != "b-back");
        assert_eq!(q.len(), 0, "a waiter that left frees its place");
        q.push(C, Class::Refresh, "b", "b-again").unwrap();
    }

    #[test]
    fn upkeep_goes_before_a_storm_of_lookups_even_when_the_queues_are_full() {
        let mut q: Queues<&str> = Queues::new(3);
        for t in ["mint-1", "mint-2", "mint-3"] {
            q.push(Lane::Api, Class::Mint, t, t).unwrap();
        }
        assert_eq!(
            q.push(Lane::Api, Class::Mint, "m4", "mint-4"),
            Err(Refused::Full)
        );
        q.push(Lane::Api, Class::Upkeep, "node sync", "sync")
            .expect("the sync is never refused for the agents' queue");
        assert!(q.waits_at_or_above(Lane::Api, Class::Upkeep));
        let order: Vec<_> = std::iter::from_fn(|| q.pop(|_, _| true).map(|(_, _, t)| t)).collect();
        assert_eq!(order, ["sync", "mint-1", "mint-2", "mint-3"]);
    }

    #[test]
    fn a_lane_waiting_for_its_rate_holds_up_nobody_in_the_other() {
        let mut q: Queues<&str> = Queues::new(8);
        q.push(Lane::Api, Class::Mint, "m", "mint").unwrap();
        q.push(Lane::Conductor, Class::Refresh, "r", "refresh")
            .unwrap();
        let conductor_only = |l: Lane, _: Class| l == Lane::Conductor;
        assert_eq!(
            q.pop(conductor_only),
            Some((Lane::Conductor, Class::Refresh, "refresh"))
        );
        assert_eq!(q.pop(conductor_only), None, "the mint waits for its lane");
        assert_eq!(q.waiting_in(Lane::Api), 1);
    }

    #[tokio::test]
    async fn the_governor_grants_by_class_within_the_rate() {
        let g = Arc::new(Governor::new(
            BudgetSettings {
                initial_per_second: 20.0,
                ..settings()
            },
            1,
            16,
        ));
        let far = Instant::now() + std::time::Duration::from_secs(5);
        let held = g
            .enter(Class::Drive, Lane::Conductor, "n0", far)
            .await
            .unwrap();
        // While one is in flight, a refresh and a mint wait; the mint goes first.
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (class, lane, node) in [
            (Class::Refresh, Lane::Conductor, "r"),
            (Class::Mint, Lane::Api, "m"),
        ] {
            let (g, order) = (g.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let p = g.enter(class, lane, node, far).await.unwrap();
                order.lock().unwrap().push(class);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                p.answered(OK);
            }));
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(g.stats().waiting[Class::Mint as usize], 1);
        assert!(
            g.try_enter(Class::Refresh, Lane::Conductor).is_none(),
            "nothing jumps the queue"
        );
        held.answered(OK);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [Class::Mint, Class::Refresh]);
        assert_eq!(g.stats().in_flight, 0);
    }

    #[tokio::test]
    async fn upkeep_is_not_held_by_the_agents_in_flight_cap() {
        let g = Arc::new(Governor::new(
            BudgetSettings {
                initial_per_second: 20.0,
                ..settings()
            },
            1,
            16,
        ));
        let lookup = g.try_enter(Class::Mint, Lane::Api).expect("the one place");
        assert!(
            g.try_enter(Class::Mint, Lane::Api).is_none(),
            "the cap holds"
        );
        let sync = g
            .try_enter(Class::Upkeep, Lane::Api)
            .expect("the sync does not wait for the agents' places");
        sync.answered(OK);
        lookup.answered(OK);
    }

    #[tokio::test]
    async fn a_heartbeat_storm_does_not_hold_up_lookups() {
        let g = Arc::new(Governor::new(
            BudgetSettings {
                initial_per_second: 4.0,
                min_per_second: 1.0,
                ..settings()
            },
            64,
            64,
        ));
        let far = Instant::now() + std::time::Duration::from_secs(5);
        // The pool refuses a heartbeat: its budget halves, and the next heartbeats spend it
        // and queue behind its rate.
        let first = g.try_enter(Class::Drive, Lane::Conductor).unwrap();
        first.answered(POOL_503);
        while let Some(p) = g.try_enter(Class::Drive, Lane::Conductor) {
            drop(p);
        }
        let mut queued = Vec::new();
        for i in 0..10 {
            let g = g.clone();
            queued.push(tokio::spawn(async move {
                let node = format!("hb{i}");
                g.enter(Class::Drive, Lane::Conductor, &node, far)
                    .await
                    .is_ok()
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(g.stats().waiting[Class::Drive as usize] > 0);
        let lookup = g.try_enter(Class::Mint, Lane::Api);
        assert!(lookup.is_some(), "the API's lane has its own rate");
        for t in queued {
            t.abort();
        }
    }

    #[test]
    fn heartbeats_hold_at_most_half_the_places_in_flight() {
        let g = Arc::new(Governor::new(roomy(), 4, 16));
        let heartbeats: Vec<_> = (0..4)
            .filter_map(|_| g.try_enter(Class::Drive, Lane::Conductor))
            .collect();
        assert_eq!(heartbeats.len(), 2, "half of 4");
        let lookups: Vec<_> = (0..4)
            .filter_map(|_| g.try_enter(Class::Mint, Lane::Api))
            .collect();
        assert_eq!(lookups.len(), 2, "the rest");
        drop(heartbeats);
        assert!(g.try_enter(Class::Mint, Lane::Api).is_some());
    }

    #[tokio::test]
    async fn the_rate_grows_while_requests_queue_for_it() {
        let g = Arc::new(Governor::new(
            BudgetSettings {
                initial_per_second: 2.0,
                min_per_second: 1.0,
                max_per_second: 100.0,
                slow_answer_ms: 5000,
            },
            64,
            64,
        ));
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for i in 0..40 {
            let g = g.clone();
            tasks.push(tokio::spawn(async move {
                let until = Instant::now() + std::time::Duration::from_secs(10);
                let node = format!("n{i}");
                if let Ok(p) = g.enter(Class::Mint, Lane::Api, &node, until).await {
                    p.answered(OK);
                }
            }));
        }
        while started.elapsed() < std::time::Duration::from_millis(3500) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let rate = g.stats().rate_millis[Lane::Api as usize];
        for t in tasks {
            t.abort();
        }
        // About one more a second: three increases in 3.5 s.
        assert!(
            rate > 3500,
            "the queue held back by the rate made it grow: {rate}"
        );
    }

    #[tokio::test]
    async fn a_wait_ends_at_its_deadline_and_frees_its_place() {
        let g = Arc::new(Governor::new(settings(), 1, 16));
        let held = g
            .enter(
                Class::Drive,
                Lane::Conductor,
                "a",
                Instant::now() + std::time::Duration::from_secs(1),
            )
            .await
            .unwrap();
        let soon = Instant::now() + std::time::Duration::from_millis(30);
        let waited = g.enter(Class::First, Lane::Conductor, "b", soon).await;
        assert_eq!(waited.err(), Some(Busy));
        drop(held);
        let stats = g.stats();
        assert_eq!(stats.in_flight, 0);
        assert_eq!(
            stats.waiting,
            [0; Class::COUNT],
            "the waiter that left holds no place"
        );
    }

    fn roomy() -> BudgetSettings {
        BudgetSettings {
            initial_per_second: 50.0,
            min_per_second: 2.0,
            max_per_second: 500.0,
            slow_answer_ms: 20_000,
        }
    }

    /// `per_second` answers a second from `from_ms` for `seconds`.
    fn answer_steadily(b: &mut RateBudget, from_ms: u64, seconds: u64, per_second: u64) -> u64 {
        let mut now = from_ms;
        for _ in 0..seconds * per_second {
            now += 1000 / per_second;
            b.observe(now, OK);
        }
        now
    }

    #[test]
    fn ironic_proves_the_rate_it_answers_over_whole_windows_without_overload() {
        let mut b = RateBudget::new(roomy(), 0);
        assert_eq!(b.proven_rate(), 0.0);
        let now = answer_steadily(&mut b, 0, 25, 8);
        assert!((b.proven_rate() - 8.0).abs() < 0.2, "{}", b.proven_rate());
        // Windows with an overload answer prove nothing, however busy (20 a second here).
        let mut now = now;
        for i in 0..600 {
            now += 50;
            b.observe(now, if i % 20 == 0 { Sample::Overloaded } else { OK });
        }
        b.observe(now + PROOF_WINDOW_MS, OK);
        assert!(b.proven_rate() < 9.0, "{}", b.proven_rate());
    }

    /// `per_second` answers a second in `lane` from `from_ms` for `seconds`.
    fn answer_lane(
        b: &mut Budgets,
        lane: Lane,
        from_ms: u64,
        seconds: u64,
        per_second: u64,
    ) -> u64 {
        let mut now = from_ms;
        for _ in 0..seconds * per_second {
            now += 1000 / per_second;
            b.observe(lane, now, OK);
        }
        now
    }

    fn outage(b: &mut Budgets, from_ms: u64, seconds: u64) -> u64 {
        for t in 0..seconds {
            b.observe(Lane::Conductor, from_ms + t * 1000, Sample::Unreachable);
        }
        from_ms + seconds * 1000
    }

    #[test]
    fn after_an_outage_the_rate_is_no_more_than_what_ironic_proved() {
        let mut b = Budgets::new(roomy(), 0);
        let now = answer_lane(&mut b, Lane::Conductor, 0, 25, 8);
        assert_eq!(
            b.pool().rate(),
            50.0,
            "the limit was never what held requests back"
        );
        let back = outage(&mut b, now, 30);
        b.observe(Lane::Conductor, back, OK);
        for budget in [b.pool(), b.ironic()] {
            assert!((budget.rate() - 8.0).abs() < 0.2, "{}", budget.rate());
            assert!(budget.tokens <= budget.capacity());
        }
    }

    #[test]
    fn after_an_outage_everything_sent_gets_no_more_than_ironic_proved_in_all() {
        let mut b = Budgets::new(roomy(), 0);
        // Lookups and heartbeats each proved 8 a second, never at the same time: 8 in all.
        let now = answer_lane(&mut b, Lane::Api, 0, 25, 8);
        let now = answer_lane(&mut b, Lane::Conductor, now, 25, 8);
        let back = outage(&mut b, now, 30);
        b.observe(Lane::Api, back, OK);
        let all = b.ironic().rate();
        assert!((all - 8.0).abs() < 0.5, "{all}");
    }

    #[test]
    fn the_cap_after_an_outage_holds_for_the_recovery_minute_then_lifts() {
        let mut b = Budgets::new(roomy(), 0);
        let now = answer_lane(&mut b, Lane::Conductor, 0, 25, 8);
        let back = outage(&mut b, now, 30);
        // Demand above the cap, Ironic answering: the rate stays at the cap for the minute.
        let mut now = back;
        while now < back + RECOVERY_MS - 1000 {
            now += 100;
            b.try_take(Lane::Conductor, now);
            b.observe(Lane::Conductor, now, OK);
        }
        let capped = b.pool().rate();
        assert!(capped <= 8.2, "held at what was proven: {capped}");
        while now < back + RECOVERY_MS + 5000 {
            now += 100;
            b.try_take(Lane::Conductor, now);
            b.observe(Lane::Conductor, now, OK);
        }
        assert!(b.pool().rate() > capped, "then it grows again");
    }

    #[test]
    fn a_short_blip_is_no_outage_and_nothing_proven_caps_nothing() {
        let mut b = Budgets::new(roomy(), 0);
        let now = answer_lane(&mut b, Lane::Conductor, 0, 25, 8);
        b.observe(Lane::Conductor, now + 100, Sample::Unreachable);
        b.observe(Lane::Conductor, now + 1_000, OK);
        assert_eq!(b.pool().rate(), 50.0, "a 1 s blip");
        // Nothing proven yet (a fresh gateway): the configured rate stands.
        let mut fresh = Budgets::new(roomy(), 0);
        fresh.observe(Lane::Api, 10, Sample::Unreachable);
        fresh.observe(Lane::Api, 40_000, OK);
        assert_eq!(fresh.ironic().rate(), 50.0);
    }
}
