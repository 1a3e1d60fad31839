#!/usr/bin/env bash
# fleet-bench.sh - the fleet bench (issue 4): N simulated ironic-python-agent 13 ramdisks with
# IPA's timing (benches/fleet.rs), run against the real Ironic directly and through ironic-edge
# in the same run, with an outage: Ironic stopped for $FLEET_OUTAGE s and started again.
#
# It builds the gateway (release) and benches/fleet.rs, then starts on loopback ports in a
# temporary run folder: a redis-server (scripts/redis-up.sh), the real Ironic 39 seeded with
# $FLEET_NODES manageable fast-track nodes (scripts/ironic-peer-up.sh; its
# [api]ramdisk_heartbeat_timeout lowered to $FLEET_HEARTBEAT_TIMEOUT through oslo.config's
# OS_API__RAMDISK_HEARTBEAT_TIMEOUT, to compress time) and the gateway (target/release/ironic-edge,
# config generated from conf/ironic-edge.yaml with the run's ports). The freshly seeded database is
# saved, and before each target's run Ironic is restarted on it (every node mints a new token, no
# heartbeat recorded yet). The simulator runs a counting relay in front of Ironic: the direct run's
# agents and the gateway's upstream both go through it, so "requests reaching Ironic" is counted at
# the same place for both. Ironic's own API log ($RUN/ironic/ironic.log: one line per answer) gives
# its 503s and the tokens it minted, and its node records after each run the latent bricked agents,
# the same way for both runs. Per target: boot (agents spread over $FLEET_RAMP s), steady state
# ($FLEET_STEADY s), outage, recovery (at least $FLEET_RECOVERY_MIN s, until every agent had a 202
# again and the gateway's relay had nothing kept left, at most $FLEET_RECOVERY s). It prints the
# comparison table (direct vs gateway) and writes $FLEET_OUT/fleet.{md,json} (+ time-stamped
# copies). Everything it started is stopped on exit, by PID (also on Ctrl-C or failure).
#
# Environment (all optional):
#   FLEET_NODES (300)          enrolled agents = seeded nodes (seeding: ~0.17 s per node)
#   FLEET_UNKNOWN (NODES/10)   agents of machines that are not enrolled (lookup 404 for ever)
#   FLEET_HEARTBEAT_TIMEOUT (60)  Ironic's [api]ramdisk_heartbeat_timeout (300 upstream): agents
#                              heartbeat every 0.3-0.6 x this, so 60 compresses time 5 x
#   FLEET_RAMP (NODES/10, at least 30) FLEET_SETTLE (45) FLEET_STEADY (60) FLEET_OUTAGE (30)
#   FLEET_RECOVERY (60) FLEET_RECOVERY_MIN (60)  seconds: boot spread, max wait for the fleet to
#                              be up, steady window, outage, max and min length of the recovery
#                              (the minute after Ironic's return is measured whole)
#   FLEET_OUTAGE_MODE (restart) restart: ironic-peer-down.sh, then ironic-peer-up.sh --keep-db
#                              (connections refused while down); freeze: SIGSTOP / SIGCONT of
#                              Ironic's process group (connections hang); none: no outage
#   FLEET_TARGETS (direct,gateway)  order of the runs
#   FLEET_OUT (<project>/target/bench)
#   FLEET_GATEWAY_LOG (warn)   RUST_LOG of the gateway
#   FLEET_GATEWAY_THREADS      gateway worker threads (default: the shipped conf's `threads`)
#   FLEET_SKIP_BUILD=1         use the binaries already built
#   FLEET_KEEP_RUN=1           keep the run folder (configs, logs, seed file, databases)
#   FLEET_RUN_DIR              run folder (default: a new mktemp -d, removed afterwards)
#   FLEET_EXTRA_ARGS           more options for the simulator (e.g. "--extra-macs 0")
#   CARGO, CARGO_TARGET_DIR, IRONIC_PEER_VENV (see scripts/ironic-peer-up.sh)
# Defaults take about 8 minutes (build excluded): seeding ~1 min, each target ~3.5 min.
set -euo pipefail
# The whole script is one { ... } block: bash parses it before running it, so editing this file
# while a bench runs cannot break the run.
{

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
CARGO="${CARGO:-cargo}"
TARGET_DIR="${CARGO_TARGET_DIR:-$PROJECT_DIR/target}"
BIN="$TARGET_DIR/release/ironic-edge"
NODES="${FLEET_NODES:-300}"
UNKNOWN="${FLEET_UNKNOWN:-$((NODES / 10))}"
HB_TIMEOUT="${FLEET_HEARTBEAT_TIMEOUT:-60}"
case "$NODES" in ''|*[!0-9]*) RAMP_DEFAULT=30 ;; *) RAMP_DEFAULT=$(( NODES / 10 > 30 ? NODES / 10 : 30 )) ;; esac
RAMP="${FLEET_RAMP:-$RAMP_DEFAULT}"
SETTLE="${FLEET_SETTLE:-45}"
STEADY="${FLEET_STEADY:-60}"
OUTAGE="${FLEET_OUTAGE:-30}"
RECOVERY="${FLEET_RECOVERY:-60}"
RECOVERY_MIN="${FLEET_RECOVERY_MIN:-60}"
OUTAGE_MODE="${FLEET_OUTAGE_MODE:-restart}"
TARGETS="${FLEET_TARGETS:-direct,gateway}"
OUT="${FLEET_OUT:-$PROJECT_DIR/target/bench}"
GW_LOG_LEVEL="${FLEET_GATEWAY_LOG:-warn}"

