//! Agent TLS on the listeners: client certificates (`client_auth: none | optional | required`
//! against `client_ca`), the protocol policy (`min_version`, default 1.3), cipher suites, the
//! handshake's own deadline, certificates taken by the new process of a graceful upgrade, and
//! the real IPA client presenting a certificate to a `required` listener in front of the real
//! Ironic. Every certificate is made by the test (rcgen).

mod common;
mod peer;

use common::tls::{self as tls, Ca, ClientTls, Leaf, TlsRefusal, TLS12_ONLY, TLS13_ONLY};
use common::*;
use rustls::{AlertDescription, CipherSuite, ProtocolVersion};
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const UUID: &str = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123";

/// The test's certificates: the gateway's (from `server_ca`), an agent's (from `agent_ca`,
/// the listeners' `client_ca`) and a rogue one (from `other_ca`), written to a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    server_ca: Ca,
    agent: Leaf,
    rogue: Leaf,
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("edge-tls-")
            .tempdir()
            .unwrap();
        let (server_ca, agent_ca, other_ca) = (
            Ca::new("server CA"),
            Ca::new("agent CA"),
            Ca::new("other CA"),
        );
        let (cert, key) = server_ca.server().write(dir.path(), "gateway");
        let client_ca = agent_ca.write(dir.path(), "agent-ca");
        Pki {
            agent: agent_ca.client("agent-1"),
            rogue: other_ca.client("agent-1"),
            dir,
            server_ca,
            cert,
            key,
            client_ca,
        }
    }

    /// A listener's `tls:` map with these files and `extra` keys.
    fn tls(&self, extra: serde_json::Value) -> serde_json::Value {
        let mut m = json!({"cert": self.cert, "key": self.key});
        if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
            m.extend(extra.clone());
        }
        m
    }
}

/// A gateway whose first listener is the harness's plain one, followed by one TLS listener
/// per entry of `tls` (on free ports, returned in order).
fn start(
    fake: &FakeIronic,
    redis: &RedisServer,
    tls: Vec<serde_json::Value>,
    edit: impl FnOnce(&mut GatewayConfig),
) -> (Gateway, Vec<SocketAddr>) {
    let mut cfg = GatewayConfig::new(&fake.url(), &redis.url());
    let addrs: Vec<SocketAddr> = tls
        .iter()
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let mut listeners = vec![json!({"address": cfg.listen.to_string()})];
    for (a, t) in addrs.iter().zip(tls) {
        listeners.push(json!({"address": a.to_string(), "tls": t}));
    }
    cfg.set("ironic_edge.listeners", listeners);
    edit(&mut cfg);
    let gw = Gateway::start(cfg);
    gw.wait_versions(fake);
    (gw, addrs)
}

fn fake_with_a_node() -> FakeIronic {
    let fake = FakeIronic::start();
    fake.route("GET", "/v1/lookup", |req, ctx| {
        ctx.lookup_ok(req, UUID, Some("the-agent-token-0123456789"))
    });
    fake
}

/// What an agent does over `client`: a lookup (through to the fake) and a heartbeat.
fn agent_exchange(addr: SocketAddr, client: &ClientTls<'_>) -> Result<(u16, u16), TlsRefusal> {
    let lookup = tls::send(addr, client, &lookup("52:54:00:12:34:56"))?;
    assert_eq!(
        lookup.response.json()["node"]["uuid"],
        UUID,
        "{}",
        lookup.response.text()
    );
    let hb = tls::send(
        addr,
        client,
        &heartbeat(UUID, "https://127.0.0.1:9999", "the-agent-token-0123456789"),
    )?;
    Ok((lookup.response.status, hb.response.status))
}

