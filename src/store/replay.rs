//! Minted lookup answers kept (sealed) for one replay to the same caller: claimed when taken,
//! deleted only once delivered.

use super::conn::{eval, millis, parsed, Conn, ReadStep, Slot, WriteStep};
use super::keys::Keys;
use super::StoreResult;
use std::time::Duration;

/// A kept minted answer, as taken: the node it was kept for and the sealed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeptMinted {
    pub(crate) uuid: String,
    pub(crate) sealed: Vec<u8>,
}

/// The minted answers kept for one replay.
#[derive(Clone)]
pub(crate) struct ReplayBox {
    conn: Conn,
}

impl ReplayBox {
    pub(crate) fn new(conn: Conn) -> Self {
        ReplayBox { conn }
    }

    /// Keeps a minted lookup answer (sealed) for one replay to the same caller, `ttl` long;
    /// the node remembers it so that its first accepted heartbeat drops it.
    #[cfg(test)]
    pub(crate) async fn put(
        &self,
        replay_key: &str,
        uuid: &str,
        sealed: &[u8],
        ttl: Duration,
    ) -> StoreResult<()> {
        let mut step = WriteStep::new();
        self.write_put(&mut step, replay_key, uuid, sealed, ttl);
        self.conn.write_step(step).await
    }

    /// [`Self::put`], in `step`.
    pub(crate) fn write_put(
        &self,
        step: &mut WriteStep,
        replay_key: &str,
        uuid: &str,
        sealed: &[u8],
        ttl: Duration,
    ) {
        let key = self.conn.keys.minted(replay_key);
        step.write(
            redis::cmd("SET")
                .arg(&key)
                .arg(encode_minted(uuid, sealed))
                .arg("EX")
                .arg(ttl.as_secs().max(1))
                .clone(),
        );
        step.write(redis::cmd("DEL").arg(Keys::minted_claim(&key)).clone());
        step.write(
            redis::cmd("HSET")
                .arg(self.conn.keys.node(uuid))
                .arg("minted")
                .arg(&key)
                .clone(),
        );
    }

    /// Claims a kept minted answer for `claim_ttl`: it stays kept (a take that runs late, after
    /// its caller gave up, loses nothing) but no other take gets it while the claim holds. The
    /// caller confirms it once delivered ([`Self::confirm`]: handed out at most
    /// once) or releases it.
    pub(crate) async fn take(
        &self,
        replay_key: &str,
        claim: &str,
        claim_ttl: Duration,
    ) -> StoreResult<Option<KeptMinted>> {
        let mut step = ReadStep::new();
        let slot = self.read_take(&mut step, replay_key, claim, claim_ttl);
        self.conn.read_step(step).await?.take(slot)
    }

    /// [`Self::take`], in `step` (a claim is a write, but one that is safe to run late: it
    /// deletes nothing, and expires).
    pub(crate) fn read_take(
        &self,
        step: &mut ReadStep,
        replay_key: &str,
        claim: &str,
        claim_ttl: Duration,
    ) -> Slot<Option<KeptMinted>> {
        let key = self.conn.keys.minted(replay_key);
        let (claimed, released) = (Keys::minted_claim(&key), Keys::minted_released(&key, claim));
        let keys = [key, claimed, released];
        let cmd = eval(TAKE, &keys, (claim, millis(claim_ttl)));
        step.read(cmd, |v| {
            let value: Option<Vec<u8>> = parsed(v)?;
            Ok(value.as_deref().and_then(decode_minted))
        })
    }

    /// The claimed answer was delivered: it is deleted (if the claim is still this one).
    pub(crate) async fn confirm(&self, replay_key: &str, claim: &str) -> StoreResult<()> {
        let script = redis::Script::new(
            r"if redis.call('GET', KEYS[2]) == ARGV[1] then
                redis.call('DEL', KEYS[1], KEYS[2])
              end
              return 1",
        );
        let key = self.conn.keys.minted(replay_key);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&key)
            .key(Keys::minted_claim(&key))
            .arg(claim);
        let _: i64 = self.conn.run_script(invocation).await?;
        Ok(())
    }

    /// The claimed answer was not delivered (or the take failed): it can be taken again. A
    /// take with this claim that runs later still (a stall) is refused for `claim_ttl`.
    pub(crate) async fn release(
        &self,
        replay_key: &str,
        claim: &str,
        claim_ttl: Duration,
    ) -> StoreResult<()> {
        // The mark left behind refuses a take with this claim that runs even later (it may
        // come on another connection, after this release).
        let script = redis::Script::new(
            r"if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
              redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
              return 1",
        );
        let key = self.conn.keys.minted(replay_key);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(Keys::minted_claim(&key))
            .key(Keys::minted_released(&key, claim))
            .arg(claim)
            .arg(millis(claim_ttl));
        let _: i64 = self.conn.run_script(invocation).await?;
        Ok(())
    }

    /// Drops the node's kept minted answer (its agent's token works: nothing was lost).
    pub(crate) async fn drop_node(&self, uuid: &str) -> StoreResult<()> {
        self.conn
            .settled(async {
                let script = redis::Script::new(
                    r"local k = redis.call('HGET', KEYS[1], 'minted')
              if k then
                redis.call('DEL', k, k .. ':claim')
                redis.call('HDEL', KEYS[1], 'minted')
              end
              return 1",
                );
                let mut invocation = script.prepare_invoke();
                invocation.key(self.conn.keys.node(uuid));
                let _: i64 = self.conn.run_script(invocation).await?;
                Ok(())
            })
            .await
    }
}

/// Reads and claims in one step; nothing is deleted, so a take that runs late (its caller gave
/// up) only leaves a claim, which expires or is released. KEYS: the kept answer, its claim,
/// the release mark of this claim; ARGV: the claim, its TTL in ms.
const TAKE: &str = r"if redis.call('EXISTS', KEYS[3]) == 1 then return nil end
  local v = redis.call('GET', KEYS[1])
  if not v then return nil end
  if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return v end
  return nil";

/// A kept minted answer as stored: the node uuid, a newline, the sealed answer.
fn encode_minted(uuid: &str, sealed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(uuid.len() + 1 + sealed.len());
    out.extend_from_slice(uuid.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(sealed);
    out
}

fn decode_minted(value: &[u8]) -> Option<KeptMinted> {
    let at = value.iter().position(|b| *b == b'\n')?;
    let uuid = std::str::from_utf8(&value[..at]).ok()?.to_string();
    Some(KeptMinted {
        uuid,
        sealed: value[at + 1..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_value_round_trips() {
        let v = encode_minted("u-1", b"\x00\nsealed\n");
        let kept = decode_minted(&v).unwrap();
        assert_eq!(kept.uuid, "u-1");
        assert_eq!(kept.sealed, b"\x00\nsealed\n".to_vec());
    }

    #[test]
    fn a_minted_value_without_its_node_is_refused() {
        assert_eq!(decode_minted(b"no-newline"), None);
        assert_eq!(decode_minted(b"\xff\xfe\nx"), None);
    }
}
