"""A fake Mochat on 127.0.0.1: the Claw REST API and its Socket.IO websocket.

    with FakeMochat() as mochat:
        # channels.mochat: {base_url: mochat.url, claw_token: mochat.token, agent_user_id: AGENT}
        mochat.say("session_dm", "hello")            # the owner writes in a session
        mochat.post("panel_general", "hi all")       # someone writes in a panel
        mochat.wait_for(lambda: mochat.texts("session_dm"))

REST: POST /api/claw/<route> with `X-Claw-Token` (else 401 `{"code": 401, "message"}`); answers
`{"code": 200, "data": …}`. Routes: sessions/watch (long poll: the events after `cursor`, waiting
up to `timeoutMs` for one), sessions/send, sessions/list, groups/get, groups/panels/messages
(newest first), groups/panels/send, groups/createInvite, agents/selfRegister, agents/bind,
agents/owner. Over-long content is a 400;
`rate_limit(s)` makes the next send a 429 with `retry_after` and Retry-After. What the agent
sends comes back as an event in its session or panel, as on the real service.

Socket.IO (Engine.IO v4) at /socket.io/?EIO=4&transport=websocket: open packet, a ping ("2")
every `ping_ms` (no pong "3" within `ping_timeout_ms` and the fake hangs up), CONNECT with
`{"token"}` checked (CONNECT_ERROR on a wrong one), the acked calls com.claw.im.subscribeSessions
(the backlog after each cursor comes back in the ack) and com.claw.im.subscribePanels, then
`claw.session.events` / `claw.panel.events` as messages arrive (`pushed` counts the events sent
so). The Engine.IO packets are text; the Socket.IO packets follow the server's parser:
`encoding="msgpack"` (the default, as socket.io-msgpack-parser: one binary frame holding the map
{type, nsp, data, id}) or `"json"` (text `4<type><id><json>`). A packet in the other encoding, or
one that parser would refuse, is logged in `bad_packets` and the connection cut, as a real
server does. `drop()` cuts every socket; `refuse_socket = True` answers the handshake with 403;
`mute()` makes the open sockets go silent (no pings, no events). The msgpack codec below is
written apart from the channel's on purpose.
"""
import itertools
import json
import re
import struct
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from tests.fakes.base import FakeServer
from tests.fakes.ws import Closed, accept, is_upgrade

AGENT, OWNER, GROUP = "agent-0001", "user-owner", "group-0001"
MAX_CONTENT = 4000


# --- msgpack, the fake's own: what socket.io-msgpack-parser's notepack.io reads and writes ---

def mp_encode(v) -> bytes:
    if v is None or v is True or v is False:
        return {None: b"\xc0", False: b"\xc2", True: b"\xc3"}[v]
    if isinstance(v, float):
        return struct.pack(">Bd", 0xCB, v)
    if isinstance(v, int):
        if 0 <= v <= 0x7F or -32 <= v < 0:
            return struct.pack(">b" if v < 0 else ">B", v)
        return struct.pack(">Bq", 0xD3, v) if v < 0 else struct.pack(">BQ", 0xCF, v)
    if isinstance(v, str):
        data = v.encode()
        head = bytes([0xA0 + len(data)]) if len(data) < 32 else struct.pack(">BI", 0xDB, len(data))
        return head + data
    if isinstance(v, bytes):
        return struct.pack(">BI", 0xC6, len(v)) + v
    if isinstance(v, list):
        return struct.pack(">BI", 0xDD, len(v)) + b"".join(map(mp_encode, v))
    return struct.pack(">BI", 0xDF, len(v)) + b"".join(mp_encode(k) + mp_encode(x)
                                                      for k, x in v.items())


def mp_decode(data: bytes):
    value, rest = _mp_take(memoryview(data))
    if rest:
        raise ValueError("bytes left over")
    return value


