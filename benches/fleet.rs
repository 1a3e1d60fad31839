//! fleet: a fleet of simulated ironic-python-agent 13.0.0 ramdisks, run against the real Ironic
//! directly and through ironic-edge in the same run (issue 4).
//!
//! `scripts/fleet-bench.sh` starts Redis, the real Ironic (seeded nodes) and the gateway and runs
//! this bench; by hand:
//!
//! ```text
//! cargo bench --bench fleet -- --seed SEED.json --ironic 127.0.0.1:PORT --relay 127.0.0.1:PORT
//!     [--gateway URL[,URL..] --gateway-ops URL[,URL..]] [--targets direct,gateway] [--agents N] [--unknown M]
//!     [--ramp S] [--settle S] [--steady S] [--outage S] [--recovery S] [--recovery-min S]
//!     [--reset-cmd CMD] [--outage-stop-cmd CMD] [--outage-start-cmd CMD] [--ironic-log FILE]
//!     [--out DIR] [--label T]
//! ```
//! Every option can also come from the environment as `FLEET_<OPTION>` (`--outage-stop-cmd` =
//! `FLEET_OUTAGE_STOP_CMD`); the command line wins. Without `--seed` it prints a note and exits 0
//! (`cargo test --all-targets` runs bench targets too).
//!
//! Each agent is a state machine that follows IPA 13 (`ironic_api_client.py`, `agent.py`):
//! - boot: `GET /` (version discovery, `default_version.version`, retried before every request
//!   until it succeeds once; on failure that request uses 1.31, as IPA does);
//! - lookup `GET /v1/lookup?addresses=<its MACs, percent-encoded>` at `min(server, 1.62)`, with
//!   `Content-Type`/`Accept: application/json`, retried with tenacity's full-jitter exponential
//!   back-off (after attempt n: sleep U(1, min(2^(n-1), 60)) s), plus 5/10/30/30.. s pauses on 409,
//!   until a 200 with `node.uuid`; after 600 s of failures IPA exits and systemd restarts it 30 s
//!   later (`RestartSec=30s` of the ramdisk's unit): a new boot;
//! - the token is kept only if it is a raw token (>= 32 chars); `"******"` without a token is
//!   fatal: IPA locks itself down (BRICKED: counted, the agent stops); no token at all leaves it
//!   heartbeating without one (400 for ever: counted as "no token");
//! - heartbeater start: a plain `GET <api_url>` reachability probe (no custom headers); if it fails
//!   IPA finds no advertise address and the heartbeater thread dies (counted);
//! - heartbeats `POST /v1/heartbeat/<uuid>` at `min(server, 1.68)` with IPA's JSON body
//!   `{"callback_url": "https://<unique 127.x address>:9999", "agent_token": ..., "agent_version":
//!   "13.0.0"}`: the first at once, the next `heartbeat_timeout x U(0.3, 0.6)` after a 202, and
//!   `5 x U(1, 2)` s after any error, for ever ("retry mode": agents that ever entered it are
//!   counted).
//!
//! Requests have IPA's 30 s timeout and go over one keep-alive connection per agent (requests'
//! pool), dropped when the server closed it (urllib3's `is_connection_dropped`): the benches'
//! shared client (`common::http::Client`), whose error labels are what agents see (`timeout`,
//! `conn-refused`, `conn-reset`, `conn-closed`, `connect-error`, `bad-response`).
//! `heartbeat_timeout` is what lookup returns (Ironic's `[api]ramdisk_heartbeat_timeout`, which
//! `scripts/fleet-bench.sh` lowers through oslo.config's `OS_API__RAMDISK_HEARTBEAT_TIMEOUT`);
//! `--agent-heartbeat-timeout S` overrides it in the agents only (reported as an override).
//!
//! Counting relay: the simulator listens on `--relay` and forwards every connection to the real
//! Ironic (`--ironic`), counting the HTTP requests that reach Ironic (request heads, framed by
//! Content-Length or chunked encoding). In the direct run the agents talk to the relay; in the
//! gateway run the gateway's upstream is the relay, so both runs count "requests reaching Ironic"
//! at the same place. When Ironic refuses connections (stopped), the relay closes its own listener
//! too and reopens it once Ironic listens again, so clients see a refused connection as they would
//! without it (the connection that found Ironic down is reset).
//!
//! A run per target: reset (`--reset-cmd`, run with `FLEET_TARGET=<target>` in its environment,
//! as the outage commands are: e.g. restore the freshly seeded database so that every node mints
//! a new token, and start the gateway only for its own run), agents boot spread uniformly over
//! `--ramp` s, wait until every enrolled agent had a 202 (at most `--settle` s more), measure
//! `--steady` s, then the outage: run
//! `--outage-stop-cmd`, wait until `--outage` s after it started, run `--outage-start-cmd` (it
//! returns when Ironic answers again), then measure the recovery: at least `--recovery-min` s (the
//! minute after Ironic's return), until every live agent had a 202 after that and the gateway's
//! relay had nothing kept left (its `ironic_edge_heartbeats_kept`, polled every 0.5 s), at most
//! `--recovery` s. Reported per target: requests sent by agents, requests reaching Ironic and
//! their ratio (the shield ratio), agent-visible errors by request and status, agents that entered
//! the 5-10 s retry mode, bricked agents, p50/p99 latency per request type and phase (nearest
//! rank: the benches' one estimator, `common::stats`), time to the first OK heartbeat, and the
//! outage (errors during it, recovery time, the herd reaching Ironic after it, how long the relay
//! took to deliver what it kept).
//!
//! Ironic's own side, the same for both targets: with `--ironic-log` (its log file; its API's
//! request log writes one INFO line per answer, by the time it finished it), its answers per phase
//! by status (503 "no free conductor workers" and other 5xx: the gateway's relays included), the
//! tokens it minted (a lookup 200 without the conductor's warning that the node already had one),
//! hence R, the best 10-s mint rate during the boot, and N/R. The log's clock is tied to the
//! bench's by a marker request sent to Ironic directly at each run's start (`GET
//! /fleet-bench-mark/...`, a 404); the marker and `ironic-peer-up.sh`'s readiness probes
//! (`GET /v1/drivers`) are left out. Its load: the best 10-s rate of requests reaching it (the
//! relay's count) before the outage in a window without a 503, against the mean and the best 10 s
//! of the minute after its return. After each run, Ironic's node records (asked directly, not
//! counted) give the latent bricked agents: Ironic holds a token (`driver_internal_info`) that the
//! agent never got, and it is not bricked yet (its next lookup answer is `"******"`); an agent
//! whose lookup was in flight when the run ended counts too.
//!
//! Several gateways (`--gateway` and `--gateway-ops` lists, in the same order): agent `i` talks
//! to gateway `i % n` only, as IPA would behind DNS or a VIP bound to one of them; their
//! `/metrics` are read at every phase boundary and summed (the relay's backlog gauge, which every
//! process reads from Redis, is not: the largest is kept). `--outage-mode redis-master-kill`
//! (the outage commands kill the Redis master and restart it as a replica): each gateway's
//! `/metrics` are also read every 0.5 s from 2 s before the kill to the end of the recovery,
//! and the report gives, per gateway, when it noticed (a store error, or the master unknown),
//! when it saw the master switch, how long it did not know the master, when it was healthy
//! again and when it answered locally from Redis again (`common::failover`); the recovery also
//! waits until every gateway is healthy again.
//! Results: `<out>/fleet.{md,json}` (+ time-stamped copies). Loopback targets only.

#![recursion_limit = "256"]

mod common;

use common::cli::{Args, Opt, Spec, Unknown};
use common::failover;
use common::http::{parse_target, Client, HttpError, Reply, RequestSpec, Target};
use common::prom::{self, family_sum, Samples};
use common::report::{self, Align, Table};
use common::stats::{percentile, sorted_f64, Summary};
use rand::Rng;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ------------------------------------------------------------------------------------------
// IPA 13.0.0 constants

const IPA_VERSION: &str = "13.0.0";
/// requests' default User-Agent (requests 2.34.2 in the peer venv).
const USER_AGENT: &str = "python-requests/2.34.2";
const MIN_IRONIC_VERSION: (u32, u32) = (1, 31);
const AGENT_VERSION_VERSION: (u32, u32) = (1, 36);
const AGENT_TOKEN_VERSION: (u32, u32) = (1, 62);
const MAX_KNOWN_VERSION: (u32, u32) = (1, 68);
/// `ipa-lookup-interval` (the minimum wait) and tenacity's maximum wait.
const LOOKUP_MIN_WAIT: f64 = 1.0;
const LOOKUP_MAX_WAIT: f64 = 60.0;
/// `min_heartbeat_interval` x U(1.0, 2.0) after an error.
const ERROR_INTERVAL: f64 = 5.0;

// ------------------------------------------------------------------------------------------
// configuration

const OPTIONS: &[Opt] = &[
    Opt::new("seed"),
    Opt::new("ironic"),
    Opt::new("relay"),
    Opt::new("gateway"),
    Opt::new("gateway-ops"),
    Opt::new("targets"),
    Opt::new("agents"),
    Opt::new("unknown"),
    Opt::new("extra-macs"),
    Opt::new("ramp"),
    Opt::new("settle"),
    Opt::new("steady"),
    Opt::new("outage"),
    Opt::new("recovery"),
    Opt::new("recovery-min"),
    Opt::new("ironic-log"),
    Opt::new("agent-heartbeat-timeout"),
    Opt::new("request-timeout"),
    Opt::new("lookup-timeout"),
    Opt::new("restart-delay"),
    Opt::new("reset-cmd"),
    Opt::new("outage-stop-cmd"),
    Opt::new("outage-start-cmd"),
    Opt::new("outage-mode"),
    Opt::new("cmd-timeout"),
    Opt::new("ready-timeout"),
    Opt::new("pause"),
    Opt::new("out"),
    Opt::new("label"),
];

fn usage() -> String {
    format!(
        "usage: cargo bench --bench fleet -- --seed SEED.json --ironic HOST:PORT --relay HOST:PORT \
         [--gateway URL --gateway-ops URL] [--OPTION VALUE ...]\noptions (env FLEET_<OPTION>): {}\n\
         scripts/fleet-bench.sh starts Redis, the real Ironic and the gateway and runs it",
        OPTIONS.iter().map(|o| o.name).collect::<Vec<_>>().join(" ")
    )
}

#[derive(Clone, Debug)]
struct NodeSeed {
    uuid: String,
    macs: Vec<String>,
}

#[derive(Clone, Debug)]
struct Config {
    seed_file: PathBuf,
    nodes: Vec<NodeSeed>,
    ironic: Target,
    relay: Target,
    /// the gateways of the gateway run (`--gateway URL[,URL...]`): agent `i` talks to
    /// gateway `i % n` only, as IPA would behind DNS or a VIP bound to one of them
    gateways: Vec<Target>,
    /// their ops endpoints, in the same order (empty: none given)
    gateway_ops: Vec<Target>,
    targets: Vec<String>,
    agents: usize,
    unknown: usize,
    extra_macs: usize,
    ramp: f64,
    settle: f64,
    steady: f64,
    outage: f64,
    recovery: f64,
    recovery_min: f64,
    /// Ironic's own log file (its API logs one line per answer)
    ironic_log: Option<PathBuf>,
    hb_override: Option<f64>,
    request_timeout: f64,
    lookup_timeout: f64,
    restart_delay: f64,
    reset_cmd: Option<String>,
    outage_stop_cmd: Option<String>,
    outage_start_cmd: Option<String>,
    outage_mode: String,
    cmd_timeout: f64,
    ready_timeout: f64,
    pause: f64,
    out_dir: PathBuf,
    label: String,
}

/// `http://host:port` or `host:port`, loopback only.
fn endpoint(what: &str, s: &str) -> Result<Target, String> {
    let t = parse_target(what, s)?;
    if !t.base_path.is_empty() {
        return Err(format!("{what}: expected http://HOST:PORT, got {s:?}"));
    }
    Ok(t)
}

fn load_seed(path: &PathBuf) -> Result<Vec<NodeSeed>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the seed file {}: {e}", path.display()))?;
    let doc: Value = serde_json::from_str(&text)
        .map_err(|e| format!("seed file {}: not JSON: {e}", path.display()))?;
    let mut nodes = Vec::new();
    for n in doc
        .get("nodes")
        .and_then(Value::as_array)
        .ok_or("seed file: no \"nodes\" list")?
    {
        let uuid = n
            .get("uuid")
            .and_then(Value::as_str)
            .ok_or("seed file: a node without uuid")?;
        let macs: Vec<String> = n
            .get("macs")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if macs.is_empty() {
            return Err(format!("seed file: node {uuid} has no MACs"));
        }
        nodes.push(NodeSeed {
            uuid: uuid.to_string(),
            macs,
        });
    }
    Ok(nodes)
}

