//! Graceful upgrade under load (issue 11, item 8): a new gateway process started with `-u`
//! takes the listening sockets over the upgrade socket, the old one gets SIGQUIT and drains.
//! Agent-like traffic runs through the hand-over on keep-alive connections (clients that send
//! back to back, and clients that reuse an idle connection after a pause, as IPA's
//! python-requests pool does); not one request may fail in a way a single process would not
//! fail it: no reset, no empty reply, no unexpected status.

mod common;

use common::*;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const CB: &str = "https://10.0.0.5:9999";

/// What the traffic sends, and the one status a single process gives each.
#[derive(Clone)]
struct Traffic {
    addr: SocketAddr,
    uuid: String,
    token: String,
}

impl Traffic {
    /// The `i`-th request: a lookup of MACs of no node (the index's 404 at the edge), the
    /// node's verified heartbeat (coalesced at the edge: 202), a passthrough GET (200).
    fn request(&self, i: usize) -> (Request, u16) {
        match i % 3 {
            0 => (lookup(&ironic::random_mac()), 404),
            1 => (heartbeat(&self.uuid, CB, &self.token), 202),
            _ => (
                Request::get(&format!("/v1/nodes/{}", self.uuid)).version("1.68"),
                200,
            ),
        }
    }
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    sent: AtomicUsize,
    closes: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

/// A connection as urllib3 keeps one in its pool: before reusing it, it checks whether the
/// server closed it meanwhile (`is_connection_dropped`: readable means EOF or junk) and opens a
/// new one if so.
struct PooledConn {
    client: http::Client,
    probe: TcpStream,
}

impl PooledConn {
    fn open(addr: SocketAddr) -> std::io::Result<PooledConn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        let probe = stream.try_clone()?;
        Ok(PooledConn {
            client: http::Client::from_stream(stream),
            probe,
        })
    }

    fn dropped(&self) -> bool {
        let _ = self.probe.set_nonblocking(true);
        let mut b = [0u8; 1];
        let readable = match self.probe.peek(&mut b) {
            Ok(_) => true,
            Err(e) => e.kind() != ErrorKind::WouldBlock,
        };
        let _ = self.probe.set_nonblocking(false);
        readable
    }
}

