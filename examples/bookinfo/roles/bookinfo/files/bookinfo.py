#!/usr/bin/env python3
"""Small stand-ins for Istio's Bookinfo services: productpage, details, reviews and ratings.

One script, the standard library only, so that a bare Debian VM runs it with its own python3:

    python3 bookinfo.py --service reviews --version v2 --port 9080

Every option may also come from the environment (BOOKINFO_SERVICE, BOOKINFO_VERSION, BOOKINFO_PORT,
BOOKINFO_BIND, BOOKINFO_ERROR_RATE, BOOKINFO_EXTRA_LATENCY); an option on the command line wins.

It answers the HTTP API of the real Bookinfo (istio/istio samples/bookinfo/src) with the behaviour the Istio
traffic-management tasks rely on:

- productpage calls http://details:9080/details/0 (3 s timeout) and http://reviews:9080/reviews/0 (3 s
  timeout, tried twice), forwards the tracing headers and ``end-user: <name>`` once someone logged in, and
  shows "Sorry, product reviews are currently unavailable for this book." when reviews does not answer;
- reviews v1 shows no stars, v2 asks ratings (10 s timeout) and shows black stars, v3 asks ratings (2.5 s
  timeout) and shows red stars; without an answer from ratings each review carries
  "Ratings service is currently unavailable";
- upstream names follow the real one's environment: SERVICES_DOMAIN, DETAILS_HOSTNAME,
  DETAILS_SERVICE_PORT, REVIEWS_HOSTNAME, REVIEWS_SERVICE_PORT, RATINGS_HOSTNAME, RATINGS_SERVICE_PORT.

Additions for the mesh's own tests: every response carries ``x-bookinfo-service`` and ``x-bookinfo-version``
and the reviews JSON a ``version``; ``--error-rate`` answers that fraction of requests with 500 and
``--extra-latency`` waits that many seconds before answering (neither applies to /health, so that a
deliberately faulty canary still passes its install's readiness check). One line per request goes to
stdout. SIGTERM and SIGINT stop the server and exit 0.
"""

from __future__ import annotations

import argparse
import html
import http.client
import json
import os
import random
import re
import signal
import socket
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SERVICES = ("productpage", "details", "reviews", "ratings")

# reviews version -> (star colour, ratings timeout in seconds); v1 does not call ratings.
REVIEWS_RATINGS = {"v1": None, "v2": ("black", 10.0), "v3": ("red", 2.5)}

DETAILS_TIMEOUT = 3.0
REVIEWS_TIMEOUT = 3.0
REVIEWS_TRIES = 2  # the real productpage retries reviews once; Istio's fault-injection task depends on it
RATINGS_TIMEOUT = 3.0  # productpage's own ratings API

# Incoming headers passed on to every upstream call, as the real services do, so that the proxies can join
# their spans into one trace and route on them.
TRACING_HEADERS = (
    "x-request-id",
    "x-ot-span-context",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-sampling-priority",
    "traceparent",
    "tracestate",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "sw8",
)
PRODUCTPAGE_FORWARDED = TRACING_HEADERS + ("user-agent", "cookie", "authorization", "jwt")
REVIEWS_FORWARDED = TRACING_HEADERS + ("end-user", "user-agent")

SESSION_COOKIE = "session"
MAX_BODY = 64 * 1024
MAX_USERNAME = 100

PRODUCTS = [
    {
        "id": 0,
        "title": "The Comedy of Errors",
        "descriptionHtml": (
            '<a href="https://en.wikipedia.org/wiki/The_Comedy_of_Errors">Wikipedia Summary</a>: '
            "The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his shortest and "
            "one of his most farcical comedies, with a major part of the humour coming from slapstick and "
            "mistaken identity, in addition to puns and word play."
        ),
    }
]

REVIEWS = (
    ("Reviewer1", "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.",
    ),
)
RATINGS = {"Reviewer1": 5, "Reviewer2": 4}

