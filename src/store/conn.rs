//! The one Redis connection every store handle shares, with the per-call deadline and the
//! in-process view.
//!
//! One multiplexed `ConnectionManager` per process, created lazily inside the runtime that
//! first needs it (one made outside a runtime panics, one made on a temporary runtime loses
//! its driver). Reconnects are few and short, and every call has a hard deadline on top, so a
//! down or frozen Redis costs a request at most `command_timeout_ms` before it is forwarded.

use super::keys::Keys;
use super::{StoreError, StoreResult};
use crate::config::{ConfigError, EdgeConfig};
use once_cell::sync::OnceCell;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::Arc;
use std::time::Duration;

/// A handle on the shared connection (cheap to clone: every clone uses the same one).
#[derive(Clone)]
pub(crate) struct Conn {
    inner: Arc<Inner>,
    pub(crate) keys: Keys,
}

struct Inner {
    source: Source,
    timeout: Duration,
    connect_timeout: Duration,
    /// Entries of the in-process view (0: off).
    view_entries: usize,
    /// Every call's latency and deadline misses (exposed by [`crate::metrics::Metrics`]).
    calls: crate::metrics::RedisCalls,
}

/// Where the master is.
enum Source {
    /// At `redis.url`: one manager, made on first use.
    Direct {
        client: redis::Client,
        manager: OnceCell<ConnectionManager>,
    },
    /// Wherever the sentinels say: followed across failovers.
    Sentinel(super::sentinel::Follow),
}

/// Marks a read as served by the in-process view: Redis tracks the key for this process and
/// pushes an invalidation when anyone changes it (or it expires, is evicted or flushed); a
/// reconnect starts an empty view. Only reads of one small key each, whose distinct reads per
/// key are fixed, are marked (node records, negative-cache markers, the index's markers): the
/// view bounds keys, not the reads kept under one key.
pub(crate) fn viewed(mut cmd: redis::Cmd) -> redis::Cmd {
    cmd.set_cache_config(redis::CommandCacheConfig::new());
    cmd
}

/// Reads sent in one step: one pipeline, one round trip (none for the reads the view answers,
/// [`viewed`] commands). Each read added gives a [`Slot`] to take its answer from.
#[derive(Default)]
pub(crate) struct ReadStep {
    pipe: redis::Pipeline,
    len: usize,
}

/// Where one read's answers are in a [`ReadStep`]'s, and how they are parsed.
pub(crate) struct Slot<T> {
    at: usize,
    parse: Parse<T>,
}

enum Parse<T> {
    One(fn(redis::Value) -> StoreResult<T>),
    /// The answers of several commands read as one.
    Many(usize, fn(Vec<redis::Value>) -> StoreResult<T>),
}

/// The answers of a [`ReadStep`], each taken once by its [`Slot`].
pub(crate) struct Replies(Vec<Option<redis::Value>>);

impl ReadStep {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds a read whose answer `parse` turns into what its caller needs.
    pub(crate) fn read<T>(
        &mut self,
        cmd: redis::Cmd,
        parse: fn(redis::Value) -> StoreResult<T>,
    ) -> Slot<T> {
        self.pipe.add_command(cmd);
        self.len += 1;
        Slot {
            at: self.len - 1,
            parse: Parse::One(parse),
        }
    }

