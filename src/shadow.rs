//! Shadow mode (`ironic_edge.mode: shadow`), for adoption: every agent request is decided as
//! in enforce mode, but whatever the edge would have answered in Ironic's place is sent to
//! Ironic instead, the agent gets Ironic's answer, and the two are compared here (by the proxy,
//! where every answer leaves: [`Shadow::observe`]).
//!
//! What is compared: the status always, and the body where the edge would have answered
//! itself. Headers are not: request ids, `Date` and `Server` are made per answer on both sides
//! (Ironic's own headers reach the agent anyway). Bodies are equal byte for byte, or as JSON
//! values, after two normalisations of what legitimately differs:
//! - `Unexpected arguments: a, b`: Ironic joins a Python set (hash-seed order), the edge
//!   names them in the order they appear: compared as sorted lists;
//! - a replayed minted answer carries the raw token, Ironic's answer to the repeat `"******"`:
//!   both tokens are masked, and an answer equal but for the token is the documented
//!   deviation (the replay exists to differ there);
//! - the edge's `Invalid or missing agent token received.` for a token it cannot verify,
//!   where Ironic refuses the heartbeat with another 400 (its conductor checks
//!   `require_tls` first): the documented edge token check. Ironic accepting it is a
//!   mismatch.
//!
//! Verdicts: `agree`; `mismatch` (a difference the README does not promise: logged, once per
//! rule and subject); `deviation` (a documented one: the edge's 429 over a source's limits, a
//! verified heartbeat accepted (kept, a repeat, a source over its limits) where Ironic fails
//! or the node is locked, the replay above). A request
//! the edge would have forwarded anyway agrees by construction (rule `forwarded`). A request
//! Ironic did not answer (unreachable) is not compared; one the edge must answer itself in
//! shadow mode too (a heartbeat body over the limit, read in part) is counted `unasked`.

use crate::disposition::{Predicted, Rule};
use crate::ironic::token::{lookup_token, replace_token, LookupToken, MASK};
use std::collections::{HashSet, VecDeque};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// How the edge's answer compares with Ironic's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Agree = 0,
    Mismatch = 1,
    /// Differs as the README's deliberate deviations say it does.
    Deviation = 2,
    /// Answered at the edge in shadow mode too, Ironic not asked: a heartbeat body over the
    /// limit that was read in part (what was read cannot be sent).
    Unasked = 3,
}

impl Verdict {
    pub(crate) const ALL: [Verdict; 4] = [
        Verdict::Agree,
        Verdict::Mismatch,
        Verdict::Deviation,
        Verdict::Unasked,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Verdict::Agree => "agree",
            Verdict::Mismatch => "mismatch",
            Verdict::Deviation => "deviation",
            Verdict::Unasked => "unasked",
        }
    }
}

/// An answer, as compared: status and body.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Answer<'a> {
    pub status: u16,
    pub body: &'a [u8],
}

/// Compares what the edge would have answered under `rule` with Ironic's answer. Pure.
pub(crate) fn compare(rule: Rule, edge: Answer<'_>, ironic: Answer<'_>) -> Verdict {
    if rule == Rule::Forwarded {
        return Verdict::Agree;
    }
    if rule == Rule::OverLimit && edge.status == 429 {
        // Ironic has no such answer: the per-source limits are the edge's own.
        return Verdict::Deviation;
    }
    if edge.status != ironic.status {
        // A heartbeat the edge accepts (a repeat, one kept for the relay, one from a source
        // over its limits) where Ironic fails or the node is locked: what the edge is for.
        let accepted = matches!(rule, Rule::Kept | Rule::Coalesced | Rule::OverLimit);
        let ironic_failed = ironic.status >= 500 || ironic.status == 409;
        return if accepted && edge.status == 202 && ironic_failed {
            Verdict::Deviation
        } else {
            Verdict::Mismatch
        };
    }
    if same_body(edge.body, ironic.body) {
        return Verdict::Agree;
    }
    if rule == Rule::Replayed && same_body(&masked(edge.body), &masked(ironic.body)) {
        return Verdict::Deviation;
    }
    if rule == Rule::EdgeError && edge.status == 400 && is_token_refusal(edge.body) {
        // The edge's refusal of a token it cannot verify is its own message: Ironic refuses
        // the heartbeat too, by the check its conductor makes first (`require_tls`...).
        return Verdict::Deviation;
    }
    Verdict::Mismatch
}

