"""DingTalk over Stream mode: the bot opens one websocket to DingTalk, so no public URL is needed.

Receiving: `POST /v1.0/gateway/connections/open` (client id and secret) hands out an endpoint and
a one-time ticket. Frames are JSON `{type: SYSTEM|EVENT|CALLBACK, headers, data}` and every one is
acked with its `messageId`; DingTalk sends a frame again (after a reconnect) until it is acked, so
a bot message is acked only once it is kept on disk (state/dingtalk/pending/); its files are
fetched after, on another thread, so a slow download holds up no ping. Messages are deduplicated
on `msgId`.
SYSTEM `ping` is answered with its own data; SYSTEM `disconnect` means: open a new connection now.

Sending: through the message's `sessionWebhook` while it is valid (about 90 minutes), else (and
for messages nobody asked for) with the app's access token: `oToMessages/batchSend` to a person's
staff id, `groupMessages/send` to a group's conversation id (chat ids of groups start with "cid").

The dingtalk-stream SDK is not used: it reads its endpoint at import time, probes the network for
a local IP and runs its own asyncio loop; websocket-client and requests do the same in one thread.
DingTalk bots have no "typing…" sign, so there is no working-on-it signal here.
"""
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from urllib.parse import quote_plus

from lib.channels.attachments import with_notes
from lib.channels.base import Channel, SendError, json_of, split_message, unsent
from lib.channels import allowed

log = logging.getLogger(__name__)
BOT_TOPIC = "/v1.0/im/bot/messages/get"
# DingTalk takes about 20 KB per robot message; 4,000 characters stay under that even when all of
# them are CJK (3 bytes each in UTF-8), and a part of that size still reads well on a phone.
LIMIT = 4000
WEBHOOK_MARGIN_S = 30           # a session webhook this close to its expiry is not used any more
MAX_FILE = 20 * 1024 * 1024
# Throttling answers: HTTP 429, the gateway's QpsLimit codes, and the old API's errcodes (90002
# platform-wide, 90018/90019 per app, 410100 robot sending too fast, 130101 over 20 a minute).
THROTTLED = re.compile(r"Throttl|QpsLimit|RateLimit|FlowControl|^(90002|90018|90019|410100|130101)$")
HINT = "; check channels.dingtalk.client_id and client_secret (AppKey and AppSecret)"


