//! How Ironic's web stack (webob 1.8, pecan 1.8, Python 3.11 `cgi`) turns a request into the
//! keyword arguments of a controller: query-string and form decoding, the merge of a JSON body
//! with the query string, `MultiDict.mixed()`, and pecan's `_method` override.

use super::error::{HeaderSet, IronicError};
use super::pyjson::{self, LoadsError, PyValue};
use super::work::{step, FirstSeen};

/// The 400 webob/pecan sends when the query string is not UTF-8 after percent-decoding:
/// `{"code": 400, "title": "Bad Request", "description": ""}`, no version headers.
pub fn bad_request() -> IronicError {
    IronicError::framework(400, "Bad Request", "", HeaderSet::None)
}

/// webob's `unquote` (Python 3 branch of `webob.compat`): each `%` takes the next one or two
/// bytes through Python's `int(x, 16)`, so `%f` at the end, `% f` and `%f ` all decode to
/// `0x0f`; anything `int()` refuses (or a negative value) keeps the `%` literally.
fn webob_unquote(s: &[u8]) -> Vec<u8> {
    let mut parts = s.split(|&b| b == b'%');
    let mut out: Vec<u8> = parts.next().unwrap_or(&[]).to_vec();
    for item in parts {
        step();
        let head = &item[..item.len().min(2)];
        match py_int_hex_bytes(head) {
            Some(v) => {
                out.push(v);
                out.extend_from_slice(&item[head.len()..]);
            }
            None => {
                out.push(b'%');
                out.extend_from_slice(item);
            }
        }
    }
    out
}

/// Python's `int(b, 16)` for at most two bytes, when the result fits a byte (`bytes([v])`).
fn py_int_hex_bytes(b: &[u8]) -> Option<u8> {
    let is_space = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let start = b.iter().position(|c| !is_space(c))?;
    let end = b.iter().rposition(|c| !is_space(c))? + 1;
    let t = &b[start..end];
    let (neg, digits) = match t.first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.iter().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let v = u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()?;
    if neg && v != 0 {
        return None;
    }
    u8::try_from(v).ok()
}

/// `req.GET` as webob builds it (`parse_qsl_text`): `+` becomes a space, pairs are separated by
/// `&` **and** `;`, empty pairs are skipped, a pair without `=` has the value `""`, names and
/// values are percent-decoded leniently and then must be UTF-8 (else the framework 400,
/// [`bad_request`]). `raw_query` is the undecoded query string (its bytes are taken as-is).
pub fn parse_query(raw_query: &str) -> Result<Vec<(String, String)>, IronicError> {
    let qs: Vec<u8> = raw_query
        .bytes()
        .map(|b| if b == b'+' { b' ' } else { b })
        .collect();
    let mut out = Vec::new();
    for pair in qs
        .split(|&b| b == b'&')
        .flat_map(|s| s.split(|&b| b == b';'))
    {
        step();
        if pair.is_empty() {
            continue;
        }
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        let name = String::from_utf8(webob_unquote(name)).map_err(|_| bad_request())?;
        let value = String::from_utf8(webob_unquote(value)).map_err(|_| bad_request())?;
        out.push((name, value));
    }
    Ok(out)
}

