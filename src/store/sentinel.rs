//! Following a Sentinel-managed master across failovers, and distrusting a master that may
//! have lost the last writes.
//!
//! A `ConnectionManager` keeps the address it was made for: after a failover it reconnects to
//! the old master, or to nothing. So the process asks the sentinels where the master is, checks
//! that it says it is one (`ROLE`), and talks to it through a manager made for that address;
//! one background task (single flight) asks again every [`POLL`], and at once when a call
//! failed to connect or was refused as `READONLY`. Calls never wait for it: without a master
//! they fail at once and the request is forwarded, as with Redis down. A new manager has an
//! empty in-process view (its own client-side cache), so nothing read from the old master is
//! served from memory.
//!
//! Replication is asynchronous: a promoted replica (or a master restarted from an older
//! snapshot) may miss the last writes (a token Ironic wiped, a heartbeat kept). A master whose
//! replication id differs from the one this process last knew is on another history: until a
//! full sync round has rebuilt the node index there, the process answers nothing from Redis
//! (the store's reads fail, and callers forward as for an emptied Redis) and the index counts
//! as incomplete, so the sync's next round is a full one ([`master_trust`], [`index_rebuilt`]).

use super::conn::Conn;
use crate::config::{ConfigError, EdgeConfig};
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::Duration;

/// How often the sentinels are asked where the master is (and the master for its history).
const POLL: Duration = Duration::from_millis(500);

/// The shortest time between two re-resolutions, however many failing calls ask for one.
const MIN_GAP: Duration = Duration::from_millis(100);

/// What the process makes of the master it talks to, given the replication id it last knew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MasterTrust {
    /// The first master this process sees: nothing it knew can have been rolled back.
    First,
    /// The history this process knew: what it wrote is there.
    Same,
    /// Another history (a promoted replica, a master restarted empty or from an older
    /// snapshot): the last writes may be lost, every edge-held fact is distrusted.
    Other,
}

/// The rule: `known` is the replication id (`master_replid`) this process last saw on its
/// master, `seen` the one its master reports now.
pub(crate) fn master_trust(known: Option<&str>, seen: &str) -> MasterTrust {
    match known {
        None => MasterTrust::First,
        Some(k) if k == seen => MasterTrust::Same,
        Some(_) => MasterTrust::Other,
    }
}

/// Whether the index is proven current again on a distrusted master: complete (the freshness
/// marker's generation is on both halves) and of a generation other than the one the master
/// held when it was distrusted (`stale`), i.e. written by a full round since.
pub(crate) fn index_rebuilt(
    stale: Option<&str>,
    synced_at: Option<&str>,
    gen_nodes: Option<&str>,
    gen_macs: Option<&str>,
) -> bool {
    let Some((_, generation)) = synced_at.and_then(super::index::parse_synced_at) else {
        return false;
    };
    let complete = gen_nodes == Some(generation.as_str()) && gen_macs == Some(generation.as_str());
    complete && stale != Some(generation.as_str())
}

/// `role` and `master_replid` of an `INFO replication` answer.
pub(crate) fn replication(info: &str) -> (Option<&str>, Option<&str>) {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    (field("role"), field("master_replid"))
}

/// The sentinels, the master's name, and the master currently talked to.
pub(crate) struct Follow {
    master_name: String,
    sentinels: Vec<redis::Client>,
    /// The master's connection settings from `redis.url` (database, password, TLS, RESP3);
    /// its address is replaced by the one the sentinels give.
    template: redis::ConnectionInfo,
    current: RwLock<Option<Master>>,
    wake: tokio::sync::Notify,
    started: std::sync::Once,
    distrusted: AtomicBool,
    /// How long a distrust lasts without a sync to end it (`None`: until the index is rebuilt).
    distrust_without_sync: Option<Duration>,
}

#[derive(Clone)]
struct Master {
    addr: (String, u16),
    manager: ConnectionManager,
}

/// What the watcher task keeps between its looks.
#[derive(Default)]
struct Watch {
    /// The replication id last seen on the master.
    replid: Option<String>,
    /// The last master installed (a switch is a move away from it).
    last_addr: Option<(String, u16)>,
    /// The sentinel that answered last (asked first next time).
    first: usize,
    /// No sentinel answered the last look (logged once per silence, not every look).
    sentinels_silent: bool,
    distrust: Option<Distrust>,
}

struct Distrust {
    /// The index generation the master held when it was distrusted.
    stale: Option<String>,
    /// Whether its freshness marker was taken down (so that every process, and the sync,
    /// sees no complete index until a full round).
    marker_cleared: bool,
    since: std::time::Instant,
}

