"""WhatsApp, through the Node bridge in bridge/ (Baileys: an unofficial WhatsApp Web client).

With `start_bridge` the channel runs `node bridge/index.js --supervised` as a child, restarts it
when it dies and stops it on stop() (it also exits when its stdin closes: a killed gateway leaves
no bridge behind). The channel connects to `bridge_url`, authenticates with the token and speaks
JSON: `message` (media as file paths), `status`, `qr` in; `send` (answered by `ack`), `presence`
(typing) and `received` (the message is kept on disk here; typing, transcription and the inbox
come after, on another thread) out. The bridge keeps each message on disk until it is confirmed,
sends unconfirmed ones again after a reconnect or its own restart, and never sends a `send` id
twice: a drop, a kill or a full disk loses nothing.
"""
import collections
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

from lib.channels.attachments import Attachment, Note, attachment
from lib.channels.base import Channel, SendError, split_message, unsent
from lib.channels.net import Closed
from lib.channels.typing_sign import Typing
from lib.errors import ConfigError

log = logging.getLogger(__name__)
BRIDGE_DIR = Path(__file__).resolve().parents[2] / "bridge"
INSTALL = "WhatsApp needs Node.js 20+ (apt install nodejs npm) and `cd bridge && npm ci`"
NODE_MAJOR = 20
LIMIT = 4000                    # WhatsApp takes far longer texts; this keeps each one readable
CONNECT_WAIT, ACK_WAIT = 30.0, 60.0
TYPING_EVERY = 10.0
LOOPBACK = {"127.0.0.1", "localhost"}     # where the bridge listens


def node_command() -> list[str]:
    """`node bridge/index.js`, or a ConfigError saying what to install."""
    node = shutil.which("node")
    if not node:
        raise ConfigError(f"{INSTALL}: node is not on PATH")
    try:
        version = subprocess.run([node, "--version"], capture_output=True, text=True,
                                 timeout=15).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise ConfigError(f"{INSTALL}: {node} does not run ({e})") from None
    major = re.match(r"v(\d+)\.", version)
    if not major or int(major.group(1)) < NODE_MAJOR:
        raise ConfigError(f"{INSTALL}: {node} is {version or 'of an unknown version'}")
    if not (BRIDGE_DIR / "node_modules" / "baileys").is_dir():
        raise ConfigError(f"{INSTALL}: {BRIDGE_DIR / 'node_modules'} is missing")
    return [node, str(BRIDGE_DIR / "index.js")]


def bridge_env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
    return {**env, "NANOCLAW_HOME": str(home), "AUTH_DIR": str(home / "whatsapp-auth"),
            "MEDIA_DIR": str(home / "media" / "whatsapp"), **extra}


def login(config) -> int:
    """`channels login`: the bridge shows QR codes in this terminal until the phone links it."""
    return subprocess.call(node_command() + ["--login"], env=bridge_env(config.home), cwd=BRIDGE_DIR)


