//! A stateful mini Ironic on top of [`FakeIronic`]: nodes with MACs, token minting on the first
//! lookup (raw once, `******` afterwards, the raw stored token leaked below 1.62 as Ironic
//! does), and the heartbeat checks of the API and conductor (unknown node, changed
//! `callback_url`, missing or wrong token). Answers are Ironic's exact ones, so a test can
//! compare what the agent gets whether the gateway answered or forwarded.

use super::fake_ironic::{Ctx, FakeIronic, FakeResponse, Recorded};
use super::ironic;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Ironic's 503 when its conductor pool is exhausted.
pub const NO_WORKERS: &str =
    "Requested action cannot be performed due to lack of free conductor workers.";

#[derive(Clone, Debug)]
pub struct Node {
    pub uuid: String,
    pub macs: Vec<String>,
    pub token: Option<String>,
    pub agent_url: Option<String>,
}

#[derive(Default)]
pub struct MiniIronic {
    nodes: Mutex<Vec<Node>>,
}

/// Now, as Ironic writes timestamps.
fn now_iso() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn node_json(n: &Node) -> serde_json::Value {
    let now = now_iso();
    serde_json::json!({
        "uuid": n.uuid,
        "name": null,
        "provision_state": "manageable",
        "maintenance": false,
        "driver_info": {"fast_track": true},
        "driver_internal_info": {
            "agent_secret_token": n.token.as_ref().map(|_| "******"),
            "agent_url": n.agent_url,
        },
        "created_at": now,
        "updated_at": now,
    })
}

fn ports_json(n: &Node) -> Vec<serde_json::Value> {
    let now = now_iso();
    n.macs
        .iter()
        .map(|mac| {
            serde_json::json!({
                "uuid": ironic::random_uuid(),
                "address": mac,
                "node_uuid": n.uuid,
                "created_at": now,
                "updated_at": now,
            })
        })
        .collect()
}

/// One page of a listing: `limit` items after `marker` (a uuid), by uuid.
fn page(collection: &str, mut items: Vec<serde_json::Value>, req: &Recorded) -> String {
    items.sort_by(|a, b| a["uuid"].as_str().cmp(&b["uuid"].as_str()));
    let mut limit = usize::MAX;
    let mut marker = None;
    for (k, v) in form_urlencoded::parse(req.query.as_deref().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "limit" => limit = v.parse().unwrap_or(usize::MAX),
            "marker" => marker = Some(v.to_string()),
            _ => {}
        }
    }
    let start = marker
        .and_then(|m| {
            items
                .iter()
                .position(|i| i["uuid"].as_str() == Some(m.as_str()))
        })
        .map_or(0, |p| p + 1);
    let page: Vec<_> = items.into_iter().skip(start).take(limit).collect();
    serde_json::json!({ collection: page }).to_string()
}

fn minor(v: &str) -> u32 {
    v.split_once('.')
        .and_then(|(_, m)| m.parse().ok())
        .unwrap_or(1)
}

/// `urlparse(...).geturl()` for the cases tests use: the scheme lower-cased.
pub fn normalise_callback(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{}://{rest}", scheme.to_ascii_lowercase()),
        None => url.to_string(),
    }
}

impl MiniIronic {
    /// Installs the lookup and heartbeat routes on `fake`.
    pub fn install(fake: &FakeIronic) -> Arc<MiniIronic> {
        let mini = Arc::new(MiniIronic::default());
        // Ironic's router also takes `/lookup`, a trailing `/`, and `.json` below 1.91.
        for path in ["/v1/lookup", "/v1/lookup/", "/lookup", "/v1/lookup.json"] {
            let m = mini.clone();
            fake.route("GET", path, move |req, ctx| m.lookup(req, ctx));
        }
        for path in ["/v1/heartbeat/*", "/heartbeat/*"] {
            let m = mini.clone();
            fake.route("POST", path, move |req, ctx| m.heartbeat(req, ctx));
        }
        mini
    }

    /// Also serves the node and port listings the node sync reads (`/v1/nodes`,
    /// `/v1/nodes/detail`, `/v1/ports`, one node and its ports), every node manageable with
    /// fast track on. Every item shows as changed just now, so every sync round re-reads all
    /// of them: the index follows the mini Ironic within one round.
    pub fn install_with_listings(fake: &FakeIronic) -> Arc<MiniIronic> {
        let mini = Self::install(fake);
        // Routes added later are matched first: the exact listings before the prefix.
        let m = mini.clone();
        fake.route("GET", "/v1/nodes/*", move |req, ctx| {
            let rest = req.path.trim_start_matches("/v1/nodes/");
            let (uuid, ports) = match rest.strip_suffix("/ports") {
                Some(u) => (u, true),
                None => (rest, false),
            };
            let nodes = m.nodes.lock().unwrap();
            match nodes.iter().find(|n| n.uuid == uuid) {
                None => ctx.node_not_found(req, uuid),
                Some(n) if ports => {
                    let body = serde_json::json!({ "ports": ports_json(n) });
                    ctx.json(req, 200, &body.to_string())
                }
                Some(n) => ctx.json(req, 200, &node_json(n).to_string()),
            }
        });
        for path in ["/v1/nodes", "/v1/nodes/detail"] {
            let m = mini.clone();
            fake.route("GET", path, move |req, ctx| {
                let items: Vec<_> = m.nodes.lock().unwrap().iter().map(node_json).collect();
                ctx.json(req, 200, &page("nodes", items, req))
            });
        }
        let m = mini.clone();
        fake.route("GET", "/v1/ports", move |req, ctx| {
            let items = m
                .nodes
                .lock()
                .unwrap()
                .iter()
                .flat_map(ports_json)
                .collect();
            ctx.json(req, 200, &page("ports", items, req))
        });
        mini
    }

