#!/usr/bin/env python3
"""Helpers of scripts/sync-cost.sh (the cost of the node sync for the real Ironic): seeding a
stopped peer Ironic's database with many nodes through Ironic's own DB layer, and the
measuring tools. Run with the peer venv's python (it has Ironic, requests and yaml).

  seed     --config-file RUN/ironic.conf --count N [--spread-seconds S] [--quiet-seconds Q]
           --out seed.json
      After `ironic-peer-up.sh --seed 1` (one node enrolled and managed through the API: the
      template) and `ironic-peer-down.sh`: N-1 copies of the template node (fake-hardware,
      deploy_interface direct, provision_state manageable, driver_info {"fast_track": true},
      the same interfaces and object versions), each with its own uuid, name peer-node-NNNNN
      and one port with a unique MAC 52:54:00:II:II:II (II = node index, as
      scripts/ironic-seed.py numbers them), written in chunks through Ironic's SQLAlchemy
      models (~1 s per 1,000 nodes; the API takes ~0.3 s per node). Timestamps: as if the
      nodes had been enrolled and managed one after the other over S seconds (default 86400),
      the last one Q seconds (default 600) before now: no node changed recently. With
      --never-updated, updated_at stays NULL (nodes enrolled and never changed since).
  verify   --url URL --seed-file F [--lookups K]
      GET /v1/nodes?limit=1000 paging must list exactly the seeded nodes, and GET /v1/lookup
      must find K of them (first, last, spread) by MAC. Prints one JSON line.
  gwconf   --src conf/ironic-edge.yaml --out FILE --run DIR --listen P --ops P --upstream URL
           --redis URL --prefix PREFIX
      The gateway config: the shipped one with the run's ports, Redis and upstream; the
      `sync:` section is left as shipped.
  relay    --listen P --upstream P --log FILE
      A counting HTTP/1.1 relay (keep-alive, no pipelining) in front of Ironic: one JSON line
      per request {t0, t1, m, path, ua, st, qb, rb, items} (rb: bytes Ironic answered, items:
      `"uuid":` keys in the answer body).
  ticks    --pgid PGID
      Prints the CPU ticks (utime+stime) of every process in Ironic's process group.
  mark     --pgid PGID --metrics URL --name NAME --out FILE
      Appends {name, t, cpu_ticks (utime+stime of every process in Ironic's process group),
      sync_requests (ironic_edge_sync_requests_total, null without --metrics)} to FILE.
  churn    --mode db|api --rate R --duration D --seed-file F (--db FILE | --url URL)
      Changes R random nodes per second for D seconds: `db` writes extra + updated_at into the
      SQLite database as Ironic's node.save() would (no Ironic CPU spent on the change
      itself), `api` PATCHes /extra/sync_cost through Ironic. Prints one JSON line.
  agents   --url URL --seed-file F --pgid PGID [--nodes K] [--rate R] [--duration D]
      What agents cost Ironic: K lookups (tokens minted), then heartbeats (IPA 13's body,
      record-only in manageable + fast track) at R/s for D s; Ironic CPU per heartbeat.
      Prints one JSON line.
  report   --run DIR --out-md FILE --out-json FILE
      The tables, from every DIR/n*/ folder sync-cost.sh filled.
"""
import argparse
import json
import os
import random
import sys
import time

CLK_TCK = os.sysconf('SC_CLK_TCK')


