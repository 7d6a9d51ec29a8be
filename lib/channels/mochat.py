"""Mochat (Claw IM): Socket.IO over a websocket for incoming messages, the HTTP long poll
`/api/claw/sessions/watch` (and panel polling) while the socket is down, REST for replies.

Our own small Socket.IO client on websocket-client (Engine.IO v4): the open packet `0{…}`, the
server's ping "2" and our pong "3" are text; Socket.IO packets (CONNECT with `{token}`, events,
calls and their acks) are what the service's parser speaks: by default msgpack, one binary frame
holding the map {type, nsp, data, id} (socket.io-msgpack-parser, as the reference clients use);
with `socket_disable_msgpack` JSON text `4<type><id><data>`. Cursors, seen message ids and
held-back panel messages live in state/mochat.json, so a restart neither repeats nor loses one:
a session's cursor passes a message only once it is in the inbox (a full disk: the socket is
opened again, or the long poll asked again, from there), and the inbox name carries the message
id, so a batch taken again after a kill is not answered twice.
"""
import json
import logging
import re
import threading
import time
from datetime import datetime, timezone
from urllib.parse import urlsplit

from lib import maildir
from lib.channels import allowed, msgpack
from lib.channels.attachments import with_notes
from lib.channels.base import Channel, SendError, epoch, json_of, split_message, unsent

log = logging.getLogger(__name__)
LIMIT = 4000
WATCH_MS, WATCH_LIMIT, SEEN_MAX = 25000, 100, 2000
REFRESH_S, PANEL_POLL_S = 30.0, 15.0
CONNECT, DISCONNECT, EVENT, ACK, CONNECT_ERROR = range(5)    # Socket.IO packet types