/// The edge's 400 for a heartbeat token it cannot verify.
fn is_token_refusal(body: &[u8]) -> bool {
    body == &crate::ironic::error::invalid_token().body[..]
}

/// Equal bytes, or equal JSON values once `Unexpected arguments` lists are sorted.
fn same_body(a: &[u8], b: &[u8]) -> bool {
    if a == b {
        return true;
    }
    let (Some(a), Some(b)) = (json_of(a), json_of(b)) else {
        return false;
    };
    a == b
}

/// A JSON body with every `Unexpected arguments: …` list sorted (Ironic nests its error
/// message as JSON text inside `error_message`: that is parsed too).
fn json_of(body: &[u8]) -> Option<serde_json::Value> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    normalise(&mut v);
    Some(v)
}

fn normalise(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) => {
            if let Ok(mut inner @ Value::Object(_)) = serde_json::from_str::<Value>(s) {
                normalise(&mut inner);
                *v = inner;
            } else if let Some(list) = s.strip_prefix("Unexpected arguments: ") {
                let mut names: Vec<&str> = list.split(", ").collect();
                names.sort_unstable();
                *s = format!("Unexpected arguments: {}", names.join(", "));
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise),
        Value::Object(map) => map.values_mut().for_each(normalise),
        _ => {}
    }
}

/// The body with a lookup answer's raw token replaced by Ironic's mask (for the comparison of
/// a replay, and for logs: never a raw token there).
fn masked(body: &[u8]) -> Vec<u8> {
    match lookup_token(body) {
        Some(LookupToken::Raw(token)) => {
            replace_token(body, &token, &format!("\"{MASK}\"")).unwrap_or_else(|| {
                // Not locatable in place: nothing of the body is shown rather than the token.
                b"<a lookup answer whose token could not be masked>".to_vec()
            })
        }
        _ => body.to_vec(),
    }
}

/// How much of a body a mismatch log line shows.
const LOGGED_BODY: usize = 2048;

/// The body as logged: tokens masked, bounded, lossy UTF-8.
fn for_log(body: &[u8]) -> String {
    let m = masked(body);
    let shown = &m[..m.len().min(LOGGED_BODY)];
    let mut s = String::from_utf8_lossy(shown).into_owned();
    if m.len() > LOGGED_BODY {
        let _ = write!(s, "… ({} bytes)", m.len());
    }
    s
}

/// How many (rule, subject) pairs are remembered as logged: a mismatch is logged once per
/// pair while it is among the most recent this many.
const LOGGED_PAIRS: usize = 4096;

/// Recently logged (rule, subject) pairs, oldest first out: bounded whatever the subjects.
#[derive(Default)]
struct Recent {
    order: VecDeque<(Rule, String)>,
    seen: HashSet<(Rule, String)>,
}

