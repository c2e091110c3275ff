"""Connects and prints the first two things the server sends (``closed`` or ``ERROR <exception class>`` when
nothing comes), for test_redirect_module.py.

Standard library only (system ``python3``)::

    python3 read_client.py HOST PORT
"""

import socket, sys

conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
for _ in range(2):
    try:
        print(conn.recv(1024).decode() or "closed", flush=True)
    except OSError as exc:
        print("ERROR %s" % type(exc).__name__, flush=True)
