#!/usr/bin/env bash
# sentinel-up.sh - a Sentinel-managed Redis on loopback for the fleet bench (and by hand): a
# redis-server master, one replica of it and three redis-sentinel processes (quorum 2), each
# with its config, log and pid file in the run folder. No persistence (as redis-up.sh): a
# killed master must not come back before the sentinels promoted the replica, or the replica
# resyncs from an empty master (scripts/sentinel-ctl.sh restart-killed is run after the
# failover, as an operator would).
#
# Usage: sentinel-up.sh --ports "MASTER REPLICA S1 S2 S3" --run-dir DIR [--master-name NAME]
# Environment: SENTINEL_DOWN_AFTER_MS (3000): how long the master may be silent before a
#              sentinel calls it down (Redis's default 30000; lower here to compress time),
#              SENTINEL_FAILOVER_TIMEOUT_MS (10000), REDIS_MAXMEMORY (256mb)
# stdout: two lines: the master's URL (redis://127.0.0.1:PORT/0), then the sentinels
#         (127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3)
# Stop with scripts/sentinel-ctl.sh --run-dir DIR down (by the pid files, never by name).
set -euo pipefail

PORTS=""
RUN_DIR=""
NAME="ironic-edge"
while [ $# -gt 0 ]; do
  case "$1" in
    --ports) PORTS="$2"; shift 2 ;;
    --run-dir) RUN_DIR="$2"; shift 2 ;;
    --master-name) NAME="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
log() { echo "[sentinel-up] $*" >&2; }
die() { log "$*"; exit 1; }
[ -n "$RUN_DIR" ] || die "--run-dir is required"
read -r MASTER REPLICA S1 S2 S3 REST <<<"$PORTS" || true
for p in "$MASTER" "$REPLICA" "$S1" "$S2" "$S3"; do
  case "$p" in ''|*[!0-9]*) die "--ports needs five port numbers, got: $PORTS" ;; esac
done
[ -z "${REST:-}" ] || die "--ports needs five port numbers, got: $PORTS"
for c in redis-server redis-cli; do
  command -v "$c" >/dev/null || die "$c not found (Debian: apt-get install redis-server redis-tools)"
done
DOWN_AFTER="${SENTINEL_DOWN_AFTER_MS:-3000}"
FAILOVER_TIMEOUT="${SENTINEL_FAILOVER_TIMEOUT_MS:-10000}"

proc_state() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo X; return; }; s=${s##*) }; echo "${s%% *}"; }
alive() { local st; st=$(proc_state "$1"); [ "$st" != X ] && [ "$st" != Z ]; }
raw() { local port="$1"; shift; redis-cli -h 127.0.0.1 -p "$port" --raw "$@" 2>/dev/null; }

mkdir -p "$RUN_DIR"
# One data server: its config is written once and reused by sentinel-ctl.sh restart-killed
# (the sentinels rewrite a restarted master into a replica of the promoted one).
server_conf() { # name port [replicaof-port]
  local dir="$RUN_DIR/$1"
  mkdir -p "$dir"
  {
    echo "bind 127.0.0.1"
    echo "port $2"
    echo "protected-mode yes"
    echo "daemonize no"
    echo "dir $dir"
    echo "save \"\""
    echo "appendonly no"
    echo "maxmemory ${REDIS_MAXMEMORY:-256mb}"
    echo "maxmemory-policy allkeys-lru"
    echo "replica-announce-ip 127.0.0.1"
    if [ -n "${3:-}" ]; then echo "replicaof 127.0.0.1 $3"; fi
  } > "$dir/redis.conf"
}
start_server() { # name port
  local dir="$RUN_DIR/$1"
  setsid redis-server "$dir/redis.conf" >>"$dir/redis.log" 2>&1 </dev/null &
  echo $! > "$dir/redis.pid"
  local _
  for _ in $(seq 1 100); do
    [ "$(raw "$2" PING)" = PONG ] && return 0
    alive "$(cat "$dir/redis.pid")" || break
    sleep 0.1
  done
  tail -20 "$dir/redis.log" >&2 || true
  die "redis-server $1 did not come up on port $2"
}
start_sentinel() { # name port
  local dir="$RUN_DIR/$1"
  mkdir -p "$dir"
  # The sentinel rewrites its own config (the peers it found, the current master): writable.
  cat > "$dir/sentinel.conf" <<EOF
bind 127.0.0.1
port $2
daemonize no
dir $dir
sentinel announce-ip 127.0.0.1
sentinel monitor $NAME 127.0.0.1 $MASTER 2
sentinel down-after-milliseconds $NAME $DOWN_AFTER
sentinel failover-timeout $NAME $FAILOVER_TIMEOUT
sentinel parallel-syncs $NAME 1
EOF
  setsid redis-server "$dir/sentinel.conf" --sentinel >>"$dir/sentinel.log" 2>&1 </dev/null &
  echo $! > "$dir/sentinel.pid"
  local _
  for _ in $(seq 1 100); do
    [ "$(raw "$2" PING)" = PONG ] && return 0
    alive "$(cat "$dir/sentinel.pid")" || break
    sleep 0.1
  done
  tail -20 "$dir/sentinel.log" >&2 || true
  die "redis-sentinel $1 did not come up on port $2"
}

server_conf master "$MASTER"
server_conf replica "$REPLICA" "$MASTER"
start_server master "$MASTER"
start_server replica "$REPLICA"
for _ in $(seq 1 100); do
  raw "$REPLICA" INFO replication | grep -q '^master_link_status:up' && break
  sleep 0.1
done
raw "$REPLICA" INFO replication | grep -q '^master_link_status:up' \
  || die "the replica on $REPLICA does not replicate the master on $MASTER"
i=0
for p in "$S1" "$S2" "$S3"; do
  i=$((i + 1))
  start_sentinel "sentinel-$i" "$p"
done
# Ready when every sentinel knows the replica and both other sentinels (a failover needs the
# quorum to agree, and a majority of them to elect the leader that promotes the replica).
ready=0
for _ in $(seq 1 300); do
  ok=1
  for p in "$S1" "$S2" "$S3"; do
    info=$(raw "$p" SENTINEL master "$NAME" | paste -sd' ' -)
    case " $info " in *" num-slaves 1 "*) ;; *) ok=0 ;; esac
    case " $info " in *" num-other-sentinels 2 "*) ;; *) ok=0 ;; esac
  done
  if [ "$ok" = 1 ]; then ready=1; break; fi
  sleep 0.1
done
[ "$ready" = 1 ] || die "the sentinels did not find each other and the replica within 30 s"
log "master 127.0.0.1:$MASTER, replica 127.0.0.1:$REPLICA, sentinels $S1 $S2 $S3 (quorum 2, \
down after $DOWN_AFTER ms, master name $NAME, run folder $RUN_DIR)"
# what sentinel-ctl.sh needs
{
  echo "NAME=$NAME"
  echo "MASTER_PORT=$MASTER"
  echo "REPLICA_PORT=$REPLICA"
  echo "SENTINEL_PORTS=\"$S1 $S2 $S3\""
} > "$RUN_DIR/topology.env"
echo "redis://127.0.0.1:$MASTER/0"
echo "127.0.0.1:$S1,127.0.0.1:$S2,127.0.0.1:$S3"
