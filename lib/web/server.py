"""HTTP on gateway.host:gateway.port, a gateway part like any other (SPEC §11): /health
(liveness only, no token), the page at / with its static files (no data, no token), and behind
the token everything else: the page's data (/ui/…, lib/web/page.py), the OpenAI-compatible API
(/v1/…, lib/web/api.py), and the 404 or 405 of a path or method not served. HEAD is GET without
the body.

Plain threads: the standard library's ThreadingHTTPServer, with at most MAX_CONNECTIONS at once
(more are told 503 and closed), so a flood cannot eat the Pi's threads. It waits on the listening
socket and a wake pipe together, so an idle gateway's server never wakes up (http.server's
serve_forever looks twice a second)."""
import json
import logging
import os
import selectors
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from lib.errors import UserError
from lib.part import Part
from lib.web.auth import Guard, HttpError, bad_request, check_origin, ensure_token, loopback

log = logging.getLogger(__name__)
MAX_CONNECTIONS = 32
MAX_BODY = 2 * 1024 * 1024
STATIC = Path(__file__).parent / "static"
FILES = {"/": "index.html", "/static/app.js": "app.js", "/static/app.css": "app.css"}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8"}
SAFE = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY", "Cache-Control": "no-store",
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                   "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"}


def serve(gateway) -> list:
    """The gateway's hook: [the WebServer], or [] when the port is taken (logged). A host that
    other machines can reach, with no token, stops start-up (UserError: exit 2)."""
    g = gateway.config.gateway
    token = ensure_token(gateway.config) if loopback(g.host) else g.token
    if not token and not loopback(g.host):
        raise UserError(f"gateway.host is {g.host}, which other machines can reach, and "
                        "gateway.token is empty: run `python nanoclaw.py onboard` to make one "
                        "(or set gateway.host: 127.0.0.1 and use an SSH tunnel)")
    try:
        return [WebServer(gateway, token)]
    except OSError as e:
        log.warning("no HTTP server: cannot listen on %s:%d (%s)", g.host, g.port, e.strerror)
        return []


