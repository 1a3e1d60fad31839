//! API microversions: request header parsing and negotiation (Ironic `base.Version`).

use super::error::{HeaderSet, IronicError};
use super::work::step;
use std::fmt;

/// An Ironic API microversion, `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiVersion {
    pub major: u32,
    pub minor: u32,
}

impl ApiVersion {
    pub const fn new(major: u32, minor: u32) -> Self {
        ApiVersion { major, minor }
    }
    /// Parses `"1.62"`; `None` for anything that is not `X.Y` with two decimal numbers (ASCII
    /// digits only, each fitting a `u32`). For request headers use [`negotiate`], which follows
    /// Python's more lenient `int()`.
    pub fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.split_once('.')?;
        let num = |t: &str| -> Option<u32> {
            if t.is_empty() || !t.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            t.parse().ok()
        };
        Some(ApiVersion::new(num(a)?, num(b)?))
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// No version header at all means 1.1.
pub const DEFAULT: ApiVersion = ApiVersion::new(1, 1);
/// `/v1/lookup` and `/v1/heartbeat` exist from here.
pub const RAMDISK_ENDPOINTS: ApiVersion = ApiVersion::new(1, 22);
pub const AGENT_VERSION_IN_HEARTBEAT: ApiVersion = ApiVersion::new(1, 36);
pub const AGENT_TOKEN: ApiVersion = ApiVersion::new(1, 62);
pub const VERIFY_CA_IN_HEARTBEAT: ApiVersion = ApiVersion::new(1, 68);
pub const STATUS_IN_HEARTBEAT: ApiVersion = ApiVersion::new(1, 72);

/// The range the upstream Ironic supports (learned from its `GET /`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionRange {
    pub min: ApiVersion,
    pub max: ApiVersion,
}

/// The request header carrying the legacy version.
pub const LEGACY_HEADER: &str = "x-openstack-ironic-api-version";
/// The standard microversion header (`OpenStack-API-Version: baremetal 1.62`).
pub const STANDARD_HEADER: &str = "openstack-api-version";
/// The service type in the standard header.
const SERVICE_TYPE: &str = "baremetal";

/// Negotiates the request's version from its headers exactly as Ironic does:
/// `OpenStack-API-Version: baremetal X.Y` wins over `X-OpenStack-Ironic-API-Version`,
/// `latest` (any case) means `range.max`, absent means 1.1. Errors are Ironic's 406s
/// (with or without the min/max headers, as Ironic sends them).
///
/// Details (`microversion_parse` 2.x and `ironic.api.controllers.base.Version`):
/// - Repeated headers are folded with `,` (as the WSGI server does); a header spelled with `_`
///   instead of `-` counts as the same header.
/// - Standard header: the comma-separated entries are scanned from the **last**; the last
///   `baremetal <version>` entry (service compared case-insensitively) wins. Entries naming
///   other services, or without a version, are skipped; if none names baremetal, the legacy
///   header is used.
/// - Legacy header: only the part after the **last** comma counts, stripped; an empty value
///   (`""`, `"1.50,"`) means the default, 1.1 (`range.min`).
/// - The value is split at the first `.` and each side goes through Python's `int()`: blanks
///   around a number, a `+`/`-` sign, leading zeros and single `_` between digits are accepted
///   (`" 1 . 22 "`, `"01.022"`, `"1.2_2"` all mean 1.22); anything else is the 406 "Invalid
///   value" without version headers.
/// - Major other than 1 → 406 "Mutually exclusive versions requested. Version 2.1 ...", minor
///   outside the range → 406 "Version 1.999 was requested but ..."; both carry the min/max
///   headers. The version in those messages is printed as Python prints the two integers
///   (`-1.5`, `1.99999999999999999999999`).
pub fn negotiate(
    headers: &http::HeaderMap,
    range: &VersionRange,
) -> Result<ApiVersion, IronicError> {
    if let Some(v) = plain_legacy_version(headers, range) {
        return Ok(v);
    }
    let standard = folded_header(headers, STANDARD_HEADER);
    let legacy = folded_header(headers, LEGACY_HEADER);
    negotiate_values(standard.as_deref(), legacy.as_deref(), range)
}

