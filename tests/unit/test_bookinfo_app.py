"""Behaviour of the Bookinfo stand-ins (examples/bookinfo/roles/bookinfo/files/bookinfo.py), through real HTTP on loopback.

Each service runs as its own process, as on the VMs, wired to the others with the same environment variables
the real Bookinfo reads (DETAILS_HOSTNAME, REVIEWS_SERVICE_PORT, ...). Where a test must see what a service
sent upstream, a small recording server in the test stands in for that upstream.
"""

from __future__ import annotations

import ast
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness import ROOT

SCRIPT = ROOT / "examples" / "bookinfo" / "roles" / "bookinfo" / "files" / "bookinfo.py"
HOSTNAME = socket.gethostname()

REVIEWS_SORRY = "Sorry, product reviews are currently unavailable for this book."
DETAILS_SORRY = "Sorry, product details are currently unavailable for this book."
RATINGS_UNAVAILABLE = "Ratings service is currently unavailable"
REVIEWER1_TEXT = "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"
REVIEWER2_TEXT = (
    "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare."
)
FULL, EMPTY = "\u2605", "\u2606"  # ★ ☆


# --- plumbing: processes, HTTP, recording upstreams --------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> object:
        return json.loads(self.body)


def call(
    port: int,
    path: str,
    method: str = "GET",
    headers: dict | None = None,
    body: bytes | None = None,
    timeout: float = 20.0,
) -> Answer:
    """One HTTP request to 127.0.0.1:port; no redirects followed, no proxies."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


@dataclass
class Service:
    name: str
    version: str
    port: int
    proc: subprocess.Popen
    log: Path

    def env(self, prefix: str) -> dict[str, str]:
        """The environment that points a client at this service, e.g. REVIEWS_HOSTNAME/REVIEWS_SERVICE_PORT."""
        return {f"{prefix}_HOSTNAME": "127.0.0.1", f"{prefix}_SERVICE_PORT": str(self.port)}


class Launcher:
    """Starts bookinfo.py processes on loopback, each on a free port it picks itself, and stops them all."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.running: list[Service] = []

    def start(
        self,
        service: str,
        version: str = "v1",
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        via_env: bool = False,
    ) -> Service:
        log = self.logdir / f"{service}-{version}-{len(self.running)}.log"
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONDONTWRITEBYTECODE": "1",
            # A proxy that does not exist: the services must call their upstreams directly, whatever the
            # VM's environment says (in the mesh the sidecar is the proxy).
            "http_proxy": "http://127.0.0.1:9",
            "HTTP_PROXY": "http://127.0.0.1:9",
        }
        full_env.update(env or {})
        argv = [sys.executable, str(SCRIPT)]
        if via_env:
            full_env.update(
                BOOKINFO_SERVICE=service, BOOKINFO_VERSION=version, BOOKINFO_PORT="0", BOOKINFO_BIND="127.0.0.1"
            )
        else:
            argv += ["--service", service, "--version", version, "--port", "0", "--bind", "127.0.0.1"]
        argv += list(args)
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=full_env, stdin=subprocess.DEVNULL)
        running = Service(service, version, 0, proc, log)
        self.running.append(running)
        running.port = self._wait_listening(running)
        return running

    @staticmethod
    def _wait_listening(svc: Service) -> int:
        pattern = re.compile(rf"bookinfo {svc.name} {re.escape(svc.version)} listening on 127\.0\.0\.1:(\d+)")
        for _ in range(200):  # 10 s at most
            match = pattern.search(svc.log.read_text())
            if match:
                port = int(match.group(1))
                assert call(port, "/health").status == 200
                return port
            if svc.proc.poll() is not None:
                pytest.fail(f"{svc.name} {svc.version} exited with {svc.proc.returncode}:\n{svc.log.read_text()}")
            time.sleep(0.05)
        pytest.fail(f"{svc.name} {svc.version} did not start listening:\n{svc.log.read_text()}")

    def stop(self, svc: Service) -> int:
        if svc.proc.poll() is None:
            svc.proc.send_signal(signal.SIGTERM)
            try:
                svc.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                svc.proc.kill()
                svc.proc.wait(timeout=10)
        return svc.proc.returncode

    def stop_all(self) -> None:
        for svc in self.running:  # signal all first: each takes up to half a second to leave serve_forever
            if svc.proc.poll() is None:
                svc.proc.send_signal(signal.SIGTERM)
        for svc in self.running:
            self.stop(svc)


