#!/usr/bin/env bash
# sync-cost.sh - what the gateway's node sync costs the real Ironic 39 with many nodes: the
# requests per second the sync sends, the bytes Ironic answers and the CPU it spends on them,
# for each N in $SYNC_COST_NODES, compared with what the agents themselves cost (a heartbeat
# per node every 90-180 s: N/135 req/s).
#
# For each N, on loopback ports in a temporary run folder:
#  1. the real Ironic (scripts/ironic-peer-up.sh --seed 1: one node enrolled and managed through
#     the API, the template), stopped; N-1 copies of it written into its SQLite database with
#     Ironic's own DB layer (scripts/sync-cost-seed.py seed: fake-hardware, manageable,
#     driver_info.fast_track=true, one port each with a unique MAC, timestamps as if enrolled
#     one after the other over the last day, the last one 10 min ago); Ironic started again
#     (--keep-db), checked: GET /v1/nodes?limit=1000 paging lists all N, lookups find them;
#  2. idle window ($SYNC_COST_WINDOW s, no gateway): Ironic's own CPU (the baseline);
#  3. a counting relay in front of Ironic (every request the gateway sends, with the bytes
#     Ironic answers), a redis-server without persistence, and the release gateway
#     (target/release/ironic-edge, config = conf/ironic-edge.yaml with the run's ports; the
#     `sync:` section as shipped); the first full round is timed until the index is in Redis;
#  4. windows of $SYNC_COST_WINDOW s each: "quiet" (nothing changes), "churn-1pct" (1 % of the
#     nodes changed per minute), "churn-hb" (N/135 changes per second: what agents' heartbeats
#     do to updated_at, since Ironic saves the node on every heartbeat), then
#     "after-churn" ($SYNC_COST_AFTER s, nothing changes any more) and "two-gateways"
#     ($SYNC_COST_TWO_WINDOW s: the gateway stopped, two gateway processes started on the same
#     Redis, as after a restart of a two-process deployment: one lease, one syncing process);
#  5. gateways stopped; the agents' own cost: lookups, then real heartbeats at
#     $SYNC_COST_AGENT_RATE/s for $SYNC_COST_AGENT_SECONDS s: Ironic CPU per heartbeat.
# Changes are written by default straight into Ironic's database (extra + updated_at, as
# node.save() does), so that Ironic's CPU in a window is its idle CPU plus the sync's;
# SYNC_COST_CHANGE_MODE=api PATCHes through Ironic instead (its CPU then includes the PATCHes).
# Ironic's periodic power-state sync is turned off by default ([conductor]
# sync_power_state_interval=0 through OS_CONDUCTOR__SYNC_POWER_STATE_INTERVAL): with 10,000
# fake nodes it alone burns ~40 s of CPU every 2 min, which would drown the sync's share;
# SYNC_COST_POWER_SYNC=1 keeps Ironic's default.
#
# Output: the tables on stdout and in $SYNC_COST_OUT/sync-cost.{md,json} (+ time-stamped
# copies); the raw data (marks, relay log, gateway logs) in the run folder when kept.
# Everything it started (Ironic, redis-server, relay, gateways, helpers) is stopped on exit, by
# PID, also on Ctrl-C, failure or the overall time limit.
#
# Environment (all optional):
#   SYNC_COST_NODES ("1000 10000")   node counts, one run each
#   SYNC_COST_WINDOW (120)           seconds of each measuring window (idle, quiet, churn-*)
#   SYNC_COST_AFTER (60)             seconds of the after-churn window (0 = none)
#   SYNC_COST_TWO_WINDOW (90)        seconds of the two-gateways window (0 = none)
#   SYNC_COST_CHANGE_MODE (db)       db | api, see above
#   SYNC_COST_POWER_SYNC (0)         1: leave Ironic's periodic power sync on
#   SYNC_COST_NEVER_UPDATED (0)      1: seeded nodes have no updated_at (enrolled, never changed
#                                    since; no lookups in the check either, they would set it)
#   SYNC_COST_AGENT_NODES (100) SYNC_COST_AGENT_RATE (5) SYNC_COST_AGENT_SECONDS (40)
#                                    the agents' cost sample (0 nodes = skip)
#   SYNC_COST_TIMEOUT (3600)         hard limit of the whole run, seconds
#   SYNC_COST_OUT (<project>/target/bench)
#   SYNC_COST_GATEWAY_LOG (info,ironic_edge::sync=debug)   RUST_LOG of the gateway
#   SYNC_COST_SKIP_BUILD=1           use target/release/ironic-edge as built
#   SYNC_COST_KEEP_RUN=1             keep the run folder; SYNC_COST_RUN_DIR: use this folder
#   CARGO, CARGO_TARGET_DIR, IRONIC_PEER_VENV (see scripts/ironic-peer-up.sh)
# Defaults take about 30 minutes (build excluded): ~14 min per N.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
CARGO="${CARGO:-cargo}"
TARGET_DIR="${CARGO_TARGET_DIR:-$PROJECT_DIR/target}"
BIN="$TARGET_DIR/release/ironic-edge"
NODES_LIST="${SYNC_COST_NODES:-1000 10000}"
WINDOW="${SYNC_COST_WINDOW:-120}"
AFTER="${SYNC_COST_AFTER:-60}"
TWO_WINDOW="${SYNC_COST_TWO_WINDOW:-90}"
CHANGE_MODE="${SYNC_COST_CHANGE_MODE:-db}"
POWER_SYNC="${SYNC_COST_POWER_SYNC:-0}"
NEVER_UPDATED="${SYNC_COST_NEVER_UPDATED:-0}"
AGENT_NODES="${SYNC_COST_AGENT_NODES:-100}"
AGENT_RATE="${SYNC_COST_AGENT_RATE:-5}"
AGENT_SECONDS="${SYNC_COST_AGENT_SECONDS:-40}"
TIMEOUT="${SYNC_COST_TIMEOUT:-3600}"
OUT="${SYNC_COST_OUT:-$PROJECT_DIR/target/bench}"
GW_LOG_LEVEL="${SYNC_COST_GATEWAY_LOG:-info,ironic_edge::sync=debug}"
HELPER="$SCRIPT_DIR/sync-cost-seed.py"

