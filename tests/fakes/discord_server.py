"""A fake Discord on 127.0.0.1: the REST routes a bot uses and a gateway v10 websocket.

    with FakeDiscord(token="t") as discord:
        # channels.discord: {api_base: discord.api_base, token: t}
        discord.say("hello", author_id="111")       # a DM arrives as MESSAGE_CREATE
        discord.wait_for(lambda: discord.sent)      # [{"channel_id", "body", "files", "at"}]

REST (under /api/v10, `Authorization: Bot <token>` or 401 with Discord's body):
`GET /gateway/bot`, `POST /channels/{id}/messages` (JSON or multipart with payload_json and
files[n]; content over 2,000 characters is a 400 "Invalid Form Body"; `rate_limit()` makes the
next answers 429 with `{"message", "retry_after", "global"}`), `POST /channels/{id}/typing` (204),
and attachment downloads at `/attachments/...` (no token, as on the CDN).

Gateway at `/gateway` (any query; recorded in `gateway_urls`): HELLO with `heartbeat_ms`, ACK
for every heartbeat while `ack` is true, READY (s=1) with a session id and a
resume_gateway_url pointing back here, RESUME replaying what the session missed (each event
keeps its increasing `s`) and then RESUMED, op 9 false for an unknown session. Controls:
`drop()` cuts the connection, `close(code)` closes it with a code, `reconnect()` sends op 7,
`invalidate(resumable)` sends op 9, `refuse_with = code` closes every IDENTIFY with that code.
Events made while nobody is connected wait for the next RESUME (or READY, if there is no session).
"""
import email.parser
import itertools
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from tests.fakes.ws import Closed, accept, is_upgrade

BOT_ID, BOT_NAME = "900000000000000001", "nanobot"


