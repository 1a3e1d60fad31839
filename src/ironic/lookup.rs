//! `GET /v1/lookup`: argument validation in Ironic's order (spec 1.2, steps 1-7).

use super::error::{resource_not_found, IronicError};
use super::ident::{is_uuid_like, Mac};
use super::params::{mixed, parse_query};
use super::pyjson::PyValue;
use super::version::{py_strip, ApiVersion, RAMDISK_ENDPOINTS};
use super::work::step;
use std::collections::HashSet;

/// A lookup request that passed every API-side check. Compact: whatever the length of the
/// caller's list, it holds 7 bytes per distinct valid MAC and nothing of the invalid ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupQuery {
    /// `node_uuid` exactly as supplied (Ironic matches it verbatim); when present it alone decides.
    pub node_uuid: Option<String>,
    /// The valid MACs, de-duplicated, in the order given; none when a `node_uuid` is given
    /// (Ironic then never reads them).
    pub macs: Vec<Mac>,
    /// How many addresses were given, valid or not (a comma list's non-empty items,
    /// duplicates counted).
    pub addresses_given: usize,
    /// How many of them are no MAC: Ironic drops them (and logs them).
    pub invalid_macs: usize,
}

impl LookupQuery {
    /// A key that is equal for requests Ironic answers identically: `uuid:<node_uuid>` when a
    /// `node_uuid` is given, else `macs:<sorted valid macs joined by ','>`.
    pub fn cache_key(&self) -> String {
        match &self.node_uuid {
            Some(u) => format!("uuid:{u}"),
            None => {
                let mut macs = self.macs.clone();
                macs.sort_unstable();
                macs.dedup();
                let mut key = String::with_capacity(5 + 18 * macs.len());
                key.push_str("macs:");
                for (i, m) in macs.iter().enumerate() {
                    if i > 0 {
                        key.push(',');
                    }
                    m.write_to(&mut key);
                }
                key
            }
        }
    }
}

/// The addresses of a lookup as they are read: the distinct valid MACs in the order given
/// (if kept), how many addresses were given and how many were no MAC.
#[derive(Default)]
struct Macs {
    keep: bool,
    macs: Vec<Mac>,
    seen: HashSet<Mac>,
    given: usize,
    invalid: usize,
}

impl Macs {
    fn take(&mut self, address: &str) {
        step();
        self.given += 1;
        match Mac::parse(address) {
            Some(m) if self.keep => {
                if self.seen.insert(m) {
                    self.macs.push(m);
                }
            }
            Some(_) => {}
            None => self.invalid += 1,
        }
    }
}

/// A parameter's value as Python's `str()` gives it (a string as it is, without a copy).
fn py_str(v: &PyValue) -> std::borrow::Cow<'_, str> {
    match v {
        PyValue::Str(s) => std::borrow::Cow::Borrowed(s.as_str()),
        other => std::borrow::Cow::Owned(other.to_py_str()),
    }
}

/// The 400 when neither a valid MAC nor a `node_uuid` is left.
pub const INCOMPLETE_LOOKUP: &str =
    "At least one of 'addresses' and 'node_uuid' parameters is required";

/// The `Allow` value of `GET /v1/lookup`'s 405s.
pub const ALLOW: &str = "GET";