log() { echo "[sync-cost] $*" >&2; }
die() { log "$*"; exit 1; }
. "$SCRIPT_DIR/lib.sh"

case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;; esac
[ $# -eq 0 ] || die "no arguments (see --help; settings come from the environment)"
for v in $NODES_LIST "$WINDOW" "$AFTER" "$TWO_WINDOW" "$AGENT_NODES" "$AGENT_SECONDS" "$TIMEOUT"; do
  case "$v" in ''|*[!0-9]*) die "not a non-negative integer: $v" ;; esac
done
for n in $NODES_LIST; do
  if [ "$n" -lt 1 ] || [ "$n" -gt 100000 ]; then die "node count out of 1..100000: $n"; fi
done
[ "$WINDOW" -ge 10 ] || die "SYNC_COST_WINDOW must be >= 10"
case "$AGENT_RATE" in ''|*[!0-9.]*) die "SYNC_COST_AGENT_RATE: a number" ;; esac
case "$CHANGE_MODE" in db|api) ;; *) die "SYNC_COST_CHANGE_MODE: db|api" ;; esac
command -v redis-server >/dev/null || die "redis-server not found (Debian: apt-get install redis-server)"
command -v redis-cli >/dev/null || die "redis-cli not found (Debian: apt-get install redis-tools)"
command -v python3 >/dev/null || die "python3 is needed"
if [ -n "${IRONIC_PEER_VENV:-}" ]; then VENV="$IRONIC_PEER_VENV"
elif [ -n "${IRONIC_PEER_DIR:-}" ]; then VENV="$IRONIC_PEER_DIR/venv"
else VENV="${XDG_CACHE_HOME:-$HOME/.cache}/ironic-edge/venv"
fi
export IRONIC_PEER_VENV="$VENV"
PY="$VENV/bin/python"

