//! The few Ironic API calls the sync makes, authenticated as configured.

use crate::config::{SyncAuth, SyncAuthType};
use crate::edge::Edge;
use crate::ironic::ApiVersion;
use crate::upstream::governor::{self, Class, Lane};
use pingora::http::RequestHeader;
use serde_json::Value;
use std::sync::Arc;

/// The version the sync speaks (capped by the upstream's maximum): `fields`, `sort_key`
/// and markers all exist there.
const SYNC_VERSION: ApiVersion = ApiVersion::new(1, 96);

pub struct IronicApi {
    edge: Arc<Edge>,
    auth: Option<(&'static str, String)>,
}

/// What a listing kept of its items, and Ironic's clock when it began: the `Date` of its first
/// page (the clock Ironic's `updated_at` values are written with), if Ironic sent one.
pub struct Listing<T> {
    pub items: Vec<T>,
    pub started: Option<i64>,
}

/// A listing's first page holds one item: in a quiet round (the common case) that item is
/// already older than the watermark, and the listing ends there.
const FIRST_ORDERED_PAGE: u32 = 1;

impl IronicApi {
    pub fn new(edge: Arc<Edge>, auth: &SyncAuth) -> Self {
        use base64::Engine;
        let auth = match auth.kind {
            SyncAuthType::Noauth => None,
            SyncAuthType::HttpBasic => {
                let raw = format!("{}:{}", auth.username, auth.password);
                let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
                Some(("Authorization", format!("Basic {b64}")))
            }
            SyncAuthType::Token => Some(("X-Auth-Token", auth.token.clone())),
        };
        IronicApi { edge, auth }
    }

    /// `GET path` as JSON; `Ok(None)` for a 404.
    pub async fn get(&self, path: &str) -> Result<Option<Value>, String> {
        self.get_dated(path).await.map(|(v, _)| v)
    }

