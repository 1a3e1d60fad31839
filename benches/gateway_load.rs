//! gateway_load: a bounded, closed-loop HTTP/1.1 load generator for ironic-edge.
//!
//! `scripts/bench.sh` (`make bench`) starts Redis, the real Ironic and the gateway, writes a
//! scenario file and runs this bench; it can also be run by hand:
//!
//! ```text
//! cargo bench --bench gateway_load -- --config FILE [--duration S] [--warmup S] [--conc N]
//!     [--rounds R] [--timeout-ms MS] [--pause-ms MS] [--out DIR] [--only A,B]
//! ```
//!
//! Environment (overridden by the command line, overriding the file): `BENCH_CONFIG`,
//! `BENCH_DURATION`, `BENCH_WARMUP`, `BENCH_CONC`, `BENCH_ROUNDS`, `BENCH_TIMEOUT_MS`,
//! `BENCH_PAUSE_MS`, `BENCH_OUT`, `BENCH_ONLY`, `BENCH_STRICT=1` (exit 1 when a correctness
//! check warns). With `rounds` > 1 every scenario runs its targets `rounds` times, in
//! alternating order (ABBA), and the rounds are pooled: on a noisy machine that cancels drift.
//! Without a scenario file it prints a note and exits 0 (so `cargo test --all-targets`, which
//! runs bench targets too, stays fast).
//!
//! For every scenario and every target (e.g. `direct` = Ironic, `gateway` = ironic-edge in
//! front of it) it opens `concurrency` keep-alive connections, each sending the scenario's
//! request in a loop for `warmup + duration` seconds (responses framed by Content-Length or
//! chunked encoding, parsed with httparse), and reports, over the measured window, req/s,
//! p50/p90/p99 latency, the status codes and errors, and the ratio of each target to the
//! baseline target measured in the same run. With an ops URL for a target, the gateway's
//! Prometheus counters are read before and after the window: how many requests of the
//! scenario's route were answered locally or forwarded.
//!
//! Only loopback targets are accepted; every phase is bounded in time: a run lasts warm-up +
//! duration, plus at most one request timeout for the requests still in flight at its end
//! (they complete, uncounted).
//!
//! Scenario file (JSON):
//! ```json
//! { "duration_s": 10, "warmup_s": 1, "concurrency": 16, "rounds": 1, "timeout_ms": 10000,
//!   "pause_ms": 1000,
//!   "out_dir": "target/bench", "label": "free text",
//!   "targets": [{"name": "direct", "url": "http://127.0.0.1:6396"},
//!               {"name": "gateway", "url": "http://127.0.0.1:16380", "ops": "http://127.0.0.1:19380"}],
//!   "baseline": "direct",
//!   "scenarios": [{
//!     "name": "lookup 404", "method": "GET", "path": "/v1/lookup?addresses=...",
//!     "headers": [["X-OpenStack-Ironic-API-Version", "1.62"]], "body": null,
//!     "expect_status": 404, "expect_body": "substring", "expect_body_not": "substring",
//!     "expect_json": {"/config/agent_token": "******"}, "expect_json_not": {"/a/b": null},
//!     "route": "lookup", "expect_outcome": {"gateway": "local"},
//!     "prime": [{"target": "gateway", "method": "GET", "path": "...", "expect_status": 200}] }] }
//! ```
//! `targets` (per scenario, optional) restricts a scenario to some targets; `prime` requests are
//! sent once, in order, before the scenario's first run.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_HEADERS: usize = 96;
const SAMPLE_BYTES: usize = 400;
/// A response larger than this is an error (the agent API answers in a few KiB).
const MAX_RESPONSE: usize = 16 << 20;

// ------------------------------------------------------------------------------------------
// configuration

#[derive(Clone, Debug)]
struct Target {
    name: String,
    url: String,
    host_header: String,
    addr: SocketAddr,
    base_path: String,
    ops: Option<Box<Target>>,
}

#[derive(Clone, Debug)]
struct RequestSpec {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

#[derive(Clone, Debug)]
struct Prime {
    target: String,
    req: RequestSpec,
    expect: Expect,
}

/// What an answer must look like: its status, and for an answer with that status, substrings
/// of the body and values at JSON pointers (`"/config/agent_token"`).
#[derive(Clone, Debug, Default)]
struct Expect {
    status: Option<u16>,
    body: Option<String>,
    body_not: Option<String>,
    json: Vec<(String, Value)>,
    json_not: Vec<(String, Value)>,
}

impl Expect {
    fn parse(v: &Value, what: &str) -> Result<Expect, String> {
        let pointers = |key: &str| -> Result<Vec<(String, Value)>, String> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Object(m)) => {
                    Ok(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                }
                Some(_) => Err(format!(
                    "{what}: {key} must be {{\"/json/pointer\": value}}"
                )),
            }
        };
        Ok(Expect {
            status: status_field(v, what)?,
            body: str_field(v, "expect_body"),
            body_not: str_field(v, "expect_body_not"),
            json: pointers("expect_json")?,
            json_not: pointers("expect_json_not")?,
        })
    }

    /// Problems with one answer (empty: as expected).
    fn check(&self, status: u16, body: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let text = String::from_utf8_lossy(body);
        let short: String = text.chars().take(300).collect();
        if let Some(want) = self.status {
            if status != want {
                out.push(format!("answer {status}, expected {want}: {short}"));
                return out;
            }
        }
        if let Some(sub) = &self.body {
            if !text.contains(sub.as_str()) {
                out.push(format!("body lacks {sub:?}: {short}"));
            }
        }
        if let Some(sub) = &self.body_not {
            if text.contains(sub.as_str()) {
                out.push(format!("body contains {sub:?}: {short}"));
            }
        }
        if !self.json.is_empty() || !self.json_not.is_empty() {
            match serde_json::from_slice::<Value>(body) {
                Err(e) => out.push(format!("body is not JSON ({e}): {short}")),
                Ok(doc) => {
                    for (ptr, want) in &self.json {
                        let got = doc.pointer(ptr);
                        if got != Some(want) {
                            out.push(format!("{ptr} is {got:?}, expected {want}"));
                        }
                    }
                    for (ptr, bad) in &self.json_not {
                        let got = doc.pointer(ptr);
                        if got == Some(bad) || got.is_none() {
                            out.push(format!(
                                "{ptr} is {got:?}, expected a value other than {bad}"
                            ));
                        }
                    }
                }
            }
        }
        out
    }
}

