//! What a Redis master kill did to one gateway, read from its `/metrics` sampled every half
//! second (the fleet bench's `redis-master-kill` outage): when it noticed, when it saw the
//! master switch, how long it did not know the master, and when it answered heartbeats at the
//! edge again. Measured, never asserted: the figures go into the report.
//!
//! "Answers locally again" is read from the decisions counter: an answer made at the edge from
//! what Redis holds (`index_404`, `negative_cache_404`, `coalesced_202`, `kept_202`,
//! `replayed`; not `document`, which is kept in memory); while the master is gone the gateway
//! forwards instead (its safe fallback). A Redis call that fails
//! (`ironic_edge_store_errors_total`), a master the gateway does not know
//! (`ironic_edge_redis_master_known` 0) or distrusts (`ironic_edge_redis_master_distrusted` 1)
//! marks a sample interval as disturbed; the gateway is healthy again at the first sample after
//! the last disturbed interval of the window, and back once it answered locally in an interval
//! after that one (an isolated success between failures,
//! e.g. a restarted old master that accepts writes until the sentinels make it a replica, is not
//! a recovery). The resolution is the sampling interval, and a gateway that few agents talk to
//! shows its first local answer only at the next request one of them sends that Redis can
//! answer (with `heartbeat_timeout` 60 few heartbeats fall within the coalescing window: the
//! unenrolled machines' lookups, answered from the index, are most of them).

use super::prom::{family_sum, Samples};

pub const SWITCHES: &str = "ironic_edge_redis_master_switches_total";
pub const KNOWN: &str = "ironic_edge_redis_master_known";
/// 1 while the gateway distrusts a master on another replication history (a promoted replica)
/// and forwards what it would answer from it, until a full sync round.
pub const DISTRUSTED: &str = "ironic_edge_redis_master_distrusted";
pub const STORE_ERRORS: &str = "ironic_edge_store_errors_total";
/// The answers made at the edge from what Redis holds.
pub const LOCAL_FROM_REDIS: [&str; 5] = [
    "ironic_edge_decisions_total{rule=\"index_404\"}",
    "ironic_edge_decisions_total{rule=\"negative_cache_404\"}",
    "ironic_edge_decisions_total{rule=\"coalesced_202\"}",
    "ironic_edge_decisions_total{rule=\"kept_202\"}",
    "ironic_edge_decisions_total{rule=\"replayed\"}",
];
pub const HEARTBEATS_FORWARDED: &str =
    "ironic_edge_requests_total{outcome=\"forwarded\",route=\"heartbeat\"}";

/// One sample of one gateway (`switches`, `known`: `None` for a gateway without Sentinel
/// support, whose page lacks them).
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub t: f64,
    pub switches: Option<f64>,
    pub known: Option<f64>,
    pub distrusted: Option<f64>,
    pub local: f64,
    pub forwarded: f64,
    pub store_errors: f64,
}

impl Point {
    pub fn of(t: f64, m: &Samples) -> Point {
        Point {
            t,
            switches: m.get(SWITCHES).copied(),
            known: m.get(KNOWN).copied(),
            distrusted: m.get(DISTRUSTED).copied(),
            local: LOCAL_FROM_REDIS
                .iter()
                .map(|k| m.get(*k).copied().unwrap_or(0.0))
                .sum(),
            forwarded: m.get(HEARTBEATS_FORWARDED).copied().unwrap_or(0.0),
            store_errors: family_sum(m, STORE_ERRORS),
        }
    }
}

/// Times in seconds from the kill.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recovery {
    /// the first disturbed interval's end
    pub noticed_s: Option<f64>,
    /// the first sample with more master switches than at the kill
    pub switch_seen_s: Option<f64>,
    pub switches: Option<f64>,
    /// the sampled time the gateway said it did not know the master
    pub master_unknown_s: Option<f64>,
    pub store_errors: f64,
    /// the first sample after the last disturbed interval (`None`: the window ends disturbed)
    pub healthy_again_s: Option<f64>,
    /// the end of the first interval with a local answer from Redis after the last disturbed
    /// one (`None`: not within the window)
    pub local_again_s: Option<f64>,
    /// heartbeats forwarded from the kill until then (or the window's end)
    pub forwarded_until_local: f64,
    /// no disturbed interval at all
    pub undisturbed: bool,
}

