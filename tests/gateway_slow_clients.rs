//! Slow and greedy clients. Anyone on the provisioning network can open connections and send
//! a byte now and then: a request head must arrive whole within its deadline, an agent body
//! must keep a minimum rate, an idle connection is closed, and one source holds a bounded
//! number of connections. Agents keep being served meanwhile.
//!
//! No timing assertions: each test waits for the closes with a client-side limit well above
//! the configured deadlines.

mod common;

use common::{http, Env, FakeIronic, GatewayConfig, MiniIronic};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long a test waits for the gateway to close what it must close: far above every
/// deadline configured here, far below Pingora's own 60 s per-read timeouts.
const GIVE_UP: Duration = Duration::from_secs(20);

/// A gateway in front of a mini Ironic holding one node; returns its uuid and MAC.
fn start(f: impl FnOnce(&mut GatewayConfig)) -> (Env, String, String) {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    let mac = "52:54:0d:00:00:01".to_string();
    let uuid = mini.add_node(&[mac.as_str()]);
    let env = Env::start_with_fake(fake, f);
    (env, uuid, mac)
}

/// Whether the gateway closed this (non-blocking) connection; any answer it wrote is read
/// and returned alongside.
fn closed(s: &mut TcpStream, answer: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// Opens a connection and writes `first` on it; non-blocking from then on.
fn open_with(addr: SocketAddr, first: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(first).unwrap();
    s.set_nonblocking(true).unwrap();
    s
}

/// Trickles `byte` on every connection once per `every` until the gateway has closed them
/// all or `GIVE_UP` passed; `meanwhile` runs once per round. Returns how many are still open
/// and what the closed ones were answered.
fn trickle_until_closed(
    mut conns: Vec<TcpStream>,
    byte: u8,
    every: Duration,
    mut meanwhile: impl FnMut(),
) -> (usize, Vec<String>) {
    let started = Instant::now();
    let mut open: Vec<(TcpStream, Vec<u8>)> = conns.drain(..).map(|s| (s, Vec::new())).collect();
    let mut answers = Vec::new();
    while !open.is_empty() && started.elapsed() < GIVE_UP {
        let mut still = Vec::with_capacity(open.len());
        for (mut s, mut answer) in open {
            if closed(&mut s, &mut answer) {
                answers.push(String::from_utf8_lossy(&answer).into_owned());
                continue;
            }
            // A write into a connection the gateway just closed may fail: the next round
            // sees the close.
            let _ = s.write_all(&[byte]);
            still.push((s, answer));
        }
        open = still;
        meanwhile();
        std::thread::sleep(every);
    }
    (open.len(), answers)
}

fn lookup_works(env: &Env, mac: &str) {
    let r = env.send(&common::lookup(mac));
    assert_eq!(r.status, 200, "a normal lookup meanwhile: {}", r.text());
}

#[test]
fn connections_trickling_their_head_a_byte_a_second_are_closed_by_the_head_deadline() {
    let (env, _uuid, mac) = start(|cfg| {
        cfg.set("ironic_edge.limits.request_head_timeout_ms", 2000);
    });
    let head = format!("GET /v1/lookup?addresses={mac} HTTP/1.1\r\nHost: edge\r\nX-Trickle: ");
    let conns: Vec<TcpStream> = (0..40)
        .map(|_| open_with(env.gw.addr(), head.as_bytes()))
        .collect();
    let (open, answers) = trickle_until_closed(conns, b'a', Duration::from_secs(1), || {
        lookup_works(&env, &mac)
    });
    assert_eq!(open, 0, "{open} of 40 trickling connections still open");
    assert!(
        answers.iter().all(|a| !a.starts_with("HTTP/1.1 2")),
        "a trickled head was served: {answers:?}"
    );
    lookup_works(&env, &mac);
}

#[test]
fn a_heartbeat_body_slower_than_the_minimum_rate_is_cut() {
    let (env, uuid, mac) = start(|cfg| {
        cfg.set("ironic_edge.limits.request_head_timeout_ms", 1000)
            .set("ironic_edge.limits.agent_body_min_bytes_per_second", 1024);
    });
    let head = format!(
        "POST /v1/heartbeat/{uuid} HTTP/1.1\r\nHost: edge\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nX-OpenStack-Ironic-API-Version: 1.68\r\n\
         Content-Length: 100000\r\n\r\n{{\"callback_url\": \"https://127.0.0.1:9999/"
    );
    let conns: Vec<TcpStream> = (0..10)
        .map(|_| open_with(env.gw.addr(), head.as_bytes()))
        .collect();
    let (open, answers) = trickle_until_closed(conns, b'a', Duration::from_millis(500), || {
        lookup_works(&env, &mac)
    });
    assert_eq!(open, 0, "{open} of 10 trickled heartbeat bodies still open");
    assert!(
        answers.iter().all(|a| !a.starts_with("HTTP/1.1 2")),
        "a trickled heartbeat was accepted: {answers:?}"
    );
    assert_eq!(env.fake.heartbeats(), 0, "nothing reached Ironic");
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let (env, _uuid, mac) = start(|cfg| {
        cfg.set("ironic_edge.limits.idle_timeout_ms", 1000);
    });
    // One that never sends anything, one idle after a keep-alive request.
    let silent = open_with(env.gw.addr(), b"");
    let kept = TcpStream::connect(env.gw.addr()).unwrap();
    let mut client = http::Client::from_stream(kept.try_clone().unwrap());
    let r = client.send(&common::lookup(&mac));
    assert_eq!(r.status, 200);
    assert!(!client.closed, "kept alive after the answer");
    kept.set_nonblocking(true).unwrap();
    let mut conns = vec![(silent, Vec::new()), (kept, Vec::new())];
    let started = Instant::now();
    while started.elapsed() < GIVE_UP {
        conns.retain_mut(|(s, answer)| !closed(s, answer));
        if conns.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        conns.is_empty(),
        "{} idle connections still open",
        conns.len()
    );
    lookup_works(&env, &mac);
}

/// A connection from `src` (another loopback address: another machine as far as the gateway
/// can tell).
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

#[test]
fn the_connection_past_the_per_source_cap_is_closed_before_any_http() {
    let (env, _uuid, mac) = start(|cfg| {
        cfg.set("ironic_edge.limits.max_connections_per_source", 4);
    });
    // Four kept-alive connections, each proven admitted by an answer.
    let mut held: Vec<http::Client> = (0..4)
        .map(|_| {
            let mut c = http::Client::connect(env.gw.addr());
            assert_eq!(c.send(&common::lookup(&mac)).status, 200);
            c
        })
        .collect();

    let mut fifth = http::Client::connect(env.gw.addr());
    fifth.set_read_timeout(Duration::from_secs(10));
    let refused = fifth.try_send(&common::lookup(&mac));
    assert!(
        refused.is_err(),
        "the fifth connection from one source was served: {:?}",
        refused.map(|r| r.status)
    );

    // Another source is not affected.
    let mut other = http::Client::from_stream(connect_from([127, 0, 0, 2], env.gw.addr()));
    assert_eq!(other.send(&common::lookup(&mac)).status, 200);

    // A closed connection frees its place.
    drop(held.pop());
    let served = common::wait_for(Duration::from_secs(10), || {
        let mut c = http::Client::try_connect(env.gw.addr()).ok()?;
        c.set_read_timeout(Duration::from_secs(5));
        c.try_send(&common::lookup(&mac))
            .ok()
            .filter(|r| r.status == 200)
    });
    assert!(served.is_some(), "no place freed after a close");
    // The held ones still work.
    for c in &mut held {
        assert_eq!(c.send(&common::lookup(&mac)).status, 200);
    }
}