@dataclass
class Recorder:
    """A stand-in upstream on loopback that records each request's path and headers and answers as told."""

    status: int = 200
    payload: object = field(default_factory=dict)
    delay: float = 0.0
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                if recorder.delay:
                    time.sleep(recorder.delay)
                body = json.dumps(recorder.payload).encode()
                try:
                    self.send_response(recorder.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the caller gave up waiting
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def env(self, prefix: str) -> dict[str, str]:
        return {f"{prefix}_HOSTNAME": "127.0.0.1", f"{prefix}_SERVICE_PORT": str(self.port)}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """ratings, details, reviews v1/v2/v3, and one productpage in front of each reviews version."""
    launcher = Launcher(tmp_path_factory.mktemp("bookinfo-stack"))
    try:
        ratings = launcher.start("ratings")
        details = launcher.start("details", via_env=True)
        reviews = {
            v: launcher.start("reviews", v, env=ratings.env("RATINGS"), via_env=(v == "v2")) for v in ("v1", "v2", "v3")
        }
        productpage = {
            v: launcher.start(
                "productpage", env={**details.env("DETAILS"), **reviews[v].env("REVIEWS"), **ratings.env("RATINGS")}
            )
            for v in ("v1", "v2", "v3")
        }
        yield {"ratings": ratings, "details": details, "reviews": reviews, "productpage": productpage}
    finally:
        launcher.stop_all()


@pytest.fixture
def launcher(tmp_path):
    launcher = Launcher(tmp_path)
    yield launcher
    launcher.stop_all()


@pytest.fixture
def recorder():
    made: list[Recorder] = []

    def make(**kwargs: object) -> Recorder:
        made.append(Recorder(**kwargs))
        return made[-1]

    yield make
    for rec in made:
        rec.close()


@pytest.fixture
def closed_port():
    """A loopback port bound but never listening: connecting to it is refused, and no one else can take it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def down(prefix: str, port: int) -> dict[str, str]:
    return {f"{prefix}_HOSTNAME": "127.0.0.1", f"{prefix}_SERVICE_PORT": str(port)}


def stars(page: str) -> list[tuple[str, str]]:
    """(colour, stars) of each rating shown on the page, in order, e.g. ("red", "★★★★☆")."""
    return [
        (color, html_stars.replace("&#9733;", FULL).replace("&#9734;", EMPTY))
        for color, html_stars in re.findall(r'<span class="stars" style="color: (\w+)"[^>]*>([^<]*)</span>', page)
    ]


REVIEWS_OF_BOOK = {
    "id": "0",
    "podname": "recorder",
    "clustername": "null",
    "version": "v9",
    "reviews": [{"reviewer": "Reviewer1", "text": "Fine."}],
}


# --- the script itself --------------------------------------------------------------------------------------


def test_script_compiles_with_python3(tmp_path):
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path)}  # keep __pycache__ out of the role
    result = subprocess.run(
        [sys.executable, "-m", "py_compile", str(SCRIPT)], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_script_imports_only_the_standard_library():
    tree = ast.parse(SCRIPT.read_text(), filename=str(SCRIPT))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import at line {node.lineno}"
            imported.add(node.module.split(".")[0])
    assert imported, "found no imports at all: the check is not looking at the script"
    assert sorted(imported - set(sys.stdlib_module_names)) == []


@pytest.mark.parametrize(
    ("args", "env", "complaint"),
    [
        ((), {}, "--service (or BOOKINFO_SERVICE) is required"),
        (("--service", "shipping"), {}, "unknown service 'shipping'"),
        ((), {"BOOKINFO_SERVICE": "shipping"}, "unknown service 'shipping'"),
        (("--service", "reviews", "--version", "v4"), {}, "reviews has versions v1, v2 and v3"),
        (("--service", "details", "--error-rate", "1.5"), {}, "must be between 0 and 1"),
        (("--service", "details"), {"BOOKINFO_PORT": "http"}, "not a port number"),
        (("--service", "productpage"), {"REVIEWS_SERVICE_PORT": "x"}, "REVIEWS_SERVICE_PORT"),
    ],
)
def test_bad_configuration_is_refused_with_a_message(args, env, complaint):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 2
    assert complaint in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_stops_the_service_cleanly(launcher):
    svc = launcher.start("ratings")
    assert launcher.stop(svc) == 0
    assert "bookinfo ratings v1 stopped" in svc.log.read_text()


# --- each service's API -------------------------------------------------------------------------------------


def test_details_answers_like_the_real_one(stack):
    answer = call(stack["details"].port, "/details/0")
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json() == {
        "id": 0,
        "author": "William Shakespeare",
        "year": 1595,
        "type": "paperback",
        "pages": 200,
        "publisher": "PublisherA",
        "language": "English",
        "ISBN-10": "1234567890",
        "ISBN-13": "123-1234567890",
    }
    assert answer.headers["x-bookinfo-service"] == "details"
    assert answer.headers["x-bookinfo-version"] == "v1"
    assert call(stack["details"].port, "/details/zero").status == 400
    assert call(stack["details"].port, "/nothing-here").status == 404
    assert call(stack["details"].port, "/health").json() == {"status": "Details is healthy"}


def test_ratings_answers_like_the_real_one(stack):
    answer = call(stack["ratings"].port, "/ratings/0")
    assert answer.status == 200
    assert answer.json() == {"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}
    assert answer.headers["x-bookinfo-service"] == "ratings"
    assert call(stack["ratings"].port, "/ratings/x").status == 400
    assert call(stack["ratings"].port, "/health").status == 200


@pytest.mark.parametrize(
    ("version", "rating1", "rating2"),
    [
        ("v1", None, None),
        ("v2", {"stars": 5, "color": "black"}, {"stars": 4, "color": "black"}),
        ("v3", {"stars": 5, "color": "red"}, {"stars": 4, "color": "red"}),
    ],
)
def test_reviews_versions(stack, version, rating1, rating2):
    answer = call(stack["reviews"][version].port, "/reviews/0")
    assert answer.status == 200
    assert answer.headers["x-bookinfo-service"] == "reviews"
    assert answer.headers["x-bookinfo-version"] == version
    body = answer.json()
    assert body["id"] == "0"
    assert body["podname"] == HOSTNAME
    assert body["clustername"] == "null"
    assert body["version"] == version
    (first, second) = body["reviews"]
    assert (first["reviewer"], first["text"]) == ("Reviewer1", REVIEWER1_TEXT)
    assert (second["reviewer"], second["text"]) == ("Reviewer2", REVIEWER2_TEXT)
    assert first.get("rating") == rating1
    assert second.get("rating") == rating2


# --- what a user sees on the product page -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "expected_stars"),
    [
        ("v1", []),
        ("v2", [("black", FULL * 5), ("black", FULL * 4 + EMPTY)]),
        ("v3", [("red", FULL * 5), ("red", FULL * 4 + EMPTY)]),
    ],
)
def test_productpage_shows_details_and_reviews_of_each_version(stack, version, expected_stars):
    answer = call(stack["productpage"][version].port, "/productpage?u=normal")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/html")
    page = answer.text
    assert "<title>Simple Bookstore App</title>" in page
    assert "The Comedy of Errors" in page
    for shown in ("William Shakespeare", "paperback", "PublisherA", "English", "1234567890", "123-1234567890"):
        assert shown in page
    assert REVIEWER1_TEXT in page and REVIEWER2_TEXT in page
    assert f"Reviews served by: {HOSTNAME}" in page
    assert f"(reviews {version})" in page
    assert stars(page) == expected_stars
    assert RATINGS_UNAVAILABLE not in page and "Sorry" not in page


def test_productpage_index_and_api(stack):
    port = stack["productpage"]["v2"].port
    index = call(port, "/")
    assert index.status == 200 and 'href="/productpage?u=normal"' in index.text
    assert call(port, "/health").text == "Product page is healthy"
    products = call(port, "/api/v1/products").json()
    assert [p["title"] for p in products] == ["The Comedy of Errors"]
    assert call(port, "/api/v1/products/0").json()["publisher"] == "PublisherA"
    reviews = call(port, "/api/v1/products/0/reviews")
    assert reviews.status == 200 and reviews.json()["version"] == "v2"
    assert call(port, "/api/v1/products/0/ratings").json() == {"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}
    assert call(port, "/api/v1/products/zero").status == 400  # details refuses a non-numeric id


def test_login_as_jason_sends_end_user_to_reviews(launcher, recorder, stack):
    reviews = recorder(payload=REVIEWS_OF_BOOK)
    page = launcher.start("productpage", env={**stack["details"].env("DETAILS"), **reviews.env("REVIEWS")})

    login = call(
        page.port,
        "/login",
        "POST",
        {"Content-Type": "application/x-www-form-urlencoded"},
        urllib.parse.urlencode({"username": "jason", "passwd": ""}).encode(),
    )
    assert login.status == 302
    assert login.headers["Location"].endswith("/productpage")
    cookie = login.headers["Set-Cookie"].split(";")[0]
    assert cookie.startswith("session=")

    tracing = {
        "x-request-id": "req-42",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7",
        "user-agent": "pytest-user",
    }
    shown = call(page.port, "/productpage", headers={"Cookie": cookie, **tracing})
    assert shown.status == 200
    assert "jason" in shown.text and "sign out" in shown.text
    path, seen = reviews.requests[-1]
    assert path == "/reviews/0"
    assert seen.get("end-user") == "jason"
    for name, value in tracing.items():
        assert seen.get(name) == value, name
    assert seen.get("cookie") == cookie

    logout = call(page.port, "/logout", headers={"Cookie": cookie})
    assert logout.status == 302
    assert "Max-Age=0" in logout.headers["Set-Cookie"]
    call(page.port, "/productpage")
    assert "end-user" not in reviews.requests[-1][1]


def test_anonymous_end_user_header_is_passed_on(launcher, recorder, stack):
    reviews = recorder(payload=REVIEWS_OF_BOOK)
    page = launcher.start("productpage", env={**stack["details"].env("DETAILS"), **reviews.env("REVIEWS")})
    call(page.port, "/productpage", headers={"end-user": "tester"})
    assert reviews.requests[-1][1].get("end-user") == "tester"


def test_login_name_outside_ascii_does_not_break_the_page(launcher, recorder, stack):
    # "ł" is not even latin-1, which http.client would refuse to send in the end-user header.
    reviews = recorder(payload=REVIEWS_OF_BOOK)
    page = launcher.start("productpage", env={**stack["details"].env("DETAILS"), **reviews.env("REVIEWS")})
    login = call(
        page.port,
        "/login",
        "POST",
        {"Content-Type": "application/x-www-form-urlencoded"},
        urllib.parse.urlencode({"username": "zo\u0142"}).encode(),
    )
    shown = call(page.port, "/productpage", headers={"Cookie": login.headers["Set-Cookie"].split(";")[0]})
    assert REVIEWS_SORRY not in shown.text
    assert reviews.requests[-1][1].get("end-user") == "zo"


def test_reviews_passes_end_user_and_tracing_on_to_ratings(launcher, recorder):
    ratings = recorder(payload={"id": 0, "ratings": {"Reviewer1": 2, "Reviewer2": 1}})
    reviews = launcher.start("reviews", "v2", env=ratings.env("RATINGS"))
    answer = call(
        reviews.port,
        "/reviews/0",
        headers={"end-user": "jason", "x-request-id": "req-7", "x-b3-spanid": "e457b5a2e4d86bd1"},
    )
    assert [r["rating"] for r in answer.json()["reviews"]] == [
        {"stars": 2, "color": "black"},
        {"stars": 1, "color": "black"},
    ]
    path, seen = ratings.requests[-1]
    assert path == "/ratings/0"
    assert seen.get("end-user") == "jason"
    assert seen.get("x-request-id") == "req-7"
    assert seen.get("x-b3-spanid") == "e457b5a2e4d86bd1"


def test_reviews_v1_never_calls_ratings(launcher, recorder):
    ratings = recorder(payload={"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}})
    reviews = launcher.start("reviews", "v1", env=ratings.env("RATINGS"))
    body = call(reviews.port, "/reviews/0").json()
    assert all("rating" not in r for r in body["reviews"])
    assert ratings.requests == []


# --- failures -------------------------------------------------------------------------------------------------


def test_ratings_down_shows_the_ratings_error_in_v2(launcher, stack, closed_port):
    reviews = launcher.start("reviews", "v2", env=down("RATINGS", closed_port))
    page = launcher.start("productpage", env={**stack["details"].env("DETAILS"), **reviews.env("REVIEWS")})
    shown = call(page.port, "/productpage").text
    assert shown.count(RATINGS_UNAVAILABLE) == 2
    assert stars(shown) == []
    assert REVIEWER1_TEXT in shown  # the reviews themselves still show


def test_reviews_down_shows_sorry(launcher, stack, closed_port):
    page = launcher.start("productpage", env={**stack["details"].env("DETAILS"), **down("REVIEWS", closed_port)})
    shown = call(page.port, "/productpage")
    assert shown.status == 200
    assert "Error fetching product reviews!" in shown.text
    assert REVIEWS_SORRY in shown.text
    assert "PublisherA" in shown.text  # details still show
    api = call(page.port, "/api/v1/products/0/reviews")
    assert api.status == 503
    assert api.json() == {"error": REVIEWS_SORRY}


def test_reviews_failing_is_tried_twice(launcher, recorder, stack):
    reviews = recorder(status=503, payload={"error": "upstream connect error"})
    page = launcher.start("productpage", env={**stack["details"].env("DETAILS"), **reviews.env("REVIEWS")})
    assert REVIEWS_SORRY in call(page.port, "/productpage").text
    assert len(reviews.requests) == 2
    api = call(page.port, "/api/v1/products/0/reviews")
    assert api.status == 503  # reviews' own error status passes through
    assert len(reviews.requests) == 4


def test_reviews_too_slow_is_given_up_after_two_tries(launcher, recorder, stack):
    # 3.5 s is past productpage's 3 s timeout for reviews (Istio's fault-injection task relies on this).
    reviews = recorder(payload=REVIEWS_OF_BOOK, delay=3.5)
    page = launcher.start("productpage", env={**stack["details"].env("DETAILS"), **reviews.env("REVIEWS")})
    assert REVIEWS_SORRY in call(page.port, "/productpage", timeout=30).text
    assert len(reviews.requests) == 2


def test_ratings_timeouts_differ_between_v2_and_v3(launcher):
    # 4 s is within v2's 10 s timeout for ratings but past v3's 2.5 s.
    slow = launcher.start("ratings", args=("--extra-latency", "4"))
    reviews = {v: launcher.start("reviews", v, env=slow.env("RATINGS")) for v in ("v2", "v3")}
    results = {}

    def ask(version: str) -> None:
        results[version] = call(reviews[version].port, "/reviews/0", timeout=30).json()["reviews"][0]["rating"]

    threads = [threading.Thread(target=ask, args=(v,)) for v in reviews]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == {"v2": {"stars": 5, "color": "black"}, "v3": {"error": RATINGS_UNAVAILABLE}}


def test_details_down_shows_sorry(launcher, stack, closed_port):
    env = {**down("DETAILS", closed_port), **stack["reviews"]["v3"].env("REVIEWS")}
    page = launcher.start("productpage", env=env)
    shown = call(page.port, "/productpage").text
    assert DETAILS_SORRY in shown
    assert stars(shown)[0] == ("red", FULL * 5)  # reviews still show


def test_error_rate_one_answers_500_but_stays_healthy(launcher, stack):
    details = launcher.start("details", args=("--error-rate", "1.0"))
    answer = call(details.port, "/details/0")
    assert answer.status == 500
    assert answer.headers["x-bookinfo-service"] == "details"
    assert call(details.port, "/health").status == 200  # readiness checks still pass on a faulty canary
    page = launcher.start("productpage", env={**details.env("DETAILS"), **stack["reviews"]["v1"].env("REVIEWS")})
    assert DETAILS_SORRY in call(page.port, "/productpage").text


def test_error_rate_from_the_environment(launcher):
    ratings = launcher.start("ratings", env={"BOOKINFO_ERROR_RATE": "1"}, via_env=True)
    assert call(ratings.port, "/ratings/0").status == 500


def test_services_domain_is_appended_to_upstream_names(launcher):
    # Names under a domain do not resolve here, so look at the index page: it shows what productpage calls.
    page = launcher.start(
        "productpage", env={"SERVICES_DOMAIN": "default.svc.cluster.local", "REVIEWS_SERVICE_PORT": "9081"}
    )
    index = call(page.port, "/").text
    assert "http://reviews.default.svc.cluster.local:9081/reviews/0" in index
    assert "http://details.default.svc.cluster.local:9080/details/0" in index
    assert "http://ratings.default.svc.cluster.local:9080/ratings/0" in index
