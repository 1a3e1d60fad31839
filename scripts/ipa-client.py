#!/usr/bin/env python3
"""Drive the REAL ironic-python-agent API client (ironic_python_agent.
ironic_api_client.APIClient, IPA 13.0.0) for one lookup and N heartbeats,
exactly as the agent does: a smoke test of Ironic or of the ironic-edge gateway.

  scripts/ipa-client.py --url http://127.0.0.1:6380 --macs 52:54:00:00:00:00
  scripts/ipa-client.py --url http://127.0.0.1:6380 --seed-file .run/ironic-6385/seed.json --node 1
  scripts/ipa-client.py --url http://127.0.0.1:6380 --macs 52:54:fe:00:00:01 --expect-lookup-failure

Options: [--node-uuid UUID] [--callback 127.0.0.1:9999] [--protocol https|http]
[--cert-file PEM] [--token TOKEN] [--heartbeats 1] [--interval 0] [--lookup-timeout 10]
[--conflict-retries 3] [--ca-file PEM] [--client-cert PEM --client-key PEM]
[--tls-min-version 1.2|1.3]

For an https --url the TLS options are IPA's own ([DEFAULT]cafile, certfile, keyfile,
tls_min_version), set before the APIClient is made, as the agent reads them at start:
  scripts/ipa-client.py --url https://127.0.0.1:6443 --macs 52:54:00:00:00:00 \
      --ca-file gateway-ca.pem --client-cert agent.crt --client-key agent.key

It needs the venv made by scripts/ironic-peer-up.sh; run with any python3 it
re-executes itself with that venv's python ($IRONIC_PEER_VENV, else
$IRONIC_PEER_DIR/venv, else ~/.cache/ironic-edge/venv).

Prints one JSON line per step. Exit code 0 when everything succeeded (with
--expect-lookup-failure: when the lookup failed, as for an unknown MAC).
Heartbeats of a node whose agent token was already handed out need --token (only
the first lookup returns the real token; later ones return "******").
"""
import os
import sys
import warnings

# futurist imports eventlet, which warns on import; irrelevant here
warnings.filterwarnings('ignore', message=r'(?s).*Eventlet is deprecated')


def _venv_python():
    if os.environ.get('IRONIC_PEER_VENV'):
        venv = os.environ['IRONIC_PEER_VENV']
    elif os.environ.get('IRONIC_PEER_DIR'):
        venv = os.path.join(os.environ['IRONIC_PEER_DIR'], 'venv')
    else:
        cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
        venv = os.path.join(cache, 'ironic-edge', 'venv')
    return os.path.join(venv, 'bin', 'python')


try:
    from ironic_python_agent import config as ipa_config   # registers IPA's options
    from ironic_python_agent import errors
    from ironic_python_agent import hardware
    from ironic_python_agent import ironic_api_client
except ImportError:
    py = _venv_python()
    if os.environ.get('_IPA_CLIENT_REEXEC') or not os.access(py, os.X_OK):
        sys.exit(f'ironic_python_agent is not importable and {py} is missing: '
                 'run scripts/ironic-peer-up.sh --install-only first')
    os.environ['_IPA_CLIENT_REEXEC'] = '1'
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

ap = argparse.ArgumentParser(description='real IPA APIClient lookup + heartbeats')
ap.add_argument('--url', default='http://127.0.0.1:6380', help='gateway (or Ironic) base URL')
ap.add_argument('--macs', help='comma separated MAC addresses')
ap.add_argument('--seed-file', help='seed.json from ironic-peer-up.sh: take MACs from it')
ap.add_argument('--node', type=int, default=0, help='node index in --seed-file (default 0)')
ap.add_argument('--node-uuid', default=None)
ap.add_argument('--callback', default='127.0.0.1:9999', help='advertised HOST:PORT of the agent')
ap.add_argument('--protocol', default='https', choices=['http', 'https'],
                help='callback scheme; ironic 39 defaults to [agent]require_tls=true, so https')
ap.add_argument('--cert-file', default=None, help='PEM sent as agent_verify_ca (needs API >= 1.68)')
ap.add_argument('--token', default=None, help='use this token instead of the one from lookup')
ap.add_argument('--heartbeats', type=int, default=1)
ap.add_argument('--interval', type=float, default=0.0)
ap.add_argument('--lookup-timeout', type=float, default=10.0)
ap.add_argument('--conflict-retries', type=int, default=3,
                help='retries (0.5 s apart) of a heartbeat answered 409 "node locked", '
                     'which a heartbeat sent right after the previous one can get')
