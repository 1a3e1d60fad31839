//! The Redis implementation of [`EdgeStore`].
//!
//! One multiplexed `ConnectionManager` per process, created lazily inside the runtime that
//! first needs it (one made outside a runtime panics, one made on a temporary runtime loses
//! its driver). Reconnects are few and short, and every call has a hard deadline on top, so a
//! down or frozen Redis costs a request at most `command_timeout_ms` before it is forwarded.
//!
//! Key names: [`super::keys`].
//!
//! Every write is safe if it runs late, after its caller gave up on it (a frozen Redis runs
//! what it had received when it thaws): nothing is deleted on a take, only claimed.

use super::keys::Keys;
use super::{
    EdgeStore, FlightResult, FlightState, IndexUpdate, IndexedNode, KeptMinted, NodeRecord,
    StoreError, StoreResult,
};
use crate::config::EdgeConfig;
use async_trait::async_trait;
use once_cell::sync::OnceCell;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

pub struct RedisStore {
    client: redis::Client,
    manager: OnceCell<ConnectionManager>,
    keys: Keys,
    timeout: Duration,
    connect_timeout: Duration,
    /// Entries of the in-process view (0: off).
    view_entries: usize,
}

/// Marks a read as served by the in-process view: Redis tracks the key for this process and
/// pushes an invalidation when anyone changes it (or it expires, is evicted or flushed); a
/// reconnect starts an empty view. Only reads of one small key each, whose distinct reads per
/// key are fixed, are marked (node records, negative-cache markers, the index's markers): the
/// view bounds keys, not the reads kept under one key.
fn viewed(mut cmd: redis::Cmd) -> redis::Cmd {
    cmd.set_cache_config(redis::CommandCacheConfig::new());
    cmd
}

impl RedisStore {
    pub fn new(cfg: &EdgeConfig) -> Result<Self, crate::config::ConfigError> {
        let info = cfg.redis_connection_info()?;
        let client = redis::Client::open(info)
            .map_err(|e| crate::config::ConfigError::new("ironic_edge.redis.url", e.to_string()))?;
        Ok(RedisStore {
            client,
            manager: OnceCell::new(),
            keys: Keys::new(&cfg.redis.key_prefix),
            timeout: cfg.redis_command_timeout(),
            connect_timeout: Duration::from_millis(cfg.redis.connect_timeout_ms),
            view_entries: cfg.redis.view_entries,
        })
    }

