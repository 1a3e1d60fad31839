//! How a request is answered: the one typed disposition every plugin returns, which the proxy
//! writes, counts and logs in one place ([`crate::proxy`]), as pingap's plugins return
//! `Respond(HttpResponse)` to their proxy. Every answer carries the [`Rule`] that decided it.

use crate::edge::LocalAnswer;
use crate::ironic::ApiVersion;
use crate::metrics::Outcome;
use crate::upstream::{UpstreamInfo, UpstreamResponse};
use bytes::Bytes;

/// Which rule decided a request: set where the decision is made, carried to the one place
/// answers leave from. Its label is stable (access log, shadow mode's counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Rule {
    /// A lookup or heartbeat the fresh node index proves Ironic would refuse with 404.
    IndexNotFound = 0,
    /// A lookup or heartbeat Ironic answered 404 to a moment ago (the negative cache).
    NegativeCache = 1,
    /// One of Ironic's own 4xx made at the edge: a version 406, a body or parameter 400/413,
    /// a token or `callback_url` 400.
    EdgeError = 2,
    /// A verified heartbeat identical to one Ironic accepted within the coalescing window.
    Coalesced = 3,
    /// A verified heartbeat accepted while Ironic failed, kept for the relay.
    Kept = 4,
    /// A kept minted lookup answer handed over to the caller whose answer was lost.
    Replayed = 5,
    /// A lookup identical to one in flight: that one's error answer, repeated.
    Shared = 6,
    /// `GET /` or `GET /v1` from the documents learnt from Ironic.
    Document = 7,
    /// Sent to Ironic, its answer relayed.
    Forwarded = 8,
    /// A listener's `allow`/`deny`.
    RefusedSource = 9,
    /// A source over its `limits.per_source_*`.
    OverLimit = 10,
    /// The route policy.
    Denied = 11,
    /// The edge's own 503: Ironic could not be asked, or did not answer in time.
    Unavailable = 12,
}

impl Rule {
    pub(crate) const ALL: [Rule; 13] = [
        Rule::IndexNotFound,
        Rule::NegativeCache,
        Rule::EdgeError,
        Rule::Coalesced,
        Rule::Kept,
        Rule::Replayed,
        Rule::Shared,
        Rule::Document,
        Rule::Forwarded,
        Rule::RefusedSource,
        Rule::OverLimit,
        Rule::Denied,
        Rule::Unavailable,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Rule::IndexNotFound => "index_404",
            Rule::NegativeCache => "negative_cache_404",
            Rule::EdgeError => "edge_error",
            Rule::Coalesced => "coalesced_202",
            Rule::Kept => "kept_202",
            Rule::Replayed => "replayed",
            Rule::Shared => "shared_answer",
            Rule::Document => "document",
            Rule::Forwarded => "forwarded",
            Rule::RefusedSource => "refused_source",
            Rule::OverLimit => "over_limit",
            Rule::Denied => "denied",
            Rule::Unavailable => "unavailable",
        }
    }

    /// How an answer decided by this rule is counted in `ironic_edge_requests_total`.
    pub(crate) fn outcome(self) -> Outcome {
        match self {
            Rule::Forwarded => Outcome::Forwarded,
            Rule::RefusedSource => Outcome::RefusedSource,
            Rule::OverLimit => Outcome::OverLimit,
            Rule::Denied => Outcome::Denied,
            Rule::Unavailable => Outcome::Unavailable,
            Rule::IndexNotFound
            | Rule::NegativeCache
            | Rule::EdgeError
            | Rule::Coalesced
            | Rule::Kept
            | Rule::Replayed
            | Rule::Shared
            | Rule::Document => Outcome::Local,
        }
    }

    /// Whether the edge answers in Ironic's place under this rule (what shadow mode sends
    /// Ironic instead, and compares). Not: the operator's own policies (a refused source,
    /// the route policy), which shadow mode still enforces, and the edge's 503, which is
    /// given only when Ironic could not answer.
    pub(crate) fn stands_in_for_ironic(self) -> bool {
        !matches!(
            self,
            Rule::Forwarded | Rule::RefusedSource | Rule::Denied | Rule::Unavailable
        )
    }
}

