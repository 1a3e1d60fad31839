//! The `ironic_edge:` section of the proxy conf: its keys, their defaults and their validation.
//!
//! Pingora reads the same YAML file for its own server keys and ignores this section; this
//! module ignores Pingora's keys. Every problem is reported as `field.path: reason` so that
//! `ironic-edge -t` can name the bad field.

use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem, naming the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Which requests other than the agent endpoints are forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutePolicy {
    /// Every request is forwarded.
    All,
    /// Only what a ramdisk needs (`/`, `/v1`, lookup, heartbeat, continue_inspection); the rest
    /// gets Ironic's 403. For split-horizon deployments where the provisioning network must not
    /// reach the admin API.
    Ramdisk,
}

/// How the agent endpoints are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The gateway answers what it safely can at the edge.
    #[default]
    Enforce,
    /// For adoption: every agent request is decided as in `enforce`, then sent to Ironic,
    /// whose answer the agent gets; the two answers are compared (`crate::shadow`).
    Shadow,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// PEM file of the CAs whose client certificates the listener accepts.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub client_auth: ClientAuth,
    #[serde(default)]
    pub min_version: TlsVersion,
    /// IANA names of the cipher suites offered (empty: every suite rustls offers for the
    /// versions allowed).
    #[serde(default)]
    pub cipher_suites: Vec<String>,
}

/// Whether a TLS listener asks its clients for a certificate (see [`crate::tls`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No certificate is asked for.
    #[default]
    None,
    /// A certificate is asked for; a client without one is served, one with a certificate
    /// `client_ca` did not issue is refused.
    Optional,
    /// A client without a certificate issued by `client_ca` is refused in the handshake.
    Required,
}

/// The oldest TLS protocol version a listener accepts: `"1.2"` or `"1.3"` (a bare YAML
/// number is read the same way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    /// Ironic 38+ tells agents to use TLS 1.3 (lookup's `config.tls_min_version`).
    #[default]
    V1_3,
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, not an untagged enum: the error keeps the field's path.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = TlsVersion;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"1.2\" or \"1.3\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TlsVersion, E> {
                match v {
                    "1.2" => Ok(TlsVersion::V1_2),
                    "1.3" => Ok(TlsVersion::V1_3),
                    other => Err(E::custom(format!(
                        "unknown TLS version {other:?}: \"1.2\" or \"1.3\""
                    ))),
                }
            }
            // `min_version: 1.2` unquoted is a YAML float: taken as written.
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<TlsVersion, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<TlsVersion, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<TlsVersion, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub address: String,
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// The source blocks this listener serves (empty: every source not denied).
    #[serde(default)]
    pub allow: Vec<String>,
    /// The source blocks it never serves (checked first).
    #[serde(default)]
    pub deny: Vec<String>,
}

impl Listener {
    /// Its address; the error names the field (`i`: its place in `ironic_edge.listeners`).
    pub(crate) fn socket_addr(&self, i: usize) -> Result<SocketAddr, ConfigError> {
        parse_socket_addr(&self.address)
            .map_err(|r| ConfigError::new(format!("ironic_edge.listeners[{i}].address"), r))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub url: String,
    /// Agent requests (lookups, heartbeats) in flight to Ironic at once; 0: no cap.
    pub max_agent_requests_in_flight: usize,
    /// Agent requests waiting for a place (one per node); past that they are refused.
    pub max_agent_requests_queued: usize,
    /// The gateway answers every agent request within this, counted from its arrival: IPA
    /// gives up after 30 s (`http_request_timeout`), and an answer it never reads is worse than
    /// an error (a lost lookup answer that minted a token bricks the agent). A request still
    /// queued for the cap by then is not sent; a lookup still at Ironic gets 503 while its
    /// answer is awaited and kept for the agent's retry.
    pub agent_answer_within_ms: u64,
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
    /// A lookup's answer is awaited this long (instead of `read_timeout_ms`): Ironic mints the
    /// token at the end of a lookup however long it takes (one took 150 s under a boot storm,
    /// with no RPC timeout in an all-in-one Ironic), and only an answer the gateway receives
    /// can reach the agent's retry; one it gave up on bricks the agent.
    pub lookup_read_timeout_ms: u64,
    pub write_timeout_ms: u64,
    pub ca_file: String,
    pub verify_tls: bool,
    pub version_refresh_seconds: u64,
    /// The learnt rate of everything sent to Ironic (the load governor).
    pub budget: BudgetConfig,
}

/// `upstream.budget`: the rate of requests to Ironic, learnt from its answers between these
/// bounds (it grows while it holds requests back and Ironic keeps up, halves when Ironic is
/// overloaded).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    pub initial_per_second: u32,
    pub min_per_second: u32,
    pub max_per_second: u32,
    /// An answer slower than this counts as overload.
    pub slow_answer_ms: u64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        // A single Ironic API process answers some tens of agent requests a second; the rate
        // climbs from there while Ironic keeps up. An answer is slow only near IPA's own 30 s
        // timeout: a busy Ironic answering in seconds is busy, not overloaded (its overload
        // says 503).
        BudgetConfig {
            initial_per_second: 20,
            min_per_second: 2,
            max_per_second: 500,
            slow_answer_ms: 20_000,
        }
    }
}

