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
#                              Ironic's process group (connections hang); redis-master-kill
#                              (needs FLEET_REDIS=sentinel): kill -9 of the Redis master where
#                              Ironic would stop, the killed server restarted FLEET_OUTAGE s later
#                              once the sentinels promoted the replica (it comes back as a
#                              replica); each gateway's /metrics sampled every 0.5 s for the
#                              recovery time; none: no outage
#   FLEET_GATEWAYS (1)         gateway processes over the one Redis (same prefix, same sealing
#                              key); agent i talks to gateway i % N only (as through DNS or a VIP)
#   FLEET_REDIS (plain)        plain: one redis-server (scripts/redis-up.sh); sentinel: master +
#                              replica + three redis-sentinel, quorum 2 (scripts/sentinel-up.sh),
#                              the gateways configured with redis.sentinel (FLEET_SENTINEL_CONF=0,
#                              or a gateway build without it: redis.url of the first master only)
#   FLEET_SENTINEL_DOWN_AFTER_MS (3000)  the sentinels' down-after-milliseconds
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
GATEWAYS="${FLEET_GATEWAYS:-1}"
REDIS_KIND="${FLEET_REDIS:-plain}"
SENTINEL_CONF="${FLEET_SENTINEL_CONF:-auto}"

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
case "$OUTAGE_MODE" in restart|freeze|redis-master-kill|none) ;; *) die "FLEET_OUTAGE_MODE: restart|freeze|redis-master-kill|none" ;; esac
case "$GATEWAYS" in [1-9]) ;; *) die "FLEET_GATEWAYS: 1..9" ;; esac
case "$REDIS_KIND" in plain|sentinel) ;; *) die "FLEET_REDIS: plain|sentinel" ;; esac
case "$SENTINEL_CONF" in auto|0|1) ;; *) die "FLEET_SENTINEL_CONF: auto|0|1" ;; esac
if [ "$OUTAGE_MODE" = redis-master-kill ] && [ "$REDIS_KIND" != sentinel ]; then
  die "FLEET_OUTAGE_MODE=redis-master-kill needs FLEET_REDIS=sentinel"
fi
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
  if [ -f "$RUN/ironic-ctl.sh" ]; then
    bash "$RUN/ironic-ctl.sh" gateway-stop || log "could not stop the gateways (pid files $RUN/gateway.pid, $RUN/gw*/gateway.pid)"
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
  if [ "$REDIS_STARTED" = 1 ] && [ "$REDIS_KIND" = sentinel ]; then
    bash "$SCRIPT_DIR/sentinel-ctl.sh" --run-dir "$RUN/redis" down >/dev/null 2>&1 \
      || log "sentinel-ctl.sh down failed (run dir $RUN/redis)"
    log "stopped the Redis master, replica and sentinels"
  elif [ "$REDIS_STARTED" = 1 ]; then
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
# Gateway i (1..N) listens on GW_PORTS[i-1], its ops on OPS_PORTS[i-1]; the sentinel
# topology takes 5 ports (master, replica, three sentinels).
REDIS_PORTS_N=1
[ "$REDIS_KIND" = sentinel ] && REDIS_PORTS_N=5
read -r -a PORTS <<<"$(pick_ports $(( 2 + 2 * GATEWAYS + REDIS_PORTS_N )))"
IRONIC_PORT=${PORTS[0]}
RELAY_PORT=${PORTS[1]}
GW_PORTS=("${PORTS[@]:2:$GATEWAYS}")
OPS_PORTS=("${PORTS[@]:$(( 2 + GATEWAYS )):$GATEWAYS}")
REDIS_PORT_LIST="${PORTS[*]:$(( 2 + 2 * GATEWAYS ))}"
REDIS_PORT=${PORTS[$(( 2 + 2 * GATEWAYS ))]}
GW_URLS=$(printf 'http://127.0.0.1:%s,' "${GW_PORTS[@]}"); GW_URLS=${GW_URLS%,}
OPS_URLS=$(printf 'http://127.0.0.1:%s,' "${OPS_PORTS[@]}"); OPS_URLS=${OPS_URLS%,}
log "run folder $RUN; ports: redis $REDIS_PORT_LIST, ironic $IRONIC_PORT, relay $RELAY_PORT, gateways ${GW_PORTS[*]}, ops ${OPS_PORTS[*]}"

