#!/usr/bin/env bash
# sentinel-ctl.sh - acts on the topology scripts/sentinel-up.sh started (by its pid files,
# never by name).
#
# Usage: sentinel-ctl.sh --run-dir DIR COMMAND
#   master          print the master's port as the sentinels see it (a majority must agree)
#   kill-master     kill -9 the current master (the one the sentinels name); prints its port
#                   and remembers which server it was
#   wait-failover   wait (at most 60 s) until a majority of sentinels names another master
#                   than the one killed; prints the new master's port
#   restart-killed  start the killed server again with its config (the sentinels turn it
#                   into a replica of the promoted one)
#   down            stop every process of the topology (SIGTERM, then SIGKILL)
set -uo pipefail

RUN_DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --run-dir) RUN_DIR="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) break ;;
  esac
done
CMD="${1:-}"
log() { echo "[sentinel-ctl] $*" >&2; }
die() { log "$*"; exit 1; }
[ -n "$RUN_DIR" ] && [ -f "$RUN_DIR/topology.env" ] || die "no topology in ${RUN_DIR:-?} (sentinel-up.sh)"
# shellcheck disable=SC1091
. "$RUN_DIR/topology.env"
proc_state() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo X; return; }; s=${s##*) }; echo "${s%% *}"; }
alive() { local st; st=$(proc_state "$1"); [ "$st" != X ] && [ "$st" != Z ]; }
raw() { local port="$1"; shift; timeout 3 redis-cli -h 127.0.0.1 -p "$port" --raw "$@" 2>/dev/null; }

# The master's port a majority of the sentinels agree on (empty if none).
master_port() {
  local p votes="" port
  for p in $SENTINEL_PORTS; do
    port=$(raw "$p" SENTINEL get-master-addr-by-name "$NAME" | sed -n 2p)
    [ -n "$port" ] && votes="$votes $port"
  done
  # shellcheck disable=SC2086
  printf '%s\n' $votes | sort | uniq -c | sort -rn | awk 'NR == 1 && $1 >= 2 { print $2 }'
}
server_of_port() {
  case "$1" in
    "$MASTER_PORT") echo master ;;
    "$REPLICA_PORT") echo replica ;;
    *) return 1 ;;
  esac
}
stop_pidfile() { # file
  [ -f "$1" ] || return 0
  local pid _; pid=$(cat "$1")
  if alive "$pid" && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q redis; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$1"
}

case "$CMD" in
  master)
    p=$(master_port); [ -n "$p" ] || die "no master a majority of sentinels agrees on"; echo "$p" ;;
  kill-master)
    p=$(master_port); [ -n "$p" ] || die "no master a majority of sentinels agrees on"
    name=$(server_of_port "$p") || die "the sentinels name port $p, not one of ours"
    pid=$(cat "$RUN_DIR/$name/redis.pid" 2>/dev/null) || die "no pid file for $name"
    alive "$pid" || die "$name (PID $pid) is not running"
    kill -KILL "$pid"
    echo "$name $p" > "$RUN_DIR/killed"
    log "killed -9 the master: $name, PID $pid, port $p"
    echo "$p" ;;
  wait-failover)
    [ -f "$RUN_DIR/killed" ] || die "nothing was killed"
    read -r _ old < "$RUN_DIR/killed"
    for _ in $(seq 1 600); do
      p=$(master_port)
      if [ -n "$p" ] && [ "$p" != "$old" ]; then echo "$p"; exit 0; fi
      sleep 0.1
    done
    die "no failover within 60 s (the sentinels still name port $old)" ;;
  restart-killed)
    [ -f "$RUN_DIR/killed" ] || die "nothing was killed"
    read -r name port < "$RUN_DIR/killed"
    dir="$RUN_DIR/$name"
    setsid redis-server "$dir/redis.conf" >>"$dir/redis.log" 2>&1 </dev/null &
    echo $! > "$dir/redis.pid"
    for _ in $(seq 1 100); do
      [ "$(raw "$port" PING)" = PONG ] && { rm -f "$RUN_DIR/killed"; log "restarted $name on port $port"; exit 0; }
      sleep 0.1
    done
    die "$name did not come back on port $port" ;;
  down)
    for f in "$RUN_DIR"/sentinel-*/sentinel.pid "$RUN_DIR"/master/redis.pid "$RUN_DIR"/replica/redis.pid; do
      stop_pidfile "$f"
    done ;;
  *) die "usage: sentinel-ctl.sh --run-dir DIR master|kill-master|wait-failover|restart-killed|down" ;;
esac
