//! The in-process copy of index entries the agent path read recently, each kept with the
//! version tags of the index halves it was read from: valid while those halves carry the same
//! tags (every write to a half gives it a fresh random tag, read through the view), so a
//! repeated local answer (an index 404, a coalesced heartbeat) needs no Redis round trip. Bounded
//! in entries and in key length, whatever the callers send. Pure apart from its lock.

use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

/// A read of index entries and the version tags of the halves it depends on (in a fixed order
/// the caller chooses: for MACs, the MACs half then, if the read named one node, the nodes half).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TaggedRead {
    pub(crate) tags: Vec<Option<String>>,
    pub(crate) entries: Vec<Option<String>>,
}

impl TaggedRead {
    /// Whether the halves still carry the tags the entries were read under (`current`: the
    /// tags now, in the same order). A half without a tag (lost, or written before tags
    /// existed) never vouches for anything.
    pub(crate) fn is_current(&self, current: &[Option<String>]) -> bool {
        self.tags.len() <= current.len()
            && self
                .tags
                .iter()
                .zip(current)
                .all(|(then, now)| then.is_some() && then == now)
    }
}

/// Keys longer than this are not kept (a lookup naming hundreds of MACs is read from Redis).
pub(crate) const MAX_KEY_BYTES: usize = 512;

pub(crate) struct EntryCache {
    entries: Option<Mutex<LruCache<String, Arc<TaggedRead>>>>,
}

impl EntryCache {
    /// Keeps up to `capacity` reads (0: none, every read goes to Redis).
    pub(crate) fn new(capacity: usize) -> Self {
        EntryCache {
            entries: NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))),
        }
    }

    /// Shared, not copied: a hit on every local answer must not copy the tags it checks.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<TaggedRead>> {
        self.entries.as_ref()?.lock().ok()?.get(key).cloned()
    }

    pub(crate) fn put(&self, key: String, read: TaggedRead) {
        if key.len() > MAX_KEY_BYTES || read.tags.iter().any(Option::is_none) {
            return;
        }
        if let Some(Ok(mut entries)) = self.entries.as_ref().map(Mutex::lock) {
            entries.put(key, Arc::new(read));
        }
    }

    pub(crate) fn forget(&self, key: &str) {
        if let Some(Ok(mut entries)) = self.entries.as_ref().map(Mutex::lock) {
            entries.pop(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    fn read(tags: &[Option<String>]) -> TaggedRead {
        TaggedRead {
            tags: tags.to_vec(),
            entries: vec![tag("entry")],
        }
    }

    type Tags = [Option<String>];

    #[test]
    fn a_read_is_current_only_under_the_same_tags() {
        let cases: [(&Tags, &Tags, bool); 6] = [
            (&[tag("a")], &[tag("a")], true),
            (&[tag("a")], &[tag("b")], false),
            (&[tag("a"), tag("n")], &[tag("a"), tag("n")], true),
            (&[tag("a"), tag("n")], &[tag("a"), tag("m")], false),
            // A half that lost its tag (flushed, evicted) vouches for nothing.
            (&[tag("a")], &[None], false),
            (&[None], &[None], false),
        ];
        for (then, now, current) in cases {
            assert_eq!(read(then).is_current(now), current, "{then:?} / {now:?}");
        }
        assert!(
            read(&[tag("a")]).is_current(&[tag("a"), tag("n")]),
            "a read that depends on the MACs half only ignores the nodes half"
        );
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_no_long_keys_or_untagged_reads() {
        let cache = EntryCache::new(2);
        for k in ["k1", "k2", "k3"] {
            cache.put(k.into(), read(&[tag("a")]));
        }
        assert_eq!(cache.get("k1"), None, "the least recent one went");
        assert!(cache.get("k3").is_some());
        cache.put("x".repeat(MAX_KEY_BYTES + 1), read(&[tag("a")]));
        assert_eq!(cache.get(&"x".repeat(MAX_KEY_BYTES + 1)), None);
        cache.put("untagged".into(), read(&[None]));
        assert_eq!(cache.get("untagged"), None);
        cache.forget("k3");
        assert_eq!(cache.get("k3"), None);
        let off = EntryCache::new(0);
        off.put("k".into(), read(&[tag("a")]));
        assert_eq!(off.get("k"), None, "capacity 0 keeps nothing");
    }
}
