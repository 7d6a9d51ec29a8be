"""A Discord-style gateway websocket with REST beside it, as Discord and QQ both speak it; the
fakes of those two configure it (path, authentication, READY, a few payload details).

Gateway at `gateway_path` (any query; recorded in `gateway_urls`): HELLO with `heartbeat_ms`, ACK
for every heartbeat while `ack` is true, IDENTIFY (close 4004 unless `authentic`, or the close
`refusal` gives) then READY (s=1) with a new session id, RESUME replaying what the session missed
(each event keeps its increasing `s`) and then RESUMED, op 9 false for an unknown session.
Controls: `drop()` cuts the connection, `close(code)` closes it with a code, `reconnect()` sends
op 7, `invalidate(resumable)` sends op 9. Events made while nobody is connected wait for the next
RESUME (or READY, if there is no session yet). Every frame a client sends is in `received`, the
close codes it sent in `closes`.

REST: a subclass answers `_rest(handler, method, path)` with (status, body[, headers]); a bytes
body goes out as application/octet-stream, anything else as JSON; every answer is logged in
`rest` as (method, path, status).
"""
import itertools
import json
import threading
import uuid
from abc import abstractmethod
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from tests.fakes.base import HOST, FakeServer
from tests.fakes.ws import Closed, accept, is_upgrade


class GatewayServer(FakeServer):
    gateway_path = "/gateway"
    close_code = 4000                   # close()'s default
    auth_failed = "Authentication failed."
    reconnect_frame = {"op": 7, "d": None}
    resumed_data = {}

    def __init__(self, heartbeat_ms=500, first_id=1):
        self.heartbeat_ms, self.ack = heartbeat_ms, True
        self.sent, self.typing, self.rest = [], [], []      # rest: (method, path, status)
        self.received, self.closes, self.gateway_urls = [], [], []
        self.identifies = self.resumes = 0
        self.files = {}                         # attachment path -> bytes
        self.downloads, self.downloads_open = [], threading.Event()   # cleared: downloads wait
        self.downloads_open.set()
        self._limits = []                       # retry_after values still to answer with
        self._ids = itertools.count(first_id)
        self._lock = threading.RLock()
        self._session = None                    # {"id", "s", "events": [(s, t, d)]}
        self._pending = []                      # events made before the first READY
        self._ws = None                         # the client connection that is following along

    def handler(self):
        return _Handler

    @property
    def gateway_url(self):
        return f"ws://{HOST}:{self.bound_port}{self.gateway_path}"

    # --- what a subclass says ---

    @abstractmethod
    def authentic(self, d) -> bool:
        """Whether IDENTIFY's or RESUME's `d` carries valid credentials."""

    def refusal(self, d):
        """(code, reason) to close an authentic IDENTIFY with, or None to accept it."""
        return None

    def new_session_id(self) -> str:
        return uuid.uuid4().hex

    @abstractmethod
    def ready(self, d, session_id) -> dict:
        """READY's `d` for IDENTIFY's `d`."""

    def heartbeat_ack(self, d) -> dict:
        return {"op": 11}

    # --- what the test does ---

    def event(self, t, d):
        with self._lock:
            if self._session is None:
                self._pending.append((t, d))
                return
            self._session["s"] += 1
            self._session["events"].append((self._session["s"], t, d))
            self._push(self._session["s"], t, d)

    def rate_limit(self, *retry_after: float):
        self._limits.extend(retry_after)

    def download(self, path):
        """An attachment's answer, after the test lets downloads through."""
        self.downloads.append(path)
        self.downloads_open.wait(60)
        return 200, self.files[path]

    def drop(self):
        self.downloads_open.set()               # nothing hangs on when the fake stops
        with self._lock:
            ws, self._ws = self._ws, None
        if ws:
            ws.drop()

    def close(self, code=None, reason=""):
        with self._lock:
            ws, self._ws = self._ws, None
        if ws:
            ws.close(self.close_code if code is None else code, reason)

    def reconnect(self):
        self._send(dict(self.reconnect_frame))

    def invalidate(self, resumable=False):
        self._send({"op": 9, "d": resumable})

    @property
    def connected(self) -> bool:
        return self._ws is not None

    # --- the gateway ---

    def _send(self, payload):
        ws = self._ws
        if ws:
            try:
                ws.send(payload)
            except Closed:
                pass

    def _push(self, s, t, d):
        self._send({"op": 0, "s": s, "t": t, "d": d})

    def _gateway(self, ws, path):
        self.gateway_urls.append(path)
        ws.send({"op": 10, "d": {"heartbeat_interval": self.heartbeat_ms}})
        try:
            while True:
                text = ws.recv(timeout=60)
                if text is None:
                    continue
                msg = json.loads(text)
                self.received.append(msg)
                op, d = msg.get("op"), msg.get("d")
                if op == 1:
                    if self.ack:
                        ws.send(self.heartbeat_ack(d))
                elif op == 2:
                    self._identify(ws, d)
                elif op == 6:
                    self._resume(ws, d)
        except Closed as e:
            self.closes.append(e.code)
            with self._lock:
                if self._ws is ws:
                    self._ws = None

    def _identify(self, ws, d):
        self.identifies += 1
        if not self.authentic(d):
            ws.close(4004, self.auth_failed)
        elif refused := self.refusal(d):
            ws.close(*refused)
        else:
            with self._lock:
                self._session = {"id": self.new_session_id(), "s": 1, "events": []}
                self._ws = ws
                ws.send({"op": 0, "s": 1, "t": "READY", "d": self.ready(d, self._session["id"])})
                pending, self._pending = self._pending, []
                for t, data in pending:
                    self.event(t, data)

    def _resume(self, ws, d):
        self.resumes += 1
        with self._lock:
            session = self._session
            if not self.authentic(d):
                ws.close(4004, self.auth_failed)
            elif not session or d.get("session_id") != session["id"]:
                ws.send({"op": 9, "d": False})
            else:
                self._ws = ws
                for s, t, data in session["events"]:
                    if s > (d.get("seq") or 0):
                        self._push(s, t, data)
                session["s"] += 1
                ws.send({"op": 0, "s": session["s"], "t": "RESUMED", "d": self.resumed_data})

    @abstractmethod
    def _rest(self, h, method, path):
        """Answer a REST request (h is the request handler)."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == self.server.fake.gateway_path and is_upgrade(self):
            self.server.fake._gateway(accept(self), self.path)
        else:
            self._answer("GET", path)

    def do_POST(self):
        self._answer("POST", urlsplit(self.path).path)

    def _answer(self, method, path):
        fake = self.server.fake
        status, body, *headers = fake._rest(self, method, path)
        fake.rest.append((method, path, status))
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for k, v in (headers[0] if headers else {}).items():
            self.send_header(k, v)
        if status != 204:
            kind = "application/octet-stream" if isinstance(body, bytes) else "application/json"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if status != 204:
            self.wfile.write(data)

    def log_message(self, *args):
        pass
