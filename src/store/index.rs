//! The node index the sync service keeps (Ironic's own view of every node and port), usable
//! only while its generation markers agree: a half that Redis lost (a flush, a restart without
//! persistence, an eviction) takes its marker with it.

use super::conn::{eval, parsed, viewed, Conn, ReadStep, Replies, Slot};
use super::entry_cache::{EntryCache, TaggedRead};
use super::{StoreError, StoreResult};
use std::sync::Arc;

/// A node's `driver_info.fast_track` as Ironic reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FastTrack {
    /// Not set: Ironic's `[deploy]fast_track` applies.
    Default,
    On,
    Off,
    /// A value Ironic refuses (its lookup answers 400): never decided at the edge.
    Invalid,
}

/// What the node index knows of one node (kept fresh by the sync service).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct IndexedNode {
    pub(crate) uuid: String,
    pub(crate) name: Option<String>,
    pub(crate) provision_state: String,
    pub(crate) fast_track: FastTrack,
    pub(crate) maintenance: bool,
    /// `agent_secret_token` present in `driver_internal_info`.
    pub(crate) token_held: bool,
    pub(crate) agent_url: Option<String>,
    /// A power or provision change is under way (`target_power_state` or
    /// `target_provision_state` set): the token and `agent_url` may be about to be wiped.
    #[serde(default)]
    pub(crate) in_transition: bool,
    /// When the node was read from Ironic (the start of the round or refresh), in Unix
    /// milliseconds (0: unknown, an entry written before this field existed).
    #[serde(default)]
    pub(crate) read_at_ms: u64,
}

/// What a lookup needs of the index, read in one step ([`NodeIndex::read_lookup`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IndexRead {
    /// When the round that completed the index started (Unix ms), if both halves are of the
    /// generation it vouched for (`None`: no complete index, nothing below counts).
    pub(crate) synced_at_ms: Option<u64>,
    /// By MACs: the distinct nodes of the MACs (two at most: two already decide). By uuid:
    /// none (the uuid designates the node).
    pub(crate) nodes: Vec<String>,
    /// The entry of the one node `nodes` names (`None`: the index has none, or `nodes` does not
    /// name exactly one).
    pub(crate) node: Option<IndexedNode>,
}

/// Index entries read for a listing ([`NodeIndex::read_entries`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IndexEntries {
    /// When the round that completed the index started (`None`: the index is not complete).
    pub(crate) synced_at_ms: Option<u64>,
    /// The entries, in the order asked.
    pub(crate) nodes: Vec<Option<IndexedNode>>,
}

/// What a lookup designates in the index.
#[derive(Clone, Copy)]
pub(crate) enum IndexKey<'a> {
    Uuid(&'a str),
    Macs(&'a [String]),
}

impl IndexKey<'_> {
    /// The key of its read in the entry cache; `None` for a key too long to keep (built only
    /// if it is short: a lookup of 1,500 MACs must not copy them while it waits for Ironic).
    fn cache_key(&self) -> Option<String> {
        let len = match self {
            IndexKey::Uuid(u) => 2 + u.len(),
            IndexKey::Macs(m) => 2 + m.iter().map(|a| a.len() + 1).sum::<usize>(),
        };
        (len <= super::entry_cache::MAX_KEY_BYTES).then(|| match self {
            IndexKey::Uuid(u) => format!("u {u}"),
            IndexKey::Macs(m) => format!("m {}", m.join(",")),
        })
    }
}

/// Where a lookup's index read is in a [`ReadStep`] ([`NodeIndex::read_lookup`]), taken with
/// [`NodeIndex::take_lookup`].
pub(crate) struct LookupSlot {
    markers: Slot<Markers>,
    entries: LookupEntries,
    /// The read's key in the entry cache: only for reads the cache may keep.
    key: Option<String>,
    by_macs: bool,
}

enum LookupEntries {
    Read(Slot<Vec<Option<String>>>),
    /// From the entry cache, if the markers read in the step show the same version tags.
    Cached(Arc<TaggedRead>),
}