fn load_config(m: Args) -> Result<Config, String> {
    let seed_file = PathBuf::from(m.get("seed").ok_or("--seed is required")?);
    let nodes = load_seed(&seed_file)?;
    let ironic = endpoint("--ironic", m.get("ironic").ok_or("--ironic is required")?)?;
    let relay = endpoint("--relay", m.get("relay").ok_or("--relay is required")?)?;
    let list = |what: &str, s: Option<&str>| -> Result<Vec<Target>, String> {
        s.unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| endpoint(what, s))
            .collect()
    };
    let gateways = list("--gateway", m.get("gateway"))?;
    let gateway_ops = list("--gateway-ops", m.get("gateway-ops"))?;
    if !gateway_ops.is_empty() && gateway_ops.len() != gateways.len() {
        return Err(format!(
            "--gateway-ops names {} endpoints for {} gateways",
            gateway_ops.len(),
            gateways.len()
        ));
    }
    let default_targets = if !gateways.is_empty() {
        "direct,gateway"
    } else {
        "direct"
    };
    let targets: Vec<String> = m
        .get("targets")
        .unwrap_or(default_targets)
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for t in &targets {
        match t.as_str() {
            "direct" => {}
            "gateway" if !gateways.is_empty() => {}
            "gateway" => return Err("target gateway needs --gateway".into()),
            other => return Err(format!("unknown target {other:?} (direct, gateway)")),
        }
    }
    if targets.is_empty() {
        return Err("no targets".into());
    }
    let agents = m.f64_in("agents", nodes.len() as f64, 0.0, 1e6)? as usize;
    if agents == 0 || agents > nodes.len() {
        return Err(format!(
            "--agents must be within 1..{} (the seeded nodes)",
            nodes.len()
        ));
    }
    let hb_override = match m.get("agent-heartbeat-timeout") {
        Some(_) => {
            Some(m.f64_in("agent-heartbeat-timeout", 0.0, 0.0, 3600.0)?).filter(|v| *v > 0.0)
        }
        None => None,
    };
    let stop = m.string("outage-stop-cmd").filter(|s| !s.is_empty());
    let start = m.string("outage-start-cmd").filter(|s| !s.is_empty());
    if stop.is_some() != start.is_some() {
        return Err("--outage-stop-cmd and --outage-start-cmd go together".into());
    }
    Ok(Config {
        seed_file,
        nodes,
        ironic,
        relay,
        gateways,
        gateway_ops,
        targets,
        agents,
        unknown: m.f64_in("unknown", 0.0, 0.0, 1e6)? as usize,
        extra_macs: m.f64_in("extra-macs", 1.0, 0.0, 8.0)? as usize,
        ramp: m.f64_in("ramp", 30.0, 0.0, 3600.0)?,
        settle: m.f64_in("settle", 60.0, 0.0, 3600.0)?,
        steady: m.f64_in("steady", 60.0, 0.0, 3600.0)?,
        outage: m.f64_in("outage", 30.0, 0.0, 3600.0)?,
        recovery: m.f64_in("recovery", 120.0, 0.0, 3600.0)?,
        recovery_min: m.f64_in("recovery-min", 60.0, 0.0, 3600.0)?,
        ironic_log: m
            .get("ironic-log")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        hb_override,
        request_timeout: m.f64_in("request-timeout", 30.0, 0.0, 600.0)?.max(0.1),
        lookup_timeout: m.f64_in("lookup-timeout", 600.0, 0.0, 86400.0)?,
        restart_delay: m.f64_in("restart-delay", 30.0, 0.0, 3600.0)?,
        reset_cmd: m.string("reset-cmd").filter(|s| !s.is_empty()),
        outage_stop_cmd: stop,
        outage_start_cmd: start,
        outage_mode: m.string("outage-mode").unwrap_or_else(|| "restart".into()),
        cmd_timeout: m.f64_in("cmd-timeout", 180.0, 0.0, 3600.0)?,
        ready_timeout: m.f64_in("ready-timeout", 60.0, 0.0, 3600.0)?,
        pause: m.f64_in("pause", 3.0, 0.0, 600.0)?,
        out_dir: PathBuf::from(m.get("out").unwrap_or("target/bench")),
        label: m.string("label").unwrap_or_default(),
    })
}

// ------------------------------------------------------------------------------------------
// clock and per-second timeline (shared by the agents and the relay)

/// Timeline slots.
const TL_SENT: usize = 0;
const TL_ERR: usize = 1;
const TL_IRONIC: usize = 2;
const TL_HB_OK: usize = 3;
const TL_SLOTS: usize = 4;

struct Clock {
    t0: Instant,
    timeline: Mutex<Vec<[u64; TL_SLOTS]>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Clock {
    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }
    fn at(&self, t: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(t.max(0.0))
    }
    fn tick(&self, t: f64, slot: usize) {
        let sec = t.max(0.0) as usize;
        let mut tl = lock(&self.timeline);
        if tl.len() <= sec {
            tl.resize(sec + 1, [0; TL_SLOTS]);
        }
        tl[sec][slot] += 1;
    }
    fn slice(&self, from: f64, to: f64) -> Vec<[u64; TL_SLOTS]> {
        let tl = lock(&self.timeline);
        let a = (from.max(0.0) as usize).min(tl.len());
        let b = ((to.max(0.0) as usize) + 1).min(tl.len());
        tl[a..b.max(a)].to_vec()
    }
    /// One slot's counts for the whole seconds [a, b) (0 where nothing was counted).
    fn column(&self, slot: usize, a: usize, b: usize) -> Vec<u64> {
        let tl = lock(&self.timeline);
        (a..b)
            .map(|s| tl.get(s).map_or(0, |row| row[slot]))
            .collect()
    }
}

/// The sums of every `w` consecutive seconds (one sum of all of them when there are fewer).
/// The fewest agents that must see at least one failed lookup when Ironic mints `rate` tokens
/// a second and an agent gives a request up after `timeout` s, whatever the gateway does:
/// served in the order of their deadlines (their boots), one mint every 1/`rate` s and none
/// before its agent asked, an agent whose turn comes after its deadline fails at least once
/// (and its later retry is not charged here: the bound stays a lower one).
fn lookup_failure_floor(mut boots: Vec<f64>, rate: f64, timeout: f64) -> usize {
    boots.sort_by(f64::total_cmp);
    let (mut done_at, mut failing) = (f64::NEG_INFINITY, 0);
    for boot in boots {
        let next = done_at.max(boot) + 1.0 / rate;
        if next <= boot + timeout {
            done_at = next;
        } else {
            failing += 1;
        }
    }
    failing
}

fn window_sums(bins: &[u64], w: usize) -> Vec<u64> {
    if bins.len() <= w {
        return vec![bins.iter().sum()];
    }
    bins.windows(w).map(|s| s.iter().sum()).collect()
}

fn uniform(a: f64, b: f64) -> f64 {
    if b <= a {
        a
    } else {
        rand::thread_rng().gen_range(a..b)
    }
}

/// The first position of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ------------------------------------------------------------------------------------------
// the counting relay in front of Ironic

const ROUTES: [&str; 4] = ["root", "lookup", "heartbeat", "other"];

#[derive(Default)]
struct RelayStats {
    by_route: [AtomicU64; 4],
    connections: AtomicU64,
    refused: AtomicU64,
    connect_failed: AtomicU64,
    listener_closed: AtomicU64,
    unparsed: AtomicU64,
    upstream_down: AtomicBool,
}

impl RelayStats {
    fn snapshot(&self) -> [u64; 4] {
        let mut s = [0u64; 4];
        for (i, c) in self.by_route.iter().enumerate() {
            s[i] = c.load(Ordering::Relaxed);
        }
        s
    }
}

fn route_of(method: &str, path: &str) -> usize {
    let p = path.split(['?', '#']).next().unwrap_or("");
    if method == "GET" && (p == "/" || p.is_empty()) {
        0
    } else if p.starts_with("/v1/lookup") {
        1
    } else if p.starts_with("/v1/heartbeat/") {
        2
    } else {
        3
    }
}

enum Framing {
    Head,
    Fixed(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkCrlf(u8),
    Trailer,
    Lost,
}

/// Counts the requests in one client-to-Ironic byte stream.
struct ReqCounter {
    acc: Vec<u8>,
    state: Framing,
}

impl ReqCounter {
    fn new() -> ReqCounter {
        ReqCounter {
            acc: Vec::new(),
            state: Framing::Head,
        }
    }

