//! A minimal keep-alive HTTP/1.1 client for loopback servers.
//!
//! [`Target`]: `http://host:port[/base]`, loopback only. [`RequestSpec`]: one request,
//! serialised once by [`build_request`] and sent again and again on a [`Conn`];
//! [`Conn::exchange`] reads one response (framed by `Content-Length`, chunked encoding or the
//! end of the connection, 1xx answers skipped). [`Client`] keeps one connection for
//! sequential requests and drops it when the server closed it (as urllib3's pool does).
//! Errors carry a [`ErrorKind`] for counting and a message.

use serde_json::Value;
use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_HEADERS: usize = 96;
/// A response larger than this is an error (the agent API answers in a few KiB).
pub const MAX_RESPONSE: usize = 16 << 20;

/// A server to send requests to.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub url: String,
    /// `host:port` as written in the URL: the `Host` header.
    pub host_header: String,
    pub addr: SocketAddr,
    /// The URL's path, without a trailing `/`, put before every request path.
    pub base_path: String,
}

/// `http://host:port[/base]` with a loopback host only (`host:port[/base]` alone is accepted
/// too, and its `url` is then written with `http://`).
pub fn parse_target(name: &str, url: &str) -> Result<Target, String> {
    let rest = match url.strip_prefix("http://") {
        Some(rest) => rest,
        None if url.contains("://") => {
            return Err(format!(
                "target {name}: only http:// URLs are supported: {url}"
            ))
        }
        None => url,
    };
    let (authority, base) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("target {name}: bad URL {url}"));
    }
    let with_port = if authority.starts_with('[') {
        if authority.contains("]:") {
            authority.to_string()
        } else {
            format!("{authority}:80")
        }
    } else if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addrs: Vec<SocketAddr> = with_port
        .to_socket_addrs()
        .map_err(|e| format!("target {name}: cannot resolve {authority}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("target {name}: {authority} resolves to nothing"));
    }
    if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(format!(
            "target {name}: refusing a non-loopback target {url} ({})",
            bad.ip()
        ));
    }
    Ok(Target {
        name: name.to_string(),
        url: if url.starts_with("http://") {
            url.to_string()
        } else {
            format!("http://{url}")
        },
        host_header: authority.to_string(),
        addr: addrs[0],
        base_path: base.to_string(),
    })
}

/// `host:port` (loopback only) as a socket address.
pub fn loopback_addr(what: &str, s: &str) -> Result<SocketAddr, String> {
    let rest = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
    let addr = rest
        .to_socket_addrs()
        .map_err(|e| format!("{what}: cannot resolve {rest}: {e}"))?
        .next()
        .ok_or_else(|| format!("{what}: {rest} resolves to nothing"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("{what}: refusing a non-loopback address {addr}"));
    }
    Ok(addr)
}

#[derive(Clone, Debug)]
pub struct RequestSpec {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

impl RequestSpec {
    pub fn get(path: &str) -> RequestSpec {
        RequestSpec::new("GET", path)
    }

    pub fn new(method: &str, path: &str) -> RequestSpec {
        RequestSpec {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// These headers, in this order, after `Host` (see [`build_request`] for the defaults).
    pub fn headers(mut self, headers: &[(&str, &str)]) -> RequestSpec {
        self.headers
            .extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> RequestSpec {
        self.body = Some(body.into());
        self
    }

    /// From a JSON object `{method?, path, headers?: [[k, v]] | {k: v}, body?}`; a body
    /// given as a JSON value (not a string) is sent compactly serialised.
    pub fn from_json(v: &Value, what: &str) -> Result<RequestSpec, String> {
        let str_field = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
        let method = str_field("method").unwrap_or_else(|| "GET".into());
        let path = str_field("path").ok_or_else(|| format!("{what}: missing \"path\""))?;
        if !path.starts_with('/') || path.contains(['\r', '\n', ' ']) {
            return Err(format!("{what}: bad path {path:?}"));
        }
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!("{what}: bad method {method:?}"));
        }
        let mut headers = Vec::new();
        match v.get("headers") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for h in items {
                    let pair = h.as_array().filter(|a| a.len() == 2);
                    let (k, val) = match pair.map(|a| (a[0].as_str(), a[1].as_str())) {
                        Some((Some(k), Some(val))) => (k, val),
                        _ => return Err(format!("{what}: headers must be [[name, value], ...]")),
                    };
                    headers.push((k.to_string(), val.to_string()));
                }
            }
            Some(Value::Object(map)) => {
                for (k, val) in map {
                    let val = val
                        .as_str()
                        .ok_or_else(|| format!("{what}: header {k} must be a string"))?;
                    headers.push((k.clone(), val.to_string()));
                }
            }
            Some(_) => return Err(format!("{what}: bad \"headers\"")),
        }
        for (k, val) in &headers {
            if k.is_empty() || k.contains([':', '\r', '\n', ' ']) || val.contains(['\r', '\n']) {
                return Err(format!("{what}: bad header {k:?}: {val:?}"));
            }
        }
        let body = match v.get("body") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone().into_bytes()),
            Some(other) => Some(other.to_string().into_bytes()),
        };
        Ok(RequestSpec {
            method,
            path,
            headers,
            body,
        })
    }
}

