"""One call to Envoy's admin endpoint inside a test namespace, for tests/harness/netmesh.py.

Standard library only (system ``python3``)::

    python3 envoy_admin.py METHOD PATH PORT

Prints the answer's body; exits 0 when the status is 200, else 3.
"""

import http.client, sys

conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[3]), timeout=5)
conn.request(sys.argv[1], sys.argv[2])
answer = conn.getresponse()
sys.stdout.write(answer.read().decode("utf-8", "replace"))
sys.exit(0 if answer.status == 200 else 3)