impl Recent {
    /// Whether the pair is new (then remembered).
    fn first(&mut self, rule: Rule, subject: &str) -> bool {
        let key = (rule, subject.to_string());
        if self.seen.contains(&key) {
            return false;
        }
        if self.order.len() >= LOGGED_PAIRS {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.order.push_back(key.clone());
        self.seen.insert(key);
        true
    }
}

/// Shadow mode's counters and mismatch log.
#[derive(Default)]
pub(crate) struct Shadow {
    counts: [[AtomicU64; Verdict::ALL.len()]; Rule::ALL.len()],
    logged: Mutex<Recent>,
}

impl Shadow {
    /// Compares and counts one answer Ironic gave in shadow mode: `predicted` is what the edge
    /// would have answered (`None`: it would have forwarded the request too).
    pub(crate) fn observe(
        &self,
        predicted: Option<&Predicted>,
        status: u16,
        body: &[u8],
    ) -> Verdict {
        let ironic = Answer { status, body };
        let (rule, verdict) = match predicted {
            None => (Rule::Forwarded, Verdict::Agree),
            Some(p) => {
                let edge = Answer {
                    status: p.status,
                    body: &p.body,
                };
                (p.rule, compare(p.rule, edge, ironic))
            }
        };
        self.counts[rule as usize][verdict as usize].fetch_add(1, Ordering::Relaxed);
        if let (Verdict::Mismatch, Some(p)) = (verdict, predicted) {
            let first = self
                .logged
                .lock()
                .map(|mut r| r.first(p.rule, &p.subject))
                .unwrap_or(false);
            if first {
                log::warn!(
                    "shadow: mismatch ({}) for {}: the edge would have answered {} {}; Ironic answered {} {}",
                    p.rule.label(),
                    p.subject,
                    p.status,
                    for_log(&p.body),
                    status,
                    for_log(body)
                );
            }
        }
        verdict
    }

    /// As [`Shadow::observe`], for an answer whose body streamed past the gateway (the proxy
    /// relayed it): compared on the status only.
    pub(crate) fn observe_status(&self, predicted: &Predicted, status: u16) -> Verdict {
        let body = if status == predicted.status {
            predicted.body.clone()
        } else {
            bytes::Bytes::new()
        };
        self.observe(Some(predicted), status, &body)
    }

