#!/usr/bin/env python3
"""A tiny backend for the data-path tests: says who answered, and misbehaves on request.

Standard library only (it runs inside a test namespace with the system ``python3``)::

    python3 echo_server.py --host reviews-v2 --version v2 --port 9080 [--bind 0.0.0.0] [--mode http|tcp]

HTTP mode answers every request (any method, any path) with JSON
``{"host", "version", "method", "path", "query", "headers", "body"}`` and the header ``x-vmesh-host: <host>``
(plus ``x-vmesh-version`` when a version is known). Knobs in the query string, for timeout, retry and
outlier-detection tests:

- ``?status=503`` answers with that status (100-599; 1xx/204/304 carry no body);
- ``?delay=2`` waits that many seconds (at most 60) before answering (``--delay`` adds to every answer).

TCP mode answers each connection with one line ``host=<host> version=<version>`` followed by every byte the peer
sent, once the peer has closed its side (or 64 KiB arrived, or 10 s passed), then closes.

One line per request goes to stdout. SIGTERM and SIGINT stop it with exit status 0.
"""

from __future__ import annotations

import argparse
import ssl
import json
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 64 * 1024
MAX_DELAY = 60.0
TCP_READ_TIMEOUT = 10.0
_log_lock = threading.Lock()


def log(line: str) -> None:
    with _log_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _knobs(query: dict[str, list[str]]) -> tuple[int, float]:
    """(status, delay) from the query string; bad values fall back to 200 and 0 rather than failing."""
    status, delay = 200, 0.0
    try:
        status = int(query.get("status", ["200"])[-1])
    except ValueError:
        pass
    if not 100 <= status <= 599:
        status = 200
    try:
        delay = float(query.get("delay", ["0"])[-1])
    except ValueError:
        pass
    return status, min(max(delay, 0.0), MAX_DELAY)


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the sidecar in front pools its connections
    server_version = "vmesh-echo"
    sys_version = ""
    host_name = ""
    version = ""
    base_delay = 0.0  # --delay: a slow host, whatever the request asks

    def _handle(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        status, delay = _knobs(query)
        delay += self.base_delay
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY or "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            length, status = 0, 413
        body = self.rfile.read(length) if length else b""
        if delay:
            time.sleep(delay)
        payload = b""
        if status >= 200 and status not in (204, 304) and self.command != "HEAD":
            payload = json.dumps({
                "host": self.host_name,
                "version": self.version,
                "method": self.command,
                "path": url.path,
                "query": {k: v[-1] for k, v in query.items()},
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8", "replace"),
            }, sort_keys=True).encode() + b"\n"
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            if status >= 200 and status not in (204, 304):
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

    def end_headers(self) -> None:
        self.send_header("x-vmesh-host", self.host_name)
        if self.version:
            self.send_header("x-vmesh-version", self.version)
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        log(f"echo {self.host_name} {self.client_address[0]} " + (format % args))


class TcpHandler(socketserver.BaseRequestHandler):
    host_name = ""
    version = ""

    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(TCP_READ_TIMEOUT)
        data = b""
        try:
            while len(data) < MAX_BODY:
                chunk = conn.recv(MAX_BODY - len(data))
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        try:
            conn.sendall(f"host={self.host_name} version={self.version}\n".encode() + data)
        except OSError:
            pass
        log(f"echo-tcp {self.host_name} {self.client_address[0]} {len(data)} bytes")


class HttpServer(ThreadingHTTPServer):
    daemon_threads = True


class TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="echo_server.py", description=__doc__.split("\n")[0])
    parser.add_argument("--host", required=True, help="the name to answer with (x-vmesh-host)")
    parser.add_argument("--version", default="", help="the host's version label")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--mode", choices=("http", "tcp"), default="http")
    parser.add_argument("--tls-cert", help="serve TLS with this certificate chain (PEM)")
    parser.add_argument("--tls-key", help="and this private key (PEM)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds every HTTP answer waits (a slow host)")
    args = parser.parse_args(argv)

    attrs = {"host_name": args.host, "version": args.version, "base_delay": min(max(args.delay, 0.0), MAX_DELAY)}
    if args.mode == "http":
        server = HttpServer((args.bind, args.port), type("Handler", (EchoHandler,), attrs))
    else:
        server = TcpServer((args.bind, args.port), type("Handler", (TcpHandler,), attrs))
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"echo {args.mode} {args.host} {args.version} listening on {args.bind}:{server.server_address[1]}")
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