/// Runs every API-side check of a lookup, in Ironic's order: unknown arguments (400),
/// `node_uuid` format (400), `addresses` parsing (single comma list, or repeated parameters kept
/// as given), version below 1.22 (404), then MAC filtering and "At least one of 'addresses' and
/// 'node_uuid' parameters is required" (400). `raw_query` is the undecoded query string.
///
/// Before those, as pecan does while routing (version negotiation, which comes first, is the
/// caller's): a query string that is not UTF-8 after percent-decoding gives the framework 400
/// `{"code": 400, "title": "Bad Request", "description": ""}` without version headers, and a
/// `_method` parameter (its last value, lower-cased) re-routes the request: `get` and
/// `get_all` route normally (then `_method` is an unexpected argument), `delete` and `put` give
/// a 405 without `Allow`, anything else a 405 with `Allow: GET`.
///
/// Argument details (all verified against Ironic 39.0.0):
/// - A parameter named `self` is silently dropped by pecan.
/// - Several unknown names are joined with `, ` in order of first appearance (Ironic joins a
///   Python `set`, whose order changes with each process's hash seed).
/// - A repeated `node_uuid` is a list: `Expected UUID for node_uuid: ['a', 'b']`.
/// - A repeated `addresses` is a list whose items are not split, stripped or lower-cased
///   (`52:54:00:00:00:01,52:54:00:00:00:02` as one item is invalid); a single one is split on
///   `,`, items stripped (Python `str.strip()`) and lower-cased, empty ones dropped, duplicates
///   removed.
/// - MAC validity is `netutils.is_valid_mac` ([`Mac::parse`]); a MAC with one trailing
///   newline (only possible in the repeated form) counts as valid but matches no port.
pub fn check_lookup(
    raw_query: Option<&str>,
    version: ApiVersion,
) -> Result<LookupQuery, IronicError> {
    if let Some(addresses) = raw_query.and_then(plain_addresses) {
        // IPA's own lookups: nothing to decode, split or mix, so Ironic's argument handling
        // ends with this one string (a property test holds this against the general path).
        if version < RAMDISK_ENDPOINTS {
            return Err(resource_not_found());
        }
        let mut found = Macs {
            keep: true,
            ..Macs::default()
        };
        take_string_list(&mut found, addresses);
        return finish(None, found);
    }
    let query = parse_query(raw_query.unwrap_or(""))?;
    if let Some((_, m)) = query.iter().rev().find(|(k, _)| k == "_method") {
        match m.to_lowercase().as_str() {
            "get" | "get_all" => {}
            "delete" | "put" => return Err(IronicError::method_not_allowed(None)),
            _ => return Err(IronicError::method_not_allowed(Some(ALLOW))),
        }
    }
    let params = mixed(
        query
            .into_iter()
            .filter(|(k, _)| k != "self")
            .map(|(k, v)| (k, PyValue::Str(v)))
            .collect(),
    );
    let unexpected: Vec<&str> = params
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| *k != "addresses" && *k != "node_uuid")
        .collect();
    if !unexpected.is_empty() {
        return Err(IronicError::fault(
            400,
            &format!("Unexpected arguments: {}", unexpected.join(", ")),
        ));
    }
    let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v);

    // args.uuid
    let node_uuid = match get("node_uuid") {
        None => None,
        Some(PyValue::Str(s)) if is_uuid_like(s) => Some(s.clone()),
        Some(v) => {
            return Err(IronicError::fault(
                400,
                &format!("Expected UUID for node_uuid: {}", v.to_py_str()),
            ))
        }
    };

    if version < RAMDISK_ENDPOINTS {
        return Err(resource_not_found());
    }

    // args.string_list (a list is kept item by item, a string is split on `,`, its items
    // stripped and lower-cased, empty ones dropped), then get_valid_mac_addresses. Nothing
    // above depends on the addresses (string_list takes any string), so they are read here,
    // in one pass, keeping only the distinct valid MACs (7 bytes each): duplicates, which
    // string_list drops, are the same MAC. With a node_uuid they are only counted.
    let keep = node_uuid.is_none();
    let mut found = Macs {
        keep,
        ..Macs::default()
    };
    match get("addresses") {
        None => {}
        Some(PyValue::List(items)) => {
            for item in items {
                found.take(&py_str(item));
            }
        }
        Some(v) => take_string_list(&mut found, &py_str(v)),
    }
    finish(node_uuid, found)
}

/// The value of a query that is `addresses=` and letters, digits, `:`, `,`, `-` and `.` only
/// (nothing webob would decode or split, nothing `string_list` strips).
fn plain_addresses(raw_query: &str) -> Option<&str> {
    let value = raw_query.strip_prefix("addresses=")?;
    value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b',' | b'-' | b'.'))
        .then_some(value)
}

