//! Ironic's content negotiation on `Accept`, exactly as its stack decides it (pure, linear).
//!
//! Four layers look at `Accept`, outermost first (Ironic 39, pecan 1.8, webob 1.8.11, cheroot):
//! 1. cheroot folds repeated `Accept` headers: each value stripped, joined with `", "`, an
//!    empty earlier value replaced by the next one ([`fold_values`]);
//! 2. `ParsableErrorMiddleware` replaces an absent or exactly `*/*` value by
//!    `application/json`;
//! 3. pecan, once the route is found (so after version negotiation), picks the controller's
//!    content type: `header_value or '*/*'`; `*/*` is JSON; otherwise webob's
//!    `acceptable_offers(['application/json'])`, and if that is empty the raw value
//!    `startswith('application/json')` (case-sensitive); otherwise 406;
//! 4. an HTTP error raised by pecan or webob (the version 406s, the query-decoding 400, a 405,
//!    that 406) is rendered by pecan as `{"code", "title", "description"}` when its best offer
//!    among `text/plain, text/html, application/json` is JSON, else by webob as an HTML page,
//!    webob's own JSON or plain text (its best offer among `text/html, application/json` on
//!    the raw `HTTP_ACCEPT`); `ParsableErrorMiddleware` wraps either in `error_message`.
//!    Errors the controller itself returns (through `api.method`) are JSON whatever `Accept`.
//!
//! webob (`create_accept_header`) parses with the RFC 7231 grammar: an invalid value
//! (`*`, `text/html;q=2`, `q=abc`, `, text/html`) is `AcceptInvalidHeader`, which accepts every
//! offer at q=1; a valid one matches offers by specificity (exact type without media-type
//! parameters, `type/*`, `*/*`), the first range of the highest specificity giving the q, and
//! q=0 refuses. The functions here reproduce that decision for the three offers that matter;
//! the table test is built from answers measured on the real Ironic 39.

/// What the lookup and heartbeat controllers answer (pecan's choice of content type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The controller runs and answers JSON.
    Json,
    /// pecan refuses with webob's 406 page (rendered as [`ErrorPage`] says).
    NotAcceptable,
}

/// How an error raised by pecan or webob (not by the controller) is rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorPage {
    /// pecan's `{"code": ..., "title": ..., "description": ...}`: the form the gateway writes.
    PecanJson,
    /// webob's `{"message": ..., "code": ..., "title": ...}`.
    WebobJson,
    /// webob's HTML page.
    Html,
    /// webob's plain-text page.
    Plain,
}

/// Ironic's decision for one request's `Accept`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Negotiation {
    pub(crate) answer: Answer,
    pub(crate) errors: ErrorPage,
}

impl Negotiation {
    /// Whether every answer the gateway writes itself is the one Ironic would give: the
    /// controller answers JSON and pecan's own errors come in the JSON form the gateway
    /// reproduces. Anything else only Ironic can answer.
    pub(crate) fn edge_may_answer(&self) -> bool {
        self.answer == Answer::Json && self.errors == ErrorPage::PecanJson
    }
}

/// Ironic's decision from the request's headers (every `Accept`, folded as cheroot does).
pub(crate) fn negotiate_headers(headers: &http::HeaderMap) -> Negotiation {
    let values = headers.get_all(http::header::ACCEPT);
    let mut iter = values.iter();
    match (iter.next(), iter.next()) {
        (None, _) => negotiate(None),
        // The usual case: one header, nothing to fold, nothing to copy.
        (Some(v), None) => negotiate(Some(py_bytes_strip(v.as_bytes()))),
        _ => negotiate(fold_values(values.iter().map(|v| v.as_bytes())).as_deref()),
    }
}

/// cheroot's folding of repeated `Accept` headers (`None`: no header at all).
pub(crate) fn fold_values<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    let mut folded: Option<Vec<u8>> = None;
    for v in values {
        let v = py_bytes_strip(v);
        match &mut folded {
            // `if existing:` — an empty earlier value is replaced, not joined.
            Some(existing) if !existing.is_empty() => {
                existing.extend_from_slice(b", ");
                existing.extend_from_slice(v);
            }
            _ => folded = Some(v.to_vec()),
        }
    }
    folded
}

