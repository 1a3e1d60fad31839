#!/usr/bin/env bash
# ironic-peer-up.sh - run the REAL OpenStack Ironic (single process: API + conductor,
# noauth, sqlite, fake-hardware) on 127.0.0.1 as a test peer / demo upstream for
# ironic-edge, optionally seeding nodes the agent endpoints accept.
#
# Usage: ironic-peer-up.sh [--port P] [--seed N] [--state STATE] [--ports-per-node K]
#                          [--unknown-macs M] [--seed-file FILE] [--run-dir DIR]
#                          [--public-url URL] [--require-tls true|false] [--keep-db]
#        ironic-peer-up.sh --install-only      # only make sure the venv exists
#        ironic-peer-up.sh --seed-only --port P --seed N [...]   # seed a running one
#
#   --port P            API port on 127.0.0.1 (default $IRONIC_PORT or 6385);
#                       0 = pick a free port (printed on stdout, see below)
#   --seed N            create N nodes (fake-hardware, deploy_interface=direct)
#                       with K ports each and bring them to STATE (default 0)
#   --state STATE       manageable (default) | available | enroll : nodes with
#                           driver_info.fast_track=true: lookup and heartbeat are
#                           allowed and heartbeats are record-only (repeatable);
#                       clean-wait : no fast track, nodes really sit in "clean wait";
#                           the FIRST heartbeat makes the conductor call the agent
#                           at callback_url and, with no agent there, the node
#                           goes to "clean failed";
#                       enroll-no-fasttrack : lookup refused (404), negative tests
#   --ports-per-node K  ports (MAC addresses 52:54:PP:II:II:II) per node (default 1)
#   --unknown-macs M    MACs listed as "unknown_macs" in the seed file (default 3)
#   --seed-file FILE    seeded nodes as JSON (default $RUN_DIR/seed.json); written
#                       on every start (empty "nodes" when --seed 0)
#   --run-dir DIR       config/db/log/pid folder (default: see IRONIC_RUN_DIR)
#   --public-url URL    the Ironic URL handed to agents by deploy/clean flows
#                       ([service_catalog]endpoint_override; set it to the gateway)
#   --require-tls B     [agent]require_tls (heartbeat callback_url must be https://)
#   --keep-db           keep an existing database (default: a fresh one per start);
#                       the seed file then lists only the newly seeded nodes
#   --install-only      create/update the venv and exit (prints the venv path)
#   --seed-only         do not start anything: seed the instance already running
#                       on --port (or --run-dir), write the seed file, exit
#
# stdout: exactly one line, the base URL (http://127.0.0.1:PORT), also written to
# $RUN_DIR/url; with --install-only the venv path. Progress goes to stderr.
#
# Environment (all optional):
#   IRONIC_PEER_VENV     the virtualenv  (default $IRONIC_PEER_DIR/venv when
#                        IRONIC_PEER_DIR is set, else ~/.cache/ironic-edge/venv,
#                        honouring XDG_CACHE_HOME): shared by make run, make test
#                        and CI, installed once
#   IRONIC_PEER_DIR      base folder (venv + run-$PORT), for compatibility
#   IRONIC_RUN_DIR       run folder (default $IRONIC_PEER_DIR/run-$PORT when
#                        IRONIC_PEER_DIR is set, else <project>/.run/ironic-$PORT)
#   IRONIC_PORT          API port (default 6385)
#   IRONIC_PUBLIC_URL    as --public-url (default http://127.0.0.1:$PORT)
#   IRONIC_REQUIRE_TLS   as --require-tls (default true, the upstream default)
#   IRONIC_RESTRICT_LOOKUP [api]restrict_lookup (default true, upstream default)
#   IRONIC_DEBUG         [DEFAULT]debug (default false)
#   IRONIC_START_TIMEOUT seconds to wait for the API (default 120)
#   IRONIC_SEED_WORKERS  parallel seeding requests (default 4)
#   PYTHON               interpreter >= 3.11 for the venv (default python3)
#   IRONIC_VERSION / IPA_VERSION   pins (default 39.0.0 / 13.0.0)
#   IRONIC_CONSTRAINTS   pip constraints file (default ironic-constraints.txt
#                        beside this script; "none" = resolve freely)
#
# Stop it with ironic-peer-down.sh (same --port / --run-dir / env).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
PORT="${IRONIC_PORT:-6385}"
SEED=0
STATE=manageable
PORTS_PER_NODE=1
UNKNOWN_MACS=3
KEEP_DB=0
SEED_FILE=""
RUN_DIR_ARG=""
PUBLIC_URL_ARG=""
REQUIRE_TLS="${IRONIC_REQUIRE_TLS:-true}"
MODE=start

