"""A fake Discord on 127.0.0.1: the REST routes a bot uses and a gateway v10 websocket.

    with FakeDiscord(token="t") as discord:
        # channels.discord: {api_base: discord.api_base, token: t}
        discord.say("hello", author_id="111")       # a DM arrives as MESSAGE_CREATE
        discord.wait_for(lambda: discord.sent)      # [{"channel_id", "body", "files", "at"}]

REST (under /api/v10, `Authorization: Bot <token>` or 401 with Discord's body):
`GET /gateway/bot`, `POST /channels/{id}/messages` (JSON or multipart with payload_json and
files[n]; content over 2,000 characters is a 400 "Invalid Form Body", files over `upload_limit`
(10 MiB) together a 413 with code 40005; `rate_limit()` makes the
next answers 429 with `{"message", "retry_after", "global"}`), `POST /channels/{id}/typing` (204),
and attachment downloads at `/attachments/...` (no token, as on the CDN).

Gateway at `/gateway` (any query; recorded in `gateway_urls`): HELLO with `heartbeat_ms`, ACK
for every heartbeat while `ack` is true, READY (s=1) with a session id and a
resume_gateway_url pointing back here, RESUME replaying what the session missed (each event
keeps its increasing `s`) and then RESUMED, op 9 false for an unknown session. Controls:
`drop()` cuts the connection, `close(code)` closes it with a code, `reconnect()` sends op 7,
`invalidate(resumable)` sends op 9, `refuse_with = code` closes every IDENTIFY with that code.
Events made while nobody is connected wait for the next RESUME (or READY, if there is no session).
"""
import json
import time

from tests.fakes.base import parse_multipart
from tests.fakes.gateway_ws import GatewayServer

BOT_ID, BOT_NAME = "900000000000000001", "nanobot"


class FakeDiscord(GatewayServer):
    def __init__(self, token: str = "test-token", heartbeat_ms: int = 500):
        super().__init__(heartbeat_ms, first_id=1000)
        self.token, self.refuse_with = token, None
        self.upload_limit = 10 * 2**20          # bytes of files per message (a bot without Nitro)

    @property
    def api_base(self):
        return self.base + "/api/v10"

    # --- what the test does ---

    def say(self, content="", author_id="111", username="alice", channel_id="500", guild_id=None,
            mentions=(), attachments=(), bot=False) -> str:
        """A user writes: MESSAGE_CREATE for the bot. Returns the message id."""
        msg_id = str(next(self._ids))
        d = {"id": msg_id, "type": 0, "channel_id": channel_id, "content": content,
             "author": {"id": author_id, "username": username, "bot": bot},
             "mentions": [{"id": m, "username": "x"} for m in mentions],
             "attachments": list(attachments), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if guild_id:
            d["guild_id"] = guild_id
        self.event("MESSAGE_CREATE", d)
        return msg_id

    def attachment(self, filename, data: bytes, content_type="application/octet-stream") -> dict:
        path = f"/attachments/500/{next(self._ids)}/{filename}"
        self.files[path] = data
        return {"id": path.split("/")[3], "filename": filename, "size": len(data),
                "url": self.base + path + "?ex=1&is=2&hm=signed", "content_type": content_type}

    def texts(self, channel_id="500"):
        return [m["body"].get("content") for m in self.sent if m["channel_id"] == channel_id]

    # --- the gateway ---

    def authentic(self, d) -> bool:
        return d.get("token") == f"Bot {self.token}"

    def refusal(self, d):
        return (self.refuse_with, "Disallowed intent(s).") if self.refuse_with else None

    def ready(self, d, session_id):
        return {"v": 10, "user": {"id": BOT_ID, "username": BOT_NAME, "bot": True},
                "session_id": session_id, "guilds": [],
                "resume_gateway_url": self.gateway_url + "?resumed=1"}

    # --- REST ---

    def _rest(self, h, method, path):
        route = path[len("/api/v10"):] if path.startswith("/api/v10/") else None
        if path in self.files and method == "GET":
            return self.download(path)
        if route is None:
            return 404, {"message": "404: Not Found", "code": 0}
        if h.headers.get("Authorization") != f"Bot {self.token}":
            return 401, {"message": "401: Unauthorized", "code": 0}
        if route == "/gateway/bot" and method == "GET":
            return 200, {"url": self.gateway_url, "shards": 1, "session_start_limit": {
                "total": 1000, "remaining": 999, "reset_after": 14400000, "max_concurrency": 1}}
        parts = route.strip("/").split("/")
        if method != "POST" or len(parts) != 3 or parts[0] != "channels":
            return 404, {"message": "404: Not Found", "code": 0}
        if parts[2] == "typing":
            self.typing.append({"channel_id": parts[1], "at": time.monotonic()})
            return 204, b""
        if parts[2] != "messages":
            return 404, {"message": "404: Not Found", "code": 0}
        body, files = _read_body(h)
        if self._limits:
            wait = self._limits.pop(0)
            self.sent.append({"channel_id": parts[1], "body": body, "files": files,
                              "at": time.monotonic(), "status": 429})
            return 429, {"message": "You are being rate limited.", "retry_after": wait,
                         "global": False}, {"Retry-After": str(max(1, round(wait))),
                                            "X-RateLimit-Scope": "user"}
        if sum(len(data) for data in files.values()) > self.upload_limit:
            return 413, {"message": "Request entity too large", "code": 40005}
        if len(body.get("content") or "") > 2000:
            return 400, {"message": "Invalid Form Body", "code": 50035, "errors": {"content": {
                "_errors": [{"code": "BASE_TYPE_MAX_LENGTH",
                             "message": "Must be 2000 or fewer in length."}]}}}
        msg_id = str(next(self._ids))
        self.sent.append({"channel_id": parts[1], "body": body, "files": files,
                          "at": time.monotonic(), "status": 200})
        return 200, {"id": msg_id, "channel_id": parts[1], "content": body.get("content", ""),
                     "author": {"id": BOT_ID, "username": BOT_NAME, "bot": True}}


def _read_body(h):
    raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
    ctype = h.headers.get("Content-Type", "")
    if not ctype.startswith("multipart/"):
        return (json.loads(raw) if raw else {}), {}
    fields, files = parse_multipart(ctype, raw)
    return json.loads(fields.get("payload_json") or "{}"), {
        filename or name: data for name, (filename, data) in files.items()}
