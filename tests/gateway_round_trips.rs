//! What a lookup that mints a token costs in Redis (issue 10, item 2): the facts its decision
//! needs are read in one step, and what it learnt from Ironic's answer is written in one step,
//! so a minted lookup makes at most 3 Redis round trips (the facts, the single flight's lease,
//! the writes).
//!
//! Counted with Redis's own counters, not timed: a round trip is one batch the gateway sends
//! and waits for (one command, a pipeline or a script), which Redis reads as one read event
//! on the gateway's connection (`total_reads_processed`; the batches are a few KB, well under
//! the 16 KB Redis reads at once). The gateway's background work (the node sync, its lease,
//! the relay) only adds to a count: each lookup is counted alone and the least of several is
//! taken.

mod common;

use common::*;
use std::time::Duration;

/// Lookups counted (each mints the token of a node of its own).
const LOOKUPS: usize = 6;

/// A gateway with the node index on and the replay of lost answers on (the whole minted path:
/// node record, heartbeat 404 forgotten, answer kept for one replay, flight ended), and one MAC
/// per node.
fn start(view_entries: usize) -> (Env, Vec<String>) {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install_with_listings(&fake);
    let macs: Vec<String> = (0..LOOKUPS).map(|_| ironic::random_mac()).collect();
    for mac in &macs {
        mini.add_node(&[mac.as_str()]);
    }
    let env = Env::start_with_fake(fake, |c| {
        c.with_seal_key()
            .set("ironic_edge.lookup.replay_window_seconds", 30)
            .set("ironic_edge.sync.enabled", true)
            // Rounds far apart: less background work to count beside the lookups (the index
            // stays fresh for 2 intervals and 5 s).
            .set("ironic_edge.sync.interval_seconds", 10)
            .set("ironic_edge.redis.view_entries", view_entries as i64);
    });
    env.wait_for_index();
    (env, macs)
}

/// Redis's counts for each minted lookup, one at a time (after each, a pause for anything the
/// gateway would still write once the agent has its answer).
fn minted_lookup_costs(env: &Env, macs: &[String]) -> Vec<RedisStats> {
    let mut redis = env.redis.conn();
    macs.iter()
        .map(|mac| {
            let before = redis.stats();
            let r = env.send(&lookup(mac));
            assert_eq!(r.status, 200, "{}", r.text());
            let token = r.json()["config"]["agent_token"].as_str().map(str::len);
            assert!(token > Some(10), "a minted token: {}", r.text());
            std::thread::sleep(Duration::from_millis(100));
            redis.stats().since(&before)
        })
        .collect()
}

fn least(costs: &[RedisStats]) -> RedisStats {
    RedisStats {
        reads: costs.iter().map(|c| c.reads).min().unwrap(),
        commands: costs.iter().map(|c| c.commands).min().unwrap(),
    }
}

/// Mints a few tokens with the view at `view_entries` (0: off) and checks the cheapest.
fn assert_a_minted_lookup_makes_three_round_trips_at_most(view_entries: usize) {
    let (env, macs) = start(view_entries);
    let costs = minted_lookup_costs(&env, &macs);
    eprintln!("per minted lookup (round trips, commands): {costs:?}");
    let least = least(&costs);
    assert!(
        least.reads <= 3,
        "{} Redis round trips ({} commands) for a minted lookup",
        least.reads,
        least.commands
    );
}

#[test]
fn a_minted_lookup_makes_three_redis_round_trips_at_most() {
    assert_a_minted_lookup_makes_three_round_trips_at_most(20_000);
}

/// Without the view the reads it would serve are in the same steps: still 3 at most.
#[test]
fn without_the_view_a_minted_lookup_makes_three_round_trips_at_most() {
    assert_a_minted_lookup_makes_three_round_trips_at_most(0);
}