class FakeDiscord:
    def __init__(self, token: str = "test-token", heartbeat_ms: int = 500):
        self.token, self.heartbeat_ms = token, heartbeat_ms
        self.ack, self.refuse_with = True, None
        self.sent, self.typing, self.received, self.gateway_urls = [], [], [], []
        self.rest = []                          # (method, path, status)
        self.closes = []                        # close codes the clients sent
        self.identifies = self.resumes = 0
        self.files = {}                         # attachment path -> bytes
        self._limits = []                       # retry_after values still to answer with
        self._ids = itertools.count(1000)
        self._lock = threading.RLock()
        self._session = None                    # {"id", "s", "events": [(s, t, d)]}
        self._pending = []                      # events made before the first READY
        self._ws = None                         # the client connection that is following along
        self._httpd = None

    # --- life ---

    def start(self):
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self):
        self.drop()
        self._httpd.shutdown()
        self._httpd.server_close()

    __enter__ = start

    def __exit__(self, *exc):
        self.stop()

    @property
    def base(self):
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def api_base(self):
        return self.base + "/api/v10"

    @property
    def gateway_url(self):
        return f"ws://127.0.0.1:{self._httpd.server_address[1]}/gateway"

    # --- what the test does ---

    def say(self, content="", author_id="111", username="alice", channel_id="500", guild_id=None,
            mentions=(), attachments=(), bot=False) -> str:
        """A user writes: MESSAGE_CREATE for the bot. Returns the message id."""
        msg_id = str(next(self._ids))
        d = {"id": msg_id, "type": 0, "channel_id": channel_id, "content": content,
             "author": {"id": author_id, "username": username, "bot": bot},
             "mentions": [{"id": m, "username": "x"} for m in mentions],
             "attachments": list(attachments), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if guild_id:
            d["guild_id"] = guild_id
        self.event("MESSAGE_CREATE", d)
        return msg_id

    def attachment(self, filename, data: bytes, content_type="application/octet-stream") -> dict:
        path = f"/attachments/500/{next(self._ids)}/{filename}"
        self.files[path] = data
        return {"id": path.split("/")[3], "filename": filename, "size": len(data),
                "url": self.base + path + "?ex=1&is=2&hm=signed", "content_type": content_type}

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

    def drop(self):
        with self._lock:
            ws, self._ws = self._ws, None
        if ws:
            ws.drop()

    def close(self, code=4000, reason=""):
        with self._lock:
            ws, self._ws = self._ws, None
        if ws:
            ws.close(code, reason)

    def reconnect(self):
        self._send({"op": 7, "d": None})

    def invalidate(self, resumable=False):
        self._send({"op": 9, "d": resumable})

    def wait_for(self, check, timeout=15, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}")

    def texts(self, channel_id="500"):
        return [m["body"].get("content") for m in self.sent if m["channel_id"] == channel_id]

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
                        ws.send({"op": 11})
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
        if d.get("token") != f"Bot {self.token}":
            ws.close(4004, "Authentication failed.")
        elif self.refuse_with:
            ws.close(self.refuse_with, "Disallowed intent(s).")
        else:
            with self._lock:
                self._session = {"id": uuid.uuid4().hex, "s": 1, "events": []}
                self._ws = ws
                ws.send({"op": 0, "s": 1, "t": "READY", "d": {
                    "v": 10, "user": {"id": BOT_ID, "username": BOT_NAME, "bot": True},
                    "session_id": self._session["id"], "guilds": [],
                    "resume_gateway_url": self.gateway_url + "?resumed=1"}})
                pending, self._pending = self._pending, []
                for t, data in pending:
                    self.event(t, data)

    def _resume(self, ws, d):
        self.resumes += 1
        with self._lock:
            session = self._session
            if d.get("token") != f"Bot {self.token}":
                ws.close(4004, "Authentication failed.")
            elif not session or d.get("session_id") != session["id"]:
                ws.send({"op": 9, "d": False})
            else:
                self._ws = ws
                for s, t, data in session["events"]:
                    if s > (d.get("seq") or 0):
                        self._push(s, t, data)
                session["s"] += 1
                ws.send({"op": 0, "s": session["s"], "t": "RESUMED", "d": {}})

    # --- REST ---

    def _rest(self, h, method, path):
        route = path[len("/api/v10"):] if path.startswith("/api/v10/") else None
        if path in self.files and method == "GET":
            return 200, self.files[path]
        if route is None:
            return 404, {"message": "404: Not Found", "code": 0}
        if h.headers.get("Authorization") != f"Bot {self.token}":
            return 401, {"message": "401: Unauthorized", "code": 0}
        if route == "/gateway/bot" and method == "GET":
            return 200, {"url": self.gateway_url, "shards": 1, "session_start_limit": {
                "total": 1000, "remaining": 999, "reset_after": 14400000, "max_concurrency": 1}}
        parts = route.strip("/").split("/")
        if method != "POST" or len(parts) != 3 or parts[0] != "channels":
            return 404, {"message": "404: Not Found", "code": 0}
        if parts[2] == "typing":
            self.typing.append({"channel_id": parts[1], "at": time.monotonic()})
            return 204, b""
        if parts[2] != "messages":
            return 404, {"message": "404: Not Found", "code": 0}
        body, files = _read_body(h)
        if self._limits:
            wait = self._limits.pop(0)
            self.sent.append({"channel_id": parts[1], "body": body, "files": files,
                              "at": time.monotonic(), "status": 429})
            return 429, {"message": "You are being rate limited.", "retry_after": wait,
                         "global": False}, {"Retry-After": str(max(1, round(wait))),
                                            "X-RateLimit-Scope": "user"}
        if len(body.get("content") or "") > 2000:
            return 400, {"message": "Invalid Form Body", "code": 50035, "errors": {"content": {
                "_errors": [{"code": "BASE_TYPE_MAX_LENGTH",
                             "message": "Must be 2000 or fewer in length."}]}}}
        msg_id = str(next(self._ids))
        self.sent.append({"channel_id": parts[1], "body": body, "files": files,
                          "at": time.monotonic(), "status": 200})
        return 200, {"id": msg_id, "channel_id": parts[1], "content": body.get("content", ""),
                     "author": {"id": BOT_ID, "username": BOT_NAME, "bot": True}}


def _read_body(h):
    raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
    ctype = h.headers.get("Content-Type", "")
    if not ctype.startswith("multipart/"):
        return (json.loads(raw) if raw else {}), {}
    head = f"Content-Type: {ctype}\r\n\r\n".encode()
    msg = email.parser.BytesParser().parsebytes(head + raw)
    body, files = {}, {}
    for part in msg.get_payload():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True)
        if name == "payload_json":
            body = json.loads(data)
        else:
            files[part.get_filename() or name] = data
    return body, files


def _handler(fake):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            path = urlsplit(self.path).path
            if path == "/gateway" and is_upgrade(self):
                fake._gateway(accept(self), self.path)
            else:
                self._answer("GET", path)

        def do_POST(self):
            self._answer("POST", urlsplit(self.path).path)

        def _answer(self, method, path):
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

    return Handler