/// `urllib.parse.unquote(s, 'utf-8', 'replace')`: strict `%XX` escapes, invalid UTF-8 replaced.
fn py_unquote(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut bytes = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        step();
        if b[i] == b'%'
            && b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
        {
            let hex = [b[i + 1], b[i + 2]];
            let v = std::str::from_utf8(&hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .unwrap_or(0);
            bytes.push(v);
            i += 3;
        } else {
            bytes.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `py_unquote(s.replace('+', ' '))` in one pass (a decoded `%2B` stays a `+`), without a
/// copy for the common name or value that has neither.
fn form_unquote(s: &str) -> String {
    if !s.contains(['+', '%']) {
        return s.to_string();
    }
    if !s.contains('%') {
        return s.replace('+', " ");
    }
    py_unquote(&s.replace('+', " "))
}

/// An `application/x-www-form-urlencoded` body as `cgi.FieldStorage` reads it: the body is
/// decoded as UTF-8 with replacement, split on `&` only (not `;`), blank values kept, `+` is a
/// space, `%XX` decoded strictly with replacement of invalid UTF-8.
pub fn parse_form_urlencoded(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    let mut out = Vec::new();
    for pair in text.split('&') {
        step();
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((form_unquote(name), form_unquote(value)));
    }
    out
}

/// A form field: text, or an uploaded file (which is not a `str` for Ironic's validators).
#[derive(Clone, Debug, PartialEq)]
pub enum FormField {
    Text(String),
    /// `FieldStorage('<name>', '<filename>')` as Ironic prints it.
    File {
        filename: String,
    },
}

/// `cgi._parse_header`-style parameter lookup (`boundary`, `charset`...), unquoting `"..."`.
fn header_param(value: &str, key: &str) -> Option<String> {
    for part in value.split(';').skip(1) {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case(key) {
            let v = v.trim();
            let v = if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
                v[1..v.len() - 1]
                    .replace("\\\\", "\\")
                    .replace("\\\"", "\"")
            } else {
                v.to_string()
            };
            return Some(v);
        }
    }
    None
}

/// A `multipart/form-data` body, for well-formed bodies as browsers and curl send them.
/// `Err` is what Ironic answers when `cgi` refuses the body (no or an invalid boundary: the
/// bare 500).
pub fn parse_multipart(
    content_type: &str,
    body: &[u8],
) -> Result<Vec<(String, FormField)>, IronicError> {
    let boundary = header_param(content_type, "boundary").unwrap_or_default();
    let valid = {
        let b = boundary.as_bytes();
        !b.is_empty()
            && b.len() <= 201
            && b.iter().all(|c| (b' '..=b'~').contains(c))
            && b[b.len() - 1] != b' '
    };
    if !valid {
        return Err(IronicError::bare_server_error());
    }
    let delim = format!("--{boundary}");
    // Made once: a body of 1 MiB of line breaks compares 1M lines with it.
    let close = format!("{delim}--");
    let mut out = Vec::new();
    let mut lines = body.split_inclusive(|&c| c == b'\n').peekable();
    // Skip the preamble up to the first delimiter line.
    for line in lines.by_ref() {
        step();
        if trim_ascii(line) == delim.as_bytes() {
            break;
        }
    }
    loop {
        // Part headers.
        let mut name: Option<String> = None;
        let mut filename: Option<String> = None;
        let mut saw_header = false;
        for line in lines.by_ref() {
            step();
            let t = trim_ascii(line);
            if t.is_empty() {
                break;
            }
            saw_header = true;
            let text = String::from_utf8_lossy(t);
            if let Some((k, v)) = text.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-disposition") {
                    let v = format!("x;{}", v.split_once(';').map(|x| x.1).unwrap_or(""));
                    name = header_param(&v, "name");
                    filename = header_param(&v, "filename");
                }
            }
        }
        if !saw_header {
            break;
        }
        // Part body up to the next delimiter; the line break before it is not content.
        let mut content: Vec<u8> = Vec::new();
        let mut last = true;
        for line in lines.by_ref() {
            step();
            let t = trim_ascii(line);
            if t == delim.as_bytes() {
                last = false;
                break;
            }
            if t == close.as_bytes() {
                break;
            }
            content.extend_from_slice(line);
        }
        if content.ends_with(b"\r\n") {
            content.truncate(content.len() - 2);
        } else if content.ends_with(b"\n") {
            content.truncate(content.len() - 1);
        }
        if let Some(name) = name {
            let field = match filename {
                Some(f) if !f.is_empty() => FormField::File { filename: f },
                _ => FormField::Text(String::from_utf8_lossy(&content).into_owned()),
            };
            out.push((name, field));
        }
        if last {
            break;
        }
    }
    Ok(out)
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// webob's `request.charset` for a `Content-Type` value: the `charset` parameter
/// (`;\s*charset=([^;]*)`, case-insensitive, quotes and blanks stripped), `"UTF-8"` when absent,
/// empty or any spelling of utf8.
pub fn webob_charset(content_type: &str) -> String {
    let lower = content_type.to_ascii_lowercase();
    let mut found: Option<String> = None;
    let bytes = lower.as_bytes();
    let mut i = 0;
    while let Some(p) = lower[i..].find(';') {
        let mut j = i + p + 1;
        while j < bytes.len() && (bytes[j] as char).is_ascii_whitespace() {
            j += 1;
        }
        if lower[j..].starts_with("charset=") {
            let start = j + "charset=".len();
            let end = lower[start..].find(';').map_or(lower.len(), |e| start + e);
            // Take the original spelling (the regex is case-insensitive, the value is not).
            let raw = &content_type[start..end];
            found = Some(raw.trim_matches('"').trim().to_string());
            break;
        }
        i = i + p + 1;
    }
    match found {
        Some(c) if !is_utf8_name(&c) => c,
        _ => "UTF-8".to_string(),
    }
}

/// webob `_is_utf8`.
fn is_utf8_name(charset: &str) -> bool {
    charset.is_empty() || charset.to_lowercase().replace('-', "") == "utf8"
}

/// How a body decodes with a Python codec name.
enum Decoded {
    Text(String),
    /// `UnicodeDecodeError` (a `ValueError`: pecan falls back to the query string).
    Invalid,
    /// `LookupError` for an unknown codec (not caught: the bare 500).
    UnknownCodec,
}

/// `body.decode(charset)` for the codecs a client may plausibly name.
fn decode_body(body: &[u8], charset: &str) -> Decoded {
    // encodings.normalize_encoding + lower-casing, as codecs.lookup does.
    let mut norm = String::new();
    let mut pending_sep = false;
    for c in charset.to_lowercase().chars() {
        if c.is_ascii_alphanumeric() || c == '.' {
            if pending_sep && !norm.is_empty() {
                norm.push('_');
            }
            pending_sep = false;
            norm.push(c);
        } else {
            pending_sep = true;
        }
    }
    match norm.as_str() {
        "utf_8" | "utf8" | "u8" | "utf" | "utf8_ucs2" | "utf8_ucs4" | "cp65001" => {
            match String::from_utf8(body.to_vec()) {
                Ok(s) => Decoded::Text(s),
                Err(_) => Decoded::Invalid,
            }
        }
        "ascii" | "us_ascii" | "646" | "us" | "ansi_x3.4_1968" | "ansi_x3_4_1968"
        | "ansi_x3.4_1986" | "cp367" | "csascii" | "ibm367" | "iso646_us" | "iso_646.irv_1991"
        | "iso_ir_6" => {
            if body.is_ascii() {
                Decoded::Text(body.iter().map(|&b| b as char).collect())
            } else {
                Decoded::Invalid
            }
        }
        "latin_1" | "latin1" | "latin" | "l1" | "iso_8859_1" | "iso8859_1" | "8859" | "cp819"
        | "iso_ir_100" | "csisolatin1" | "ibm819" | "iso_8859_1_1987" => {
            Decoded::Text(body.iter().map(|&b| b as char).collect())
        }
        "utf_16" | "utf16" | "u16" => decode_utf16(body, None),
        "utf_16_le" | "utf_16le" | "unicodelittleunmarked" => decode_utf16(body, Some(false)),
        "utf_16_be" | "utf_16be" | "unicodebigunmarked" => decode_utf16(body, Some(true)),
        "utf_32" | "utf32" | "u32" => decode_utf32(body, None),
        "utf_32_le" | "utf_32le" => decode_utf32(body, Some(false)),
        "utf_32_be" | "utf_32be" => decode_utf32(body, Some(true)),
        _ => Decoded::UnknownCodec,
    }
}

fn decode_utf16(body: &[u8], big: Option<bool>) -> Decoded {
    let (big, body) = match big {
        Some(b) => (b, body),
        None if body.starts_with(&[0xff, 0xfe]) => (false, &body[2..]),
        None if body.starts_with(&[0xfe, 0xff]) => (true, &body[2..]),
        None => (false, body),
    };
    if body.len() % 2 != 0 {
        return Decoded::Invalid;
    }
    let units: Vec<u16> = body
        .chunks(2)
        .map(|c| {
            if big {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_le_bytes([c[0], c[1]])
            }
        })
        .collect();
    match String::from_utf16(&units) {
        Ok(s) => Decoded::Text(s),
        Err(_) => Decoded::Invalid,
    }
}

fn decode_utf32(body: &[u8], big: Option<bool>) -> Decoded {
    let (big, body) = match big {
        Some(b) => (b, body),
        None if body.starts_with(&[0xff, 0xfe, 0, 0]) => (false, &body[4..]),
        None if body.starts_with(&[0, 0, 0xfe, 0xff]) => (true, &body[4..]),
        None => (false, body),
    };
    if body.len() % 4 != 0 {
        return Decoded::Invalid;
    }
    let mut s = String::new();
    for c in body.chunks(4) {
        let v = if big {
            u32::from_be_bytes([c[0], c[1], c[2], c[3]])
        } else {
            u32::from_le_bytes([c[0], c[1], c[2], c[3]])
        };
        match char::from_u32(v) {
            Some(ch) => s.push(ch),
            None => return Decoded::Invalid,
        }
    }
    Decoded::Text(s)
}

/// The parameters pecan hands to a `POST` controller, in order (query string first), before
/// `mixed()`.
pub type RawParams = Vec<(String, PyValue)>;

/// Gathers a `POST` request's parameters as pecan's `find_controller` does, and reports the
/// `_method` override that pecan's `RestController._route` reads from `request.params`
/// (query string, then form fields; never the JSON body).
///
/// - `Content-Type` (the part before the first `;`, case- and blank-sensitive) is
///   `application/json` or `application/javascript`: the body is decoded with its `charset`
///   (unknown codec → the bare 500) and parsed as JSON; a JSON **object** is merged after the
///   query string; invalid JSON, a non-object or undecodable bytes leave the query string alone.
/// - Absent `Content-Type`, `application/x-www-form-urlencoded` or `multipart/form-data`: query
///   string plus form fields (a `charset` other than UTF-8 → the bare 500, as webob raises).
/// - Anything else (`text/plain`, `Application/JSON`, `application/json ;...`): the query string
///   only.
pub struct PostParams {
    pub params: RawParams,
    /// The last `_method` value of the query string, else of the form fields.
    pub method_override: Option<String>,
}

/// See [`PostParams`].
pub fn gather_post_params(
    raw_query: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<PostParams, IronicError> {
    let query = parse_query(raw_query.unwrap_or(""))?;
    let mut params: RawParams = query
        .iter()
        .map(|(k, v)| (k.clone(), PyValue::Str(v.clone())))
        .collect();
    let last = |items: &[(String, PyValue)]| {
        items
            .iter()
            .rev()
            .find(|(k, _)| k == "_method")
            .map(|(_, v)| v.to_py_str())
    };
    let query_method = last(&params);
    let main = content_type.map(|c| c.split(';').next().unwrap_or(""));
    match main {
        None | Some("application/x-www-form-urlencoded") | Some("multipart/form-data") => {
            let ct = content_type.unwrap_or("");
            if webob_charset(ct) != "UTF-8" {
                return Err(IronicError::bare_server_error());
            }
            let form: RawParams = if main == Some("multipart/form-data") {
                parse_multipart(ct, body)?
                    .into_iter()
                    .map(|(k, f)| {
                        let v = match f {
                            FormField::Text(t) => PyValue::Str(t),
                            FormField::File { filename } => PyValue::Opaque(format!(
                                "FieldStorage({}, {})",
                                pyjson::repr_str(&k),
                                pyjson::repr_str(&filename)
                            )),
                        };
                        (k, v)
                    })
                    .collect()
            } else {
                parse_form_urlencoded(body)
                    .into_iter()
                    .map(|(k, v)| (k, PyValue::Str(v)))
                    .collect()
            };
            let method_override = query_method.or_else(|| last(&form));
            params.extend(form);
            Ok(PostParams {
                params,
                method_override,
            })
        }
        Some("application/json") | Some("application/javascript") => {
            let charset = webob_charset(content_type.unwrap_or(""));
            match decode_body(body, &charset) {
                Decoded::UnknownCodec => return Err(IronicError::bare_server_error()),
                Decoded::Invalid => {}
                Decoded::Text(text) => match pyjson::loads(&text) {
                    Ok(PyValue::Dict(items)) => params.extend(items),
                    Ok(_) | Err(LoadsError::Invalid) => {}
                    Err(LoadsError::TooDeep) => return Err(IronicError::bare_server_error()),
                },
            }
            Ok(PostParams {
                params,
                method_override: query_method,
            })
        }
        Some(_) => Ok(PostParams {
            params,
            method_override: query_method,
        }),
    }
}

/// webob `MultiDict.mixed()`: one entry per key in first-appearance order; a key given more
/// than once becomes a list of its values.
pub fn mixed(params: RawParams) -> Vec<(String, PyValue)> {
    let mut out: Vec<(String, PyValue)> = Vec::new();
    // Whether `out[i]` is a list `mixed()` made (more values are appended to it), as opposed
    // to a list given as the value (which a second value wraps, like any other value).
    let mut made_list: Vec<bool> = Vec::new();
    let mut seen = FirstSeen::new();
    for (k, v) in params {
        match seen.first_or_insert(&k, |at| out[at].0.as_str(), out.len()) {
            Some(at) => {
                let slot = &mut out[at].1;
                if made_list[at] {
                    if let PyValue::List(l) = slot {
                        l.push(v);
                    }
                } else {
                    let first = std::mem::replace(slot, PyValue::None);
                    *slot = PyValue::List(vec![first, v]);
                    made_list[at] = true;
                }
            }
            None => {
                out.push((k, v));
                made_list.push(false);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(raw: &str) -> Vec<(String, String)> {
        parse_query(raw).unwrap()
    }

    fn pair(a: &str, b: &str) -> (String, String) {
        (a.to_string(), b.to_string())
    }

    #[test]
    fn query_like_webob() {
        assert_eq!(q(""), vec![]);
        assert_eq!(q("a=1&b=2"), vec![pair("a", "1"), pair("b", "2")]);
        assert_eq!(q("a=1;b=2"), vec![pair("a", "1"), pair("b", "2")]);
        assert_eq!(q("a&&b="), vec![pair("a", ""), pair("b", "")]);
        assert_eq!(q("=x"), vec![pair("", "x")]);
        assert_eq!(q("a=b=c"), vec![pair("a", "b=c")]);
        assert_eq!(q("a=+x+"), vec![pair("a", " x ")]);
        assert_eq!(q("a=%2B%3A%2c"), vec![pair("a", "+:,")]);
        assert_eq!(q("a=%C3%A9"), vec![pair("a", "é")]);
        assert_eq!(q("x%=1"), vec![pair("x%", "1")]);
        assert_eq!(q("a=%"), vec![pair("a", "%")]);
        assert_eq!(q("a=%zz"), vec![pair("a", "%zz")]);
        // webob's int(x, 16) leniency.
        assert_eq!(q("a=%f"), vec![pair("a", "\u{f}")]);
        assert_eq!(q("a=%+f"), vec![pair("a", "\u{f}")]);
        assert_eq!(q("a=%f%20"), vec![pair("a", "\u{f} ")]);
        assert_eq!(q("a=%-1"), vec![pair("a", "%-1")]);
        assert_eq!(q("a=%-0x"), vec![pair("a", "\u{0}x")]);
        assert_eq!(q("a=%4"), vec![pair("a", "\u{4}")]);
        assert_eq!(q("a=%41%42"), vec![pair("a", "AB")]);
        assert_eq!(q("a=%2"), vec![pair("a", "\u{2}")]);
    }

    #[test]
    fn query_must_be_utf8() {
        let e = parse_query("addresses=%ff").unwrap_err();
        assert_eq!(
            e.body,
            r#"{"error_message": "{\"code\": 400, \"title\": \"Bad Request\", \"description\": \"\"}"}"#
        );
        assert_eq!(e.body.len(), 87);
        assert_eq!(e.headers, HeaderSet::None);
        assert!(parse_query("%ff=1").is_err());
        assert!(parse_query("a=%ed%a0%80").is_err());
    }

    #[test]
    fn form_like_cgi() {
        let f = parse_form_urlencoded(b"callback_url=https://1.2.3.4:9999&agent_token=x");
        assert_eq!(
            f,
            vec![
                pair("callback_url", "https://1.2.3.4:9999"),
                pair("agent_token", "x")
            ]
        );
        // ';' is not a separator in Python 3.11's parse_qsl.
        let f = parse_form_urlencoded(b"callback_url=https://h;agent_token=x");
        assert_eq!(f, vec![pair("callback_url", "https://h;agent_token=x")]);
        let f = parse_form_urlencoded(b"t=%ff&u=%f&v=a+b&w");
        assert_eq!(
            f,
            vec![
                pair("t", "\u{fffd}"),
                pair("u", "%f"),
                pair("v", "a b"),
                pair("w", "")
            ]
        );
        let f = parse_form_urlencoded(br#"{"callback_url": "x"}"#);
        assert_eq!(f, vec![pair(r#"{"callback_url": "x"}"#, "")]);
    }

    #[test]
    fn charset_like_webob() {
        assert_eq!(webob_charset("application/json"), "UTF-8");
        assert_eq!(webob_charset("application/json; charset=utf-8"), "UTF-8");
        assert_eq!(webob_charset("application/json;charset=UTF8"), "UTF-8");
        assert_eq!(
            webob_charset("application/json; charset=\"latin-1\""),
            "latin-1"
        );
        assert_eq!(
            webob_charset("application/json; CHARSET=Latin-1; x=y"),
            "Latin-1"
        );
        assert_eq!(webob_charset("application/json; charset="), "UTF-8");
    }

    #[test]
    fn json_merged_after_query() {
        let p = gather_post_params(
            Some("agent_token=y"),
            Some("application/json"),
            br#"{"callback_url": "u", "agent_token": "x"}"#,
        )
        .unwrap();
        let m = mixed(p.params);
        assert_eq!(m[0].0, "agent_token");
        assert_eq!(m[0].1.repr(), "['y', 'x']");
        assert_eq!(m[1], ("callback_url".to_string(), PyValue::Str("u".into())));
    }

    #[test]
    fn json_fallbacks() {
        for body in [
            &b"[1, 2]"[..],
            b"not json",
            b"\"str\"",
            b"",
            b"{",
            b"\xef\xbb\xbf{}",
        ] {
            let p = gather_post_params(Some("a=1"), Some("application/json"), body).unwrap();
            assert_eq!(
                p.params,
                vec![("a".to_string(), PyValue::Str("1".into()))],
                "{body:?}"
            );
        }
        // latin-1 / utf-16 decoding; an unknown codec is the bare 500.
        let p = gather_post_params(
            None,
            Some("application/json; charset=latin-1"),
            b"{\"a\": \"\xe9\"}",
        )
        .unwrap();
        assert_eq!(p.params, vec![("a".to_string(), PyValue::Str("é".into()))]);
        let utf16: Vec<u8> = "{\"a\": 1}"
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes())
            .collect();
        let p = gather_post_params(None, Some("application/json; charset=utf-16"), &utf16).unwrap();
        assert_eq!(p.params.len(), 1);
        let p = gather_post_params(
            None,
            Some("application/json; charset=utf-16"),
            b"{\"a\": 1}",
        )
        .unwrap();
        assert!(p.params.is_empty());
        let e = gather_post_params(None, Some("application/json; charset=foo"), b"{}")
            .err()
            .unwrap();
        assert_eq!(e, IronicError::bare_server_error());
        assert!(gather_post_params(None, Some("application/json; charset=utf8"), b"{}").is_ok());
    }

    #[test]
    fn content_type_matching_is_exact() {
        for ct in [
            "text/plain",
            "Application/JSON",
            "application/json ; charset=utf-8",
            "text/json",
            "application/json-patch+json",
            "",
        ] {
            let p = gather_post_params(None, Some(ct), br#"{"a": "b"}"#).unwrap();
            assert!(p.params.is_empty(), "{ct}");
        }
        let p = gather_post_params(None, Some("application/javascript"), br#"{"a": "b"}"#).unwrap();
        assert_eq!(p.params.len(), 1);
        // No Content-Type at all: a form.
        let p = gather_post_params(None, None, br#"{"a": "b"}"#).unwrap();
        assert_eq!(
            p.params,
            vec![(r#"{"a": "b"}"#.to_string(), PyValue::Str(String::new()))]
        );
        // x-www-form-urlencoded with a JSON body: same.
        let p = gather_post_params(
            None,
            Some("application/x-www-form-urlencoded"),
            br#"{"a": "b"}"#,
        )
        .unwrap();
        assert_eq!(p.params.len(), 1);
        // A non-UTF-8 form charset makes webob raise.
        let e = gather_post_params(
            None,
            Some("application/x-www-form-urlencoded; charset=latin-1"),
            b"a=b",
        )
        .err()
        .unwrap();
        assert_eq!(e.status, 500);
        assert!(gather_post_params(
            None,
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            b"a=b"
        )
        .is_ok());
    }

    #[test]
    fn method_override_sources() {
        let p = gather_post_params(
            Some("_method=get&_method=post"),
            Some("application/json"),
            br#"{"_method": "get"}"#,
        )
        .unwrap();
        assert_eq!(p.method_override.as_deref(), Some("post"));
        let p =
            gather_post_params(None, Some("application/json"), br#"{"_method": "get"}"#).unwrap();
        assert_eq!(p.method_override, None);
        let p = gather_post_params(
            None,
            Some("application/x-www-form-urlencoded"),
            b"_method=get&_method=post",
        )
        .unwrap();
        assert_eq!(p.method_override.as_deref(), Some("post"));
        let p = gather_post_params(
            Some("_method=post"),
            Some("application/x-www-form-urlencoded"),
            b"_method=get",
        )
        .unwrap();
        assert_eq!(p.method_override.as_deref(), Some("post"));
    }

    #[test]
    fn multipart_basic() {
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"callback_url\"\r\n\r\nhttps://1.2.3.4:9999\r\n--XX\r\nContent-Disposition: form-data; name=\"agent_token\"; filename=\"a.txt\"\r\n\r\nx\r\n--XX--\r\n";
        let p = parse_multipart("multipart/form-data; boundary=XX", body).unwrap();
        assert_eq!(
            p,
            vec![
                (
                    "callback_url".to_string(),
                    FormField::Text("https://1.2.3.4:9999".into())
                ),
                (
                    "agent_token".to_string(),
                    FormField::File {
                        filename: "a.txt".into()
                    }
                ),
            ]
        );
        let g = gather_post_params(None, Some("multipart/form-data; boundary=XX"), body).unwrap();
        assert_eq!(g.params[1].1.repr(), "FieldStorage('agent_token', 'a.txt')");
        assert_eq!(
            parse_multipart("multipart/form-data", b"x")
                .unwrap_err()
                .status,
            500
        );
    }

    #[test]
    fn mixed_like_webob() {
        let m = mixed(vec![
            ("a".into(), PyValue::Str("1".into())),
            ("b".into(), PyValue::Str("2".into())),
            ("a".into(), PyValue::Str("3".into())),
            ("a".into(), PyValue::List(vec![PyValue::Int("4".into())])),
        ]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].1.repr(), "['1', '3', [4]]");
        assert_eq!(m[1].1.repr(), "'2'");
    }
}