ap.add_argument('--ca-file', default=None,
                help='PEM of the CAs the agent trusts for an https --url (IPA cafile)')
ap.add_argument('--client-cert', default=None,
                help='PEM client certificate the agent presents (IPA certfile; needs --client-key)')
ap.add_argument('--client-key', default=None, help="the client certificate's key (IPA keyfile)")
ap.add_argument('--tls-min-version', default=None, choices=['1.2', '1.3'],
                help='IPA tls_min_version (its default: 1.2)')
ap.add_argument('--expect-lookup-failure', action='store_true',
                help='succeed only if the lookup fails (unknown MAC, refused node)')
o = ap.parse_args()
if o.seed_file and not o.macs:
    with open(o.seed_file) as f:
        seed = json.load(f)
    node = seed['nodes'][o.node]
    o.macs = ','.join(node['macs'])
if not o.macs:
    ap.error('--macs or --seed-file is required')

# Parse an empty command line so IPA's defaults apply (no config files read).
ipa_config.CONF([], project='ironic-python-agent', default_config_files=[])
if bool(o.client_cert) != bool(o.client_key):
    ap.error('--client-cert and --client-key go together')
for opt, value in (('cafile', o.ca_file), ('certfile', o.client_cert),
                   ('keyfile', o.client_key), ('tls_min_version', o.tls_min_version)):
    if value is not None:
        ipa_config.CONF.set_override(opt, value)

client = ironic_api_client.APIClient(o.url)           # also accepts a list of URLs
hw = {'interfaces': [hardware.NetworkInterface(f'eth{i}', m)
                     for i, m in enumerate(o.macs.split(','))]}
ok = True
t0 = time.time()
try:
    content = client.lookup_node(hardware_info=hw, timeout=o.lookup_timeout,
                                 starting_interval=1, node_uuid=o.node_uuid)
except errors.LookupNodeError as e:
    print(json.dumps({'step': 'lookup', 'ok': o.expect_lookup_failure, 'lookup_failed': True,
                      'seconds': round(time.time() - t0, 3), 'error': str(e)}))
    sys.exit(0 if o.expect_lookup_failure else 1)
token = content['config'].get('agent_token')
print(json.dumps({'step': 'lookup', 'ok': not o.expect_lookup_failure,
                  'seconds': round(time.time() - t0, 3),
                  'node_uuid': content['node']['uuid'], 'agent_token': token,
                  'heartbeat_timeout': content['config'].get('heartbeat_timeout'),
                  'detected_api_version': '%d.%d' % client._get_ironic_api_version()}))
if o.expect_lookup_failure:
    sys.exit(1)

# The agent keeps the token from its first lookup; later lookups only return '******'.
client.agent_token = o.token or token
cert = open(o.cert_file).read() if o.cert_file else None
host, port = o.callback.rsplit(':', 1)
for i in range(o.heartbeats):
    t1 = time.time()
    for attempt in range(o.conflict_retries + 1):
        try:
            client.heartbeat(uuid=content['node']['uuid'], advertise_address=(host, int(port)),
                             advertise_protocol=o.protocol, generated_cert=cert)
            print(json.dumps({'step': f'heartbeat {i + 1}', 'ok': True, 'conflicts': attempt,
                              'seconds': round(time.time() - t1, 3)}))
            break
        except errors.HeartbeatConflictError as e:
            if attempt < o.conflict_retries:
                time.sleep(0.5)
                continue
            ok = False
            print(json.dumps({'step': f'heartbeat {i + 1}', 'ok': False, 'conflicts': attempt,
                              'error_class': type(e).__name__, 'error': str(e)}))
        except (errors.HeartbeatError, errors.HeartbeatConnectionError) as e:
            ok = False
            print(json.dumps({'step': f'heartbeat {i + 1}', 'ok': False,
                              'error_class': type(e).__name__, 'error': str(e)}))
            break
    if o.interval and i + 1 < o.heartbeats:
        time.sleep(o.interval)
sys.exit(0 if ok else 1)
