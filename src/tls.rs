//! Agent TLS: each TLS listener's rustls `ServerConfig` (its certificate, the client
//! certificates it asks for, the protocol versions and cipher suites it accepts), and the
//! handshake of the connections it accepts.
//!
//! Why the gateway runs the handshake itself: Pingora 0.9.1's rustls `TlsSettings` takes a
//! client-certificate verifier, but builds its `ServerConfig` with TLS 1.2 and 1.3 whatever the
//! caller wants, and with the process's default cipher suites; `Acceptor::from_server_config`
//! exists, but no listener takes an acceptor (a listening endpoint is built from `TlsSettings`
//! only). So a TLS listener is a plain TCP listener to Pingora, and the accept wrapper
//! ([`crate::conn_guard::GuardedApp`]) runs the handshake with the listener's own `ServerConfig`
//! through Pingora's `Acceptor`: the stream is Pingora's own `TlsStream`, as before (SSL digest,
//! peer certificate). On the way the handshake gets the gateway's own bound
//! (`limits.request_head_timeout_ms`, where Pingora's is a fixed 60 s) and comes after the
//! per-source connection cap. No `openssl` feature is involved: rustls on ring, which Pingora
//! and the Redis client already build.
//!
//! The files are read once, when the process starts (and by `-t`): nothing keeps them
//! elsewhere, so new certificates are taken by the new process of a graceful upgrade.

use crate::config::{ClientAuth, ConfigError, EdgeConfig, TlsFiles, TlsVersion};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn field(i: usize, name: &str) -> String {
    format!("ironic_edge.listeners[{i}].tls.{name}")
}

/// The checks that need no file contents: the client-certificate policy is complete, the cipher
/// suites are known and serve every version allowed.
pub(crate) fn check(i: usize, tls: &TlsFiles) -> Result<(), ConfigError> {
    match (tls.client_auth, &tls.client_ca) {
        (ClientAuth::None, Some(_)) => {
            return Err(ConfigError::new(
                field(i, "client_auth"),
                "client_ca is set but client_auth is none: clients would not be verified (optional or required)",
            ))
        }
        (ClientAuth::Optional | ClientAuth::Required, None) => {
            return Err(ConfigError::new(
                field(i, "client_auth"),
                "optional and required need client_ca (the CAs whose client certificates are accepted)",
            ))
        }
        (_, Some(ca)) if !ca.is_file() => {
            return Err(ConfigError::new(
                field(i, "client_ca"),
                format!("no such file: {}", ca.display()),
            ))
        }
        _ => {}
    }
    select_suites(
        &tls.cipher_suites,
        &rustls::crypto::ring::default_provider().cipher_suites,
        tls.min_version,
    )
    .map_err(|(at, reason)| match at {
        Some(n) => ConfigError::new(field(i, &format!("cipher_suites[{n}]")), reason),
        None => ConfigError::new(field(i, "cipher_suites"), reason),
    })?;
    Ok(())
}

/// The protocol versions a listener accepts.
pub(crate) fn protocol_versions(min: TlsVersion) -> &'static [&'static SupportedProtocolVersion] {
    static BOTH: [&SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    static ONLY_1_3: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        TlsVersion::V1_2 => &BOTH,
        TlsVersion::V1_3 => &ONLY_1_3,
    }
}

/// The IANA name of a suite (rustls spells TLS 1.3's `TLS13_...`, IANA `TLS_...`).
fn iana_name(suite: &SupportedCipherSuite) -> String {
    let name = suite.suite().as_str().unwrap_or("unknown");
    match name.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => name.to_string(),
    }
}

fn is_tls13(suite: &SupportedCipherSuite) -> bool {
    suite.version() == &rustls::version::TLS13
}

