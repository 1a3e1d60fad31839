//! The store's hardening (issue 8, items 4, 5 and 7), against the real binary and a real Redis:
//! - an index whose data Redis lost (a flush, a restart without persistence) is not trusted
//!   until a full round rebuilt it;
//! - a take that misses its deadline while Redis is frozen loses nothing: the kept heartbeat
//!   and the minted answer still arrive;
//! - sealed values are bound to the key and node they were kept for, token hashes to the
//!   gateway's secret, and the seal key file must be private.

mod common;

use common::{http, Env, FakeIronic, GatewayConfig, MiniIronic, RedisServer, Request};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

fn token_of(r: &http::Response) -> String {
    r.json()["config"]["agent_token"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn metric(env: &Env, name: &str) -> u64 {
    env.counter(name)
}

/// Ironic's clock, which the sync's watermarks follow.
fn now_http_date() -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now())
}

/// Programs the node and port listings the sync reads: `nodes` as `(uuid, mac, state)`, all of
/// them changed long ago (so that an incremental round lists nothing), and single-node reads.
fn serve_listings(fake: &FakeIronic, nodes: Vec<(String, String, &'static str)>) {
    let nodes = Arc::new(nodes);
    let node_json = |(uuid, _, state): &(String, String, &str)| {
        format!(
            "{{\"uuid\": \"{uuid}\", \"name\": null, \"provision_state\": \"{state}\", \
             \"driver_info\": {{}}, \"maintenance\": false, \"driver_internal_info\": {{}}, \
             \"updated_at\": \"2020-01-01T00:00:00+00:00\", \
             \"created_at\": \"2020-01-01T00:00:00+00:00\"}}"
        )
    };
    let port_json = |(uuid, mac, _): &(String, String, &str)| {
        format!(
            "{{\"uuid\": \"p-{uuid}\", \"address\": \"{mac}\", \"node_uuid\": \"{uuid}\", \
             \"updated_at\": null, \"created_at\": \"2020-01-01T00:00:00+00:00\"}}"
        )
    };
    for path in ["/v1/nodes", "/v1/nodes/detail"] {
        let nodes = nodes.clone();
        fake.route("GET", path, move |req, ctx| {
            // Pages after the first (a marker) are empty.
            let items: Vec<String> = if req.query.as_deref().unwrap_or("").contains("marker=") {
                Vec::new()
            } else {
                nodes.iter().map(node_json).collect()
            };
            ctx.json(req, 200, &format!("{{\"nodes\": [{}]}}", items.join(", ")))
                .header("Date", &now_http_date())
        });
    }
    let ports = nodes.clone();
    fake.route("GET", "/v1/ports", move |req, ctx| {
        let items: Vec<String> = if req.query.as_deref().unwrap_or("").contains("marker=") {
            Vec::new()
        } else {
            ports.iter().map(port_json).collect()
        };
        ctx.json(req, 200, &format!("{{\"ports\": [{}]}}", items.join(", ")))
            .header("Date", &now_http_date())
    });
}

fn sync_on(cfg: &mut GatewayConfig) {
    cfg.set("ironic_edge.sync.enabled", true)
        .set("ironic_edge.sync.interval_seconds", 1)
        .set("ironic_edge.sync.full_resync_seconds", 600)
        .set("ironic_edge.sync.lease_seconds", 2);
}

/// Redis loses its data while a gateway syncs: the index must not be trusted (a node Ironic
/// knows must not get the edge's 404) until a full round has rebuilt it.
#[test]
fn an_index_redis_lost_is_not_trusted_until_a_full_round_rebuilt_it() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    let mac = "52:54:0d:00:00:01";
    let uuid = mini.add_node(&[mac]);
    serve_listings(
        &fake,
        vec![(uuid.clone(), mac.to_string(), "wait call-back")],
    );
    let env = Env::start_with_fake(fake, sync_on);
    let decided_at_the_edge = || {
        common::wait_for(Duration::from_secs(15), || {
            // A MAC never asked before (no remembered 404 can answer it): only the index can.
            let mac = common::ironic::random_mac();
            let before = env.fake.lookups();
            let r = env.send(&common::lookup(&mac));
            (r.status == 404 && env.fake.lookups() == before).then_some(())
        })
    };
    assert!(
        decided_at_the_edge().is_some(),
        "the first sync round did not make the index usable:\n{}",
        env.gw.logs()
    );
    let r = env.send(&common::lookup(mac));
    assert_eq!(r.status, 200, "a node in a lookup state: {}", r.text());

    // Redis loses everything (FLUSHALL: a restart without persistence looks the same).
    let r = env.redis.cmd(&["FLUSHALL"]);
    assert_eq!(r.to_text(), "OK");
    // Two more rounds end (ports are listed last in every round; rounds run one after another).
    let ports_listed = env.fake.count("/v1/ports");
    let rounds = common::wait_for(Duration::from_secs(15), || {
        (env.fake.count("/v1/ports") >= ports_listed + 2).then_some(())
    });
    assert!(
        rounds.is_some(),
        "no rounds after the flush:\n{}",
        env.gw.logs()
    );
    for _ in 0..3 {
        let r = env.send(&common::lookup(mac));
        assert_eq!(
            r.status,
            200,
            "a node Ironic knows got {} after Redis lost the index: {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // And the rebuilt index decides at the edge again.
    assert!(
        decided_at_the_edge().is_some(),
        "the index was not rebuilt:\n{}",
        env.gw.logs()
    );
}

/// A heartbeat kept while Ironic failed is still relayed once Ironic is back, even when Redis
/// froze while the relay was taking it (the take missed its deadline and ran late).
#[test]
fn a_kept_heartbeat_survives_a_redis_stall_during_the_relays_take() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    let failing = mini.fail_heartbeats_while(&fake);
    let mac = "52:54:0d:00:01:01";
    let uuid = mini.add_node(&[mac]);
    let mut env = Env::start_with_fake(fake, |cfg| {
        cfg.with_seal_key()
            .set("ironic_edge.heartbeat.relay_when_upstream_fails", true);
    });
    let r = env.send(&common::lookup(mac));
    let token = token_of(&r);
    assert_eq!(token.len(), 43, "{}", r.text());
    let hb = |v: &str| {
        Request::post(&format!("/v1/heartbeat/{uuid}"))
            .version("1.68")
            .json_body(&format!(
                "{{\"callback_url\": \"https://127.0.0.1:9999\", \"agent_token\": \"{token}\", \"agent_version\": \"{v}\"}}"
            ))
    };
    assert_eq!(env.send(&hb("13.0.0")).status, 202);

    failing.store(true, Ordering::SeqCst);
    let r = env.send(&hb("13.0.7"));
    assert_eq!(
        (r.status, r.text()),
        (202, String::new()),
        "kept for the relay"
    );
    assert_eq!(metric(&env, "ironic_edge_heartbeats_deferred_total"), 1);

    // Redis freezes for longer than a relay wave's pause: the relay's takes miss their
    // deadline and run when Redis comes back. Ironic recovers meanwhile.
    env.redis.freeze();
    std::thread::sleep(Duration::from_millis(2500));
    env.fake.clear_log();
    failing.store(false, Ordering::SeqCst);
    env.redis.thaw();

    let relayed = common::wait_for(Duration::from_secs(15), || {
        env.fake
            .requests()
            .into_iter()
            .find(|r| r.path.ends_with(&uuid) && r.json()["agent_version"] == "13.0.7")
    });
    let Some(relayed) = relayed else {
        panic!(
            "the kept heartbeat never reached Ironic (keys: {:?}):\n{}",
            env.redis.keys(),
            env.gw.logs()
        );
    };
    assert_eq!(relayed.json()["agent_token"], token.as_str());
    // Delivered, then deleted: nothing is left to relay or claimed (the marks of released
    // claims expire by themselves).
    let kept = format!("ironic-edge:pending:hb:{uuid}");
    let settled = common::wait_for(Duration::from_secs(5), || {
        let keys = env.redis.keys();
        let left = keys.iter().any(|k| {
            k.ends_with(&kept) || k.ends_with(":pending:hb") || k.ends_with(":pending:hb-claimed")
        });
        (!left).then_some(())
    });
    assert!(settled.is_some(), "still kept: {:?}", env.redis.keys());
    let sent = env
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with(&uuid))
        .count();
    assert_eq!(sent, 1, "relayed once");
}