# --- seed ---------------------------------------------------------------------------------
def cmd_seed(o):
    import datetime

    if not 1 <= o.count <= 0xFFFFFF:
        sys.exit('--count must be in 1..16777215')
    from ironic.conf import CONF

    CONF(['--config-file', o.config_file], project='ironic')
    from oslo_utils import uuidutils

    from ironic.db import api as dbapi
    from ironic.db.sqlalchemy import api as sa_api
    from ironic.db.sqlalchemy import models

    def mac(i):
        return f'52:54:00:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}'

    t0 = time.time()
    db = dbapi.get_instance()
    existing = db.get_node_list()
    if len(existing) != 1:
        sys.exit(f'expected exactly one (template) node in the database, found {len(existing)}')
    tmpl = existing[0]
    tports = db.get_ports_by_node_id(tmpl.id)
    if len(tports) != 1:
        sys.exit(f'expected one port on the template node, found {len(tports)}')
    tport = tports[0]
    if tmpl.provision_state != 'manageable' or tmpl.driver != 'fake-hardware':
        sys.exit(f'template node is {tmpl.driver}/{tmpl.provision_state}, '
                 'expected fake-hardware/manageable')
    if (tmpl.driver_info or {}).get('fast_track') is not True:
        sys.exit(f'template node driver_info {tmpl.driver_info!r}: no fast_track true')

    # Columns copied from the template: all but identity, names, timestamps, relations.
    skip_node = {'id', 'uuid', 'name', 'created_at', 'updated_at', 'provision_updated_at',
                 'inspection_started_at', 'inspection_finished_at', 'instance_uuid',
                 'reservation', 'conductor_affinity', 'tags', 'traits'}
    skip_port = {'id', 'uuid', 'address', 'node_id', 'created_at', 'updated_at'}
    node_base = {c.name: getattr(tmpl, c.name) for c in models.Node.__table__.columns
                 if c.name not in skip_node and hasattr(tmpl, c.name)}
    port_base = {c.name: getattr(tport, c.name) for c in models.Port.__table__.columns
                 if c.name not in skip_port and hasattr(tport, c.name)}

    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    last = now - datetime.timedelta(seconds=o.quiet_seconds)
    step = o.spread_seconds / o.count

    def stamp(i):
        return last - datetime.timedelta(seconds=(o.count - 1 - i) * step)

    # the template is node 0 of the same series
    def updated(i):
        return None if o.never_updated else stamp(i)

    with sa_api._session_for_write() as session:
        session.query(models.Node).filter_by(id=tmpl.id).update(
            {'created_at': stamp(0), 'updated_at': updated(0), 'provision_updated_at': stamp(0),
             'name': 'peer-node-00000'}, synchronize_session=False)
        session.query(models.Port).filter_by(id=tport.id).update(
            {'created_at': stamp(0), 'address': mac(0)}, synchronize_session=False)
    nodes_out = [{'uuid': tmpl.uuid, 'name': 'peer-node-00000', 'macs': [mac(0)],
                  'provision_state': 'manageable', 'fast_track': True}]
    chunk = 1000
    for start in range(1, o.count, chunk):
        with sa_api._session_for_write() as session:
            made = []
            for i in range(start, min(start + chunk, o.count)):
                v = dict(node_base)
                v.update(uuid=uuidutils.generate_uuid(), name=f'peer-node-{i:05d}',
                         created_at=stamp(i), updated_at=updated(i),
                         provision_updated_at=stamp(i))
                n = models.Node()
                n.update(v)
                session.add(n)
                # as the DB API's create_node does: empty relations, set inside the session
                n['tags'] = []
                n['traits'] = []
                made.append((i, n))
            session.flush()
            for i, n in made:
                pv = dict(port_base)
                pv.update(uuid=uuidutils.generate_uuid(), address=mac(i), node_id=n.id,
                          created_at=stamp(i), updated_at=None)
                p = models.Port()
                p.update(pv)
                session.add(p)
                nodes_out.append({'uuid': n.uuid, 'name': n.name, 'macs': [mac(i)],
                                  'provision_state': 'manageable', 'fast_track': True})
            session.flush()
    count = len(db.get_node_list())
    ports = len(db.get_port_list())
    if count != o.count or ports != o.count:
        sys.exit(f'database holds {count} nodes and {ports} ports, expected {o.count} of each')
    tmp = o.out + '.tmp'
    with open(tmp, 'w') as f:
        json.dump({'count': count, 'state': 'manageable', 'nodes': nodes_out}, f)
    os.replace(tmp, o.out)
    print(f'[sync-cost] seeded {count} nodes / {ports} ports into the database in '
          f'{time.time() - t0:.1f}s (newest change {o.quiet_seconds:.0f}s ago, one every '
          f'{step:.2f}s before{"; updated_at never set" if o.never_updated else ""})',
          file=sys.stderr)


# --- verify -------------------------------------------------------------------------------
def api_session():
    import requests

    s = requests.Session()
    s.headers.update({'X-OpenStack-Ironic-API-Version': '1.68',
                      'Content-Type': 'application/json'})
    return s


def cmd_verify(o):
    s = api_session()
    seed = json.load(open(o.seed_file))['nodes']
    url = o.url.rstrip('/')
    t0 = time.time()
    listed, marker, pages = [], None, 0
    while True:
        r = s.get(f'{url}/v1/nodes?limit=1000' + (f'&marker={marker}' if marker else ''),
                  timeout=120)
        r.raise_for_status()
        page = r.json()['nodes']
        pages += 1
        listed += [n['uuid'] for n in page]
        if len(page) < 1000:
            break
        marker = page[-1]['uuid']
    list_s = time.time() - t0
    want = {n['uuid'] for n in seed}
    if len(listed) != len(want) or set(listed) != want:
        sys.exit(f'GET /v1/nodes listed {len(listed)} nodes, {len(set(listed) & want)} of the '
                 f'{len(want)} seeded')
    k = min(o.lookups, len(seed))
    picks = [] if k <= 0 else sorted({0, len(seed) - 1} | {round(i * (len(seed) - 1) / max(k - 1, 1))
                                          for i in range(k)})[:max(k, 1)]
    lat = []
    for i in picks:
        nd = seed[i]
        t = time.time()
        r = s.get(f"{url}/v1/lookup?addresses={nd['macs'][0]}", timeout=60)
        lat.append(time.time() - t)
        if r.status_code != 200 or r.json()['node']['uuid'] != nd['uuid']:
            sys.exit(f"lookup of {nd['name']} ({nd['macs'][0]}): {r.status_code} {r.text[:200]}")
    print(json.dumps({'listed': len(listed), 'pages': pages, 'list_seconds': round(list_s, 2),
                      'lookups_ok': len(picks),
                      'lookup_ms_max': round(1000 * max(lat), 1) if lat else None}))