    fn feed(&mut self, mut data: &[u8], stats: &RelayStats, clock: &Clock) {
        while !data.is_empty() {
            match &mut self.state {
                Framing::Lost => return,
                Framing::Head => {
                    if self.acc.is_empty() {
                        // tolerated empty lines between requests
                        let skip = data.iter().take_while(|b| **b == b'\r' || **b == b'\n');
                        let k = skip.count();
                        data = &data[k..];
                        if data.is_empty() {
                            return;
                        }
                    }
                    let before = self.acc.len();
                    let from = before.saturating_sub(3);
                    self.acc.extend_from_slice(data);
                    let Some(pos) = find(&self.acc[from..], b"\r\n\r\n") else {
                        if self.acc.len() > 1 << 20 {
                            stats.unparsed.fetch_add(1, Ordering::Relaxed);
                            self.state = Framing::Lost;
                        }
                        return;
                    };
                    let end = from + pos + 4;
                    data = &data[end - before..];
                    let mut hs = [httparse::EMPTY_HEADER; 96];
                    let mut r = httparse::Request::new(&mut hs);
                    let next = match r.parse(&self.acc[..end]) {
                        Ok(httparse::Status::Complete(_)) => {
                            let route = route_of(r.method.unwrap_or(""), r.path.unwrap_or(""));
                            stats.by_route[route].fetch_add(1, Ordering::Relaxed);
                            clock.tick(clock.now(), TL_IRONIC);
                            let mut next = Framing::Head;
                            for h in r.headers.iter() {
                                let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                                if h.name.eq_ignore_ascii_case("transfer-encoding")
                                    && v.contains("chunked")
                                {
                                    next = Framing::ChunkSize;
                                    break;
                                }
                                if h.name.eq_ignore_ascii_case("content-length") {
                                    match v.trim().parse::<u64>() {
                                        Ok(0) => {}
                                        Ok(n) => next = Framing::Fixed(n),
                                        Err(_) => next = Framing::Lost,
                                    }
                                }
                            }
                            next
                        }
                        _ => Framing::Lost,
                    };
                    if matches!(next, Framing::Lost) {
                        stats.unparsed.fetch_add(1, Ordering::Relaxed);
                    }
                    self.acc.clear();
                    self.state = next;
                }
                Framing::Fixed(n) => {
                    let k = (*n).min(data.len() as u64);
                    *n -= k;
                    data = &data[k as usize..];
                    if *n == 0 {
                        self.state = Framing::Head;
                    }
                }
                Framing::ChunkSize | Framing::Trailer => {
                    let Some(i) = data.iter().position(|b| *b == b'\n') else {
                        self.acc.extend_from_slice(data);
                        return;
                    };
                    self.acc.extend_from_slice(&data[..=i]);
                    data = &data[i + 1..];
                    let line = String::from_utf8_lossy(&self.acc).trim().to_string();
                    self.acc.clear();
                    if matches!(self.state, Framing::Trailer) {
                        if line.is_empty() {
                            self.state = Framing::Head;
                        }
                    } else {
                        let size = line.split(';').next().unwrap_or("").trim();
                        self.state = match u64::from_str_radix(size, 16) {
                            Ok(0) => Framing::Trailer,
                            Ok(n) => Framing::ChunkData(n),
                            Err(_) => {
                                stats.unparsed.fetch_add(1, Ordering::Relaxed);
                                Framing::Lost
                            }
                        };
                    }
                }
                Framing::ChunkData(n) => {
                    let k = (*n).min(data.len() as u64);
                    *n -= k;
                    data = &data[k as usize..];
                    if *n == 0 {
                        self.state = Framing::ChunkCrlf(2);
                    }
                }
                Framing::ChunkCrlf(k) => {
                    let take = (*k as usize).min(data.len());
                    *k -= take as u8;
                    data = &data[take..];
                    if *k == 0 {
                        self.state = Framing::ChunkSize;
                    }
                }
            }
        }
    }
}

async fn relay_conn(
    client: TcpStream,
    upstream: SocketAddr,
    stats: Arc<RelayStats>,
    clock: Arc<Clock>,
) {
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let _ = client.set_nodelay(true);
    let up = match tokio::time::timeout(Duration::from_secs(60), TcpStream::connect(upstream)).await
    {
        Ok(Ok(u)) => u,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            stats.upstream_down.store(true, Ordering::Relaxed);
            let _ = client.set_zero_linger();
            return;
        }
        _ => {
            stats.connect_failed.fetch_add(1, Ordering::Relaxed);
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = up.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = up.into_split();
    let to_ironic = async {
        let mut counter = ReqCounter::new();
        let mut buf = vec![0u8; 16384];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            counter.feed(&buf[..n], &stats, &clock);
            if uw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let to_client = async {
        let _ = tokio::io::copy(&mut ur, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    tokio::select! {
        _ = to_ironic => {}
        _ = to_client => {}
    }
}

async fn relay(
    listen: SocketAddr,
    upstream: SocketAddr,
    stats: Arc<RelayStats>,
    clock: Arc<Clock>,
    first: tokio::sync::oneshot::Sender<Result<(), String>>,
) {
    let mut first = Some(first);
    loop {
        let listener = loop {
            match TcpListener::bind(listen).await {
                Ok(l) => break l,
                Err(e) => {
                    if let Some(tx) = first.take() {
                        let _ = tx.send(Err(format!("relay: cannot listen on {listen}: {e}")));
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        stats.upstream_down.store(false, Ordering::Relaxed);
        if let Some(tx) = first.take() {
            let _ = tx.send(Ok(()));
        }
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((c, _)) => {
                        tokio::spawn(relay_conn(c, upstream, stats.clone(), clock.clone()));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                },
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            if stats.upstream_down.load(Ordering::Relaxed) {
                break;
            }
        }
        // Ironic refuses connections: so does the relay, until Ironic listens again
        drop(listener);
        stats.listener_closed.fetch_add(1, Ordering::Relaxed);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(upstream)).await
            {
                drop(s);
                break;
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Ironic's own view: its API log (one line per answer) and its node records

/// One answer in Ironic's API log (`ironic.api`'s request log), on the bench's clock.
struct LogAnswer {
    /// when Ironic logged it (as it finished the answer)
    t: f64,
    status: u16,
    /// a lookup that minted a token: a 200 without the conductor's warning that the node
    /// already has one (then the answer carries `"******"`)
    mint: bool,
}

/// Ironic's answers during one run, from its own log.
struct IronicLog {
    answers: Vec<LogAnswer>,
    /// the log's clock minus the bench's (s): Ironic logs local time
    offset_s: f64,
    /// lines read, and the harness's own requests left out
    lines: usize,
    harness: usize,
}

/// Where a run's part of Ironic's log starts, and the marker request that ties its clock to
/// the bench's: `GET /fleet-bench-mark/...` sent to Ironic directly (its 404 is logged).
struct LogMark {
    path: PathBuf,
    from: u64,
    marker: String,
    t: f64,
}

impl LogAnswer {
    fn is_5xx(&self) -> bool {
        self.status >= 500
    }
}

impl IronicLog {
    /// One count per whole second [a, b) of the bench's clock, of the answers `f` selects.
    fn column(&self, a: usize, b: usize, f: impl Fn(&LogAnswer) -> bool) -> Vec<u64> {
        let mut v = vec![0u64; b.saturating_sub(a)];
        for x in self.answers.iter().filter(|x| f(x)) {
            if x.t >= a as f64 {
                if let Some(n) = v.get_mut(x.t as usize - a) {
                    *n += 1;
                }
            }
        }
        v
    }

    fn between(&self, from: f64, to: f64) -> impl Iterator<Item = &LogAnswer> {
        self.answers.iter().filter(move |x| x.t >= from && x.t < to)
    }
}

/// Notes where the run's part of Ironic's log starts and sends the marker.
async fn log_mark(cfg: &Config, clock: &Clock, target: &str) -> Option<LogMark> {
    let path = cfg.ironic_log.clone()?;
    let from = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) => {
            println!(
                "  WARNING: Ironic's log {}: {e}: no Ironic-side counts",
                path.display()
            );
            return None;
        }
    };
    let marker = format!(
        "/fleet-bench-mark/{target}-{}",
        (clock.now() * 1000.0) as u64
    );
    let mut h = Client::new(cfg.ironic.clone());
    let sent = clock.now();
    let res = h
        .request(&RequestSpec::get(&marker), Duration::from_secs(10))
        .await;
    let t = (sent + clock.now()) / 2.0;
    if let Err(e) = res {
        println!(
            "  WARNING: the log marker to Ironic failed ({}): no Ironic-side counts",
            e.detail()
        );
        return None;
    }
    Some(LogMark {
        path,
        from,
        marker,
        t,
    })
}

/// Seconds of a naive `YYYY-MM-DD HH:MM:SS.fff` time (as if UTC: only differences count).
fn naive_secs(s: &str) -> Option<f64> {
    let (date, time) = s.split_once(' ')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let ss: f64 = t.next()?.parse().ok()?;
    // days from the civil date (H. Hinnant's algorithm)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60) as f64 + ss)
}

/// Reads the run's part of Ironic's log: `2026-01-01 10:49:55.591 PID LEVEL LOGGER [ctx]
/// msg`, where the API's msg is `IP - METHOD PATH - STATUS (MSms)`.
fn read_ironic_log(mark: &LogMark) -> Result<IronicLog, String> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(&mark.path)
        .map_err(|e| format!("cannot open {}: {e}", mark.path.display()))?;
    f.seek(std::io::SeekFrom::Start(mark.from))
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    f.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    // (log time, request id, path, status) of each answer; the lookups refused a new token
    let mut seen = Vec::new();
    let mut refused = std::collections::HashSet::new();
    let mut mark_at = None;
    let mut lines = 0;
    for line in text.lines() {
        let Some(ts) = line.get(..23).and_then(naive_secs) else {
            continue; // a traceback's continuation
        };
        lines += 1;
        let mut w = line[23..].split_whitespace();
        let (_pid, level, logger) = (w.next(), w.next(), w.next());
        let Some((ctx, msg)) = line.split_once("] ") else {
            continue;
        };
        let req = ctx.split_whitespace().find(|x| x.starts_with("req-"));
        if logger == Some("ironic.conductor.manager")
            && msg.starts_with("An agent token generation request is being refused")
        {
            refused.extend(req.map(str::to_string));
            continue;
        }
        if level != Some("INFO") || logger != Some("ironic.api") {
            continue;
        }
        let mut parts = msg.splitn(2, " - ");
        let (_ip, rest) = (parts.next(), parts.next().unwrap_or(""));
        let Some((req_line, status)) = rest.rsplit_once(" - ") else {
            continue;
        };
        let status: u16 = status.split(' ').next().unwrap_or("").parse().unwrap_or(0);
        let (method, path) = req_line.split_once(' ').unwrap_or((req_line, ""));
        if path == mark.marker {
            mark_at = Some(ts);
        }
        seen.push((
            ts,
            req.map(str::to_string),
            method.to_string(),
            path.to_string(),
            status,
        ));
    }
    let mark_at = mark_at.ok_or_else(|| {
        format!(
            "the marker {} is not in {} (is Ironic's request log on?)",
            mark.marker,
            mark.path.display()
        )
    })?;
    let offset_s = mark_at - mark.t;
    let mut answers = Vec::new();
    let mut harness = 0;
    for (ts, req, method, path, status) in seen {
        // the marker, and ironic-peer-up.sh's readiness probe after each (re)start
        if path.starts_with("/fleet-bench-mark/") || path == "/v1/drivers" {
            harness += 1;
            continue;
        }
        let lookup = route_of(&method, &path) == 1;
        answers.push(LogAnswer {
            t: ts - offset_s,
            status,
            mint: lookup && status == 200 && !req.is_some_and(|r| refused.contains(&r)),
        });
    }
    Ok(IronicLog {
        answers,
        offset_s,
        lines,
        harness,
    })
}

/// The nodes whose `driver_internal_info` holds an agent token now (Ironic's API masks its
/// value), asked of Ironic directly, page by page.
async fn ironic_token_holders(
    ironic: &Target,
) -> Result<std::collections::BTreeSet<String>, String> {
    const PAGE: usize = 500;
    let mut holders = std::collections::BTreeSet::new();
    let mut marker = String::new();
    let mut h = Client::new(ironic.clone());
    loop {
        let mut path = format!("/v1/nodes?fields=uuid,driver_internal_info&limit={PAGE}");
        if !marker.is_empty() {
            let _ = write!(path, "&marker={marker}");
        }
        let headers = [
            ("Accept", "application/json"),
            ("X-OpenStack-Ironic-API-Version", "1.68"),
        ];
        let r = h
            .request(
                &RequestSpec::get(&path).headers(&headers),
                Duration::from_secs(60),
            )
            .await
            .map_err(|e| format!("GET {path}: {}", e.detail()))?;
        if r.status != 200 {
            return Err(format!("GET {path}: status {}", r.status));
        }
        let v: Value = serde_json::from_slice(r.bytes()).map_err(|e| format!("GET {path}: {e}"))?;
        let nodes = v
            .get("nodes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for n in &nodes {
            let Some(uuid) = n.get("uuid").and_then(Value::as_str) else {
                continue;
            };
            marker = uuid.to_string();
            let token = n.pointer("/driver_internal_info/agent_secret_token");
            if token.and_then(Value::as_str).is_some_and(|t| !t.is_empty()) {
                holders.insert(uuid.to_string());
            }
        }
        if nodes.len() < PAGE {
            return Ok(holders);
        }
    }
}

// ------------------------------------------------------------------------------------------
// agents

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Root,
    Lookup,
    Heartbeat,
    Probe,
}

const KINDS: [Kind; 4] = [Kind::Root, Kind::Lookup, Kind::Heartbeat, Kind::Probe];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Root => "GET /",
            Kind::Lookup => "lookup",
            Kind::Heartbeat => "heartbeat",
            Kind::Probe => "probe",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Kind::Root => "root",
            Kind::Lookup => "lookup",
            Kind::Heartbeat => "heartbeat",
            Kind::Probe => "probe",
        }
    }
}

const P_BOOT: u8 = 0;
const P_STEADY: u8 = 1;
const P_OUTAGE: u8 = 2;
const P_RECOVERY: u8 = 3;
const PHASES: [&str; 4] = ["boot", "steady", "outage", "recovery"];

struct AgentSpec {
    enrolled: bool,
    /// the node the lookup must find
    uuid: Option<String>,
    lookup_path: String,
    callback_url: String,
    boot_at: f64,
}

#[derive(Default, Clone)]
struct AgentRec {
    boots: u32,
    lookup_ok_at: Option<f64>,
    token: bool,
    bricked: Option<u8>,
    no_token: bool,
    heartbeater_died: bool,
    first_hb_ok: Option<f64>,
    hb_ok: u64,
    hb_err: u64,
    retry_phases: u8,
    /// the last heartbeat failed: the agent is in the 5-10 s retry mode now
    in_retry: bool,
    /// in the retry mode when Ironic came back
    in_retry_at_up: bool,
    ok_after_up: Option<f64>,
    errors: u64,
}

impl AgentRec {
    fn lost(&self) -> bool {
        self.bricked.is_some() || self.heartbeater_died
    }
}

#[derive(Default)]
struct RunState {
    recs: Vec<AgentRec>,
    /// (kind, phase, outcome) -> count, enrolled agents
    counts: BTreeMap<(Kind, u8, String), u64>,
    /// the same for agents whose machine is not enrolled
    unknown_counts: BTreeMap<(Kind, u8, String), u64>,
    /// latency (µs) of answered requests, enrolled agents
    lat: BTreeMap<(Kind, u8), Vec<u32>>,
    t_up: Option<f64>,
    hb_timeouts: BTreeMap<String, u64>,
    /// the first transport errors, for diagnosis
    error_samples: Vec<String>,
    /// lookups that answered another node than the agent's
    wrong_node: u64,
    /// the first body of each error status, per request kind
    status_samples: BTreeMap<String, String>,
}

struct RunCtx {
    cfg: Arc<Config>,
    /// agent `i` talks to `eps[i % eps.len()]`
    eps: Vec<Target>,
    clock: Arc<Clock>,
    phase: AtomicU8,
    specs: Vec<AgentSpec>,
    st: Mutex<RunState>,
}

struct LookupData {
    uuid: String,
    hb_timeout: f64,
    token: Option<String>,
}

fn parse_lookup(body: &[u8]) -> Option<LookupData> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let uuid = v.pointer("/node/uuid")?.as_str()?.to_string();
    let config = v.get("config")?;
    let hb_timeout = config.get("heartbeat_timeout")?.as_f64()?;
    let token = config
        .get("agent_token")
        .and_then(Value::as_str)
        .map(str::to_string);
    Some(LookupData {
        uuid,
        hb_timeout,
        token,
    })
}

fn parse_version(body: &[u8]) -> Option<(u32, u32)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let s = v.pointer("/default_version/version")?.as_str()?;
    let (a, b) = s.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn vstr(v: (u32, u32)) -> String {
    format!("{}.{}", v.0, v.1)
}

/// Python's json.dumps of a str (ASCII content here).
fn pystr(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

impl RunCtx {
    fn ep(&self, idx: usize) -> &Target {
        &self.eps[idx % self.eps.len()]
    }

    fn phase(&self) -> u8 {
        self.phase.load(Ordering::Relaxed)
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.cfg.request_timeout)
    }

    fn rec<F: FnOnce(&mut AgentRec)>(&self, idx: usize, f: F) {
        let mut st = lock(&self.st);
        if let Some(r) = st.recs.get_mut(idx) {
            f(r);
        }
    }

    /// Record one request; returns whether the agent sees it as an error.
    fn record(
        &self,
        idx: usize,
        kind: Kind,
        phase: u8,
        t_send: f64,
        res: &Result<Reply, HttpError>,
        started: Instant,
    ) -> bool {
        let enrolled = self.specs[idx].enrolled;
        let (outcome, error) = match res {
            Ok(r) => {
                let ok = match kind {
                    Kind::Root => r.status == 200,
                    Kind::Lookup => r.status == 200,
                    Kind::Heartbeat => r.status == 202,
                    Kind::Probe => true,
                };
                (r.status.to_string(), !ok)
            }
            Err(e) => (e.label().to_string(), true),
        };
        // an unenrolled machine's lookup 404 is what Ironic must answer: not counted as an error
        let expected = !enrolled && kind == Kind::Lookup && outcome == "404";
        if error && !expected {
            self.clock.tick(t_send, TL_ERR);
        }
        let mut st = lock(&self.st);
        match res {
            Err(e) => {
                if st.error_samples.len() < 20 {
                    let what = format!("t={:.1}s {} {}", t_send, kind.name(), e.detail());
                    st.error_samples.push(what);
                }
            }
            Ok(r) if error && !expected => {
                let key = format!("{} {} {}", PHASES[phase as usize], kind.name(), r.status);
                st.status_samples.entry(key).or_insert_with(|| {
                    String::from_utf8_lossy(r.bytes())
                        .chars()
                        .take(400)
                        .collect()
                });
            }
            Ok(_) => {}
        }
        let map = if enrolled {
            &mut st.counts
        } else {
            &mut st.unknown_counts
        };
        *map.entry((kind, phase, outcome)).or_insert(0) += 1;
        if enrolled {
            if res.is_ok() {
                let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
                st.lat.entry((kind, phase)).or_default().push(us);
            }
            if error {
                if let Some(r) = st.recs.get_mut(idx) {
                    r.errors += 1;
                }
            }
        }
        error
    }

    /// Send one request of an agent and record it; (answer, whether the agent sees an error).
    async fn send(
        &self,
        idx: usize,
        http: &mut Client,
        kind: Kind,
        req: &RequestSpec,
    ) -> (Result<Reply, HttpError>, bool) {
        let phase = self.phase();
        let t = self.clock.now();
        self.clock.tick(t, TL_SENT);
        let started = Instant::now();
        let res = http.request(req, self.timeout()).await;
        let err = self.record(idx, kind, phase, t, &res, started);
        (res, err)
    }

    /// IPA's _get_ironic_api_version: GET / until it succeeds once; 1.31 meanwhile.
    async fn api_version(
        &self,
        idx: usize,
        http: &mut Client,
        cached: &mut Option<(u32, u32)>,
    ) -> (u32, u32) {
        if let Some(v) = *cached {
            return v;
        }
        let h = [
            ("User-Agent", USER_AGENT),
            ("Accept-Encoding", "gzip, deflate"),
            ("Accept", "application/json"),
            ("Connection", "keep-alive"),
            ("Content-Type", "application/json"),
        ];
        let req = RequestSpec::get("/").headers(&h);
        let (res, _) = self.send(idx, http, Kind::Root, &req).await;
        match res.ok().and_then(|r| parse_version(r.bytes())) {
            Some(v) => {
                *cached = Some(v);
                v
            }
            None => MIN_IRONIC_VERSION,
        }
    }
}

async fn agent(ctx: Arc<RunCtx>, idx: usize) {
    let spec = &ctx.specs[idx];
    tokio::time::sleep_until(ctx.clock.at(spec.boot_at).into()).await;
    loop {
        ctx.rec(idx, |r| r.boots += 1);
        match boot(&ctx, idx).await {
            BootEnd::Restart => {
                tokio::time::sleep(Duration::from_secs_f64(ctx.cfg.restart_delay)).await;
            }
            BootEnd::Stopped => return,
        }
    }
}

enum BootEnd {
    /// the lookup timed out: IPA exits, systemd starts it again
    Restart,
    /// locked down or heartbeater dead: nothing more from this agent
    Stopped,
}

async fn boot(ctx: &RunCtx, idx: usize) -> BootEnd {
    let spec = &ctx.specs[idx];
    let cfg = &ctx.cfg;
    let mut http = Client::new(ctx.ep(idx).clone());
    let mut version: Option<(u32, u32)> = None;
    let started = Instant::now();
    let mut attempt: i32 = 0;
    let mut lock_pause = 0.0;
    // ---- lookup (tenacity: retry while False, stop_after_delay(lookup_timeout))
    let data = loop {
        attempt += 1;
        let v = ctx.api_version(idx, &mut http, &mut version).await;
        let hv = vstr(v.min(AGENT_TOKEN_VERSION));
        let h = [
            ("User-Agent", USER_AGENT),
            ("Accept-Encoding", "gzip, deflate"),
            ("Accept", "application/json"),
            ("Connection", "keep-alive"),
            ("X-OpenStack-Ironic-API-Version", hv.as_str()),
            ("Content-Type", "application/json"),
        ];
        let req = RequestSpec::get(&spec.lookup_path).headers(&h);
        let (res, _) = ctx.send(idx, &mut http, Kind::Lookup, &req).await;
        match res {
            Ok(r) if r.status == 409 => {
                lock_pause = if lock_pause == 0.0 {
                    5.0
                } else if lock_pause == 5.0 {
                    10.0
                } else {
                    30.0
                };
                tokio::time::sleep(Duration::from_secs_f64(lock_pause)).await;
            }
            Ok(r) if r.status == 200 => {
                if let Some(d) = parse_lookup(r.bytes()) {
                    break d;
                }
            }
            _ => {}
        }
        if started.elapsed().as_secs_f64() >= cfg.lookup_timeout {
            return BootEnd::Restart;
        }
        let high = 2f64
            .powi(attempt - 1)
            .clamp(LOOKUP_MIN_WAIT, LOOKUP_MAX_WAIT);
        tokio::time::sleep(Duration::from_secs_f64(uniform(LOOKUP_MIN_WAIT, high))).await;
    };
    // ---- process_lookup_data
    if spec.uuid.as_deref() != Some(data.uuid.as_str()) {
        lock(&ctx.st).wrong_node += 1;
    }
    let now = ctx.clock.now();
    let phase = ctx.phase();
    let token = match data.token {
        Some(t) if t.len() >= 32 => Some(t),
        Some(t) if t == "******" => {
            // no token from the command line: FATAL, lockdown
            ctx.rec(idx, |r| {
                r.lookup_ok_at = Some(now);
                r.bricked = Some(phase);
            });
            return BootEnd::Stopped;
        }
        _ => None,
    };
    let has_token = token.is_some();
    ctx.rec(idx, |r| {
        r.lookup_ok_at = Some(now);
        r.token = has_token;
        r.no_token = !has_token;
    });
    let hb_timeout = cfg.hb_override.unwrap_or(data.hb_timeout);
    {
        let mut st = lock(&ctx.st);
        *st.hb_timeouts
            .entry(format!("{}", data.hb_timeout))
            .or_insert(0) += 1;
    }
    // ---- heartbeater start: set_agent_advertise_addr -> a plain GET of the API URL
    let mut probe = Client::new(ctx.ep(idx).clone());
    let h = [
        ("User-Agent", USER_AGENT),
        ("Accept-Encoding", "gzip, deflate"),
        ("Accept", "*/*"),
        ("Connection", "keep-alive"),
    ];
    let req = RequestSpec::get("/").headers(&h);
    let (res, _) = ctx.send(idx, &mut probe, Kind::Probe, &req).await;
    drop(probe);
    if res.is_err() {
        // no reachable API URL, no advertise address: LookupAgentIPError ends the thread
        ctx.rec(idx, |r| r.heartbeater_died = true);
        return BootEnd::Stopped;
    }
    // ---- heartbeats
    let path = format!("/v1/heartbeat/{}", data.uuid);
    let mut next = Instant::now();
    loop {
        tokio::time::sleep_until(next.into()).await;
        let v = ctx.api_version(idx, &mut http, &mut version).await;
        let mut body = format!("{{\"callback_url\": {}", pystr(&spec.callback_url));
        if v >= AGENT_TOKEN_VERSION {
            match &token {
                Some(t) => {
                    let _ = write!(body, ", \"agent_token\": {}", pystr(t));
                }
                None => body.push_str(", \"agent_token\": null"),
            }
        }
        if v >= AGENT_VERSION_VERSION {
            let _ = write!(body, ", \"agent_version\": {}", pystr(IPA_VERSION));
        }
        body.push('}');
        let hv = vstr(v.min(MAX_KNOWN_VERSION));
        let h = [
            ("User-Agent", USER_AGENT),
            ("Accept-Encoding", "gzip, deflate"),
            ("Accept", "application/json"),
            ("Connection", "keep-alive"),
            ("X-OpenStack-Ironic-API-Version", hv.as_str()),
            ("Content-Type", "application/json"),
        ];
        let phase = ctx.phase();
        let req = RequestSpec::new("POST", &path).headers(&h).body(body);
        let (res, err) = ctx.send(idx, &mut http, Kind::Heartbeat, &req).await;
        let done = ctx.clock.now();
        let interval = if err {
            ctx.rec(idx, |r| {
                r.hb_err += 1;
                r.retry_phases |= 1 << phase;
                r.in_retry = true;
            });
            ERROR_INTERVAL * uniform(1.0, 2.0)
        } else {
            ctx.clock.tick(done, TL_HB_OK);
            let mut st = lock(&ctx.st);
            let t_up = st.t_up;
            if let Some(r) = st.recs.get_mut(idx) {
                r.hb_ok += 1;
                r.in_retry = false;
                if r.first_hb_ok.is_none() {
                    r.first_hb_ok = Some(done);
                }
                if let Some(up) = t_up {
                    if done >= up && r.ok_after_up.is_none() {
                        r.ok_after_up = Some(done);
                    }
                }
            }
            hb_timeout * uniform(0.3, 0.6)
        };
        drop(res);
        next = Instant::now() + Duration::from_secs_f64(interval);
    }
}

// ------------------------------------------------------------------------------------------
// helpers: commands, the gateway's ops endpoint

async fn run_cmd(what: &str, cmd: &str, target: &str, limit: f64) -> Result<f64, String> {
    let t0 = Instant::now();
    println!("  [{what}] $ FLEET_TARGET={target} {cmd}");
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("FLEET_TARGET", target)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("{what}: cannot run sh: {e}"))?;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let took = t0.elapsed().as_secs_f64();
                if status.success() {
                    println!("  [{what}] done in {took:.1} s");
                    return Ok(took);
                }
                return Err(format!("{what}: `{cmd}` failed ({status})"));
            }
            Ok(None) => {}
            Err(e) => return Err(format!("{what}: {e}")),
        }
        if t0.elapsed().as_secs_f64() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what}: `{cmd}` still running after {limit:.0} s"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ops_get(ops: &Target, path: &str) -> Result<String, String> {
    let mut h = Client::new(ops.clone());
    match h
        .request(&RequestSpec::get(path), Duration::from_secs(5))
        .await
    {
        Ok(r) if r.status == 200 => Ok(String::from_utf8_lossy(r.bytes()).into_owned()),
        Ok(r) => Err(format!("{}{path}: status {}", ops.url, r.status)),
        Err(e) => Err(format!("{}{path}: {}", ops.url, e.detail())),
    }
}

