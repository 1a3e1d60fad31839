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
    client: redis::Client,
    manager: OnceCell<ConnectionManager>,
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
pub(crate) fn viewed(mut cmd: redis::Cmd) -> redis::Cmd {
    cmd.set_cache_config(redis::CommandCacheConfig::new());
    cmd
}

/// A TTL in milliseconds, at least 1 (Redis refuses 0).
pub(crate) fn millis(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

impl Conn {
    pub(crate) fn new(cfg: &EdgeConfig) -> Result<Self, ConfigError> {
        let info = cfg.redis_connection_info()?;
        let client = redis::Client::open(info)
            .map_err(|e| ConfigError::new("ironic_edge.redis.url", e.to_string()))?;
        Ok(Conn {
            inner: Arc::new(Inner {
                client,
                manager: OnceCell::new(),
                timeout: cfg.redis_command_timeout(),
                connect_timeout: Duration::from_millis(cfg.redis.connect_timeout_ms),
                view_entries: cfg.redis.view_entries,
            }),
            keys: Keys::new(&cfg.redis.key_prefix),
        })
    }

    fn manager(&self) -> StoreResult<ConnectionManager> {
        let inner = &*self.inner;
        inner
            .manager
            .get_or_try_init(|| {
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
                            .set_size(entries),
                    );
                }
                ConnectionManager::new_lazy_with_config(inner.client.clone(), config)
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
        let result = match tokio::time::timeout(self.inner.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let unreachable = e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || e.is_connection_dropped();
                let error = StoreError(e.to_string());
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

    /// A read the in-process view may answer ([`viewed`] commands only).
    pub(crate) async fn run_viewed<T: redis::FromRedisValue>(
        &self,
        cmd: redis::Cmd,
    ) -> StoreResult<T> {
        let mut conn = self.manager()?;
        self.within(cmd.query_async::<T>(&mut conn)).await
    }

    /// A pipeline of reads the in-process view may answer ([`viewed`] commands only).
    pub(crate) async fn run_pipe_viewed<T: redis::FromRedisValue>(
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
        if self.inner.view_entries > 0 {
            if let Ok(mut conn) = self.manager() {
                let _ = self
                    .within(redis::cmd("PING").query_async::<()>(&mut conn))
                    .await;
            }
        }
    }
}
