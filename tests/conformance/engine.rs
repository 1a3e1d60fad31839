//! The differential engine of the conformance suite (`tests/conformance.rs`,
//! `tests/agent_flows.rs`).
//!
//! A case is one HTTP request, built once and sent byte for byte the same way straight to the
//! real Ironic 39.0.0 and through the gateway fronting that same Ironic. The two answers are
//! compared (see [`Diff::compare`]): status, the header *set*, every Ironic header (minimum,
//! maximum and negotiated version, `Content-Type`, `Content-Length`, `Allow`, `Server`, the
//! request ids), and the body, as JSON values and byte for byte, after the normalisations
//! listed in [`NORMALISATIONS`] (each with its reason). The gateway's ops metrics tell how each
//! gateway answer was produced (answered locally, forwarded by the agent plugin, or proxied as
//! any other route), and every case states which one it expects.
#![allow(dead_code)]

use crate::common::gateway::metric_value;
use crate::common::http::{self, Request, Response};
use crate::common::{Gateway, GatewayConfig, RedisServer};
use crate::peer::{PeerOptions, RealIronic, SeededNode};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Every normalisation the suite applies before comparing the two answers of a case, with the
/// reason the difference is legitimate. The summary counts how often each was needed.
pub const NORMALISATIONS: &[(&str, &str)] = &[
    (
        "request-id",
        "`x-openstack-request-id` / `openstack-request-id`: Ironic makes a fresh `req-<uuid>` \
         for every request (and the gateway for every local answer), so the values always \
         differ; compared: both present or both absent, `req-` + a lower-case 8-4-4-4-12 \
         UUID, and the two headers equal within one answer",
    ),
    (
        "date",
        "`Date`: the time of each answer; compared: present on both sides or on neither",
    ),
    (
        "hop-by-hop",
        "`Connection` / `Keep-Alive`: per-connection management between the client and the \
         server it talks to (RFC 9110 7.6.1), not part of Ironic's answer; ignored",
    ),
    (
        "links-host",
        "`http://<Host>` in `links` (`GET /`, `GET /v1`, a lookup's `node.links`): Ironic \
         builds them from the request's `Host` header, which is Ironic's own address when \
         asked directly and the gateway's address through the gateway (the gateway forwards \
         the agent's `Host`); both are replaced by `http://HOST`, and `Content-Length` is \
         then compared as the normalised body lengths, each side's header matching its own \
         body",
    ),
    (
        "minted-token",
        "`config.agent_token` of a lookup that mints the token: only the first lookup after \
         a wipe gets the raw token, so the case goes through the gateway first (which must \
         relay the raw 43-character `token_urlsafe` value) and straight to Ironic second \
         (which then answers `\"******\"`); the gateway's raw token is checked for its shape \
         and absence from Ironic's body, then replaced by `\"******\"`",
    ),
    (
        "unexpected-arguments-order",
        "`Unexpected arguments: a, b`: Ironic joins a Python `set`, whose iteration order \
         depends on the hash seed of each Ironic process; the names are compared as a set \
         (sorted) and the body is otherwise compared byte for byte",
    ),
];

/// How the gateway produced an answer, from its ops metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The agent plugin answered without asking Ironic.
    Local,
    /// The agent plugin forwarded the request to Ironic and relayed the answer.
    Forwarded,
    /// Not an agent route (or not one of its exact forms): proxied to Ironic unchanged.
    Proxied,
    /// A lookup Ironic refuses with 404 (no such node, MACs of two nodes, a refused state):
    /// forwarded by the agent plugin, or answered locally when the gateway's node index
    /// already knows the answer. Whether the index is on (and synced) is the gateway's
    /// configuration and timing, not a conformance question; a repeated miss is always
    /// local (index or negative cache), which the cases check with a second send.
    Miss,
    /// No expectation (only in the cases of reported gateway bugs, where the right way to
    /// produce the answer is for the fix to decide).
    Any,
}

/// A differential case.
#[derive(Clone)]
pub struct Case {
    pub name: String,
    pub req: Request,
    /// What each gateway send must be (one entry per send, in order).
    pub via: Vec<Via>,
    /// Send through the gateway before sending straight to Ironic.
    pub gateway_first: bool,
    /// A lookup that mints the token (implies `gateway_first`).
    pub mints: bool,
    /// A node whose conductor-side heartbeat processing is waited for after every 202.
    pub node: Option<String>,
}

