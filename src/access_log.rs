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

/// What the writer thread is sent.
enum Msg {
    Line(String),
    /// Everything sent before is written and flushed once this is answered.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// A handle on the log (clones share one queue and writer).
#[derive(Clone)]
pub(crate) struct AccessLog(std::sync::Arc<Shared>);

struct Shared {
    tx: SyncSender<Msg>,
    /// The file and the queue's far end until the first line starts the writer thread: the
    /// log is opened before Pingora daemonises (`-d` forks, and a thread started before the
    /// fork does not exist in the daemon).
    pending: std::sync::Mutex<Option<(std::fs::File, std::sync::mpsc::Receiver<Msg>)>>,
    started: std::sync::Once,
    dropped: AtomicU64,
}

/// Writes what a queue receives to `file`.
fn writer(file: std::fs::File, rx: std::sync::mpsc::Receiver<Msg>) {
    let mut out = std::io::BufWriter::new(file);
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Line(line) => {
                let _ = out.write_all(line.as_bytes());
            }
            Msg::Flush(done) => {
                let _ = out.flush();
                let _ = done.try_send(());
                continue;
            }
        }
        // Flush when nothing else waits: lines reach the file promptly, in batches under
        // load.
        if let Ok(Msg::Line(next)) = rx.try_recv() {
            let _ = out.write_all(next.as_bytes());
            continue;
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

impl AccessLog {
    /// Opens (appends to) `path`; the writer thread starts with the first line.
    pub(crate) fn open(path: &std::path::Path) -> std::io::Result<AccessLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, rx) = sync_channel::<Msg>(QUEUE);
        Ok(AccessLog(std::sync::Arc::new(Shared {
            tx,
            pending: std::sync::Mutex::new(Some((file, rx))),
            started: std::sync::Once::new(),
            dropped: AtomicU64::new(0),
        })))
    }

    fn start_writer(&self) {
        let shared = &self.0;
        shared.started.call_once(|| {
            let pending = shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some((file, rx)) = pending {
                let started = std::thread::Builder::new()
                    .name("access-log".into())
                    .spawn(move || writer(file, rx));
                if let Err(e) = started {
                    log::error!("access log: no writer thread: {e}");
                }
            }
        });
    }

    /// Waits (at most `within`) until every line handed over so far is in the file: before the
    /// process exits.
    pub(crate) fn flush(&self, within: std::time::Duration) {
        self.start_writer();
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        if self.0.tx.try_send(Msg::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(within);
        }
    }

    pub(crate) fn write(&self, line: &AccessLine<'_>) {
        let Ok(mut text) = serde_json::to_string(line) else {
            return;
        };
        text.push('\n');
        self.start_writer();
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.0.tx.try_send(Msg::Line(text))
        {
            let n = self.0.dropped.fetch_add(1, Ordering::Relaxed) + 1;
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