impl BudgetConfig {
    pub(crate) fn settings(&self) -> crate::upstream::governor::BudgetSettings {
        crate::upstream::governor::BudgetSettings {
            initial_per_second: f64::from(self.initial_per_second),
            min_per_second: f64::from(self.min_per_second),
            max_per_second: f64::from(self.max_per_second),
            slow_answer_ms: self.slow_answer_ms,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let b = self;
        positive(
            "ironic_edge.upstream.budget.min_per_second",
            u64::from(b.min_per_second),
        )?;
        if b.max_per_second < b.min_per_second {
            return Err(ConfigError::new(
                "ironic_edge.upstream.budget.max_per_second",
                "must be at least min_per_second",
            ));
        }
        if !(b.min_per_second..=b.max_per_second).contains(&b.initial_per_second) {
            return Err(ConfigError::new(
                "ironic_edge.upstream.budget.initial_per_second",
                "must be between min_per_second and max_per_second",
            ));
        }
        positive(
            "ironic_edge.upstream.budget.slow_answer_ms",
            b.slow_answer_ms,
        )
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: "http://127.0.0.1:6385".into(),
            max_agent_requests_in_flight: 32,
            max_agent_requests_queued: 4096,
            agent_answer_within_ms: 25_000,
            connect_timeout_ms: 2000,
            read_timeout_ms: 65_000,
            lookup_read_timeout_ms: 300_000,
            write_timeout_ms: 10_000,
            ca_file: String::new(),
            verify_tls: true,
            version_refresh_seconds: 60,
            budget: BudgetConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: String,
    pub password: String,
    pub key_prefix: String,
    pub command_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Entries of the in-process view of what the agent path reads most (the node index, node
    /// records, negative caches): Redis's server-assisted client-side caching (`CLIENT
    /// TRACKING`, RESP3), which Redis keeps consistent by invalidating an entry whenever any
    /// process changes its key. 0: off (every read goes to Redis).
    pub view_entries: usize,
    /// The master is found through Redis Sentinel (and followed across failovers) instead of
    /// at `url`'s host; `url` still gives the database, the master's password and TLS.
    pub sentinel: Option<SentinelConfig>,
}

/// `redis.sentinel`: the sentinels that know the master, and how to reach them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SentinelConfig {
    /// The name the sentinels monitor the master under (`sentinel monitor <name> ...`).
    pub master_name: String,
    /// `host:port` of each sentinel (asked in turn; three or more, in other failure domains).
    pub nodes: Vec<String>,
    /// The sentinels' own password (`requirepass` of the sentinels), if any.
    pub password: String,
    /// The sentinels are reached over TLS.
    pub tls: bool,
}

impl SentinelConfig {
    /// Each sentinel's `(host, port)`, or the field and why it is refused.
    pub(crate) fn addresses(&self) -> Result<Vec<(String, u16)>, ConfigError> {
        if self.nodes.is_empty() {
            return Err(ConfigError::new(
                "ironic_edge.redis.sentinel.nodes",
                "at least one sentinel (host:port) is needed",
            ));
        }
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                parse_host_port(node).ok_or_else(|| {
                    ConfigError::new(
                        format!("ironic_edge.redis.sentinel.nodes[{i}]"),
                        format!("{node:?} is not host:port"),
                    )
                })
            })
            .collect()
    }
}

/// `host:port` (`[v6]:port` for an IPv6 address): a non-empty host without white space, a
/// port from 1 to 65535.
pub(crate) fn parse_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    (!host.is_empty() && !host.chars().any(|c| c.is_whitespace() || c == '/'))
        .then(|| (host.to_string(), port))
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379/0".into(),
            password: String::new(),
            key_prefix: "ironic-edge:".into(),
            command_timeout_ms: 250,
            connect_timeout_ms: 250,
            view_entries: 20_000,
            sentinel: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LookupConfig {
    pub not_found_ttl_seconds: u64,
    /// A lookup answer that minted a token is kept (sealed) this long for one replay to the
    /// same caller (same request, same source address) whose answer was lost, until its first
    /// heartbeat succeeds. 0: off. Needs `seal_key_file`.
    pub replay_window_seconds: u64,
    pub conflict_retries: u32,
    pub conflict_budget_ms: u64,
}