/// Python's `bytes.strip()`: ASCII whitespace on both sides.
fn py_bytes_strip(v: &[u8]) -> &[u8] {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let start = v.iter().position(|b| !ws(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !ws(b)).map_or(start, |i| i + 1);
    &v[start..end]
}

/// Ironic's decision for the folded `Accept` value (`None`: no header).
pub(crate) fn negotiate(folded: Option<&[u8]>) -> Negotiation {
    // ParsableErrorMiddleware: the environ's HTTP_ACCEPT from here on.
    let environ: &[u8] = match folded {
        None | Some(b"*/*") => b"application/json",
        Some(v) => v,
    };
    // pecan: `getattr(req.accept, 'header_value', '*/*') or '*/*'`.
    let pecan_value: &[u8] = if environ.is_empty() { b"*/*" } else { environ };
    let pecan = parse(pecan_value);
    let answer = if pecan_value == b"*/*"
        || pecan.quality(Offer::Json) > 0
        || pecan_value.starts_with(b"application/json")
    {
        Answer::Json
    } else {
        Answer::NotAcceptable
    };
    let errors = if pecan.best(&[Offer::Plain, Offer::Html, Offer::Json]) == Some(Offer::Json) {
        ErrorPage::PecanJson
    } else {
        // webob reads the environ itself (`environ.get('HTTP_ACCEPT', '')`).
        match parse(environ).best(&[Offer::Html, Offer::Json]) {
            Some(Offer::Html) => ErrorPage::Html,
            Some(Offer::Json) => ErrorPage::WebobJson,
            _ => ErrorPage::Plain,
        }
    };
    Negotiation { answer, errors }
}

/// The media types Ironic's stack offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Offer {
    Json,
    Plain,
    Html,
}

impl Offer {
    const ALL: [Offer; 3] = [Offer::Json, Offer::Plain, Offer::Html];