while [ $# -gt 0 ]; do
  case "$1" in
    --seed) SEED="$2"; shift 2 ;;
    --state) STATE="$2"; shift 2 ;;
    --ports-per-node) PORTS_PER_NODE="$2"; shift 2 ;;
    --unknown-macs) UNKNOWN_MACS="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --keep-db) KEEP_DB=1; shift ;;
    --seed-file) SEED_FILE="$2"; shift 2 ;;
    --run-dir) RUN_DIR_ARG="$2"; shift 2 ;;
    --public-url) PUBLIC_URL_ARG="$2"; shift 2 ;;
    --require-tls) REQUIRE_TLS="$2"; shift 2 ;;
    --install-only) MODE=install; shift ;;
    --seed-only) MODE=seed; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$STATE" in
  manageable|available|enroll|clean-wait|enroll-no-fasttrack) ;;
  *) echo "bad --state $STATE" >&2; exit 2 ;;
esac
case "$REQUIRE_TLS" in
  true|false|True|False) ;;
  *) echo "bad --require-tls / IRONIC_REQUIRE_TLS $REQUIRE_TLS (true|false)" >&2; exit 2 ;;
esac
for v in "$SEED" "$PORTS_PER_NODE" "$UNKNOWN_MACS" "$PORT"; do
  case "$v" in ''|*[!0-9]*) echo "not a number: $v" >&2; exit 2 ;; esac
done

if [ -n "${IRONIC_PEER_VENV:-}" ]; then VENV="$IRONIC_PEER_VENV"
elif [ -n "${IRONIC_PEER_DIR:-}" ]; then VENV="$IRONIC_PEER_DIR/venv"
else VENV="${XDG_CACHE_HOME:-$HOME/.cache}/ironic-edge/venv"
fi
PY="${PYTHON:-python3}"
IRONIC_VERSION="${IRONIC_VERSION:-39.0.0}"
IPA_VERSION="${IPA_VERSION:-13.0.0}"
CONSTRAINTS="${IRONIC_CONSTRAINTS:-$SCRIPT_DIR/ironic-constraints.txt}"