class MochatChannel(Channel):
    name = "mochat"

    def __init__(self, config, home):
        super().__init__(config, home)
        import requests  # noqa: F401  (now: enabled() names a missing package at start-up)
        import websocket  # noqa: F401
        self.lock, self.path = threading.RLock(), self.home / "state" / "mochat.json"
        self.state, self.seen, self.saved = {"cursors": {}, "pending": {}}, {}, ""
        self.sessions, self.panels, self.threads, self.timers, self.acks = set(), set(), {}, {}, {}
        self.opened = set()     # sessions that appeared after the first look: their first batch is new
        self.down = threading.Event()       # the socket is not subscribed: poll over HTTP
        self.http, self.calls = None, 0     # self.ws is the socket once it is connected

    def start(self):
        import requests
        self.http = requests.Session()
        self.http.headers["X-Claw-Token"] = self.settings.claw_token
        if not (self.settings.sessions or self.settings.panels):
            log.warning('mochat: sessions and panels are both empty, so nothing is heard; set '
                        'them to ["*"] for all')
        self.load()
        super().start()

    def stop(self, timeout: float = 2.0):
        self.stopping.set()                 # held-back messages stay in the state file
        self.down.set()                     # wakes the idle pollers, which then see `stopping`
        super().stop(timeout)

    def api(self, path: str, body: dict, timeout: float = 30) -> dict:
        """POST {base_url}/api/claw/<path>; the `data` of `{code: 200, data}`, else SendError."""
        r = self.http.post(f"{self.settings.base_url.rstrip('/')}/api/claw/{path}", json=body,
                           timeout=timeout)
        got = json_of(r)
        code = got["code"] if isinstance(got.get("code"), int) else r.status_code
        if 429 in (code, r.status_code):
            wait = float(got.get("retry_after") or r.headers.get("Retry-After") or 1)
            raise SendError(f"rate limited for {wait:.2f}s", retry_after=wait)
        if r.status_code >= 300 or code != 200:
            why = got.get("message") or r.text[:200]
            raise SendError(f"Mochat answered {code} to {path}: {why}", permanent=400 <= code < 500)
        data = got.get("data", got)
        return data if isinstance(data, dict) else {"items": data}

    # --- receiving: the socket, and HTTP polling while it is down ---

    def listen(self):
        for key in list(self.state["pending"]):
            self.arm(key)
        self.discover()
        self.spawn("refresh", self.refresh)
        self.keep_connected(self.socket)

    def connection_lost(self, error, attempt):
        """Refused, dropped, silent, or a failed subscription: said once per failing streak."""
        (log.info if attempt else log.warning)(
            "mochat: socket: %s: %s; polling over HTTP meanwhile", type(error).__name__,
            str(error).split(" -+-+- ")[0][:200])

    def hang_up(self):
        self.down.set()                     # HTTP polling takes over (socket() closed the socket)

    def socket(self):
        import websocket
        s = self.settings
        u = urlsplit(s.socket_url or s.base_url)    # as python-socketio: scheme and host only
        ws = websocket.create_connection(f"{u.scheme.replace('http', 'ws')}://{u.netloc}/"
                                         f"{s.socket_path.strip('/')}/?EIO=4&transport=websocket",
                                         timeout=15)
        try:
            opened = ws.recv()
            if not isinstance(opened, str) or not opened.startswith("0"):
                raise ConnectionError(f"expected an Engine.IO open packet, got {opened[:80]!r}")
            hello = json.loads(opened[1:])
            silence = (hello.get("pingInterval", 25000) + hello.get("pingTimeout", 20000)) / 1000
            self.emit(ws, CONNECT, {"token": s.claw_token})
            heard = begun = time.monotonic()
            ws.settimeout(1.0)
            while not self.stopping.is_set():
                if time.monotonic() - heard > silence:
                    raise ConnectionError(f"the server sent nothing for {silence:.0f}s")
                if not self.connected and time.monotonic() - begun > 30:
                    raise ConnectionError("the subscription was not answered in 30s")
                try:
                    frame = ws.recv()
                except websocket.WebSocketTimeoutException:
                    continue
                heard = time.monotonic()
                if frame == "2":
                    ws.send("3")
                elif frame in ("", "1"):
                    raise ConnectionError("closed by the server")
                else:
                    self.packet(ws, *decode(frame))
        finally:
            self.ws = None
            self.down.set()
            ws.close(timeout=1)

    def emit(self, ws, kind: int, data=None, num=None):
        """Send one Socket.IO packet in the encoding the service's parser expects."""
        if self.settings.socket_disable_msgpack:
            ws.send(f"4{kind}{'' if num is None else num}"
                    f"{'' if data is None else json.dumps(data, ensure_ascii=False)}")
        else:
            packet = {"type": kind, "nsp": "/", "data": data, "id": num}    # no nil: left out
            ws.send_binary(msgpack.pack({k: v for k, v in packet.items() if v is not None}))

    def packet(self, ws, kind, num, data):
        if kind == CONNECT:
            self.ws = ws
            self.subscribe(sorted(self.sessions), sorted(self.panels))
        elif kind == CONNECT_ERROR:
            raise ConnectionError(f"connection refused: {str(data)[:200]}")
        elif kind == DISCONNECT:
            raise ConnectionError("closed by the server")
        elif kind == ACK:
            with self.lock:
                answer = self.acks.pop(num, None)
            if answer:
                answer(data[0] if isinstance(data, list) and data else {})
        elif kind == EVENT and isinstance(data, list) and data:
            if num is not None:
                self.emit(ws, ACK, [], num)
            self.event(data[0], data[1] if len(data) > 1 else None)

    def event(self, name, data):
        if name in ("claw.session.events", "claw.panel.events"):
            self.handle(name.split(".")[1], data)
        elif name == "notify:chat.message.add" and isinstance(data, dict) and data.get("groupId"):
            event = {"type": "message.add", "payload": {"messageId": data.get("_id"), **data}}
            self.handle("panel", {"sessionId": data.get("converseId") or data.get("panelId"),
                                  "events": [event]})

    def subscribe(self, sessions, panels):
        todo = [2]

        def answered(ack):
            if not isinstance(ack, dict) or not ack.get("result"):
                raise ConnectionError(f"subscription refused: {str(ack)[:200]}")
            data = ack.get("data")
            for payload in data if isinstance(data, list) else \
                    (data.get("sessions") or [data]) if isinstance(data, dict) else ():
                self.handle("session", payload)
            todo[0] -= 1
            if not todo[0]:
                self.connected = True
                self.down.clear()
                log.info("mochat: subscribed to %d session(s), %d panel(s)", len(sessions),
                         len(panels))
        for event, data in (("com.claw.im.subscribeSessions", {"sessionIds": sessions, "limit":
                             WATCH_LIMIT, "cursors": dict(self.state["cursors"])}),
                            ("com.claw.im.subscribePanels", {"panelIds": panels})):
            with self.lock:
                self.calls += 1
                n, self.acks[self.calls] = self.calls, answered
            self.emit(self.ws, EVENT, [event, data], n)

    def discover(self):
        """The sessions and panels to follow: those listed, and with "*" all there are."""
        s, found = self.settings, {}
        for kind, names, path in (("session", s.sessions, "sessions/list"),
                                  ("panel", s.panels, "groups/get")):
            found[kind] = {str(n) for n in names if n != "*"}
            try:
                listed = self.api(path, {}).get(kind + "s") or [] if "*" in names else []
            except Exception as e:
                log.warning("mochat: cannot list the %ss: %s", kind, e)
                continue
            found[kind] |= {str(x.get("sessionId") or x.get("id") or x.get("_id")) for x in listed
                            if isinstance(x, dict) and (kind == "session" or not x.get("type"))}
        with self.lock:
            new_s, new_p = found["session"] - self.sessions, found["panel"] - self.panels
            if self.sessions:               # opened since the first look: no history to skip
                self.opened |= new_s
            self.sessions |= new_s
            self.panels |= new_p
        for sid in new_s:
            self.spawn(sid, self.watch, sid)
        if self.panels:
            self.spawn("panels", self.poll_panels)
        if (new_s or new_p) and self.ws and not self.down.is_set():
            self.subscribe(sorted(new_s), sorted(new_p))

    def refresh(self):
        while not self.stopping.wait(REFRESH_S):
            self.discover()

    def spawn(self, key, target, *args):
        if key not in self.threads:
            self.threads[key] = threading.Thread(target=self._guard, args=(lambda: target(*args),),
                                                 name=f"mochat-{key}", daemon=True)
            self.threads[key].start()

    def watch(self, sid: str):
        attempt = 0
        while self.down.wait() and not self.stopping.is_set():
            known = sid in self.state["cursors"]    # else the answer is history: no waiting
            body = {"sessionId": sid, "cursor": self.state["cursors"].get(sid, 0),
                    "timeoutMs": WATCH_MS if known else 0, "limit": WATCH_LIMIT}
            try:
                got = self.api("sessions/watch", body, timeout=WATCH_MS / 1000 + 15)
                self.handle("session", {"sessionId": sid, **got})
                attempt = 0
            except Exception as e:
                log.warning("mochat: watching %s: %s", sid, e)
                attempt += 1
                if not self.reconnect_wait(attempt):
                    return

    def poll_panels(self):
        while self.down.wait() and not self.stopping.is_set():
            live = False
            while not live:
                live = not self.down.is_set()   # one more round once the socket is back
                for pid in sorted(self.panels):
                    try:
                        got = self.api("groups/panels/messages", {"panelId": pid, "limit": 50})
                    except Exception as e:
                        log.warning("mochat: polling panel %s: %s", pid, e)
                        continue
                    events = [{"type": "message.add", "payload": {"groupId": got.get("groupId"),
                                                                  **m}}
                              for m in reversed(got.get("messages") or []) if isinstance(m, dict)]
                    try:
                        self.handle("panel", {"sessionId": pid, "events": events})
                    except OSError:
                        live = False            # polled again, socket or not
                if self.stopping.wait(0 if live else PANEL_POLL_S):
                    return

    # --- from events to inbox messages ---

    def handle(self, kind: str, payload):
        if not isinstance(payload, dict) or self.stopping.is_set():
            return
        target, cursors = str(payload.get("sessionId") or ""), self.state["cursors"]
        names = self.settings.sessions if kind == "session" else self.settings.panels
        if not target or not ("*" in names or target in names):
            return
        with self.lock:
            # a session met at the first look: its first batch is history, never answered
            history = kind == "session" and target not in cursors and target not in self.opened
            for event in payload.get("events") or ():      # seen ones are skipped by id
                if not isinstance(event, dict):
                    continue
                p = event.get("payload")
                if event.get("type") == "message.add" and isinstance(p, dict) and history:
                    self.remember(message_id(p))          # seen, whatever its timestamps say
                elif event.get("type") == "message.add" and isinstance(p, dict):
                    try:
                        self.message(kind, target, p, event.get("timestamp"))
                    except OSError as e:                  # the cursor stays before it
                        self.seen.pop(message_id(p), None)
                        log.error("mochat: cannot put a message in the inbox (%s); it is "
                                  "fetched again", e)
                        raise
                if kind == "session" and isinstance(event.get("seq"), int):
                    cursors[target] = max(cursors.get(target, 0), event["seq"])
            if kind == "session":
                got = payload.get("cursor") if isinstance(payload.get("cursor"), int) else 0
                cursors[target] = max(cursors.get(target, 0), got)
            if history:
                log.info("mochat: session %s is new here: its history is not answered", target)
            self.save()

    def message(self, kind, target, p, stamp):
        s, author, mid = self.settings, str(p.get("author") or ""), message_id(p)
        if not author or author == s.agent_user_id or mid in self.seen or \
                kind == "panel" and self.old(p.get("createdAt") or stamp):
            return                          # (a session's place is its cursor, not the clock)
        self.remember(mid)
        info = p.get("authorInfo") if isinstance(p.get("authorInfo"), dict) else {}
        content = p.get("content")
        text = content.strip() if isinstance(content, str) else \
            json.dumps(content, ensure_ascii=False) if content is not None else ""
        entry = {"text": text or "[empty message]", "author": author, "message_id": mid,
                 "name": info.get("nickname") or info.get("email") or info.get("agentId") or "",
                 "group_id": str(p.get("groupId") or ""), "mentioned": mentions(p, s.agent_user_id),
                 "at": epoch(p.get("createdAt") or stamp)}
        if not allowed(s.allow_from, author):
            if kind == "session" or entry["mentioned"]:     # refused (and told) by receive()
                self.dispatch(kind, target, [entry])
        elif kind == "panel" and s.reply_delay_mode == "non-mention":
            key = f"{kind}:{target}"
            held = self.state["pending"].setdefault(key, {"kind": kind, "target": target,
                                                          "entries": []})
            held["entries"].append(entry)
            if entry["mentioned"]:
                self.flush(key, True)
            else:
                self.arm(key)
        else:
            self.dispatch(kind, target, [entry])

    def arm(self, key: str):
        """Answer what waits under `key` after reply_delay_ms, unless more comes meanwhile."""
        with self.lock:
            if key in self.timers:
                self.timers[key].cancel()
            t = self.timers[key] = threading.Timer(self.settings.reply_delay_ms / 1000,
                                                   self.flush, (key,))
            t.daemon = True
            t.start()

    def flush(self, key: str, now: bool = False):
        """Post what waits under `key` as one message: at once for a mention, else on its timer."""
        with self.lock:
            if self.stopping.is_set() or not now and self.timers.get(key) is not \
                    threading.current_thread():
                return                      # stopped, or re-armed since this timer started
            timer = self.timers.pop(key, None)
            if timer:
                timer.cancel()
            held = self.state["pending"].get(key)
            try:
                if held and held["entries"]:
                    self.dispatch(held["kind"], held["target"], held["entries"])
            except OSError as e:            # they stay held, and are tried again
                log.error("mochat: cannot put held messages in the inbox (%s); trying again", e)
                return self.arm(key)
            self.state["pending"].pop(key, None)
            self.save()

    def dispatch(self, kind, target, entries):
        last = entries[-1]
        text = "\n".join(f"{e['name'] or e['author']}: {e['text']}" if last["group_id"] else
                         e["text"] for e in entries) if len(entries) > 1 else last["text"]
        self.receive(target, last["author"], text, metadata={
            "kind": kind, "is_group": kind == "panel", "message_id": last["message_id"],
            "group_id": last["group_id"], "sender_name": last["name"],
            "mentioned": any(e["mentioned"] for e in entries), "batched": len(entries)},
            key=last["message_id"] or None, at=last.get("at"))     # taken again: dropped

    # --- state ---

    def load(self):
        try:
            self.state.update(json.loads(self.path.read_text()))
        except (OSError, ValueError):
            pass
        self.state.setdefault("since", int(time.time() * 1000))    # older panel messages: history
        self.seen = dict.fromkeys(self.state.get("seen", []))
        self.save()

    def save(self):
        with self.lock:
            self.state["seen"] = list(self.seen)[-SEEN_MAX:]
            data = json.dumps(self.state, ensure_ascii=False)
            if data != self.saved:
                maildir.atomic_write(self.path, data)
                self.saved = data

    def remember(self, mid: str):
        if not mid:
            return
        with self.lock:
            self.seen[mid] = None
            while len(self.seen) > SEEN_MAX:
                del self.seen[next(iter(self.seen))]

    def old(self, stamp) -> bool:
        try:
            t = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
        except ValueError:
            return False
        return t.replace(tzinfo=t.tzinfo or timezone.utc).timestamp() * 1000 < self.state["since"]

    # --- sending ---

    def deliver(self, msg: dict):
        chat, meta = msg["chat_id"], msg.get("metadata") or {}
        panel = meta.get("kind", "session" if chat.startswith("session_") else "panel") == "panel"
        text = with_notes(msg, "Mochat's API takes no files")    # none its clients know of
        for i, part in unsent(msg, split_message(text, LIMIT)):
            body = {"panelId" if panel else "sessionId": chat, "content": part}
            if i == 0 and meta.get("message_id"):
                body["replyTo"] = meta["message_id"]
            if panel and meta.get("group_id"):
                body["groupId"] = meta["group_id"]
            sent = self.api("groups/panels/send" if panel else "sessions/send", body)
            self.remember(message_id(sent))         # so its echo is not answered


