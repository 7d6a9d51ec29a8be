"""A fake of nanoclaw's WhatsApp bridge (bridge/index.js) on 127.0.0.1, speaking its JSON protocol.

    with FakeBridge(token="t") as bridge:
        # channels.whatsapp: {bridge_url: bridge.url, bridge_token: t, start_bridge: false}
        bridge.say("hello", phone="+15550001")       # a WhatsApp message arrives
        bridge.wait_for(lambda: bridge.texts())      # what was sent: bridge.sent, bridge.presence

Like the real bridge it refuses an upgrade that carries an Origin header (403), closes with 4001
a connection whose first frame is not {"type": "auth"} with the token, answers the auth with the
current status, keeps each message until the client confirms it ({"type": "received"}) and sends
the unconfirmed ones again after the next auth, and acks `send` frames, sending an id only once.
Controls: `drop()` cuts the connections, `state(s)` changes the WhatsApp status, `rate_limit(s)`
answers the next send with a rate-limit ack, `lose_next_ack` sends but cuts the connection before
the ack, `fail_next(error, permanent)` answers the next send with a failure.

Run as a program (`python tests/fakes/whatsapp_bridge.py`), it serves on $BRIDGE_PORT with
$BRIDGE_TOKEN like a supervised bridge: it writes $NANOCLAW_HOME/bridge-started.json and exits
when its stdin closes.
"""
if __name__ == "__main__":
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler

from tests.fakes.base import FakeServer
from tests.fakes.ws import Closed, accept, is_upgrade


class FakeBridge(FakeServer):
    def __init__(self, token: str = "test-token", port: int = 0):
        self.token, self.port = token, port
        self.status = "connected"
        self.sent, self.presence, self.received, self.auths = [], [], [], []
        self.refused = []                       # why connections were refused
        self.resends = 0                        # send frames whose id had been sent already
        self.lose_next_ack = False
        self._answers = []                      # scripted acks for the next sends
        self._done = set()                      # send ids already sent
        self._pending = {}                      # message id -> frame, until "received"
        self.lose_received = 0                  # how many "received" frames to drop
        self._clients = []
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    def handler(self):
        return _handler(self)

    @property
    def url(self):
        return f"ws://127.0.0.1:{self.bound_port}"

    # --- what the test does ---

    def say(self, text="", phone="+15550001", chat=None, sender=None, kind="text", media=(),
            group=False, mentioned=None, name="Alice") -> str:
        """A WhatsApp message reaches the bridge (in a group, one that @mentions us unless
        `mentioned` is False). Returns its id."""
        number = phone.lstrip("+")
        sender = sender or f"{number}@s.whatsapp.net"
        frame = {"type": "message", "id": f"3EB0{next(self._ids):08X}",
                 "chat": chat or ("120363041234567890@g.us" if group else sender),
                 "sender": sender, "phone": phone, "text": text, "media": [str(p) for p in media],
                 "kind": kind, "timestamp": int(time.time()), "isGroup": group,
                 "mentioned": group if mentioned is None else mentioned, "name": name}
        with self._lock:
            self._pending[frame["id"]] = frame
            self._broadcast(frame)
        return frame["id"]

    def state(self, status: str):
        with self._lock:
            self.status = status
            self._broadcast({"type": "status", "state": status})

    def rate_limit(self, retry_after: float):
        self._answers.append({"ok": False, "error": "WhatsApp rate limit: rate-overlimit",
                              "retry_after": retry_after})

    def fail_next(self, error: str, permanent=False):
        self._answers.append({"ok": False, "error": error, **({"permanent": True} if permanent
                                                              else {})})

    def drop(self):
        with self._lock:
            clients, self._clients = self._clients, []
        for ws in clients:
            ws.drop()

    def texts(self, to=None):
        return [s["text"] for s in self.sent if s["ok"] and (to is None or s["to"] == to)
                and s.get("text")]

    @property
    def connected(self) -> bool:
        return bool(self._clients)

    # --- the websocket ---

    def _broadcast(self, frame):
        for ws in list(self._clients):
            try:
                ws.send(frame)
            except Closed:
                pass

    def _serve(self, ws):
        try:
            first = ws.recv(timeout=5)
            frame = json.loads(first) if first else {}
            if frame.get("type") != "auth" or frame.get("token") != self.token:
                self.refused.append("wrong token" if frame.get("type") == "auth" else "no auth")
                ws.close(4001, "unauthorized")
                ws.recv(timeout=2)
                return
            self.auths.append(frame)
            with self._lock:
                ws.send({"type": "status", "state": self.status})
                for waiting in list(self._pending.values()):
                    ws.send(waiting)
                self._clients.append(ws)
            while True:
                text = ws.recv(timeout=60)
                if text is not None:
                    self._frame(ws, json.loads(text))
        except Closed:
            pass
        finally:
            with self._lock:
                if ws in self._clients:
                    self._clients.remove(ws)

    def _frame(self, ws, f):
        kind = f.get("type")
        if kind == "received":
            self.received.append(f["id"])
            with self._lock:
                if self.lose_received:      # as if nanoclaw died before its "received" went out
                    self.lose_received -= 1
                else:
                    self._pending.pop(f["id"], None)
        elif kind == "presence":
            self.presence.append({**f, "at": time.monotonic()})
        elif kind == "send":
            ws.send({"type": "ack", "id": f.get("id"), **self._send(f)})

    def _send(self, f):
        if f.get("id") in self._done:
            self.resends += 1
            return {"ok": True}
        if self.status != "connected":
            return {"ok": False, "error": "the bridge is not connected to WhatsApp right now"}
        answer = self._answers.pop(0) if self._answers else {"ok": True}
        self.sent.append({**f, "ok": answer["ok"], "at": time.monotonic()})
        if answer["ok"]:
            self._done.add(f["id"])
            if self.lose_next_ack:
                self.lose_next_ack = False
                self.drop()
                raise Closed()
        return answer


def _handler(fake):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            if self.headers.get("Origin") is not None:
                fake.refused.append("origin")
                self.send_error(403, "requests with an Origin header are refused")
            elif not is_upgrade(self):
                self.send_error(426, "a websocket is expected here")
            else:
                fake._serve(accept(self))

        def log_message(self, *args):
            pass

    return Handler


if __name__ == "__main__":
    import os
    home = Path(os.environ.get("NANOCLAW_HOME", "."))
    bridge = FakeBridge(os.environ["BRIDGE_TOKEN"], int(os.environ["BRIDGE_PORT"])).start()
    (home / "bridge-started.tmp").write_text(json.dumps({      # whole or not at all: the test
        "pid": os.getpid(), "argv": sys.argv[1:], "cwd": os.getcwd(),  # reads it as it appears
        **{k: os.environ.get(k) for k in ("BRIDGE_PORT", "BRIDGE_TOKEN", "AUTH_DIR", "MEDIA_DIR")}}))
    os.replace(home / "bridge-started.tmp", home / "bridge-started.json")
    print(f"whatsapp-bridge: listening on {bridge.url}", flush=True)
    sys.stdin.read()                            # until nanoclaw's end of the pipe closes
    bridge.stop()
