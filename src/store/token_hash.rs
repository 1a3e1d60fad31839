//! Agent tokens are never stored, only a salted (fresh random salt per record), keyed hash:
//!
//! - with a seal key: `v2$<salt>$<HMAC-SHA256(k, salt || token)>`, where
//!   `k = HMAC-SHA256(seal_key, "ironic-edge token-hash v2")`. Only a holder of the key can
//!   compute one, so whoever can write Redis cannot plant a hash for a token of its choosing;
//! - without one: `v1$<salt>$<HMAC-SHA256(salt, token)>`, salted but unkeyed (anyone who can
//!   write Redis can compute one: that is why the seal key also keys these hashes).
//!
//! A hash of the other scheme, or made with another key, never verifies: after the key changes,
//! each node's token is learnt again from Ironic's next answers. Comparison is constant-time.
//!
//! The key is installed once at start-up ([`install_seal_key`]) for the whole process, like
//! the logger: the heartbeat's decision functions stay pure functions of what they are given.

use hmac::{Hmac, Mac};
use once_cell::sync::OnceCell;
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What the token-hash secret is derived with (domain separation from the sealing).
const DERIVATION_LABEL: &[u8] = b"ironic-edge token-hash v2";

static TOKEN_HASH_SECRET: OnceCell<[u8; 32]> = OnceCell::new();

/// The secret token hashes are keyed with, derived from the seal key.
pub(crate) fn derive_secret(seal_key: &[u8]) -> [u8; 32] {
    let mut secret = [0u8; 32];
    if let Ok(mut m) = HmacSha256::new_from_slice(seal_key) {
        m.update(DERIVATION_LABEL);
        secret.copy_from_slice(&m.finalize().into_bytes());
    }
    secret
}

/// Keys every token hash of this process with a secret derived from `seal_key`. Only the first
/// call counts (one key per process).
pub(crate) fn install_seal_key(seal_key: &[u8]) {
    let _ = TOKEN_HASH_SECRET.set(derive_secret(seal_key));
}

/// The HMAC of one record: `HMAC(secret, salt || token)` when keyed (v2), else
/// `HMAC(salt, token)` (v1).
fn record_mac(secret: Option<&[u8; 32]>, salt: &[u8], token: &str) -> Option<HmacSha256> {
    let mut m = match secret {
        Some(s) => {
            let mut m = HmacSha256::new_from_slice(s).ok()?;
            m.update(salt);
            m
        }
        None => HmacSha256::new_from_slice(salt).ok()?,
    };
    m.update(token.as_bytes());
    Some(m)
}

/// Lower-case hex of `bytes` (digests in keys and fingerprints).
pub(crate) fn hex(bytes: &[u8]) -> String {
    // On every heartbeat (its fingerprint): a table, not a `format!` per byte.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Hashes a token with a new random salt, keyed if `secret` is given.
pub(crate) fn hash_token_with(secret: Option<&[u8; 32]>, token: &str) -> String {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    let scheme = if secret.is_some() { "v2" } else { "v1" };
    // Any key length is accepted by HMAC; the fallback is unreachable.
    let digest = record_mac(secret, &salt, token)
        .map(|m| m.finalize().into_bytes().to_vec())
        .unwrap_or_default();
    format!("{scheme}${}${}", hex(&salt), hex(&digest))
}

/// Does `token` match the stored hash, made with `secret` (or unkeyed, without one)? Malformed
/// records and records of the other scheme never match.
pub(crate) fn verify_token_with(secret: Option<&[u8; 32]>, stored: &str, token: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some(scheme), Some(salt), Some(digest), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Some(salt), Some(expected)) = (unhex(salt), unhex(digest)) else {
        return false;
    };
    match (scheme, secret) {
        ("v2", Some(_)) | ("v1", None) => {}
        _ => return false,
    }
    record_mac(secret, &salt, token).is_some_and(|m| m.verify_slice(&expected).is_ok())
}

/// Hashes a token with a new random salt (keyed with the installed secret, if any).
pub(crate) fn hash_token(token: &str) -> String {
    hash_token_with(TOKEN_HASH_SECRET.get(), token)
}

/// Does `token` match the stored hash (of this process's scheme and key)?
pub(crate) fn verify_token(stored: &str, token: &str) -> bool {
    verify_token_with(TOKEN_HASH_SECRET.get(), stored, token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "_Z6oF13gU4P5Alu6900g0_JkcKHYaI-mQfKjTrfrbqM";

    fn secret(byte: u8) -> [u8; 32] {
        derive_secret(&[byte; 32])
    }

    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(unhex(&hex(&[1, 2, 254])), Some(vec![1, 2, 254]));
    }

    #[test]
    fn unkeyed_round_trip_and_salted() {
        let a = hash_token_with(None, TOKEN);
        let b = hash_token_with(None, TOKEN);
        assert_ne!(a, b, "each hash has its own salt");
        assert!(a.starts_with("v1$"));
        assert!(!a.contains(TOKEN));
        assert!(verify_token_with(None, &a, TOKEN));
        assert!(verify_token_with(None, &b, TOKEN));
        assert!(!verify_token_with(None, &a, "other"));
        assert!(!verify_token_with(None, &a, ""));
    }

    #[test]
    fn keyed_round_trip_and_salted() {
        let k = secret(1);
        let a = hash_token_with(Some(&k), TOKEN);
        let b = hash_token_with(Some(&k), TOKEN);
        assert_ne!(a, b, "each hash has its own salt");
        assert!(a.starts_with("v2$"));
        assert!(!a.contains(TOKEN));
        assert!(verify_token_with(Some(&k), &a, TOKEN));
        assert!(verify_token_with(Some(&k), &b, TOKEN));
        assert!(!verify_token_with(Some(&k), &a, "other"));
    }

    #[test]
    fn an_unkeyed_hash_does_not_verify_with_a_key() {
        let planted = hash_token_with(None, TOKEN);
        assert!(!verify_token_with(Some(&secret(1)), &planted, TOKEN));
    }

    #[test]
    fn a_keyed_hash_does_not_verify_without_the_key() {
        let k = secret(1);
        let stored = hash_token_with(Some(&k), TOKEN);
        assert!(!verify_token_with(None, &stored, TOKEN));
        assert!(!verify_token_with(Some(&secret(2)), &stored, TOKEN));
    }

    #[test]
    fn a_keyed_hash_relabelled_as_unkeyed_does_not_verify() {
        let k = secret(1);
        let stored = hash_token_with(Some(&k), TOKEN);
        let relabelled = stored.replacen("v2$", "v1$", 1);
        assert!(!verify_token_with(None, &relabelled, TOKEN));
        assert!(!verify_token_with(Some(&k), &relabelled, TOKEN));
    }

    #[test]
    fn the_secret_is_derived_not_the_seal_key_itself() {
        let key = [7u8; 32];
        assert_ne!(derive_secret(&key), key);
        assert_eq!(derive_secret(&key), derive_secret(&key));
        assert_ne!(derive_secret(&key), derive_secret(&[8u8; 32]));
    }

    #[test]
    fn malformed_never_matches() {
        let k = secret(1);
        for s in [
            "",
            "v1",
            "v2",
            "v1$zz$00",
            "v2$zz$00",
            "v3$00$00",
            "v1$00$00$00",
            "v2$00$00$00",
            "plain-token",
        ] {
            assert!(!verify_token_with(None, s, "plain-token"), "{s}");
            assert!(!verify_token_with(Some(&k), s, "plain-token"), "{s}");
        }
    }
}
