//! Single flight for lookups: identical lookups (same normalised key) that arrive while one is
//! being asked upstream wait for it instead of asking again, within one process (a watch
//! channel) and across every process sharing the Redis (a lease key plus a result key).
//!
//! The flight runs in a task of its own; each caller waits for it only as long as its own
//! agent waits (`Ticket::wait`).
//!
//! Only error answers are shared (404, 409, 5xx...). A success carries node data and, once, a
//! freshly minted token that belongs to the caller who got it; each waiter of a successful
//! flight asks Ironic itself, and so gets exactly what Ironic would have told it.

use crate::store::{FlightBoard, FlightResult, FlightState, WriteStep};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// How long a published result stays readable for waiters in other processes.
const RESULT_TTL: Duration = Duration::from_secs(2);

/// What a caller of a flight should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlightAnswer<T> {
    /// This caller led the flight; here is its own outcome.
    Led(T),
    /// Another caller led it; repeat this shared answer.
    Shared { status: u16, body: String },
    /// Ask the upstream yourself (the flight succeeded, or vanished).
    AskUpstream,
    /// The caller's time ran out while the flight was still running (it runs on).
    StillRunning,
}

/// A caller's place in a flight: how to wait for its outcome.
pub enum Ticket<T> {
    /// This caller started the flight; its own outcome arrives here.
    Leader(oneshot::Receiver<FlightAnswer<T>>),
    /// Another caller of this process started it; its shared result arrives here.
    Joiner(watch::Receiver<Option<FlightResult>>),
}

pub struct Flights {
    board: FlightBoard,
    owner: String,
    local: Mutex<HashMap<String, watch::Receiver<Option<FlightResult>>>>,
}

/// How a flight's leader ends the flight in Redis: in the step that writes what it learnt
/// ([`Self::write`], then [`Self::written`] once that step was written); a flight whose leader
/// did not is ended after it, in a step of its own.
pub(crate) struct FlightEnd {
    board: FlightBoard,
    key: String,
    owner: String,
    written: Arc<AtomicBool>,
}

impl FlightEnd {
    /// Adds the end of the flight, publishing `result`, to `step` (after the writes that
    /// waiters asking again must find: the step runs in order).
    pub(crate) fn write(&self, step: &mut WriteStep, result: &FlightResult) {
        self.board
            .write_end(step, &self.key, &self.owner, result, RESULT_TTL);
    }

    /// The step holding the end was written.
    pub(crate) fn written(&self) {
        self.written.store(true, Ordering::Release);
    }
}

/// Removes the local entry when the flight's task ends, however it ends: later callers then
/// start a new flight.
struct LocalLead<'a> {
    flights: &'a Flights,
    key: String,
}

impl Drop for LocalLead<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.flights.local.lock() {
            m.remove(&self.key);
        }
    }
}

impl Flights {
    pub(crate) fn new(board: FlightBoard) -> Self {
        Flights {
            board,
            owner: crate::edge::request_id(),
            local: Mutex::new(HashMap::new()),
        }
    }

    /// Joins the flight of `key`, or starts one: `lead` then runs in a task of its own, to its
    /// end even when no caller waits for it any more (a lookup that reached Ironic may mint a
    /// token, and that answer must be kept for the agent's retry, never dropped half-way).
    /// `lead` returns its own outcome and the result to share, and may end the flight in
    /// Redis itself ([`FlightEnd`]). `lease`: how long callers in other processes wait for this
    /// flight before asking themselves.
    pub fn join_or_start<T, F, Fut>(
        self: &Arc<Self>,
        key: &str,
        lease: Duration,
        lead: F,
    ) -> Ticket<T>
    where
        T: Send + 'static,
        F: FnOnce(FlightEnd) -> Fut + Send + 'static,
        Fut: Future<Output = (T, FlightResult)> + Send + 'static,
    {
        let tx = {
            let mut m = match self.local.lock() {
                Ok(m) => m,
                Err(poisoned) => poisoned.into_inner(),
            };
            if let Some(rx) = m.get(key) {
                return Ticket::Joiner(rx.clone());
            }
            let (tx, rx) = watch::channel(None);
            m.insert(key.to_string(), rx);
            tx
        };
        let (own_tx, own_rx) = oneshot::channel();
        let flights = self.clone();
        let key = key.to_string();
        tokio::spawn(async move {
            let answer = flights.lead(&key, lease, lead, &tx).await;
            let _ = own_tx.send(answer);
        });
        Ticket::Leader(own_rx)
    }