/// Sends a lookup and drops the connection without reading the answer (the agent's timeout).
fn lookup_and_drop_the_answer(addr: SocketAddr, mac: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    let req = common::lookup(mac).to_bytes(&addr.to_string());
    s.write_all(&req).unwrap();
    drop(s);
}

fn replay_env() -> (Env, Arc<MiniIronic>) {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    let env = Env::start_with_fake(fake, |cfg| {
        cfg.with_seal_key()
            .set("ironic_edge.lookup.replay_window_seconds", 60);
    });
    (env, mini)
}

/// The keys of the kept minted answers (`db0:` stripped; not their claims and marks).
fn minted_keys(redis: &RedisServer) -> Vec<String> {
    redis
        .keys()
        .into_iter()
        .filter(|k| k.contains(":lookup:minted:"))
        .map(|k| k.trim_start_matches("db0:").to_string())
        .filter(|k| k.rsplit(':').next().is_some_and(|h| h.len() == 64))
        .collect()
}

/// Loses the answer of a lookup that minted a token, and waits until the gateway kept it.
fn lose_a_minted_answer(env: &Env, mac: &str) {
    let before = minted_keys(&env.redis).len();
    lookup_and_drop_the_answer(env.gw.addr(), mac);
    let kept = common::wait_for(Duration::from_secs(5), || {
        (minted_keys(&env.redis).len() > before).then_some(())
    });
    assert!(kept.is_some(), "no minted answer kept:\n{}", env.gw.logs());
}

