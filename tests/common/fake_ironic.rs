//! An in-process fake Ironic: an HTTP/1.1 server on a free loopback port (std threads, one per
//! connection, keep-alive) that records every request it receives and answers from programmable
//! routes, falling back to Ironic-like defaults.

use super::ironic;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

/// One request as received (body de-chunked).
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Order of arrival, from 0.
    pub seq: usize,
    pub method: String,
    /// Path and query exactly as on the request line.
    pub target: String,
    /// `target` up to `?`.
    pub path: String,
    /// What follows `?`, if any.
    pub query: Option<String>,
    /// Headers in wire order, case preserved.
    pub headers: Vec<(String, String)>,
    /// The full body (de-chunked when it came chunked).
    pub body: Vec<u8>,
    /// The request body came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    pub peer: SocketAddr,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    /// A string field of a JSON body.
    pub fn json_str(&self, key: &str) -> Option<String> {
        self.json()
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    }
}

/// How a response body is sent.
#[derive(Clone, Debug)]
pub enum Body {
    /// As given; `Content-Length` is added unless a framing header is already set.
    Bytes(Vec<u8>),
    /// `Transfer-Encoding: chunked`, `total` bytes of [`pattern_byte`] in chunks of `chunk`,
    /// sleeping `pause` between chunks.
    Streamed {
        total: usize,
        chunk: usize,
        pause: Duration,
    },
}

/// The byte at offset `i` of a streamed body (a non-repeating-looking pattern).
pub fn pattern_byte(i: usize) -> u8 {
    let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((x >> 29) as u8) ^ (i as u8)
}

/// The whole streamed body of `total` bytes, to compare with what a client received.
pub fn pattern(total: usize) -> Vec<u8> {
    (0..total).map(pattern_byte).collect()
}

/// A programmed answer.
#[derive(Clone, Debug)]
pub struct FakeResponse {
    pub status: u16,
    pub reason: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Body,
    /// Waits this long before sending anything.
    pub delay: Duration,
    /// Closes the connection after the answer.
    pub close: bool,
    /// Closes the connection without answering at all.
    pub drop_connection: bool,
}

impl FakeResponse {
    pub fn new(status: u16) -> Self {
        FakeResponse {
            status,
            reason: None,
            headers: Vec::new(),
            body: Body::Bytes(Vec::new()),
            delay: Duration::ZERO,
            close: false,
            drop_connection: false,
        }
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Body::Bytes(body.into());
        self
    }
    pub fn streamed(mut self, total: usize, chunk: usize) -> Self {
        self.body = Body::Streamed {
            total,
            chunk: chunk.max(1),
            pause: Duration::ZERO,
        };
        self
    }
    pub fn streamed_with_pause(mut self, total: usize, chunk: usize, pause: Duration) -> Self {
        self.body = Body::Streamed {
            total,
            chunk: chunk.max(1),
            pause,
        };
        self
    }
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    pub fn close(mut self) -> Self {
        self.close = true;
        self
    }
    pub fn drop_connection() -> Self {
        let mut r = Self::new(0);
        r.drop_connection = true;
        r
    }
}

/// What a route handler sees besides the request: the fake's public URL and version range.
#[derive(Clone)]
pub struct Ctx {
    pub base_url: String,
    pub max_version: String,
}

impl Ctx {
    pub fn negotiated(&self, req: &Recorded) -> String {
        ironic::negotiated(req, &self.max_version)
    }
    pub fn error(&self, req: &Recorded, status: u16, faultstring: &str) -> FakeResponse {
        ironic::error(req, &self.max_version, status, faultstring)
    }
    pub fn json(&self, req: &Recorded, status: u16, body: &str) -> FakeResponse {
        ironic::json_response(req, &self.max_version, status, body)
    }
    pub fn lookup_ok(&self, req: &Recorded, uuid: &str, token: Option<&str>) -> FakeResponse {
        ironic::lookup_ok(req, &self.max_version, uuid, token, &self.base_url)
    }
    pub fn lookup_not_found(&self, req: &Recorded) -> FakeResponse {
        ironic::error(req, &self.max_version, 404, ironic::NOT_FOUND)
    }
    pub fn heartbeat_accepted(&self, req: &Recorded) -> FakeResponse {
        ironic::heartbeat_accepted(req, &self.max_version)
    }
    pub fn locked(&self, req: &Recorded, uuid: &str) -> FakeResponse {
        ironic::locked(req, &self.max_version, uuid)
    }
    pub fn node_not_found(&self, req: &Recorded, ident: &str) -> FakeResponse {
        ironic::node_not_found(req, &self.max_version, ident)
    }
    pub fn invalid_token(&self, req: &Recorded) -> FakeResponse {
        ironic::error(req, &self.max_version, 400, ironic::INVALID_TOKEN)
    }

