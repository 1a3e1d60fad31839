//! The unknown-machines view: which MAC sets and which source addresses keep looking up and
//! getting 404 (a machine that is not enrolled, a port missing, a wrong network), the most
//! common question on a provisioning network during an enrolment. Served as JSON on the
//! operations listener (`GET /agents/unknown`).
//!
//! Memory is bounded whatever callers send: each list is a top-K sketch ("space saving",
//! Metwally et al.) of [`TOP_K`] entries, each key bounded in length, over a window of
//! [`WINDOW_MS`] (the previous window is kept, so a fresh window is never empty). A key that
//! enters a full sketch takes the place of the least counted one and inherits its count as its
//! possible overcount (`error`), so the heavy hitters stay and their counts are bounds.
//!
//! [`TopK`] and [`Windows`] are pure and table-tested.

use std::collections::HashMap;
use std::sync::Mutex;

/// Entries per list.
pub(crate) const TOP_K: usize = 64;
/// The window over which 404s are counted.
pub(crate) const WINDOW_MS: u64 = 10 * 60 * 1000;
/// A MAC set is shown with this many MACs at most.
const MACS_SHOWN: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub count: u64,
    /// How much of `count` may belong to keys this one replaced.
    pub error: u64,
    pub first_ms: u64,
    pub last_ms: u64,
}

/// A top-K sketch of keys by count. Pure.
#[derive(Clone, Debug, Default)]
pub(crate) struct TopK {
    capacity: usize,
    entries: HashMap<String, Entry>,
}

impl TopK {
    pub(crate) fn new(capacity: usize) -> Self {
        TopK {
            capacity: capacity.max(1),
            entries: HashMap::with_capacity(capacity.max(1)),
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn observe(&mut self, key: &str, now_ms: u64) {
        if let Some(e) = self.entries.get_mut(key) {
            e.count += 1;
            e.last_ms = now_ms;
            return;
        }
        let mut entry = Entry {
            count: 1,
            error: 0,
            first_ms: now_ms,
            last_ms: now_ms,
        };
        if self.entries.len() >= self.capacity {
            let least = self
                .entries
                .iter()
                .min_by_key(|(_, e)| (e.count, e.last_ms))
                .map(|(k, e)| (k.clone(), e.count));
            if let Some((k, count)) = least {
                self.entries.remove(&k);
                entry.count = count + 1;
                entry.error = count;
            }
        }
        self.entries.insert(key.to_string(), entry);
    }

    /// The entries, most counted first.
    #[cfg(test)]
    pub(crate) fn top(&self) -> Vec<(&str, &Entry)> {
        let mut v: Vec<_> = self.entries.iter().map(|(k, e)| (k.as_str(), e)).collect();
        v.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
        v
    }

    /// The two sketches' entries together (the same key's counts added), most counted first.
    fn merged(&self, later: &TopK) -> Vec<(String, Entry)> {
        let mut all: HashMap<&str, Entry> = HashMap::new();
        for (k, e) in self.entries.iter().chain(later.entries.iter()) {
            all.entry(k.as_str())
                .and_modify(|m| {
                    m.count += e.count;
                    m.error += e.error;
                    m.first_ms = m.first_ms.min(e.first_ms);
                    m.last_ms = m.last_ms.max(e.last_ms);
                })
                .or_insert_with(|| e.clone());
        }
        let mut v: Vec<_> = all.into_iter().map(|(k, e)| (k.to_string(), e)).collect();
        v.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(&b.0)));
        v.truncate(self.capacity);
        v
    }
}

/// The current window's sketch and the previous one. Pure.
#[derive(Clone, Debug)]
pub(crate) struct Windows {
    started_ms: u64,
    previous: TopK,
    current: TopK,
}

impl Windows {
    pub(crate) fn new(now_ms: u64) -> Self {
        Windows {
            started_ms: now_ms,
            previous: TopK::new(TOP_K),
            current: TopK::new(TOP_K),
        }
    }

    fn roll(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.started_ms);
        if elapsed >= 2 * WINDOW_MS {
            self.previous = TopK::new(TOP_K);
            self.current = TopK::new(TOP_K);
            self.started_ms = now_ms;
        } else if elapsed >= WINDOW_MS {
            self.previous = std::mem::replace(&mut self.current, TopK::new(TOP_K));
            self.started_ms += WINDOW_MS;
        }
    }

    pub(crate) fn observe(&mut self, key: &str, now_ms: u64) {
        self.roll(now_ms);
        self.current.observe(key, now_ms);
    }

    /// What the last two windows saw, most counted first.
    pub(crate) fn top(&mut self, now_ms: u64) -> Vec<(String, Entry)> {
        self.roll(now_ms);
        self.previous.merged(&self.current)
    }
}

