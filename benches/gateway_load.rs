//! gateway_load: a bounded, closed-loop HTTP/1.1 load generator for ironic-edge and the
//! servers it is measured against.
//!
//! `scripts/bench.sh` (`make bench`) starts Redis, the real Ironic, the gateway and the peers
//! (a bare Pingora server, nginx), writes a scenario file and runs this bench; it can also be
//! run by hand:
//!
//! ```text
//! cargo bench --bench gateway_load -- --config FILE [--duration S] [--warmup S] [--conc N]
//!     [--rounds R] [--timeout-ms MS] [--pause-ms MS] [--out DIR] [--only A,B] [--probe N]
//! ```
//!
//! Environment (overridden by the command line, overriding the file): `BENCH_CONFIG`,
//! `BENCH_DURATION`, `BENCH_WARMUP`, `BENCH_CONC`, `BENCH_ROUNDS`, `BENCH_TIMEOUT_MS`,
//! `BENCH_PAUSE_MS`, `BENCH_OUT`, `BENCH_ONLY`, `BENCH_PROBE`, `BENCH_STRICT=1` (exit 1 when a correctness
//! check warns). With `rounds` > 1 every scenario runs its targets `rounds` times, in
//! alternating order (ABBA), and the rounds are pooled: on a noisy machine that cancels drift.
//! Without a scenario file it runs the shared parts' self-checks and exits 0 (so
//! `cargo test --all-targets`, which runs bench targets too, stays fast).
//!
//! For every scenario and every target it opens `concurrency` keep-alive connections, each
//! sending the scenario's request in a loop for `warmup + duration` seconds (the client of
//! `benches/common/http.rs`), and reports, over the measured window, req/s, p50/p90/p99
//! latency (nearest rank, `benches/common/stats.rs`), the status codes and errors, and the
//! ratio of each target to the scenario's baselines measured in the same run. Over the same
//! window it reads, for a target with `pids`, the CPU those server processes used
//! (`/proc/<pid>/stat`: µs per request) and their RSS at its end; with `redis` (and
//! `redis_pids`), the commands that Redis processed (`INFO stats`, per request; the bench's
//! own `INFO` is not counted) and its CPU per request, apart; and the load generator's own
//! CPU (% of one core: near 100 % means the client, not the server, was the limit). With an
//! ops URL for a target, the gateway's Prometheus counters are read before and after the
//! window: how many requests of the scenario's route were answered locally or forwarded.
//! After a scenario's rounds, a target with `redis` gets the sequential probe: `probe`
//! (default 100) of the scenario's requests sent one at a time on one connection, Redis's
//! `total_reads_processed` (read events) and `total_commands_processed` read around them on a
//! kept connection (50 ms after the last answer; at most 3 s of requests): one request at a time, a read event is a
//! round trip, so this is Redis round trips per request (under load, requests of several
//! clients can share a read). A scenario with `sequence` (a list of requests) is probe-only:
//! each request once, in order, Redis read around each one (median and most per request);
//! no load, no rate (e.g. lookups that each mint a token).
//!
//! Only loopback targets are accepted; every phase is bounded in time: a run lasts warm-up +
//! duration, plus at most one request timeout for the requests still in flight at its end
//! (they complete, uncounted).
//!
//! Scenario file (JSON):
//! ```json
//! { "duration_s": 10, "warmup_s": 1, "concurrency": 16, "rounds": 1, "timeout_ms": 10000,
//!   "pause_ms": 1000, "probe_requests": 100,
//!   "out_dir": "target/bench", "label": "free text",
//!   "targets": [{"name": "direct", "url": "http://127.0.0.1:6396", "pids": [4242]},
//!               {"name": "gateway", "url": "http://127.0.0.1:16380", "ops": "http://127.0.0.1:19380",
//!                "pids": [4343], "redis": "127.0.0.1:16379", "redis_pids": [4141]}],
//!   "baseline": "direct",
//!   "scenarios": [{
//!     "name": "lookup 404", "method": "GET", "path": "/v1/lookup?addresses=...",
//!     "headers": [["X-OpenStack-Ironic-API-Version", "1.62"]], "body": null,
//!     "expect_status": 404, "expect_body": "substring", "expect_body_not": "substring",
//!     "expect_json": {"/config/agent_token": "******"}, "expect_json_not": {"/a/b": null},
//!     "expect_by_target": {"direct": {"expect_status": 404}},
//!     "route": "lookup", "expect_outcome": {"gateway": "local"},
//!     "targets": ["direct", "gateway"], "baseline": ["direct"],
//!     "prime": [{"target": "gateway", "method": "GET", "path": "...", "expect_status": 200}] },
//!   { "name": "minted lookups", "targets": ["gateway"], "expect_status": 200,
//!     "sequence": [{"path": "/v1/lookup?addresses=..."}, {"path": "..."}] }] }
//! ```
//! `targets` (per scenario, optional) restricts a scenario to some targets, run in that
//! order; `baseline` (per scenario, a name or a list; default: the file's `baseline` if the
//! scenario has it, else its first target): every other target gets a ratio row against
//! each; `expect_by_target` replaces the scenario's expectations for a target (a peer that
//! answers every request with the same 404, say); `prime` requests are sent once, in order,
//! before the scenario's first run.

mod common;

use common::cli::{self, Opt, Spec, Unknown};
use common::http::{build_request, connect, one_shot, parse_target, Conn, RequestSpec, Target};
use common::procs::{self, Redis, RedisCounters};
use common::prom::{self, delta};
use common::report::{self, ms, rate, ratio, ratio_opt, ratio_str, sig3, Align, Table};
use common::stats::Summary;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

