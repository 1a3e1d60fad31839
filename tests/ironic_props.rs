//! Property tests of Ironic's rules as the gateway implements them (`ironic_edge::ironic`):
//! for the lookup query, the heartbeat body in every content type (JSON, javascript, form,
//! query string only) and the version headers, random inputs built from the pieces agents and
//! attackers send never panic, and the decision equals a reference model written here.
//!
//! The models are deliberately naive (linear searches, quadratic at worst, small inputs) and
//! follow Ironic's steps as the spec lists them, one by one; the generated text avoids what
//! needs decoding (`%`, `+`, quotes, backslashes), which the unit tests of `params` and
//! `pyjson` pin. Then a malformed-input corpus (`tests/corpus/`) runs through the same checks.

use ironic_edge::ironic::error::{resource_not_found, IronicError};
use ironic_edge::ironic::heartbeat::{check_heartbeat, HeartbeatRejection, HeartbeatRequest};
use ironic_edge::ironic::ident::{is_uuid_like, Mac};
use ironic_edge::ironic::lookup::{check_lookup, LookupQuery, INCOMPLETE_LOOKUP};
use ironic_edge::ironic::version::negotiate_values;
use ironic_edge::ironic::{ApiVersion, HeaderSet, VersionRange};
use proptest::prelude::*;
use proptest::sample::select;

const UUID: &str = "808a5551-9a5d-4b12-bf3f-1389a674b400";
const RANGE: VersionRange = VersionRange {
    min: ApiVersion::new(1, 1),
    max: ApiVersion::new(1, 115),
};

/// A value as the model sees it: a string, JSON `null`, an integer or a list of strings.
#[derive(Clone, Debug, PartialEq)]
enum Val {
    Str(String),
    Null,
    Int(i64),
    List(Vec<String>),
}

/// Python's `str()` of a value (`repr()` for all but strings), for the generated alphabet
/// (no quotes, no backslashes, printable ASCII).
fn py_str(v: &Val) -> String {
    match v {
        Val::Str(s) => s.clone(),
        Val::Null => "None".into(),
        Val::Int(i) => i.to_string(),
        Val::List(items) => py_list(items.iter().map(|s| py_repr(s))),
    }
}

/// Python's `repr()` of a string of the generated alphabet (a tab is its only escape).
fn py_repr(s: &str) -> String {
    format!("'{}'", s.replace('\t', "\\t"))
}

fn py_list(items: impl Iterator<Item = String>) -> String {
    format!("[{}]", items.collect::<Vec<_>>().join(", "))
}

/// webob's `MultiDict.mixed()`, the obvious way: a linear search per key.
fn naive_mixed(pairs: &[(String, Val)]) -> Vec<(String, Mixed)> {
    let mut out: Vec<(String, Mixed)> = Vec::new();
    for (k, v) in pairs {
        match out.iter().position(|(key, _)| key == k) {
            Some(i) => match &mut out[i].1 {
                Mixed::Many(vs) => vs.push(v.clone()),
                Mixed::One(first) => {
                    let first = first.clone();
                    out[i].1 = Mixed::Many(vec![first, v.clone()]);
                }
            },
            None => out.push((k.clone(), Mixed::One(v.clone()))),
        }
    }
    out
}

/// A value after `mixed()`: one, or the list of every value given.
#[derive(Clone, Debug)]
enum Mixed {
    One(Val),
    Many(Vec<Val>),
}

fn mixed_str(m: &Mixed) -> String {
    match m {
        Mixed::One(v) => py_str(v),
        Mixed::Many(vs) => py_list(vs.iter().map(|v| match v {
            Val::Str(s) => py_repr(s),
            other => py_str(other),
        })),
    }
}

fn get<'a>(params: &'a [(String, Mixed)], name: &str) -> Option<&'a Mixed> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// Python's `dict(pairs)`: a repeated key keeps its first position and takes the last value.
fn naive_dict(pairs: &[(String, Val)]) -> Vec<(String, Val)> {
    let mut out: Vec<(String, Val)> = Vec::new();
    for (k, v) in pairs {
        match out.iter().position(|(key, _)| key == k) {
            Some(i) => out[i].1 = v.clone(),
            None => out.push((k.clone(), v.clone())),
        }
    }
    out
}

