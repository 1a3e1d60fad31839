#!/usr/bin/env python3
"""Seed a running (real) Ironic with fake-hardware nodes that the agent endpoints
(GET /v1/lookup, POST /v1/heartbeat/{node}) accept, and write them to a JSON file.

Run with the peer venv's python (scripts/ironic-peer-up.sh does it for you):

  ironic-seed.py --url http://127.0.0.1:6385 --count 3 [--state manageable]
                 [--ports-per-node 1] [--unknown-macs 3] --out seed.json

States:
  manageable (default) | available | enroll : driver_info.fast_track=true, so lookup
      and heartbeats are allowed and heartbeats are record-only (repeatable for ever);
  clean-wait : no fast track, the node really sits in "clean wait"; its first
      heartbeat makes the conductor call the agent back at callback_url (and, with no
      agent there, the node ends in "clean failed");
  enroll-no-fasttrack : nodes whose lookup is refused (404), for negative tests.

MACs are 52:54:PP:II:II:II (PP = port index, II = node index, counted over the
whole database so repeated seeding never reuses one). `unknown_macs` in the output
are 52:54:fe:00:00:NN, never seeded (as long as --ports-per-node <= 254).

Output: {"ironic_url", "state", "count", "max_version", "nodes": [{"uuid", "name",
"macs", "provision_state", "fast_track"}], "unknown_macs": [...]}
"""
import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

STATES = ('manageable', 'available', 'enroll', 'clean-wait', 'enroll-no-fasttrack')

ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
ap.add_argument('--url', required=True)
ap.add_argument('--count', type=int, default=1)
ap.add_argument('--state', default='manageable', choices=STATES)
ap.add_argument('--ports-per-node', type=int, default=1)
ap.add_argument('--unknown-macs', type=int, default=3)
ap.add_argument('--out', required=True)
ap.add_argument('--workers', type=int, default=int(os.environ.get('IRONIC_SEED_WORKERS', '4')))
o = ap.parse_args()
if not 1 <= o.ports_per_node <= 254:
    sys.exit('--ports-per-node must be in 1..254')
url, n, state, k = o.url.rstrip('/'), o.count, o.state, o.ports_per_node
tls = threading.local()


def session():
    if not hasattr(tls, 's'):
        tls.s = requests.Session()
        tls.s.headers.update({'X-OpenStack-Ironic-API-Version': 'latest',
                              'Content-Type': 'application/json'})
    return tls.s


def call(method, path, body=None, ok=(200, 201, 202, 204)):
    r = None
    for attempt in range(10):
        r = session().request(method, url + path, timeout=60,
                              data=json.dumps(body) if body is not None else None)
        if r.status_code in ok:
            return r.json() if r.content else None
        # 409 = node locked (retry state changes only), 5xx = sqlite busy
        if r.status_code not in ((409, 500, 503) if method == 'PUT' else (500, 503)):
            break
        time.sleep(0.2 * (attempt + 1))
    raise SystemExit(f'{method} {path} -> {r.status_code} {r.text}')


def list_nodes(fields):
    out, marker = [], None
    while True:
        page = call('GET', f'/v1/nodes?fields={fields}&limit=1000'
                    + (f'&marker={marker}' if marker else ''))['nodes']
        out += page
        if len(page) < 1000:
            return out
        marker = page[-1]['uuid']


def mac(port_index, i):
    return f'52:54:{port_index:02x}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}'


max_version = requests.get(url + '/', timeout=10).json()['default_version']['version']
start = len(list_nodes('uuid'))
fast = state not in ('clean-wait', 'enroll-no-fasttrack')
t0 = time.time()


def make(i):
    body = {'name': f'peer-node-{i:05d}', 'driver': 'fake-hardware', 'deploy_interface': 'direct',
            'properties': {'cpu_arch': 'x86_64', 'memory_mb': 4096, 'local_gb': 40}}
    if fast:
        body['driver_info'] = {'fast_track': True}
    if state == 'available':
        body['automated_clean'] = False
    node = call('POST', '/v1/nodes', body)
    macs = [mac(p, i) for p in range(k)]
    for m in macs:
        call('POST', '/v1/ports', {'node_uuid': node['uuid'], 'address': m})
    return {'uuid': node['uuid'], 'name': body['name'], 'macs': macs}


nodes = []
if n > 0:
    with ThreadPoolExecutor(o.workers) as pool:
        nodes = list(pool.map(make, range(start, start + n)))


def drive(verb, want):
    with ThreadPoolExecutor(o.workers) as pool:
        list(pool.map(lambda nd: call('PUT', f"/v1/nodes/{nd['uuid']}/states/provision",
                                      {'target': verb}), nodes))
    deadline = time.time() + 60 + n
    pending = {nd['uuid'] for nd in nodes}
    while pending and time.time() < deadline:
        time.sleep(0.5)
        for nd in list_nodes('uuid,provision_state,last_error'):
            if nd['uuid'] in pending:
                if nd['provision_state'] == want:
                    pending.discard(nd['uuid'])
                elif nd['provision_state'] in ('clean failed', 'enroll') and verb != 'manage':
                    raise SystemExit(f"node {nd['uuid']} went to {nd['provision_state']}: "
                                     f"{nd['last_error']}")
    if pending:
        raise SystemExit(f'{len(pending)} nodes did not reach {want!r} in time')


if nodes and state in ('manageable', 'available', 'clean-wait'):
    drive('manage', 'manageable')
if nodes and state == 'available':
    drive('provide', 'available')
if nodes and state == 'clean-wait':
    drive('provide', 'clean wait')
final = {nd['uuid']: nd['provision_state'] for nd in list_nodes('uuid,provision_state')}
for nd in nodes:
    nd['provision_state'] = final[nd['uuid']]
    nd['fast_track'] = fast
doc = {'ironic_url': url, 'state': state, 'count': len(nodes), 'max_version': max_version,
       'nodes': nodes, 'unknown_macs': [mac(0xfe, j + 1) for j in range(o.unknown_macs)]}
tmp = o.out + '.tmp'
with open(tmp, 'w') as f:
    json.dump(doc, f, indent=1)
os.replace(tmp, o.out)
print(f'[ironic-up] seeded {len(nodes)} nodes ({state}) in {time.time() - t0:.1f}s -> {o.out}',
      file=sys.stderr)
