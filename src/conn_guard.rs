//! Slow clients. Pingora 0.9.1 bounds each *read* of a downstream connection (60 s), never a
//! whole request head, so a byte every 59 s holds a connection forever; the first read of a
//! request happens before any `ProxyHttp` hook runs. So the gateway wraps the accept path: every
//! connection's stream gets a deadline clock ([`Phase`]) that the proxy's hooks move along,
//! and a read still waiting past the deadline fails. The same wrapper holds the connection's
//! place in the per-source cap ([`crate::conn_limit`]), refusing a connection before any HTTP
//! is read (a plain close: there is no request to answer yet).
//!
//! A TLS listener's handshake runs here too ([`crate::tls`]), after the per-source cap and
//! within `limits.request_head_timeout_ms`.
//!
//! Residual: passthrough request bodies are bounded per read only.

use crate::client_addr::TrustedProxies;
use crate::conn_limit::SourceLimiter;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The deadlines, from `limits.*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Deadlines {
    pub head: Duration,
    pub idle: Duration,
    pub min_body_rate: u64,
}

impl Deadlines {
    pub(crate) fn from_config(l: &crate::config::LimitsConfig) -> Self {
        Deadlines {
            head: Duration::from_millis(l.request_head_timeout_ms),
            idle: Duration::from_millis(l.idle_timeout_ms),
            min_body_rate: l.agent_body_min_bytes_per_second.max(1),
        }
    }
}

/// Where a connection is in its request cycle, as far as its deadlines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for the first byte of a request (a fresh connection, or a kept-alive one).
    Idle { since: Instant },
    /// Reading a request head whose first byte arrived at `since`.
    Head { since: Instant },
    /// Reading an agent request's body, from `since`; `received` bytes so far.
    AgentBody { since: Instant, received: u64 },
    /// Nothing for the gateway to bound: the head is in, and the body (if any) either read or
    /// one the gateway does not bound (passthrough), or the answer is being produced.
    Unbounded,
}

/// What a read still waiting at its deadline gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// The end of the stream: Pingora closes an idle connection without a word.
    Quiet,
    /// An error: the request in progress fails, and the connection is closed.
    Cut,
}

impl Phase {
    /// The instant by which a waiting read gives up, and how.
    pub(crate) fn deadline(&self, d: &Deadlines) -> Option<(Instant, Expiry)> {
        match *self {
            Phase::Idle { since } => Some((since + d.idle, Expiry::Quiet)),
            Phase::Head { since } => Some((since + d.head, Expiry::Cut)),
            // A minimum rate with a grace: by any instant past the grace, `rate` bytes per
            // second since the start must have arrived; the next byte is due when the bytes
            // received so far stop covering the time spent.
            Phase::AgentBody { since, received } => {
                let covered = Duration::from_secs_f64(received as f64 / d.min_body_rate as f64);
                Some((since + d.head + covered, Expiry::Cut))
            }
            Phase::Unbounded => None,
        }
    }

    /// The phase after `n` bytes were read at `now`.
    pub(crate) fn after_read(self, n: usize, now: Instant) -> Phase {
        match self {
            Phase::Idle { .. } if n > 0 => Phase::Head { since: now },
            Phase::AgentBody { since, received } => Phase::AgentBody {
                since,
                received: received.saturating_add(n as u64),
            },
            p => p,
        }
    }
}

/// One connection's phase, shared by its stream and the proxy's hooks.
#[derive(Debug)]
pub(crate) struct ConnClock {
    deadlines: Deadlines,
    phase: Mutex<Phase>,
}

impl ConnClock {
    fn new(deadlines: Deadlines) -> Self {
        ConnClock {
            deadlines,
            phase: Mutex::new(Phase::Idle {
                since: Instant::now(),
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Phase) -> T) -> T {
        f(&mut self.phase.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The head is in; an agent request with a body is held to the minimum rate from now.
    pub(crate) fn head_done(&self, agent_body: bool) {
        self.with(|p| {
            *p = if agent_body {
                Phase::AgentBody {
                    since: Instant::now(),
                    received: 0,
                }
            } else {
                Phase::Unbounded
            }
        })
    }

    /// The body is in (or is no longer the gateway's to bound).
    pub(crate) fn body_done(&self) {
        self.with(|p| *p = Phase::Unbounded)
    }

    /// The request is over: the connection waits for the next one.
    pub(crate) fn request_done(&self) {
        self.with(|p| {
            *p = Phase::Idle {
                since: Instant::now(),
            }
        })
    }
}

/// The clock of the connection a request came on (HTTP/1 over the guarded listener).
pub(crate) fn clock_of(session: &pingora::proxy::Session) -> Option<&ConnClock> {
    let stream = session.as_downstream().stream()?;
    (**stream)
        .as_any()
        .downcast_ref::<GuardedStream>()
        .map(|g| g.clock.as_ref())
}

/// A downstream stream whose reads give up at the connection's deadline.
pub(crate) struct GuardedStream {
    inner: Stream,
    clock: Arc<ConnClock>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl std::fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream")
            .field("inner", &self.inner)
            .field("clock", &self.clock)
            .finish()
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                let now = Instant::now();
                this.clock.with(|p| *p = p.after_read(n, now));
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let deadlines = this.clock.deadlines;
                let Some((at, expiry)) = this.clock.with(|p| p.deadline(&deadlines)) else {
                    this.timer = None;
                    return Poll::Pending;
                };
                let at = tokio::time::Instant::from_std(at);
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        this.timer = None;
                        Poll::Ready(match expiry {
                            Expiry::Quiet => Ok(()),
                            Expiry::Cut => Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "client too slow: request deadline passed",
                            )),
                        })
                    }
                }
            }
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// The proxy application behind the guard: every accepted connection is counted against its
/// source and gets a deadline clock before the application reads from it.
pub(crate) struct GuardedApp<A> {
    inner: Arc<A>,
    deadlines: Deadlines,
    per_source: Option<Arc<SourceLimiter>>,
    trusted: TrustedProxies,
    tls: crate::tls::TlsListeners,
}

impl<A> GuardedApp<A> {
    pub(crate) fn new(
        inner: A,
        limits: &crate::config::LimitsConfig,
        trusted: TrustedProxies,
    ) -> Self {
        GuardedApp {
            inner: Arc::new(inner),
            deadlines: Deadlines::from_config(limits),
            per_source: (limits.max_connections_per_source > 0)
                .then(|| SourceLimiter::new(limits.max_connections_per_source)),
            trusted,
            tls: crate::tls::TlsListeners::default(),
        }
    }

    /// The TLS listeners, whose connections are handshaken before anything is read.
    pub(crate) fn with_tls(mut self, tls: crate::tls::TlsListeners) -> Self {
        self.tls = tls;
        self
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for GuardedApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        _pingora_shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        // Held for the connection's life; a proxy in front carries many clients, so it is not
        // capped as one source.
        let _slot = match (&self.per_source, peer) {
            (Some(limiter), Some(ip)) if !self.trusted.contains(ip) => {
                match limiter.try_acquire(ip) {
                    Some(slot) => Some(slot),
                    None => {
                        log::debug!("connection from {ip} refused: per-source cap reached");
                        return None;
                    }
                }
            }
            _ => None,
        };
        let _open = crate::drain::OpenConnection::new();
        let stream = if self.tls.is_empty() {
            stream
        } else {
            let local = stream
                .get_socket_digest()
                .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
            // A connection whose listener cannot be told is refused: never plain text where
            // TLS may be wanted.
            let Some(local) = local else {
                log::warn!("connection without a local address refused: TLS listeners exist");
                return None;
            };
            match self.tls.for_local(local) {
                None => stream,
                Some(acceptor) => {
                    match crate::tls::accept(acceptor, stream, self.deadlines.head).await {
                        Ok(tls) => tls,
                        Err(why) => {
                            let from = peer.map(|ip| ip.to_string()).unwrap_or_default();
                            log::info!("TLS handshake from {from} on {local} failed: {why}");
                            return None;
                        }
                    }
                }
            }
        };
        let guarded = GuardedStream {
            inner: stream,
            clock: Arc::new(ConnClock::new(self.deadlines)),
            timer: None,
        };
        // The gateway's watch turns at the signal, Pingora's (which stops the accept loop)
        // 5 s later on an upgrade: see `crate::drain`.
        let drain = crate::drain::shutdown_watch();
        self.inner.process_new(Box::new(guarded), &drain).await
    }

    /// On an upgrade the proxy's cleanup (which drops every connection waiting for its next
    /// request, under a client that may be sending) is skipped: see `crate::drain`.
    async fn cleanup(&self) {
        if crate::drain::closes_idle_connections(crate::drain::state()) {
            self.inner.cleanup().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadlines() -> Deadlines {
        Deadlines {
            head: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            min_body_rate: 1000,
        }
    }

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn an_idle_connection_ends_quietly_after_the_idle_timeout() {
        let t = t0();
        assert_eq!(
            Phase::Idle { since: t }.deadline(&deadlines()),
            Some((t + Duration::from_secs(60), Expiry::Quiet))
        );
    }

    #[test]
    fn the_first_byte_starts_the_head_deadline() {
        let (t, later) = (t0(), t0() + Duration::from_secs(3));
        let p = Phase::Idle { since: t }.after_read(1, later);
        assert_eq!(p, Phase::Head { since: later });
        assert_eq!(
            p.deadline(&deadlines()),
            Some((later + Duration::from_secs(10), Expiry::Cut))
        );
    }

    #[test]
    fn an_empty_read_does_not_start_a_head() {
        let t = t0();
        assert_eq!(
            Phase::Idle { since: t }.after_read(0, t),
            Phase::Idle { since: t }
        );
    }

    #[test]
    fn more_head_bytes_do_not_move_the_head_deadline() {
        let t = t0();
        let p = Phase::Head { since: t }.after_read(500, t + Duration::from_secs(9));
        assert_eq!(p, Phase::Head { since: t });
    }

    #[test]
    fn an_agent_body_gets_the_grace_plus_what_its_bytes_cover() {
        let t = t0();
        let cases = [
            (0u64, 10_000u64),
            (1000, 11_000),
            (2500, 12_500),
            (20_000, 30_000),
        ];
        for (received, due_ms) in cases {
            assert_eq!(
                Phase::AgentBody { since: t, received }.deadline(&deadlines()),
                Some((t + Duration::from_millis(due_ms), Expiry::Cut)),
                "{received} bytes"
            );
        }
    }

    #[test]
    fn body_bytes_are_counted() {
        let t = t0();
        let p = Phase::AgentBody {
            since: t,
            received: 10,
        }
        .after_read(90, t);
        assert_eq!(
            p,
            Phase::AgentBody {
                since: t,
                received: 100
            }
        );
    }

    #[test]
    fn nothing_bounds_an_unbounded_phase() {
        assert_eq!(Phase::Unbounded.deadline(&deadlines()), None);
        assert_eq!(Phase::Unbounded.after_read(10, t0()), Phase::Unbounded);
    }
}
