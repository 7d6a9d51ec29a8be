"""Discord: gateway v10 for incoming messages (lib/channels/wsgateway.py), REST for replies.

Direct messages are always read; in a server channel only messages that mention the bot. Each
reply answers the message it is for (message_reference) and is split at 2,000 characters; the
"typing…" sign is renewed every 8 s until the reply is out.
"""
import collections
import logging
import re
import sys
import threading
import time
from pathlib import Path

from lib.channels.base import Channel, SendError, split_message
from lib.config import allowed
from lib.errors import ConfigError

log = logging.getLogger(__name__)
LIMIT = 2000
TYPING_EVERY, TYPING_CAP = 8.0, 120.0
MAX_DOWNLOAD = 25 * 1024 * 1024
AUDIO = (".ogg", ".oga", ".mp3", ".m4a", ".wav", ".webm", ".flac", ".opus")
FATAL = {
    4004: "Discord refused the bot token; copy it again from the developer portal (Bot, Reset "
          "Token) into channels.discord.token",
    4010: "invalid shard; nanoclaw uses one connection without sharding",
    4011: "this bot is in too many servers for one unsharded connection",
    4012: "invalid gateway API version; check channels.discord.gateway_url",
    4013: "invalid intents; check channels.discord.intents (default 37377)",
    4014: "the bot asks for a privileged intent it is not allowed: enable MESSAGE CONTENT INTENT "
          "under Bot, Privileged Gateway Intents in the developer portal",
}


