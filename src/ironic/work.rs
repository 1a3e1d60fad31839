//! What the parsers spend, and the index that keeps their duplicate handling linear.
//!
//! Every parser here runs on unauthenticated input of up to 1 MiB, so each must be linear:
//! one quadratic loop lets a single request hold a worker for tens of seconds. The step count
//! (unit tests only; [`step`] compiles to nothing otherwise) is how the complexity tests prove
//! it without timing anything: each loop over the input and each key comparison of
//! [`FirstSeen`] counts one step, and the tests compare the count for inputs of size N and 2N.

use std::collections::hash_map::{Entry, HashMap};
use std::hash::{Hash, Hasher};

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

/// A key as [`FirstSeen`] holds it: hashed like the string (std's `HashMap` seeds SipHash at
/// random, so an attacker cannot pick colliding keys), compared with a counted step.
#[derive(Debug)]
struct Key(String);

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        step();
        self.0 == other.0
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

/// The position at which each key was first seen: what Python's `dict` and webob's
/// `MultiDict.mixed()` need to keep the first position of a repeated key, in O(1) per key.
#[derive(Debug, Default)]
pub(crate) struct FirstSeen {
    positions: HashMap<Key, usize>,
}

impl FirstSeen {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The position `key` was first seen at; if it is new, `next` is recorded for it and
    /// `None` returned.
    pub(crate) fn first_or_insert(&mut self, key: &str, next: usize) -> Option<usize> {
        step();
        match self.positions.entry(Key(key.to_string())) {
            Entry::Occupied(e) => Some(*e.get()),
            Entry::Vacant(e) => {
                e.insert(next);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::counter::doubling_ratio;
    use super::*;

    #[test]
    fn first_seen_keeps_first_positions() {
        let mut f = FirstSeen::new();
        assert_eq!(f.first_or_insert("a", 0), None);
        assert_eq!(f.first_or_insert("b", 1), None);
        assert_eq!(f.first_or_insert("a", 2), Some(0));
        assert_eq!(f.first_or_insert("b", 2), Some(1));
        assert_eq!(f.first_or_insert("", 2), None);
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
                seen.first_or_insert(k, i);
            }
        });
        assert!(linear < 2.6, "{linear}");
    }
}