async fn wait_gateway_ready(ops: &Target, limit: f64) -> Result<(), String> {
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed().as_secs_f64() < limit {
        match ops_get(ops, "/status").await {
            Ok(body) => {
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                if v.pointer("/upstream/versions_known") == Some(&Value::Bool(true)) {
                    return Ok(());
                }
                last = body;
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!(
        "the gateway is not ready after {limit:.0} s: {last}"
    ))
}

/// The gateway's `ironic_edge_*` samples.
async fn gateway_metrics(ops: &Target) -> Option<Samples> {
    ops_get(ops, "/metrics")
        .await
        .ok()
        .map(|t| prom::parse(&t, "ironic_edge_"))
}

/// The gateways' `ironic_edge_*` samples as one page (counters summed; `None` if one of
/// them did not answer, or there are none).
async fn gateways_metrics(ops: &[Target]) -> Option<Samples> {
    if ops.is_empty() {
        return None;
    }
    let mut pages = Vec::with_capacity(ops.len());
    for o in ops {
        pages.push(gateway_metrics(o).await?);
    }
    Some(prom::merge(&pages, &[KEPT_GAUGE]))
}

/// The counters at each phase boundary: the relay's, and the gateways' `/metrics`.
#[derive(Default)]
struct Marks {
    relay: Vec<[u64; 4]>,
    gateway: Vec<Option<Samples>>,
}

impl Marks {
    async fn take(&mut self, relay: &RelayStats, ops: &[Target]) {
        self.relay.push(relay.snapshot());
        self.gateway.push(gateways_metrics(ops).await);
    }
}

/// The gateway's gauge of kept heartbeats waiting for the relay (of every gateway process:
/// the relay counts them in Redis).
const KEPT_GAUGE: &str = "ironic_edge_heartbeats_kept";

/// The outage mode that kills the Redis master instead of stopping Ironic.
const REDIS_MASTER_KILL: &str = "redis-master-kill";
/// How often the gateways' `/metrics` are read around a master kill.
const FAILOVER_SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// Each gateway's `/metrics`, read every [`FAILOVER_SAMPLE_EVERY`] until stopped (a
/// gateway that does not answer is skipped for that sample).
struct Sampler {
    points: Arc<Mutex<Vec<Vec<failover::Point>>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(ops: &[Target], clock: Arc<Clock>) -> Sampler {
        let points = Arc::new(Mutex::new(vec![Vec::new(); ops.len()]));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, st, ops) = (points.clone(), stop.clone(), ops.to_vec());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(FAILOVER_SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !st.load(Ordering::Relaxed) {
                tick.tick().await;
                for (i, o) in ops.iter().enumerate() {
                    if let Some(m) = gateway_metrics(o).await {
                        let point = failover::Point::of(clock.now(), &m);
                        lock(&p)[i].push(point);
                    }
                }
            }
        });
        Sampler { points, stop, task }
    }

    async fn finish(self) -> Vec<Vec<failover::Point>> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        std::mem::take(&mut *lock(&self.points))
    }
}

/// How much one sample (labels included) grew from `m0` to `m1`.
fn sample_delta(m0: &Samples, m1: &Samples, key: &str) -> f64 {
    m1.get(key).copied().unwrap_or(0.0) - m0.get(key).copied().unwrap_or(0.0)
}

