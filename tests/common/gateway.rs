//! The real `ironic-edge` binary, started on free ports with a generated config.

use super::fake_ironic::FakeIronic;
use super::http::{self, Request, Response};
use super::redis::RedisServer;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of the gateway binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_ironic-edge");

/// The binary the tests start: [`BIN`], or `IRONIC_EDGE_TEST_BIN` (a probe's wrapper).
fn bin() -> String {
    std::env::var("IRONIC_EDGE_TEST_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// The shipped configuration file.
pub fn shipped_conf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/ironic-edge.yaml")
}

/// A gateway config: the shipped `conf/ironic-edge.yaml` with test values on free ports.
pub struct GatewayConfig {
    pub yaml: serde_yaml::Value,
    pub dir: tempfile::TempDir,
    pub listen: SocketAddr,
    pub ops: SocketAddr,
    /// Extra environment for the process (RUST_LOG=debug by default).
    pub env: Vec<(String, String)>,
    /// Extra command-line arguments after `-c FILE` (e.g. `-u` for a graceful upgrade).
    pub args: Vec<String>,
}

impl GatewayConfig {
    /// Test defaults: short TTLs, 1 s version refresh, grace 0, files in a temp dir.
    pub fn new(upstream_url: &str, redis_url: &str) -> GatewayConfig {
        let text = std::fs::read_to_string(shipped_conf()).expect("read conf/ironic-edge.yaml");
        let yaml: serde_yaml::Value =
            serde_yaml::from_str(&text).expect("parse conf/ironic-edge.yaml");
        let dir = tempfile::Builder::new()
            .prefix("edge-gw-")
            .tempdir()
            .unwrap();
        let listen = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
        let ops = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
        let mut c = GatewayConfig {
            yaml,
            dir,
            listen,
            ops,
            env: vec![("RUST_LOG".into(), "debug".into())],
            args: Vec::new(),
        };
        let d = c.dir.path().to_path_buf();
        c.set("threads", 2)
            .set("grace_period_seconds", 0)
            .set("graceful_shutdown_timeout_seconds", 1)
            .set("pid_file", d.join("edge.pid").to_str().unwrap())
            .set("upgrade_sock", d.join("upgrade.sock").to_str().unwrap())
            .set("error_log", d.join("error.log").to_str().unwrap())
            .set(
                "ironic_edge.listeners",
                serde_yaml::from_str::<serde_yaml::Value>(&format!("[{{address: \"{listen}\"}}]"))
                    .unwrap(),
            )
            .set("ironic_edge.ops_address", ops.to_string())
            .set("ironic_edge.route_policy", "all")
            .set("ironic_edge.upstream.url", upstream_url)
            .set("ironic_edge.upstream.connect_timeout_ms", 500)
            .set("ironic_edge.upstream.read_timeout_ms", 5000)
            .set("ironic_edge.upstream.write_timeout_ms", 5000)
            .set("ironic_edge.upstream.version_refresh_seconds", 1)
            .set("ironic_edge.redis.url", redis_url)
            .set("ironic_edge.redis.key_prefix", "ironic-edge:")
            .set("ironic_edge.redis.command_timeout_ms", 250)
            .set("ironic_edge.redis.connect_timeout_ms", 250)
            .set("ironic_edge.lookup.not_found_ttl_seconds", 1)
            .set("ironic_edge.lookup.conflict_retries", 3)
            .set("ironic_edge.lookup.conflict_budget_ms", 2000)
            .set("ironic_edge.heartbeat.token_mismatch_forward_seconds", 2)
            .set("ironic_edge.heartbeat.not_found_ttl_seconds", 1)
            .set("ironic_edge.heartbeat.max_body_bytes", 1048576)
            .set("ironic_edge.node_ttl_seconds", 600)
            // Every test client is 127.0.0.1: the per-source request limits are tested apart.
            .set("ironic_edge.limits.per_source_requests_per_second", 0)
            .set("ironic_edge.limits.per_source_in_flight", 0)
            // The fake Ironic has no node listings: tests of the sync turn it on themselves.
            .set("ironic_edge.sync.enabled", false);
        c
    }

    /// Sets a key by dotted path (`ironic_edge.lookup.not_found_ttl_seconds`), creating maps.
    pub fn set<T: serde::Serialize>(&mut self, path: &str, value: T) -> &mut Self {
        let value = serde_yaml::to_value(value).expect("serialisable value");
        let mut cur = &mut self.yaml;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, p) in parts.iter().enumerate() {
            if !cur.is_mapping() {
                *cur = serde_yaml::Value::Mapping(Default::default());
            }
            let map = cur.as_mapping_mut().unwrap();
            let key = serde_yaml::Value::String(p.to_string());
            if i + 1 == parts.len() {
                map.insert(key, value);
                return self;
            }
            if !map.contains_key(&key) {
                map.insert(key.clone(), serde_yaml::Value::Mapping(Default::default()));
            }
            cur = map.get_mut(&key).unwrap();
        }
        self
    }

    /// Removes a key by dotted path.
    pub fn remove(&mut self, path: &str) -> &mut Self {
        let parts: Vec<&str> = path.split('.').collect();
        let mut cur = &mut self.yaml;
        for (i, p) in parts.iter().enumerate() {
            let key = serde_yaml::Value::String(p.to_string());
            let Some(map) = cur.as_mapping_mut() else {
                return self;
            };
            if i + 1 == parts.len() {
                map.remove(&key);
                return self;
            }
            match map.get_mut(&key) {
                Some(v) => cur = v,
                None => return self,
            }
        }
        self
    }

    /// Any other edit of the YAML tree.
    pub fn edit(&mut self, f: impl FnOnce(&mut serde_yaml::Value)) -> &mut Self {
        f(&mut self.yaml);
        self
    }

    /// The node index on, synced every second (against a fake Ironic serving the listings,
    /// `MiniIronic::install_with_listings`), and repeated heartbeats coalesced for 60 s.
    pub fn with_index_and_coalescing(&mut self) -> &mut Self {
        self.set("ironic_edge.sync.enabled", true)
            .set("ironic_edge.sync.interval_seconds", 1)
            .set("ironic_edge.heartbeat.coalesce_seconds", 60)
    }

    /// Writes a sealing key into the config's folder and points `seal_key_file` at it.
    pub fn with_seal_key(&mut self) -> &mut Self {
        let key = self.dir.path().join("seal.key");
        std::fs::write(&key, "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n").unwrap();
        // The gateway refuses a key file the group or others can read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let key = key.to_str().unwrap().to_string();
        self.set("ironic_edge.seal_key_file", key)
    }

    pub fn env(&mut self, k: &str, v: &str) -> &mut Self {
        self.env.retain(|(n, _)| n != k);
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("ironic-edge.yaml")
    }

    /// Writes the config file and returns its path.
    pub fn write(&self) -> PathBuf {
        let p = self.path();
        std::fs::write(&p, serde_yaml::to_string(&self.yaml).unwrap()).unwrap();
        p
    }
}

