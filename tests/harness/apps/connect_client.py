"""One TCP connection, for test_redirect_module.py: prints what the server said, or ``ERROR <exception class>``.

Standard library only (system ``python3``)::

    python3 connect_client.py HOST PORT [SOURCE_PORT]
"""

import socket, sys

source = ("", int(sys.argv[3])) if len(sys.argv) > 3 else None
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3, source_address=source) as conn:
        data = b""
        for _ in range(16):
            chunk = conn.recv(1024)
            if not chunk:
                break
            data += chunk
    print(data.decode())
except OSError as exc:
    print("ERROR %s" % type(exc).__name__)
