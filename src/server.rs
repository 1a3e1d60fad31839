//! Builds the Pingora server from a validated configuration: the proxy service with its
//! plugin list, the ops listener, and the background services.

use crate::config::{ConfigError, EdgeConfig};
use crate::edge::Edge;
use crate::metrics::Metrics;
use crate::ops::OpsApp;
use crate::proxy::EdgeProxy;
use crate::store::Stores;
use crate::upstream::{UpstreamClient, VersionDiscovery, VersionState};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::sync::Arc;
use std::time::Duration;

/// Everything needed to run, checked: what `-t` validates and what `main` runs.
pub struct Prepared {
    pub server_conf: ServerConf,
    pub edge_conf: EdgeConfig,
}

/// Loads and validates the whole conf: Pingora's keys and the `ironic_edge:` section.
pub fn prepare(conf_path: Option<&str>) -> Result<Prepared, ConfigError> {
    let (server_conf, edge_conf) = match conf_path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new("conf", format!("cannot read {path}: {e}")))?;
            let server_conf = ServerConf::from_yaml(&text)
                .map_err(|e| ConfigError::new("conf", e.to_string()))?;
            (server_conf, EdgeConfig::from_yaml(&text)?)
        }
        None => (ServerConf::default(), EdgeConfig::default()),
    };
    let mut server_conf = server_conf;
    if server_conf.threads == 0 {
        return Err(ConfigError::new("threads", "must be greater than 0"));
    }
    // Passthrough requests to an https upstream verify against the same CA as the agent client.
    if !edge_conf.upstream.ca_file.is_empty() {
        server_conf.ca_file = Some(edge_conf.upstream.ca_file.clone());
    }
    if !crate::drain::drain_covers_idle(
        server_conf.grace_period_seconds,
        edge_conf.limits.idle_timeout_ms,
    ) {
        log::warn!(
            "grace_period_seconds + 5 s is shorter than limits.idle_timeout_ms: a graceful \
             upgrade ends idle keep-alive connections under their clients"
        );
    }
    // Build the parts that can fail on configuration now, so that `-t` catches them too.
    Stores::new(&edge_conf)?;
    crate::tls::TlsListeners::from_config(&edge_conf)?;
    Ok(Prepared {
        server_conf,
        edge_conf,
    })
}

/// The shared state every request uses, and the receiving end of its sync events.
fn build_edge(
    edge_conf: &EdgeConfig,
) -> Result<
    (
        Arc<Edge>,
        tokio::sync::mpsc::Receiver<crate::sync::SyncEvent>,
    ),
    ConfigError,
> {
    let target = edge_conf.upstream_target()?;
    let tls_ports = edge_conf
        .listeners
        .iter()
        .filter(|l| l.tls.is_some())
        .filter_map(|l| l.address.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.port())
        .collect();
    let (sync_events, events_rx) = tokio::sync::mpsc::channel(1024);
    let seal_key = edge_conf.seal_key()?;
    if let Some(key) = &seal_key {
        crate::store::token_hash::install_seal_key(key);
    }
    let store = Stores::new(edge_conf)?;
    let metrics = Metrics::new(
        store.redis_calls().clone(),
        crate::metrics::MetricsSetup::of(edge_conf),
    );
    let edge = Arc::new(Edge {
        config: edge_conf.clone(),
        store,
        upstream: Arc::new(UpstreamClient::new(edge_conf, target)),
        versions: Arc::new(VersionState::default()),
        metrics: Arc::new(metrics),
        unknown: Arc::new(crate::unknown::UnknownMachines::default()),
        tls_ports,
        sync_events,
        sealer: seal_key
            .and_then(|k| crate::store::seal::Sealer::new(&k))
            .map(Arc::new),
        heartbeat_timeout_s: std::sync::atomic::AtomicU64::new(0),
        governor: Arc::new(crate::upstream::governor::Governor::new(
            edge_conf.upstream.budget.settings(),
            match edge_conf.upstream.max_agent_requests_in_flight {
                0 => usize::MAX,
                n => n,
            },
            edge_conf.upstream.max_agent_requests_queued,
        )),
        source_limits: crate::source_limits::SourceLimits::new(crate::source_limits::Limits {
            per_second: edge_conf.limits.per_source_requests_per_second,
            in_flight: edge_conf.limits.per_source_in_flight,
        }),
        shadow: Arc::default(),
        accepted_at_edge: Default::default(),
    });
    Ok((edge, events_rx))
}

