//! Graceful upgrade and stop without failing a client.
//!
//! Pingora 0.9.1 on SIGQUIT hands the listening sockets to the process started with `-u`,
//! keeps accepting for 5 s (both processes then take connections from the same sockets),
//! and only then broadcasts its shutdown: from that instant the proxy drops every keep-alive
//! connection waiting for its next request (`HttpProxy::http_cleanup` wakes each parked
//! `read_request`), and a connection whose answer was written before it goes the same way
//! right after. A client that sends on such a connection at that moment gets a reset or an
//! empty reply (measured: 3 of 21,494 requests, `tests/gateway_upgrade.rs`). HTTP/1.1 has one
//! clean way to move a client: `Connection: close` on an answer. So, from the signal on:
//!
//! - every answer carries `Connection: close` (a request read after the signal, through the
//!   shutdown watch the gateway hands the proxy, and one in flight, through
//!   [`close_after_answer`] before its header leaves): the client's next request opens a new
//!   connection, which the successor accepts;
//! - on an upgrade, a connection waiting for its next request is *not* closed when Pingora
//!   broadcasts its shutdown: it stays open until its client sends (answered, with
//!   `Connection: close`) or its idle timeout (`limits.idle_timeout_ms`) ends it quietly, as
//!   a single process would. On a stop (SIGTERM) nobody takes over: it is closed at once.
//! - once the listeners are closed and no client connection is left, the process exits
//!   ([`DrainExit`]) instead of sleeping the rest of `grace_period_seconds`.
//!
//! The one race left is HTTP/1.1's own: a connection that reaches its idle timeout at the
//! instant its client sends on it, which a single process has too.

use async_trait::async_trait;
use pingora::server::{
    ShutdownSignal, ShutdownSignalWatch, ShutdownWatch, UnixShutdownSignalWatch,
};
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where the process stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Drain {
    Serving,
    /// SIGQUIT: a successor took (or is taking) the listening sockets.
    Upgrade,
    /// SIGTERM or SIGINT: nobody takes over.
    Stop,
}

static STATE: AtomicU8 = AtomicU8::new(0);
/// Client connections of the agent listeners that are open now.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// How long the listeners must have been closed before the process may exit with no
/// connection open: a connection accepted just before they closed is counted only once its
/// task runs.
const SETTLE: Duration = Duration::from_secs(1);

fn shutdown_channel() -> &'static tokio::sync::watch::Sender<bool> {
    static CHANNEL: OnceLock<tokio::sync::watch::Sender<bool>> = OnceLock::new();
    CHANNEL.get_or_init(|| tokio::sync::watch::channel(false).0)
}

/// The process's drain state.
pub(crate) fn state() -> Drain {
    match STATE.load(Ordering::Acquire) {
        0 => Drain::Serving,
        1 => Drain::Upgrade,
        _ => Drain::Stop,
    }
}

fn begin(d: Drain) {
    let code = match d {
        Drain::Serving => return,
        Drain::Upgrade => 1,
        Drain::Stop => 2,
    };
    STATE.store(code, Ordering::Release);
    shutdown_channel().send_replace(true);
}

/// Turns true at the signal (Pingora's own turns true 5 s later on an upgrade): what the proxy
/// is given, so that a request read after the signal is answered with `Connection: close`.
pub(crate) fn shutdown_watch() -> ShutdownWatch {
    shutdown_channel().subscribe()
}

/// What a signal starts. Pure.
pub(crate) fn drain_for(signal: &ShutdownSignal) -> Drain {
    match signal {
        ShutdownSignal::GracefulUpgrade => Drain::Upgrade,
        _ => Drain::Stop,
    }
}

/// Whether the connections waiting for their next request are closed when Pingora broadcasts
/// its shutdown. Pure.
pub(crate) fn closes_idle_connections(d: Drain) -> bool {
    d != Drain::Upgrade
}

/// Whether the drained process may exit now: its listeners closed `closed_for` ago (`None`:
/// still open), `open` client connections left. Pure.
pub(crate) fn may_exit(closed_for: Option<Duration>, open: usize) -> bool {
    open == 0 && closed_for.is_some_and(|d| d >= SETTLE)
}

