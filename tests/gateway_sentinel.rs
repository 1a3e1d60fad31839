//! Redis Sentinel with real processes: a master, a replica and three sentinels on loopback
//! (`common::sentinel`), the real gateway finding the master through them, following it when
//! it is killed under agent traffic, and never accepting at the edge, on a promoted replica
//! that missed the last writes, a token Ironic had wiped.

mod common;

use common::gateway::run_bin;
use common::sentinel::Topology;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CB: &str = "https://127.0.0.1:9999";

/// A gateway over the topology (sync every second, coalescing on) in front of a mini Ironic
/// with one node.
struct Site {
    gw: Gateway,
    topo: Topology,
    fake: FakeIronic,
    mini: Arc<MiniIronic>,
    mac: String,
    uuid: String,
}

impl Site {
    fn start() -> Site {
        let topo = Topology::start();
        let fake = FakeIronic::start();
        let mini = MiniIronic::install_with_listings(&fake);
        let mac = ironic::random_mac();
        let uuid = mini.add_node(&[&mac]);
        let mut cfg = sentinel_config(&fake, &topo);
        cfg.with_index_and_coalescing();
        let gw = Gateway::start(cfg);
        gw.wait_versions(&fake);
        let site = Site {
            gw,
            topo,
            fake,
            mini,
            mac,
            uuid,
        };
        site.wait_local_lookup_answers();
        site
    }

    fn send(&self, req: &Request) -> Response {
        self.gw.send(req)
    }

    fn local_lookups(&self) -> f64 {
        self.gw
            .metric(
                "ironic_edge_requests_total",
                &[("route", "lookup"), ("outcome", "local")],
            )
            .unwrap_or(0.0)
    }

    /// Polls until a lookup of a never-seen MAC is answered at the edge (the index is complete
    /// and trusted on the master the gateway talks to); 40 s at most.
    fn wait_local_lookup_answers(&self) {
        let ready = wait_for(Duration::from_secs(40), || {
            let before = self.local_lookups();
            let r = self.send(&lookup(&ironic::random_mac()));
            (r.status == 404 && self.local_lookups() > before).then_some(())
        });
        assert!(
            ready.is_some(),
            "no local answers:\n{}\n{}",
            self.gw.logs(),
            self.topo.logs()
        );
    }

    fn heartbeats_forwarded_with(&self, token: &str) -> usize {
        self.fake
            .requests()
            .iter()
            .filter(|r| {
                r.path.starts_with("/v1/heartbeat/")
                    && r.json_str("agent_token").as_deref() == Some(token)
            })
            .count()
    }

    /// Repeats the node's heartbeat until the edge answers it without Ironic; 20 s at most.
    fn wait_until_coalesced(&self, token: &str) {
        let coalesced = wait_for(Duration::from_secs(20), || {
            let before = self.heartbeats_forwarded_with(token);
            let r = self.send(&heartbeat(&self.uuid, CB, token));
            (r.status == 202 && self.heartbeats_forwarded_with(token) == before).then_some(())
        });
        assert!(coalesced.is_some(), "not coalesced:\n{}", self.gw.logs());
    }

    fn metric(&self, name: &str) -> f64 {
        self.gw.metric(name, &[]).unwrap_or(0.0)
    }

    /// Polls until the gateway moved to another master; 60 s at most.
    fn wait_switch(&self) {
        let moved = wait_for(Duration::from_secs(60), || {
            (self.metric("ironic_edge_redis_master_switches_total") >= 1.0
                && self.metric("ironic_edge_redis_master_known") == 1.0)
                .then_some(())
        });
        assert!(
            moved.is_some(),
            "the gateway did not follow the failover:\n{}\n{}",
            self.gw.logs(),
            self.topo.logs()
        );
    }
}

/// A gateway config whose Redis is the topology's, found through its sentinels (the URL's
/// host and port are not used: nothing listens there).
fn sentinel_config(fake: &FakeIronic, topo: &Topology) -> GatewayConfig {
    let unused = format!("redis://127.0.0.1:{}/0", free_port());
    let mut cfg = GatewayConfig::new(&fake.url(), &unused);
    cfg.set("ironic_edge.redis.sentinel", topo.sentinel_config());
    cfg
}