/// The suites `names` pick out of `available`, in `available`'s order (the server's preference),
/// for the versions `min` allows; empty `names`: all of them. An error names the entry at
/// fault (its index) or the list as a whole.
pub(crate) fn select_suites(
    names: &[String],
    available: &[SupportedCipherSuite],
    min: TlsVersion,
) -> Result<Vec<SupportedCipherSuite>, (Option<usize>, String)> {
    let allowed = |s: &SupportedCipherSuite| min == TlsVersion::V1_2 || is_tls13(s);
    if names.is_empty() {
        return Ok(available.iter().copied().filter(allowed).collect());
    }
    let mut chosen = Vec::new();
    for (n, name) in names.iter().enumerate() {
        let wanted = match name.strip_prefix("TLS13_") {
            Some(rest) => format!("TLS_{rest}"),
            None => name.clone(),
        };
        let Some(suite) = available.iter().find(|s| iana_name(s) == wanted) else {
            let known: Vec<String> = available.iter().map(iana_name).collect();
            return Err((
                Some(n),
                format!(
                    "unknown cipher suite {name:?} (known: {})",
                    known.join(", ")
                ),
            ));
        };
        if !allowed(suite) {
            return Err((
                Some(n),
                format!("{name} is a TLS 1.2 suite and min_version is 1.3"),
            ));
        }
        if !chosen.contains(suite) {
            chosen.push(*suite);
        }
    }
    if !chosen.iter().any(is_tls13) {
        return Err((
            None,
            "no TLS 1.3 suite: TLS 1.3 clients could not connect".into(),
        ));
    }
    if min == TlsVersion::V1_2 && chosen.iter().all(is_tls13) {
        return Err((
            None,
            "no TLS 1.2 suite while min_version is 1.2: TLS 1.2 clients could not connect".into(),
        ));
    }
    // The server's preference order, not the list's.
    Ok(available
        .iter()
        .copied()
        .filter(|s| chosen.contains(s))
        .collect())
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no {what} in the file", path.display()));
    }
    Ok(certs)
}