    /// The flight's task: waits for another process leading the same key, or leads.
    async fn lead<T, F, Fut>(
        &self,
        key: &str,
        lease: Duration,
        lead: F,
        tx: &watch::Sender<Option<FlightResult>>,
    ) -> FlightAnswer<T>
    where
        F: FnOnce(FlightEnd) -> Fut,
        Fut: Future<Output = (T, FlightResult)>,
    {
        let _lead = LocalLead {
            flights: self,
            key: key.to_string(),
        };
        match self.board.begin(key, &self.owner, lease).await {
            Ok(false) => {
                let answer = self.wait_remote(key, lease).await;
                let shared = match &answer {
                    FlightAnswer::Shared { status, body } => FlightResult::Shared {
                        status: *status,
                        body: body.clone(),
                    },
                    _ => FlightResult::AskUpstream,
                };
                let _ = tx.send(Some(shared));
                return answer;
            }
            Ok(true) => {}
            // Without Redis the flight is local to this process; still correct, less shared.
            Err(e) => log::debug!("lookup flight without the store: {e}"),
        }
        let written = Arc::new(AtomicBool::new(false));
        let end = FlightEnd {
            board: self.board.clone(),
            key: key.to_string(),
            owner: self.owner.clone(),
            written: written.clone(),
        };
        let (own, result) = lead(end).await;
        if !written.load(Ordering::Acquire) {
            if let Err(e) = self.board.end(key, &self.owner, &result, RESULT_TTL).await {
                log::debug!("lookup flight result not shared: {e}");
            }
        }
        let _ = tx.send(Some(result));
        FlightAnswer::Led(own)
    }

