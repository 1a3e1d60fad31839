//! Logs that stay readable in an incident: a Redis or Ironic outage under load writes a line
//! when it starts and one when it ends (and a summary every 10 s while it lasts), not one
//! warning per request.

mod common;

use common::{ironic, lookup, wait_for, Env, FakeIronic};
use std::time::Duration;

/// The gateway's warnings that mention `what`.
fn warnings_about(env: &Env, what: &str) -> Vec<String> {
    env.gw
        .logs()
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains(what))
        .map(str::to_string)
        .collect()
}

/// `n` lookups of never-seen MACs (each one asks Redis and, past it, Ironic).
fn lookups(env: &Env, n: usize) {
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..n / 4 {
                    env.send(&lookup(&ironic::random_mac()));
                }
            });
        }
    });
}

#[test]
fn an_ironic_outage_under_load_is_two_lines() {
    let mut env = Env::start();
    let port = env.fake.port();
    env.fake.stop();
    lookups(&env, 200);
    let started = warnings_about(&env, "Ironic is failing");
    assert_eq!(started.len(), 1, "{:#?}", warnings_about(&env, ""));
    assert!(
        warnings_about(&env, "forward failed").is_empty(),
        "no warning per request"
    );
    env.fake = FakeIronic::start_on(port);
    let back = wait_for(Duration::from_secs(6), || {
        let r = env.send(&lookup(&ironic::random_mac()));
        (r.status == 404 && !warnings_about(&env, "Ironic is back").is_empty()).then_some(())
    });
    assert!(back.is_some(), "{}", env.gw.logs());
    let ended = warnings_about(&env, "Ironic is back");
    assert_eq!(ended.len(), 1);
    assert!(ended[0].contains("failed calls"), "{}", ended[0]);
}

#[test]
fn a_redis_outage_under_load_is_two_lines() {
    let mut env = Env::start();
    env.redis.kill();
    lookups(&env, 200);
    let started = warnings_about(&env, "Redis is failing");
    assert_eq!(started.len(), 1, "{:#?}", warnings_about(&env, ""));
    assert!(
        warnings_about(&env, "carrying on without the store").is_empty(),
        "no warning per request"
    );
    env.redis.restart();
    let back = wait_for(Duration::from_secs(10), || {
        env.send(&lookup(&ironic::random_mac()));
        (!warnings_about(&env, "Redis is back").is_empty()).then_some(())
    });
    assert!(back.is_some(), "{}", env.gw.logs());
    assert_eq!(warnings_about(&env, "Redis is back").len(), 1);
}