/// The recovery of one gateway from `points` (in time order; the last one at or before
/// `t_kill` is the baseline).
pub fn recovery(points: &[Point], t_kill: f64) -> Recovery {
    let Some(base_i) = points
        .iter()
        .rposition(|p| p.t <= t_kill)
        .or(if points.is_empty() { None } else { Some(0) })
    else {
        return Recovery::default();
    };
    let base = &points[base_i];
    let after = &points[base_i..];
    let disturbed = |prev: &Point, cur: &Point| {
        cur.store_errors > prev.store_errors
            || cur.known == Some(0.0)
            || cur.distrusted == Some(1.0)
    };
    let mut r = Recovery {
        store_errors: after
            .last()
            .map_or(0.0, |p| p.store_errors - base.store_errors),
        ..Recovery::default()
    };
    let mut last_bad = None;
    let mut unknown = 0.0;
    for (i, w) in after.windows(2).enumerate() {
        if disturbed(&w[0], &w[1]) {
            last_bad = Some(i);
            r.noticed_s.get_or_insert(w[1].t - t_kill);
        }
        if w[1].known == Some(0.0) {
            unknown += w[1].t - w[0].t;
        }
        if r.switch_seen_s.is_none() && w[1].switches.unwrap_or(0.0) > base.switches.unwrap_or(0.0)
        {
            r.switch_seen_s = Some(w[1].t - t_kill);
        }
    }
    if after.iter().any(|p| p.known.is_some()) {
        r.master_unknown_s = Some(unknown);
    }
    if let (Some(b), Some(last)) = (base.switches, after.last().and_then(|p| p.switches)) {
        r.switches = Some(last - b);
    }
    r.undisturbed = last_bad.is_none();
    let from = last_bad.map_or(0, |i| i + 1);
    r.healthy_again_s = match last_bad {
        Some(i) => after.get(i + 2).map(|p| p.t - t_kill),
        None => None,
    };
    let back = after
        .windows(2)
        .skip(from)
        .find(|w| w[1].local > w[0].local)
        .map(|w| &w[1]);
    r.local_again_s = back.map(|p| p.t - t_kill);
    let until = back.or(after.last()).unwrap_or(base);
    r.forwarded_until_local = until.forwarded - base.forwarded;
    r
}

