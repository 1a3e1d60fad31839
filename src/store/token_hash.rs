//! Agent tokens are never stored: only `v1$<salt>$<HMAC-SHA256(salt, token)>`, with a fresh
//! random salt per record, is. Comparison is constant-time.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

fn mac(salt: &[u8], token: &str) -> Option<Vec<u8>> {
    let mut m = HmacSha256::new_from_slice(salt).ok()?;
    m.update(token.as_bytes());
    Some(m.finalize().into_bytes().to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

/// Hashes a token with a new random salt.
pub fn hash_token(token: &str) -> String {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    // A 16-byte key is always accepted by HMAC; the fallback is unreachable.
    let digest = mac(&salt, token).unwrap_or_default();
    format!("v1${}${}", hex(&salt), hex(&digest))
}

/// Does `token` match the stored hash? Malformed records never match.
pub fn verify_token(stored: &str, token: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some("v1"), Some(salt), Some(digest), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Some(salt), Some(expected)) = (unhex(salt), unhex(digest)) else {
        return false;
    };
    let Ok(mut m) = HmacSha256::new_from_slice(&salt) else {
        return false;
    };
    m.update(token.as_bytes());
    m.verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_salted() {
        let t = "_Z6oF13gU4P5Alu6900g0_JkcKHYaI-mQfKjTrfrbqM";
        let a = hash_token(t);
        let b = hash_token(t);
        assert_ne!(a, b, "each hash has its own salt");
        assert!(!a.contains(t));
        assert!(verify_token(&a, t));
        assert!(verify_token(&b, t));
        assert!(!verify_token(&a, "other"));
        assert!(!verify_token(&a, ""));
    }

    #[test]
    fn malformed_never_matches() {
        for s in [
            "",
            "v1",
            "v1$zz$00",
            "v2$00$00",
            "v1$00$00$00",
            "plain-token",
        ] {
            assert!(!verify_token(s, "plain-token"), "{s}");
        }
    }
}
