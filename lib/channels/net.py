"""What talking to a platform needs, shared by the channels (mixed into Channel): a websocket kept
connected with pings and back-off, downloads into media/ with a size cap, voice notes to text."""
import json
import logging
import random
import re
import struct
import time
from pathlib import Path

from lib import maildir

log = logging.getLogger(__name__)
PING_S = 30.0                   # a websocket this long without a frame: ping; as long again: dead
DOWNLOAD_S = 300.0              # a whole download, however slowly the server drips it


class Closed(ConnectionError):
    """The other end closed the websocket with `code`."""

    def __init__(self, code: int):
        super().__init__(f"the other end closed the connection ({code})")
        self.code = code


class Network:
    """Used by Channel subclasses: needs self.name, self.home, self.config, self.stopping,
    self.backoff, self.ws and self.connected (Channel sets them)."""

    def media_path(self, name: str) -> Path:
        """Where a downloaded attachment goes: media/<channel>/<unique>-<name>."""
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[-80:] or "file"
        path = self.home / "media" / self.name / f"{maildir.unique_name()}-{safe}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def transcribe(self, path) -> str | None:
        """Text of a voice note (Groq Whisper) marked as such, or None without a Groq key."""
        if not self.config.provider("groq").api_key:
            return None
        from lib.errors import ProviderError
        from lib.channels.voice import transcribe
        try:
            return f"[voice note, transcribed] {transcribe(self.config, str(path))}"
        except ProviderError as e:
            log.warning("%s: %s", self.name, e)
            return None

    def download(self, url: str, name: str, limit: int, **request) -> Path:
        """GET `url` into media_path(name). A plain GET unless `request` says otherwise: a signed
        address needs no token, and a token must not go to another host."""
        import requests
        with requests.get(url, stream=True, timeout=60, **request) as r:
            r.raise_for_status()
            return self.save_media(r, name, limit)

    def save_media(self, response, name: str, limit: int) -> Path:
        """The body of a streamed `requests` response as media_path(name); over `limit` bytes,
        past DOWNLOAD_S (each read has its own timeout too), or on any failure, nothing is kept."""
        path, deadline = self.media_path(name), time.monotonic() + DOWNLOAD_S
        try:    # read1: what has come, not a full 64 KiB, so the deadline is looked at as it drips
            with open(path, "wb") as f:
                for chunk in iter(lambda: response.raw.read1(65536, decode_content=True), b""):
                    if f.tell() + len(chunk) > limit:
                        raise ValueError(f"larger than {limit // 2**20} MB")
                    if time.monotonic() > deadline:
                        raise ValueError(f"took longer than {DOWNLOAD_S:.0f} s")
                    f.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    # --- staying connected ---

    def reconnect_wait(self, attempt: int, cap: float = 60.0) -> bool:
        """Sleep before reconnect number `attempt` (exponential, with jitter). False when stopping."""
        delay = min(cap, self.backoff * 2 ** min(attempt, 10)) * random.uniform(0.5, 1.0)
        return not self.stopping.wait(delay)

    def keep_connected(self, session):
        """Call `session()` (one connection, read until it ends) again and again until stopping.
        When it returns True the platform asked for a new connection: that comes at once. Else
        (an error, told by connection_lost) the next try waits reconnect_wait, the longer the more
        tries in a row ended before the session set `self.connected`."""
        attempt = 0
        while not self.stopping.is_set():
            self.connected, cap = False, None
            try:
                if session():
                    attempt = 0
                    continue
            except Exception as e:
                if not self.stopping.is_set():
                    cap = self.connection_lost(e, attempt)
            finally:
                self.hang_up()
            attempt = 0 if self.connected else attempt + 1
            if not self.reconnect_wait(attempt, cap or 60.0):
                return

    def connection_lost(self, error: Exception, attempt: int) -> float | None:
        """Log why a connection ended (`attempt` counts the failing streak). A number returned
        caps the wait before the next try, instead of a minute."""
        log.warning("%s: connection lost (%s: %s); reconnecting", self.name,
                    type(error).__name__, error)

    def hang_up(self):
        """Close what the connection that just ended left open: its websocket."""
        ws, self.ws = self.ws, None
        if ws is not None:
            ws.shutdown()

    def connect(self, url: str, **options):
        """A websocket to `url`, kept in self.ws, that read_json() pings when it is quiet."""
        import websocket
        self.ws = websocket.create_connection(url, timeout=PING_S, enable_multithread=True,
                                              **options)
        return self.ws

    def read_json(self, ws):
        """The JSON text frames of websocket `ws` until stopping. A quiet spell of PING_S is
        answered with a ping; a second in a row, or a close frame (Closed), ends the connection."""
        import websocket
        quiet = False
        while not self.stopping.is_set():
            try:
                opcode, data = ws.recv_data(control_frame=True)
            except websocket.WebSocketTimeoutException:
                if quiet:
                    raise ConnectionError(f"no answer to a ping in {PING_S:.0f}s") from None
                quiet = True
                ws.ping()
                continue
            quiet = False
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise Closed(struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005)
            if opcode == websocket.ABNF.OPCODE_TEXT:
                yield json.loads(data)
