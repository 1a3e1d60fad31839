//! Python's `json.dumps` (default arguments), `json.loads` and `repr`, for byte-exact bodies
//! and messages.
//!
//! Python strings may hold lone UTF-16 surrogates (`json.loads('"\\ud800"')`), Rust strings may
//! not. [`loads`] therefore maps a lone surrogate `U+D800..U+DFFF` to the private-use code point
//! `U+10F800 + (s - 0xD800)` (the last 2048 code points of plane 16), and [`dumps_str`] and
//! [`repr`] map those code points back, so messages that embed such a value stay byte-exact.
//! (A request that really contains a plane-16 private-use character is rendered as a surrogate:
//! an accepted divergence.)

use super::work::{step, FirstSeen};
use serde_json::Value;

/// First private-use code point used to carry a lone surrogate (see the module docs).
const SURROGATE_CARRIER: u32 = 0x10_F800;

/// The surrogate a carrier code point stands for, if it is one.
fn carried_surrogate(c: char) -> Option<u32> {
    let cp = c as u32;
    if cp >= SURROGATE_CARRIER {
        Some(0xD800 + (cp - SURROGATE_CARRIER))
    } else {
        None
    }
}

/// The carrier code point for a lone surrogate.
fn surrogate_carrier(s: u32) -> char {
    char::from_u32(SURROGATE_CARRIER + (s - 0xD800)).unwrap_or('\u{FFFD}')
}

/// A value as Python's `json.loads` returns it (keys in document order, duplicates resolved as
/// a Python `dict` does: the first position, the last value).
#[derive(Clone, Debug, PartialEq)]
pub enum PyValue {
    None,
    Bool(bool),
    /// An `int`, as its canonical decimal text (no leading zeros, `-0` is `0`).
    Int(String),
    Float(f64),
    Str(String),
    List(Vec<PyValue>),
    Dict(Vec<(String, PyValue)>),
    /// Any other Python object (an uploaded form file), by its `repr()`.
    Opaque(String),
}

impl PyValue {
    /// Python's `repr()` (and `str()` for everything but strings).
    pub fn repr(&self) -> String {
        let mut out = String::new();
        repr_into(self, &mut out);
        out
    }

    /// Python's `str()`: the string itself for a `str`, `repr()` for everything else.
    pub fn to_py_str(&self) -> String {
        match self {
            PyValue::Str(s) => s.clone(),
            other => other.repr(),
        }
    }

    /// Python truthiness.
    pub fn is_truthy(&self) -> bool {
        match self {
            PyValue::None => false,
            PyValue::Bool(b) => *b,
            PyValue::Int(s) => s != "0",
            PyValue::Float(f) => *f != 0.0,
            PyValue::Str(s) => !s.is_empty(),
            PyValue::List(l) => !l.is_empty(),
            PyValue::Dict(d) => !d.is_empty(),
            PyValue::Opaque(_) => true,
        }
    }

    /// Converts a decoded `serde_json` value (integers as given, floats as `f64`).
    pub fn from_json(value: &Value) -> PyValue {
        match value {
            Value::Null => PyValue::None,
            Value::Bool(b) => PyValue::Bool(*b),
            Value::Number(n) => {
                if n.is_i64() || n.is_u64() {
                    PyValue::Int(n.to_string())
                } else {
                    PyValue::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => PyValue::Str(s.clone()),
            Value::Array(a) => PyValue::List(a.iter().map(PyValue::from_json).collect()),
            Value::Object(o) => PyValue::Dict(
                o.iter()
                    .map(|(k, v)| (k.clone(), PyValue::from_json(v)))
                    .collect(),
            ),
        }
    }
}

/// `json.dumps(value)`: separators `", "`/`": "`, `ensure_ascii=True` (non-ASCII as `\uXXXX`,
/// surrogate pairs above the BMP), keys in the value's order, floats as Python prints them.
pub fn dumps(value: &Value) -> String {
    let mut out = String::new();
    dumps_into(value, &mut out);
    out
}

fn dumps_into(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() {
                out.push_str(&n.to_string());
            } else {
                out.push_str(&float_json(n.as_f64().unwrap_or(f64::NAN)));
            }
        }
        Value::String(s) => out.push_str(&dumps_str(s)),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                dumps_into(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&dumps_str(k));
                out.push_str(": ");
                dumps_into(v, out);
            }
            out.push('}');
        }
    }
}