/// webob's query-string split, for text without `%` and `+`.
fn naive_query(raw: &str) -> Vec<(String, Val)> {
    let mut out = Vec::new();
    for chunk in raw.split('&') {
        for pair in chunk.split(';') {
            if pair.is_empty() {
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            out.push((k.to_string(), Val::Str(v.to_string())));
        }
    }
    out
}

fn naive_is_mac(s: &str) -> bool {
    let b: Vec<char> = s.chars().collect();
    b.len() == 17
        && (0..17).all(|i| {
            if i % 3 == 2 {
                b[i] == ':'
            } else {
                b[i].is_ascii_digit() || ('a'..='f').contains(&b[i])
            }
        })
}

fn bad(msg: &str) -> IronicError {
    IronicError::fault(400, msg)
}

// --- lookup -------------------------------------------------------------------------------

/// `GET /v1/lookup`'s checks, step by step as the spec lists them.
fn model_lookup(raw: &str, version: ApiVersion) -> Result<LookupQuery, IronicError> {
    let pairs = naive_query(raw);
    let method = pairs.iter().rev().find(|(k, _)| k == "_method");
    if let Some((_, v)) = method {
        match py_str(v).to_lowercase().as_str() {
            "get" | "get_all" => {}
            "delete" | "put" => return Err(IronicError::method_not_allowed(None)),
            _ => return Err(IronicError::method_not_allowed(Some("GET"))),
        }
    }
    let kept: Vec<(String, Val)> = pairs.into_iter().filter(|(k, _)| k != "self").collect();
    let params = naive_mixed(&kept);
    let unexpected: Vec<&str> = params
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| *k != "addresses" && *k != "node_uuid")
        .collect();
    if !unexpected.is_empty() {
        return Err(bad(&format!(
            "Unexpected arguments: {}",
            unexpected.join(", ")
        )));
    }
    // Every address given (a comma list's non-empty items, duplicates counted), and
    // string_list's result.
    let mut given: Vec<String> = vec![];
    let addresses: Vec<String> = match get(&params, "addresses") {
        None => vec![],
        Some(Mixed::Many(vs)) => {
            given = vs.iter().map(py_str).collect();
            given.clone()
        }
        Some(Mixed::One(v)) => {
            let mut items: Vec<String> = vec![];
            for part in py_str(v).split(',') {
                let norm = part.trim_matches([' ', '\t']).to_lowercase();
                if !norm.is_empty() {
                    given.push(norm.clone());
                }
                if !norm.is_empty() && !items.contains(&norm) {
                    items.push(norm);
                }
            }
            items
        }
    };
    let node_uuid = match get(&params, "node_uuid") {
        None => None,
        Some(Mixed::One(Val::Str(s))) if is_uuid_like(s) => Some(s.clone()),
        Some(m) => {
            return Err(bad(&format!(
                "Expected UUID for node_uuid: {}",
                mixed_str(m)
            )))
        }
    };
    if version < ApiVersion::new(1, 22) {
        return Err(resource_not_found());
    }
    let mut macs: Vec<String> = vec![];
    for a in addresses {
        let lower = a.to_lowercase();
        if naive_is_mac(&lower) && !macs.contains(&lower) {
            macs.push(lower);
        }
    }
    let addresses_given = given.len();
    let invalid_macs = given
        .iter()
        .filter(|a| !naive_is_mac(&a.to_lowercase()))
        .count();
    if macs.is_empty() && node_uuid.is_none() {
        return Err(bad(INCOMPLETE_LOOKUP));
    }
    // With a node_uuid, Ironic never reads the MACs.
    if node_uuid.is_some() {
        macs.clear();
    }
    Ok(LookupQuery {
        node_uuid,
        macs: macs
            .iter()
            .map(|m| Mac::parse(m).expect("valid MAC"))
            .collect(),
        addresses_given,
        invalid_macs,
    })
}