/// What the edge would have answered, in shadow mode: compared with Ironic's answer by the
/// proxy ([`crate::shadow`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Predicted {
    pub rule: Rule,
    pub status: u16,
    pub body: Bytes,
    /// What the answer is about, for the mismatch log (a heartbeat's ident, a lookup's
    /// bounded key): never a metric label.
    pub subject: String,
}

/// The longest subject kept (the mismatch log remembers thousands: a path may be 64 KiB).
const SUBJECT: usize = 128;

fn bounded(subject: &str) -> String {
    let mut end = subject.len().min(SUBJECT);
    while !subject.is_char_boundary(end) {
        end -= 1;
    }
    subject[..end].to_string()
}

/// What a plugin decided for a request.
pub(crate) enum Disposition {
    /// Not this plugin's: the next one, and finally the proxy (streaming it to Ironic), carries
    /// on.
    Continue,
    /// An answer the gateway writes itself.
    Local(Box<Local>),
    /// Ironic's answer to a request the plugin sent it, relayed (its body possibly rewritten,
    /// e.g. without a token).
    Relayed {
        resp: Box<UpstreamResponse>,
        body: Bytes,
        /// Shadow mode: what the edge would have answered instead.
        predicted: Option<Box<Predicted>>,
    },
}

/// An answer written at the edge, with what its headers need and the rule that made it.
pub(crate) struct Local {
    pub answer: LocalAnswer,
    /// Ironic's range (version headers, `Server`), when known.
    pub info: Option<UpstreamInfo>,
    /// The negotiated version, when there is one.
    pub version: Option<ApiVersion>,
    /// Which rule decided it (and so how it is counted).
    pub rule: Rule,
    /// What must follow once the answer is written (or failed to be).
    pub after: Option<AfterWrite>,
}

/// Work that depends on whether an answer reached the client.
pub(crate) enum AfterWrite {
    /// A kept minted answer was handed over: deleted once delivered, takeable again if not.
    MintedAnswerHandedOver { caller: String, claim: String },
}

impl Disposition {
    /// An answer at the edge, decided by `rule`.
    pub(crate) fn answer(
        rule: Rule,
        answer: LocalAnswer,
        info: Option<UpstreamInfo>,
        version: Option<ApiVersion>,
    ) -> Self {
        Disposition::Local(Box::new(Local {
            answer,
            info,
            version,
            rule,
            after: None,
        }))
    }

    /// Ironic's answer, relayed with `body`.
    pub(crate) fn relayed(resp: UpstreamResponse, body: Bytes) -> Self {
        Disposition::Relayed {
            resp: Box::new(resp),
            body,
            predicted: None,
        }
    }

    /// The same answer, with work to do once it is written.
    pub(crate) fn then(mut self, after: AfterWrite) -> Self {
        if let Disposition::Local(local) = &mut self {
            local.after = Some(after);
        }
        self
    }

    /// Ironic's relayed answer, with what the edge would have answered (shadow mode).
    pub(crate) fn predicting(mut self, what: Option<Predicted>) -> Self {
        if let Disposition::Relayed { predicted, .. } = &mut self {
            *predicted = what.map(Box::new);
        }
        self
    }

    /// The answer the edge makes in Ironic's place, as a prediction about `subject` (`None`:
    /// not such an answer: relayed, a policy's refusal, the edge's 503).
    pub(crate) fn prediction(&self, subject: &str) -> Option<Predicted> {
        match self {
            Disposition::Local(l) if l.rule.stands_in_for_ironic() => Some(Predicted {
                rule: l.rule,
                status: l.answer.status,
                body: l.answer.body.clone(),
                subject: bounded(subject),
            }),
            _ => None,
        }
    }

    /// The rule that decided it (`None`: not answered here).
    pub(crate) fn rule(&self) -> Option<Rule> {
        match self {
            Disposition::Continue => None,
            Disposition::Local(l) => Some(l.rule),
            Disposition::Relayed { .. } => Some(Rule::Forwarded),
        }
    }

