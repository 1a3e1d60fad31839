//! Single flight for lookups: identical lookups (same normalised key) that arrive while one is
//! being asked upstream wait for it instead of asking again, within one process (a watch
//! channel) and across every process sharing the Redis (a lease key plus a result key).
//!
//! Only error answers are shared (404, 409, 5xx...). A success carries node data and, once, a
//! freshly minted token that belongs to the caller who got it; each waiter of a successful
//! flight asks Ironic itself, and so gets exactly what Ironic would have told it.

use crate::store::{EdgeStore, FlightResult, FlightState};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How long a published result stays readable for waiters in other processes.
const RESULT_TTL: Duration = Duration::from_secs(2);

/// What a caller of [`Flights::run`] should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlightAnswer<T> {
    /// This caller led the flight; here is its own outcome.
    Led(T),
    /// Another caller led it; repeat this shared answer.
    Shared { status: u16, body: String },
    /// Ask the upstream yourself (the flight succeeded, vanished, or took too long).
    AskUpstream,
}

pub struct Flights {
    store: Arc<dyn EdgeStore>,
    owner: String,
    local: Mutex<HashMap<String, watch::Receiver<Option<FlightResult>>>>,
}

/// Removes the local entry when the leader finishes, also if its future is dropped (the
/// client went away): waiters then see the sender gone and ask upstream themselves.
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
    pub fn new(store: Arc<dyn EdgeStore>) -> Self {
        Flights {
            store,
            owner: crate::edge::request_id(),
            local: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `lead` for the first caller of `key`, or waits (at most `wait`) for the caller
    /// that is already running it. `lead` returns its own outcome and the result to share.
    pub async fn run<T, F, Fut>(&self, key: &str, wait: Duration, lead: F) -> FlightAnswer<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = (T, FlightResult)>,
    {
        let joined = {
            let Ok(mut m) = self.local.lock() else {
                return FlightAnswer::AskUpstream;
            };
            match m.get(key) {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    m.insert(key.to_string(), rx);
                    Ok(tx)
                }
            }
        };
        let tx = match joined {
            Err(rx) => return wait_local(rx, wait).await,
            Ok(tx) => tx,
        };
        let _lead = LocalLead {
            flights: self,
            key: key.to_string(),
        };

        // This process leads locally; does another process lead already?
        match self.store.begin_flight(key, &self.owner, wait).await {
            Ok(false) => {
                let answer = self.wait_remote(key, wait).await;
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
        let (own, result) = lead().await;
        if let Err(e) = self
            .store
            .end_flight(key, &self.owner, &result, RESULT_TTL)
            .await
        {
            log::debug!("lookup flight result not shared: {e}");
        }
        let _ = tx.send(Some(result));
        FlightAnswer::Led(own)
    }

    async fn wait_remote<T>(&self, key: &str, wait: Duration) -> FlightAnswer<T> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(5);
        loop {
            match self.store.flight_state(key).await {
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

async fn wait_local<T>(
    mut rx: watch::Receiver<Option<FlightResult>>,
    wait: Duration,
) -> FlightAnswer<T> {
    let outcome = tokio::time::timeout(wait, rx.wait_for(|r| r.is_some())).await;
    match outcome {
        Ok(Ok(r)) => match r.as_ref() {
            Some(FlightResult::Shared { status, body }) => FlightAnswer::Shared {
                status: *status,
                body: body.clone(),
            },
            _ => FlightAnswer::AskUpstream,
        },
        // Timed out, or the leader went away without a result.
        _ => FlightAnswer::AskUpstream,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn not_found() -> FlightResult {
        FlightResult::Shared {
            status: 404,
            body: "nf".into(),
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_lead() {
        let flights = Arc::new(Flights::new(Arc::new(MemoryStore::new())));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (f, c) = (flights.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                f.run("k", Duration::from_secs(2), || async {
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
        let flights = Arc::new(Flights::new(Arc::new(MemoryStore::new())));
        let f2 = flights.clone();
        let leader = tokio::spawn(async move {
            f2.run("k", Duration::from_secs(2), || async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                ((), FlightResult::AskUpstream)
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let follower = flights
            .run("k", Duration::from_secs(2), || async {
                panic!("must not lead") as ((), FlightResult)
            })
            .await;
        assert_eq!(follower, FlightAnswer::AskUpstream);
        assert_eq!(leader.await.unwrap(), FlightAnswer::Led(()));
    }

    #[tokio::test]
    async fn another_process_leading_is_waited_for() {
        let store = Arc::new(MemoryStore::new());
        let other = Flights::new(store.clone());
        let here = Flights::new(store.clone());
        assert!(store
            .begin_flight("k", &other.owner, Duration::from_secs(2))
            .await
            .unwrap());
        let s2 = store.clone();
        let owner = other.owner.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(40)).await;
            s2.end_flight("k", &owner, &not_found(), RESULT_TTL)
                .await
                .unwrap();
        });
        let answer = here
            .run("k", Duration::from_secs(2), || async {
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

    #[tokio::test]
    async fn slow_leader_releases_waiters() {
        let flights = Arc::new(Flights::new(Arc::new(MemoryStore::new())));
        let f2 = flights.clone();
        tokio::spawn(async move {
            f2.run("k", Duration::from_secs(5), || async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                ((), not_found())
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let t0 = std::time::Instant::now();
        let answer = flights
            .run("k", Duration::from_millis(50), || async {
                panic!("must not lead") as ((), FlightResult)
            })
            .await;
        assert_eq!(answer, FlightAnswer::AskUpstream);
        assert!(t0.elapsed() < Duration::from_millis(400));
    }
}
