#!/usr/bin/env bash
# bench.sh - what `make bench` runs: a bounded load bench of ironic-edge against the real
# Ironic and against bare servers (a bare Pingora, nginx), all measured in the same run
# (speed claims are ratios).
#
# It builds the gateway, benches/gateway_load.rs (the load generator) and
# benches/bare_pingora.rs (a Pingora server from the gateway's own dependency: same version,
# same features) in release, then starts on free loopback ports in a temporary run folder:
#   redis          scripts/redis-up.sh
#   direct         the real Ironic 39 seeded with $BENCH_NODES manageable fast-track nodes
#                  (scripts/ironic-peer-up.sh)
#   gateway        target/release/ironic-edge in front of that Ironic (a config generated from
#                  conf/ironic-edge.yaml: the same keys, with the run's ports, route_policy all)
#   static         nginx answering a fixed JSON body from its config (1 KiB at any path;
#                  Ironic's root document at /), 1 worker: the upstream of the passthrough
#   gateway-static a second gateway whose upstream is `static` (node sync off)
#   pingora-memory bare_pingora answering Ironic's lookup 404 body from memory in
#                  request_filter (after reading the request body)
#   pingora-proxy  bare_pingora proxying to `static` (plain upstream_peer)
#   nginx-proxy    nginx proxy_pass to `static` (upstream keep-alive), 1 worker
# (the nginx configs, pid files and error logs are in the run folder; nginx runs as the
# current user; both Pingora servers read the gateway's config for their Pingora keys, so
# they run with the same `threads`). With 2+ CPUs (and taskset), every server (Redis,
# Ironic, the gateways, bare Pingora, nginx-proxy) is pinned to the first CPU and the load
# generator and `static` to the second (BENCH_PIN=0: no pinning). It waits until each
# gateway's ops GET /status says versions_known: true, then runs, with $BENCH_CONC keep-alive
# connections for $BENCH_ROUNDS x $BENCH_DURATION s per scenario and target, targets in ABBA
# order:
#   lookup 404           GET /v1/lookup of an unknown MAC (API 1.62); the gateway answers it
#                        from its node index | direct, pingora-memory, gateway
#   lookup forwarded     GET /v1/lookup of a seeded node whose token was already handed out
#                        (200, agent_token "******"); forwarded every time | direct, gateway
#   heartbeat 404        POST /v1/heartbeat/{random uuid} (API 1.68, IPA-like body): a node
#                        the index does not hold, answered at the edge | direct,
#                        pingora-memory, gateway
#   heartbeat 400        the same with a WRONG token for a node whose token was minted through
#                        the gateway: Ironic's 400 "Invalid or missing agent token received.",
#                        at the edge (all but one per token_mismatch_forward_seconds) | direct,
#                        pingora-memory, gateway
#   heartbeat 202        the node's RIGHT token (minted through the gateway), the same body
#                        again and again: manageable + fast track is record-only, so the
#                        gateway coalesces it after the first one Ironic accepted (one per
#                        heartbeat.coalesce_seconds reaches Ironic) | pingora-memory, gateway
#                        (not direct: concurrent heartbeats of one node meet Ironic's node
#                        lock, 409)
#   passthrough Ironic   GET /v1/nodes/{uuid} (API latest), forwarded unchanged | direct,
#                        gateway
#   passthrough static   GET /v1/nodes/{uuid} to `static` | pingora-proxy, gateway-static,
#                        nginx-proxy
#   minted lookups       no load: GET /v1/lookup of 5 nodes never looked up, one at a time,
#                        each minting a token through the gateway (sequential) | gateway
# Baselines: pingora-memory (the edge answers; also direct), direct (Ironic's scenarios),
# pingora-proxy (passthrough static). Each run reports req/s, p50/p99, the server's CPU µs
# per request (/proc/<pid>/stat utime+stime over the window: the gateway process, its Redis
# apart; Ironic's process group; nginx's master and worker), Redis commands per request
# (INFO stats total_commands_processed, Lua scripts' commands included), Redis round trips
# per request (read events, total_reads_processed, around $BENCH_PROBE requests sent one at a
# time after the rounds), the server's RSS, the load generator's CPU, status counts, the
# gateway's own counters (local/forwarded), and the ratios to the baselines.
# Each scenario checks that its expected status dominates (a WARNING otherwise).
# Then, unless BENCH_INDEX_NODES=0: the gateway's RSS and the Redis bytes per node with
# $BENCH_INDEX_NODES indexed nodes (one port each): a third gateway syncs them from
# scripts/fake-ironic-index.py (the node listings the sync reads; the real Ironic takes
# minutes to enroll that many); printed and written to $BENCH_OUT/index_memory.{json,md}.
# Before the services start it runs benches/parse_cost.rs: the CPU the gateway's checks spend
# per MiB of the worst-shaped heartbeat bodies, lookup queries and version headers (256 KiB,
# 512 KiB, 1 MiB and the 1 MiB / 512 KiB ratio), printed as table rows and written to
# $BENCH_OUT/parse_cost.md.
# Results: $BENCH_OUT/gateway_load.{json,md} (+ time-stamped copies). Everything it started
# is stopped on exit (by PID / pid file), also on Ctrl-C or failure.
#
# Environment (all optional):
#   BENCH_DURATION (5)  measured seconds per run   BENCH_WARMUP (1)   BENCH_CONC (16)
#   BENCH_ROUNDS (2)    runs per scenario and target, in alternating order (A B C, C B A:
#                       drift on a noisy machine cancels out), pooled; the default measures
#                       2 x 5 = 10 s per scenario and target (about 5 minutes in all)
#   BENCH_ONLY          comma-separated substrings of scenario names (e.g. "lookup,static")
#   BENCH_NODES (20)    seeded nodes (at least 9)  BENCH_OUT (<project>/target/bench)
#   BENCH_TIMEOUT_MS (10000) per request           BENCH_PAUSE_MS (1000) between runs
#   BENCH_PROBE (100)   sequential requests of the Redis round-trip probe per scenario (0: no)
#   BENCH_PIN (1)       pin servers / load generator to two CPUs when there are 2+ (0: no)
#   BENCH_PEERS (1)     0: no bare Pingora, nginx or gateway-static (Ironic's scenarios only)
#   BENCH_INDEX_NODES (10000)  nodes of the index memory step (0: skip it)
#   BENCH_STRICT=1      exit 1 when a correctness check warned
#   BENCH_REDIS_PORT BENCH_IRONIC_PORT BENCH_GATEWAY_PORT BENCH_OPS_PORT (default: free ports;
#                       the peers always get free ports)
#   BENCH_GATEWAY_THREADS       gateway (and bare Pingora) worker threads (default: the
#                               shipped conf's `threads`)
#   BENCH_NEG_TTL               lookup.not_found_ttl_seconds (default: the shipped conf's)
#   BENCH_MISMATCH_SECONDS      heartbeat.token_mismatch_forward_seconds (default: the conf's)
#   BENCH_GATEWAY_LOG (warn)    RUST_LOG of the gateways during the bench
#   BENCH_NGINX (nginx)         the nginx binary (none found: the nginx targets are skipped)
#   BENCH_RUN_DIR               run folder (default: a new mktemp -d, removed afterwards)
#   BENCH_KEEP_RUN=1            keep the run folder (configs, logs, seed file)
#   BENCH_SKIP_BUILD=1          skip `cargo build --release` (the gateway binary must exist)
#   BENCH_BIN                   the gateway binary to bench (default: target/release/ironic-edge;
#                               with BENCH_SKIP_BUILD=1, e.g. a copy of the binary of an older
#                               commit, to compare two builds with the same bench)
#   BENCH_SKIP_PARSE=1          skip the parse_cost rows
#   CARGO, CARGO_TARGET_DIR, IRONIC_PEER_VENV (see scripts/ironic-peer-up.sh)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
CARGO="${CARGO:-cargo}"
TARGET_DIR="${CARGO_TARGET_DIR:-$PROJECT_DIR/target}"
BIN="${BENCH_BIN:-$TARGET_DIR/release/ironic-edge}"
DURATION="${BENCH_DURATION:-5}"
WARMUP="${BENCH_WARMUP:-1}"
CONC="${BENCH_CONC:-16}"
ROUNDS="${BENCH_ROUNDS:-2}"
NODES="${BENCH_NODES:-20}"
OUT="${BENCH_OUT:-$PROJECT_DIR/target/bench}"
GW_LOG_LEVEL="${BENCH_GATEWAY_LOG:-warn}"
PEERS="${BENCH_PEERS:-1}"
INDEX_NODES="${BENCH_INDEX_NODES:-10000}"