# --- 3. Redis, Ironic (seeded once; the database is saved and restored by each reset) -----------
SENTINELS=""
if [ "$WANT_GW" = 1 ] && [ "$REDIS_KIND" = sentinel ]; then
  REDIS_STARTED=1
  TOPO=$(SENTINEL_DOWN_AFTER_MS="${FLEET_SENTINEL_DOWN_AFTER_MS:-3000}" \
    bash "$SCRIPT_DIR/sentinel-up.sh" --ports "$REDIS_PORT_LIST" --run-dir "$RUN/redis" \
      --master-name ironic-edge) || die "the Sentinel topology did not start"
  REDIS_URL=$(sed -n 1p <<<"$TOPO")
  SENTINELS=$(sed -n 2p <<<"$TOPO")
  log "redis: master $REDIS_URL, sentinels $SENTINELS"
elif [ "$WANT_GW" = 1 ]; then
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

# --- 4. the gateway configs (their upstream: the simulator's relay in front of Ironic) ----------
# Gateway 1 keeps the single-gateway layout ($RUN/ironic-edge.yaml, $RUN/gateway.pid,
# $RUN/ironic-edge.log); gateway i > 1 has its own folder $RUN/gw$i (config, pid file, log,
# upgrade socket). Every gateway uses the same key prefix and sealing key: one shared state, and
# a heartbeat one of them kept can be relayed by any other.
CONF="$RUN/ironic-edge.yaml"
gw_dir() { if [ "$1" = 1 ]; then echo "$RUN"; else echo "$RUN/gw$1"; fi; }
SENTINEL_USED=0
if [ "$WANT_GW" = 1 ]; then
  VENV_PY=$(venv_python)
  [ -x "$VENV_PY" ] || die "no venv python at $VENV_PY"
  write_conf() { # index [extra bench_conf.py args...]
    local i="$1"; shift
    local dir; dir=$(gw_dir "$i")
    mkdir -p "$dir"
    local key_args=(--seal-key)
    [ "$i" = 1 ] || key_args=(--set "seal_key_file=$RUN/seal.key")
    "$VENV_PY" "$SCRIPT_DIR/bench_conf.py" "$PROJECT_DIR/conf/ironic-edge.yaml" "$dir/ironic-edge.yaml" \
      --by fleet-bench.sh --run "$dir" --listen "${GW_PORTS[$((i - 1))]}" --ops "${OPS_PORTS[$((i - 1))]}" \
      --upstream "http://127.0.0.1:$RELAY_PORT" --redis "$REDIS_URL" \
      --prefix "ironic-edge-fleet-$$:" "${key_args[@]}" \
      ${FLEET_GATEWAY_THREADS:+--threads "$FLEET_GATEWAY_THREADS"} "$@"
  }
  SENTINEL_ARGS=()
  if [ -n "$SENTINELS" ] && [ "$SENTINEL_CONF" != 0 ]; then
    nodes=$(sed 's/[^,][^,]*/"&"/g' <<<"$SENTINELS")
    SENTINEL_ARGS=(--set "redis.sentinel={\"master_name\": \"ironic-edge\", \"nodes\": [$nodes]}")
    write_conf 1 "${SENTINEL_ARGS[@]}" >/dev/null || die "could not write $CONF"
    if "$BIN" -t -c "$CONF" >"$RUN/ironic-edge.check.log" 2>&1; then
      SENTINEL_USED=1
    elif [ "$SENTINEL_CONF" = 1 ]; then
      cat "$RUN/ironic-edge.check.log" >&2; die "config check of $CONF (with redis.sentinel) failed"
    else
      log "WARNING: this gateway build refuses redis.sentinel ($(grep -m1 -o 'unknown field[^,]*' "$RUN/ironic-edge.check.log" || echo 'config check failed')):"
      log "WARNING: the gateways get redis.url of the first master only and will not follow a failover"
      SENTINEL_ARGS=()
    fi
  fi
  for i in $(seq 1 "$GATEWAYS"); do
    dir=$(gw_dir "$i")
    SUMMARY=$(write_conf "$i" "${SENTINEL_ARGS[@]}") || die "could not write $dir/ironic-edge.yaml"
    "$BIN" -t -c "$dir/ironic-edge.yaml" >"$dir/ironic-edge.check.log" 2>&1 \
      || { cat "$dir/ironic-edge.check.log" >&2; die "config check of $dir/ironic-edge.yaml failed"; }
  done
  log "gateway config ($GATEWAYS gateway(s), Redis $REDIS_KIND$([ "$SENTINEL_USED" = 1 ] && echo ', redis.sentinel')): $SUMMARY"