    /// Adds reads whose answers `parse` turns, together, into what their caller needs.
    pub(crate) fn reads<T>(
        &mut self,
        cmds: Vec<redis::Cmd>,
        parse: fn(Vec<redis::Value>) -> StoreResult<T>,
    ) -> Slot<T> {
        let (at, n) = (self.len, cmds.len());
        for cmd in cmds {
            self.pipe.add_command(cmd);
        }
        self.len += n;
        Slot {
            at,
            parse: Parse::Many(n, parse),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Replies {
    /// The answer of one read of the step.
    pub(crate) fn take<T>(&mut self, slot: Slot<T>) -> StoreResult<T> {
        let mut answer = |at: usize| {
            self.0
                .get_mut(at)
                .and_then(Option::take)
                .ok_or_else(|| StoreError("a read step answered short".into()))
        };
        match slot.parse {
            Parse::One(parse) => parse(answer(slot.at)?),
            Parse::Many(n, parse) => {
                let values = (slot.at..slot.at + n)
                    .map(answer)
                    .collect::<StoreResult<Vec<_>>>()?;
                parse(values)
            }
        }
    }
}

/// Parses one answer as `T`.
pub(crate) fn parsed<T: redis::FromRedisValue>(value: redis::Value) -> StoreResult<T> {
    redis::from_redis_value(value).map_err(|e| StoreError(e.to_string()))
}

/// Writes sent in one step: one transaction (`MULTI`/`EXEC`: applied whole or not at all, in
/// the order added), followed in the same round trip by the `PING` that settles the view
/// ([`Conn::settled`]). Each write added must be safe if it runs late, as every write is.
#[derive(Default)]
pub(crate) struct WriteStep {
    cmds: Vec<redis::Cmd>,
}

impl WriteStep {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn write(&mut self, cmd: redis::Cmd) {
        self.cmds.push(cmd);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }
}

/// The command that sets a marker (a negative-cache entry), `ttl` long.
pub(crate) fn marker(key: String, ttl: Duration) -> redis::Cmd {
    redis::cmd("SET")
        .arg(key)
        .arg("1")
        .arg("PX")
        .arg(millis(ttl))
        .clone()
}

/// An `EVAL` of `script` over `keys` with `args` (sent as it is: a pipeline cannot load a
/// script on demand as `EVALSHA` does).
pub(crate) fn eval<A: redis::ToRedisArgs>(script: &str, keys: &[String], args: A) -> redis::Cmd {
    redis::cmd("EVAL")
        .arg(script)
        .arg(keys.len())
        .arg(keys)
        .arg(args)
        .clone()
}

/// How long the in-process view trusts an entry without reading Redis again.
pub(crate) const VIEW_ENTRY_TTL: Duration = Duration::from_secs(2);

/// A TTL in milliseconds, at least 1 (Redis refuses 0).
pub(crate) fn millis(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

impl Conn {
    pub(crate) fn new(cfg: &EdgeConfig) -> Result<Self, ConfigError> {
        let source = match super::sentinel::Follow::new(cfg)? {
            Some(follow) => Source::Sentinel(follow),
            None => {
                let info = cfg.redis_connection_info()?;
                let client = redis::Client::open(info)
                    .map_err(|e| ConfigError::new("ironic_edge.redis.url", e.to_string()))?;
                Source::Direct {
                    client,
                    manager: OnceCell::new(),
                }
            }
        };
        Ok(Conn {
            inner: Arc::new(Inner {
                source,
                timeout: cfg.redis_command_timeout(),
                connect_timeout: Duration::from_millis(cfg.redis.connect_timeout_ms),
                view_entries: cfg.redis.view_entries,
                calls: crate::metrics::RedisCalls::new(cfg.redis_command_timeout()),
            }),
            keys: Keys::new(&cfg.redis.key_prefix),
        })
    }

    /// How many reads the in-process view keeps (0: no view).
    pub(crate) fn view_entries(&self) -> usize {
        self.inner.view_entries
    }

    /// The follower of a Sentinel-managed master (`None`: the master is at `redis.url`).
    pub(crate) fn follow(&self) -> Option<&super::sentinel::Follow> {
        match &self.inner.source {
            Source::Sentinel(f) => Some(f),
            Source::Direct { .. } => None,
        }
    }

    /// The per-call deadline (`redis.command_timeout_ms`).
    pub(crate) fn command_timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Whether what Redis holds may be answered from: not while the master is distrusted (it
    /// may have lost the last writes, see [`super::sentinel`]). The store's reads that decide
    /// an answer fail then, and their callers forward, as with Redis down.
    pub(crate) fn trusted(&self) -> StoreResult<()> {
        match self.follow() {
            Some(f) if f.distrusted() => Err(StoreError(
                "the Redis master may have lost the last writes (a failover); not used until \
                 the node index is rebuilt there"
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    /// Whether the master is distrusted now (see [`Self::trusted`]).
    pub(crate) fn distrusted(&self) -> bool {
        self.trusted().is_err()
    }

    /// How each manager connects, retries and keeps the in-process view.
    pub(crate) fn manager_config(&self) -> ConnectionManagerConfig {
        let inner = &*self.inner;
        let mut config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200))
            .set_response_timeout(Some(inner.timeout))
            .set_connection_timeout(Some(inner.connect_timeout));
        if let Some(entries) = std::num::NonZeroUsize::new(inner.view_entries) {
            config = config.set_cache_config(
                redis::caching::CacheConfig::new()
                    .set_mode(redis::caching::CacheMode::OptIn)
                    .set_size(entries)
                    // A bound on what a lost invalidation can cost: an entry is
                    // read from Redis again after this, whatever Redis pushed (seen
                    // under load: an entry cached after its invalidation was
                    // processed stayed stale until the 30-minute default).
                    .set_default_client_ttl(VIEW_ENTRY_TTL),
            );
        }
        config
    }

    fn manager(&self) -> StoreResult<ConnectionManager> {
        match &self.inner.source {
            Source::Direct { client, manager } => manager
                .get_or_try_init(|| {
                    ConnectionManager::new_lazy_with_config(client.clone(), self.manager_config())
                })
                .cloned()
                .map_err(|e| StoreError(e.to_string())),
            // Never waits for the sentinels: without a master the call fails now (forwarded).
            Source::Sentinel(follow) => follow
                .manager(self)
                .ok_or_else(|| StoreError("no Redis master known (redis.sentinel)".into())),
        }
    }

    /// Every call goes through here: the hard per-call deadline on top of the client's own
    /// timeouts (it also covers waiting on a reconnect in progress).
    async fn within<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> StoreResult<T> {
        let began = std::time::Instant::now();
        let answer = tokio::time::timeout(self.inner.timeout, call).await;
        // The client's own response timeout is the same deadline: either one is a miss.
        let missed = match &answer {
            Err(_) => true,
            Ok(Err(e)) => e.is_timeout(),
            Ok(Ok(_)) => false,
        };
        self.inner.calls.observe(began.elapsed(), missed);
        let result = match answer {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let unreachable = e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || e.is_connection_dropped();
                let error = StoreError(e.to_string());
                let read_only =
                    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
                if let Some(follow) = self.follow().filter(|_| unreachable || read_only) {
                    // The master may have moved: the sentinels are asked again now.
                    follow.suspect();
                }
                if unreachable {
                    crate::incident::REDIS.failed(&error);
                } else {
                    // Redis answered (an error of the command): Redis is there.
                    crate::incident::REDIS.succeeded();
                }
                return Err(error);
            }
            Err(_) => Err(StoreError("deadline exceeded".into())),
        };
        // One line when Redis stops answering, a summary while it does not, one when it is
        // back; each request's own failure is in the debug log.
        match &result {
            Ok(_) => crate::incident::REDIS.succeeded(),
            Err(e) => crate::incident::REDIS.failed(e),
        }
        result
    }

    /// The calls' latency and deadline misses, for the metrics.
    pub(crate) fn calls(&self) -> &crate::metrics::RedisCalls {
        &self.inner.calls
    }

    pub(crate) async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> StoreResult<T> {
        let mut conn = self.manager()?;
        self.within(cmd.query_async::<T>(&mut conn)).await
    }

    pub(crate) async fn run_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: redis::Pipeline,
    ) -> StoreResult<T> {
        let mut conn = self.manager()?;
        self.within(pipe.query_async::<T>(&mut conn)).await
    }

    pub(crate) async fn run_script<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> StoreResult<T> {
        let mut conn = self.manager()?;
        self.within(invocation.invoke_async::<T>(&mut conn)).await
    }

    /// A pipeline of reads the in-process view may answer ([`viewed`] commands only).
    pub(crate) async fn run_pipe_viewed<T: redis::FromRedisValue>(
        &self,
        pipe: redis::Pipeline,
    ) -> StoreResult<T> {
        let mut conn = self.manager()?;
        self.within(pipe.query_async::<T>(&mut conn)).await
    }

    /// Runs a [`ReadStep`] in one round trip (the view answers the [`viewed`] reads it holds).
    pub(crate) async fn read_step(&self, step: ReadStep) -> StoreResult<Replies> {
        self.trusted()?;
        if step.is_empty() {
            return Ok(Replies(Vec::new()));
        }
        let values: Vec<redis::Value> = self.run_pipe_viewed(step.pipe).await?;
        if values.len() != step.len {
            return Err(StoreError("a read step answered short".into()));
        }
        Ok(Replies(values.into_iter().map(Some).collect()))
    }

    /// Runs a [`WriteStep`] in one round trip: its transaction, then the settling `PING` (the
    /// invalidations of this process's own writes arrive before its answer; see
    /// [`Self::settled`]).
    pub(crate) async fn write_step(&self, step: WriteStep) -> StoreResult<()> {
        if step.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("MULTI").ignore();
        for cmd in step.cmds {
            pipe.add_command(cmd).ignore();
        }
        pipe.cmd("EXEC").ignore();
        if self.inner.view_entries > 0 {
            pipe.cmd("PING").ignore();
        }
        self.run_pipe(pipe).await
    }

    /// After a write to a key the view serves (node records, negative caches, the index): Redis
    /// sends this process the invalidations of its own writes right after the command's reply
    /// (Redis 7), so one more round trip guarantees that the view has dropped what the write
    /// changed before the write is reported done (a heartbeat decided right after must not read
    /// the record as it was before).
    pub(crate) async fn settled<T>(
        &self,
        write: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let written = write.await;
        self.settle_view().await;
        written
    }

    /// A negative-cache marker, `ttl` long.
    pub(crate) async fn set_marker(&self, key: String, ttl: Duration) -> StoreResult<()> {
        self.settled(self.run(marker(key, ttl))).await
    }

    async fn settle_view(&self) {
        if self.inner.view_entries > 0 {
            if let Ok(mut conn) = self.manager() {
                let _ = self
                    .within(redis::cmd("PING").query_async::<()>(&mut conn))
                    .await;
            }
        }
    }
}