class DiscordChannel(Channel):
    name = "discord"

    def __init__(self, config, home):
        super().__init__(config, home)
        try:
            import requests  # noqa: F401  (fail at start-up, naming the package to install)
            import websocket  # noqa: F401
        except ModuleNotFoundError as e:
            raise ConfigError(f"channel discord needs the Python package {e.name}: "
                              ".venv/bin/pip install -r requirements.txt") from None
        self.user_id = ""
        self._seen = collections.deque(maxlen=512)      # message ids, in case one comes twice
        self._typing = {}                               # chat id -> [stop event, replies awaited]
        self._lock = threading.Lock()
        self.http = None

    def start(self):
        import requests
        self.http = requests.Session()
        self.http.headers.update({"Authorization": f"Bot {self.settings.token}",
                                  "User-Agent": "DiscordBot (nanoclaw, 1.0)"})
        super().start()

    def stop(self, timeout: float = 2.0):
        with self._lock:
            for stop, _ in self._typing.values():
                stop.set()
        super().stop(timeout)

    def api(self, method: str, path: str, **kw):
        return self.http.request(method, self.settings.api_base.rstrip("/") + path,
                                 timeout=kw.pop("timeout", 30), **kw)

    # --- receiving ---

    def listen(self):
        from lib.channels.wsgateway import GatewaySession
        GatewaySession(self.name, url=self._gateway_url, identify=self._identify,
                       dispatch=self._dispatch, stopping=self.stopping, wait=self.reconnect_wait,
                       query="v=10&encoding=json", fatal=FATAL).run()

    def _gateway_url(self) -> str:
        if self.settings.gateway_url:
            return self.settings.gateway_url
        from lib.channels.wsgateway import FatalError
        r = self.api("GET", "/gateway/bot")
        if r.status_code == 401:
            raise FatalError(f"{FATAL[4004]} (GET /gateway/bot answered 401)")
        r.raise_for_status()
        return r.json()["url"]

    def _identify(self) -> dict:
        return {"token": f"Bot {self.settings.token}", "intents": self.settings.intents,
                "properties": {"os": sys.platform, "browser": "nanoclaw", "device": "nanoclaw"}}

    def _dispatch(self, event: str, d: dict):
        if event == "READY":
            self.user_id = str(d.get("user", {}).get("id", ""))
            log.info("discord: connected as %s", d.get("user", {}).get("username"))
            return
        if event != "MESSAGE_CREATE":
            return
        author = d.get("author") or {}
        if author.get("bot") or str(author.get("id")) == self.user_id or d.get("id") in self._seen:
            return
        self._seen.append(d.get("id"))
        text, chat = d.get("content") or "", str(d["channel_id"])
        if d.get("guild_id"):
            if not any(str(m.get("id")) == self.user_id for m in d.get("mentions") or ()):
                return                  # in a server, only messages that mention the bot
            text = re.sub(rf"<@!?{self.user_id}>", "", text).strip()
        attachments = d.get("attachments") or ()
        if not text and not attachments:
            return
        sender = f"{author.get('id')}|{author.get('username', '')}"
        media = []
        if allowed(self.settings.allow_from, sender):   # strangers' files are not fetched
            self._start_typing(chat)
            text, media = self._attachments(text, attachments)
        self.receive(chat, sender, text, media, {"message_id": d.get("id"),
                                                 "guild_id": d.get("guild_id")})

    def _attachments(self, text: str, attachments) -> tuple[str, list]:
        media = []
        for a in attachments:
            name = a.get("filename") or "file"
            try:
                path = self._download(a["url"], name)
            except Exception as e:
                log.warning("discord: cannot download attachment %s: %s", name, e)
                text += f"\n[attachment {name} could not be downloaded]"
                continue
            media.append(str(path))
            if (a.get("content_type") or "").startswith("audio/") or name.lower().endswith(AUDIO):
                heard = self.transcribe(path)
                text = f"{text}\n{heard}".strip() if heard else text
        return text, media

    def _download(self, url: str, name: str) -> Path:
        import requests
        path = self.media_path(name)
        # a plain GET: attachment URLs are signed, and the bot token must not go to the CDN
        try:
            with requests.get(url, stream=True, timeout=60) as r, open(path, "wb") as f:
                r.raise_for_status()
                for chunk in r.iter_content(65536):
                    if f.tell() + len(chunk) > MAX_DOWNLOAD:
                        raise ValueError(f"larger than {MAX_DOWNLOAD // 2**20} MB")
                    f.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    # --- typing ---

    def _start_typing(self, chat: str):
        with self._lock:
            if chat in self._typing:
                self._typing[chat][1] += 1
                return
            stop = threading.Event()
            self._typing[chat] = [stop, 1]
        threading.Thread(target=self._type, args=(chat, stop), name="discord-typing",
                         daemon=True).start()

    def _type(self, chat: str, stop: threading.Event):
        end = time.monotonic() + TYPING_CAP
        while not stop.is_set() and time.monotonic() < end:
            try:
                self.api("POST", f"/channels/{chat}/typing", timeout=10)
            except Exception as e:
                log.debug("discord: typing: %s", e)
            stop.wait(TYPING_EVERY)
        with self._lock:
            if self._typing.get(chat, [None])[0] is stop:
                del self._typing[chat]

    def _replied(self, chat: str):
        with self._lock:
            entry = self._typing.get(chat)
            if entry:
                entry[1] -= 1
                if entry[1] <= 0:
                    entry[0].set()
                    del self._typing[chat]

    # --- sending ---

    def deliver(self, msg: dict):
        chat, meta = msg["chat_id"], msg.get("metadata") or {}
        parts = split_message(msg.get("text") or "", LIMIT)
        files = [Path(p) for p in msg.get("media") or ()]
        for i, item in enumerate(parts + files):
            if i < msg.get("_done", 0):
                continue                # sent before a retry was needed
            if isinstance(item, Path):
                if not item.is_file():
                    raise SendError(f"attachment {item} does not exist", permanent=True)
                with open(item, "rb") as f:
                    self._post(chat, data={"payload_json": "{}"},
                               files={"files[0]": (item.name, f)})
            else:
                body = {"content": item}
                if i == 0 and meta.get("message_id"):
                    body["message_reference"] = {"message_id": meta["message_id"],
                                                 "fail_if_not_exists": False}
                self._post(chat, json=body)
            msg["_done"] = i + 1
        if msg.get("reply_to"):
            self._replied(chat)

    def _post(self, chat: str, **kw):
        r = self.api("POST", f"/channels/{chat}/messages", **kw)
        if r.status_code < 300:
            return
        try:
            body = r.json()
        except ValueError:
            body = {}
        if r.status_code == 429:
            wait = float(body.get("retry_after") or r.headers.get("Retry-After") or 1)
            raise SendError(f"rate limited for {wait:.2f}s", retry_after=wait)
        why = f"Discord answered {r.status_code}: {body.get('message') or r.text[:200]}"
        raise SendError(why, permanent=r.status_code < 500)