    /// Ironic-like default answers.
    pub fn default_response(&self, req: &Recorded) -> FakeResponse {
        let path = req.path.as_str();
        let m = req.method.as_str();
        if path == "/" {
            return match m {
                "GET" | "HEAD" => self.json(
                    req,
                    200,
                    &ironic::root_body(&self.base_url, &self.max_version),
                ),
                _ => ironic::framework_error(405, "Method Not Allowed", Some("GET, HEAD")),
            };
        }
        if path == "/v1" || path == "/v1/" {
            let body = format!(
                "{{\"id\": \"v1\", \"links\": [{{\"href\": \"{b}/v1/\", \"rel\": \"self\"}}], \"media_types\": {{\"base\": \"application/json\", \"type\": \"application/vnd.openstack.ironic.v1+json\"}}, \"version\": {{\"id\": \"v1\", \"links\": [{{\"href\": \"{b}/v1/\", \"rel\": \"self\"}}], \"status\": \"CURRENT\", \"min_version\": \"1.1\", \"version\": \"{max}\"}}}}",
                b = self.base_url,
                max = self.max_version
            );
            return self.json(req, 200, &body);
        }
        if path == "/v1/lookup" || path == "/v1/lookup/" || path == "/lookup" {
            return match m {
                "GET" => self.lookup_not_found(req),
                _ => ironic::framework_error(405, "Method Not Allowed", Some("GET")),
            };
        }
        if path.starts_with("/v1/heartbeat/") {
            return match m {
                "POST" => self.heartbeat_accepted(req),
                _ => ironic::framework_error(405, "Method Not Allowed", Some("POST")),
            };
        }
        if path == "/v1/continue_inspection" && m == "POST" {
            return self.json(
                req,
                200,
                "{\"uuid\": \"00000000-0000-4000-a000-000000000000\"}",
            );
        }
        ironic::framework_error(404, "Not Found", None)
    }
}

type HandlerFn = dyn Fn(&Recorded, &Ctx) -> FakeResponse + Send + Sync;

/// A boxed route handler, for lists of answers ([`FakeIronic::route_seq`]).
pub type Answer = Box<HandlerFn>;

struct Route {
    method: String,
    /// Exact path, or a prefix when it ends with `*`.
    pattern: String,
    handler: Arc<HandlerFn>,
}

impl Route {
    fn matches(&self, req: &Recorded) -> bool {
        if self.method != "*" && !self.method.eq_ignore_ascii_case(&req.method) {
            return false;
        }
        match self.pattern.strip_suffix('*') {
            Some(prefix) => req.path.starts_with(prefix),
            None => req.path == self.pattern,
        }
    }
}

struct Shared {
    addr: SocketAddr,
    max_version: RwLock<String>,
    routes: RwLock<Vec<Route>>,
    log: Mutex<Vec<Recorded>>,
    seq: AtomicUsize,
    stopping: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

/// The fake Ironic. Dropping it stops it.
pub struct FakeIronic {
    shared: Arc<Shared>,
    accept_thread: Option<thread::JoinHandle<()>>,
}

impl FakeIronic {
    /// Starts on a free loopback port with the Ironic 39.0 version range (1.1 to 1.115).
    pub fn start() -> FakeIronic {
        Self::start_on(super::free_port())
    }

    /// Starts on a given port (to come back on the same address after [`FakeIronic::stop`]).
    pub fn start_on(port: u16) -> FakeIronic {
        // Coming back on the same port right after a stop may race the old listener's close.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(e) if std::time::Instant::now() < deadline && port != 0 => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("fake ironic bind {port}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            addr,
            max_version: RwLock::new("1.115".into()),
            routes: RwLock::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            seq: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let s2 = shared.clone();
        let accept_thread = thread::Builder::new()
            .name(format!("fake-ironic-{port}"))
            .spawn(move || {
                for stream in listener.incoming() {
                    if s2.stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    if let Ok(c) = stream.try_clone() {
                        s2.conns.lock().unwrap().push(c);
                    }
                    let s3 = s2.clone();
                    let _ = thread::Builder::new()
                        .name("fake-ironic-conn".into())
                        .spawn(move || serve_connection(s3, stream));
                }
            })
            .unwrap();
        FakeIronic {
            shared,
            accept_thread: Some(accept_thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }
    pub fn port(&self) -> u16 {
        self.shared.addr.port()
    }
    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }
    pub fn ctx(&self) -> Ctx {
        Ctx {
            base_url: self.url(),
            max_version: self.max_version(),
        }
    }
    pub fn max_version(&self) -> String {
        self.shared.max_version.read().unwrap().clone()
    }
    /// Changes the maximum version announced by `GET /` and in every version header.
    pub fn set_max_version(&self, v: &str) {
        *self.shared.max_version.write().unwrap() = v.to_string();
    }

    /// Adds a route (checked before the earlier ones). `method` `*` matches any; a `path` ending
    /// with `*` is a prefix.
    pub fn route<F>(&self, method: &str, path: &str, f: F)
    where
        F: Fn(&Recorded, &Ctx) -> FakeResponse + Send + Sync + 'static,
    {
        self.shared.routes.write().unwrap().insert(
            0,
            Route {
                method: method.to_string(),
                pattern: path.to_string(),
                handler: Arc::new(f),
            },
        );
    }

    /// Answers a route from a list, one per request in order; the last one repeats.
    pub fn route_seq<F>(&self, method: &str, path: &str, answers: Vec<F>)
    where
        F: Fn(&Recorded, &Ctx) -> FakeResponse + Send + Sync + 'static,
    {
        assert!(!answers.is_empty());
        let n = AtomicUsize::new(0);
        self.route(method, path, move |req, ctx| {
            let i = n.fetch_add(1, Ordering::SeqCst).min(answers.len() - 1);
            answers[i](req, ctx)
        });
    }

    /// Removes every programmed route (back to the defaults).
    pub fn clear_routes(&self) {
        self.shared.routes.write().unwrap().clear();
    }

    /// Forgets every recorded request.
    pub fn clear_log(&self) {
        self.shared.log.lock().unwrap().clear();
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.log.lock().unwrap().clone()
    }
    /// Requests whose path (no query) is exactly `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
    /// How many requests had exactly this path (query not counted).
    pub fn count(&self, path: &str) -> usize {
        self.shared
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .count()
    }
    /// How many requests had a path starting with `prefix`.
    pub fn count_prefix(&self, prefix: &str) -> usize {
        self.shared
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .count()
    }
    /// Lookups received (`/v1/lookup`, `/v1/lookup/`, `/lookup`).
    pub fn lookups(&self) -> usize {
        self.count("/v1/lookup") + self.count("/v1/lookup/") + self.count("/lookup")
    }
    /// Heartbeats received (any node).
    pub fn heartbeats(&self) -> usize {
        self.count_prefix("/v1/heartbeat/")
    }
    pub fn total(&self) -> usize {
        self.shared.log.lock().unwrap().len()
    }
    pub fn last(&self) -> Option<Recorded> {
        self.shared.log.lock().unwrap().last().cloned()
    }

    /// Stops listening and closes every open connection (the upstream becomes unreachable).
    pub fn stop(&mut self) {
        if self.shared.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.shared.addr, Duration::from_millis(200));
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for FakeIronic {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_connection(shared: Arc<Shared>, stream: TcpStream) {
    let peer = match stream.peer_addr() {
        Ok(p) => p,
        Err(_) => return,
    };
    let _ = stream.set_nodelay(true);
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::with_capacity(65536, stream);
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let req = match read_request(&mut reader, &mut writer, peer, &shared) {
            Ok(Some(r)) => r,
            _ => return,
        };
        let keep_alive = !req
            .header("connection")
            .map(|v| v.eq_ignore_ascii_case("close"))
            .unwrap_or(false);
        shared.log.lock().unwrap().push(req.clone());
        let ctx = Ctx {
            base_url: format!("http://{}", shared.addr),
            max_version: shared.max_version.read().unwrap().clone(),
        };
        let handler = {
            let routes = shared.routes.read().unwrap();
            routes
                .iter()
                .find(|r| r.matches(&req))
                .map(|r| r.handler.clone())
        };
        let resp = match handler {
            Some(h) => h(&req, &ctx),
            None => ctx.default_response(&req),
        };
        if !resp.delay.is_zero() {
            thread::sleep(resp.delay);
        }
        if resp.drop_connection || shared.stopping.load(Ordering::SeqCst) {
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
        if write_response(&mut writer, &resp, req.method == "HEAD").is_err() {
            return;
        }
        if resp.close || !keep_alive {
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
    }
}

fn read_request(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    peer: SocketAddr,
    shared: &Shared,
) -> std::io::Result<Option<Recorded>> {
    // Head: read lines until the empty one.
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        if head.is_empty() && (line == b"\r\n" || line == b"\n") {
            continue; // stray CRLF between requests
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if head.len() > 1 << 20 {
            return Ok(None);
        }
    }
    let mut hs = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Request::new(&mut hs);
    match r.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => {
            let _ = writer.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return Ok(None);
        }
    }
    let method = r.method.unwrap_or("").to_string();
    let target = r.path.unwrap_or("").to_string();
    let headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    if get("expect")
        .map(|v| v.eq_ignore_ascii_case("100-continue"))
        .unwrap_or(false)
    {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let chunked = get("transfer-encoding")
        .map(|v| v.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false);
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(None);
            }
            let size =
                usize::from_str_radix(line.trim().split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size")
                    })?;
            if size == 0 {
                loop {
                    let mut t = String::new();
                    if reader.read_line(&mut t)? == 0 || t == "\r\n" || t == "\n" {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf)?;
        }
    } else if let Some(len) = get("content-length") {
        let len: usize = len.trim().parse().unwrap_or(0);
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.clone(), None),
    };
    Ok(Some(Recorded {
        seq: shared.seq.fetch_add(1, Ordering::SeqCst),
        method,
        target,
        path,
        query,
        headers,
        body,
        chunked,
        peer,
        at: Instant::now(),
    }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        409 => "Conflict",
        413 => "Request Entity Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

fn write_response(w: &mut TcpStream, resp: &FakeResponse, head_only: bool) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        resp.status,
        resp.reason.as_deref().unwrap_or(reason(resp.status))
    )
    .into_bytes();
    let has = |n: &str| resp.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    for (k, v) in &resp.headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    match &resp.body {
        Body::Bytes(b) => {
            if !has("content-length") && !has("transfer-encoding") {
                out.extend_from_slice(format!("Content-Length: {}\r\n", b.len()).as_bytes());
            }
        }
        Body::Streamed { .. } => {
            if !has("transfer-encoding") {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
            }
        }
    }
    if resp.close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    w.write_all(&out)?;
    if head_only {
        return w.flush();
    }
    match &resp.body {
        Body::Bytes(b) => w.write_all(b)?,
        Body::Streamed {
            total,
            chunk,
            pause,
        } => {
            let mut off = 0;
            while off < *total {
                let n = (*chunk).min(total - off);
                let data: Vec<u8> = (off..off + n).map(pattern_byte).collect();
                w.write_all(format!("{n:x}\r\n").as_bytes())?;
                w.write_all(&data)?;
                w.write_all(b"\r\n")?;
                off += n;
                if !pause.is_zero() {
                    w.flush()?;
                    thread::sleep(*pause);
                }
            }
            w.write_all(b"0\r\n\r\n")?;
        }
    }
    w.flush()
}