/// `args.string_list` of a string (split on `,`, items stripped, empty ones dropped), each
/// item offered to `found`.
fn take_string_list(found: &mut Macs, value: &str) {
    for part in value.split(',') {
        let item = py_strip(part);
        if item.is_empty() {
            step();
            continue;
        }
        // Lower-casing decides nothing here: `Mac::parse` ignores ASCII case, and an item
        // with a non-ASCII character is no MAC whatever its case.
        found.take(item);
    }
}

/// Unused places a lookup's MAC list may keep (7 bytes each).
const SPARE_MACS: usize = 8;

/// The lookup, once its MACs are read: Ironic's 400 when it names nothing valid.
fn finish(node_uuid: Option<String>, found: Macs) -> Result<LookupQuery, IronicError> {
    let Macs {
        mut macs,
        given: addresses_given,
        invalid: invalid_macs,
        ..
    } = found;
    if macs.is_empty() && node_uuid.is_none() {
        return Err(IronicError::fault(400, INCOMPLETE_LOOKUP));
    }
    // What a long list left unused is given back (a lookup may wait for Ironic holding it);
    // a few spare places are not worth a reallocation on every lookup.
    if macs.capacity() > macs.len() + SPARE_MACS {
        macs.shrink_to_fit();
    }
    Ok(LookupQuery {
        node_uuid,
        macs,
        addresses_given,
        invalid_macs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V62: ApiVersion = ApiVersion::new(1, 62);
    const U: &str = "a35f58fb-a7bd-47fa-a6f4-03544656895c";

    fn msg(q: &str, v: ApiVersion) -> String {
        let e = check_lookup(Some(q), v).unwrap_err();
        assert_eq!(e.status, 400, "{q}");
        e.message()
    }

    fn ok(q: &str) -> LookupQuery {
        check_lookup(Some(q), V62).unwrap()
    }

    /// The valid MACs as strings.
    fn macs(l: &LookupQuery) -> Vec<String> {
        l.macs.iter().map(Mac::to_string).collect()
    }

    #[test]
    fn unexpected_arguments() {
        assert_eq!(msg("foo=1", V62), "Unexpected arguments: foo");
        assert_eq!(
            msg("foo=1&bar=2&foo=3", V62),
            "Unexpected arguments: foo, bar"
        );
        assert_eq!(msg("=x", V62), "Unexpected arguments: ");
        assert_eq!(msg("x%=1", V62), "Unexpected arguments: x%");
        assert_eq!(
            msg("addresses=52:54:00:00:00:01;foo=1", V62),
            "Unexpected arguments: foo"
        );
        assert_eq!(msg("addresses+=x", V62), "Unexpected arguments: addresses ");
        // Before the node_uuid check and the version check.
        assert_eq!(msg("node_uuid=abc&foo=1", V62), "Unexpected arguments: foo");
        assert_eq!(
            msg("foo=1", ApiVersion::new(1, 1)),
            "Unexpected arguments: foo"
        );
        let e = check_lookup(Some("foo=1"), V62).unwrap_err();
        assert_eq!(
            e.body,
            r#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"Unexpected arguments: foo\", \"debuginfo\": null}"}"#
        );
        assert_eq!(e.headers, crate::ironic::HeaderSet::Versions);
    }

    #[test]
    fn self_is_dropped() {
        assert_eq!(msg("self=1", V62), INCOMPLETE_LOOKUP);
        assert_eq!(
            macs(&ok("self=1&addresses=52:54:00:00:00:01")),
            vec!["52:54:00:00:00:01"]
        );
    }

    #[test]
    fn node_uuid_validation() {
        assert_eq!(msg("node_uuid=", V62), "Expected UUID for node_uuid: ");
        assert_eq!(
            msg("node_uuid=abc", V62),
            "Expected UUID for node_uuid: abc"
        );
        assert_eq!(
            msg("node_uuid=%C3%A9", V62),
            "Expected UUID for node_uuid: é"
        );
        assert_eq!(
            msg("addresses=zz&node_uuid=abc", V62),
            "Expected UUID for node_uuid: abc"
        );
        assert_eq!(
            msg("node_uuid=a&node_uuid=b", V62),
            "Expected UUID for node_uuid: ['a', 'b']"
        );
        assert_eq!(
            msg("node_uuid=&node_uuid=", V62),
            "Expected UUID for node_uuid: ['', '']"
        );
        assert_eq!(
            msg(&format!("node_uuid={U}&node_uuid={U}"), V62),
            format!("Expected UUID for node_uuid: ['{U}', '{U}']")
        );
        assert_eq!(
            msg("node_uuid=it's", V62),
            "Expected UUID for node_uuid: it's"
        );
        assert_eq!(
            msg("node_uuid=it's&node_uuid=x", V62),
            "Expected UUID for node_uuid: [\"it's\", 'x']"
        );
        // Format errors come before the version check.
        assert_eq!(
            msg("node_uuid=abc", ApiVersion::new(1, 1)),
            "Expected UUID for node_uuid: abc"
        );
        // Accepted forms are kept verbatim.
        let up = U.to_uppercase();
        assert_eq!(
            ok(&format!("node_uuid={up}")).node_uuid.as_deref(),
            Some(up.as_str())
        );
        assert_eq!(
            ok("node_uuid=%7Ba35f58fba7bd47faa6f403544656895c%7D")
                .node_uuid
                .as_deref(),
            Some("{a35f58fba7bd47faa6f403544656895c}")
        );
    }

    #[test]
    fn version_gate_after_arguments() {
        for q in [
            "",
            "addresses=52:54:00:00:00:01",
            "node_uuid=a35f58fb-a7bd-47fa-a6f4-03544656895c",
            "addresses=",
        ] {
            let e = check_lookup(Some(q), ApiVersion::new(1, 21)).unwrap_err();
            assert_eq!(e.status, 404);
            assert_eq!(e.message(), "Resource could not be found.");
        }
        assert_eq!(
            check_lookup(None, ApiVersion::new(1, 1))
                .unwrap_err()
                .status,
            404
        );
        assert!(check_lookup(Some("addresses=52:54:00:00:00:01"), ApiVersion::new(1, 22)).is_ok());
    }

    #[test]
    fn incomplete_lookup() {
        for q in [
            "",
            "addresses=",
            "addresses=meow",
            "addresses",
            "addresses=,,,",
            "addresses=52-54-00-00-00-01",
        ] {
            assert_eq!(msg(q, V62), INCOMPLETE_LOOKUP, "{q}");
        }
        assert_eq!(
            check_lookup(None, V62).unwrap_err().message(),
            INCOMPLETE_LOOKUP
        );
        let e = check_lookup(None, V62).unwrap_err();
        assert_eq!(
            e.body,
            r#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"At least one of 'addresses' and 'node_uuid' parameters is required\", \"debuginfo\": null}"}"#
        );
    }

    #[test]
    fn comma_list() {
        let l = ok(
            "addresses=52%3A54%3A00%3A00%3A00%3A01%2CZZ%2C+52:54:00:00:00:0A+,,52:54:00:00:00:01",
        );
        assert_eq!(macs(&l), vec!["52:54:00:00:00:01", "52:54:00:00:00:0a"]);
        assert_eq!(l.invalid_macs, 1);
        assert_eq!(l.node_uuid, None);
        let l = ok("addresses=%2052:54:00:00:00:01%20");
        assert_eq!(macs(&l), vec!["52:54:00:00:00:01"]);
    }

    #[test]
    fn repeated_addresses_are_kept_as_given() {
        let l = ok("addresses=zz&addresses=52:54:00:00:00:01");
        assert_eq!(macs(&l), vec!["52:54:00:00:00:01"]);
        assert_eq!(l.invalid_macs, 1);
        assert_eq!(
            msg(
                "addresses=52:54:00:00:00:01,52:54:00:00:00:02&addresses=x",
                V62
            ),
            INCOMPLETE_LOOKUP
        );
        assert_eq!(
            msg("addresses=+52:54:00:00:00:01&addresses=x", V62),
            INCOMPLETE_LOOKUP
        );
        let l = ok("addresses=52:54:00:00:00:01%0A&addresses=x");
        assert_eq!(macs(&l), vec!["52:54:00:00:00:01\n"]);
        let l = ok("addresses=AA:BB:CC:DD:EE:FF&addresses=aa:bb:cc:dd:ee:ff");
        assert_eq!(macs(&l), vec!["aa:bb:cc:dd:ee:ff"]);
    }

    #[test]
    fn node_uuid_wins() {
        let l = ok(&format!("addresses=52:54:00:00:00:01&node_uuid={U}"));
        assert_eq!(l.node_uuid.as_deref(), Some(U));
        assert_eq!(l.cache_key(), format!("uuid:{U}"));
        // The addresses are counted, not kept: Ironic never reads them then.
        assert_eq!((l.macs.len(), l.addresses_given), (0, 1));
        let l = ok(&format!("addresses=meow&node_uuid={U}"));
        assert_eq!(macs(&l), Vec::<String>::new());
        assert_eq!(l.invalid_macs, 1);
    }

    #[test]
    fn cache_key_is_order_and_case_insensitive() {
        let a = ok("addresses=52:54:00:00:00:02,52:54:00:00:00:01");
        let b = ok("addresses=52:54:00:00:00:01&addresses=52:54:00:00:00:02&addresses=junk");
        let c = ok("addresses=52:54:00:00:00:01,52:54:00:00:00:02,52:54:00:00:00:01");
        assert_eq!(a.cache_key(), "macs:52:54:00:00:00:01,52:54:00:00:00:02");
        assert_eq!(a.cache_key(), b.cache_key());
        assert_eq!(a.cache_key(), c.cache_key());
    }

    #[test]
    fn decoding_and_method_override() {
        for q in ["addresses=%ff", "%ff=1", "node_uuid=%C3"] {
            let e = check_lookup(Some(q), V62).unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(e.headers, crate::ironic::HeaderSet::None);
            assert_eq!(e.message(), "");
        }
        // Even below 1.22.
        assert_eq!(
            check_lookup(Some("a=%ff"), ApiVersion::new(1, 1))
                .unwrap_err()
                .status,
            400
        );
        for q in ["_method=delete", "_method=put", "_method=PUT"] {
            let e = check_lookup(Some(q), V62).unwrap_err();
            assert_eq!((e.status, e.allow), (405, None), "{q}");
            assert_eq!(e.headers, crate::ironic::HeaderSet::None);
        }
        for q in [
            "_method=post",
            "_method=patch",
            "_method=head",
            "_method=foo",
            "_method=",
            "_method=get&_method=post",
            "_method=unknown_method",
        ] {
            let e = check_lookup(Some(q), V62).unwrap_err();
            assert_eq!((e.status, e.allow), (405, Some("GET")), "{q}");
        }
        for q in [
            "_method=get",
            "_method=GET",
            "_method=get_all",
            "_method=post&_method=get",
        ] {
            assert_eq!(msg(q, V62), "Unexpected arguments: _method", "{q}");
        }
        // The 405 comes before argument checks and the version check.
        assert_eq!(
            check_lookup(Some("foo=1&_method=post"), ApiVersion::new(1, 1))
                .unwrap_err()
                .status,
            405
        );
    }

    proptest::proptest! {
        /// A plain `addresses=` query takes the shortcut; the same query with an empty pair
        /// after it (which webob skips) takes the general path: both give Ironic's answer
        /// alike, errors included, at every version.
        #[test]
        fn the_plain_addresses_shortcut_agrees_with_the_general_path(
            value in "[0-9a-fA-Fg:,. -]{0,40}",
            minor in 0u32..100,
        ) {
            let v = ApiVersion::new(1, minor);
            let q = format!("addresses={value}");
            let general = check_lookup(Some(&format!("{q}&")), v);
            proptest::prop_assert_eq!(check_lookup(Some(&q), v), general);
        }
    }

    #[test]
    fn only_plain_addresses_take_the_shortcut() {
        assert_eq!(
            plain_addresses("addresses=52:54:00:aa:bb:cc,x"),
            Some("52:54:00:aa:bb:cc,x")
        );
        for q in [
            "addresses=a%3Ab",
            "addresses=a+b",
            "addresses=a&x=1",
            "node_uuid=1",
            "addresses=a;b",
        ] {
            assert_eq!(plain_addresses(q), None, "{q}");
        }
    }
}
