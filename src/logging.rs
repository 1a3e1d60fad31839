//! Logging setup. Pingora's own debug logs print whole request headers and bodies (query
//! strings with heartbeat tokens, lookup answers with freshly minted tokens), so records of
//! Pingora's crates above INFO are dropped whatever `RUST_LOG` says: a raw agent token must
//! never reach a log.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct TokenSafe {
    inner: env_logger::Logger,
}

/// Whether a record may be written: never Pingora's debug and trace records.
pub fn allowed(target: &str, level: Level) -> bool {
    !(target.starts_with("pingora") && level > Level::Info)
}

impl Log for TokenSafe {
    fn enabled(&self, metadata: &Metadata) -> bool {
        allowed(metadata.target(), metadata.level()) && self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if allowed(record.target(), record.level()) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Installs the logger: `RUST_LOG` (default `info`) on stderr, minus Pingora's debug records.
pub fn init() {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(TokenSafe { inner })).is_ok() {
        log::set_max_level(max.max(LevelFilter::Error));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingora_debug_is_dropped() {
        assert!(!allowed("pingora_proxy::proxy_h1", Level::Debug));
        assert!(!allowed(
            "pingora_core::protocols::http::v1::client",
            Level::Trace
        ));
        assert!(allowed("pingora_core::server", Level::Info));
        assert!(allowed("pingora_proxy", Level::Error));
        assert!(allowed("ironic_edge::agent::heartbeat", Level::Debug));
    }
}