log() { echo "[fleet $(date +%T)] $*" >&2; }
die() { log "$*"; exit 1; }
. "$SCRIPT_DIR/lib.sh"

for v in "$NODES" "$UNKNOWN" "$HB_TIMEOUT"; do
  case "$v" in ''|*[!0-9]*) die "not a non-negative integer: $v" ;; esac
done
[ "$NODES" -ge 1 ] || die "FLEET_NODES must be >= 1"
[ "$HB_TIMEOUT" -ge 1 ] || die "FLEET_HEARTBEAT_TIMEOUT must be >= 1"
for v in "$RAMP" "$SETTLE" "$STEADY" "$OUTAGE" "$RECOVERY" "$RECOVERY_MIN"; do
  case "$v" in ''|*[!0-9.]*) die "not a number of seconds: $v" ;; esac
done
case "$OUTAGE_MODE" in restart|freeze|none) ;; *) die "FLEET_OUTAGE_MODE: restart|freeze|none" ;; esac
case ",$TARGETS," in *,gateway,*) WANT_GW=1 ;; *) WANT_GW=0 ;; esac
command -v python3 >/dev/null || die "python3 is needed"
command -v redis-server >/dev/null || die "redis-server not found (Debian: apt-get install redis-server)"

# --- 1. build (before anything runs) ----------------------------------------------------------
if [ "${FLEET_SKIP_BUILD:-0}" != 1 ] && [ "$WANT_GW" = 1 ]; then
  log "cargo build --release --bin ironic-edge"
  "$CARGO" build --release --bin ironic-edge >&2
fi
if [ "$WANT_GW" = 1 ]; then [ -x "$BIN" ] || die "$BIN not found (cargo build --release)"; fi
log "building benches/fleet.rs (bench profile)"
FLEET_EXE=$(build_bench fleet) || die "could not build the fleet bench"

# --- 2. run folder, ports, cleanup --------------------------------------------------------------
if [ -n "${FLEET_RUN_DIR:-}" ]; then
  RUN="$FLEET_RUN_DIR"; mkdir -p "$RUN"; OWN_RUN=0
else
  RUN=$(mktemp -d "${TMPDIR:-/tmp}/ironic-edge-fleet.XXXXXX"); OWN_RUN=1
