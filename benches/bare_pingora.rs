//! bare_pingora: the baseline `make bench` measures the gateway against: a Pingora server
//! built from the gateway's own `pingora` dependency (same version, same features: this is a
//! target of the same package), with nothing of the gateway in it.
//!
//! ```text
//! cargo bench --bench bare_pingora -- --listen 127.0.0.1:P --mode memory [-c CONF]
//! cargo bench --bench bare_pingora -- --listen 127.0.0.1:P --mode proxy --upstream 127.0.0.1:U [-c CONF]
//! ```
//!
//! - `memory`: every request's body is read to its end in `request_filter`, which then
//!   answers a fixed 404 from memory: Ironic's lookup 404 body (`Resource could not be
//!   found.`, the same bytes and size as the gateway's local lookup 404), with
//!   `Content-Type: application/json`, `Content-Length` and `Date`.
//! - `proxy`: `request_filter` lets everything through and `upstream_peer` names the
//!   upstream (plain HTTP, a new `HttpPeer` per request as in Pingora's examples; Pingora
//!   pools the upstream connections).
//!
//! `-c CONF`: a YAML file whose Pingora keys (`threads`, `work_stealing`, pools, grace
//! periods...) configure the server, e.g. the gateway's own config (its `ironic_edge:` section
//! is ignored), so that both run with the same server settings. SIGTERM stops it (after the
//! file's grace period). Environment: `BARE_LISTEN`, `BARE_MODE`, `BARE_UPSTREAM`, `BARE_CONF`.
//! Without `--listen` it exits 0 at once (so `cargo test --all-targets` stays fast).

mod common;

use async_trait::async_trait;
use bytes::Bytes;
use common::cli::{Opt, Spec, Unknown};
use pingora::http::ResponseHeader;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::SystemTime;

/// Ironic's lookup 404 (`ironic_edge::ironic::error::resource_not_found()`'s body).
const NOT_FOUND: &[u8] = br#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"Resource could not be found.\", \"debuginfo\": null}"}"#;

enum Mode {
    Memory,
    Proxy(SocketAddr),
}

struct Bare {
    mode: Mode,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> pingora::Result<bool> {
        if let Mode::Proxy(_) = self.mode {
            return Ok(false);
        }
        while session.read_request_body().await?.is_some() {}
        let mut resp = ResponseHeader::build(404, Some(3))?;
        resp.append_header("Content-Type", "application/json")?;
        resp.append_header("Content-Length", NOT_FOUND.len().to_string())?;
        resp.append_header("Date", httpdate::fmt_http_date(SystemTime::now()))?;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from_static(NOT_FOUND)), true)
            .await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        match self.mode {
            Mode::Proxy(addr) => Ok(Box::new(HttpPeer::new(addr, false, String::new()))),
            Mode::Memory => Err(pingora::Error::new_str("memory mode has no upstream")),
        }
    }
}

const OPTIONS: &[Opt] = &[
    Opt {
        name: "listen",
        aliases: &[],
    },
    Opt {
        name: "mode",
        aliases: &[],
    },
    Opt {
        name: "upstream",
        aliases: &[],
    },
    Opt {
        name: "conf",
        aliases: &["-c"],
    },
];

const USAGE: &str = "usage: bare_pingora --listen 127.0.0.1:PORT --mode memory|proxy \
    [--upstream 127.0.0.1:PORT] [-c PINGORA_YAML]  (env: BARE_LISTEN BARE_MODE BARE_UPSTREAM \
    BARE_CONF)";

fn main() -> ExitCode {
    let spec = Spec {
        prog: "bare_pingora",
        options: OPTIONS,
        env_prefix: "BARE_",
        unknown: Unknown::Error,
        usage: USAGE,
    };
    let args = match spec.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bare_pingora: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let Some(listen) = args.string("listen") else {
        println!("bare_pingora: no --listen: nothing to do; scripts/bench.sh (make bench) runs it");
        return ExitCode::SUCCESS;
    };
    let mode = match (args.get("mode").unwrap_or("memory"), args.get("upstream")) {
        ("memory", _) => Mode::Memory,
        ("proxy", Some(u)) => match common::http::loopback_addr("--upstream", u) {
            Ok(a) => Mode::Proxy(a),
            Err(e) => {
                eprintln!("bare_pingora: {e}");
                return ExitCode::from(2);
            }
        },
        ("proxy", None) => {
            eprintln!("bare_pingora: --mode proxy needs --upstream HOST:PORT");
            return ExitCode::from(2);
        }
        (other, _) => {
            eprintln!("bare_pingora: unknown mode {other:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let conf = match args.get("conf") {
        None => ServerConf::default(),
        Some(path) => {
            match std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|t| ServerConf::from_yaml(&t).map_err(|e| e.to_string()))
            {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("bare_pingora: {path}: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let threads = conf.threads;
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, Bare { mode });
    service.add_tcp(&listen);
    server.add_service(service);
    eprintln!(
        "bare_pingora: {} on {listen}, {threads} thread(s)",
        match args.get("mode").unwrap_or("memory") {
            "proxy" => format!("proxy to {}", args.get("upstream").unwrap_or_default()),
            _ => "404 from memory".to_string(),
        }
    );
    server.run_forever()
}
