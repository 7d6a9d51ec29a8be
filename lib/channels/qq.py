"""QQ (official bot API v2), private chats only: the Discord-style gateway in
lib/channels/wsgateway.py brings C2C_MESSAGE_CREATE events, each kept on disk as it comes
(state/qq/pending/) and its files fetched after; replies go over REST.

Every call carries an app access token (POST token_url with appId and clientSecret), cached and
fetched again a minute before it expires, or at once when QQ answers 401. A reply answers the
user's message: `msg_id` of that message and a `msg_seq` that must be new for that msg_id (QQ
drops a repeated one as a duplicate), so each part of a long reply gets the next number and a
retried part keeps its own. "Typing…" is QQ's input notice (msg_type 6). QQ takes five such
passive calls per message (notices, texts and files alike); what comes after them is sent
unprompted, as when the reply window (60 minutes) is over.

Files go after the text: each is uploaded with its bytes in base64 (`file_data`; QQ also takes
a public `url`, which a file on the Pi does not have) to POST /v2/users/{openid}/files, and the
`file_info` QQ answers is sent as a rich-media message (msg_type 7). QQ documents png/jpg
images, mp4 videos and silk voice; other files go as file_type 4, which QQ may refuse: then a
note says so and the rest of the message goes on.
"""
import base64
import collections
import logging
import sys
import threading
import time
from pathlib import Path

from lib.channels.attachments import Attachment, note, with_files
from lib.channels.base import Channel, SendError, epoch, json_of, split_message
from lib.channels.wsgateway import FatalError, GatewaySession
from lib.channels import allowed

log = logging.getLogger(__name__)
# QQ does not document the length limit of a text message precisely (figures from 2,000 to
# several thousand characters circulate); 2,000 is safely below all of them.
LIMIT = 2000
INTENTS = 1 << 25                       # PUBLIC_MESSAGES: C2C (and group @) messages
TYPING_SECONDS = 60
MAX_DOWNLOAD = 20 * 1024 * 1024
AUDIO = (".silk", ".amr", ".wav", ".mp3", ".ogg", ".m4a")
FILE_TYPES = {".png": 1, ".jpg": 1, ".jpeg": 1, ".mp4": 2, ".silk": 3}   # as QQ documents them;
                                                                        # anything else: 4, a file
DUPLICATE = 40054005                    # this msg_seq was already used for this msg_id
RATE_LIMITED = {22009}                  # "msg limit exceed": with a 429, wait; else see below
PASSIVE = 5                             # calls with one msg_id QQ takes (notices, texts, files)
RATE_WAIT = 2.0                         # when a rate-limit answer names no time
REPLY_WINDOW_GONE = {40034005, 40034128, 304103, 304027, 40034024, 40034025, 40034026, 40034027}
NEW_SESSION = {4006, 4007}              # session invalid, bad seq: IDENTIFY again (4009 resumes)
FATAL = {
    4010: "invalid shard; nanoclaw uses a single connection",
    4011: "this bot needs more than one gateway connection (sharding)",
    4012: "invalid gateway API version; check channels.qq.api_base",
    4013: "invalid intents",
    4014: "the bot may not receive private messages: enable C2C messages for the bot on "
          "q.qq.com",
    4914: "QQ reports the bot offline (unpublished or taken down; only its sandbox may connect): "
          "check the bot's status on q.qq.com",
    4915: "QQ has banned this bot",
}


class BadCredentials(Exception):
    pass


