//! Shared harness of the black-box tests: free ports, a private Redis, a fake Ironic that
//! records what it receives, the real gateway binary, and a small HTTP client.
//!
//! Hermetic and parallel-safe: every test gets its own ports, Redis and temp dirs; every child
//! process is killed on drop (also when the test panics) and dies with the test thread that
//! started it if the test binary itself is killed.
#![allow(dead_code, unused_imports)]

pub mod fake_ironic;
pub mod gateway;
pub mod http;
pub mod ironic;
pub mod mini;
pub mod redis;
pub mod sentinel;
pub mod tls;

pub use fake_ironic::{Answer, Ctx, FakeIronic, FakeResponse, Recorded};
pub use gateway::{Env, Gateway, GatewayConfig};
pub use http::{Client, Request, Response};
pub use mini::MiniIronic;
pub use redis::{RedisServer, RedisStats};

use std::collections::HashSet;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free loopback port for a server a test starts (never the same one twice in this test
/// process). Chosen below the kernel's ephemeral range (32768 and up), where the source ports
/// of outgoing connections come from: a port picked there could be taken by some connection
/// between the pick and the server's bind (a gateway then retries its bind for 30 s).
pub fn free_port() -> u16 {
    use rand::Rng;
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let set = guard.get_or_insert_with(HashSet::new);
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let p: u16 = rng.gen_range(20_000..32_000);
        if set.contains(&p) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            set.insert(p);
            return p;
        }
    }
    // A crowded range: fall back to a kernel-chosen port.
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let p = l.local_addr().unwrap().port();
        if set.insert(p) {
            return p;
        }
    }
}

/// The child gets SIGKILL when the thread that spawned it dies (a killed test binary leaves
/// nothing behind).
pub fn die_with_parent(cmd: &mut Command) {
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
}

/// Sends a signal to a process.
pub fn signal(pid: u32, sig: libc::c_int) {
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Whether a process id is alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().next() != Some("Z"))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or `None` after `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts that a response is exactly the Ironic controller error: status, JSON content type,
/// byte-exact body, and the three version headers (max and negotiated as given).
#[track_caller]
pub fn assert_ironic_error(
    r: &Response,
    status: u16,
    faultstring: &str,
    max: &str,
    negotiated: &str,
) {
    let body = ironic::fault_body(status, faultstring);
    assert_eq!(
        (r.status, r.text()),
        (status, body.clone()),
        "expected Ironic {status} {faultstring:?}; headers {:?}",
        r.headers
    );
    assert_eq!(
        r.header("Content-Type"),
        Some("application/json"),
        "{:?}",
        r.headers
    );
    assert_eq!(
        r.header("Content-Length").map(str::to_string),
        Some(body.len().to_string()),
        "{:?}",
        r.headers
    );
    assert_eq!(
        r.versions(),
        (Some("1.1"), Some(max), Some(negotiated)),
        "version headers of {status} {faultstring:?}: {:?}",
        r.headers
    );
}

/// `Content-Type: application/json` heartbeat body as IPA sends it.
pub fn heartbeat_body(callback_url: &str, token: &str) -> String {
    format!(
        "{{\"callback_url\": \"{callback_url}\", \"agent_token\": \"{token}\", \"agent_version\": \"13.0.0\"}}"
    )
}

/// A heartbeat request for `node` at 1.68.
pub fn heartbeat(node: &str, callback_url: &str, token: &str) -> Request {
    Request::post(&format!("/v1/heartbeat/{node}"))
        .version("1.68")
        .header("Accept", "application/json")
        .json_body(&heartbeat_body(callback_url, token))
}

/// A verified-looking heartbeat at 1.68 from `https://127.0.0.1:9999` with this agent
/// version (each version makes a heartbeat the edge cannot coalesce with the last).
pub fn versioned_heartbeat(uuid: &str, token: &str, agent_version: &str) -> Request {
    Request::post(&format!("/v1/heartbeat/{uuid}"))
        .version("1.68")
        .json_body(&format!(
            "{{\"callback_url\": \"https://127.0.0.1:9999\", \"agent_token\": \"{token}\", \"agent_version\": \"{agent_version}\"}}"
        ))
}

/// The agent's first lookup through `env`: the token Ironic minted for it.
pub fn minted_token(env: &Env, mac: &str) -> String {
    let r = env.send(&lookup(mac));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["config"]["agent_token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A lookup request at 1.62 for these addresses (comma list, as given).
pub fn lookup(addresses: &str) -> Request {
    Request::get(&format!("/v1/lookup?addresses={addresses}"))
        .version("1.62")
        .header("Accept", "application/json")
        .header("Content-Type", "application/json")
}