# --- gwconf -------------------------------------------------------------------------------
def cmd_gwconf(o):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_conf import write_conf

    c = write_conf(o.src, o.out, o.run, o.listen, o.ops, o.upstream, o.redis, o.prefix,
                   'sync-cost.sh')
    sync = c['ironic_edge'].get('sync') or {}
    if not sync.get('enabled'):
        sys.exit(f'{o.src}: sync is not enabled')
    keys = ('interval_seconds', 'full_resync_seconds', 'page_size', 'lease_seconds')
    print(json.dumps({k: sync.get(k) for k in keys}))


# --- relay --------------------------------------------------------------------------------
def cmd_relay(o):
    import asyncio
    import signal

    log = open(o.log, 'a', buffering=1 << 16)

    def headers(block):
        lines = block.decode('latin-1').split('\r\n')
        h = {}
        for line in lines[1:]:
            if ':' in line:
                k, v = line.split(':', 1)
                h[k.strip().lower()] = v.strip()
        return lines[0], h

    async def body(reader, h, until_eof):
        if 'chunked' in h.get('transfer-encoding', '').lower():
            out = bytearray()
            while True:
                line = await reader.readuntil(b'\r\n')
                out += line
                size = int(line.split(b';')[0].strip() or b'0', 16)
                if size == 0:
                    while True:  # trailers up to the empty line
                        t = await reader.readuntil(b'\r\n')
                        out += t
                        if t == b'\r\n':
                            return bytes(out)
                out += await reader.readexactly(size + 2)
        if 'content-length' in h:
            return await reader.readexactly(int(h['content-length']))
        return await reader.read() if until_eof else b''

    async def handle(cr, cw):
        try:
            ur, uw = await asyncio.open_connection('127.0.0.1', o.upstream, limit=1 << 20)
        except OSError:
            cw.close()
            return
        try:
            while True:
                try:
                    head = await cr.readuntil(b'\r\n\r\n')
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                t0 = time.time()
                line, h = headers(head)
                req = head + await body(cr, h, False)
                uw.write(req)
                await uw.drain()
                method = line.split(' ', 1)[0]
                while True:
                    rhead = await ur.readuntil(b'\r\n\r\n')
                    sline, rh = headers(rhead)
                    status = int(sline.split(' ')[1])
                    if status >= 200 or status == 101:
                        break
                    cw.write(rhead)
                if method == 'HEAD' or status in (204, 304):
                    rbody = b''
                else:
                    rbody = await body(ur, rh, True)
                cw.write(rhead + rbody)
                await cw.drain()
                parts = line.split(' ')
                log.write(json.dumps({
                    't0': round(t0, 4), 't1': round(time.time(), 4), 'm': method,
                    'path': parts[1] if len(parts) > 1 else '', 'ua': h.get('user-agent', ''),
                    'st': status, 'qb': len(req), 'rb': len(rhead) + len(rbody),
                    'items': rbody.count(b'"uuid":')}) + '\n')
                close = (h.get('connection', '').lower() == 'close'
                         or rh.get('connection', '').lower() == 'close'
                         or ('content-length' not in rh and 'chunked'
                             not in rh.get('transfer-encoding', '').lower()
                             and method != 'HEAD' and status not in (204, 304)))
                if close:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
            return
        finally:
            for w in (uw, cw):
                try:
                    w.close()
                except Exception:
                    pass

    async def main():
        server = await asyncio.start_server(handle, '127.0.0.1', o.listen, limit=1 << 20)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        async def flusher():
            while True:
                await asyncio.sleep(1)
                log.flush()

        f = asyncio.ensure_future(flusher())
        async with server:
            await stop.wait()
        f.cancel()
        log.flush()

    asyncio.run(main())