const SAMPLE_BYTES: usize = 400;

// ------------------------------------------------------------------------------------------
// configuration

/// A server under load: where it listens and what to read of it.
#[derive(Clone, Debug)]
struct Server {
    http: Target,
    /// The gateway's ops listener (`/metrics`).
    ops: Option<Target>,
    /// The server's processes (CPU, RSS).
    pids: Vec<u32>,
    /// The Redis it uses, and that Redis's processes.
    redis: Option<SocketAddr>,
    redis_pids: Vec<u32>,
}

impl Server {
    fn name(&self) -> &str {
        &self.http.name
    }
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
    expect_by_target: BTreeMap<String, Expect>,
    route: Option<String>,
    expect_outcome: BTreeMap<String, String>,
    /// The targets, in the order they run (indices into `Config::targets`).
    targets: Vec<usize>,
    baselines: Vec<String>,
    prime: Vec<Prime>,
    /// A probe-only scenario: these requests, once each, in order, one connection, no load.
    sequence: Vec<RequestSpec>,
}

impl Scenario {
    fn expect_for(&self, target: &str) -> &Expect {
        self.expect_by_target.get(target).unwrap_or(&self.expect)
    }
}

#[derive(Clone, Debug)]
struct Config {
    duration: Duration,
    warmup: Duration,
    concurrency: usize,
    rounds: usize,
    timeout: Duration,
    pause: Duration,
    /// Requests of the sequential probe after a scenario's rounds (0: none).
    probe: usize,
    out_dir: PathBuf,
    label: String,
    targets: Vec<Server>,
    scenarios: Vec<Scenario>,
    strict: bool,
    config_file: PathBuf,
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
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

const OPTIONS: &[Opt] = &[
    Opt {
        name: "config",
        aliases: &["-c"],
    },
    Opt {
        name: "duration",
        aliases: &[],
    },
    Opt {
        name: "warmup",
        aliases: &[],
    },
    Opt {
        name: "conc",
        aliases: &["--concurrency"],
    },
    Opt {
        name: "rounds",
        aliases: &[],
    },
    Opt {
        name: "timeout-ms",
        aliases: &[],
    },
    Opt {
        name: "pause-ms",
        aliases: &[],
    },
    Opt {
        name: "out",
        aliases: &[],
    },
    Opt {
        name: "only",
        aliases: &[],
    },
    Opt {
        name: "probe",
        aliases: &[],
    },
];

const USAGE: &str = "usage: cargo bench --bench gateway_load -- --config FILE [--duration S] \
     [--warmup S] [--conc N] [--rounds R] [--timeout-ms MS] [--pause-ms MS] [--out DIR] \
     [--only NAME,NAME] [--probe N]\n\
     (env: BENCH_CONFIG BENCH_DURATION BENCH_WARMUP BENCH_CONC BENCH_ROUNDS BENCH_TIMEOUT_MS \
     BENCH_PAUSE_MS BENCH_OUT BENCH_ONLY BENCH_PROBE BENCH_STRICT); scripts/bench.sh (make bench) writes \
     the file and starts everything";

fn num_str(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(|x| match x {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    })
}

fn pids_field(v: &Value, key: &str, what: &str) -> Result<Vec<u32>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|p| {
                p.as_u64()
                    .and_then(|p| u32::try_from(p).ok())
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("{what}: {key} must be process ids"))
            })
            .collect(),
        Some(_) => Err(format!("{what}: {key} must be a list of process ids")),
    }
}

/// A name or a list of names.
fn names_field(v: &Value, key: &str) -> Option<Vec<String>> {
    match v.get(key)? {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => Some(
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        ),
        _ => None,
    }
}

