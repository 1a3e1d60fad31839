#!/usr/bin/env bash
# run-local.sh - what `make run` / `make stop` do: a local demo of ironic-edge.
#
# Usage: run-local.sh run       # deps + curl examples, then the gateway in the foreground
#        run-local.sh deps      # only Redis + Ironic (idempotent) and the curl examples
#        run-local.sh examples  # print the curl examples again
#        run-local.sh stop      # stop what `run` started, by pid files
#
# `deps` brings up, reusing what a previous run left running:
#   - redis-server on 127.0.0.1:$REDIS_PORT (scripts/redis-up.sh, no persistence)
#   - the real Ironic 39.0.0 on 127.0.0.1:$IRONIC_PORT (scripts/ironic-peer-up.sh),
#     seeded with $DEMO_NODES nodes in manageable fast-track state, $DEMO_PORTS MACs
#     each, and its public URL set to the gateway
# `run` then starts target/release/ironic-edge with a copy of conf/ironic-edge.yaml in .run/
# (ports changed where they differ from the shipped ones) that uses a sealing key made once
# in .run/seal.key, so that the relay and the replay of lost lookup answers are on.
# Ctrl-C stops the gateway only; `run-local.sh stop` stops everything.
#
# Environment: REDIS_PORT (6379), IRONIC_PORT (6385), GATEWAY_PORT (6380),
#   OPS_PORT (9380), DEMO_NODES (3), DEMO_PORTS (2), IRONIC_EDGE_CONF (a config
#   to use as is), IRONIC_EDGE_BIN (default $CARGO_TARGET_DIR or target, /release/ironic-edge),
#   IRONIC_EDGE_RUN_DIR (<project>/.run), and those of ironic-peer-up.sh (IRONIC_PEER_VENV, ...).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
RUN_DIR="${IRONIC_EDGE_RUN_DIR:-$PROJECT_DIR/.run}"
REDIS_PORT="${REDIS_PORT:-6379}"
IRONIC_PORT="${IRONIC_PORT:-6385}"
GATEWAY_PORT="${GATEWAY_PORT:-6380}"
OPS_PORT="${OPS_PORT:-9380}"
DEMO_NODES="${DEMO_NODES:-3}"
DEMO_PORTS="${DEMO_PORTS:-2}"
BIN="${IRONIC_EDGE_BIN:-${CARGO_TARGET_DIR:-$PROJECT_DIR/target}/release/ironic-edge}"
GW_PIDFILE="$RUN_DIR/ironic-edge-$GATEWAY_PORT.pid"
IRONIC_RUN="$RUN_DIR/ironic-$IRONIC_PORT"
REDIS_RUN="$RUN_DIR/redis-$REDIS_PORT"
SEED_FILE="$IRONIC_RUN/seed.json"
GW_URL="http://127.0.0.1:$GATEWAY_PORT"
OPS_URL="http://127.0.0.1:$OPS_PORT"
export IRONIC_RUN_DIR="$IRONIC_RUN" REDIS_RUN_DIR="$REDIS_RUN"

log() { echo "[run-local] $*" >&2; }
# proc_state, alive, venv_python
. "$SCRIPT_DIR/lib.sh"
pid_of() { # pidfile pattern -> pid if alive and its cmdline matches
  local p
  [ -f "$1" ] || return 1
  p=$(cat "$1")
  case "$p" in ''|*[!0-9]*) return 1 ;; esac
  alive "$p" || return 1
  if [ "$2" = ironic-edge ]; then   # the gateway: by its executable's name
    local exe
    exe=$(readlink "/proc/$p/exe" 2>/dev/null) || return 1
    exe=${exe% (deleted)}   # rebuilt since it started
    [ "${exe##*/}" = ironic-edge ] || return 1
  else
    tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q -- "$2" || return 1
  fi
  echo "$p"
}

gateway_conf() { # prints the config path to use, generating it
  if [ -n "${IRONIC_EDGE_CONF:-}" ]; then echo "$IRONIC_EDGE_CONF"; return; fi
  local src="$PROJECT_DIR/conf/ironic-edge.yaml"
  local out="$RUN_DIR/ironic-edge-$GATEWAY_PORT.yaml" key="$RUN_DIR/seal.key"
  mkdir -p "$RUN_DIR"
  if [ ! -s "$key" ]; then
    (umask 077; python3 -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())' > "$key")
  fi
  sed -e "s|^  seal_key_file: \"\"|  seal_key_file: \"$key\"|" \
      -e "s|\"127.0.0.1:6380\"|\"127.0.0.1:$GATEWAY_PORT\"|" \
      -e "s|\"127.0.0.1:9380\"|\"127.0.0.1:$OPS_PORT\"|" \
      -e "s|\"http://127.0.0.1:6385\"|\"http://127.0.0.1:$IRONIC_PORT\"|" \
      -e "s|\"redis://127.0.0.1:6379/0\"|\"redis://127.0.0.1:$REDIS_PORT/0\"|" \
      -e "s|^upgrade_sock: .*|upgrade_sock: $RUN_DIR/ironic-edge-$GATEWAY_PORT-upgrade.sock|" \
      -e "s|^pid_file: .*|pid_file: $RUN_DIR/ironic-edge-$GATEWAY_PORT.pingora.pid|" \
      -e "s|^error_log: .*|error_log: $RUN_DIR/ironic-edge-$GATEWAY_PORT.log|" \
      "$src" > "$out"
  for want in "127.0.0.1:$GATEWAY_PORT" "127.0.0.1:$OPS_PORT" "http://127.0.0.1:$IRONIC_PORT" "redis://127.0.0.1:$REDIS_PORT/0" "$key"; do
    grep -qF "\"$want\"" "$out" || { log "could not set $want in $out (conf/ironic-edge.yaml changed?)"; exit 1; }
  done
  echo "$out"
}

