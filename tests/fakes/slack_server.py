"""A fake Slack on 127.0.0.1: the Web API methods nanoclaw uses and a Socket Mode websocket.

    with FakeSlack() as slack:
        # channels.slack: api_base = slack.api_base, bot_token = slack.bot_token,
        #                 app_token = slack.app_token
        ts = slack.dm("U1", "hello")                 # a message.im event, as an events_api envelope
        slack.mention("U1", "C1", "hi")              # message + app_mention, as Slack sends both
        slack.rate_limit("chat.postMessage", 2)      # the next call answers 429, Retry-After: 2
        slack.disconnect()                           # Slack's routine "please reconnect"
        slack.drop()                                 # the TCP connection just goes away
        slack.posts, slack.reactions, slack.acks, slack.calls, slack.downloads, slack.uploads

Web API: POST (or GET) /api/<method> with the token as `Authorization: Bearer` or a `token`
field, form or JSON bodies; answers `{"ok": true, …}` or `{"ok": false, "error": "…"}` with
Slack's error names (not_authed, invalid_auth, not_allowed_token_type, channel_not_found,
no_text, msg_too_long, already_reacted, no_reaction, unknown_method; 429 + Retry-After with
ratelimited). Files: GET /files-pri/<team>-<id>/<name> with the bot token; without it, the
sign-in page (HTML) Slack shows a browser.

Uploads, as Slack's external flow: `files.getUploadURLExternal` (filename, length) answers an
upload_url on this server and a file_id; the bytes are POSTed there (raw or multipart, no token:
the URL is the permission; a second POST is refused); `files.completeUploadExternal` (files: a
JSON list of {id, title}, channel_id, thread_ts, initial_comment) shares the uploaded files in
the channel and records each in `uploads` ({"id", "filename", "title", "data", "channel",
"thread_ts", "initial_comment"}). Completing a file that was not uploaded is file_not_found; one
whose bytes differ from the length announced, file_upload_size_mismatch (the fake's own name).

Socket Mode: `apps.connections.open` (app token) hands out ws://…/link/?ticket=… good for one
connection. The fake sends `hello`, then every envelope not yet acked (so events injected while
no client is connected arrive after the reconnect, as Slack redelivers them), and records each
`{"envelope_id"}` ack.
"""
import itertools
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, urlparse

from tests.fakes.base import FakeServer, parse_multipart
from tests.fakes.ws import Closed, accept, is_upgrade

TEAM, APP, BOT_USER, BOT_ID = "T0FAKE", "A0FAKE", "U0BOT", "B0BOT"