/// The request's bytes: request line, `Host`, `Accept: application/json` and a
/// `User-Agent` unless given, the spec's headers, `Content-Type: application/json` for a body
/// without one, `Content-Length`, `Connection: close` when `close`.
pub fn build_request(t: &Target, r: &RequestSpec, close: bool) -> Vec<u8> {
    let mut out = String::with_capacity(256);
    let has = |name: &str| r.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let _ = write!(
        out,
        "{} {}{} HTTP/1.1\r\nHost: {}\r\n",
        r.method, t.base_path, r.path, t.host_header
    );
    if !has("accept") {
        out.push_str("Accept: application/json\r\n");
    }
    if !has("user-agent") {
        out.push_str("User-Agent: ironic-edge-gateway-load/0.1\r\n");
    }
    for (k, v) in &r.headers {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    if let Some(b) = &r.body {
        if !has("content-type") {
            out.push_str("Content-Type: application/json\r\n");
        }
        let _ = write!(out, "Content-Length: {}\r\n", b.len());
    } else if matches!(r.method.as_str(), "POST" | "PUT" | "PATCH") {
        out.push_str("Content-Length: 0\r\n");
    }
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if let Some(b) = &r.body {
        bytes.extend_from_slice(b);
    }
    bytes
}

/// What went wrong, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    Refused,
    Connect,
    Reset,
    /// Closed by the server (before or within an answer).
    Closed,
    Timeout,
    /// Not HTTP as expected (or too large).
    Protocol,
}

#[derive(Clone, Debug)]
pub struct HttpError {
    pub kind: ErrorKind,
    pub msg: String,
}

impl HttpError {
    fn new(kind: ErrorKind, msg: impl Into<String>) -> HttpError {
        HttpError {
            kind,
            msg: msg.into(),
        }
    }

    fn io(what: &str, e: std::io::Error) -> HttpError {
        use std::io::ErrorKind::*;
        let kind = match e.kind() {
            ConnectionReset | ConnectionAborted | BrokenPipe => ErrorKind::Reset,
            UnexpectedEof => ErrorKind::Closed,
            TimedOut => ErrorKind::Timeout,
            _ => ErrorKind::Protocol,
        };
        HttpError::new(kind, format!("{what}: {}", e.kind()))
    }

    /// The label, and the message where the label alone does not say what happened (a
    /// connect error other than a refusal, a response that is not HTTP as expected).
    pub fn detail(&self) -> String {
        match self.kind {
            ErrorKind::Connect | ErrorKind::Protocol => format!("{}: {}", self.label(), self.msg),
            _ => self.label().to_string(),
        }
    }

    /// A short label, one per [`ErrorKind`]: `conn-refused`, `connect-error`, `conn-reset`,
    /// `conn-closed`, `timeout`, `bad-response` (what an agent sees, as the fleet counts it).
    pub fn label(&self) -> &'static str {
        match self.kind {
            ErrorKind::Refused => "conn-refused",
            ErrorKind::Connect => "connect-error",
            ErrorKind::Reset => "conn-reset",
            ErrorKind::Closed => "conn-closed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Protocol => "bad-response",
        }
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl From<HttpError> for String {
    fn from(e: HttpError) -> String {
        e.msg
    }
}

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    chunk: Box<[u8]>,
}

pub struct Reply {
    pub status: u16,
    /// The server will close the connection (or did: body delimited by EOF).
    pub close: bool,
    /// The body (de-chunked), when asked for.
    pub body: Option<Vec<u8>>,
}

impl Reply {
    /// The body's bytes (empty when not kept).
    pub fn bytes(&self) -> &[u8] {
        self.body.as_deref().unwrap_or_default()
    }
}

/// A new connection (`TCP_NODELAY`).
pub async fn connect(addr: SocketAddr) -> Result<Conn, HttpError> {
    let stream = TcpStream::connect(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            HttpError::new(ErrorKind::Refused, format!("connect: {}", e.kind()))
        } else {
            HttpError::new(ErrorKind::Connect, format!("connect: {}", e.kind()))
        }
    })?;
    stream
        .set_nodelay(true)
        .map_err(|e| HttpError::io("connect", e))?;
    Ok(Conn {
        stream,
        buf: Vec::with_capacity(16 << 10),
        chunk: vec![0u8; 16 << 10].into_boxed_slice(),
    })
}

