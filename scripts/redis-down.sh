#!/usr/bin/env bash
# redis-down.sh - stop the redis-server started by redis-up.sh, by the PID in its pid
# file (never by name). No pid file: nothing to do.
#
# Usage: redis-down.sh [--port P] [--run-dir DIR] [--purge]
# Environment: REDIS_PORT (6379), REDIS_RUN_DIR (<project>/.run/redis-$PORT)
set -uo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
PORT="${REDIS_PORT:-6379}"
RUN_DIR_ARG=""
PURGE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --run-dir) RUN_DIR_ARG="$2"; shift 2 ;;
    --purge) PURGE=1; shift ;;
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
RUN_DIR="${RUN_DIR_ARG:-${REDIS_RUN_DIR:-$PROJECT_DIR/.run/redis-$PORT}}"
PIDFILE="$RUN_DIR/redis.pid"

log() { echo "[redis-down] $*" >&2; }
proc_state() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo X; return; }; s=${s##*) }; echo "${s%% *}"; }
alive() { local st; st=$(proc_state "$1"); [ "$st" != X ] && [ "$st" != Z ]; }
wait_gone() { local _; for _ in $(seq 1 $(( $2 * 10 ))); do alive "$1" || return 0; sleep 0.1; done; return 1; }

if [ ! -f "$PIDFILE" ]; then
  log "no pid file at $PIDFILE; nothing to stop"
else
  pid=$(cat "$PIDFILE")
  if ! alive "$pid"; then
    log "PID $pid is not running"
  elif ! tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q redis; then
    log "PID $pid does not look like redis-server; not touching it"
  else
    kill -TERM "$pid" 2>/dev/null
    if wait_gone "$pid" 10; then
      log "stopped PID $pid"
    else
      log "PID $pid ignored SIGTERM for 10s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null
      wait_gone "$pid" 5 || log "PID $pid still there"
    fi
  fi
  rm -f "$PIDFILE"
fi
[ "$PURGE" = 1 ] && rm -rf "$RUN_DIR"
exit 0
