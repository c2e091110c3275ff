"""A TCP exchange from inside a test namespace, for tests/harness/netmesh.py; prints what came back as JSON.

Standard library only (system ``python3``)::

    python3 tcp_client.py SPEC   # SPEC: {"address", "port", "payload" (base64), "timeout", "pause"}

Connects, sends the payload, closes the sending side ``pause`` seconds later and reads until the peer closes
(at most 1 MiB): ``{"data" (base64), "error"}``, or ``{"error"}`` alone when no connection could be made.
"""

import base64, json, socket, sys, time

spec = json.loads(sys.argv[1])
try:
    conn = socket.create_connection((spec["address"], spec["port"]), timeout=spec["timeout"])
except OSError as exc:
    print(json.dumps({"error": "%s: %s" % (type(exc).__name__, exc)}))
    sys.exit(0)
data = b""
error = None
try:
    conn.sendall(base64.b64decode(spec["payload"]))
    time.sleep(spec["pause"])
    conn.shutdown(socket.SHUT_WR)
    while len(data) < 1 << 20:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
except OSError as exc:
    error = "%s: %s" % (type(exc).__name__, exc)
finally:
    conn.close()
print(json.dumps({"data": base64.b64encode(data).decode(), "error": error}))
