"""Fakes for the web tools, on 127.0.0.1: a Brave Search API and a tiny scripted web site.

    with FakeBrave(api_key="k") as brave:        # brave.url is the full search endpoint
        brave.script(429)                         # the next request gets a rate-limit error
        ...                                       # brave.requests: [(path, query, headers)]

    with FakeSite() as site:
        site.page("/a", "<html>…</html>")         # or .json(), .redirect(), .raw()
        site.url_for("/a")

    with FakeDrip(b"HTTP/1.1 200 OK\r\n", b"X-Drip: 1\r\n", every=0.3) as drip:   # a slow server
        drip.base
"""

import json
import socketserver
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from tests.fakes.base import FakeServer


class _Server(FakeServer):
    """A FakeServer whose GETs subclasses answer with `respond`."""

    def __init__(self):
        self.requests = []

    def handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                fake.requests.append((parts.path, query, dict(self.headers)))
                status, headers, body, *drip = fake.respond(parts.path, query, self.headers)
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    for i in range(0, len(body), 65536):
                        self.wfile.write(body[i:i + 65536])
                        time.sleep(drip[0] if drip else 0)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading, as web_fetch does past its size cap

            def log_message(self, *args):
                pass

        return Handler

    def respond(self, path, query, headers):
        """Subclasses answer; the base knows no paths."""
        return _json(404, {"error": f"no such path: {path}"})


def _json(status, payload, headers=None):
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode()


def brave_error(status: int, code: str, detail: str, meta=None) -> dict:
    """An error body shaped like the Brave Search API's."""
    return {"type": "ErrorResponse", "time": int(time.time()),
            "error": {"id": str(uuid.uuid4()), "status": status, "code": code, "detail": detail,
                      "meta": meta or {}}}


class FakeBrave(_Server):
    """Answers GET /res/v1/web/search like the Brave Search API.

    `results` is the corpus (default: 20 made-up results naming the query); the answer holds the
    first `count` of them (Brave's default 20). `script(status, body)` queues an error response.
    """

    PATH = "/res/v1/web/search"

    def __init__(self, api_key: str = "test-key", results=None):
        super().__init__()
        self.api_key = api_key
        self.results = results
        self._script = []

    @property
    def url(self) -> str:
        return self.base + self.PATH

    def script(self, status: int, body=None):
        if body is None and status == 429:
            body = brave_error(429, "RATE_LIMITED", "Request rate limit exceeded for plan.",
                               {"plan": "Free", "rate_limit": 1, "rate_current": 2})
        elif body is None:
            body = brave_error(status, "ERROR", "Scripted error.")
        self._script.append((status, body))

    def respond(self, path, query, headers):
        if path != self.PATH:
            return _json(404, brave_error(404, "RESOURCE_NOT_FOUND", "Resource not found."))
        if headers.get("X-Subscription-Token") != self.api_key:
            return _json(401, brave_error(401, "SUBSCRIPTION_TOKEN_INVALID",
                                          "The provided subscription token is invalid."))
        if self._script:
            status, body = self._script.pop(0)
            extra = {"X-RateLimit-Limit": "1, 2000", "X-RateLimit-Remaining": "0, 1990",
                     "X-RateLimit-Reset": "1, 2000000"} if status == 429 else {}
            return _json(status, body, extra)
        q = query.get("q", "")
        if not q:
            return _json(422, brave_error(422, "VALIDATION", "Unable to validate request parameter(s)"))
        count = int(query.get("count", 20))
        corpus = self.results if self.results is not None else [
            {"title": f"Result {i} about {q}", "url": f"https://example.com/{i}",
             "description": f"Snippet {i} mentioning <strong>{q}</strong>."} for i in range(1, 21)]
        results = [{"type": "search_result", **r} for r in corpus[:count]]
        return _json(200, {"type": "search", "query": {"original": q},
                           "web": {"type": "search", "results": results}})


class FakeSite(_Server):
    """Serves scripted pages: each path maps to (status, headers, body bytes)."""

    def __init__(self):
        super().__init__()
        self.routes = {}

    def url_for(self, path: str) -> str:
        return self.base + path

    def raw(self, path, body: bytes, content_type="application/octet-stream", status=200, headers=None,
            drip=0.0):
        """drip: seconds to wait after each 64 KiB, for a slow server; content_type None sends no type."""
        ctype = {"Content-Type": content_type} if content_type else {}
        self.routes[path] = (status, {**ctype, **(headers or {})}, body, drip)

    def page(self, path, html: str, content_type="text/html; charset=utf-8"):
        self.raw(path, html.encode("utf-8"), content_type)

    def json(self, path, payload):
        self.raw(path, json.dumps(payload).encode(), "application/json")

    def redirect(self, path, location, status=302):
        self.raw(path, b"", "text/plain", status, {"Location": location})

    def respond(self, path, query, headers):
        return self.routes.get(path, (404, {"Content-Type": "text/plain"}, b"not found"))


class FakeDrip(FakeServer):
    """Answers any request with `head`, then `piece` every `every` seconds, `count` times (each
    write succeeds: a client that only bounds each read waits for ever), then closes."""

    def __init__(self, head: bytes, piece: bytes, every=0.3, count=40):
        self.head, self.piece, self.every, self.count = head, piece, every, count
        self.stopping, self.requests = threading.Event(), 0

    def handler(self):
        fake = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass        # the request line and headers
                fake.requests += 1
                try:
                    self.wfile.write(fake.head)
                    for _ in range(fake.count):
                        if fake.stopping.wait(fake.every):
                            return
                        self.wfile.write(fake.piece)
                except OSError:
                    pass        # the client hung up, as it should at its deadline

        return Handler

    def drop(self):
        self.stopping.set()