#[test]
fn client_certificates_per_listener() {
    let pki = Pki::new();
    let (fake, redis) = (fake_with_a_node(), RedisServer::start());
    let ca = pki.client_ca.clone();
    let (gw, addrs) = start(
        &fake,
        &redis,
        vec![
            pki.tls(json!({"client_ca": ca, "client_auth": "required"})),
            pki.tls(json!({"client_ca": ca, "client_auth": "optional"})),
            pki.tls(json!({})),
        ],
        |_| {},
    );
    let (required, optional, plain_tls) = (addrs[0], addrs[1], addrs[2]);
    let trust = &pki.server_ca;
    let none = ClientTls::new(trust);
    let good = ClientTls::new(trust).cert(&pki.agent);
    let rogue = ClientTls::new(trust).cert(&pki.rogue);
    let ok = Ok((200, 202));
    type Want = Result<(u16, u16), TlsRefusal>;
    let cases: Vec<(&str, SocketAddr, &ClientTls<'_>, Want)> = vec![
        (
            "required, no certificate",
            required,
            &none,
            Err(TlsRefusal::Alert(AlertDescription::CertificateRequired)),
        ),
        (
            "required, a certificate of another CA",
            required,
            &rogue,
            Err(TlsRefusal::Alert(AlertDescription::UnknownCA)),
        ),
        ("required, a good certificate", required, &good, ok.clone()),
        ("optional, no certificate", optional, &none, ok.clone()),
        ("optional, a good certificate", optional, &good, ok.clone()),
        (
            "optional, a certificate of another CA",
            optional,
            &rogue,
            Err(TlsRefusal::Alert(AlertDescription::UnknownCA)),
        ),
        ("none, no certificate", plain_tls, &none, ok.clone()),
        // Not asked for, the client sends none: whatever it holds is not checked.
        (
            "none, a certificate of another CA",
            plain_tls,
            &rogue,
            ok.clone(),
        ),
    ];
    for (what, addr, client, want) in cases {
        fake.clear_log();
        let got = agent_exchange(addr, client);
        assert_eq!(got, want, "{what}\n{}", gw.logs());
        let reached = fake.requests();
        if want.is_ok() {
            // Forwarded as what it is: an HTTPS request.
            let lookup = reached.iter().find(|r| r.path == "/v1/lookup").unwrap();
            assert_eq!(lookup.header("X-Forwarded-Proto"), Some("https"), "{what}");
        } else {
            assert!(
                reached.is_empty(),
                "{what}: a refused client reached Ironic"
            );
        }
    }
    // The plain listener is untouched by its TLS neighbours.
    assert_eq!(gw.send(&lookup("52:54:00:12:34:56")).status, 200);
    // Each refusal is logged with its reason (never at error level: anyone can cause one).
    let logged = wait_for(Duration::from_secs(10), || {
        let logs = gw.logs();
        (logs.contains("TLS handshake from 127.0.0.1 on ")
            && logs.contains("peer sent no certificates")
            && logs.contains("UnknownIssuer"))
        .then_some(logs)
    });
    let logs = logged.unwrap_or_else(|| panic!("refusals not logged:\n{}", gw.logs()));
    assert!(!logs.contains("Downstream handshake error"), "{logs}");
}