def message_id(p: dict) -> str:
    return str(p.get("messageId") or p.get("_id") or "")


def mentions(p: dict, me: str) -> bool:
    meta = p.get("meta") if isinstance(p.get("meta"), dict) else {}
    if meta.get("mentioned") is True or meta.get("wasMentioned") is True:
        return True
    ids = [m if isinstance(m, str) else m.get("id") or m.get("userId") or m.get("_id")
           for key in ("mentions", "mentionIds", "mentionedUserIds", "mentionedUsers")
           for m in (meta.get(key) if isinstance(meta.get(key), list) else ())
           if isinstance(m, (str, dict))]
    return bool(me) and (me in ids or f"@{me}" in str(p.get("content") or ""))


def decode(frame) -> tuple:
    """(type, ack id, data) of a Socket.IO packet: a binary frame is msgpack, a text one JSON;
    (None, None, None) if unreadable."""
    try:
        if isinstance(frame, bytes):
            p = msgpack.unpack(frame)
            return p.get("type"), p.get("id"), p.get("data")
        kind, num, body = re.match(r"4(\d)(\d*)(.*)", frame, re.S).groups()
        return int(kind), int(num) if num else None, json.loads(body) if body else None
    except (AttributeError, ValueError) as e:
        log.debug("mochat: ignored packet %r: %s", frame[:80], e)
        return None, None, None