/// [`negotiate`] on the folded header values (latin-1 decoded), for callers without a
/// `HeaderMap`.
pub fn negotiate_values(
    standard: Option<&str>,
    legacy: Option<&str>,
    range: &VersionRange,
) -> Result<ApiVersion, IronicError> {
    let found = standard
        .and_then(check_standard_header)
        .or_else(|| legacy.map(|v| py_strip(v.rsplit(',').next().unwrap_or("")).to_string()));
    let version_str = match found {
        Some(v) if !v.is_empty() => v,
        _ => range.min.to_string(),
    };
    let version_str = if version_str.to_lowercase() == "latest" {
        range.max.to_string()
    } else {
        version_str
    };
    let (major, minor) = parse_py_version(&version_str).ok_or_else(invalid_header)?;
    let requested = format!("{major}.{minor}");
    if major != PyInt::from_u32(1) {
        return Err(IronicError::framework(
            406,
            "Not Acceptable",
            &format!(
                "Mutually exclusive versions requested. Version {requested} requested but not \
                 supported by this service. The supported version range is: [{}, {}].",
                range.min, range.max
            ),
            HeaderSet::RangeOnly,
        ));
    }
    // Ironic compares (major, minor) tuples against its own min and max.
    let v = (major.clone(), minor.clone());
    let min = (
        PyInt::from_u32(range.min.major),
        PyInt::from_u32(range.min.minor),
    );
    let max = (
        PyInt::from_u32(range.max.major),
        PyInt::from_u32(range.max.minor),
    );
    let below = cmp_pair(&v, &min) == std::cmp::Ordering::Less;
    let above = cmp_pair(&v, &max) == std::cmp::Ordering::Greater;
    let in_range = minor.as_u32().filter(|_| !below && !above);
    match in_range {
        Some(m) => Ok(ApiVersion::new(1, m)),
        None => Err(IronicError::framework(
            406,
            "Not Acceptable",
            &format!(
                "Version {requested} was requested but the minor version is not supported by \
                 this service. The supported version range is: [{}, {}].",
                range.min, range.max
            ),
            HeaderSet::RangeOnly,
        )),
    }
}

fn invalid_header() -> IronicError {
    IronicError::framework(
        406,
        "Not Acceptable",
        "Invalid value for X-OpenStack-Ironic-API-Version header",
        HeaderSet::None,
    )
}

/// What an agent sends, answered without the general parse (which allocates a dozen times):
/// one legacy header of plain digits `X.Y` (at most 4 each), no standard header, a major of
/// 1 and a minor within `range`. `None` for anything else, which [`negotiate`] then parses as
/// Ironic does; where this answers, that parse gives the same version (a property test holds
/// them together).
fn plain_legacy_version(headers: &http::HeaderMap, range: &VersionRange) -> Option<ApiVersion> {
    let mut legacy = None;
    for (k, v) in headers.iter() {
        step();
        if same_header(k.as_str(), STANDARD_HEADER) {
            return None;
        }
        if same_header(k.as_str(), LEGACY_HEADER) {
            if legacy.is_some() {
                return None;
            }
            legacy = Some(v.as_bytes());
        }
    }
    let (major, minor) = split_plain_version(legacy?)?;
    let v = ApiVersion::new(major, minor);
    (major == 1 && range.min <= v && v <= range.max).then_some(v)
}

/// `X.Y` of ASCII digits, 1 to 4 each.
fn split_plain_version(value: &[u8]) -> Option<(u32, u32)> {
    let dot = value.iter().position(|&b| b == b'.')?;
    let number = |t: &[u8]| -> Option<u32> {
        if t.is_empty() || t.len() > 4 || !t.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(t.iter().fold(0, |n, &d| n * 10 + u32::from(d - b'0')))
    };
    Some((number(&value[..dot])?, number(&value[dot + 1..])?))
}