class DingTalkChannel(Channel):
    name = "dingtalk"

    def __init__(self, config, home):
        super().__init__(config, home)
        import requests  # noqa: F401  (now: enabled() names a missing package at start-up)
        import websocket  # noqa: F401
        self.base = self.settings.api_base.rstrip("/")
        self._seen = OrderedDict()      # msgIds already in the inbox
        self._token, self._token_until = "", 0.0
        self._lock = threading.Lock()

    # --- receiving ---

    def listen(self):
        self.keep_connected(self._session)

    def _session(self) -> bool:
        """One connection, read until it ends. True when DingTalk sent `disconnect`."""
        import requests
        s = self.settings
        r = requests.post(f"{self.base}/v1.0/gateway/connections/open", timeout=30, json={
            "clientId": s.client_id, "clientSecret": s.client_secret, "ua": "nanoclaw/1.0",
            "subscriptions": [{"type": "CALLBACK", "topic": BOT_TOPIC}]})
        if r.status_code != 200:
            raise ConnectionError(_describe(r) + (HINT if r.status_code in (400, 401, 403) else ""))
        body = r.json()
        sep = "&" if "?" in body["endpoint"] else "?"
        url = f"{body['endpoint']}{sep}ticket={quote_plus(body['ticket'])}"
        ws = self.connect(url)
        self.connected = True
        log.info("dingtalk: connected")
        for frame in self.read_json(ws):
            if self._frame(ws, frame):
                log.info("dingtalk: asked to reconnect")
                return True
        return False

    def _frame(self, ws, frame: dict) -> bool:
        """Handle and ack one frame. True for SYSTEM disconnect."""
        kind, headers = frame.get("type"), frame.get("headers") or {}
        topic, data, code = headers.get("topic"), frame.get("data") or "", 200
        if kind == "EVENT":
            data = json.dumps({"status": "SUCCESS", "message": "success"})
        elif kind == "CALLBACK":
            try:
                if topic == BOT_TOPIC:
                    d = json.loads(data)
                    self.keep(str(d.get("msgId") or headers.get("messageId") or ""), d)
            except OSError as e:        # not acked as done: DingTalk will send it again
                log.error("dingtalk: cannot keep a message (%s)", e)
                code = 500
            except (ValueError, AttributeError) as e:      # sent again, it would fail again
                log.error("dingtalk: a message that is not a JSON object was dropped (%s)", e)
            data = json.dumps({"response": None})
        ws.send(json.dumps({"code": code, "headers": {"messageId": headers.get("messageId"),
                            "contentType": "application/json"},
                            "message": "OK" if code == 200 else "error", "data": data}))
        return kind == "SYSTEM" and topic == "disconnect"

    def handle_kept(self, d: dict):
        msg_id = d.get("msgId") or ""
        if msg_id and msg_id in self._seen:
            return                              # sent again: its ack was lost
        staff = str(d.get("senderStaffId") or d.get("senderId") or "")
        group = str(d.get("conversationType")) == "2"     # DingTalk only passes on @mentions
        chat = str(d.get("conversationId") or "") if group else staff
        meta = {"msg_id": msg_id, "conversation_type": "2" if group else "1", "is_group": group,
                "conversation_id": d.get("conversationId"), "staff_id": staff,
                "sender_nick": d.get("senderNick"), "session_webhook": d.get("sessionWebhook"),
                "session_webhook_expires": d.get("sessionWebhookExpiredTime")}
        ok = allowed(self.settings.allow_from, staff)     # strangers' files are not fetched
        text, media = self._content(d, ok)
        if staff and chat and (text or media or not ok):    # a stranger is told their id
            at = d.get("createAt") if isinstance(d.get("createAt"), (int, float)) else None
            self.receive(chat, staff, text, media, meta, key=msg_id or None,    # the inbox name:
                         at=at and at / 1000)           # sent again after a crash, it is dropped
        if msg_id:
            self._seen[msg_id] = True
        if len(self._seen) > 2000:
            self._seen.popitem(last=False)

    def _content(self, d: dict, fetch: bool) -> tuple[str, list]:
        """The text and the downloaded files of a message (files only for allowed senders)."""
        kind, content = d.get("msgtype"), d.get("content") or {}
        if kind == "text":
            return ((d.get("text") or {}).get("content") or "").strip(), []
        texts, files = [], []               # files: (download code, name)
        if kind == "richText":
            for i, part in enumerate(content.get("richText") or ()):
                if part.get("text"):
                    texts.append(part["text"])
                code = part.get("downloadCode") or part.get("pictureDownloadCode")
                if code:
                    files.append((code, f"picture{i}.jpg"))
        elif kind in ("picture", "file", "audio", "video"):
            ext = {"picture": ".jpg", "audio": ".amr", "video": ".mp4"}.get(kind, "")
            files.append((content.get("downloadCode"), content.get("fileName") or kind + ext))
        else:
            texts.append(f"[a {kind} message, which nanoclaw cannot read]")
        media = []
        for code, name in files if fetch else ():
            try:
                media.append(str(self._download(code, name)))
            except Exception as e:
                log.warning("dingtalk: cannot download %s: %s", name, e)
                texts.append(f"[file {name} could not be downloaded]")
        if kind == "audio" and fetch:       # DingTalk's own transcript, else Groq's
            heard = content.get("recognition")
            heard = f"[voice note, transcribed] {heard}" if heard else \
                media and self.transcribe(media[0])
            texts.append(heard or "")
        return "\n".join(t for t in texts if t).strip(), media

    def _download(self, code: str, name: str):
        if not code:
            raise ValueError("the message carries no download code")
        url = self._api("/v1.0/robot/messageFiles/download",
                        {"downloadCode": code, "robotCode": self.settings.client_id})["downloadUrl"]
        return self.download(url, name, MAX_FILE)

    # --- sending ---

    def deliver(self, msg: dict):
        meta, chat = msg.get("metadata") or {}, str(msg["chat_id"])
        parts = split_message(with_notes(msg, "nanoclaw sends no files over DingTalk"), LIMIT)
        for _, part in unsent(msg, parts):
            self._send(chat, meta, part)

    def _send(self, chat: str, meta: dict, text: str):
        import requests
        title = re.sub(r"[#*_`>\[\]]", "", text.strip().split("\n", 1)[0]).strip()[:30] or "nanoclaw"
        hook, until = meta.get("session_webhook"), meta.get("session_webhook_expires") or 0
        if hook and float(until) / 1000 > time.time() + WEBHOOK_MARGIN_S:
            r = requests.post(hook, json={"msgtype": "markdown",
                                          "markdown": {"title": title, "text": text}}, timeout=30)
            body = json_of(r)
            code = str(body.get("errcode", body.get("code", "")))
            if r.status_code == 200 and code in ("0", ""):
                return
            if r.status_code == 429 or THROTTLED.search(code):
                raise SendError(_describe(r), retry_after=_retry_after(r, code))
            log.info("dingtalk: session webhook refused (%s); sending through the API",
                     _describe(r))
        param = json.dumps({"title": title, "text": text}, ensure_ascii=False)
        body = {"robotCode": self.settings.client_id, "msgKey": "sampleMarkdown", "msgParam": param}
        if meta.get("conversation_type") == "2" or chat.startswith("cid"):
            self._api("/v1.0/robot/groupMessages/send",
                      dict(body, openConversationId=meta.get("conversation_id") or chat))
            return
        staff = meta.get("staff_id") or chat
        answer = self._api("/v1.0/robot/oToMessages/batchSend", dict(body, userIds=[staff]))
        if staff in (answer.get("flowControlledStaffIdList") or ()):
            raise SendError(f"DingTalk is holding back messages to {staff}", retry_after=2.0)
        if staff in (answer.get("invalidStaffIdList") or ()):
            raise SendError(f"{staff} is not a staff id this app can reach", permanent=True)

    def _api(self, path: str, body: dict) -> dict:
        """POST to the API with the app's access token (fetched again once when refused)."""
        import requests
        for attempt in (0, 1):
            r = requests.post(self.base + path, json=body, timeout=30,
                              headers={"x-acs-dingtalk-access-token": self._access_token()})
            if r.status_code == 401 and attempt == 0:
                with self._lock:
                    self._token_until = 0.0
                continue
            _check(r)
            return json_of(r)

    def _access_token(self) -> str:
        import requests
        with self._lock:
            if time.monotonic() < self._token_until:
                return self._token
            s = self.settings
            r = requests.post(self.base + "/v1.0/oauth2/accessToken", timeout=30,
                              json={"appKey": s.client_id, "appSecret": s.client_secret})
            _check(r, HINT)
            body = r.json()
            life = float(body.get("expireIn") or 7200)
            self._token = body["accessToken"]
            self._token_until = time.monotonic() + life - min(300.0, life / 2)   # renew early
            return self._token


def _describe(r) -> str:
    body = json_of(r)
    code = body.get("code") or body.get("errcode") or ""
    why = body.get("message") or body.get("errmsg") or r.text[:200]
    return f"{r.request.path_url.split('?')[0]} answered {r.status_code} {code}: {why}".strip()


def _retry_after(r, code: str) -> float:
    try:
        return float(r.headers.get("Retry-After"))
    except (TypeError, ValueError):
        return 30.0 if code == "130101" else 1.0       # a per-minute limit, else per second


def _check(r, hint: str = ""):
    if r.status_code < 300:
        return
    code = str(json_of(r).get("code") or "")
    if r.status_code == 429 or THROTTLED.search(code):
        raise SendError(_describe(r), retry_after=_retry_after(r, code))
    raise SendError(_describe(r) + hint, permanent=400 <= r.status_code < 500)