fn lookup_value() -> impl Strategy<Value = String> {
    let piece = select(vec![
        "52:54:00:12:34:56",
        "52:54:00:AB:cd:EF",
        " 52:54:00:00:00:01\t",
        "52-54-00-00-00-01",
        "52:54:00:00:00:0",
        "",
        "zz",
        UUID,
        "{808a5551-9a5d-4b12-bf3f-1389a674b400}",
        "not-a-uuid",
        "get",
        "GET_ALL",
        "put",
        "Delete",
        "post",
        "a=b",
    ]);
    prop::collection::vec(piece, 1..4).prop_map(|ps| ps.join(","))
}

fn lookup_query() -> impl Strategy<Value = String> {
    let name = select(vec![
        "addresses",
        "addresses",
        "node_uuid",
        "self",
        "_method",
        "foo",
        "Addresses",
        "",
    ]);
    let pair = (
        name,
        prop::option::of(lookup_value()),
        select(vec!["&", ";", "&&"]),
    );
    prop::collection::vec(pair, 0..7).prop_map(|pairs| {
        let mut q = String::new();
        for (k, v, sep) in pairs {
            if !q.is_empty() {
                q.push_str(sep);
            }
            q.push_str(k);
            if let Some(v) = v {
                q.push('=');
                q.push_str(&v);
            }
        }
        q
    })
}

fn version() -> impl Strategy<Value = ApiVersion> {
    select(vec![1u32, 21, 22, 36, 61, 62, 68, 72, 115]).prop_map(|m| ApiVersion::new(1, m))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn lookup_decision_equals_the_model(q in lookup_query(), v in version()) {
        prop_assert_eq!(check_lookup(Some(&q), v), model_lookup(&q, v), "query {:?}", q);
    }

    #[test]
    fn lookup_never_panics_on_any_bytes(q in "[ -~]{0,200}", v in version()) {
        let _ = check_lookup(Some(&q), v);
    }
}

// --- heartbeat ----------------------------------------------------------------------------

/// How the parameters travel.
#[derive(Clone, Copy, Debug)]
enum Encoding {
    Json,
    Javascript,
    Form,
    /// No `Content-Type`: a form too.
    Bare,
    /// `text/plain`: the body is ignored, everything is in the query string.
    QueryOnly,
}

impl Encoding {
    fn content_type(self) -> Option<&'static str> {
        match self {
            Encoding::Json => Some("application/json"),
            Encoding::Javascript => Some("application/javascript"),
            Encoding::Form => Some("application/x-www-form-urlencoded"),
            Encoding::Bare => None,
            Encoding::QueryOnly => Some("text/plain"),
        }
    }
    fn is_json(self) -> bool {
        matches!(self, Encoding::Json | Encoding::Javascript)
    }
}

/// `urlparse(u).geturl()` for the URLs generated here (checked against CPython in the unit
/// tests of `urlparse`), or `None` when the scheme has no `http` in it.
fn model_normalize(u: &str) -> Option<String> {
    match u {
        "https://1.2.3.4:9999" | "http://h" => Some(u.to_string()),
        "HTTPS://h:1/?" => Some("https://h:1/".into()),
        "" => Some(String::new()),
        _ => None,
    }
}

type Outcome = Result<(HeartbeatRequest, String), HeartbeatRejection>;

const FIELDS: [&str; 6] = [
    "callback_url",
    "agent_version",
    "agent_token",
    "agent_verify_ca",
    "agent_status",
    "agent_status_message",
];

