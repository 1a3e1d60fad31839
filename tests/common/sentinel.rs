//! A Sentinel-managed Redis on loopback: a master, one replica (`--replicaof`) and three
//! `redis-sentinel` processes (quorum 2, a master is down after 1 s), each on its own free port
//! in its own temp dir. Dropping the topology kills them all (also when the test panics).

use super::redis::{read_to_string_lossy, RedisConn, RedisServer, Resp};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "edge";

/// One `redis-sentinel`. Dropping it kills it.
pub struct SentinelProc {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl SentinelProc {
    fn start(master_port: u16) -> SentinelProc {
        let dir = tempfile::Builder::new()
            .prefix("edge-sentinel-")
            .tempdir()
            .unwrap();
        let port = super::free_port();
        let conf = dir.path().join("sentinel.conf");
        // Sentinel rewrites its config file (what it learnt): a file of its own, writable.
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {dir}/sentinel.log\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 4000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                dir = dir.path().display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new("redis-sentinel");
        cmd.arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        super::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .expect("spawn redis-sentinel (Debian: apt-get install redis-sentinel)");
        SentinelProc {
            port,
            dir,
            child: Some(child),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("sentinel.log")
    }

    pub fn log(&self) -> String {
        read_to_string_lossy(&self.log_path())
    }

    /// Runs one command (`None` when the sentinel does not answer).
    pub fn cmd(&self, args: &[&str]) -> Option<Resp> {
        RedisConn::connect(self.port, Duration::from_secs(2))
            .ok()?
            .cmd(args)
            .ok()
    }

    /// `SENTINEL MASTER <name>` as field → value.
    pub fn master_state(&self) -> Vec<(String, String)> {
        let Some(r) = self.cmd(&["SENTINEL", "MASTER", MASTER_NAME]) else {
            return Vec::new();
        };
        let items = r.strings();
        items
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].clone(), c[1].clone()))
            .collect()
    }

    /// The master's port as this sentinel sees it.
    pub fn master_port(&self) -> Option<u16> {
        let r = self.cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])?;
        r.strings().get(1)?.parse().ok()
    }
}

impl Drop for SentinelProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Master, replica, three sentinels.
pub struct Topology {
    /// `redis[0]` is the first master, `redis[1]` its replica (until a failover).
    pub redis: Vec<RedisServer>,
    pub sentinels: Vec<SentinelProc>,
}

impl Topology {
    /// Starts everything and waits until each sentinel knows the replica and the two other
    /// sentinels (a failover needs them to agree), 30 s at most.
    pub fn start() -> Topology {
        let master = RedisServer::start();
        let replica = RedisServer::start_with(vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port().to_string(),
        ]);
        let sentinels = (0..3).map(|_| SentinelProc::start(master.port())).collect();
        let t = Topology {
            redis: vec![master, replica],
            sentinels,
        };
        let ready = super::wait_for(Duration::from_secs(30), || {
            t.sentinels
                .iter()
                .all(|s| {
                    let st = s.master_state();
                    let field = |n: &str| {
                        st.iter()
                            .find(|(k, _)| k == n)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    field("num-other-sentinels") == "2" && field("num-slaves") == "1"
                })
                .then_some(())
        });
        assert!(ready.is_some(), "sentinels not ready:\n{}", t.logs());
        t.wait_replica_in_sync(1);
        t
    }

    /// The `ironic_edge.redis.sentinel` block for a gateway.
    pub fn sentinel_config(&self) -> serde_yaml::Value {
        let nodes: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        serde_yaml::to_value(serde_json::json!({
            "master_name": MASTER_NAME,
            "nodes": nodes,
        }))
        .unwrap()
    }

    /// Where the sentinels' majority says the master is.
    pub fn master_port(&self) -> Option<u16> {
        let ports: Vec<u16> = self
            .sentinels
            .iter()
            .filter_map(SentinelProc::master_port)
            .collect();
        let first = *ports.first()?;
        (ports.iter().filter(|p| **p == first).count() >= 2).then_some(first)
    }

    /// The server at this port.
    pub fn server(&self, port: u16) -> &RedisServer {
        self.redis
            .iter()
            .find(|r| r.port() == port)
            .expect("a server of the topology")
    }

    /// Waits (20 s at most) until `numreplicas` replicas acknowledged every write the master
    /// at `redis[0]` took so far.
    pub fn wait_replica_in_sync(&self, numreplicas: usize) {
        let acked = super::wait_for(Duration::from_secs(20), || {
            let r = self.redis[0]
                .conn()
                .cmd(&["WAIT", &numreplicas.to_string(), "1000"])
                .ok()?;
            (r.as_int()? >= numreplicas as i64).then_some(())
        });
        assert!(acked.is_some(), "replica not in sync:\n{}", self.logs());
    }

    /// Kills the master at `redis[0]` (SIGKILL) and waits until the sentinels name
    /// `redis[1]` (60 s at most).
    pub fn kill_master_and_wait_promotion(&mut self) {
        let replica = self.redis[1].port();
        self.redis[0].kill();
        self.wait_promotion(replica);
    }

    /// Has a sentinel fail the master over now (`SENTINEL FAILOVER`, no agreement needed;
    /// the master stays up and becomes a replica) and waits until the sentinels name
    /// `redis[1]` (60 s at most).
    pub fn force_failover_and_wait_promotion(&mut self) {
        let replica = self.redis[1].port();
        let r = self.sentinels[0].cmd(&["SENTINEL", "FAILOVER", MASTER_NAME]);
        assert_eq!(r, Some(Resp::Simple("OK".into())), "{}", self.logs());
        self.wait_promotion(replica);
    }

    fn wait_promotion(&self, replica: u16) {
        let promoted = super::wait_for(Duration::from_secs(60), || {
            (self.master_port() == Some(replica)
                && self
                    .server(replica)
                    .conn()
                    .cmd(&["ROLE"])
                    .ok()?
                    .strings()
                    .first()
                    .map(String::as_str)
                    == Some("master"))
            .then_some(())
        });
        assert!(promoted.is_some(), "no promotion:\n{}", self.logs());
    }

    /// Everything the processes logged.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, r) in self.redis.iter().enumerate() {
            out += &format!("--- redis {i} ({})\n{}\n", r.port(), r.log());
        }
        for s in &self.sentinels {
            out += &format!("--- sentinel {}\n{}\n", s.port, s.log());
        }
        out
    }
}
