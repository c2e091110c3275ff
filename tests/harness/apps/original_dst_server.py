"""Listeners that say which one answered and where the connection was going, for test_redirect_module.py.

Standard library only (system ``python3``)::

    python3 original_dst_server.py PORT=TAG [6:PORT=TAG ...]

Listens on every PORT=TAG given (6:PORT=TAG: on IPv6 only); prints ``ready`` once all listen; answers each
connection with "TAG ORIGINAL_DST" and closes. Original destination comes from SO_ORIGINAL_DST (what Envoy's
original_dst filter reads), else the local address. Exits by itself after 120 s so nothing outlives a crashed
test.
"""

import selectors, socket, struct, sys, time

SO_ORIGINAL_DST = 80
sel = selectors.DefaultSelector()
for spec in sys.argv[1:]:
    port, tag = spec.split("=", 1)
    if port.startswith("6:"):
        srv = socket.socket(socket.AF_INET6)
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("::", int(port[2:])))
        srv.listen(16)
        sel.register(srv, selectors.EVENT_READ, tag)
        continue
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", int(port)))
    srv.listen(16)
    sel.register(srv, selectors.EVENT_READ, tag)
print("ready", flush=True)
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    for key, _ in sel.select(timeout=0.5):
        conn, _ = key.fileobj.accept()
        try:
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            dst = "%s:%d" % (socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0])
        except OSError:
            dst = "%s:%d" % conn.getsockname()[:2]
        conn.sendall(("%s %s" % (key.data, dst)).encode())
        conn.close()
