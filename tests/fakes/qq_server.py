"""A fake QQ bot platform on 127.0.0.1: the token endpoint, the REST routes a private-chat bot
uses, and the gateway websocket.

    with FakeQQ(app_id="1020", secret="s3cret") as qq:
        # channels.qq: {app_id: "1020", secret: s3cret, api_base: qq.api_base,
        #               token_url: qq.token_url}
        msg_id = qq.say("hello", openid="OPENID_ALICE")     # C2C_MESSAGE_CREATE for the bot
        qq.wait_for(lambda: qq.texts("OPENID_ALICE"))

Token: `POST /app/getAppAccessToken {appId, clientSecret}` → `{access_token, expires_in}` with
expires_in a string. As on QQ, the same token comes back until its last 60 s; then a new one is
made and the old one stays valid until it runs out. Wrong credentials get `{code, message}`.

REST (`Authorization: QQBot <token>` and `X-Union-Appid`, else 401 `{"code": 11244}`):
`GET /gateway` → `{"url"}`; `POST /v2/users/{openid}/messages`, recorded in `sent` (every
attempt, with its status and the token used). A reply's `msg_id` + `msg_seq` (1 when left out)
may be used once: again is a 400 with code 40054005, as QQ deduplicates. msg_type 6 (the input
notice) also lands in `typing`. `rate_limit(*seconds)` answers the next sends with 429
`{"code": 22009}` and a Retry-After header; `expire_tokens()` revokes every token made so far;
`expire_reply(msg_id)` makes passive replies to that message fail with 40034128. Five passive
calls (with msg_id: input notices, texts, files) are taken per message; a sixth is a 400 with
code 22009 "msg limit exceed"; `use_replies(msg_id, n)` spends n of them, as an earlier run.
Attachments are served at `/files/...` without a token.

Rich media: `POST /v2/users/{openid}/files {file_type, url | file_data, srv_send_msg}` takes a
file (file_data: base64 of its bytes; exactly one of url and file_data; file_type 1 image, 2
video, 3 voice, 4 file) and answers `{file_uuid, file_info, ttl}`, recorded in `uploads`; a
message of msg_type 7 with `media: {file_info}` delivers it (an unknown file_info, or one
uploaded for another user, is a 400). What the fake does not do: fetch a url, look inside the
bytes, or limit their size; `refuse_file_types` makes it answer 400 for those file types, with
an error code of the fake's own (850029), as QQ has been said to for type 4.

Gateway at `/websocket`: HELLO, IDENTIFY (its token must be `QQBot <valid token>`, else close
4004), READY with a session id, heartbeats ACKed while `ack` is true, RESUME replaying what the
session missed (then RESUMED; op 9 false for an unknown session). `drop()`, `close(code)`,
`reconnect()` (op 7) and `invalidate(resumable)` (op 9) disturb the connection. Events made while
nobody is connected wait for the next RESUME (or READY, if there is no session yet).
"""
import base64
import json
import time
import uuid

from tests.fakes.gateway_ws import GatewayServer

BOT_ID, BOT_NAME = "11111111111111111111", "nanobot"
TOKEN_PATH = "/app/getAppAccessToken"


