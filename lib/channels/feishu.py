"""Feishu / Lark over the long connection (the bot dials out: no public address needed).

`POST {domain}/callback/ws/endpoint` hands out a websocket URL and the ping interval. Frames are
protobuf (lib/channels/pbframe.py); events come in data frames, large ones in `sum` fragments.
Feishu resends an event not acked within 3 s, so each message event is first kept on disk
(state/feishu/pending/<event_id>.json), then acked by echoing its frame with `biz_rt` and
`{"code": 200}`; the reaction, downloads and transcription come after, in order on another
thread, and the record goes once the message is in the inbox. Records left by a crash are taken
up at the next start; inbox names and message ids make a repeat harmless. Replies: the IM API
with a tenant token. lark-oapi weighs ~100 MB and keeps its own asyncio loop; this is
websocket-client.
"""
import collections
import hashlib
import json
import logging
import mimetypes
import re
import threading
import time
from urllib.parse import parse_qs, urlsplit

from lib import maildir
from lib.channels import allowed, pbframe
from lib.channels.attachments import with_notes
from lib.channels.base import Channel, SendError, split_message, unsent

log = logging.getLogger(__name__)
# A post message may carry 30 KB of JSON. 4,000 characters stay under it even when every one is
# a 3-byte CJK character or an escaped quote, and are still a comfortable screenful to read.
LIMIT = 4000
PONG_WAIT = 30.0                # a ping unanswered this long (at most the interval): link is dead
FRAGMENT_TTL = 10.0             # seconds to wait for the rest of a fragmented event
MAX_DOWNLOAD = 30 * 1024 * 1024
RATE_LIMITED = {99991400, 230020}       # app-wide frequency limit; too many messages to a chat
BAD_TOKEN = {99991661, 99991663, 99991664, 99991665, 99991668, 99991677}
RETRY_CODES = {1, 1000040343}           # endpoint: system busy, internal error


class FeishuError(Exception):
    def __init__(self, what, code=None, status=200, retry_after=None):
        super().__init__(what)
        self.code, self.status, self.retry_after = code, status, retry_after
        self.transient = retry_after is not None or status >= 500 or code in BAD_TOKEN


