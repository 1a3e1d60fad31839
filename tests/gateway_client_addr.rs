//! Behind a proxy or load balancer: from a peer listed in `trusted_proxies` the client is the
//! right-most `X-Forwarded-For` address that is not itself a trusted proxy; from any other
//! peer the header is ignored. The replay of a lost lookup answer is bound to that client,
//! and Ironic receives it in `X-Forwarded-For`.

mod common;

use common::{http, Env, FakeIronic, MiniIronic, Request};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Only 127.0.0.1 is a proxy; 127.0.0.2 is some machine on the network.
const PROXY: [u8; 4] = [127, 0, 0, 1];
const OTHER: [u8; 4] = [127, 0, 0, 2];

fn connect_from(src: [u8; 4], addr: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::from((src, 0))).unwrap();
        sock.connect(addr).await.unwrap().into_std().unwrap()
    });
    s.set_nonblocking(false).unwrap();
    s
}

fn lookup_with(mac: &str, xff: Option<&str>) -> Request {
    let req = common::lookup(mac);
    match xff {
        Some(v) => req.header("X-Forwarded-For", v),
        None => req,
    }
}

/// A lookup whose answer is never read (the agent's timeout): Ironic mints the token.
fn lose_lookup(env: &Env, src: [u8; 4], mac: &str, xff: Option<&str>) {
    let before = env.fake.lookups();
    let addr = env.gw.addr();
    let mut s = connect_from(src, addr);
    s.write_all(&lookup_with(mac, xff).to_bytes(&addr.to_string()))
        .unwrap();
    drop(s);
    let reached = common::wait_for(Duration::from_secs(5), || {
        (env.fake.lookups() > before).then_some(())
    });
    assert!(reached.is_some(), "the lookup reached Ironic");
    // The gateway keeps the minted answer after Ironic's answer arrives.
    std::thread::sleep(Duration::from_millis(300));
}

fn lookup_from(env: &Env, src: [u8; 4], mac: &str, xff: Option<&str>) -> http::Response {
    let mut c = http::Client::from_stream(connect_from(src, env.gw.addr()));
    c.send(&lookup_with(mac, xff))
}

fn token_of(r: &http::Response) -> String {
    r.json()["config"]["agent_token"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn start() -> (Env, Vec<String>) {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    let macs: Vec<String> = (0..2).map(|i| format!("52:54:0e:00:00:0{i}")).collect();
    for mac in &macs {
        mini.add_node(&[mac.as_str()]);
    }
    let env = Env::start_with_fake(fake, |cfg| {
        cfg.with_seal_key()
            .set("ironic_edge.lookup.replay_window_seconds", 30)
            .set("ironic_edge.trusted_proxies", vec!["127.0.0.1"]);
    });
    (env, macs)
}

fn last_forwarded_for(env: &Env) -> Option<String> {
    env.fake
        .requests_to("/v1/lookup")
        .last()
        .and_then(|r| r.header("X-Forwarded-For").map(str::to_string))
}

#[test]
fn through_a_trusted_proxy_the_replay_is_for_the_forwarded_client_only() {
    let (env, macs) = start();
    let mac = &macs[0];
    // The client wrote a forged entry of its own; the proxy appended the client's address.
    lose_lookup(&env, PROXY, mac, Some("6.6.6.6, 192.0.2.10"));
    assert_eq!(
        last_forwarded_for(&env).as_deref(),
        Some("192.0.2.10, 127.0.0.1"),
        "Ironic is told the client and the proxy, not the forged entry"
    );

    // Another client behind the same proxy, and the proxy itself: Ironic's answer.
    let other = lookup_from(&env, PROXY, mac, Some("192.0.2.11"));
    assert_eq!(token_of(&other), "******", "{}", other.text());
    let proxy_itself = lookup_from(&env, PROXY, mac, None);
    assert_eq!(token_of(&proxy_itself), "******", "{}", proxy_itself.text());

    // The client whose answer was lost gets it.
    let mine = lookup_from(&env, PROXY, mac, Some("192.0.2.10"));
    assert_eq!(mine.status, 200, "{}", mine.text());
    assert_eq!(
        token_of(&mine).len(),
        43,
        "the minted token: {}",
        mine.text()
    );
}

#[test]
fn x_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let (env, macs) = start();
    let mac = &macs[1];
    lose_lookup(&env, OTHER, mac, Some("192.0.2.20"));
    assert_eq!(
        last_forwarded_for(&env).as_deref(),
        Some("127.0.0.2"),
        "an untrusted sender's X-Forwarded-For does not reach Ironic"
    );

    // The address it claimed gets nothing, even through the trusted proxy.
    let claimed = lookup_from(&env, PROXY, mac, Some("192.0.2.20"));
    assert_eq!(token_of(&claimed), "******", "{}", claimed.text());

    // The peer itself does, whatever it now claims.
    let mine = lookup_from(&env, OTHER, mac, Some("192.0.2.99"));
    assert_eq!(mine.status, 200, "{}", mine.text());
    assert_eq!(
        token_of(&mine).len(),
        43,
        "the minted token: {}",
        mine.text()
    );
}
