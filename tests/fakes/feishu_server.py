"""A fake Feishu / Lark open platform on 127.0.0.1: the long-connection endpoint and its binary
websocket, the tenant token, and the IM routes a bot uses.

    with FakeFeishu() as feishu:
        # channels.feishu: domain = feishu.domain, app_id = APP_ID, app_secret = APP_SECRET
        mid = feishu.say("hello", open_id="ou_alice")         # im.message.receive_v1 in a p2p chat
        feishu.say("hi", chat_type="group", mention_bot=True)  # a group message that @mentions us
        feishu.say("big", fragments=3, order=[2, 0, 1])         # one event in three frames
        feishu.file(mid, "img_1", b"...", "image/png")          # a resource of message mid
        feishu.rate_limit(1)            # the next IM send answers 429, code 99991400, reset 1 s
        feishu.downloads_open.clear()   # a file download takes until .set(): a large file
        feishu.drop()                   # the TCP connection just goes away
        feishu.sent, feishu.reactions, feishu.acks, feishu.pings, feishu.downloads

HTTP: `POST /callback/ws/endpoint {AppID, AppSecret}` answers `{code: 0, data: {URL,
ClientConfig}}` with a ws:// URL (device_id, service_id and a one-connection ticket);
`POST /open-apis/auth/v3/tenant_access_token/internal` gives `t-…` tokens (`expire_tokens()`
revokes them: code 99991663); `GET /open-apis/bot/v3/info`; `POST /open-apis/im/v1/messages
?receive_id_type=chat_id` and `POST …/messages/{id}/reply` (post content checked, 30 KB cap:
code 230025, uuid repeats dropped, a withdrawn message: 230011); `POST/DELETE …/reactions`;
`GET …/messages/{id}/resources/{key}?type=image|file`. Errors are Feishu's `{code, msg}`.

Websocket: protobuf `pbbp2.Frame`s. A control frame `type=ping` is answered with `type=pong`
(carrying `pong_config`, if set, as the new ClientConfig) while `pong` is true. Every event is a
data frame (`type=event`, `message_id`, `sum`, `seq`, `trace_id`) kept until the client echoes
it with `biz_rt` and `{"code": 200}`; unacked events are sent again on the next connection, as
Feishu redelivers them. The codec below is written apart from the channel's on purpose.
"""
import itertools
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from tests.fakes.base import FakeServer
from tests.fakes.ws import Closed, accept, is_upgrade

APP_ID, APP_SECRET = "cli_fake0123456789", "fake-app-secret"
BOT_OPEN_ID, SERVICE_ID, TENANT = "ou_bot000000000000", 33554678, "tenant_fake"
POST_LIMIT = 30 * 1024


# --- protobuf, the fake's own: a message is a list of (field number, int | bytes) ---

def _put_varint(n: int) -> bytes:
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        out += bytes([low | (0x80 if n else 0)])
        if not n:
            return out


def pb_encode(fields) -> bytes:
    out = b""
    for number, value in fields:
        if isinstance(value, int):
            out += _put_varint(number * 8) + _put_varint(value)
        else:
            value = value.encode() if isinstance(value, str) else value
            out += _put_varint(number * 8 + 2) + _put_varint(len(value)) + value
    return out