/// One gateway's recovery from a master kill, and its samples (`[t from the kill, master
/// switches, master known, master distrusted, local heartbeat answers, forwarded, store
/// errors]`, counters as read).
fn failover_json(ops: &Target, points: &[failover::Point], t_kill: f64) -> Value {
    let r = failover::recovery(points, t_kill);
    let samples: Vec<Value> = points
        .iter()
        .map(|p| {
            json!([
                ((p.t - t_kill) * 1000.0).round() / 1000.0,
                p.switches,
                p.known,
                p.distrusted,
                p.local,
                p.forwarded,
                p.store_errors
            ])
        })
        .collect();
    json!({
        "ops": ops.url,
        "noticed_after_s": r.noticed_s,
        "master_switch_seen_after_s": r.switch_seen_s,
        "master_switches": r.switches,
        "master_unknown_for_s": r.master_unknown_s,
        "store_errors": r.store_errors,
        "healthy_again_after_s": r.healthy_again_s,
        "local_again_after_s": r.local_again_s,
        "heartbeats_forwarded_until_local": r.forwarded_until_local,
        "undisturbed": r.undisturbed,
        "samples": {"every_ms": FAILOVER_SAMPLE_EVERY.as_millis() as u64,
                    "columns": ["t_from_kill_s", "master_switches", "master_known", "master_distrusted",
                                "local_answers_from_redis", "heartbeats_forwarded", "store_errors"],
                    "rows": samples},
    })
}

// ------------------------------------------------------------------------------------------
// one run against one target

/// `{"p50", "p99", "max"}` of some durations (s), nearest rank.
fn quantiles(v: Vec<f64>) -> Value {
    let v = sorted_f64(v);
    json!({"p50": percentile(&v, 50.0), "p99": percentile(&v, 99.0), "max": v.last().copied()})
}

struct PhaseTimes {
    start: f64,
    /// [boot end, steady end, outage end (Ironic back), recovery end]
    ends: [Option<f64>; 4],
}