deps() {
  mkdir -p "$RUN_DIR"
  bash "$SCRIPT_DIR/redis-up.sh" --port "$REDIS_PORT" >/dev/null
  if pid=$(pid_of "$IRONIC_RUN/ironic.pid" ironic) && [ -s "$SEED_FILE" ]; then
    log "Ironic already running (PID $pid, http://127.0.0.1:$IRONIC_PORT), reusing it and $SEED_FILE"
  else
    IRONIC_PUBLIC_URL="${IRONIC_PUBLIC_URL:-$GW_URL}" \
      bash "$SCRIPT_DIR/ironic-peer-up.sh" --port "$IRONIC_PORT" --seed "$DEMO_NODES" \
        --state manageable --ports-per-node "$DEMO_PORTS" --unknown-macs 3 >/dev/null
  fi
}

examples() {
  local py
  py=$(venv_python)
  [ -s "$SEED_FILE" ] || { log "no seed file $SEED_FILE"; exit 1; }
  "$py" - "$SEED_FILE" "$GW_URL" "$OPS_URL" "$IRONIC_PORT" "$REDIS_PORT" <<'EOF'
import json, sys
seed_file, gw, ops, iport, rport = sys.argv[1:]
d = json.load(open(seed_file))
nodes, unknown = d['nodes'], d.get('unknown_macs') or ['52:54:fe:00:00:01']
V = "-H 'X-OpenStack-Ironic-API-Version: 1.62'"
print(f"""
==> ironic-edge demo
    gateway  {gw}   (upstream {d['ironic_url']}, redis redis://127.0.0.1:{rport}/0)
    ops      {ops}/status  {ops}/metrics
    seed     {seed_file}
    seeded nodes (manageable, fast track):""")
for n in nodes:
    print(f"      {n['uuid']}  {n['name']}  {','.join(n['macs'])}")
print(f"    unknown MACs (lookup -> 404): {', '.join(unknown)}")
def node(i):
    if nodes:
        return nodes[min(i, len(nodes) - 1)]
    return {'uuid': 'NODE_UUID', 'macs': ['52:54:00:00:00:00']}
n0, n1, n2 = node(0), node(1), node(2)
uuids = ' '.join(n['uuid'] for n in nodes) or 'NODE_UUID'
print(f"""
# API root through the gateway
curl -i {gw}/

# lookup of a seeded node (only the FIRST lookup of a node returns its real agent_token)
curl -i {V} '{gw}/v1/lookup?addresses={n0['macs'][0]}'

# lookup of an unknown MAC (404, then answered from the gateway's negative cache)
curl -i {V} '{gw}/v1/lookup?addresses={unknown[0]}'

# heartbeat of another node, with the token from its first lookup
TOKEN=$(curl -s {V} '{gw}/v1/lookup?addresses={n1['macs'][0]}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["config"]["agent_token"])')
curl -i -X POST {V} -H 'Content-Type: application/json' \\
  -d '{{"callback_url": "https://127.0.0.1:9999", "agent_token": "'"$TOKEN"'", "agent_version": "13.0.0"}}' \\
  {gw}/v1/heartbeat/{n1['uuid']}

# the real IPA client (lookup + 3 heartbeats) on a third node
scripts/ipa-client.py --url {gw} --seed-file {seed_file} --node {nodes.index(n2) if nodes else 0} --heartbeats 3

# tokens already handed out (lookups show "******", e.g. after a second `make run`)?
# power the nodes off: that starts a new agent session (a new token on the next lookup)
for u in {uuids}; do curl -s -o /dev/null -w "$u %{{http_code}}\\n" -X PUT -H 'X-OpenStack-Ironic-API-Version: latest' \\
  -H 'Content-Type: application/json' -d '{{"target": "power off"}}' http://127.0.0.1:{iport}/v1/nodes/$u/states/power; done

# metrics and readiness
curl -s {ops}/metrics
curl -s {ops}/status
""")
EOF
}

stop_gateway() {
  local pid
  if pid=$(pid_of "$GW_PIDFILE" ironic-edge); then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 120); do alive "$pid" || break; sleep 0.25; done
    if alive "$pid"; then log "gateway PID $pid still up after 30 s; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    log "stopped gateway PID $pid"
  else
    log "no gateway running from $GW_PIDFILE"
  fi
  rm -f "$GW_PIDFILE"
}

cmd="${1:-run}"
case "$cmd" in
  deps)
    deps; examples ;;
  examples)
    examples ;;
  run)
    if pid=$(pid_of "$GW_PIDFILE" ironic-edge); then
      log "the gateway already runs (PID $pid); 'make stop' first"; exit 1
    fi
    [ -x "$BIN" ] || { log "$BIN not found: run 'make build' (cargo build --release)"; exit 1; }
    deps
    CONF=$(gateway_conf)
    "$BIN" -t -c "$CONF" || { log "config check of $CONF failed"; exit 1; }
    examples
    log "starting $BIN -c $CONF in the foreground (Ctrl-C stops it; 'make stop' stops Redis and Ironic too)"
    echo "$$" > "$GW_PIDFILE"
    exec "$BIN" -c "$CONF" ;;
  stop)
    stop_gateway
    bash "$SCRIPT_DIR/ironic-peer-down.sh" --run-dir "$IRONIC_RUN" || true
    bash "$SCRIPT_DIR/redis-down.sh" --run-dir "$REDIS_RUN" || true ;;
  -h|--help|help)
    sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//' ;;
  *)
    echo "unknown command: $cmd (run|deps|examples|stop)" >&2; exit 2 ;;
esac
