//! Parts shared by the bench binaries (`benches/*.rs`), included with `mod common;`:
//!
//! - [`cli`]: command-line options with environment fall-backs (`--key V`, `--key=V`,
//!   `PREFIX_KEY`), skipping what cargo and libtest pass to bench binaries;
//! - [`http`]: loopback targets, request specs and a minimal keep-alive HTTP/1.1 client
//!   (Content-Length, chunked and close-delimited bodies, parsed with httparse);
//! - [`stats`]: the one percentile estimator every bench uses (nearest rank) and a latency
//!   summary;
//! - [`report`]: number formats, ratios, text and Markdown tables, result files;
//! - [`prom`]: Prometheus text pages (the gateway's `/metrics`): samples, family sums, deltas,
//!   several gateways' pages as one;
//! - [`failover`]: what a Redis master kill did to a gateway, from its sampled `/metrics`;
//! - [`procs`]: what a server process costs (CPU from `/proc/<pid>/stat`, RSS) and what a
//!   Redis did (`INFO stats` through a tiny RESP client).
//!
//! Not every bench uses every part (hence `dead_code` is allowed here). Without arguments a
//! bench binary must exit 0 at once (`cargo test --all-targets` runs them): [`self_check`]
//! is what such a run can afford to test of these parts.
#![allow(dead_code)]

pub mod cli;
pub mod failover;
pub mod http;
pub mod procs;
pub mod prom;
pub mod report;
pub mod stats;

/// Quick checks of the shared parts (microseconds; run when a bench has nothing to do, so
/// that `cargo test --all-targets` exercises them). Panics on a failure.
pub fn self_check() {
    stats::self_check();
    http::self_check();
    cli::self_check();
    report::self_check();
    procs::self_check();
    prom::self_check();
    failover::self_check();
}