/// `POST /v1/heartbeat/{ident}`'s API-side checks, in the order of the spec.
fn model_heartbeat(
    ident: &str,
    query: &[(String, Val)],
    body: &[(String, Val)],
    enc: Encoding,
    version: ApiVersion,
) -> Outcome {
    use HeartbeatRejection::{AfterNodeLookup, BeforeNodeLookup};
    let before = |m: &str| Err(BeforeNodeLookup(bad(m)));
    let body_params: Vec<(String, Val)> = match enc {
        Encoding::Json | Encoding::Javascript => naive_dict(body),
        Encoding::Form | Encoding::Bare => body.to_vec(),
        Encoding::QueryOnly => vec![],
    };
    // `_method`: the query string's last, else the form's last (never the JSON body's).
    let last_method = |ps: &[(String, Val)]| {
        ps.iter()
            .rev()
            .find(|(k, _)| k == "_method")
            .map(|(_, v)| py_str(v))
    };
    let method = last_method(query).or_else(|| match enc {
        Encoding::Form | Encoding::Bare => last_method(&body_params),
        _ => None,
    });
    if method.is_some_and(|m| m.to_lowercase() != "post") {
        return Err(BeforeNodeLookup(IronicError::method_not_allowed(Some(
            "POST",
        ))));
    }
    let all: Vec<(String, Val)> = query
        .iter()
        .chain(body_params.iter())
        .filter(|(k, _)| k != "self")
        .cloned()
        .collect();
    let params = naive_mixed(&all);
    let declared = |k: &str| k == "node_ident" || FIELDS.contains(&k);
    let unexpected: Vec<&str> = params
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !declared(k))
        .collect();
    if !unexpected.is_empty() {
        return before(&format!("Unexpected arguments: {}", unexpected.join(", ")));
    }
    let from_path = !ident.is_empty();
    let node: Option<String> = if from_path {
        Some(ident.to_string())
    } else {
        match get(&params, "node_ident") {
            None => return before("Missing mandatory parameter: node_ident"),
            Some(Mixed::One(Val::Null)) => None,
            Some(Mixed::One(Val::Str(s))) => Some(s.clone()),
            Some(m) => {
                return before(&format!(
                    "Expected UUID or name for node_ident: {}",
                    mixed_str(m)
                ))
            }
        }
    };
    if let Some(n) = &node {
        let name_ok = !n.is_empty()
            && n.len() <= 255
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c));
        if !name_ok && !is_uuid_like(n) {
            return before(&format!("Expected UUID or name for node_ident: {n}"));
        }
    }
    if get(&params, "callback_url").is_none() {
        return before("Missing mandatory parameter: callback_url");
    }
    let mut values: Vec<Option<String>> = vec![];
    for f in FIELDS {
        match get(&params, f) {
            None | Some(Mixed::One(Val::Null)) => values.push(None),
            Some(Mixed::One(Val::Str(s))) => values.push(Some(s.clone())),
            Some(m) => return before(&format!("Expected string for {f}: {}", mixed_str(m))),
        }
    }
    if from_path && get(&params, "node_ident").is_some() {
        return Err(BeforeNodeLookup(IronicError::fault(
            500,
            "HeartbeatController.post() got multiple values for argument 'node_ident'",
        )));
    }
    let request = HeartbeatRequest {
        node_ident: node.clone().unwrap_or_default(),
        callback_url: values[0].clone().unwrap_or_default(),
        agent_version: values[1].clone(),
        agent_token: values[2].clone(),
        agent_verify_ca: values[3].clone(),
        agent_status: values[4].clone(),
        agent_status_message: values[5].clone(),
    };
    if version < ApiVersion::new(1, 22) {
        return Err(BeforeNodeLookup(resource_not_found()));
    }
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    if set(&request.agent_version) && version < ApiVersion::new(1, 36) {
        return before("Field \"agent_version\" not recognised");
    }
    if (set(&request.agent_status) || set(&request.agent_status_message))
        && version < ApiVersion::new(1, 72)
    {
        return before("Fields \"agent_status\" and \"agent_status_message\" not recognised.");
    }
    if request.agent_verify_ca.is_some() && version < ApiVersion::new(1, 68) {
        return before("Field \"agent_verify_ca\" not recognised in this version");
    }
    if node.is_none() {
        return before("Expected a logical name or UUID but received None.");
    }
    let Some(url) = &values[0] else {
        return Err(AfterNodeLookup(IronicError::fault(
            500,
            "a bytes-like object is required, not 'str'",
        )));
    };
    let Some(normalized) = model_normalize(url) else {
        return Err(AfterNodeLookup(bad(
            "An issue with the supplied \"callback_url\" has been detected.",
        )));
    };
    if request.agent_token.is_none() {
        return Err(AfterNodeLookup(bad(
            "Agent token is required for heartbeat processing.",
        )));
    }
    if let Some(s) = &request.agent_status {
        if !["start", "end", "error"].contains(&s.as_str()) {
            return Err(AfterNodeLookup(bad(
                "Agent status is invalid. Valid states are start,end,error.",
            )));
        }
    }
    Ok((request, normalized))
}

