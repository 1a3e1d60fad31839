#!/usr/bin/env bash
# bench.sh - what `make bench` runs: a bounded load bench of ironic-edge against the real
# Ironic, both measured in the same run (speed claims are ratios gateway/direct).
#
# It builds the gateway and benches/gateway_load.rs in release, starts on free loopback ports
# in a temporary run folder: a redis-server (scripts/redis-up.sh), the real Ironic 39 seeded
# with $BENCH_NODES manageable fast-track nodes (scripts/ironic-peer-up.sh) and the gateway
# (target/release/ironic-edge, a config generated from conf/ironic-edge.yaml: the same keys,
# with the run's ports, route_policy all, upstream = that Ironic), waits until the gateway's
# ops GET /status says versions_known: true, then runs, against Ironic directly and through
# the gateway, with $BENCH_CONC keep-alive connections for $BENCH_ROUNDS x $BENCH_DURATION s each:
#   lookup 404         GET /v1/lookup of an unknown MAC (API 1.62); via the gateway answered
#                      from its negative cache after the first miss
#   lookup forwarded   GET /v1/lookup of a seeded node whose token was already handed out
#                      (200, agent_token "******"); forwarded by the gateway every time
#   heartbeat rejected POST /v1/heartbeat/{node} (API 1.68, IPA-like body) with a WRONG token
#                      for a node whose token was minted through the gateway: Ironic's 400
#                      "Invalid or missing agent token received."; the gateway answers it at
#                      the edge (all but one per token_mismatch_forward_seconds)
#   passthrough        GET /v1/nodes/{uuid} (API latest), forwarded unchanged
# and prints req/s, p50/p99, status counts, the gateway's own counters (local/forwarded) and
# the ratios. Each scenario checks that its expected status dominates (a WARNING otherwise).
# Before the services start it runs benches/parse_cost.rs: the CPU the gateway's checks spend
# per MiB of the worst-shaped heartbeat bodies, lookup queries and version headers (256 KiB,
# 512 KiB, 1 MiB and the 1 MiB / 512 KiB ratio), printed as table rows and written to
# $BENCH_OUT/parse_cost.md.
# Results: $BENCH_OUT/gateway_load.{json,md} (+ time-stamped copies). Everything it started
# is stopped on exit (by PID / pid file), also on Ctrl-C or failure.
#
# Environment (all optional):
#   BENCH_DURATION (5)  measured seconds per run   BENCH_WARMUP (1)   BENCH_CONC (16)
#   BENCH_ROUNDS (2)    runs per scenario and target, in alternating order (direct, gateway,
#                       gateway, direct: drift on a noisy machine cancels out), pooled; the
#                       default measures 2 x 5 = 10 s per scenario and target
#   BENCH_ONLY          comma-separated substrings of scenario names (e.g. "lookup")
#   BENCH_NODES (20)    seeded nodes               BENCH_OUT (<project>/target/bench)
#   BENCH_TIMEOUT_MS (10000) per request           BENCH_PAUSE_MS (1000) between runs
#   BENCH_STRICT=1      exit 1 when a correctness check warned
#   BENCH_REDIS_PORT BENCH_IRONIC_PORT BENCH_GATEWAY_PORT BENCH_OPS_PORT (default: free ports)
#   BENCH_GATEWAY_THREADS       gateway worker threads (default: the shipped conf's `threads`)
#   BENCH_NEG_TTL               lookup.not_found_ttl_seconds (default: the shipped conf's)
#   BENCH_MISMATCH_SECONDS      heartbeat.token_mismatch_forward_seconds (default: the conf's)
#   BENCH_GATEWAY_LOG (warn)    RUST_LOG of the gateway during the bench
#   BENCH_RUN_DIR               run folder (default: a new mktemp -d, removed afterwards)
#   BENCH_KEEP_RUN=1            keep the run folder (configs, logs, seed file)
#   BENCH_SKIP_BUILD=1          skip `cargo build --release` (the gateway binary must exist)
#   BENCH_SKIP_PARSE=1          skip the parse_cost rows
#   CARGO, CARGO_TARGET_DIR, IRONIC_PEER_VENV (see scripts/ironic-peer-up.sh)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
CARGO="${CARGO:-cargo}"
TARGET_DIR="${CARGO_TARGET_DIR:-$PROJECT_DIR/target}"
BIN="$TARGET_DIR/release/ironic-edge"
DURATION="${BENCH_DURATION:-5}"
WARMUP="${BENCH_WARMUP:-1}"
CONC="${BENCH_CONC:-16}"
ROUNDS="${BENCH_ROUNDS:-2}"
NODES="${BENCH_NODES:-20}"
OUT="${BENCH_OUT:-$PROJECT_DIR/target/bench}"
GW_LOG_LEVEL="${BENCH_GATEWAY_LOG:-warn}"

