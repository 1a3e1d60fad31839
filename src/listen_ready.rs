//! The agents' listening service, ready (for the services that depend on it: the ops
//! listener, so its `GET /status`) only once its listeners accept connections.
//!
//! Pingora binds a service's listeners inside that service's own runtime and calls a plain
//! service ready before it has bound anything. Without this the ops `/status` could answer 200
//! while the agents' port still refused connections: a health check (keepalived, a load
//! balancer) would send agents to a gateway that is not listening yet.

use async_trait::async_trait;
use pingora::server::ListenFds;
use pingora::server::ShutdownWatch;
use pingora::services::{Service as PlainService, ServiceReadyNotifier, ServiceWithDependents};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// How long readiness waits for the listeners before it is given anyway (with a warning):
/// the ops listener must come up even where the probe cannot connect.
const PROBE_GIVE_UP: Duration = Duration::from_secs(10);
const PROBE_EVERY: Duration = Duration::from_millis(20);

pub(crate) struct ReadyWhenListening<S> {
    inner: S,
    /// Where to connect to see the listeners accept (`None`: no listener, ready at once).
    probe: Option<SocketAddr>,
}

impl<S> ReadyWhenListening<S> {
    /// `listeners`: the service's addresses with whether each speaks TLS. All of a service's
    /// listeners are bound before any accepts, so one is probed: a plain one where there is
    /// one (a bare connect-and-close is nothing to it; to a TLS listener it is a failed
    /// handshake).
    pub(crate) fn new(inner: S, listeners: &[(SocketAddr, bool)]) -> Self {
        let probe = listeners
            .iter()
            .find(|(_, tls)| !tls)
            .or(listeners.first())
            .map(|(addr, _)| reachable(*addr));
        ReadyWhenListening { inner, probe }
    }
}

/// The address to connect to for a listener bound to `addr`: a wildcard one is reached on
/// loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// Returns once `addr` accepts a connection, or after `give_up` (false).
async fn accepting(addr: SocketAddr, give_up: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + give_up;
    loop {
        if let Ok(Ok(_)) =
            tokio::time::timeout(PROBE_EVERY * 5, tokio::net::TcpStream::connect(addr)).await
        {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

#[async_trait]
impl<S: PlainService> ServiceWithDependents for ReadyWhenListening<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready_notifier: ServiceReadyNotifier,
    ) {
        match self.probe {
            Some(addr) => {
                tokio::spawn(async move {
                    if !accepting(addr, PROBE_GIVE_UP).await {
                        log::warn!(
                            "the agents' listener did not accept a connection on {addr} within \
                             {PROBE_GIVE_UP:?}: the ops listener starts anyway"
                        );
                    }
                    ready_notifier.notify_ready();
                });
            }
            None => ready_notifier.notify_ready(),
        }
        PlainService::start_service(&mut self.inner, fds, shutdown, listeners_per_fd).await
    }

    fn name(&self) -> &str {
        PlainService::name(&self.inner)
    }

    fn threads(&self) -> Option<usize> {
        PlainService::threads(&self.inner)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        PlainService::listen_addresses(&self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_wildcard_listener_is_probed_on_loopback() {
        assert_eq!(reachable(a("0.0.0.0:6385")), a("127.0.0.1:6385"));
        assert_eq!(reachable(a("[::]:6385")), a("[::1]:6385"));
        assert_eq!(reachable(a("10.1.2.3:6385")), a("10.1.2.3:6385"));
    }

    #[test]
    fn a_plain_listener_is_probed_before_a_tls_one() {
        let r = ReadyWhenListening::new((), &[(a("10.0.0.1:1"), true), (a("10.0.0.1:2"), false)]);
        assert_eq!(r.probe, Some(a("10.0.0.1:2")));
        let r = ReadyWhenListening::new((), &[(a("10.0.0.1:1"), true)]);
        assert_eq!(r.probe, Some(a("10.0.0.1:1")));
        assert_eq!(ReadyWhenListening::new((), &[]).probe, None);
    }

    #[tokio::test]
    async fn readiness_waits_for_the_listener_to_accept() {
        // A port nobody listens on yet.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(!accepting(port, Duration::from_millis(100)).await);
        let bound = tokio::net::TcpListener::bind(port).await.unwrap();
        assert!(accepting(port, Duration::from_secs(5)).await);
        drop(bound);
    }
}
