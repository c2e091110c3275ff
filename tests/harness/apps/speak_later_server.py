"""A server that speaks first late, like sshd sending a module's result, for test_redirect_module.py.

Standard library only (system ``python3``)::

    python3 speak_later_server.py PORT FLAG_FILE

Prints ``ready`` once it listens; accepts one connection, answers "before", then - like sshd sending a module's
result - speaks first ("after") once FLAG_FILE exists (or 30 s passed).
"""

import os, socket, sys, time

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen(1)
print("ready", flush=True)
srv.settimeout(20)
conn, _ = srv.accept()
conn.sendall(b"before")
deadline = time.monotonic() + 30
while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.05)
conn.sendall(b"after")
time.sleep(2)