fi
IRUN="$RUN/ironic"
SIM_PID=""
REDIS_STARTED=0
IRONIC_STARTED=0
FAILED=1
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$SIM_PID" ] && alive "$SIM_PID"; then
    kill -TERM "$SIM_PID" 2>/dev/null || true
    wait "$SIM_PID" 2>/dev/null || true
    log "stopped the simulator PID $SIM_PID"
  fi
  if [ -f "$RUN/gateway.pid" ] && [ -f "$RUN/ironic-ctl.sh" ]; then
    bash "$RUN/ironic-ctl.sh" gateway-stop || log "could not stop the gateway (pid file $RUN/gateway.pid)"
  fi
  if [ "$IRONIC_STARTED" = 1 ]; then
    # a frozen Ironic (freeze mode, interrupted) must run again to stop
    if [ -f "$IRUN/ironic.pid" ]; then
      ipid=$(cat "$IRUN/ironic.pid" 2>/dev/null || true)
      case "$ipid" in
        ''|*[!0-9]*) ;;
        *) if alive "$ipid"; then kill -CONT -- "-$ipid" 2>/dev/null || true; fi ;;
      esac
    fi
    bash "$SCRIPT_DIR/ironic-peer-down.sh" --run-dir "$IRUN" >/dev/null 2>&1 \
      || log "ironic-peer-down.sh failed (run dir $IRUN)"
    log "stopped Ironic"
  fi
  if [ "$REDIS_STARTED" = 1 ]; then
    bash "$SCRIPT_DIR/redis-down.sh" --run-dir "$RUN/redis" >/dev/null 2>&1 \
      || log "redis-down.sh failed (run dir $RUN/redis)"
    log "stopped redis-server"
  fi
  if [ "$FAILED" = 1 ] || [ "${FLEET_KEEP_RUN:-0}" = 1 ] || [ "$OWN_RUN" = 0 ]; then
    log "run folder kept: $RUN"
  else
    rm -rf "$RUN"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'FAILED=0; exit 130' INT
trap 'FAILED=0; exit 143' TERM

# Distinct free loopback ports BELOW the ephemeral range: Ironic's port and the relay's are
# closed for the outage and must be free again when Ironic restarts (an outgoing connection could
# take an ephemeral port meanwhile).
read -r REDIS_PORT IRONIC_PORT RELAY_PORT GATEWAY_PORT OPS_PORT <<<"$(pick_ports 5)"
GW_URL="http://127.0.0.1:$GATEWAY_PORT"
OPS_URL="http://127.0.0.1:$OPS_PORT"
log "run folder $RUN; ports: redis $REDIS_PORT, ironic $IRONIC_PORT, relay $RELAY_PORT, gateway $GATEWAY_PORT, ops $OPS_PORT"

# --- 3. Redis, Ironic (seeded once; the database is saved and restored by each reset) -----------
if [ "$WANT_GW" = 1 ]; then
  REDIS_STARTED=1
  REDIS_URL=$(bash "$SCRIPT_DIR/redis-up.sh" --port "$REDIS_PORT" --run-dir "$RUN/redis")
  log "redis: $REDIS_URL"
fi

export OS_API__RAMDISK_HEARTBEAT_TIMEOUT="$HB_TIMEOUT"
IRONIC_STARTED=1
T0=$(date +%s)
IRONIC_URL=$(bash "$SCRIPT_DIR/ironic-peer-up.sh" --port "$IRONIC_PORT" --run-dir "$IRUN" \
  --seed "$NODES" --state manageable --ports-per-node 1 --unknown-macs 0 \
  --seed-file "$RUN/seed.json" | tail -n 1)
log "ironic: $IRONIC_URL (up and seeded with $NODES nodes in $(( $(date +%s) - T0 )) s)"
[ "$IRONIC_URL" = "http://127.0.0.1:$IRONIC_PORT" ] || die "unexpected Ironic URL: $IRONIC_URL"
[ -s "$RUN/seed.json" ] || die "no seed file $RUN/seed.json"
bash "$SCRIPT_DIR/ironic-peer-down.sh" --run-dir "$IRUN" >/dev/null 2>&1
mkdir -p "$RUN/pristine"
cp "$IRUN"/ironic.db* "$RUN/pristine/"
log "seeded database saved ($(du -sh "$RUN/pristine" | cut -f1))"