    fn manager(&self) -> StoreResult<ConnectionManager> {
        self.manager
            .get_or_try_init(|| {
                let mut config = ConnectionManagerConfig::new()
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(Duration::from_millis(200))
                    .set_response_timeout(Some(self.timeout))
                    .set_connection_timeout(Some(self.connect_timeout));
                if let Some(entries) = std::num::NonZeroUsize::new(self.view_entries) {
                    config = config.set_cache_config(
                        redis::caching::CacheConfig::new()
                            .set_mode(redis::caching::CacheMode::OptIn)
                            .set_size(entries),
                    );
                }
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .cloned()
            .map_err(|e| StoreError(e.to_string()))
    }

    /// Every call goes through here: the hard per-call deadline on top of the client's own
    /// timeouts (it also covers waiting on a reconnect in progress).
    async fn within<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> StoreResult<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError(e.to_string())),
            Err(_) => Err(StoreError("deadline exceeded".into())),
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> StoreResult<T> {
        let mut conn = self.manager()?;
        self.within(cmd.query_async::<T>(&mut conn)).await
    }

    async fn run_pipe<T: redis::FromRedisValue>(&self, pipe: redis::Pipeline) -> StoreResult<T> {
        let mut conn = self.manager()?;
        self.within(pipe.query_async::<T>(&mut conn)).await
    }

    async fn run_script<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> StoreResult<T> {
        let mut conn = self.manager()?;
        self.within(invocation.invoke_async::<T>(&mut conn)).await
    }

    /// A read the in-process view may answer ([`viewed`] commands only).
    async fn run_viewed<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> StoreResult<T> {
        let mut conn = self.manager()?;
        self.within(cmd.query_async::<T>(&mut conn)).await
    }

    /// A pipeline of reads the in-process view may answer ([`viewed`] commands only).
    async fn run_pipe_viewed<T: redis::FromRedisValue>(
        &self,
        pipe: redis::Pipeline,
    ) -> StoreResult<T> {
        let mut conn = self.manager()?;
        self.within(pipe.query_async::<T>(&mut conn)).await
    }

    /// After a write to a key the view serves (node records, negative caches, the index): Redis
    /// sends this process the invalidations of its own writes right after the command's reply
    /// (Redis 7), so one more round trip guarantees that the view has dropped what the write
    /// changed before the write is reported done (a heartbeat decided right after must not read
    /// the record as it was before).
    async fn settled<T>(
        &self,
        write: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let written = write.await;
        self.settle_view().await;
        written
    }

    /// A negative-cache marker, `ttl` long.
    async fn set_marker(&self, key: String, ttl: Duration) -> StoreResult<()> {
        self.settled(
            self.run(
                redis::cmd("SET")
                    .arg(key)
                    .arg("1")
                    .arg("PX")
                    .arg(millis(ttl))
                    .clone(),
            ),
        )
        .await
    }

    async fn settle_view(&self) {
        if self.view_entries > 0 {
            if let Ok(mut conn) = self.manager() {
                let _ = self
                    .within(redis::cmd("PING").query_async::<()>(&mut conn))
                    .await;
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

#[async_trait]
impl EdgeStore for RedisStore {
    async fn lookup_not_found(&self, key: &str) -> StoreResult<bool> {
        self.run_viewed(viewed(
            redis::cmd("EXISTS")
                .arg(self.keys.lookup_not_found(key))
                .clone(),
        ))
        .await
    }

    async fn remember_lookup_not_found(&self, key: &str, ttl: Duration) -> StoreResult<()> {
        self.set_marker(self.keys.lookup_not_found(key), ttl).await
    }

    async fn begin_flight(&self, key: &str, owner: &str, ttl: Duration) -> StoreResult<bool> {
        let reply: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(self.keys.flight(key))
                    .arg(owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(ttl))
                    .clone(),
            )
            .await?;
        Ok(reply.is_some())
    }

    async fn flight_state(&self, key: &str) -> StoreResult<FlightState> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(self.keys.flight_result(key))
            .cmd("EXISTS")
            .arg(self.keys.flight(key));
        let (result, running): (Option<String>, bool) = self.run_pipe(pipe).await?;
        if let Some(text) = result {
            return Ok(FlightState::Done(decode_result(&text)));
        }
        Ok(if running {
            FlightState::Running
        } else {
            FlightState::Gone
        })
    }

    async fn end_flight(
        &self,
        key: &str,
        owner: &str,
        result: &FlightResult,
        ttl: Duration,
    ) -> StoreResult<()> {
        // Publish the result, then release the flight only if it is still ours (it may have
        // expired and been taken by another process meanwhile).
        let script = redis::Script::new(
            r"redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
              if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
              return 1",
        );
        let mut conn = self.manager()?;
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.keys.flight(key))
            .key(self.keys.flight_result(key))
            .arg(owner)
            .arg(encode_result(result))
            .arg(millis(ttl));
        self.within(invocation.invoke_async::<i64>(&mut conn))
            .await
            .map(|_| ())
    }

    async fn node(&self, uuid: &str) -> StoreResult<Option<NodeRecord>> {
        let fields: Vec<Option<String>> = self
            .run_viewed(viewed(
                redis::cmd("HMGET")
                    .arg(self.keys.node(uuid))
                    .arg("token")
                    .arg("agent_url")
                    .arg("hb_fp")
                    .arg("hb_at")
                    .arg("node")
                    .arg("token_at")
                    .arg("reset_at")
                    .clone(),
            ))
            .await?;
        if fields.iter().all(Option::is_none) {
            return Ok(None);
        }
        let field = |i: usize| fields.get(i).cloned().flatten();
        let last_heartbeat = match (field(2), field(3).and_then(|a| a.parse().ok())) {
            (Some(fp), Some(at)) => Some((fp, at)),
            _ => None,
        };
        Ok(Some(NodeRecord {
            token_hash: field(0),
            agent_url: field(1),
            last_heartbeat,
            token_seen_ms: field(5).and_then(|a| a.parse().ok()),
            unsettled_since_ms: field(6).and_then(|a| a.parse().ok()),
        }))
    }

    async fn record_heartbeat_forwarded(
        &self,
        uuid: &str,
        fingerprint: &str,
        at_ms: u64,
    ) -> StoreResult<()> {
        self.settled(async {
            self.run(
                redis::cmd("HSET")
                    .arg(self.keys.node(uuid))
                    .arg("hb_fp")
                    .arg(fingerprint)
                    .arg("hb_at")
                    .arg(at_ms)
                    .clone(),
            )
            .await
        })
        .await
    }

    async fn record_token_minted(
        &self,
        uuid: &str,
        token_hash: &str,
        node_data: &[u8],
        ttl: Duration,
    ) -> StoreResult<()> {
        self.settled(async {
            let key = self.keys.node(uuid);
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("HSET")
                .arg(&key)
                .arg("token")
                .arg(token_hash)
                .arg("token_at")
                .arg(super::now_ms())
                .arg("node")
                .arg(node_data)
                .ignore()
                .cmd("HDEL")
                .arg(&key)
                .arg("agent_url")
                .arg("hb_fp")
                .arg("hb_at")
                .arg("reset_at")
                .ignore()
                .cmd("EXPIRE")
                .arg(&key)
                .arg(ttl.as_secs().max(1))
                .ignore();
            self.run_pipe(pipe).await
        })
        .await
    }

    async fn record_heartbeat_accepted(
        &self,
        uuid: &str,
        token_hash: &str,
        agent_url: &str,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.settled(async {
            let key = self.keys.node(uuid);
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("HSET")
                .arg(&key)
                .arg("token")
                .arg(token_hash)
                .arg("token_at")
                .arg(super::now_ms())
                .arg("agent_url")
                .arg(agent_url)
                .ignore()
                .cmd("EXPIRE")
                .arg(&key)
                .arg(ttl.as_secs().max(1))
                .ignore();
            self.run_pipe(pipe).await
        })
        .await
    }

    async fn record_node_action(&self, uuid: &str, at_ms: u64, ttl: Duration) -> StoreResult<()> {
        self.settled(async {
        let key = self.keys.node(uuid);
        let mut pipe = redis::pipe();
        // The latest action wins: a late write of an older one must not shorten the unsettled
        // time of a newer one (`reset_at` only grows).
        pipe.atomic()
            .cmd("EVAL")
            .arg(
                "local cur = tonumber(redis.call('HGET', KEYS[1], 'reset_at') or '0') \
                 if tonumber(ARGV[1]) > cur then redis.call('HSET', KEYS[1], 'reset_at', ARGV[1]) end \
                 if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end \
                 return 0",
            )
            .arg(1)
            .arg(&key)
            .arg(at_ms)
            .arg(ttl.as_secs().max(1))
            .ignore();
        self.run_pipe(pipe).await
        })
        .await
    }

    async fn forget_token(&self, uuid: &str) -> StoreResult<()> {
        self.settled(async {
            self.run(
                redis::cmd("HDEL")
                    .arg(self.keys.node(uuid))
                    .arg("token")
                    .arg("token_at")
                    .arg("agent_url")
                    .arg("hb_fp")
                    .arg("hb_at")
                    .clone(),
            )
            .await
        })
        .await
    }

    async fn claim_mismatch_forward(
        &self,
        ident: &str,
        token_tag: &str,
        interval: Duration,
        per_node: u32,
    ) -> StoreResult<bool> {
        // One script: a late run (after the caller gave up on it) only uses up a slot.
        let script = redis::Script::new(
            r"if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
              local n = redis.call('INCR', KEYS[2])
              if n == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[1]) end
              if n > tonumber(ARGV[2]) then return 0 end
              redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
              return 1",
        );
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.keys.mismatch_slot(ident, token_tag))
            .key(self.keys.mismatch_count(ident))
            .arg(millis(interval))
            .arg(per_node);
        let claimed: i64 = self.run_script(invocation).await?;
        Ok(claimed == 1)
    }