/// Builds every plugin from its configuration, as `build` would, without starting anything.
pub fn check_plugins(prepared: &Prepared) -> Result<(), ConfigError> {
    let (edge, _) = build_edge(&prepared.edge_conf)?;
    crate::plugin::build_plugins(&edge).map(|_| ())
}

/// Builds the server (not yet running).
pub fn build(opt: Option<Opt>, prepared: Prepared) -> Result<Server, ConfigError> {
    let Prepared {
        server_conf,
        edge_conf,
    } = prepared;
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();

    let (edge, sync_events) = build_edge(&edge_conf)?;
    let (upstream, versions, metrics) = (
        edge.upstream.clone(),
        edge.versions.clone(),
        edge.metrics.clone(),
    );

    let plugins = crate::plugin::build_plugins(&edge)?;
    let trusted = edge_conf.trusted_proxy_nets()?;
    let mut access_log = None;
    let app = pingora::proxy::http_proxy(&server.configuration, {
        let proxy = EdgeProxy::new(edge.clone(), plugins, trusted.clone());
        if edge_conf.access_log.is_empty() {
            proxy
        } else {
            let path = std::path::Path::new(&edge_conf.access_log);
            let log = crate::access_log::AccessLog::open(path).map_err(|e| {
                ConfigError::new("ironic_edge.access_log", format!("{}: {e}", path.display()))
            })?;
            access_log = Some(log.clone());
            proxy.with_access_log(log)
        }
    });
    // Every connection passes the slow-client deadlines and the per-source cap first.
    // TLS listeners are TCP listeners to Pingora: the guard runs their handshakes with the
    // gateway's own TLS policy (see `crate::tls`), read from the files now.
    let mut proxy = Service::new(
        "ironic-edge".to_string(),
        crate::conn_guard::GuardedApp::new(app, &edge_conf.limits, trusted)
            .with_tls(crate::tls::TlsListeners::from_config(&edge_conf)?),
    );
    let mut probed = Vec::new();
    for (i, l) in edge_conf.listeners.iter().enumerate() {
        proxy.add_tcp(&l.address);
        probed.push((l.socket_addr(i)?, l.tls.is_some()));
    }
    // The ops listener (its `/status`) comes up only once the agents' one accepts.
    let agents = server.add_service(crate::listen_ready::ReadyWhenListening::new(proxy, &probed));

    let mut ops = Service::new(
        "ironic-edge ops".to_string(),
        OpsApp {
            metrics,
            versions: versions.clone(),
            governor: edge.governor.clone(),
            unknown: edge.unknown.clone(),
            edge: edge.clone(),
            shadow: edge.shadow.clone(),
        },
    );
    ops.add_tcp(&edge_conf.ops_address);
    server.add_service(ops).add_dependency(&agents);

    // A drained process exits at once rather than sleeping out its grace period.
    server.add_service(background_service(
        "drain",
        crate::drain::DrainExit {
            before_exit: Box::new(move || {
                if let Some(log) = &access_log {
                    log.flush(Duration::from_secs(2));
                }
            }),
        },
    ));
    server.add_service(background_service(
        "heartbeat relay",
        crate::relay::HeartbeatRelay::new(edge.clone()),
    ));
    server.add_service(background_service(
        "node sync",
        crate::sync::NodeSync::new(edge.clone(), sync_events),
    ));
    server.add_service(background_service(
        "upstream versions",
        VersionDiscovery {
            client: upstream,
            state: versions,
            refresh: Duration::from_secs(edge_conf.upstream.version_refresh_seconds),
            governor: edge.governor.clone(),
        },
    ));
    Ok(server)
}
