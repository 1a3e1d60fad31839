//! The cap on open connections per source address. A table of counters, one entry per
//! source that holds at least one connection: its size is bounded by the open connections
//! (themselves bounded by the file-descriptor limit), whatever the number of sources seen.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// What counts as one source: an IPv4 address, or an IPv6 /64 (one host is routinely given
/// a whole /64, and counting single IPv6 addresses would cap nothing).
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match crate::client_addr::unmap(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[derive(Debug)]
pub(crate) struct SourceLimiter {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropping it (the connection ended) frees its place.
#[derive(Debug)]
pub(crate) struct SourceSlot {
    limiter: Arc<SourceLimiter>,
    key: IpAddr,
}

impl SourceLimiter {
    /// `max` open connections per source.
    pub(crate) fn new(max: usize) -> Arc<SourceLimiter> {
        Arc::new(SourceLimiter {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more connection from `ip`, or `None` when its source holds `max`.
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let key = source_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        // Checked before inserting, so that a refused source leaves no entry behind.
        if open.get(&key).copied().unwrap_or(0) >= self.max {
            return None;
        }
        *open.entry(key).or_insert(0) += 1;
        Some(SourceSlot {
            limiter: self.clone(),
            key,
        })
    }

    /// Sources currently holding a connection.
    #[cfg(test)]
    fn sources(&self) -> usize {
        self.open.lock().unwrap().len()
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn source_keys() {
        let cases = [
            ("192.0.2.1", "192.0.2.1"),
            ("::ffff:192.0.2.1", "192.0.2.1"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::"),
            ("2001:db8:1:2::9", "2001:db8:1:2::"),
            ("::1", "::"),
        ];
        for (addr, key) in cases {
            assert_eq!(source_key(ip(addr)), ip(key), "{addr}");
        }
    }

    #[test]
    fn the_next_connection_past_the_cap_is_refused() {
        let l = SourceLimiter::new(2);
        let a = l.try_acquire(ip("192.0.2.1"));
        let b = l.try_acquire(ip("192.0.2.1"));
        assert!(a.is_some() && b.is_some());
        assert!(l.try_acquire(ip("192.0.2.1")).is_none());
    }

    #[test]
    fn sources_are_counted_apart() {
        let l = SourceLimiter::new(1);
        let _a = l.try_acquire(ip("192.0.2.1")).unwrap();
        assert!(l.try_acquire(ip("192.0.2.2")).is_some());
    }

    #[test]
    fn one_ipv6_slash_64_is_one_source() {
        let l = SourceLimiter::new(1);
        let _a = l.try_acquire(ip("2001:db8::1")).unwrap();
        assert!(l.try_acquire(ip("2001:db8::2")).is_none());
        assert!(l.try_acquire(ip("2001:db8:0:1::1")).is_some());
    }

    #[test]
    fn a_closed_connection_frees_its_place() {
        let l = SourceLimiter::new(1);
        let a = l.try_acquire(ip("192.0.2.1")).unwrap();
        drop(a);
        assert!(l.try_acquire(ip("192.0.2.1")).is_some());
    }

    #[test]
    fn the_table_holds_only_sources_with_open_connections() {
        let l = SourceLimiter::new(4);
        for i in 0..1000u32 {
            let slot = l.try_acquire(IpAddr::from(i.to_be_bytes()));
            drop(slot);
        }
        assert_eq!(l.sources(), 0);
        let _kept = l.try_acquire(ip("192.0.2.1"));
        assert_eq!(l.sources(), 1);
    }
}