    async fn heartbeat_not_found(&self, ident: &str) -> StoreResult<bool> {
        self.run_viewed(viewed(
            redis::cmd("EXISTS")
                .arg(self.keys.heartbeat_not_found(ident))
                .clone(),
        ))
        .await
    }

    async fn remember_heartbeat_not_found(&self, ident: &str, ttl: Duration) -> StoreResult<()> {
        self.set_marker(self.keys.heartbeat_not_found(ident), ttl)
            .await
    }

    async fn forget_heartbeat_not_found(&self, ident: &str) -> StoreResult<()> {
        self.settled(async {
            self.run(
                redis::cmd("DEL")
                    .arg(self.keys.heartbeat_not_found(ident))
                    .clone(),
            )
            .await
        })
        .await
    }

    async fn put_minted_answer(
        &self,
        replay_key: &str,
        uuid: &str,
        sealed: &[u8],
        ttl: Duration,
    ) -> StoreResult<()> {
        self.settled(async {
            let key = self.keys.minted(replay_key);
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("SET")
                .arg(&key)
                .arg(encode_minted(uuid, sealed))
                .arg("EX")
                .arg(ttl.as_secs().max(1))
                .ignore()
                .cmd("DEL")
                .arg(Keys::minted_claim(&key))
                .ignore()
                .cmd("HSET")
                .arg(self.keys.node(uuid))
                .arg("minted")
                .arg(&key)
                .ignore();
            self.run_pipe(pipe).await
        })
        .await
    }

