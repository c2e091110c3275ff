#!/usr/bin/env python3
"""A paced HTTP/1.1 client for bench/reload.py: a fixed request rate over keep-alive connections, and for each
request when it went out, when its answer ended, its status and who answered (one response header).

Standard library only: it runs inside a namespace with the system ``python3``, as uid 1000 (so its calls are
captured like an application's)::

    python3 paced_client.py '{"url": "http://web:8080/", "rate": 1000, "connections": 20, "seconds": 14,
                              "timeout": 2, "header": "x-version"}'

Connection i sends at start + (i + k * connections) / rate, k = 0, 1, ...: a steady rate in all, whatever the
latency (a late answer makes that connection's next request go at once, never a burst of more). A connection
that fails is opened again for its next request.

Prints ``started <T>`` once the schedule is set, then at the end one JSON object: ``{"records": [[sent, done,
status, who], ...]}``. Times are CLOCK_MONOTONIC seconds, the clock of every process on the machine (namespaces
do not change it), so the caller can set them against its own events. Status 0 means no answer; ``who`` then
names the error. Bounded: at most 600 s, 5000 requests per second, 200 connections.
"""

import asyncio
import json
import sys
import time
import urllib.parse

MAX_SECONDS = 600
MAX_RATE = 5000
MAX_CONNECTIONS = 200
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024


async def read_answer(reader, header):
    """(status, value of ``header``, keep the connection) of one HTTP/1.1 answer; its body read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size > MAX_BODY:
                raise ValueError("chunk too large")
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        length = int(headers.get("content-length", "0"))
        if not 0 <= length <= MAX_BODY:
            raise ValueError("bad content-length")
        await reader.readexactly(length)
    return status, headers.get(header, ""), headers.get("connection", "").lower() != "close"


async def connection(index, spec, start, records):
    url = urllib.parse.urlsplit(spec["url"])
    host, port = url.hostname, url.port or 80
    request = ("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: vmesh-bench\r\n\r\n"
               % (url.path or "/", url.netloc)).encode("ascii")
    interval = spec["connections"] / spec["rate"]
    due, end = start + index / spec["rate"], start + spec["seconds"]
    reader = writer = None
    while due < end:
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        sent = time.monotonic()
        try:
            async with asyncio.timeout(spec["timeout"]):
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEAD)
                writer.write(request)
                status, who, keep = await read_answer(reader, spec["header"])
            records.append((sent, time.monotonic(), status, who))
        except (OSError, EOFError, ValueError, IndexError, TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError) as exc:
            records.append((sent, time.monotonic(), 0, type(exc).__name__))
            keep = False
        if not keep and writer is not None:
            writer.close()
            reader = writer = None
        due = max(due + interval, time.monotonic() - interval)  # late: go now, but do not catch up in a burst
    if writer is not None:
        writer.close()


async def run(spec):
    start = time.monotonic() + 0.1
    print("started %.6f" % start, flush=True)
    records = []
    await asyncio.gather(*(connection(i, spec, start, records) for i in range(spec["connections"])))
    return records


def main():
    spec = {"url": "http://127.0.0.1/", "rate": 1000, "connections": 20, "seconds": 10, "timeout": 2,
            "header": "x-version"}
    spec.update(json.loads(sys.argv[1]))
    if not (0 < spec["seconds"] <= MAX_SECONDS and 0 < spec["rate"] <= MAX_RATE
            and 0 < spec["connections"] <= MAX_CONNECTIONS and 0 < spec["timeout"] <= 30):
        sys.exit("paced_client: seconds, rate, connections or timeout out of range")
    records = asyncio.run(run(spec))
    records.sort()
    json.dump({"records": [[round(s, 6), round(d, 6), status, who] for s, d, status, who in records]},
              sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
