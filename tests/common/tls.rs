//! Certificates made by the tests themselves (rcgen), and a small blocking HTTPS client on
//! rustls that reports how its handshake ended.

use super::http::{Request, Response};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, ClientConfig, RootCertStore, SupportedProtocolVersion};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A certificate authority that issues server and client certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

/// A certificate and its key, in PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, names: &[&str], cn: &str, eku: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![eku];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server(&self) -> Leaf {
        self.issue(
            &["127.0.0.1", "localhost"],
            "ironic-edge test",
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client (agent) certificate.
    pub fn client(&self, cn: &str) -> Leaf {
        self.issue(&[], cn, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// Writes the CA certificate to `dir/name.pem`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(format!("{name}.pem"));
        std::fs::write(&p, &self.pem).unwrap();
        p
    }
}

impl Leaf {
    /// Writes `dir/name.crt` and `dir/name.key`.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, &self.cert_pem).unwrap();
        std::fs::write(&k, &self.key_pem).unwrap();
        (c, k)
    }
}

/// What the client offers: the CA it trusts, its certificate if any, versions and suites.
pub struct ClientTls<'a> {
    pub trust: &'a Ca,
    pub cert: Option<&'a Leaf>,
    pub versions: &'static [&'static SupportedProtocolVersion],
    /// IANA-style rustls names (`TLS13_AES_128_GCM_SHA256`, `TLS_ECDHE_...`); empty: all.
    pub suites: &'a [&'a str],
}

pub static TLS12_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
pub static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
pub static ANY_VERSION: [&SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

impl<'a> ClientTls<'a> {
    /// Trusts `trust`, no client certificate, TLS 1.2 or 1.3, every suite.
    pub fn new(trust: &'a Ca) -> Self {
        ClientTls {
            trust,
            cert: None,
            versions: &ANY_VERSION,
            suites: &[],
        }
    }

    pub fn cert(mut self, leaf: &'a Leaf) -> Self {
        self.cert = Some(leaf);
        self
    }

    pub fn versions(mut self, v: &'static [&'static SupportedProtocolVersion]) -> Self {
        self.versions = v;
        self
    }

    pub fn suites(mut self, s: &'a [&'a str]) -> Self {
        self.suites = s;
        self
    }

    pub fn config(&self) -> Arc<ClientConfig> {
        let mut provider = rustls::crypto::ring::default_provider();
        if !self.suites.is_empty() {
            provider
                .cipher_suites
                .retain(|s| self.suites.contains(&s.suite().as_str().unwrap_or("")));
        }
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.trust.pem.as_bytes()).unwrap())
            .unwrap();
        let builder = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(self.versions)
            .expect("client versions")
            .with_root_certificates(roots);
        Arc::new(match self.cert {
            None => builder.with_no_client_auth(),
            Some(leaf) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
                )
                .expect("client certificate"),
        })
    }
}

/// An answer over TLS, and what the handshake settled.
#[derive(Debug)]
pub struct TlsAnswer {
    pub response: Response,
    pub version: Option<rustls::ProtocolVersion>,
    pub suite: Option<rustls::CipherSuite>,
    /// The server's certificate (DER).
    pub server_cert: Vec<u8>,
}

/// How a TLS exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsRefusal {
    /// The server sent this fatal alert.
    Alert(AlertDescription),
    /// Anything else (the text of the error).
    Other(String),
}

fn refusal(e: std::io::Error) -> TlsRefusal {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(a)) => TlsRefusal::Alert(*a),
        _ => TlsRefusal::Other(e.to_string()),
    }
}

/// Sends `req` to `addr` over a fresh TLS connection, verifying the server's certificate for
/// the IP address (as an agent given `https://<ip>:<port>` does), and reads one response.
pub fn send(addr: SocketAddr, tls: &ClientTls<'_>, req: &Request) -> Result<TlsAnswer, TlsRefusal> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| TlsRefusal::Other(format!("connect: {e}")))?;
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(tls.config(), name)
        .map_err(|e| TlsRefusal::Other(e.to_string()))?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).map_err(refusal)?;
    }
    let bytes = req
        .clone()
        .header("Connection", "close")
        .to_bytes(&addr.to_string());
    s.write_all(&bytes).map_err(refusal)?;
    s.flush().map_err(refusal)?;
    let mut buf = Vec::new();
    let response = loop {
        if let Some(r) = parse(&buf, req.method == "HEAD") {
            break r;
        }
        let mut tmp = [0u8; 16384];
        match s.read(&mut tmp) {
            Ok(0) => {
                return Err(TlsRefusal::Other(format!(
                    "closed after {} bytes of response",
                    buf.len()
                )))
            }
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) => return Err(refusal(e)),
        }
    };
    Ok(TlsAnswer {
        response,
        version: s.conn.protocol_version(),
        suite: s.conn.negotiated_cipher_suite().map(|c| c.suite()),
        server_cert: s
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default(),
    })
}

/// One whole response with a `Content-Length` body (or none), if `buf` holds it.
fn parse(buf: &[u8], head_request: bool) -> Option<Response> {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut hs);
    let httparse::Status::Complete(len) = r.parse(buf).ok()? else {
        return None;
    };
    let headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let body_len = if head_request {
        0
    } else {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0)
    };
    if buf.len() < len + body_len {
        return None;
    }
    Some(Response {
        status: r.code.unwrap_or(0),
        reason: r.reason.unwrap_or("").to_string(),
        headers,
        body: buf[len..len + body_len].to_vec(),
        chunked: false,
    })
}