# --- mark ---------------------------------------------------------------------------------
def group_ticks(pgid):
    total = 0
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            with open(f'/proc/{d}/stat') as f:
                rest = f.read().rsplit(')', 1)[1].split()
        except (OSError, IndexError):
            continue
        # rest[0] = state, rest[2] = pgrp, rest[11] = utime, rest[12] = stime
        if int(rest[2]) == pgid:
            total += int(rest[11]) + int(rest[12])
    return total


def sync_requests(metrics_url):
    import urllib.request

    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith('ironic_edge_sync_requests_total'):
                    return int(float(line.split()[-1]))
    except OSError:
        return None
    return None


def cmd_ticks(o):
    print(group_ticks(o.pgid))


def cmd_mark(o):
    with open('/proc/stat') as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    rec = {'name': o.name, 't': round(time.time(), 3), 'cpu_ticks': group_ticks(o.pgid),
           'sync_requests': sync_requests(o.metrics) if o.metrics else None,
           # the whole machine: busy and total ticks (other load makes listings slower)
           'host_busy': sum(cpu) - cpu[3] - cpu[4], 'host_total': sum(cpu)}
    with open(o.out, 'a') as f:
        f.write(json.dumps(rec) + '\n')


# --- churn --------------------------------------------------------------------------------
def cmd_churn(o):
    import datetime

    seed = json.load(open(o.seed_file))['nodes']
    uuids = [n['uuid'] for n in seed]
    rng = random.Random(o.random_seed)
    t0 = time.time()
    end = t0 + o.duration
    done = errors = 0
    owed = 0.0
    tick = 1.0 if o.mode == 'db' else max(0.05, 1.0 / max(o.rate, 0.001))
    last = t0
    if o.mode == 'db':
        import sqlite3

        db = sqlite3.connect(o.db, timeout=30, isolation_level=None)
    else:
        s = api_session()
        url = o.url.rstrip('/')
    nxt = t0
    while True:
        now = time.time()
        if now >= end:
            break
        owed += o.rate * (now - last)
        last = now
        k = int(owed)
        if k:
            owed -= k
            batch = rng.sample(uuids, min(k, len(uuids)))
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S.%f')
            if o.mode == 'db':
                try:
                    db.execute('BEGIN IMMEDIATE')
                    db.executemany(
                        'UPDATE nodes SET extra = ?, updated_at = ? WHERE uuid = ?',
                        [(json.dumps({'sync_cost': stamp}), stamp, u) for u in batch])
                    db.execute('COMMIT')
                    done += len(batch)
                except sqlite3.Error as e:
                    errors += len(batch)
                    print(f'[sync-cost] churn: {e}', file=sys.stderr)
                    try:
                        db.execute('ROLLBACK')
                    except sqlite3.Error:
                        pass
            else:
                for u in batch:
                    r = s.patch(f'{url}/v1/nodes/{u}', timeout=60, data=json.dumps(
                        [{'op': 'add', 'path': '/extra/sync_cost', 'value': stamp}]))
                    if r.status_code == 200:
                        done += 1
                    else:
                        errors += 1
        nxt += tick
        time.sleep(max(0.0, min(nxt, end) - time.time()))
    el = time.time() - t0
    print(json.dumps({'mode': o.mode, 'rate_wanted': o.rate, 'changes': done, 'errors': errors,
                      'seconds': round(el, 1), 'rate': round(done / el, 3) if el else 0}))