impl Conn {
    /// Reads more bytes; `Ok(false)` on EOF.
    async fn fill(&mut self) -> Result<bool, HttpError> {
        let n = self
            .stream
            .read(&mut self.chunk)
            .await
            .map_err(|e| HttpError::io("read", e))?;
        if n == 0 {
            return Ok(false);
        }
        if self.buf.len() + n > MAX_RESPONSE {
            return Err(HttpError::new(ErrorKind::Protocol, "response too large"));
        }
        self.buf.extend_from_slice(&self.chunk[..n]);
        Ok(true)
    }

    /// Whether the server closed the idle connection (or sent something unasked).
    pub fn is_stale(&self) -> bool {
        let mut b = [0u8; 1];
        let stale = match self.stream.try_read(&mut b) {
            Ok(_) => true,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        };
        stale || !self.buf.is_empty()
    }

    /// Sends one request and reads its response. `head`: the answer has no body (a HEAD
    /// request); `keep_body`: return the body bytes.
    pub async fn exchange(
        &mut self,
        req: &[u8],
        head: bool,
        keep_body: bool,
    ) -> Result<Reply, HttpError> {
        let proto = |m: String| HttpError::new(ErrorKind::Protocol, m);
        self.stream
            .write_all(req)
            .await
            .map_err(|e| HttpError::io("write", e))?;
        loop {
            // header
            let (hlen, status, clen, chunked, close) = loop {
                if !self.buf.is_empty() {
                    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let mut resp = httparse::Response::new(&mut hs);
                    match resp.parse(&self.buf) {
                        Ok(httparse::Status::Complete(n)) => {
                            let status = resp.code.unwrap_or(0);
                            let mut clen = None;
                            let mut chunked = false;
                            let mut close = resp.version == Some(0);
                            for h in resp.headers.iter() {
                                let v = String::from_utf8_lossy(h.value);
                                let v = v.trim();
                                if h.name.eq_ignore_ascii_case("content-length") {
                                    clen =
                                        Some(v.parse::<usize>().map_err(|_| {
                                            proto(format!("bad content-length {v:?}"))
                                        })?);
                                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                                    chunked = v.to_ascii_lowercase().contains("chunked");
                                } else if h.name.eq_ignore_ascii_case("connection") {
                                    let v = v.to_ascii_lowercase();
                                    if v.contains("close") {
                                        close = true;
                                    } else if v.contains("keep-alive") {
                                        close = false;
                                    }
                                }
                            }
                            break (n, status, clen, chunked, close);
                        }
                        Ok(httparse::Status::Partial) => {}
                        Err(e) => return Err(proto(format!("bad response: {e}"))),
                    }
                }
                if !self.fill().await? {
                    return Err(if self.buf.is_empty() {
                        HttpError::new(ErrorKind::Closed, "closed by peer")
                    } else {
                        HttpError::new(ErrorKind::Closed, "eof in header")
                    });
                }
            };
            if (100..200).contains(&status) {
                self.buf.drain(..hlen);
                continue; // e.g. 100 Continue: the real answer follows
            }
            let mut close = close;
            let end = if head || status == 204 || status == 304 {
                hlen
            } else if chunked {
                loop {
                    if let Some(n) = chunked_end(&self.buf, hlen).map_err(proto)? {
                        break n;
                    }
                    if !self.fill().await? {
                        return Err(HttpError::new(ErrorKind::Closed, "eof in chunked body"));
                    }
                }
            } else if let Some(n) = clen {
                while self.buf.len() < hlen + n {
                    if !self.fill().await? {
                        return Err(HttpError::new(ErrorKind::Closed, "eof in body"));
                    }
                }
                hlen + n
            } else {
                // delimited by the end of the connection
                while self.fill().await? {}
                close = true;
                self.buf.len()
            };
            let body = if keep_body {
                Some(if chunked {
                    dechunk(&self.buf[hlen..end])
                } else {
                    self.buf[hlen..end].to_vec()
                })
            } else {
                None
            };
            self.buf.drain(..end);
            return Ok(Reply {
                status,
                close,
                body,
            });
        }
    }
}