impl Follow {
    pub(crate) fn new(cfg: &EdgeConfig) -> Result<Option<Self>, ConfigError> {
        let Some(s) = &cfg.redis.sentinel else {
            return Ok(None);
        };
        let template = cfg.redis_connection_info()?;
        let mut sentinels = Vec::new();
        for (host, port) in s.addresses()? {
            let addr = if s.tls {
                redis::ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                redis::ConnectionAddr::Tcp(host, port)
            };
            let mut settings = redis::RedisConnectionInfo::default();
            if !s.password.is_empty() {
                settings = settings.set_password(&s.password);
            }
            let field = "ironic_edge.redis.sentinel.nodes";
            let info = redis::IntoConnectionInfo::into_connection_info(addr)
                .map_err(|e| ConfigError::new(field, e.to_string()))?
                .set_redis_settings(settings);
            let client =
                redis::Client::open(info).map_err(|e| ConfigError::new(field, e.to_string()))?;
            sentinels.push(client);
        }
        Ok(Some(Follow {
            master_name: s.master_name.clone(),
            sentinels,
            template,
            current: RwLock::new(None),
            wake: tokio::sync::Notify::new(),
            started: std::sync::Once::new(),
            distrusted: AtomicBool::new(false),
            distrust_without_sync: (!cfg.sync.enabled)
                .then(|| Duration::from_secs(cfg.node_ttl_seconds)),
        }))
    }

    /// The master's manager (`None`: no master known now: the call fails at once). The first
    /// call starts the watcher on the caller's runtime.
    pub(crate) fn manager(&self, conn: &Conn) -> Option<ConnectionManager> {
        self.started.call_once(|| {
            let conn = conn.clone();
            tokio::spawn(async move { watch(conn).await });
        });
        self.current
            .read()
            .ok()
            .and_then(|c| c.as_ref().map(|m| m.manager.clone()))
    }

    /// A call failed to reach the master, or the master refused a write (`READONLY`): ask
    /// the sentinels again now (once, however many calls failed).
    pub(crate) fn suspect(&self) {
        self.wake.notify_one();
    }

    /// Whether what Redis holds is distrusted now (see the module's notes).
    pub(crate) fn distrusted(&self) -> bool {
        self.distrusted.load(Ordering::Relaxed)
    }

    fn set_current(&self, conn: &Conn, master: Option<Master>) {
        conn.calls().master.known.set(i64::from(master.is_some()));
        if let Ok(mut c) = self.current.write() {
            *c = master;
        }
    }