    async fn take_minted_answer(
        &self,
        replay_key: &str,
        claim: &str,
        claim_ttl: Duration,
    ) -> StoreResult<Option<KeptMinted>> {
        // Read and claim in one step; nothing is deleted, so a take that runs late (its caller
        // gave up) only leaves a claim, which expires or is released.
        let script = redis::Script::new(
            r"if redis.call('EXISTS', KEYS[3]) == 1 then return nil end
              local v = redis.call('GET', KEYS[1])
              if not v then return nil end
              if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return v end
              return nil",
        );
        let key = self.keys.minted(replay_key);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&key)
            .key(Keys::minted_claim(&key))
            .key(Keys::minted_released(&key, claim))
            .arg(claim)
            .arg(millis(claim_ttl));
        let value: Option<Vec<u8>> = self.run_script(invocation).await?;
        Ok(value.as_deref().and_then(decode_minted))
    }

    async fn confirm_minted_answer(&self, replay_key: &str, claim: &str) -> StoreResult<()> {
        let script = redis::Script::new(
            r"if redis.call('GET', KEYS[2]) == ARGV[1] then
                redis.call('DEL', KEYS[1], KEYS[2])
              end
              return 1",
        );
        let key = self.keys.minted(replay_key);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&key)
            .key(Keys::minted_claim(&key))
            .arg(claim);
        let _: i64 = self.run_script(invocation).await?;
        Ok(())
    }

    async fn release_minted_answer(
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
        let key = self.keys.minted(replay_key);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(Keys::minted_claim(&key))
            .key(Keys::minted_released(&key, claim))
            .arg(claim)
            .arg(millis(claim_ttl));
        let _: i64 = self.run_script(invocation).await?;
        Ok(())
    }

    async fn drop_minted_answer(&self, uuid: &str) -> StoreResult<()> {
        self.settled(async {
            let script = redis::Script::new(
                r"local k = redis.call('HGET', KEYS[1], 'minted')
              if k then
                redis.call('DEL', k, k .. ':claim')
                redis.call('HDEL', KEYS[1], 'minted')
              end
              return 1",
            );
            let mut invocation = script.prepare_invoke();
            invocation.key(self.keys.node(uuid));
            let _: i64 = self.run_script(invocation).await?;
            Ok(())
        })
        .await
    }

    async fn put_pending_heartbeat(
        &self,
        uuid: &str,
        sealed: &[u8],
        ttl: Duration,
    ) -> StoreResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.keys.pending(uuid))
            .arg(sealed)
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .ignore()
            .cmd("SADD")
            .arg(self.keys.pending_takeable())
            .arg(uuid)
            .ignore();
        self.run_pipe(pipe).await
    }

    async fn take_pending_heartbeat(
        &self,
        claim: &str,
        claim_ttl: Duration,
    ) -> StoreResult<Option<(String, Vec<u8>)>> {
        // Claims whose time is up go back to the takeable set first (their relayer died, or
        // their take ran late after its caller gave up). Then one takeable, unclaimed heartbeat
        // is claimed and read, in one step: it stays in Redis until its relay is confirmed.
        // Redis's own clock times the claims (the same for every gateway process).
        let script = redis::Script::new(
            r"local t = redis.call('TIME')
              local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
              local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 64)
              for _, u in ipairs(expired) do
                redis.call('ZREM', KEYS[3], u)
                redis.call('HDEL', KEYS[2], u)
                redis.call('SADD', KEYS[1], u)
              end
              if redis.call('EXISTS', KEYS[4]) == 1 then return nil end
              while true do
                local u = redis.call('SPOP', KEYS[1])
                if not u then return nil end
                if not redis.call('ZSCORE', KEYS[3], u) then
                  local v = redis.call('GET', ARGV[1] .. u)
                  if v then
                    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), u)
                    redis.call('HSET', KEYS[2], u, ARGV[2])
                    redis.call('SET', KEYS[4], u, 'PX', ARGV[3])
                    return {u, v}
                  end
                end
              end",
        );
        let mut invocation = self.pending_script(&script, claim);
        invocation.arg(claim).arg(millis(claim_ttl));
        let taken: Option<(String, Vec<u8>)> = self.run_script(invocation).await?;
        Ok(taken)
    }

    async fn confirm_pending_heartbeat(
        &self,
        uuid: &str,
        claim: &str,
        sealed: &[u8],
    ) -> StoreResult<()> {
        // Deletes only the heartbeat that was relayed: a newer one that replaced it meanwhile
        // goes back to the takeable set.
        let script = redis::Script::new(
            r"if redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[3] then return 0 end
              redis.call('HDEL', KEYS[2], ARGV[2])
              redis.call('ZREM', KEYS[3], ARGV[2])
              redis.call('DEL', KEYS[4])
              if redis.call('GET', ARGV[1] .. ARGV[2]) == ARGV[4] then
                redis.call('DEL', ARGV[1] .. ARGV[2])
              else
                redis.call('SADD', KEYS[1], ARGV[2])
              end
              return 1",
        );
        let mut invocation = self.pending_script(&script, claim);
        invocation.arg(uuid).arg(claim).arg(sealed);
        let _: i64 = self.run_script(invocation).await?;
        Ok(())
    }

    async fn release_pending_heartbeat(&self, claim: &str, claim_ttl: Duration) -> StoreResult<()> {
        // The claim's key is left behind, empty, for the claim's time: a take with this claim
        // that runs even later (it may come on another connection, after this release) is
        // refused.
        let script = redis::Script::new(
            r"local u = redis.call('GET', KEYS[4])
              if u and u ~= '' and redis.call('HGET', KEYS[2], u) == ARGV[2] then
                redis.call('HDEL', KEYS[2], u)
                redis.call('ZREM', KEYS[3], u)
                redis.call('SADD', KEYS[1], u)
              end
              redis.call('SET', KEYS[4], '', 'PX', ARGV[3])
              return 1",
        );
        let mut invocation = self.pending_script(&script, claim);
        invocation.arg(claim).arg(millis(claim_ttl));
        let _: i64 = self.run_script(invocation).await?;
        Ok(())
    }

    async fn pending_heartbeats(&self) -> StoreResult<u64> {
        let mut pipe = redis::pipe();
        pipe.cmd("SCARD")
            .arg(self.keys.pending_takeable())
            .cmd("ZCARD")
            .arg(self.keys.pending_claimed());
        let (takeable, claimed): (u64, u64) = self.run_pipe(pipe).await?;
        Ok(takeable + claimed)
    }

    async fn drop_pending_heartbeat(&self, uuid: &str) -> StoreResult<()> {
        // A claimed one is relayed by its claimer with the copy it holds; its confirmation
        // then finds the value gone and the take after it skips the node.
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("DEL")
            .arg(self.keys.pending(uuid))
            .ignore()
            .cmd("SREM")
            .arg(self.keys.pending_takeable())
            .arg(uuid)
            .ignore();
        self.run_pipe(pipe).await
    }

    async fn index_synced_at(&self) -> StoreResult<Option<u64>> {
        Ok(self.index_marker().await?.map(|(at, _)| at))
    }

    async fn index_generation(&self) -> StoreResult<Option<String>> {
        Ok(self.index_marker().await?.map(|(_, generation)| generation))
    }

    async fn sync_marks(&self) -> StoreResult<Option<String>> {
        self.run(redis::cmd("GET").arg(self.keys.sync_marks()).clone())
            .await
    }

    async fn put_sync_marks(&self, marks: &str) -> StoreResult<()> {
        self.run(
            redis::cmd("SET")
                .arg(self.keys.sync_marks())
                .arg(marks)
                .clone(),
        )
        .await
    }

    async fn index_macs(&self, macs: &[String]) -> StoreResult<Vec<Option<String>>> {
        if macs.is_empty() {
            return Ok(Vec::new());
        }
        let mut fields = vec![GENERATION_FIELD.to_string()];
        fields.extend(macs.iter().cloned());
        let mut found = self.index_read(self.keys.index_macs(), &fields).await?;
        found.remove(0);
        Ok(found)
    }

    async fn index_node(&self, uuid: &str) -> StoreResult<Option<IndexedNode>> {
        let fields = [GENERATION_FIELD.to_string(), uuid.to_string()];
        let found = self.index_read(self.keys.index_nodes(), &fields).await?;
        Ok(found
            .into_iter()
            .nth(1)
            .flatten()
            .and_then(|t| serde_json::from_str(&t).ok()))
    }

    async fn index_node_named(&self, name: &str) -> StoreResult<Option<IndexedNode>> {
        let fields = [GENERATION_FIELD.to_string(), format!("{NAME_FIELD}{name}")];
        let found = self.index_read(self.keys.index_nodes(), &fields).await?;
        let Some(uuid) = found.into_iter().nth(1).flatten() else {
            return Ok(None);
        };
        Ok(self
            .index_node(&uuid)
            .await?
            .filter(|n| n.name.as_deref() == Some(name)))
    }

    async fn index_members(&self) -> StoreResult<(Vec<String>, Vec<String>)> {
        let mut pipe = redis::pipe();
        pipe.cmd("HKEYS")
            .arg(self.keys.index_nodes())
            .cmd("HKEYS")
            .arg(self.keys.index_macs());
        let (nodes, macs): (Vec<String>, Vec<String>) = self.run_pipe(pipe).await?;
        let entries = |v: Vec<String>| {
            v.into_iter()
                .filter(|k| !is_marker_field(k) && !k.starts_with(NAME_FIELD))
                .collect()
        };
        Ok((entries(nodes), entries(macs)))
    }

    async fn index_write(&self, u: &IndexUpdate) -> StoreResult<()> {
        self.settled(async {
            let (nodes, macs) = (self.keys.index_nodes(), self.keys.index_macs());
            if u.full_round {
                // Marks both halves as being rebuilt by this round: a flush or an eviction while
                // the round writes removes the mark, and the round then does not vouch for them.
                let generation = u
                    .generation
                    .as_deref()
                    .ok_or_else(|| StoreError("a full round without a generation".into()))?;
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("HSET")
                    .arg(&nodes)
                    .arg(BUILDING_FIELD)
                    .arg(generation)
                    .ignore()
                    .cmd("HSET")
                    .arg(&macs)
                    .arg(BUILDING_FIELD)
                    .arg(generation)
                    .ignore();
                self.run_pipe::<()>(pipe).await?;
            }
            // Large rounds are written in slices, each one pipelined, so that no single call
            // holds Redis (or misses its deadline) for long.
            const SLICE: usize = 500;
            for chunk in u.nodes.chunks(SLICE) {
                let mut cmd = redis::cmd("HSET");
                cmd.arg(&nodes);
                for n in chunk {
                    let text = serde_json::to_string(n).map_err(|e| StoreError(e.to_string()))?;
                    cmd.arg(&n.uuid).arg(text);
                    // Heartbeats may name their node; a renamed node leaves its old name behind,
                    // which counts only while the node it points to still has that name.
                    if let Some(name) = &n.name {
                        cmd.arg(format!("{NAME_FIELD}{name}")).arg(&n.uuid);
                    }
                }
                self.run::<()>(cmd).await?;
            }
            for chunk in u.ports.chunks(SLICE) {
                let mut cmd = redis::cmd("HSET");
                cmd.arg(&macs);
                for (mac, uuid) in chunk {
                    cmd.arg(mac).arg(uuid);
                }
                self.run::<()>(cmd).await?;
            }
            for (key, removed) in [(&nodes, &u.removed_nodes), (&macs, &u.removed_macs)] {
                for chunk in removed.chunks(SLICE) {
                    let mut cmd = redis::cmd("HDEL");
                    cmd.arg(key);
                    for item in chunk.iter().filter(|i| !is_marker_field(i)) {
                        cmd.arg(item);
                    }
                    self.run::<()>(cmd).await?;
                }
            }
            let (Some(at), Some(generation)) = (u.synced_at_ms, u.generation.as_deref()) else {
                return Ok(());
            };
            // The round vouches for the index only if it is still the one the round wrote to:
            // a full round's mark is still on both halves, an incremental round's generation is
            // still the index's (on both halves and with the freshness).
            let script = redis::Script::new(
                r"local g = ARGV[1]
              if ARGV[3] == '1' then
                if redis.call('HGET', KEYS[1], '@building') ~= g
                   or redis.call('HGET', KEYS[2], '@building') ~= g then return 0 end
                redis.call('HSET', KEYS[1], '@gen', g)
                redis.call('HSET', KEYS[2], '@gen', g)
                redis.call('HDEL', KEYS[1], '@building')
                redis.call('HDEL', KEYS[2], '@building')
              else
                local cur = redis.call('GET', KEYS[3])
                if redis.call('HGET', KEYS[1], '@gen') ~= g
                   or redis.call('HGET', KEYS[2], '@gen') ~= g
                   or not cur or string.sub(cur, -(#g + 1)) ~= (' ' .. g) then return 0 end
              end
              redis.call('SET', KEYS[3], ARGV[2] .. ' ' .. g)
              return 1",
            );
            let mut invocation = script.prepare_invoke();
            invocation
                .key(&nodes)
                .key(&macs)
                .key(self.keys.index_synced_at())
                .arg(generation)
                .arg(at)
                .arg(if u.full_round { "1" } else { "0" });
            let vouched: i64 = self.run_script(invocation).await?;
            if vouched == 1 {
                Ok(())
            } else {
                Err(StoreError(
                    "the node index changed under the round (Redis lost data?)".into(),
                ))
            }
        })
        .await
    }

    async fn lease(&self, name: &str, owner: &str, ttl: Duration) -> StoreResult<bool> {
        let script = redis::Script::new(
            r"local cur = redis.call('GET', KEYS[1])
              if cur == false then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
              if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
              return 0",
        );
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.keys.lease(name))
            .arg(owner)
            .arg(millis(ttl));
        let held: i64 = self.run_script(invocation).await?;
        Ok(held == 1)
    }
}