/// The retry of a lost lookup answer arrives while Redis is frozen: its take misses the
/// deadline and runs late. The minted answer must still be handed over on a later retry.
#[test]
fn a_minted_answer_survives_a_redis_stall_during_the_take() {
    let (mut env, mini) = replay_env();
    let mac = "52:54:0d:00:02:01";
    let uuid = mini.add_node(&[mac]);
    lose_a_minted_answer(&env, mac);

    env.redis.freeze();
    let mut during = http::Client::connect(env.gw.addr());
    during.set_read_timeout(Duration::from_secs(10));
    let r = during.try_send(&common::lookup(mac));
    env.redis.thaw();
    eprintln!("the retry during the freeze got {:?}", r.map(|r| r.status));

    // A later retry gets the minted answer (a claim left by the late take expires or is
    // released; the answer itself was not deleted).
    let got = common::wait_for(Duration::from_secs(15), || {
        let r = env.send(&common::lookup(mac));
        let t = token_of(&r);
        (t.len() == 43).then_some(t)
    });
    let Some(token) = got else {
        panic!(
            "the minted answer was lost (keys: {:?}):\n{}",
            env.redis.keys(),
            env.gw.logs()
        );
    };
    assert_eq!(
        mini.node(&uuid).unwrap().token.as_deref(),
        Some(token.as_str())
    );
    // Handed out once: the next retry gets Ironic's answer.
    assert_eq!(token_of(&env.send(&common::lookup(mac))), "******");
}

/// A sealed minted answer copied to another caller's replay key is not opened there.
#[test]
fn a_minted_answer_copied_to_another_replay_key_is_refused() {
    let (env, mini) = replay_env();
    let (mac_a, mac_b) = ("52:54:0d:00:03:01", "52:54:0d:00:03:02");
    let uuid_a = mini.add_node(&[mac_a]);
    let _uuid_b = mini.add_node(&[mac_b]);
    lose_a_minted_answer(&env, mac_a);
    let key_a = minted_keys(&env.redis)[0].clone();
    lose_a_minted_answer(&env, mac_b);
    let key_b = minted_keys(&env.redis)
        .into_iter()
        .find(|k| *k != key_a)
        .expect("B's kept answer");
    // Whoever can write Redis puts A's sealed answer where B's retry looks.
    let restored = env.redis.cmd(&[
        "EVAL",
        "return redis.call('SET', KEYS[2], redis.call('GET', KEYS[1]))",
        "2",
        &key_a,
        &key_b,
    ]);
    assert_eq!(restored.to_text(), "OK");

    let r = env.send(&common::lookup(mac_b));
    let a_token = mini.node(&uuid_a).unwrap().token.unwrap();
    assert_ne!(token_of(&r), a_token, "A's token handed to B's caller");
    assert!(
        !r.text().contains(&uuid_a),
        "A's node data handed to B's caller: {}",
        r.text()
    );
}