    async fn wait_remote<T>(&self, key: &str, wait: Duration) -> FlightAnswer<T> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(5);
        loop {
            match self.board.state(key).await {
                Ok(FlightState::Done(FlightResult::Shared { status, body })) => {
                    return FlightAnswer::Shared { status, body }
                }
                Ok(FlightState::Running) => {}
                Ok(_) | Err(_) => return FlightAnswer::AskUpstream,
            }
            if tokio::time::Instant::now() + pause > deadline {
                return FlightAnswer::AskUpstream;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

impl<T> Ticket<T> {
    /// Waits for the flight's outcome until `until` at most.
    pub async fn wait(self, until: Instant) -> FlightAnswer<T> {
        match self {
            Ticket::Leader(rx) => match tokio::time::timeout_at(until, rx).await {
                Ok(Ok(answer)) => answer,
                // The task ended without an outcome (it cannot, short of a panic).
                Ok(Err(_)) => FlightAnswer::AskUpstream,
                Err(_) => FlightAnswer::StillRunning,
            },
            Ticket::Joiner(mut rx) => {
                match tokio::time::timeout_at(until, rx.wait_for(|r| r.is_some())).await {
                    Ok(Ok(r)) => match r.as_ref() {
                        Some(FlightResult::Shared { status, body }) => FlightAnswer::Shared {
                            status: *status,
                            body: body.clone(),
                        },
                        _ => FlightAnswer::AskUpstream,
                    },
                    // The task went away without a result.
                    Ok(Err(_)) => FlightAnswer::AskUpstream,
                    Err(_) => FlightAnswer::StillRunning,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::TestRedis;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn not_found() -> FlightResult {
        FlightResult::Shared {
            status: 404,
            body: "nf".into(),
        }
    }

    /// Joins or starts the flight and waits for it at most `wait`.
    async fn run<T, F, Fut>(f: &Arc<Flights>, wait: Duration, lead: F) -> FlightAnswer<T>
    where
        T: Send + 'static,
        F: FnOnce(FlightEnd) -> Fut + Send + 'static,
        Fut: Future<Output = (T, FlightResult)> + Send + 'static,
    {
        f.join_or_start("k", wait, lead)
            .wait(Instant::now() + wait)
            .await
    }

    /// Flights over a redis-server of their own (kept running while the test holds it).
    async fn flights() -> (TestRedis, Arc<Flights>) {
        let redis = TestRedis::start().await;
        let flights = Arc::new(Flights::new(redis.stores.flights.clone()));
        (redis, flights)
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_lead() {
        let (_redis, flights) = flights().await;
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (f, c) = (flights.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                run(&f, Duration::from_secs(2), move |_| async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    ("mine", not_found())
                })
                .await
            }));
        }
        let mut led = 0;
        for t in tasks {
            match t.await.unwrap() {
                FlightAnswer::Led("mine") => led += 1,
                FlightAnswer::Shared { status: 404, .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(led, 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn success_is_not_shared() {
        let (_redis, flights) = flights().await;
        let f2 = flights.clone();
        let leader = tokio::spawn(async move {
            run(&f2, Duration::from_secs(2), |_| async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                ((), FlightResult::AskUpstream)
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let follower = run(&flights, Duration::from_secs(2), |_| async {
            panic!("must not lead") as ((), FlightResult)
        })
        .await;
        assert_eq!(follower, FlightAnswer::AskUpstream);
        assert_eq!(leader.await.unwrap(), FlightAnswer::Led(()));
    }

    #[tokio::test]
    async fn another_process_leading_is_waited_for() {
        let redis = TestRedis::start().await;
        let board = redis.stores.flights.clone();
        let other = Flights::new(board.clone());
        let here = Arc::new(Flights::new(board.clone()));
        assert!(board
            .begin("k", &other.owner, Duration::from_secs(2))
            .await
            .unwrap());
        let s2 = board.clone();
        let owner = other.owner.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(40)).await;
            s2.end("k", &owner, &not_found(), RESULT_TTL).await.unwrap();
        });
        let answer = run(&here, Duration::from_secs(2), |_| async {
            panic!("must not lead") as ((), FlightResult)
        })
        .await;
        assert_eq!(
            answer,
            FlightAnswer::Shared {
                status: 404,
                body: "nf".into()
            }
        );
    }

    /// A caller whose time runs out is told so at once, and the flight runs on to its end
    /// (its result is still published to later joiners).
    #[tokio::test]
    async fn a_slow_flight_outlives_its_callers() {
        let (_redis, flights) = flights().await;
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let t0 = std::time::Instant::now();
        let leader = flights
            .join_or_start("k", Duration::from_secs(5), move |_| async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                d.fetch_add(1, Ordering::SeqCst);
                ((), not_found())
            })
            .wait(Instant::now() + Duration::from_millis(50))
            .await;
        assert_eq!(leader, FlightAnswer::StillRunning);
        let joiner = flights
            .join_or_start("k", Duration::from_secs(5), |_| async {
                panic!("must not lead") as ((), FlightResult)
            })
            .wait(Instant::now() + Duration::from_millis(50))
            .await;
        assert_eq!(joiner, FlightAnswer::StillRunning);
        assert!(t0.elapsed() < Duration::from_millis(250));
        // A later caller joins the same flight and gets its result.
        let later = flights
            .join_or_start("k", Duration::from_secs(5), |_| async {
                panic!("must not lead") as ((), FlightResult)
            })
            .wait(Instant::now() + Duration::from_secs(2))
            .await;
        assert_eq!(
            later,
            FlightAnswer::Shared {
                status: 404,
                body: "nf".into()
            }
        );
        assert_eq!(done.load(Ordering::SeqCst), 1);
        // Once it ended, the next caller leads a new flight.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let next = run(&flights, Duration::from_secs(1), |_| async {
            ("new", not_found())
        })
        .await;
        assert_eq!(next, FlightAnswer::Led("new"));
    }
}