#[derive(Clone, Debug)]
struct Scenario {
    name: String,
    req: RequestSpec,
    expect: Expect,
    route: Option<String>,
    expect_outcome: BTreeMap<String, String>,
    targets: Option<Vec<String>>,
    prime: Vec<Prime>,
}

#[derive(Clone, Debug)]
struct Config {
    duration: Duration,
    warmup: Duration,
    concurrency: usize,
    rounds: usize,
    timeout: Duration,
    pause: Duration,
    out_dir: PathBuf,
    label: String,
    targets: Vec<Target>,
    baseline: String,
    scenarios: Vec<Scenario>,
    strict: bool,
    config_file: PathBuf,
}

/// `http://host:port[/base]` with a loopback host only.
fn parse_target(name: &str, url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("target {name}: only http:// URLs are supported: {url}"))?;
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
        url: url.to_string(),
        host_header: authority.to_string(),
        addr: addrs[0],
        base_path: base.to_string(),
        ops: None,
    })
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn parse_request(v: &Value, what: &str) -> Result<RequestSpec, String> {
    let method = str_field(v, "method").unwrap_or_else(|| "GET".into());
    let path = str_field(v, "path").ok_or_else(|| format!("{what}: missing \"path\""))?;
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
        // a JSON body given as a JSON value is sent compactly serialised
        Some(other) => Some(other.to_string().into_bytes()),
    };
    Ok(RequestSpec {
        method,
        path,
        headers,
        body,
    })
}

fn status_field(v: &Value, what: &str) -> Result<Option<u16>, String> {
    match v.get("expect_status") {
        None | Some(Value::Null) => Ok(None),
        Some(s) => s
            .as_u64()
            .filter(|s| (100..600).contains(s))
            .map(|s| Some(s as u16))
            .ok_or_else(|| format!("{what}: bad expect_status")),
    }
}

struct Overrides {
    config: Option<String>,
    duration: Option<String>,
    warmup: Option<String>,
    conc: Option<String>,
    rounds: Option<String>,
    timeout_ms: Option<String>,
    pause_ms: Option<String>,
    out: Option<String>,
    only: Option<String>,
}

fn parse_args() -> Result<Overrides, String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut o = Overrides {
        config: env("BENCH_CONFIG"),
        duration: env("BENCH_DURATION"),
        warmup: env("BENCH_WARMUP"),
        conc: env("BENCH_CONC"),
        rounds: env("BENCH_ROUNDS"),
        timeout_ms: env("BENCH_TIMEOUT_MS"),
        pause_ms: env("BENCH_PAUSE_MS"),
        out: env("BENCH_OUT"),
        only: env("BENCH_ONLY"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let slot = match key.as_str() {
            "--config" | "-c" => &mut o.config,
            "--duration" => &mut o.duration,
            "--warmup" => &mut o.warmup,
            "--conc" | "--concurrency" => &mut o.conc,
            "--rounds" => &mut o.rounds,
            "--timeout-ms" => &mut o.timeout_ms,
            "--pause-ms" => &mut o.pause_ms,
            "--out" => &mut o.out,
            "--only" => &mut o.only,
            // what cargo passes to bench and test binaries
            "--bench" | "--test" | "--nocapture" | "--quiet" | "-q" => continue,
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => {
                eprintln!("gateway_load: ignoring unknown argument {other:?}");
                continue;
            }
        };
        let val = match inline {
            Some(v) => v,
            None => args.next().ok_or_else(|| format!("{key} needs a value"))?,
        };
        *slot = Some(val);
    }
    Ok(o)
}

fn usage() -> &'static str {
    "usage: cargo bench --bench gateway_load -- --config FILE [--duration S] [--warmup S] \
     [--conc N] [--rounds R] [--timeout-ms MS] [--pause-ms MS] [--out DIR] [--only NAME,NAME]\n\
     (env: BENCH_CONFIG BENCH_DURATION BENCH_WARMUP BENCH_CONC BENCH_ROUNDS BENCH_TIMEOUT_MS BENCH_PAUSE_MS \
     BENCH_OUT BENCH_ONLY BENCH_STRICT); scripts/bench.sh (make bench) writes the file and \
     starts everything"
}