class QQChannel(Channel):
    name = "qq"

    def __init__(self, config, home):
        super().__init__(config, home)
        import requests  # noqa: F401  (now: enabled() names a missing package at start-up)
        import websocket  # noqa: F401
        self.http = None
        self._token, self._token_until = "", 0.0
        self._token_lock, self._seq_lock = threading.Lock(), threading.Lock()
        self._seqs = collections.OrderedDict()          # msg_id -> last msg_seq used
        self._replies = collections.Counter()           # msg_id -> passive calls QQ took
        self._seen = collections.deque(maxlen=512)      # message ids, in case one comes twice
        self._unconfirmed = False       # an IDENTIFY/RESUME went out without READY/RESUMED since

    def start(self):
        import requests
        self.http = requests.Session()
        self.http.headers["User-Agent"] = "nanoclaw (QQ bot)"
        super().start()

    # --- token and REST ---

    def token(self, force: bool = False) -> str:
        with self._token_lock:
            if force or not self._token or time.monotonic() >= self._token_until:
                s = self.settings
                r = self.http.post(s.token_url, timeout=30,
                                   json={"appId": str(s.app_id), "clientSecret": s.secret})
                body = json_of(r)
                if not body.get("access_token"):
                    if r.status_code >= 500 or r.status_code == 429:
                        r.raise_for_status()
                    raise BadCredentials(
                        f"QQ refused the app credentials ({body.get('code')}: "
                        f"{body.get('message') or r.status_code}); check channels.qq.app_id and "
                        "channels.qq.secret (AppID and AppSecret on q.qq.com)")
                life = float(body.get("expires_in") or 7200)    # a string in QQ's answer
                self._token = body["access_token"]
                self._token_until = time.monotonic() + life - min(60.0, life / 2)
            return self._token

    def api(self, method: str, path: str, timeout: float = 30, **kw):
        """A REST call; a 401 fetches a new token and tries once more."""
        url = self.settings.api_base.rstrip("/") + path
        for force in (False, True):
            headers = {"Authorization": f"QQBot {self.token(force)}",
                       "X-Union-Appid": str(self.settings.app_id)}
            r = self.http.request(method, url, headers=headers, timeout=timeout, **kw)
            if r.status_code != 401 or force:
                return r
            log.info("qq: the access token was refused; fetching a new one")

    # --- receiving ---

    def listen(self):
        GatewaySession(self.name, url=self._gateway_url, identify=self._identify,
                       dispatch=self._dispatch, stopping=self.stopping, wait=self.reconnect_wait,
                       fatal=FATAL, new_session=NEW_SESSION).run()

    def _gateway_url(self) -> str:
        try:
            r = self.api("GET", "/gateway")
        except BadCredentials as e:
            raise FatalError(str(e)) from None
        r.raise_for_status()
        return r.json()["url"]

    def _identify(self) -> dict:
        # also asked for RESUME's token; a second try without READY in between gets a new token
        force, self._unconfirmed = self._unconfirmed, True
        try:
            token = self.token(force)
        except BadCredentials as e:
            raise FatalError(str(e)) from None
        return {"token": f"QQBot {token}", "intents": INTENTS, "shard": [0, 1],
                "properties": {"$os": sys.platform, "$browser": "nanoclaw", "$device": "nanoclaw"}}

    def _dispatch(self, event: str, d: dict):
        if event in ("READY", "RESUMED"):
            self._unconfirmed = False
            if event == "READY":
                log.info("qq: connected as %s", (d.get("user") or {}).get("username"))
            return
        if event != "C2C_MESSAGE_CREATE" or d.get("id") in self._seen:
            return
        openid = (d.get("author") or {}).get("user_openid")
        if openid and ((d.get("content") or "").strip() or d.get("attachments")):
            self.keep(str(d.get("id") or ""), d)       # OSError: resumed, sent again
        self._seen.append(d.get("id"))

    def handle_kept(self, d: dict):
        openid = (d.get("author") or {}).get("user_openid")
        text, attachments = (d.get("content") or "").strip(), d.get("attachments") or ()
        if not openid or not text and not attachments:
            return
        media = []
        if allowed(self.settings.allow_from, openid):     # strangers' files are not fetched
            self._typing(openid, d.get("id"))
            text, media = self._attachments(text, attachments)
        self.receive(openid, openid, text, media, {"message_id": d.get("id")}, key=d.get("id"),
                     at=epoch(d.get("timestamp")))

    def _typing(self, openid: str, msg_id: str):
        body = {"msg_type": 6, "input_notify": {"input_type": 1, "input_second": TYPING_SECONDS},
                "msg_id": msg_id, "msg_seq": self._next_seq(msg_id)}
        try:
            if self.api("POST", f"/v2/users/{openid}/messages", json=body, timeout=10).ok:
                self._replies[msg_id] += 1      # it counts against the message's five
        except Exception as e:
            log.debug("qq: input notice: %s", e)

    def _attachments(self, text: str, attachments) -> tuple[str, list]:
        media = []
        for a in attachments:
            voice = a.get("content_type") == "voice" or \
                (a.get("filename") or "").lower().endswith(AUDIO)
            wav = voice and a.get("voice_wav_url")      # QQ's WAV copy of a SILK voice note
            url, name = wav or a.get("url") or "", a.get("filename") or "file"
            name = Path(name).stem + ".wav" if wav else name
            try:
                path = self._download(url, name)
            except Exception as e:
                log.warning("qq: cannot download attachment %s: %s", name, e)
                text += f"\n[attachment {name} could not be downloaded]"
                continue
            media.append(str(path))
            if voice:
                heard = self.transcribe(path)
                if not heard and a.get("asr_refer_text"):
                    heard = f"[voice note, transcribed by QQ] {a['asr_refer_text']}"
                text = f"{text}\n{heard}".strip() if heard else text
        return text, media

    def _download(self, url: str, name: str) -> Path:
        url = "https:" + url if url.startswith("//") else url
        url = url if "://" in url else "https://" + url          # QQ sometimes omits the scheme
        return self.download(url, name, MAX_DOWNLOAD)           # no token to the file server

    # --- sending ---

    def _next_seq(self, msg_id: str) -> int:
        with self._seq_lock:
            seq = self._seqs.pop(msg_id, 0) + 1
            self._seqs[msg_id] = seq
            while len(self._seqs) > 1000:
                self._seqs.popitem(last=False)
            while len(self._replies) > 1000:
                del self._replies[next(iter(self._replies))]
            return seq

    def deliver(self, msg: dict):
        for i, item in with_files(msg, split_message(msg.get("text") or "", LIMIT)):
            if isinstance(item, Attachment):
                item = self._upload(msg["chat_id"], item)      # {"file_info"}, or a Note
            body = {"msg_type": 7, "media": item} if isinstance(item, dict) else \
                {"content": item, "msg_type": 0}
            self._send_part(msg, str(i), body)

    def _upload(self, openid: str, file: Attachment):
        """QQ's rich-media upload of the file's bytes (base64 `file_data`, so no public URL is
        needed): {"file_info"} for a message of msg_type 7, or a Note when QQ refuses the file."""
        kind = FILE_TYPES.get(Path(file.name).suffix.lower(), 4)
        body = {"file_type": kind, "file_data": base64.b64encode(file.data).decode(),
                "srv_send_msg": False}
        try:
            r = self.api("POST", f"/v2/users/{openid}/files", json=body, timeout=120)
        except BadCredentials as e:
            raise SendError(str(e), permanent=True) from None
        answer = json_of(r)
        if r.status_code < 300 and answer.get("file_info"):
            return {"file_info": answer["file_info"]}
        error = _refusal(r, answer)
        if not error.permanent:
            raise error
        return note(file.name, str(error))

    def _send_part(self, msg: dict, part: str, body: dict):
        msg_id = None if msg.get("_unprompted") else (msg.get("metadata") or {}).get("message_id")
        seqs = msg.setdefault("_seqs", {})      # part -> msg_seq, kept when a part is retried
        retry = part in seqs
        for _ in range(5):
            body = {k: v for k, v in body.items() if k not in ("msg_id", "msg_seq")}
            if msg_id and self._replies[msg_id] >= PASSIVE:
                log.info("qq: message %s has had its %d replies; the rest goes unprompted",
                         msg_id, PASSIVE)
                msg["_unprompted"], msg_id = True, None
            if msg_id:
                seqs[part] = seqs.get(part) or self._next_seq(msg_id)
                body.update(msg_id=msg_id, msg_seq=seqs[part])
            try:
                r = self.api("POST", f"/v2/users/{msg['chat_id']}/messages", json=body)
            except BadCredentials as e:
                raise SendError(str(e), permanent=True) from None
            if r.status_code < 300:
                if msg_id:
                    self._replies[msg_id] += 1
                return
            err = json_of(r)
            code = err.get("code")
            if code in RATE_LIMITED and msg_id and r.status_code != 429:   # the five are used
                self._replies[msg_id] = PASSIVE     # (an earlier run): the loop goes unprompted
                continue
            if code == DUPLICATE and msg_id:
                if retry:
                    return          # the earlier try got through; only its answer was lost
                del seqs[part]      # a number taken before a restart: use the next one
            elif code in REPLY_WINDOW_GONE and msg_id:
                log.info("qq: message %s can no longer be answered (%s); sending unprompted",
                         msg_id, err.get("message"))
                msg["_unprompted"], msg_id = True, None
            else:
                raise _refusal(r, err)
        raise SendError("QQ kept refusing the message sequence numbers")


def _refusal(r, err: dict) -> SendError:
    """What QQ's answer `r` (JSON body `err`) means: wait and try again (a rate limit, a server
    error), or give up (permanent: QQ will not take it)."""
    code = err.get("code")
    if r.status_code == 429 or code in RATE_LIMITED:
        wait = float(r.headers.get("Retry-After") or RATE_WAIT)
        return SendError(f"rate limited ({code}) for {wait:.1f}s", retry_after=wait)
    return SendError(f"QQ answered {r.status_code}: {code} {err.get('message') or r.text[:200]}",
                     permanent=400 <= r.status_code < 500 and r.status_code != 401)