#[test]
fn protocol_versions_and_cipher_suites() {
    let pki = Pki::new();
    let (fake, redis) = (fake_with_a_node(), RedisServer::start());
    let (gw, addrs) = start(
        &fake,
        &redis,
        vec![
            pki.tls(json!({})),
            pki.tls(json!({"min_version": "1.2"})),
            // Unquoted, as an operator may write it: a YAML number.
            pki.tls(json!({
                "min_version": 1.2,
                "cipher_suites": ["TLS_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"],
            })),
        ],
        |_| {},
    );
    let (default, min12, suites) = (addrs[0], addrs[1], addrs[2]);
    let trust = &pki.server_ca;
    let v12 = ClientTls::new(trust).versions(&TLS12_ONLY);
    let v13 = ClientTls::new(trust).versions(&TLS13_ONLY);
    let v12_aes256 = ClientTls::new(trust)
        .versions(&TLS12_ONLY)
        .suites(&["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"]);
    let v13_aes256 = ClientTls::new(trust)
        .versions(&TLS13_ONLY)
        .suites(&["TLS13_AES_256_GCM_SHA384"]);
    let any = ClientTls::new(trust);
    use ProtocolVersion::{TLSv1_2, TLSv1_3};
    type Want = Result<(ProtocolVersion, Option<CipherSuite>), TlsRefusal>;
    let refused = |a| Err(TlsRefusal::Alert(a));
    let cases: Vec<(&str, SocketAddr, &ClientTls<'_>, Want)> = vec![
        (
            "default policy, a TLS 1.2-only client",
            default,
            &v12,
            refused(AlertDescription::ProtocolVersion),
        ),
        (
            "default policy, a TLS 1.3 client",
            default,
            &v13,
            Ok((TLSv1_3, None)),
        ),
        (
            "default policy, any client",
            default,
            &any,
            Ok((TLSv1_3, None)),
        ),
        (
            "min 1.2, a TLS 1.2-only client",
            min12,
            &v12,
            Ok((TLSv1_2, None)),
        ),
        (
            "min 1.2, any client: 1.3 first",
            min12,
            &any,
            Ok((TLSv1_3, None)),
        ),
        (
            "suites, 1.2 with a suite not listed",
            suites,
            &v12_aes256,
            refused(AlertDescription::HandshakeFailure),
        ),
        (
            "suites, 1.3 with a suite not listed",
            suites,
            &v13_aes256,
            refused(AlertDescription::HandshakeFailure),
        ),
        (
            "suites, 1.2",
            suites,
            &v12,
            Ok((
                TLSv1_2,
                Some(CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
            )),
        ),
        (
            "suites, 1.3",
            suites,
            &any,
            Ok((TLSv1_3, Some(CipherSuite::TLS13_AES_128_GCM_SHA256))),
        ),
    ];
    for (what, addr, client, want) in cases {
        let got = tls::send(addr, client, &Request::get("/v1")).map(|a| {
            assert_eq!(a.response.status, 200, "{what}: {}", a.response.text());
            // The suite is compared only where the case names one.
            let want_suite = matches!(want, Ok((_, Some(_))));
            (a.version.unwrap(), a.suite.filter(|_| want_suite))
        });
        assert_eq!(got, want, "{what}\n{}", gw.logs());
    }
}

#[test]
fn a_silent_client_is_cut_at_the_head_deadline() {
    let pki = Pki::new();
    let (fake, redis) = (FakeIronic::start(), RedisServer::start());
    let (gw, addrs) = start(&fake, &redis, vec![pki.tls(json!({}))], |c| {
        c.set("ironic_edge.limits.request_head_timeout_ms", 500);
    });
    // A connection that never starts its handshake is closed by the gateway (Pingora alone
    // would hold it 60 s): the read ends rather than timing out on the client's side.
    let mut s = std::net::TcpStream::connect(addrs[0]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut s, &mut buf);
    assert!(matches!(n, Ok(0)), "{n:?}\n{}", gw.logs());
    // Logged just after the close.
    let logged = wait_for(Duration::from_secs(10), || {
        gw.logs()
            .contains("no handshake within 500ms")
            .then_some(())
    });
    assert!(logged.is_some(), "{}", gw.logs());
}

/// A gateway process started by the test itself (`-u`), stopped when dropped.
struct Upgraded(std::process::Child);

impl Drop for Upgraded {
    fn drop(&mut self) {
        signal(self.0.id(), libc::SIGTERM);
        if wait_for(Duration::from_secs(2), || self.0.try_wait().ok().flatten()).is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn the_new_process_of_a_graceful_upgrade_serves_the_new_certificate() {
    let pki = Pki::new();
    let (fake, redis) = (FakeIronic::start(), RedisServer::start());
    let (mut old, addrs) = start(&fake, &redis, vec![pki.tls(json!({}))], |_| {});
    let client = ClientTls::new(&pki.server_ca);
    let first = tls::send(addrs[0], &client, &Request::get("/v1")).unwrap();
    assert_eq!(first.response.status, 200);

    // Replace the files, then upgrade.
    let renewed = pki.server_ca.server();
    std::fs::write(&pki.cert, &renewed.cert_pem).unwrap();
    std::fs::write(&pki.key, &renewed.key_pem).unwrap();
    assert_ne!(renewed.der, first.server_cert);
    let sock = old.cfg.dir.path().join("upgrade.sock");
    let log = std::fs::File::create(old.cfg.dir.path().join("upgraded.log")).unwrap();
    let mut cmd = std::process::Command::new(common::gateway::BIN);
    cmd.arg("-c")
        .arg(old.cfg.path())
        .arg("-u")
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .current_dir(old.cfg.dir.path());
    die_with_parent(&mut cmd);
    let new = Upgraded(cmd.spawn().unwrap());
    // The new process waits on the upgrade socket for the old one's listening sockets.
    assert!(
        wait_for(Duration::from_secs(20), || sock.exists().then_some(())).is_some(),
        "no upgrade socket"
    );
    signal(old.pid().unwrap(), libc::SIGQUIT);
    assert!(
        wait_for(Duration::from_secs(20), || old.try_wait()).is_some(),
        "the old process did not hand over:\n{}",
        old.logs()
    );
    assert!(common::alive(new.0.id()), "the new process died");
    let after = tls::send(addrs[0], &client, &Request::get("/v1")).unwrap();
    assert_eq!(after.response.status, 200);
    assert_eq!(
        after.server_cert, renewed.der,
        "the new process serves the new certificate"
    );
    drop(new);
}

fn lookup_step(lines: &[serde_json::Value]) -> serde_json::Value {
    lines
        .iter()
        .find(|l| l["step"] == "lookup")
        .cloned()
        .unwrap_or_default()
}

#[test]
fn real_agent_presents_its_certificate_to_a_required_listener() {
    use peer::{PeerOptions, RealIronic};
    let pki = Pki::new();
    let redis = RedisServer::start();
    let ironic = RealIronic::start(PeerOptions {
        seed: 1,
        ..PeerOptions::default()
    });
    let mut cfg = GatewayConfig::new(&ironic.url, &redis.url());
    let agent_port = SocketAddr::from(([127, 0, 0, 1], free_port()));
    cfg.set(
        "ironic_edge.listeners",
        vec![
            json!({"address": cfg.listen.to_string()}),
            // The agents' listener as an operator would ship it: its network only, client
            // certificates required, the shipped per-source limits (the harness turns them
            // off elsewhere): a genuine agent meets none of them.
            json!({"address": agent_port.to_string(), "allow": ["127.0.0.0/8"],
                   "deny": ["10.0.0.0/8"],
                   "tls": pki.tls(json!({
                "client_ca": pki.client_ca, "client_auth": "required"}))}),
        ],
    );
    cfg.remove("ironic_edge.limits.per_source_requests_per_second")
        .remove("ironic_edge.limits.per_source_in_flight");
    let gw = Gateway::start(cfg);
    let known = wait_for(Duration::from_secs(20), || {
        let r = http::get(gw.ops_addr(), "/status", &[]);
        r.json()["upstream"]["versions_known"]
            .as_bool()
            .filter(|k| *k)
    });
    assert!(known.is_some(), "versions never learnt:\n{}", gw.logs());
    let dir = pki.dir.path();
    let server_ca = pki.server_ca.write(dir, "server-ca");
    let (agent_cert, agent_key) = pki.agent.write(dir, "agent");
    let (rogue_cert, rogue_key) = pki.rogue.write(dir, "rogue");
    let url = format!("https://{agent_port}");
    let node = ironic.nodes[0].clone();
    let macs = node.macs.join(",");
    let arg = |p: &PathBuf| p.to_str().unwrap().to_string();
    let (ca, cert, key) = (arg(&server_ca), arg(&agent_cert), arg(&agent_key));

    // With its certificate: discovery, lookup (the token minted for it), heartbeats.
    let (lines, ok, out) = ironic.ipa_client(
        &url,
        &[
            "--macs",
            &macs,
            "--heartbeats",
            "2",
            "--ca-file",
            &ca,
            "--client-cert",
            &cert,
            "--client-key",
            &key,
        ],
    );
    assert!(ok, "IPA with a certificate failed:\n{out}\n{}", gw.logs());
    let first = lookup_step(&lines);
    assert_eq!(first["node_uuid"], node.uuid.as_str(), "{out}");
    assert_eq!(first["detected_api_version"], "1.115", "{out}");
    assert_eq!(
        first["agent_token"].as_str().map(str::len),
        Some(43),
        "{out}"
    );
    assert_eq!(lines.iter().filter(|l| l["ok"] == true).count(), 3, "{out}");
    let n = ironic.node(&node.uuid);
    assert_eq!(
        n["driver_internal_info"]["agent_url"], "https://127.0.0.1:9999",
        "Ironic recorded the heartbeat"
    );

    // Without a certificate, and with one of another CA: refused, the lookup never answered.
    let (rogue_cert, rogue_key) = (arg(&rogue_cert), arg(&rogue_key));
    let without: Vec<&str> = vec!["--ca-file", &ca];
    let rogue: Vec<&str> = vec![
        "--ca-file",
        &ca,
        "--client-cert",
        &rogue_cert,
        "--client-key",
        &rogue_key,
    ];
    // What the agent's OpenSSL reports, and what the gateway logs.
    for (what, extra, alert, reason) in [
        (
            "no certificate",
            without,
            "TLSV13_ALERT_CERTIFICATE_REQUIRED",
            "peer sent no certificates",
        ),
        (
            "another CA's certificate",
            rogue,
            "TLSV1_ALERT_UNKNOWN_CA",
            "UnknownIssuer",
        ),
    ] {
        let before = gw.logs().matches(reason).count();
        let mut args = vec![
            "--macs",
            &macs,
            "--lookup-timeout",
            "3",
            "--expect-lookup-failure",
        ];
        args.extend(extra);
        let (_, ok, out) = ironic.ipa_client(&url, &args);
        assert!(ok, "IPA with {what} was not refused:\n{out}\n{}", gw.logs());
        assert!(out.contains(alert), "{what}: {out}");
        assert!(
            gw.logs().matches(reason).count() > before,
            "{what}: no refusal logged:\n{}",
            gw.logs()
        );
    }
}
