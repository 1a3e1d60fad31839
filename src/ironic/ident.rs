//! Identifiers: UUIDs (`oslo_utils.uuidutils.is_uuid_like`), node names
//! (`ironic.common.utils.is_valid_logical_name`) and MAC addresses (`netutils.is_valid_mac`).

/// `is_uuid_like`: accepts upper case, no hyphens, braces and `urn:uuid:` (whatever
/// `uuid.UUID(value)` accepts whose `str()` equals the value lower-cased with `-`/`{}`/`urn:uuid:`
/// removed, exactly as oslo.utils does it).
///
/// oslo strips every `urn:`, then every `uuid:` (anywhere in the value), then `{`/`}` from both
/// ends, then every `-`; the rest must be 32 hex digits (any case). So `uurn:uid:<32 hex>`,
/// `{{<uuid>}}`, `-<32 hex>-` and `1234…567-8` are "UUID-like", `URN:UUID:…` and a trailing
/// newline are not.
pub fn is_uuid_like(value: &str) -> bool {
    // The canonical form (every heartbeat's node): no copies. Anything else as Ironic reads it.
    is_canonical_uuid(value) || oslo_uuid_like(value)
}

/// `is_uuid_like` as oslo writes it.
fn oslo_uuid_like(value: &str) -> bool {
    let h = value.replace("urn:", "").replace("uuid:", "");
    let h = h.trim_matches(|c| c == '{' || c == '}').replace('-', "");
    h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `8-4-4-4-12` hex digits: UUID-like as it stands.
fn is_canonical_uuid(value: &str) -> bool {
    let b = value.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// `is_valid_logical_name` (RFC 3986 unreserved characters, at most 255, not UUID-like is NOT required).
///
/// The regex is `^[A-Z0-9-._~]+$` with `re.I`, so besides `[A-Za-z0-9._~-]` Python's Unicode
/// case folding also admits `İ` (U+0130), `ı` (U+0131), `ſ` (U+017F) and the Kelvin sign
/// (U+212A); `$` also matches before one final `\n` (`"node\n"` is valid). The length counts
/// code points, the newline included.
pub fn is_valid_logical_name(value: &str) -> bool {
    if value.chars().count() > 255 {
        return false;
    }
    let body = value.strip_suffix('\n').unwrap_or(value);
    !body.is_empty()
        && body.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    '-' | '.' | '_' | '~' | '\u{130}' | '\u{131}' | '\u{17f}' | '\u{212a}'
                )
        })
}

/// A MAC as Ironic accepts it for lookup: `[0-9a-f]{2}(:[0-9a-f]{2}){5}` after lower-casing.
/// Returns the lower-cased form, or `None` if invalid.
///
/// As `re.match(...$)` also matches before a final newline, `"52:54:00:12:34:56\n"` is valid
/// and normalises to itself (newline kept, so it never matches a port).
pub fn normalize_mac(value: &str) -> Option<String> {
    let lower = value.to_lowercase();
    let body = lower.strip_suffix('\n').unwrap_or(&lower);
    let b = body.as_bytes();
    if b.len() != 17 {
        return None;
    }
    for (i, &c) in b.iter().enumerate() {
        let ok = if i % 3 == 2 {
            c == b':'
        } else {
            c.is_ascii_digit() || (b'a'..=b'f').contains(&c)
        };
        if !ok {
            return None;
        }
    }
    Some(lower)
}

/// A MAC that [`normalize_mac`] accepts, in 7 bytes: its six octets, and whether it kept a
/// final newline (such a MAC is valid but never matches a port). What a lookup holds of a
/// long MAC list is this, never the caller's text.
///
/// The order is that of the normalised strings (fixed-width lower-case hex sorts as the
/// octets do, and a newline sorts after its prefix): sorting either gives the same list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac {
    octets: [u8; 6],
    newline: bool,
}