# --- 4. the gateway config (its upstream: the simulator's relay in front of Ironic) -------------
CONF="$RUN/ironic-edge.yaml"
GW_PIDFILE="$RUN/gateway.pid"
if [ "$WANT_GW" = 1 ]; then
  VENV_PY=$(venv_python)
  [ -x "$VENV_PY" ] || die "no venv python at $VENV_PY"
  SUMMARY=$("$VENV_PY" "$SCRIPT_DIR/bench_conf.py" "$PROJECT_DIR/conf/ironic-edge.yaml" "$CONF" \
    --by fleet-bench.sh --run "$RUN" --listen "$GATEWAY_PORT" --ops "$OPS_PORT" \
    --upstream "http://127.0.0.1:$RELAY_PORT" --redis "$REDIS_URL" \
    --prefix "ironic-edge-fleet-$$:" --seal-key \
    ${FLEET_GATEWAY_THREADS:+--threads "$FLEET_GATEWAY_THREADS"}) || die "could not write $CONF"
  log "gateway config: $SUMMARY"
  "$BIN" -t -c "$CONF" >"$RUN/ironic-edge.check.log" 2>&1 \
    || { cat "$RUN/ironic-edge.check.log" >&2; die "config check of $CONF failed"; }
fi

# Control script for the simulator's reset and outage commands ($FLEET_TARGET is set by it):
#   reset        stop the gateway; Ironic restarted on the freshly seeded database; the gateway
#                started again (a fresh process) when FLEET_TARGET=gateway
#   stop|start   Ironic (ironic-peer-down.sh / ironic-peer-up.sh --keep-db)
#   freeze|thaw  SIGSTOP / SIGCONT of Ironic's process group (ironic-peer-up.sh starts it with
#                setsid: the group id is its PID)
#   gateway-start|gateway-stop   the gateway, by the pid file $GW_PIDFILE
CTL="$RUN/ironic-ctl.sh"
cat > "$CTL" <<EOF
#!/usr/bin/env bash
# generated by scripts/fleet-bench.sh
set -euo pipefail
export OS_API__RAMDISK_HEARTBEAT_TIMEOUT=$HB_TIMEOUT
DOWN="$SCRIPT_DIR/ironic-peer-down.sh"
UP="$SCRIPT_DIR/ironic-peer-up.sh"
IRUN="$IRUN"
GW_PIDFILE="$GW_PIDFILE"
proc_state() { local s; s=\$(cat "/proc/\$1/stat" 2>/dev/null) || { echo X; return; }; s=\${s##*) }; echo "\${s%% *}"; }
alive() { local st; st=\$(proc_state "\$1"); [ "\$st" != X ] && [ "\$st" != Z ]; }
start() { bash "\$UP" --port $IRONIC_PORT --run-dir "\$IRUN" --keep-db --seed-file "\$IRUN/restart-seed.json" >/dev/null; }
stop() { bash "\$DOWN" --run-dir "\$IRUN" >/dev/null; }
pgid() { cat "\$IRUN/ironic.pid"; }
gateway_stop() {
  [ -f "\$GW_PIDFILE" ] || return 0
  local pid; pid=\$(cat "\$GW_PIDFILE")
  if alive "\$pid" && tr '\0' ' ' < "/proc/\$pid/cmdline" 2>/dev/null | grep -q ironic-edge; then
    kill -TERM "\$pid" 2>/dev/null || true
    for _ in \$(seq 1 40); do alive "\$pid" || break; sleep 0.25; done
    if alive "\$pid"; then kill -KILL "\$pid" 2>/dev/null || true; fi
    echo "[fleet] stopped gateway PID \$pid" >&2
  fi
  rm -f "\$GW_PIDFILE"
}
gateway_start() {
  gateway_stop
  RUST_LOG="$GW_LOG_LEVEL" "$BIN" -c "$CONF" >>"$RUN/ironic-edge.log" 2>&1 </dev/null &
  local pid=\$!
  echo "\$pid" > "\$GW_PIDFILE"
  for _ in \$(seq 1 200); do
    alive "\$pid" || break
    if python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$OPS_URL/status" 2>/dev/null; then
      echo "[fleet] started gateway PID \$pid ($GW_URL, ops $OPS_URL, log $RUN/ironic-edge.log)" >&2
      return 0
    fi
    sleep 0.1
  done
  tail -30 "$RUN/ironic-edge.log" >&2 || true
  echo "[fleet] the gateway did not start" >&2
  exit 1
}
case "\${1:-}" in
  reset)
    gateway_stop
    stop
    rm -f "\$IRUN"/ironic.db*
    cp "$RUN/pristine"/ironic.db* "\$IRUN/"
    start
    if [ "\${FLEET_TARGET:-}" = gateway ]; then gateway_start; fi ;;
  stop) stop ;;
  start) start ;;
  freeze) kill -STOP -- "-\$(pgid)" ;;
  thaw) kill -CONT -- "-\$(pgid)" ;;
  gateway-start) gateway_start ;;
  gateway-stop) gateway_stop ;;
  *) echo "usage: \$0 reset|stop|start|freeze|thaw|gateway-start|gateway-stop" >&2; exit 2 ;;