impl Default for LookupConfig {
    fn default() -> Self {
        LookupConfig {
            not_found_ttl_seconds: 5,
            replay_window_seconds: 120,
            conflict_retries: 8,
            conflict_budget_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    /// In states where Ironic only records heartbeats, a verified heartbeat identical to the
    /// last one Ironic accepted less than this long ago is answered 202 at the edge (0: never).
    /// At most 240, so that `agent_last_heartbeat` stays well inside fast track's 300 s.
    pub coalesce_seconds: u64,
    pub token_mismatch_forward_seconds: u64,
    pub not_found_ttl_seconds: u64,
    pub max_body_bytes: usize,
    /// When Ironic fails (unreachable, timeout, 5xx), a heartbeat whose token the gateway
    /// verified gets 202; the latest one of each node is kept (sealed) and relayed once Ironic
    /// is back. Needs `seal_key_file`.
    pub relay_when_upstream_fails: bool,
    /// Relayed heartbeats in flight at once.
    pub relay_concurrency: usize,
    /// A kept heartbeat older than this is dropped (the agent has sent newer ones since).
    pub relay_ttl_seconds: u64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            coalesce_seconds: 60,
            token_mismatch_forward_seconds: 30,
            not_found_ttl_seconds: 10,
            max_body_bytes: 1024 * 1024,
            relay_when_upstream_fails: true,
            relay_concurrency: 8,
            relay_ttl_seconds: 3600,
        }
    }
}

/// How the sync service authenticates to the Ironic API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncAuthType {
    Noauth,
    HttpBasic,
    Token,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncAuth {
    #[serde(rename = "type")]
    pub kind: SyncAuthType,
    pub username: String,
    pub password: String,
    /// Sent as `X-Auth-Token` (a keystone token or an application credential's token).
    pub token: String,
}

impl Default for SyncAuth {
    fn default() -> Self {
        SyncAuth {
            kind: SyncAuthType::Noauth,
            username: String::new(),
            password: String::new(),
            token: String::new(),
        }
    }
}

/// The node sync: a node index in Redis kept fresh from the Ironic API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    pub enabled: bool,
    /// The staleness bound: a sync round runs this often, and an index older than twice
    /// this (plus 5 s) is not used.
    pub interval_seconds: u64,
    /// A full round (which also notices deletions) this often; the others fetch changes only.
    pub full_resync_seconds: u64,
    pub page_size: u32,
    /// One gateway process syncs at a time; another takes over this long after it dies.
    pub lease_seconds: u64,
    /// Ironic's `[api]restrict_lookup` and `[deploy]fast_track`, to decide lookups as it does.
    pub restrict_lookup: bool,
    pub fast_track_default: bool,
    pub auth: SyncAuth,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            enabled: true,
            interval_seconds: 10,
            full_resync_seconds: 600,
            page_size: 500,
            lease_seconds: 5,
            restrict_lookup: true,
            fast_track_default: false,
            auth: SyncAuth::default(),
        }
    }
}

/// What one client may hold: deadlines for slow senders and a cap on connections per source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// A request head (request line and headers) must arrive whole within this, counted from
    /// its first byte; a connection trickling it is closed.
    pub request_head_timeout_ms: u64,
    /// A connection may wait this long for the first byte of its next request (a fresh one
    /// for its first): then it is closed quietly.
    pub idle_timeout_ms: u64,
    /// The body of a lookup or heartbeat must keep up this rate after a grace of
    /// `request_head_timeout_ms` (1 MiB at 32 KiB/s: 32 s plus the grace); slower is cut.
    pub agent_body_min_bytes_per_second: u64,
    /// Open connections from one source address (an IPv6 source counts by its /64);
    /// the next is closed before any HTTP is read. Trusted proxies are exempt. 0: no cap.
    pub max_connections_per_source: usize,
    /// Agent requests (lookups, heartbeats) per second from one source (IPv6: its /64). Over
    /// it, lookups and unverified heartbeats get Ironic's error shape with 429; a verified
    /// heartbeat is still accepted (and kept for the relay). 0: no limit.
    pub per_source_requests_per_second: u32,
    /// Agent requests in flight from one source at once; over it, as above. 0: no limit.
    pub per_source_in_flight: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            request_head_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            agent_body_min_bytes_per_second: 32 * 1024,
            max_connections_per_source: 256,
            // IPA sends about one request per 5 s at most (a lookup every 1-60 s, a heartbeat
            // every 5-180 s, two `GET /` per boot): 20 a second is a wide margin.
            per_source_requests_per_second: 20,
            per_source_in_flight: 8,
        }
    }
}

