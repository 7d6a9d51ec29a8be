"""A fake QQ bot platform on 127.0.0.1: the token endpoint, the REST routes a private-chat bot
uses, and the gateway websocket.

    with FakeQQ(app_id="1020", secret="s3cret") as qq:
        # channels.qq: {app_id: "1020", secret: s3cret, api_base: qq.api_base,
        #               token_url: qq.token_url}
        msg_id = qq.say("hello", openid="OPENID_ALICE")     # C2C_MESSAGE_CREATE for the bot
        qq.wait_for(lambda: qq.texts("OPENID_ALICE"))

Token: `POST /app/getAppAccessToken {appId, clientSecret}` → `{access_token, expires_in}` with
expires_in a string. As on QQ, the same token comes back until its last 60 s; then a new one is
made and the old one stays valid until it runs out. Wrong credentials get `{code, message}`.

REST (`Authorization: QQBot <token>` and `X-Union-Appid`, else 401 `{"code": 11244}`):
`GET /gateway` → `{"url"}`; `POST /v2/users/{openid}/messages`, recorded in `sent` (every
attempt, with its status and the token used). A reply's `msg_id` + `msg_seq` (1 when left out)
may be used once: again is a 400 with code 40054005, as QQ deduplicates. msg_type 6 (the input
notice) also lands in `typing`. `rate_limit(*seconds)` answers the next sends with 429
`{"code": 22009}` and a Retry-After header; `expire_tokens()` revokes every token made so far;
`expire_reply(msg_id)` makes passive replies to that message fail with 40034128.
Attachments are served at `/files/...` without a token.

Gateway at `/websocket`: HELLO, IDENTIFY (its token must be `QQBot <valid token>`, else close
4004), READY with a session id, heartbeats ACKed while `ack` is true, RESUME replaying what the
session missed (then RESUMED; op 9 false for an unknown session). `drop()`, `close(code)`,
`reconnect()` (op 7) and `invalidate(resumable)` (op 9) disturb the connection. Events made while
nobody is connected wait for the next RESUME (or READY, if there is no session yet).
"""
import itertools
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from tests.fakes.ws import Closed, accept, is_upgrade

BOT_ID, BOT_NAME = "11111111111111111111", "nanobot"
TOKEN_PATH = "/app/getAppAccessToken"