pub fn case(name: &str, req: Request, via: Via) -> Case {
    Case {
        name: name.to_string(),
        req,
        via: vec![via],
        gateway_first: false,
        mints: false,
        node: None,
    }
}

impl Case {
    /// Also sent a second time through the gateway, expected `via` (compared with the same
    /// Ironic answer).
    pub fn then(mut self, via: Via) -> Self {
        self.via.push(via);
        self
    }
    /// The first lookup of a node since its token was wiped: the gateway first.
    pub fn mints(mut self) -> Self {
        self.mints = true;
        self.gateway_first = true;
        self
    }
    pub fn gateway_first(mut self) -> Self {
        self.gateway_first = true;
        self
    }
    /// A heartbeat for this node (UUID): after a 202, wait for the conductor's worker.
    pub fn node(mut self, uuid: &str) -> Self {
        self.node = Some(uuid.to_string());
        self
    }
}

/// Both answers of a case.
pub struct Outcome {
    pub ironic: Response,
    pub gateway: Vec<Response>,
}

#[derive(Default, Clone)]
pub struct Stats {
    pub cases: usize,
    pub comparisons: usize,
    pub local: usize,
    pub forwarded: usize,
    pub proxied: usize,
    pub normalised: BTreeMap<&'static str, usize>,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.cases += o.cases;
        self.comparisons += o.comparisons;
        self.local += o.local;
        self.forwarded += o.forwarded;
        self.proxied += o.proxied;
        for (k, v) in &o.normalised {
            *self.normalised.entry(k).or_default() += v;
        }
    }

    fn line(&self) -> String {
        let norm: Vec<String> = NORMALISATIONS
            .iter()
            .map(|(k, _)| format!("{k}={}", self.normalised.get(k).copied().unwrap_or(0)))
            .collect();
        format!(
            "{} cases, {} gateway answers compared ({} answered locally, {} forwarded by the agent plugin, {} proxied); normalisations applied: {}",
            self.cases,
            self.comparisons,
            self.local,
            self.forwarded,
            self.proxied,
            norm.join(" ")
        )
    }
}

/// The groups `cargo test` runs by default (not the ignored ones): once all have reported,
/// the grand total is printed.
pub const DEFAULT_GROUPS: &[&str] = &[
    "lookup",
    "heartbeat",
    "require_tls=false",
    "deviations",
    "concurrent lookups",
    "negative cache",
];