def pb_decode(data: bytes):
    fields, i = [], 0

    def get_varint():
        nonlocal i
        value, shift = 0, 0
        while True:
            byte = data[i]
            i += 1
            value += (byte & 0x7F) << shift
            if byte < 128:
                return value
            shift += 7
    while i < len(data):
        tag = get_varint()
        if tag % 8 == 0:
            fields.append((tag // 8, get_varint()))
        elif tag % 8 == 2:
            size = get_varint()
            fields.append((tag // 8, data[i:i + size]))
            i += size
        else:
            raise ValueError(f"wire type {tag % 8} has no place in a Frame")
    return fields


def make_frame(method, headers, payload=b"", seq_id=0, log_id=0, service=SERVICE_ID) -> bytes:
    fields = [(1, seq_id), (2, log_id), (3, service), (4, method)]
    fields += [(5, pb_encode([(1, k), (2, v)])) for k, v in headers]
    fields += [(6, ""), (7, ""), (8, payload), (9, "")]
    return pb_encode(fields)


def read_frame(data: bytes) -> dict:
    frame = {"headers": [], "payload": b""}
    names = {1: "SeqID", 2: "LogID", 3: "service", 4: "method", 6: "payload_encoding",
             7: "payload_type", 8: "payload", 9: "LogIDNew"}
    for number, value in pb_decode(data):
        if number == 5:
            h = dict(pb_decode(value))
            frame["headers"].append((h[1].decode(), h[2].decode()))
        elif number in names:
            frame[names[number]] = value
    for required in ("SeqID", "LogID", "service", "method"):
        if required not in frame:
            raise ValueError(f"required field {required} missing")
    return frame


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass                    # a client that hangs up while we stop is no news


class FakeFeishu(FakeServer):
    server_class = _Server

    def __init__(self, ping_interval: int = 120):
        self.ping_interval, self.pong, self.pong_config = ping_interval, True, None
        self.lose_acks = False                  # true: acks are recorded, events still resent
        self.lock = threading.RLock()
        self.sent, self.reactions, self.acks, self.pings, self.downloads = [], [], [], [], []
        self.requests, self.bad_frames, self.connections, self.token_requests = [], [], 0, 0
        self.files = {}                         # (message id, key) -> (bytes, content type)
        self.downloads_open = threading.Event()     # cleared: downloads wait (logged at once)
        self.downloads_open.set()
        self.withdrawn, self.chats = set(), {}      # message ids; message id -> chat id
        self._tokens, self._tickets, self._uuids, self._limits = set(), set(), {}, []
        self._outstanding = {}                  # frame message_id -> [frames], until acked
        self._ws = None
        self._ids = itertools.count(1)

    def handler(self):
        return type("Handler", (_Handler,), {"feishu": self})

    @property
    def domain(self):
        return self.base

    @property
    def connected(self) -> bool:
        return self._ws is not None

    # --- what a test does ---

    def _id(self, prefix):
        return f"{prefix}{next(self._ids):06d}{secrets.token_hex(4)}"

    def say(self, text="", open_id="ou_alice", chat_id="oc_p2p_alice", chat_type="p2p",
            message_type="text", content=None, mentions=(), mention_bot=False, message_id=None,
            **kw) -> str:
        """A user writes: an im.message.receive_v1 event. Returns the message id (om_…).
        `mention_bot` puts the bot first, as @_user_1; `mentions` ({key, open_id, name}) follow."""
        mentions = list(mentions)
        if mention_bot:
            mentions.insert(0, {"key": "@_user_1", "open_id": BOT_OPEN_ID, "name": "nanobot"})
        if content is None:
            content = {"text": " ".join([m["key"] for m in mentions[:1]] + [text]).strip()}
        mid, ms = message_id or self.new_id(), str(int(time.time() * 1000))
        self.chats[mid] = chat_id
        message = {"message_id": mid, "root_id": "", "parent_id": "", "create_time": ms,
                   "update_time": ms, "chat_id": chat_id, "chat_type": chat_type,
                   "message_type": message_type, "content": json.dumps(content),
                   "mentions": [{"key": m["key"], "name": m["name"], "tenant_key": TENANT,
                                 "id": {"open_id": m["open_id"], "union_id": "on_x",
                                        "user_id": ""}} for m in mentions]}
        self.event({"schema": "2.0", "header": {
            "event_id": secrets.token_hex(16), "event_type": "im.message.receive_v1",
            "create_time": ms, "token": "", "app_id": APP_ID, "tenant_key": TENANT},
            "event": {"sender": {"sender_id": {"open_id": open_id, "union_id": "on_" + open_id,
                                               "user_id": ""},
                                 "sender_type": "user", "tenant_key": TENANT},
                      "message": message}}, **kw)
        return mid

    def new_id(self) -> str:
        return self._id("om_")

    def file(self, message_id, key, data: bytes, content_type="application/octet-stream"):
        self.files[(message_id, key)] = (data, content_type)

    def event(self, body: dict, fragments: int = 1, order=None):
        """Push an event in `fragments` data frames (sent in `order`), now or on the next
        connection."""
        raw = json.dumps(body).encode()
        key, size = self._id("evt_"), -(-len(raw) // fragments)
        frames = []
        for seq in range(fragments):
            headers = [("type", "event"), ("message_id", key), ("sum", str(fragments)),
                       ("seq", str(seq)), ("trace_id", secrets.token_hex(8)),
                       ("timestamp", str(int(time.time() * 1000)))]
            frames.append(make_frame(1, headers, raw[seq * size:(seq + 1) * size],
                                     seq_id=next(self._ids), log_id=next(self._ids)))
        frames = [frames[i] for i in (order or range(fragments))]
        with self.lock:
            self._outstanding[key] = (frames, time.monotonic())
            self._push(frames)

    def rate_limit(self, *reset_seconds: int):
        self._limits.extend(reset_seconds)

    def expire_tokens(self):
        self._tokens.clear()

    def drop(self):
        self.downloads_open.set()               # nothing hangs on when the fake stops
        with self.lock:
            ws, self._ws = self._ws, None
        if ws:
            ws.drop()

    def close(self, code=1000, reason=""):
        with self.lock:
            ws, self._ws = self._ws, None
        if ws:
            ws.close(code, reason)

    def texts(self, chat_id=None):
        return [m["text"] for m in self.sent
                if m["status"] == 200 and chat_id in (None, m["chat_id"])]

    # --- the websocket ---

    def _push(self, frames):
        ws = self._ws
        for frame in frames if ws else ():
            try:
                ws.send(frame)
            except Closed:
                return

    def _connection(self, ws):
        with self.lock:
            self.connections += 1
            old, self._ws = self._ws, ws
            for frames, _ in list(self._outstanding.values()):
                self._push(frames)              # what the last connection did not ack
        if old:
            old.drop()
        try:
            while True:
                data = ws.recv(timeout=60)
                if data is None:
                    continue
                if isinstance(data, str):
                    self.bad_frames.append(("text frame", data))
                    continue
                try:
                    self._frame(ws, read_frame(data))
                except (ValueError, KeyError, IndexError) as e:
                    self.bad_frames.append((str(e), data))
        except Closed:
            with self.lock:
                if self._ws is ws:
                    self._ws = None

    def _frame(self, ws, frame):
        headers = dict(frame["headers"])
        if frame["method"] == 0 and headers.get("type") == "ping":
            self.pings.append({"service": frame["service"], "at": time.monotonic()})
            if self.pong:
                payload = json.dumps(self.pong_config).encode() if self.pong_config else b""
                ws.send(make_frame(0, [("type", "pong")], payload, service=frame["service"]))
            return
        key = headers.get("message_id")
        with self.lock:
            entry = self._outstanding.get(key)
            originals = [read_frame(f) for f in entry[0]] if entry else []
            same = [f for f in originals if f["SeqID"] == frame["SeqID"]]
            ok = (frame["method"] == 1 and same and "biz_rt" in headers and
                  headers["biz_rt"].isdigit() and
                  all(h in frame["headers"] for h in same[0]["headers"]) and
                  json.loads(frame["payload"]).get("code") == 200)
            self.acks.append({"headers": headers, "payload": json.loads(frame["payload"] or "{}"),
                              "ok": bool(ok), "after": time.monotonic() - entry[1] if entry
                              else None})
            if ok and not self.lose_acks:
                del self._outstanding[key]

    # --- HTTP ---

    def endpoint(self, body):
        if body.get("AppID") != APP_ID or body.get("AppSecret") != APP_SECRET:
            return 200, {"code": 403, "msg": "forbidden: app id or secret is wrong", "data": None}
        ticket = secrets.token_hex(8)
        self._tickets.add(ticket)
        port = self.bound_port
        return 200, {"code": 0, "msg": "ok", "data": {
            "URL": f"ws://127.0.0.1:{port}/ws/v2?fpid=493&aid=552564&device_id="
                   f"{next(self._ids)}&access_key=k&service_id={SERVICE_ID}&ticket={ticket}",
            "ClientConfig": {"ReconnectCount": -1, "ReconnectInterval": 120,
                             "ReconnectNonce": 30, "PingInterval": self.ping_interval}}}

    def token(self, body):
        self.token_requests += 1
        if body.get("app_id") != APP_ID or body.get("app_secret") != APP_SECRET:
            return 200, {"code": 10014, "msg": "app secret invalid"}
        token = "t-" + secrets.token_hex(16)
        self._tokens.add(token)
        return 200, {"code": 0, "msg": "ok", "tenant_access_token": token, "expire": 7200}

    def api(self, h, method, path, query, body):
        auth = h.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return 400, {"code": 99991661, "msg": "Missing access token for authorization."}
        if auth[7:] not in self._tokens:
            return 400, {"code": 99991663, "msg": "Invalid access token for authorization."}
        parts = path.strip("/").split("/")[1:]          # after open-apis/
        if parts == ["bot", "v3", "info"]:
            return 200, {"code": 0, "msg": "ok", "bot": {
                "activate_status": 2, "app_name": "nanobot", "avatar_url": "",
                "ip_white_list": [], "open_id": BOT_OPEN_ID}}
        if parts[:3] != ["im", "v1", "messages"]:
            return 404, {"code": 404, "msg": "404 page not found"}
        rest = parts[3:]
        if method == "POST" and (rest == [] or len(rest) == 2 and rest[1] == "reply"):
            return self._send(rest[0] if rest else None, query, body)
        if len(rest) >= 2 and rest[1] == "reactions":
            return self._react(method, rest[0], rest[2] if len(rest) > 2 else None, body)
        if method == "GET" and len(rest) == 3 and rest[1] == "resources":
            data, ctype = self.files.get((rest[0], rest[2]), (None, ""))
            wanted = "image" if rest[2].startswith("img_") else "file"
            if data is None or query.get("type") != wanted:
                return 400, {"code": 234003, "msg": "File not in msg."}
            self.downloads.append((rest[0], rest[2], query.get("type")))
            return 200, data, {"Content-Type": ctype}
        return 404, {"code": 404, "msg": "404 page not found"}

    def _send(self, reply_to, query, body):
        chat = body.get("receive_id") if reply_to is None else self.chats.get(reply_to)
        if reply_to is None and query.get("receive_id_type") not in ("chat_id", "open_id") \
                or not chat:
            return 400, {"code": 230001, "msg": "invalid receive_id or message_id"}
        entry = {"reply_to": reply_to, "chat_id": chat, "body": body, "at": time.monotonic(),
                 "receive_id_type": query.get("receive_id_type")}
        if self._limits:
            reset = self._limits.pop(0)
            self.sent.append({**entry, "status": 429, "text": ""})
            return 429, {"code": 99991400, "msg": "request trigger frequency limit"}, {
                "x-ogw-ratelimit-limit": "50", "x-ogw-ratelimit-reset": str(reset)}
        if reply_to in self.withdrawn:
            return 400, {"code": 230011, "msg": "The message was withdrawn."}
        try:
            content = json.loads(body["content"])
            rows = next(iter(content.values()))["content"] if body["msg_type"] == "post" \
                else [[{"tag": "text", "text": content["text"]}]]
            text = "\n\n".join("".join(el["text"] for el in row) for row in rows)
        except (KeyError, TypeError, ValueError, StopIteration):
            return 400, {"code": 230001, "msg": "invalid message content"}
        if len(body["content"].encode()) > POST_LIMIT:
            return 400, {"code": 230025, "msg": "The message content is too long."}
        if body.get("uuid") in self._uuids:
            return 200, {"code": 0, "msg": "success", "data": self._uuids[body["uuid"]]}
        mid = self._id("om_")
        self.chats[mid] = chat
        data = {"message_id": mid, "chat_id": chat, "msg_type": body["msg_type"],
                "body": {"content": body["content"]},
                "sender": {"id": APP_ID, "sender_type": "app"}}
        if body.get("uuid"):
            self._uuids[body["uuid"]] = data
        self.sent.append({**entry, "chat_id": chat, "status": 200, "text": text,
                          "content": content, "message_id": mid})
        return 200, {"code": 0, "msg": "success", "data": data}

    def _react(self, method, message_id, reaction_id, body):
        if method == "POST" and reaction_id is None:
            emoji = (body.get("reaction_type") or {}).get("emoji_type")
            if not emoji:
                return 400, {"code": 231001, "msg": "reaction type is invalid."}
            r = {"message_id": message_id, "emoji_type": emoji, "reaction_id": self._id("rc_"),
                 "at": time.monotonic(), "removed_at": None}
            self.reactions.append(r)
        else:
            r = next((r for r in self.reactions if r["reaction_id"] == reaction_id and
                      r["removed_at"] is None), None)
            if method != "DELETE" or r is None:
                return 400, {"code": 231003, "msg": "The reaction does not exist."}
            r["removed_at"] = time.monotonic()
        return 200, {"code": 0, "msg": "success", "data": {
            "reaction_id": r["reaction_id"], "action_time": str(int(time.time() * 1000)),
            "operator": {"operator_id": APP_ID, "operator_type": "app"},
            "reaction_type": {"emoji_type": r["emoji_type"]}}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    feishu: FakeFeishu

    def do_GET(self):
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/ws/v2" and is_upgrade(self):
            if query.get("ticket") not in self.feishu._tickets:
                return self._answer(403, b"", {"Handshake-Status": "403",
                                               "Handshake-Msg": "ticket is invalid"})
            self.feishu._tickets.discard(query["ticket"])
            return self.feishu._connection(accept(self))
        self._route("GET", url, query)

    def do_POST(self):
        url = urlsplit(self.path)
        self._route("POST", url, {k: v[0] for k, v in parse_qs(url.query).items()})

    def do_DELETE(self):
        url = urlsplit(self.path)
        self._route("DELETE", url, {})

    def _route(self, method, url, query):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        fake = self.feishu
        with fake.lock:
            fake.requests.append((method, url.path, body))
            if (method, url.path) == ("POST", "/callback/ws/endpoint"):
                answer = fake.endpoint(body)
            elif (method, url.path) == ("POST", "/open-apis/auth/v3/tenant_access_token/internal"):
                answer = fake.token(body)
            elif url.path.startswith("/open-apis/"):
                answer = fake.api(self, method, url.path, query, body)
            else:
                answer = 404, {"code": 404, "msg": "404 page not found"}
        if "/resources/" in url.path and answer[0] == 200:
            fake.downloads_open.wait(60)        # outside the lock: the rest goes on meanwhile
        self._answer(*answer)

    def _answer(self, status, body, headers=None):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if not isinstance(body, bytes):
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass
