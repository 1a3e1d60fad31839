#!/usr/bin/env python3
"""fake-ironic-index.py - just enough of the Ironic API for the gateway's node sync to index
N nodes quickly (scripts/bench.sh: the gateway's RSS and Redis bytes per node at 10,000
indexed nodes; the real Ironic takes minutes to enroll that many).

  fake-ironic-index.py --port P --nodes N [--ports-per-node K]

Serves, on 127.0.0.1:P (HTTP/1.1 keep-alive, every answer with a Date):
  GET /                      Ironic's root document (API 1.1 .. 1.99)
  GET /v1                    a minimal v1 document
  GET /v1/nodes              pages of N nodes (limit, marker = the last uuid; fields ignored):
                             uuid, name, provision_state manageable, driver_info fast_track,
                             maintenance, driver_internal_info with an agent_url and a masked
                             agent_secret_token (every node has an agent: the largest index
                             entry), target states null
  GET /v1/ports              pages of N*K ports (address 52:54:KK:II:II:II, node_uuid);
                             with sort_key (the sync's listing of new ports): none
  GET /v1/nodes/detail       none (the sync's listings of changed nodes)
  GET /v1/nodes/<ident>[/ports]
Anything else: Ironic's 404 JSON. Stops on SIGTERM/SIGINT.
"""
import argparse
import json
import signal
import sys
import threading
import uuid as uuidlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

ROOT = {
    'name': 'OpenStack Ironic API',
    'description': 'Ironic is an OpenStack project which enables the provision and '
                   'management of baremetal servers.',
    'default_version': {'id': 'v1', 'links': [], 'status': 'CURRENT',
                        'min_version': '1.1', 'version': '1.99'},
    'versions': [{'id': 'v1', 'links': [], 'status': 'CURRENT',
                  'min_version': '1.1', 'version': '1.99'}],
}


def build(n, k):
    nodes, ports = [], []
    for i in range(n):
        u = str(uuidlib.UUID(int=(0x1eed << 112) | i, version=4))
        nodes.append({
            'uuid': u,
            'name': f'index-node-{i:05d}',
            'provision_state': 'manageable',
            'driver_info': {'fast_track': True},
            'maintenance': False,
            'driver_internal_info': {
                'agent_url': f'https://10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:9999',
                'agent_secret_token': '******',
                'agent_version': '13.0.0',
                'agent_last_heartbeat': '2026-01-01T00:00:00.000000',
            },
            'target_power_state': None,
            'target_provision_state': None,
        })
        for p in range(k):
            ports.append({
                'uuid': str(uuidlib.UUID(int=(0xb0e7 << 112) | (i << 8) | p, version=4)),
                'address': f'52:54:{p:02x}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}',
                'node_uuid': u,
                'created_at': '2026-01-01T00:00:00+00:00',
                'updated_at': None,
            })
    return nodes, ports


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--port', type=int, required=True)
    ap.add_argument('--nodes', type=int, required=True)
    ap.add_argument('--ports-per-node', type=int, default=1)
    a = ap.parse_args()
    nodes, ports = build(a.nodes, a.ports_per_node)
    by_ident = {n['uuid']: n for n in nodes}
    by_ident.update({n['name']: n for n in nodes})
    pos = {
        'nodes': {n['uuid']: i for i, n in enumerate(nodes)},
        'ports': {p['uuid']: i for i, p in enumerate(ports)},
    }
    items = {'nodes': nodes, 'ports': ports}

    class H(BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'

        def log_message(self, *args):
            pass

        def answer(self, status, doc):
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', str(len(body)))
            self.send_header('X-OpenStack-Ironic-API-Minimum-Version', '1.1')
            self.send_header('X-OpenStack-Ironic-API-Maximum-Version', '1.99')
            self.send_header('X-OpenStack-Ironic-API-Version', '1.96')
            self.end_headers()
            self.wfile.write(body)

        def page(self, what, q):
            if 'sort_key' in q:
                return self.answer(200, {what: []})
            limit = int(q.get('limit', ['1000'])[0])
            start = 0
            if 'marker' in q:
                start = pos[what].get(q['marker'][0], len(items[what])) + 1
            self.answer(200, {what: items[what][start:start + limit]})

        def do_GET(self):
            u = urlsplit(self.path)
            q = parse_qs(u.query)
            path = u.path.rstrip('/') or '/'
            if path == '/':
                return self.answer(200, ROOT)
            if path == '/v1':
                return self.answer(200, {'id': 'v1', 'links': [], 'media_types': []})
            if path == '/v1/nodes':
                return self.page('nodes', q)
            if path == '/v1/ports':
                return self.page('ports', q)
            if path == '/v1/nodes/detail':
                return self.answer(200, {'nodes': []})
            parts = path.split('/')
            if len(parts) in (4, 5) and parts[:3] == ['', 'v1', 'nodes'] and parts[3] in by_ident:
                node = by_ident[parts[3]]
                if len(parts) == 4:
                    return self.answer(200, node)
                if parts[4] == 'ports':
                    return self.answer(200, {'ports': [p for p in ports
                                                       if p['node_uuid'] == node['uuid']]})
            fault = json.dumps({'faultcode': 'Client',
                                'faultstring': 'Resource could not be found.',
                                'debuginfo': None})
            self.answer(404, {'error_message': fault})

    srv = ThreadingHTTPServer(('127.0.0.1', a.port), H)
    srv.daemon_threads = True

    def stop(*_):
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f'fake Ironic: {a.nodes} nodes, {len(ports)} ports on 127.0.0.1:{a.port}',
          file=sys.stderr, flush=True)
    srv.serve_forever()


if __name__ == '__main__':
    sys.exit(main())
