#!/usr/bin/python3
"""Send a bounded series of HTTP GETs from this host and print what answered, as JSON.

Runs on a mesh host (copied there by ansible.builtin.script), so its calls take the app's path: the
/etc/hosts name, the iptables redirect and the sidecar. Standard library only.

  vmesh_sample.py URL [--count N] [--duration S] [--header 'name: value'] [--by HEADER] [--timeout S]
                  [--log FILE]

SIGTERM ends it early, with the summary of what was sent. --log writes one line per request, "UNIX-TIME ANSWER STATUS", so the answers can be lined up with the stages
of a canary rollout afterwards.
"""
import argparse
import collections
import json
import signal
import threading
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
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight at once (at most 32)")
    parser.add_argument("--log", help="write 'time answer status' per request to this file")
    args = parser.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    statuses, answers = collections.Counter(), collections.Counter()
    tally = {"sent": 0, "proxied": 0}
    lock = threading.Lock()
    log = open(args.log, "w", encoding="utf-8", buffering=1) if args.log else None  # a line at a time
    started = time.monotonic()
    stop = threading.Event()  # SIGTERM: finish the requests in flight, then print the summary
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def worker():
        while True:
            with lock:
                if stop.is_set() or tally["sent"] >= min(args.count, 100000) or (
                        args.duration and time.monotonic() - started > args.duration):
                    return
                tally["sent"] += 1
            request = urllib.request.Request(args.url, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=args.timeout) as response:
                    status, got = response.status, response.headers
                    response.read()
            except urllib.error.HTTPError as exc:
                status, got = exc.code, exc.headers
            except OSError as exc:
                status, got = f"error: {exc.__class__.__name__}", {}
            answer = got.get(args.by, "-") if got else "-"
            with lock:
                statuses[str(status)] += 1
                answers[answer] += 1
                # Envoy adds this header to responses it proxied: evidence the call went through the sidecar.
                tally["proxied"] += 1 if got and got.get("x-envoy-upstream-service-time") is not None else 0
                if log:
                    log.write(f"{time.time():.3f} {answer} {str(status).replace(' ', '_')}\n")

    threads = [threading.Thread(target=worker) for _ in range(max(1, min(args.concurrency, 32)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if log:
        log.close()
    print(json.dumps({"url": args.url, "count": tally["sent"], "status": dict(statuses), "by": args.by,
                      "answers": dict(sorted(answers.items())), "through_sidecar": tally["proxied"],
                      "seconds": round(time.monotonic() - started, 2)}, sort_keys=True))


if __name__ == "__main__":
    main()