log() { echo "[bench] $*" >&2; }
die() { log "$*"; exit 1; }
. "$SCRIPT_DIR/lib.sh"

for v in "$CONC" "$NODES" "$ROUNDS"; do
  case "$v" in ''|*[!0-9]*) die "not a positive integer: $v" ;; esac
done
[ "$NODES" -ge 3 ] || die "BENCH_NODES must be >= 3"
case "$DURATION$WARMUP" in *[!0-9.]*) die "BENCH_DURATION/BENCH_WARMUP: seconds, e.g. 10" ;; esac
command -v python3 >/dev/null || die "python3 is needed"
command -v redis-server >/dev/null || die "redis-server not found (Debian: apt-get install redis-server)"

# --- 1. build (before anything runs, so the build does not disturb the measurement) ------
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release"
  "$CARGO" build --release --bin ironic-edge >&2
fi
[ -x "$BIN" ] || die "$BIN not found (cargo build --release)"
log "building benches/gateway_load.rs (bench profile)"
BENCH_EXE=$(build_bench gateway_load) || die "could not build the gateway_load bench"

# --- 1b. CPU per MiB of the worst-shaped inputs (no service needed: before any starts) ---
if [ "${BENCH_SKIP_PARSE:-0}" != 1 ]; then
  log "building benches/parse_cost.rs (bench profile)"
  PARSE_EXE=$(build_bench parse_cost) || die "could not build the parse_cost bench"
  log "CPU per MiB of the worst-shaped heartbeat bodies, lookup queries and version headers"
  mkdir -p "$OUT"
  BENCH_OUT="$OUT" "$PARSE_EXE" --bench </dev/null || die "the parse_cost bench failed"
fi

# --- 2. run folder, ports, cleanup -------------------------------------------------------
if [ -n "${BENCH_RUN_DIR:-}" ]; then
  RUN="$BENCH_RUN_DIR"; mkdir -p "$RUN"; OWN_RUN=0
else
  RUN=$(mktemp -d "${TMPDIR:-/tmp}/ironic-edge-bench.XXXXXX"); OWN_RUN=1
fi
GW_PID=""
BENCH_PID=""
REDIS_STARTED=0
IRONIC_STARTED=0
FAILED=1
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$BENCH_PID" ] && alive "$BENCH_PID"; then
    kill -TERM "$BENCH_PID" 2>/dev/null || true
    wait "$BENCH_PID" 2>/dev/null || true
    log "stopped the load generator PID $BENCH_PID"
  fi
  if [ -n "$GW_PID" ] && alive "$GW_PID"; then
    kill -TERM "$GW_PID" 2>/dev/null || true
    for _ in $(seq 1 40); do alive "$GW_PID" || break; sleep 0.25; done
    if alive "$GW_PID"; then log "gateway PID $GW_PID did not stop on SIGTERM; SIGKILL"; kill -KILL "$GW_PID" 2>/dev/null || true; fi
    wait "$GW_PID" 2>/dev/null || true
    log "stopped gateway PID $GW_PID"
  fi
  if [ "$IRONIC_STARTED" = 1 ]; then
    bash "$SCRIPT_DIR/ironic-peer-down.sh" --run-dir "$RUN/ironic" >/dev/null 2>&1 \
      || log "ironic-peer-down.sh failed (run dir $RUN/ironic)"
    log "stopped Ironic"
  fi
  if [ "$REDIS_STARTED" = 1 ]; then
    bash "$SCRIPT_DIR/redis-down.sh" --run-dir "$RUN/redis" >/dev/null 2>&1 \
      || log "redis-down.sh failed (run dir $RUN/redis)"
    log "stopped redis-server"
  fi
  if [ "$FAILED" = 1 ] || [ "${BENCH_KEEP_RUN:-0}" = 1 ] || [ "$OWN_RUN" = 0 ]; then
    log "run folder kept: $RUN"
  else
    rm -rf "$RUN"
  fi
  exit "$rc"
}
trap cleanup EXIT
# interrupted: nothing to debug, the run folder goes too (unless BENCH_KEEP_RUN=1)
trap 'FAILED=0; exit 130' INT
trap 'FAILED=0; exit 143' TERM

