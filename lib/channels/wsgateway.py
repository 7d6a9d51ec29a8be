"""A client for Discord-style gateways: HELLO, IDENTIFY, heartbeats and their ACKs, RESUME after a
drop, op 7 Reconnect, op 9 Invalid Session and fatal close codes. Discord speaks it, and the QQ
bot gateway uses the same op codes, so both channels run this class on websocket-client.

One thread reads the socket, sends the heartbeats between reads (every read has a timeout) and
calls `dispatch` for each event. Dispatch must be quick: the channels keep a message on disk
there (Channel.keep) and do the slow work (downloads, transcription) on another thread. An event
dispatch cannot keep (OSError) is not counted as received: the session is resumed from the one
before it, and the server sends it again.
"""
import json
import logging
import random
import struct
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

log = logging.getLogger(__name__)

DISPATCH, HEARTBEAT, IDENTIFY, RESUME = 0, 1, 2, 6
RECONNECT, INVALID_SESSION, HELLO, ACK = 7, 9, 10, 11
NEW_SESSION_CLOSES = {4007, 4009}       # invalid seq, session timed out: identify again


class FatalError(Exception):
    """Retrying cannot help: the message says what the user must fix."""


class _Reconnect(Exception):
    def __init__(self, why: str, at_once: bool = False):
        super().__init__(why)
        self.at_once = at_once


class GatewaySession:
    """`url()` gives the address for a new session (it may raise FatalError); `identify()` gives
    the `d` of IDENTIFY, whose "token" RESUME reuses; `dispatch(event, data)` receives every
    DISPATCH (READY first); `wait(attempt)` pauses before a reconnect and returns False when
    stopping; `query` is added to every address; `fatal` maps close codes to what to fix;
    `new_session` are the close codes after which the session cannot be resumed (QQ's differ)."""

    invalid_session_wait = (1.0, 5.0)

    def __init__(self, name, *, url, identify, dispatch, stopping, wait, query="", fatal=None,
                 new_session=NEW_SESSION_CLOSES):
        self.name, self.url, self.identify, self.dispatch = name, url, identify, dispatch
        self.stopping, self.wait, self.query, self.fatal = stopping, wait, query, fatal or {}
        self.new_session = new_session
        self.session_id = self.resume_url = self.seq = None
        self.healthy = False            # this connection reached READY or RESUMED

    def run(self):
        """Stay connected until `stopping` is set. After a fatal error, log it and idle."""
        import websocket
        attempt = 0
        while not self.stopping.is_set():
            self.healthy = False
            try:
                self._connection(websocket)
                return
            except FatalError as e:
                log.error("%s: %s; not reconnecting until nanoclaw is restarted", self.name, e)
                self.stopping.wait()
                return
            except _Reconnect as e:
                log.info("%s: reconnecting: %s", self.name, e)
                if e.at_once:
                    attempt = 0
                    continue
            except Exception as e:          # the network, the server, the URL lookup
                log.warning("%s: gateway connection lost (%s: %s)", self.name, type(e).__name__, e)
            attempt = 0 if self.healthy else attempt + 1
            if not self.wait(attempt):
                return

    def _connection(self, websocket):
        resume = bool(self.session_id and self.resume_url)
        url = with_query(self.resume_url if resume else self.url(), self.query)
        ws = websocket.create_connection(url, timeout=30)
        try:
            hello = self._payload(ws.recv_data())
            if not hello or hello.get("op") != HELLO:
                raise _Reconnect(f"expected HELLO, got {hello}")
            interval = hello["d"]["heartbeat_interval"] / 1000
            self.resume_url = self.resume_url if resume else url
            if resume:
                self._send(ws, RESUME, {"token": self.identify()["token"],
                                        "session_id": self.session_id, "seq": self.seq})
            else:
                self._send(ws, IDENTIFY, self.identify())
            self._read(ws, interval)
        finally:        # 1000 ends the session; any other code keeps it resumable
            ws.close(status=1000 if self.stopping.is_set() else 4000, timeout=1)

    def _read(self, ws, interval):
        import websocket
        beat_at, acked = time.monotonic() + interval * random.random(), True
        while not self.stopping.is_set():
            if time.monotonic() >= beat_at:
                if not acked:
                    raise _Reconnect("no ACK for the last heartbeat (zombie connection)", True)
                self._send(ws, HEARTBEAT, self.seq)
                beat_at, acked = beat_at + interval, False
            ws.settimeout(min(1.0, max(0.01, beat_at - time.monotonic())))
            try:
                msg = self._payload(ws.recv_data())
            except websocket.WebSocketTimeoutException:
                continue
            if msg is None:
                continue
            op, data = msg.get("op"), msg.get("d")
            if op == DISPATCH:
                self._dispatched(msg.get("t"), data or {})  # first: its `s` counts once kept
            if msg.get("s") is not None:
                self.seq = msg["s"]
            if op == ACK:
                acked = True
            elif op == HEARTBEAT:
                self._send(ws, HEARTBEAT, self.seq)
            elif op == RECONNECT:
                raise _Reconnect("the server asked for it (op 7)", True)
            elif op == INVALID_SESSION:
                if not data:
                    self.session_id = self.resume_url = self.seq = None
                self.stopping.wait(random.uniform(*self.invalid_session_wait))
                raise _Reconnect(f"invalid session (op 9, resumable: {bool(data)})", True)

    def _dispatched(self, event, data):
        self.healthy = event in ("READY", "RESUMED") or self.healthy
        if event == "READY":
            self.session_id = data.get("session_id")
            self.resume_url = data.get("resume_gateway_url") or self.resume_url
            log.info("%s: gateway session %s ready", self.name, self.session_id)
        elif event == "RESUMED":
            log.info("%s: gateway session %s resumed at %s", self.name, self.session_id, self.seq)
        try:
            self.dispatch(event, data)
        except OSError as e:
            log.error("%s: cannot keep a %s event (%s); it is asked for again", self.name, event, e)
            raise _Reconnect("resuming before the event it could not keep") from None
        except Exception:
            log.exception("%s: handling %s failed", self.name, event)

    def _payload(self, frame):
        """The JSON of a text frame; a close frame ends the connection as its code says."""
        opcode, data = frame
        if opcode == 0x8:                                   # close
            code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
            reason = data[2:].decode(errors="replace")
            if code in self.fatal:
                raise FatalError(f"the gateway closed the connection with {code} {reason}: "
                                 f"{self.fatal[code]}")
            if code in self.new_session:
                self.session_id = self.resume_url = self.seq = None
            raise _Reconnect(f"closed by the server ({code} {reason})".strip())
        if opcode not in (0x1, 0x2):
            return None
        return json.loads(data)

    @staticmethod
    def _send(ws, op, data):
        ws.send(json.dumps({"op": op, "d": data}))


def with_query(url: str, query: str) -> str:
    """`url` with the parameters of `query` that it does not have yet."""
    if not query:
        return url
    p = urlsplit(url)
    params = dict(parse_qsl(p.query))
    for key, value in parse_qsl(query):
        params.setdefault(key, value)
    return urlunsplit((p.scheme, p.netloc, p.path or "/", urlencode(params), ""))