static TOTAL: Mutex<Option<(Stats, Vec<&'static str>)>> = Mutex::new(None);

/// Real Ironic + Redis + the gateway in front; dropped gateway first.
pub struct Stack {
    /// A second gateway in front of the same Ironic, in shadow mode ([`Stack::start_shadowed`]).
    pub shadow: Option<Shadowed>,
    pub gw: Gateway,
    pub redis: RedisServer,
    pub ironic: RealIronic,
    pub ironic_addr: SocketAddr,
}

/// A gateway in shadow mode (`ironic_edge.mode: shadow`) with a Redis of its own, configured
/// as the stack's gateway: every agent case is sent through it last (its answer is Ironic's),
/// and the group ends with its comparisons: not one mismatch ([`Diff::finish`]).
pub struct Shadowed {
    pub gw: Gateway,
    pub redis: RedisServer,
}

impl Stack {
    /// Starts the three with the suite's gateway settings: long negative-cache TTLs and a
    /// long token-mismatch interval, so that "answered locally" is deterministic.
    pub fn start(opts: PeerOptions) -> Stack {
        Self::start_with(opts, &[], |_| {}).0
    }

    /// Starts Ironic, seeds `extra` nodes in other states (`(count, state, ports per node)`,
    /// returned in that order) BEFORE the gateway starts (so that nothing the gateway may have
    /// indexed at its start is stale), lets `f` edit the gateway's config, starts the gateway.
    pub fn start_with(
        opts: PeerOptions,
        extra: &[(usize, &'static str, usize)],
        f: impl Fn(&mut GatewayConfig),
    ) -> (Stack, Vec<Vec<SeededNode>>) {
        Self::start_inner(opts, extra, f, false)
    }

    /// As [`Stack::start_with`], with a second gateway in shadow mode ([`Shadowed`]).
    pub fn start_shadowed(
        opts: PeerOptions,
        extra: &[(usize, &'static str, usize)],
        f: impl Fn(&mut GatewayConfig),
    ) -> (Stack, Vec<Vec<SeededNode>>) {
        Self::start_inner(opts, extra, f, true)
    }

    fn start_inner(
        opts: PeerOptions,
        extra: &[(usize, &'static str, usize)],
        f: impl Fn(&mut GatewayConfig),
        shadowed: bool,
    ) -> (Stack, Vec<Vec<SeededNode>>) {
        let redis = RedisServer::start();
        let ironic = RealIronic::start(opts);
        let seeded = extra
            .iter()
            .map(|(count, state, ports)| ironic.seed_more(*count, state, *ports))
            .collect();
        let gateway = |redis: &RedisServer, shadow: bool| {
            let mut cfg = GatewayConfig::new(&ironic.url, &redis.url());
            cfg.set("ironic_edge.lookup.not_found_ttl_seconds", 300)
                .set("ironic_edge.heartbeat.not_found_ttl_seconds", 300)
                .set("ironic_edge.heartbeat.token_mismatch_forward_seconds", 300)
                .set("ironic_edge.upstream.version_refresh_seconds", 5)
                .env("RUST_LOG", "info");
            f(&mut cfg);
            if shadow {
                // With the node index on (its own Redis: the stack's gateway is untouched), so
                // that the index's decisions are compared with Ironic's answers too.
                cfg.set("ironic_edge.mode", "shadow")
                    .set("ironic_edge.sync.enabled", true)
                    .set("ironic_edge.sync.interval_seconds", 2);
            }
            let gw = Gateway::start(cfg);
            let ok = crate::common::wait_for(Duration::from_secs(20), || {
                let r = http::get(gw.ops_addr(), "/status", &[]);
                r.json()["upstream"]["versions_known"]
                    .as_bool()
                    .filter(|k| *k)
            });
            assert!(
                ok.is_some(),
                "gateway never learnt the upstream versions:\n{}",
                gw.logs()
            );
            gw
        };
        let gw = gateway(&redis, false);
        let shadow = shadowed.then(|| {
            let redis = RedisServer::start();
            Shadowed {
                gw: gateway(&redis, true),
                redis,
            }
        });
        let ironic_addr: SocketAddr = ironic
            .url
            .trim_start_matches("http://")
            .parse()
            .expect("Ironic URL is http://127.0.0.1:PORT");
        (
            Stack {
                shadow,
                gw,
                redis,
                ironic,
                ironic_addr,
            },
            seeded,
        )
    }

    /// `GET /v1/nodes/{uuid}` straight from Ironic (latest version), over plain HTTP.
    pub fn node_doc(&self, uuid: &str) -> Value {
        let r = http::send(
            self.ironic_addr,
            &Request::get(&format!("/v1/nodes/{uuid}")).version("latest"),
        );
        serde_json::from_slice(&r.body).unwrap_or(Value::Null)
    }
}

/// Runs cases against one [`Stack`], collecting mismatches (reported all at once by
/// [`Diff::finish`]) and statistics.
pub struct Diff<'a> {
    pub s: &'a Stack,
    pub group: &'static str,
    pub stats: Stats,
    pub failures: Vec<String>,
    /// Cases sent through the shadow gateway.
    pub shadow_sent: usize,
    /// Those it did not compare (Ironic did not answer them).
    pub shadow_uncompared: Vec<String>,
}

/// Every answer the shadow gateway compared so far (all of `ironic_edge_shadow_total`).
fn shadow_compared(gw: &Gateway) -> u64 {
    gw.metrics()
        .lines()
        .filter(|l| l.starts_with("ironic_edge_shadow_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    local: [u64; 3],
    forwarded: [u64; 3],
    upstream: u64,
}

const ROUTES: [&str; 3] = ["lookup", "heartbeat", "other"];

impl Counters {
    fn total(&self) -> u64 {
        self.local.iter().sum::<u64>() + self.forwarded.iter().sum::<u64>()
    }
}

impl<'a> Diff<'a> {
    pub fn new(s: &'a Stack, group: &'static str) -> Diff<'a> {
        Diff {
            s,
            group,
            stats: Stats::default(),
            failures: Vec::new(),
            shadow_sent: 0,
            shadow_uncompared: Vec::new(),
        }
    }

    fn counters(&self) -> Counters {
        let text = self.s.gw.metrics();
        let mut c = Counters::default();
        for (i, route) in ROUTES.iter().enumerate() {
            let get = |outcome: &str| {
                metric_value(
                    &text,
                    "ironic_edge_requests_total",
                    &[("route", route), ("outcome", outcome)],
                )
                .unwrap_or(0.0) as u64
            };
            c.local[i] = get("local");
            c.forwarded[i] = get("forwarded");
            c.upstream += metric_value(
                &text,
                "ironic_edge_upstream_requests_total",
                &[("route", route)],
            )
            .unwrap_or(0.0) as u64;
        }
        c
    }

    /// Sends through the gateway and tells how the answer was produced. The counters are
    /// bumped right after the answer is written, so they are polled briefly.
    fn send_gateway(&mut self, req: &Request) -> (Response, Result<Via, String>) {
        let before = self.counters();
        let resp = self.s.gw.send(req);
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut after = self.counters();
        while after.total() < before.total() + 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            after = self.counters();
        }
        let upstream = after.upstream - before.upstream;
        let via = if after.total() != before.total() + 1 {
            Err(format!(
                "the gateway's request counters moved by {} (expected 1)",
                after.total() as i64 - before.total() as i64
            ))
        } else if let Some(i) = (0..3).find(|&i| after.local[i] > before.local[i]) {
            if upstream == 0 {
                Ok(Via::Local)
            } else {
                Err(format!(
                    "counted local on route {} but {upstream} upstream request(s) were made",
                    ROUTES[i]
                ))
            }
        } else if let Some(i) = (0..3).find(|&i| after.forwarded[i] > before.forwarded[i]) {
            if upstream == 0 {
                Err(format!(
                    "counted forwarded on route {} but no upstream request was made",
                    ROUTES[i]
                ))
            } else if i == 2 {
                Ok(Via::Proxied)
            } else {
                Ok(Via::Forwarded)
            }
        } else {
            Err("no request counter moved".to_string())
        };
        (resp, via)
    }

    fn last_heartbeat(&self, uuid: &str) -> Value {
        self.s.node_doc(uuid)["driver_internal_info"]["agent_last_heartbeat"].clone()
    }

    /// After a 202: waits until the conductor's worker recorded the heartbeat and released
    /// the node (a heartbeat right behind it would otherwise get 39.0's 409 "locked").
    fn settle(&self, uuid: &str, before: &Value) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let n = self.s.node_doc(uuid);
            if n["reservation"].is_null()
                && n["driver_internal_info"]["agent_last_heartbeat"] != *before
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn send_ironic(&self, req: &Request) -> Response {
        http::send(self.s.ironic_addr, req)
    }

    /// Runs one case; mismatches are recorded, not raised.
    /// Sends `req` through the gateway until the gateway answers it itself (what it learns in
    /// the background, such as a version document, has arrived); panics after 10 s.
    pub fn warm_until_local(&mut self, req: &Request) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, via) = self.send_gateway(req);
            if via == Ok(Via::Local) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never answered at the edge: {via:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn run(&mut self, c: Case) -> Outcome {
        self.stats.cases += 1;
        let mut gateway = Vec::new();
        let mut vias = Vec::new();
        let mut ironic = None;
        let hb_before = |d: &Self| c.node.as_deref().map(|u| d.last_heartbeat(u));
        if !c.gateway_first {
            let before = hb_before(self);
            let r = self.send_ironic(&c.req);
            if let (202, Some(u), Some(b)) = (r.status, c.node.as_deref(), before.as_ref()) {
                self.settle(u, b);
            }
            ironic = Some(r);
        }
        for _ in &c.via {
            let before = hb_before(self);
            let (r, via) = self.send_gateway(&c.req);
            if let (202, Some(u), Some(b)) = (r.status, c.node.as_deref(), before.as_ref()) {
                self.settle(u, b);
            }
            gateway.push(r);
            vias.push(via);
        }
        let ironic = match ironic {
            Some(r) => r,
            None => {
                let before = hb_before(self);
                let r = self.send_ironic(&c.req);
                if let (202, Some(u), Some(b)) = (r.status, c.node.as_deref(), before.as_ref()) {
                    self.settle(u, b);
                }
                r
            }
        };
        self.send_shadow(&c, &ironic);
        for (i, (gw, via)) in gateway.iter().zip(vias).enumerate() {
            let label = if c.via.len() > 1 {
                format!("{} [gateway send {}]", c.name, i + 1)
            } else {
                c.name.clone()
            };
            // Only the first send through the gateway can get the minted token.
            let view = Case {
                mints: c.mints && i == 0,
                ..c.clone()
            };
            self.check(&label, &view, c.via[i], &ironic, gw, via);
        }
        Outcome { ironic, gateway }
    }

    /// Sends an agent case through the shadow gateway, if the stack has one, after every other
    /// send of the case (its request reaches Ironic once more: for an agent request, the
    /// same answer), and checks that the agent got Ironic's answer (its status: a repeated
    /// request may differ in its body, a minted token for one). Proxied cases are not sent.
    fn send_shadow(&mut self, c: &Case, ironic: &Response) {
        let Some(shadow) = &self.s.shadow else {
            return;
        };
        if c.via.contains(&Via::Proxied) {
            return;
        }
        let before = c.node.as_deref().map(|u| self.last_heartbeat(u));
        let compared = shadow_compared(&shadow.gw);
        let r = http::send(shadow.gw.addr(), &c.req);
        if let (202, Some(u), Some(b)) = (r.status, c.node.as_deref(), before.as_ref()) {
            self.settle(u, b);
        }
        self.shadow_sent += 1;
        if shadow_compared(&shadow.gw) == compared {
            self.shadow_uncompared
                .push(format!("{} ({})", c.name, r.status));
        }
        if r.status != ironic.status {
            self.failures.push(format!(
                "[{} shadow] {}: the shadow gateway answered {}, Ironic {}\n    request: {} {}\n    shadow : {}",
                self.group,
                c.name,
                r.status,
                ironic.status,
                c.req.method,
                c.req.target,
                describe(&r)
            ));
        }
    }

    /// Records one comparison: how the gateway answered (`via`, from its metrics) against the
    /// expectation, and the two answers. Used by [`Diff::run`], and directly by tests that send
    /// concurrently (and so read the metrics as a whole).
    pub fn check(
        &mut self,
        label: &str,
        c: &Case,
        expected: Via,
        ironic: &Response,
        gw: &Response,
        via: Result<Via, String>,
    ) {
        self.stats.comparisons += 1;
        let mut problems = Vec::new();
        match via {
            Ok(v) => {
                match v {
                    Via::Local => self.stats.local += 1,
                    Via::Forwarded => self.stats.forwarded += 1,
                    Via::Proxied => self.stats.proxied += 1,
                    Via::Miss | Via::Any => {}
                }
                let fits = match expected {
                    Via::Any => true,
                    Via::Miss => matches!(v, Via::Local | Via::Forwarded),
                    e => v == e,
                };
                if !fits {
                    problems.push(format!("answered {v:?}, expected {expected:?}"));
                }
            }
            Err(e) => problems.push(e),
        }
        problems.extend(self.compare(c, ironic, gw));
        if !problems.is_empty() {
            self.failures.push(format!(
                "[{}] {label}: {}\n    request: {} {}\n    Ironic : {}\n    gateway: {}",
                self.group,
                problems.join("; "),
                c.req.method,
                c.req.target,
                describe(ironic),
                describe(gw)
            ));
        }
    }

    /// The gateway's lookup counters: (answered locally, forwarded, upstream requests).
    pub fn lookup_counters(&self) -> (u64, u64, u64) {
        let text = self.s.gw.metrics();
        let get = |name: &str, labels: &[(&str, &str)]| {
            metric_value(&text, name, labels).unwrap_or(0.0) as u64
        };
        (
            get(
                "ironic_edge_requests_total",
                &[("route", "lookup"), ("outcome", "local")],
            ),
            get(
                "ironic_edge_requests_total",
                &[("route", "lookup"), ("outcome", "forwarded")],
            ),
            get(
                "ironic_edge_upstream_requests_total",
                &[("route", "lookup")],
            ),
        )
    }

    fn note(&mut self, n: &'static str) {
        *self.stats.normalised.entry(n).or_default() += 1;
    }

    /// Compares Ironic's answer with the gateway's; returns the differences.
    pub fn compare(&mut self, c: &Case, ir: &Response, gw: &Response) -> Vec<String> {
        let mut p = Vec::new();
        if ir.status != gw.status {
            p.push(format!("status {} vs {}", ir.status, gw.status));
        }
        // The header set.
        let names = |r: &Response| {
            let mut v: Vec<String> = r
                .headers
                .iter()
                .map(|(k, _)| k.to_ascii_lowercase())
                .filter(|k| !matches!(k.as_str(), "date" | "connection" | "keep-alive"))
                .collect();
            v.sort();
            v
        };
        if names(ir) != names(gw) {
            p.push(format!("header names {:?} vs {:?}", names(ir), names(gw)));
        }
        if ir.has_header("date") != gw.has_header("date") {
            p.push("Date present on one side only".into());
        }
        self.note("date");
        if ir.headers.iter().chain(gw.headers.iter()).any(|(k, _)| {
            k.eq_ignore_ascii_case("connection") || k.eq_ignore_ascii_case("keep-alive")
        }) {
            self.note("hop-by-hop");
        }
        for h in [
            "X-OpenStack-Ironic-API-Minimum-Version",
            "X-OpenStack-Ironic-API-Maximum-Version",
            "X-OpenStack-Ironic-API-Version",
            "Content-Type",
            "Allow",
            "Server",
            "Transfer-Encoding",
        ] {
            if ir.header_all(h) != gw.header_all(h) {
                p.push(format!(
                    "{h}: {:?} vs {:?}",
                    ir.header_all(h),
                    gw.header_all(h)
                ));
            }
        }
        // Request ids: shape only.
        let mut ids_seen = false;
        for (side, r) in [("Ironic", ir), ("gateway", gw)] {
            let a = r.header_all("x-openstack-request-id");
            let b = r.header_all("openstack-request-id");
            if !a.is_empty() || !b.is_empty() {
                ids_seen = true;
            }
            if a.len() > 1 || b.len() > 1 || a.first() != b.first() {
                p.push(format!("{side}: request id headers differ: {a:?} / {b:?}"));
            }
            if let Some(id) = a.first() {
                if !is_request_id(id) {
                    p.push(format!("{side}: malformed request id {id:?}"));
                }
            }
        }
        if ids_seen {
            self.note("request-id");
        }
        // Content-Length matches each side's own body (a HEAD answer has none).
        for (side, r) in [("Ironic", ir), ("gateway", gw)] {
            if c.req.method == "HEAD" {
                break;
            }
            if let Some(cl) = r.header("content-length") {
                if cl.parse::<usize>().ok() != Some(r.body.len()) {
                    p.push(format!(
                        "{side}: Content-Length {cl} for a {}-byte body",
                        r.body.len()
                    ));
                }
            }
        }
        // Bodies, normalised.
        let mut ib = ir.text();
        let mut gb = gw.text();
        let mut changed = false;
        let ih = format!("http://{}", self.s.ironic_addr);
        let gh = format!("http://{}", self.s.gw.addr());
        if ib.contains(&ih) || gb.contains(&gh) {
            ib = ib.replace(&ih, "http://HOST");
            gb = gb.replace(&gh, "http://HOST");
            self.note("links-host");
            changed = true;
        }
        if c.mints {
            let raw = serde_json::from_str::<Value>(&gb)
                .ok()
                .and_then(|v| v["config"]["agent_token"].as_str().map(str::to_string));
            let ir_token = serde_json::from_str::<Value>(&ib)
                .ok()
                .map(|v| v["config"]["agent_token"].clone());
            match raw {
                Some(t) if is_raw_token(&t) => {
                    if ib.contains(&t) {
                        p.push("Ironic's answer (second) carries the raw token too".into());
                    }
                    if ir_token != Some(Value::String("******".into())) {
                        p.push(format!(
                            "Ironic (asked second) answered agent_token {ir_token:?}, expected \"******\""
                        ));
                    }
                    gb = gb.replace(
                        &format!("\"agent_token\": \"{t}\""),
                        "\"agent_token\": \"******\"",
                    );
                    self.note("minted-token");
                    changed = true;
                }
                other => p.push(format!(
                    "the gateway (asked first) did not relay a raw minted token: {other:?}"
                )),
            }
        }
        if let (Some(a), Some(b)) = (sort_unexpected(&ib), sort_unexpected(&gb)) {
            if a != ib || b != gb {
                self.note("unexpected-arguments-order");
                changed = true;
            }
            ib = a;
            gb = b;
        }
        if !changed {
            if ir.header("content-length") != gw.header("content-length") {
                p.push(format!(
                    "Content-Length {:?} vs {:?}",
                    ir.header("content-length"),
                    gw.header("content-length")
                ));
            }
        } else if ib.len() != gb.len() {
            p.push(format!(
                "normalised body lengths {} vs {}",
                ib.len(),
                gb.len()
            ));
        }
        let ij = serde_json::from_str::<Value>(&ib).ok();
        let gj = serde_json::from_str::<Value>(&gb).ok();
        if ij != gj {
            p.push(format!("JSON bodies differ: {ij:?} vs {gj:?}"));
        } else if ib != gb {
            p.push(format!("bodies differ byte for byte: {ib:?} vs {gb:?}"));
        }
        p
    }

    /// Writes the group's summary to the real stderr (not captured by the test harness) and
    /// panics with every mismatch found.
    pub fn finish(mut self, min_cases: usize) -> Stats {
        self.check_shadow();
        let line = format!("conformance [{}]: {}", self.group, self.stats.line());
        let total_line = {
            let mut t = TOTAL.lock().unwrap_or_else(|e| e.into_inner());
            let (stats, groups) = t.get_or_insert_with(|| (Stats::default(), Vec::new()));
            stats.add(&self.stats);
            groups.push(self.group);
            format!(
                "conformance [total so far: {}]: {}",
                groups.join(", "),
                stats.line()
            )
        };
        let _ = writeln!(std::io::stderr(), "{line}\n{total_line}");
        let done = {
            let t = TOTAL.lock().unwrap_or_else(|e| e.into_inner());
            t.as_ref().and_then(|(stats, groups)| {
                DEFAULT_GROUPS
                    .iter()
                    .all(|g| groups.contains(g))
                    .then(|| (stats.clone(), groups.len()))
            })
        };
        if let Some((stats, n)) = done {
            let _ = writeln!(
                std::io::stderr(),
                "conformance TOTAL ({n} groups): {}",
                stats.line()
            );
        }
        println!("{line}");
        assert!(
            self.failures.is_empty(),
            "{} of {} gateway answers differ from Ironic's:\n{}",
            self.failures.len(),
            self.stats.comparisons,
            self.failures.join("\n")
        );
        assert!(
            self.stats.cases >= min_cases,
            "group {} ran {} cases, expected at least {min_cases}",
            self.group,
            self.stats.cases
        );
        self.stats
    }
}

/// Prints the normalisation table once (real stderr).
impl Diff<'_> {
    /// The shadow gateway's comparisons (`ironic_edge_shadow_total{rule, verdict}`): every
    /// case it was sent agrees, or differs as a documented deviation (`verdict="deviation"`);
    /// not one mismatch. Printed as one summary line.
    fn check_shadow(&mut self) {
        let Some(shadow) = &self.s.shadow else {
            return;
        };
        // Counted before each answer leaves: complete once the last answer is in.
        let text = shadow.gw.metrics();
        let mut by: BTreeMap<(String, String), u64> = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("ironic_edge_shadow_total{rule=\"") else {
                continue;
            };
            let (rule, rest) = rest.split_once("\",verdict=\"").unwrap_or_default();
            let (verdict, value) = rest.split_once("\"} ").unwrap_or_default();
            let n: u64 = value.trim().parse().unwrap_or(0);
            if n > 0 {
                by.insert((rule.to_string(), verdict.to_string()), n);
            }
        }
        let total = |f: &dyn Fn(&str, &str) -> bool| -> u64 {
            by.iter()
                .filter(|((r, v), _)| f(r, v))
                .map(|(_, n)| n)
                .sum()
        };
        let compared = total(&|_, _| true);
        let predicted = total(&|r, _| r != "forwarded");
        let mismatched = total(&|_, v| v == "mismatch");
        let summary: Vec<String> = by
            .iter()
            .map(|((r, v), n)| format!("{r}/{v}={n}"))
            .collect();
        let line = format!(
            "conformance [{} shadow]: {} cases sent, {compared} answers compared ({predicted} the edge would have answered itself): {}",
            self.group,
            self.shadow_sent,
            summary.join(" ")
        );
        let _ = writeln!(std::io::stderr(), "{line}");
        println!("{line}");
        if mismatched > 0 {
            let logs = shadow.gw.logs();
            let lines: Vec<&str> = logs
                .lines()
                .filter(|l| l.contains("shadow: mismatch"))
                .collect();
            self.failures.push(format!(
                "[{} shadow] {mismatched} mismatches:\n{}",
                self.group,
                lines.join("\n")
            ));
        }
        if !self.shadow_uncompared.is_empty() || predicted == 0 {
            self.failures.push(format!(
                "[{} shadow] {} cases sent, {compared} compared, {predicted} predicted locally; not compared: {}",
                self.group,
                self.shadow_sent,
                self.shadow_uncompared.join("; ")
            ));
        }
    }
}

pub fn print_normalisations() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut out = String::from("conformance normalisations (name: reason):\n");
        for (k, v) in NORMALISATIONS {
            out.push_str(&format!("  - {k}: {v}\n"));
        }
        let _ = write!(std::io::stderr(), "{out}");
    });
}

pub fn describe(r: &Response) -> String {
    let hs: Vec<String> = r
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("date"))
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let body = r.text();
    let body = if body.len() > 600 {
        format!("{}… ({} bytes)", &body[..600], body.len())
    } else {
        body
    };
    format!("{} [{}] {}", r.status, hs.join(" | "), body)
}