/// The gateway's own section, `ironic_edge:`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    pub listeners: Vec<Listener>,
    pub ops_address: String,
    pub route_policy: RoutePolicy,
    /// `enforce` (default) or `shadow` (decide, but let Ironic answer, and compare).
    pub mode: Mode,
    pub upstream: UpstreamConfig,
    pub redis: RedisConfig,
    pub lookup: LookupConfig,
    pub heartbeat: HeartbeatConfig,
    pub sync: SyncConfig,
    pub node_ttl_seconds: u64,
    /// A file holding the sealing key (32 random bytes, base64): what must carry an agent
    /// token through Redis is encrypted with it. The same key on every gateway process.
    /// Empty: nothing is sealed, and the features that need it are off.
    pub seal_key_file: String,
    pub limits: LimitsConfig,
    /// Addresses or CIDR blocks of proxies (load balancers) in front of the gateway: from
    /// them, the client address is taken from `X-Forwarded-For` (the right-most address that
    /// is not itself a trusted proxy). Empty: the TCP peer is the client.
    pub trusted_proxies: Vec<String>,
    /// A file the structured access log is appended to (one JSON line per request); empty:
    /// none.
    pub access_log: String,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            listeners: vec![Listener {
                address: "127.0.0.1:6380".into(),
                tls: None,
                allow: Vec::new(),
                deny: Vec::new(),
            }],
            ops_address: "127.0.0.1:9380".into(),
            route_policy: RoutePolicy::All,
            mode: Mode::Enforce,
            upstream: UpstreamConfig::default(),
            redis: RedisConfig::default(),
            lookup: LookupConfig::default(),
            heartbeat: HeartbeatConfig::default(),
            sync: SyncConfig::default(),
            node_ttl_seconds: 86_400,
            seal_key_file: String::new(),
            access_log: String::new(),
            limits: LimitsConfig::default(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// The upstream Ironic, parsed from `upstream.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    pub tls: bool,
    /// Host name or IP as written (the TLS SNI and certificate name).
    pub host: String,
    pub port: u16,
    /// The resolved address, resolved once at start-up (never per request).
    pub addr: SocketAddr,
    /// A path prefix the Ironic API is mounted under (empty or `/something`, no trailing `/`).
    pub base_path: String,
}

#[derive(Deserialize)]
struct FileLayout {
    #[serde(default)]
    ironic_edge: Option<EdgeConfig>,
}