fn load_config(o: cli::Args, file: &str) -> Result<Config, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
    let pick = |name: &str, key: &str, default: &str| -> String {
        o.string(name)
            .or_else(|| num_str(&doc, key))
            .unwrap_or_else(|| default.to_string())
    };
    let duration = cli::secs("duration", &pick("duration", "duration_s", "10"))?;
    if duration.is_zero() {
        return Err("duration must be > 0".into());
    }
    let warmup = cli::secs("warmup", &pick("warmup", "warmup_s", "1"))?;
    let concurrency = cli::integer("concurrency", &pick("conc", "concurrency", "16"), 1..=1024)?;
    let rounds = cli::integer("rounds", &pick("rounds", "rounds", "1"), 1..=100)?;
    let timeout = cli::millis(
        "timeout_ms",
        &pick("timeout-ms", "timeout_ms", "10000"),
        120_000,
    )?;
    if timeout.is_zero() {
        return Err("timeout_ms must be > 0".into());
    }
    let pause = cli::millis("pause_ms", &pick("pause-ms", "pause_ms", "1000"), 60_000)?;
    let probe = cli::integer(
        "probe",
        &pick("probe", "probe_requests", "100"),
        0..=100_000,
    )?;
    let out_dir = PathBuf::from(
        o.string("out")
            .or_else(|| str_field(&doc, "out_dir"))
            .unwrap_or_else(|| "target/bench".into()),
    );
    let label = str_field(&doc, "label").unwrap_or_default();

    let mut targets: Vec<Server> = Vec::new();
    for t in doc
        .get("targets")
        .and_then(Value::as_array)
        .ok_or("missing \"targets\": [{name, url, ops?}]")?
    {
        let name = str_field(t, "name").ok_or("a target without \"name\"")?;
        let what = format!("target {name}");
        let url = str_field(t, "url").ok_or_else(|| format!("{what}: no \"url\""))?;
        let ops = match str_field(t, "ops").filter(|s| !s.is_empty()) {
            Some(ops) => Some(parse_target(&format!("{name} ops"), &ops)?),
            None => None,
        };
        let redis = match str_field(t, "redis").filter(|s| !s.is_empty()) {
            Some(r) => Some(common::http::loopback_addr(
                &format!("{what} redis"),
                r.trim_start_matches("redis://"),
            )?),
            None => None,
        };
        if targets.iter().any(|x| x.name() == name) {
            return Err(format!("target {name} listed twice"));
        }
        targets.push(Server {
            http: parse_target(&name, &url)?,
            ops,
            pids: pids_field(t, "pids", &what)?,
            redis,
            redis_pids: pids_field(t, "redis_pids", &what)?,
        });
    }
    if targets.is_empty() {
        return Err("no targets".into());
    }
    let default_baseline = str_field(&doc, "baseline").unwrap_or_else(|| targets[0].name().into());
    let index = |n: &str| targets.iter().position(|t| t.name() == n);
    if index(&default_baseline).is_none() {
        return Err(format!("baseline {default_baseline} is not a target"));
    }

    let only: Option<Vec<String>> = o.get("only").map(|s| {
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
        let mut sequence = Vec::new();
        if let Some(list) = s.get("sequence").and_then(Value::as_array) {
            for (k, r) in list.iter().enumerate() {
                sequence.push(RequestSpec::from_json(r, &format!("{what} sequence[{k}]"))?);
            }
        }
        let req = match sequence.first() {
            Some(first) if s.get("path").is_none() => first.clone(),
            _ => RequestSpec::from_json(s, &what)?,
        };
        let mut prime = Vec::new();
        if let Some(list) = s.get("prime").and_then(Value::as_array) {
            for p in list {
                let target = str_field(p, "target")
                    .ok_or_else(|| format!("{what}: a prime request without \"target\""))?;
                if index(&target).is_none() {
                    return Err(format!("{what}: prime target {target} is not a target"));
                }
                prime.push(Prime {
                    target,
                    req: RequestSpec::from_json(p, &format!("{what} prime"))?,
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
        let mut expect_by_target = BTreeMap::new();
        if let Some(map) = s.get("expect_by_target").and_then(Value::as_object) {
            for (k, v) in map {
                if index(k).is_none() {
                    return Err(format!("{what}: expect_by_target: unknown target {k}"));
                }
                expect_by_target.insert(k.clone(), Expect::parse(v, &format!("{what} / {k}"))?);
            }
        }
        let scen_targets: Vec<usize> = match names_field(s, "targets") {
            Some(names) => names
                .iter()
                .map(|n| index(n).ok_or_else(|| format!("{what}: unknown target {n}")))
                .collect::<Result<_, _>>()?,
            None => (0..targets.len()).collect(),
        };
        if scen_targets.is_empty() {
            return Err(format!("{what}: no targets"));
        }
        let in_scenario = |n: &str| scen_targets.iter().any(|&i| targets[i].name() == n);
        let baselines = match names_field(s, "baseline") {
            Some(list) => list,
            None if in_scenario(&default_baseline) => vec![default_baseline.clone()],
            None => vec![targets[scen_targets[0]].name().to_string()],
        };
        if let Some(bad) = baselines.iter().find(|b| !in_scenario(b)) {
            return Err(format!("{what}: baseline {bad} is not one of its targets"));
        }
        let sc = Scenario {
            name,
            req,
            expect: Expect::parse(s, &what)?,
            expect_by_target,
            route: str_field(s, "route"),
            expect_outcome,
            targets: scen_targets,
            baselines,
            prime,
            sequence,
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
        probe,
        out_dir,
        label,
        targets,
        scenarios,
        strict: cli::env_flag("BENCH_STRICT"),
        config_file: PathBuf::from(file),
    })
}

// ------------------------------------------------------------------------------------------
// load

#[derive(Default)]
struct Stats {
    lat_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    connects: u64,
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
                        err(&mut st, e.to_string(), now);
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
                err(&mut st, e.to_string(), tokio::time::Instant::now());
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

type Counters = prom::Samples;

async fn scrape(ops: &Target, timeout: Duration) -> Result<Counters, String> {
    let mut req = RequestSpec::get("/metrics");
    req.headers.push(("Accept".into(), "text/plain".into()));
    let (status, body) = one_shot(ops, &req, timeout).await?;
    if status != 200 {
        return Err(format!("GET {}/metrics: {status}", ops.url));
    }
    Ok(prom::parse(&String::from_utf8_lossy(&body), ""))
}

/// What the server side did over one measured window.
#[derive(Clone, Copy, Default)]
struct Usage {
    /// Wall seconds between the two readings.
    window_s: f64,
    /// CPU seconds of the server's processes, of its Redis; `None` when not read.
    cpu_s: Option<f64>,
    redis_cpu_s: Option<f64>,
    /// Commands its Redis processed and read events on its sockets (the bench's own
    /// readings not counted).
    redis_cmds: Option<f64>,
    redis_reads: Option<f64>,
    /// CPU seconds of this load generator.
    gen_cpu_s: f64,
}

/// One reading of the server side (at the start or the end of a window).
struct Reading {
    at: Instant,
    cpu_s: Option<f64>,
    redis_cpu_s: Option<f64>,
    redis: Option<RedisCounters>,
    gen_cpu_s: f64,
}

async fn read_usage(
    redis: Option<&mut Redis>,
    t: &Server,
    warnings: &mut Vec<String>,
    tag: &str,
) -> Reading {
    let redis = match redis {
        Some(r) => match r.counters().await {
            Ok(c) => Some(c),
            Err(e) => {
                warnings.push(format!("{tag}: {e}"));
                None
            }
        },
        None => None,
    };
    let cpu = |pids: &[u32], what: &str, warnings: &mut Vec<String>| {
        if pids.is_empty() {
            return None;
        }
        let v = procs::cpu_seconds(pids);
        if v.is_none() {
            warnings.push(format!("{tag}: {what} process {pids:?} is gone"));
        }
        v
    };
    Reading {
        at: Instant::now(),
        cpu_s: cpu(&t.pids, "server", warnings),
        redis_cpu_s: cpu(&t.redis_pids, "redis", warnings),
        redis,
        gen_cpu_s: procs::self_cpu_seconds(),
    }
}

/// The readings' own share of Redis's counters (one kept connection: the first `INFO` is
/// counted as a command once answered, the second one as a read).
const READING_OVERHEAD: RedisCounters = RedisCounters {
    commands: 1,
    reads: 1,
};

fn usage_between(a: &Reading, b: &Reading) -> Usage {
    let d = |x: Option<f64>, y: Option<f64>| Some(y? - x?);
    let redis = match (a.redis, b.redis) {
        (Some(x), Some(y)) => Some(y.since(&x, &READING_OVERHEAD)),
        _ => None,
    };
    Usage {
        window_s: (b.at - a.at).as_secs_f64(),
        cpu_s: d(a.cpu_s, b.cpu_s),
        redis_cpu_s: d(a.redis_cpu_s, b.redis_cpu_s),
        redis_cmds: redis.map(|r| r.commands as f64),
        redis_reads: redis.map(|r| r.reads as f64),
        gen_cpu_s: b.gen_cpu_s - a.gen_cpu_s,
    }
}

/// Redis round trips and commands per request, measured without load: requests sent one
/// at a time on one keep-alive connection, Redis's read events and commands counted around
/// them (after a 50 ms pause for anything the gateway does after answering).
#[derive(Clone, Debug, Default)]
struct Probe {
    /// Per measured step (one request, or `n` identical ones): round trips and commands
    /// per request.
    round_trips: Vec<f64>,
    commands: Vec<f64>,
    statuses: BTreeMap<u16, u64>,
    lat_us: Vec<u32>,
}

const PROBE_SETTLE: Duration = Duration::from_millis(50);
/// A probe of identical requests stops after this (then it has sent fewer).
const PROBE_AT_MOST: Duration = Duration::from_secs(3);

/// Sends `reqs` in order on one connection; with `each`, Redis is read around every request
/// (a step per request), else around all of them (one step).
async fn probe(
    cfg: &Config,
    t: &Server,
    redis: &mut Redis,
    reqs: &[&RequestSpec],
    each: bool,
) -> Result<Probe, String> {
    let mut client = common::http::Client::new(t.http.clone());
    let mut out = Probe::default();
    let step = |before: RedisCounters, after: RedisCounters, n: usize, out: &mut Probe| {
        let d = after.since(&before, &READING_OVERHEAD);
        out.round_trips.push(d.reads as f64 / n as f64);
        out.commands.push(d.commands as f64 / n as f64);
    };
    if !each {
        // the connection is opened outside the counted step
        if let Some(r) = reqs.first() {
            client.request(r, cfg.timeout).await.map_err(String::from)?;
        }
        tokio::time::sleep(PROBE_SETTLE).await;
    }
    let mut before = redis.counters().await?;
    let until = Instant::now() + PROBE_AT_MOST;
    let mut sent = 0;
    for r in reqs {
        if !each && sent > 0 && Instant::now() >= until {
            break; // slow answers (forwarded to Ironic): fewer requests
        }
        sent += 1;
        let t0 = Instant::now();
        let rep = client.request(r, cfg.timeout).await.map_err(String::from)?;
        out.lat_us
            .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
        *out.statuses.entry(rep.status).or_default() += 1;
        if each {
            tokio::time::sleep(PROBE_SETTLE).await;
            let after = redis.counters().await?;
            step(before, after, 1, &mut out);
            before = redis.counters().await?;
        }
    }
    if !each {
        tokio::time::sleep(PROBE_SETTLE).await;
        let after = redis.counters().await?;
        step(before, after, sent.max(1), &mut out);
    }
    Ok(out)
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[(v.len() - 1) / 2])
}

struct RunResult {
    scenario: String,
    target: String,
    duration_s: f64,
    requests: u64,
    rps: f64,
    lat: Summary,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    connects: u64,
    edge: Option<Counters>,
    edge_summary: Option<String>,
    sample: Option<String>,
    round_rps: Vec<f64>,
    /// Per request under load: CPU µs of the server's processes, of its Redis; Redis
    /// commands and read events.
    cpu_us: Option<f64>,
    redis_cpu_us: Option<f64>,
    redis_cmds: Option<f64>,
    redis_reads: Option<f64>,
    /// Redis round trips per request without load (the sequential probe): median and most.
    redis_rt: Option<f64>,
    redis_rt_max: Option<f64>,
    /// Redis commands per request in the probe (median).
    probe_cmds: Option<f64>,
    /// A probe-only scenario's result (no load: no rate, no CPU).
    sequential: bool,
    /// The load generator's CPU, % of one core, over the windows.
    gen_cpu_pct: Option<f64>,
    /// RSS of the server's processes at the end of the last window, in MiB.
    rss_mib: Option<f64>,
}

impl RunResult {
    /// CPU µs per request on the server's side: its processes plus its Redis.
    fn server_cpu_us(&self) -> Option<f64> {
        self.cpu_us.map(|c| c + self.redis_cpu_us.unwrap_or(0.0))
    }
}

/// What the rounds of one scenario on one target gathered.
#[derive(Default)]
struct Acc {
    stats: Stats,
    edge: Option<Counters>,
    sample: Option<(u16, Vec<u8>)>,
    round_rps: Vec<f64>,
    measured: Duration,
    /// Sums over the rounds: usage, and the requests answered within the usage windows.
    cpu_s: Option<f64>,
    redis_cpu_s: Option<f64>,
    redis_cmds: Option<f64>,
    redis_reads: Option<f64>,
    gen_cpu_s: f64,
    window_s: f64,
    window_requests: f64,
    rss_kib: Option<u64>,
    probe: Option<Probe>,
}

fn add(sum: &mut Option<f64>, v: Option<f64>) {
    if let Some(v) = v {
        *sum = Some(sum.unwrap_or(0.0) + v);
    }
}

/// One round: `concurrency` connections for warm-up + duration on one target.
async fn measure(
    cfg: &Config,
    sc: &Scenario,
    t: &Server,
    acc: &mut Acc,
    warnings: &mut Vec<String>,
) {
    let tag = format!("{} / {}", sc.name, t.name());
    let req = std::sync::Arc::new(build_request(&t.http, &sc.req, false));
    let head = sc.req.method == "HEAD";
    // one untimed request: a sample body for the report and the correctness checks
    let sample = match one_shot(&t.http, &sc.req, cfg.timeout).await {
        Ok((status, body)) => Some((status, body)),
        Err(e) => {
            warnings.push(format!("{tag}: sample request failed: {e}"));
            None
        }
    };
    let start = tokio::time::Instant::now();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let mut handles = Vec::with_capacity(cfg.concurrency);
    for _ in 0..cfg.concurrency {
        handles.push(tokio::spawn(worker(
            t.http.addr,
            req.clone(),
            head,
            measure_from,
            end,
            cfg.timeout,
        )));
    }
    tokio::time::sleep_until(measure_from).await;
    let mut before = None;
    if let Some(ops) = &t.ops {
        match scrape(ops, Duration::from_secs(2)).await {
            Ok(c) => before = Some(c),
            Err(e) => warnings.push(format!("{tag}: metrics: {e}")),
        }
    }
    // the usage window: after the first scrape, before the second (they cost the gateway)
    let mut redis = t.redis.map(|a| Redis::new(a, Duration::from_secs(2)));
    let first = read_usage(redis.as_mut(), t, warnings, &tag).await;
    tokio::time::sleep_until(end).await;
    let last = read_usage(redis.as_mut(), t, warnings, &tag).await;
    drop(redis);
    let usage = usage_between(&first, &last);
    let rss = (!t.pids.is_empty())
        .then(|| procs::rss_kib(&t.pids))
        .flatten();
    let mut st = Stats::default();
    for h in handles {
        match h.await {
            Ok(s) => st.merge(s),
            Err(e) => warnings.push(format!("{tag}: worker failed: {e}")),
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
            Err(e) => warnings.push(format!("{tag}: metrics: {e}")),
        }
    }
    let n = st.lat_us.len() as f64;
    acc.round_rps.push(n / cfg.duration.as_secs_f64());
    acc.measured += cfg.duration;
    // requests answered within the usage window (a few ms shorter than the counted one)
    acc.window_requests += n * (usage.window_s / cfg.duration.as_secs_f64()).min(1.0);
    acc.window_s += usage.window_s;
    add(&mut acc.cpu_s, usage.cpu_s);
    add(&mut acc.redis_cpu_s, usage.redis_cpu_s);
    add(&mut acc.redis_cmds, usage.redis_cmds);
    add(&mut acc.redis_reads, usage.redis_reads);
    acc.gen_cpu_s += usage.gen_cpu_s;
    if rss.is_some() {
        acc.rss_kib = rss;
    }
    acc.stats.merge(st);
    if acc.sample.is_none() {
        acc.sample = sample;
    }
}

/// Percentiles, rates and the correctness checks over all rounds.
fn summarize(sc: &Scenario, t: &Server, acc: Acc, warnings: &mut Vec<String>) -> RunResult {
    let Acc {
        stats: mut st,
        edge,
        sample,
        round_rps,
        measured,
        cpu_s,
        redis_cpu_s,
        redis_cmds,
        redis_reads,
        gen_cpu_s,
        window_s,
        window_requests,
        rss_kib,
        probe,
    } = acc;
    let lat = Summary::of(&mut st.lat_us);
    let n = lat.n;
    let dur = measured.as_secs_f64();
    let per_req = |v: Option<f64>, scale: f64| {
        v.filter(|_| window_requests > 0.0)
            .map(|v| v * scale / window_requests)
    };
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
                    "ironic_edge_requests_total{{outcome=\"local\",route=\"{route}\"}}"
                )),
                get(format!(
                    "ironic_edge_requests_total{{outcome=\"forwarded\",route=\"{route}\"}}"
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
    let tag = format!("{} / {}", sc.name, t.name());
    let expect = sc.expect_for(t.name());
    if n == 0 {
        warnings.push(format!("{tag}: no response in the measured window"));
    }
    if let Some(want) = expect.status {
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
        for problem in expect.check(*s, body) {
            warnings.push(format!("{tag}: sample {problem}"));
        }
    }
    let err_total: u64 = st.errors.values().sum();
    if err_total > 0 {
        warnings.push(format!("{tag}: {err_total} errors: {:?}", st.errors));
    }
    if let (Some(want), Some(d), Some(route)) =
        (sc.expect_outcome.get(t.name()), &edge, sc.route.as_deref())
    {
        let get = |o: &str| {
            d.get(&format!(
                "ironic_edge_requests_total{{outcome=\"{o}\",route=\"{route}\"}}"
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
    let cpu_us = per_req(cpu_s, 1e6);
    let redis_cpu_us = per_req(redis_cpu_s, 1e6);
    if let (Some(c), true) = (cpu_us, n > 0) {
        if c <= 0.0 {
            warnings.push(format!(
                "{tag}: no server CPU seen for {n} requests (wrong pids?)"
            ));
        }
    }
    RunResult {
        scenario: sc.name.clone(),
        target: t.name().to_string(),
        duration_s: dur,
        requests: n,
        rps: if dur > 0.0 { n as f64 / dur } else { 0.0 },
        lat,
        statuses: st.statuses,
        errors: st.errors,
        connects: st.connects,
        edge,
        edge_summary,
        sample: sample_text,
        round_rps,
        cpu_us,
        redis_cpu_us,
        redis_cmds: per_req(redis_cmds, 1.0),
        redis_reads: per_req(redis_reads, 1.0),
        redis_rt: probe.as_ref().and_then(|p| median(&p.round_trips)),
        redis_rt_max: probe
            .as_ref()
            .and_then(|p| p.round_trips.iter().copied().reduce(f64::max)),
        probe_cmds: probe.as_ref().and_then(|p| median(&p.commands)),
        sequential: false,
        gen_cpu_pct: (window_s > 0.0).then(|| 100.0 * gen_cpu_s / window_s),
        rss_mib: rss_kib.map(|k| k as f64 / 1024.0),
    }
}

/// The probe's answers must be the expected ones.
fn check_probe(sc: &Scenario, t: &Server, p: &Probe, warnings: &mut Vec<String>) {
    if let Some(want) = sc.expect_for(t.name()).status {
        let bad: u64 = p
            .statuses
            .iter()
            .filter(|(s, _)| **s != want)
            .map(|(_, n)| n)
            .sum();
        if bad > 0 {
            warnings.push(format!(
                "{} / {}: probe: {bad} answer(s) not {want}: {:?}",
                sc.name,
                t.name(),
                p.statuses
            ));
        }
    }
}

/// A probe-only scenario on one target: its requests once each, Redis read around each.
async fn sequence_result(
    cfg: &Config,
    sc: &Scenario,
    t: &Server,
    warnings: &mut Vec<String>,
) -> RunResult {
    let tag = format!("{} / {}", sc.name, t.name());
    let mut p = Probe::default();
    match t.redis {
        None => warnings.push(format!("{tag}: a sequence needs a target with \"redis\"")),
        Some(addr) => {
            let mut redis = Redis::new(addr, Duration::from_secs(2));
            let reqs: Vec<&RequestSpec> = sc.sequence.iter().collect();
            match probe(cfg, t, &mut redis, &reqs, true).await {
                Ok(got) => p = got,
                Err(e) => warnings.push(format!("{tag}: {e}")),
            }
        }
    }
    check_probe(sc, t, &p, warnings);
    let n = p.lat_us.len() as u64;
    RunResult {
        scenario: sc.name.clone(),
        target: t.name().to_string(),
        duration_s: 0.0,
        requests: n,
        rps: 0.0,
        lat: Summary::of(&mut p.lat_us),
        statuses: std::mem::take(&mut p.statuses),
        errors: BTreeMap::new(),
        connects: 0,
        edge: None,
        edge_summary: None,
        sample: None,
        round_rps: Vec::new(),
        cpu_us: None,
        redis_cpu_us: None,
        redis_cmds: None,
        redis_reads: None,
        redis_rt: median(&p.round_trips),
        redis_rt_max: p.round_trips.iter().copied().reduce(f64::max),
        probe_cmds: median(&p.commands),
        gen_cpu_pct: None,
        rss_mib: None,
        sequential: true,
    }
}

async fn prime(cfg: &Config, sc: &Scenario, warnings: &mut Vec<String>) {
    for p in &sc.prime {
        let Some(t) = cfg.targets.iter().find(|t| t.name() == p.target) else {
            continue;
        };
        let tag = format!(
            "{} / prime {} {} on {}",
            sc.name,
            p.req.method,
            p.req.path,
            t.name()
        );
        match one_shot(&t.http, &p.req, cfg.timeout).await {
            Ok((status, body)) => {
                let problems = p.expect.check(status, &body);
                if problems.is_empty() {
                    println!(
                        "  prime: {} {} on {} -> {status}",
                        p.req.method,
                        p.req.path,
                        t.name()
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

const HEAD: &[(&str, Align)] = &[
    ("scenario", Align::Left),
    ("target", Align::Left),
    ("req/s", Align::Right),
    ("p50 ms", Align::Right),
    ("p99 ms", Align::Right),
    ("CPU µs/req", Align::Right),
    ("Redis CPU µs/req", Align::Right),
    ("Redis cmd/req", Align::Right),
    ("Redis round trips/req", Align::Right),
    ("RSS MiB", Align::Right),
    ("client CPU %", Align::Right),
    ("statuses", Align::Left),
    ("gateway metrics (window)", Align::Left),
];

/// The table (a row per scenario and target, a ratio row per target and baseline) and the
/// ratios as JSON.
fn table(cfg: &Config, results: &[RunResult]) -> (Table, Vec<Value>) {
    let mut t = Table::new(HEAD);
    let mut ratios = Vec::new();
    for sc in &cfg.scenarios {
        let mine: Vec<&RunResult> = results.iter().filter(|r| r.scenario == sc.name).collect();
        for (i, r) in mine.iter().enumerate() {
            let rps = if r.sequential {
                format!("- ({} sequential)", r.requests)
            } else if r.round_rps.len() > 1 {
                let each: Vec<String> = r.round_rps.iter().map(|x| rate(*x)).collect();
                format!("{} ({})", rate(r.rps), each.join(", "))
            } else {
                rate(r.rps)
            };
            t.row(vec![
                if i == 0 {
                    sc.name.clone()
                } else {
                    String::new()
                },
                r.target.clone(),
                rps,
                ms(r.lat.p50),
                ms(r.lat.p99),
                sig3(r.cpu_us),
                sig3(r.redis_cpu_us),
                sig3(r.redis_cmds.or(r.probe_cmds)),
                match (r.redis_rt, r.redis_rt_max) {
                    (Some(m), Some(x)) if r.sequential && x > m => {
                        format!("{} (max {})", sig3(Some(m)), sig3(Some(x)))
                    }
                    (m, _) => sig3(m),
                },
                sig3(r.rss_mib),
                r.gen_cpu_pct.map_or("-".into(), |p| format!("{p:.0}")),
                statuses_str(r),
                r.edge_summary.clone().unwrap_or_default(),
            ]);
        }
        for b in &sc.baselines {
            let Some(base) = mine.iter().find(|r| &r.target == b) else {
                continue;
            };
            for r in mine.iter().filter(|r| !sc.baselines.contains(&r.target)) {
                let lat = |v: Option<u32>| v.map(f64::from);
                let rr = ratio(r.rps, base.rps);
                let p50 = ratio_opt(lat(r.lat.p50), lat(base.lat.p50));
                let p99 = ratio_opt(lat(r.lat.p99), lat(base.lat.p99));
                let cpu = ratio_opt(r.server_cpu_us(), base.server_cpu_us());
                t.marked_row(vec![
                    String::new(),
                    format!("{}/{}", r.target, base.target),
                    ratio_str(rr),
                    ratio_str(p50),
                    ratio_str(p99),
                    ratio_str(cpu),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
                ratios.push(json!({
                    "scenario": sc.name, "target": r.target, "baseline": base.target,
                    "rps_ratio": rr, "p50_ratio": p50, "p99_ratio": p99,
                    "server_cpu_per_request_ratio": cpu,
                }));
            }
        }
    }
    (t, ratios)
}

struct RunInfo {
    started: SystemTime,
    elapsed: Duration,
}

fn write_results(
    cfg: &Config,
    results: &[RunResult],
    ratios: Vec<Value>,
    table_md: &str,
    warnings: &[String],
    info: RunInfo,
) -> Result<Vec<PathBuf>, String> {
    let stamp = report::unix_stamp(info.started);
    let (cpus, load) = report::machine();
    let runs: Vec<Value> = results
        .iter()
        .map(|r| {
            json!({
                "scenario": r.scenario, "target": r.target, "duration_s": r.duration_s,
                "requests": r.requests, "req_per_s": r.rps, "req_per_s_by_round": r.round_rps,
                "latency_us": {"p50": r.lat.p50, "p90": r.lat.p90, "p99": r.lat.p99,
                               "max": r.lat.max, "mean": r.lat.mean},
                "server_cpu_us_per_request": r.cpu_us,
                "redis_cpu_us_per_request": r.redis_cpu_us,
                "redis_commands_per_request": r.redis_cmds,
                "redis_reads_per_request": r.redis_reads,
                "redis_round_trips_per_request_sequential": r.redis_rt,
                "redis_round_trips_per_request_sequential_max": r.redis_rt_max,
                "redis_commands_per_request_sequential": r.probe_cmds,
                "sequential_only": r.sequential,
                "server_rss_mib": r.rss_mib,
                "load_generator_cpu_pct": r.gen_cpu_pct,
                "statuses": r.statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "errors": r.errors, "connections_opened": r.connects,
                "gateway_metrics_delta": r.edge, "sample_response": r.sample,
            })
        })
        .collect();
    let targets: Vec<Value> = cfg
        .targets
        .iter()
        .map(|t| {
            json!({"name": t.name(), "url": t.http.url, "ops": t.ops.as_ref().map(|o| o.url.clone()),
                   "pids": t.pids, "redis": t.redis.map(|a| a.to_string()), "redis_pids": t.redis_pids})
        })
        .collect();
    let scenarios: Vec<Value> = cfg
        .scenarios
        .iter()
        .map(|s| {
            json!({"name": s.name, "method": s.req.method, "path": s.req.path,
                   "headers": s.req.headers, "expect_status": s.expect.status, "route": s.route,
                   "targets": s.targets.iter().map(|&i| cfg.targets[i].name()).collect::<Vec<_>>(),
                   "baselines": s.baselines})
        })
        .collect();
    let doc = json!({
        "bench": "gateway_load",
        "started_unix": stamp,
        "elapsed_s": info.elapsed.as_secs_f64(),
        "label": cfg.label,
        "config_file": cfg.config_file.display().to_string(),
        "settings": {"duration_s": cfg.duration.as_secs_f64(), "warmup_s": cfg.warmup.as_secs_f64(),
                     "concurrency": cfg.concurrency, "rounds": cfg.rounds, "timeout_ms": cfg.timeout.as_millis() as u64,
                     "load_generator": "1 thread (tokio current_thread)", "probe_requests": cfg.probe,
                     "percentiles": "nearest rank", "cpu_source": "/proc/<pid>/stat utime+stime",
                     "clock_ticks_per_s": procs::clock_ticks()},
        "machine": {"cpus": cpus, "load_generator_cpus": report::own_cpus(), "loadavg_1m_at_end": load},
        "targets": targets,
        "scenarios": scenarios,
        "runs": runs,
        "ratios": ratios,
        "warnings": warnings,
    });
    let json_text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    let mut md = String::new();
    md.push_str(&format!("# gateway_load ({stamp})\n\n"));
    if !cfg.label.is_empty() {
        md.push_str(&format!("{}\n\n", cfg.label));
    }
    md.push_str(&format!(
        "{} keep-alive connections per run, {:.0} s measured after {:.0} s warm-up, \
         {} round(s) per scenario and target{}; load generator on one thread (may run on {} \
         CPU(s)); {} CPUs, load average {} at the end. Percentiles: nearest rank. CPU µs/req: the server's \
         processes (utime+stime of /proc/<pid>/stat over the window / requests), its Redis \
         apart; Redis cmd/req: `INFO stats` total_commands_processed over the window / \
         requests under load (commands run inside Lua scripts count); Redis round trips/req: \
         Redis's read events (total_reads_processed) around {} requests sent one at a time \
         after the rounds, per request (a sequence: median, and the most); client CPU: the \
         load generator, % of one core. Ratio rows: \
         {{target}}/{{baseline}} measured in the same run (req/s: higher is better for the \
         target; latency and CPU (the server's processes plus its Redis): lower is better).\n\n",
        cfg.concurrency,
        cfg.duration.as_secs_f64(),
        cfg.warmup.as_secs_f64(),
        cfg.rounds,
        if cfg.rounds > 1 {
            " (order alternated, ABBA)"
        } else {
            ""
        },
        report::own_cpus().map_or("?".into(), |c| c.to_string()),
        cpus.map_or("?".into(), |c| c.to_string()),
        load.clone().unwrap_or_else(|| "?".into()),
        cfg.probe,
    ));
    md.push_str(table_md);
    if !warnings.is_empty() {
        md.push_str("\nWarnings:\n\n");
        for w in warnings {
            md.push_str(&format!("- {}\n", w.replace('\n', " ")));
        }
    }
    report::write_results(&cfg.out_dir, "gateway_load", stamp, &json_text, &md)
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
        .filter(|s| s.sequence.is_empty())
        .map(|s| s.targets.len())
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
            "  target {:<16} {}{}{}",
            t.name(),
            t.http.url,
            t.ops
                .as_ref()
                .map(|o| format!("  (ops {})", o.url))
                .unwrap_or_default(),
            if t.pids.is_empty() {
                String::new()
            } else {
                format!("  pids {:?}", t.pids)
            }
        );
    }
    for sc in &cfg.scenarios {
        println!("\n== {}: {} {}", sc.name, sc.req.method, sc.req.path);
        prime(&cfg, sc, &mut warnings).await;
        let targets: Vec<&Server> = sc.targets.iter().map(|&i| &cfg.targets[i]).collect();
        if !sc.sequence.is_empty() {
            for t in targets {
                let n_warn = warnings.len();
                let r = sequence_result(&cfg, sc, t, &mut warnings).await;
                println!(
                    "  {:<16} {} sequential request(s): p50 {} ms, Redis {} round trips (at most {}), {} commands per request  {}",
                    t.name(),
                    r.requests,
                    ms(r.lat.p50),
                    sig3(r.redis_rt),
                    sig3(r.redis_rt_max),
                    sig3(r.probe_cmds),
                    statuses_str(&r)
                );
                for w in &warnings[n_warn..] {
                    println!("  WARNING: {w}");
                }
                results.push(r);
            }
            continue;
        }
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
                        "  round {}/{} {:<16} {:>9} req/s",
                        round + 1,
                        cfg.rounds,
                        t.name(),
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
            let mut acc = acc;
            if let (Some(addr), true) = (t.redis, cfg.probe > 0) {
                // Redis round trips per request, without load
                let mut redis = Redis::new(addr, Duration::from_secs(2));
                let reqs = vec![&sc.req; cfg.probe];
                match probe(&cfg, t, &mut redis, &reqs, false).await {
                    Ok(p) => {
                        check_probe(sc, t, &p, &mut warnings);
                        acc.probe = Some(p);
                    }
                    Err(e) => warnings.push(format!("{} / {}: probe: {e}", sc.name, t.name())),
                }
            }
            let r = summarize(sc, t, acc, &mut warnings);
            println!(
                "  {:<16} {:>9} req/s  p50 {:>7} ms  p99 {:>7} ms  cpu {:>6} µs/req  redis {:>6} µs, {:>5} cmd, {:>5} round trips/req  {}  {}",
                t.name(),
                rate(r.rps),
                ms(r.lat.p50),
                ms(r.lat.p99),
                sig3(r.cpu_us),
                sig3(r.redis_cpu_us),
                sig3(r.redis_cmds),
                sig3(r.redis_rt),
                statuses_str(&r),
                r.edge_summary.clone().unwrap_or_default()
            );
            for w in &warnings[n_warn..] {
                println!("  WARNING: {w}");
            }
            results.push(r);
        }
    }
    let (table, ratios) = table(&cfg, &results);
    println!("\n{}", table.text());
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
        &table.markdown(),
        &warnings,
        RunInfo {
            started,
            elapsed: t_start.elapsed(),
        },
    )?;
    for f in files.iter().skip(2) {
        println!("results: {}", f.display());
    }
    Ok(warnings.is_empty())
}

fn main() -> ExitCode {
    let spec = Spec {
        prog: "gateway_load",
        options: OPTIONS,
        env_prefix: "BENCH_",
        unknown: Unknown::Warn,
        usage: USAGE,
    };
    let o = match spec.parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("gateway_load: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let Some(file) = o.string("config") else {
        common::self_check();
        println!(
            "gateway_load: no scenario file (--config FILE or BENCH_CONFIG): nothing to do \
             (shared parts self-checked); run `make bench` (scripts/bench.sh)"
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