    fn current_master(&self) -> Option<Master> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    /// Where the sentinels say the master is: each asked in turn, the last one that answered
    /// first; `None` if none answered in time.
    async fn ask_sentinels(&self, timeout: Duration, first: &mut usize) -> Option<(String, u16)> {
        let n = self.sentinels.len();
        for i in 0..n {
            let at = (*first + i) % n;
            let client = &self.sentinels[at];
            let ask = async {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout));
                let mut c = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.master_name)
                    .query_async::<Option<(String, u16)>>(&mut c)
                    .await
            };
            match tokio::time::timeout(timeout * 2, ask).await {
                Ok(Ok(Some(addr))) => {
                    *first = at;
                    return Some(addr);
                }
                Ok(Ok(None)) => log::debug!(
                    "redis sentinel {at}: does not know master {:?}",
                    self.master_name
                ),
                Ok(Err(e)) => log::debug!("redis sentinel {at}: {e}"),
                Err(_) => log::debug!("redis sentinel {at}: no answer in time"),
            }
        }
        None
    }

    fn manager_for(&self, conn: &Conn, addr: &(String, u16)) -> redis::RedisResult<Master> {
        let at = match self.template.addr() {
            redis::ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => redis::ConnectionAddr::TcpTls {
                host: addr.0.clone(),
                port: addr.1,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => redis::ConnectionAddr::Tcp(addr.0.clone(), addr.1),
        };
        let client = redis::Client::open(self.template.clone().set_addr(at))?;
        let manager = ConnectionManager::new_lazy_with_config(client, conn.manager_config())?;
        Ok(Master {
            addr: addr.clone(),
            manager,
        })
    }

    /// One look: where the master is, whether it is one, which history it is on.
    async fn step(&self, conn: &Conn, w: &mut Watch) {
        let timeout = conn.command_timeout();
        let current = self.current_master();
        let said = self.ask_sentinels(timeout, &mut w.first).await;
        if said.is_none() != w.sentinels_silent {
            w.sentinels_silent = said.is_none();
            if w.sentinels_silent {
                log::warn!(
                    "redis sentinel: none of the {} sentinels named master {:?}; staying with \
                     the master known, if any",
                    self.sentinels.len(),
                    self.master_name
                );
            } else {
                log::info!("redis sentinel: the sentinels answer again");
            }
        }
        let Some(target) = said.or_else(|| current.as_ref().map(|m| m.addr.clone())) else {
            return;
        };
        let candidate = match current.filter(|m| m.addr == target) {
            Some(m) => m,
            None => match self.manager_for(conn, &target) {
                Ok(m) => m,
                Err(e) => {
                    log::warn!("redis master {}:{}: {e}", target.0, target.1);
                    return;
                }
            },
        };
        let (role, replid) = match probe(&candidate.manager, timeout).await {
            Ok(found) => found,
            Err(e) => {
                log::debug!("redis master {}:{}: {e}", target.0, target.1);
                // Calls fail at once rather than each waiting on a reconnect.
                self.set_current(conn, None);
                return;
            }
        };
        if role != "master" {
            log::info!(
                "redis {}:{} says it is a {role}, not the master: asking the sentinels again",
                target.0,
                target.1
            );
            self.set_current(conn, None);
            return;
        }
        let installed = self
            .current_master()
            .is_some_and(|m| m.addr == candidate.addr);
        if !installed {
            if w.last_addr.as_ref().is_some_and(|a| *a != target) {
                conn.calls().master.switches.inc();
                log::warn!(
                    "redis: the master is now {}:{} (a failover); following it",
                    target.0,
                    target.1
                );
            } else {
                log::info!("redis: talking to master {}:{}", target.0, target.1);
            }
            w.last_addr = Some(target.clone());
            self.set_current(conn, Some(candidate.clone()));
        }
        if master_trust(w.replid.as_deref(), &replid) == MasterTrust::Other {
            self.begin_distrust(conn, &candidate.manager, w).await;
        }
        w.replid = Some(replid);
        if w.distrust.is_some() {
            self.try_end_distrust(conn, &candidate.manager, w).await;
        }
    }

    async fn begin_distrust(&self, conn: &Conn, manager: &ConnectionManager, w: &mut Watch) {
        let keys = &conn.keys;
        let stale = run(
            manager,
            redis::cmd("GET").arg(keys.index_synced_at()).clone(),
            conn.command_timeout(),
        )
        .await
        .ok()
        .flatten()
        .and_then(|t: String| super::index::parse_synced_at(&t).map(|(_, g)| g));
        log::warn!(
            "redis: the master is on another replication history (a failover or a restart): it \
             may have lost the last writes; nothing is answered from Redis until a full sync \
             round rebuilds the node index there"
        );
        conn.calls().master.rollbacks.inc();
        conn.calls().master.distrusted.set(1);
        self.distrusted.store(true, Ordering::Relaxed);
        w.distrust = Some(Distrust {
            stale,
            marker_cleared: false,
            since: std::time::Instant::now(),
        });
    }

    async fn try_end_distrust(&self, conn: &Conn, manager: &ConnectionManager, w: &mut Watch) {
        let Some(d) = w.distrust.as_mut() else {
            return;
        };
        let keys = &conn.keys;
        let timeout = conn.command_timeout();
        if !d.marker_cleared {
            // Only the stale generation's marker: a round that completed since stays vouched.
            let script = redis::cmd("EVAL")
                .arg(
                    "local v = redis.call('GET', KEYS[1]) \
                     if v and ARGV[1] ~= '' and string.match(v, ' (.*)$') == ARGV[1] then \
                       return redis.call('DEL', KEYS[1]) end return 0",
                )
                .arg(1)
                .arg(keys.index_synced_at())
                .arg(d.stale.as_deref().unwrap_or(""))
                .clone();
            d.marker_cleared = run::<i64>(manager, script, timeout).await.is_ok();
        }
        let ended = match self.distrust_without_sync {
            Some(bound) => d.since.elapsed() >= bound,
            None => {
                let mut pipe = redis::pipe();
                pipe.cmd("GET")
                    .arg(keys.index_synced_at())
                    .cmd("HGET")
                    .arg(keys.index_nodes())
                    .arg("@gen")
                    .cmd("HGET")
                    .arg(keys.index_macs())
                    .arg("@gen");
                let read = tokio::time::timeout(
                    timeout,
                    pipe.query_async::<(Option<String>, Option<String>, Option<String>)>(
                        &mut manager.clone(),
                    ),
                )
                .await;
                matches!(read, Ok(Ok((s, n, m)))
                    if index_rebuilt(d.stale.as_deref(), s.as_deref(), n.as_deref(), m.as_deref()))
            }
        };
        if ended {
            log::info!("redis: the node index was rebuilt on the new master; trusted again");
            w.distrust = None;
            self.distrusted.store(false, Ordering::Relaxed);
            conn.calls().master.distrusted.set(0);
        }
    }
}

