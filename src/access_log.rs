//! The structured access log (opt-in, `access_log: <file>`): one JSON line per request with
//! what an on-call engineer asks of it (which request, which node, from where, how it was
//! answered, how long Ironic and the whole took), and never a token or a query string (the
//! path alone is kept: query strings may carry heartbeat tokens).
//!
//! Lines are handed to a writer thread through a bounded queue: a slow disk never holds a
//! request, and a line that finds the queue full is dropped and counted.

use serde::Serialize;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

/// Lines waiting for the writer at most.
const QUEUE: usize = 8192;

/// One request, as logged.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct AccessLine<'a> {
    /// Unix time in milliseconds when the answer was done.
    pub time_ms: u64,
    /// The `x-openstack-request-id` the client got, when it got one.
    pub request_id: Option<&'a str>,
    pub method: &'a str,
    /// The path, without the query string.
    pub path: &'a str,
    pub route: &'a str,
    /// The node the request is about, when the path names it by UUID.
    pub node: Option<&'a str>,
    pub source: Option<String>,
    /// How it was answered (`local`, `forwarded`, `proxied`, `denied`, `unavailable`,
    /// `refused_source`, `over_limit`), `none` if the connection broke first.
    pub disposition: &'a str,
    pub status: u16,
    /// The rule that decided it (`index_404`, `coalesced_202`, `forwarded`...: see
    /// `disposition::Rule`); in shadow mode, the rule of the answer the edge would have made.
    pub rule: Option<&'a str>,
    /// How long Ironic took, when it was asked.
    pub upstream_ms: Option<u64>,
    pub total_ms: u64,
}

/// The node a path names: the heartbeat's ident when it is a canonical UUID. Pure.
pub(crate) fn node_of(path: &str) -> Option<&str> {
    let ident = path.strip_prefix("/v1/heartbeat/")?;
    let canonical = ident.len() == 36 && crate::ironic::ident::is_uuid_like(ident);
    canonical.then_some(ident)
}

pub(crate) struct AccessLog {
    tx: SyncSender<String>,
    dropped: AtomicU64,
}

impl AccessLog {
    /// Opens (appends to) `path` and starts the writer thread.
    pub(crate) fn open(path: &std::path::Path) -> std::io::Result<AccessLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, rx) = sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(file);
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(line.as_bytes());
                    // Flush when nothing else waits: lines reach the file promptly, in batches
                    // under load.
                    if let Ok(next) = rx.try_recv() {
                        let _ = out.write_all(next.as_bytes());
                        continue;
                    }
                    let _ = out.flush();
                }
                let _ = out.flush();
            })?;
        Ok(AccessLog {
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    pub(crate) fn write(&self, line: &AccessLine<'_>) {
        let Ok(mut text) = serde_json::to_string(line) else {
            return;
        };
        text.push('\n');
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(text) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // A line at 1, 2, 4, 8... drops: readable, and a growing count is visible.
            if n.is_power_of_two() {
                log::warn!("access log: {n} lines dropped so far (its writer falls behind)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_is_named_only_by_a_canonical_uuid_path() {
        let uuid = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123";
        assert_eq!(node_of(&format!("/v1/heartbeat/{uuid}")), Some(uuid));
        assert_eq!(node_of("/v1/heartbeat/node-1"), None);
        assert_eq!(node_of("/v1/lookup"), None);
    }

    #[test]
    fn a_line_is_one_json_object_without_a_query() {
        let line = AccessLine {
            time_ms: 1,
            request_id: Some("req-1"),
            method: "GET",
            path: "/v1/lookup",
            route: "lookup",
            node: None,
            source: Some("10.0.0.1".into()),
            disposition: "local",
            status: 404,
            rule: Some("index_404"),
            upstream_ms: None,
            total_ms: 0,
        };
        let text = serde_json::to_string(&line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["path"], "/v1/lookup");
        assert_eq!(v["rule"], "index_404");
        assert_eq!(v["upstream_ms"], serde_json::Value::Null);
        assert!(!text.contains('\n'));
    }
}