fi

# Control script for the simulator's reset and outage commands ($FLEET_TARGET is set by it):
#   reset        stop the gateway; Ironic restarted on the freshly seeded database; the gateway
#                started again (a fresh process) when FLEET_TARGET=gateway
#   stop|start   Ironic (ironic-peer-down.sh / ironic-peer-up.sh --keep-db)
#   freeze|thaw  SIGSTOP / SIGCONT of Ironic's process group (ironic-peer-up.sh starts it with
#                setsid: the group id is its PID)
#   gateway-start|gateway-stop   the gateways, by their pid files ($RUN/gateway.pid, $RUN/gw*/)
#   redis-kill   kill -9 the Redis master the sentinels name (nothing for FLEET_TARGET=direct:
#                its agents do not use Redis)
#   redis-restart  wait until the sentinels promoted another master, then start the killed
#                server again (it rejoins as a replica)
CTL="$RUN/ironic-ctl.sh"
cat > "$CTL" <<EOF
#!/usr/bin/env bash
# generated by scripts/fleet-bench.sh
set -euo pipefail
export OS_API__RAMDISK_HEARTBEAT_TIMEOUT=$HB_TIMEOUT
DOWN="$SCRIPT_DIR/ironic-peer-down.sh"
UP="$SCRIPT_DIR/ironic-peer-up.sh"
IRUN="$IRUN"
GATEWAYS=$GATEWAYS
SENTINEL_CTL="bash $SCRIPT_DIR/sentinel-ctl.sh --run-dir $RUN/redis"
gw_dir() { if [ "\$1" = 1 ]; then echo "$RUN"; else echo "$RUN/gw\$1"; fi; }
OPS_PORTS=(${OPS_PORTS[*]})
proc_state() { local s; s=\$(cat "/proc/\$1/stat" 2>/dev/null) || { echo X; return; }; s=\${s##*) }; echo "\${s%% *}"; }
alive() { local st; st=\$(proc_state "\$1"); [ "\$st" != X ] && [ "\$st" != Z ]; }
start() { bash "\$UP" --port $IRONIC_PORT --run-dir "\$IRUN" --keep-db --seed-file "\$IRUN/restart-seed.json" >/dev/null; }
stop() { bash "\$DOWN" --run-dir "\$IRUN" >/dev/null; }
pgid() { cat "\$IRUN/ironic.pid"; }
gateway_stop_one() {
  local pidfile; pidfile="\$(gw_dir "\$1")/gateway.pid"
  [ -f "\$pidfile" ] || return 0
  local pid; pid=\$(cat "\$pidfile")
  if alive "\$pid" && tr '\0' ' ' < "/proc/\$pid/cmdline" 2>/dev/null | grep -q ironic-edge; then
    kill -TERM "\$pid" 2>/dev/null || true
    for _ in \$(seq 1 40); do alive "\$pid" || break; sleep 0.25; done
    if alive "\$pid"; then kill -KILL "\$pid" 2>/dev/null || true; fi
    echo "[fleet] stopped gateway #\$1 PID \$pid" >&2
  fi
  rm -f "\$pidfile"
}
gateway_stop() {
  local i
  for i in \$(seq 1 "\$GATEWAYS"); do gateway_stop_one "\$i"; done
}
gateway_start_one() {
  local dir; dir=\$(gw_dir "\$1")
  local ops="http://127.0.0.1:\${OPS_PORTS[\$((\$1 - 1))]}"
  RUST_LOG="$GW_LOG_LEVEL" "$BIN" -c "\$dir/ironic-edge.yaml" >>"\$dir/ironic-edge.log" 2>&1 </dev/null &
  local pid=\$!
  echo "\$pid" > "\$dir/gateway.pid"
  for _ in \$(seq 1 200); do
    alive "\$pid" || break
    if python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "\$ops/status" 2>/dev/null; then
      echo "[fleet] started gateway #\$1 PID \$pid (ops \$ops, log \$dir/ironic-edge.log)" >&2
      return 0
    fi
    sleep 0.1
  done
  tail -30 "\$dir/ironic-edge.log" >&2 || true
  echo "[fleet] gateway #\$1 did not start" >&2
  exit 1
}
gateway_start() {
  gateway_stop
  local i
  for i in \$(seq 1 "\$GATEWAYS"); do gateway_start_one "\$i"; done
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
  redis-kill)
    if [ "\${FLEET_TARGET:-}" = direct ]; then echo "[fleet] direct run: the Redis master is left alone" >&2; exit 0; fi
    \$SENTINEL_CTL kill-master >/dev/null ;;
  redis-restart)
    if [ "\${FLEET_TARGET:-}" = direct ]; then exit 0; fi
    new=\$(\$SENTINEL_CTL wait-failover)
    echo "[fleet] the sentinels promoted the server on port \$new" >&2
    \$SENTINEL_CTL restart-killed ;;
  *) echo "usage: \$0 reset|stop|start|freeze|thaw|gateway-start|gateway-stop|redis-kill|redis-restart" >&2; exit 2 ;;
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
      --label "ironic-edge $COMMIT; Ironic 39.0.0 (1 process, sqlite, $NODES manageable fast-track nodes, [api]ramdisk_heartbeat_timeout $HB_TIMEOUT); outage mode $OUTAGE_MODE; $GATEWAYS gateway(s) over $(
        if [ "$REDIS_KIND" = sentinel ]; then
          echo "a Sentinel-managed Redis (master + replica + 3 sentinels, quorum 2, down-after ${FLEET_SENTINEL_DOWN_AFTER_MS:-3000} ms; gateways $([ "$SENTINEL_USED" = 1 ] && echo 'with redis.sentinel' || echo 'WITHOUT redis.sentinel: redis.url of the first master'))"
        else echo "one redis-server"; fi)")
