"""A fake DingTalk on 127.0.0.1: Stream mode's connection API and websocket, session webhooks,
and the robot's OpenAPI calls.

    with FakeDingTalk() as ding:
        # channels.dingtalk: api_base = ding.api_base, client_id/client_secret = ding.client_id/…
        ding.message("staff1", "hello")               # a private chat message, as a CALLBACK frame
        ding.message("staff1", "hi all", group=True)  # a group message (the bot was @mentioned)
        ding.ping(); ding.disconnect(); ding.drop()   # SYSTEM ping, SYSTEM disconnect, cut the line
        ding.lose_acks(1)                             # the next ack goes missing: sent again later
        ding.rate_limit("/v1.0/robot/oToMessages/batchSend", retry_after=2)
        ding.sent, ding.acks, ding.frames, ding.calls, ding.opens, ding.connections

`POST /v1.0/gateway/connections/open {clientId, clientSecret, subscriptions, ua}` → `{endpoint,
ticket}`; the websocket at `/connect?ticket=…` (each ticket good once) sends every frame not yet
acked, so frames made while nobody is connected, or whose ack was lost, arrive (again) after the
next connect, each time under a new `headers.messageId` and the same `msgId`. Acks are recorded;
one with code 200 settles its frame. A bot message carries a session webhook
(`POST /robot/sendBySession?session=…`, answering `{"errcode", "errmsg"}`) that expires when
`webhook_ttl` seconds have passed (negative: already expired).

OpenAPI, as DingTalk answers it (`{"code", "message", "requestid"}` on errors):
`POST /v1.0/oauth2/accessToken {appKey, appSecret}` → `{accessToken, expireIn}`;
`POST /v1.0/robot/oToMessages/batchSend` and `/v1.0/robot/groupMessages/send` with the
`x-acs-dingtalk-access-token` header (401 InvalidAuthentication without a valid one), checking
robotCode, msgKey sampleMarkdown and msgParam (a JSON string with title and text);
`POST /v1.0/robot/messageFiles/download {downloadCode, robotCode}` → `{downloadUrl}`, served
at /files/… without a token. `rate_limit(path)` makes the next answer 429 Throttling with a
Retry-After header.
"""
import itertools
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, urlsplit

from tests.fakes.base import FakeServer
from tests.fakes.ws import Closed, accept, is_upgrade

BOT_TOPIC = "/v1.0/im/bot/messages/get"
CORP = "dingcorpfake"