impl EdgeConfig {
    /// Parses the `ironic_edge:` section out of the whole proxy conf text. A missing section
    /// means every default.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let layout: FileLayout = serde_yaml::from_str(text).map_err(|e| yaml_error(&e))?;
        let cfg = layout.ironic_edge.unwrap_or_default();
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("conf", format!("cannot read {}: {e}", path.display()))
        })?;
        Self::from_yaml(&text)
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(ConfigError::new(
                "ironic_edge.listeners",
                "at least one listener is required",
            ));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            l.socket_addr(i)?;
            crate::source_policy::SourcePolicy::parse(i, &l.allow, &l.deny)?;
            if let Some(tls) = &l.tls {
                for (name, p) in [("cert", &tls.cert), ("key", &tls.key)] {
                    if !p.is_file() {
                        return Err(ConfigError::new(
                            format!("ironic_edge.listeners[{i}].tls.{name}"),
                            format!("no such file: {}", p.display()),
                        ));
                    }
                }
                crate::tls::check(i, tls)?;
            }
        }
        if !self.access_log.is_empty() {
            let path = std::path::Path::new(&self.access_log);
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            if !dir.is_dir() || path.is_dir() {
                return Err(ConfigError::new(
                    "ironic_edge.access_log",
                    format!("{}: not a file in an existing directory", path.display()),
                ));
            }
        }
        let ops = parse_socket_addr(&self.ops_address)
            .map_err(|r| ConfigError::new("ironic_edge.ops_address", r))?;
        if !ops.ip().is_loopback() {
            return Err(ConfigError::new(
                "ironic_edge.ops_address",
                "must be a loopback address (metrics and status are not for the provisioning network)",
            ));
        }
        self.upstream_target()?;
        let u = &self.upstream;
        positive(
            "ironic_edge.upstream.connect_timeout_ms",
            u.connect_timeout_ms,
        )?;
        positive("ironic_edge.upstream.read_timeout_ms", u.read_timeout_ms)?;
        if u.lookup_read_timeout_ms < u.read_timeout_ms {
            return Err(ConfigError::new(
                "ironic_edge.upstream.lookup_read_timeout_ms",
                "must be at least read_timeout_ms",
            ));
        }
        positive("ironic_edge.upstream.write_timeout_ms", u.write_timeout_ms)?;
        if !(1000..=30_000).contains(&u.agent_answer_within_ms) {
            return Err(ConfigError::new(
                "ironic_edge.upstream.agent_answer_within_ms",
                "must be between 1000 and 30000 (IPA gives up after 30 s)",
            ));
        }
        positive(
            "ironic_edge.upstream.version_refresh_seconds",
            u.version_refresh_seconds,
        )?;
        u.budget.validate()?;
        if !u.ca_file.is_empty() && !Path::new(&u.ca_file).is_file() {
            return Err(ConfigError::new(
                "ironic_edge.upstream.ca_file",
                format!("no such file: {}", u.ca_file),
            ));
        }
        self.redis_connection_info()?;
        positive(
            "ironic_edge.redis.command_timeout_ms",
            self.redis.command_timeout_ms,
        )?;
        positive(
            "ironic_edge.redis.connect_timeout_ms",
            self.redis.connect_timeout_ms,
        )?;
        if self.redis.view_entries > 10_000_000 {
            return Err(ConfigError::new(
                "ironic_edge.redis.view_entries",
                "at most 10000000 (each entry is one read's answer)",
            ));
        }
        if self.redis.key_prefix.chars().any(|c| c.is_whitespace()) {
            return Err(ConfigError::new(
                "ironic_edge.redis.key_prefix",
                "must not contain white space",
            ));
        }
        if let Some(sentinel) = &self.redis.sentinel {
            if sentinel.master_name.trim().is_empty() {
                return Err(ConfigError::new(
                    "ironic_edge.redis.sentinel.master_name",
                    "must name the master the sentinels monitor",
                ));
            }
            sentinel.addresses()?;
            if !(self.redis.url.starts_with("redis://") || self.redis.url.starts_with("rediss://"))
            {
                return Err(ConfigError::new(
                    "ironic_edge.redis.url",
                    "with redis.sentinel, must start with redis:// or rediss:// (the master is \
                     reached over TCP at the address the sentinels give)",
                ));
            }
        }
        positive(
            "ironic_edge.lookup.not_found_ttl_seconds",
            self.lookup.not_found_ttl_seconds,
        )?;
        if self.lookup.conflict_retries > 10 {
            return Err(ConfigError::new(
                "ironic_edge.lookup.conflict_retries",
                "at most 10",
            ));
        }
        positive(
            "ironic_edge.heartbeat.not_found_ttl_seconds",
            self.heartbeat.not_found_ttl_seconds,
        )?;
        positive(
            "ironic_edge.heartbeat.token_mismatch_forward_seconds",
            self.heartbeat.token_mismatch_forward_seconds,
        )?;
        if self.heartbeat.max_body_bytes < 4096 || self.heartbeat.max_body_bytes > 16 * 1024 * 1024
        {
            return Err(ConfigError::new(
                "ironic_edge.heartbeat.max_body_bytes",
                "must be between 4096 and 16777216",
            ));
        }
        if self.heartbeat.coalesce_seconds > 240 {
            return Err(ConfigError::new(
                "ironic_edge.heartbeat.coalesce_seconds",
                "at most 240 (Ironic's fast track needs a recorded heartbeat every 300 s)",
            ));
        }
        positive("ironic_edge.node_ttl_seconds", self.node_ttl_seconds)?;
        if !(1..=256).contains(&self.heartbeat.relay_concurrency) {
            return Err(ConfigError::new(
                "ironic_edge.heartbeat.relay_concurrency",
                "must be between 1 and 256",
            ));
        }
        positive(
            "ironic_edge.heartbeat.relay_ttl_seconds",
            self.heartbeat.relay_ttl_seconds,
        )?;
        self.seal_key()?;
        self.validate_limits()?;
        self.trusted_proxy_nets()?;
        let sync = &self.sync;
        positive("ironic_edge.sync.interval_seconds", sync.interval_seconds)?;
        positive("ironic_edge.sync.lease_seconds", sync.lease_seconds)?;
        if sync.full_resync_seconds < sync.interval_seconds {
            return Err(ConfigError::new(
                "ironic_edge.sync.full_resync_seconds",
                "must be at least interval_seconds",
            ));
        }
        if !(10..=1000).contains(&sync.page_size) {
            return Err(ConfigError::new(
                "ironic_edge.sync.page_size",
                "must be between 10 and 1000",
            ));
        }
        match sync.auth.kind {
            SyncAuthType::Noauth => {}
            SyncAuthType::HttpBasic if sync.auth.username.is_empty() => {
                return Err(ConfigError::new(
                    "ironic_edge.sync.auth.username",
                    "required for http_basic",
                ));
            }
            SyncAuthType::HttpBasic => {}
            SyncAuthType::Token if sync.auth.token.is_empty() => {
                return Err(ConfigError::new(
                    "ironic_edge.sync.auth.token",
                    "required for type token",
                ));
            }
            SyncAuthType::Token => {}
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if !(500..=60_000).contains(&l.request_head_timeout_ms) {
            return Err(ConfigError::new(
                "ironic_edge.limits.request_head_timeout_ms",
                "must be between 500 and 60000",
            ));
        }
        if !(1000..=3_600_000).contains(&l.idle_timeout_ms) {
            return Err(ConfigError::new(
                "ironic_edge.limits.idle_timeout_ms",
                "must be between 1000 and 3600000",
            ));
        }
        if l.agent_body_min_bytes_per_second < 1024 {
            return Err(ConfigError::new(
                "ironic_edge.limits.agent_body_min_bytes_per_second",
                "must be at least 1024 (slower keeps a 1 MiB body open for over 17 minutes)",
            ));
        }
        Ok(())
    }

    /// `trusted_proxies`, parsed.
    pub fn trusted_proxy_nets(&self) -> Result<crate::client_addr::TrustedProxies, ConfigError> {
        let mut nets = Vec::with_capacity(self.trusted_proxies.len());
        for (i, text) in self.trusted_proxies.iter().enumerate() {
            let net = crate::client_addr::IpNet::parse(text)
                .map_err(|r| ConfigError::new(format!("ironic_edge.trusted_proxies[{i}]"), r))?;
            nets.push(net);
        }
        Ok(crate::client_addr::TrustedProxies::new(nets))
    }

    /// The upstream Ironic's address, resolved now (at start-up, not per request).
    pub fn upstream_target(&self) -> Result<UpstreamTarget, ConfigError> {
        let field = "ironic_edge.upstream.url";
        let url = url::Url::parse(&self.upstream.url)
            .map_err(|e| ConfigError::new(field, e.to_string()))?;
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(ConfigError::new(
                    field,
                    format!("scheme must be http or https, not {other}"),
                ))
            }
        };
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(ConfigError::new(
                field,
                "must not carry a query, fragment or credentials",
            ));
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(h) => h.to_string(),
            None => return Err(ConfigError::new(field, "has no host")),
        };
        let port = url
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        let addr = resolve(&host, port).map_err(|r| ConfigError::new(field, r))?;
        let base_path = url.path().trim_end_matches('/').to_string();
        Ok(UpstreamTarget {
            tls,
            host,
            port,
            addr,
            base_path,
        })
    }

    /// The Redis connection settings: `redis.url` with `redis.password` applied.
    pub fn redis_connection_info(&self) -> Result<redis::ConnectionInfo, ConfigError> {
        use redis::IntoConnectionInfo;
        let field = "ironic_edge.redis.url";
        if !(self.redis.url.starts_with("redis://")
            || self.redis.url.starts_with("rediss://")
            || self.redis.url.starts_with("redis+unix://")
            || self.redis.url.starts_with("unix://"))
        {
            return Err(ConfigError::new(
                field,
                "must start with redis://, rediss:// or unix://",
            ));
        }
        let info = self
            .redis
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| ConfigError::new(field, e.to_string()))?;
        let mut settings = info.redis_settings().clone();
        if !self.redis.password.is_empty() {
            settings = settings.set_password(&self.redis.password);
        }
        if self.redis.view_entries > 0 {
            // Invalidations of the in-process view arrive as RESP3 pushes.
            settings = settings.set_protocol(redis::ProtocolVersion::RESP3);
        }
        Ok(info.set_redis_settings(settings))
    }

    /// The sealing key, read from `seal_key_file` (`None` when none is configured).
    pub fn seal_key(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        use base64::Engine;
        let field = "ironic_edge.seal_key_file";
        if self.seal_key_file.is_empty() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&self.seal_key_file).map_err(|e| {
            ConfigError::new(field, format!("cannot read {}: {e}", self.seal_key_file))
        })?;
        // Whoever can read the key can open every kept token and forge token hashes; whoever
        // can write it can swap it: the file must be the service user's alone.
        let mode = std::fs::metadata(&self.seal_key_file)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
            .map_err(|e| {
                ConfigError::new(field, format!("cannot read {}: {e}", self.seal_key_file))
            })?;
        if let Some(why) = seal_key_mode_problem(mode) {
            return Err(ConfigError::new(
                field,
                format!(
                    "{} is {why} (mode {:o}): make it private, for example chmod 600 {}",
                    self.seal_key_file,
                    mode & 0o777,
                    self.seal_key_file
                ),
            ));
        }
        let key = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| {
                ConfigError::new(
                    field,
                    "the file must hold base64 (for example: openssl rand -base64 32)",
                )
            })?;
        if key.len() != 32 {
            return Err(ConfigError::new(
                field,
                format!("the key must be 32 bytes, not {}", key.len()),
            ));
        }
        Ok(Some(key))
    }

    pub fn redis_command_timeout(&self) -> Duration {
        Duration::from_millis(self.redis.command_timeout_ms)
    }
}

