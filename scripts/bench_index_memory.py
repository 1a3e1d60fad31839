#!/usr/bin/env python3
"""bench_index_memory.py - the index memory step of scripts/bench.sh: what N indexed nodes
cost the gateway (RSS) and Redis (bytes per node).

  bench_index_memory.py used-memory --redis-port P
      Prints Redis's INFO memory used_memory (before the indexing gateway starts).
  bench_index_memory.py measure --redis-port P --prefix PREFIX --nodes N --pid PID
                                --used-before BYTES --out DIR [--other-pid PID] [--label TEXT]
      Waits (at most 300 s) until the index under PREFIX is whole (a field per node in
      idx:v2:nodes, every MAC in idx:v2:macs, idx:v2:synced_at written), lets the round
      finish (2 s), then reads the gateway's VmRSS / VmHWM, MEMORY USAGE (SAMPLES 0) of the
      index keys and used_memory again; writes DIR/index_memory.{json,md} and prints the table.
"""
import argparse
import json
import os
import socket
import sys
import time


def cmd(port, *args):
    """One Redis command on a fresh connection; its reply (integer, string or None)."""
    with socket.create_connection(('127.0.0.1', port), timeout=10) as s:
        s.sendall(''.join([f'*{len(args)}\r\n'] +
                          [f'${len(a)}\r\n{a}\r\n' for a in map(str, args)]).encode())
        f = s.makefile('rb')
        line = f.readline().decode().rstrip('\r\n')
        kind, rest = line[:1], line[1:]
        if kind == ':':
            return int(rest)
        if kind == '$':
            return None if int(rest) < 0 else f.read(int(rest) + 2)[:-2].decode()
        if kind == '-':
            raise RuntimeError(f'redis: {rest}')
        return rest


def used_memory(port):
    info = cmd(port, 'INFO', 'memory')
    return int(next(l.split(':', 1)[1] for l in info.splitlines()
                    if l.startswith('used_memory:')))


def status_mib(pid, field):
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024
    return None


def measure(o):
    port, prefix, n = o.redis_port, o.prefix, o.nodes
    nodes_key, macs_key = prefix + 'idx:v2:nodes', prefix + 'idx:v2:macs'
    t0 = time.time()
    while True:
        if (cmd(port, 'HLEN', macs_key) >= n and cmd(port, 'HLEN', nodes_key) >= n
                and cmd(port, 'EXISTS', prefix + 'idx:v2:synced_at') == 1):
            break
        if time.time() - t0 > 300:
            sys.exit(f'the index of {n} nodes was not whole after 300 s')
        if not os.path.exists(f'/proc/{o.pid}'):
            sys.exit('the indexing gateway exited')
        time.sleep(0.2)
    took = time.time() - t0
    time.sleep(2)
    keys = [nodes_key, macs_key, prefix + 'idx:v2:synced_at', prefix + 'idx:sync_marks']
    used = {k[len(prefix):]: cmd(port, 'MEMORY', 'USAGE', k, 'SAMPLES', '0') or 0 for k in keys}
    delta = used_memory(port) - o.used_before
    r = {
        'label': o.label, 'nodes': n, 'ports_per_node': 1,
        'index_whole_after_s': round(took, 2),
        'gateway_rss_mib': status_mib(o.pid, 'VmRSS'),
        'gateway_peak_rss_mib': status_mib(o.pid, 'VmHWM'),
        'other_gateway_rss_mib': status_mib(o.other_pid, 'VmRSS') if o.other_pid else None,
        'redis_index_keys_bytes': used,
        'redis_index_bytes_per_node': sum(used.values()) / n,
        'redis_used_memory_delta_bytes_per_node': delta / n,
    }
    md = [f'| {n:,} indexed nodes (one port each; every node with an agent_url and a token) | |',
          '| --- | ---: |',
          f"| index whole, from the gateway ready (a full round from a fake listing) | {took:.1f} s |",
          f"| gateway RSS (VmRSS) / peak (VmHWM) | {r['gateway_rss_mib']:.1f} / "
          f"{r['gateway_peak_rss_mib']:.1f} MiB |"]
    if r['other_gateway_rss_mib'] is not None:
        md.append(f"| the load bench's gateway (20 nodes, after the load) RSS | "
                  f"{r['other_gateway_rss_mib']:.1f} MiB |")
    md += [f"| Redis bytes per node: the index keys (MEMORY USAGE) | "
           f"{r['redis_index_bytes_per_node']:.0f} |",
           f"| Redis bytes per node: used_memory delta | "
           f"{r['redis_used_memory_delta_bytes_per_node']:.0f} |"]
    text = '\n'.join(md) + '\n'
    os.makedirs(o.out, exist_ok=True)
    with open(os.path.join(o.out, 'index_memory.json'), 'w') as f:
        json.dump(r, f, indent=1)
    with open(os.path.join(o.out, 'index_memory.md'), 'w') as f:
        f.write((f'{o.label}\n\n' if o.label else '') + text)
    print('\n' + text)
    print(f"results: {os.path.join(o.out, 'index_memory.md')}")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest='cmd', required=True)
    u = sub.add_parser('used-memory')
    u.add_argument('--redis-port', type=int, required=True)
    m = sub.add_parser('measure')
    m.add_argument('--redis-port', type=int, required=True)
    m.add_argument('--prefix', required=True)
    m.add_argument('--nodes', type=int, required=True)
    m.add_argument('--pid', type=int, required=True)
    m.add_argument('--other-pid', type=int)
    m.add_argument('--used-before', type=int, required=True)
    m.add_argument('--out', required=True)
    m.add_argument('--label', default='')
    o = ap.parse_args()
    if o.cmd == 'used-memory':
        print(used_memory(o.redis_port))
    else:
        measure(o)


if __name__ == '__main__':
    sys.exit(main())