/// Mostly the declared fields (so that many cases get past the argument checks), sometimes
/// the names Ironic refuses or treats apart.
fn heartbeat_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        4 => select(vec!["callback_url", "agent_token"]),
        3 => select(vec![
            "agent_version",
            "agent_verify_ca",
            "agent_status",
            "agent_status_message",
        ]),
        1 => select(vec!["node_ident", "self", "_method", "foo"]),
    ]
}

fn heartbeat_str() -> impl Strategy<Value = String> {
    select(vec![
        "https://1.2.3.4:9999",
        "HTTPS://h:1/?",
        "http://h",
        "ftp://x",
        "",
        "tok",
        "13.0.0",
        "start",
        "error",
        "bogus",
        "post",
        "get",
        UUID,
        "node-1",
        "BAD!",
    ])
    .prop_map(str::to_string)
}

fn heartbeat_value(json: bool) -> BoxedStrategy<Val> {
    if json {
        prop_oneof![
            4 => heartbeat_str().prop_map(Val::Str),
            1 => Just(Val::Null),
            1 => (-5i64..100).prop_map(Val::Int),
            1 => prop::collection::vec(heartbeat_str(), 0..3).prop_map(Val::List),
        ]
        .boxed()
    } else {
        heartbeat_str().prop_map(Val::Str).boxed()
    }
}

fn pairs(json: bool, max: usize) -> impl Strategy<Value = Vec<(String, Val)>> {
    prop::collection::vec(
        (
            heartbeat_name().prop_map(str::to_string),
            heartbeat_value(json),
        ),
        0..max,
    )
}

fn encoding() -> impl Strategy<Value = Encoding> {
    select(vec![
        Encoding::Json,
        Encoding::Javascript,
        Encoding::Form,
        Encoding::Bare,
        Encoding::QueryOnly,
    ])
}