# --- agents -------------------------------------------------------------------------------
def cmd_agents(o):
    seed = json.load(open(o.seed_file))['nodes']
    s = api_session()
    url = o.url.rstrip('/')
    picks = seed[-o.nodes:] if o.nodes < len(seed) else seed
    c0, t0 = group_ticks(o.pgid), time.time()
    tokens, errs = [], 0
    for nd in picks:
        r = s.get(f"{url}/v1/lookup?addresses={nd['macs'][0]}", timeout=60)
        if r.status_code == 200:
            tokens.append((nd['uuid'], r.json()['config'].get('agent_token')))
        else:
            errs += 1
    c1, t1 = group_ticks(o.pgid), time.time()
    tokens = [t for t in tokens if t[1] and t[1] != '******']
    if not tokens:
        sys.exit(f'no agent token from {len(picks)} lookups ({errs} failed)')
    time.sleep(2)
    c2, t2 = group_ticks(o.pgid), time.time()
    hb = ok = 0
    lat = []
    nxt = t2
    end = t2 + o.duration
    while time.time() < end:
        uuid, tok = tokens[hb % len(tokens)]
        t = time.time()
        r = s.post(f'{url}/v1/heartbeat/{uuid}', timeout=60, data=json.dumps(
            {'callback_url': 'https://127.0.0.1:9999', 'agent_token': tok,
             'agent_version': '13.0.0'}))
        lat.append(time.time() - t)
        hb += 1
        ok += r.status_code == 202
        nxt += 1.0 / o.rate
        time.sleep(max(0.0, nxt - time.time()))
    c3, t3 = group_ticks(o.pgid), time.time()
    lat.sort()
    hb_cpu = (c3 - c2) / CLK_TCK
    print(json.dumps({
        'lookups': len(picks), 'lookup_errors': errs, 'tokens': len(tokens),
        'lookup_cpu_ms_each': round(1000 * (c1 - c0) / CLK_TCK / len(picks), 2),
        'lookup_seconds': round(t1 - t0, 2),
        'heartbeats': hb, 'heartbeats_202': ok, 'heartbeat_seconds': round(t3 - t2, 1),
        'heartbeat_rate': round(hb / (t3 - t2), 2), 'heartbeat_cpu_seconds': round(hb_cpu, 2),
        'heartbeat_cpu_ms_each': round(1000 * hb_cpu / hb, 2) if hb else None,
        'heartbeat_ms_p50': round(1000 * lat[len(lat) // 2], 1) if lat else None,
        'heartbeat_ms_p99': round(1000 * lat[int(len(lat) * 0.99)], 1) if lat else None}))


# --- report -------------------------------------------------------------------------------
def classify(path):
    """The kind of a sync request, by its URL."""
    q = path.split('?', 1)
    base, query = q[0], q[1] if len(q) > 1 else ''
    params = dict(p.split('=', 1) for p in query.split('&') if '=' in p)
    # (A full round's probe, `/v1/nodes/detail?limit=1`, is made only when Ironic sends no
    # `Date`; it reads as the first page of a listing of changes.)
    if base == '/v1/nodes/detail':
        return 'changed-nodes'
    if base == '/v1/nodes':
        return 'full-nodes'
    if base == '/v1/ports':
        return 'new-ports' if 'sort_key' in params else 'full-ports'
    return 'refresh'


def load_jsonl(path):
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
    return out


def rounds_of(reqs, gap=2.0):
    """Sync requests grouped into rounds (a round's requests follow each other at once)."""
    rounds, cur = [], []
    for r in sorted(reqs, key=lambda r: r['t0']):
        if cur and r['t0'] - cur[-1]['t1'] > gap:
            rounds.append(cur)
            cur = []
        cur.append(r)
    if cur:
        rounds.append(cur)
    return rounds


def gateway_events(folder):
    """(time, kind, value) from the gateways' logs: rounds (nodes written), lease takeovers,
    failed rounds, errors."""
    import calendar
    import glob
    import re

    pat = re.compile(r'^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)Z (\w+)\s+([^\]]+)\] (.*)$')
    out = []
    for path in glob.glob(os.path.join(folder, 'gateway*.log')):
        with open(path, errors='replace') as f:
            for line in f:
                m = pat.match(line.rstrip('\n'))
                if not m:
                    continue
                t = calendar.timegm(time.strptime(m.group(1), '%Y-%m-%dT%H:%M:%S'))
                level, msg = m.group(2), m.group(4)
                r = re.match(r'node sync: (full|incremental) round, (\d+) nodes', msg)
                if r:
                    out.append((t, r.group(1), int(r.group(2))))
                elif 'this process syncs now' in msg:
                    out.append((t, 'takeover', 1))
                elif 'round failed' in msg:
                    out.append((t, 'failed', msg))
                elif level in ('WARN', 'ERROR'):
                    out.append((t, 'error', msg))
    return sorted(out, key=lambda e: e[0])


def window_stats(n, marks, relay, a, b, idle_cpu_pct, events=()):
    ma, mb = marks[a], marks[b]
    secs = mb['t'] - ma['t']
    inw = [r for r in relay if ma['t'] <= r['t0'] < mb['t']]
    sync = [r for r in inw if r['ua'] == 'ironic-edge-sync']
    other = [r for r in inw if r['ua'] != 'ironic-edge-sync']
    cpu_pct = 100.0 * (mb['cpu_ticks'] - ma['cpu_ticks']) / CLK_TCK / secs
    rounds = rounds_of(sync)
    kinds = {}
    for r in sync:
        k = classify(r['path'])
        kinds[k] = kinds.get(k, 0) + 1
    metric = (mb['sync_requests'] - ma['sync_requests']
              if ma.get('sync_requests') is not None and mb.get('sync_requests') is not None
              else None)
    items = [sum(r['items'] for r in rd) for rd in rounds]
    durs = [rd[-1]['t1'] - rd[0]['t0'] for rd in rounds]
    lat = sorted(r['t1'] - r['t0'] for r in sync)
    # log lines carry whole seconds: a line belongs to [start, end)
    ev = [e for e in events if int(ma['t']) <= e[0] < int(mb['t'])]
    written = [e[2] for e in ev if e[1] in ('full', 'incremental')]
    cpu_sync = cpu_pct - idle_cpu_pct if idle_cpu_pct is not None else None
    host = None
    if 'host_total' in ma and 'host_total' in mb and mb['host_total'] > ma['host_total']:
        host = round(100.0 * (mb['host_busy'] - ma['host_busy'])
                     / (mb['host_total'] - ma['host_total']) * os.cpu_count(), 1)
    return {
        'seconds': round(secs, 1),
        'host_cpu_pct': host,
        'nodes_written_per_round_avg': (round(sum(written) / len(written), 1)
                                        if written else None),
        'gateway_full_rounds_logged': sum(1 for e in ev if e[1] == 'full'),
        'lease_takeovers': sum(1 for e in ev if e[1] == 'takeover'),
        'failed_rounds': [e[2] for e in ev if e[1] == 'failed'][:5],
        'gateway_errors': [e[2] for e in ev if e[1] == 'error'][:5],
        'ironic_cpu_ms_per_round': (round(1000 * cpu_sync * secs / 100 / len(rounds), 1)
                                    if cpu_sync is not None and rounds else None),
        'bytes_per_round_avg': (round(sum(r['rb'] for r in sync) / len(rounds))
                                if rounds else 0),
        'sync_requests_metric': metric,
        'sync_requests_relay': len(sync),
        'sync_rps': round((metric if metric is not None else len(sync)) / secs, 3),
        'sync_kinds': kinds,
        'sync_errors': sum(1 for r in sync if r['st'] != 200),
        'other_requests': len(other),
        'ironic_bytes_per_s': round(sum(r['rb'] for r in sync) / secs),
        'rounds': len(rounds),
        'full_rounds': sum(1 for rd in rounds
                           if any(classify(r['path']) == 'full-nodes' for r in rd)),
        'items_per_round_avg': round(sum(items) / len(items), 1) if items else 0,
        'items_per_round_max': max(items) if items else 0,
        'round_seconds_avg': round(sum(durs) / len(durs), 3) if durs else 0,
        'round_seconds_max': round(max(durs), 3) if durs else 0,
        'request_ms_p50': round(1000 * lat[len(lat) // 2], 1) if lat else None,
        'request_ms_max': round(1000 * lat[-1], 1) if lat else None,
        'ironic_cpu_pct': round(cpu_pct, 2),
        'ironic_cpu_pct_sync': (round(cpu_pct - idle_cpu_pct, 2)
                                if idle_cpu_pct is not None else None),
    }


def cmd_report(o):
    runs = []
    for d in sorted(os.listdir(o.run)):
        p = os.path.join(o.run, d)
        if not (d.startswith('n') and d[1:].isdigit() and os.path.isdir(p)):
            continue
        n = int(d[1:])
        marks = {m['name']: m for m in load_jsonl(os.path.join(p, 'marks.jsonl'))}
        relay = load_jsonl(os.path.join(p, 'relay.jsonl'))
        events = gateway_events(p)
        info = {}
        for name in ('verify', 'full', 'agents', 'churn-1pct', 'churn-hb', 'sync-conf'):
            f = os.path.join(p, name + '.json')
            if os.path.exists(f):
                try:
                    info[name] = json.load(open(f))
                except ValueError:
                    pass
        run = {'nodes': n, 'info': info, 'windows': {}}
        idle = None
        if 'idle.start' in marks and 'idle.end' in marks:
            w = window_stats(n, marks, relay, 'idle.start', 'idle.end', None)
            idle = w['ironic_cpu_pct']
            run['windows']['idle'] = w
        for w in ('quiet', 'churn-1pct', 'churn-hb', 'after-churn', 'two-gateways'):
            if f'{w}.start' in marks and f'{w}.end' in marks:
                run['windows'][w] = window_stats(n, marks, relay, f'{w}.start', f'{w}.end', idle,
                                                 events)
        # the first full round: the gateway's first sync requests up to its first incremental one
        sync = sorted((r for r in relay if r['ua'] == 'ironic-edge-sync'), key=lambda r: r['t0'])
        first = []
        for r in sync:
            if classify(r['path']) in ('changed-nodes', 'new-ports') and first:
                break
            first.append(r)
        if first:
            full = info.get('full', {})
            run['full_round'] = {
                'requests': len(first),
                'kinds': {k: sum(1 for r in first if classify(r['path']) == k)
                          for k in ('full-nodes', 'full-ports')},
                'listing_seconds': round(first[-1]['t1'] - first[0]['t0'], 2),
                'bytes': sum(r['rb'] for r in first),
                'request_ms_max': round(1000 * max(r['t1'] - r['t0'] for r in first), 1),
                'index_ready_seconds': full.get('index_ready_seconds'),
                'index_nodes': full.get('index_nodes'),
                'index_macs': full.get('index_macs'),
                'ironic_cpu_seconds': full.get('ironic_cpu_seconds'),
            }
        runs.append(run)

    def f(v, nd=2):
        if v is None:
            return '-'
        if isinstance(v, float):
            return f'{v:.{nd}f}'
        return str(v)

    md = ['# Node sync cost for the real Ironic 39 (scripts/sync-cost.sh)', '']
    if runs:
        conf = runs[0]['info'].get('sync-conf', {})
        md += [f"Sync settings (shipped conf): {', '.join(f'{k} {v}' for k, v in conf.items())}.",
               '']
    md += ['## Summary', '',
           '| N | full round: requests / listing s / index ready s / MB | full resync amortised req/s '
           '(÷ full_resync_seconds) | steady sync req/s (quiet) | steady sync req/s (1 %/min '
           'changed) | agents\' heartbeats N/135 req/s | ratio agents : sync (quiet / 1 %/min) | '
           'Ironic CPU % for the sync (quiet / 1 %/min / N/135 changes/s) | Ironic CPU % for '
           'the agents\' heartbeats (est.) | CPU ratio agents : sync (quiet) |',
           '|---|---|---|---|---|---|---|---|---|---|']
    for run in runs:
        n, w, fr = run['nodes'], run['windows'], run.get('full_round', {})
        resync = (run['info'].get('sync-conf') or {}).get('full_resync_seconds') or 600
        agents_rps = n / 135.0
        q = w.get('quiet', {})
        c1 = w.get('churn-1pct', {})
        ch = w.get('churn-hb', {})
        fr_rps = fr.get('requests', 0) / resync
        qs = q.get('sync_rps', 0) + fr_rps
        cs = c1.get('sync_rps', 0) + fr_rps
        ag = run['info'].get('agents', {})
        ag_cpu = (ag.get('heartbeat_cpu_ms_each', 0) or 0) * agents_rps / 10.0
        qc = q.get('ironic_cpu_pct_sync')
        cpu_ratio = f'{ag_cpu / qc:.1f} : 1' if qc and qc > 0 and ag_cpu else '-'
        md.append(
            f"| {n:,} | {fr.get('requests', '-')} / {f(fr.get('listing_seconds'))} / "
            f"{f(fr.get('index_ready_seconds'))} / {f((fr.get('bytes') or 0) / 1e6)} | "
            f"{fr_rps:.3f} | {f(q.get('sync_rps'), 3)} (+{fr_rps:.3f} = {qs:.3f}) | "
            f"{f(c1.get('sync_rps'), 3)} (+{fr_rps:.3f} = {cs:.3f}) | {agents_rps:.1f} | "
            f"{agents_rps / qs if qs else 0:.0f} : 1 / {agents_rps / cs if cs else 0:.0f} : 1 | "
            f"{f(q.get('ironic_cpu_pct_sync'))} / {f(c1.get('ironic_cpu_pct_sync'))} / "
            f"{f(ch.get('ironic_cpu_pct_sync'))} | {ag_cpu:.1f} | "
            f"{cpu_ratio} |")
    md += ['', 'Steady-state sync req/s are measured over the incremental rounds only; "+x" adds '
           'the full resync, amortised (full round requests / full_resync_seconds). Ironic CPU % '
           'is % of one core (utime+stime of Ironic\'s process group) in the window minus the '
           'idle window\'s (no gateway). Agents\' CPU: measured CPU per heartbeat × N/135.', '',
           'Windows: "rounds" groups the relay\'s sync requests by pauses (> 2 s); rounds of two '
           'gateways running at once merge there, the gateways\' own log lines ("full rounds '
           'logged", "lease takeovers") count them exactly. "items": objects Ironic sent; '
           '"nodes written": nodes the gateway wrote to Redis.', '']
    md += ['## Windows', '',
           '| N | window | s | sync req (metric/relay) | req/s | kinds | errors | rounds (full) | '
           'items/round avg/max | round s avg/max | request ms p50/max | KB/s from Ironic | '
           'Ironic CPU % (sync) | Ironic CPU ms per round | nodes written/round | MB/round | '
           'full rounds logged / lease takeovers | other req | host CPU % (all cores) |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for run in runs:
        for name, w in run['windows'].items():
            kinds = ' '.join(f'{k}:{v}' for k, v in sorted(w['sync_kinds'].items()))
            md.append(
                f"| {run['nodes']:,} | {name} | {w['seconds']} | {f(w['sync_requests_metric'])}/"
                f"{w['sync_requests_relay']} | {w['sync_rps']:.3f} | {kinds or '-'} | "
                f"{w['sync_errors']} | {w['rounds']} ({w['full_rounds']}) | "
                f"{w['items_per_round_avg']}/{w['items_per_round_max']} | "
                f"{w['round_seconds_avg']:.2f}/{w['round_seconds_max']:.2f} | "
                f"{f(w['request_ms_p50'], 1)}/{f(w['request_ms_max'], 1)} | "
                f"{w['ironic_bytes_per_s'] / 1000:.1f} | {w['ironic_cpu_pct']:.2f} "
                f"({f(w['ironic_cpu_pct_sync'])}) | {f(w['ironic_cpu_ms_per_round'], 1)} | "
                f"{f(w['nodes_written_per_round_avg'], 1)} | {w['bytes_per_round_avg'] / 1e6:.2f} | "
                f"{w['gateway_full_rounds_logged']} / {w['lease_takeovers']} | "
                f"{w['other_requests']} | {f(w['host_cpu_pct'], 0)} |")
    md += ['', '## Other measurements', '']
    for run in runs:
        i = run['info']
        for name, w in run['windows'].items():
            if w['failed_rounds'] or w['gateway_errors']:
                md.append(f"- N={run['nodes']:,} {name}: failed rounds {w['failed_rounds']}, "
                          f"gateway warnings/errors {w['gateway_errors']}")
        md.append(f"- N={run['nodes']:,}: seeding/listing {json.dumps(i.get('verify'))}; "
                  f"first full round {json.dumps(run.get('full_round'))}; "
                  f"changes {json.dumps(i.get('churn-1pct'))} / {json.dumps(i.get('churn-hb'))}; "
                  f"agents {json.dumps(i.get('agents'))}")
    text = '\n'.join(md) + '\n'
    with open(o.out_md, 'w') as fh:
        fh.write(text)
    with open(o.out_json, 'w') as fh:
        json.dump(runs, fh, indent=1)
    print(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    p = sub.add_parser('seed')
    p.add_argument('--config-file', required=True)
    p.add_argument('--count', type=int, required=True)
    p.add_argument('--spread-seconds', type=float, default=86400.0)
    p.add_argument('--quiet-seconds', type=float, default=600.0)
    p.add_argument('--never-updated', action='store_true')
    p.add_argument('--out', required=True)
    p = sub.add_parser('verify')
    p.add_argument('--url', required=True)
    p.add_argument('--seed-file', required=True)
    p.add_argument('--lookups', type=int, default=4)
    p = sub.add_parser('gwconf')
    for k in ('src', 'out', 'run', 'upstream', 'redis', 'prefix'):
        p.add_argument('--' + k, required=True)
    p.add_argument('--listen', type=int, required=True)
    p.add_argument('--ops', type=int, required=True)
    p = sub.add_parser('relay')
    p.add_argument('--listen', type=int, required=True)
    p.add_argument('--upstream', type=int, required=True)
    p.add_argument('--log', required=True)
    p = sub.add_parser('mark')
    p.add_argument('--pgid', type=int, required=True)
    p.add_argument('--metrics', default='')
    p.add_argument('--name', required=True)
    p.add_argument('--out', required=True)
    p = sub.add_parser('ticks')
    p.add_argument('--pgid', type=int, required=True)
    p = sub.add_parser('churn')
    p.add_argument('--mode', choices=('db', 'api'), default='db')
    p.add_argument('--rate', type=float, required=True)
    p.add_argument('--duration', type=float, required=True)
    p.add_argument('--seed-file', required=True)
    p.add_argument('--db', default='')
    p.add_argument('--url', default='')
    p.add_argument('--random-seed', type=int, default=1)
    p = sub.add_parser('agents')
    p.add_argument('--url', required=True)
    p.add_argument('--seed-file', required=True)
    p.add_argument('--pgid', type=int, required=True)
    p.add_argument('--nodes', type=int, default=100)
    p.add_argument('--rate', type=float, default=5.0)
    p.add_argument('--duration', type=float, default=40.0)
    p = sub.add_parser('report')
    p.add_argument('--run', required=True)
    p.add_argument('--out-md', required=True)
    p.add_argument('--out-json', required=True)
    o = ap.parse_args()
    if o.cmd == 'churn' and ((o.mode == 'db') != bool(o.db) or (o.mode == 'api') != bool(o.url)):
        sys.exit('churn: --mode db needs --db, --mode api needs --url')
    globals()['cmd_' + o.cmd](o)


if __name__ == '__main__':
    main()