class FeishuChannel(Channel):
    name = "feishu"

    def __init__(self, config, home):
        super().__init__(config, home)
        import requests         # now: enabled() names a missing package at start-up
        import websocket  # noqa: F401
        self.http, self.bot_open_id, self.ping_s = requests.Session(), "", 120.0
        self._token, self._token_until, self._token_lock = "", 0.0, threading.Lock()
        self._seen = collections.OrderedDict()          # message ids already handled
        self._parts = {}                                # fragmented event id -> [time, parts]

    def url(self, path: str) -> str:
        return self.settings.domain.rstrip("/") + path

    # --- the HTTP API ---

    def token(self) -> str:
        """The tenant access token, fetched again five minutes before it expires."""
        with self._token_lock:
            if time.monotonic() < self._token_until:
                return self._token
            s = self.settings
            r = self.http.post(self.url("/open-apis/auth/v3/tenant_access_token/internal"),
                               json={"app_id": s.app_id, "app_secret": s.app_secret}, timeout=30)
            body = _loads(r.content)
            if body.get("code") != 0 or not body.get("tenant_access_token"):
                raise FeishuError(f"tenant_access_token answered {r.status_code} {body.get('code')}"
                                  f" {body.get('msg', '')}; check channels.feishu.app_id and "
                                  "app_secret", body.get("code"), r.status_code)
            self._token = body["tenant_access_token"]
            self._token_until = time.monotonic() + max(60, int(body.get("expire", 7200)) - 300)
            return self._token

    def api(self, method: str, path: str, stream=False, **kw):
        """A call with the token; raises FeishuError with Feishu's code, and the wait it asks."""
        for attempt in (0, 1):
            headers = {"Authorization": f"Bearer {self.token()}"}
            r = self.http.request(method, self.url(path), headers=headers, timeout=60,
                                  stream=stream, **kw)
            if stream and r.status_code == 200:
                return r                            # a file (errors come as 4xx with JSON)
            body = _loads(r.content)
            code = body.get("code")
            if r.status_code == 200 and code == 0:
                return body
            if code in BAD_TOKEN and attempt == 0:
                with self._token_lock:
                    self._token_until = 0           # expired or revoked: fetch a new one
                continue
            wait = None
            if code in RATE_LIMITED or r.status_code == 429:
                wait = float(r.headers.get("x-ogw-ratelimit-reset") or 1)
            raise FeishuError(f"{method} {path.split('?')[0]} answered {r.status_code} {code} "
                              f"{body.get('msg') or r.text[:200]}", code, r.status_code, wait)

    # --- receiving ---

    def listen(self):
        self.keep_connected(self._session)

    def connection_lost(self, error, attempt):
        if not isinstance(error, FeishuError):         # the network, the server, a handshake
            return super().connection_lost(error, attempt)
        log.error("feishu: %s", error)                  # credentials or the app's settings:
        return 300.0                                    # no use trying often

    def _endpoint(self) -> str:
        r = self.http.post(self.url("/callback/ws/endpoint"), timeout=30, json={
            "AppID": self.settings.app_id, "AppSecret": self.settings.app_secret})
        body = _loads(r.content)
        if r.status_code != 200 or body.get("code") in RETRY_CODES:
            raise ConnectionError(f"endpoint answered {r.status_code} {body.get('msg', '')}")
        data = body.get("data") or {}
        if body.get("code") != 0 or not data.get("URL"):
            raise FeishuError(f"the long-connection endpoint refused the app ({body.get('code')} "
                              f"{body.get('msg', '')}); check channels.feishu.app_id and app_secret"
                              ", and that the app receives events by long connection")
        self._configure(data.get("ClientConfig"))
        return data["URL"]

    def _configure(self, conf):
        if isinstance(conf, dict) and conf.get("PingInterval", 0) > 0:
            self.ping_s = float(conf["PingInterval"])

    def _own_id(self):
        """The bot's open id, read once: it tells its @mentions from others' in groups."""
        if not self.bot_open_id:
            try:
                self.bot_open_id = self.api("GET", "/open-apis/bot/v3/info")["bot"]["open_id"]
            except Exception as e:          # then any @mention in a group counts as ours
                log.warning("feishu: cannot read the bot's own id: %s", e)

    def _session(self):
        import websocket
        url = self._endpoint()
        self._own_id()
        service = int((parse_qs(urlsplit(url).query).get("service_id") or ["0"])[0])
        ws = websocket.create_connection(url, timeout=30, enable_multithread=True)
        try:
            log.info("feishu: connected (ping every %.0fs)", self.ping_s)
            ping_at, waiting = time.monotonic(), None
            while not self.stopping.is_set():
                now = time.monotonic()
                if waiting is not None and now - waiting > min(PONG_WAIT, self.ping_s):
                    raise ConnectionError("no pong to the last ping")
                if now >= ping_at:
                    ws.send_binary(pbframe.encode(pbframe.Frame(
                        service=service, method=pbframe.CONTROL, headers=[("type", "ping")])))
                    waiting, ping_at = waiting or now, now + self.ping_s
                ws.settimeout(max(0.05, min(1.0, ping_at - now)))
                try:
                    opcode, data = ws.recv_data()
                except websocket.WebSocketTimeoutException:
                    continue
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = int.from_bytes(data[:2], "big")
                    raise ConnectionError(f"closed by the server ({code})")
                waiting, self.connected = None, True        # the server talks: reset the backoff
                if opcode == websocket.ABNF.OPCODE_BINARY:
                    try:
                        frame = pbframe.decode(data)
                    except ValueError as e:
                        log.warning("feishu: unreadable frame skipped: %s", e)
                        continue
                    self._frame(ws, frame)
        finally:
            ws.close(timeout=1)

    def _frame(self, ws, frame):
        kind = frame.header("type")
        if frame.method == pbframe.CONTROL:
            if kind == "pong" and frame.payload:
                self._configure(_loads(frame.payload))
            return
        if kind != "event":
            return                              # card callbacks: not subscribed
        total, payload = int(frame.header("sum") or 1), frame.payload
        if total > 1:
            now, key = time.monotonic(), frame.header("message_id")
            self._parts = {k: v for k, v in self._parts.items() if now - v[0] < FRAGMENT_TTL}
            parts = self._parts.setdefault(key, [now, [None] * total])[1]
            parts[min(int(frame.header("seq") or 0), total - 1)] = frame.payload
            if any(p is None for p in parts):
                return                          # the frame that completes it gets the ack
            payload = b"".join(self._parts.pop(key)[1])
        self._take(ws, frame, payload)

    def _take(self, ws, frame, payload: bytes):
        """Keep a message event on disk, then ack it: the ack never waits for a download."""
        t0, header = time.monotonic(), _loads(payload).get("header") or {}
        try:
            if header.get("event_type") == "im.message.receive_v1":
                self.keep(str(header.get("event_id") or ""), payload)
            frame.payload = b'{"code": 200}'
        except OSError as e:
            log.error("feishu: cannot keep an event (%s); Feishu will send it again", e)
            frame.payload = b'{"code": 500}'
        frame.headers.append(("biz_rt", str(int((time.monotonic() - t0) * 1000))))
        try:
            ws.send_binary(pbframe.encode(frame))
        except Exception as e:                  # the connection is gone: it comes again
            log.info("feishu: cannot ack an event: %s", e)

    def handle_kept(self, body: dict):
        if (body.get("header") or {}).get("event_type") != "im.message.receive_v1":
            return
        event = body.get("event") or {}
        msg, sender = event.get("message") or {}, event.get("sender") or {}
        mid, chat = msg.get("message_id") or "", msg.get("chat_id") or ""
        if not mid or mid in self._seen or sender.get("sender_type") == "app":
            return
        mentions = msg.get("mentions") or []
        if mentions:
            self._own_id()                      # a kept event may come before the connection
        ours = [m for m in mentions if not self.bot_open_id or
                (m.get("id") or {}).get("open_id") == self.bot_open_id]
        if msg.get("chat_type") == "group" and not ours:
            return                              # in groups, only messages that @mention the bot
        user = (sender.get("sender_id") or {}).get("open_id") or ""
        text, files = _content(msg.get("message_type"), _loads(msg.get("content")), mentions,
                               {m.get("key") for m in ours})
        if not text and not files:
            return
        meta = {"message_id": mid, "chat_type": msg.get("chat_type"),
                "is_group": msg.get("chat_type") != "p2p"}
        media = []
        if allowed(self.settings.allow_from, user):     # strangers' files are not fetched
            if self.settings.react_emoji:
                meta["reaction_id"] = self._react(mid)
            text, media = self._download(mid, text, files)
        ms = str(msg.get("create_time") or "")
        at = int(ms) / 1000 if ms.isdigit() else time.time()
        self.receive(chat, user, text, media, meta, key=mid, at=at)   # once, even after a crash
        self._seen[mid] = True
        if len(self._seen) > 2000:
            self._seen.popitem(last=False)

    def _react(self, mid: str):
        try:
            return self.api("POST", f"/open-apis/im/v1/messages/{mid}/reactions", json={
                "reaction_type": {"emoji_type": self.settings.react_emoji}})["data"]["reaction_id"]
        except Exception as e:          # a missing scope must not stop the reply
            log.info("feishu: cannot add a reaction: %s", e)
            return None

    def _download(self, mid: str, text: str, files) -> tuple[str, list]:
        media = []
        for kind, key, name in files:
            try:
                with self.api("GET", f"/open-apis/im/v1/messages/{mid}/resources/{key}",
                              params={"type": "image" if kind == "image" else "file"},
                              stream=True) as r:
                    ext = ".ogg" if kind == "audio" else mimetypes.guess_extension(
                        r.headers.get("Content-Type", "").split(";")[0]) or ""
                    path = self.save_media(r, name or key + ext, MAX_DOWNLOAD)
            except Exception as e:
                log.warning("feishu: cannot download %s %s: %s", kind, key, e)
                text += f"\n[{kind} {name or key} could not be downloaded]"
                continue
            media.append(str(path))
            if kind == "audio":
                heard = self.transcribe(path)
                text = f"{text}\n{heard}".strip() if heard else text
        return text.strip(), media

    # --- sending ---

    def deliver(self, msg: dict):
        meta, chat = msg.get("metadata") or {}, msg["chat_id"]
        parts = split_message(with_notes(msg, "nanoclaw sends no files over Feishu"), LIMIT)
        for i, part in unsent(msg, parts):
            body = {"msg_type": "post", "content": json.dumps(_rich(part), ensure_ascii=False),
                    "uuid": hashlib.md5(f"{msg.get('id')}:{i}".encode()).hexdigest()}
            try:                                # (uuid: Feishu drops a repeat within an hour)
                self._post(chat, meta.get("message_id") if i == 0 else None, body)
            except FeishuError as e:
                raise SendError(str(e), retry_after=e.retry_after, permanent=not e.transient) \
                    from None
        if msg.get("reply_to") and meta.get("reaction_id"):
            try:
                self.api("DELETE", f"/open-apis/im/v1/messages/{meta['message_id']}/reactions/"
                         f"{meta['reaction_id']}")
            except Exception as e:
                log.info("feishu: cannot remove the reaction: %s", e)

    def _post(self, chat: str, reply_to, body: dict):
        """The first part answers the user's message; the rest, and messages of our own, go to
        the chat, as does an answer to a message that has been withdrawn meanwhile."""
        if reply_to:
            try:
                return self.api("POST", f"/open-apis/im/v1/messages/{reply_to}/reply", json=body)
            except FeishuError as e:
                if e.transient:
                    raise
        kind = "open_id" if chat.startswith("ou_") else "chat_id"      # cron --to ou_… works too
        self.api("POST", f"/open-apis/im/v1/messages?receive_id_type={kind}",
                 json={**body, "receive_id": chat})