log() { echo "[ironic-up] $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# --- 1. virtualenv with pinned versions (once; serialised by a lock) -------------
MARKER="$VENV/.ironic-edge-ready"
WANT="ironic==$IRONIC_VERSION ironic-python-agent==$IPA_VERSION"
have_pkg() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$1" "$2" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version(sys.argv[1]) == sys.argv[2] else 1)
EOF
}
venv_ready() {
  { [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$WANT" ] && [ -x "$VENV/bin/ironic" ]; } && return 0
  if have_pkg ironic "$IRONIC_VERSION" && have_pkg ironic-python-agent "$IPA_VERSION"; then
    echo "$WANT" > "$MARKER" 2>/dev/null || true
    return 0
  fi
  return 1
}
ensure_venv() {
  venv_ready && return 0
  mkdir -p "$(dirname "$VENV")"
  # several test processes may get here at once: one installs, the others wait
  exec 9>"$VENV.lock"
  if command -v flock >/dev/null; then flock 9; fi
  if venv_ready; then exec 9>&-; return 0; fi
  "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || { log "$PY is older than 3.11 (or missing); ironic $IRONIC_VERSION needs >= 3.11"; exit 1; }
  local t0 cargs=()
  t0=$(now)
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv $VENV"
    "$PY" -m venv "$VENV" >&2 || { log "'$PY -m venv' failed (Debian: apt-get install python3-venv)"; exit 1; }
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  if [ "$CONSTRAINTS" != none ] && [ -f "$CONSTRAINTS" ]; then
    if grep -qx "ironic==$IRONIC_VERSION" "$CONSTRAINTS" && grep -qx "ironic-python-agent==$IPA_VERSION" "$CONSTRAINTS"; then
      cargs=(-c "$CONSTRAINTS")
    else
      log "constraints file pins other ironic/IPA versions; resolving dependencies freely"
    fi
  fi
  log "installing $WANT ${cargs[*]:-} into $VENV"
  "$VENV/bin/python" -m pip install -q ${cargs[@]+"${cargs[@]}"} \
    "ironic==$IRONIC_VERSION" "ironic-python-agent==$IPA_VERSION" >&2
  echo "$WANT" > "$MARKER"
  log "venv install took $(since "$t0")s"
  exec 9>&-
}

if [ "$MODE" = install ]; then
  ensure_venv
  log "venv ready: $VENV"
  echo "$VENV"
  exit 0
fi

# --- 2. port and folders -------------------------------------------------------------
AUTO_PORT=0
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port_busy() { "$PY" -c "import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(0 if s.connect_ex(('127.0.0.1', $1)) == 0 else 1)"; }
if [ "$PORT" = 0 ]; then
  if [ "$MODE" = seed ] && [ -z "$RUN_DIR_ARG" ] && [ -z "${IRONIC_RUN_DIR:-}" ]; then
    log "--seed-only needs the instance's --port or --run-dir"; exit 2
  fi
  AUTO_PORT=1
  [ "$MODE" = start ] && PORT=$(free_port)
fi
set_paths() {
  if [ -n "$RUN_DIR_ARG" ]; then RUN_DIR="$RUN_DIR_ARG"
  elif [ -n "${IRONIC_RUN_DIR:-}" ]; then RUN_DIR="$IRONIC_RUN_DIR"
  elif [ -n "${IRONIC_PEER_DIR:-}" ]; then RUN_DIR="$IRONIC_PEER_DIR/run-$PORT"
  else RUN_DIR="$PROJECT_DIR/.run/ironic-$PORT"
  fi
  PIDFILE="$RUN_DIR/ironic.pid"
  CONF="$RUN_DIR/ironic.conf"
  SEED_OUT="${SEED_FILE:-$RUN_DIR/seed.json}"
}
set_paths

proc_state() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo X; return; }; s=${s##*) }; echo "${s%% *}"; }
alive() { local st; st=$(proc_state "$1"); [ "$st" != X ] && [ "$st" != Z ]; }

seed() { # url
  "$VENV/bin/python" "$SCRIPT_DIR/ironic-seed.py" --url "$1" --count "$SEED" --state "$STATE" \
    --ports-per-node "$PORTS_PER_NODE" --unknown-macs "$UNKNOWN_MACS" --out "$SEED_OUT"
}

if [ "$MODE" = seed ]; then
  ensure_venv
  if [ -f "$RUN_DIR/url" ]; then URL=$(cat "$RUN_DIR/url"); else URL="http://127.0.0.1:$PORT"; fi
  [ -f "$PIDFILE" ] && alive "$(cat "$PIDFILE")" || { log "no running instance in $RUN_DIR"; exit 1; }
  seed "$URL"
  echo "$URL"
  exit 0
fi

# --- 3. refuse to start twice ----------------------------------------------------------
if [ -f "$PIDFILE" ]; then
  old=$(cat "$PIDFILE")
  if alive "$old"; then
    log "already running with PID $old ($PIDFILE); run ironic-peer-down.sh first"; exit 1
  fi
  rm -f "$PIDFILE"
fi

ensure_venv
T_START=$(now)

# --- 4. start (auto port: retried on a port race) --------------------------------------
write_conf() {
  local public_url="${PUBLIC_URL_ARG:-${IRONIC_PUBLIC_URL:-http://127.0.0.1:$PORT}}"
  mkdir -p "$RUN_DIR/locks"
  cat > "$CONF" <<EOF
[DEFAULT]
auth_strategy = noauth
# single combined process (API + conductor), no message bus
rpc_transport = none
host = ironic-peer-$PORT
debug = ${IRONIC_DEBUG:-false}
log_file = $RUN_DIR/ironic.log
enabled_hardware_types = fake-hardware
enabled_boot_interfaces = fake
enabled_deploy_interfaces = direct,fake
default_deploy_interface = direct
enabled_power_interfaces = fake
enabled_management_interfaces = fake,noop
enabled_network_interfaces = noop
enabled_inspect_interfaces = fake,no-inspect
enabled_console_interfaces = fake,no-console
enabled_raid_interfaces = fake,no-raid
enabled_rescue_interfaces = fake,no-rescue
enabled_storage_interfaces = noop,fake
enabled_vendor_interfaces = fake,no-vendor
enabled_bios_interfaces = fake,no-bios
enabled_firmware_interfaces = fake,no-firmware

[api]
host_ip = 127.0.0.1
port = $PORT
restrict_lookup = ${IRONIC_RESTRICT_LOOKUP:-true}

[agent]
require_tls = $REQUIRE_TLS
# agent_verify_ca certificates stay inside the run folder (default: /var/lib/ironic)
certificates_path = $RUN_DIR/certificates

[database]
connection = sqlite:///$RUN_DIR/ironic.db

[oslo_concurrency]
lock_path = $RUN_DIR/locks

[dhcp]
dhcp_provider = none

[service_catalog]
# the Ironic URL that deploy/clean flows hand to the agent
auth_type = none
endpoint_override = $public_url
EOF
}

# A fresh database: a copy of an empty schema made once per venv (dbsync takes ~2 s).
TEMPLATE="$VENV/.ironic-edge-empty-$IRONIC_VERSION.db"
make_db() {
  if [ "$KEEP_DB" = 1 ] && [ -f "$RUN_DIR/ironic.db" ]; then return 0; fi
  rm -f "$RUN_DIR/ironic.db" "$RUN_DIR/ironic.db-journal" "$RUN_DIR/ironic.db-wal" "$RUN_DIR/ironic.db-shm"
  if [ -s "$TEMPLATE" ]; then
    cp "$TEMPLATE" "$RUN_DIR/ironic.db"
    return 0
  fi
  "$VENV/bin/ironic-dbsync" --config-file "$CONF" create_schema >"$RUN_DIR/dbsync.log" 2>&1 \
    || { log "dbsync failed:"; tail -20 "$RUN_DIR/dbsync.log" >&2; exit 1; }
  cp "$RUN_DIR/ironic.db" "$TEMPLATE.$$" 2>/dev/null && mv -f "$TEMPLATE.$$" "$TEMPLATE" 2>/dev/null || rm -f "$TEMPLATE.$$"
}

start_once() { # -> 0 up, 1 failed, 3 port race (auto port only)
  if port_busy "$PORT"; then
    [ "$AUTO_PORT" = 1 ] && return 3
    log "port $PORT on 127.0.0.1 is already in use (another Ironic? set --port / IRONIC_PORT)"; exit 1
  fi
  write_conf
  make_db
  : > "$RUN_DIR/ironic.stdout"
  rm -f "$RUN_DIR/url"
  # own session (process group = PID): immune to the caller's Ctrl-C, stopped by PID
  setsid "$VENV/bin/ironic" --config-file "$CONF" >>"$RUN_DIR/ironic.stdout" 2>&1 </dev/null &
  PID=$!
  echo "$PID" > "$PIDFILE"
  log "started ironic PID $PID on 127.0.0.1:$PORT (run dir $RUN_DIR)"
  URL="http://127.0.0.1:$PORT"
  # wait until the API answers and the conductor has registered fake-hardware
  if MAXVER=$("$VENV/bin/python" - "$URL" "$PID" "${IRONIC_START_TIMEOUT:-120}" <<'EOF'
import sys, time, requests
url, pid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.time() + timeout
while time.time() < end:
    try:
        with open(f'/proc/{pid}/stat') as f:
            if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
                sys.exit('ironic exited')
    except FileNotFoundError:
        sys.exit('ironic exited')
    try:
        r = requests.get(url + '/v1/drivers', timeout=2,
                         headers={'X-OpenStack-Ironic-API-Version': 'latest'})
        if r.ok and any(d['name'] == 'fake-hardware' for d in r.json()['drivers']):
            print(r.headers.get('X-OpenStack-Ironic-API-Maximum-Version'))
            sys.exit(0)
    except requests.RequestException:
        pass
    time.sleep(0.2)
sys.exit('timeout')
EOF
  ); then
    return 0
  fi
  if [ "$AUTO_PORT" = 1 ] && grep -q -i 'address already in use' "$RUN_DIR/ironic.log" "$RUN_DIR/ironic.stdout" 2>/dev/null; then
    "$SCRIPT_DIR/ironic-peer-down.sh" --run-dir "$RUN_DIR" >/dev/null 2>&1 || true
    return 3
  fi
  log "ironic did not come up; last log lines:"
  tail -30 "$RUN_DIR/ironic.log" >&2 || true
  tail -10 "$RUN_DIR/ironic.stdout" >&2 || true
  "$SCRIPT_DIR/ironic-peer-down.sh" --run-dir "$RUN_DIR" >&2 || true
  exit 1
}

tries=0
while :; do
  rc=0; start_once || rc=$?
  [ "$rc" = 0 ] && break
  tries=$((tries + 1))
  if [ "$rc" = 3 ] && [ "$tries" -lt 5 ]; then
    log "port $PORT was taken meanwhile; picking another"
    PORT=$(free_port); set_paths; continue
  fi
  exit 1
done
echo "$URL" > "$RUN_DIR/url"
log "API ready at $URL (max microversion $MAXVER) in $(since "$T_START")s"

# --- 5. seeding (the seed file is always written) ------------------------------------
seed "$URL"
echo "$URL"