#[test]
fn the_gateway_finds_the_master_through_the_sentinels() {
    let site = Site::start();
    let path = site.gw.cfg.path();
    let out = run_bin(&["-t", "-c", path.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(site.metric("ironic_edge_redis_master_known"), 1.0);
    assert_eq!(site.metric("ironic_edge_redis_master_switches_total"), 0.0);
    // What the gateway wrote is on the master the sentinels name.
    let master = site.topo.server(site.topo.master_port().unwrap());
    assert!(
        master
            .keys()
            .iter()
            .any(|k| k.ends_with("ironic-edge:idx:v2:synced_at")),
        "{:?}",
        master.keys()
    );
    // A repeated heartbeat is coalesced: the record lives on that master too.
    let token = minted_token_of(&site);
    assert_eq!(site.send(&heartbeat(&site.uuid, CB, &token)).status, 202);
    site.wait_until_coalesced(&token);
}

fn minted_token_of(site: &Site) -> String {
    let r = site.send(&lookup(&site.mac));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["config"]["agent_token"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn bad_sentinel_configs_exit_1_naming_the_field() {
    let cases: Vec<(&str, serde_json::Value)> = vec![
        (
            "ironic_edge.redis.sentinel.master_name",
            serde_json::json!({"master_name": "", "nodes": ["127.0.0.1:26379"]}),
        ),
        (
            "ironic_edge.redis.sentinel.nodes",
            serde_json::json!({"master_name": "edge", "nodes": []}),
        ),
        (
            "ironic_edge.redis.sentinel.nodes[1]",
            serde_json::json!({"master_name": "edge", "nodes": ["127.0.0.1:26379", "127.0.0.1"]}),
        ),
    ];
    for (field, block) in cases {
        let mut cfg = GatewayConfig::new("http://127.0.0.1:6385", "redis://127.0.0.1:6379/0");
        cfg.set(
            "ironic_edge.redis.sentinel",
            serde_yaml::to_value(&block).unwrap(),
        );
        let path = cfg.write();
        let out = run_bin(&["-t", "-c", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{field}: {stderr}");
        assert!(stderr.contains(field), "{field}: {stderr}");
    }
}

/// Agents keep heartbeating (a valid token) and looking up unknown machines while the master
/// is killed: every answer is the one Ironic gives (202, 404), whether the gateway had a
/// master or forwarded; after the promotion the gateway answers at the edge again.
#[test]
fn a_killed_master_is_followed_under_agent_traffic() {
    let mut site = Site::start();
    let token = minted_token_of(&site);
    assert_eq!(site.send(&heartbeat(&site.uuid, CB, &token)).status, 202);
    site.wait_until_coalesced(&token);
    site.topo.wait_replica_in_sync(1);

    let traffic = Traffic::start(&site, &token);
    // Recovery times, reported (`--nocapture`), never asserted.
    let killed = std::time::Instant::now();
    site.topo.kill_master_and_wait_promotion();
    let promoted = killed.elapsed();
    site.wait_switch();
    let followed = killed.elapsed();
    site.wait_local_lookup_answers();
    let local_again = killed.elapsed();
    let (sent, wrong) = traffic.stop();
    eprintln!(
        "failover: promoted after {promoted:?}, followed after {followed:?}, local answers \
         again after {local_again:?}; {sent} agent requests meanwhile"
    );
    assert!(
        wrong.is_empty(),
        "{} of {sent} answers were not Ironic's: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    // The gateway talks to the promoted replica now.
    let promoted = &site.topo.redis[1];
    assert!(promoted
        .keys()
        .iter()
        .any(|k| k.contains("idx:v2:synced_at")));
}

/// Two agents' traffic through the gateway until stopped: one heartbeating with a valid token
/// (Ironic's answer: 202), one looking up machines nobody enrolled (404). Every other answer
/// is kept.
struct Traffic {
    stop: Arc<AtomicBool>,
    wrong: Arc<Mutex<Vec<String>>>,
    sent: Arc<std::sync::atomic::AtomicUsize>,
    agents: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(site: &Site, token: &str) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let wrong = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let agents = (0..2)
            .map(|i| {
                let (stop, wrong, sent) = (stop.clone(), wrong.clone(), sent.clone());
                let (addr, uuid, token) =
                    (site.gw.cfg.listen, site.uuid.clone(), token.to_string());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let (req, want) = if i == 0 {
                            (heartbeat(&uuid, CB, &token), 202)
                        } else {
                            (lookup(&ironic::random_mac()), 404)
                        };
                        let r = http::send(addr, &req);
                        sent.fetch_add(1, Ordering::SeqCst);
                        if r.status != want {
                            wrong
                                .lock()
                                .unwrap()
                                .push(format!("{} {}", r.status, r.text()));
                        }
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            wrong,
            sent,
            agents,
        }
    }

    /// Stops the agents: how many requests they sent, and the answers that were not Ironic's.
    fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for a in self.agents {
            a.join().unwrap();
        }
        let wrong = self.wrong.lock().unwrap().clone();
        (self.sent.load(Ordering::SeqCst), wrong)
    }
}

/// A failover the sentinels are told to make while the master is alive: the old master
/// becomes a replica (writes to it are refused with READONLY); the gateway moves to the new
/// master with every answer Ironic's meanwhile.
#[test]
fn a_forced_failover_is_followed() {
    let mut site = Site::start();
    let token = minted_token_of(&site);
    assert_eq!(site.send(&heartbeat(&site.uuid, CB, &token)).status, 202);
    site.wait_until_coalesced(&token);
    site.topo.wait_replica_in_sync(1);
    let traffic = Traffic::start(&site, &token);
    site.topo.force_failover_and_wait_promotion();
    site.wait_switch();
    site.wait_local_lookup_answers();
    let (sent, wrong) = traffic.stop();
    assert!(
        wrong.is_empty(),
        "{} of {sent} answers were not Ironic's: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    let demoted = wait_for(Duration::from_secs(30), || {
        let role = site.topo.redis[0].cmd(&["ROLE"]).strings();
        (role.first().map(String::as_str) == Some("slave")).then_some(())
    });
    assert!(demoted.is_some(), "the old master was not demoted");
}

/// The promoted replica misses the last writes (replication cut before them): the gateway had
/// learnt that Ironic wiped the node's token, the replica did not. A heartbeat with the wiped
/// token must reach Ironic (its 400), never an edge 202, before and after the index is
/// rebuilt on the new master.
#[test]
fn a_rolled_back_master_never_accepts_a_wiped_token() {
    let mut site = Site::start();
    let token = minted_token_of(&site);
    assert_eq!(site.send(&heartbeat(&site.uuid, CB, &token)).status, 202);
    site.wait_until_coalesced(&token);
    site.topo.wait_replica_in_sync(1);

    // Replication stops: the master asks for a password the replica does not have, and the
    // replica's link is dropped (it cannot come back). The sentinels' links stay.
    let master = &site.topo.redis[0];
    assert_eq!(
        master.cmd(&["CONFIG", "SET", "requirepass", "cut"]),
        common::redis::Resp::Simple("OK".into())
    );
    site.topo.redis[1].cmd(&["CLIENT", "KILL", "TYPE", "master"]);
    let cut = wait_for(Duration::from_secs(20), || {
        let info = site.topo.redis[1].cmd(&["INFO", "replication"]).to_text();
        info.contains("master_link_status:down").then_some(())
    });
    assert!(cut.is_some(), "replication not cut");

    // Ironic wipes the token; the gateway learns it (on the master only).
    site.mini.wipe(&site.uuid);
    let learnt = wait_for(Duration::from_secs(20), || {
        let r = site.send(&heartbeat(&site.uuid, CB, &token));
        (r.status == 400).then_some(())
    });
    assert!(
        learnt.is_some(),
        "the wipe was not learnt:\n{}",
        site.gw.logs()
    );

    site.topo.kill_master_and_wait_promotion();
    site.wait_switch();
    // Until and after the index is rebuilt on the new master: Ironic's 400 every time (from
    // Ironic, or repeated at the edge once Ironic refused that token), never a 202.
    let invalid = ironic::fault_body(400, "Invalid or missing agent token received.");
    let mut answers = Vec::new();
    let local_again = wait_for(Duration::from_secs(40), || {
        let r = site.send(&heartbeat(&site.uuid, CB, &token));
        answers.push((r.status, r.text()));
        let before = site.local_lookups();
        let r = site.send(&lookup(&ironic::random_mac()));
        (r.status == 404 && site.local_lookups() > before).then_some(())
    });
    assert!(
        local_again.is_some(),
        "no local answers:\n{}",
        site.gw.logs()
    );
    for _ in 0..5 {
        let r = site.send(&heartbeat(&site.uuid, CB, &token));
        answers.push((r.status, r.text()));
    }
    let not_ironics: Vec<_> = answers
        .iter()
        .filter(|(status, body)| (*status, body) != (400, &invalid))
        .collect();
    assert!(
        not_ironics.is_empty(),
        "{} of {} answers to the wiped token were not Ironic's 400: {:?}",
        not_ironics.len(),
        answers.len(),
        &not_ironics[..not_ironics.len().min(3)]
    );
    assert_eq!(site.metric("ironic_edge_redis_rollbacks_total"), 1.0);
    assert_eq!(site.metric("ironic_edge_redis_master_distrusted"), 0.0);
}

/// After the failover the sync runs on the new master (its lease and index live there), and a
/// node's heartbeats are learnt again there: a repeat is coalesced at the edge.
#[test]
fn the_sync_resumes_and_heartbeats_are_relearned_on_the_new_master() {
    let mut site = Site::start();
    let token = minted_token_of(&site);
    assert_eq!(site.send(&heartbeat(&site.uuid, CB, &token)).status, 202);
    site.wait_until_coalesced(&token);
    site.topo.wait_replica_in_sync(1);
    site.topo.kill_master_and_wait_promotion();
    site.wait_switch();
    let promoted = &site.topo.redis[1];
    let synced_at = || {
        let text = promoted
            .cmd(&["GET", "ironic-edge:idx:v2:synced_at"])
            .to_text();
        text.split(' ').next().and_then(|ms| ms.parse::<u64>().ok())
    };
    let first = wait_for(Duration::from_secs(30), synced_at).expect("an index on the new master");
    let advanced = wait_for(Duration::from_secs(30), || {
        synced_at().filter(|at| *at > first)
    });
    assert!(advanced.is_some(), "the sync stopped:\n{}", site.gw.logs());
    assert!(
        promoted.keys().iter().any(|k| k.ends_with("lease:sync")),
        "{:?}",
        promoted.keys()
    );
    site.wait_local_lookup_answers();
    assert_eq!(site.send(&heartbeat(&site.uuid, CB, &token)).status, 202);
    site.wait_until_coalesced(&token);
}