class WhatsAppChannel(Channel):
    name = "whatsapp"

    def __init__(self, config, home):
        super().__init__(config, home)
        import websocket  # noqa: F401  (now: enabled() names a missing package at start-up)
        s, url = self.settings, urlparse(self.settings.bridge_url)
        if url.scheme not in ("ws", "wss") or not url.hostname:
            raise ConfigError(f"channels.whatsapp.bridge_url must look like ws://127.0.0.1:3001, "
                              f"not {s.bridge_url!r}")
        self.token, self.proc = s.bridge_token, None
        if s.start_bridge:
            if url.hostname not in LOOPBACK:
                raise ConfigError("channels.whatsapp.bridge_url must be on 127.0.0.1 when the "
                                  "gateway starts the bridge; set start_bridge: false to use a "
                                  "bridge you run yourself")
            self.command = node_command() + ["--supervised"]
            self.port = url.port or 3001
            self.token = self.token or secrets.token_urlsafe(24)
        elif not self.token:
            raise ConfigError("channels.whatsapp.bridge_token is not set: give it the BRIDGE_TOKEN "
                              "your bridge runs with")
        self._state = ""
        self._ready = threading.Event()     # authenticated, and the bridge is on WhatsApp
        self._lock = threading.Lock()
        self._acks = {}                     # send id -> [Event, answer or None]
        self._seen = collections.OrderedDict()
        self.typing = Typing(self.name, lambda chat: self._presence(chat, "composing"),
                             TYPING_EVERY, hide=lambda chat: self._presence(chat, "paused"))

    def loops(self) -> list:
        return ([self._supervise] if self.settings.start_bridge else []) + super().loops()

    def stop(self, timeout: float = 2.0):
        self.stopping.set()                 # first: the bridge is not started again
        self.typing.stop()
        proc = self.proc
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        super().stop(timeout)

    # --- the bridge process ---

    def _supervise(self):
        attempt = 0
        env = bridge_env(self.home, BRIDGE_PORT=str(self.port), BRIDGE_TOKEN=self.token)
        while not self.stopping.is_set():
            began = time.monotonic()
            try:
                self.proc = proc = subprocess.Popen(
                    self.command, cwd=BRIDGE_DIR, env=env, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                    start_new_session=True)     # Ctrl+C reaches us; we stop the bridge
            except OSError as e:
                log.error("whatsapp: cannot start the bridge: %s", e)
            else:
                if self.stopping.is_set():
                    proc.terminate()
                for line in proc.stdout:        # until the bridge exits
                    line = line.rstrip().removeprefix("whatsapp-bridge: ")
                    (log.warning if line.startswith(("warn", "error")) else log.info)(
                        "whatsapp bridge: %s", line)
                code = proc.wait()
                if self.stopping.is_set():
                    return
                log.warning("whatsapp: the bridge exited with code %s; starting it again", code)
            attempt = 0 if time.monotonic() - began > 60 else attempt + 1
            if not self.reconnect_wait(attempt):
                return

    # --- receiving ---

    def listen(self):
        self.keep_connected(self._session)

    def _session(self):
        ws = self.connect(self.settings.bridge_url, suppress_origin=True)
        ws.send(json.dumps({"type": "auth", "token": self.token}))
        for frame in self.read_json(ws):
            self._frame(frame)

    def connection_lost(self, error, attempt):
        if isinstance(error, Closed) and error.code == 4001:
            log.error("whatsapp: the bridge at %s refused our token (is another bridge using the "
                      "port?)", self.settings.bridge_url)
        quiet = self.settings.start_bridge and attempt < 4 and not self.connected  # starting up?
        (log.info if quiet else log.warning)(
            "whatsapp: bridge connection: %s: %s; reconnecting", type(error).__name__, error)

    def hang_up(self):
        super().hang_up()
        self._ready.clear()
        with self._lock:
            for entry in self._acks.values():
                entry[0].set()                  # answer None: the connection was lost

    def _frame(self, f: dict):
        kind = f.get("type")
        if kind == "status":
            self.connected = True
            state, self._state = f.get("state"), f.get("state")
            (self._ready.set if state == "connected" else self._ready.clear)()
            if state == "logged_out":
                log.error("whatsapp: not linked to a phone: run `python nanoclaw.py channels "
                          "login` and scan the QR code")
            else:
                log.info("whatsapp: the bridge is %s", state)
        elif kind == "qr":
            log.warning("whatsapp: not linked yet: scan the QR code the bridge shows")
        elif kind == "ack":
            with self._lock:
                entry = self._acks.get(f.get("id"))
                if entry:
                    entry[1] = f
                    entry[0].set()
        elif kind == "message":
            if f.get("id") not in self._seen:
                try:                        # on disk before it is confirmed; the rest after
                    self.keep(str(f.get("id") or ""), f)
                except OSError as e:        # not confirmed: offered again on the next connection
                    self.connected = False      # which waits the back-off, growing
                    raise ConnectionError(f"cannot keep message {f.get('id')} ({e})") from None
                self._seen[f.get("id")] = True
                if len(self._seen) > 2000:
                    self._seen.popitem(last=False)
            self._send({"type": "received", "id": f.get("id")})
        elif kind == "error":
            log.warning("whatsapp: the bridge says: %s", f.get("error"))

    def handle_kept(self, f: dict):
        chat, jid, phone = f.get("chat") or "", f.get("sender") or f.get("chat") or "", \
            f.get("phone") or ""
        number = jid.split("@")[0].split(":")[0]
        sender, *aliases = dict.fromkeys(x for x in (phone, number, jid) if x) or [""]
        text, group = f.get("text") or "", bool(f.get("isGroup"))
        mine = (self.home / "media" / self.name).resolve()     # where the bridge saves files:
        media = [p for p in f.get("media") or () if _within(p, mine)]   # no other path is taken
        meta = {"message_id": f.get("id"), "sender": jid, "phone": phone, "is_group": group,
                "name": f.get("name") or "", "sender_aliases": aliases}
        addressed = not group or f.get("mentioned")     # in groups: what @mentions or answers us
        if not (addressed and self.admits(sender, meta)):
            for p in media:                     # files not for us, or from strangers: not kept
                Path(p).unlink(missing_ok=True)
            if not addressed:
                return
            if group:                           # no "this assistant is private" in groups
                log.info("whatsapp: ignored %s in group %s (not in allow_from)", sender, chat)
            else:
                self.receive(chat, sender, text, (), meta)
            return
        if not text and not media:
            return
        self.typing.start(chat)
        if f.get("kind") == "audio" and media:
            heard = self.transcribe(media[0])
            text = f"{text}\n{heard}".strip() if heard else text
        at = f.get("timestamp") if isinstance(f.get("timestamp"), (int, float)) else None
        self.receive(chat, sender, text, media, meta, key=f.get("id") or None,  # offered again
                     at=at)                     # after a crash, the inbox name drops it

    def _presence(self, chat: str, state: str):
        self._send({"type": "presence", "to": chat, "state": state})

    # --- sending ---

    def deliver(self, msg: dict):
        chat, media = msg["chat_id"], [str(p) for p in msg.get("media") or ()]
        frames = [{"text": part} for part in split_message(msg.get("text") or "", LIMIT)]
        frames = frames or ([{"text": ""}] if media else [])
        if media:                               # the files follow the last part; the bridge
            files = [attachment(p, read=False) for p in media]      # reads them itself
            notes = [f for f in files if isinstance(f, Note)]       # (gone since…)
            frames[-1]["text"] = "\n".join(filter(None, [frames[-1]["text"], *notes]))
            frames[-1]["media"] = [p for p, f in zip(media, files) if isinstance(f, Attachment)]
        for i, body in unsent(msg, frames):
            answer = self._request({"type": "send", "id": f"{msg['id']}.{i}", "to": chat, **body})
            if not answer.get("ok"):
                raise SendError(f"WhatsApp: {answer.get('error')}", permanent=bool(
                    answer.get("permanent")), retry_after=answer.get("retry_after"))
        if msg.get("reply_to"):
            self.typing.done(chat)

    def _request(self, frame: dict) -> dict:
        deadline = time.monotonic() + CONNECT_WAIT
        while not self._ready.wait(0.5):        # short waits, so that stop() is not held up
            if self.stopping.is_set() or time.monotonic() > deadline:
                raise SendError(f"WhatsApp is not connected ({self._state or 'no bridge'})")
        entry = [threading.Event(), None]
        with self._lock:
            self._acks[frame["id"]] = entry
        try:
            self._send(frame)
            if not entry[0].wait(ACK_WAIT):
                raise SendError(f"the bridge did not answer in {ACK_WAIT:.0f}s")
            if entry[1] is None:
                raise SendError("the connection to the bridge was lost")
            return entry[1]
        finally:
            with self._lock:
                self._acks.pop(frame["id"], None)

    def _send(self, frame: dict):
        ws = self.ws
        if ws is None:
            raise SendError("not connected to the bridge")
        try:
            ws.send(json.dumps(frame, ensure_ascii=False))
        except Exception as e:
            raise SendError(f"cannot write to the bridge: {e}") from None


def _within(path, folder: Path) -> bool:
    """A regular file the bridge saved in `folder` (its real path): a frame naming any other
    file (a bridge not ours on the port) gets nothing read or sent to the model."""
    try:
        return isinstance(path, str) and Path(path).resolve().is_relative_to(folder) \
            and Path(path).is_file()
    except (OSError, ValueError):
        return False