/// The `ServerConfig` of listener `i`: reads its files (errors name the file's field).
pub(crate) fn server_config(i: usize, tls: &TlsFiles) -> Result<ServerConfig, ConfigError> {
    check(i, tls)?;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites =
        select_suites(&tls.cipher_suites, &provider.cipher_suites, tls.min_version)
            .map_err(|(_, reason)| ConfigError::new(field(i, "cipher_suites"), reason))?;
    let provider: Arc<CryptoProvider> = Arc::new(provider);
    let certs =
        read_certs(&tls.cert, "certificate").map_err(|r| ConfigError::new(field(i, "cert"), r))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| ConfigError::new(field(i, "key"), format!("{}: {e}", tls.key.display())))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(protocol_versions(tls.min_version))
        .map_err(|e| ConfigError::new(field(i, "cipher_suites"), e.to_string()))?;
    let builder = match (&tls.client_ca, tls.client_auth) {
        (Some(ca), ClientAuth::Optional | ClientAuth::Required) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca, "CA certificate")
                .map_err(|r| ConfigError::new(field(i, "client_ca"), r))?
            {
                roots.add(cert).map_err(|e| {
                    ConfigError::new(field(i, "client_ca"), format!("{}: {e}", ca.display()))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match tls.client_auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            let verifier = verifier.build().map_err(|e| {
                ConfigError::new(field(i, "client_ca"), format!("{}: {e}", ca.display()))
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    // Also checks that the key is the certificate's.
    builder
        .with_single_cert(certs, key)
        .map_err(|e| ConfigError::new(field(i, "key"), format!("{}: {e}", tls.key.display())))
}

/// Every TLS listener's acceptor, found by the local address a connection was accepted on.
#[derive(Clone, Default)]
pub(crate) struct TlsListeners {
    listeners: Vec<(SocketAddr, Arc<Acceptor>)>,
}

impl TlsListeners {
    /// Reads every TLS listener's files: at start (and by `-t`), never again.
    pub(crate) fn from_config(cfg: &EdgeConfig) -> Result<Self, ConfigError> {
        let mut listeners = Vec::new();
        for (i, l) in cfg.listeners.iter().enumerate() {
            let Some(tls) = &l.tls else { continue };
            let addr = l.socket_addr(i)?;
            let config = server_config(i, tls)?;
            listeners.push((
                addr,
                Arc::new(Acceptor::from_server_config(Arc::new(config))),
            ));
        }
        Ok(TlsListeners { listeners })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }

    /// The acceptor of the TLS listener bound to `local`, `None` for a plain listener.
    pub(crate) fn for_local(&self, local: SocketAddr) -> Option<&Arc<Acceptor>> {
        crate::source_policy::listener_for_local(&self.listeners, local)
    }
}

/// Runs the server side of the handshake on a connection a TLS listener accepted, within
/// `within`; the error says why it failed (for the log: it carries no secret).
pub(crate) async fn accept(
    acceptor: &Acceptor,
    stream: Stream,
    within: Duration,
) -> Result<Stream, String> {
    // A TCP listener hands over Pingora's L4 stream, which its TLS stream wraps.
    let l4 = stream
        .into_any()
        .downcast::<L4Stream>()
        .map_err(|_| "not a TCP stream".to_string())?;
    match tokio::time::timeout(within, acceptor.tls_handshake(*l4)).await {
        Ok(Ok(tls)) => Ok(Box::new(tls)),
        Ok(Err(e)) => Err(e.root_cause().to_string()),
        Err(_) => Err(format!("no handshake within {within:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_suites() -> Vec<SupportedCipherSuite> {
        rustls::crypto::ring::default_provider().cipher_suites
    }

    fn names(suites: &[SupportedCipherSuite]) -> Vec<String> {
        suites.iter().map(iana_name).collect()
    }

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cipher_suite_lists() {
        use TlsVersion::*;
        type Want = Result<Vec<&'static str>, (Option<usize>, &'static str)>;
        let cases: Vec<(&[&str], TlsVersion, Want)> = vec![
            (
                &[],
                V1_3,
                Ok(vec![
                    "TLS_AES_256_GCM_SHA384",
                    "TLS_AES_128_GCM_SHA256",
                    "TLS_CHACHA20_POLY1305_SHA256",
                ]),
            ),
            (
                &["TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_256_GCM_SHA384"],
                V1_3,
                // The server's order, not the list's.
                Ok(vec![
                    "TLS_AES_256_GCM_SHA384",
                    "TLS_CHACHA20_POLY1305_SHA256",
                ]),
            ),
            (
                &["TLS13_AES_128_GCM_SHA256"],
                V1_3,
                Ok(vec!["TLS_AES_128_GCM_SHA256"]),
            ),
            (
                &[
                    "TLS_AES_128_GCM_SHA256",
                    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                ],
                V1_2,
                Ok(vec![
                    "TLS_AES_128_GCM_SHA256",
                    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                ]),
            ),
            (
                &["TLS_RSA_WITH_RC4_128_SHA"],
                V1_2,
                Err((Some(0), "unknown cipher suite")),
            ),
            (
                &["TLS_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256"],
                V1_2,
                Err((Some(1), "unknown cipher suite")),
            ),
            (
                &[
                    "TLS_AES_128_GCM_SHA256",
                    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                ],
                V1_3,
                Err((Some(1), "is a TLS 1.2 suite and min_version is 1.3")),
            ),
            (
                &["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"],
                V1_2,
                Err((None, "no TLS 1.3 suite")),
            ),
            (
                &["TLS_AES_128_GCM_SHA256"],
                V1_2,
                Err((None, "no TLS 1.2 suite")),
            ),
        ];
        for (given, min, want) in cases {
            let got = select_suites(&list(given), &ring_suites(), min);
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(names(&got), list(&want), "{given:?} {min:?}"),
                (Err((at, reason)), Err((want_at, want_reason))) => {
                    assert_eq!(at, want_at, "{given:?} {min:?}: {reason}");
                    assert!(reason.contains(want_reason), "{given:?} {min:?}: {reason}");
                }
                (got, want) => panic!("{given:?} {min:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn min_version_is_read_quoted_or_not() {
        let cases = [
            ("\"1.2\"", Some(TlsVersion::V1_2)),
            ("1.2", Some(TlsVersion::V1_2)),
            ("\"1.3\"", Some(TlsVersion::V1_3)),
            ("1.3", Some(TlsVersion::V1_3)),
            ("1.30", Some(TlsVersion::V1_3)),
            ("\"1.1\"", None),
            ("1", None),
            ("\"TLSv1.3\"", None),
            ("[1.3]", None),
        ];
        for (yaml, want) in cases {
            let got = serde_yaml::from_str::<TlsVersion>(yaml).ok();
            assert_eq!(got, want, "{yaml}");
        }
    }

    #[test]
    fn the_default_policy_accepts_tls_1_3_only() {
        assert_eq!(TlsVersion::default(), TlsVersion::V1_3);
        assert_eq!(
            protocol_versions(TlsVersion::V1_3),
            &[&rustls::version::TLS13]
        );
        assert!(protocol_versions(TlsVersion::V1_2).contains(&&rustls::version::TLS12));
    }

    fn files(ca: Option<&str>, auth: ClientAuth) -> TlsFiles {
        TlsFiles {
            cert: "Cargo.toml".into(),
            key: "Cargo.toml".into(),
            client_ca: ca.map(Into::into),
            client_auth: auth,
            min_version: TlsVersion::V1_3,
            cipher_suites: Vec::new(),
        }
    }

    #[test]
    fn client_auth_and_client_ca_go_together() {
        use ClientAuth::{Optional, Required};
        let (auth, ca) = (
            "ironic_edge.listeners[2].tls.client_auth",
            "ironic_edge.listeners[2].tls.client_ca",
        );
        let cases = [
            (None, ClientAuth::None, Ok(())),
            (Some("Cargo.toml"), Optional, Ok(())),
            (Some("Cargo.toml"), Required, Ok(())),
            (None, Optional, Err(auth)),
            (None, Required, Err(auth)),
            (Some("Cargo.toml"), ClientAuth::None, Err(auth)),
            (Some("/nonexistent/ca.pem"), Required, Err(ca)),
        ];
        for (ca, auth, want) in cases {
            let got = check(2, &files(ca, auth)).map_err(|e| e.field);
            assert_eq!(got, want.map_err(String::from), "{ca:?} {auth:?}");
        }
    }

    /// Certificates for the handshake tables: the server's, an agent's (from the listener's
    /// `client_ca`), a rogue one (another CA), in a temp dir.
    struct Pki {
        dir: tempfile::TempDir,
        server_ca: rcgen::Certificate,
        agent: (rcgen::Certificate, rcgen::KeyPair),
        rogue: (rcgen::Certificate, rcgen::KeyPair),
    }

    fn ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap();
        (cert, rcgen::Issuer::new(p, key))
    }

    fn leaf(
        issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
        names: &[&str],
    ) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, issuer)
            .unwrap();
        (cert, key)
    }

    impl Pki {
        fn new() -> Pki {
            let dir = tempfile::tempdir().unwrap();
            let ((server_ca, s), (agent_ca, a), (_, o)) =
                (ca("server CA"), ca("agent CA"), ca("other CA"));
            let server = leaf(&s, &["localhost"]);
            let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text);
            write("server.crt", server.0.pem()).unwrap();
            write("server.key", server.1.serialize_pem()).unwrap();
            write("agent-ca.pem", agent_ca.pem()).unwrap();
            write("garbage.pem", "not a PEM file\n".into()).unwrap();
            // Another certificate's key.
            write("other.key", leaf(&s, &["localhost"]).1.serialize_pem()).unwrap();
            Pki {
                agent: leaf(&a, &[]),
                rogue: leaf(&o, &[]),
                dir,
                server_ca,
            }
        }

        fn files(&self, client_auth: ClientAuth, min_version: TlsVersion) -> TlsFiles {
            let p = |n: &str| self.dir.path().join(n);
            TlsFiles {
                cert: p("server.crt"),
                key: p("server.key"),
                client_ca: (client_auth != ClientAuth::None).then(|| p("agent-ca.pem")),
                client_auth,
                min_version,
                cipher_suites: Vec::new(),
            }
        }

        fn client(
            &self,
            cert: Option<&(rcgen::Certificate, rcgen::KeyPair)>,
            versions: &[&'static SupportedProtocolVersion],
        ) -> rustls::ClientConfig {
            let mut roots = RootCertStore::empty();
            roots.add(self.server_ca.der().clone()).unwrap();
            let b = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
            match cert {
                None => b.with_no_client_auth(),
                Some((c, k)) => b
                    .with_client_auth_cert(
                        vec![c.der().clone()],
                        PrivateKeyDer::try_from(k.serialize_der()).unwrap(),
                    )
                    .unwrap(),
            }
        }
    }

    /// Runs a handshake in memory; the server's error when it refuses.
    fn handshake(
        server: ServerConfig,
        client: rustls::ClientConfig,
    ) -> Result<rustls::ProtocolVersion, rustls::Error> {
        let mut s = rustls::ServerConnection::new(Arc::new(server))?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name)?;
        for _ in 0..10 {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            s.read_tls(&mut &wire[..]).unwrap();
            s.process_new_packets()?;
            wire.clear();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            c.read_tls(&mut &wire[..]).unwrap();
            // The client's own view does not matter here: the server decides.
            let _ = c.process_new_packets();
            if !s.is_handshaking() {
                return Ok(s.protocol_version().unwrap());
            }
        }
        panic!("the handshake did not end");
    }

    #[test]
    fn handshakes_follow_the_listener_policy() {
        use rustls::Error::{InvalidCertificate, NoCertificatesPresented, PeerIncompatible};
        use rustls::ProtocolVersion::{TLSv1_2, TLSv1_3};
        use ClientAuth::{None as NoAuth, Optional, Required};
        use TlsVersion::{V1_2, V1_3};
        let pki = Pki::new();
        let (t12, t13, any): (&[_], &[_], &[_]) = (
            &[&rustls::version::TLS12],
            &[&rustls::version::TLS13],
            &[&rustls::version::TLS13, &rustls::version::TLS12],
        );
        let (good, rogue) = (Some(&pki.agent), Some(&pki.rogue));
        type Want = fn(&Result<rustls::ProtocolVersion, rustls::Error>) -> bool;
        let cases: Vec<(&str, ClientAuth, TlsVersion, _, &[_], Want)> = vec![
            ("no client auth", NoAuth, V1_3, None, any, |r| {
                *r == Ok(TLSv1_3)
            }),
            ("required, none", Required, V1_3, None, any, |r| {
                *r == Err(NoCertificatesPresented)
            }),
            ("required, rogue", Required, V1_3, rogue, any, |r| {
                *r == Err(InvalidCertificate(rustls::CertificateError::UnknownIssuer))
            }),
            ("required, good", Required, V1_3, good, any, |r| {
                *r == Ok(TLSv1_3)
            }),
            ("optional, none", Optional, V1_3, None, any, |r| {
                *r == Ok(TLSv1_3)
            }),
            ("optional, good", Optional, V1_3, good, any, |r| {
                *r == Ok(TLSv1_3)
            }),
            ("optional, rogue", Optional, V1_3, rogue, any, |r| {
                *r == Err(InvalidCertificate(rustls::CertificateError::UnknownIssuer))
            }),
            ("1.3 only, a 1.2 client", NoAuth, V1_3, None, t12, |r| {
                matches!(r, Err(PeerIncompatible(_)))
            }),
            ("1.2 allowed, a 1.2 client", NoAuth, V1_2, None, t12, |r| {
                *r == Ok(TLSv1_2)
            }),
            ("1.2 allowed, a 1.3 client", NoAuth, V1_2, None, t13, |r| {
                *r == Ok(TLSv1_3)
            }),
            ("required over 1.2, none", Required, V1_2, None, t12, |r| {
                *r == Err(NoCertificatesPresented)
            }),
            ("required over 1.2, good", Required, V1_2, good, t12, |r| {
                *r == Ok(TLSv1_2)
            }),
        ];
        for (what, auth, min, cert, versions, want) in cases {
            let server = server_config(0, &pki.files(auth, min)).unwrap();
            let got = handshake(server, pki.client(cert, versions));
            assert!(want(&got), "{what}: {got:?}");
        }
    }

    #[test]
    fn unusable_files_are_named() {
        let pki = Pki::new();
        let p = |n: &str| pki.dir.path().join(n);
        let base = || pki.files(ClientAuth::Required, TlsVersion::V1_3);
        let cases: Vec<(&str, TlsFiles)> = vec![
            (
                "cert",
                TlsFiles {
                    cert: p("garbage.pem"),
                    ..base()
                },
            ),
            (
                "cert",
                TlsFiles {
                    cert: p("server.key"),
                    ..base()
                },
            ),
            (
                "key",
                TlsFiles {
                    key: p("garbage.pem"),
                    ..base()
                },
            ),
            (
                "key",
                TlsFiles {
                    key: p("other.key"),
                    ..base()
                },
            ),
            (
                "client_ca",
                TlsFiles {
                    client_ca: Some(p("garbage.pem")),
                    ..base()
                },
            ),
            (
                "client_ca",
                TlsFiles {
                    client_ca: Some(p("server.key")),
                    ..base()
                },
            ),
        ];
        for (name, files) in cases {
            let err = server_config(3, &files).unwrap_err();
            assert_eq!(
                err.field,
                format!("ironic_edge.listeners[3].tls.{name}"),
                "{err}"
            );
        }
        assert!(server_config(3, &base()).is_ok());
    }
}