/// The index's markers as the view serves them: the freshness, and each half's generation and
/// version tag.
#[derive(Debug, Default)]
struct Markers {
    synced: Option<String>,
    gen_nodes: Option<String>,
    gen_macs: Option<String>,
    ver_nodes: Option<String>,
    ver_macs: Option<String>,
}

/// One write to the index: entries to set and entries to drop, and the time of the round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IndexUpdate {
    pub(crate) nodes: Vec<IndexedNode>,
    /// `(mac, node uuid)`.
    pub(crate) ports: Vec<(String, String)>,
    pub(crate) removed_nodes: Vec<String>,
    pub(crate) removed_macs: Vec<String>,
    /// Unix milliseconds of the round, written as the index's freshness; `None` for an
    /// event-driven refresh that does not vouch for the whole index.
    pub(crate) synced_at_ms: Option<u64>,
    /// The index generation the round vouches for (with `synced_at_ms`): a full round starts a
    /// new one; an incremental round only carries on the one it read, and its freshness is not
    /// written if the index in Redis is no longer of that generation (Redis lost it meanwhile).
    pub(crate) generation: Option<String>,
    /// A full round: everything Ironic has, written under a new `generation`.
    pub(crate) full_round: bool,
}

/// The node index.
#[derive(Clone)]
pub(crate) struct NodeIndex {
    conn: Conn,
    /// The entries the agent path read recently, kept under the halves' version tags.
    cache: Arc<EntryCache>,
    /// The viewed reads of the markers ([`Self::marker_reads`]): the same three commands on
    /// every agent request, built once (building them was a few percent of a local answer).
    markers: Arc<[redis::Cmd]>,
}

impl NodeIndex {
    pub(crate) fn new(conn: Conn) -> Self {
        let cache = Arc::new(EntryCache::new(conn.view_entries()));
        let markers = marker_commands(&conn.keys).into();
        NodeIndex {
            conn,
            cache,
            markers,
        }
    }

    /// Unix milliseconds of the last completed sync round (`None`: no complete index: never
    /// synced, or its generation marker is missing or inconsistent, as after Redis lost data).
    pub(crate) async fn synced_at(&self) -> StoreResult<Option<u64>> {
        Ok(self.index_marker().await?.map(|(at, _)| at))
    }

    /// The generation of the complete index in the store (`None`: none, or its markers
    /// disagree): the sync carries on incrementally only from the generation it wrote.
    /// Read from Redis itself, never the in-process view: it is what the sync checks before
    /// vouching for the index again.
    pub(crate) async fn generation(&self) -> StoreResult<Option<String>> {
        Ok(self
            .read_marker(false)
            .await?
            .map(|(_, generation)| generation))
    }

    /// Where the sync resumes (its watermarks, as JSON): a process taking the lease over
    /// carries on from there instead of starting with a full round.
    pub(crate) async fn sync_marks(&self) -> StoreResult<Option<String>> {
        self.conn
            .run(redis::cmd("GET").arg(self.conn.keys.sync_marks()).clone())
            .await
    }

    /// Writes where the sync resumes.
    pub(crate) async fn put_sync_marks(&self, marks: &str) -> StoreResult<()> {
        self.conn
            .run(
                redis::cmd("SET")
                    .arg(self.conn.keys.sync_marks())
                    .arg(marks)
                    .clone(),
            )
            .await
    }