class FakeQQ:
    def __init__(self, app_id="1020", secret="s3cret", heartbeat_ms=500, expires_in=7200):
        self.app_id, self.secret = app_id, secret
        self.heartbeat_ms, self.expires_in = heartbeat_ms, expires_in
        self.ack = True
        self.sent, self.typing, self.tokens, self.rest = [], [], [], []
        self.received, self.closes, self.gateway_urls = [], [], []
        self.identifies = self.resumes = 0
        self.files = {}
        self._limits, self._used, self._stale = [], set(), set()
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._session = None                    # {"id", "s", "events": [(s, t, d)]}
        self._pending = []
        self._ws = None
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
    def api_base(self):
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def token_url(self):
        return self.api_base + TOKEN_PATH

    @property
    def gateway_url(self):
        return f"ws://127.0.0.1:{self._httpd.server_address[1]}/websocket"

    # --- what the test does ---

    def say(self, content="", openid="OPENID_ALICE", attachments=()) -> str:
        """A user writes to the bot in private: C2C_MESSAGE_CREATE. Returns the message id."""
        msg_id = f"ROBOT1.0_{uuid.uuid4().hex[:12]}{next(self._ids)}"
        self.event("C2C_MESSAGE_CREATE", {
            "id": msg_id, "content": content, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+08:00"),
            "author": {"id": openid, "user_openid": openid, "union_openid": "U_" + openid},
            "attachments": list(attachments)})
        return msg_id

    def attachment(self, filename, data: bytes, content_type="file", wav: bytes = None,
                   asr: str = None) -> dict:
        """An attachment as QQ describes it; a voice note (content_type "voice") may come with a
        WAV copy (voice_wav_url) and QQ's own transcript (asr_refer_text)."""
        path = f"/files/{next(self._ids)}/{filename}"
        self.files[path] = data
        a = {"content_type": content_type, "filename": filename, "size": len(data),
             "url": self.api_base + path + "?appid=1&fileid=x"}
        if wav is not None:
            self.files[path + ".wav"] = wav
            a["voice_wav_url"] = self.api_base + path + ".wav"
        if asr is not None:
            a["asr_refer_text"] = asr
        return a

    def event(self, t, d):
        with self._lock:
            if self._session is None:
                self._pending.append((t, d))
                return
            self._session["s"] += 1
            self._session["events"].append((self._session["s"], t, d))
            self._send({"op": 0, "s": self._session["s"], "t": t, "d": d})

    def rate_limit(self, *retry_after: float):
        self._limits.extend(retry_after)

    def expire_tokens(self):
        with self._lock:
            for t in self.tokens:
                t["revoked"] = True

    def expire_reply(self, msg_id):
        self._stale.add(msg_id)

    def use_seq(self, msg_id, seq):
        """Mark msg_seq `seq` of `msg_id` as used, as by an earlier run of the bot."""
        self._used.add((msg_id, seq))

    def drop(self):
        with self._lock:
            ws, self._ws = self._ws, None
        if ws:
            ws.drop()

    def close(self, code=4009, reason=""):
        with self._lock:
            ws, self._ws = self._ws, None
        if ws:
            ws.close(code, reason)

    def reconnect(self):
        self._send({"op": 7})

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

    def replies(self, openid="OPENID_ALICE"):
        """The text messages delivered to `openid`, in order."""
        return [m for m in self.sent if m["openid"] == openid and m["status"] == 200
                and m["body"].get("msg_type", 0) == 0]

    def texts(self, openid="OPENID_ALICE"):
        return [m["body"].get("content") for m in self.replies(openid)]

    @property
    def connected(self) -> bool:
        return self._ws is not None

    # --- tokens ---

    def _valid(self, token) -> bool:
        now = time.monotonic()
        return any(t["token"] == token and not t.get("revoked") and t["until"] > now
                   for t in self.tokens)

    def _issue(self, body):
        if body.get("appId") != self.app_id or body.get("clientSecret") != self.secret:
            return 200, {"code": 100016, "message": "invalid appid or secret"}
        with self._lock:
            now, last = time.monotonic(), (self.tokens[-1] if self.tokens else None)
            if not last or last.get("revoked") or last["until"] - now <= 60:
                last = {"token": uuid.uuid4().hex, "at": now, "until": now + self.expires_in}
                self.tokens.append(last)
            return 200, {"access_token": last["token"],
                         "expires_in": str(max(0, int(last["until"] - now)))}

    # --- the gateway ---

    def _send(self, payload):
        ws = self._ws
        if ws:
            try:
                ws.send(payload)
            except Closed:
                pass

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
                if op == 1 and self.ack:
                    ws.send({"op": 11, "d": d})
                elif op == 2:
                    self._identify(ws, d)
                elif op == 6:
                    self._resume(ws, d)
        except Closed as e:
            self.closes.append(e.code)
            with self._lock:
                if self._ws is ws:
                    self._ws = None

    def _authentic(self, d) -> bool:
        token = str(d.get("token") or "")
        return token.startswith("QQBot ") and self._valid(token[6:])

    def _identify(self, ws, d):
        self.identifies += 1
        if not self._authentic(d):
            ws.close(4004, "invalid token")
            return
        with self._lock:
            self._session = {"id": str(uuid.uuid4()), "s": 1, "events": []}
            self._ws = ws
            ws.send({"op": 0, "s": 1, "t": "READY", "d": {
                "version": 1, "session_id": self._session["id"], "shard": d.get("shard", [0, 1]),
                "user": {"id": BOT_ID, "username": BOT_NAME, "bot": True, "status": 1}}})
            pending, self._pending = self._pending, []
            for t, data in pending:
                self.event(t, data)

    def _resume(self, ws, d):
        self.resumes += 1
        with self._lock:
            session = self._session
            if not self._authentic(d):
                ws.close(4004, "invalid token")
            elif not session or d.get("session_id") != session["id"]:
                ws.send({"op": 9, "d": False})
            else:
                self._ws = ws
                for s, t, data in session["events"]:
                    if s > (d.get("seq") or 0):
                        ws.send({"op": 0, "s": s, "t": t, "d": data})
                session["s"] += 1
                ws.send({"op": 0, "s": session["s"], "t": "RESUMED", "d": ""})

    # --- REST ---

    def _rest(self, h, method, path):
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        body = json.loads(raw) if raw else {}
        if method == "GET" and path in self.files:
            return 200, self.files[path]
        if method == "POST" and path == TOKEN_PATH:
            return self._issue(body)
        auth = h.headers.get("Authorization", "")
        if not (auth.startswith("QQBot ") and self._valid(auth[6:])) or \
                h.headers.get("X-Union-Appid") != self.app_id:
            return 401, {"message": "token not exist or expire", "code": 11244}
        if method == "GET" and path == "/gateway":
            return 200, {"url": self.gateway_url}
        parts = path.strip("/").split("/")
        if method != "POST" or len(parts) != 4 or parts[:2] != ["v2", "users"] or \
                parts[3] != "messages":
            return 404, {"message": "not found", "code": 404}
        record = {"openid": parts[2], "body": body, "token": auth[6:], "at": time.monotonic()}
        answer = self._message(body)
        record["status"] = answer[0]
        self.sent.append(record)
        if answer[0] == 200 and body.get("msg_type") == 6:
            self.typing.append(record)
        return answer

    def _message(self, body):
        if self._limits:
            wait = self._limits.pop(0)
            return 429, {"message": "msg limit exceed", "code": 22009}, {"Retry-After": str(wait)}
        msg_id = body.get("msg_id")
        if msg_id:
            if msg_id in self._stale:
                return 400, {"message": "reply time limit exceeded", "code": 40034128}
            key = (msg_id, int(body.get("msg_seq") or 1))
            with self._lock:
                if key in self._used:
                    return 400, {"message": "duplicate msg_seq for this msg_id (deduplicated)",
                                 "code": 40054005}
                self._used.add(key)
        return 200, {"id": f"BOT_MSG_{next(self._ids)}",
                     "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+08:00")}


def _handler(fake):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            path = urlsplit(self.path).path
            if path == "/websocket" and is_upgrade(self):
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
            kind = "application/octet-stream" if isinstance(body, bytes) else "application/json"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    return Handler