    fn type_subtype(self) -> (&'static [u8], &'static [u8]) {
        match self {
            Offer::Json => (b"application", b"json"),
            Offer::Plain => (b"text", b"plain"),
            Offer::Html => (b"text", b"html"),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A parsed `Accept`: per offer, the q (in thousandths) of the range that matched it most
/// specifically, or `Invalid` (webob's `AcceptInvalidHeader`: every offer at q=1).
enum Parsed {
    Invalid,
    /// `(specificity, q)` per offer, `None` when no range matched.
    Valid([Option<(u8, u16)>; 3]),
}

impl Parsed {
    /// The q webob gives the offer (0: not acceptable), in thousandths.
    fn quality(&self, o: Offer) -> u16 {
        match self {
            Parsed::Invalid => 1000,
            Parsed::Valid(m) => m[o.index()].map_or(0, |(_, q)| q),
        }
    }

    /// The first of `acceptable_offers(offers)`: the highest q, ties in offer order.
    fn best(&self, offers: &[Offer]) -> Option<Offer> {
        let mut best: Option<(Offer, u16)> = None;
        for &o in offers {
            let q = self.quality(o);
            if q > 0 && best.is_none_or(|(_, bq)| q > bq) {
                best = Some((o, q));
            }
        }
        best.map(|(o, _)| o)
    }
}

/// One media range of a valid header, as `acceptable_offers` uses it.
struct Range<'a> {
    type_: &'a [u8],
    subtype: &'a [u8],
    /// Media-type parameters (before the weight): such a range never matches a
    /// parameter-less offer exactly.
    has_params: bool,
    q: u16,
}

/// webob's `Accept.parse` validation and `acceptable_offers` matching in one pass: the value
/// must match `^(?:$)|(?:(?:,|E)(?:OWS,(?:OWS E)?)*)$` (`_list_0_or_more__compiled_re`), E
/// being `media-range [weight *accept-ext]`. Every element is read greedily; a shorter match
/// of an element never helps, since what may follow one (`OWS ,` or the end) can never be
/// its own continuation (`OWS ;`, a token or quoted-string character, a q digit).
fn parse(s: &[u8]) -> Parsed {
    let mut matched: [Option<(u8, u16)>; 3] = [None; 3];
    let mut note = |r: &Range<'_>| {
        for o in Offer::ALL {
            let (t, st) = o.type_subtype();
            let specificity =
                if r.type_.eq_ignore_ascii_case(t) && r.subtype.eq_ignore_ascii_case(st) {
                    if r.has_params {
                        continue;
                    }
                    3
                } else if r.subtype == b"*" && r.type_.eq_ignore_ascii_case(t) {
                    2
                } else if r.type_ == b"*" && r.subtype == b"*" {
                    1
                } else {
                    continue;
                };
            let slot = &mut matched[o.index()];
            if slot.is_none_or(|(s, _)| specificity > s) {
                *slot = Some((specificity, r.q));
            }
        }
    };
    if s.is_empty() {
        return Parsed::Valid(matched);
    }
    let mut pos = if s[0] == b',' {
        1
    } else {
        match element(s, 0) {
            Some((end, r)) => {
                note(&r);
                end
            }
            None => return Parsed::Invalid,
        }
    };
    while pos < s.len() {
        let p = skip_ows(s, pos);
        if s.get(p) != Some(&b',') {
            return Parsed::Invalid;
        }
        pos = p + 1;
        let e = skip_ows(s, pos);
        if let Some((end, r)) = element(s, e) {
            note(&r);
            pos = end;
        }
    }
    Parsed::Valid(matched)
}

/// One element at `i`: `token "/" token *(OWS ";" OWS param) [OWS ";" OWS weight
/// *(OWS ";" OWS token ["=" (token / quoted-string)])]`; its end and range.
fn element(s: &[u8], i: usize) -> Option<(usize, Range<'_>)> {
    let t_end = token(s, i)?;
    if s.get(t_end) != Some(&b'/') {
        return None;
    }
    let st_end = token(s, t_end + 1)?;
    let mut r = Range {
        type_: &s[i..t_end],
        subtype: &s[t_end + 1..st_end],
        has_params: false,
        q: 1000,
    };
    let mut pos = st_end;
    // Media-type parameters, then the weight.
    loop {
        let semi = skip_ows(s, pos);
        if s.get(semi) != Some(&b';') {
            return Some((pos, r));
        }
        let name = skip_ows(s, semi + 1);
        if matches!(s.get(name), Some(b'q' | b'Q')) && s.get(name + 1) == Some(&b'=') {
            let (end, q) = qvalue(s, name + 2)?;
            r.q = q;
            pos = end;
            break;
        }
        pos = parameter(s, name, true)?;
        r.has_params = true;
    }
    // Extension parameters after the weight.
    loop {
        let semi = skip_ows(s, pos);
        if s.get(semi) != Some(&b';') {
            return Some((pos, r));
        }
        pos = parameter(s, skip_ows(s, semi + 1), false)?;
    }
}

/// `token "=" (token / quoted-string)`, or with `value_required` false also a bare token.
fn parameter(s: &[u8], i: usize, value_required: bool) -> Option<usize> {
    let end = token(s, i)?;
    if s.get(end) != Some(&b'=') {
        return (!value_required).then_some(end);
    }
    let v = end + 1;
    if s.get(v) == Some(&b'"') {
        quoted_string(s, v)
    } else {
        token(s, v)
    }
}

/// `qvalue = ("0" ["." 0*3DIGIT]) / ("1" ["." 0*3"0"])`: its end and value in thousandths.
fn qvalue(s: &[u8], i: usize) -> Option<(usize, u16)> {
    let first = *s.get(i)?;
    if first != b'0' && first != b'1' {
        return None;
    }
    let mut pos = i + 1;
    let mut thousandths = u16::from(first - b'0') * 1000;
    if s.get(pos) == Some(&b'.') {
        pos += 1;
        let mut scale = 100;
        while scale > 0 {
            match s.get(pos) {
                Some(d) if d.is_ascii_digit() && (first == b'0' || *d == b'0') => {
                    thousandths += u16::from(d - b'0') * scale;
                    scale /= 10;
                    pos += 1;
                }
                _ => break,
            }
        }
    }
    Some((pos, thousandths))
}

/// RFC 7230 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `1*tchar` at `i`: its end.
fn token(s: &[u8], i: usize) -> Option<usize> {
    let len = s.get(i..)?.iter().take_while(|&&b| is_tchar(b)).count();
    (len > 0).then_some(i + len)
}

/// `DQUOTE *(qdtext / quoted-pair) DQUOTE` at `i` (which holds the opening quote): its end.
fn quoted_string(s: &[u8], i: usize) -> Option<usize> {
    let mut pos = i + 1;
    loop {
        match *s.get(pos)? {
            b'"' => return Some(pos + 1),
            b'\\' => {
                let c = *s.get(pos + 1)?;
                if !(c == b'\t' || c == b' ' || (0x21..=0x7e).contains(&c) || c >= 0x80) {
                    return None;
                }
                pos += 2;
            }
            c if c == b'\t'
                || c == b' '
                || c == 0x21
                || (0x23..=0x7e).contains(&c)
                || c >= 0x80 =>
            {
                pos += 1
            }
            _ => return None,
        }
    }
}

/// `OWS = *(SP / HTAB)`.
fn skip_ows(s: &[u8], mut i: usize) -> usize {
    while matches!(s.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::Answer::{Json, NotAcceptable as Refused};
    use super::ErrorPage::{Html, PecanJson, Plain, WebobJson};
    use super::*;

    /// Measured on the real Ironic 39 (`GET /v1/lookup` at 1.61 for the answer; the same
    /// request with the version `abc` for how its 406 is rendered), one Accept header.
    const MEASURED: &[(&str, Answer, ErrorPage)] = &[
        ("application/json", Json, PecanJson),
        ("APPLICATION/JSON", Json, PecanJson),
        ("*/*", Json, PecanJson),
        ("application/*", Json, PecanJson),
        ("*", Json, Html),
        ("text/html;q=2", Json, Html),
        ("application/json;q=0", Json, Plain),
        ("*/*;q=0.5, text/html", Json, Html),
        ("application/json, text/html;q=abc", Json, Html),
        ("text/plain", Refused, Plain),
        (",", Refused, Plain),
        ("text/html", Refused, Html),
        ("APPLICATION/JSON;q=0", Refused, Plain),
        ("text/html,application/json", Json, Html),
        ("text/html, application/json;q=0", Refused, Html),
        ("application/jsonx", Json, Plain),
        ("text/*", Refused, Html),
        ("application/json;q=0.0001", Json, Html),
        ("image/png;q=0", Refused, Plain),
        ("*/*;q=0", Refused, Plain),
        ("text/html;q=0", Refused, Plain),
        (", text/html", Json, Html),
        ("text/html ,", Refused, Html),
        ("application/json;charset=utf-8;q=0", Json, Plain),
        ("application/json;charset=utf-8", Json, Plain),
        ("application/json;q=0, text/html", Json, Html),
        ("a", Json, Html),
        ("text/html;level=1;q=0.5", Refused, Plain),
        ("*/*; q=0", Refused, Plain),
        ("text/plain, application/json;q=0.5", Json, WebobJson),
        ("application/json;q=0.5, text/plain;q=0.5", Json, WebobJson),
        ("text/plain;q=0.5, application/json;q=0.5", Json, WebobJson),
        ("application/json;q=1.0000", Json, Html),
        ("application/json;q=1.000", Json, PecanJson),
        ("application/json;q=0.1234", Json, Html),
        ("application/json;Q=0.5", Json, PecanJson),
        ("application/json ; q=0.5", Json, PecanJson),
        ("application/json;q=0.5;ext", Json, PecanJson),
        ("application/json;q=0.5;ext=\"a b\"", Json, PecanJson),
        ("application/json;x=\"a\\\"b\"", Json, Plain),
        ("application/json;q=0;x=1", Json, Plain),
        ("*/*;x=1", Json, Html),
        ("*/json", Refused, Plain),
        ("application/json,", Json, PecanJson),
        (",,application/json", Json, PecanJson),
        ("text/plain,,*/*;q=0.1", Json, Html),
        ("text/html;q=0, */*", Json, WebobJson),
        ("*/*, text/html;q=0", Json, WebobJson),
        (
            "text/plain;q=0.001, text/html;q=0.001, application/json;q=0.001",
            Json,
            Html,
        ),
        // `0x20` etc. are stripped by cheroot and the HTTP parser alike.
        (" application/json", Json, PecanJson),
    ];

    fn one(v: &str) -> Negotiation {
        let folded = fold_values(std::iter::once(v.as_bytes()));
        negotiate(folded.as_deref())
    }

    #[test]
    fn measured_single_values() {
        for &(accept, answer, errors) in MEASURED {
            assert_eq!(
                one(accept),
                Negotiation { answer, errors },
                "Accept: {accept:?}"
            );
        }
    }

    #[test]
    fn no_header_is_json_in_every_form() {
        assert_eq!(
            negotiate(None),
            Negotiation {
                answer: Json,
                errors: PecanJson
            }
        );
    }

    #[test]
    fn empty_header_answers_json_but_renders_errors_as_text() {
        assert_eq!(
            one(""),
            Negotiation {
                answer: Json,
                errors: Plain
            }
        );
    }

    /// Measured with two `Accept` headers.
    #[test]
    fn measured_repeated_headers() {
        let two = |a: &str, b: &str| {
            let f = fold_values([a.as_bytes(), b.as_bytes()].into_iter());
            negotiate(f.as_deref())
        };
        let n = |answer, errors| Negotiation { answer, errors };
        assert_eq!(two("text/html", "application/json"), n(Json, Html));
        assert_eq!(two("", "text/html"), n(Refused, Html));
        assert_eq!(two("text/html", ""), n(Json, Html));
        assert_eq!(two("*/*", "*/*"), n(Json, Html));
    }

    #[test]
    fn headers_are_read_like_the_folded_values() {
        let mut h = http::HeaderMap::new();
        assert_eq!(negotiate_headers(&h), negotiate(None));
        h.append("accept", http::HeaderValue::from_static("text/html"));
        assert_eq!(negotiate_headers(&h), one("text/html"));
        h.append("accept", http::HeaderValue::from_static("application/json"));
        assert_eq!(
            negotiate_headers(&h),
            negotiate(Some(b"text/html, application/json"))
        );
    }

    #[test]
    fn latin1_in_a_quoted_string_is_valid() {
        let n = negotiate(Some(b"application/json;x=\"\xe9\""));
        assert_eq!((n.answer, n.errors), (Json, Plain));
    }

    #[test]
    fn folding_follows_cheroot() {
        let f = |vs: &[&str]| fold_values(vs.iter().map(|v| v.as_bytes()));
        assert_eq!(f(&[]), None);
        assert_eq!(f(&[" a/b "]), Some(b"a/b".to_vec()));
        assert_eq!(f(&["a/b", "c/d"]), Some(b"a/b, c/d".to_vec()));
        assert_eq!(f(&["", "c/d"]), Some(b"c/d".to_vec()));
        assert_eq!(f(&["a/b", ""]), Some(b"a/b, ".to_vec()));
    }

    #[test]
    fn only_the_agents_forms_let_the_edge_answer() {
        for a in [
            "application/json",
            "*/*",
            "application/*",
            "APPLICATION/JSON",
        ] {
            assert!(one(a).edge_may_answer(), "{a}");
        }
        assert!(negotiate(None).edge_may_answer());
        for a in [
            "",
            "*",
            "text/html;q=2",
            "application/json;q=0",
            "text/html",
        ] {
            assert!(!one(a).edge_may_answer(), "{a}");
        }
    }

    #[test]
    fn qvalues() {
        assert_eq!(qvalue(b"0.5", 0), Some((3, 500)));
        assert_eq!(qvalue(b"1.", 0), Some((2, 1000)));
        assert_eq!(qvalue(b"0.125", 0), Some((5, 125)));
        assert_eq!(
            qvalue(b"1.5", 0),
            Some((2, 1000)),
            "`1.` matches, the 5 is left over"
        );
        assert_eq!(qvalue(b"2", 0), None);
    }

    #[test]
    fn unterminated_or_bad_quoted_strings_are_invalid() {
        for v in ["a/b;x=\"abc", "a/b;x=\"a\\", "a/b;x=\"a\x01\""] {
            assert!(matches!(parse(v.as_bytes()), Parsed::Invalid), "{v:?}");
        }
    }

    #[test]
    fn cost_is_linear() {
        // Many elements, long tokens, long quoted strings: one pass each, no backtracking.
        let many = "text/plain;q=0.5, ".repeat(20_000) + "application/json";
        assert_eq!(one(&many).answer, Json);
        let long = format!("application/json;x=\"{}\"", "a".repeat(200_000));
        assert_eq!(one(&long).answer, Json);
        let bad = "a/b;c=d;".repeat(50_000);
        assert!(matches!(parse(bad.as_bytes()), Parsed::Invalid));
    }
}