    /// A node of the index; an error if the index is not the complete one [`Self::synced_at`]
    /// vouched for (its generation changed): a missing entry means "no such node" only in a
    /// complete index.
    pub(crate) async fn node(&self, uuid: &str) -> StoreResult<Option<IndexedNode>> {
        let fields = [uuid.to_string()];
        let found = self.index_read(&fields).await?;
        Ok(found
            .into_iter()
            .nth(1)
            .flatten()
            .and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// The indexed node with this name (`None`: no indexed node has it).
    pub(crate) async fn node_named(&self, name: &str) -> StoreResult<Option<IndexedNode>> {
        let fields = [format!("{NAME_FIELD}{name}")];
        let found = self.index_read(&fields).await?;
        let Some(uuid) = found.into_iter().nth(1).flatten() else {
            return Ok(None);
        };
        Ok(self
            .node(&uuid)
            .await?
            .filter(|n| n.name.as_deref() == Some(name)))
    }

    /// One slice of the node half's entries (HSCAN from `cursor`, about `count` fields): the
    /// next cursor (0: the end) and the node uuids of the slice. What a listing of the index
    /// holds at once is a slice, whatever the number of nodes.
    pub(crate) async fn scan_nodes(
        &self,
        cursor: u64,
        count: usize,
    ) -> StoreResult<(u64, Vec<String>)> {
        let (next, flat): (String, Vec<String>) = self
            .conn
            .run(
                redis::cmd("HSCAN")
                    .arg(self.conn.keys.index_nodes())
                    .arg(cursor)
                    .arg("MATCH")
                    .arg("????????-????-????-????-????????????")
                    .arg("COUNT")
                    .arg(count)
                    .clone(),
            )
            .await?;
        let next = next
            .parse()
            .map_err(|_| StoreError(format!("HSCAN cursor {next:?}")))?;
        // Field, value, field, value...: the fields, entries only.
        let uuids = flat
            .into_iter()
            .step_by(2)
            .filter(|f| !is_marker_field(f) && !f.starts_with(NAME_FIELD))
            .collect();
        Ok((next, uuids))
    }

    /// The entries of these nodes, read in `step`, with whether the index is complete (its
    /// freshness and the node half's generation agree; an entry of an incomplete index may be
    /// stale or missing).
    pub(crate) fn read_entries(&self, step: &mut ReadStep, uuids: &[String]) -> Slot<IndexEntries> {
        let mut entries = redis::cmd("HMGET");
        entries
            .arg(self.conn.keys.index_nodes())
            .arg(GENERATION_FIELD)
            .arg(uuids);
        step.reads(
            vec![
                redis::cmd("GET")
                    .arg(self.conn.keys.index_synced_at())
                    .clone(),
                entries,
            ],
            |values| {
                let mut values = values.into_iter();
                let (Some(synced), Some(found)) = (values.next(), values.next()) else {
                    return Err(StoreError("an index read answered short".into()));
                };
                let synced: Option<String> = parsed(synced)?;
                let found: Vec<Option<String>> = parsed(found)?;
                let vouched = synced.as_deref().and_then(parse_synced_at);
                let half_gen = found.first().cloned().flatten();
                let complete = matches!((&vouched, &half_gen), (Some((_, g)), Some(h)) if g == h);
                Ok(IndexEntries {
                    synced_at_ms: vouched.filter(|_| complete).map(|(at, _)| at),
                    nodes: found
                        .into_iter()
                        .skip(1)
                        .map(|t| t.and_then(|t| serde_json::from_str(&t).ok()))
                        .collect(),
                })
            },
        )
    }

    /// Every node uuid and MAC in the index (for a full round to find what disappeared).
    pub(crate) async fn members(&self) -> StoreResult<(Vec<String>, Vec<String>)> {
        let mut pipe = redis::pipe();
        pipe.cmd("HKEYS")
            .arg(self.conn.keys.index_nodes())
            .cmd("HKEYS")
            .arg(self.conn.keys.index_macs());
        let (nodes, macs): (Vec<String>, Vec<String>) = self.conn.run_pipe(pipe).await?;
        let entries = |v: Vec<String>| {
            v.into_iter()
                .filter(|k| !is_marker_field(k) && !k.starts_with(NAME_FIELD))
                .collect()
        };
        Ok((entries(nodes), entries(macs)))
    }

    /// Writes a round (or a refresh). A round's freshness is written only if the index is
    /// still of its generation (a full round: if nothing wiped what it wrote meanwhile);
    /// otherwise an error, and the next round must be a full one.
    pub(crate) async fn write(&self, u: &IndexUpdate) -> StoreResult<()> {
        self.conn
            .settled(async {
                let (nodes, macs) = (self.conn.keys.index_nodes(), self.conn.keys.index_macs());
                if u.full_round {
                    // Marks both halves as being rebuilt by this round: a flush or an eviction while
                    // the round writes removes the mark, and the round then does not vouch for them.
                    let generation = u
                        .generation
                        .as_deref()
                        .ok_or_else(|| StoreError("a full round without a generation".into()))?;
                    let mut pipe = redis::pipe();
                    pipe.atomic()
                        .cmd("HSET")
                        .arg(&nodes)
                        .arg(BUILDING_FIELD)
                        .arg(generation)
                        .ignore()
                        .cmd("HSET")
                        .arg(&macs)
                        .arg(BUILDING_FIELD)
                        .arg(generation)
                        .ignore();
                    self.conn.run_pipe::<()>(pipe).await?;
                }
                // Large rounds are written in slices, each one pipelined, so that no single call
                // holds Redis (or misses its deadline) for long.
                const SLICE: usize = 500;
                for chunk in u.nodes.chunks(SLICE) {
                    let mut cmd = redis::cmd("HSET");
                    cmd.arg(&nodes);
                    for n in chunk {
                        let text =
                            serde_json::to_string(n).map_err(|e| StoreError(e.to_string()))?;
                        cmd.arg(&n.uuid).arg(text);
                        // Heartbeats may name their node; a renamed node leaves its old name behind,
                        // which counts only while the node it points to still has that name.
                        if let Some(name) = &n.name {
                            cmd.arg(format!("{NAME_FIELD}{name}")).arg(&n.uuid);
                        }
                    }
                    self.write_tagged(cmd, &nodes).await?;
                }
                for chunk in u.ports.chunks(SLICE) {
                    let mut cmd = redis::cmd("HSET");
                    cmd.arg(&macs);
                    for (mac, uuid) in chunk {
                        cmd.arg(mac).arg(uuid);
                    }
                    self.write_tagged(cmd, &macs).await?;
                }
                for (key, removed) in [(&nodes, &u.removed_nodes), (&macs, &u.removed_macs)] {
                    for chunk in removed.chunks(SLICE) {
                        let mut cmd = redis::cmd("HDEL");
                        cmd.arg(key);
                        for item in chunk.iter().filter(|i| !is_marker_field(i)) {
                            cmd.arg(item);
                        }
                        self.write_tagged(cmd, key).await?;
                    }
                }
                let (Some(at), Some(generation)) = (u.synced_at_ms, u.generation.as_deref()) else {
                    return Ok(());
                };
                // The round vouches for the index only if it is still the one the round wrote to:
                // a full round's mark is still on both halves, an incremental round's generation is
                // still the index's (on both halves and with the freshness).
                let script = redis::Script::new(
                    r"local g = ARGV[1]
              if ARGV[3] == '1' then
                if redis.call('HGET', KEYS[1], '@building') ~= g
                   or redis.call('HGET', KEYS[2], '@building') ~= g then return 0 end
                redis.call('HSET', KEYS[1], '@gen', g, '@ver', ARGV[4])
                redis.call('HSET', KEYS[2], '@gen', g, '@ver', ARGV[5])
                redis.call('HDEL', KEYS[1], '@building')
                redis.call('HDEL', KEYS[2], '@building')
              else
                local cur = redis.call('GET', KEYS[3])
                if redis.call('HGET', KEYS[1], '@gen') ~= g
                   or redis.call('HGET', KEYS[2], '@gen') ~= g
                   or not cur or string.sub(cur, -(#g + 1)) ~= (' ' .. g) then return 0 end
              end
              redis.call('SET', KEYS[3], ARGV[2] .. ' ' .. g)
              return 1",
                );
                let mut invocation = script.prepare_invoke();
                invocation
                    .key(&nodes)
                    .key(&macs)
                    .key(self.conn.keys.index_synced_at())
                    .arg(generation)
                    .arg(at)
                    .arg(if u.full_round { "1" } else { "0" })
                    .arg(fresh_version_tag())
                    .arg(fresh_version_tag());
                let vouched: i64 = self.conn.run_script(invocation).await?;
                if vouched == 1 {
                    Ok(())
                } else {
                    Err(StoreError(
                        "the node index changed under the round (Redis lost data?)".into(),
                    ))
                }
            })
            .await
    }

    /// One write to a half, with a fresh version tag for it in the same transaction: every
    /// cached read of that half is then out of date (a random tag, never a counter: a half
    /// Redis lost and the sync rebuilt must not take up a tag again).
    async fn write_tagged(&self, cmd: redis::Cmd, half: &str) -> StoreResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .add_command(cmd)
            .ignore()
            .cmd("HSET")
            .arg(half)
            .arg(VERSION_FIELD)
            .arg(fresh_version_tag())
            .ignore();
        self.conn.run_pipe::<()>(pipe).await
    }

    /// Reads what a lookup needs of the index in `step`: the markers (from the view), and the
    /// entries with the generation and version tag of the half they are read from, unless the
    /// entry cache holds them (then [`Self::take_lookup`] checks their tags against the
    /// markers). By MACs, one script reads the MACs in slices, stops at the second distinct
    /// node, and reads the entry of the only node if there is one.
    pub(crate) fn read_lookup(&self, step: &mut ReadStep, by: IndexKey<'_>) -> LookupSlot {
        let markers = step.reads(self.marker_reads(), parse_markers);
        let key = by.cache_key();
        let entries = match key.as_deref().and_then(|k| self.cache.get(k)) {
            Some(cached) => LookupEntries::Cached(cached),
            None => LookupEntries::Read(step.read(self.entries_read(by), parsed)),
        };
        LookupSlot {
            markers,
            entries,
            key,
            by_macs: matches!(by, IndexKey::Macs(_)),
        }
    }

    /// The Redis read of a lookup's entries (never through the view: see `index_read`).
    fn entries_read(&self, by: IndexKey<'_>) -> redis::Cmd {
        let (nodes, macs) = (self.conn.keys.index_nodes(), self.conn.keys.index_macs());
        match by {
            IndexKey::Uuid(uuid) => redis::cmd("HMGET")
                .arg(nodes)
                .arg(GENERATION_FIELD)
                .arg(VERSION_FIELD)
                .arg(uuid)
                .clone(),
            IndexKey::Macs(found) => eval(LOOKUP_BY_MACS, &[macs, nodes], found),
        }
    }

    /// What a lookup's index read in the step found (`by`: what [`Self::read_lookup`] was
    /// given). A cached read whose halves changed since is read again from Redis (one more
    /// round trip, once per change).
    pub(crate) async fn take_lookup(
        &self,
        replies: &mut Replies,
        slot: LookupSlot,
        by: IndexKey<'_>,
    ) -> StoreResult<IndexRead> {
        let markers = replies.take(slot.markers)?;
        let by_macs = slot.by_macs;
        let entries = match (slot.entries, &slot.key) {
            (LookupEntries::Cached(cached), _) if cached.is_current(&markers.tags(by_macs)) => {
                cached.entries.clone()
            }
            (LookupEntries::Cached(_), Some(key)) => {
                self.cache.forget(key);
                let mut step = ReadStep::new();
                let again = step.read(self.entries_read(by), parsed);
                let mut replies = self.conn.read_step(step).await?;
                self.learnt(by_macs, key, replies.take(again)?)
            }
            (LookupEntries::Cached(_), None) => {
                return Err(StoreError("a cached index read without its key".into()))
            }
            (LookupEntries::Read(read), Some(key)) => {
                self.learnt(by_macs, key, replies.take(read)?)
            }
            (LookupEntries::Read(read), None) => replies.take(read)?,
        };
        index_read_of(&markers, by_macs, entries)
    }

    /// Keeps entries read from Redis in the cache, under the tags they were read with.
    fn learnt(
        &self,
        by_macs: bool,
        key: &str,
        entries: Vec<Option<String>>,
    ) -> Vec<Option<String>> {
        if let Some(tags) = entry_tags(by_macs, &entries) {
            self.cache.put(
                key.to_string(),
                TaggedRead {
                    tags,
                    entries: entries.clone(),
                },
            );
        }
        entries
    }

    /// The viewed reads of the markers: the freshness, the generation and the version tag of
    /// each half.
    fn marker_reads(&self) -> Vec<redis::Cmd> {
        self.markers.to_vec()
    }

    /// The index's freshness and generation, if both halves belong to that generation.
    async fn index_marker(&self) -> StoreResult<Option<(u64, String)>> {
        self.read_marker(true).await
    }

    /// The markers, through the in-process view or (`through_view` false) from Redis.
    async fn read_marker(&self, through_view: bool) -> StoreResult<Option<(u64, String)>> {
        if self.conn.distrusted() {
            // The master may have lost the last writes: no complete index until a full round
            // rebuilds it (the sync sees none, as after Redis lost its data).
            return Ok(None);
        }
        let maybe_viewed = |cmd: redis::Cmd| if through_view { viewed(cmd) } else { cmd };
        let mut pipe = redis::pipe();
        pipe.add_command(maybe_viewed(
            redis::cmd("GET")
                .arg(self.conn.keys.index_synced_at())
                .clone(),
        ))
        .add_command(maybe_viewed(
            redis::cmd("HGET")
                .arg(self.conn.keys.index_nodes())
                .arg(GENERATION_FIELD)
                .clone(),
        ))
        .add_command(maybe_viewed(
            redis::cmd("HGET")
                .arg(self.conn.keys.index_macs())
                .arg(GENERATION_FIELD)
                .clone(),
        ));
        let (synced, nodes_gen, macs_gen): (Option<String>, Option<String>, Option<String>) =
            if through_view {
                self.conn.run_pipe_viewed(pipe).await?
            } else {
                self.conn.run_pipe(pipe).await?
            };
        Ok(synced
            .as_deref()
            .and_then(parse_synced_at)
            .filter(|(_, g)| {
                nodes_gen.as_deref() == Some(g.as_str()) && macs_gen.as_deref() == Some(g.as_str())
            }))
    }

    /// `HMGET` of fields of the nodes half, with its generation first, checked against the
    /// freshness: an error unless the half still belongs to the vouched-for generation (a
    /// missing entry of a half that Redis lost is not "no such node"). From the entry cache
    /// while the half's version tag (read through the view) is the one it was read under.
    async fn index_read(&self, fields: &[String]) -> StoreResult<Vec<Option<String>>> {
        self.conn.trusted()?;
        let half = self.conn.keys.index_nodes();
        let mut pipe = redis::pipe();
        pipe.add_command(viewed(
            redis::cmd("GET")
                .arg(self.conn.keys.index_synced_at())
                .clone(),
        ))
        .add_command(viewed(
            redis::cmd("HGET").arg(&half).arg(VERSION_FIELD).clone(),
        ));
        let (synced, version): (Option<String>, Option<String>) =
            self.conn.run_pipe_viewed(pipe).await?;
        let key = format!("n {}", fields.join(" "));
        let found = match self.cache.get(&key) {
            Some(cached) if cached.is_current(std::slice::from_ref(&version)) => {
                cached.entries.clone()
            }
            _ => {
                // Never through the view: it keeps every distinct read of a key, command and
                // answer, under that key until the key changes, and the whole index is two
                // keys: reads of MACs and idents that callers choose would pile up in it
                // without bound. The entry cache bounds them instead.
                let mut found: Vec<Option<String>> = self
                    .conn
                    .run(
                        redis::cmd("HMGET")
                            .arg(&half)
                            .arg(GENERATION_FIELD)
                            .arg(VERSION_FIELD)
                            .arg(fields)
                            .clone(),
                    )
                    .await?;
                let tag = if found.len() > 1 {
                    found.remove(1)
                } else {
                    None
                };
                self.cache.put(
                    key,
                    TaggedRead {
                        tags: vec![tag],
                        entries: found.clone(),
                    },
                );
                found
            }
        };
        let vouched = synced.as_deref().and_then(parse_synced_at).map(|(_, g)| g);
        match (vouched, found.first().cloned().flatten()) {
            (Some(g), Some(half_gen)) if g == half_gen => Ok(found),
            _ => Err(StoreError(
                "the node index is not complete (its generation changed)".into(),
            )),
        }
    }
}

/// The viewed reads of the markers, in the order [`parse_markers`] reads them.
fn marker_commands(keys: &super::keys::Keys) -> Vec<redis::Cmd> {
    // Three reads, not five: each command read costs the view a lookup and a copy on every
    // agent request.
    let generation_and_tag = |half: String| {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(half).arg(GENERATION_FIELD).arg(VERSION_FIELD);
        viewed(cmd)
    };
    let mut synced_at = redis::cmd("GET");
    synced_at.arg(keys.index_synced_at());
    vec![
        viewed(synced_at),
        generation_and_tag(keys.index_nodes()),
        generation_and_tag(keys.index_macs()),
    ]
}

/// A fresh version tag for an index half.
fn fresh_version_tag() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// KEYS: the MACs half, the nodes half; ARGV: the MACs. Returns `[MACs half's generation,
/// first node, second node, nodes half's generation, entry, MACs half's version tag, nodes
/// half's version tag]`: the first two distinct nodes of the MACs and, if there is only one,
/// its entry (`false`, Redis's nil, where there is none). Most lookups cost Redis two commands
/// (the script, one `HMGET`), a lookup that may mint three.
const LOOKUP_BY_MACS: &str = r"local gen_macs = false
  local first, second = false, false
  local i, n = 1, #ARGV
  while i <= n and not second do
    local last = math.min(i + 127, n)
    local got
    if i == 1 then
      -- The generation in the same read as the first slice: one command for most lookups.
      got = redis.call('HMGET', KEYS[1], '@gen', unpack(ARGV, i, last))
      gen_macs = table.remove(got, 1)
    else
      got = redis.call('HMGET', KEYS[1], unpack(ARGV, i, last))
    end
    for _, node in ipairs(got) do
      if node then
        if not first then first = node elseif node ~= first then second = node break end
      end
    end
    i = last + 1
  end
  local entry = {false, false}
  if first and not second then entry = redis.call('HMGET', KEYS[2], '@gen', first) end
  local vers = {redis.call('HGET', KEYS[1], '@ver'), redis.call('HGET', KEYS[2], '@ver')}
  return {gen_macs, first, second, entry[1], entry[2], vers[1], vers[2]}";

fn parse_markers(values: Vec<redis::Value>) -> StoreResult<Markers> {
    let short = || StoreError("an index read answered short".into());
    let [synced, nodes, macs] = <[redis::Value; 3]>::try_from(values).map_err(|_| short())?;
    let half = |v| -> StoreResult<(Option<String>, Option<String>)> {
        let [generation, tag] = <[Option<String>; 2]>::try_from(parsed::<Vec<Option<String>>>(v)?)
            .map_err(|_| short())?;
        Ok((generation, tag))
    };
    let ((gen_nodes, ver_nodes), (gen_macs, ver_macs)) = (half(nodes)?, half(macs)?);
    Ok(Markers {
        synced: parsed(synced)?,
        gen_nodes,
        gen_macs,
        ver_nodes,
        ver_macs,
    })
}

impl Markers {
    /// The version tags a lookup's read depends on, in [`entry_tags`]'s order.
    fn tags(&self, by_macs: bool) -> Vec<Option<String>> {
        if by_macs {
            vec![self.ver_macs.clone(), self.ver_nodes.clone()]
        } else {
            vec![self.ver_nodes.clone()]
        }
    }
}

/// The version tags a lookup's entries were read under, the halves they depend on (by MACs:
/// the MACs half, and the nodes half only if the read named one node and so read its entry);
/// `None` if the answer is not of the expected shape.
fn entry_tags(by_macs: bool, entries: &[Option<String>]) -> Option<Vec<Option<String>>> {
    match (by_macs, entries) {
        (false, [_, ver_nodes, _]) => Some(vec![ver_nodes.clone()]),
        (true, [_, first, second, _, _, ver_macs, ver_nodes]) => {
            if first.is_some() && second.is_none() {
                Some(vec![ver_macs.clone(), ver_nodes.clone()])
            } else {
                Some(vec![ver_macs.clone()])
            }
        }
        _ => None,
    }
}

/// What a lookup's markers and entries say. Pure.
fn index_read_of(
    m: &Markers,
    by_macs: bool,
    entries: Vec<Option<String>>,
) -> StoreResult<IndexRead> {
    // The generation of the MACs half as the entries were read (`None`: not read), the
    // distinct nodes, and the generation of the nodes half as its entry was read.
    let (read_macs, nodes, read_nodes, entry) =
        match (by_macs, <[Option<String>; 7]>::try_from(entries)) {
            (true, Ok([gen_macs, first, second, gen_nodes, entry, _, _])) => {
                let one = first.is_some() && second.is_none();
                let nodes = first.into_iter().chain(second).collect();
                (Some(gen_macs), nodes, one.then_some(gen_nodes), entry)
            }
            (false, Err(entries)) => match <[Option<String>; 3]>::try_from(entries) {
                // By uuid: `[nodes generation, its version tag, entry]`.
                Ok([gen_nodes, _, entry]) => (None, Vec::new(), Some(gen_nodes), entry),
                Err(_) => return Err(StoreError("an index read answered oddly".into())),
            },
            _ => return Err(StoreError("an index read answered oddly".into())),
        };
    // Complete: the freshness names a generation both halves' markers carry, and each half
    // read carried it as it was read (a half Redis lost meanwhile has none).
    let vouched = m
        .synced
        .as_deref()
        .and_then(parse_synced_at)
        .filter(|(_, g)| {
            let of = |marker: Option<&Option<String>>| {
                marker.is_none_or(|m| m.as_deref() == Some(g.as_str()))
            };
            of(Some(&m.gen_nodes))
                && of(Some(&m.gen_macs))
                && of(read_macs.as_ref())
                && of(read_nodes.as_ref())
        });
    Ok(IndexRead {
        synced_at_ms: vouched.map(|(at, _)| at),
        nodes,
        node: entry.and_then(|t| serde_json::from_str(&t).ok()),
    })
}

/// The generation a half belongs to, and the one a full round is rebuilding it for.
const GENERATION_FIELD: &str = "@gen";
/// A half's version tag: changed by every write to it ([`NodeIndex::write_tagged`]).
const VERSION_FIELD: &str = "@ver";
/// Fields `name:<name>` of the nodes hash map a node name to its uuid. Names of deleted or
/// renamed nodes stay until the hash is rebuilt (they are checked against the node on every
/// read, so they cost a few bytes, never a wrong answer).
const NAME_FIELD: &str = "name:";
const BUILDING_FIELD: &str = "@building";

/// Fields of an index half that are markers, not entries (no uuid or MAC starts with `@`).
fn is_marker_field(field: &str) -> bool {
    field.starts_with('@')
}

/// `<Unix ms> <generation>` → its parts.
pub(crate) fn parse_synced_at(text: &str) -> Option<(u64, String)> {
    let (at, generation) = text.split_once(' ')?;
    let at = at.parse().ok()?;
    (!generation.is_empty()).then(|| (at, generation.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_at_carries_its_generation() {
        assert_eq!(
            parse_synced_at("1700000000000 req-1"),
            Some((1_700_000_000_000, "req-1".to_string()))
        );
    }

    #[test]
    fn synced_at_without_a_generation_is_refused() {
        for text in ["1700000000000", "1700000000000 ", "x req-1", ""] {
            assert_eq!(parse_synced_at(text), None, "{text:?}");
        }
    }

    #[test]
    fn marker_fields_are_not_entries() {
        assert!(is_marker_field(GENERATION_FIELD));
        assert!(is_marker_field(BUILDING_FIELD));
        assert!(!is_marker_field("52:54:00:aa:bb:cc"));
        assert!(!is_marker_field("1be26c0b-03f2-4d2e-ae87-c02d7f33c123"));
    }
}