class FakeQQ(GatewayServer):
    gateway_path, close_code, auth_failed = "/websocket", 4009, "invalid token"
    reconnect_frame, resumed_data = {"op": 7}, ""

    def __init__(self, app_id="1020", secret="s3cret", heartbeat_ms=500, expires_in=7200):
        super().__init__(heartbeat_ms)
        self.app_id, self.secret, self.expires_in = app_id, secret, expires_in
        self.tokens = []
        self._used, self._stale, self._replies = set(), set(), {}   # _replies: msg_id -> passive calls
        self.uploads, self.refuse_file_types = {}, set()    # uploads: file_info -> upload

    @property
    def api_base(self):
        return self.base

    @property
    def token_url(self):
        return self.api_base + TOKEN_PATH

    # --- what the test does ---

    def say(self, content="", openid="OPENID_ALICE", attachments=()) -> str:
        """A user writes to the bot in private: C2C_MESSAGE_CREATE. Returns the message id."""
        msg_id = f"ROBOT1.0_{uuid.uuid4().hex[:12]}{next(self._ids)}"
        self.event("C2C_MESSAGE_CREATE", {
            "id": msg_id, "content": content, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+08:00"),
            "author": {"id": openid, "user_openid": openid, "union_openid": "U_" + openid},
            "attachments": list(attachments)})
        return msg_id

    def attachment(self, filename, data: bytes, content_type="file", wav: bytes = None,
                   asr: str = None) -> dict:
        """An attachment as QQ describes it; a voice note (content_type "voice") may come with a
        WAV copy (voice_wav_url) and QQ's own transcript (asr_refer_text)."""
        path = f"/files/{next(self._ids)}/{filename}"
        self.files[path] = data
        a = {"content_type": content_type, "filename": filename, "size": len(data),
             "url": self.api_base + path + "?appid=1&fileid=x"}
        if wav is not None:
            self.files[path + ".wav"] = wav
            a["voice_wav_url"] = self.api_base + path + ".wav"
        if asr is not None:
            a["asr_refer_text"] = asr
        return a

    def expire_tokens(self):
        with self._lock:
            for t in self.tokens:
                t["revoked"] = True

    def expire_reply(self, msg_id):
        self._stale.add(msg_id)

    def use_replies(self, msg_id, n):
        self._replies[msg_id] = self._replies.get(msg_id, 0) + n

    def use_seq(self, msg_id, seq):
        """Mark msg_seq `seq` of `msg_id` as used, as by an earlier run of the bot."""
        self._used.add((msg_id, seq))

    def replies(self, openid="OPENID_ALICE"):
        """The text messages delivered to `openid`, in order."""
        return [m for m in self.sent if m["openid"] == openid and m["status"] == 200
                and m["body"].get("msg_type", 0) == 0]

    def media(self, openid="OPENID_ALICE"):
        """(file_type, bytes) of the files delivered to `openid` (msg_type 7), in order."""
        return [(u["file_type"], u["data"]) for u in (
            self.uploads[m["body"]["media"]["file_info"]] for m in self.sent
            if m["openid"] == openid and m["status"] == 200 and m["body"].get("msg_type") == 7)]

    def texts(self, openid="OPENID_ALICE"):
        return [m["body"].get("content") for m in self.replies(openid)]

    # --- tokens ---

    def _valid(self, token) -> bool:
        now = time.monotonic()
        return any(t["token"] == token and not t.get("revoked") and t["until"] > now
                   for t in self.tokens)

    def _issue(self, body):
        if body.get("appId") != self.app_id or body.get("clientSecret") != self.secret:
            return 200, {"code": 100016, "message": "invalid appid or secret"}
        with self._lock:
            now, last = time.monotonic(), (self.tokens[-1] if self.tokens else None)
            if not last or last.get("revoked") or last["until"] - now <= 60:
                last = {"token": uuid.uuid4().hex, "at": now, "until": now + self.expires_in}
                self.tokens.append(last)
            return 200, {"access_token": last["token"],
                         "expires_in": str(max(0, int(last["until"] - now)))}

    # --- the gateway ---

    def authentic(self, d) -> bool:
        token = str(d.get("token") or "")
        return token.startswith("QQBot ") and self._valid(token[6:])

    def new_session_id(self):
        return str(uuid.uuid4())

    def ready(self, d, session_id):
        return {"version": 1, "session_id": session_id, "shard": d.get("shard", [0, 1]),
                "user": {"id": BOT_ID, "username": BOT_NAME, "bot": True, "status": 1}}

    def heartbeat_ack(self, d):
        return {"op": 11, "d": d}

    # --- REST ---

    def _rest(self, h, method, path):
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        body = json.loads(raw) if raw else {}
        if method == "GET" and path in self.files:
            return self.download(path)
        if method == "POST" and path == TOKEN_PATH:
            return self._issue(body)
        auth = h.headers.get("Authorization", "")
        if not (auth.startswith("QQBot ") and self._valid(auth[6:])) or \
                h.headers.get("X-Union-Appid") != self.app_id:
            return 401, {"message": "token not exist or expire", "code": 11244}
        if method == "GET" and path == "/gateway":
            return 200, {"url": self.gateway_url}
        parts = path.strip("/").split("/")
        if method != "POST" or len(parts) != 4 or parts[:2] != ["v2", "users"] or \
                parts[3] not in ("messages", "files"):
            return 404, {"message": "not found", "code": 404}
        if parts[3] == "files":
            return self._file(parts[2], body)
        record = {"openid": parts[2], "body": body, "token": auth[6:], "at": time.monotonic()}
        answer = self._media(parts[2], body) or self._message(body)
        record["status"] = answer[0]
        self.sent.append(record)
        if answer[0] == 200 and body.get("msg_type") == 6:
            self.typing.append(record)
        return answer

    def _file(self, openid, body):
        kind = body.get("file_type")
        if kind not in (1, 2, 3, 4) or ("url" in body) == ("file_data" in body) or \
                body.get("srv_send_msg") is not False:
            return 400, {"message": "invalid request", "code": 40034001}
        if body.get("url"):
            return 400, {"message": "the fake fetches no url", "code": 40034001}
        try:
            data = base64.b64decode(body["file_data"], validate=True)
        except (ValueError, TypeError):
            return 400, {"message": "file_data is not base64", "code": 40034001}
        if kind in self.refuse_file_types:
            return 400, {"message": "file type not supported", "code": 850029}
        info = f"INFO_{uuid.uuid4().hex}"
        self.uploads[info] = {"openid": openid, "file_type": kind, "data": data}
        return 200, {"file_uuid": uuid.uuid4().hex, "file_info": info, "ttl": 0}

    def _media(self, openid, body):
        """A 400 for a msg_type 7 message whose file_info was not uploaded for `openid`."""
        if body.get("msg_type") != 7:
            return None
        up = self.uploads.get((body.get("media") or {}).get("file_info"))
        if not up or up["openid"] != openid:
            return 400, {"message": "invalid file_info", "code": 40034002}
        return None

    def _message(self, body):
        if self._limits:
            wait = self._limits.pop(0)
            return 429, {"message": "msg limit exceed", "code": 22009}, {"Retry-After": str(wait)}
        msg_id = body.get("msg_id")
        if msg_id:
            if msg_id in self._stale:
                return 400, {"message": "reply time limit exceeded", "code": 40034128}
            key = (msg_id, int(body.get("msg_seq") or 1))
            with self._lock:
                if key in self._used:
                    return 400, {"message": "duplicate msg_seq for this msg_id (deduplicated)",
                                 "code": 40054005}
                if self._replies.get(msg_id, 0) >= 5:
                    return 400, {"message": "msg limit exceed", "code": 22009}
                self._used.add(key)
                self._replies[msg_id] = self._replies.get(msg_id, 0) + 1
        return 200, {"id": f"BOT_MSG_{next(self._ids)}",
                     "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+08:00")}
