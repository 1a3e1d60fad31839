# lib.sh - shared by the bench scripts (bench.sh, fleet-bench.sh, sync-cost.sh): process
# checks, free loopback ports and building a bench target. Sourced, never run.
# Needs: CARGO (cargo), python3.

# ports other developers' instances use on this machine (Redis, the gateway, Ironic, ops):
# never picked automatically
AVOID_PORTS="6379 6380 6385 9380"

# The state letter of a process (R, S, Z...), X if there is none.
proc_state() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo X; return; }; s=${s##*) }; echo "${s%% *}"; }
alive() { local st; st=$(proc_state "$1"); [ "$st" != X ] && [ "$st" != Z ]; }

# Distinct free loopback ports BELOW the ephemeral range (held together while chosen, so they
# differ): a port closed for an outage must still be free when its server starts again, and an
# outgoing connection could take an ephemeral one meanwhile.
pick_ports() { # count
  python3 - "$1" "$AVOID_PORTS" <<'PY'
import random, socket, sys
n, avoid = int(sys.argv[1]), {int(p) for p in sys.argv[2].split()}
try:
    low = int(open('/proc/sys/net/ipv4/ip_local_port_range').read().split()[0])
except Exception:
    low = 32768
hi = max(low, 12000)
socks, ports = [], []
for _ in range(10000):
    if len(ports) == n:
        break
    p = random.randrange(10000, hi)
    if p in avoid or p in ports:
        continue
    s = socket.socket()
    try:
        s.bind(('127.0.0.1', p))
    except OSError:
        s.close()
        continue
    socks.append(s)
    ports.append(p)
if len(ports) < n:
    sys.exit('no free ports')
print(' '.join(map(str, ports)))
PY
}

# Builds benches/<name>.rs (bench profile) and prints its executable; prints nothing (and
# shows the compiler's output on stderr) if it does not build.
build_bench() { # name
  local exe
  exe=$("${CARGO:-cargo}" bench --bench "$1" --no-run --message-format=json-render-diagnostics \
    | python3 -c '
import json, sys
exe = None
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == sys.argv[1] and m.get("executable"):
        exe = m["executable"]
print(exe or "")
' "$1") || true
  if [ -z "$exe" ] || [ ! -x "$exe" ]; then
    "${CARGO:-cargo}" bench --bench "$1" --no-run >&2 || true
    return 1
  fi
  echo "$exe"
}

# The Ironic venv's python (it has PyYAML), as scripts/ironic-peer-up.sh finds the venv.
venv_python() {
  if [ -n "${IRONIC_PEER_VENV:-}" ]; then echo "$IRONIC_PEER_VENV/bin/python"
  elif [ -n "${IRONIC_PEER_DIR:-}" ]; then echo "$IRONIC_PEER_DIR/venv/bin/python"
  else echo "${XDG_CACHE_HOME:-$HOME/.cache}/ironic-edge/venv/bin/python"
  fi
}