fn secs(what: &str, s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{what}: not a number: {s}"))?;
    if !(0.0..=3600.0).contains(&v) {
        return Err(format!("{what}: must be within 0..3600 s: {s}"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn millis(what: &str, s: &str, max: u64) -> Result<Duration, String> {
    let v: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{what}: not an integer: {s}"))?;
    if v > max {
        return Err(format!("{what}: at most {max} ms: {s}"));
    }
    Ok(Duration::from_millis(v))
}

fn num_str(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(|x| match x {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    })
}

fn load_config(o: Overrides, file: &str) -> Result<Config, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
    let pick = |cli: &Option<String>, key: &str, default: &str| -> String {
        cli.clone()
            .or_else(|| num_str(&doc, key))
            .unwrap_or_else(|| default.to_string())
    };
    let duration = secs("duration", &pick(&o.duration, "duration_s", "10"))?;
    if duration.is_zero() {
        return Err("duration must be > 0".into());
    }
    let warmup = secs("warmup", &pick(&o.warmup, "warmup_s", "1"))?;
    let conc_s = pick(&o.conc, "concurrency", "16");
    let concurrency: usize = conc_s
        .trim()
        .parse()
        .ok()
        .filter(|c| (1..=1024).contains(c))
        .ok_or_else(|| format!("concurrency must be 1..1024: {conc_s}"))?;
    let rounds_s = pick(&o.rounds, "rounds", "1");
    let rounds: usize = rounds_s
        .trim()
        .parse()
        .ok()
        .filter(|c| (1..=100).contains(c))
        .ok_or_else(|| format!("rounds must be 1..100: {rounds_s}"))?;
    let timeout = millis(
        "timeout_ms",
        &pick(&o.timeout_ms, "timeout_ms", "10000"),
        120_000,
    )?;
    if timeout.is_zero() {
        return Err("timeout_ms must be > 0".into());
    }
    let pause = millis("pause_ms", &pick(&o.pause_ms, "pause_ms", "1000"), 60_000)?;
    let out_dir = PathBuf::from(
        o.out
            .clone()
            .or_else(|| str_field(&doc, "out_dir"))
            .unwrap_or_else(|| "target/bench".into()),
    );
    let label = str_field(&doc, "label").unwrap_or_default();

    let mut targets = Vec::new();
    for t in doc
        .get("targets")
        .and_then(Value::as_array)
        .ok_or("missing \"targets\": [{name, url, ops?}]")?
    {
        let name = str_field(t, "name").ok_or("a target without \"name\"")?;
        let url = str_field(t, "url").ok_or_else(|| format!("target {name}: no \"url\""))?;
        let mut target = parse_target(&name, &url)?;
        if let Some(ops) = str_field(t, "ops").filter(|s| !s.is_empty()) {
            target.ops = Some(Box::new(parse_target(&format!("{name} ops"), &ops)?));
        }
        if targets.iter().any(|x: &Target| x.name == name) {
            return Err(format!("target {name} listed twice"));
        }
        targets.push(target);
    }
    if targets.is_empty() {
        return Err("no targets".into());
    }
    let baseline = str_field(&doc, "baseline").unwrap_or_else(|| targets[0].name.clone());
    if !targets.iter().any(|t| t.name == baseline) {
        return Err(format!("baseline {baseline} is not a target"));
    }
    let known = |n: &str| targets.iter().any(|t| t.name == n);

    let only: Option<Vec<String>> = o.only.as_ref().map(|s| {
        s.split(',')
            .map(|x| x.trim().to_lowercase())
            .filter(|x| !x.is_empty())
            .collect()
    });
    let mut scenarios = Vec::new();
    for (i, s) in doc
        .get("scenarios")
        .and_then(Value::as_array)
        .ok_or("missing \"scenarios\"")?
        .iter()
        .enumerate()
    {
        let name = str_field(s, "name").unwrap_or_else(|| format!("scenario {i}"));
        let what = format!("scenario {name:?}");
        let req = parse_request(s, &what)?;
        let mut prime = Vec::new();
        if let Some(list) = s.get("prime").and_then(Value::as_array) {
            for p in list {
                let target = str_field(p, "target")
                    .ok_or_else(|| format!("{what}: a prime request without \"target\""))?;
                if !known(&target) {
                    return Err(format!("{what}: prime target {target} is not a target"));
                }
                prime.push(Prime {
                    target,
                    req: parse_request(p, &format!("{what} prime"))?,
                    expect: Expect::parse(p, &format!("{what} prime"))?,
                });
            }
        }
        let mut expect_outcome = BTreeMap::new();
        if let Some(map) = s.get("expect_outcome").and_then(Value::as_object) {
            for (k, v) in map {
                let v = v.as_str().unwrap_or_default().to_string();
                if !matches!(v.as_str(), "local" | "forwarded") {
                    return Err(format!("{what}: expect_outcome must be local|forwarded"));
                }
                expect_outcome.insert(k.clone(), v);
            }
        }
        let scen_targets = match s.get("targets").and_then(Value::as_array) {
            Some(list) => {
                let names: Vec<String> = list
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect();
                if let Some(bad) = names.iter().find(|n| !known(n)) {
                    return Err(format!("{what}: unknown target {bad}"));
                }
                Some(names)
            }
            None => None,
        };
        let sc = Scenario {
            name,
            req,
            expect: Expect::parse(s, &what)?,
            route: str_field(s, "route"),
            expect_outcome,
            targets: scen_targets,
            prime,
        };
        if let Some(only) = &only {
            let lname = sc.name.to_lowercase();
            if !only.iter().any(|o| lname.contains(o.as_str())) {
                continue;
            }
        }
        scenarios.push(sc);
    }
    if scenarios.is_empty() {
        return Err("no scenario selected".into());
    }
    Ok(Config {
        duration,
        warmup,
        concurrency,
        rounds,
        timeout,
        pause,
        out_dir,
        label,
        targets,
        baseline,
        scenarios,
        strict: std::env::var("BENCH_STRICT").is_ok_and(|v| v == "1" || v == "true"),
        config_file: PathBuf::from(file),
    })
}

// ------------------------------------------------------------------------------------------
// a minimal keep-alive HTTP/1.1 client

fn build_request(t: &Target, r: &RequestSpec, close: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + r.body.as_ref().map_or(0, Vec::len));
    let has = |name: &str| r.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let _ = write!(
        WriteVec(&mut out),
        "{} {}{} HTTP/1.1\r\nHost: {}\r\n",
        r.method,
        t.base_path,
        r.path,
        t.host_header
    );
    if !has("accept") {
        out.extend_from_slice(b"Accept: application/json\r\n");
    }
    if !has("user-agent") {
        out.extend_from_slice(b"User-Agent: ironic-edge-gateway-load/0.1\r\n");
    }
    for (k, v) in &r.headers {
        let _ = write!(WriteVec(&mut out), "{k}: {v}\r\n");
    }
    if let Some(b) = &r.body {
        if !has("content-type") {
            out.extend_from_slice(b"Content-Type: application/json\r\n");
        }
        let _ = write!(WriteVec(&mut out), "Content-Length: {}\r\n", b.len());
    } else if matches!(r.method.as_str(), "POST" | "PUT" | "PATCH") {
        out.extend_from_slice(b"Content-Length: 0\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if let Some(b) = &r.body {
        out.extend_from_slice(b);
    }
    out
}

struct WriteVec<'a>(&'a mut Vec<u8>);
impl std::fmt::Write for WriteVec<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    chunk: Box<[u8]>,
}

struct Reply {
    status: u16,
    /// The server will close the connection (or did: body delimited by EOF).
    close: bool,
    body: Option<Vec<u8>>,
}

async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(Conn {
        stream,
        buf: Vec::with_capacity(16 << 10),
        chunk: vec![0u8; 16 << 10].into_boxed_slice(),
    })
}