# --- message content ---

def _loads(raw) -> dict:
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _rich(md: str) -> dict:
    """A post message with the markdown in `md` elements: code blocks get rows of their own, as
    text after a code block in the same element has been reported to go missing."""
    pieces = re.split(r"(^[ \t]*```[^\n]*\n.*?^[ \t]*```[ \t]*$)", md, flags=re.S | re.M)
    rows = [[{"tag": "md", "text": p.strip("\n")}] for p in pieces if p.strip()]
    return {"zh_cn": {"title": "", "content": rows}}


def _content(kind, c: dict, mentions, ours: set) -> tuple[str, list]:
    """Plain text and [(kind, key, name)] files of a received message. Mentions of the bot go;
    other people's come out as @name."""
    names = {m.get("key"): "" if m.get("key") in ours else "@" + (m.get("name") or "")
             for m in mentions}
    if kind == "text":
        text = c.get("text") or ""
        for key, name in names.items():
            text = text.replace(key or "\0", name)
        return re.sub(r"[ \t]{2,}", " ", text).strip(), []
    if kind == "post":
        body = c if "content" in c else next((v for v in c.values() if isinstance(v, dict)), {})
        lines, files = [body["title"]] if body.get("title") else [], []
        for row in body.get("content") or []:
            line = ""
            for el in row:
                tag = el.get("tag")
                if tag in ("text", "md", "code_block"):
                    line += el.get("text", "")
                elif tag == "a":
                    line += f"{el.get('text', '')} ({el.get('href', '')})"
                elif tag == "at":               # the bot's own mention maps to ""
                    line += names.get(el.get("user_id"), "@" + (el.get("user_name") or ""))
                elif tag == "img" and el.get("image_key"):
                    files.append(("image", el["image_key"], ""))
                elif tag == "media" and el.get("file_key"):
                    files.append(("file", el["file_key"], ""))
            lines.append(line.strip())
        return "\n".join(lines).strip(), files
    if kind == "image":
        return "", [("image", c.get("image_key"), "")]
    if kind in ("file", "media", "audio"):
        return "", [(kind if kind == "audio" else "file", c.get("file_key"), c.get("file_name"))]
    log.info("feishu: %s messages are not handled", kind)
    return "", []