log() { echo "[bench] $*" >&2; }
die() { log "$*"; exit 1; }
. "$SCRIPT_DIR/lib.sh"

for v in "$CONC" "$NODES" "$ROUNDS" "$INDEX_NODES"; do
  case "$v" in ''|*[!0-9]*) die "not a positive integer: $v" ;; esac
done
[ "$NODES" -ge 9 ] || die "BENCH_NODES must be >= 9"
case "$DURATION$WARMUP" in *[!0-9.]*) die "BENCH_DURATION/BENCH_WARMUP: seconds, e.g. 10" ;; esac
command -v python3 >/dev/null || die "python3 is needed"
command -v redis-server >/dev/null || die "redis-server not found (Debian: apt-get install redis-server)"
NGINX="${BENCH_NGINX:-$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true)}"
if [ "$PEERS" = 1 ] && { [ -z "$NGINX" ] || [ ! -x "$NGINX" ]; }; then
  log "WARNING: no nginx (BENCH_NGINX): the static upstream, nginx-proxy, pingora-proxy and gateway-static are skipped"
  NGINX=""
fi

# --- 0. CPU pinning: servers on one CPU, the load generator on another ----------------------
SERVER_PIN=()
CLIENT_PIN=()
read -r CPU_A CPU_B <<<"$(python3 -c 'import os; c = sorted(os.sched_getaffinity(0)); print(c[0], c[1] if len(c) > 1 else "")')"
if [ "${BENCH_PIN:-1}" = 1 ] && [ -n "$CPU_B" ] && command -v taskset >/dev/null; then
  SERVER_PIN=(taskset -c "$CPU_A")
  CLIENT_PIN=(taskset -c "$CPU_B")
  PINNING="servers pinned to CPU $CPU_A, load generator and static upstream to CPU $CPU_B (taskset)"