# --- 1. build and venv (before anything runs) -----------------------------------------------
if [ "${SYNC_COST_SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release --bin ironic-edge"
  "$CARGO" build --release --bin ironic-edge >&2
fi
[ -x "$BIN" ] || die "$BIN not found (cargo build --release)"
bash "$SCRIPT_DIR/ironic-peer-up.sh" --install-only >/dev/null
[ -x "$PY" ] || die "no venv python at $PY"

# --- 2. run folder, cleanup, time limit -----------------------------------------------------
if [ -n "${SYNC_COST_RUN_DIR:-}" ]; then
  RUN="$SYNC_COST_RUN_DIR"; mkdir -p "$RUN"; OWN_RUN=0
else
  RUN=$(mktemp -d "${TMPDIR:-/tmp}/ironic-edge-sync-cost.XXXXXX"); OWN_RUN=1
fi
FAILED=1
REDIS_STARTED=0
IRUN=""                 # run folder of the Ironic that runs now (stopped by ironic-peer-down.sh)
RELAY_PID=""
GW_PIDS=""              # gateways that run now
FG_PID=""               # the helper or sleep being waited for
WATCHDOG_PID=""
stop_pid() { # pid name
  local pid=$1
  [ -n "$pid" ] && alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do alive "$pid" || break; sleep 0.25; done
  if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; log "$2 PID $pid killed"; fi
  wait "$pid" 2>/dev/null || true
}
stop_gateways() {
  local p
  for p in $GW_PIDS; do stop_pid "$p" gateway; done
  GW_PIDS=""
}
stop_ironic() {
  [ -n "$IRUN" ] || return 0
  bash "$SCRIPT_DIR/ironic-peer-down.sh" --run-dir "$IRUN" >/dev/null 2>&1 \
    || log "ironic-peer-down.sh failed (run dir $IRUN)"
  IRUN=""
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ -n "$WATCHDOG_PID" ] && { kill -TERM "$WATCHDOG_PID" 2>/dev/null || true; wait "$WATCHDOG_PID" 2>/dev/null || true; }
  stop_pid "$FG_PID" helper
  stop_gateways
  stop_pid "$RELAY_PID" relay
  stop_ironic
  if [ "$REDIS_STARTED" = 1 ]; then
    bash "$SCRIPT_DIR/redis-down.sh" --run-dir "$RUN/redis" >/dev/null 2>&1 \
      || log "redis-down.sh failed (run dir $RUN/redis)"
  fi
  if [ "$FAILED" = 1 ] || [ "${SYNC_COST_KEEP_RUN:-0}" = 1 ] || [ "$OWN_RUN" = 0 ]; then
    log "run folder kept: $RUN"
  else
    rm -rf "$RUN"
  fi
  log "everything stopped"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# the overall time limit: SIGTERM to this script (its trap stops everything)
MAIN_PID=$$
( trap - EXIT INT TERM; sleep "$TIMEOUT" & s=$!; trap 'kill $s 2>/dev/null; exit 0' TERM; wait $s
  echo "[sync-cost] time limit of ${TIMEOUT}s reached; stopping" >&2; kill -TERM "$MAIN_PID" ) &
WATCHDOG_PID=$!

# runs a command in the background and waits for it (traps stay responsive)
waitfor() { "$@" & FG_PID=$!; local rc=0; wait "$FG_PID" || rc=$?; FG_PID=""; return "$rc"; }
nap() { waitfor sleep "$1"; }

http_ok() { python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1" 2>/dev/null; }

read -r REDIS_PORT <<<"$(pick_ports 1)"
REDIS_STARTED=1
REDIS_URL=$(bash "$SCRIPT_DIR/redis-up.sh" --port "$REDIS_PORT" --run-dir "$RUN/redis")
log "run folder $RUN; redis $REDIS_URL"
if [ "$POWER_SYNC" != 1 ]; then export OS_CONDUCTOR__SYNC_POWER_STATE_INTERVAL=0; fi
export IRONIC_START_TIMEOUT="${IRONIC_START_TIMEOUT:-300}"

start_gateway() { # name listen ops  -> appends to GW_PIDS
  local name=$1 conf="$NRUN/$1.yaml"
  "$PY" "$HELPER" gwconf --src "$PROJECT_DIR/conf/ironic-edge.yaml" --out "$conf" --run "$NRUN" \
    --listen "$2" --ops "$3" --upstream "http://127.0.0.1:$RELAY_PORT" --redis "$REDIS_URL" \
    --prefix "sync-cost-$N:" > "$NRUN/sync-conf.json"
  "$BIN" -t -c "$conf" >"$NRUN/$name.check.log" 2>&1 \
    || { cat "$NRUN/$name.check.log" >&2; die "config check of $conf failed"; }
  RUST_LOG="$GW_LOG_LEVEL" "$BIN" -c "$conf" >>"$NRUN/$name.log" 2>&1 </dev/null &
  local pid=$!
  GW_PIDS="$GW_PIDS $pid"
  for _ in $(seq 1 300); do
    alive "$pid" || break
    if http_ok "http://127.0.0.1:$3/status"; then log "$name PID $pid up (ops 127.0.0.1:$3)"; return 0; fi
    sleep 0.1
  done
  tail -30 "$NRUN/$name.log" >&2 || true
  die "$name did not start"
}
mark() { "$PY" "$HELPER" mark --pgid "$IPID" --metrics "http://127.0.0.1:$OPS_PORT/metrics" --name "$1" --out "$NRUN/marks.jsonl"; }
churn() { # name rate seconds
  if [ "$CHANGE_MODE" = db ]; then where=(--db "$IRUN/ironic.db"); else where=(--url "$IURL"); fi
  mark "$1.start"
  waitfor "$PY" "$HELPER" churn --mode "$CHANGE_MODE" --rate "$2" --duration "$3" \
    --seed-file "$NRUN/seed.json" "${where[@]}" > "$NRUN/$1.json"
  mark "$1.end"
  log "$1 window done: $(cat "$NRUN/$1.json")"
}
rcli() { redis-cli -p "$REDIS_PORT" --raw "$@"; }

# --- 3. one run per node count --------------------------------------------------------------
for N in $NODES_LIST; do
  NRUN="$RUN/n$N"
  mkdir -p "$NRUN"
  read -r IRONIC_PORT RELAY_PORT GW_PORT OPS_PORT GW2_PORT OPS2_PORT <<<"$(pick_ports 6)"
  log "=== N=$N: ironic $IRONIC_PORT, relay $RELAY_PORT, gateway $GW_PORT (ops $OPS_PORT)"

  # 3.1 Ironic with N nodes: one through the API, the others through its DB layer
  IRUN="$NRUN/ironic"
  bash "$SCRIPT_DIR/ironic-peer-up.sh" --port "$IRONIC_PORT" --run-dir "$IRUN" --seed 1 \
    --unknown-macs 0 --seed-file "$NRUN/template.json" >/dev/null
  bash "$SCRIPT_DIR/ironic-peer-down.sh" --run-dir "$IRUN" >/dev/null 2>&1
  seed_args=(); lookups=4
  if [ "$NEVER_UPDATED" = 1 ]; then seed_args=(--never-updated); lookups=0; fi
  waitfor "$PY" "$HELPER" seed --config-file "$IRUN/ironic.conf" --count "$N" --out "$NRUN/seed.json" \
    ${seed_args[@]+"${seed_args[@]}"}
  T0=$(date +%s.%N)
  IURL=$(bash "$SCRIPT_DIR/ironic-peer-up.sh" --port "$IRONIC_PORT" --run-dir "$IRUN" --keep-db \
    --seed-file "$NRUN/restart.json" | tail -n 1)
  IPID=$(cat "$IRUN/ironic.pid")
  log "ironic $IURL up with $N nodes (PID $IPID) in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
  waitfor "$PY" "$HELPER" verify --url "$IURL" --seed-file "$NRUN/seed.json" --lookups "$lookups" \
    > "$NRUN/verify.json"
  log "listing and lookups: $(cat "$NRUN/verify.json")"

  # 3.2 idle baseline (Ironic alone)
  nap 15
  mark idle.start; nap "$WINDOW"; mark idle.end
  log "idle window done"

  # 3.3 relay + gateway; the first full round
  : > "$NRUN/relay.jsonl"
  "$PY" "$HELPER" relay --listen "$RELAY_PORT" --upstream "$IRONIC_PORT" --log "$NRUN/relay.jsonl" \
    2>"$NRUN/relay.err" &
  RELAY_PID=$!
  for _ in $(seq 1 100); do http_ok "http://127.0.0.1:$RELAY_PORT/" && break; sleep 0.1; done
  http_ok "http://127.0.0.1:$RELAY_PORT/" || die "the relay did not start"
  rcli DEL "sync-cost-$N:idx:synced_at" >/dev/null
  C0=$("$PY" "$HELPER" ticks --pgid "$IPID")
  T0=$(date +%s.%N)
  start_gateway gateway "$GW_PORT" "$OPS_PORT"
  deadline=$(( $(date +%s) + 600 ))
  until [ -n "$(rcli GET "sync-cost-$N:idx:synced_at")" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || die "no full round within 600 s (see $NRUN/gateway.log)"
    sleep 0.1
  done
  T1=$(date +%s.%N)
  C1=$("$PY" "$HELPER" ticks --pgid "$IPID")
  INODES=$(rcli SCARD "sync-cost-$N:idx:nodes"); IMACS=$(rcli SCARD "sync-cost-$N:idx:macs")
  python3 - "$T0" "$T1" "$INODES" "$IMACS" "$C0" "$C1" > "$NRUN/full.json" <<'EOF'
import json, os, sys
t0, t1, n, m, c0, c1 = sys.argv[1:]
print(json.dumps({'index_ready_seconds': round(float(t1) - float(t0), 2), 'index_nodes': int(n),
                  'index_macs': int(m),
                  'ironic_cpu_seconds': round((int(c1) - int(c0)) / os.sysconf('SC_CLK_TCK'), 2)}))
EOF
  log "first full round: $(cat "$NRUN/full.json")"
  if [ "$INODES" != "$N" ] || [ "$IMACS" != "$N" ]; then
    log "WARNING: the index holds $INODES nodes and $IMACS MACs, not $N"
  fi
  nap 15

  # 3.4 steady state: quiet, 1 %/min changed, N/135 changed per second
  mark quiet.start; nap "$WINDOW"; mark quiet.end
  log "quiet window done"
  churn churn-1pct "$(awk -v n="$N" 'BEGIN{printf "%.4f", n * 0.01 / 60}')" "$WINDOW"
  churn churn-hb "$(awk -v n="$N" 'BEGIN{printf "%.4f", n / 135}')" "$WINDOW"
  if [ "$AFTER" -gt 0 ]; then
    mark after-churn.start; nap "$AFTER"; mark after-churn.end
    log "after-churn window done"
  fi
  if [ "$TWO_WINDOW" -gt 0 ]; then
    # a restart of a two-process deployment: both start with a full round of their own
    # (the one that holds the lease syncs; the lease must outlive a round)
    stop_gateways
    mark two-gateways.start
    start_gateway gateway-a "$GW_PORT" "$OPS_PORT"
    start_gateway gateway-b "$GW2_PORT" "$OPS2_PORT"
    nap "$TWO_WINDOW"; mark two-gateways.end
    log "two-gateways window done: $(cat "$NRUN"/gateway-[ab].log | grep -c 'this process syncs now' || true) lease takeovers"
  fi
  stop_gateways
  stop_pid "$RELAY_PID" relay; RELAY_PID=""

  # 3.5 the agents' own cost, straight to Ironic
  if [ "$AGENT_NODES" -gt 0 ]; then
    nap 5
    waitfor "$PY" "$HELPER" agents --url "$IURL" --seed-file "$NRUN/seed.json" --pgid "$IPID" \
      --nodes "$AGENT_NODES" --rate "$AGENT_RATE" --duration "$AGENT_SECONDS" > "$NRUN/agents.json"
    log "agents: $(cat "$NRUN/agents.json")"
  fi
  for f in "$NRUN"/gateway*.log; do
    errs=$(grep -c -E ' (WARN|ERROR) ' "$f" || true)
    [ "$errs" = 0 ] || { log "$(basename "$f"): $errs warnings/errors:"; grep -E ' (WARN|ERROR) ' "$f" | head -5 >&2; }
  done
  stop_ironic
done

# --- 4. report ------------------------------------------------------------------------------
mkdir -p "$OUT"
"$PY" "$HELPER" report --run "$RUN" --out-md "$OUT/sync-cost.md" --out-json "$OUT/sync-cost.json"
STAMP=$(date +%Y%m%d-%H%M%S)
cp "$OUT/sync-cost.md" "$OUT/sync-cost-$STAMP.md"
cp "$OUT/sync-cost.json" "$OUT/sync-cost-$STAMP.json"
log "written: $OUT/sync-cost.md, $OUT/sync-cost.json (+ $STAMP copies)"
FAILED=0