/// Whether an upgrade's drain outlasts every idle connection: Pingora keeps accepting 5 s
/// after SIGQUIT, then waits `grace_period_seconds` (unset: 300) before it ends what is left;
/// an idle connection the drain keeps open ends by `limits.idle_timeout_ms` after the signal.
/// Pure.
pub(crate) fn drain_covers_idle(grace_period_seconds: Option<u64>, idle_timeout_ms: u64) -> bool {
    (grace_period_seconds.unwrap_or(300) + 5).saturating_mul(1000) >= idle_timeout_ms
}

/// Once draining, the answer being written is the connection's last (`Connection: close`).
/// Called before a response header leaves.
pub(crate) fn close_after_answer(session: &mut pingora::proxy::Session) {
    if state() != Drain::Serving {
        session.set_keepalive(None);
    }
}

/// Held for a client connection's life.
pub(crate) struct OpenConnection(());

impl OpenConnection {
    pub(crate) fn new() -> Self {
        OPEN.fetch_add(1, Ordering::AcqRel);
        OpenConnection(())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Pingora's Unix signals, noting the drain the moment one arrives.
pub struct SignalWatch;

#[async_trait]
impl ShutdownSignalWatch for SignalWatch {
    async fn recv(&self) -> ShutdownSignal {
        let signal = UnixShutdownSignalWatch.recv().await;
        let d = drain_for(&signal);
        log::info!("{signal:?}: draining ({d:?}); every answer from now on closes its connection");
        begin(d);
        signal
    }
}

/// Exits the process once it is drained (see [`may_exit`]), after `before_exit` (flushing
/// what is buffered).
pub(crate) struct DrainExit {
    pub(crate) before_exit: Box<dyn Fn() + Send + Sync>,
}

#[async_trait]
impl BackgroundService for DrainExit {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Pingora's broadcast: the listeners stop accepting.
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let closed = Instant::now();
        loop {
            let open = OPEN.load(Ordering::Acquire);
            if may_exit(Some(closed.elapsed()), open) {
                log::info!(
                    "drained ({:?}) after {} ms: no client connection left, exiting",
                    state(),
                    closed.elapsed().as_millis()
                );
                (self.before_exit)();
                log::logger().flush();
                std::process::exit(0);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_keeps_idle_connections_a_stop_closes_them() {
        let cases = [
            (ShutdownSignal::GracefulUpgrade, Drain::Upgrade, false),
            (ShutdownSignal::GracefulTerminate, Drain::Stop, true),
            (ShutdownSignal::FastShutdown, Drain::Stop, true),
        ];
        for (signal, drain, closes) in cases {
            let d = drain_for(&signal);
            assert_eq!(d, drain, "{signal:?}");
            assert_eq!(closes_idle_connections(d), closes, "{signal:?}");
        }
        assert!(closes_idle_connections(Drain::Serving));
    }

    #[test]
    fn the_drain_must_outlast_the_idle_timeout() {
        let cases = [
            (Some(60), 60_000, true, "shipped: 5 + 60 s"),
            (Some(55), 60_000, true, "exactly"),
            (
                Some(54),
                60_000,
                false,
                "idle connections cut under their clients",
            ),
            (Some(0), 5_000, true, "the 5 s Pingora keeps accepting"),
            (None, 60_000, true, "Pingora's 300 s default"),
        ];
        for (grace, idle, want, name) in cases {
            assert_eq!(drain_covers_idle(grace, idle), want, "{name}");
        }
    }

    #[test]
    fn the_process_exits_once_its_listeners_are_closed_and_no_connection_is_left() {
        let s = Duration::from_secs;
        let cases = [
            (None, 0, false, "listeners still open"),
            (
                Some(Duration::ZERO),
                0,
                false,
                "just closed: an accepted one may not count yet",
            ),
            (Some(s(1)), 0, true, "closed and settled, nothing open"),
            (Some(s(30)), 1, false, "a connection left"),
        ];
        for (closed_for, open, want, name) in cases {
            assert_eq!(may_exit(closed_for, open), want, "{name}");
        }
    }
}
