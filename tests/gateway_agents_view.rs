//! `GET /agents` on the ops listener: what the edge knows of each node's agent (session, token
//! known, heartbeats accepted and kept, the index's provision state), one node or a page over
//! the node index, never the token, its hash or the heartbeat fingerprint.

mod common;

use common::*;

const CB: &str = "https://10.0.0.5:9999";

fn agents(env: &Env, query: &str) -> (u16, String) {
    let r = http::get(env.gw.cfg.ops, &format!("/agents{query}"), &[]);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    (r.status, r.text())
}

#[test]
fn after_a_lookup_and_a_heartbeat_the_node_shows_its_token_known_and_no_secret() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    let mac = ironic::random_mac();
    let uuid = mini.add_node(&[&mac]);
    let env = Env::start_with_fake(fake, |_| {});
    let (status, _) = agents(&env, &format!("?node={uuid}"));
    assert_eq!(status, 404, "nothing known before the agent's first lookup");

    let token = minted_token(&env, &mac);
    assert_eq!(env.send(&heartbeat(&uuid, CB, &token)).status, 202);
    assert_eq!(env.fake.heartbeats(), 1, "Ironic accepted it");

    let (status, text) = agents(&env, &format!("?node={}", uuid.to_uppercase()));
    assert_eq!(status, 200, "{text}");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["uuid"], uuid.as_str());
    assert_eq!(doc["session"], "known", "{doc:#}");
    assert_eq!(doc["token_known"], true, "{doc:#}");
    assert_eq!(doc["callback_url"], CB, "{doc:#}");
    assert!(
        doc["last_heartbeat_ironic_accepted_at"]
            .as_str()
            .is_some_and(|d| d.ends_with("GMT")),
        "{doc:#}"
    );
    assert_eq!(doc["heartbeat_kept_for_relay"], serde_json::Value::Null);

    // Whatever the record holds that proves or fingerprints the token stays out.
    let record = env
        .redis
        .cmd(&["HGETALL", &format!("ironic-edge:node:{uuid}")])
        .strings();
    let field = |name: &str| {
        record
            .chunks(2)
            .find(|kv| kv[0] == name)
            .map(|kv| kv[1].clone())
            .unwrap_or_else(|| panic!("no {name} in {record:?}"))
    };
    for (what, secret) in [
        ("the token", token.clone()),
        ("its hash", field("token")),
        ("the heartbeat fingerprint", field("hb_fp")),
    ] {
        assert!(!text.contains(&secret), "{what} is shown: {text}");
    }
}

#[test]
fn a_heartbeat_kept_for_the_relay_is_shown_waiting() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install(&fake);
    let failing = mini.fail_heartbeats_while(&fake);
    let mac = ironic::random_mac();
    let uuid = mini.add_node(&[&mac]);
    let env = Env::start_with_fake(fake, |c| {
        c.with_seal_key();
    });
    let token = minted_token(&env, &mac);
    assert_eq!(env.send(&heartbeat(&uuid, CB, &token)).status, 202);
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    // No node index here: nothing is coalesced, the heartbeat reaches Ironic's 503.
    let r = env.send(&heartbeat(&uuid, CB, &token));
    assert_eq!(r.status, 202, "accepted at the edge while Ironic fails");

    let (status, text) = agents(&env, &format!("?node={uuid}"));
    assert_eq!(status, 200, "{text}");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        doc["heartbeat_kept_for_relay"]["kept_at"]
            .as_str()
            .is_some_and(|d| d.ends_with("GMT")),
        "{doc:#}"
    );
    assert!(!text.contains(&token));
}

/// A heartbeat the edge answered itself (coalesced) shows as accepted at the edge, with no
/// Redis write (the process remembers it), while one Ironic took shows as Ironic's.
#[test]
fn a_coalesced_heartbeat_shows_as_accepted_at_the_edge() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install_with_listings(&fake);
    let mac = ironic::random_mac();
    let uuid = mini.add_node(&[&mac]);
    let env = Env::start_with_fake(fake, |c| {
        c.with_index_and_coalescing();
    });
    env.wait_for_index();
    let token = minted_token(&env, &mac);
    assert_eq!(env.send(&heartbeat(&uuid, CB, &token)).status, 202);
    let doc = |env: &Env| -> serde_json::Value {
        let (status, text) = agents(env, &format!("?node={uuid}"));
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    };
    let first = doc(&env);
    assert!(
        first["last_heartbeat_ironic_accepted_at"].is_string(),
        "{first:#}"
    );
    assert_eq!(
        first["last_heartbeat_edge_accepted_at"],
        serde_json::Value::Null,
        "Ironic took the first: {first:#}"
    );
    env.wait_until_coalesced(&token, || env.send(&heartbeat(&uuid, CB, &token)));
    let later = doc(&env);
    assert!(
        later["last_heartbeat_edge_accepted_at"]
            .as_str()
            .is_some_and(|d| d.ends_with("GMT")),
        "{later:#}"
    );
}

#[test]
fn the_index_is_listed_in_pages_by_uuid() {
    let fake = FakeIronic::start();
    let mini = MiniIronic::install_with_listings(&fake);
    let mut uuids: Vec<String> = (0..7)
        .map(|_| mini.add_node(&[&ironic::random_mac()]))
        .collect();
    uuids.sort();
    let env = Env::start_with_fake(fake, |c| {
        c.set("ironic_edge.sync.enabled", true)
            .set("ironic_edge.sync.interval_seconds", 1);
    });
    env.wait_for_index();

    let mut seen = Vec::new();
    let mut marker: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &marker {
            Some(m) => format!("?limit=3&marker={m}"),
            None => "?limit=3".to_string(),
        };
        let (status, text) = agents(&env, &query);
        assert_eq!(status, 200, "{text}");
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["index"]["complete"], true, "{doc:#}");
        let page = doc["agents"].as_array().unwrap();
        assert!(page.len() <= 3, "{doc:#}");
        for a in page {
            assert_eq!(a["index"]["provision_state"], "manageable", "{a:#}");
            assert_eq!(a["token_known"], false);
            seen.push(a["uuid"].as_str().unwrap().to_string());
        }
        pages += 1;
        assert!(pages <= 4, "paging ends: {doc:#}");
        match doc["next_marker"].as_str() {
            Some(m) => marker = Some(m.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, uuids, "every indexed node once, in uuid order");
    assert_eq!(pages, 3);

    for bad in ["?limit=0", "?limit=1001", "?marker=node-1", "?detail=1"] {
        assert_eq!(agents(&env, bad).0, 400, "{bad}");
    }
}