DETAILS_ERROR = "Sorry, product details are currently unavailable for this book."
REVIEWS_ERROR = "Sorry, product reviews are currently unavailable for this book."
RATINGS_ERROR = "Sorry, product ratings are currently unavailable for this book."
RATING_UNAVAILABLE = "Ratings service is currently unavailable"

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
NUMERIC_RE = re.compile(r"^[0-9]{1,9}$")

_log_lock = threading.Lock()


def log(line: str) -> None:
    """One line to stdout, whole (several request threads write at once); journald stamps the time."""
    with _log_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


# --- configuration -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    service: str
    version: str
    port: int
    bind: str
    error_rate: float
    extra_latency: float
    upstreams: Mapping[str, str]  # "details" -> "http://details:9080"
    podname: str


def _bounded(convert: Callable[[str], float], low: float, high: float, what: str) -> Callable[[str], float]:
    """An argparse type: ``convert`` the text, then check it lies in [low, high]."""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}: {value}")
        return value

    return parse


_port = _bounded(int, 0, 65535, "a port number")
_fraction = _bounded(float, 0, 1, "a number")
_seconds = _bounded(float, 0, 3600, "a number of seconds")


def upstream_urls(environ: Mapping[str, str]) -> dict[str, str]:
    """Base URLs of the three upstreams, named as the real productpage names them.

    SERVICES_DOMAIN is appended to each host name; like the real one it gets a leading dot when it has
    none ("default.svc.cluster.local" and ".default.svc.cluster.local" mean the same).
    """
    domain = environ.get("SERVICES_DOMAIN", "")
    if domain and not domain.startswith("."):
        domain = "." + domain
    urls = {}
    for name in ("details", "reviews", "ratings"):
        host = environ.get(f"{name.upper()}_HOSTNAME") or name
        port_text = environ.get(f"{name.upper()}_SERVICE_PORT") or "9080"
        try:
            port = _port(port_text)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"{name.upper()}_SERVICE_PORT: {exc}") from None
        urls[name] = f"http://{host}{domain}:{port}"
    return urls


def parse_config(argv: list[str], environ: Mapping[str, str]) -> Config:
    parser = argparse.ArgumentParser(
        prog="bookinfo.py",
        description="Stand-ins for Istio's Bookinfo services (standard library only).",
        epilog="Each option defaults to the environment variable shown; the command line wins.",
    )
    parser.add_argument(
        "--service",
        default=environ.get("BOOKINFO_SERVICE"),
        help="which service to be: " + ", ".join(SERVICES) + " (BOOKINFO_SERVICE)",
    )
    parser.add_argument(
        "--version",
        default=environ.get("BOOKINFO_VERSION", "v1"),
        help="its version; reviews knows v1, v2 and v3 (BOOKINFO_VERSION, default v1)",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=environ.get("BOOKINFO_PORT", "9080"),
        help="TCP port to listen on, 0 for any free one (BOOKINFO_PORT, default 9080)",
    )
    parser.add_argument(
        "--bind",
        default=environ.get("BOOKINFO_BIND", "0.0.0.0"),
        help="address to listen on (BOOKINFO_BIND, default 0.0.0.0)",
    )
    parser.add_argument(
        "--error-rate",
        type=_fraction,
        default=environ.get("BOOKINFO_ERROR_RATE", "0"),
        help="fraction of requests, 0 to 1, answered with 500 (BOOKINFO_ERROR_RATE, default 0)",
    )
    parser.add_argument(
        "--extra-latency",
        type=_seconds,
        default=environ.get("BOOKINFO_EXTRA_LATENCY", "0"),
        help="seconds to wait before answering (BOOKINFO_EXTRA_LATENCY, default 0)",
    )
    args = parser.parse_args(argv)

    # argparse checks neither `choices` nor anything else on defaults that came from the environment.
    if not args.service:
        parser.error("--service (or BOOKINFO_SERVICE) is required: one of " + ", ".join(SERVICES))
    if args.service not in SERVICES:
        parser.error(f"--service: unknown service {args.service!r}, expected one of " + ", ".join(SERVICES))
    if not VERSION_RE.match(args.version):
        parser.error(f"--version: {args.version!r} is not a version label like v1")
    if args.service == "reviews" and args.version not in REVIEWS_RATINGS:
        parser.error(f"--version: reviews has versions v1, v2 and v3, not {args.version!r}")
    try:
        upstreams = upstream_urls(environ)
    except ValueError as exc:
        parser.error(str(exc))

    return Config(
        service=args.service,
        version=args.version,
        port=args.port,
        bind=args.bind,
        error_rate=args.error_rate,
        extra_latency=args.extra_latency,
        upstreams=upstreams,
        podname=socket.gethostname(),
    )


