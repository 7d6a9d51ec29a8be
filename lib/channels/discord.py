"""Discord: gateway v10 for incoming messages (lib/channels/wsgateway.py), REST for replies.

Direct messages are always read; in a server channel only messages that mention the bot. A
message is kept on disk as it comes (state/discord/pending/) and its files fetched after, so one
in hand when nanoclaw stops or is killed is answered after the restart. Each reply answers the
message it is for (message_reference) and is split at 2,000 characters; the "typing…" sign is
renewed every 8 s until the reply is out.
"""
import collections
import json
import logging
import re
import sys

from lib.channels.attachments import Attachment, note, with_files
from lib.channels.base import Channel, SendError, epoch, json_of, split_message
from lib.channels.typing_sign import Typing

log = logging.getLogger(__name__)
LIMIT = 2000
TYPING_EVERY = 8.0
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
        import requests  # noqa: F401  (now: enabled() names a missing package at start-up)
        import websocket  # noqa: F401
        self.user_id = ""
        self._seen = collections.deque(maxlen=512)      # message ids, in case one comes twice
        self.typing = Typing(self.name, lambda chat: self.api(
            "POST", f"/channels/{chat}/typing", timeout=10), TYPING_EVERY)
        self.http = None

    def start(self):
        import requests
        self.http = requests.Session()
        self.http.headers.update({"Authorization": f"Bot {self.settings.token}",
                                  "User-Agent": "DiscordBot (nanoclaw, 1.0)"})
        super().start()

    def stop(self, timeout: float = 2.0):
        self.typing.stop()
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
        mentioned = any(str(m.get("id")) == self.user_id for m in d.get("mentions") or ())
        if d.get("guild_id") and not mentioned:
            return                      # in a server, only messages that mention the bot
        if d.get("content") or d.get("attachments"):
            self.keep(str(d.get("id") or ""), {"d": d, "me": self.user_id})    # OSError: resent
        self._seen.append(d.get("id"))

    def handle_kept(self, kept: dict):
        d, author = kept["d"], kept["d"].get("author") or {}
        text, chat = d.get("content") or "", str(d["channel_id"])
        if d.get("guild_id"):
            text = re.sub(rf"<@!?{kept['me']}>", "", text).strip()
        attachments = d.get("attachments") or ()
        if not text and not attachments:
            return
        name = str(author.get("username") or "")      # all digits: it could pass for an id
        meta = {"message_id": d.get("id"), "guild_id": d.get("guild_id"),
                "is_group": bool(d.get("guild_id")),
                **({"sender_aliases": [name]} if name and not name.isdigit() else {})}
        media = []
        if self.admits(author.get("id"), meta):     # strangers' files are not fetched
            self.typing.start(chat)
            text, media = self._attachments(text, attachments)
        self.receive(chat, author.get("id"), text, media, meta, key=d.get("id"), at=_time(d))

    def _attachments(self, text: str, attachments) -> tuple[str, list]:
        media = []
        for a in attachments:
            name = a.get("filename") or "file"
            try:
                path = self.download(a["url"], name, MAX_DOWNLOAD)     # no token to the CDN
            except Exception as e:
                log.warning("discord: cannot download attachment %s: %s", name, e)
                text += f"\n[attachment {name} could not be downloaded]"
                continue
            media.append(str(path))
            if (a.get("content_type") or "").startswith("audio/") or name.lower().endswith(AUDIO):
                heard = self.transcribe(path)
                text = f"{text}\n{heard}".strip() if heard else text
        return text, media

    # --- sending ---

    def deliver(self, msg: dict):
        chat, meta = msg["chat_id"], msg.get("metadata") or {}
        for i, item in with_files(msg, split_message(msg.get("text") or "", LIMIT)):
            body = {"message_reference": {"message_id": meta["message_id"], "fail_if_not_exists":
                                          False}} if i == 0 and meta.get("message_id") else {}
            if not isinstance(item, Attachment):
                self._post(chat, json=dict(body, content=item))
                continue
            try:
                self._post(chat, data={"payload_json": json.dumps(body)},
                           files={"files[0]": (item.name, item.data)})
            except SendError as e:          # too large for Discord, no right to attach files…
                if not e.permanent:
                    raise
                self._post(chat, json=dict(body, content=note(item.name, str(e))))
        if msg.get("reply_to"):
            self.typing.done(chat)

    def _post(self, chat: str, **kw):
        r = self.api("POST", f"/channels/{chat}/messages", **kw)
        if r.status_code < 300:
            return
        body = json_of(r)
        if r.status_code == 429:
            wait = float(body.get("retry_after") or r.headers.get("Retry-After") or 1)
            raise SendError(f"rate limited for {wait:.2f}s", retry_after=wait)
        why = f"Discord answered {r.status_code}: {body.get('message') or r.text[:200]}"
        raise SendError(why, permanent=r.status_code < 500)


def _time(d: dict) -> float | None:
    """When a message was written: its timestamp, else the time in its id (a snowflake)."""
    if (at := epoch(d.get("timestamp"))) is None and str(d.get("id")).isdigit():
        at = (int(d["id"]) >> 22) / 1000 + 1420070400
    return at