async fn run<T: redis::FromRedisValue>(
    manager: &ConnectionManager,
    cmd: redis::Cmd,
    timeout: Duration,
) -> redis::RedisResult<T> {
    let mut m = manager.clone();
    match tokio::time::timeout(timeout, cmd.query_async::<T>(&mut m)).await {
        Ok(answer) => answer,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer in time",
        ))),
    }
}

/// `ROLE` (its first element) and `master_replid`, in one round trip.
async fn probe(manager: &ConnectionManager, timeout: Duration) -> Result<(String, String), String> {
    let mut pipe = redis::pipe();
    pipe.cmd("ROLE").cmd("INFO").arg("replication");
    let mut m = manager.clone();
    let (role, info): (Vec<redis::Value>, String) =
        match tokio::time::timeout(timeout, pipe.query_async(&mut m)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no answer in time".into()),
        };
    let role = role
        .into_iter()
        .next()
        .and_then(|v| redis::from_redis_value::<String>(v).ok())
        .ok_or("ROLE answered nothing")?;
    let (_, replid) = replication(&info);
    let replid = replid.ok_or("INFO replication has no master_replid")?;
    Ok((role, replid.to_string()))
}

async fn watch(conn: Conn) {
    let Some(follow) = conn.follow() else {
        return;
    };
    let mut w = Watch::default();
    loop {
        let began = tokio::time::Instant::now();
        follow.step(&conn, &mut w).await;
        tokio::time::sleep_until(began + MIN_GAP).await;
        tokio::select! {
            _ = follow.wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_master_seen_is_trusted() {
        assert_eq!(master_trust(None, "r1"), MasterTrust::First);
    }

    #[test]
    fn the_same_history_is_trusted() {
        assert_eq!(master_trust(Some("r1"), "r1"), MasterTrust::Same);
    }

    #[test]
    fn a_promoted_replica_is_another_history() {
        assert_eq!(master_trust(Some("r1"), "r2"), MasterTrust::Other);
    }

    #[test]
    fn a_restarted_master_is_another_history() {
        // A restart (empty, or from an older snapshot) starts a new replication id.
        assert_eq!(
            master_trust(Some("r1"), "r1-after-restart"),
            MasterTrust::Other
        );
    }

    const G1: &str = "1700000000000 g1";
    const G2: &str = "1700000005000 g2";

    #[test]
    fn the_stale_generation_is_not_proof() {
        assert!(!index_rebuilt(Some("g1"), Some(G1), Some("g1"), Some("g1")));
    }

    #[test]
    fn a_new_generation_on_both_halves_is_proof() {
        assert!(index_rebuilt(Some("g1"), Some(G2), Some("g2"), Some("g2")));
    }

    #[test]
    fn a_half_of_another_generation_is_not_proof() {
        assert!(!index_rebuilt(Some("g1"), Some(G2), Some("g2"), Some("g1")));
        assert!(!index_rebuilt(Some("g1"), Some(G2), None, Some("g2")));
    }

    #[test]
    fn no_index_is_not_proof() {
        assert!(!index_rebuilt(Some("g1"), None, None, None));
        assert!(!index_rebuilt(None, None, Some("g2"), Some("g2")));
    }

    #[test]
    fn a_master_that_held_no_index_needs_any_complete_one() {
        assert!(index_rebuilt(None, Some(G2), Some("g2"), Some("g2")));
    }

    #[test]
    fn a_marker_without_a_generation_is_not_proof() {
        assert!(!index_rebuilt(
            None,
            Some("1700000000000"),
            Some(""),
            Some("")
        ));
    }

    #[test]
    fn replication_fields_are_read() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:1\r\n\
                    master_replid:8f3a\r\nmaster_replid2:0000\r\n";
        assert_eq!(replication(info), (Some("master"), Some("8f3a")));
        assert_eq!(replication("role:slave\n"), (Some("slave"), None));
        assert_eq!(replication(""), (None, None));
    }
}