/// The generation a half belongs to, and the one a full round is rebuilding it for.
const GENERATION_FIELD: &str = "@gen";
/// Fields `name:<name>` of the nodes hash map a node name to its uuid. Names of deleted or
/// renamed nodes stay until the hash is rebuilt (they are checked against the node on every
/// read, so they cost a few bytes, never a wrong answer).
const NAME_FIELD: &str = "name:";
const BUILDING_FIELD: &str = "@building";

/// Fields of an index half that are markers, not entries (no uuid or MAC starts with `@`).
fn is_marker_field(field: &str) -> bool {
    field.starts_with('@')
}

/// `<Unix ms> <generation>` → its parts.
pub(crate) fn parse_synced_at(text: &str) -> Option<(u64, String)> {
    let (at, generation) = text.split_once(' ')?;
    let at = at.parse().ok()?;
    (!generation.is_empty()).then(|| (at, generation.to_string()))
}

impl RedisStore {
    /// A script over the kept heartbeats: KEYS are the takeable set, the claims (node → claim),
    /// the claimed (node → expiry) and this claim's own key; ARGV starts with the value prefix.
    fn pending_script<'s>(
        &self,
        script: &'s redis::Script,
        claim: &str,
    ) -> redis::ScriptInvocation<'s> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.keys.pending_takeable())
            .key(self.keys.pending_claims())
            .key(self.keys.pending_claimed())
            .key(self.keys.pending_claim(claim))
            .arg(self.keys.pending(""));
        invocation
    }

    /// The index's freshness and generation, if both halves belong to that generation.
    async fn index_marker(&self) -> StoreResult<Option<(u64, String)>> {
        let mut pipe = redis::pipe();
        pipe.add_command(viewed(
            redis::cmd("GET").arg(self.keys.index_synced_at()).clone(),
        ))
        .add_command(viewed(
            redis::cmd("HGET")
                .arg(self.keys.index_nodes())
                .arg(GENERATION_FIELD)
                .clone(),
        ))
        .add_command(viewed(
            redis::cmd("HGET")
                .arg(self.keys.index_macs())
                .arg(GENERATION_FIELD)
                .clone(),
        ));
        let (synced, nodes_gen, macs_gen): (Option<String>, Option<String>, Option<String>) =
            self.run_pipe_viewed(pipe).await?;
        Ok(synced
            .as_deref()
            .and_then(parse_synced_at)
            .filter(|(_, g)| {
                nodes_gen.as_deref() == Some(g.as_str()) && macs_gen.as_deref() == Some(g.as_str())
            }))
    }

    /// `HMGET` of an index half (the first field being its generation), with the freshness,
    /// in one step: an error unless the half still belongs to the vouched-for generation (a
    /// missing entry of a half that Redis lost is not "no such node").
    async fn index_read(
        &self,
        half: String,
        fields: &[String],
    ) -> StoreResult<Vec<Option<String>>> {
        let mut pipe = redis::pipe();
        pipe.add_command(viewed(
            redis::cmd("GET").arg(self.keys.index_synced_at()).clone(),
        ));
        // Never from the view: it keeps every distinct read of a key, command and answer, under
        // that key until the key changes, and the whole index is two keys: reads of MACs and
        // idents that callers choose would pile up in it without bound (and each read would
        // scan them). The markers above are a few fixed reads.
        pipe.cmd("HMGET").arg(half).arg(fields);
        let (synced, found): (Option<String>, Vec<Option<String>>) =
            self.run_pipe_viewed(pipe).await?;
        let vouched = synced.as_deref().and_then(parse_synced_at).map(|(_, g)| g);
        match (vouched, found.first().cloned().flatten()) {
            (Some(g), Some(half_gen)) if g == half_gen => Ok(found),
            _ => Err(StoreError(
                "the node index is not complete (its generation changed)".into(),
            )),
        }
    }
}

