//! Sealing: what must carry an agent token through Redis (a heartbeat waiting for Ironic to
//! come back, a minted lookup answer kept for one replay) is encrypted and authenticated with a
//! key from the configuration (ChaCha20-Poly1305, a fresh random nonce per value), so that any
//! gateway process holding the key can open it and nothing in Redis reveals the token.
//!
//! Each value is bound to where it lies ([`SealedPlace`], as associated data): its Redis key
//! and its node. Copied to another key (another caller's replay key, another node's kept
//! heartbeat) it does not open. The key is the logical one, without `redis.key_prefix`: a
//! changed prefix does not strand what is kept, and deployments that share a Redis under
//! different prefixes have different seal keys anyway.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Where a sealed value lies; it opens only there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SealedPlace<'a> {
    /// A minted lookup answer kept for one replay to `replay_key` (the normalised request and
    /// the caller's address), of node `node`.
    MintedAnswer { replay_key: &'a str, node: &'a str },
    /// The kept heartbeat of node `node`.
    PendingHeartbeat { node: &'a str },
}

impl SealedPlace<'_> {
    /// The associated data: a version, the purpose, the logical Redis key, the node (each part
    /// separated by a NUL, which none of them holds).
    fn associated_data(&self) -> Vec<u8> {
        let (purpose, key, node) = match self {
            SealedPlace::MintedAnswer { replay_key, node } => (
                "minted-lookup",
                super::keys::minted_key_name(replay_key),
                *node,
            ),
            SealedPlace::PendingHeartbeat { node } => {
                ("heartbeat", super::keys::pending_key_name(node), *node)
            }
        };
        format!("ironic-edge seal v2\0{purpose}\0{key}\0{node}").into_bytes()
    }
}

pub(crate) struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl Sealer {
    /// A sealer from a 32-byte key; `None` for any other length.
    pub(crate) fn new(key: &[u8]) -> Option<Self> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key).ok()?;
        Some(Sealer {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    /// `nonce || ciphertext || tag`, bound to `place`.
    pub(crate) fn seal(&self, place: &SealedPlace<'_>, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place.associated_data()),
                &mut buf,
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Some(out)
    }

    /// Opens a sealed value; `None` if it was not sealed with this key for this place.
    pub(crate) fn open(&self, place: &SealedPlace<'_>, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(place.associated_data()), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"{\"agent_token\": \"_Z6oF13gU4P5Alu6900g0_JkcKHYaI-mQfKjTrfrbqM\"}";

    fn sealer(byte: u8) -> Sealer {
        Sealer::new(&[byte; 32]).unwrap()
    }

    const HB_A: SealedPlace<'static> = SealedPlace::PendingHeartbeat { node: "node-a" };
    const HB_B: SealedPlace<'static> = SealedPlace::PendingHeartbeat { node: "node-b" };
    const MINTED_A: SealedPlace<'static> = SealedPlace::MintedAnswer {
        replay_key: "macs\x00192.0.2.1",
        node: "node-a",
    };

    #[test]
    fn round_trip_with_a_fresh_nonce() {
        let s = sealer(7);
        let a = s.seal(&HB_A, SECRET).unwrap();
        let b = s.seal(&HB_A, SECRET).unwrap();
        assert_ne!(a, b, "fresh nonce each time");
        assert!(
            !a.windows(10).any(|w| w == &SECRET[20..30]),
            "no plaintext inside"
        );
        assert_eq!(s.open(&HB_A, &a).unwrap(), SECRET.to_vec());
    }

    #[test]
    fn another_process_with_the_same_key_opens_it() {
        let a = sealer(7).seal(&MINTED_A, SECRET).unwrap();
        assert_eq!(sealer(7).open(&MINTED_A, &a).unwrap(), SECRET.to_vec());
    }

    #[test]
    fn another_key_does_not_open_it() {
        let a = sealer(7).seal(&HB_A, SECRET).unwrap();
        assert!(sealer(8).open(&HB_A, &a).is_none());
    }

    #[test]
    fn a_tampered_value_does_not_open() {
        let s = sealer(7);
        let mut bad = s.seal(&HB_A, SECRET).unwrap();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(s.open(&HB_A, &bad).is_none());
        assert!(s.open(&HB_A, &bad[..5]).is_none());
    }

    #[test]
    fn another_nodes_heartbeat_place_does_not_open_it() {
        let s = sealer(7);
        let a = s.seal(&HB_A, SECRET).unwrap();
        assert!(s.open(&HB_B, &a).is_none());
    }

    #[test]
    fn another_replay_key_does_not_open_it() {
        let s = sealer(7);
        let a = s.seal(&MINTED_A, SECRET).unwrap();
        let other_caller = SealedPlace::MintedAnswer {
            replay_key: "macs\x00192.0.2.2",
            node: "node-a",
        };
        assert!(s.open(&other_caller, &a).is_none());
    }

    #[test]
    fn another_node_under_the_same_replay_key_does_not_open_it() {
        let s = sealer(7);
        let a = s.seal(&MINTED_A, SECRET).unwrap();
        let other_node = SealedPlace::MintedAnswer {
            replay_key: "macs\x00192.0.2.1",
            node: "node-b",
        };
        assert!(s.open(&other_node, &a).is_none());
    }

    #[test]
    fn a_heartbeat_does_not_open_as_a_minted_answer() {
        let s = sealer(7);
        let a = s.seal(&HB_A, SECRET).unwrap();
        let minted = SealedPlace::MintedAnswer {
            replay_key: "x",
            node: "node-a",
        };
        assert!(s.open(&minted, &a).is_none());
    }

    #[test]
    fn only_a_32_byte_key_makes_a_sealer() {
        assert!(Sealer::new(&[1u8; 16]).is_none());
        assert!(Sealer::new(&[1u8; 33]).is_none());
    }
}