pub(super) fn self_check() {
    fn p(t: f64, known: Option<f64>, switches: f64, local: f64, fwd: f64, err: f64) -> Point {
        Point {
            t,
            switches: known.map(|_| switches),
            known,
            distrusted: None,
            local,
            forwarded: fwd,
            store_errors: err,
        }
    }
    let k = Some(1.0);
    let u = Some(0.0);
    // (name, points, kill at, expected)
    let cases: Vec<(&str, Vec<Point>, f64, Recovery)> = vec![
        ("no samples", vec![], 1.0, Recovery::default()),
        (
            "failover followed: errors, master unknown, switch, local again",
            vec![
                p(0.5, k, 0.0, 10.0, 5.0, 0.0),
                p(1.0, k, 0.0, 12.0, 5.0, 0.0),
                p(1.5, u, 0.0, 12.0, 7.0, 3.0),
                p(2.0, u, 0.0, 12.0, 9.0, 3.0),
                p(2.5, k, 1.0, 12.0, 9.0, 3.0),
                p(3.0, k, 1.0, 15.0, 9.0, 3.0),
            ],
            1.0,
            Recovery {
                noticed_s: Some(0.5),
                switch_seen_s: Some(1.5),
                switches: Some(1.0),
                master_unknown_s: Some(1.0),
                store_errors: 3.0,
                healthy_again_s: Some(1.5),
                local_again_s: Some(2.0),
                forwarded_until_local: 4.0,
                undisturbed: false,
            },
        ),
        (
            "a success between failures is not the recovery (no Sentinel metrics)",
            vec![
                p(1.0, None, 0.0, 4.0, 0.0, 0.0),
                p(1.5, None, 0.0, 4.0, 1.0, 1.0),
                p(2.0, None, 0.0, 5.0, 1.0, 1.0),
                p(2.5, None, 0.0, 5.0, 2.0, 2.0),
                p(3.0, None, 0.0, 5.0, 2.0, 2.0),
                p(3.5, None, 0.0, 6.0, 2.0, 2.0),
            ],
            1.0,
            Recovery {
                noticed_s: Some(0.5),
                store_errors: 2.0,
                healthy_again_s: Some(2.0),
                local_again_s: Some(2.5),
                forwarded_until_local: 2.0,
                ..Recovery::default()
            },
        ),
        (
            "never back within the window",
            vec![
                p(1.0, None, 0.0, 4.0, 0.0, 0.0),
                p(1.5, None, 0.0, 4.0, 1.0, 1.0),
                p(2.0, None, 0.0, 4.0, 3.0, 2.0),
            ],
            1.0,
            Recovery {
                noticed_s: Some(0.5),
                store_errors: 2.0,
                forwarded_until_local: 3.0,
                ..Recovery::default()
            },
        ),
        (
            "a distrusted master forwards without errors: back once trusted again",
            {
                let mut v = vec![
                    p(1.0, k, 0.0, 4.0, 0.0, 0.0),
                    p(1.5, u, 0.0, 4.0, 1.0, 1.0),
                    p(2.0, k, 1.0, 4.0, 2.0, 1.0),
                    p(2.5, k, 1.0, 4.0, 3.0, 1.0),
                    p(3.0, k, 1.0, 6.0, 3.0, 1.0),
                ];
                v[2].distrusted = Some(1.0);
                v[3].distrusted = Some(1.0);
                v
            },
            1.0,
            Recovery {
                noticed_s: Some(0.5),
                switch_seen_s: Some(1.0),
                switches: Some(1.0),
                master_unknown_s: Some(0.5),
                store_errors: 1.0,
                healthy_again_s: Some(2.0),
                local_again_s: Some(2.0),
                forwarded_until_local: 3.0,
                undisturbed: false,
            },
        ),
        (
            "undisturbed: the first local answer after the kill",
            vec![
                p(0.8, k, 2.0, 4.0, 0.0, 0.0),
                p(1.3, k, 2.0, 4.0, 0.0, 0.0),
                p(1.8, k, 2.0, 5.0, 0.0, 0.0),
            ],
            1.0,
            Recovery {
                switches: Some(0.0),
                master_unknown_s: Some(0.0),
                local_again_s: Some(0.8),
                undisturbed: true,
                ..Recovery::default()
            },
        ),
    ];
    for (name, points, kill, want) in cases {
        assert_eq!(recovery(&points, kill), want, "{name}");
    }
    let page = super::prom::parse(
        "ironic_edge_decisions_total{rule=\"coalesced_202\"} 3\n\
         ironic_edge_decisions_total{rule=\"kept_202\"} 2\n\
         ironic_edge_decisions_total{rule=\"index_404\"} 4\n\
         ironic_edge_decisions_total{rule=\"document\"} 9\n\
         ironic_edge_requests_total{outcome=\"forwarded\",route=\"heartbeat\"} 7\n\
         ironic_edge_store_errors_total 1\n\
         ironic_edge_redis_master_known 1\n",
        "ironic_edge_",
    );
    assert_eq!(
        Point::of(2.0, &page),
        Point {
            t: 2.0,
            switches: None,
            known: Some(1.0),
            distrusted: None,
            local: 9.0,
            forwarded: 7.0,
            store_errors: 1.0
        }
    );
}