class FakeDingTalk(FakeServer):
    client_id, client_secret = "dingfakeclientid", "fake-client-secret"

    def __init__(self, webhook_ttl: float = 5400.0, token_ttl: int = 7200):
        self.webhook_ttl, self.token_ttl = webhook_ttl, token_ttl
        self.lock = threading.RLock()
        self.sent, self.acks, self.frames, self.calls, self.opens = [], [], [], [], []
        self.connections, self.tokens_issued = 0, 0
        self.files = {}                     # download code -> (name, bytes)
        self._pending = OrderedPending()    # frames waiting for an ack
        self._limits, self._tickets, self._hooks, self._tokens = {}, set(), {}, {}
        self._lost_acks = 0
        self._ws = None
        self.downloads, self.downloads_open = [], threading.Event()   # cleared: downloads wait
        self.downloads_open.set()
        self._ids = itertools.count(1)

    # --- lifecycle ---

    def handler(self):
        return type("Handler", (_Handler,), {"ding": self})

    @property
    def api_base(self):
        return self.base

    # --- scripting ---

    def message(self, staff: str, text: str = "", *, group=False, msgtype="text", content=None,
                nick="Someone", staff_id=True) -> str:
        """A bot message from `staff` (no staff id at all with staff_id=False); returns its msgId."""
        n = next(self._ids)
        msg_id, conv = f"msg{n:06d}", f"cidGROUP{n}" if group else f"cidPRIVATE{staff}"
        hook = uuid.uuid4().hex
        expires = time.time() + self.webhook_ttl
        self._hooks[hook] = {"expires": expires, "conversation": conv, "staff": staff}
        data = {"conversationId": conv, "conversationType": "2" if group else "1",
                "chatbotCorpId": CORP, "chatbotUserId": "$:LWCP_v1:$bot", "msgId": msg_id,
                "senderNick": nick, "isAdmin": False, "senderId": f"$:LWCP_v1:${staff}",
                "sessionWebhookExpiredTime": int(expires * 1000), "createAt": int(time.time() * 1000),
                "senderCorpId": CORP, "robotCode": self.client_id, "msgtype": msgtype,
                "sessionWebhook": f"{self.api_base}/robot/sendBySession?session={hook}",
                "isInAtList": group}
        if staff_id:
            data["senderStaffId"] = staff
        if group:
            data["conversationTitle"] = "Team"
            data["atUsers"] = [{"dingtalkId": "$:LWCP_v1:$bot"}]
        if msgtype == "text":
            data["text"] = {"content": (" " if group else "") + text}
        else:
            data["content"] = content or {}
        self._push("CALLBACK", BOT_TOPIC, data, key=msg_id)
        return msg_id

    def add_file(self, name: str, data: bytes) -> str:
        code = f"dc{uuid.uuid4().hex}"
        self.files[code] = (name, data)
        return code

    def ping(self) -> str:
        """A SYSTEM ping; returns its data, which the ack must echo."""
        return self._push("SYSTEM", "ping", {"opaque": uuid.uuid4().hex})

    def disconnect(self):
        self._push("SYSTEM", "disconnect", {"reason": "server restarting"}, keep=False)

    def drop(self):
        self.downloads_open.set()               # nothing hangs on when the fake stops
        with self.lock:
            ws, self._ws = self._ws, None
        if ws:
            ws.drop()

    def lose_acks(self, n: int = 1):
        with self.lock:
            self._lost_acks += n

    def rate_limit(self, path: str, retry_after: int = 1, times: int = 1):
        with self.lock:
            self._limits.setdefault(path, []).extend([retry_after] * times)

    def connected(self) -> bool:
        return self._ws is not None

    def unacked(self) -> list:
        with self.lock:
            return list(self._pending.values())

    def texts(self, via=None) -> list[str]:
        return [s["text"] for s in self.sent if via is None or s["via"] == via]

    # --- the stream ---

    def _push(self, kind, topic, data: dict, key=None, keep=True) -> str:
        frame = {"specVersion": "1.0", "type": kind, "data": json.dumps(data, ensure_ascii=False),
                 "headers": {"appId": "fakeapp", "connectionId": "conn", "contentType":
                             "application/json", "topic": topic, "time": str(int(time.time() * 1000))}}
        with self.lock:
            if keep:
                self._pending[key or uuid.uuid4().hex] = frame
            self._send(frame)
        return frame["data"]

    def _send(self, frame):
        """Stamp a fresh messageId and send, if a client is connected (caller holds the lock)."""
        if not self._ws:
            return
        frame["headers"]["messageId"] = f"fake_{next(self._ids)}_{uuid.uuid4().hex[:8]}"
        self.frames.append(json.loads(json.dumps(frame)))
        try:
            self._ws.send(frame)
        except Closed:
            pass                            # stays pending: sent on the next connection

    def _session(self, ws):
        try:
            with self.lock:
                self.connections += 1
                self._ws = ws
                for frame in list(self._pending.values()):
                    self._send(frame)
            while True:
                text = ws.recv(timeout=1.0)
                if text is None:
                    continue
                ack = json.loads(text)
                with self.lock:
                    self.acks.append(ack)
                    if self._lost_acks:
                        self._lost_acks -= 1
                        continue
                    if ack.get("code") == 200:
                        self._pending.settle(ack.get("headers", {}).get("messageId"))
        except (Closed, ValueError):
            pass
        finally:
            with self.lock:
                if self._ws is ws:
                    self._ws = None

    # --- HTTP ---

    def _api(self, path, params, body, token):
        """(status, headers, body) for one call."""
        with self.lock:
            self.calls.append({"path": path, "body": body, "time": time.monotonic()})
            if self._limits.get(path):
                wait = self._limits[path].pop(0)
                return 429, {"Retry-After": str(wait)}, _error("Throttling", "请求过于频繁")
        if path == "/v1.0/gateway/connections/open":
            return self._open(body)
        if path == "/v1.0/oauth2/accessToken":
            if (body.get("appKey"), body.get("appSecret")) != (self.client_id, self.client_secret):
                return 400, {}, _error("invalidClientIdOrSecret", "无效的clientId或者clientSecret")
            token = uuid.uuid4().hex
            with self.lock:
                self.tokens_issued += 1
                self._tokens[token] = time.time() + self.token_ttl
            return 200, {}, {"accessToken": token, "expireIn": self.token_ttl}
        if path == "/robot/sendBySession":
            return self._webhook(params.get("session"), body)
        if path not in ("/v1.0/robot/oToMessages/batchSend", "/v1.0/robot/groupMessages/send",
                        "/v1.0/robot/messageFiles/download"):
            return 404, {}, _error("Resource.NotFound", f"no such API: {path}")
        if self._tokens.get(token, 0) < time.time():
            return 401, {}, _error("InvalidAuthentication", "不合法的access_token")
        if body.get("robotCode") != self.client_id:
            return 400, {}, _error("invalidParameter.robotCode", "robotCode无效")
        if path.endswith("download"):
            if body.get("downloadCode") not in self.files:
                return 400, {}, _error("invalidParameter.downloadCode", "downloadCode无效")
            return 200, {}, {"downloadUrl": f"{self.api_base}/files/{body['downloadCode']}"}
        try:
            param = json.loads(body.get("msgParam") or "")
            assert body.get("msgKey") == "sampleMarkdown" and param["title"] and param["text"]
        except (ValueError, KeyError, AssertionError):
            return 400, {}, _error("invalidParameter.msgParam", "msgParam格式错误")
        group = path.endswith("groupMessages/send")
        to = body.get("openConversationId") if group else (body.get("userIds") or [None])[0]
        if not to:
            return 400, {}, _error("invalidParameter", "缺少接收者")
        self._record("group" if group else "batchSend", to, param["title"], param["text"])
        answer = {"processQueryKey": uuid.uuid4().hex}
        if not group:
            answer.update(invalidStaffIdList=[], flowControlledStaffIdList=[])
        return 200, {}, answer

    def _open(self, body):
        if (body.get("clientId"), body.get("clientSecret")) != (self.client_id, self.client_secret):
            return 401, {}, _error("InvalidAuthentication", "clientId或clientSecret错误")
        ticket = uuid.uuid4().hex
        with self.lock:
            self.opens.append(body)
            self._tickets.add(ticket)
        return 200, {}, {"endpoint": f"ws://127.0.0.1:{self.bound_port}/connect", "ticket": ticket}

    def _webhook(self, session, body):
        hook = self._hooks.get(session)
        if not hook or hook["expires"] < time.time():
            return 200, {}, {"errcode": 300001, "errmsg": "session webhook expired"}
        if body.get("msgtype") != "markdown" or not (body.get("markdown") or {}).get("text"):
            return 200, {}, {"errcode": 40035, "errmsg": "缺少参数 markdown"}
        self._record("webhook", hook["conversation"], body["markdown"].get("title"),
                     body["markdown"]["text"])
        return 200, {}, {"errcode": 0, "errmsg": "ok"}

    def _record(self, via, to, title, text):
        with self.lock:
            self.sent.append({"via": via, "to": to, "title": title, "text": text,
                              "time": time.monotonic()})