/// Why a seal key file with these permission bits is refused (`None`: private enough): any
/// access for the group or others.
pub(crate) fn seal_key_mode_problem(mode: u32) -> Option<&'static str> {
    if mode & 0o007 != 0 {
        Some("accessible to every user")
    } else if mode & 0o070 != 0 {
        Some("accessible to its group")
    } else {
        None
    }
}

fn positive(field: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::new(field, "must be greater than 0"));
    }
    Ok(())
}

pub(crate) fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not an IP:port address"))
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let mut addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{host} resolves to no address"))
}

/// serde_yaml names the path of the bad field in its message (`ironic_edge.lookup: unknown
/// field ...`); keep that path as the field.
fn yaml_error(e: &serde_yaml::Error) -> ConfigError {
    let msg = e.to_string();
    match msg.split_once(": ") {
        Some((path, reason)) if path.starts_with("ironic_edge") && !path.contains(' ') => {
            ConfigError::new(path, reason)
        }
        _ => ConfigError::new("conf", msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let cfg = EdgeConfig::from_yaml("---\nversion: 1\n").unwrap();
        assert_eq!(cfg, EdgeConfig::default());
    }

    #[test]
    fn shipped_conf_is_valid() {
        let text = include_str!("../conf/ironic-edge.yaml");
        let cfg = EdgeConfig::from_yaml(text).unwrap();
        assert_eq!(cfg.route_policy, RoutePolicy::All);
        assert_eq!(cfg.upstream_target().unwrap().port, 6385);
    }

    #[test]
    fn unknown_field_is_named() {
        let err =
            EdgeConfig::from_yaml("ironic_edge:\n  lookup:\n    not_found_ttl: 3\n").unwrap_err();
        assert_eq!(err.field, "ironic_edge.lookup");
        assert!(err.reason.contains("not_found_ttl"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err =
            EdgeConfig::from_yaml("ironic_edge:\n  heartbeat:\n    not_found_ttl_seconds: soon\n")
                .unwrap_err();
        assert_eq!(err.field, "ironic_edge.heartbeat.not_found_ttl_seconds");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            (
                "ironic_edge:\n  upstream:\n    url: ftp://x\n",
                "ironic_edge.upstream.url",
            ),
            (
                "ironic_edge:\n  upstream:\n    url: 'not a url'\n",
                "ironic_edge.upstream.url",
            ),
            (
                "ironic_edge:\n  redis:\n    url: 'http://x'\n",
                "ironic_edge.redis.url",
            ),
            (
                "ironic_edge:\n  upstream:\n    read_timeout_ms: 9000\n    lookup_read_timeout_ms: 8000\n",
                "ironic_edge.upstream.lookup_read_timeout_ms",
            ),
            (
                "ironic_edge:\n  ops_address: '0.0.0.0:9000'\n",
                "ironic_edge.ops_address",
            ),
            ("ironic_edge:\n  listeners: []\n", "ironic_edge.listeners"),
            (
                "ironic_edge:\n  listeners:\n    - address: 'nowhere'\n",
                "ironic_edge.listeners[0].address",
            ),
            (
                "ironic_edge:\n  route_policy: some\n",
                "ironic_edge.route_policy",
            ),
            ("ironic_edge:\n  mode: dry-run\n", "ironic_edge.mode"),
            (
                "ironic_edge:\n  lookup:\n    not_found_ttl_seconds: 0\n",
                "ironic_edge.lookup.not_found_ttl_seconds",
            ),
            (
                "ironic_edge:\n  heartbeat:\n    max_body_bytes: 10\n",
                "ironic_edge.heartbeat.max_body_bytes",
            ),
            (
                "ironic_edge:\n  limits:\n    request_head_timeout_ms: 0\n",
                "ironic_edge.limits.request_head_timeout_ms",
            ),
            (
                "ironic_edge:\n  limits:\n    idle_timeout_ms: 10\n",
                "ironic_edge.limits.idle_timeout_ms",
            ),
            (
                "ironic_edge:\n  limits:\n    agent_body_min_bytes_per_second: 1\n",
                "ironic_edge.limits.agent_body_min_bytes_per_second",
            ),
            (
                "ironic_edge:\n  limits:\n    max_connections_per_source: -1\n",
                "ironic_edge.limits.max_connections_per_source",
            ),
            (
                "ironic_edge:\n  trusted_proxies: ['10.0.0.0/8', '10.0.0.1/33']\n",
                "ironic_edge.trusted_proxies[1]",
            ),
        ];
        for (text, field) in cases {
            let err = EdgeConfig::from_yaml(text).unwrap_err();
            assert_eq!(err.field, field, "{text}: {err}");
        }
    }

    #[test]
    fn upstream_target_parts() {
        let mut cfg = EdgeConfig::default();
        cfg.upstream.url = "https://127.0.0.1:8443/baremetal/".into();
        let t = cfg.upstream_target().unwrap();
        assert!(t.tls);
        assert_eq!(t.port, 8443);
        assert_eq!(t.base_path, "/baremetal");
        cfg.upstream.url = "http://[::1]/".into();
        let t = cfg.upstream_target().unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.base_path.as_str()),
            ("::1", 80, "")
        );
    }

    #[test]
    fn redis_password_overrides_url() {
        let mut cfg = EdgeConfig::default();
        cfg.redis.url = "redis://:old@127.0.0.1:6379/3".into();
        cfg.redis.password = "new".into();
        let info = cfg.redis_connection_info().unwrap();
        assert_eq!(info.redis_settings().password(), Some("new"));
        assert_eq!(info.redis_settings().db(), 3);
    }

    fn sentinel_error(yaml: &str) -> String {
        let text = format!(
            "ironic_edge:\n  redis:\n    url: redis://127.0.0.1:6379/2\n    sentinel:\n{yaml}"
        );
        EdgeConfig::from_yaml(&text).unwrap_err().field
    }

    #[test]
    fn a_sentinel_block_is_read() {
        let cfg = EdgeConfig::from_yaml(
            "ironic_edge:\n  redis:\n    sentinel:\n      master_name: edge\n      \
             nodes: ['10.0.0.1:26379', '[fd00::1]:26379', 'redis-a.example:26380']\n",
        )
        .unwrap();
        let sentinel = cfg.redis.sentinel.unwrap();
        assert_eq!(sentinel.master_name, "edge");
        assert_eq!(
            sentinel.addresses().unwrap(),
            vec![
                ("10.0.0.1".to_string(), 26379),
                ("fd00::1".to_string(), 26379),
                ("redis-a.example".to_string(), 26380)
            ]
        );
        assert!(!sentinel.tls);
    }

    #[test]
    fn no_sentinel_block_means_no_sentinel() {
        assert_eq!(EdgeConfig::default().redis.sentinel, None);
    }

    #[test]
    fn an_empty_master_name_is_named() {
        assert_eq!(
            sentinel_error("      master_name: ''\n      nodes: ['h:1']\n"),
            "ironic_edge.redis.sentinel.master_name"
        );
    }

    #[test]
    fn no_sentinel_nodes_is_named() {
        assert_eq!(
            sentinel_error("      master_name: m\n      nodes: []\n"),
            "ironic_edge.redis.sentinel.nodes"
        );
    }

    #[test]
    fn a_sentinel_node_that_is_not_host_port_is_named() {
        for node in [
            "h",
            "h:",
            ":1",
            "h:0",
            "h:70000",
            "::1:26379",
            "h:x",
            "a b:1",
        ] {
            assert_eq!(
                sentinel_error(&format!(
                    "      master_name: m\n      nodes: ['h:1', '{node}']\n"
                )),
                "ironic_edge.redis.sentinel.nodes[1]",
                "{node}"
            );
        }
    }

    #[test]
    fn an_unknown_sentinel_key_is_named() {
        assert_eq!(
            sentinel_error("      master_name: m\n      nodes: ['h:1']\n      quorum: 2\n"),
            "ironic_edge.redis.sentinel"
        );
    }

    #[test]
    fn a_unix_socket_url_with_sentinel_is_refused() {
        let text = "ironic_edge:\n  redis:\n    url: unix:///tmp/r.sock\n    sentinel:\n      \
                    master_name: m\n      nodes: ['h:1']\n";
        assert_eq!(
            EdgeConfig::from_yaml(text).unwrap_err().field,
            "ironic_edge.redis.url"
        );
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(parse_host_port("h:1"), Some(("h".into(), 1)));
        assert_eq!(parse_host_port("[::1]:2"), Some(("::1".into(), 2)));
        assert_eq!(parse_host_port("[::1]"), None);
        assert_eq!(parse_host_port("h/x:1"), None);
    }

    #[test]
    fn a_private_seal_key_mode_is_accepted() {
        for mode in [0o600, 0o400, 0o700, 0o100600] {
            assert_eq!(seal_key_mode_problem(mode), None, "{mode:o}");
        }
    }

    #[test]
    fn a_seal_key_mode_open_to_others_is_refused() {
        for mode in [0o644, 0o604, 0o602, 0o601, 0o100644, 0o666] {
            assert_eq!(
                seal_key_mode_problem(mode),
                Some("accessible to every user"),
                "{mode:o}"
            );
        }
    }

    #[test]
    fn a_seal_key_mode_open_to_the_group_is_refused() {
        for mode in [0o640, 0o620, 0o610, 0o660] {
            assert_eq!(
                seal_key_mode_problem(mode),
                Some("accessible to its group"),
                "{mode:o}"
            );
        }
    }
}
