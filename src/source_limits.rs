//! Per-source limits on the agent routes: requests per second and requests in flight per
//! source address, so that one misbehaving or hostile host cannot take the whole edge (nor
//! Ironic's budget). Sized so that a real agent never meets them: IPA looks up every 1-60 s
//! and heartbeats every 5-180 s, so even a boot (two `GET /`, a lookup, a heartbeat) stays far
//! below the defaults.
//!
//! Counting uses pingora-limits' count-min sketches (`Rate`, `Inflight`): memory is fixed
//! whatever the number of sources, and an estimate can only err upward (a collision), which
//! the generous defaults absorb. What happens over the limit is the callers' rule: lookups and
//! unverified heartbeats get Ironic's error shape with 429, a verified heartbeat is still
//! accepted (never a 429 to a genuine agent).

use crate::conn_limit::source_key;
use pingora_limits::inflight::{Guard, Inflight};
use pingora_limits::rate::Rate;
use std::net::IpAddr;
use std::time::Duration;

/// The limits (`limits.per_source_requests_per_second`, `limits.per_source_in_flight`);
/// 0 turns one off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub per_second: u32,
    pub in_flight: u32,
}

/// Whether a request with these counts (its own included) is over the limits. Pure.
pub(crate) fn over(limits: Limits, this_second: isize, in_flight: isize) -> bool {
    let past = |limit: u32, n: isize| limit > 0 && n > limit as isize;
    past(limits.per_second, this_second) || past(limits.in_flight, in_flight)
}

/// One admitted agent request: holds its place among its source's requests in flight until
/// dropped (the request ended).
pub(crate) struct Admitted {
    _in_flight: Option<Guard>,
    /// Whether the source is over a limit with this request.
    pub over: bool,
}

pub(crate) struct SourceLimits {
    limits: Limits,
    rate: Rate,
    in_flight: Inflight,
}

impl SourceLimits {
    pub(crate) fn new(limits: Limits) -> Self {
        SourceLimits {
            limits,
            rate: Rate::new(Duration::from_secs(1)),
            in_flight: Inflight::new(),
        }
    }

    pub(crate) fn is_off(&self) -> bool {
        self.limits.per_second == 0 && self.limits.in_flight == 0
    }

    /// Counts one agent request from `source` and says whether it is over a limit.
    pub(crate) fn admit(&self, source: IpAddr) -> Admitted {
        if self.is_off() {
            return Admitted {
                _in_flight: None,
                over: false,
            };
        }
        let key = source_key(source);
        let this_second = if self.limits.per_second > 0 {
            self.rate.observe(&key, 1)
        } else {
            0
        };
        let (guard, in_flight) = if self.limits.in_flight > 0 {
            let (g, n) = self.in_flight.incr(key, 1);
            (Some(g), n)
        } else {
            (None, 0)
        };
        Admitted {
            _in_flight: guard,
            over: over(self.limits, this_second, in_flight),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        per_second: 20,
        in_flight: 8,
    };

    #[test]
    fn over_either_limit_is_over() {
        for (this_second, in_flight, is_over) in [
            (1, 1, false),
            (20, 8, false),
            (21, 1, true),
            (1, 9, true),
            (500, 500, true),
        ] {
            assert_eq!(
                over(LIMITS, this_second, in_flight),
                is_over,
                "{this_second}/s, {in_flight} in flight"
            );
        }
    }

    #[test]
    fn a_limit_of_zero_is_off() {
        let off = Limits {
            per_second: 0,
            in_flight: 0,
        };
        assert!(!over(off, 10_000, 10_000));
        let only_rate = Limits {
            per_second: 5,
            in_flight: 0,
        };
        assert!(!over(only_rate, 5, 10_000));
        assert!(over(only_rate, 6, 0));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_source_is_counted_apart_and_places_are_given_back() {
        let limits = SourceLimits::new(Limits {
            per_second: 1000,
            in_flight: 2,
        });
        let a1 = limits.admit(ip("10.0.0.1"));
        let a2 = limits.admit(ip("10.0.0.1"));
        assert!(!a1.over && !a2.over);
        assert!(limits.admit(ip("10.0.0.1")).over, "a third in flight");
        assert!(!limits.admit(ip("10.0.0.2")).over, "another source");
        drop(a1);
        assert!(!limits.admit(ip("10.0.0.1")).over, "a place given back");
        // One IPv6 host is given a /64: it counts as one source.
        let b1 = limits.admit(ip("fd00:1::1"));
        let b2 = limits.admit(ip("fd00:1::2"));
        assert!(!b1.over && !b2.over);
        assert!(limits.admit(ip("fd00:1::3")).over);
    }

    #[test]
    fn the_rate_is_counted_per_second() {
        let limits = SourceLimits::new(Limits {
            per_second: 3,
            in_flight: 0,
        });
        let over: Vec<bool> = (0..5).map(|_| limits.admit(ip("10.0.0.9")).over).collect();
        assert_eq!(over, [false, false, false, true, true]);
    }
}