/// A kept minted answer as stored: the node uuid, a newline, the sealed answer.
pub(crate) fn encode_minted(uuid: &str, sealed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(uuid.len() + 1 + sealed.len());
    out.extend_from_slice(uuid.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(sealed);
    out
}

pub(crate) fn decode_minted(value: &[u8]) -> Option<KeptMinted> {
    let at = value.iter().position(|b| *b == b'\n')?;
    let uuid = std::str::from_utf8(&value[..at]).ok()?.to_string();
    Some(KeptMinted {
        uuid,
        sealed: value[at + 1..].to_vec(),
    })
}

/// `<status> <body>` (the body of an Ironic error answer; never a success body).
pub(crate) fn encode_result(r: &FlightResult) -> String {
    match r {
        FlightResult::Shared { status, body } => format!("{status} {body}"),
        FlightResult::AskUpstream => "ask".to_string(),
    }
}

pub(crate) fn decode_result(text: &str) -> FlightResult {
    match text.split_once(' ') {
        Some((status, body)) => match status.parse::<u16>() {
            Ok(status) if (400..600).contains(&status) => FlightResult::Shared {
                status,
                body: body.to_string(),
            },
            _ => FlightResult::AskUpstream,
        },
        None => FlightResult::AskUpstream,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_at_carries_its_generation() {
        assert_eq!(
            parse_synced_at("1700000000000 req-1"),
            Some((1_700_000_000_000, "req-1".to_string()))
        );
    }

    #[test]
    fn synced_at_without_a_generation_is_refused() {
        for text in ["1700000000000", "1700000000000 ", "x req-1", ""] {
            assert_eq!(parse_synced_at(text), None, "{text:?}");
        }
    }

    #[test]
    fn marker_fields_are_not_entries() {
        assert!(is_marker_field(GENERATION_FIELD));
        assert!(is_marker_field(BUILDING_FIELD));
        assert!(!is_marker_field("52:54:00:aa:bb:cc"));
        assert!(!is_marker_field("1be26c0b-03f2-4d2e-ae87-c02d7f33c123"));
    }

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

    #[test]
    fn flight_results_round_trip() {
        let shared = FlightResult::Shared {
            status: 404,
            body: "{\"error_message\": \"x y\"}".into(),
        };
        assert_eq!(decode_result(&encode_result(&shared)), shared);
        assert_eq!(
            decode_result(&encode_result(&FlightResult::AskUpstream)),
            FlightResult::AskUpstream
        );
        // Anything unexpected means: ask upstream (the safe answer).
        assert_eq!(decode_result("200 {}"), FlightResult::AskUpstream);
        assert_eq!(decode_result("garbage"), FlightResult::AskUpstream);
    }
}