else
  PINNING="not pinned"
fi
log "$PINNING"
# srv/cli CMD...: run pinned (in the foreground). bg_srv/bg_cli CMD... (redirections as
# usual): start pinned in the background, $! is the command's own PID (the subshell execs
# taskset, which execs the command), a child of this shell.
srv() { ${SERVER_PIN[@]+"${SERVER_PIN[@]}"} "$@"; }
bg_srv() { ( exec ${SERVER_PIN[@]+"${SERVER_PIN[@]}"} "$@" ) & }
bg_cli() { ( exec ${CLIENT_PIN[@]+"${CLIENT_PIN[@]}"} "$@" ) & }

# --- 1. build (before anything runs, so the build does not disturb the measurement) ------
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release"
  "$CARGO" build --release --bin ironic-edge >&2
fi
[ -x "$BIN" ] || die "$BIN not found (cargo build --release)"
log "building benches/gateway_load.rs and benches/bare_pingora.rs (bench profile)"
BENCH_EXE=$(build_bench gateway_load) || die "could not build the gateway_load bench"
BARE_EXE=""
if [ "$PEERS" = 1 ]; then
  BARE_EXE=$(build_bench bare_pingora) || die "could not build the bare_pingora bench"
fi

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
# what this script started and stops: "name pid" lines, stopped last first
STARTED=()
BENCH_PID=""
REDIS_STARTED=0
IRONIC_STARTED=0
FAILED=1
started() { STARTED+=("$1 $2"); }
stop_pid() { # name pid
  local name=$1 pid=$2
  alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do alive "$pid" || break; sleep 0.25; done
  if alive "$pid"; then log "$name PID $pid did not stop on SIGTERM; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
  log "stopped $name PID $pid"
}
forget_pid() { # pid: stopped already
  local keep=() e
  for e in ${STARTED[@]+"${STARTED[@]}"}; do [ "${e#* }" = "$1" ] || keep+=("$e"); done
  STARTED=(${keep[@]+"${keep[@]}"})
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$BENCH_PID" ] && alive "$BENCH_PID"; then
    kill -TERM "$BENCH_PID" 2>/dev/null || true
    wait "$BENCH_PID" 2>/dev/null || true
    log "stopped the load generator PID $BENCH_PID"
  fi
  local i
  for (( i=${#STARTED[@]}-1; i>=0; i-- )); do
    stop_pid ${STARTED[$i]}
  done
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

read -r P1 P3 P4 P5 P6 P7 P8 P9 P10 P11 P12 P13 <<<"$(pick_ports 12)"
REDIS_PORT="${BENCH_REDIS_PORT:-$P1}"
GATEWAY_PORT="${BENCH_GATEWAY_PORT:-$P3}"
OPS_PORT="${BENCH_OPS_PORT:-$P4}"
GW2_PORT=$P5; OPS2_PORT=$P6; BARE_MEM_PORT=$P7; BARE_PROXY_PORT=$P8
STATIC_PORT=$P9; NGINX_PROXY_PORT=$P10; GW3_PORT=$P11; OPS3_PORT=$P12; FAKE_PORT=$P13
GW_URL="http://127.0.0.1:$GATEWAY_PORT"
OPS_URL="http://127.0.0.1:$OPS_PORT"
log "run folder $RUN; ports: redis $REDIS_PORT, gateway $GATEWAY_PORT, ops $OPS_PORT"

# Waits until a gateway's ops /status answers (with versions_known: true when $3 = 1).
wait_gateway() { # ops_url pid need_versions
  python3 - "$1/status" "$2" "${BENCH_START_TIMEOUT:-60}" "$3" <<'EOF'
import json, sys, time, urllib.request
url, pid, timeout, need = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == '1'
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
            if not need or json.loads(last).get('upstream', {}).get('versions_known') is True:
                sys.exit(0)
    except Exception as e:  # not listening yet
        last = str(e)
    time.sleep(0.2)
sys.exit(f'not ready after {timeout:.0f} s: {last}')
EOF
}
# Waits until something answers HTTP at the URL (any status).
wait_http() { # url pid
  python3 - "$1" "$2" <<'EOF'
import sys, time, urllib.error, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])
end = time.time() + 30
while time.time() < end:
    try:
        with open(f'/proc/{pid}/stat') as f:
            if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
                sys.exit(f'PID {pid} exited')
    except FileNotFoundError:
        sys.exit(f'PID {pid} exited')
    try:
        urllib.request.urlopen(url, timeout=2).read()
        sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit(f'{url}: no answer within 30 s')
EOF
}
# Starts a gateway (pinned) with config $1 and log $2; $! is its PID.
start_gateway() { # conf log
  bg_srv env RUST_LOG="$GW_LOG_LEVEL" "$BIN" -c "$1" >"$2" 2>&1 </dev/null
}
# Writes a gateway config: conf port ops upstream prefix [bench_conf.py options...]
gateway_conf() {
  local conf=$1 port=$2 ops=$3 up=$4 prefix=$5; shift 5
  "$VENV_PY" "$SCRIPT_DIR/bench_conf.py" "$PROJECT_DIR/conf/ironic-edge.yaml" "$conf" --by bench.sh \
    --run "$RUN" --listen "$port" --ops "$ops" --upstream "$up" \
    --redis "$REDIS_URL" --prefix "$prefix" ${BENCH_GATEWAY_THREADS:+--threads "$BENCH_GATEWAY_THREADS"} \
    "$@" || die "could not write $conf"
  "$BIN" -t -c "$conf" >"$conf.check.log" 2>&1 \
    || { cat "$conf.check.log" >&2; die "config check of $conf failed"; }
}
# The child processes of a PID (nginx's workers).
children() { cat "/proc/$1/task/$1/children" 2>/dev/null || true; }

# --- 3. Redis and Ironic -----------------------------------------------------------------
REDIS_STARTED=1
REDIS_URL=$(srv bash "$SCRIPT_DIR/redis-up.sh" --port "$REDIS_PORT" --run-dir "$RUN/redis")
REDIS_PID=$(cat "$RUN/redis/redis.pid")
log "redis: $REDIS_URL (PID $REDIS_PID)"

IRONIC_STARTED=1
T0=$(date +%s)
# --port 0: ironic-peer-up.sh picks a free port itself (and retries on a race)
IRONIC_URL=$(IRONIC_RUN_DIR="$RUN/ironic" srv bash "$SCRIPT_DIR/ironic-peer-up.sh" \
  --port "${BENCH_IRONIC_PORT:-0}" --run-dir "$RUN/ironic" --seed "$NODES" --state manageable \
  --ports-per-node 1 --unknown-macs 3 --seed-file "$RUN/seed.json" --public-url "$GW_URL" \
  | tail -n 1)
IRONIC_PID=$(cat "$RUN/ironic/ironic.pid")
log "ironic: $IRONIC_URL (PID $IRONIC_PID, up and seeded in $(( $(date +%s) - T0 )) s)"
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
gateway_conf "$CONF" "$GATEWAY_PORT" "$OPS_PORT" "$IRONIC_URL" "ironic-edge-bench-$$:" \
  ${SETS[@]+"${SETS[@]}"} >"$RUN/gateway-summary.txt"
log "gateway config: $(cat "$RUN/gateway-summary.txt")"
start_gateway "$CONF" "$RUN/ironic-edge.log"; GW_PID=$!
started gateway "$GW_PID"
log "started gateway PID $GW_PID ($GW_URL, ops $OPS_URL, log $RUN/ironic-edge.log)"
if ! wait_gateway "$OPS_URL" "$GW_PID" 1; then
  tail -30 "$RUN/ironic-edge.log" >&2 || true
  die "the gateway did not become ready"
fi
log "gateway ready (versions_known: true)"

# --- 4b. the peers: a static upstream, nginx proxy_pass, bare Pingora, gateway-static ------
BARE_MEM_PID=""; BARE_PROXY_PID=""; STATIC_PID=""; NGINX_PROXY_PID=""; GW2_PID=""
NGINX_PROXY_PIDS=""
if [ "$PEERS" = 1 ]; then
  bg_srv "$BARE_EXE" --listen "127.0.0.1:$BARE_MEM_PORT" --mode memory -c "$CONF" \
    >"$RUN/bare-memory.log" 2>&1 </dev/null
  BARE_MEM_PID=$!
  started pingora-memory "$BARE_MEM_PID"
  wait_http "http://127.0.0.1:$BARE_MEM_PORT/" "$BARE_MEM_PID" || die "bare Pingora (memory) did not start"
  log "pingora-memory PID $BARE_MEM_PID on 127.0.0.1:$BARE_MEM_PORT"
fi
if [ "$PEERS" = 1 ] && [ -n "$NGINX" ]; then
  # nginx as the current user: its `user` directive only matters (and is only allowed
  # without a warning) when it runs as root
  NGINX_USER=""
  [ "$(id -u)" = 0 ] && NGINX_USER="user $(id -un) $(id -gn);"
  python3 - "$RUN" "$STATIC_PORT" "$NGINX_PROXY_PORT" "$NGINX_USER" <<'EOF'
import json, os, sys
run, static_port, proxy_port, user = sys.argv[1:]
root = {'name': 'OpenStack Ironic API', 'description': 'static upstream of scripts/bench.sh',
        'default_version': {'id': 'v1', 'links': [], 'status': 'CURRENT',
                            'min_version': '1.1', 'version': '1.99'},
        'versions': [{'id': 'v1', 'links': [], 'status': 'CURRENT',
                      'min_version': '1.1', 'version': '1.99'}]}
doc = {'uuid': '1eed0000-0000-4000-8000-000000000000', 'name': 'static-node',
       'provision_state': 'manageable', 'driver': 'fake-hardware', 'padding': ''}
doc['padding'] = 'x' * (1024 - len(json.dumps(doc)))
body = json.dumps(doc)
assert len(body) == 1024 and "'" not in body and '$' not in body
def conf(name, port, server_block):
    d = os.path.join(run, name)
    os.makedirs(os.path.join(d, 'tmp'), exist_ok=True)
    temp = ''.join(f'    {k}_temp_path {d}/tmp/{k};\n'
                   for k in ('client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'))
    with open(os.path.join(d, 'nginx.conf'), 'w') as f:
        f.write(f"""# written by scripts/bench.sh
{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}    keepalive_requests 1000000;
    keepalive_timeout 75s;
{server_block}
}}
""")
conf('nginx-static', static_port, f"""    server {{
        listen 127.0.0.1:{static_port};
        default_type application/json;
        location = / {{ return 200 '{json.dumps(root)}'; }}
        location / {{ return 200 '{body}'; }}
    }}""")
conf('nginx-proxy', proxy_port, f"""    upstream static {{
        server 127.0.0.1:{static_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{proxy_port};
        location / {{
            proxy_pass http://static;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}""")
EOF
  for name in nginx-static nginx-proxy; do
    "$NGINX" -t -q -p "$RUN/$name" -e "$RUN/$name/error.log" -c "$RUN/$name/nginx.conf" \
      || die "nginx -t failed for $RUN/$name/nginx.conf"
  done
  bg_cli "$NGINX" -p "$RUN/nginx-static" -e "$RUN/nginx-static/error.log" \
    -c "$RUN/nginx-static/nginx.conf" -g 'daemon off;' </dev/null >"$RUN/nginx-static/stdout.log" 2>&1
  STATIC_PID=$!
  started static "$STATIC_PID"
  wait_http "http://127.0.0.1:$STATIC_PORT/" "$STATIC_PID" || die "the static nginx did not start"
  bg_srv "$NGINX" -p "$RUN/nginx-proxy" -e "$RUN/nginx-proxy/error.log" \
    -c "$RUN/nginx-proxy/nginx.conf" -g 'daemon off;' </dev/null >"$RUN/nginx-proxy/stdout.log" 2>&1
  NGINX_PROXY_PID=$!
  started nginx-proxy "$NGINX_PROXY_PID"
  wait_http "http://127.0.0.1:$NGINX_PROXY_PORT/" "$NGINX_PROXY_PID" || die "nginx proxy_pass did not start"
  NGINX_PROXY_PIDS="$NGINX_PROXY_PID $(children "$NGINX_PROXY_PID")"
  log "static nginx PID $STATIC_PID on 127.0.0.1:$STATIC_PORT; nginx-proxy PIDs $NGINX_PROXY_PIDS on 127.0.0.1:$NGINX_PROXY_PORT"

  bg_srv "$BARE_EXE" --listen "127.0.0.1:$BARE_PROXY_PORT" --mode proxy \
    --upstream "127.0.0.1:$STATIC_PORT" -c "$CONF" >"$RUN/bare-proxy.log" 2>&1 </dev/null
  BARE_PROXY_PID=$!
  started pingora-proxy "$BARE_PROXY_PID"
  wait_http "http://127.0.0.1:$BARE_PROXY_PORT/" "$BARE_PROXY_PID" || die "bare Pingora (proxy) did not start"
  log "pingora-proxy PID $BARE_PROXY_PID on 127.0.0.1:$BARE_PROXY_PORT"

  CONF2="$RUN/ironic-edge-static.yaml"
  gateway_conf "$CONF2" "$GW2_PORT" "$OPS2_PORT" "http://127.0.0.1:$STATIC_PORT" \
    "ironic-edge-bench-$$-static:" --set sync.enabled=false >/dev/null
  start_gateway "$CONF2" "$RUN/ironic-edge-static.log"; GW2_PID=$!
  started gateway-static "$GW2_PID"
  if ! wait_gateway "http://127.0.0.1:$OPS2_PORT" "$GW2_PID" 1; then
    tail -30 "$RUN/ironic-edge-static.log" >&2 || true
    die "gateway-static did not become ready"
  fi
  log "gateway-static PID $GW2_PID on 127.0.0.1:$GW2_PORT (upstream: the static nginx)"
fi

# --- 5. the scenarios ------------------------------------------------------------------------
COMMIT=$(git -C "$PROJECT_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$PROJECT_DIR" status --porcelain -- src benches Cargo.toml 2>/dev/null)" ]; then
  COMMIT="$COMMIT+dirty"
fi
SCEN="$RUN/scenarios.json"
python3 - "$RUN/seed.json" "$SCEN" "$OUT" "$(cat "$RUN/gateway-summary.txt")" "$COMMIT" \
  "$PINNING" <<EOF
import json, os, secrets, sys, urllib.parse, urllib.request, uuid
seed_file, out, out_dir, gw_summary, commit, pinning = sys.argv[1:]
ironic, gw, ops = '$IRONIC_URL', '$GW_URL', '$OPS_URL'
redis = '127.0.0.1:$REDIS_PORT'
redis_pids = [$REDIS_PID]
have_peers, have_nginx = '$PEERS' == '1', bool('$NGINX') and '$PEERS' == '1'

def group(pid):
    """Every process of PID's process group (Ironic runs in its own session)."""
    out = []
    for d in os.listdir('/proc'):
        if d.isdigit():
            try:
                with open(f'/proc/{d}/stat') as f:
                    if int(f.read().rsplit(')', 1)[1].split()[2]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return sorted(out) or [pid]

seed = json.load(open(seed_file))
nodes = seed['nodes']
unknown = (seed.get('unknown_macs') or ['52:54:fe:00:00:01'])[0]
fwd, hb, pt, co = nodes[0], nodes[1], nodes[2], nodes[3]
q = lambda mac: '/v1/lookup?addresses=' + urllib.parse.quote(mac, safe='')
lookup_h = [['X-OpenStack-Ironic-API-Version', '1.62']]
hb_h = [['X-OpenStack-Ironic-API-Version', '1.68']]
# a token of the real shape (secrets.token_urlsafe(), 43 chars), never the node's own
wrong = secrets.token_urlsafe()
masked = {'/config/agent_token': '******'}
callback = 'https://127.0.0.1:9999'

# the coalesced node's token, minted through the gateway (so the gateway knows its hash)
req = urllib.request.Request(gw + q(co['macs'][0]), headers=dict(lookup_h))
with urllib.request.urlopen(req, timeout=30) as r:
    token = json.load(r)['config']['agent_token']
if not token or token == '******':
    sys.exit(f'the lookup of {co["uuid"]} through the gateway minted no token: {token!r}')
hb_body = lambda tok: {'callback_url': callback, 'agent_token': tok, 'agent_version': '13.0.0'}

targets = [{'name': 'direct', 'url': ironic, 'pids': group($IRONIC_PID)},
           {'name': 'gateway', 'url': gw, 'ops': ops, 'pids': [$GW_PID],
            'redis': redis, 'redis_pids': redis_pids}]
if have_peers:
    targets.append({'name': 'pingora-memory', 'url': 'http://127.0.0.1:$BARE_MEM_PORT',
                    'pids': [${BARE_MEM_PID:-0}]})
if have_nginx:
    targets += [
        {'name': 'pingora-proxy', 'url': 'http://127.0.0.1:$BARE_PROXY_PORT',
         'pids': [${BARE_PROXY_PID:-0}]},
        {'name': 'gateway-static', 'url': 'http://127.0.0.1:$GW2_PORT',
         'ops': 'http://127.0.0.1:$OPS2_PORT', 'pids': [${GW2_PID:-0}],
         'redis': redis, 'redis_pids': redis_pids},
        {'name': 'nginx-proxy', 'url': 'http://127.0.0.1:$NGINX_PROXY_PORT',
         'pids': [int(p) for p in '$NGINX_PROXY_PIDS'.split()]},
    ]
edge = ['direct', 'pingora-memory', 'gateway'] if have_peers else ['direct', 'gateway']
edge_base = ['pingora-memory', 'direct'] if have_peers else ['direct']
bare_404 = {'pingora-memory': {'expect_status': 404,
                               'expect_body': 'Resource could not be found.'}}
scenarios = [
    {'name': 'lookup 404, unknown MAC (edge: index)', 'method': 'GET', 'path': q(unknown),
     'headers': lookup_h, 'expect_status': 404, 'route': 'lookup',
     'expect_body': 'Resource could not be found.',
     'expect_outcome': {'gateway': 'local'}, 'targets': edge, 'baseline': edge_base},
    {'name': 'lookup forwarded (token issued)', 'method': 'GET', 'path': q(fwd['macs'][0]),
     'headers': lookup_h, 'expect_status': 200, 'expect_json': masked, 'route': 'lookup',
     'expect_outcome': {'gateway': 'forwarded'}, 'targets': ['direct', 'gateway'],
     'baseline': 'direct',
     # hand the node's token out once, so that every later lookup gets "******"
     'prime': [{'target': 'direct', 'method': 'GET', 'path': q(fwd['macs'][0]),
                'headers': lookup_h, 'expect_status': 200}]},
    {'name': 'heartbeat 404, unknown node (edge: index)', 'method': 'POST',
     'path': f'/v1/heartbeat/{uuid.uuid4()}', 'headers': hb_h,
     'body': hb_body(secrets.token_urlsafe()), 'expect_status': 404,
     'expect_body': 'could not be found.', 'route': 'heartbeat',
     'expect_outcome': {'gateway': 'local'}, 'expect_by_target': bare_404, 'targets': edge,
     'baseline': edge_base},
    {'name': 'heartbeat 400, wrong token (edge)', 'method': 'POST',
     'path': f"/v1/heartbeat/{hb['uuid']}", 'headers': hb_h, 'body': hb_body(wrong),
     'expect_status': 400, 'expect_body': 'Invalid or missing agent token received.',
     'route': 'heartbeat', 'expect_outcome': {'gateway': 'local'},
     'expect_by_target': bare_404, 'targets': edge, 'baseline': edge_base,
     # the token is minted through the gateway, so the gateway knows its hash
     'prime': [{'target': 'gateway', 'method': 'GET', 'path': q(hb['macs'][0]),
                'headers': lookup_h, 'expect_status': 200,
                'expect_json_not': masked}]},
    {'name': 'heartbeat 202, verified and coalesced (edge)', 'method': 'POST',
     'path': f"/v1/heartbeat/{co['uuid']}", 'headers': hb_h, 'body': hb_body(token),
     'expect_status': 202, 'route': 'heartbeat', 'expect_outcome': {'gateway': 'local'},
     # not Ironic directly: 16 connections heartbeating one node there meet its node lock
     # (409) while the conductor records the previous one
     'expect_by_target': bare_404, 'targets': [t for t in edge if t != 'direct'],
     'baseline': edge_base[0],
     # the first one Ironic accepts through the gateway: the ones after it are coalesced
     'prime': [{'target': 'gateway', 'method': 'POST', 'path': f"/v1/heartbeat/{co['uuid']}",
                'headers': hb_h, 'body': hb_body(token), 'expect_status': 202}]},
    {'name': 'passthrough GET /v1/nodes/{uuid} (Ironic)', 'method': 'GET',
     'path': f"/v1/nodes/{pt['uuid']}",
     'headers': [['X-OpenStack-Ironic-API-Version', 'latest']], 'expect_status': 200,
     'expect_json': {'/uuid': pt['uuid']}, 'route': 'other',
     'expect_outcome': {'gateway': 'forwarded'}, 'targets': ['direct', 'gateway'],
     'baseline': 'direct'},
]
scenarios.append(
    {'name': 'minted lookups (sequential, no load)', 'targets': ['gateway'],
     'expect_status': 200, 'route': 'lookup',
     'sequence': [{'method': 'GET', 'path': q(n['macs'][0]), 'headers': lookup_h}
                  for n in nodes[4:9]]})
if have_nginx:
    scenarios.append(
        {'name': 'passthrough to a static upstream', 'method': 'GET',
         'path': f"/v1/nodes/{pt['uuid']}",
         'headers': [['X-OpenStack-Ironic-API-Version', 'latest']], 'expect_status': 200,
         'expect_json': {'/name': 'static-node'}, 'route': 'other',
         'expect_outcome': {'gateway-static': 'forwarded'},
         'targets': ['pingora-proxy', 'gateway-static', 'nginx-proxy'],
         'baseline': 'pingora-proxy'})
doc = {
    'label': f'ironic-edge {commit}; Ironic 39.0.0 (1 process, sqlite, {len(nodes)} nodes); '
             f'{gw_summary}; {pinning}',
    'out_dir': out_dir,
    'targets': targets,
    'baseline': 'direct',
    'scenarios': scenarios,
}
with open(out, 'w') as f:
    json.dump(doc, f, indent=1)
EOF

log "running the bench"
rc=0
# in the background + wait: a signal to this script is handled at once (the trap stops it too)
bg_cli env BENCH_CONFIG="$SCEN" BENCH_DURATION="$DURATION" BENCH_WARMUP="$WARMUP" \
  BENCH_CONC="$CONC" BENCH_ROUNDS="$ROUNDS" BENCH_OUT="$OUT" BENCH_PROBE="${BENCH_PROBE:-100}" \
  "$BENCH_EXE" </dev/null
BENCH_PID=$!
wait "$BENCH_PID" || rc=$?
BENCH_PID=""

# the servers must have survived the load
for e in ${STARTED[@]+"${STARTED[@]}"}; do
  name=${e% *}; pid=${e#* }
  alive "$pid" || { log "WARNING: $name (PID $pid) exited during the bench"; rc=1; }
done
for f in "$RUN"/ironic-edge*.log; do
  if grep -q 'panicked' "$f"; then
    log "WARNING: a gateway logged panics ($f):"
    grep -m5 'panicked' "$f" >&2 || true
    [ "${BENCH_STRICT:-0}" = 1 ] && rc=1
  fi
done

# --- 6. memory at $INDEX_NODES indexed nodes --------------------------------------------------
if [ "$INDEX_NODES" -gt 0 ] && [ "$rc" = 0 ]; then
  log "index memory: a gateway syncing $INDEX_NODES nodes from scripts/fake-ironic-index.py"
  bg_cli python3 "$SCRIPT_DIR/fake-ironic-index.py" --port "$FAKE_PORT" --nodes "$INDEX_NODES" \
    >"$RUN/fake-ironic.log" 2>&1 </dev/null
  FAKE_PID=$!
  started fake-ironic "$FAKE_PID"
  wait_http "http://127.0.0.1:$FAKE_PORT/" "$FAKE_PID" || die "the fake Ironic did not start"
  PREFIX3="ironic-edge-bench-$$-index:"
  CONF3="$RUN/ironic-edge-index.yaml"
  gateway_conf "$CONF3" "$GW3_PORT" "$OPS3_PORT" "http://127.0.0.1:$FAKE_PORT" "$PREFIX3" >/dev/null
  MEM_BEFORE=$(python3 "$SCRIPT_DIR/bench_index_memory.py" used-memory --redis-port "$REDIS_PORT")
  start_gateway "$CONF3" "$RUN/ironic-edge-index.log"; GW3_PID=$!
  started gateway-index "$GW3_PID"
  wait_gateway "http://127.0.0.1:$OPS3_PORT" "$GW3_PID" 1 || die "gateway-index did not become ready"
  python3 "$SCRIPT_DIR/bench_index_memory.py" measure --redis-port "$REDIS_PORT" \
    --prefix "$PREFIX3" --nodes "$INDEX_NODES" --pid "$GW3_PID" --other-pid "$GW_PID" \
    --used-before "$MEM_BEFORE" --out "$OUT" --label "ironic-edge $COMMIT; $PINNING" || rc=1
  stop_pid gateway-index "$GW3_PID"; forget_pid "$GW3_PID"
  stop_pid fake-ironic "$FAKE_PID"; forget_pid "$FAKE_PID"
fi
[ "$rc" = 0 ] && FAILED=0
exit "$rc"
