//! The REAL Ironic 39.0.0 (and the real IPA 13.0.0 client) as a test peer, started with the
//! project's own `scripts/ironic-peer-up.sh` on a free loopback port, with its own run folder
//! and a fresh database, and stopped by PID when dropped (also when the test panics).
#![allow(dead_code)]

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub fn scripts_dir() -> PathBuf {
    std::env::var_os("IRONIC_EDGE_SCRIPTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts"))
}

/// The venv's python (created by `make test` / `scripts/ironic-peer-up.sh --install-only`).
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("IRONIC_PEER_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache")
                });
            cache.join("ironic-edge").join("venv")
        });
    venv.join("bin").join("python")
}

/// Options for one Ironic instance.
pub struct PeerOptions {
    pub seed: usize,
    /// manageable | available | enroll | clean-wait | enroll-no-fasttrack
    pub state: &'static str,
    pub ports_per_node: usize,
    pub require_tls: bool,
    /// The Ironic URL handed to agents by deploy/clean flows (the gateway's, in gateway tests).
    pub public_url: Option<String>,
}

impl Default for PeerOptions {
    fn default() -> Self {
        PeerOptions {
            seed: 3,
            state: "manageable",
            ports_per_node: 1,
            require_tls: true,
            public_url: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SeededNode {
    pub uuid: String,
    pub name: String,
    pub macs: Vec<String>,
    pub provision_state: String,
}

pub struct RealIronic {
    pub url: String,
    pub nodes: Vec<SeededNode>,
    pub unknown_macs: Vec<String>,
    run_dir: tempfile::TempDir,
}

impl RealIronic {
    pub fn start(opts: PeerOptions) -> RealIronic {
        let run_dir = tempfile::Builder::new()
            .prefix("ironic-peer-")
            .tempdir()
            .expect("temp dir");
        let mut cmd = Command::new("bash");
        cmd.arg(scripts_dir().join("ironic-peer-up.sh"))
            .args(["--port", "0", "--run-dir"])
            .arg(run_dir.path())
            .args(["--seed", &opts.seed.to_string(), "--state", opts.state])
            .args(["--ports-per-node", &opts.ports_per_node.to_string()])
            .args([
                "--require-tls",
                if opts.require_tls { "true" } else { "false" },
            ]);
        if let Some(u) = &opts.public_url {
            cmd.args(["--public-url", u]);
        }
        let out = cmd
            .stderr(Stdio::piped())
            .output()
            .expect("run ironic-peer-up.sh");
        // Whatever happens next, the instance is stopped when `peer` is dropped.
        let mut peer = RealIronic {
            url: String::new(),
            nodes: Vec::new(),
            unknown_macs: Vec::new(),
            run_dir,
        };
        assert!(
            out.status.success(),
            "ironic-peer-up.sh failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            peer.log_tail()
        );
        peer.url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let (nodes, unknown_macs) = read_seed_file(&peer.run_dir.path().join("seed.json"));
        peer.nodes = nodes;
        peer.unknown_macs = unknown_macs;
        peer
    }

    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// Seeds `count` more nodes in `state` (same states as [`PeerOptions::state`]) into this
    /// running instance (`ironic-peer-up.sh --seed-only`) and returns them. MACs never collide
    /// with earlier seeds (the seeder counts the nodes already in the database).
    pub fn seed_more(
        &self,
        count: usize,
        state: &'static str,
        ports_per_node: usize,
    ) -> Vec<SeededNode> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let file = self.run_dir.path().join(format!(
            "seed-more-{}.json",
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let out = Command::new("bash")
            .arg(scripts_dir().join("ironic-peer-up.sh"))
            .arg("--seed-only")
            .arg("--run-dir")
            .arg(self.run_dir.path())
            .args(["--seed", &count.to_string(), "--state", state])
            .args(["--ports-per-node", &ports_per_node.to_string()])
            .arg("--seed-file")
            .arg(&file)
            .stderr(Stdio::piped())
            .output()
            .expect("run ironic-peer-up.sh --seed-only");
        assert!(
            out.status.success(),
            "ironic-peer-up.sh --seed-only failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        read_seed_file(&file).0
    }

    /// The run folder (config, database, log, seed files).
    pub fn run_dir(&self) -> &std::path::Path {
        self.run_dir.path()
    }

    pub fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.run_dir.path().join("ironic.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Runs the real IPA client (`scripts/ipa-client.py`) against `url` with these arguments;
    /// returns its JSON lines and whether it exited 0.
    pub fn ipa_client(&self, url: &str, args: &[&str]) -> (Vec<Value>, bool, String) {
        let out: Output = Command::new(venv_python())
            .arg(scripts_dir().join("ipa-client.py"))
            .args(["--url", url])
            .args(args)
            .output()
            .expect("run ipa-client.py");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let lines = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        (lines, out.status.success(), format!("{stdout}\n{stderr}"))
    }

    /// `PUT /v1/nodes/{uuid}/states/power {"target": "power off"}` straight to Ironic (wipes
    /// the agent token and agent_url), then waits until the token is really gone.
    pub fn power_off(&self, uuid: &str) {
        self.power_off_via(&self.url, uuid)
    }

    /// The same power off, sent to `base_url` (e.g. the gateway, which proxies it), with the
    /// wait for the wiped token made through the same URL.
    pub fn power_off_via(&self, base_url: &str, uuid: &str) {
        let script = r#"
import sys, time, requests
url, uuid = sys.argv[1], sys.argv[2]
h = {'X-OpenStack-Ironic-API-Version': 'latest'}
for _ in range(40):
    r = requests.put(f'{url}/v1/nodes/{uuid}/states/power', json={'target': 'power off'}, headers=h, timeout=30)
    if r.status_code == 202:
        break
    time.sleep(0.25)
else:
    sys.exit(f'power off: {r.status_code} {r.text}')
for _ in range(120):
    n = requests.get(f'{url}/v1/nodes/{uuid}', headers=h, timeout=30).json()
    if n.get('target_power_state') is None and 'agent_secret_token' not in n['driver_internal_info']:
        sys.exit(0)
    time.sleep(0.25)
sys.exit('token not wiped')
"#;
        let out = Command::new(venv_python())
            .args(["-c", script, base_url, uuid])
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "power off failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `GET /v1/nodes/{uuid}` straight from Ironic (latest version).
    pub fn node(&self, uuid: &str) -> Value {
        let out = Command::new(venv_python())
            .args([
                "-c",
                "import sys, requests; print(requests.get(sys.argv[1] + '/v1/nodes/' + sys.argv[2], headers={'X-OpenStack-Ironic-API-Version': 'latest'}, timeout=30).text)",
                &self.url,
                uuid,
            ])
            .output()
            .expect("python");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Waits until `f(node)` holds for the node's document, or panics after `timeout`.
    pub fn wait_node(&self, uuid: &str, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let n = self.node(uuid);
            if f(&n) {
                return n;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {uuid} never reached the expected state: {n}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The nodes and unknown MACs of a seed file written by `ironic-seed.py`.
pub fn read_seed_file(path: &std::path::Path) -> (Vec<SeededNode>, Vec<String>) {
    let seed: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("seed file"))
        .expect("seed JSON");
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let nodes = seed["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| SeededNode {
                    uuid: n["uuid"].as_str().unwrap_or_default().to_string(),
                    name: n["name"].as_str().unwrap_or_default().to_string(),
                    macs: strs(&n["macs"]),
                    provision_state: n["provision_state"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    (nodes, strs(&seed["unknown_macs"]))
}

impl Drop for RealIronic {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(scripts_dir().join("ironic-peer-down.sh"))
            .arg("--run-dir")
            .arg(self.run_dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
