//! The client the agent plugin uses for the requests it forwards itself (lookups, heartbeats,
//! version discovery). It reuses Pingora's connector (pooling, TLS) and the pre-built peer,
//! buffers the (small) answer, and puts a hard deadline on every exchange.

use crate::config::{EdgeConfig, UpstreamTarget};
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::upstreams::peer::HttpPeer;
use std::fmt;
use std::time::Duration;

/// The largest upstream answer the agent paths buffer (lookup answers are a few KiB).
const MAX_RESPONSE_BODY: usize = 4 * 1024 * 1024;

/// Why an upstream exchange produced no answer.
#[derive(Debug)]
pub enum UpstreamError {
    /// Could not connect (refused, unreachable, TLS failure).
    Connect(String),
    /// Connected, but the exchange failed or timed out.
    Exchange(String),
    /// The answer was larger than the agent paths accept.
    TooLarge,
    /// The concurrency cap's queue had no place for it: not sent.
    Busy,
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "cannot connect to upstream: {e}"),
            UpstreamError::Exchange(e) => write!(f, "upstream exchange failed: {e}"),
            UpstreamError::TooLarge => write!(f, "upstream answer too large"),
            UpstreamError::Busy => write!(f, "too many agent requests waiting for the upstream"),
        }
    }
}

impl std::error::Error for UpstreamError {}

/// A buffered upstream answer.
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub header: ResponseHeader,
    pub body: Bytes,
    /// How long the exchange took (for the access log).
    pub elapsed_ms: u64,
}

impl UpstreamResponse {
    pub fn status(&self) -> u16 {
        self.header.status.as_u16()
    }
}

pub struct UpstreamClient {
    connector: Connector,
    peer: HttpPeer,
    /// The same peer with `lookup_read_timeout_ms` as its read timeout.
    lookup_peer: HttpPeer,
    target: UpstreamTarget,
    /// A deadline on the whole exchange, on top of the per-operation timeouts.
    deadline: Duration,
    /// The same for a lookup.
    lookup_deadline: Duration,
}

impl UpstreamClient {
    pub fn new(cfg: &EdgeConfig, target: UpstreamTarget) -> Self {
        let mut options = ConnectorOptions::new(128);
        if !cfg.upstream.ca_file.is_empty() {
            options.ca_file = Some(cfg.upstream.ca_file.clone());
        }
        let u = &cfg.upstream;
        let peer = build_peer(cfg, &target);
        let mut lookup_peer = peer.clone();
        lookup_peer.options.read_timeout = Some(Duration::from_millis(u.lookup_read_timeout_ms));
        let deadline =
            |read_ms| Duration::from_millis(u.connect_timeout_ms + read_ms + u.write_timeout_ms);
        UpstreamClient {
            connector: Connector::new(Some(options)),
            peer,
            lookup_peer,
            deadline: deadline(u.read_timeout_ms),
            lookup_deadline: deadline(u.lookup_read_timeout_ms),
            target,
        }
    }

    pub fn target(&self) -> &UpstreamTarget {
        &self.target
    }

    /// The peer to clone for each proxied request (built once: `HttpPeer::new` would resolve
    /// the address on every call).
    pub fn peer(&self) -> &HttpPeer {
        &self.peer
    }

    /// Sends one request and buffers the answer. `req` carries the path as the client sent
    /// it; the upstream's base path is prefixed here. A reused pooled connection that turns
    /// out to be closed is retried once on a fresh one (nothing reached Ironic then).
    pub async fn send(
        &self,
        req: &RequestHeader,
        body: &[u8],
    ) -> Result<UpstreamResponse, UpstreamError> {
        self.send_on(&self.peer, self.deadline, req, body).await
    }

    /// [`Self::send`] for a lookup: its answer is awaited up to `lookup_read_timeout_ms`.
    pub async fn send_lookup(
        &self,
        req: &RequestHeader,
        body: &[u8],
    ) -> Result<UpstreamResponse, UpstreamError> {
        self.send_on(&self.lookup_peer, self.lookup_deadline, req, body)
            .await
    }