/// One client: requests on a keep-alive connection, `pause` between them (zero: back to back).
/// A connection the server announced closed (`Connection: close`) or closed while idle is
/// replaced, as any HTTP/1.1 client does; anything else is a failure.
fn client(t: &Traffic, tally: &Tally, stop: &AtomicBool, pause: Duration, seed: usize) {
    let mut conn: Option<PooledConn> = None;
    let mut i = seed;
    while !stop.load(Ordering::Relaxed) {
        if conn
            .as_ref()
            .is_some_and(|c| c.client.closed || c.dropped())
        {
            conn = None;
        }
        let c = match conn.take() {
            Some(c) => c,
            None => match PooledConn::open(t.addr) {
                Ok(c) => c,
                Err(e) => {
                    tally.fail(format!("connect: {e}"));
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            },
        };
        let mut c = c;
        let (req, want) = t.request(i);
        i += 1;
        tally.sent.fetch_add(1, Ordering::Relaxed);
        match c.client.try_send(&req) {
            Ok(r) if r.status == want => {
                if c.client.closed {
                    tally.closes.fetch_add(1, Ordering::Relaxed);
                } else {
                    conn = Some(c);
                }
            }
            Ok(r) => tally.fail(format!(
                "{} {}: {} (want {want}) {}",
                req.method,
                req.target.split('?').next().unwrap_or(""),
                r.status,
                r.text()
            )),
            Err(e) => tally.fail(format!(
                "{} {}: {e}",
                req.method,
                req.target.split('?').next().unwrap_or("")
            )),
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
}

/// Requests answered by this process since it started (the ops listener).
fn answered(gw: &Gateway) -> f64 {
    gw.metric("ironic_edge_requests_total", &[]).unwrap_or(0.0)
}

/// The successor of `old`: the same config, listeners and upgrade socket, its own files, `-u`.
fn successor(old: &Gateway, fake: &FakeIronic, redis: &RedisServer) -> GatewayConfig {
    let mut next = GatewayConfig::new(&fake.url(), &redis.url());
    next.yaml = old.cfg.yaml.clone();
    next.listen = old.cfg.listen;
    next.ops = old.cfg.ops;
    let d = next.dir.path().to_path_buf();
    next.set("pid_file", d.join("edge.pid").to_str().unwrap())
        .set("error_log", d.join("error.log").to_str().unwrap())
        .env("RUST_LOG", "info");
    next.args = vec!["-u".into()];
    next
}

/// Starts the successor of `old` and hands it the sockets: SIGQUIT to `old` once the successor
/// waits on the upgrade socket.
fn hand_over(old: &Gateway, fake: &FakeIronic, redis: &RedisServer) -> Gateway {
    let sock = std::path::PathBuf::from(old.cfg.yaml["upgrade_sock"].as_str().unwrap());
    // A previous hand-over's socket file is left behind: the successor replaces it.
    let _ = std::fs::remove_file(&sock);
    let gw = Gateway::spawn(successor(old, fake, redis));
    let bound = wait_for(Duration::from_secs(10), || sock.exists().then_some(()));
    assert!(
        bound.is_some(),
        "the successor waits on {sock:?}:\n{}",
        gw.logs()
    );
    signal(old.pid().unwrap(), libc::SIGQUIT);
    gw
}

/// Sets the flag when dropped: a failed assertion inside the traffic's scope stops the clients
/// (or the scope would wait for them forever).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Hand-overs in a row under the traffic (the second one from a process itself started with
/// `-u`).
const HAND_OVERS: usize = 2;

#[test]
fn a_graceful_upgrade_under_keep_alive_load_fails_no_request() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install_with_listings(&fake);
    let mac = ironic::random_mac();
    let uuid = mini.add_node(&[&mac]);
    let env = Env::start_with_fake(fake, |c| {
        c.with_index_and_coalescing()
            // The drain as shipped, shortened: every connection is done within the grace.
            .set("grace_period_seconds", 20)
            .set("graceful_shutdown_timeout_seconds", 1)
            .set("ironic_edge.limits.idle_timeout_ms", 5000)
            .env("RUST_LOG", "info");
    });
    env.wait_for_index();
    let token = minted_token(&env, &mac);
    assert_eq!(env.send(&heartbeat(&uuid, CB, &token)).status, 202);
    env.wait_until_coalesced(&token, || env.send(&heartbeat(&uuid, CB, &token)));

    let traffic = Traffic {
        addr: env.gw.addr(),
        uuid: uuid.clone(),
        token: token.clone(),
    };
    let (tally, stop) = (Tally::default(), AtomicBool::new(false));
    // Every process started, in order (each one dropped, so killed, at the end).
    let mut successors: Vec<Gateway> = Vec::new();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for n in 0..6 {
            let (t, tally, stop) = (&traffic, &tally, &stop);
            s.spawn(move || client(t, tally, stop, Duration::ZERO, n));
        }
        // IPA-like: one request, a pause, the same pooled connection again.
        for (n, ms) in [(0, 150u64), (1, 400), (2, 900)] {
            let (t, tally, stop) = (&traffic, &tally, &stop);
            s.spawn(move || client(t, tally, stop, Duration::from_millis(ms), n));
        }
        std::thread::sleep(Duration::from_secs(1));
        for round in 0..HAND_OVERS {
            let old = successors.last().unwrap_or(&env.gw);
            let old_pid = old.pid().unwrap();
            let gw = hand_over(old, &env.fake, &env.redis);
            let gone = wait_for(Duration::from_secs(60), || (!alive(old_pid)).then_some(()));
            assert!(
                gone.is_some(),
                "round {round}: the old process exits after its drain:\n{}",
                old.logs()
            );
            assert!(old.logs().contains("no client connection left, exiting"));
            // What the ops listener answers from now on is the successor's own.
            gw.wait_status(Duration::from_secs(10));
            let before = answered(&gw);
            std::thread::sleep(Duration::from_secs(1));
            let after = answered(&gw);
            assert!(
                after > before,
                "round {round}: the successor serves the traffic ({before} then {after}):\n{}",
                gw.logs()
            );
            successors.push(gw);
        }
    });
    let failures = tally.failures.lock().unwrap().clone();
    let sent = tally.sent.load(Ordering::Relaxed);
    eprintln!(
        "{HAND_OVERS} hand-overs: {sent} requests, {} answered with Connection: close, {} failed",
        tally.closes.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed, e.g. {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)],
    );
}