class FakeSlack(FakeServer):
    bot_token, app_token = "xoxb-fake-bot-token", "xapp-1-fake-app-token"
    bot_user = BOT_USER

    def __init__(self):
        self.lock = threading.RLock()
        self.calls, self.posts, self.reactions, self.acks, self.downloads = [], [], [], [], []
        self.uploads, self._pending_files = [], {}      # file id -> {filename, length, data}
        self.connections = 0
        self._limits, self._files, self._tickets = {}, {}, set()
        self._pending = {}              # envelope id -> envelope, until acked
        self._payloads = {}             # event id -> payload, for redelivery
        self._ws = None
        self.downloads_open = threading.Event()     # cleared: file downloads wait (a large file)
        self.downloads_open.set()
        self._ids = itertools.count(1)
        self._clock = itertools.count(1)

    # --- lifecycle ---

    def handler(self):
        return type("Handler", (_Handler,), {"slack": self})

    @property
    def url(self):
        return self.base

    @property
    def api_base(self):
        return f"{self.url}/api/"

    # --- scripting ---

    def rate_limit(self, method: str, retry_after: int = 1, times: int = 1):
        with self.lock:
            self._limits.setdefault(method, []).extend([retry_after] * times)

    def add_file(self, name: str, data: bytes, mimetype: str = "application/octet-stream") -> dict:
        """Host a file; returns the file object as it appears in a message event."""
        fid = f"F{next(self._ids):06d}"
        url = f"{self.url}/files-pri/{TEAM}-{fid}/{name}"
        self._files[f"/files-pri/{TEAM}-{fid}/{name}"] = (data, mimetype)
        return {"id": fid, "name": name, "title": name, "mimetype": mimetype,
                "filetype": name.rsplit(".", 1)[-1], "size": len(data), "mode": "hosted",
                "url_private": url, "url_private_download": url + "?download=1"}

    def ts(self) -> str:
        return f"{int(time.time())}.{next(self._clock):06d}"

    def event(self, event: dict, event_id: str | None = None) -> str:
        """Send one events_api envelope (now if a client is connected, else on its next connect)."""
        event_id = event_id or f"Ev{next(self._ids):08d}"
        payload = {"token": "fake-verification-token", "team_id": TEAM, "api_app_id": APP,
                   "event": event, "type": "event_callback", "event_id": event_id,
                   "event_time": int(time.time()), "is_ext_shared_channel": False,
                   "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": True}]}
        self._payloads[event_id] = payload
        self._envelope(payload, 0)
        return event_id

    def redeliver(self, event_id: str):
        """Slack's retry of an event it thinks was not acked: same event id, new envelope."""
        self._envelope(self._payloads[event_id], 1)

    def message(self, user, channel, text, *, channel_type="channel", ts=None, **extra) -> str:
        ts = ts or self.ts()
        self.event({"type": "message", "channel": channel, "user": user, "text": text, "ts": ts,
                    "event_ts": ts, "team": TEAM, "channel_type": channel_type, **extra})
        return ts

    def dm(self, user, text, channel="D0DM", **extra) -> str:
        return self.message(user, channel, text, channel_type="im", **extra)

    def mention(self, user, channel, text, ts=None) -> str:
        """A channel message that @mentions the bot: Slack sends it as both event types."""
        text = f"<@{BOT_USER}> {text}"
        ts = self.message(user, channel, text, ts=ts)
        self.event({"type": "app_mention", "channel": channel, "user": user, "text": text,
                    "ts": ts, "event_ts": ts, "team": TEAM})
        return ts

    def disconnect(self, reason="refresh_requested"):
        with self.lock:
            ws = self._ws
        if ws:
            ws.send({"type": "disconnect", "reason": reason,
                     "debug_info": {"host": "applink-fake"}})

    def drop(self):
        self.downloads_open.set()               # nothing hangs on when the fake stops
        with self.lock:
            ws, self._ws = self._ws, None
        if ws:
            ws.drop()

    def connected(self) -> bool:
        return self._ws is not None

    def texts(self, channel=None) -> list[str]:
        return [p["text"] for p in self.posts if channel is None or p["channel"] == channel]

    # --- internals ---

    def _envelope(self, payload, retry):
        env = {"envelope_id": str(uuid.uuid4()), "type": "events_api", "payload": payload,
               "accepts_response_payload": False, "retry_attempt": retry,
               "retry_reason": "timeout" if retry else ""}
        with self.lock:
            self._pending[env["envelope_id"]] = env
            if self._ws:
                try:
                    self._ws.send(env)
                except Closed:
                    pass                # stays pending: sent on the next connection

    def _session(self, ws):
        try:
            with self.lock:
                self.connections += 1
                self._ws = ws
                ws.send({"type": "hello", "num_connections": 1, "connection_info": {"app_id": APP},
                         "debug_info": {"host": "applink-fake",
                                        "approximate_connection_time": 18060}})
                for env in list(self._pending.values()):
                    ws.send(env)
            while True:
                text = ws.recv(timeout=1.0)
                if text is None:
                    continue
                ack = json.loads(text).get("envelope_id")
                with self.lock:
                    if ack:
                        self.acks.append(ack)
                        self._pending.pop(ack, None)
        except (Closed, ValueError):
            pass
        finally:
            with self.lock:
                if self._ws is ws:
                    self._ws = None

    def _api(self, method, params, token):
        """(status, headers, body) for one Web API call."""
        with self.lock:
            self.calls.append({"method": method, "params": params, "time": time.monotonic()})
            if self._limits.get(method):
                wait = self._limits[method].pop(0)
                return 429, {"Retry-After": str(wait)}, {"ok": False, "error": "ratelimited"}
        app_method = method == "apps.connections.open"
        if method not in ("auth.test", "apps.connections.open", "chat.postMessage",
                          "reactions.add", "reactions.remove", "files.getUploadURLExternal",
                          "files.completeUploadExternal"):
            return 404, {}, {"ok": False, "error": "unknown_method"}
        if not token:
            return 200, {}, {"ok": False, "error": "not_authed"}
        if token not in (self.bot_token, self.app_token):
            return 200, {}, {"ok": False, "error": "invalid_auth"}
        if (token == self.app_token) != app_method:
            return 200, {}, {"ok": False, "error": "not_allowed_token_type"}
        return 200, {}, getattr(self, "_m_" + method.replace(".", "_"))(params)

    def _m_auth_test(self, p):
        return {"ok": True, "url": "https://fake.slack.com/", "team": "Fake", "user": "nanoclaw",
                "team_id": TEAM, "user_id": BOT_USER, "bot_id": BOT_ID}

    def _m_apps_connections_open(self, p):
        ticket = str(uuid.uuid4())
        self._tickets.add(ticket)
        return {"ok": True, "url": f"ws://127.0.0.1:{self.bound_port}/link/?ticket={ticket}"}

    def _m_chat_postMessage(self, p):
        if not str(p.get("channel") or "").startswith(("C", "D", "G")):
            return {"ok": False, "error": "channel_not_found"}
        text = p.get("text") or ""
        if not text and not p.get("blocks"):
            return {"ok": False, "error": "no_text"}
        if len(text) > 40000:
            return {"ok": False, "error": "msg_too_long"}
        ts = self.ts()
        with self.lock:
            self.posts.append(dict(p, ts=ts, time=time.monotonic()))
        return {"ok": True, "channel": p["channel"], "ts": ts,
                "message": {"type": "message", "user": BOT_USER, "bot_id": BOT_ID, "text": text,
                            "ts": ts, **({"thread_ts": p["thread_ts"]} if p.get("thread_ts")
                                         else {})}}

    def _m_files_getUploadURLExternal(self, p):
        if not p.get("filename") or not str(p.get("length") or "").isdigit():
            return {"ok": False, "error": "invalid_arguments"}
        fid = f"F{next(self._ids):06d}"
        with self.lock:
            self._pending_files[fid] = {"filename": p["filename"], "length": int(p["length"])}
        return {"ok": True, "file_id": fid,
                "upload_url": f"{self.url}/upload/v1/{fid}?sig={uuid.uuid4().hex}"}

    def _upload(self, fid, data) -> bool:
        with self.lock:
            f = self._pending_files.get(fid)
            if f is None or "data" in f:
                return False
            f["data"] = data
            return True

    def _m_files_completeUploadExternal(self, p):
        try:
            files = json.loads(p.get("files") or "")
        except ValueError:
            return {"ok": False, "error": "invalid_arguments"}
        channel = str(p.get("channel_id") or "")
        if channel and not channel.startswith(("C", "D", "G")):
            return {"ok": False, "error": "channel_not_found"}
        shared = []
        with self.lock:
            for f in files:
                up = self._pending_files.get(f.get("id"))
                if not up or "data" not in up:
                    return {"ok": False, "error": "file_not_found"}
                if len(up["data"]) != up["length"]:
                    return {"ok": False, "error": "file_upload_size_mismatch"}
            for f in files:
                up = self._pending_files.pop(f["id"])
                self.uploads.append({"id": f["id"], "filename": up["filename"],
                                     "title": f.get("title"), "data": up["data"],
                                     "channel": channel, "thread_ts": p.get("thread_ts"),
                                     "initial_comment": p.get("initial_comment"),
                                     "time": time.monotonic()})
                shared.append({"id": f["id"], "name": up["filename"], "title": f.get("title"),
                               "size": len(up["data"])})
        return {"ok": True, "files": shared}

    def _m_reactions_add(self, p):
        key = (p.get("name"), p.get("channel"), p.get("timestamp"))
        with self.lock:
            if ("add",) + key in self.reactions and ("remove",) + key not in self.reactions:
                return {"ok": False, "error": "already_reacted"}
            self.reactions.append(("add",) + key)
        return {"ok": True}

    def _m_reactions_remove(self, p):
        key = (p.get("name"), p.get("channel"), p.get("timestamp"))
        with self.lock:
            if ("add",) + key not in self.reactions:
                return {"ok": False, "error": "no_reaction"}
            self.reactions.append(("remove",) + key)
        return {"ok": True}


