//! Logs that stay readable in an incident: while Redis or Ironic fails, every request that
//! meets the failure would otherwise write its own warning (about 180 a second under load).
//! An [`Incident`] writes one line when the failure starts, a summary every
//! [`SUMMARY_EVERY_MS`] while it lasts, and one line when the next call succeeds; what each
//! request met stays in the debug log.
//!
//! [`IncidentState`] is pure and table-tested; [`Incident`] is its thread-safe shell, one per
//! dependency ([`REDIS`], [`IRONIC`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// While an incident lasts, a summary line this often.
pub(crate) const SUMMARY_EVERY_MS: u64 = 10_000;

/// What one dependency's failures came to so far. Pure (time is passed in).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct IncidentState {
    since_ms: Option<u64>,
    failures: u64,
    summarized_at_ms: u64,
    last_error: String,
}

impl IncidentState {
    pub(crate) const fn new() -> Self {
        IncidentState {
            since_ms: None,
            failures: 0,
            summarized_at_ms: 0,
            last_error: String::new(),
        }
    }

    /// One failed call; the line to write, if any.
    pub(crate) fn failure(&mut self, what: &str, now_ms: u64, error: &str) -> Option<String> {
        self.failures += 1;
        if self.last_error != error {
            self.last_error.clear();
            self.last_error.push_str(error);
        }
        let Some(since) = self.since_ms else {
            self.since_ms = Some(now_ms);
            self.summarized_at_ms = now_ms;
            return Some(format!(
                "{what} is failing: {error} (requests carry on without it; a summary every {} s until it is back)",
                SUMMARY_EVERY_MS / 1000
            ));
        };
        if now_ms.saturating_sub(self.summarized_at_ms) >= SUMMARY_EVERY_MS {
            self.summarized_at_ms = now_ms;
            return Some(format!(
                "{what} still failing after {} s: {} failed calls so far, the last: {error}",
                now_ms.saturating_sub(since) / 1000,
                self.failures
            ));
        }
        None
    }

    /// One successful call; the line to write if it ends an incident.
    pub(crate) fn success(&mut self, what: &str, now_ms: u64) -> Option<String> {
        let since = self.since_ms.take()?;
        let line = format!(
            "{what} is back after {} s ({} failed calls, the last: {})",
            now_ms.saturating_sub(since) / 1000,
            self.failures,
            self.last_error
        );
        *self = IncidentState::new();
        Some(line)
    }
}

/// One dependency's incident log.
pub(crate) struct Incident {
    what: &'static str,
    /// Whether an incident is open (a success outside one costs one atomic load).
    open: AtomicBool,
    state: Mutex<IncidentState>,
}

/// Redis, as every store call meets it.
pub(crate) static REDIS: Incident = Incident::new("Redis");
/// Ironic, as every exchange with it meets it (unreachable, reset, timed out).
pub(crate) static IRONIC: Incident = Incident::new("Ironic");

fn now_ms() -> u64 {
    static START: once_cell::sync::Lazy<std::time::Instant> =
        once_cell::sync::Lazy::new(std::time::Instant::now);
    START.elapsed().as_millis() as u64
}

impl Incident {
    pub(crate) const fn new(what: &'static str) -> Self {
        Incident {
            what,
            open: AtomicBool::new(false),
            state: Mutex::new(IncidentState::new()),
        }
    }

    pub(crate) fn failed(&self, error: &dyn std::fmt::Display) {
        let error = error.to_string();
        log::debug!("{}: {error}", self.what);
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        self.open.store(true, Ordering::Relaxed);
        if let Some(line) = state.failure(self.what, now_ms(), &error) {
            log::warn!("{line}");
        }
    }

    pub(crate) fn succeeded(&self) {
        if !self.open.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        self.open.store(false, Ordering::Relaxed);
        if let Some(line) = state.success(self.what, now_ms()) {
            log::warn!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incident_writes_a_line_at_its_start_a_summary_while_it_lasts_and_one_at_its_end() {
        let mut s = IncidentState::new();
        assert_eq!(s.success("Redis", 0), None, "no incident, nothing to say");
        let mut lines = Vec::new();
        // 25 s of failures, 100 a second.
        for i in 0..2500u64 {
            let now = 1000 + i * 10;
            if let Some(l) = s.failure("Redis", now, "connection refused") {
                lines.push(l);
            }
        }
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[0].starts_with("Redis is failing: connection refused"));
        assert!(lines[1].starts_with("Redis still failing after 10 s: 1001 failed calls"));
        assert!(lines[2].starts_with("Redis still failing after 20 s"));
        let end = s.success("Redis", 27_000).unwrap();
        assert_eq!(
            end,
            "Redis is back after 26 s (2500 failed calls, the last: connection refused)"
        );
        assert_eq!(s.success("Redis", 28_000), None, "once");
        // The next incident starts afresh.
        let again = s.failure("Redis", 30_000, "deadline exceeded").unwrap();
        assert!(again.starts_with("Redis is failing: deadline exceeded"));
    }

    #[test]
    fn the_summary_names_the_latest_error() {
        let mut s = IncidentState::new();
        s.failure("Ironic", 0, "connection refused");
        s.failure("Ironic", 5_000, "read timed out");
        let summary = s.failure("Ironic", 10_000, "reset by peer").unwrap();
        assert!(summary.ends_with("3 failed calls so far, the last: reset by peer"));
    }
}