    /// How the answer is counted (`None`: not answered here).
    pub(crate) fn outcome(&self) -> Option<Outcome> {
        self.rule().map(Rule::outcome)
    }

    /// The status the client gets (`None`: not answered here).
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            Disposition::Continue => None,
            Disposition::Local(l) => Some(l.answer.status),
            Disposition::Relayed { resp, .. } => Some(resp.status()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metrics index their per-rule counters by `rule as usize`.
    #[test]
    fn every_rule_sits_at_its_own_index() {
        for (i, rule) in Rule::ALL.iter().enumerate() {
            assert_eq!(*rule as usize, i, "{rule:?}");
        }
    }

    #[test]
    fn each_disposition_counts_as_what_it_is() {
        let accepted = Disposition::answer(Rule::Coalesced, LocalAnswer::accepted(), None, None);
        assert_eq!(accepted.outcome(), Some(Outcome::Local));
        assert_eq!(accepted.rule(), Some(Rule::Coalesced));
        assert_eq!(accepted.status(), Some(202));
        let unavailable = Disposition::answer(
            Rule::Unavailable,
            LocalAnswer::error(&crate::ironic::error::upstream_unavailable()),
            None,
            None,
        );
        assert_eq!(unavailable.outcome(), Some(Outcome::Unavailable));
        assert_eq!(unavailable.status(), Some(503));
        assert_eq!(Disposition::Continue.outcome(), None);
        assert_eq!(Disposition::Continue.rule(), None);
    }

    #[test]
    fn rules_have_stable_distinct_labels_and_outcomes() {
        let labels: std::collections::HashSet<&str> = Rule::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Rule::ALL.len());
        for (i, rule) in Rule::ALL.iter().enumerate() {
            assert_eq!(*rule as usize, i, "{rule:?} indexes the counters");
        }
        let rows = [
            (Rule::IndexNotFound, "index_404", Outcome::Local, true),
            (
                Rule::NegativeCache,
                "negative_cache_404",
                Outcome::Local,
                true,
            ),
            (Rule::EdgeError, "edge_error", Outcome::Local, true),
            (Rule::Coalesced, "coalesced_202", Outcome::Local, true),
            (Rule::Kept, "kept_202", Outcome::Local, true),
            (Rule::Replayed, "replayed", Outcome::Local, true),
            (Rule::Shared, "shared_answer", Outcome::Local, true),
            (Rule::Document, "document", Outcome::Local, true),
            (Rule::Forwarded, "forwarded", Outcome::Forwarded, false),
            (
                Rule::RefusedSource,
                "refused_source",
                Outcome::RefusedSource,
                false,
            ),
            (Rule::OverLimit, "over_limit", Outcome::OverLimit, true),
            (Rule::Denied, "denied", Outcome::Denied, false),
            (
                Rule::Unavailable,
                "unavailable",
                Outcome::Unavailable,
                false,
            ),
        ];
        assert_eq!(rows.len(), Rule::ALL.len());
        for (rule, label, outcome, stands_in) in rows {
            assert_eq!(rule.label(), label);
            assert_eq!(rule.outcome(), outcome, "{label}");
            assert_eq!(rule.stands_in_for_ironic(), stands_in, "{label}");
        }
    }

    #[test]
    fn only_answers_made_in_ironics_place_are_predictions() {
        let edge_404 = Disposition::answer(
            Rule::IndexNotFound,
            LocalAnswer::error(&crate::ironic::error::resource_not_found()),
            None,
            None,
        );
        let p = edge_404.prediction("macs:x").expect("a prediction");
        assert_eq!(
            (p.rule, p.status, p.subject.as_str()),
            (Rule::IndexNotFound, 404, "macs:x")
        );
        let denied = Disposition::answer(
            Rule::Denied,
            LocalAnswer::error(&crate::ironic::error::access_denied("/v1/nodes")),
            None,
            None,
        );
        assert!(denied.prediction("x").is_none());
        let long = format!("/v1/lookup{}é", "x".repeat(SUBJECT));
        assert_eq!(edge_404.prediction(&long).unwrap().subject.len(), SUBJECT);
        assert!(Disposition::Continue.prediction("x").is_none());
    }
}
