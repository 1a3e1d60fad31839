//! A small blocking HTTP/1.1 client over `std::net::TcpStream` for black-box tests.
//!
//! Keep-alive capable ([`Client`] keeps its connection), returns status, the headers in wire
//! order with their case preserved, and the body (de-chunked). Raw bytes can be sent as-is for
//! malformed requests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A parsed HTTP response.
#[derive(Clone, Debug, Default)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// In wire order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked when it came chunked.
    pub body: Vec<u8>,
    /// The response used `Transfer-Encoding: chunked`.
    pub chunked: bool,
}

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Every value of that header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.text()))
    }
    /// The three Ironic version headers (minimum, maximum, negotiated), `None` when absent.
    pub fn versions(&self) -> (Option<&str>, Option<&str>, Option<&str>) {
        (
            self.header("X-OpenStack-Ironic-API-Minimum-Version"),
            self.header("X-OpenStack-Ironic-API-Maximum-Version"),
            self.header("X-OpenStack-Ironic-API-Version"),
        )
    }
    /// The faultstring of an Ironic controller error (`error_message` → inner JSON).
    pub fn faultstring(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        let inner = v.get("error_message")?.as_str()?;
        let inner: serde_json::Value = serde_json::from_str(inner).ok()?;
        inner.get("faultstring")?.as_str().map(str::to_string)
    }
}

/// A request to send through [`Client`].
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send the body with `Transfer-Encoding: chunked` in chunks of this size.
    pub chunk_size: Option<usize>,
    /// Do not add `Host` automatically.
    pub no_host: bool,
}

impl Request {
    pub fn new(method: &str, target: &str) -> Self {
        Request {
            method: method.to_string(),
            target: target.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            chunk_size: None,
            no_host: false,
        }
    }
    pub fn get(target: &str) -> Self {
        Self::new("GET", target)
    }
    pub fn post(target: &str) -> Self {
        Self::new("POST", target)
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    /// `X-OpenStack-Ironic-API-Version: v`.
    pub fn version(self, v: &str) -> Self {
        self.header("X-OpenStack-Ironic-API-Version", v)
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
    /// A JSON body with `Content-Type: application/json`.
    pub fn json_body(self, body: &str) -> Self {
        self.header("Content-Type", "application/json")
            .body(body.as_bytes().to_vec())
    }
    pub fn chunked(mut self, chunk_size: usize) -> Self {
        self.chunk_size = Some(chunk_size.max(1));
        self
    }
    pub fn without_host(mut self) -> Self {
        self.no_host = true;
        self
    }

    /// The bytes put on the wire.
    pub fn to_bytes(&self, host: &str) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        let has = |n: &str| self.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
        if !self.no_host && !has("host") {
            out.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
        }
        for (k, v) in &self.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        match self.chunk_size {
            Some(_) => {
                if !has("transfer-encoding") {
                    out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                }
            }
            None => {
                let needs_len = !self.body.is_empty()
                    || matches!(self.method.as_str(), "POST" | "PUT" | "PATCH");
                if needs_len && !has("content-length") {
                    out.extend_from_slice(
                        format!("Content-Length: {}\r\n", self.body.len()).as_bytes(),
                    );
                }
            }
        }
        out.extend_from_slice(b"\r\n");
        match self.chunk_size {
            Some(n) => {
                for chunk in self.body.chunks(n) {
                    out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
            None => out.extend_from_slice(&self.body),
        }
        out
    }
}

/// A keep-alive connection.
pub struct Client {
    addr: SocketAddr,
    stream: TcpStream,
    buf: Vec<u8>,
    /// The server announced `Connection: close` or closed the connection.
    pub closed: bool,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Self::try_connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    /// A client over a connection the test made itself (e.g. from another source address).
    pub fn from_stream(stream: TcpStream) -> Client {
        let addr = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
        let _ = stream.set_nodelay(true);
        Client {
            addr,
            stream,
            buf: Vec::new(),
            closed: false,
        }
    }

    pub fn try_connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_write_timeout(Some(Duration::from_secs(20)))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            addr,
            stream,
            buf: Vec::new(),
            closed: false,
        })
    }