impl Mac {
    /// The MAC of an address, if Ironic accepts it: exactly [`normalize_mac`], without its
    /// copy. An address with a non-ASCII character is never one (no character outside ASCII
    /// lower-cases to a hex digit or `:`; the Kelvin sign becomes `k`), so ASCII case is all
    /// there is to ignore.
    pub fn parse(value: &str) -> Option<Mac> {
        let body = value.strip_suffix('\n').unwrap_or(value);
        let b = body.as_bytes();
        if b.len() != 17 {
            return None;
        }
        let hex = |c: u8| match c.to_ascii_lowercase() {
            c @ b'0'..=b'9' => Some(c - b'0'),
            c @ b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut octets = [0u8; 6];
        for (i, o) in octets.iter_mut().enumerate() {
            if i > 0 && b[3 * i - 1] != b':' {
                return None;
            }
            *o = hex(b[3 * i])? << 4 | hex(b[3 * i + 1])?;
        }
        Some(Mac {
            octets,
            newline: body.len() < value.len(),
        })
    }

    /// Appends the normalised form (`52:54:00:12:34:56`, and the newline if it had one).
    pub fn write_to(&self, out: &mut String) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, o) in self.octets.iter().enumerate() {
            if i > 0 {
                out.push(':');
            }
            out.push(HEX[usize::from(o >> 4)] as char);
            out.push(HEX[usize::from(o & 0xf)] as char);
        }
        if self.newline {
            out.push('\n');
        }
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::with_capacity(18);
        self.write_to(&mut s);
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_their_normalised_strings() {
        for a in [
            "52:54:00:12:34:56",
            "52:54:00:AB:cd:EF",
            "00:00:00:00:00:00",
            "ff:ff:ff:ff:ff:ff",
            "52:54:00:12:34:56\n",
            "52:54:00:12:34:5",
            "52-54-00-12-34-56",
            "zz:54:00:12:34:56",
            "",
            "\n",
            "52:54:00:12:34:56\n\n",
            " 52:54:00:12:34:56",
            "52:54:00:12:34:56 ",
            "52:54:00:12:34:56:",
            "52:54:00:12:34:5G",
            "52;54:00:12:34:56",
            "52:54:00:12:34:5\u{212a}",
            "52:54:00:12:34:\u{130}6",
            "52:54:00:12:34:56\u{307}",
            "\u{ff15}2:54:00:12:34:56",
            "52:54:00:12:34:56\r",
        ] {
            assert_eq!(
                Mac::parse(a).map(|m| m.to_string()),
                normalize_mac(a),
                "{a:?}"
            );
        }
        // Sorted as the strings are.
        let mut strings = vec![
            "52:54:00:12:34:56\n",
            "52:54:00:12:34:56",
            "0a:00:00:00:00:00",
            "a0:00:00:00:00:00",
            "09:ff:ff:ff:ff:ff",
            "52:54:00:12:34:5f",
        ];
        let mut macs: Vec<Mac> = strings.iter().map(|s| Mac::parse(s).unwrap()).collect();
        strings.sort();
        macs.sort();
        let back: Vec<String> = macs.iter().map(Mac::to_string).collect();
        assert_eq!(back, strings);
        assert_eq!(std::mem::size_of::<Mac>(), 7);
    }