if [ "$WANT_GW" = 1 ]; then args+=(--gateway "$GW_URLS" --gateway-ops "$OPS_URLS"); fi
case "$OUTAGE_MODE" in
  restart) args+=(--outage-stop-cmd "bash $CTL stop" --outage-start-cmd "bash $CTL start") ;;
  freeze) args+=(--outage-stop-cmd "bash $CTL freeze" --outage-start-cmd "bash $CTL thaw") ;;
  redis-master-kill) args+=(--outage-stop-cmd "bash $CTL redis-kill" --outage-start-cmd "bash $CTL redis-restart") ;;
esac
# shellcheck disable=SC2206
[ -n "${FLEET_EXTRA_ARGS:-}" ] && args+=(${FLEET_EXTRA_ARGS})
log "running the simulator: $FLEET_EXE ${args[*]}"
rc=0
"$FLEET_EXE" "${args[@]}" </dev/null &
SIM_PID=$!
wait "$SIM_PID" || rc=$?
SIM_PID=""

for i in $(seq 1 "$GATEWAYS"); do
  glog="$(gw_dir "$i")/ironic-edge.log"
  if [ "$WANT_GW" = 1 ] && grep -q 'panicked' "$glog" 2>/dev/null; then
    log "WARNING: gateway #$i logged panics:"
    grep -m5 'panicked' "$glog" >&2 || true
  fi
done
[ "$rc" = 0 ] && FAILED=0
exit "$rc"
}
