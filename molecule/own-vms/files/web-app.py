#!/usr/bin/python3
"""The test's `web` service: answers every GET with which VM served it and who called, as JSON.

Standard library only (the minimal VMs have python3 and nothing else). The caller is what the sidecar put in
X-Forwarded-Client-Cert, so a test sees the client's mesh identity from the application's side.

  web-app.py --port 8080 [--bind ::]

Bound to ``::`` it takes IPv4 and IPv6 (dual stack), as many servers do by default.
"""
import argparse
import http.server
import json
import socket


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the standard library's name
        body = json.dumps({"host": socket.gethostname(), "path": self.path,
                           "xfcc": self.headers.get("x-forwarded-client-cert", "")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-served-by", socket.gethostname())
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - the standard library's signature
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--bind", default="::")
    args = parser.parse_args()
    server_class = http.server.ThreadingHTTPServer
    if ":" in args.bind:
        class DualStack(http.server.ThreadingHTTPServer):
            address_family = socket.AF_INET6

            def server_bind(self):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                super().server_bind()

        server_class = DualStack
    server_class((args.bind, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