impl Conn {
    /// Reads more bytes; `Ok(false)` on EOF.
    async fn fill(&mut self) -> Result<bool, String> {
        let n = self
            .stream
            .read(&mut self.chunk)
            .await
            .map_err(|e| format!("read: {}", e.kind()))?;
        if n == 0 {
            return Ok(false);
        }
        if self.buf.len() + n > MAX_RESPONSE {
            return Err("response too large".into());
        }
        self.buf.extend_from_slice(&self.chunk[..n]);
        Ok(true)
    }

    /// Sends one request and reads its response. `keep_body`: return the body bytes.
    async fn exchange(&mut self, req: &[u8], head: bool, keep_body: bool) -> Result<Reply, String> {
        self.stream
            .write_all(req)
            .await
            .map_err(|e| format!("write: {}", e.kind()))?;
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
                                    clen = Some(
                                        v.parse::<usize>()
                                            .map_err(|_| format!("bad content-length {v:?}"))?,
                                    );
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
                        Err(e) => return Err(format!("bad response: {e}")),
                    }
                }
                if !self.fill().await? {
                    return Err(if self.buf.is_empty() {
                        "closed by peer".into()
                    } else {
                        "eof in header".into()
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
                    if let Some(n) = chunked_end(&self.buf, hlen)? {
                        break n;
                    }
                    if !self.fill().await? {
                        return Err("eof in chunked body".into());
                    }
                }
            } else if let Some(n) = clen {
                while self.buf.len() < hlen + n {
                    if !self.fill().await? {
                        return Err("eof in body".into());
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
fn chunked_end(buf: &[u8], start: usize) -> Result<Option<usize>, String> {
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

fn dechunk(mut b: &[u8]) -> Vec<u8> {
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

/// One request on a fresh connection (prime requests, metrics scrapes).
async fn one_shot(
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

// ------------------------------------------------------------------------------------------
// load

#[derive(Default)]
struct Stats {
    lat_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    connects: u64,
    samples: BTreeMap<u16, Vec<u8>>,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.lat_us.extend(o.lat_us);
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.connects += o.connects;
        for (k, v) in o.samples {
            self.samples.entry(k).or_insert(v);
        }
    }
}

async fn worker(
    addr: SocketAddr,
    req: std::sync::Arc<Vec<u8>>,
    head: bool,
    measure_from: tokio::time::Instant,
    end: tokio::time::Instant,
    timeout: Duration,
) -> Stats {
    let mut st = Stats::default();
    let mut conn: Option<Conn> = None;
    let err = |st: &mut Stats, kind: String, now: tokio::time::Instant| {
        if now >= measure_from && now <= end {
            *st.errors.entry(kind).or_default() += 1;
        }
    };
    loop {
        let now = tokio::time::Instant::now();
        if now >= end {
            break;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => {
                let deadline = end.min(now + timeout);
                match tokio::time::timeout_at(deadline, connect(addr)).await {
                    Ok(Ok(c)) => {
                        st.connects += 1;
                        conn.insert(c)
                    }
                    Ok(Err(e)) => {
                        err(&mut st, format!("connect: {}", e.kind()), now);
                        // a refused connection fails at once: do not spin
                        tokio::time::sleep_until(end.min(now + Duration::from_millis(20))).await;
                        continue;
                    }
                    Err(_) => {
                        if tokio::time::Instant::now() < end {
                            err(&mut st, "connect timeout".into(), now);
                        }
                        continue;
                    }
                }
            }
        };
        // a request still in flight at `end` may finish (within its timeout) but is not
        // counted: abandoning it would leave the server working for nobody
        let t0 = tokio::time::Instant::now();
        match tokio::time::timeout_at(t0 + timeout, c.exchange(&req, head, false)).await {
            Ok(Ok(rep)) => {
                let done = tokio::time::Instant::now();
                if done >= measure_from && done <= end {
                    let us = (done - t0).as_micros().min(u32::MAX as u128) as u32;
                    st.lat_us.push(us);
                    *st.statuses.entry(rep.status).or_default() += 1;
                }
                if rep.close {
                    conn = None;
                }
            }
            Ok(Err(e)) => {
                err(&mut st, e, tokio::time::Instant::now());
                conn = None;
            }
            Err(_) => {
                err(&mut st, "timeout".into(), tokio::time::Instant::now());
                conn = None; // abandoned mid-exchange: the connection is unusable
            }
        }
    }
    st
}

type Counters = BTreeMap<String, f64>;

async fn scrape(ops: &Target, timeout: Duration) -> Result<Counters, String> {
    let req = RequestSpec {
        method: "GET".into(),
        path: "/metrics".into(),
        headers: vec![("Accept".into(), "text/plain".into())],
        body: None,
    };
    let (status, body) = one_shot(ops, &req, timeout).await?;
    if status != 200 {
        return Err(format!("GET {}/metrics: {status}", ops.url));
    }
    let mut out = Counters::new();
    for line in String::from_utf8_lossy(&body).lines() {
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.rsplit_once(' ') {
            if let Ok(v) = v.trim().parse::<f64>() {
                out.insert(k.trim().to_string(), v);
            }
        }
    }
    Ok(out)
}

fn delta(before: &Counters, after: &Counters) -> Counters {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d != 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

struct RunResult {
    scenario: String,
    target: String,
    duration_s: f64,
    requests: u64,
    rps: f64,
    p50_us: Option<u32>,
    p90_us: Option<u32>,
    p99_us: Option<u32>,
    max_us: Option<u32>,
    mean_us: Option<f64>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    connects: u64,
    edge: Option<Counters>,
    edge_summary: Option<String>,
    sample: Option<String>,
    round_rps: Vec<f64>,
}

fn pct(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// What the rounds of one scenario on one target gathered.
#[derive(Default)]
struct Acc {
    stats: Stats,
    edge: Option<Counters>,
    sample: Option<(u16, Vec<u8>)>,
    round_rps: Vec<f64>,
    measured: Duration,
}

/// One round: `concurrency` connections for warm-up + duration on one target.
async fn measure(
    cfg: &Config,
    sc: &Scenario,
    t: &Target,
    acc: &mut Acc,
    warnings: &mut Vec<String>,
) {
    let req = std::sync::Arc::new(build_request(t, &sc.req, false));
    let head = sc.req.method == "HEAD";
    // one untimed request: a sample body for the report and the correctness checks
    let sample = match one_shot(t, &sc.req, cfg.timeout).await {
        Ok((status, body)) => Some((status, body)),
        Err(e) => {
            warnings.push(format!(
                "{} / {}: sample request failed: {e}",
                sc.name, t.name
            ));
            None
        }
    };
    let start = tokio::time::Instant::now();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let mut handles = Vec::with_capacity(cfg.concurrency);
    for _ in 0..cfg.concurrency {
        handles.push(tokio::spawn(worker(
            t.addr,
            req.clone(),
            head,
            measure_from,
            end,
            cfg.timeout,
        )));
    }
    let mut before = None;
    if let Some(ops) = &t.ops {
        tokio::time::sleep_until(measure_from).await;
        match scrape(ops, Duration::from_secs(2)).await {
            Ok(c) => before = Some(c),
            Err(e) => warnings.push(format!("{} / {}: metrics: {e}", sc.name, t.name)),
        }
    }
    let mut st = Stats::default();
    for h in handles {
        match h.await {
            Ok(s) => st.merge(s),
            Err(e) => warnings.push(format!("{} / {}: worker failed: {e}", sc.name, t.name)),
        }
    }
    if let (Some(ops), Some(before)) = (&t.ops, before) {
        match scrape(ops, Duration::from_secs(2)).await {
            Ok(after) => {
                let d = delta(&before, &after);
                let sum = acc.edge.get_or_insert_with(Counters::new);
                for (k, v) in d {
                    *sum.entry(k).or_default() += v;
                }
            }
            Err(e) => warnings.push(format!("{} / {}: metrics: {e}", sc.name, t.name)),
        }
    }
    acc.round_rps
        .push(st.lat_us.len() as f64 / cfg.duration.as_secs_f64());
    acc.measured += cfg.duration;
    acc.stats.merge(st);
    if acc.sample.is_none() {
        acc.sample = sample;
    }
}

/// Percentiles, rates and the correctness checks over all rounds.
fn summarize(sc: &Scenario, t: &Target, acc: Acc, warnings: &mut Vec<String>) -> RunResult {
    let Acc {
        stats: mut st,
        edge,
        sample,
        round_rps,
        measured,
    } = acc;
    st.lat_us.sort_unstable();
    let n = st.lat_us.len() as u64;
    let dur = measured.as_secs_f64();
    let mean = (n > 0).then(|| st.lat_us.iter().map(|&x| x as f64).sum::<f64>() / n as f64);
    let edge_summary = edge.as_ref().map(|d| {
        let route = sc.route.as_deref().unwrap_or("");
        let get = |k: String| d.get(&k).copied().unwrap_or(0.0) as u64;
        if route.is_empty() {
            let local: u64 = d
                .iter()
                .filter(|(k, _)| {
                    k.starts_with("ironic_edge_requests_total") && k.contains("outcome=\"local\"")
                })
                .map(|(_, v)| *v as u64)
                .sum();
            let up: u64 = d
                .iter()
                .filter(|(k, _)| k.starts_with("ironic_edge_upstream_requests_total"))
                .map(|(_, v)| *v as u64)
                .sum();
            format!("local {local}, upstream {up}")
        } else {
            format!(
                "local {}, fwd {}, upstream {}",
                get(format!(
                    "ironic_edge_requests_total{{route=\"{route}\",outcome=\"local\"}}"
                )),
                get(format!(
                    "ironic_edge_requests_total{{route=\"{route}\",outcome=\"forwarded\"}}"
                )),
                get(format!(
                    "ironic_edge_upstream_requests_total{{route=\"{route}\"}}"
                )),
            )
        }
    });
    let sample_text = sample.as_ref().map(|(s, b)| {
        let text = String::from_utf8_lossy(&b[..b.len().min(SAMPLE_BYTES)]).into_owned();
        format!("{s} {text}")
    });

    // light correctness checks
    let tag = format!("{} / {}", sc.name, t.name);
    if n == 0 {
        warnings.push(format!("{tag}: no response in the measured window"));
    }
    if let Some(want) = sc.expect.status {
        let (top, top_n) = st
            .statuses
            .iter()
            .max_by_key(|(_, c)| **c)
            .map(|(s, c)| (*s, *c))
            .unwrap_or((0, 0));
        if n > 0 && top != want {
            warnings.push(format!(
                "{tag}: expected mostly {want}, got mostly {top} ({top_n} of {n}): {:?}",
                st.statuses
            ));
        } else if n > 0 {
            let share = top_n as f64 / n as f64;
            if share < 0.99 {
                warnings.push(format!(
                    "{tag}: only {:.1}% of the answers are {want}: {:?}",
                    share * 100.0,
                    st.statuses
                ));
            }
        }
    }
    if let Some((s, body)) = &sample {
        for problem in sc.expect.check(*s, body) {
            warnings.push(format!("{tag}: sample {problem}"));
        }
    }
    let err_total: u64 = st.errors.values().sum();
    if err_total > 0 {
        warnings.push(format!("{tag}: {err_total} errors: {:?}", st.errors));
    }
    if let (Some(want), Some(d), Some(route)) =
        (sc.expect_outcome.get(&t.name), &edge, sc.route.as_deref())
    {
        let get = |o: &str| {
            d.get(&format!(
                "ironic_edge_requests_total{{route=\"{route}\",outcome=\"{o}\"}}"
            ))
            .copied()
            .unwrap_or(0.0)
        };
        let (local, fwd) = (get("local"), get("forwarded"));
        let total = local + fwd;
        let share = if total > 0.0 {
            if want == "local" {
                local / total
            } else {
                fwd / total
            }
        } else {
            0.0
        };
        if share < 0.99 {
            warnings.push(format!(
                "{tag}: expected the gateway to answer {want}, metrics say local {local} / forwarded {fwd}"
            ));
        }
    }
    if let Some(d) = &edge {
        for (k, v) in d {
            if (k.starts_with("ironic_edge_store_errors_total")
                || k.starts_with("ironic_edge_upstream_errors_total"))
                && *v > 0.0
            {
                warnings.push(format!("{tag}: {k} +{v}"));
            }
        }
    }
    RunResult {
        scenario: sc.name.clone(),
        target: t.name.clone(),
        duration_s: dur,
        requests: n,
        rps: if dur > 0.0 { n as f64 / dur } else { 0.0 },
        p50_us: pct(&st.lat_us, 50.0),
        p90_us: pct(&st.lat_us, 90.0),
        p99_us: pct(&st.lat_us, 99.0),
        max_us: st.lat_us.last().copied(),
        mean_us: mean,
        statuses: st.statuses,
        errors: st.errors,
        connects: st.connects,
        edge,
        edge_summary,
        sample: sample_text,
        round_rps,
    }
}

async fn prime(cfg: &Config, sc: &Scenario, warnings: &mut Vec<String>) {
    for p in &sc.prime {
        let Some(t) = cfg.targets.iter().find(|t| t.name == p.target) else {
            continue;
        };
        let tag = format!(
            "{} / prime {} {} on {}",
            sc.name, p.req.method, p.req.path, t.name
        );
        match one_shot(t, &p.req, cfg.timeout).await {
            Ok((status, body)) => {
                let problems = p.expect.check(status, &body);
                if problems.is_empty() {
                    println!(
                        "  prime: {} {} on {} -> {status}",
                        p.req.method, p.req.path, t.name
                    );
                }
                for problem in problems {
                    warnings.push(format!("{tag}: {problem}"));
                }
            }
            Err(e) => warnings.push(format!("{tag}: {e}")),
        }
    }
}

// ------------------------------------------------------------------------------------------
// report

fn ms(us: Option<u32>) -> String {
    match us {
        None => "-".into(),
        Some(u) => {
            let m = u as f64 / 1000.0;
            if m < 10.0 {
                format!("{m:.2}")
            } else if m < 100.0 {
                format!("{m:.1}")
            } else {
                format!("{m:.0}")
            }
        }
    }
}

fn rate(r: f64) -> String {
    if r >= 1000.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

fn statuses_str(r: &RunResult) -> String {
    let mut s: Vec<String> = r.statuses.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    let errs: u64 = r.errors.values().sum();
    if errs > 0 {
        s.push(format!("err:{errs}"));
    }
    if s.is_empty() {
        "-".into()
    } else {
        s.join(" ")
    }
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

fn ratio_str(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(x) if x >= 100.0 => format!("{x:.0}x"),
        Some(x) if x >= 10.0 => format!("{x:.1}x"),
        Some(x) if x >= 0.1 => format!("{x:.2}x"),
        Some(x) => format!("{x:.4}x"),
    }
}

struct Row {
    scenario: String,
    target: String,
    rps: String,
    p50: String,
    p99: String,
    statuses: String,
    edge: String,
}

fn rows(cfg: &Config, results: &[RunResult]) -> (Vec<Row>, Vec<Value>) {
    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    for sc in &cfg.scenarios {
        let mine: Vec<&RunResult> = results.iter().filter(|r| r.scenario == sc.name).collect();
        let base = mine.iter().find(|r| r.target == cfg.baseline);
        for (i, r) in mine.iter().enumerate() {
            rows.push(Row {
                scenario: if i == 0 {
                    sc.name.clone()
                } else {
                    String::new()
                },
                target: r.target.clone(),
                rps: if r.round_rps.len() > 1 {
                    let each: Vec<String> = r.round_rps.iter().map(|x| rate(*x)).collect();
                    format!("{} ({})", rate(r.rps), each.join(", "))
                } else {
                    rate(r.rps)
                },
                p50: ms(r.p50_us),
                p99: ms(r.p99_us),
                statuses: statuses_str(r),
                edge: r.edge_summary.clone().unwrap_or_default(),
            });
        }
        if let Some(b) = base {
            for r in mine.iter().filter(|r| r.target != cfg.baseline) {
                let rr = ratio(r.rps, b.rps);
                let p50 = match (r.p50_us, b.p50_us) {
                    (Some(x), Some(y)) => ratio(x as f64, y as f64),
                    _ => None,
                };
                let p99 = match (r.p99_us, b.p99_us) {
                    (Some(x), Some(y)) => ratio(x as f64, y as f64),
                    _ => None,
                };
                rows.push(Row {
                    scenario: String::new(),
                    target: format!("{}/{}", r.target, b.target),
                    rps: ratio_str(rr),
                    p50: ratio_str(p50),
                    p99: ratio_str(p99),
                    statuses: String::new(),
                    edge: String::new(),
                });
                ratios.push(json!({
                    "scenario": sc.name, "target": r.target, "baseline": b.target,
                    "rps_ratio": rr, "p50_ratio": p50, "p99_ratio": p99,
                }));
            }
        }
    }
    (rows, ratios)
}

fn text_table(rows: &[Row]) -> String {
    let head = Row {
        scenario: "scenario".into(),
        target: "target".into(),
        rps: "req/s".into(),
        p50: "p50 ms".into(),
        p99: "p99 ms".into(),
        statuses: "statuses".into(),
        edge: "gateway metrics (window)".into(),
    };
    let all: Vec<&Row> = std::iter::once(&head).chain(rows.iter()).collect();
    let w = |f: fn(&Row) -> &String| all.iter().map(|r| f(r).chars().count()).max().unwrap_or(0);
    let (ws, wt, wr, w5, w9, wst) = (
        w(|r| &r.scenario),
        w(|r| &r.target),
        w(|r| &r.rps),
        w(|r| &r.p50),
        w(|r| &r.p99),
        w(|r| &r.statuses),
    );
    let mut out = String::new();
    for (i, r) in all.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:<ws$}  {:<wt$}  {:>wr$}  {:>w5$}  {:>w9$}  {:<wst$}  {}",
            r.scenario, r.target, r.rps, r.p50, r.p99, r.statuses, r.edge
        );
        if i == 0 {
            let total = ws + wt + wr + w5 + w9 + wst + 12 + 24;
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
    }
    out
}

fn md_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | target | req/s | p50 ms | p99 ms | statuses | gateway metrics (window) |\n\
         | --- | --- | ---: | ---: | ---: | --- | --- |\n",
    );
    for r in rows {
        let bold = r.target.contains('/');
        let f = |s: &str| {
            if bold && !s.is_empty() {
                format!("**{s}**")
            } else {
                s.replace('|', "\\|")
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.scenario.replace('|', "\\|"),
            r.target,
            f(&r.rps),
            f(&r.p50),
            f(&r.p99),
            r.statuses,
            r.edge
        );
    }
    out
}

fn write_results(
    cfg: &Config,
    results: &[RunResult],
    ratios: Vec<Value>,
    table_md: &str,
    warnings: &[String],
    started: SystemTime,
    elapsed: Duration,
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(&cfg.out_dir)
        .map_err(|e| format!("cannot create {}: {e}", cfg.out_dir.display()))?;
    let stamp = started
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string));
    let cpus = std::thread::available_parallelism().map(|n| n.get()).ok();
    let runs: Vec<Value> = results
        .iter()
        .map(|r| {
            json!({
                "scenario": r.scenario, "target": r.target, "duration_s": r.duration_s,
                "requests": r.requests, "req_per_s": r.rps, "req_per_s_by_round": r.round_rps,
                "latency_us": {"p50": r.p50_us, "p90": r.p90_us, "p99": r.p99_us,
                               "max": r.max_us, "mean": r.mean_us},
                "statuses": r.statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "errors": r.errors, "connections_opened": r.connects,
                "gateway_metrics_delta": r.edge, "sample_response": r.sample,
            })
        })
        .collect();
    let targets: Vec<Value> = cfg
        .targets
        .iter()
        .map(
            |t| json!({"name": t.name, "url": t.url, "ops": t.ops.as_ref().map(|o| o.url.clone())}),
        )
        .collect();
    let scenarios: Vec<Value> = cfg
        .scenarios
        .iter()
        .map(|s| {
            json!({"name": s.name, "method": s.req.method, "path": s.req.path,
                   "headers": s.req.headers, "expect_status": s.expect.status, "route": s.route})
        })
        .collect();
    let doc = json!({
        "bench": "gateway_load",
        "started_unix": stamp,
        "elapsed_s": elapsed.as_secs_f64(),
        "label": cfg.label,
        "config_file": cfg.config_file.display().to_string(),
        "settings": {"duration_s": cfg.duration.as_secs_f64(), "warmup_s": cfg.warmup.as_secs_f64(),
                     "concurrency": cfg.concurrency, "rounds": cfg.rounds, "timeout_ms": cfg.timeout.as_millis() as u64,
                     "baseline": cfg.baseline, "load_generator": "1 thread (tokio current_thread)"},
        "machine": {"cpus": cpus, "loadavg_1m_at_end": load},
        "targets": targets,
        "scenarios": scenarios,
        "runs": runs,
        "ratios": ratios,
        "warnings": warnings,
    });
    let json_text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    let mut md = String::new();
    let _ = writeln!(md, "# gateway_load ({stamp})\n");
    if !cfg.label.is_empty() {
        let _ = writeln!(md, "{}\n", cfg.label);
    }
    let _ = writeln!(
        md,
        "{} keep-alive connections per run, {:.0} s measured after {:.0} s warm-up, \
         {} round(s) per scenario and target{}; load generator on one thread; {} CPUs, \
         load average {} at the end. \
         Ratio rows: {{target}}/{} measured in the same run (req/s: higher is better for the \
         target; latency: lower is better).\n",
        cfg.concurrency,
        cfg.duration.as_secs_f64(),
        cfg.warmup.as_secs_f64(),
        cfg.rounds,
        if cfg.rounds > 1 {
            " (order alternated, ABBA)"
        } else {
            ""
        },
        cpus.map_or("?".into(), |c| c.to_string()),
        load.clone().unwrap_or_else(|| "?".into()),
        cfg.baseline
    );
    md.push_str(table_md);
    if !warnings.is_empty() {
        md.push_str("\nWarnings:\n\n");
        for w in warnings {
            let _ = writeln!(md, "- {}", w.replace('\n', " "));
        }
    }
    let mut written = Vec::new();
    for (name, text) in [
        (format!("gateway_load-{stamp}.json"), &json_text),
        (format!("gateway_load-{stamp}.md"), &md),
        ("gateway_load.json".to_string(), &json_text),
        ("gateway_load.md".to_string(), &md),
    ] {
        let p = cfg.out_dir.join(name);
        std::fs::write(&p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        written.push(p);
    }
    Ok(written)
}

// ------------------------------------------------------------------------------------------

async fn run(cfg: Config) -> Result<bool, String> {
    let started = SystemTime::now();
    let t_start = Instant::now();
    let mut warnings = Vec::new();
    let mut results = Vec::new();
    let per_run = cfg.warmup + cfg.duration;
    let runs: usize = cfg
        .scenarios
        .iter()
        .map(|s| s.targets.as_ref().map_or(cfg.targets.len(), Vec::len))
        .sum::<usize>()
        * cfg.rounds;
    println!(
        "gateway_load: {} scenario(s), {} run(s) of {:.0}+{:.0} s at concurrency {} (about {:.0} s)",
        cfg.scenarios.len(),
        runs,
        cfg.warmup.as_secs_f64(),
        cfg.duration.as_secs_f64(),
        cfg.concurrency,
        (per_run + cfg.pause).as_secs_f64() * runs as f64
    );
    for t in &cfg.targets {
        println!(
            "  target {:<10} {}{}",
            t.name,
            t.url,
            t.ops
                .as_ref()
                .map(|o| format!("  (ops {})", o.url))
                .unwrap_or_default()
        );
    }
    for sc in &cfg.scenarios {
        println!("\n== {}: {} {}", sc.name, sc.req.method, sc.req.path);
        prime(&cfg, sc, &mut warnings).await;
        let targets: Vec<&Target> = cfg
            .targets
            .iter()
            .filter(|t| sc.targets.as_ref().is_none_or(|l| l.contains(&t.name)))
            .collect();
        let mut accs: Vec<Acc> = targets.iter().map(|_| Acc::default()).collect();
        for round in 0..cfg.rounds {
            // ABBA: every other round runs the targets in reverse order (drift cancels out)
            let order: Vec<usize> = if round % 2 == 0 {
                (0..targets.len()).collect()
            } else {
                (0..targets.len()).rev().collect()
            };
            for i in order {
                let t = targets[i];
                let n_warn = warnings.len();
                let before = accs[i].stats.lat_us.len();
                measure(&cfg, sc, t, &mut accs[i], &mut warnings).await;
                let got = accs[i].stats.lat_us.len() - before;
                if cfg.rounds > 1 {
                    println!(
                        "  round {}/{} {:<10} {:>9} req/s",
                        round + 1,
                        cfg.rounds,
                        t.name,
                        rate(got as f64 / cfg.duration.as_secs_f64())
                    );
                }
                for w in &warnings[n_warn..] {
                    println!("  WARNING: {w}");
                }
                tokio::time::sleep(cfg.pause).await;
            }
        }
        for (t, acc) in targets.into_iter().zip(accs) {
            let n_warn = warnings.len();
            let r = summarize(sc, t, acc, &mut warnings);
            println!(
                "  {:<10} {:>9} req/s  p50 {:>7} ms  p99 {:>7} ms  {}  {}",
                t.name,
                rate(r.rps),
                ms(r.p50_us),
                ms(r.p99_us),
                statuses_str(&r),
                r.edge_summary.clone().unwrap_or_default()
            );
            for w in &warnings[n_warn..] {
                println!("  WARNING: {w}");
            }
            results.push(r);
        }
    }
    let (rows, ratios) = rows(&cfg, &results);
    let table = text_table(&rows);
    println!("\n{table}");
    if !warnings.is_empty() {
        println!("{} warning(s):", warnings.len());
        for w in &warnings {
            println!("  WARNING: {w}");
        }
    }
    let files = write_results(
        &cfg,
        &results,
        ratios,
        &md_table(&rows),
        &warnings,
        started,
        t_start.elapsed(),
    )?;
    for f in files.iter().skip(2) {
        println!("results: {}", f.display());
    }
    Ok(warnings.is_empty())
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("gateway_load: {e}\n{}", usage());
            return ExitCode::from(2);
        }
    };
    let Some(file) = o.config.clone() else {
        println!(
            "gateway_load: no scenario file (--config FILE or BENCH_CONFIG): nothing to do; \
             run `make bench` (scripts/bench.sh)"
        );
        return ExitCode::SUCCESS;
    };
    let cfg = match load_config(o, &file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gateway_load: {e}");
            return ExitCode::from(2);
        }
    };
    let strict = cfg.strict;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gateway_load: cannot start a runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) if !strict => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("gateway_load: correctness warnings and BENCH_STRICT=1");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("gateway_load: {e}");
            ExitCode::from(2)
        }
    }
}