/// The end offset of a complete chunked body starting at `start`, `None` when incomplete.
pub fn chunked_end(buf: &[u8], start: usize) -> Result<Option<usize>, String> {
    let mut pos = start;
    loop {
        match httparse::parse_chunk_size(&buf[pos..]) {
            Ok(httparse::Status::Complete((used, size))) => {
                pos += used;
                if size == 0 {
                    // trailers (usually none) end with an empty line
                    let rest = &buf[pos..];
                    if rest.len() < 2 {
                        return Ok(None);
                    }
                    if rest.starts_with(b"\r\n") {
                        return Ok(Some(pos + 2));
                    }
                    return Ok(rest
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map(|i| pos + i + 4));
                }
                let size = usize::try_from(size).map_err(|_| "chunk too large")?;
                if size > MAX_RESPONSE {
                    return Err("chunk too large".into());
                }
                if buf.len() < pos + size + 2 {
                    return Ok(None);
                }
                pos += size + 2;
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err("bad chunk size".into()),
        }
    }
}

/// The data of a complete chunked body.
pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(httparse::Status::Complete((used, size))) = httparse::parse_chunk_size(b) {
        let size = size as usize;
        if size == 0 || b.len() < used + size {
            break;
        }
        out.extend_from_slice(&b[used..used + size]);
        b = &b[(used + size + 2).min(b.len())..];
    }
    out
}

/// One request on a fresh connection (`Connection: close`): status and body.
pub async fn one_shot(
    t: &Target,
    r: &RequestSpec,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let req = build_request(t, r, true);
    let fut = async {
        let mut c = connect(t.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", t.addr))?;
        let rep = c.exchange(&req, r.method == "HEAD", true).await?;
        Ok::<_, String>((rep.status, rep.body.unwrap_or_default()))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("no answer from {} within {timeout:?}", t.url))?
}

/// One keep-alive connection for sequential requests, re-opened when needed.
pub struct Client {
    pub target: Target,
    conn: Option<Conn>,
}

impl Client {
    pub fn new(target: Target) -> Client {
        Client { target, conn: None }
    }

    /// Sends `r` (on the kept connection unless the server closed it) and returns the
    /// answer with its body; on any error, or an answer that closes, the connection goes.
    pub async fn request(
        &mut self,
        r: &RequestSpec,
        timeout: Duration,
    ) -> Result<Reply, HttpError> {
        if self.conn.as_ref().is_some_and(Conn::is_stale) {
            self.conn = None;
        }
        let req = build_request(&self.target, r, false);
        let addr = self.target.addr;
        let head = r.method == "HEAD";
        let mut conn = self.conn.take();
        let fut = async {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(connect(addr).await?),
            };
            c.exchange(&req, head, true).await
        };
        let out = match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::new(ErrorKind::Timeout, "timeout")),
        };
        if let Ok(rep) = &out {
            if !rep.close {
                self.conn = conn;
            }
        }
        out
    }
}

pub(super) fn self_check() {
    let body = b"4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\nNEXT";
    assert_eq!(chunked_end(body, 0), Ok(Some(body.len() - 4)));
    assert_eq!(chunked_end(&body[..10], 0), Ok(None));
    assert_eq!(dechunk(body), b"abcdef");
    let t = parse_target("t", "http://127.0.0.1:1/base/").expect("loopback");
    assert_eq!(
        (t.host_header.as_str(), t.base_path.as_str()),
        ("127.0.0.1:1", "/base")
    );
    assert!(parse_target("t", "http://192.0.2.1:1").is_err());
    assert!(parse_target("t", "https://127.0.0.1:1").is_err());
    let bare = parse_target("t", "127.0.0.1:2").expect("host:port");
    assert_eq!(
        (bare.url.as_str(), bare.addr.port()),
        ("http://127.0.0.1:2", 2)
    );
    let r = RequestSpec::new("POST", "/hb")
        .headers(&[("User-Agent", "ua"), ("Content-Type", "text/plain")])
        .body("{}");
    let text = String::from_utf8(build_request(&bare, &r, false)).expect("text");
    assert_eq!(
        text,
        "POST /hb HTTP/1.1\r\nHost: 127.0.0.1:2\r\nAccept: application/json\r\n\
         User-Agent: ua\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}"
    );
    let e = HttpError::new(ErrorKind::Protocol, "bad response: x");
    assert_eq!(e.detail(), "bad-response: bad response: x");
    assert_eq!(
        HttpError::new(ErrorKind::Reset, "read: reset").detail(),
        "conn-reset"
    );
    let mut r = RequestSpec::get("/x");
    r.method = "POST".into();
    let bytes = build_request(&t, &r, true);
    let text = String::from_utf8(bytes).expect("text");
    assert!(text.starts_with("POST /base/x HTTP/1.1\r\nHost: 127.0.0.1:1\r\n"));
    assert!(text.contains("Content-Length: 0\r\n") && text.ends_with("Connection: close\r\n\r\n"));
}