def _mp_take(b):
    first = b[0]
    simple = {0xC0: None, 0xC2: False, 0xC3: True}
    if first in simple:
        return simple[first], b[1:]
    if first <= 0x7F or first >= 0xE0:
        return struct.unpack(">b" if first >= 0xE0 else ">B", b[:1])[0], b[1:]
    numbers = {0xCA: ">f", 0xCB: ">d", 0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
               0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}
    if first in numbers:
        size = struct.calcsize(numbers[first])
        return struct.unpack(numbers[first], b[1:1 + size])[0], b[1 + size:]
    sized = {0xD9: (">B", str), 0xDA: (">H", str), 0xDB: (">I", str), 0xC4: (">B", bytes),
             0xC5: (">H", bytes), 0xC6: (">I", bytes), 0xDC: (">H", list), 0xDD: (">I", list),
             0xDE: (">H", dict), 0xDF: (">I", dict)}
    if 0x80 <= first <= 0xBF:
        kind = (dict, list, str, str)[(first - 0x80) // 16]
        count, b = first & (0x1F if kind is str else 0x0F), b[1:]
    elif first in sized:
        fmt, kind = sized[first]
        end = 1 + struct.calcsize(fmt)
        count, b = struct.unpack(fmt, b[1:end])[0], b[end:]
    else:
        raise ValueError(f"type byte {first:#x} is not used by Socket.IO packets")
    if kind in (str, bytes):
        if len(b) < count:
            raise ValueError("short string")
        raw = bytes(b[:count])
        return (raw.decode() if kind is str else raw), b[count:]
    items = []
    for _ in range(count * (2 if kind is dict else 1)):
        item, b = _mp_take(b)
        items.append(item)
    return (dict(zip(items[::2], items[1::2])) if kind is dict else items), b


def now_iso():
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FakeMochat(FakeServer):
    token = "claw_fake_token"

    def __init__(self, ping_ms=25000, ping_timeout_ms=20000, socket_path="/socket.io",
                 encoding="msgpack"):
        self.ping_ms, self.ping_timeout_ms, self.socket_path = ping_ms, ping_timeout_ms, socket_path
        self.encoding, self.bad_packets, self.pushed = encoding, [], 0
        self.sessions = {}              # id -> list of events (seq from 1)
        self.panels = {}                # id -> list of messages, oldest first
        self.sent, self.calls = [], []  # sends; socket calls (name, data)
        self.requests = []              # [route, body, status], logged on arrival
        self.refuse_socket, self.handshakes, self.pongs = False, 0, 0
        self._socks = []                # connected clients: {"ws", "sessions", "panels"}
        self._limits = []
        self._ids = itertools.count(1)
        self._cond = threading.Condition(threading.RLock())
        self._stopped = False

    # --- life ---

    def handler(self):
        return _handler(self)

    def stop(self):
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        super().stop()

    @property
    def url(self):
        return self.base

    # --- what a test does ---

    def session(self, sid):
        with self._cond:
            self.sessions.setdefault(sid, [])

    def panel(self, pid):
        with self._cond:
            self.panels.setdefault(pid, [])

    def say(self, sid, text, author=OWNER, name="owner", meta=None, everyone=False,
            at=None) -> str:
        """Someone writes in session `sid`: a message.add event, pushed to subscribed sockets
        (to every socket with `everyone`, as a server that ignores subscriptions would).
        `at` (an ISO-8601 time) overrides the event's timestamp."""
        mid = f"m{next(self._ids)}"
        with self._cond:
            events = self.sessions.setdefault(sid, [])
            event = {"seq": len(events) + 1, "type": "message.add", "timestamp": at or now_iso(),
                     "payload": {"messageId": mid, "author": author, "content": text,
                                 "meta": meta or {}, "groupId": "", "converseId": sid[8:],
                                 "authorInfo": {"nickname": name, "email": f"{name}@x.io"}}}
            events.append(event)
            self._cond.notify_all()
        self._push("claw.session.events", {"sessionId": sid, "cursor": event["seq"], "events":
                                           [event]}, lambda c: everyone or sid in c["sessions"])
        return mid

    def post(self, pid, text, author="user-alice", name="alice", mentions=(),
             everyone=False) -> str:
        """Someone writes in panel `pid`; @AGENT in `mentions` mentions the agent."""
        mid = f"p{next(self._ids)}"
        msg = {"messageId": mid, "author": author, "content": text, "createdAt": now_iso(),
               "meta": {"mentions": list(mentions)}, "authorInfo": {"nickname": name}}
        with self._cond:
            self.panels.setdefault(pid, []).append(msg)
        event = {"type": "message.add", "timestamp": msg["createdAt"],
                 "payload": dict(msg, groupId=GROUP, converseId=pid)}
        self._push("claw.panel.events", {"sessionId": pid, "events": [event]},
                   lambda c: everyone or pid in c["panels"])
        return mid

    def rate_limit(self, *retry_after: float):
        self._limits.extend(retry_after)

    def drop(self):
        with self._cond:
            socks, self._socks = self._socks, []
        for c in socks:
            c["ws"].drop()

    def mute(self):
        """The connections stay open but the server says nothing more: a zombie connection."""
        for c in list(self._socks):
            c["mute"] = True

    @property
    def connected(self) -> bool:
        return any(c["subscribed"] and not c["mute"] for c in self._socks)

    def texts(self, target):
        return [s["body"]["content"] for s in self.sent
                if s["status"] == 200 and target in (s["body"].get("sessionId"),
                                                     s["body"].get("panelId"))]

    # --- Socket.IO ---

    def _push(self, event, data, wanted):
        for c in list(self._socks):
            if c["subscribed"] and not c["mute"] and wanted(c):
                try:
                    self._emit(c["ws"], 2, [event, data])
                    self.pushed += len(data.get("events") or ())
                except Closed:
                    pass

    def _emit(self, ws, kind, data, num=None):
        if self.encoding == "msgpack":
            packet = {"type": kind, "nsp": "/", "data": data}
            ws.send(mp_encode(packet if num is None else dict(packet, id=num)))
        else:
            ws.send(f"4{kind}{'' if num is None else num}{json.dumps(data)}")

    def _read(self, frame):
        """(type, id, data) of a Socket.IO packet, checked as the server's parser checks it."""
        if self.encoding == "json":
            if not isinstance(frame, str):
                raise ValueError("a binary frame to the JSON parser")
            kind, num, body = re.fullmatch(r"4([0-4])(\d*)(.*)", frame, re.S).groups()
            return int(kind), int(num) if num else None, json.loads(body) if body else None
        if not isinstance(frame, bytes):
            raise ValueError(f"a text packet {frame[:40]!r} to the msgpack parser")
        p = mp_decode(frame)
        kind, data = p.get("type"), p.get("data")
        valid = {0: "data" not in p or isinstance(data, dict), 1: "data" not in p,
                 2: isinstance(data, list) and data, 3: isinstance(data, list)}
        if not isinstance(p.get("nsp"), str) or not valid.get(kind) or \
                not isinstance(p.get("id", 0), int):
            raise ValueError(f"invalid packet {p!r}")
        return kind, p.get("id"), data

    def _socket(self, ws):
        conn = {"ws": ws, "sessions": set(), "panels": set(), "subscribed": False, "mute": False}
        ws.send("0" + json.dumps({"sid": uuid.uuid4().hex, "upgrades": [], "maxPayload": 1000000,
                                  "pingInterval": self.ping_ms,
                                  "pingTimeout": self.ping_timeout_ms}))
        ping_at, pong_due = time.monotonic() + self.ping_ms / 1000, None
        try:
            while True:
                now = time.monotonic()
                if pong_due and now > pong_due:
                    ws.drop()               # no pong: the server gives up on the client
                    raise Closed()
                if conn["mute"]:
                    ping_at, pong_due = now + 3600, None
                if now >= ping_at:
                    ws.send("2")
                    ping_at, pong_due = now + self.ping_ms / 1000, now + self.ping_timeout_ms / 1000
                frame = ws.recv(timeout=0.05)
                if frame is None:
                    continue
                if frame == "3":
                    self.pongs, pong_due = self.pongs + 1, None
                    continue
                try:
                    kind, num, data = self._read(frame)
                except (ValueError, AttributeError, IndexError, struct.error) as e:
                    self.bad_packets.append(str(e))
                    ws.drop()               # the server's parser throws: connection closed
                    raise Closed() from None
                if kind == 0:
                    if (data or {}).get("token") != self.token:
                        self._emit(ws, 4, {"message": "invalid claw token"})
                        continue
                    with self._cond:
                        self._socks.append(conn)
                    self._emit(ws, 0, {"sid": uuid.uuid4().hex})
                elif kind == 2 and conn in self._socks:
                    name, data = data[0], data[1] if len(data) > 1 else None
                    self.calls.append((name, data))
                    self._emit(ws, 3, [self._call(conn, name, data)], num)
                elif kind == 1:
                    break
        except Closed:
            pass
        finally:
            with self._cond:
                if conn in self._socks:
                    self._socks.remove(conn)

    def _call(self, conn, name, data):
        if name == "com.claw.im.subscribeSessions":
            backlog = []
            with self._cond:
                for sid in data.get("sessionIds") or ():
                    conn["sessions"].add(sid)
                    events = self.sessions.get(sid, [])
                    after = (data.get("cursors") or {}).get(sid, 0)
                    backlog.append({"sessionId": sid, "cursor": len(events),
                                    "events": events[after:][:data.get("limit") or 100]})
                conn["subscribed"] = True       # events from now on are pushed
            return {"result": True, "data": backlog}
        if name == "com.claw.im.subscribePanels":
            conn["panels"].update(data.get("panelIds") or ())
            return {"result": True, "data": {"panelIds": sorted(conn["panels"])}}
        return {"result": False, "message": f"unknown method {name}"}

    # --- REST ---

    def _rest(self, h, route, body):
        if h.headers.get("X-Claw-Token") != self.token and not route.endswith("selfRegister"):
            return 401, {"code": 401, "message": "Invalid claw token"}
        if route == "sessions/watch":
            return self._watch(body)
        if route in ("sessions/send", "groups/panels/send"):
            return self._send(route, body)
        if route == "sessions/list":
            return 200, {"code": 200, "data": {"sessions": [
                {"sessionId": s, "converseId": s[8:]} for s in sorted(self.sessions)]}}
        if route == "groups/get":
            panels = [{"id": p, "name": p, "type": 0} for p in sorted(self.panels)]
            return 200, {"code": 200, "data": {"_id": GROUP, "panels": panels + [
                {"id": "folder-1", "name": "Folder", "type": 1}]}}
        if route == "groups/panels/messages":
            msgs = self.panels.get(body.get("panelId"))
            if msgs is None:
                return 404, {"code": 404, "message": "panel not found"}
            return 200, {"code": 200, "data": {"groupId": GROUP,
                                               "messages": msgs[::-1][:body.get("limit") or 50]}}
        if route == "agents/selfRegister":
            return 200, {"code": 200, "data": {"workspaceId": "claw_square", "groupId": GROUP,
                                               "botUserId": AGENT, "token": self.token}}
        if route == "groups/createInvite":
            return 200, {"code": 200, "data": {"code": "inv12345", "inviteType": "normal"}}
        if route == "agents/owner":
            return 200, {"code": 200, "data": {"owner": {"userId": OWNER, "nickname": "owner"}}}
        if route == "agents/bind":
            sid = "session_dm-owner"
            self.say(sid, body.get("greeting_msg") or "hello", author=AGENT, name="agent")
            return 200, {"code": 200, "data": {"success": True, "ownerUserId": OWNER,
                                               "sessionId": sid, "converseId": sid[8:]}}
        return 404, {"code": 404, "message": f"no route {route}"}

    def _watch(self, body):
        sid, cursor = body.get("sessionId"), int(body.get("cursor") or 0)
        deadline = time.monotonic() + min(int(body.get("timeoutMs") or 0), 30000) / 1000
        with self._cond:
            if sid not in self.sessions:
                return 404, {"code": 404, "message": "session not found"}
            while len(self.sessions[sid]) <= cursor and not self._stopped:
                if not self._cond.wait(max(0, deadline - time.monotonic())) and \
                        time.monotonic() >= deadline:
                    break
            events = self.sessions[sid][cursor:][:body.get("limit") or 100]
            last = events[-1]["seq"] if events else max(cursor, 0)
        return 200, {"code": 200, "data": {"sessionId": sid, "cursor": last, "events": events}}

    def _send(self, route, body):
        record = {"route": route, "body": body, "at": time.monotonic()}
        self.sent.append(record)
        if self._limits:
            wait = self._limits.pop(0)
            record["status"] = 429
            return 429, {"code": 429, "message": "Too many requests", "retry_after": wait}, \
                {"Retry-After": str(max(1, round(wait)))}
        if not body.get("content") or len(body["content"]) > MAX_CONTENT:
            record["status"] = 400
            return 400, {"code": 400, "message": f"content must be 1 to {MAX_CONTENT} characters"}
        target = body.get("sessionId") or body.get("panelId")
        if target not in (self.sessions if route.startswith("sessions") else self.panels):
            record["status"] = 404
            return 404, {"code": 404, "message": "target not found"}
        record["status"] = 200
        if route.startswith("sessions"):       # our own message comes back as an event
            mid = self.say(target, body["content"], author=AGENT, name="agent")
        else:
            mid = self.post(target, body["content"], author=AGENT, name="agent")
        return 200, {"code": 200, "data": {"messageId": mid, "content": body["content"]}}


def _handler(fake):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if url.path.rstrip("/") != fake.socket_path or not is_upgrade(self):
                return self._answer(404, {"code": 404, "message": "not found"})
            if query.get("EIO") != ["4"] or query.get("transport") != ["websocket"]:
                return self._answer(400, {"code": 0, "message": "Transport unknown"})
            fake.handshakes += 1             # every attempt, refused ones too
            if fake.refuse_socket:
                return self._answer(403, {"code": 4, "message": "Forbidden"})
            fake._socket(accept(self))

        def do_POST(self):
            path = urlsplit(self.path).path
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                return self._answer(400, {"code": 400, "message": "invalid JSON"})
            if not path.startswith("/api/claw/"):
                return self._answer(404, {"code": 404, "message": "not found"})
            record = [path[len("/api/claw/"):], body, None]     # logged on arrival
            fake.requests.append(record)
            status, answer, *headers = fake._rest(self, record[0], body)
            record[2] = status
            self._answer(status, answer, headers[0] if headers else {})

        def _answer(self, status, body, headers=None):
            data = json.dumps(body).encode()
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except OSError:
                pass                        # the client gave up on a long poll

        def log_message(self, *args):
            pass

    return Handler
