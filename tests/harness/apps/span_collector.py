#!/usr/bin/env python3
"""A stand-in for a Zipkin collector (Jaeger's :9411): takes what a tracer posts to /api/v2/spans and prints
each span as one JSON line on stdout, for tests that read what Envoy reported.

Standard library only (it runs inside a test namespace with the system ``python3``)::

    python3 span_collector.py --port 9411 [--bind 0.0.0.0]

Answers 202 to a POST of a JSON list of spans, 400 to anything else. SIGTERM and SIGINT stop it with exit
status 0.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 4 * 1024 * 1024
_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def _body(self) -> bytes | None:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while len(body) <= MAX_BODY:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
            return None
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if 0 < length <= MAX_BODY else None

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        spans, body = None, self._body()
        if self.path == "/api/v2/spans" and body:
            try:
                spans = json.loads(body)
            except ValueError:
                spans = None
        if not isinstance(spans, list):
            sys.stderr.write(f"refused: {self.command} {self.path} {dict(self.headers)} {body[:200]!r}\n")
            self.send_response(400)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        with _lock:
            for span in spans:
                sys.stdout.write(json.dumps(span, sort_keys=True) + "\n")
            sys.stdout.flush()
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9411)
    parser.add_argument("--bind", default="0.0.0.0")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.bind, args.port), Handler)
    stop = lambda *_: threading.Thread(target=server.shutdown).start()  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