/// A header name as the WSGI server sees it: `_` and `-` are the same.
fn same_header(k: &str, name: &str) -> bool {
    k.len() == name.len()
        && k.bytes()
            .zip(name.bytes())
            .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
}

/// All values of a header (its `_` spelling included), latin-1 decoded, joined with `,`.
fn folded_header(headers: &http::HeaderMap, name: &str) -> Option<String> {
    let mut values: Vec<String> = Vec::new();
    for (k, v) in headers.iter() {
        step();
        if same_header(k.as_str(), name) {
            values.push(v.as_bytes().iter().map(|&b| b as char).collect());
        }
    }
    if values.is_empty() {
        None
    } else {
        Some(values.join(","))
    }
}

/// Python's `str.isspace()`.
pub(crate) fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()` without arguments.
pub(crate) fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// `microversion_parse.check_standard_header` for the `baremetal` service.
fn check_standard_header(value: &str) -> Option<String> {
    for entry in value.rsplit(',') {
        step();
        let entry = py_strip(entry);
        // `entry.split(None, 1)` must give exactly two parts.
        let Some(pos) = entry.find(py_isspace) else {
            continue;
        };
        let service = &entry[..pos];
        let version = entry[pos..].trim_start_matches(py_isspace);
        if version.is_empty() {
            continue;
        }
        if service.to_lowercase() == SERVICE_TYPE {
            return Some(py_strip(version).to_string());
        }
    }
    None
}

/// An integer as Python's `int()` produced it: sign and canonical decimal digits.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PyInt {
    negative: bool,
    digits: String,
}

impl PyInt {
    fn from_u32(v: u32) -> Self {
        PyInt {
            negative: false,
            digits: v.to_string(),
        }
    }

    fn as_u32(&self) -> Option<u32> {
        if self.negative {
            None
        } else {
            self.digits.parse().ok()
        }
    }
}

impl fmt::Display for PyInt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negative {
            write!(f, "-{}", self.digits)
        } else {
            f.write_str(&self.digits)
        }
    }
}

impl Ord for PyInt {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        let mag = |a: &PyInt, b: &PyInt| {
            a.digits
                .len()
                .cmp(&b.digits.len())
                .then_with(|| a.digits.cmp(&b.digits))
        };
        match (self.negative, other.negative) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => mag(self, other),
            (true, true) => mag(other, self),
        }
    }
}

impl PartialOrd for PyInt {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

fn cmp_pair(a: &(PyInt, PyInt), b: &(PyInt, PyInt)) -> std::cmp::Ordering {
    a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1))
}

/// The blanks Python's `int()` strips (for the latin-1 range header values can hold).
fn int_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{85}' | '\u{a0}'
    ) || (c as u32 > 0xff && c.is_whitespace())
}

/// `sys.int_info.default_max_str_digits`.
const MAX_INT_DIGITS: usize = 4300;

/// Python's `int(s)` (base 10).
fn parse_py_int(s: &str) -> Option<PyInt> {
    let s = s.trim_matches(int_space);
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let b = body.as_bytes();
    if b.is_empty() || !b[0].is_ascii_digit() || !b[b.len() - 1].is_ascii_digit() {
        return None;
    }
    let mut digits = String::with_capacity(b.len());
    let mut prev_underscore = false;
    for &c in b {
        step();
        if c == b'_' {
            if prev_underscore {
                return None;
            }
            prev_underscore = true;
        } else if c.is_ascii_digit() {
            prev_underscore = false;
            digits.push(c as char);
        } else {
            return None;
        }
    }
    // CPython 3.11's `int()` refuses longer numbers (`ValueError`, "Exceeds the limit (4300
    // digits)"), leading zeros included, underscores not: Ironic's "Invalid value" 406.
    if digits.len() > MAX_INT_DIGITS {
        return None;
    }
    let trimmed = digits.trim_start_matches('0');
    let digits = if trimmed.is_empty() { "0" } else { trimmed }.to_string();
    Some(PyInt {
        negative: negative && digits != "0",
        digits,
    })
}

/// `microversion_parse.parse_version_string`: `int()` of both sides of the first `.`.
fn parse_py_version(s: &str) -> Option<(PyInt, PyInt)> {
    let (a, b) = s.split_once('.')?;
    Some((parse_py_int(a)?, parse_py_int(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderName, HeaderValue};

    const R: VersionRange = VersionRange {
        min: ApiVersion::new(1, 1),
        max: ApiVersion::new(1, 115),
    };
    const V: &str = "X-OpenStack-Ironic-API-Version";
    const S: &str = "OpenStack-API-Version";

    #[test]
    fn int_digit_limit_like_cpython() {
        // (text, int() succeeds) from CPython 3.11.7.
        let cases = [
            ("1".repeat(4300), true),
            ("1".repeat(4301), false),
            ("0".repeat(4301), false),
            (format!("{}1", "0".repeat(4300)), false),
            (format!("{}1", "1_".repeat(2150)), true),
            (format!(" -{} ", "1".repeat(4300)), true),
        ];
        for (text, ok) in cases {
            assert_eq!(parse_py_int(&text).is_some(), ok, "{} chars", text.len());
        }
        let e = negotiate_values(None, Some(&format!("1.{}", "1".repeat(4301))), &R).unwrap_err();
        assert_eq!(e, invalid_header());
    }

    fn hm(pairs: &[(&str, &[u8])]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    fn ok(pairs: &[(&str, &[u8])]) -> ApiVersion {
        negotiate(&hm(pairs), &R).unwrap()
    }

    fn err(pairs: &[(&str, &[u8])]) -> IronicError {
        negotiate(&hm(pairs), &R).unwrap_err()
    }

    const INVALID: &str = r#"{"error_message": "{\"code\": 406, \"title\": \"Not Acceptable\", \"description\": \"Invalid value for X-OpenStack-Ironic-API-Version header\"}"}"#;

    #[test]
    fn parse_strict() {
        assert_eq!(ApiVersion::parse("1.62"), Some(ApiVersion::new(1, 62)));
        assert_eq!(ApiVersion::parse("1.115"), Some(ApiVersion::new(1, 115)));
        assert_eq!(ApiVersion::parse("10.0"), Some(ApiVersion::new(10, 0)));
        for bad in [
            "",
            "1",
            "1.",
            ".1",
            "1.2.3",
            " 1.2",
            "1.2 ",
            "a.b",
            "1.-2",
            "1.+2",
            "1.99999999999",
        ] {
            assert_eq!(ApiVersion::parse(bad), None, "{bad:?}");
        }
        assert_eq!(ApiVersion::new(1, 62).to_string(), "1.62");
        assert!(ApiVersion::new(1, 9) < ApiVersion::new(1, 10));
    }

    #[test]
    fn absent_is_1_1() {
        assert_eq!(ok(&[]), ApiVersion::new(1, 1));
    }

    #[test]
    fn legacy_header() {
        assert_eq!(ok(&[(V, b"1.62")]), ApiVersion::new(1, 62));
        assert_eq!(
            ok(&[("x-openstack-ironic-api-version", b"1.40")]),
            ApiVersion::new(1, 40)
        );
        assert_eq!(ok(&[(V, b"latest")]), ApiVersion::new(1, 115));
        assert_eq!(ok(&[(V, b"LaTeSt")]), ApiVersion::new(1, 115));
        assert_eq!(ok(&[(V, b"1.1")]), ApiVersion::new(1, 1));
        assert_eq!(ok(&[(V, b"1.115")]), ApiVersion::new(1, 115));
    }

    #[test]
    fn python_int_leniency() {
        // All verified against Ironic 39.0.0.
        for (raw, minor) in [
            (&b" 1.22 "[..], 22),
            (b"1 . 22", 22),
            (b"01.022", 22),
            (b"1.+22", 22),
            (b"1.2_2", 22),
            (b"1.1_5", 15),
            (b"1.0001", 1),
            (b"1. 40", 40),
            (b"1 .40", 40),
            (b"1.\xa022", 22),
            (b"1.22\x85", 22),
        ] {
            assert_eq!(ok(&[(V, raw)]), ApiVersion::new(1, minor), "{raw:?}");
        }
        for raw in [
            &b"abc"[..],
            b"1",
            b"1.2.3",
            b"1.2__2",
            b"1._22",
            b"1.22_",
            b" . ",
            b".",
            b"1.1.",
            b"1.2 2",
            b"1.",
            b"+-1.2",
        ] {
            let e = err(&[(V, raw)]);
            assert_eq!(e.status, 406);
            assert_eq!(e.body, INVALID, "{raw:?}");
            assert_eq!(e.headers, HeaderSet::None);
        }
    }

    #[test]
    fn control_characters_via_values() {
        // HeaderValue refuses these bytes, but the semantics are kept: str.strip() removes
        // \x1c-\x1f, int() does not.
        assert_eq!(
            negotiate_values(None, Some("\u{1c}1.22"), &R).unwrap(),
            ApiVersion::new(1, 22)
        );
        assert_eq!(
            negotiate_values(None, Some("1.\u{1f}22"), &R)
                .unwrap_err()
                .body,
            INVALID
        );
    }

    #[test]
    fn empty_and_comma_lists() {
        assert_eq!(ok(&[(V, b"")]), ApiVersion::new(1, 1));
        assert_eq!(ok(&[(V, b"1.50,")]), ApiVersion::new(1, 1));
        assert_eq!(ok(&[(V, b"1,")]), ApiVersion::new(1, 1));
        assert_eq!(ok(&[(V, b"1.5,1.50")]), ApiVersion::new(1, 50));
        assert_eq!(ok(&[(V, b"latest,1.40")]), ApiVersion::new(1, 40));
        assert_eq!(ok(&[(V, b"1.40, latest")]), ApiVersion::new(1, 115));
        // Repeated header: folded, the last one counts.
        assert_eq!(ok(&[(V, b"1.50"), (V, b"1.30")]), ApiVersion::new(1, 30));
    }

    #[test]
    fn underscore_spelling_is_the_same_header() {
        assert_eq!(
            ok(&[("X_OpenStack_Ironic_API_Version", b"1.40")]),
            ApiVersion::new(1, 40)
        );
        assert_eq!(
            ok(&[("OpenStack_API_Version", b"baremetal 1.40")]),
            ApiVersion::new(1, 40)
        );
        assert_eq!(
            ok(&[(V, b"1.30"), ("X_OpenStack_Ironic_API_Version", b"1.40")]),
            ApiVersion::new(1, 40)
        );
    }

    #[test]
    fn standard_header() {
        assert_eq!(
            ok(&[(S, b"baremetal 1.30"), (V, b"1.50")]),
            ApiVersion::new(1, 30)
        );
        assert_eq!(
            ok(&[(S, b"compute 2.1"), (V, b"1.50")]),
            ApiVersion::new(1, 50)
        );
        assert_eq!(ok(&[(S, b"compute 2.1")]), ApiVersion::new(1, 1));
        assert_eq!(ok(&[(S, b"BAREMETAL latest")]), ApiVersion::new(1, 115));
        assert_eq!(ok(&[(S, b"Baremetal 1.40")]), ApiVersion::new(1, 40));
        assert_eq!(
            ok(&[(S, b"baremetal LATEST,compute 1.1")]),
            ApiVersion::new(1, 115)
        );
        assert_eq!(ok(&[(S, b"baremetal")]), ApiVersion::new(1, 1));
        assert_eq!(
            ok(&[(S, b"baremetal"), (V, b"1.40")]),
            ApiVersion::new(1, 40)
        );
        assert_eq!(
            ok(&[(S, b"baremetal 1.30, compute 2.1")]),
            ApiVersion::new(1, 30)
        );
        assert_eq!(
            ok(&[(S, b"baremetal 1.30, baremetal 1.40")]),
            ApiVersion::new(1, 40)
        );
        assert_eq!(
            ok(&[(S, b"baremetal 1.30"), (S, b"baremetal 1.41")]),
            ApiVersion::new(1, 41)
        );
        assert_eq!(
            ok(&[(S, b"baremetal 1.30"), (S, b"compute 2.1")]),
            ApiVersion::new(1, 30)
        );
        assert_eq!(
            ok(&[(S, b"baremetal latest, baremetal")]),
            ApiVersion::new(1, 115)
        );
        assert_eq!(ok(&[(S, b"baremetal  1.40  ")]), ApiVersion::new(1, 40));
        assert_eq!(ok(&[(S, b"baremetal\t1.33")]), ApiVersion::new(1, 33));
        assert_eq!(ok(&[(S, b"")]), ApiVersion::new(1, 1));
        assert_eq!(ok(&[(S, b" "), (V, b"1.44")]), ApiVersion::new(1, 44));
        // A bad baremetal entry is not skipped in favour of the legacy header.
        assert_eq!(err(&[(S, b"baremetal abc"), (V, b"1.50")]).body, INVALID);
        assert_eq!(err(&[(S, b"baremetal 1.2 3")]).body, INVALID);
        assert_eq!(err(&[(S, b"baremetal 1.40 x")]).body, INVALID);
    }

    #[test]
    fn out_of_range_minor() {
        let e = err(&[(V, b"1.999")]);
        assert_eq!(e.status, 406);
        assert_eq!(e.headers, HeaderSet::RangeOnly);
        assert_eq!(
            e.body,
            r#"{"error_message": "{\"code\": 406, \"title\": \"Not Acceptable\", \"description\": \"Version 1.999 was requested but the minor version is not supported by this service. The supported version range is: [1.1, 1.115].\"}"}"#
        );
        assert_eq!(e.body.len(), 219);
        assert_eq!(
            err(&[(V, b"1.0")]).message(),
            "Version 1.0 was requested but the minor version is not supported by this service. The supported version range is: [1.1, 1.115]."
        );
        assert_eq!(
            err(&[(V, b"1.-1")]).message(),
            "Version 1.-1 was requested but the minor version is not supported by this service. The supported version range is: [1.1, 1.115]."
        );
        assert_eq!(
            err(&[(V, b"1.99999999999999999999999")]).message(),
            "Version 1.99999999999999999999999 was requested but the minor version is not supported by this service. The supported version range is: [1.1, 1.115]."
        );
        assert_eq!(err(&[(V, b"1.116")]).status, 406);
        assert!(err(&[(V, b"1.-0")]).message().contains("Version 1.0 was"));
    }

    #[test]
    fn wrong_major() {
        let e = err(&[(V, b"2.1")]);
        assert_eq!(e.headers, HeaderSet::RangeOnly);
        assert_eq!(
            e.body,
            r#"{"error_message": "{\"code\": 406, \"title\": \"Not Acceptable\", \"description\": \"Mutually exclusive versions requested. Version 2.1 requested but not supported by this service. The supported version range is: [1.1, 1.115].\"}"}"#
        );
        assert_eq!(e.body.len(), 231);
        assert!(err(&[(V, b"0.5")])
            .message()
            .starts_with("Mutually exclusive versions requested. Version 0.5 requested"));
        assert!(err(&[(V, b"-1.5")])
            .message()
            .starts_with("Mutually exclusive versions requested. Version -1.5 requested"));
        assert!(err(&[(S, b"baremetal 2.0")])
            .message()
            .starts_with("Mutually exclusive versions requested. Version 2.0 requested"));
        assert!(err(&[(V, b"01.999")])
            .message()
            .starts_with("Version 1.999 was requested"));
    }

    #[test]
    fn range_follows_upstream() {
        let r = VersionRange {
            min: ApiVersion::new(1, 1),
            max: ApiVersion::new(1, 96),
        };
        assert_eq!(
            negotiate(&hm(&[(V, b"latest")]), &r).unwrap(),
            ApiVersion::new(1, 96)
        );
        let e = negotiate(&hm(&[(V, b"1.97")]), &r).unwrap_err();
        assert!(e.message().ends_with("[1.1, 1.96]."));
        assert_eq!(
            negotiate_values(Some("baremetal 1.5"), Some("1.9"), &r).unwrap(),
            ApiVersion::new(1, 5)
        );
        assert_eq!(
            negotiate_values(None, None, &r).unwrap(),
            ApiVersion::new(1, 1)
        );
    }

    /// The general parse, as `negotiate` runs it when the plain form does not apply.
    fn general(h: &http::HeaderMap, r: &VersionRange) -> Result<ApiVersion, IronicError> {
        let standard = folded_header(h, STANDARD_HEADER);
        let legacy = folded_header(h, LEGACY_HEADER);
        negotiate_values(standard.as_deref(), legacy.as_deref(), r)
    }

    #[test]
    fn the_plain_form_answers_only_what_the_general_parse_accepts_alike() {
        let r = VersionRange {
            min: ApiVersion::new(1, 31),
            max: ApiVersion::new(1, 96),
        };
        let x_ = "x_openstack_ironic_api_version";
        type Headers<'a> = &'a [(&'a str, &'a [u8])];
        let cases: &[(Headers, Option<ApiVersion>)] = &[
            (&[(V, b"1.62")], Some(ApiVersion::new(1, 62))),
            (&[(x_, b"1.68")], Some(ApiVersion::new(1, 68))),
            (&[(V, b"01.062")], Some(ApiVersion::new(1, 62))),
            (&[(V, b"1.31")], Some(ApiVersion::new(1, 31))),
            (&[(V, b"1.96")], Some(ApiVersion::new(1, 96))),
            // Left to the general parse: out of range, other majors, other spellings,
            // repeated or standard headers.
            (&[(V, b"1.30")], None),
            (&[(V, b"1.97")], None),
            (&[(V, b"2.62")], None),
            (&[(V, b" 1.62")], None),
            (&[(V, b"1.6_2")], None),
            (&[(V, b"+1.62")], None),
            (&[(V, b"1.00062")], None),
            (&[(V, b"latest")], None),
            (&[(V, b"1.62"), (V, b"1.40")], None),
            (&[(V, b"1.62"), (S, b"baremetal 1.40")], None),
            (&[(S, b"baremetal 1.40")], None),
            (&[], None),
        ];
        for (pairs, want) in cases {
            let h = hm(pairs);
            assert_eq!(plain_legacy_version(&h, &r), *want, "{pairs:?}");
            assert_eq!(negotiate(&h, &r).ok(), general(&h, &r).ok(), "{pairs:?}");
            if let Some(v) = want {
                assert_eq!(general(&h, &r).ok(), Some(*v), "{pairs:?}");
            }
        }
    }

    proptest::proptest! {
        /// Whatever the value, `negotiate` answers as the general parse does.
        #[test]
        fn negotiate_agrees_with_the_general_parse(
            value in "[0-9._ +-]{0,12}",
            min in 1u32..40,
            span in 0u32..80,
        ) {
            let r = VersionRange { min: ApiVersion::new(1, min), max: ApiVersion::new(1, min + span) };
            let h = hm(&[(V, value.as_bytes())]);
            let (fast, slow) = (negotiate(&h, &r), general(&h, &r));
            proptest::prop_assert_eq!(fast.as_ref().ok(), slow.as_ref().ok());
            proptest::prop_assert_eq!(
                fast.err().map(|e| e.message().to_string()),
                slow.err().map(|e| e.message().to_string())
            );
        }
    }
}