class _Handler(BaseHTTPRequestHandler):
    slack: FakeSlack
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _token(self, params):
        auth = self.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else params.get("token", "")

    def do_GET(self):
        url = urlparse(self.path)
        if is_upgrade(self) and url.path.rstrip("/") == "/link":
            ticket = dict(parse_qsl(url.query)).get("ticket")
            with self.slack.lock:
                valid = ticket in self.slack._tickets
                self.slack._tickets.discard(ticket)       # single use
            if not valid:
                return self._send(401, {}, b"invalid ticket", "text/plain")
            try:
                self.slack._session(accept(self))
            except Closed:
                pass
            return
        if url.path in self.slack._files:
            ok = self._token({}) == self.slack.bot_token
            self.slack.downloads.append({"path": url.path, "authorized": ok})
            if not ok:
                return self._send(200, {}, b"<!DOCTYPE html><title>Sign in | Slack</title>",
                                  "text/html; charset=utf-8")
            self.slack.downloads_open.wait(60)
            data, mimetype = self.slack._files[url.path]
            return self._send(200, {}, data, mimetype)
        self._api(dict(parse_qsl(url.query)))

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlparse(self.path)
        if url.path.startswith("/upload/v1/"):
            ctype = self.headers.get("Content-Type", "")
            data = next(iter(parse_multipart(ctype, raw)[1].values()))[1] \
                if ctype.startswith("multipart/") else raw
            if not self.slack._upload(url.path.rsplit("/", 1)[1], data):
                return self._send(404, {}, b"unknown or used upload URL", "text/plain")
            return self._send(200, {}, f"OK - {len(data)}".encode(), "text/plain")
        body = raw.decode()
        params = dict(parse_qsl(url.query))
        if "json" in self.headers.get("Content-Type", ""):
            params.update(json.loads(body or "{}"))
        else:
            params.update(parse_qsl(body))
        self._api(params)

    def _api(self, params):
        path = urlparse(self.path).path
        if not path.startswith("/api/"):
            return self._send(404, {}, b"not found", "text/plain")
        status, headers, body = self.slack._api(path[5:], params, self._token(params))
        self._send(status, headers, json.dumps(body).encode(), "application/json; charset=utf-8")

    def _send(self, status, headers, data: bytes, ctype):
        self.send_response(status)
        for k, v in {"Content-Type": ctype, "Content-Length": str(len(data)), **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