/// A kept heartbeat copied to another node's key is not relayed from there: only the node's
/// own kept heartbeat reaches Ironic, and the copy is dropped and counted.
#[test]
fn a_kept_heartbeat_copied_to_another_nodes_key_is_refused() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    let failing = mini.fail_heartbeats_while(&fake);
    let (mac_a, mac_b) = ("52:54:0d:00:05:01", "52:54:0d:00:05:02");
    let uuid_a = mini.add_node(&[mac_a]);
    let uuid_b = mini.add_node(&[mac_b]);
    let env = Env::start_with_fake(fake, |cfg| {
        cfg.with_seal_key()
            .set("ironic_edge.heartbeat.relay_when_upstream_fails", true);
    });
    let token = token_of(&env.send(&common::lookup(mac_a)));
    let hb = common::heartbeat(&uuid_a, "https://127.0.0.1:9999", &token);
    assert_eq!(env.send(&hb).status, 202);
    failing.store(true, Ordering::SeqCst);
    assert_eq!(env.send(&hb).status, 202, "kept for the relay");
    // While Ironic fails, whoever can write Redis files A's kept heartbeat under B as well.
    let copied = env.redis.cmd(&[
        "EVAL",
        "redis.call('SET', KEYS[2], redis.call('GET', KEYS[1])) \
         return redis.call('SADD', KEYS[3], ARGV[1])",
        "3",
        &format!("ironic-edge:pending:hb:{uuid_a}"),
        &format!("ironic-edge:pending:hb:{uuid_b}"),
        "ironic-edge:pending:hb",
        &uuid_b,
    ]);
    assert!(copied.as_int().is_some(), "{copied:?}");

    env.fake.clear_log();
    failing.store(false, Ordering::SeqCst);
    let dropped = common::wait_for(Duration::from_secs(15), || {
        (metric(&env, "ironic_edge_heartbeats_relayed_total") >= 1
            && metric(&env, "ironic_edge_sealed_unopenable_total") >= 1)
            .then_some(())
    });
    assert!(
        dropped.is_some(),
        "relayed {}, dropped {}:\n{}",
        metric(&env, "ironic_edge_heartbeats_relayed_total"),
        metric(&env, "ironic_edge_sealed_unopenable_total"),
        env.gw.logs()
    );
    let relayed = env.fake.count_prefix("/v1/heartbeat/");
    assert_eq!(relayed, 1, "A's kept heartbeat once, the copy never");
    assert!(!env.redis.keys().iter().any(|k| k.ends_with(&uuid_b)));
}

/// `v1$<salt>$<HMAC-SHA256(salt, token)>`: the unkeyed scheme, which anyone can compute.
fn unkeyed_hash(token: &str) -> String {
    use hmac::{Hmac, Mac};
    let salt = [9u8; 16];
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(&salt).unwrap();
    m.update(token.as_bytes());
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!("v1${}${}", hex(&salt), hex(&m.finalize().into_bytes()))
}

/// Whoever can write Redis plants a token hash of its own choosing (computed without the
/// gateway's secret): a heartbeat with that token must not count as verified (here: it would
/// be accepted at the edge and kept for the relay while Ironic fails).
#[test]
fn a_token_hash_planted_without_the_gateways_secret_does_not_verify() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    let failing = mini.fail_heartbeats_while(&fake);
    let mac = "52:54:0d:00:04:01";
    let uuid = mini.add_node(&[mac]);
    let env = Env::start_with_fake(fake, |cfg| {
        cfg.with_seal_key()
            .set("ironic_edge.heartbeat.relay_when_upstream_fails", true);
    });
    let token = token_of(&env.send(&common::lookup(mac)));
    assert_eq!(token.len(), 43);
    let node_key = format!("ironic-edge:node:{uuid}");
    let learnt = env.redis.cmd(&["HGET", &node_key, "token"]).to_text();
    assert!(!learnt.is_empty(), "the minted token's hash was learnt");

    let forged = "forged-token-of-the-attackers-choice-0000000";
    let r = env
        .redis
        .cmd(&["HSET", &node_key, "token", &unkeyed_hash(forged)]);
    assert!(r.as_int().is_some(), "{r:?}");
    failing.store(true, Ordering::SeqCst);
    let r = env.send(&common::heartbeat(&uuid, "https://127.0.0.1:9999", forged));
    assert_ne!(
        r.status, 202,
        "a heartbeat with a forged token was accepted at the edge"
    );
    assert_eq!(metric(&env, "ironic_edge_heartbeats_deferred_total"), 0);
}

/// A seal key file readable by others makes the config check fail, naming the field and file.
#[test]
fn a_seal_key_file_readable_by_others_fails_the_config_check() {
    use std::os::unix::fs::PermissionsExt;
    let redis = RedisServer::start();
    let mut cfg = GatewayConfig::new("http://127.0.0.1:6385", &redis.url());
    cfg.with_seal_key();
    let key = cfg.dir.path().join("seal.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let conf = cfg.write();
    let out = common::gateway::run_bin(&["-t", "-c", conf.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("config error: ironic_edge.seal_key_file:")
            && stderr.contains(key.to_str().unwrap()),
        "{stderr}"
    );
    // Private again: the same config passes.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = common::gateway::run_bin(&["-t", "-c", conf.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
