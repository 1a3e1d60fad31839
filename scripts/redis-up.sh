#!/usr/bin/env bash
# redis-up.sh - a local redis-server for `make run`: 127.0.0.1:$REDIS_PORT, no
# persistence (no RDB, no AOF), pid file + log + config under the run folder.
# Idempotent: a Redis we started that still runs is kept; a Redis somebody else runs
# on that port (e.g. Debian's redis-server service) is used as is, with a note, and
# redis-down.sh will not touch it.
#
# Usage: redis-up.sh [--port P] [--run-dir DIR]
# Environment: REDIS_PORT (6379), REDIS_RUN_DIR (<project>/.run/redis-$PORT),
#              REDIS_SERVER (redis-server), REDIS_MAXMEMORY (256mb)
# stdout: one line, redis://127.0.0.1:PORT/0
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
PORT="${REDIS_PORT:-6379}"
RUN_DIR_ARG=""
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --run-dir) RUN_DIR_ARG="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
RUN_DIR="${RUN_DIR_ARG:-${REDIS_RUN_DIR:-$PROJECT_DIR/.run/redis-$PORT}}"
PIDFILE="$RUN_DIR/redis.pid"
SERVER="${REDIS_SERVER:-redis-server}"
URL="redis://127.0.0.1:$PORT/0"

log() { echo "[redis-up] $*" >&2; }
proc_state() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo X; return; }; s=${s##*) }; echo "${s%% *}"; }
alive() { local st; st=$(proc_state "$1"); [ "$st" != X ] && [ "$st" != Z ]; }
# PING over a raw socket (no redis-cli needed)
ping() {
  { exec 8<>"/dev/tcp/127.0.0.1/$PORT"; } 2>/dev/null || return 1
  printf 'PING\r\n' >&8
  local line=""
  read -r -t 2 line <&8 || true
  exec 8>&-
  [ "${line%$'\r'}" = "+PONG" ]
}

command -v "$SERVER" >/dev/null || { log "$SERVER not found (Debian: apt-get install redis-server)"; exit 1; }

if [ -f "$PIDFILE" ]; then
  pid=$(cat "$PIDFILE")
  if alive "$pid" && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q redis; then
    if ping; then log "already running (PID $pid, $URL)"; echo "$URL"; exit 0; fi
    log "PID $pid runs but does not answer PING on port $PORT"; exit 1
  fi
  rm -f "$PIDFILE"
fi
if ping; then
  log "a Redis not started by this script already answers on 127.0.0.1:$PORT; using it (redis-down.sh will not stop it)"
  echo "$URL"; exit 0
fi
if (exec 8<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  log "port $PORT is in use by something that is not Redis; set REDIS_PORT"; exit 1
fi

mkdir -p "$RUN_DIR"
cat > "$RUN_DIR/redis.conf" <<EOF
bind 127.0.0.1
port $PORT
protected-mode yes
daemonize no
dir $RUN_DIR
save ""
appendonly no
maxmemory ${REDIS_MAXMEMORY:-256mb}
maxmemory-policy allkeys-lru
databases 16
EOF
: > "$RUN_DIR/redis.log"
setsid "$SERVER" "$RUN_DIR/redis.conf" >>"$RUN_DIR/redis.log" 2>&1 </dev/null &
pid=$!
echo "$pid" > "$PIDFILE"
for _ in $(seq 1 100); do
  if ping; then log "started redis-server PID $pid on 127.0.0.1:$PORT (log $RUN_DIR/redis.log)"; echo "$URL"; exit 0; fi
  alive "$pid" || break
  sleep 0.1
done
log "redis-server did not come up; last log lines:"
tail -20 "$RUN_DIR/redis.log" >&2 || true
alive "$pid" && kill -TERM "$pid" 2>/dev/null
rm -f "$PIDFILE"
exit 1
