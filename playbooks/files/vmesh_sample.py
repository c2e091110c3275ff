#!/usr/bin/python3
"""Send a bounded series of HTTP GETs from this host and print what answered, as JSON.

Runs on a mesh host (copied there by ansible.builtin.script), so its calls take the app's path: the
/etc/hosts name, the iptables redirect and the sidecar. Standard library only.

  vmesh_sample.py URL [--count N] [--duration S] [--header 'name: value'] [--by HEADER] [--timeout S]
"""
import argparse
import collections
import json
import time
import urllib.error
import urllib.request


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--by", default="x-bookinfo-version", help="response header to count answers by")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: no limit)")
    args = parser.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    statuses, answers, proxied = collections.Counter(), collections.Counter(), 0
    started = time.monotonic()
    sent = 0
    for _ in range(min(args.count, 100000)):
        if args.duration and time.monotonic() - started > args.duration:
            break
        sent += 1
        request = urllib.request.Request(args.url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=args.timeout) as response:
                status, got = response.status, response.headers
                response.read()
        except urllib.error.HTTPError as exc:
            status, got = exc.code, exc.headers
        except OSError as exc:
            status, got = f"error: {exc.__class__.__name__}", {}
        statuses[str(status)] += 1
        answers[got.get(args.by, "-") if got else "-"] += 1
        # Envoy adds this header to responses it proxied: evidence the call went through the sidecar.
        proxied += 1 if got and got.get("x-envoy-upstream-service-time") is not None else 0
    print(json.dumps({"url": args.url, "count": sent, "status": dict(statuses), "by": args.by,
                      "answers": dict(sorted(answers.items())), "through_sidecar": proxied,
                      "seconds": round(time.monotonic() - started, 2)}, sort_keys=True))


if __name__ == "__main__":
    main()