    #[test]
    fn uuid_like_as_oslo() {
        // Expected values from oslo_utils.uuidutils.is_uuid_like (oslo.utils 10.2.0).
        let cases = [
            ("1be26c0b-03f2-4d2e-ae87-c02d7f33c123", true),
            ("1BE26C0B-03F2-4D2E-AE87-C02D7F33C123", true),
            ("1be26c0b03f24d2eae87c02d7f33c123", true),
            ("{1be26c0b-03f2-4d2e-ae87-c02d7f33c123}", true),
            ("{{12345678-1234-5678-1234-567812345678}}", true),
            ("{12345678123456781234567812345678", true),
            ("urn:uuid:12345678123456781234567812345678", true),
            ("uurn:uid:12345678123456781234567812345678", true),
            ("uuid:urn:12345678123456781234567812345678", true),
            ("URN:UUID:12345678123456781234567812345678", false),
            ("12345678-1234-5678-1234-567812345678\n", false),
            ("1234567812345678123456781234567-8", true),
            ("0x345678123456781234567812345678", false),
            ("-12345678123456781234567812345678-", true),
            ("----", false),
            ("12345678-1234-5678-1234-5678123456{}78", false),
            ("", false),
            ("abc", false),
            ("1be26c0b-03f2-4d2e-ae87-c02d7f33c12", false),
            ("1be26c0b-03f2-4d2e-ae87-c02d7f33c1234", false),
            ("1be26c0b-03f2-4d2e-ae87-c02d7f33c12g", false),
            (" 1be26c0b-03f2-4d2e-ae87-c02d7f33c123", false),
            ("1be26c0b-03f2-4d2e-ae87-c02d7f33c1２3", false),
        ];
        for (v, want) in cases {
            assert_eq!(is_uuid_like(v), want, "{v:?}");
        }
    }

    proptest::proptest! {
        /// The canonical form is only a shortcut: oslo's rule reads it alike.
        #[test]
        fn the_canonical_form_is_uuid_like_by_oslos_rule(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 16),
            at in 0usize..37,
            with in proptest::sample::select(vec!['0', 'F', 'g', '-', '{', ':', ' ', 'x']),
        ) {
            let hex: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
            let canonical = format!(
                "{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]
            );
            proptest::prop_assert!(is_canonical_uuid(&canonical) && oslo_uuid_like(&canonical));
            // One character changed, or one added at the end: never UUID-like by the shortcut
            // where oslo's rule says otherwise.
            let mut v: Vec<char> = canonical.chars().collect();
            if at < v.len() { v[at] = with } else { v.push(with) }
            let v: String = v.into_iter().collect();
            if is_canonical_uuid(&v) {
                proptest::prop_assert!(oslo_uuid_like(&v), "{v:?}");
            }
        }
    }

    #[test]
    fn logical_names() {
        for ok in [
            "node",
            "node.two",
            "peer-node-00001",
            "a_b~c",
            "A",
            "node\n",
            "\u{131}",
            "K\u{212a}",
            "\u{17f}\u{130}",
            "1be26c0b-03f2-4d2e-ae87-c02d7f33c123",
        ] {
            assert!(is_valid_logical_name(ok), "{ok:?}");
        }
        for bad in [
            "", "\n", "a\n\n", "BAD!", "a b", "a/b", "a,b", "é", "a%20", "\na",
        ] {
            assert!(!is_valid_logical_name(bad), "{bad:?}");
        }
        assert!(is_valid_logical_name(&"a".repeat(255)));
        assert!(!is_valid_logical_name(&"a".repeat(256)));
        assert!(is_valid_logical_name(&format!("{}\n", "a".repeat(254))));
        assert!(!is_valid_logical_name(&format!("{}\n", "a".repeat(255))));
    }

    #[test]
    fn macs() {
        assert_eq!(
            normalize_mac("52:54:00:12:34:56").as_deref(),
            Some("52:54:00:12:34:56")
        );
        assert_eq!(
            normalize_mac("AA:BB:CC:DD:EE:FF").as_deref(),
            Some("aa:bb:cc:dd:ee:ff")
        );
        assert_eq!(
            normalize_mac("52:54:00:12:34:56\n").as_deref(),
            Some("52:54:00:12:34:56\n")
        );
        for bad in [
            "",
            "52:54:00:12:34:56\n\n",
            "52:54:00:12:34:5G",
            "52:54:00:12:34:56 ",
            " 52:54:00:12:34:56",
            "52-54-00-12-34-56",
            "525400123456",
            "5254.0012.3456",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:5",
            "80:00:02:08:fe:80:00:00:00:00:00:00:02:c9:03:00:00:0f:8a:b1",
            "meow",
        ] {
            assert_eq!(normalize_mac(bad), None, "{bad:?}");
        }
    }
}