class WebServer(Part):
    name = "web"

    def __init__(self, gateway, token: str):
        """Binds now (OSError when it cannot). `gateway` gives the config, the parts, health and
        the file watcher that says when a reply or a session line was written."""
        from lib.web.api import Exchange
        super().__init__()
        g = gateway.config.gateway
        self.gateway = gateway
        self.guard = Guard(lambda: gateway.config.gateway.token or token, g.port)
        self.exchange = Exchange(gateway.home)
        for folder in ("outbox/sent", "sessions"):
            (gateway.home / folder).mkdir(parents=True, exist_ok=True)
            gateway.watcher.watch(gateway.home / folder, self.exchange.changed)
        handler = type("Handler", (_Handler,), {"web": self})
        self.server = _Server((g.host, g.port), handler)
        self.port = self.server.server_address[1]
        self._wake_r, self._wake_w = os.pipe()

    def loops(self) -> list:
        return [self._serve]

    def stop(self, timeout: float = 2.0):
        self.exchange.close()           # requests waiting for a reply are told 503
        os.write(self._wake_w, b"x")
        super().stop(timeout)
        self.server.server_close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def _serve(self):
        with selectors.DefaultSelector() as sel:
            sel.register(self.server, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():     # no timeout: asleep until someone connects
                    if key.fileobj == self._wake_r:
                        return
                    self.server.handle_request()


def error_body(e: HttpError) -> bytes:
    """The OpenAI error shape."""
    kind = {401: "invalid_request_error", 403: "permission_error", 404: "invalid_request_error",
            429: "rate_limit_error"}.get(e.status, "server_error" if e.status >= 500
                                         else "invalid_request_error")
    return json.dumps({"error": {"message": str(e), "type": kind, "param": None, "code": e.code}},
                      ensure_ascii=False).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler):
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):      # full: no thread for this one
            raw = error_body(HttpError(503, "too many connections; try again in a few seconds",
                                       "overloaded"))
            try:
                request.send(b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Type: "
                             b"application/json\r\nContent-Length: %d\r\nConnection: close\r\n"
                             b"\r\n%s" % (len(raw), raw))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Handler(BaseHTTPRequestHandler):
    web: WebServer = None
    timeout = 10            # seconds a connection may stay silent: a stalled client holds no thread
    server_version, sys_version = "nanoclaw", ""

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def do_other(self):         # 405 or 404 in the OpenAI error shape, not http.server's HTML 501
        self._route(self.command)
    do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_other

    def _route(self, method: str):
        url = urlsplit(self.path)
        self.query = {k: v[0] for k, v in parse_qs(url.query).items()}
        try:
            if url.path == "/health":
                ok = self.web.gateway.healthy(say=False)
                return self.send_json({"ok": ok}, 200 if ok else 503)
            if method in ("GET", "HEAD") and url.path in FILES:
                return self._static(FILES[url.path])
            if method == "POST" and url.path in ("/login", "/logout"):
                return self._login(url.path == "/login")
            changes = method not in ("GET", "HEAD")
            self.web.guard.check(self.headers, self.client_address[0], changes)
            from lib.web import api, page
            routes = api.ROUTES if url.path.startswith("/v1/") else page.ROUTES
            found = routes.get(("GET" if method == "HEAD" else method, url.path))
            if found is None:
                allowed = [m for m, p in routes if p == url.path]
                raise HttpError(405 if allowed else 404, f"{method} {url.path} is not served here"
                                + (f" (try {', '.join(allowed)})" if allowed else ""),
                                "method_not_allowed" if allowed else "not_found")
            found(self.web, self)
        except HttpError as e:
            self.send_error_json(e)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass                        # the client went away; nothing to tell it
        except Exception as e:          # a bug: logged, and the client told so in one line
            log.exception("web: %s %s failed", method, url.path)
            try:
                self.send_error_json(HttpError(500, f"internal error: {type(e).__name__}", "internal_error"))
            except OSError:
                pass

    def _login(self, login: bool):
        guard = self.web.guard
        check_origin(self.headers)
        if not login:
            return self.send_json({"ok": True}, headers={"Set-Cookie": guard.logout_cookie()})
        token = self.body().get("token")
        if not isinstance(token, str):
            raise bad_request("expected {\"token\": \"...\"}")
        cookie = guard.login_cookie(token.strip(), self.client_address[0])
        self.send_json({"ok": True}, headers={"Set-Cookie": cookie})

    def _static(self, name: str):
        raw = (STATIC / name).read_bytes()
        self.send_bytes(200, raw, TYPES[Path(name).suffix])

    # --- answers, for api.py and page.py ---

    def body(self) -> dict:
        """The request's JSON object (HttpError 400/413 when it is not one, or too big)."""
        try:
            size = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            size = -1
        if not 0 <= size <= MAX_BODY:
            raise HttpError(413 if size > 0 else 400, f"the body must have a Content-Length of "
                            f"at most {MAX_BODY} bytes", "invalid_request_error")
        try:
            obj = json.loads(self.rfile.read(size) or b"{}")
        except (ValueError, RecursionError):
            raise bad_request("the body is not valid JSON") from None
        if not isinstance(obj, dict):
            raise bad_request("the body must be a JSON object")
        return obj

    def send_bytes(self, status: int, raw: bytes, ctype: str, headers=None):
        self.send_response(status)
        for key, value in {**SAFE, "Content-Type": ctype, "Content-Length": str(len(raw)),
                           **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":      # HEAD: the headers GET would get, and no body
            self.wfile.write(raw)

    def send_json(self, obj, status: int = 200, headers=None):
        self.send_bytes(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json",
                        headers)

    def send_error_json(self, e: HttpError):
        self.send_bytes(e.status, error_body(e), "application/json", e.headers)

    def start_events(self):
        """Begin a Server-Sent Events answer; then event() each one."""
        self.send_response(200)
        for key, value in {**SAFE, "Content-Type": "text/event-stream", "X-Accel-Buffering": "no",
                           "Connection": "close"}.items():
            self.send_header(key, value)
        self.end_headers()
        self.close_connection = True

    def event(self, data, name: str | None = None):
        text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
        self.wfile.write(((f"event: {name}\n" if name else "") + f"data: {text}\n\n").encode())
        self.wfile.flush()

    def log_message(self, *args):
        pass