    /// `GET path` as JSON, with the answer's `Date` (Unix seconds).
    async fn get_dated(&self, path: &str) -> Result<(Option<Value>, Option<i64>), String> {
        let version = self
            .edge
            .versions
            .get()
            .map(|i| i.range.max.min(SYNC_VERSION))
            .ok_or("upstream versions unknown")?;
        let mut req =
            RequestHeader::build("GET", path.as_bytes(), Some(5)).map_err(|e| e.to_string())?;
        let t = self.edge.upstream.target();
        let header = |req: &mut RequestHeader, k: &'static str, v: String| {
            req.insert_header(k, v).map_err(|e| e.to_string())
        };
        header(&mut req, "Host", format!("{}:{}", t.host, t.port))?;
        header(&mut req, "Accept", "application/json".into())?;
        header(&mut req, "User-Agent", "ironic-edge-sync".into())?;
        header(
            &mut req,
            "X-OpenStack-Ironic-API-Version",
            version.to_string(),
        )?;
        if let Some((k, v)) = &self.auth {
            header(&mut req, k, v.clone())?;
        }
        // The sync's requests count in Ironic's budget like the agents', first in line: a stale
        // index sends every agent request to Ironic, and its rounds cost a few requests.
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let permit = self
            .edge
            .governor
            .enter(Class::Upkeep, Lane::Api, "node sync", until)
            .await
            .map_err(|_| format!("GET {path}: no place in Ironic's budget"))?;
        self.edge.metrics.sync_request();
        let sent = self.edge.upstream.send(&req, b"").await;
        permit.answered(governor::sample_of(&sent));
        let resp = sent.map_err(|e| e.to_string())?;
        let date = resp
            .header
            .headers
            .get("date")
            .and_then(|d| d.to_str().ok())
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64);
        match resp.status() {
            200 => serde_json::from_slice(&resp.body)
                .map(|v| (Some(v), date))
                .map_err(|e| format!("{path}: {e}")),
            404 => Ok((None, date)),
            s => Err(format!("GET {path} answered {s}")),
        }
    }

    /// Lists a collection page by page: `listing` is `(collection key, path, fields)`. With
    /// `order = Some((key, since))` it lists newest first by `key` and stops at the first
    /// item older than `since` (its first page holds one item); `first_page_only` stops after
    /// one page. Each item is handed to `keep` as its page is read, and only what `keep`
    /// returns is held: a full round of 10,000 nodes holds one page of Ironic's documents at a
    /// time, not all of them (their `driver_internal_info` alone can be kilobytes a node).
    pub async fn list<T>(
        &self,
        listing: (&str, &str, Option<&str>),
        order: Option<(&str, Option<i64>)>,
        page_size: u32,
        first_page_only: bool,
        mut keep: impl FnMut(&Value) -> Option<T>,
    ) -> Result<Listing<T>, String> {
        let (collection, base, fields) = listing;
        let mut out = Vec::new();
        let mut started = None;
        let mut marker: Option<String> = None;
        let mut seen_dated = false;
        let mut limit = match order {
            Some((_, Some(_))) if !first_page_only => FIRST_ORDERED_PAGE.min(page_size),
            _ => page_size,
        };
        loop {
            let mut path = format!("{base}?limit={limit}");
            if let Some(f) = fields {
                path.push_str(&format!("&fields={f}"));
            }
            if let Some((key, _)) = order {
                path.push_str(&format!("&sort_key={key}&sort_dir=desc"));
            }
            if let Some(m) = &marker {
                path.push_str(&format!("&marker={m}"));
            }
            let (page, date) = self.get_dated(&path).await?;
            let mut page = page.ok_or_else(|| format!("GET {path}: 404"))?;
            started = started.or(date);
            let items = match page.get_mut(collection).map(Value::take) {
                Some(Value::Array(items)) => items,
                _ => return Err(format!("GET {path}: no {collection} list")),
            };
            let n = items.len();
            // Every listing carries `uuid`: Ironic's marker.
            marker = items
                .last()
                .and_then(|i| i.get("uuid"))
                .and_then(|u| u.as_str())
                .map(str::to_string);
            let mut reached_old = false;
            for item in items {
                if let Some((key, Some(since))) = order {
                    let ts = item
                        .get(key)
                        .and_then(|t| t.as_str())
                        .and_then(super::timestamp::seconds);
                    match ts {
                        Some(t) if t < since => reached_old = true,
                        // Never set: SQLite and MySQL sort these after every dated item (so
                        // the dated ones are done), PostgreSQL before them (keep going).
                        None if seen_dated => reached_old = true,
                        Some(_) => seen_dated = true,
                        None => {}
                    }
                    if reached_old {
                        break;
                    }
                }
                out.extend(keep(&item));
            }
            // A whole page of never-set timestamps and nothing dated yet: either every item is
            // undated (then the `created_at` listing covers them) or PostgreSQL sorts a long run
            // of them first; either way paging on would list everything every round.
            let all_undated = order.is_some() && !seen_dated && limit == page_size;
            if first_page_only
                || reached_old
                || all_undated
                || n < limit as usize
                || marker.is_none()
            {
                return Ok(Listing {
                    items: out,
                    started,
                });
            }
            limit = page_size;
        }
    }

    /// A node and its ports, by uuid or name; `None` if Ironic does not know it.
    pub async fn node_with_ports(
        &self,
        ident: &str,
    ) -> Result<Option<(Value, Vec<Value>)>, String> {
        let Some(node) = self
            .get(&format!("/v1/nodes/{ident}?fields={}", super::NODE_FIELDS))
            .await?
        else {
            return Ok(None);
        };
        let uuid = node
            .get("uuid")
            .and_then(|u| u.as_str())
            .ok_or("node without uuid")?;
        let ports = self
            .get(&format!(
                "/v1/nodes/{uuid}/ports?fields={}",
                super::PORT_FIELDS
            ))
            .await?
            .and_then(|p| p.get("ports").and_then(|a| a.as_array()).cloned())
            .unwrap_or_default();
        Ok(Some((node, ports)))
    }
}