    /// Heartbeats answered with Ironic's 503 "no free conductor workers" while the returned
    /// flag is set, by the mini Ironic otherwise.
    pub fn fail_heartbeats_while(self: &Arc<Self>, fake: &FakeIronic) -> Arc<AtomicBool> {
        let failing = Arc::new(AtomicBool::new(false));
        let (flag, mini) = (failing.clone(), self.clone());
        fake.route("POST", "/v1/heartbeat/*", move |req, ctx| {
            if flag.load(Ordering::SeqCst) {
                ctx.error(req, 503, NO_WORKERS)
            } else {
                mini.heartbeat(req, ctx)
            }
        });
        failing
    }

    /// Adds a node with these MACs; returns its UUID.
    pub fn add_node(&self, macs: &[&str]) -> String {
        let uuid = ironic::random_uuid();
        self.nodes.lock().unwrap().push(Node {
            uuid: uuid.clone(),
            macs: macs.iter().map(|m| m.to_ascii_lowercase()).collect(),
            token: None,
            agent_url: None,
        });
        uuid
    }

    /// Power off / reboot: the token and `agent_url` are wiped.
    pub fn wipe(&self, uuid: &str) {
        for n in self.nodes.lock().unwrap().iter_mut() {
            if n.uuid == uuid {
                n.token = None;
                n.agent_url = None;
            }
        }
    }

    /// Mints a new token for the node straight on the mini Ironic (as a lookup the gateway did
    /// not see would); returns it.
    pub fn mint(&self, uuid: &str) -> String {
        let token = ironic::random_token();
        for n in self.nodes.lock().unwrap().iter_mut() {
            if n.uuid == uuid {
                n.token = Some(token.clone());
            }
        }
        token
    }

    pub fn node(&self, uuid: &str) -> Option<Node> {
        self.nodes
            .lock()
            .unwrap()
            .iter()
            .find(|n| n.uuid == uuid)
            .cloned()
    }

    pub fn lookup(&self, req: &Recorded, ctx: &Ctx) -> FakeResponse {
        let ver = ctx.negotiated(req);
        if minor(&ver) < 22 {
            return ctx.lookup_not_found(req);
        }
        let mut node_uuid = None;
        let mut macs: Vec<String> = Vec::new();
        for (k, v) in form_urlencoded::parse(req.query.as_deref().unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "node_uuid" => node_uuid = Some(v.to_string()),
                "addresses" => macs.extend(v.split(',').map(|m| m.trim().to_ascii_lowercase())),
                _ => {}
            }
        }
        let mut nodes = self.nodes.lock().unwrap();
        let found = nodes.iter_mut().find(|n| match &node_uuid {
            Some(u) => &n.uuid == u,
            None => n.macs.iter().any(|m| macs.contains(m)),
        });
        let Some(node) = found else {
            return ctx.lookup_not_found(req);
        };
        let token = if minor(&ver) >= 62 {
            match &node.token {
                Some(_) => Some("******".to_string()),
                None => {
                    let t = ironic::random_token();
                    node.token = Some(t.clone());
                    Some(t)
                }
            }
        } else {
            node.token.clone() // Ironic's leak below 1.62
        };
        ctx.lookup_ok(req, &node.uuid, token.as_deref())
    }

    pub fn heartbeat(&self, req: &Recorded, ctx: &Ctx) -> FakeResponse {
        let ver = ctx.negotiated(req);
        if minor(&ver) < 22 {
            return ctx.lookup_not_found(req);
        }
        let mut ident = req
            .path
            .trim_start_matches("/v1")
            .trim_start_matches("/heartbeat/")
            .to_string();
        if minor(&ver) < 91 {
            if let Some(stripped) = ident.strip_suffix(".json") {
                ident = stripped.to_string();
            }
        }
        let mut params: serde_json::Map<String, serde_json::Value> = serde_json::Map::new();
        for (k, v) in form_urlencoded::parse(req.query.as_deref().unwrap_or("").as_bytes()) {
            params.insert(k.to_string(), serde_json::Value::String(v.to_string()));
        }
        if let serde_json::Value::Object(m) = req.json() {
            params.extend(m);
        }
        let mut nodes = self.nodes.lock().unwrap();
        let Some(node) = nodes.iter_mut().find(|n| n.uuid == ident) else {
            return ctx.node_not_found(req, &ident);
        };
        let Some(cb) = params.get("callback_url").and_then(|v| v.as_str()) else {
            return ctx.error(req, 400, "Missing mandatory parameter: callback_url");
        };
        let cb = normalise_callback(cb);
        if let Some(known) = &node.agent_url {
            if *known != cb {
                return ctx.error(req, 400, ironic::CALLBACK_CHANGED);
            }
        }
        let token = params.get("agent_token").and_then(|v| v.as_str());
        let Some(token) = token else {
            return ctx.error(
                req,
                400,
                "Agent token is required for heartbeat processing.",
            );
        };
        if node.token.as_deref() != Some(token) {
            return ctx.invalid_token(req);
        }
        node.agent_url = Some(cb);
        ctx.heartbeat_accepted(req)
    }
}