fn json_value(v: &Val) -> String {
    match v {
        Val::Str(s) => format!("\"{s}\""),
        Val::Null => "null".into(),
        Val::Int(i) => i.to_string(),
        Val::List(items) => format!(
            "[{}]",
            items
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn urlencoded(ps: &[(String, Val)], sep: &str) -> String {
    ps.iter()
        .map(|(k, v)| format!("{k}={}", py_str(v)))
        .collect::<Vec<_>>()
        .join(sep)
}

fn encode_body(ps: &[(String, Val)], enc: Encoding) -> String {
    match enc {
        Encoding::Json | Encoding::Javascript => format!(
            "{{{}}}",
            ps.iter()
                .map(|(k, v)| format!("\"{k}\": {}", json_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Encoding::Form | Encoding::Bare => urlencoded(ps, "&"),
        Encoding::QueryOnly => "ignored body".into(),
    }
}

/// A heartbeat case: encoding, query pairs, body pairs, path ident, version.
type HeartbeatCase = (
    Encoding,
    Vec<(String, Val)>,
    Vec<(String, Val)>,
    &'static str,
    ApiVersion,
);

fn heartbeat_case() -> impl Strategy<Value = HeartbeatCase> {
    // Most bodies start like an agent's (a callback_url and a token), then random pairs.
    let agent_like = prop::option::weighted(
        0.7,
        (
            select(vec![
                "https://1.2.3.4:9999",
                "HTTPS://h:1/?",
                "http://h",
                "ftp://x",
                "",
            ]),
            select(vec!["tok", ""]),
        ),
    );
    encoding().prop_flat_map(move |enc| {
        (
            Just(enc),
            pairs(false, 3),
            (agent_like.clone(), pairs(enc.is_json(), 4)).prop_map(|(base, extra)| {
                let mut body: Vec<(String, Val)> = match base {
                    Some((url, token)) => vec![
                        ("callback_url".into(), Val::Str(url.into())),
                        ("agent_token".into(), Val::Str(token.into())),
                    ],
                    None => vec![],
                };
                body.extend(extra);
                body
            }),
            select(vec![UUID, UUID, UUID, "node-1", "BAD!", ""]),
            version(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn heartbeat_decision_equals_the_model(case in heartbeat_case()) {
        let (enc, query, body, ident, v) = case;
        let raw_query = urlencoded(&query, "&");
        let raw_body = encode_body(&body, enc);
        let got = check_heartbeat(
            ident,
            Some(&raw_query).filter(|q| !q.is_empty()).map(String::as_str),
            enc.content_type(),
            raw_body.as_bytes(),
            v,
        )
        .map(|c| (c.request, c.normalized_callback_url));
        let want = model_heartbeat(ident, &query, &body, enc, v);
        prop_assert_eq!(got, want, "{:?} query {:?} body {:?}", enc, raw_query, raw_body);
    }

    #[test]
    fn heartbeat_never_panics_on_any_body(
        body in prop::collection::vec(any::<u8>(), 0..300),
        ct in select(vec![
            "application/json",
            "application/javascript",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=B",
            "application/json; charset=utf-16",
            "application/json; charset=latin-1",
            "text/plain",
        ]),
        q in "[ -~]{0,40}",
    ) {
        let _ = check_heartbeat(UUID, Some(&q), Some(ct), &body, ApiVersion::new(1, 68));
    }

    #[test]
    fn heartbeat_never_panics_on_json_like_text(body in r#"[{}\[\]":,0-9a-z\\ ]{0,200}"#) {
        let _ = check_heartbeat(UUID, None, Some("application/javascript"), body.as_bytes(), ApiVersion::new(1, 68));
    }
}

// --- version headers ----------------------------------------------------------------------

/// Python's `int()` of a short text: blanks around, one sign, digits with single `_` between.
fn naive_int(s: &str) -> Option<i128> {
    let t = s.trim_matches([' ', '\t']);
    let (neg, body) = match t.chars().next() {
        Some('-') => (true, &t[1..]),
        Some('+') => (false, &t[1..]),
        _ => (false, t),
    };
    if body.is_empty()
        || body.starts_with('_')
        || body.ends_with('_')
        || body.contains("__")
        || !body.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return None;
    }
    let digits = body.replace('_', "");
    if digits.len() > 4300 {
        return None; // CPython 3.11's int() limit
    }
    let v: i128 = digits.parse().ok()?;
    Some(if neg { -v } else { v })
}

/// `microversion_parse` + Ironic's `Version.parse_headers`, for short header values.
fn model_version(standard: Option<&str>, legacy: Option<&str>) -> Result<ApiVersion, IronicError> {
    let mut found: Option<String> = None;
    if let Some(st) = standard {
        for entry in st.split(',').rev() {
            let entry = entry.trim_matches([' ', '\t']);
            let mut parts = entry.splitn(2, [' ', '\t']);
            let service = parts.next().unwrap_or("");
            let Some(rest) = parts.next() else { continue };
            let rest = rest.trim_matches([' ', '\t']);
            if rest.is_empty() {
                continue;
            }
            if service.to_lowercase() == "baremetal" {
                found = Some(rest.to_string());
                break;
            }
        }
    }
    if found.is_none() {
        found = legacy.map(|l| {
            l.split(',')
                .next_back()
                .unwrap_or("")
                .trim_matches([' ', '\t'])
                .to_string()
        });
    }
    let mut text = match found {
        Some(f) if !f.is_empty() => f,
        _ => "1.1".to_string(),
    };
    if text.to_lowercase() == "latest" {
        text = "1.115".into();
    }
    let invalid = IronicError::framework(
        406,
        "Not Acceptable",
        "Invalid value for X-OpenStack-Ironic-API-Version header",
        HeaderSet::None,
    );
    let Some((a, b)) = text.split_once('.') else {
        return Err(invalid);
    };
    let (Some(major), Some(minor)) = (naive_int(a), naive_int(b)) else {
        return Err(invalid);
    };
    if major != 1 {
        return Err(IronicError::framework(
            406,
            "Not Acceptable",
            &format!(
                "Mutually exclusive versions requested. Version {major}.{minor} requested but not supported by this service. The supported version range is: [1.1, 1.115]."
            ),
            HeaderSet::RangeOnly,
        ));
    }
    if !(1..=115).contains(&minor) {
        return Err(IronicError::framework(
            406,
            "Not Acceptable",
            &format!(
                "Version {major}.{minor} was requested but the minor version is not supported by this service. The supported version range is: [1.1, 1.115]."
            ),
            HeaderSet::RangeOnly,
        ));
    }
    Ok(ApiVersion::new(1, minor as u32))
}

fn version_text() -> impl Strategy<Value = &'static str> {
    select(vec![
        "1.22", "1.68", "1.999", "2.1", "0.9", "latest", "LaTeSt", " 1 . 50 ", "01.022", "1.2_2",
        "1.2__2", "1._2", "x", "", "1.-0", "-1.5", "+1.+5", "1", "1.0", "1.115", "1.116",
    ])
}

fn standard_header() -> impl Strategy<Value = String> {
    let service = select(vec!["baremetal", "BareMetal", "compute", ""]);
    let entry = (service, version_text(), select(vec![" ", "  ", "\t"]))
        .prop_map(|(s, v, sp)| format!("{s}{sp}{v}"));
    prop::collection::vec(entry, 1..4).prop_map(|es| es.join(", "))
}

fn legacy_header() -> impl Strategy<Value = String> {
    prop::collection::vec(version_text(), 1..3).prop_map(|vs| vs.join(","))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn version_decision_equals_the_model(
        standard in prop::option::of(standard_header()),
        legacy in prop::option::of(legacy_header()),
    ) {
        prop_assert_eq!(
            negotiate_values(standard.as_deref(), legacy.as_deref(), &RANGE),
            model_version(standard.as_deref(), legacy.as_deref()),
            "standard {:?} legacy {:?}", standard, legacy
        );
    }

    #[test]
    fn version_never_panics_on_any_header(
        standard in prop::option::of("[ -~\u{80}-\u{ff}]{0,60}"),
        legacy in prop::option::of("[ -~\u{80}-\u{ff}]{0,60}"),
    ) {
        let _ = negotiate_values(standard.as_deref(), legacy.as_deref(), &RANGE);
    }
}

// --- malformed-input corpus ---------------------------------------------------------------

/// The status a check gave (`None`: passed every API-side check).
fn status_of<T>(r: Result<T, IronicError>) -> Option<u16> {
    r.err().map(|e| e.status)
}

fn heartbeat_status(ct: &str, body: &[u8]) -> Option<u16> {
    status_of(
        check_heartbeat(UUID, None, Some(ct), body, ApiVersion::new(1, 68)).map_err(|r| match r {
            HeartbeatRejection::BeforeNodeLookup(e) | HeartbeatRejection::AfterNodeLookup(e) => e,
        }),
    )
}

/// Every file of `tests/corpus/` gets the status its name announces (see its README).
#[test]
fn corpus_gets_ironics_answers() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut checked = 0;
    let mut wrong = Vec::new();
    for dir in std::fs::read_dir(&root).expect("tests/corpus") {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let kind = dir.file_name().unwrap().to_string_lossy().into_owned();
        for file in std::fs::read_dir(&dir).unwrap() {
            let path = file.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let data = std::fs::read(&path).unwrap();
            let expected = match name.split('-').next() {
                Some("ok") => None,
                Some(code) => Some(code.parse::<u16>().unwrap_or_else(|_| panic!("{name}"))),
                None => panic!("{name}"),
            };
            let latin1: String = data.iter().map(|&b| b as char).collect();
            let got = match kind.as_str() {
                "lookup" => status_of(check_lookup(Some(&latin1), ApiVersion::new(1, 62))),
                "heartbeat-json" => heartbeat_status("application/json", &data),
                "heartbeat-js" => heartbeat_status("application/javascript", &data),
                "heartbeat-form" => heartbeat_status("application/x-www-form-urlencoded", &data),
                "heartbeat-multipart" => heartbeat_status("multipart/form-data; boundary=B", &data),
                "version" => status_of(negotiate_values(None, Some(&latin1), &RANGE)),
                other => panic!("unknown corpus folder {other}"),
            };
            if got != expected {
                wrong.push(format!("{kind}/{name}: got {got:?}, expected {expected:?}"));
            }
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} corpus files");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