/// How a lookup's MACs are shown, from its cache key (`macs:<sorted, distinct MACs>`, see
/// `LookupQuery::cache_key`): the first few, and how many more; empty for a `node_uuid`
/// lookup.
pub(crate) fn mac_set_of(cache_key: &str) -> String {
    let Some(list) = cache_key.strip_prefix("macs:") else {
        return String::new();
    };
    let mut macs = list.split(',').filter(|m| !m.is_empty());
    let mut key = macs.by_ref().take(MACS_SHOWN).collect::<Vec<_>>().join(",");
    let more = macs.count();
    if more > 0 {
        key.push_str(&format!(",+{more} more"));
    }
    key
}

/// The lookups answered 404, by MAC set and by source.
pub(crate) struct UnknownMachines {
    inner: Mutex<(Windows, Windows)>,
}

impl Default for UnknownMachines {
    fn default() -> Self {
        let now = crate::store::now_ms();
        UnknownMachines {
            inner: Mutex::new((Windows::new(now), Windows::new(now))),
        }
    }
}

impl UnknownMachines {
    /// One lookup answered 404.
    pub(crate) fn not_found(&self, mac_set: &str, source: Option<std::net::IpAddr>) {
        let now = crate::store::now_ms();
        if let Ok(mut w) = self.inner.lock() {
            if !mac_set.is_empty() {
                w.0.observe(mac_set, now);
            }
            if let Some(ip) = source {
                w.1.observe(&crate::client_addr::unmap(ip).to_string(), now);
            }
        }
    }

    /// The JSON document of `GET /agents/unknown`.
    pub(crate) fn document(&self) -> serde_json::Value {
        let now = crate::store::now_ms();
        let Ok(mut w) = self.inner.lock() else {
            return serde_json::json!({});
        };
        let list = |top: Vec<(String, Entry)>, name: &str| -> Vec<serde_json::Value> {
            top.into_iter()
                .map(|(k, e)| {
                    serde_json::json!({
                        name: k,
                        "lookups_not_found": e.count,
                        "overcount_at_most": e.error,
                        "first_seen": httpdate::fmt_http_date(at(e.first_ms)),
                        "last_seen": httpdate::fmt_http_date(at(e.last_ms)),
                    })
                })
                .collect()
        };
        let macs = list(w.0.top(now), "macs");
        let sources = list(w.1.top(now), "source");
        serde_json::json!({
            "window_seconds": WINDOW_MS / 1000 * 2,
            "top": TOP_K,
            "mac_sets": macs,
            "sources": sources,
        })
    }
}

fn at(ms: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_hitters_stay_whatever_the_number_of_keys() {
        let mut t = TopK::new(8);
        for i in 0..1000u64 {
            t.observe("enrolment-typo", i);
            if i % 2 == 0 {
                t.observe("wrong-network", i);
            }
            // A flood of keys seen once each.
            t.observe(&format!("random-{i}"), i);
        }
        assert_eq!(t.len(), 8, "bounded");
        let top = t.top();
        assert_eq!(top[0].0, "enrolment-typo");
        assert!(top[0].1.count >= 1000);
        assert_eq!(top[1].0, "wrong-network");
        let e = top[1].1;
        assert!(e.count - e.error <= 500 && e.count >= 500, "{e:?}");
    }

    #[test]
    fn a_key_seen_again_keeps_its_first_sighting() {
        let mut t = TopK::new(8);
        t.observe("a", 10);
        t.observe("a", 20);
        let (_, e) = t.top()[0];
        assert_eq!((e.count, e.first_ms, e.last_ms, e.error), (2, 10, 20, 0));
    }

    #[test]
    fn windows_roll_and_the_previous_one_is_kept() {
        let mut w = Windows::new(0);
        w.observe("a", 1000);
        w.observe("a", WINDOW_MS + 1000);
        let top = w.top(WINDOW_MS + 2000);
        assert_eq!(top[0].0, "a");
        assert_eq!(top[0].1.count, 2, "this window and the previous one");
        // Two windows later, forgotten.
        assert!(w.top(3 * WINDOW_MS + 5000).is_empty());
    }

    #[test]
    fn mac_sets_are_shown_bounded() {
        let macs: Vec<String> = (0..20).map(|i| format!("52:54:00:00:00:{i:02x}")).collect();
        let key = mac_set_of(&format!("macs:{}", macs.join(",")));
        assert!(key.ends_with(",+12 more"), "{key}");
        assert_eq!(key.matches(':').count(), 8 * 5);
        assert_eq!(mac_set_of("macs:52:54:00:00:00:00"), "52:54:00:00:00:00");
        assert_eq!(mac_set_of("uuid:1be26c0b-03f2-4d2e-ae87-c02d7f33c123"), "");
    }
}
