//! What the parsers spend, and the index that keeps their duplicate handling linear.
//!
//! Every parser here runs on unauthenticated input of up to 1 MiB, so each must be linear:
//! one quadratic loop lets a single request hold a worker for tens of seconds. The step count
//! (unit tests only; [`step`] compiles to nothing otherwise) is how the complexity tests prove
//! it without timing anything: each loop over the input and each probe of [`FirstSeen`]
//! counts one step, and the tests compare the count for inputs of size N and 2N.

use std::hash::{BuildHasher, RandomState};

/// One unit of parser work (a loop iteration, a key comparison).
#[inline(always)]
pub(crate) fn step() {
    #[cfg(test)]
    counter::add(1);
}

#[cfg(test)]
pub(crate) mod counter {
    use std::cell::Cell;

    thread_local! {
        static STEPS: Cell<u64> = const { Cell::new(0) };
    }

    pub(crate) fn add(n: u64) {
        STEPS.with(|s| s.set(s.get() + n));
    }

    /// The steps `f` took on this thread.
    pub(crate) fn steps_of<R>(f: impl FnOnce() -> R) -> (R, u64) {
        let before = STEPS.with(Cell::get);
        let r = f();
        (r, STEPS.with(Cell::get) - before)
    }

    /// `steps(2n) / steps(n)` for an input built by `make`: about 2 for a linear parser, 4
    /// for a quadratic one.
    pub(crate) fn doubling_ratio<T>(n: usize, make: impl Fn(usize) -> T, run: impl Fn(&T)) -> f64 {
        let small = make(n);
        let large = make(2 * n);
        let ((), a) = steps_of(|| run(&small));
        let ((), b) = steps_of(|| run(&large));
        assert!(a > 0, "the parser counted no work");
        b as f64 / a as f64
    }
}

/// The position at which each key was first seen: what Python's `dict` and webob's
/// `MultiDict.mixed()` need to keep the first position of a repeated key, in O(1) per key.
///
/// The keys stay where the caller keeps them (its list of entries, in first-appearance order):
/// this index holds only positions and their hashes, an open-addressing table at most half
/// full, so a key costs no allocation. Hashes are std's SipHash with a random seed per index,
/// so an attacker cannot pick keys that collide; each probe counts a [`step`].
#[derive(Debug)]
pub(crate) struct FirstSeen {
    hasher: RandomState,
    /// `position + 1` of the key in each slot, 0 for an empty slot.
    slots: Vec<u32>,
    /// The hash of the key at each position.
    hashes: Vec<u64>,
}

impl FirstSeen {
    pub(crate) fn new() -> Self {
        FirstSeen {
            hasher: RandomState::new(),
            slots: vec![0; 16],
            hashes: Vec::new(),
        }
    }

    /// The position `key` was first seen at, where `key_at(p)` is the key the caller keeps at
    /// position `p`; if `key` is new, it is recorded at position `next` (the caller's next
    /// free one, one more than the last recorded) and `None` is returned.
    pub(crate) fn first_or_insert<'k>(
        &mut self,
        key: &str,
        key_at: impl Fn(usize) -> &'k str,
        next: usize,
    ) -> Option<usize> {
        let hash = self.hasher.hash_one(key);
        let mask = self.slots.len() - 1;
        let mut i = (hash as usize) & mask;
        loop {
            step();
            match self.slots[i] {
                0 => break,
                p => {
                    let at = (p - 1) as usize;
                    if self.hashes[at] == hash && key_at(at) == key {
                        return Some(at);
                    }
                }
            }
            i = (i + 1) & mask;
        }
        debug_assert_eq!(next, self.hashes.len());
        // A request holds at most a few million keys: positions fit a u32.
        self.slots[i] = u32::try_from(next + 1).unwrap_or(u32::MAX);
        self.hashes.push(hash);
        if 2 * self.hashes.len() > self.slots.len() {
            self.grow();
        }
        None
    }

    /// Doubles the table (amortised O(1) per key).
    fn grow(&mut self) {
        let mut slots = vec![0u32; 2 * self.slots.len()];
        let mask = slots.len() - 1;
        for (at, &hash) in self.hashes.iter().enumerate() {
            let mut i = (hash as usize) & mask;
            while slots[i] != 0 {
                step();
                i = (i + 1) & mask;
            }
            slots[i] = (at + 1) as u32;
        }
        self.slots = slots;
    }
}

#[cfg(test)]
mod tests {
    use super::counter::doubling_ratio;
    use super::*;

    #[test]
    fn first_seen_keeps_first_positions() {
        let mut f = FirstSeen::new();
        let mut keys: Vec<String> = Vec::new();
        let mut see = |k: &str, keys: &mut Vec<String>| {
            let r = f.first_or_insert(k, |p| keys[p].as_str(), keys.len());
            if r.is_none() {
                keys.push(k.to_string());
            }
            r
        };
        assert_eq!(see("a", &mut keys), None);
        assert_eq!(see("b", &mut keys), None);
        assert_eq!(see("a", &mut keys), Some(0));
        assert_eq!(see("b", &mut keys), Some(1));
        assert_eq!(see("", &mut keys), None);
        assert_eq!(see("", &mut keys), Some(2));
        // Past several growths, every key still finds its first position.
        for i in 0..1000 {
            assert_eq!(see(&format!("k{i}"), &mut keys), None);
        }
        for i in 0..1000 {
            assert_eq!(see(&format!("k{i}"), &mut keys), Some(i + 3));
        }
    }

    /// The dedup the parsers used to do (a linear search per element), counted the same way
    /// (one step per comparison): the doubling ratio tells it from a linear one.
    #[test]
    fn doubling_ratio_tells_quadratic_from_linear() {
        let keys = |n: usize| (0..n).map(|i| format!("k{i}")).collect::<Vec<_>>();
        let quadratic = doubling_ratio(2000, keys, |ks| {
            let mut seen: Vec<&String> = Vec::new();
            for k in ks {
                if !seen.iter().any(|s| {
                    step();
                    *s == k
                }) {
                    seen.push(k);
                }
            }
        });
        assert!(quadratic > 3.5, "{quadratic}");
        let linear = doubling_ratio(2000, keys, |ks| {
            let mut seen = FirstSeen::new();
            for (i, k) in ks.iter().enumerate() {
                seen.first_or_insert(k, |p| ks[p].as_str(), i);
            }
        });
        assert!(linear < 2.6, "{linear}");
    }
}