/// `json.dumps(s)` for one string.
pub fn dumps_str(s: &str) -> String {
    // Room for a few escapes (an error message quoted again escapes each of its quotes).
    let mut out = String::with_capacity(s.len() + 2 + 16);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                if let Some(s) = carried_surrogate(c) {
                    out.push_str(&format!("\\u{s:04x}"));
                    continue;
                }
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{:04x}", unit));
                }
            }
        }
    }
    out.push('"');
    out
}

/// Python's `repr()` of the value a JSON document decodes to (`True`, `None`, `{'a': 1}`,
/// `['x', 'y']`, `'it\'s'` → `"it's"`), as Ironic's messages embed it.
pub fn repr(value: &Value) -> String {
    PyValue::from_json(value).repr()
}

fn repr_into(value: &PyValue, out: &mut String) {
    match value {
        PyValue::None => out.push_str("None"),
        PyValue::Bool(true) => out.push_str("True"),
        PyValue::Bool(false) => out.push_str("False"),
        PyValue::Int(s) => out.push_str(s),
        PyValue::Float(f) => out.push_str(&float_repr(*f)),
        PyValue::Str(s) => out.push_str(&repr_str(s)),
        PyValue::Opaque(r) => out.push_str(r),
        PyValue::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr_into(item, out);
            }
            out.push(']');
        }
        PyValue::Dict(items) => {
            out.push('{');
            for (i, (k, v)) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&repr_str(k));
                out.push_str(": ");
                repr_into(v, out);
            }
            out.push('}');
        }
    }
}

/// Python's `str.isprintable()` for one character, with CPython 3.11's Unicode database
/// (14.0): not in the categories Cc, Cf, Cs, Co, Cn, Zl, Zp, Zs (the space excepted).
fn is_printable(c: char) -> bool {
    let cp = c as u32;
    if cp < 0x80 {
        return (0x20..0x7f).contains(&cp);
    }
    super::pyprintable::PRINTABLE
        .binary_search_by(|&(lo, hi)| {
            if hi < cp {
                std::cmp::Ordering::Less
            } else if lo > cp {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Python's `repr()` of a `str`.
pub fn repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if is_printable(c) => out.push(c),
            c => {
                let cp = carried_surrogate(c).unwrap_or(c as u32);
                if cp < 0x100 {
                    out.push_str(&format!("\\x{cp:02x}"));
                } else if cp < 0x10000 {
                    out.push_str(&format!("\\u{cp:04x}"));
                } else {
                    out.push_str(&format!("\\U{cp:08x}"));
                }
            }
        }
    }
    out.push(quote);
    out
}

/// Python's `repr(float)` (also `str(float)`): shortest round-trip digits, fixed notation when
/// the decimal exponent is in `-4..16`, else `1e+16` / `1e-05` style; `nan`, `inf`, `-inf`.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if f == 0.0 {
        return format!("{sign}0.0");
    }
    // Rust's `{:e}` gives the shortest digit count that round-trips, like Python's repr; when
    // two strings of that length round-trip, Python takes the one nearest the exact value
    // (ties to even), which Rust's exact-precision formatting gives.
    let shortest = format!("{:e}", f.abs());
    let ndigits = shortest
        .split('e')
        .next()
        .map_or(1, |m| m.chars().filter(char::is_ascii_digit).count());
    let exact = format!("{:.*e}", ndigits.saturating_sub(1), f.abs());
    let sci = if exact.parse::<f64>().ok() == Some(f.abs()) {
        exact
    } else {
        shortest
    };
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (sci.as_str(), 0),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let decpt = exp + 1;
    if decpt > -4 && decpt <= 16 {
        let n = digits.len() as i32;
        if decpt <= 0 {
            format!("{sign}0.{}{}", "0".repeat((-decpt) as usize), digits)
        } else if decpt >= n {
            format!("{sign}{}{}.0", digits, "0".repeat((decpt - n) as usize))
        } else {
            let (a, b) = digits.split_at(decpt as usize);
            format!("{sign}{a}.{b}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.abs())
    }
}

/// A float as `json.dumps` writes it (`NaN`, `Infinity`, `-Infinity` for the non-finite ones).
pub fn float_json(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_string()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
    } else {
        float_repr(f)
    }
}

