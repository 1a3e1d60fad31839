//! The lost lookup answer. An agent whose lookup timed out after Ironic minted its token
//! retries, gets "******" and shuts itself down: bricked. Through the gateway the retry of the
//! same request from the same address gets the minted answer, once, until the agent's first
//! heartbeat succeeds.

mod common;

use common::{http, Env, FakeIronic, MiniIronic, Request};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Sends a lookup and drops the connection without reading the answer (the agent's timeout).
fn lookup_and_drop_the_answer(addr: SocketAddr, mac: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    let req = common::lookup(mac).to_bytes(&addr.to_string());
    s.write_all(&req).unwrap();
    drop(s);
}

/// A lookup from another loopback address (another machine, as far as the gateway can tell).
fn lookup_from(src: [u8; 4], addr: SocketAddr, mac: &str) -> http::Response {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let std_stream = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::from((src, 0))).unwrap();
        sock.connect(addr).await.unwrap().into_std().unwrap()
    });
    std_stream.set_nonblocking(false).unwrap();
    let mut c = http::Client::from_stream(std_stream);
    c.send(&common::lookup(mac))
}

fn token_of(r: &http::Response) -> String {
    r.json()["config"]["agent_token"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn start() -> (Env, std::sync::Arc<MiniIronic>, Vec<(String, String)>) {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    let nodes = (0..3)
        .map(|i| {
            let mac = format!("52:54:0c:00:00:0{i}");
            (mini.add_node(&[mac.as_str()]), mac)
        })
        .collect();
    let env = Env::start_with_fake(fake, |cfg| {
        cfg.with_seal_key()
            .set("ironic_edge.lookup.replay_window_seconds", 30);
    });
    (env, mini, nodes)
}

#[test]
fn a_lost_lookup_answer_bricks_the_agent_directly_but_not_through_the_gateway() {
    let (env, _mini, nodes) = start();
    let (direct_uuid, direct_mac) = &nodes[0];
    let (uuid, mac) = &nodes[1];

    // Straight to Ironic: the answer that minted the token is lost, the retry gets "******".
    lookup_and_drop_the_answer(env.fake.addr(), direct_mac);
    assert!(
        common::wait_for(Duration::from_secs(5), || (env.fake.lookups() >= 1)
            .then_some(()))
        .is_some()
    );
    let retry = http::send(env.fake.addr(), &common::lookup(direct_mac));
    assert_eq!(
        token_of(&retry),
        "******",
        "bricked: IPA locks itself down on this ({direct_uuid})"
    );

    // Through the gateway: the same loss, and the retry gets the minted answer.
    let before = env.fake.lookups();
    lookup_and_drop_the_answer(env.gw.addr(), mac);
    assert!(
        common::wait_for(Duration::from_secs(5), || (env.fake.lookups() > before)
            .then_some(()))
        .is_some()
    );
    std::thread::sleep(Duration::from_millis(300));
    let retry = env.send(&common::lookup(mac));
    assert_eq!(retry.status, 200, "{}", retry.text());
    let token = token_of(&retry);
    assert_eq!(
        token.len(),
        43,
        "the raw token minted for this agent: {}",
        retry.text()
    );
    assert_eq!(
        env.fake.lookups(),
        before + 1,
        "the retry was answered at the edge"
    );
    env.redis.assert_absent(&token);
    assert!(!env.gw.logs().contains(&token));

    // Handed out once only: another retry asks Ironic (which says "******").
    let again = env.send(&common::lookup(mac));
    assert_eq!(token_of(&again), "******");

    // And the token works.
    let hb = env.send(&common::heartbeat(uuid, "https://127.0.0.1:9999", &token));
    assert_eq!(hb.status, 202, "{}", hb.text());
}

/// Ironic mints the token but answers after the agent's deadline (a loaded conductor). The
/// agent gets 503 in time rather than a timeout, a retry meanwhile joins the lookup still at
/// Ironic (no second one: that would get "******"), and the retry after it gets the minted
/// answer.
#[test]
fn a_lookup_slower_than_the_agent_is_answered_503_and_its_answer_kept_for_the_retry() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    let mac = "52:54:0c:00:01:01";
    let uuid = mini.add_node(&[mac]);
    let m = mini.clone();
    fake.route("GET", "/v1/lookup", move |req, ctx| {
        m.lookup(req, ctx).delay(Duration::from_millis(2500))
    });
    let env = Env::start_with_fake(fake, |cfg| {
        cfg.with_seal_key()
            .set("ironic_edge.upstream.agent_answer_within_ms", 1000);
    });

    let first = env.send(&common::lookup(mac));
    assert_eq!(first.status, 503, "{}", first.text());
    assert!(first.json()["error_message"].is_string(), "Ironic-shaped");
    let meanwhile = env.send(&common::lookup(mac));
    assert_eq!(meanwhile.status, 503, "{}", meanwhile.text());
    assert_eq!(
        env.fake.lookups(),
        1,
        "the retry joined the lookup at Ironic"
    );

    // Ironic answers 2.5 s after the first lookup; two 1 s deadlines have passed.
    std::thread::sleep(Duration::from_millis(1500));
    let retry = env.send(&common::lookup(mac));
    assert_eq!(retry.status, 200, "{}", retry.text());
    let token = token_of(&retry);
    assert_eq!(token.len(), 43, "the minted token: {}", retry.text());
    assert_eq!(env.fake.lookups(), 1, "answered at the edge");
    let hb = env.send(&common::heartbeat(&uuid, "https://127.0.0.1:9999", &token));
    assert_eq!(hb.status, 202, "{}", hb.text());
}

#[test]
fn the_replay_is_for_the_same_caller_and_ends_with_the_first_heartbeat() {
    let (env, _mini, nodes) = start();
    let (uuid, mac) = &nodes[2];
    lookup_and_drop_the_answer(env.gw.addr(), mac);
    assert!(
        common::wait_for(Duration::from_secs(5), || (env.fake.lookups() >= 1)
            .then_some(()))
        .is_some()
    );
    std::thread::sleep(Duration::from_millis(300));
    // Another address asking the same: Ironic's answer, no token for it.
    let other = lookup_from([127, 0, 0, 2], env.gw.addr(), mac);
    assert_eq!(token_of(&other), "******");
    // The agent itself gets its answer back.
    let mine = env.send(&common::lookup(mac));
    let token = token_of(&mine);
    assert_eq!(token.len(), 43);
    let hb = env.send(&common::heartbeat(uuid, "https://127.0.0.1:9999", &token));
    assert_eq!(hb.status, 202);
    // Nothing is kept for this node any more.
    let keys = env.redis.keys();
    assert!(
        !keys.iter().any(|k| k.contains(":lookup:minted:")),
        "{keys:?}"
    );
    let r = http::send(env.gw.addr(), &Request::get("/v1/lookup").version("1.62"));
    assert_eq!(r.status, 400, "unrelated: still validated");
}

/// Ironic can take minutes to answer a lookup under a storm (one took 150 s at 1,000 agents,
/// its node lock held meanwhile) and mints the token at the end: the gateway waits for that
/// answer longer than for any other (`upstream.lookup_read_timeout_ms`), so that the agent's
/// retry gets the token. (It gave up after `read_timeout_ms`, 65 s, the token reached nobody,
/// and the retry got "******": bricked.)
#[test]
fn a_lookup_ironic_answers_after_the_read_timeout_still_reaches_the_agent() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    let mac = "52:54:0c:00:02:01";
    let uuid = mini.add_node(&[mac]);
    let m = mini.clone();
    fake.route("GET", "/v1/lookup", move |req, ctx| {
        m.lookup(req, ctx).delay(Duration::from_secs(6))
    });
    // Any other exchange with Ironic ends within 1 + 2 + 1 s.
    let env = Env::start_with_fake(fake, |cfg| {
        cfg.with_seal_key()
            .set("ironic_edge.upstream.agent_answer_within_ms", 1000)
            .set("ironic_edge.upstream.connect_timeout_ms", 1000)
            .set("ironic_edge.upstream.write_timeout_ms", 1000)
            .set("ironic_edge.upstream.read_timeout_ms", 2000)
            .set("ironic_edge.upstream.lookup_read_timeout_ms", 20000);
    });

    let first = env.send(&common::lookup(mac));
    assert_eq!(first.status, 503, "{}", first.text());
    // Ironic answers 6 s after the first lookup, past any other exchange's end.
    let answered = common::wait_for(Duration::from_secs(20), || {
        let retry = env.send(&common::lookup(mac));
        (retry.status != 503).then_some(retry)
    })
    .expect("the retries got an answer");
    assert_eq!(answered.status, 200, "{}", answered.text());
    let token = token_of(&answered);
    assert_eq!(token.len(), 43, "the minted token: {}", answered.text());
    let hb = env.send(&common::heartbeat(&uuid, "https://127.0.0.1:9999", &token));
    assert_eq!(hb.status, 202, "{}", hb.text());
}