    /// An answer the edge made in Ironic's place in shadow mode too (see [`Verdict::Unasked`]).
    pub(crate) fn unasked(&self, rule: Rule) {
        self.counts[rule as usize][Verdict::Unasked as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count(&self, rule: Rule, verdict: Verdict) -> u64 {
        self.counts[rule as usize][verdict as usize].load(Ordering::Relaxed)
    }

    /// `ironic_edge_shadow_total{rule, verdict}` in the Prometheus text format (every rule
    /// that may be compared; zeros in enforce mode).
    pub(crate) fn render(&self) -> String {
        let mut out = String::from(
            "# HELP ironic_edge_shadow_total Shadow mode: agent requests Ironic answered, by the rule that decided what the edge would have answered and how that compares with Ironic's answer.\n# TYPE ironic_edge_shadow_total counter\n",
        );
        for rule in Rule::ALL.iter().filter(|r| comparable(**r)) {
            for verdict in Verdict::ALL {
                let _ = writeln!(
                    out,
                    "ironic_edge_shadow_total{{rule=\"{}\",verdict=\"{}\"}} {}",
                    rule.label(),
                    verdict.label(),
                    self.count(*rule, verdict)
                );
            }
        }
        out
    }
}

/// The rules shadow mode counts: those that stand in for Ironic, and `forwarded`.
fn comparable(rule: Rule) -> bool {
    rule == Rule::Forwarded || rule.stands_in_for_ironic()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Rule::*;
    use Verdict::*;

    const NOT_FOUND: &[u8] = br#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"Node 52:54:00:00:00:01 could not be found.\", \"debuginfo\": null}"}"#;
    const LOCKED: &[u8] = br#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"Node is locked by host x.\", \"debuginfo\": null}"}"#;
    const UNEXPECTED_AB: &[u8] = br#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"Unexpected arguments: a, b\", \"debuginfo\": null}"}"#;
    const UNEXPECTED_BA: &[u8] = br#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"Unexpected arguments: b, a\", \"debuginfo\": null}"}"#;
    const UNEXPECTED_AC: &[u8] = br#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"Unexpected arguments: a, c\", \"debuginfo\": null}"}"#;
    const RAW: &str = "AAAAbbbbCCCCddddEEEEffffGGGGhhhhIIIIjjjjKKK";

    fn lookup_answer(token: &str, state: &str) -> Vec<u8> {
        format!(
            r#"{{"node": {{"uuid": "1be26c0b-03f2-4d2e-ae87-c02d7f33c123", "provision_state": "{state}"}}, "config": {{"agent_token": "{token}", "heartbeat_timeout": 300}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn verdicts() {
        let a = |status, body| Answer { status, body };
        let replay = lookup_answer(RAW, "clean wait");
        let token_refusal = crate::ironic::error::invalid_token().body.to_vec();
        let ironic_masked = lookup_answer(MASK, "clean wait");
        let ironic_moved_on = lookup_answer(MASK, "cleaning");
        let spaced = br#"{"error_message":"{\"faultcode\": \"Client\", \"faultstring\": \"Node 52:54:00:00:00:01 could not be found.\", \"debuginfo\": null}"}"#;
        type Row<'a> = (&'a str, Rule, Answer<'a>, Answer<'a>, Verdict);
        let rows: Vec<Row> = vec![
            (
                "index 404, Ironic 404",
                IndexNotFound,
                a(404, NOT_FOUND),
                a(404, NOT_FOUND),
                Agree,
            ),
            (
                "index 404, Ironic minted",
                IndexNotFound,
                a(404, NOT_FOUND),
                a(200, &ironic_masked),
                Mismatch,
            ),
            (
                "negative cache, other body",
                NegativeCache,
                a(404, NOT_FOUND),
                a(404, LOCKED),
                Mismatch,
            ),
            (
                "same JSON, other spacing",
                NegativeCache,
                a(404, NOT_FOUND),
                a(404, spaced),
                Agree,
            ),
            (
                "argument order",
                EdgeError,
                a(400, UNEXPECTED_AB),
                a(400, UNEXPECTED_BA),
                Agree,
            ),
            (
                "other arguments",
                EdgeError,
                a(400, UNEXPECTED_AB),
                a(400, UNEXPECTED_AC),
                Mismatch,
            ),
            (
                "coalesced, Ironic accepts",
                Coalesced,
                a(202, b""),
                a(202, b""),
                Agree,
            ),
            (
                "coalesced, Ironic refuses",
                Coalesced,
                a(202, b""),
                a(400, LOCKED),
                Mismatch,
            ),
            (
                "coalesced, Ironic failing",
                Coalesced,
                a(202, b""),
                a(503, b"{}"),
                Deviation,
            ),
            (
                "kept, Ironic failing",
                Kept,
                a(202, b""),
                a(503, b"{}"),
                Deviation,
            ),
            (
                "kept, Ironic locked",
                Kept,
                a(202, b""),
                a(409, LOCKED),
                Deviation,
            ),
            (
                "kept, Ironic refuses",
                Kept,
                a(202, b""),
                a(400, LOCKED),
                Mismatch,
            ),
            (
                "replay, Ironic masks",
                Replayed,
                a(200, &replay),
                a(200, &ironic_masked),
                Deviation,
            ),
            (
                "replay, node moved on",
                Replayed,
                a(200, &replay),
                a(200, &ironic_moved_on),
                Mismatch,
            ),
            (
                "replay, Ironic 404",
                Replayed,
                a(200, &replay),
                a(404, NOT_FOUND),
                Mismatch,
            ),
            (
                "over limit 429",
                OverLimit,
                a(429, b"{}"),
                a(202, b""),
                Deviation,
            ),
            (
                "over limit, verified 202",
                OverLimit,
                a(202, b""),
                a(202, b""),
                Agree,
            ),
            (
                "over limit, verified, refused",
                OverLimit,
                a(202, b""),
                a(400, LOCKED),
                Mismatch,
            ),
            (
                "over limit, verified, locked",
                OverLimit,
                a(202, b""),
                a(409, LOCKED),
                Deviation,
            ),
            (
                "token refused, Ironic refuses otherwise",
                EdgeError,
                a(400, &token_refusal),
                a(400, LOCKED),
                Deviation,
            ),
            (
                "token refused, Ironic accepts",
                EdgeError,
                a(400, &token_refusal),
                a(202, b""),
                Mismatch,
            ),
            (
                "edge error, Ironic failing",
                EdgeError,
                a(400, LOCKED),
                a(503, b"{}"),
                Mismatch,
            ),
            (
                "shared answer",
                Shared,
                a(409, LOCKED),
                a(409, LOCKED),
                Agree,
            ),
            (
                "document, other bytes",
                Document,
                a(200, b"{\"a\": 1}"),
                a(200, b"{\"a\": 2}"),
                Mismatch,
            ),
            ("forwarded", Forwarded, a(200, b"x"), a(500, b"y"), Agree),
            (
                "not JSON, other bytes",
                EdgeError,
                a(413, b"too large"),
                a(413, b"Too large"),
                Mismatch,
            ),
        ];
        for (case, rule, edge, ironic, want) in rows {
            assert_eq!(compare(rule, edge, ironic), want, "{case}");
        }
    }

    #[test]
    fn logged_bodies_never_show_a_raw_token() {
        let shown = for_log(&lookup_answer(RAW, "clean wait"));
        assert!(!shown.contains(RAW), "{shown}");
        assert!(shown.contains(MASK), "{shown}");
        let long = vec![b'x'; LOGGED_BODY * 2];
        assert!(for_log(&long).len() < LOGGED_BODY + 32);
    }

    #[test]
    fn a_mismatch_is_counted_each_time_and_remembered_per_rule_and_subject() {
        let shadow = Shadow::default();
        let p = |subject: &str| Predicted {
            rule: IndexNotFound,
            status: 404,
            body: bytes::Bytes::from_static(NOT_FOUND),
            subject: subject.into(),
        };
        assert_eq!(shadow.observe(Some(&p("n1")), 202, b""), Mismatch);
        assert_eq!(shadow.observe(Some(&p("n1")), 202, b""), Mismatch);
        assert_eq!(shadow.observe(Some(&p("n1")), 404, NOT_FOUND), Agree);
        assert_eq!(shadow.observe(None, 500, b""), Agree);
        assert_eq!(shadow.count(IndexNotFound, Mismatch), 2);
        assert_eq!(shadow.count(IndexNotFound, Agree), 1);
        assert_eq!(shadow.count(Forwarded, Agree), 1);
        let mut logged = shadow.logged.lock().unwrap();
        assert!(!logged.first(IndexNotFound, "n1"), "n1 was logged");
        assert!(logged.first(IndexNotFound, "n2"));
        assert!(logged.first(NegativeCache, "n1"), "another rule");
        drop(logged);
        let text = shadow.render();
        assert!(
            text.contains("ironic_edge_shadow_total{rule=\"index_404\",verdict=\"mismatch\"} 2")
        );
        assert!(
            !text.contains("rule=\"denied\""),
            "policies are not compared"
        );
    }

    #[test]
    fn a_streamed_answer_is_compared_on_its_status() {
        let shadow = Shadow::default();
        let p = Predicted {
            rule: EdgeError,
            status: 413,
            body: bytes::Bytes::from_static(b"too large"),
            subject: "/v1/heartbeat/n".into(),
        };
        assert_eq!(shadow.observe_status(&p, 413), Agree);
        assert_eq!(shadow.observe_status(&p, 202), Mismatch);
    }

    #[test]
    fn the_logged_pairs_are_bounded() {
        let mut recent = Recent::default();
        for i in 0..LOGGED_PAIRS * 2 {
            assert!(recent.first(EdgeError, &format!("node-{i}")));
        }
        assert_eq!(recent.order.len(), LOGGED_PAIRS);
        assert_eq!(recent.seen.len(), LOGGED_PAIRS);
        // The oldest were forgotten: logged again if they come back.
        assert!(recent.first(EdgeError, "node-0"));
        assert!(!recent.first(EdgeError, &format!("node-{}", LOGGED_PAIRS * 2 - 1)));
    }
}
