//! ironic-edge: a Pingora gateway in front of the OpenStack Ironic API.
//!
//! Where things live:
//! - [`ironic`]: Ironic's own rules, without I/O (API versions, error bodies, MACs, parameters).
//! - [`agent`]: the agent-endpoints plugin: the lookup path and the heartbeat path.
//! - [`store`]: what the gateway remembers in Redis, one small handle per concern.
//! - [`upstream`]: talking to Ironic (forwarded agent requests, version discovery).
//! - [`plugin`], [`proxy`], [`server`], [`config`]: the gateway around them.

pub(crate) mod access_log;
pub mod agent;
mod agents_view;
pub mod client_addr;
pub mod config;
pub mod conn_guard;
pub mod conn_limit;
pub(crate) mod disposition;
pub mod drain;
pub mod edge;
mod edge_accepts;
pub(crate) mod incident;
pub mod ironic;
pub(crate) mod listen_ready;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod plugin;
pub mod proxy;
pub mod relay;
pub mod route_policy;
pub mod server;
pub(crate) mod shadow;
pub(crate) mod source_limits;
pub(crate) mod source_policy;
pub(crate) mod store;
pub mod sync;
pub(crate) mod tls;
pub(crate) mod unknown;
pub mod upstream;