/// Pingora's own log line when the old process stops accepting (its shutdown broadcast, 5 s
/// after SIGQUIT): where it used to drop every idle keep-alive connection.
const BROADCAST: &str = "Graceful shutdown started!";

/// A connection idle across the old process's shutdown broadcast (IPA's pooled connection
/// between two heartbeats) is still open after it, and its next request is answered, with
/// `Connection: close`; the old process exits once that connection is gone.
#[test]
fn an_idle_keep_alive_connection_outlives_the_hand_over_and_gets_connection_close() {
    let env = Env::start_with(|c| {
        c.set("grace_period_seconds", 60)
            .set("graceful_shutdown_timeout_seconds", 1)
            .env("RUST_LOG", "info");
    });
    let old_pid = env.gw.pid().unwrap();
    let conn = PooledConn::open(env.gw.addr()).unwrap();
    let mut conn = conn;
    let r = conn.client.try_send(&Request::get("/v1/nodes")).unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(!conn.client.closed);

    let gw = hand_over(&env.gw, &env.fake, &env.redis);
    let broadcast = wait_for(Duration::from_secs(30), || {
        env.gw.logs().contains(BROADCAST).then_some(())
    });
    assert!(broadcast.is_some(), "{}", env.gw.logs());
    assert!(alive(old_pid), "the old process drains");
    assert!(
        !conn.dropped(),
        "the idle connection is open after the broadcast"
    );
    let r = conn.client.try_send(&Request::get("/v1/nodes")).unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.header("Connection"), Some("close"), "{:?}", r.headers);
    drop(conn);
    let gone = wait_for(Duration::from_secs(30), || (!alive(old_pid)).then_some(()));
    assert!(
        gone.is_some(),
        "drained, the old process exits:\n{}",
        env.gw.logs()
    );
    assert!(env.gw.logs().contains("no client connection left, exiting"));
    gw.wait_status(Duration::from_secs(10));
}

/// SIGTERM: nobody takes over, so idle connections are closed at once and the process exits
/// as soon as its answers are out, not after its grace period (60 s here).
#[test]
fn a_stop_closes_idle_connections_and_exits_once_drained() {
    let mut env = Env::start_with(|c| {
        c.set("grace_period_seconds", 60)
            .set("graceful_shutdown_timeout_seconds", 1)
            .env("RUST_LOG", "info");
    });
    let pid = env.gw.pid().unwrap();
    let mut conn = PooledConn::open(env.gw.addr()).unwrap();
    assert_eq!(
        conn.client
            .try_send(&Request::get("/v1/nodes"))
            .unwrap()
            .status,
        404
    );
    signal(pid, libc::SIGTERM);
    let closed = wait_for(Duration::from_secs(20), || conn.dropped().then_some(()));
    assert!(closed.is_some(), "the idle connection is closed");
    let status = env.gw.terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "exits drained, well before its 60 s grace: {status:?}\n{}",
        env.gw.logs()
    );
}