esac
EOF
chmod +x "$CTL"
if [ "$WANT_GW" = 1 ]; then
  # smoke start (its upstream, the relay, runs in the simulator: readiness is checked there)
  bash "$CTL" gateway-start
  bash "$CTL" gateway-stop
fi

# --- 5. the simulator ------------------------------------------------------------------------------
COMMIT=$(git -C "$PROJECT_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$PROJECT_DIR" status --porcelain -- src benches Cargo.toml conf 2>/dev/null)" ]; then
  COMMIT="$COMMIT+dirty"
fi
args=(--seed "$RUN/seed.json" --ironic "127.0.0.1:$IRONIC_PORT" --relay "127.0.0.1:$RELAY_PORT"
      --targets "$TARGETS" --agents "$NODES" --unknown "$UNKNOWN" --ramp "$RAMP" --settle "$SETTLE"
      --steady "$STEADY" --outage "$OUTAGE" --recovery "$RECOVERY" --recovery-min "$RECOVERY_MIN"
      --outage-mode "$OUTAGE_MODE" --ironic-log "$IRUN/ironic.log"
      --reset-cmd "bash $CTL reset" --out "$OUT"
      --label "ironic-edge $COMMIT; Ironic 39.0.0 (1 process, sqlite, $NODES manageable fast-track nodes, [api]ramdisk_heartbeat_timeout $HB_TIMEOUT); outage mode $OUTAGE_MODE")
if [ "$WANT_GW" = 1 ]; then args+=(--gateway "$GW_URL" --gateway-ops "$OPS_URL"); fi
case "$OUTAGE_MODE" in
  restart) args+=(--outage-stop-cmd "bash $CTL stop" --outage-start-cmd "bash $CTL start") ;;
  freeze) args+=(--outage-stop-cmd "bash $CTL freeze" --outage-start-cmd "bash $CTL thaw") ;;
esac
# shellcheck disable=SC2206
[ -n "${FLEET_EXTRA_ARGS:-}" ] && args+=(${FLEET_EXTRA_ARGS})
log "running the simulator: $FLEET_EXE ${args[*]}"
rc=0
"$FLEET_EXE" "${args[@]}" </dev/null &
SIM_PID=$!
wait "$SIM_PID" || rc=$?
SIM_PID=""

if [ "$WANT_GW" = 1 ] && grep -q 'panicked' "$RUN/ironic-edge.log" 2>/dev/null; then
  log "WARNING: the gateway logged panics:"
  grep -m5 'panicked' "$RUN/ironic-edge.log" >&2 || true
fi
[ "$rc" = 0 ] && FAILED=0
exit "$rc"
}