read -r P1 P3 P4 <<<"$(pick_ports 3)"
REDIS_PORT="${BENCH_REDIS_PORT:-$P1}"
GATEWAY_PORT="${BENCH_GATEWAY_PORT:-$P3}"
OPS_PORT="${BENCH_OPS_PORT:-$P4}"
GW_URL="http://127.0.0.1:$GATEWAY_PORT"
OPS_URL="http://127.0.0.1:$OPS_PORT"
log "run folder $RUN; ports: redis $REDIS_PORT, gateway $GATEWAY_PORT, ops $OPS_PORT"

# --- 3. Redis and Ironic -----------------------------------------------------------------
REDIS_STARTED=1
REDIS_URL=$(bash "$SCRIPT_DIR/redis-up.sh" --port "$REDIS_PORT" --run-dir "$RUN/redis")
log "redis: $REDIS_URL"

IRONIC_STARTED=1
T0=$(date +%s)
# --port 0: ironic-peer-up.sh picks a free port itself (and retries on a race)
IRONIC_URL=$(IRONIC_RUN_DIR="$RUN/ironic" bash "$SCRIPT_DIR/ironic-peer-up.sh" \
  --port "${BENCH_IRONIC_PORT:-0}" --run-dir "$RUN/ironic" --seed "$NODES" --state manageable \
  --ports-per-node 1 --unknown-macs 3 --seed-file "$RUN/seed.json" --public-url "$GW_URL" \
  | tail -n 1)
log "ironic: $IRONIC_URL (up and seeded in $(( $(date +%s) - T0 )) s)"
case "$IRONIC_URL" in http://127.0.0.1:*) ;; *) die "unexpected Ironic URL: $IRONIC_URL" ;; esac
[ -s "$RUN/seed.json" ] || die "no seed file $RUN/seed.json"

# the venv's python (PyYAML comes with Ironic) turns the shipped config into the bench's
VENV_PY=$(venv_python)
[ -x "$VENV_PY" ] || die "no venv python at $VENV_PY"

# --- 4. the gateway ------------------------------------------------------------------------
CONF="$RUN/ironic-edge.yaml"
SETS=()
[ -n "${BENCH_NEG_TTL:-}" ] && SETS+=(--set "lookup.not_found_ttl_seconds=$BENCH_NEG_TTL")
[ -n "${BENCH_MISMATCH_SECONDS:-}" ] && SETS+=(--set "heartbeat.token_mismatch_forward_seconds=$BENCH_MISMATCH_SECONDS")
"$VENV_PY" "$SCRIPT_DIR/bench_conf.py" "$PROJECT_DIR/conf/ironic-edge.yaml" "$CONF" --by bench.sh \
  --run "$RUN" --listen "$GATEWAY_PORT" --ops "$OPS_PORT" --upstream "$IRONIC_URL" \
  --redis "$REDIS_URL" --prefix "ironic-edge-bench-$$:" ${BENCH_GATEWAY_THREADS:+--threads "$BENCH_GATEWAY_THREADS"} \
  ${SETS[@]+"${SETS[@]}"} >"$RUN/gateway-summary.txt" || die "could not write $CONF"
log "gateway config: $(cat "$RUN/gateway-summary.txt")"
"$BIN" -t -c "$CONF" >"$RUN/ironic-edge.check.log" 2>&1 \
  || { cat "$RUN/ironic-edge.check.log" >&2; die "config check of $CONF failed"; }

RUST_LOG="$GW_LOG_LEVEL" "$BIN" -c "$CONF" >"$RUN/ironic-edge.log" 2>&1 </dev/null &
GW_PID=$!
log "started gateway PID $GW_PID ($GW_URL, ops $OPS_URL, log $RUN/ironic-edge.log)"
if ! python3 - "$OPS_URL/status" "$GW_PID" "${BENCH_START_TIMEOUT:-60}" <<'EOF'
import json, sys, time, urllib.request
url, pid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.time() + timeout
last = ''
while time.time() < end:
    try:
        with open(f'/proc/{pid}/stat') as f:
            if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
                sys.exit('the gateway exited')
    except FileNotFoundError:
        sys.exit('the gateway exited')
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            last = r.read().decode()
            if json.loads(last).get('upstream', {}).get('versions_known') is True:
                sys.exit(0)
    except Exception as e:  # not listening yet
        last = str(e)
    time.sleep(0.2)
sys.exit(f'not ready after {timeout:.0f} s: {last}')
EOF
then
  tail -30 "$RUN/ironic-edge.log" >&2 || true
  die "the gateway did not become ready"
fi
log "gateway ready (versions_known: true)"

# --- 5. the scenarios ------------------------------------------------------------------------
COMMIT=$(git -C "$PROJECT_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$PROJECT_DIR" status --porcelain -- src benches Cargo.toml 2>/dev/null)" ]; then
  COMMIT="$COMMIT+dirty"
