//! The unknown-machines view: `GET /agents/unknown` on the ops listener lists the MAC sets and
//! source addresses whose lookups got 404 (answered at the edge or by Ironic), with counts and
//! first and last sightings, in bounded memory whatever the number of MACs seen.

mod common;

use common::{http, lookup, Env};

fn unknown(env: &Env) -> serde_json::Value {
    let r = http::get(env.gw.cfg.ops, "/agents/unknown", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    r.json()
}

#[test]
fn a_machine_that_keeps_looking_up_in_vain_is_listed_with_its_source() {
    let env = Env::start();
    let typo = "52:54:00:aa:00:02,52:54:00:aa:00:01";
    for _ in 0..5 {
        let r = env.send(&lookup(typo));
        assert_eq!(r.status, 404, "{}", r.text());
    }
    env.send(&lookup("52:54:00:bb:00:01"));
    let doc = unknown(&env);
    let sets = doc["mac_sets"].as_array().unwrap();
    assert_eq!(
        sets[0]["macs"], "52:54:00:aa:00:01,52:54:00:aa:00:02",
        "sorted, the most frequent first: {doc:#}"
    );
    assert_eq!(sets[0]["lookups_not_found"], 5);
    assert!(sets[0]["first_seen"].as_str().unwrap().ends_with("GMT"));
    assert_eq!(sets[1]["lookups_not_found"], 1);
    let sources = doc["sources"].as_array().unwrap();
    assert_eq!(sources[0]["source"], "127.0.0.1");
    assert_eq!(sources[0]["lookups_not_found"], 6);
}

#[test]
fn a_flood_of_random_macs_is_held_in_bounded_memory() {
    let env = Env::start();
    std::thread::scope(|s| {
        for t in 0..4 {
            let env = &env;
            s.spawn(move || {
                for i in 0..100 {
                    env.send(&lookup(&format!(
                        "52:54:0d:{t:02x}:{:02x}:{:02x}",
                        i / 256,
                        i % 256
                    )));
                }
            });
        }
    });
    let doc = unknown(&env);
    let top = doc["top"].as_u64().unwrap() as usize;
    assert_eq!(
        doc["mac_sets"].as_array().unwrap().len(),
        top,
        "{top} kept of 400"
    );
}
