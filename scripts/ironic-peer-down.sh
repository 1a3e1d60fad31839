#!/usr/bin/env bash
# ironic-peer-down.sh - stop the Ironic started by ironic-peer-up.sh, by the PID in its
# pid file and that PID's own process group (ironic-peer-up.sh starts it with setsid,
# so its workers share the group), never by name.
#
# Usage: ironic-peer-down.sh [--port P | --run-dir DIR | --pid-file FILE] [--purge]
#   --purge   also delete the run folder (config, db, logs, seed.json)
# Environment: IRONIC_PORT (6385), IRONIC_RUN_DIR, IRONIC_PEER_DIR: the same
# defaults as ironic-peer-up.sh (<project>/.run/ironic-$PORT).
# Exit 0 when nothing of it is left running (also when it was not running).
set -uo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
PORT="${IRONIC_PORT:-6385}"
PIDFILE=""
RUN_DIR_ARG=""
PURGE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --run-dir) RUN_DIR_ARG="$2"; shift 2 ;;
    --pid-file) PIDFILE="$2"; shift 2 ;;
    --purge) PURGE=1; shift ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [ -n "$RUN_DIR_ARG" ]; then RUN_DIR="$RUN_DIR_ARG"
elif [ -n "${IRONIC_RUN_DIR:-}" ]; then RUN_DIR="$IRONIC_RUN_DIR"
elif [ -n "${IRONIC_PEER_DIR:-}" ]; then RUN_DIR="$IRONIC_PEER_DIR/run-$PORT"
else RUN_DIR="$PROJECT_DIR/.run/ironic-$PORT"
fi
PIDFILE="${PIDFILE:-$RUN_DIR/ironic.pid}"

log() { echo "[ironic-down] $*" >&2; }

# state letter of a PID from /proc (X = gone); a zombie (Z) counts as stopped
proc_state() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo X; return; }; s=${s##*) }; echo "${s%% *}"; }
alive() { local st; st=$(proc_state "$1"); [ "$st" != X ] && [ "$st" != Z ]; }
# live members of process group $1 (fields after "comm)": state ppid pgrp ...)
group_of() {
  local f s pid
  for f in /proc/[0-9]*/stat; do
    s=$(cat "$f" 2>/dev/null) || continue
    s=${s##*) }
    set -- $s
    if [ "${3:-}" = "$GROUP" ] && [ "${1:-}" != Z ]; then pid=${f#/proc/}; echo "${pid%/stat}"; fi
  done
}
wait_gone() { # pid seconds
  for _ in $(seq 1 $(( $2 * 4 ))); do alive "$1" || return 0; sleep 0.25; done
  return 1
}

finish() {
  rm -f "$PIDFILE"
  [ "$PURGE" = 1 ] && rm -rf "$RUN_DIR"
  exit "${1:-0}"
}

if [ ! -f "$PIDFILE" ]; then
  log "no pid file at $PIDFILE; nothing to stop"
  [ "$PURGE" = 1 ] && rm -rf "$RUN_DIR"
  exit 0
fi
PID=$(cat "$PIDFILE")
case "$PID" in ''|*[!0-9]*) log "bad pid file $PIDFILE"; finish 0 ;; esac
GROUP=$PID
if ! alive "$PID"; then
  log "PID $PID is not running"
elif ! tr '\0' ' ' < "/proc/$PID/cmdline" 2>/dev/null | grep -q ironic; then
  log "PID $PID does not look like ironic ($(tr '\0' ' ' < "/proc/$PID/cmdline")); not touching it"
  rm -f "$PIDFILE"
  exit 1
else
  kill -TERM "$PID" 2>/dev/null
  if wait_gone "$PID" 20; then
    log "stopped PID $PID"
  else
    log "PID $PID ignored SIGTERM for 20s; sending SIGKILL"
    kill -KILL "$PID" 2>/dev/null
    wait_gone "$PID" 5 || log "PID $PID still there"
  fi
fi
# workers left in its process group (only when the group leader was ours)
for k in $(group_of); do
  [ "$k" = "$PID" ] && continue
  tr '\0' ' ' < "/proc/$k/cmdline" 2>/dev/null | grep -q ironic || continue
  kill -TERM "$k" 2>/dev/null
  wait_gone "$k" 5 || { kill -KILL "$k" 2>/dev/null; wait_gone "$k" 5; }
  log "stopped leftover worker PID $k"
done
finish 0