async fn run_target(
    cfg: Arc<Config>,
    target: &str,
    clock: Arc<Clock>,
    relay: Arc<RelayStats>,
) -> Result<Value, String> {
    println!("\n== target {target}");
    if let Some(cmd) = &cfg.reset_cmd {
        run_cmd("reset", cmd, target, cfg.cmd_timeout).await?;
    }
    let (eps, ops) = if target == "gateway" {
        if cfg.gateways.is_empty() {
            return Err("no --gateway".into());
        }
        for o in &cfg.gateway_ops {
            wait_gateway_ready(o, cfg.ready_timeout).await?;
        }
        (cfg.gateways.clone(), cfg.gateway_ops.clone())
    } else {
        (vec![cfg.relay.clone()], Vec::new())
    };
    let urls = eps
        .iter()
        .map(|e| e.url.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    // Ironic must answer before the agents boot (through each gateway)
    for ep in &eps {
        let t0 = Instant::now();
        loop {
            let mut h = Client::new(ep.clone());
            match h
                .request(&RequestSpec::get("/"), Duration::from_secs(5))
                .await
            {
                Ok(r) if r.status == 200 => break,
                _ if t0.elapsed().as_secs_f64() > cfg.ready_timeout => {
                    return Err(format!("{target}: {} does not answer GET /", ep.url))
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
    let log_mark = log_mark(&cfg, &clock, target).await;

    // the fleet: enrolled agents first, then machines that are not enrolled
    let mut specs = Vec::new();
    let total = cfg.agents + cfg.unknown;
    for i in 0..total {
        let k = i + 1;
        let (enrolled, uuid, mut macs) = if i < cfg.agents {
            let n = &cfg.nodes[i];
            (true, Some(n.uuid.clone()), n.macs.clone())
        } else {
            let mac = format!(
                "52:54:fc:{:02x}:{:02x}:{:02x}",
                (k >> 16) & 255,
                (k >> 8) & 255,
                k & 255
            );
            (false, None, vec![mac])
        };
        // the machine's other NICs (not enrolled as ports)
        for e in 0..cfg.extra_macs {
            macs.push(format!(
                "52:54:{:02x}:{:02x}:{:02x}:{:02x}",
                0xfd - e,
                (k >> 16) & 255,
                (k >> 8) & 255,
                k & 255
            ));
        }
        let list = macs.join(",").replace(':', "%3A").replace(',', "%2C");
        specs.push(AgentSpec {
            enrolled,
            uuid,
            lookup_path: format!("/v1/lookup?addresses={list}"),
            callback_url: format!(
                "https://127.{}.{}.{}:9999",
                (k >> 16) & 255,
                (k >> 8) & 255,
                k & 255
            ),
            boot_at: 0.0,
        });
    }
    let t_start = clock.now() + 0.5;
    for s in specs.iter_mut() {
        s.boot_at = t_start + uniform(0.0, cfg.ramp);
    }
    let ctx = Arc::new(RunCtx {
        cfg: cfg.clone(),
        eps: eps.clone(),
        clock: clock.clone(),
        phase: AtomicU8::new(P_BOOT),
        st: Mutex::new(RunState {
            recs: vec![AgentRec::default(); total],
            ..RunState::default()
        }),
        specs,
    });
    let mut marks = Marks::default();
    marks.take(&relay, &ops).await;
    if !ops.is_empty() && marks.gateway[0].is_none() {
        return Err(format!("{target}: cannot read the gateways' /metrics"));
    }
    println!(
        "  {} enrolled + {} unenrolled agents booting over {:.0} s against {} ({})",
        cfg.agents, cfg.unknown, cfg.ramp, target, urls
    );
    let handles: Vec<_> = (0..total)
        .map(|i| tokio::spawn(agent(ctx.clone(), i)))
        .collect();
    tokio::time::sleep_until(clock.at(t_start).into()).await;

    let all_up = |ctx: &RunCtx| -> (usize, usize) {
        let st = lock(&ctx.st);
        let mut up = 0;
        let mut lost = 0;
        for (i, r) in st.recs.iter().enumerate() {
            if !ctx.specs[i].enrolled {
                continue;
            }
            if r.lost() {
                lost += 1;
            } else if r.first_hb_ok.is_some() {
                up += 1;
            }
        }
        (up, lost)
    };
    // ---- boot: until every enrolled agent heartbeated (or is lost), at most ramp + settle
    let boot_deadline = t_start + cfg.ramp + cfg.settle;
    let mut fleet_up: Option<f64> = None;
    let mut last_print = Instant::now();
    loop {
        let (up, lost) = all_up(&ctx);
        let now = clock.now();
        if up + lost >= cfg.agents && now >= t_start + cfg.ramp {
            fleet_up = Some(now - t_start);
            break;
        }
        if now >= boot_deadline {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            println!(
                "  t+{:.0}s: {up}/{} agents heartbeating, {lost} lost",
                now - t_start,
                cfg.agents
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut times = PhaseTimes {
        start: t_start,
        ends: [None; 4],
    };
    times.ends[0] = Some(clock.now());
    marks.take(&relay, &ops).await;
    let (up, lost) = all_up(&ctx);
    match fleet_up {
        Some(t) => println!("  fleet up after {t:.1} s ({up} heartbeating, {lost} lost)"),
        None => println!(
            "  fleet NOT fully up after {:.0} s: {up}/{} heartbeating, {lost} lost",
            cfg.ramp + cfg.settle,
            cfg.agents
        ),
    }
    // ---- steady
    ctx.phase.store(P_STEADY, Ordering::Relaxed);
    println!("  steady state: {:.0} s", cfg.steady);
    let master_kill = cfg.outage_mode == REDIS_MASTER_KILL && cfg.outage_stop_cmd.is_some();
    // a few samples before the kill: the baseline
    let lead = if master_kill {
        cfg.steady.min(2.0)
    } else {
        0.0
    };
    tokio::time::sleep(Duration::from_secs_f64(cfg.steady - lead)).await;
    let sampler = (master_kill && !ops.is_empty()).then(|| Sampler::start(&ops, clock.clone()));
    tokio::time::sleep(Duration::from_secs_f64(lead)).await;
    times.ends[1] = Some(clock.now());
    marks.take(&relay, &ops).await;
    // ---- outage
    let mut outage = Map::new();
    if let (Some(stop), Some(start)) = (&cfg.outage_stop_cmd, &cfg.outage_start_cmd) {
        ctx.phase.store(P_OUTAGE, Ordering::Relaxed);
        let t_out = clock.now();
        if master_kill {
            println!(
                "  outage ({}): killing the Redis master, restarting it after {:.0} s",
                cfg.outage_mode, cfg.outage
            );
        } else {
            println!(
                "  outage ({}): stopping Ironic for {:.0} s",
                cfg.outage_mode, cfg.outage
            );
        }
        let stop_took = run_cmd("outage stop", stop, target, cfg.cmd_timeout).await;
        let stop_took = match stop_took {
            Ok(t) => t,
            Err(e) => {
                for h in &handles {
                    h.abort();
                }
                return Err(e);
            }
        };
        // the kill is done once the command returned (it asks a sentinel for the master, then
        // kills it: a few ms after t_out)
        let t_kill = t_out + stop_took;
        tokio::time::sleep_until(clock.at(t_out + cfg.outage).into()).await;
        let t_start_cmd = clock.now();
        if let Err(e) = run_cmd("outage start", start, target, cfg.cmd_timeout).await {
            for h in &handles {
                h.abort();
            }
            return Err(e);
        }
        let t_up = clock.now();
        {
            let mut st = lock(&ctx.st);
            st.t_up = Some(t_up);
            for r in st.recs.iter_mut() {
                r.in_retry_at_up = r.in_retry;
            }
        }
        ctx.phase.store(P_RECOVERY, Ordering::Relaxed);
        times.ends[2] = Some(t_up);
        marks.take(&relay, &ops).await;
        println!(
            "  {} after {:.1} s; measuring at least {:.0} s, until every agent's next \
             202 and the relay had nothing left (at most {:.0} s)",
            if master_kill {
                "the killed master restarted"
            } else {
                "Ironic back"
            },
            t_up - t_out,
            cfg.recovery_min,
            cfg.recovery.max(cfg.recovery_min)
        );
        // ---- recovery: at least recovery_min (Ironic's load in the minute after its return),
        // until every agent had a 202 and the gateway's relay had nothing kept left
        let deadline = t_up + cfg.recovery.max(cfg.recovery_min);
        let mut recovered_at = None;
        let mut drained_at = None;
        // the gateway's gauge (None: no gateway, or one without the gauge)
        let mut kept = marks.gateway[3]
            .as_ref()
            .and_then(|m| m.get(KEPT_GAUGE).copied());
        let mut kept_max = kept;
        let mut polled = Instant::now();
        loop {
            let now = clock.now();
            if recovered_at.is_none() {
                let st = lock(&ctx.st);
                let pending = st
                    .recs
                    .iter()
                    .enumerate()
                    .filter(|(i, r)| ctx.specs[*i].enrolled && !r.lost() && r.ok_after_up.is_none())
                    .count();
                if pending == 0 {
                    recovered_at = Some(now);
                }
            }
            if let (false, Some(_)) = (ops.is_empty(), kept) {
                if polled.elapsed() >= Duration::from_millis(500) {
                    polled = Instant::now();
                    kept = gateways_metrics(&ops)
                        .await
                        .and_then(|m| m.get(KEPT_GAUGE).copied())
                        .or(kept);
                    if let (Some(k), Some(m)) = (kept, kept_max) {
                        kept_max = Some(m.max(k));
                    }
                }
                if kept == Some(0.0) && drained_at.is_none() {
                    drained_at = Some(now);
                }
            }
            let relay_done = kept.is_none() || drained_at.is_some();
            // after a master kill: until every gateway is healthy again (no Redis failure, a
            // master it knows and trusts), too
            let gateways_back = sampler.as_ref().is_none_or(|sm| {
                lock(&sm.points)
                    .iter()
                    .all(|pts| failover::recovery(pts, t_kill).healthy_again_s.is_some())
            });
            if now >= deadline
                || (recovered_at.is_some()
                    && relay_done
                    && gateways_back
                    && now >= t_up + cfg.recovery_min)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        times.ends[3] = Some(clock.now());
        marks.take(&relay, &ops).await;
        if kept.is_some() {
            outage.insert(
                "relay_kept_at_up".into(),
                json!(marks.gateway[3].as_ref().and_then(|m| m.get(KEPT_GAUGE))),
            );
            outage.insert("relay_kept_max".into(), json!(kept_max));
            outage.insert(
                "relay_drained_after_up_s".into(),
                json!(drained_at.map(|d| d - t_up)),
            );
        }
        if let Some(sm) = sampler {
            let series = sm.finish().await;
            let per_gateway: Vec<Value> = series
                .iter()
                .zip(&ops)
                .map(|(pts, o)| failover_json(o, pts, t_kill))
                .collect();
            outage.insert("redis_master_killed_s".into(), json!(t_kill - t_start));
            outage.insert("gateways".into(), Value::Array(per_gateway));
        }
        outage.insert("mode".into(), json!(cfg.outage_mode));
        outage.insert("stop_started_s".into(), json!(t_out - t_start));
        outage.insert("stop_cmd_s".into(), json!(stop_took));
        outage.insert("start_cmd_started_s".into(), json!(t_start_cmd - t_start));
        outage.insert("ironic_back_s".into(), json!(t_up - t_start));
        outage.insert("down_s".into(), json!(t_up - t_out));
        outage.insert(
            "all_recovered_after_s".into(),
            json!(recovered_at.map(|r| r - t_up)),
        );
    }
    let t_end = clock.now();
    for h in &handles {
        h.abort();
    }
    for h in handles {
        let _ = h.await;
    }
    let metrics_after = gateways_metrics(&ops).await;
    // Ironic's side: who holds a token now, and its log of the run
    let token_holders = match ironic_token_holders(&cfg.ironic).await {
        Ok(h) => Some(h),
        Err(e) => {
            println!("  WARNING: could not read Ironic's node records: {e}");
            None
        }
    };
    let ironic_log = log_mark.and_then(|m| match read_ironic_log(&m) {
        Ok(l) => Some(l),
        Err(e) => {
            println!("  WARNING: Ironic's log: {e}");
            None
        }
    });
    let st = lock(&ctx.st);
    let report = summarize(
        &cfg,
        target,
        &eps,
        &ctx,
        &st,
        &times,
        &marks,
        fleet_up,
        outage,
        &clock,
        t_end,
        metrics_after,
        ironic_log.as_ref(),
        token_holders.as_ref(),
    );
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    cfg: &Config,
    target: &str,
    eps: &[Target],
    ctx: &RunCtx,
    st: &RunState,
    times: &PhaseTimes,
    marks: &Marks,
    fleet_up: Option<f64>,
    outage: Map<String, Value>,
    clock: &Clock,
    t_end: f64,
    metrics_after: Option<Samples>,
    ironic_log: Option<&IronicLog>,
    token_holders: Option<&std::collections::BTreeSet<String>>,
) -> Value {
    let relay_marks = &marks.relay;
    // phase windows [from, to)
    let mut windows: Vec<(u8, f64, f64)> = Vec::new();
    let mut from = times.start;
    for (p, end) in times.ends.iter().enumerate() {
        if let Some(e) = end {
            windows.push((p as u8, from, *e));
            from = *e;
        }
    }
    let mut phases = Map::new();
    let mut pre = (0u64, 0u64);
    for (i, (p, a, b)) in windows.iter().enumerate() {
        let dur = (b - a).max(1e-9);
        let sent: u64 = st
            .counts
            .iter()
            .chain(st.unknown_counts.iter())
            .filter(|((_, ph, _), _)| ph == p)
            .map(|(_, n)| *n)
            .sum();
        let reached: Vec<u64> = (0..4)
            .map(|r| relay_marks[i + 1][r].saturating_sub(relay_marks[i][r]))
            .collect();
        let reached_total: u64 = reached.iter().sum();
        if *p == P_BOOT || *p == P_STEADY {
            pre.0 += sent;
            pre.1 += reached_total;
        }
        let mut lat = Map::new();
        for k in KINDS {
            if let Some(v) = st.lat.get(&(k, *p)) {
                let s = Summary::of(&mut v.clone());
                let ms = |us: Option<u32>| us.map(|u| u as f64 / 1000.0);
                lat.insert(
                    k.key().into(),
                    json!({"n": s.n, "p50_ms": ms(s.p50), "p99_ms": ms(s.p99),
                           "max_ms": ms(s.max)}),
                );
            }
        }
        let mut errors = Map::new();
        let mut err_total = 0;
        for ((k, ph, o), n) in &st.counts {
            if ph != p || is_ok(*k, o) {
                continue;
            }
            err_total += n;
            errors.insert(format!("{} {}", k.name(), o), json!(n));
        }
        let route_map: Map<String, Value> = ROUTES
            .iter()
            .zip(reached.iter())
            .map(|(r, n)| (r.to_string(), json!(n)))
            .collect();
        let mut phase = json!({
            "from_s": a - times.start, "to_s": b - times.start, "duration_s": dur,
            "agent_requests": sent, "ironic_requests": reached_total,
            "ironic_requests_by_route": route_map,
            "agent_req_per_s": sent as f64 / dur, "ironic_req_per_s": reached_total as f64 / dur,
            "shield_ratio": if sent > 0 { Some(reached_total as f64 / sent as f64) } else { None },
            "agent_errors": err_total, "agent_errors_by_kind": errors, "latency": lat,
        });
        if let Some(log) = ironic_log {
            // Ironic's answers as it logged them, by the time it finished them
            let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
            for x in log.between(*a, *b) {
                *by_status.entry(x.status.to_string()).or_default() += 1;
            }
            let all: Vec<&LogAnswer> = log.between(*a, *b).collect();
            let s503 = all.iter().filter(|x| x.status == 503).count();
            phase["ironic_log"] = json!({
                "answers": all.len(), "503": s503,
                "5xx_other": all.iter().filter(|x| x.is_5xx()).count() - s503,
                "tokens_minted": all.iter().filter(|x| x.mint).count(),
                "by_status": by_status,
            });
        }
        if let (Some(Some(m0)), Some(Some(m1))) = (marks.gateway.get(i), marks.gateway.get(i + 1)) {
            // A family's series summed (the overload count is labelled by lane).
            let d = |k: &str| family_sum(m1, k) - family_sum(m0, k);
            phase["gateway"] = json!({
                "ironic_overloaded": d("ironic_edge_budget_overloaded_total"),
                "heartbeats_kept": d("ironic_edge_heartbeats_deferred_total"),
                "heartbeats_relayed": d("ironic_edge_heartbeats_relayed_total"),
                "heartbeats_dropped": d("ironic_edge_heartbeats_dropped_total"),
                "heartbeats_kept_waiting_at_end": m1.get(KEPT_GAUGE),
                "heartbeats_local": sample_delta(m0, m1, "ironic_edge_requests_total{outcome=\"local\",route=\"heartbeat\"}"),
                "heartbeats_forwarded": sample_delta(m0, m1, failover::HEARTBEATS_FORWARDED),
            });
        }
        phases.insert(PHASES[*p as usize].into(), phase);
    }
    // whole run
    let sent_enrolled: u64 = st.counts.values().sum();
    let sent_unknown: u64 = st.unknown_counts.values().sum();
    let first = relay_marks.first().copied().unwrap_or([0; 4]);
    let last = relay_marks.last().copied().unwrap_or([0; 4]);
    let reached: Vec<u64> = (0..4).map(|r| last[r].saturating_sub(first[r])).collect();
    let reached_total: u64 = reached.iter().sum();
    let mut requests = Map::new();
    for ((k, p, o), n) in &st.counts {
        let e = requests
            .entry(format!("{} {}", k.name(), o))
            .or_insert_with(|| json!({}));
        if let Some(m) = e.as_object_mut() {
            m.insert(PHASES[*p as usize].into(), json!(n));
        }
    }
    let mut unknown_requests = Map::new();
    for ((k, _, o), n) in &st.unknown_counts {
        let e = unknown_requests
            .entry(format!("{} {}", k.name(), o))
            .or_insert(json!(0));
        *e = json!(e.as_u64().unwrap_or(0) + n);
    }
    let mut errors_by_kind = Map::new();
    let mut errors_total = 0;
    let mut errors_outside = 0;
    for ((k, p, o), n) in &st.counts {
        if is_ok(*k, o) {
            continue;
        }
        errors_total += n;
        if *p == P_BOOT || *p == P_STEADY {
            errors_outside += n;
        }
        let e = errors_by_kind
            .entry(format!("{} {}", k.name(), o))
            .or_insert(json!(0));
        *e = json!(e.as_u64().unwrap_or(0) + n);
    }
    let unknown_errors: u64 = st
        .unknown_counts
        .iter()
        .filter(|((k, _, o), _)| !(is_ok(*k, o) || (*k == Kind::Lookup && o == "404")))
        .map(|(_, n)| *n)
        .sum();
    let enrolled: Vec<(usize, &AgentRec)> = st
        .recs
        .iter()
        .enumerate()
        .filter(|(i, _)| ctx.specs[*i].enrolled)
        .collect();
    let count = |f: &dyn Fn(&AgentRec) -> bool| enrolled.iter().filter(|(_, r)| f(r)).count();
    let retry_any = count(&|r| r.retry_phases != 0);
    let retry_outside = count(&|r| r.retry_phases & ((1 << P_BOOT) | (1 << P_STEADY)) != 0);
    let retry_outage = count(&|r| r.retry_phases & ((1 << P_OUTAGE) | (1 << P_RECOVERY)) != 0);
    let bricked = count(&|r| r.bricked.is_some());
    let bricked_by_phase: Map<String, Value> = (0..4u8)
        .map(|p| {
            (
                PHASES[p as usize].to_string(),
                json!(count(&|r| r.bricked == Some(p))),
            )
        })
        .collect();
    let no_token = count(&|r| r.no_token);
    let dead = count(&|r| r.heartbeater_died);
    let looked_up = count(&|r| r.lookup_ok_at.is_some());
    let heartbeating = count(&|r| r.first_hb_ok.is_some());
    let restarts: u64 = st
        .recs
        .iter()
        .map(|r| r.boots.saturating_sub(1) as u64)
        .sum();
    let mut outage = outage;
    if let Some(t_up) = st.t_up {
        let not_recovered = count(&|r| !r.lost() && r.ok_after_up.is_none());
        let rec: Vec<f64> = enrolled
            .iter()
            .filter_map(|(_, r)| r.ok_after_up.map(|t| t - t_up))
            .collect();
        outage.insert("agents_not_recovered".into(), json!(not_recovered));
        let herd: Vec<f64> = enrolled
            .iter()
            .filter(|(_, r)| r.in_retry_at_up)
            .filter_map(|(_, r)| r.ok_after_up.map(|t| t - t_up))
            .collect();
        outage.insert(
            "retry_mode_agents_at_up".into(),
            json!(count(&|r| r.in_retry_at_up)),
        );
        outage.insert(
            "retry_mode_agents_at_up_recovered".into(),
            json!(herd.len()),
        );
        outage.insert(
            "retry_mode_agents_recovered_after_up_s".into(),
            quantiles(herd),
        );
        outage.insert("recovery_after_up_s".into(), quantiles(rec));
        let tl = clock.slice(t_up, t_up + 30.0);
        let peak = tl.iter().map(|s| s[TL_IRONIC]).max().unwrap_or(0);
        let first10: u64 = tl.iter().take(10).map(|s| s[TL_IRONIC]).sum();
        outage.insert("ironic_peak_req_per_s_after_up".into(), json!(peak));
        outage.insert("ironic_requests_first_10s_after_up".into(), json!(first10));
        outage.insert(
            "bricked_during_outage_or_recovery".into(),
            json!(count(&|r| matches!(
                r.bricked,
                Some(P_OUTAGE) | Some(P_RECOVERY)
            ))),
        );
    }
    let ironic = ironic_log.map(|log| ironic_load(times, t_end, clock, log, cfg.agents));
    let mint_rate = ironic
        .as_ref()
        .and_then(|v| get(v, "/mint/rate_best_10s_per_s").as_f64())
        .filter(|r| *r > 0.0);
    // the first OK heartbeat, from each agent's boot; and within 2 x N/R of the first boot
    let first_ok: Vec<f64> = enrolled
        .iter()
        .filter_map(|(i, r)| r.first_hb_ok.map(|t| t - ctx.specs[*i].boot_at))
        .collect();
    let never_ok = enrolled.len() - first_ok.len();
    // What Ironic's mint rate makes unavoidable, whatever the gateway does.
    let lookup_error_floor = mint_rate.map(|rate| {
        let boots = enrolled
            .iter()
            .map(|(i, _)| ctx.specs[*i].boot_at)
            .collect();
        lookup_failure_floor(boots, rate, cfg.request_timeout)
    });
    let steady_within = mint_rate.map(|rate| {
        let limit = 2.0 * cfg.agents as f64 / rate;
        let n = count(&|r| r.first_hb_ok.is_some_and(|t| t - times.start <= limit));
        json!({"limit_s": limit, "agents": n})
    });
    // latent bricked: Ironic holds a token that the agent never got (and it is not bricked yet:
    // its next lookup answer is "******")
    let tokens = token_holders.map(|h| {
        let holds = |i: usize| ctx.specs[i].uuid.as_ref().is_some_and(|u| h.contains(u));
        let n = |f: &dyn Fn(usize, &AgentRec) -> bool| {
            enrolled
                .iter()
                .filter(|(i, r)| holds(*i) && f(*i, r))
                .count()
        };
        json!({
            "latent_bricked": n(&|_, r| !r.token && r.bricked.is_none()),
            "held_by_ironic": n(&|_, _| true),
            "held_for_a_bricked_agent": n(&|_, r| r.bricked.is_some()),
        })
    });
    let metrics_before = marks.gateway.first().cloned().flatten();
    let gateway_metrics = match (metrics_before, metrics_after) {
        (Some(b), Some(a)) => Some(Value::Object(
            prom::delta(&b, &a)
                .into_iter()
                .map(|(k, d)| (k, json!(d)))
                .collect(),
        )),
        _ => None,
    };
    let timeline: Vec<Value> = clock
        .slice(times.start, t_end)
        .iter()
        .map(|s| json!(s))
        .collect();
    json!({
        "target": target,
        "url": eps[0].url,
        "urls": eps.iter().map(|e| e.url.clone()).collect::<Vec<_>>(),
        "agents": {"enrolled": cfg.agents, "unenrolled": cfg.unknown,
                   "extra_macs_per_agent": cfg.extra_macs},
        "heartbeat_timeout_from_lookup": st.hb_timeouts,
        "heartbeat_timeout_override": cfg.hb_override,
        "fleet_up_s": fleet_up,
        "duration_s": t_end - times.start,
        "agent_requests": sent_enrolled + sent_unknown,
        "agent_requests_enrolled": sent_enrolled,
        "agent_requests_unenrolled": sent_unknown,
        "ironic_requests": reached_total,
        "ironic_requests_by_route": ROUTES.iter().zip(reached.iter()).map(|(r, n)| (r.to_string(), json!(n))).collect::<Map<String, Value>>(),
        "shield_ratio": if sent_enrolled + sent_unknown > 0 { Some(reached_total as f64 / (sent_enrolled + sent_unknown) as f64) } else { None },
        "agent_requests_before_outage": pre.0,
        "ironic_requests_before_outage": pre.1,
        "shield_ratio_before_outage": if pre.0 > 0 { Some(pre.1 as f64 / pre.0 as f64) } else { None },
        "agent_errors": errors_total,
        "agent_errors_outside_outage": errors_outside,
        "agent_errors_by_kind": errors_by_kind,
        "unenrolled_errors_other_than_404": unknown_errors,
        "requests_by_kind_and_phase": requests,
        "unenrolled_requests": unknown_requests,
        "agents_looked_up": looked_up,
        "agents_heartbeating": heartbeating,
        "retry_mode_agents": retry_any,
        "retry_mode_agents_outside_outage": retry_outside,
        "retry_mode_agents_outage_or_recovery": retry_outage,
        "bricked": bricked,
        "bricked_by_phase": bricked_by_phase,
        "no_token": no_token,
        "heartbeater_died": dead,
        "agent_restarts": restarts,
        "transport_error_samples": st.error_samples,
        "lookup_answered_another_node": st.wrong_node,
        "error_body_samples": st.status_samples,
        "phases": phases,
        "outage": outage,
        "ironic": ironic,
        "first_ok_heartbeat_after_boot_s": quantiles(first_ok),
        "agents_without_ok_heartbeat": never_ok,
        "steady_within_2_n_over_r": steady_within,
        "lookup_error_floor": lookup_error_floor,
        "ironic_tokens": tokens,
        "gateway_metrics_delta": gateway_metrics,
        "timeline_per_s": {"slots": ["agent_sent", "agent_errors", "ironic_reached", "heartbeat_202"],
                           "from_s": times.start, "rows": timeline},
    })
}

/// Ironic's load and minting: the relay's per-second count of requests reaching it, and its
/// own log. The best 10-s rate before the outage whose window had no 503, the minute after its
/// return, and R: the best 10-s rate of tokens minted during the boot (a lower bound of what
/// Ironic can mint when agents arrive slower than that).
fn ironic_load(times: &PhaseTimes, t_end: f64, clock: &Clock, log: &IronicLog, n: usize) -> Value {
    const W: usize = 10;
    let rate = |sum: u64, len: usize| sum as f64 / len.clamp(1, W) as f64;
    // before the outage (boot + steady), in whole seconds
    let out_at = times.ends[1].unwrap_or(t_end);
    let (a, b) = (times.start.ceil() as usize, out_at.floor() as usize);
    let len = b.saturating_sub(a);
    let reach = window_sums(&clock.column(TL_IRONIC, a, b), W);
    let e503 = window_sums(&log.column(a, b, |x| x.status == 503), W);
    let clean = reach
        .iter()
        .zip(&e503)
        .enumerate()
        .filter(|(_, (_, e))| **e == 0)
        .max_by_key(|(_, (r, _))| **r);
    let before = json!({
        "best_10s_without_503_per_s": clean.map(|(_, (r, _))| rate(*r, len)),
        "best_10s_without_503_from_s": clean.map(|(i, _)| (a + i) as f64 - times.start),
        "best_10s_per_s": reach.iter().max().map(|r| rate(*r, len)),
        "windows_with_503": e503.iter().filter(|e| **e > 0).count(),
    });
    let after = times.ends[2].map(|t_up| {
        let a = t_up.floor() as usize;
        let b = (a + 60).min(times.ends[3].unwrap_or(t_end).floor() as usize);
        let bins = clock.column(TL_IRONIC, a, b);
        let answers: Vec<&LogAnswer> = log.between(a as f64, b as f64).collect();
        json!({
            "seconds": bins.len(),
            "mean_per_s": bins.iter().sum::<u64>() as f64 / bins.len().max(1) as f64,
            "best_10s_per_s": window_sums(&bins, W).iter().max().map(|r| rate(*r, bins.len())),
            "503": answers.iter().filter(|x| x.status == 503).count(),
            "5xx": answers.iter().filter(|x| x.is_5xx()).count(),
        })
    });
    let boot_end = times.ends[0].unwrap_or(t_end);
    let mints = log.column(
        times.start.floor() as usize,
        boot_end.ceil() as usize,
        |x| x.mint,
    );
    let best = window_sums(&mints, W).into_iter().max().unwrap_or(0);
    let r = rate(best, mints.len());
    // per second, from the second the run started (the first row of timeline_per_s)
    let (a, b) = (times.start.max(0.0) as usize, t_end.max(0.0) as usize + 1);
    json!({
        "log": {"lines": log.lines, "answers_in_run": log.between(times.start, t_end).count(),
                "harness_requests_left_out": log.harness, "clock_offset_s": log.offset_s},
        "per_s": {"503": log.column(a, b, |x| x.status == 503),
                  "5xx": log.column(a, b, LogAnswer::is_5xx),
                  "minted": log.column(a, b, |x| x.mint)},
        "before_outage": before,
        "minute_after_return": after,
        "mint": {"rate_best_10s_per_s": r, "n_over_r_s": (r > 0.0).then(|| n as f64 / r),
                 "tokens_minted_boot": mints.iter().sum::<u64>(),
                 "tokens_minted_run": log.between(times.start, t_end).filter(|x| x.mint).count()},
    })
}

fn is_ok(k: Kind, outcome: &str) -> bool {
    match k {
        Kind::Root | Kind::Lookup => outcome == "200",
        Kind::Heartbeat => outcome == "202",
        Kind::Probe => outcome.parse::<u16>().is_ok(),
    }
}

// ------------------------------------------------------------------------------------------
// the report

fn f1(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.1}"))
}

fn ms(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(m) if m < 10.0 => format!("{m:.1}"),
        Some(m) => format!("{m:.0}"),
    }
}

fn get<'a>(r: &'a Value, p: &str) -> &'a Value {
    r.pointer(p).unwrap_or(&Value::Null)
}

fn u(r: &Value, p: &str) -> u64 {
    get(r, p).as_u64().unwrap_or(0)
}

fn kinds_str(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => {
            let mut items: Vec<(String, u64)> = m
                .iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect();
            items.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            items
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
        _ => String::new(),
    }
}

fn with_kinds(n: u64, v: &Value) -> String {
    let k = kinds_str(v);
    if k.is_empty() {
        n.to_string()
    } else {
        format!("{n} ({k})")
    }
}

/// A count kept as a float (the gateway's metrics), `-` when missing.
fn n0(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.0}"))
}

fn ratio(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.3}"))
}

fn lat_pair(r: &Value, phase: &str, kind: &str) -> String {
    let base = format!("/phases/{phase}/latency/{kind}");
    let n = u(r, &format!("{base}/n"));
    if n == 0 {
        return "-".into();
    }
    format!(
        "{} / {} (n={n})",
        ms(get(r, &format!("{base}/p50_ms"))),
        ms(get(r, &format!("{base}/p99_ms")))
    )
}

/// `a / b / c / d` over the phases, `-` where a phase or its value is missing.
fn per_phase(r: &Value, f: &dyn Fn(&Value) -> Option<String>) -> String {
    PHASES
        .iter()
        .map(|p| f(get(r, &format!("/phases/{p}"))).unwrap_or_else(|| "-".into()))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// `p50 / p99 / max` of a [`quantiles`] object (s).
fn q3(v: &Value) -> String {
    ["p50", "p99", "max"]
        .iter()
        .map(|k| f1(get(v, &format!("/{k}")).as_f64()))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// One cell per gateway of a master kill's per-gateway figures (`a / b / c` each).
fn per_gateway(r: &Value, f: &dyn Fn(&Value) -> String) -> String {
    match get(r, "/outage/gateways").as_array() {
        Some(g) if !g.is_empty() => g
            .iter()
            .enumerate()
            .map(|(i, x)| format!("#{}: {}", i + 1, f(x)))
            .collect::<Vec<_>>()
            .join("; "),
        _ => "-".into(),
    }
}

fn rows(reports: &[Value], has_outage: bool, outage_mode: &str) -> Vec<(String, Vec<String>)> {
    let master_kill = outage_mode == REDIS_MASTER_KILL;
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, f: &dyn Fn(&Value) -> String| {
        rows.push((name.to_string(), reports.iter().map(f).collect()));
    };
    row("agents (enrolled + unenrolled)", &|r| {
        format!(
            "{} + {}",
            u(r, "/agents/enrolled"),
            u(r, "/agents/unenrolled")
        )
    });
    row("heartbeat_timeout (s, from lookup)", &|r| {
        let m = get(r, "/heartbeat_timeout_from_lookup")
            .as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        match get(r, "/heartbeat_timeout_override").as_f64() {
            Some(o) => format!("{o} (OVERRIDE; Ironic said {m})"),
            None => m,
        }
    });
    row("fleet up: every enrolled agent had a 202 (s)", &|r| {
        f1(get(r, "/fleet_up_s").as_f64())
    });
    row("requests sent by agents (whole run)", &|r| {
        u(r, "/agent_requests").to_string()
    });
    row("requests reaching Ironic (whole run)", &|r| {
        with_kinds(
            u(r, "/ironic_requests"),
            get(r, "/ironic_requests_by_route"),
        )
    });
    row(
        "shield ratio Ironic / agents: boot + steady (whole run)",
        &|r| {
            format!(
                "{} ({})",
                ratio(get(r, "/shield_ratio_before_outage")),
                ratio(get(r, "/shield_ratio"))
            )
        },
    );
    row("steady: agents req/s -> Ironic req/s (ratio)", &|r| {
        format!(
            "{} -> {} ({})",
            f1(get(r, "/phases/steady/agent_req_per_s").as_f64()),
            f1(get(r, "/phases/steady/ironic_req_per_s").as_f64()),
            ratio(get(r, "/phases/steady/shield_ratio"))
        )
    });
    row("Ironic req/s: boot / steady / outage / recovery", &|r| {
        per_phase(r, &|ph| Some(f1(ph.get("ironic_req_per_s")?.as_f64())))
    });
    row(
        "Ironic's 503s (its own log): boot / steady / outage / recovery",
        &|r| {
            per_phase(r, &|ph| {
                let l = ph.get("ironic_log")?;
                let (n, other) = (u(l, "/503"), u(l, "/5xx_other"));
                Some(if other > 0 {
                    format!("{n} (+{other} other 5xx)")
                } else {
                    n.to_string()
                })
            })
        },
    );
    row(
        "gateway saw Ironic overloaded (5xx, timeouts, slow): per phase",
        &|r| {
            per_phase(r, &|ph| {
                Some(n0(ph.get("gateway")?.get("ironic_overloaded")?))
            })
        },
    );
    row("agent-visible errors, enrolled agents (whole run)", &|r| {
        with_kinds(u(r, "/agent_errors"), get(r, "/agent_errors_by_kind"))
    });
    row("  of which before the outage (boot + steady)", &|r| {
        u(r, "/agent_errors_outside_outage").to_string()
    });
    row(
        "unenrolled machines: lookups (-> 404) / other errors",
        &|r| {
            let lk: u64 = get(r, "/unenrolled_requests")
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| k.starts_with("lookup"))
                        .map(|(_, v)| v.as_u64().unwrap_or(0))
                        .sum()
                })
                .unwrap_or(0);
            let nf = u(r, "/unenrolled_requests/lookup 404");
            format!(
                "{lk} ({nf}) / {}",
                u(r, "/unenrolled_errors_other_than_404")
            )
        },
    );
    row("agents that ever entered the 5-10 s retry mode", &|r| {
        format!(
            "{} (before the outage: {})",
            u(r, "/retry_mode_agents"),
            u(r, "/retry_mode_agents_outside_outage")
        )
    });
    row("bricked agents (\"******\" without a token)", &|r| {
        u(r, "/bricked").to_string()
    });
    row(
        "latent bricked: Ironic holds a token the agent never got",
        &|r| match get(r, "/ironic_tokens").as_object() {
            Some(_) => format!(
                "{} (Ironic holds {} tokens)",
                u(r, "/ironic_tokens/latent_bricked"),
                u(r, "/ironic_tokens/held_by_ironic")
            ),
            None => "-".into(),
        },
    );
    row("agents without a token / heartbeater died", &|r| {
        format!("{} / {}", u(r, "/no_token"), u(r, "/heartbeater_died"))
    });
    row(
        "gateway: requests answered locally / forwarded (whole run)",
        &|r| gateway_summary(get(r, "/gateway_metrics_delta")),
    );
    row(
        "gateway: heartbeats accepted locally / forwarded: boot / steady / outage / recovery",
        &|r| {
            per_phase(r, &|ph| {
                let g = ph.get("gateway")?;
                Some(format!(
                    "{}/{}",
                    n0(g.get("heartbeats_local")?),
                    n0(g.get("heartbeats_forwarded")?)
                ))
            })
        },
    );
    for (kind, label) in [
        ("root", "GET /"),
        ("lookup", "lookup"),
        ("heartbeat", "heartbeat"),
    ] {
        row(&format!("boot: {label} p50 / p99 ms"), &|r| {
            lat_pair(r, "boot", kind)
        });
    }
    row(
        "Ironic minted tokens: R (best 10 s at boot, per s), N/R (s)",
        &|r| match get(r, "/ironic/mint/rate_best_10s_per_s").as_f64() {
            Some(rate) => format!(
                "{rate:.1}, {} ({} minted in the run)",
                f1(get(r, "/ironic/mint/n_over_r_s").as_f64()),
                u(r, "/ironic/mint/tokens_minted_run")
            ),
            None => "-".into(),
        },
    );
    row(
        "first OK heartbeat per agent, from its boot: p50 / p99 / max (s)",
        &|r| match u(r, "/agents_without_ok_heartbeat") {
            0 => q3(get(r, "/first_ok_heartbeat_after_boot_s")),
            n => format!(
                "{} ({n} never)",
                q3(get(r, "/first_ok_heartbeat_after_boot_s"))
            ),
        },
    );
    row(
        "agents that must see a lookup error at this R (IPA gives up after its timeout)",
        &|r| match get(r, "/lookup_error_floor").as_u64() {
            Some(n) => format!("at least {n}"),
            None => "-".into(),
        },
    );
    row(
        "agents steady (first 202) within 2 x N/R of the first boot",
        &|r| match get(r, "/steady_within_2_n_over_r").as_object() {
            Some(_) => format!(
                "{} of {} (2 x N/R = {} s)",
                u(r, "/steady_within_2_n_over_r/agents"),
                u(r, "/agents/enrolled"),
                f1(get(r, "/steady_within_2_n_over_r/limit_s").as_f64())
            ),
            None => "-".into(),
        },
    );
    row("steady: heartbeat p50 / p99 ms", &|r| {
        lat_pair(r, "steady", "heartbeat")
    });
    if has_outage {
        if master_kill {
            row(
                "outage: Redis master killed (-9); restarted (as a replica) after (s)",
                &|r| f1(get(r, "/outage/down_s").as_f64()),
            );
            row(
                "master kill, per gateway: noticed / master switch seen / healthy again / answers locally (from Redis) again after (s)",
                &|r| {
                    per_gateway(r, &|g| {
                        format!(
                            "{} / {} / {} / {}",
                            f1(g.get("noticed_after_s").and_then(Value::as_f64)),
                            f1(g.get("master_switch_seen_after_s").and_then(Value::as_f64)),
                            g.get("healthy_again_after_s")
                                .and_then(Value::as_f64)
                                .map_or("NOT within the run".into(), |t| format!("{t:.1}")),
                            g.get("local_again_after_s")
                                .and_then(Value::as_f64)
                                .map_or("NOT within the run".into(), |t| format!("{t:.1}"))
                        )
                    })
                },
            );
            row(
                "master kill, per gateway: master unknown for (s) / store errors / heartbeats forwarded until local",
                &|r| {
                    per_gateway(r, &|g| {
                        format!(
                            "{} / {} / {}",
                            f1(g.get("master_unknown_for_s").and_then(Value::as_f64)),
                            n0(&g["store_errors"]),
                            n0(&g["heartbeats_forwarded_until_local"])
                        )
                    })
                },
            );
        } else {
            row("outage: Ironic down for (s)", &|r| {
                f1(get(r, "/outage/down_s").as_f64())
            });
        }
        row("outage: agent errors during it", &|r| {
            with_kinds(
                u(r, "/phases/outage/agent_errors"),
                get(r, "/phases/outage/agent_errors_by_kind"),
            )
        });
        row("outage: requests reaching Ironic during it", &|r| {
            u(r, "/phases/outage/ironic_requests").to_string()
        });
        row("recovery: every agent had a 202 again after (s)", &|r| {
            let all = get(r, "/outage/all_recovered_after_s").as_f64();
            match all {
                Some(t) => format!(
                    "{t:.1} (p50 {})",
                    f1(get(r, "/outage/recovery_after_up_s/p50").as_f64())
                ),
                None => format!(
                    "NOT within the limit: {} agents not recovered",
                    u(r, "/outage/agents_not_recovered")
                ),
            }
        });
        row(
            "recovery: agents in retry mode at the return: had a 202 since / at most after (s)",
            &|r| {
                format!(
                    "{} of {} / {}",
                    u(r, "/outage/retry_mode_agents_at_up_recovered"),
                    u(r, "/outage/retry_mode_agents_at_up"),
                    f1(get(r, "/outage/retry_mode_agents_recovered_after_up_s/max").as_f64())
                )
            },
        );
        row(
            "recovery: Ironic peak req/s, requests in the first 10 s",
            &|r| {
                format!(
                    "{} , {}",
                    u(r, "/outage/ironic_peak_req_per_s_after_up"),
                    u(r, "/outage/ironic_requests_first_10s_after_up")
                )
            },
        );
        row(
            "Ironic req/s, best 10 s without a 503 before -> the minute after return: mean / best 10 s",
            &|r| {
                let m = "/ironic/minute_after_return";
                if get(r, m).is_null() {
                    return "-".into();
                }
                format!(
                    "{} -> {} / {} ({} 503s in those {} s)",
                    f1(get(r, "/ironic/before_outage/best_10s_without_503_per_s").as_f64()),
                    f1(get(r, &format!("{m}/mean_per_s")).as_f64()),
                    f1(get(r, &format!("{m}/best_10s_per_s")).as_f64()),
                    u(r, &format!("{m}/503")),
                    u(r, &format!("{m}/seconds"))
                )
            },
        );
        row(
            "relay: kept at Ironic's return -> none left after (s); relayed / dropped since",
            &|r| {
                if get(r, "/outage/relay_kept_at_up").is_null() {
                    return "-".into();
                }
                let g = "/phases/recovery/gateway";
                format!(
                    "{} -> {}; {} / {}",
                    n0(get(r, "/outage/relay_kept_at_up")),
                    get(r, "/outage/relay_drained_after_up_s")
                        .as_f64()
                        .map_or("NOT within the run".into(), |t| format!("{t:.1}")),
                    n0(get(r, &format!("{g}/heartbeats_relayed"))),
                    n0(get(r, &format!("{g}/heartbeats_dropped")))
                )
            },
        );
        row("recovery: agent errors", &|r| {
            with_kinds(
                u(r, "/phases/recovery/agent_errors"),
                get(r, "/phases/recovery/agent_errors_by_kind"),
            )
        });
        row("recovery: heartbeat p50 / p99 ms", &|r| {
            lat_pair(r, "recovery", "heartbeat")
        });
        row("bricked during outage + recovery", &|r| {
            u(r, "/outage/bricked_during_outage_or_recovery").to_string()
        });
    }
    rows
}

/// `heartbeat 1200 / 300, lookup 20 / 530` from the deltas of
/// `ironic_edge_requests_total{route,outcome}`.
fn gateway_summary(delta: &Value) -> String {
    let Some(m) = delta.as_object() else {
        return "-".into();
    };
    let mut by_route: BTreeMap<String, (f64, f64, f64)> = BTreeMap::new();
    for (k, v) in m {
        let Some(labels) = k.strip_prefix("ironic_edge_requests_total{") else {
            continue;
        };
        let label = |name: &str| -> String {
            labels
                .trim_end_matches('}')
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().trim_matches('"').to_string())
                .unwrap_or_default()
        };
        let e = by_route.entry(label("route")).or_default();
        let n = v.as_f64().unwrap_or(0.0);
        match label("outcome").as_str() {
            "local" => e.0 += n,
            "forwarded" => e.1 += n,
            _ => e.2 += n,
        }
    }
    if by_route.is_empty() {
        return "-".into();
    }
    by_route
        .iter()
        .map(|(route, (l, f, o))| {
            if *o > 0.0 {
                format!("{route} {l:.0} / {f:.0} (+{o:.0} other)")
            } else {
                format!("{route} {l:.0} / {f:.0}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report's table: a row name, then one column per target (text columns at most 70
/// characters wide: the long lists of counts run over).
fn table(targets: &[String], rows: Vec<(String, Vec<String>)>) -> Table {
    let mut head = vec![("", Align::Left)];
    head.extend(targets.iter().map(|t| (t.as_str(), Align::Left)));
    let mut t = Table::new(&head).with_max_width(70);
    for (name, cells) in rows {
        let mut r = vec![name];
        r.extend(cells);
        t.row(r);
    }
    t
}

// ------------------------------------------------------------------------------------------

async fn run(cfg: Config) -> Result<(), String> {
    let cfg = Arc::new(cfg);
    let started = SystemTime::now();
    let clock = Arc::new(Clock {
        t0: Instant::now(),
        timeline: Mutex::new(Vec::new()),
    });
    let relay_stats = Arc::new(RelayStats::default());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(relay(
        cfg.relay.addr,
        cfg.ironic.addr,
        relay_stats.clone(),
        clock.clone(),
        tx,
    ));
    rx.await
        .map_err(|_| "the relay did not start".to_string())??;
    println!(
        "fleet: {} enrolled + {} unenrolled agents (IPA {IPA_VERSION} timing), targets {}; \
         relay {} -> Ironic {}",
        cfg.agents,
        cfg.unknown,
        cfg.targets.join(", "),
        cfg.relay.host_header,
        cfg.ironic.host_header
    );
    let mut reports = Vec::new();
    for (i, t) in cfg.targets.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs_f64(cfg.pause)).await;
        }
        let r = run_target(cfg.clone(), t, clock.clone(), relay_stats.clone()).await?;
        reports.push(r);
    }
    let has_outage = cfg.outage_stop_cmd.is_some();
    let table = table(&cfg.targets, rows(&reports, has_outage, &cfg.outage_mode));
    println!("\n{}", table.text());
    let stamp = report::unix_stamp(started);
    let (cpus, load) = report::machine();
    let settings = json!({
        "agents": cfg.agents, "unknown": cfg.unknown, "extra_macs": cfg.extra_macs,
        "ramp_s": cfg.ramp, "settle_max_s": cfg.settle, "steady_s": cfg.steady,
        "outage_s": cfg.outage, "outage_mode": cfg.outage_mode, "recovery_max_s": cfg.recovery,
        "heartbeat_timeout_override": cfg.hb_override, "request_timeout_s": cfg.request_timeout,
        "lookup_timeout_s": cfg.lookup_timeout, "restart_delay_s": cfg.restart_delay,
        "seed_file": cfg.seed_file.display().to_string(), "ironic": cfg.ironic.url,
        "relay": cfg.relay.url, "gateway": cfg.gateways.first().map(|g| g.url.clone()),
        "gateways": cfg.gateways.iter().map(|g| g.url.clone()).collect::<Vec<_>>(),
    });
    let doc = json!({
        "bench": "fleet",
        "started_unix": stamp,
        "label": cfg.label,
        "machine": {"cpus": cpus, "loadavg_1m_at_end": load},
        "settings": settings,
        "relay": {"connections": relay_stats.connections.load(Ordering::Relaxed),
                  "refused_by_ironic": relay_stats.refused.load(Ordering::Relaxed),
                  "connect_failed": relay_stats.connect_failed.load(Ordering::Relaxed),
                  "listener_closed": relay_stats.listener_closed.load(Ordering::Relaxed),
                  "unparsed_streams": relay_stats.unparsed.load(Ordering::Relaxed)},
        "runs": reports,
    });
    let mut md = String::new();
    let _ = writeln!(md, "# fleet ({stamp})\n");
    if !cfg.label.is_empty() {
        let _ = writeln!(md, "{}\n", cfg.label);
    }
    let hb = reports
        .first()
        .and_then(|r| get(r, "/heartbeat_timeout_from_lookup").as_object())
        .map(|m| m.keys().cloned().collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "{} enrolled agents (+ {} machines that are not enrolled) with IPA 13's timing, booting \
         over {:.0} s, then {:.0} s of steady state{}. heartbeat_timeout {}{}. Requests reaching \
         Ironic are counted at a relay in front of it (the same place in both runs){}. {} CPUs, \
         load average {} at the end.\n",
        cfg.agents,
        cfg.unknown,
        cfg.ramp,
        cfg.steady,
        if has_outage && cfg.outage_mode == REDIS_MASTER_KILL {
            format!(
                ", then the Redis master killed (-9, {}: the sentinels promote the replica) and \
                 restarted {:.0} s later",
                cfg.outage_mode, cfg.outage
            )
        } else if has_outage {
            format!(
                ", then Ironic stopped for {:.0} s ({}) and started again",
                cfg.outage, cfg.outage_mode
            )
        } else {
            String::new()
        },
        match cfg.hb_override {
            Some(o) => format!("{o} s (COMPRESSED TIME: agents override what Ironic says)"),
            None => format!("{hb} s, as Ironic's lookup returned it"),
        },
        if cfg.hb_override.is_none() {
            " ([api]ramdisk_heartbeat_timeout lowered from 300 s to compress time)"
        } else {
            ""
        },
        if cfg.ironic_log.is_some() {
            "; Ironic's answers (503s) and the tokens it minted are read from its own API log, \
             the latent bricked agents from its node records after each run"
        } else {
            ""
        },
        cpus.map_or("?".into(), |c| c.to_string()),
        load.clone().unwrap_or_else(|| "?".into())
    );
    md.push_str(&table.markdown());
    let json_text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    let written = report::write_results(&cfg.out_dir, "fleet", stamp, &json_text, &md)?;
    // fleet.json, fleet.md (the time-stamped copies come first)
    for p in &written[2..] {
        println!("results: {}", p.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let usage = usage();
    let spec = Spec {
        prog: "fleet",
        options: OPTIONS,
        env_prefix: "FLEET_",
        unknown: Unknown::Error,
        usage: &usage,
    };
    let m = match spec.parse() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("fleet: {e}\n{usage}");
            return ExitCode::from(2);
        }
    };
    if !m.contains("seed") {
        common::self_check();
        println!(
            "fleet: no seed file (--seed FILE or FLEET_SEED): nothing to do (shared parts \
             self-checked); run scripts/fleet-bench.sh"
        );
        return ExitCode::SUCCESS;
    }
    let cfg = match load_config(m) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet: cannot start a runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet: {e}");
            ExitCode::from(1)
        }
    }
}