    async fn send_on(
        &self,
        peer: &HttpPeer,
        deadline: Duration,
        req: &RequestHeader,
        body: &[u8],
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut req = req.clone();
        if !self.target.base_path.is_empty() {
            let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let uri = format!("{}{}", self.target.base_path, pq);
            let parsed = uri
                .parse::<http::Uri>()
                .map_err(|e| UpstreamError::Exchange(format!("bad path: {e}")))?;
            req.set_uri(parsed);
        }
        let started = std::time::Instant::now();
        let result =
            match tokio::time::timeout(deadline, self.exchange(peer, &req, body, true)).await {
                Ok(r) => r.map(|mut resp| {
                    resp.elapsed_ms = started.elapsed().as_millis() as u64;
                    resp
                }),
                Err(_) => Err(UpstreamError::Exchange("deadline exceeded".into())),
            };
        // One line when Ironic stops answering, a summary while it does not, one when it is
        // back (an answer of any status is Ironic answering).
        match &result {
            Ok(_) => crate::incident::IRONIC.succeeded(),
            Err(e) => crate::incident::IRONIC.failed(e),
        }
        result
    }

    async fn exchange(
        &self,
        peer: &HttpPeer,
        req: &RequestHeader,
        body: &[u8],
        allow_retry: bool,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let (mut session, reused) = self
            .connector
            .get_http_session(peer)
            .await
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        // Pingora's connector leaves a session's timeouts unset (its proxy sets them from the
        // peer): without these only the exchange's deadline bounded a read.
        session.set_read_timeout(peer.options.read_timeout);
        session.set_write_timeout(peer.options.write_timeout);
        let result = async {
            session.write_request_header(Box::new(req.clone())).await?;
            if !body.is_empty() {
                session
                    .write_request_body(Bytes::copy_from_slice(body), true)
                    .await?;
            }
            session.finish_request_body().await?;
            session.read_response_header().await?;
            Ok::<_, Box<pingora::Error>>(())
        }
        .await;
        if let Err(e) = result {
            if reused && allow_retry {
                log::debug!("pooled upstream connection failed ({e}); retrying on a new one");
                return Box::pin(self.exchange(peer, req, body, false)).await;
            }
            return Err(UpstreamError::Exchange(e.to_string()));
        }
        let header = session
            .response_header()
            .cloned()
            .ok_or_else(|| UpstreamError::Exchange("no response header".into()))?;
        let mut buf = Vec::new();
        loop {
            match session.read_response_body().await {
                Ok(Some(chunk)) => {
                    if buf.len() + chunk.len() > MAX_RESPONSE_BODY {
                        session.shutdown().await;
                        return Err(UpstreamError::TooLarge);
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(UpstreamError::Exchange(e.to_string())),
            }
        }
        self.connector
            .release_http_session(session, peer, Some(Duration::from_secs(60)))
            .await;
        Ok(UpstreamResponse {
            header,
            body: Bytes::from(buf),
            elapsed_ms: 0,
        })
    }
}

fn build_peer(cfg: &EdgeConfig, target: &UpstreamTarget) -> HttpPeer {
    let mut peer = HttpPeer::new(target.addr, target.tls, target.host.clone());
    let o = &mut peer.options;
    o.connection_timeout = Some(Duration::from_millis(cfg.upstream.connect_timeout_ms));
    o.total_connection_timeout = Some(Duration::from_millis(cfg.upstream.connect_timeout_ms * 2));
    o.read_timeout = Some(Duration::from_millis(cfg.upstream.read_timeout_ms));
    o.write_timeout = Some(Duration::from_millis(cfg.upstream.write_timeout_ms));
    o.idle_timeout = Some(Duration::from_secs(60));
    o.verify_cert = cfg.upstream.verify_tls;
    o.verify_hostname = cfg.upstream.verify_tls;
    peer
}
