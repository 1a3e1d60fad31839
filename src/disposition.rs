//! How a request is answered: the one typed disposition every plugin returns, which the proxy
//! writes, counts and logs in one place ([`crate::proxy`]), as pingap's plugins return
//! `Respond(HttpResponse)` to their proxy.

use crate::edge::LocalAnswer;
use crate::ironic::ApiVersion;
use crate::metrics::Outcome;
use crate::upstream::{UpstreamInfo, UpstreamResponse};
use bytes::Bytes;

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
    },
}

/// An answer written at the edge, with what its headers need and what it counts as.
pub(crate) struct Local {
    pub answer: LocalAnswer,
    /// Ironic's range (version headers, `Server`), when known.
    pub info: Option<UpstreamInfo>,
    /// The negotiated version, when there is one.
    pub version: Option<ApiVersion>,
    /// How it is counted: answered at the edge, denied by the route policy, or the edge's 503
    /// because Ironic could not be asked.
    pub counted: Outcome,
    /// What must follow once the answer is written (or failed to be).
    pub after: Option<AfterWrite>,
}

/// Work that depends on whether an answer reached the client.
pub(crate) enum AfterWrite {
    /// A kept minted answer was handed over: deleted once delivered, takeable again if not.
    MintedAnswerHandedOver { caller: String, claim: String },
}

impl Disposition {
    /// An answer at the edge, counted as local.
    pub(crate) fn local(
        answer: LocalAnswer,
        info: Option<UpstreamInfo>,
        version: Option<ApiVersion>,
    ) -> Self {
        Self::counted(answer, info, version, Outcome::Local)
    }

    /// An answer at the edge, counted as `counted`.
    pub(crate) fn counted(
        answer: LocalAnswer,
        info: Option<UpstreamInfo>,
        version: Option<ApiVersion>,
        counted: Outcome,
    ) -> Self {
        Disposition::Local(Box::new(Local {
            answer,
            info,
            version,
            counted,
            after: None,
        }))
    }

    /// Ironic's answer, relayed with `body`.
    pub(crate) fn relayed(resp: UpstreamResponse, body: Bytes) -> Self {
        Disposition::Relayed {
            resp: Box::new(resp),
            body,
        }
    }

    /// The same answer, with work to do once it is written.
    pub(crate) fn then(mut self, after: AfterWrite) -> Self {
        if let Disposition::Local(local) = &mut self {
            local.after = Some(after);
        }
        self
    }

    /// How the answer is counted (`None`: not answered here).
    pub(crate) fn outcome(&self) -> Option<Outcome> {
        match self {
            Disposition::Continue => None,
            Disposition::Local(l) => Some(l.counted),
            Disposition::Relayed { .. } => Some(Outcome::Forwarded),
        }
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

    #[test]
    fn each_disposition_counts_as_what_it_is() {
        let accepted = Disposition::local(LocalAnswer::accepted(), None, None);
        assert_eq!(accepted.outcome(), Some(Outcome::Local));
        assert_eq!(accepted.status(), Some(202));
        let unavailable = Disposition::counted(
            LocalAnswer::error(&crate::ironic::error::upstream_unavailable()),
            None,
            None,
            Outcome::Unavailable,
        );
        assert_eq!(unavailable.outcome(), Some(Outcome::Unavailable));
        assert_eq!(unavailable.status(), Some(503));
        assert_eq!(Disposition::Continue.outcome(), None);
    }
}