fi
SCEN="$RUN/scenarios.json"
python3 - "$RUN/seed.json" "$SCEN" "$IRONIC_URL" "$GW_URL" "$OPS_URL" "$OUT" "$(cat "$RUN/gateway-summary.txt")" "$COMMIT" <<'EOF'
import json, secrets, sys, urllib.parse
seed_file, out, ironic, gw, ops, out_dir, gw_summary, commit = sys.argv[1:]
seed = json.load(open(seed_file))
nodes = seed['nodes']
unknown = (seed.get('unknown_macs') or ['52:54:fe:00:00:01'])[0]
fwd, hb, pt = nodes[0], nodes[1], nodes[2]
q = lambda mac: '/v1/lookup?addresses=' + urllib.parse.quote(mac, safe='')
lookup_h = [['X-OpenStack-Ironic-API-Version', '1.62']]
hb_h = [['X-OpenStack-Ironic-API-Version', '1.68']]
# a token of the real shape (secrets.token_urlsafe(), 43 chars), never the node's own
wrong = secrets.token_urlsafe()
masked = {'/config/agent_token': '******'}
doc = {
    'label': f'ironic-edge {commit}; Ironic 39.0.0 (1 process, sqlite, {len(nodes)} nodes); '
             f'{gw_summary}',
    'out_dir': out_dir,
    'targets': [{'name': 'direct', 'url': ironic},
                {'name': 'gateway', 'url': gw, 'ops': ops}],
    'baseline': 'direct',
    'scenarios': [
        {'name': 'lookup 404 (negative cache)', 'method': 'GET', 'path': q(unknown),
         'headers': lookup_h, 'expect_status': 404, 'route': 'lookup',
         'expect_outcome': {'gateway': 'local'}},
        {'name': 'lookup forwarded (token issued)', 'method': 'GET', 'path': q(fwd['macs'][0]),
         'headers': lookup_h, 'expect_status': 200, 'expect_json': masked, 'route': 'lookup',
         'expect_outcome': {'gateway': 'forwarded'},
         # hand the node's token out once, so that every later lookup gets "******"
         'prime': [{'target': 'direct', 'method': 'GET', 'path': q(fwd['macs'][0]),
                    'headers': lookup_h, 'expect_status': 200}]},
        {'name': 'heartbeat wrong token (edge 400)', 'method': 'POST',
         'path': f"/v1/heartbeat/{hb['uuid']}", 'headers': hb_h,
         'body': {'callback_url': 'https://127.0.0.1:9999', 'agent_token': wrong,
                  'agent_version': '13.0.0'},
         'expect_status': 400, 'expect_body': 'Invalid or missing agent token received.',
         'route': 'heartbeat', 'expect_outcome': {'gateway': 'local'},
         # the token is minted through the gateway, so the gateway knows its hash
         'prime': [{'target': 'gateway', 'method': 'GET', 'path': q(hb['macs'][0]),
                    'headers': lookup_h, 'expect_status': 200,
                    'expect_json_not': masked}]},
        {'name': 'passthrough GET /v1/nodes/{uuid}', 'method': 'GET',
         'path': f"/v1/nodes/{pt['uuid']}",
         'headers': [['X-OpenStack-Ironic-API-Version', 'latest']], 'expect_status': 200,
         'expect_json': {'/uuid': pt['uuid']}, 'route': 'other',
         'expect_outcome': {'gateway': 'forwarded'}},
    ],
}
with open(out, 'w') as f:
    json.dump(doc, f, indent=1)
EOF

log "running the bench"
rc=0
# in the background + wait: a signal to this script is handled at once (the trap stops it too)
BENCH_CONFIG="$SCEN" BENCH_DURATION="$DURATION" BENCH_WARMUP="$WARMUP" BENCH_CONC="$CONC" \
  BENCH_ROUNDS="$ROUNDS" BENCH_OUT="$OUT" "$BENCH_EXE" </dev/null &
BENCH_PID=$!
wait "$BENCH_PID" || rc=$?
BENCH_PID=""

# the gateway must have survived the load
if ! alive "$GW_PID"; then
  log "WARNING: the gateway exited during the bench; last log lines:"
  tail -30 "$RUN/ironic-edge.log" >&2 || true
  rc=1
elif grep -q 'panicked' "$RUN/ironic-edge.log"; then
  log "WARNING: the gateway logged panics:"
  grep -m5 'panicked' "$RUN/ironic-edge.log" >&2 || true
  [ "${BENCH_STRICT:-0}" = 1 ] && rc=1
fi
[ "$rc" = 0 ] && FAILED=0
exit "$rc"