# --- requests, responses and upstream calls ----------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: http.client.HTTPMessage
    body: bytes


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(obj: object, status: int = 200) -> Response:
    return Response(status, json.dumps(obj).encode(), "application/json")


def html_response(text: str, status: int = 200) -> Response:
    return Response(status, text.encode(), "text/html; charset=utf-8")


def redirect(location: str, cookie: str) -> Response:
    return Response(302, b"", headers=[("Location", location), ("Set-Cookie", cookie)])


def _clean_header_value(value: str) -> str | None:
    """A value safe to send on, or None: http.client refuses values that hold line breaks."""
    if "\r" in value or "\n" in value:
        return None
    return value


def forward_headers(incoming: http.client.HTTPMessage, names: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for name in names:
        value = incoming.get(name)
        if value is not None and (value := _clean_header_value(value)) is not None:
            out[name] = value
    return out


# No proxies, whatever http_proxy says: in the mesh the sidecar is the proxy, reached by iptables.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch_json(url: str, headers: Mapping[str, str], timeout: float) -> tuple[int | None, object]:
    """GET url. Returns (status, parsed JSON); status None when no answer came (refused, timed out, reset).

    The timeout applies to connecting and to each read, as the real services' HTTP clients do.
    A 200 whose body is not JSON counts as 502.
    """
    request = urllib.request.Request(url, headers=dict(headers), method="GET")
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            status, body = answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, None
    except (OSError, http.client.HTTPException, ValueError):  # URLError and TimeoutError are OSErrors
        return None, None
    try:
        return status, json.loads(body)
    except ValueError:
        return 502, None


def _error_status(status: int | None) -> int:
    """What a failed upstream call turns into: its own error status, or 503 when it did not answer."""
    return status if status is not None and status >= 400 else 503


# --- the four services ---------------------------------------------------------------------------------

Route = tuple[str, "re.Pattern[str]", Callable[..., Response]]


class Service:
    """Routes of one service; subclasses add theirs in `routes()` and say what healthy looks like."""

    health_text = ""

    def __init__(self, config: Config):
        self.config = config

    def routes(self) -> list[Route]:
        return []

    def health(self, request: Request) -> Response:
        return json_response({"status": self.health_text})

    def dispatch(self, request: Request) -> Response:
        path_matched = False
        for method, pattern, handler in [("GET", re.compile(r"^/health$"), self.health)] + self.routes():
            match = pattern.match(request.path)
            if match is None:
                continue
            path_matched = True
            if method == request.method:
                return handler(request, *match.groups())
        if path_matched:
            return json_response({"error": f"method {request.method} not allowed"}, 405)
        return json_response({"error": f"no such path: {request.path}"}, 404)


class Details(Service):
    health_text = "Details is healthy"

    def routes(self) -> list[Route]:
        return [("GET", re.compile(r"^/details/([^/]*)$"), self.details)]

    def details(self, request: Request, product_id: str) -> Response:
        if not NUMERIC_RE.match(product_id):
            return json_response({"error": "please provide numeric product id"}, 400)
        return json_response(
            {
                "id": int(product_id),
                "author": "William Shakespeare",
                "year": 1595,
                "type": "paperback",
                "pages": 200,
                "publisher": "PublisherA",
                "language": "English",
                "ISBN-10": "1234567890",
                "ISBN-13": "123-1234567890",
            }
        )


class Ratings(Service):
    health_text = "Ratings is healthy"

    def routes(self) -> list[Route]:
        return [("GET", re.compile(r"^/ratings/([^/]*)$"), self.ratings)]

    def ratings(self, request: Request, product_id: str) -> Response:
        if not NUMERIC_RE.match(product_id):
            return json_response({"error": "please provide numeric product ID"}, 400)
        return json_response({"id": int(product_id), "ratings": dict(RATINGS)})


class Reviews(Service):
    health_text = "Reviews is healthy"

    def routes(self) -> list[Route]:
        return [("GET", re.compile(r"^/reviews/([^/]*)$"), self.reviews)]

    def reviews(self, request: Request, product_id: str) -> Response:
        if not NUMERIC_RE.match(product_id):
            return json_response({"error": "please provide numeric product id"}, 400)
        product_id = str(int(product_id))
        stars_of: dict[str, int] | None = None
        ratings = REVIEWS_RATINGS[self.config.version]
        if ratings is not None:
            color, timeout = ratings
            url = f"{self.config.upstreams['ratings']}/ratings/{product_id}"
            status, body = fetch_json(url, forward_headers(request.headers, REVIEWS_FORWARDED), timeout)
            if status == 200 and isinstance(body, dict) and isinstance(body.get("ratings"), dict):
                stars_of = body["ratings"]
        reviews = []
        for reviewer, text in REVIEWS:
            review: dict[str, object] = {"reviewer": reviewer, "text": text}
            if ratings is not None:
                stars = stars_of.get(reviewer) if stars_of is not None else None
                if isinstance(stars, int) and not isinstance(stars, bool):
                    review["rating"] = {"stars": stars, "color": ratings[0]}
                else:
                    review["rating"] = {"error": RATING_UNAVAILABLE}
            reviews.append(review)
        return json_response(
            {
                "id": product_id,
                "podname": self.config.podname,
                "clustername": "null",
                "version": self.config.version,
                "reviews": reviews,
            }
        )


class ProductPage(Service):
    def routes(self) -> list[Route]:
        return [
            ("GET", re.compile(r"^/(?:index\.html)?$"), self.index),
            ("GET", re.compile(r"^/productpage$"), self.page),
            ("POST", re.compile(r"^/login$"), self.login),
            ("GET", re.compile(r"^/logout$"), self.logout),
            ("GET", re.compile(r"^/api/v1/products$"), self.api_products),
            ("GET", re.compile(r"^/api/v1/products/([^/]+)$"), self.api_product),
            ("GET", re.compile(r"^/api/v1/products/([^/]+)/reviews$"), self.api_reviews),
            ("GET", re.compile(r"^/api/v1/products/([^/]+)/ratings$"), self.api_ratings),
        ]

    def health(self, request: Request) -> Response:
        return Response(200, b"Product page is healthy")

    # session: the user name, percent-encoded, in a cookie (the real one keeps it in Flask's session)

    @staticmethod
    def _clean_username(name: str) -> str:
        # Printable ASCII only: the name travels on as the end-user header, which must encode as latin-1 and
        # which routing rules match exactly.
        return "".join(ch for ch in name if ch.isprintable() and ch.isascii()).strip()[:MAX_USERNAME]

    def user(self, request: Request) -> str:
        cookie = SimpleCookie()
        try:
            cookie.load(request.headers.get("Cookie", ""))
        except CookieError:
            return ""
        morsel = cookie.get(SESSION_COOKIE)
        return self._clean_username(urllib.parse.unquote(morsel.value)) if morsel else ""

    def upstream_headers(self, request: Request) -> dict[str, str]:
        headers = forward_headers(request.headers, PRODUCTPAGE_FORWARDED)
        user = self.user(request)
        if user:
            headers["end-user"] = user
        elif (incoming := request.headers.get("end-user")) and _clean_header_value(incoming) is not None:
            headers["end-user"] = incoming
        return headers

    def login(self, request: Request) -> Response:
        form = urllib.parse.parse_qs(request.body.decode("utf-8", "replace"))
        names = form.get("username") or request.query.get("username") or [""]
        user = self._clean_username(names[0])
        if not user:
            return self.logout(request)
        value = urllib.parse.quote(user, safe="")
        return redirect("/productpage", f"{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax")

    def logout(self, request: Request, *unused: str) -> Response:
        return redirect("/productpage", f"{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax")

    # upstream calls

    def details(self, product_id: str, headers: Mapping[str, str]) -> tuple[int, dict]:
        url = f"{self.config.upstreams['details']}/details/{urllib.parse.quote(product_id, safe='')}"
        status, body = fetch_json(url, headers, DETAILS_TIMEOUT)
        if status == 200 and isinstance(body, dict):
            return 200, body
        return _error_status(status), {"error": DETAILS_ERROR}

    def reviews(self, product_id: str, headers: Mapping[str, str]) -> tuple[int, dict]:
        url = f"{self.config.upstreams['reviews']}/reviews/{urllib.parse.quote(product_id, safe='')}"
        status = None
        for _ in range(REVIEWS_TRIES):
            status, body = fetch_json(url, headers, REVIEWS_TIMEOUT)
            if status == 200 and isinstance(body, dict):
                return 200, body
        return _error_status(status), {"error": REVIEWS_ERROR}

    def ratings(self, product_id: str, headers: Mapping[str, str]) -> tuple[int, dict]:
        url = f"{self.config.upstreams['ratings']}/ratings/{urllib.parse.quote(product_id, safe='')}"
        status, body = fetch_json(url, headers, RATINGS_TIMEOUT)
        if status == 200 and isinstance(body, dict):
            return 200, body
        return _error_status(status), {"error": RATINGS_ERROR}

    # the API

    def api_products(self, request: Request) -> Response:
        return json_response(PRODUCTS)

    def api_product(self, request: Request, product_id: str) -> Response:
        status, body = self.details(product_id, self.upstream_headers(request))
        return json_response(body, status)

    def api_reviews(self, request: Request, product_id: str) -> Response:
        status, body = self.reviews(product_id, self.upstream_headers(request))
        return json_response(body, status)

    def api_ratings(self, request: Request, product_id: str) -> Response:
        status, body = self.ratings(product_id, self.upstream_headers(request))
        return json_response(body, status)

    # the UI

    def index(self, request: Request) -> Response:
        rows = "".join(
            f"<tr><td>{html.escape(caller)}</td><td>{html.escape(name)}</td>"
            f"<td><code>{html.escape(self.config.upstreams[name])}/{name}/0</code></td></tr>"
            for caller, name in (("productpage", "details"), ("productpage", "reviews"), ("reviews", "ratings"))
        )
        body = f"""
<h1>Hello! This is a simple bookstore application consisting of four services</h1>
<table class="services">
<tr><th>caller</th><th>service</th><th>address</th></tr>
{rows}
</table>
<p>Click on one of the links below to auto generate a request to the backend as a real user or a tester</p>
<p><a href="/productpage?u=normal">Normal user</a></p>
<p><a href="/productpage?u=test">Test user</a></p>
"""
        return html_response(_page("", body))

    def page(self, request: Request) -> Response:
        product = PRODUCTS[0]
        headers = self.upstream_headers(request)
        details_status, details = self.details(str(product["id"]), headers)
        reviews_status, reviews = self.reviews(str(product["id"]), headers)
        user = self.user(request)
        body = f"""
<div class="product">
<h1>{html.escape(product["title"])}</h1>
<p class="summary">Summary: {product["descriptionHtml"]}</p>
</div>
<div class="row">
<section class="card">{_details_html(details_status, details)}</section>
<section class="card">{_reviews_html(reviews_status, reviews)}</section>
</div>
"""
        return html_response(_page(user, body))


def _page(user: str, content: str) -> str:
    if user:
        account = f'<span class="user">&#128100; {html.escape(user)} ( <a href="logout">sign out</a> )</span>'
    else:
        account = (
            '<form class="login" method="post" action="login">'
            '<input type="text" name="username" placeholder="User Name" aria-label="User Name">'
            '<input type="password" name="passwd" placeholder="Password" aria-label="Password">'
            '<button type="submit">Sign in</button></form>'
        )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Simple Bookstore App</title>
<style>
body {{ margin: 0; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; background: #f4f5f7; }}
nav {{ display: flex; justify-content: space-between; align-items: center; padding: 0.7rem 1.5rem;
      background: #1f2d3d; color: #fff; }}
nav .brand {{ font-weight: 600; font-size: 1.15rem; color: #fff; text-decoration: none; }}
nav a {{ color: #9fd3ff; }}
nav input {{ margin-right: 0.4rem; padding: 0.3rem 0.5rem; border: 1px solid #889; border-radius: 4px; }}
nav button {{ padding: 0.3rem 0.8rem; border: 0; border-radius: 4px; background: #3c8dde; color: #fff; }}
main {{ max-width: 60rem; margin: 0 auto; padding: 1rem 1.5rem 2rem; }}
h1 {{ color: #1f5f9f; text-align: center; font-weight: 500; }}
h2 {{ color: #1f5f9f; text-align: center; font-weight: 500; font-size: 1.2rem; }}
.row {{ display: flex; flex-wrap: wrap; gap: 1.5rem; }}
.card {{ flex: 1 1 20rem; background: #fff; border-radius: 8px; padding: 0.5rem 1.2rem 1rem;
        box-shadow: 0 1px 3px rgba(0, 0, 0, 0.12); }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: 0.3rem 1rem; }}
dt {{ font-weight: 600; }}
dd {{ margin: 0; }}
blockquote {{ margin: 0 0 1rem; padding: 0.4rem 1rem; border-left: 4px solid #c9d6e3; }}
blockquote small {{ display: block; color: #667; }}
.stars {{ font-size: 1.3rem; letter-spacing: 0.1rem; }}
.error {{ color: #a33; }}
.served-by {{ color: #667; font-size: 0.9rem; }}
table.services {{ border-collapse: collapse; margin: 1rem auto; background: #fff; }}
table.services td, table.services th {{ border: 1px solid #ccd; padding: 0.3rem 0.8rem; }}
</style>
</head>
<body>
<nav><a class="brand" href="/">BookInfo Sample</a>{account}</nav>
<main>
{content}
</main>
</body>
</html>
"""


def _details_html(status: int, details: dict) -> str:
    if status != 200:
        return (
            f'<h2>Error fetching product details!</h2><p class="error">{html.escape(str(details.get("error", "")))}</p>'
        )
    rows = "".join(
        f"<dt>{label}:</dt><dd>{html.escape(str(details.get(key, '')))}</dd>"
        for label, key in (
            ("Author", "author"),
            ("Year", "year"),
            ("Type", "type"),
            ("Pages", "pages"),
            ("Publisher", "publisher"),
            ("Language", "language"),
            ("ISBN-10", "ISBN-10"),
            ("ISBN-13", "ISBN-13"),
        )
    )
    return f"<h2>Book Details</h2><dl>{rows}</dl>"


def _rating_html(rating: object) -> str:
    if not isinstance(rating, dict):
        return ""
    stars = rating.get("stars")
    if isinstance(stars, int) and not isinstance(stars, bool):
        full = max(0, min(5, stars))
        color = html.escape(str(rating.get("color", "black")))
        return (
            f'<span class="stars" style="color: {color}" title="{full} of 5 stars">'
            f"{'&#9733;' * full}{'&#9734;' * (5 - full)}</span>"
        )
    if rating.get("error"):
        return f'<p class="error"><i>{html.escape(str(rating["error"]))}</i></p>'
    return ""


def _reviews_html(status: int, reviews: dict) -> str:
    if status != 200:
        return (
            f'<h2>Error fetching product reviews!</h2><p class="error">{html.escape(str(reviews.get("error", "")))}</p>'
        )
    parts = ["<h2>Book Reviews</h2>"]
    for review in reviews.get("reviews") or []:
        if not isinstance(review, dict):
            continue
        parts.append(
            f"<blockquote><p>{html.escape(str(review.get('text', '')))}</p>"
            f"<small>{html.escape(str(review.get('reviewer', '')))}</small>"
            f"{_rating_html(review.get('rating'))}</blockquote>"
        )
    podname = reviews.get("podname")
    if podname:
        served = f"Reviews served by: {html.escape(str(podname))}"
        cluster = reviews.get("clustername")
        if cluster and cluster != "null":
            served += f" on cluster {html.escape(str(cluster))}"
        if reviews.get("version"):
            served += f" (reviews {html.escape(str(reviews['version']))})"
        parts.append(f'<p class="served-by">{served}</p>')
    return "".join(parts)


SERVICE_CLASSES: dict[str, type[Service]] = {
    "productpage": ProductPage,
    "details": Details,
    "reviews": Reviews,
    "ratings": Ratings,
}


# --- HTTP plumbing -------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    """Reads a request, applies the fault knobs, lets the service answer, logs one line."""

    protocol_version = "HTTP/1.1"  # keep-alive: the sidecar in front pools its connections
    server_version = "bookinfo-stand-in"
    sys_version = ""
    app: Service  # set on the subclass made in serve()

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        self._started = time.monotonic()
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._send(json_response({"error": "chunked request bodies are not supported"}, 411))
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            self._send(json_response({"error": "bad or too large Content-Length"}, 413))
            return
        body = self.rfile.read(length) if length else b""
        url = urllib.parse.urlsplit(self.path)
        request = Request(self.command, url.path, urllib.parse.parse_qs(url.query), self.headers, body)
        config = self.app.config
        try:
            if request.path != "/health" and config.extra_latency:
                time.sleep(config.extra_latency)
            if request.path != "/health" and config.error_rate and random.random() < config.error_rate:
                response = json_response({"error": "fault injected by --error-rate"}, 500)
            else:
                response = self.app.dispatch(request)
        except Exception:  # a bug here must not take the connection down without an answer
            log(f"{config.service} {config.version} error: " + traceback.format_exc().replace("\n", " | "))
            response = json_response({"error": "internal error"}, 500)
        self._send(response)

    def _send(self, response: Response) -> None:
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def end_headers(self) -> None:
        # Also reached through send_error (malformed requests), so every answer names who gave it.
        self.send_header("x-bookinfo-service", self.app.config.service)
        self.send_header("x-bookinfo-version", self.app.config.version)
        super().end_headers()

    def log_request(self, code: object = "-", size: object = "-") -> None:
        started = getattr(self, "_started", None)
        took = f"{(time.monotonic() - started) * 1000:.1f}ms" if started is not None else "-"
        user = self.headers.get("end-user", "-") if getattr(self, "headers", None) else "-"
        self.log_message('"%s" %s %s end-user=%s', self.requestline, code, took, user)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        config = self.app.config
        log(f"{config.service} {config.version} {self.client_address[0]} " + (format % args))


class Server(ThreadingHTTPServer):
    daemon_threads = True


class Server6(Server):
    address_family = socket.AF_INET6


def serve(config: Config) -> int:
    handler = type("BoundHandler", (Handler,), {"app": SERVICE_CLASSES[config.service](config)})
    server_class = Server6 if ":" in config.bind else Server
    try:
        server = server_class((config.bind, config.port), handler)
    except OSError as exc:
        log(f"bookinfo {config.service} {config.version}: cannot listen on {config.bind}:{config.port}: {exc}")
        return 1

    def stop(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever() to return, so it cannot run on the thread serving.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    port = server.server_address[1]
    fault = ""
    if config.error_rate or config.extra_latency:
        fault = f" (error rate {config.error_rate}, extra latency {config.extra_latency}s)"
    log(f"bookinfo {config.service} {config.version} listening on {config.bind}:{port}{fault}")
    try:
        server.serve_forever()
    finally:
        server.server_close()
    log(f"bookinfo {config.service} {config.version} stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    config = parse_config(sys.argv[1:] if argv is None else argv, os.environ)
    return serve(config)


if __name__ == "__main__":
    sys.exit(main())