/// Why [`loads`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadsError {
    /// A `ValueError` (`JSONDecodeError`, or an integer over Python's 4300-digit limit).
    Invalid,
    /// Nesting deeper than 512 levels (not a `ValueError`: Ironic would crash, see
    /// `MAX_NESTING`).
    TooDeep,
}

/// How deep [`loads`] nests before giving up. Ironic never gets that far on its own: with
/// `application/javascript` (which its body-limit middleware ignores) a document nested about
/// 800 deep overflows the worker's C stack and kills the process (verified, segfault, the
/// connection is dropped). Callers answer [`LoadsError::TooDeep`] with a 500 instead.
const MAX_NESTING: usize = 512;

/// Python's `sys.int_info.default_max_str_digits`.
const MAX_INT_DIGITS: usize = 4300;

/// `json.loads(text)` with Python's rules: `NaN`/`Infinity`/`-Infinity` accepted, lone
/// surrogates kept (see the module docs), a leading BOM rejected, duplicate keys resolved as a
/// `dict`, whitespace only ` \t\n\r`.
pub fn loads(text: &str) -> Result<PyValue, LoadsError> {
    // At most one char per byte: one allocation.
    let mut chars: Vec<char> = Vec::with_capacity(text.len());
    chars.extend(text.chars());
    if chars.first() == Some(&'\u{feff}') {
        return Err(LoadsError::Invalid);
    }
    let mut p = Parser {
        s: &chars,
        i: 0,
        depth: 0,
    };
    p.ws();
    let v = p.value()?;
    p.ws();
    if p.i != chars.len() {
        return Err(LoadsError::Invalid);
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [char],
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t' | '\n' | '\r')) {
            step();
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &str) -> bool {
        let n = word.chars().count();
        if self.i + n <= self.s.len() && self.s[self.i..self.i + n].iter().copied().eq(word.chars())
        {
            self.i += n;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Result<PyValue, LoadsError> {
        match self.peek() {
            Some('"') => {
                self.i += 1;
                Ok(PyValue::Str(self.string()?))
            }
            Some('{') => {
                self.i += 1;
                self.enter()?;
                let r = self.object();
                self.depth -= 1;
                r
            }
            Some('[') => {
                self.i += 1;
                self.enter()?;
                let r = self.array();
                self.depth -= 1;
                r
            }
            Some('n') if self.literal("null") => Ok(PyValue::None),
            Some('t') if self.literal("true") => Ok(PyValue::Bool(true)),
            Some('f') if self.literal("false") => Ok(PyValue::Bool(false)),
            Some('N') if self.literal("NaN") => Ok(PyValue::Float(f64::NAN)),
            Some('I') if self.literal("Infinity") => Ok(PyValue::Float(f64::INFINITY)),
            Some('-') if self.literal("-Infinity") => Ok(PyValue::Float(f64::NEG_INFINITY)),
            Some(c) if c == '-' || c.is_ascii_digit() => self.number(),
            _ => Err(LoadsError::Invalid),
        }
    }

    fn enter(&mut self) -> Result<(), LoadsError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(LoadsError::TooDeep);
        }
        Ok(())
    }

    fn object(&mut self) -> Result<PyValue, LoadsError> {
        let mut items: Vec<(String, PyValue)> = Vec::new();
        // A Python dict: a repeated key keeps its first position and takes the last value.
        let mut seen = FirstSeen::new();
        self.ws();
        if self.peek() == Some('}') {
            self.i += 1;
            return Ok(PyValue::Dict(items));
        }
        loop {
            step();
            if self.peek() != Some('"') {
                return Err(LoadsError::Invalid);
            }
            self.i += 1;
            let key = self.string()?;
            self.ws();
            if self.peek() != Some(':') {
                return Err(LoadsError::Invalid);
            }
            self.i += 1;
            self.ws();
            let v = self.value()?;
            match seen.first_or_insert(&key, |at| items[at].0.as_str(), items.len()) {
                Some(at) => items[at].1 = v,
                None => items.push((key, v)),
            }
            self.ws();
            match self.peek() {
                Some('}') => {
                    self.i += 1;
                    return Ok(PyValue::Dict(items));
                }
                Some(',') => {
                    self.i += 1;
                    self.ws();
                }
                _ => return Err(LoadsError::Invalid),
            }
        }
    }

    fn array(&mut self) -> Result<PyValue, LoadsError> {
        let mut items = Vec::new();
        self.ws();
        if self.peek() == Some(']') {
            self.i += 1;
            return Ok(PyValue::List(items));
        }
        loop {
            step();
            items.push(self.value()?);
            self.ws();
            match self.peek() {
                Some(']') => {
                    self.i += 1;
                    return Ok(PyValue::List(items));
                }
                Some(',') => {
                    self.i += 1;
                    self.ws();
                }
                _ => return Err(LoadsError::Invalid),
            }
        }
    }

    fn hex4(&self, at: usize) -> Option<u32> {
        if at + 4 > self.s.len() {
            return None;
        }
        let mut v = 0u32;
        for c in &self.s[at..at + 4] {
            v = v * 16 + c.to_digit(16).filter(|_| c.is_ascii())?;
        }
        Some(v)
    }

    /// After the opening quote.
    fn string(&mut self) -> Result<String, LoadsError> {
        // Sized to the run before the first quote or escape (most strings are that run): one
        // allocation, not one per doubling. Each character is looked at twice at most.
        let rest = &self.s[self.i.min(self.s.len())..];
        let run = rest
            .iter()
            .position(|&c| c == '"' || c == '\\')
            .unwrap_or(rest.len());
        let mut out = String::with_capacity(run);
        loop {
            step();
            let c = self.peek().ok_or(LoadsError::Invalid)?;
            self.i += 1;
            match c {
                '"' => return Ok(out),
                '\\' => {
                    let e = self.peek().ok_or(LoadsError::Invalid)?;
                    self.i += 1;
                    match e {
                        '"' => out.push('"'),
                        '\\' => out.push('\\'),
                        '/' => out.push('/'),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        'n' => out.push('\n'),
                        'r' => out.push('\r'),
                        't' => out.push('\t'),
                        'u' => {
                            let u = self.hex4(self.i).ok_or(LoadsError::Invalid)?;
                            self.i += 4;
                            if (0xD800..0xDC00).contains(&u)
                                && self.s.get(self.i) == Some(&'\\')
                                && self.s.get(self.i + 1) == Some(&'u')
                            {
                                let u2 = self.hex4(self.i + 2).ok_or(LoadsError::Invalid)?;
                                if (0xDC00..0xE000).contains(&u2) {
                                    self.i += 6;
                                    let cp = 0x10000 + ((u - 0xD800) << 10) + (u2 - 0xDC00);
                                    out.push(char::from_u32(cp).unwrap_or('\u{FFFD}'));
                                    continue;
                                }
                            }
                            match char::from_u32(u) {
                                Some(ch) => out.push(ch),
                                None => out.push(surrogate_carrier(u)),
                            }
                        }
                        _ => return Err(LoadsError::Invalid),
                    }
                }
                c if (c as u32) < 0x20 => return Err(LoadsError::Invalid),
                c => out.push(c),
            }
        }
    }

    fn number(&mut self) -> Result<PyValue, LoadsError> {
        let start = self.i;
        let digit = |p: &Self, at: usize| p.s.get(at).is_some_and(|c| c.is_ascii_digit());
        if self.peek() == Some('-') {
            self.i += 1;
        }
        match self.peek() {
            Some('0') => self.i += 1,
            Some('1'..='9') => {
                while digit(self, self.i) {
                    step();
                    self.i += 1;
                }
            }
            _ => return Err(LoadsError::Invalid),
        }
        let mut is_float = false;
        if self.peek() == Some('.') && digit(self, self.i + 1) {
            is_float = true;
            self.i += 1;
            while digit(self, self.i) {
                self.i += 1;
            }
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            let e_start = self.i;
            self.i += 1;
            if matches!(self.peek(), Some('+' | '-')) {
                self.i += 1;
            }
            if digit(self, self.i) {
                is_float = true;
                while digit(self, self.i) {
                    self.i += 1;
                }
            } else {
                self.i = e_start;
            }
        }
        let text: String = self.s[start..self.i].iter().collect();
        if is_float {
            Ok(PyValue::Float(
                text.parse::<f64>().map_err(|_| LoadsError::Invalid)?,
            ))
        } else {
            let (neg, digits) = match text.strip_prefix('-') {
                Some(d) => (true, d),
                None => (false, text.as_str()),
            };
            if digits.len() > MAX_INT_DIGITS {
                return Err(LoadsError::Invalid);
            }
            let canon = if digits == "0" {
                "0".to_string()
            } else if neg {
                format!("-{digits}")
            } else {
                digits.to_string()
            };
            Ok(PyValue::Int(canon))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dumps_separators_and_order() {
        let v: Value =
            serde_json::from_str(r#"{"b": 1, "a": [true, false, null, "x"], "c": {}}"#).unwrap();
        assert_eq!(
            dumps(&v),
            r#"{"b": 1, "a": [true, false, null, "x"], "c": {}}"#
        );
        assert_eq!(dumps(&json!([])), "[]");
        assert_eq!(dumps(&json!({})), "{}");
        assert_eq!(dumps(&json!([1, [2, [3]]])), "[1, [2, [3]]]");
    }

    #[test]
    fn dumps_ensure_ascii() {
        assert_eq!(dumps_str("é"), r#""\u00e9""#);
        assert_eq!(dumps_str("😀"), r#""\ud83d\ude00""#);
        assert_eq!(dumps_str("\u{7f}"), r#""\u007f""#);
        assert_eq!(dumps_str("\u{1}\u{1f}"), r#""\u0001\u001f""#);
        assert_eq!(dumps_str("a\"b\\c/d"), r#""a\"b\\c/d""#);
        assert_eq!(dumps_str("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(dumps_str("\u{2028}\u{ffff}"), r#""\u2028\uffff""#);
        assert_eq!(dumps_str(""), r#""""#);
    }

    #[test]
    fn dumps_numbers_like_python() {
        assert_eq!(dumps(&json!(1.0)), "1.0");
        assert_eq!(dumps(&json!(0.00001)), "1e-05");
        assert_eq!(dumps(&json!(1e16)), "1e+16");
        assert_eq!(dumps(&json!(1e15)), "1000000000000000.0");
        assert_eq!(dumps(&json!(0.0001)), "0.0001");
        assert_eq!(dumps(&json!(-0.0)), "-0.0");
        assert_eq!(dumps(&json!(0.1)), "0.1");
        assert_eq!(dumps(&json!(123.456)), "123.456");
        assert_eq!(dumps(&json!(1.5e-7)), "1.5e-07");
        assert_eq!(
            dumps(&json!(1.7976931348623157e308)),
            "1.7976931348623157e+308"
        );
        assert_eq!(dumps(&json!(5e-324)), "5e-324");
        assert_eq!(dumps(&json!(9999999999999998.0)), "9999999999999998.0");
        assert_eq!(
            dumps(&json!(12345678901234567890u64)),
            "12345678901234567890"
        );
        assert_eq!(dumps(&json!(-42)), "-42");
        assert_eq!(float_json(f64::NAN), "NaN");
        assert_eq!(float_json(f64::INFINITY), "Infinity");
        assert_eq!(float_json(f64::NEG_INFINITY), "-Infinity");
    }

    #[test]
    fn float_repr_like_python() {
        // Values checked with CPython 3.11 repr().
        for (f, s) in [
            (100000.0, "100000.0"),
            (1e22, "1e+22"),
            (1.0e-4, "0.0001"),
            (1.234e-5, "1.234e-05"),
            (2.5, "2.5"),
            (1e100, "1e+100"),
            (0.3, "0.3"),
            (1.0 / 3.0, "0.3333333333333333"),
            (123456789012345680.0, "1.2345678901234568e+17"),
            (f64::NAN, "nan"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (-1.5, "-1.5"),
        ] {
            assert_eq!(float_repr(f), s, "{f}");
        }
    }

    #[test]
    fn repr_values() {
        assert_eq!(repr(&json!(null)), "None");
        assert_eq!(repr(&json!(true)), "True");
        assert_eq!(repr(&json!(false)), "False");
        assert_eq!(repr(&json!(123)), "123");
        assert_eq!(repr(&json!(1.0)), "1.0");
        assert_eq!(repr(&json!(["x", "y"])), "['x', 'y']");
        assert_eq!(repr(&json!({"a": 1.0, "b": true})), "{'a': 1.0, 'b': True}");
        assert_eq!(repr(&json!({})), "{}");
        assert_eq!(repr(&json!([])), "[]");
        assert_eq!(repr(&json!([[1], {"k": [null]}])), "[[1], {'k': [None]}]");
    }

    #[test]
    fn repr_strings_like_python() {
        assert_eq!(repr_str("it's"), "\"it's\"");
        assert_eq!(repr_str("a\"b"), "'a\"b'");
        assert_eq!(repr_str("a'b\"c"), "'a\\'b\"c'");
        assert_eq!(repr_str("back\\slash"), "'back\\\\slash'");
        assert_eq!(repr_str("\n\r\t"), "'\\n\\r\\t'");
        assert_eq!(repr_str("\u{0}\u{1b}\u{7f}"), "'\\x00\\x1b\\x7f'");
        assert_eq!(repr_str("\u{85}\u{a0}é"), "'\\x85\\xa0é'");
        assert_eq!(
            repr_str("\u{200b}\u{2028}\u{feff}"),
            "'\\u200b\\u2028\\ufeff'"
        );
        assert_eq!(repr_str("\u{e000}"), "'\\ue000'");
        // Assigned after Unicode 14.0: unassigned (so escaped) for CPython 3.11.
        assert_eq!(repr_str("\u{1acf}\u{1f6dc}"), "'\\u1acf\\U0001f6dc'");
        assert_eq!(repr_str("\u{1f6d7}"), "'\u{1f6d7}'");
        assert_eq!(repr_str("\u{f0000}"), "'\\U000f0000'");
        // The documented divergence: plane-16 private use carries lone surrogates.
        assert_eq!(repr_str("\u{10ffff}"), "'\\udfff'");
        assert_eq!(repr_str("😀日本"), "'😀日本'");
        // Combining marks are printable for Python, even at the start.
        assert_eq!(repr_str("\u{301}a"), "'\u{301}a'");
        assert_eq!(repr_str(""), "''");
        assert_eq!(repr_str(" "), "' '");
    }

    #[test]
    fn loads_basic() {
        let v = loads(r#" {"a": [1, 2.5, "x", null, true, false], "b": {}} "#).unwrap();
        assert_eq!(v.repr(), "{'a': [1, 2.5, 'x', None, True, False], 'b': {}}");
        assert_eq!(loads("-0").unwrap(), PyValue::Int("0".into()));
        assert_eq!(loads("-0.0").unwrap().repr(), "-0.0");
        assert_eq!(loads("1e5").unwrap().repr(), "100000.0");
        assert_eq!(loads("1E+2").unwrap().repr(), "100.0");
        assert_eq!(loads("1e400").unwrap().repr(), "inf");
        assert_eq!(loads("NaN").unwrap().repr(), "nan");
        assert_eq!(loads("-Infinity").unwrap().repr(), "-inf");
        assert_eq!(loads("Infinity").unwrap().repr(), "inf");
        assert_eq!(
            loads("123456789012345678901234567890").unwrap().repr(),
            "123456789012345678901234567890"
        );
        assert_eq!(
            loads("\"\\u00e9\\ud83d\\ude00\"").unwrap(),
            PyValue::Str("é😀".into())
        );
    }

    #[test]
    fn loads_duplicates_keep_first_position_last_value() {
        let v = loads(r#"{"a": 1, "b": 2, "a": 3}"#).unwrap();
        assert_eq!(v.repr(), "{'a': 3, 'b': 2}");
    }

    #[test]
    fn loads_rejects_what_python_rejects() {
        for bad in [
            "",
            " ",
            "01",
            "1.",
            ".5",
            "+1",
            "1e",
            "[1,]",
            "{\"a\":1,}",
            "{'a': 1}",
            "\"\t\"",
            "\"\\x\"",
            "\"\\u12\"",
            "nul",
            "[1] x",
            "\u{feff}{}",
            "{\"a\" 1}",
            "[1 2]",
            "tru",
            "-",
            "--1",
            "infinity",
            "nan",
            "\"abc",
        ] {
            assert_eq!(loads(bad), Err(LoadsError::Invalid), "{bad:?}");
        }
        let big = "9".repeat(4301);
        assert_eq!(loads(&big), Err(LoadsError::Invalid));
        assert!(loads(&"9".repeat(4300)).is_ok());
        let deep = format!("{}{}", "[".repeat(513), "]".repeat(513));
        assert_eq!(loads(&deep), Err(LoadsError::TooDeep));
        let ok = format!("{}{}", "[".repeat(512), "]".repeat(512));
        assert!(loads(&ok).is_ok());
        let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        assert_eq!(loads(&deep), Err(LoadsError::TooDeep));
    }

    #[test]
    fn lone_surrogates_round_trip_into_messages() {
        let v = loads(r#"["\ud800", "\udc00x", "\ud83dA"]"#).unwrap();
        assert_eq!(v.repr(), "['\\ud800', '\\udc00x', '\\ud83dA']");
        if let PyValue::List(items) = &v {
            if let PyValue::Str(s) = &items[0] {
                assert_eq!(dumps_str(s), r#""\ud800""#);
            } else {
                panic!("not a string");
            }
        } else {
            panic!("not a list");
        }
    }

    #[test]
    fn truthiness_and_str() {
        assert!(!PyValue::Str(String::new()).is_truthy());
        assert!(PyValue::Str("x".into()).is_truthy());
        assert!(!PyValue::None.is_truthy());
        assert!(!PyValue::Int("0".into()).is_truthy());
        assert!(PyValue::List(vec![PyValue::None]).is_truthy());
        assert_eq!(PyValue::Str("a'b".into()).to_py_str(), "a'b");
        assert_eq!(
            PyValue::List(vec![PyValue::Str("a".into())]).to_py_str(),
            "['a']"
        );
    }
}
