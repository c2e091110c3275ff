"""HTTP(S) requests from inside a test namespace, for tests/harness/netmesh.py; prints what came back as JSON.

Standard library only (it runs with the system ``python3``, as uid 1000 like an application on a VM)::

    python3 http_client.py request SPEC   # one request: {"status", "reason", "headers", "body" (base64), "elapsed"}
    python3 http_client.py sample SPEC    # spec["count"] requests, spec["concurrency"] at a time, within
                                          # spec["budget"] seconds: a list of [status, who answered]

SPEC is JSON: ``url``, ``method``, ``headers``, ``body`` (base64 or null), ``timeout``, and optionally ``cafile``
(an https URL is verified against it) and ``resolve`` (connect to this address, keep the URL's name for Host
and SNI, like ``curl --resolve``). A request that gets no answer is status 0 with ``error`` set.
"""

import base64, http.client, json, socket, sys, time, urllib.parse


def call(spec):
    url = urllib.parse.urlsplit(spec["url"])
    if url.scheme not in ("http", "https"):
        raise ValueError("only http:// and https:// URLs, got " + spec["url"])
    path = (url.path or "/") + ("?" + url.query if url.query else "")
    if url.scheme == "https":
        import ssl
        context = ssl.create_default_context(cafile=spec.get("cafile"))
        conn = http.client.HTTPSConnection(url.hostname, url.port or 443, timeout=spec["timeout"], context=context)
    else:
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=spec["timeout"])
    if spec.get("resolve"):  # like curl --resolve: connect to this address, keep the URL's name (Host, SNI)
        def connect():
            sock = socket.create_connection((spec["resolve"], conn.port), conn.timeout)
            conn.sock = context.wrap_socket(sock, server_hostname=url.hostname) if url.scheme == "https" else sock
        conn.connect = connect
    started = time.monotonic()
    try:
        body = base64.b64decode(spec["body"]) if spec.get("body") is not None else None
        conn.request(spec["method"], path, body=body, headers=spec.get("headers") or {})
        answer = conn.getresponse()
        data = answer.read()
        headers = {}
        for name, value in answer.getheaders():
            name = name.lower()
            headers[name] = headers[name] + ", " + value if name in headers else value
        return {"status": answer.status, "reason": answer.reason, "headers": headers,
                "body": base64.b64encode(data).decode(), "elapsed": time.monotonic() - started}
    except Exception as exc:  # an answer that did not come is an observation, not a harness failure
        return {"status": 0, "reason": "", "headers": {}, "body": "", "elapsed": time.monotonic() - started,
                "error": "%s: %s" % (type(exc).__name__, exc)}
    finally:
        conn.close()


def sample(spec):
    from concurrent.futures import ThreadPoolExecutor  # here: a single request starts faster without it

    deadline = time.monotonic() + spec["budget"]

    def one(_):
        if time.monotonic() > deadline:
            return (0, "harness: sample budget exhausted")
        answer = call(spec)
        who = answer["headers"].get("x-vmesh-host") or answer["headers"].get("x-bookinfo-version")
        return (answer["status"], who if answer["status"] else answer.get("error", "").split(":")[0])

    with ThreadPoolExecutor(spec["concurrency"]) as pool:
        return list(pool.map(one, range(spec["count"])))


if __name__ == "__main__":
    mode, spec = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(call(spec) if mode == "request" else sample(spec)))