class OrderedPending(dict):
    """Frames by key (msgId, or a random key for pings), settled by the messageId of their ack."""

    def settle(self, message_id):
        for key, frame in list(self.items()):
            if frame["headers"].get("messageId") == message_id:
                del self[key]


def _error(code, message):
    return {"code": code, "message": message, "requestid": uuid.uuid4().hex.upper()}


class _Handler(BaseHTTPRequestHandler):
    ding: FakeDingTalk
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/connect" and is_upgrade(self):
            ticket = dict(parse_qsl(url.query)).get("ticket")
            with self.ding.lock:
                valid = ticket in self.ding._tickets
                self.ding._tickets.discard(ticket)          # good for one connection
            if not valid:
                return self._send(401, {}, _error("InvalidTicket", "ticket无效"))
            try:
                self.ding._session(accept(self))
            except Closed:
                pass
            return
        code = url.path[len("/files/"):]
        if url.path.startswith("/files/") and code in self.ding.files:
            self.ding.downloads.append(code)
            self.ding.downloads_open.wait(60)
            data = self.ding.files[code][1]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return self.wfile.write(data)
        self._send(404, {}, _error("Resource.NotFound", "not found"))

    def do_POST(self):
        url = urlsplit(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return self._send(400, {}, _error("InvalidBody", "body is not JSON"))
        status, headers, answer = self.ding._api(url.path, dict(parse_qsl(url.query)), body,
                                                 self.headers.get("x-acs-dingtalk-access-token"))
        self._send(status, headers, answer)

    def _send(self, status, headers, body):
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json;charset=utf-8",
                     "Content-Length": str(len(data)), **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