    pub fn set_read_timeout(&self, d: Duration) {
        self.stream.set_read_timeout(Some(d)).unwrap();
    }

    /// Sends a request and reads its response; panics on I/O errors.
    pub fn send(&mut self, req: &Request) -> Response {
        self.try_send(req)
            .unwrap_or_else(|e| panic!("{} {} via {}: {e}", req.method, req.target, self.addr))
    }

    pub fn try_send(&mut self, req: &Request) -> std::io::Result<Response> {
        let bytes = req.to_bytes(&self.addr.to_string());
        self.stream.write_all(&bytes)?;
        self.stream.flush()?;
        self.read_response(req.method == "HEAD")
    }

    /// Writes raw bytes (no framing added) and reads one response.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<Response> {
        self.stream.write_all(bytes)?;
        self.stream.flush()?;
        self.read_response(false)
    }

    /// Writes raw bytes only.
    pub fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 65536];
        let n = self.stream.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Reads one response from the connection.
    pub fn read_response(&mut self, head_request: bool) -> std::io::Result<Response> {
        loop {
            // Parse the head.
            let parsed = loop {
                let mut hs = [httparse::EMPTY_HEADER; 128];
                let mut r = httparse::Response::new(&mut hs);
                match r.parse(&self.buf) {
                    Ok(httparse::Status::Complete(len)) => {
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
                        break (
                            len,
                            r.code.unwrap_or(0),
                            r.reason.unwrap_or("").to_string(),
                            headers,
                        );
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.fill()? == 0 {
                            self.closed = true;
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                format!(
                                    "connection closed before a full response head ({} bytes)",
                                    self.buf.len()
                                ),
                            ));
                        }
                    }
                    Err(e) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!(
                                "bad response head: {e}: {:?}",
                                String::from_utf8_lossy(&self.buf)
                            ),
                        ))
                    }
                }
            };
            let (head_len, status, reason, headers) = parsed;
            self.buf.drain(..head_len);
            let mut resp = Response {
                status,
                reason,
                headers,
                body: Vec::new(),
                chunked: false,
            };
            if (100..200).contains(&status) {
                continue; // interim response
            }
            if resp
                .header("connection")
                .map(|v| v.eq_ignore_ascii_case("close"))
                .unwrap_or(false)
            {
                self.closed = true;
            }
            let te_chunked = resp
                .header("transfer-encoding")
                .map(|v| v.to_ascii_lowercase().contains("chunked"))
                .unwrap_or(false);
            if head_request || status == 204 || status == 304 {
                return Ok(resp);
            }
            if te_chunked {
                resp.chunked = true;
                resp.body = self.read_chunked()?;
            } else if let Some(len) = resp.header("content-length") {
                let len: usize = len.trim().parse().map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("bad content-length {len}"),
                    )
                })?;
                while self.buf.len() < len {
                    if self.fill()? == 0 {
                        self.closed = true;
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("body cut at {} of {len} bytes", self.buf.len()),
                        ));
                    }
                }
                resp.body = self.buf.drain(..len).collect();
            } else {
                // Read to close.
                while self.fill()? > 0 {}
                self.closed = true;
                resp.body = std::mem::take(&mut self.buf);
            }
            return Ok(resp);
        }
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                return Ok(String::from_utf8_lossy(&line[..pos]).into_owned());
            }
            if self.fill()? == 0 {
                self.closed = true;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "eof in chunked body",
                ));
            }
        }
    }

    fn read_chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            let size_str = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_str, 16).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("bad chunk size line {line:?}"),
                )
            })?;
            if size == 0 {
                // Trailers until an empty line.
                loop {
                    if self.read_line()?.is_empty() {
                        return Ok(body);
                    }
                }
            }
            while self.buf.len() < size + 2 {
                if self.fill()? == 0 {
                    self.closed = true;
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "eof in chunk",
                    ));
                }
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }
}

/// One request on a fresh connection.
pub fn send(addr: SocketAddr, req: &Request) -> Response {
    Client::connect(addr).send(req)
}

/// `GET target` with the given headers on a fresh connection.
pub fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = Request::get(target);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    send(addr, &req)
}