/// A running gateway process. Dropping it sends SIGTERM, then SIGKILL after a second.
pub struct Gateway {
    child: Option<Child>,
    pub cfg: GatewayConfig,
    log_path: PathBuf,
}

impl Gateway {
    /// Writes the config, spawns `ironic-edge -c FILE` and waits until `GET /status` answers 200
    /// (20 s, then panics with the captured log).
    pub fn start(cfg: GatewayConfig) -> Gateway {
        let gw = Self::spawn(cfg);
        gw.wait_status(Duration::from_secs(20));
        gw
    }

    /// Spawns without waiting.
    pub fn spawn(cfg: GatewayConfig) -> Gateway {
        let conf = cfg.write();
        let log_path = cfg.dir.path().join("gateway.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("-c")
            .arg(&conf)
            .args(&cfg.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .current_dir(cfg.dir.path());
        for (k, v) in &cfg.env {
            cmd.env(k, v);
        }
        super::die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("spawn ironic-edge");
        Gateway {
            child: Some(child),
            cfg,
            log_path,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.cfg.listen
    }
    pub fn ops_addr(&self) -> SocketAddr {
        self.cfg.ops
    }
    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.cfg.listen)
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        super::redis::read_to_string_lossy(&self.log_path)
    }

    /// The exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits until the ops `GET /status` answers 200 and the first listener accepts.
    ///
    /// The gateway itself brings `/status` up only once the agents' listener accepts
    /// (`listen_ready`, tested by `gateway_config`); the harness checks the listener too, so
    /// that a start it reports is one a test can connect to whatever the config.
    pub fn wait_status(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(mut c) = http::Client::try_connect(self.cfg.ops) {
                c.set_read_timeout(Duration::from_secs(2));
                if let Ok(r) = c.try_send(&Request::get("/status")) {
                    if r.status == 200 && std::net::TcpStream::connect(self.cfg.listen).is_ok() {
                        return;
                    }
                }
            }
            let exited = self
                .child
                .as_ref()
                .map(|c| !super::alive(c.id()))
                .unwrap_or(true);
            if exited {
                panic!(
                    "ironic-edge exited before /status answered; log:\n{}",
                    self.logs()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "ironic-edge /status on {} did not answer 200 within {timeout:?}; log:\n{}",
                    self.cfg.ops,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the gateway knows the upstream's version range: a lookup with no version
    /// header (1.1, so Ironic's 404; or 403 where the test's source is refused) is answered by
    /// the gateway itself, without reaching the fake, and carries the fake's maximum version.
    /// Panics after 10 s.
    pub fn wait_versions(&self, fake: &FakeIronic) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let want = fake.max_version();
        let mut last = None;
        loop {
            let before = fake.lookups();
            let r = http::Client::try_connect(self.cfg.listen).and_then(|mut c| {
                c.try_send(&Request::get("/v1/lookup?addresses=52:54:00:00:00:01"))
            });
            let after = fake.lookups();
            if let Ok(r) = r {
                if (r.status == 404 || r.status == 403)
                    && before == after
                    && r.header("X-OpenStack-Ironic-API-Maximum-Version") == Some(want.as_str())
                {
                    return;
                }
                last = Some(format!("{} {:?} {}", r.status, r.headers, r.text()));
            }
            if Instant::now() > deadline {
                panic!(
                    "the gateway did not start answering version-gated lookups locally (max {want}); last answer {last:?}; log:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends a request to the agent listener on a fresh connection.
    pub fn send(&self, req: &Request) -> Response {
        http::send(self.cfg.listen, req)
    }

    pub fn get(&self, target: &str) -> Response {
        self.send(&Request::get(target))
    }

    /// `GET /metrics` on the ops listener.
    pub fn metrics(&self) -> String {
        http::get(self.cfg.ops, "/metrics", &[]).text()
    }

    /// The value of one Prometheus sample whose labels include all of `labels` (summed over the
    /// matching series), `None` when no series matches.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics(), name, labels)
    }

    /// SIGTERM, then waits up to `timeout` for the exit; returns the status if it exited.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        super::signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.child.is_some() && self.terminate(Duration::from_secs(1)).is_none() {
            self.kill();
        }
        if std::thread::panicking() {
            let logs = self.logs();
            let lines: Vec<&str> = logs.lines().collect();
            let from = lines.len().saturating_sub(80);
            eprintln!(
                "---- ironic-edge log (last {} lines) ----\n{}\n---- end of log ----",
                lines.len() - from,
                lines[from..].join("\n")
            );
        }
    }
}

/// Sums the samples of `name` whose label set includes every pair of `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (n, lbls) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let ok = labels
            .iter()
            .all(|(k, v)| lbls.split(',').any(|p| p.trim() == format!("{k}=\"{v}\"")));
        if ok {
            if let Ok(v) = value.trim().parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

/// Runs `ironic-edge <args>` to completion (20 s limit) and returns its output.
pub fn run_bin(args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    super::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().expect("spawn ironic-edge");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "ironic-edge {args:?} still running after 20 s; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fake Ironic, a Redis and a gateway between them, ready (versions learned).
/// Field order = drop order: the gateway stops first.
pub struct Env {
    pub gw: Gateway,
    pub redis: RedisServer,
    pub fake: FakeIronic,
}

impl Env {
    pub fn start() -> Env {
        Self::start_with(|_| {})
    }

    /// Lets the test change the config before the start.
    pub fn start_with(f: impl FnOnce(&mut GatewayConfig)) -> Env {
        Self::start_with_fake(FakeIronic::start(), f)
    }

    /// With a fake the test already programmed (routes, version range).
    pub fn start_with_fake(fake: FakeIronic, f: impl FnOnce(&mut GatewayConfig)) -> Env {
        let redis = RedisServer::start();
        let mut cfg = GatewayConfig::new(&fake.url(), &redis.url());
        f(&mut cfg);
        let gw = Gateway::start(cfg);
        gw.wait_versions(&fake);
        fake.clear_log();
        Env { gw, redis, fake }
    }

    pub fn send(&self, req: &Request) -> Response {
        self.gw.send(req)
    }

    /// The value of an unlabelled counter on the ops listener (0 when absent).
    pub fn counter(&self, name: &str) -> u64 {
        self.gw
            .metrics()
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or(0)
    }

    /// Waits until the node index is complete and fresh: a never-seen MAC (so not in the
    /// negative cache) is answered at the edge.
    /// Heartbeats that reached the fake Ironic carrying this agent token.
    pub fn heartbeats_forwarded_with(&self, token: &str) -> usize {
        self.fake
            .requests()
            .iter()
            .filter(|r| {
                r.path.starts_with("/v1/heartbeat/")
                    && r.json_str("agent_token").as_deref() == Some(token)
            })
            .count()
    }

    /// Repeats a verified heartbeat (`send`, carrying `token`) until the gateway accepts it at
    /// the edge without asking Ironic; panics after 10 s.
    pub fn wait_until_coalesced(&self, token: &str, send: impl Fn() -> Response) {
        let coalesced = super::wait_for(Duration::from_secs(10), || {
            let before = self.heartbeats_forwarded_with(token);
            let r = send();
            (r.status == 202 && self.heartbeats_forwarded_with(token) == before).then_some(())
        });
        assert!(
            coalesced.is_some(),
            "repeats are coalesced:\n{}",
            self.gw.logs()
        );
    }

    pub fn wait_for_index(&self) {
        let local = || {
            self.gw
                .metric(
                    "ironic_edge_requests_total",
                    &[("route", "lookup"), ("outcome", "local")],
                )
                .unwrap_or(0.0)
        };
        let ready = super::wait_for(Duration::from_secs(20), || {
            let before = local();
            let r = self.send(&super::lookup(&super::ironic::random_mac()));
            (r.status == 404 && local() > before).then_some(())
        });
        assert!(ready.is_some(), "no node index:\n{}", self.gw.logs());
    }
}