/// `req-` + a lower-case 8-4-4-4-12 UUID.
pub fn is_request_id(id: &str) -> bool {
    let Some(u) = id.strip_prefix("req-") else {
        return false;
    };
    let parts: Vec<&str> = u.split('-').collect();
    parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// A `secrets.token_urlsafe()` value: 43 characters of `[A-Za-z0-9_-]`.
pub fn is_raw_token(t: &str) -> bool {
    t.len() == 43
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// If `body` is Ironic's controller error `Unexpected arguments: a, b, …`, the same body with
/// the names sorted; otherwise `None`.
pub fn sort_unexpected(body: &str) -> Option<String> {
    let outer: Value = serde_json::from_str(body).ok()?;
    let inner: Value = serde_json::from_str(outer.get("error_message")?.as_str()?).ok()?;
    let fs = inner.get("faultstring")?.as_str()?;
    let names = fs.strip_prefix("Unexpected arguments: ")?;
    if names.contains(['{', '"', '\\']) {
        return None; // one odd name (a whole body taken as a form key), nothing to sort
    }
    let mut v: Vec<&str> = names.split(", ").collect();
    v.sort_unstable();
    let sorted = format!("Unexpected arguments: {}", v.join(", "));
    // Only the faultstring's bytes change; the surrounding bytes are kept as Ironic wrote them.
    let old = crate::common::ironic::py_str(fs);
    let new = crate::common::ironic::py_str(&sorted);
    let old_outer = crate::common::ironic::py_str(&old[1..old.len() - 1]);
    let new_outer = crate::common::ironic::py_str(&new[1..new.len() - 1]);
    Some(body.replacen(
        &old_outer[1..old_outer.len() - 1],
        &new_outer[1..new_outer.len() - 1],
        1,
    ))
}

/// Turns the gateway's node index off (when its config has one), so that lookups Ironic
/// refuses reach Ironic once and then come from the negative cache, deterministically.
pub fn disable_node_index(cfg: &mut GatewayConfig) {
    let has = cfg
        .yaml
        .get("ironic_edge")
        .and_then(|e| e.get("sync"))
        .is_some();
    if has {
        cfg.set("ironic_edge.sync.enabled", false);
    }
}

/// Whether the gateway's config turns its node index on.
pub fn node_index_on(cfg: &GatewayConfig) -> bool {
    cfg.yaml
        .get("ironic_edge")
        .and_then(|e| e.get("sync"))
        .and_then(|s| s.get("enabled"))
        .and_then(|e| e.as_bool())
        .unwrap_or(false)
}

/// Starts a stack with `seed` fast-track `manageable` nodes.
pub fn peer(seed: usize, ports_per_node: usize, require_tls: bool) -> PeerOptions {
    PeerOptions {
        seed,
        state: "manageable",
        ports_per_node,
        require_tls,
        public_url: None,
    }
}
