"""Waits (bounded) for Envoy's readiness inside a test namespace, for tests/harness/netmesh.py.

Standard library only (system ``python3``)::

    python3 wait_ready.py SECONDS

Exits 0 once http://127.0.0.1:15021/healthz/ready answers 200; after SECONDS, prints the last failure and
exits 1.
"""

import http.client, sys, time

deadline = time.monotonic() + float(sys.argv[1])
last = "no attempt"
while True:
    conn = http.client.HTTPConnection("127.0.0.1", 15021, timeout=1)
    try:
        conn.request("GET", "/healthz/ready")
        answer = conn.getresponse()
        answer.read()
        if answer.status == 200:
            sys.exit(0)
        last = "HTTP %d" % answer.status
    except Exception as exc:
        last = "%s: %s" % (type(exc).__name__, exc)
    finally:
        conn.close()
    if time.monotonic() > deadline:
        print(last)
        sys.exit(1)
    time.sleep(0.05)
