//! Sealing: what must carry an agent token through Redis (a heartbeat waiting for Ironic to
//! come back) is encrypted and authenticated with a key from the configuration
//! (ChaCha20-Poly1305, a fresh random nonce per value), so that any gateway process holding
//! the key can open it and nothing in Redis reveals the token.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl Sealer {
    /// A sealer from a 32-byte key; `None` for any other length.
    pub fn new(key: &[u8]) -> Option<Self> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key).ok()?;
        Some(Sealer {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    /// `nonce || ciphertext || tag`; `purpose` is bound in as associated data, so a value
    /// sealed for one use cannot be opened as another.
    pub fn seal(&self, purpose: &str, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.as_bytes()),
                &mut buf,
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Some(out)
    }

    /// Opens a sealed value; `None` if it was not sealed with this key for this purpose.
    pub fn open(&self, purpose: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let s = Sealer::new(&[7u8; 32]).unwrap();
        let secret = b"{\"agent_token\": \"_Z6oF13gU4P5Alu6900g0_JkcKHYaI-mQfKjTrfrbqM\"}";
        let a = s.seal("heartbeat", secret).unwrap();
        let b = s.seal("heartbeat", secret).unwrap();
        assert_ne!(a, b, "fresh nonce each time");
        assert!(
            !a.windows(10).any(|w| w == &secret[20..30]),
            "no plaintext inside"
        );
        assert_eq!(s.open("heartbeat", &a).unwrap(), secret.to_vec());
        assert!(s.open("lookup", &a).is_none(), "bound to its purpose");
        let mut bad = a.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(s.open("heartbeat", &bad).is_none());
        assert!(
            Sealer::new(&[7u8; 32])
                .unwrap()
                .open("heartbeat", &a)
                .is_some(),
            "same key, other process"
        );
        assert!(Sealer::new(&[8u8; 32])
            .unwrap()
            .open("heartbeat", &a)
            .is_none());
        assert!(Sealer::new(&[1u8; 16]).is_none());
    }
}
