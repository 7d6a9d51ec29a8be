"""A fake Telegram Bot API server for tests (stdlib only), on 127.0.0.1.

    with FakeTelegram() as tg:            # tg.api_base -> channels.telegram.api_base
        tg.message("hi", user=(42, "alice"))
        ...
        assert tg.sent[0]["text"] == "hello"

Methods at /bot<token>/<method> (GET or POST; JSON or form parameters), files at
/file/bot<token>/<path>; answers are {"ok": true, "result": …} or
{"ok": false, "error_code", "description", "parameters"}. Implemented: getMe, getUpdates (long
poll; offset confirms earlier updates), sendMessage (HTML parse mode checked as Telegram does:
allowed tags, nesting, entities; 4,096 UTF-16 units after parsing), sendChatAction, getFile
(20 MB limit) and file downloads, deleteWebhook, setMyCommands, and the uploads sendPhoto,
sendAnimation, sendVoice, sendAudio, sendVideo, sendDocument: multipart/form-data whose file
field is named after the method (photo, animation, voice, …), recorded in `uploads`. As on
Telegram, a body over 50 MB is a 413, a caption over 1,024 characters a 400, and a photo that is
not a JPEG, PNG or WebP image (checked by its first bytes only) "IMAGE_PROCESS_FAILED".

Scripting: message()/inject() add updates; add_file() stores a downloadable file;
fail_next(method, 429, retry_after=…) or fail_next(method, 502) answers the next call with an
error; webhook = True makes getUpdates answer 409 until deleteWebhook; go_down() closes every
connection (held long polls included) and every request until go_up().
"""
import html
import itertools
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, unquote

from tests.fakes.base import FakeServer, parse_multipart

TOKEN = "123456:TEST-fake-token"
JSON_KEYS = {"offset", "limit", "timeout", "allowed_updates", "chat_id", "reply_parameters",
             "reply_to_message_id", "message_thread_id", "commands", "drop_pending_updates"}
UPLOAD_LIMIT = 50 * 2**20
UPLOADS = {"sendPhoto": "photo", "sendAnimation": "animation", "sendVoice": "voice",
           "sendAudio": "audio", "sendVideo": "video", "sendDocument": "document"}
IMAGES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF")
TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre",
        "blockquote", "tg-spoiler", "span", "tg-emoji"}


class _Drop(Exception):
    pass


class ApiError(Exception):
    def __init__(self, code, description, parameters=None):
        super().__init__(description)
        self.code, self.description, self.parameters = code, description, parameters


def parse_html(text: str) -> str:
    """The text Telegram would show for `text` in HTML parse mode; ApiError(400) as Telegram's
    "can't parse entities" when the markup is not acceptable."""
    out, stack, i = [], [], 0
    bad = "Bad Request: can't parse entities: "
    while i < len(text):
        c = text[i]
        if c == "<":
            m = re.match(r"<(/?)([a-zA-Z][\w-]*)((?:\s+[\w-]+=(?:\"[^\"]*\"|'[^']*'))*)\s*>",
                         text[i:])
            if not m:
                raise ApiError(400, f"{bad}unsupported start tag at byte offset {i}")
            closing, tag = m.group(1), m.group(2).lower()
            if tag not in TAGS:
                raise ApiError(400, f'{bad}unsupported start tag "{tag}" at byte offset {i}')
            if closing:
                if not stack or stack[-1] != tag:
                    raise ApiError(400, f'{bad}unexpected end tag at byte offset {i}')
                stack.pop()
            else:
                stack.append(tag)
            i += m.end()
        elif c == "&":
            m = re.match(r"&(lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);", text[i:])
            if not m:
                raise ApiError(400, f"{bad}can't find end of the entity starting at byte "
                                    f"offset {i}")
            out.append(html.unescape(m.group(0)))
            i += m.end()
        elif c == ">":
            raise ApiError(400, f"{bad}unexpected end tag at byte offset {i}")
        else:
            out.append(c)
            i += 1
    if stack:
        raise ApiError(400, f'{bad}can\'t find end tag corresponding to start tag "{stack[-1]}"')
    return "".join(out)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self):
        self._serve()

    def do_POST(self):
        self._serve()

    def _serve(self):
        fake = self.server.fake
        try:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if fake.down:
                fake.dropped += 1
                raise _Drop
            path, _, query = self.path.partition("?")
            m = re.fullmatch(r"/file/bot([^/]+)/(.+)", path)
            if m:
                return self._download(unquote(m.group(1)), unquote(m.group(2)))
            m = re.fullmatch(r"/bot([^/]+)/(\w+)", path)
            if not m or unquote(m.group(1)) != fake.token:
                raise ApiError(404 if not m else 401, "Not Found" if not m else "Unauthorized")
            method, params = m.group(2), self._params(query, raw)
            fake._record(method, params)
            fake._scripted_failure(method)
            handler = getattr(fake, f"_api_{method}", None) or (
                (lambda p: fake._upload(method, p)) if method in UPLOADS else None)
            if handler is None:
                raise ApiError(404, "Not Found")
            self._answer(200, {"ok": True, "result": handler(params)})
        except ApiError as e:
            body = {"ok": False, "error_code": e.code, "description": e.description}
            if e.parameters:
                body["parameters"] = e.parameters
            self._answer(e.code, body)
        except _Drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        except OSError:
            self.close_connection = True

    def _params(self, query: str, raw: bytes) -> dict:
        kind = self.headers.get("Content-Type") or ""
        params = dict(parse_qsl(query))
        if len(raw) > UPLOAD_LIMIT:
            raise ApiError(413, "Request Entity Too Large")
        if "json" in kind and raw:
            params.update(json.loads(raw))
        elif kind.startswith("multipart/"):
            fields, files = parse_multipart(kind, raw)
            params.update(fields, **files)          # a file: (filename, bytes)
        elif raw:
            params.update(parse_qsl(raw.decode()))
        for key in JSON_KEYS & params.keys():
            try:
                if isinstance(params[key], str):
                    params[key] = json.loads(params[key])
            except ValueError:
                pass
        return params

    def _download(self, token, path):
        fake = self.server.fake
        fake._record("download", {"path": path})
        match = [f for f in fake.files.values() if f["file_path"] == path]
        if token != fake.token or not match:
            raise ApiError(404, "Not Found")
        if not match[0].get("drip_s"):
            return self._reply_bytes(200, match[0]["data"], "application/octet-stream")
        self.send_response(200)             # a slow file server: a byte at a time
        self.send_header("Content-Length", str(len(match[0]["data"])))
        self.end_headers()
        for i in range(len(match[0]["data"])):
            self.wfile.write(match[0]["data"][i:i + 1])
            self.wfile.flush()
            time.sleep(match[0]["drip_s"])

    def _answer(self, status, obj):
        if status == 502:
            return self._reply_bytes(502, b"<html><body>502 Bad Gateway</body></html>", "text/html")
        self._reply_bytes(status, json.dumps(obj).encode(), "application/json")

    def _reply_bytes(self, status, payload, kind):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class FakeTelegram(FakeServer):
    def __init__(self, token: str = TOKEN, username: str = "nano_test_bot"):
        self.token = token
        self.me = {"id": int(token.split(":")[0]), "is_bot": True, "first_name": "Nano",
                   "username": username}
        self.calls = []             # every API call: {"method", "params", "time"}
        self.sent = []              # accepted sendMessage params; "shown" = the
                                    # text as Telegram displays it (markup parsed)
        self.uploads = []           # accepted uploads: {"method", "chat_id", "filename", "data",
                                    # "caption", "reply_parameters"…}
        self.files = {}
        self.webhook = False
        self.down = False
        self.dropped = 0            # requests answered by closing the connection
        self._updates = []          # not yet confirmed
        self._failures = []         # (method, status, retry_after)
        self._ids = itertools.count(1)
        self._message_ids = itertools.count(1000)
        self._cond = threading.Condition()

    # --- lifecycle ---

    def handler(self):
        return _Handler

    def stop(self):
        self.go_down()                  # long polls give up
        super().stop()

    @property
    def api_base(self) -> str:
        return self.base

    # --- scripting ---

    def inject(self, message: dict) -> int:
        with self._cond:
            update_id = next(self._ids)
            self._updates.append({"update_id": update_id, "message": message})
            self._cond.notify_all()
        return update_id

    def message(self, text=None, user=(42, "alice"), chat=None, chat_type="private", **extra):
        """An incoming message from `user` (id, username) in `chat` (default: the user's
        private chat). Returns the message dict (its message_id is in it)."""
        uid, uname = user
        sender = {"id": uid, "is_bot": False, "first_name": (uname or "User").title()}
        if uname:
            sender["username"] = uname
        msg = {"message_id": next(self._message_ids), "date": int(time.time()), "from": sender,
               "chat": {"id": chat if chat is not None else uid, "type": chat_type}, **extra}
        if text is not None:
            msg["text"] = text
        self.inject(msg)
        return msg

    def add_file(self, data: bytes, file_path: str, size: int | None = None, drip_s=0.0) -> dict:
        """Store a file getFile can serve (`drip_s`: a byte at a time, this far apart); returns
        the fields a message attachment carries."""
        n = next(self._ids)
        self.files[f"FILE{n}"] = {"file_id": f"FILE{n}", "file_unique_id": f"U{n}",
                                  "file_size": len(data) if size is None else size,
                                  "file_path": file_path, "data": data, "drip_s": drip_s}
        return {"file_id": f"FILE{n}", "file_unique_id": f"U{n}", "file_size": self.files[
            f"FILE{n}"]["file_size"]}

    def fail_next(self, method: str, status: int = 429, retry_after: int | None = None):
        self._failures.append((method, status, retry_after))

    def go_down(self):
        with self._cond:
            self.down = True
            self._cond.notify_all()

    def go_up(self):
        self.down = False

    def calls_of(self, method: str) -> list:
        return [c for c in list(self.calls) if c["method"] == method]

    @property
    def pending(self) -> list:
        return list(self._updates)

    # --- plumbing ---

    def _record(self, method, params):
        self.calls.append({"method": method, "params": params, "time": time.monotonic()})

    def _scripted_failure(self, method):
        for i, (name, status, retry_after) in enumerate(self._failures):
            if name == method:
                del self._failures[i]
                if status == 429:
                    raise ApiError(429, f"Too Many Requests: retry after {retry_after}",
                                   {"retry_after": retry_after})
                raise ApiError(status, "Bad Gateway" if status == 502 else "Internal Server Error")

    def _message(self, params, shown=None, **fields):
        chat = params.get("chat_id")
        if chat in (None, ""):
            raise ApiError(400, "Bad Request: chat_id is empty")
        msg = {"message_id": next(self._message_ids), "date": int(time.time()),
               "chat": {"id": int(chat), "type": "private" if int(chat) > 0 else "group"},
               "from": self.me, **fields}
        self.sent.append(dict(params, time=time.monotonic(), shown=shown))
        return msg

    # --- the Bot API methods ---

    def _api_getMe(self, params):
        return self.me

    def _api_getUpdates(self, params):
        if self.webhook:
            raise ApiError(409, "Conflict: can't use getUpdates method while webhook is active; "
                                "use deleteWebhook to delete the webhook first")
        offset, limit = int(params.get("offset") or 0), int(params.get("limit") or 100)
        deadline = time.monotonic() + min(float(params.get("timeout") or 0), 50)
        with self._cond:
            if offset:
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
            while True:
                if self.down:
                    self.dropped += 1
                    raise _Drop
                if self._updates or time.monotonic() >= deadline:
                    return self._updates[:limit]
                self._cond.wait(deadline - time.monotonic())

    def _api_sendMessage(self, params):
        text = params.get("text") or ""
        if not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        shown = parse_html(text) if str(params.get("parse_mode", "")).lower() == "html" else text
        if len(shown.encode("utf-16-le")) // 2 > 4096:
            raise ApiError(400, "Bad Request: message is too long")
        return self._message(params, shown, text=shown)

    def _upload(self, method, params):
        field = UPLOADS[method]
        if not isinstance(params.get(field), tuple):
            raise ApiError(400, f"Bad Request: there is no {field} in the request")
        filename, data = params[field]
        params = {k: v for k, v in params.items() if k != field}
        if len(params.get("caption") or "") > 1024:
            raise ApiError(400, "Bad Request: message caption is too long")
        if field == "photo" and not data.startswith(IMAGES):
            raise ApiError(400, "Bad Request: IMAGE_PROCESS_FAILED")
        n = len(self.uploads)
        sent = {"file_id": f"SENT{n}", "file_unique_id": f"S{n}", "file_size": len(data)}
        if field == "photo":
            sent = [dict(sent, width=90, height=90)]
        else:
            sent.update({"duration": 1, "width": 90, "height": 90} if field in (
                "video", "animation") else {"duration": 1} if field in ("voice", "audio") else {})
            sent.update({"file_name": filename} if field != "voice" else {})
        msg = self._message(params, None, **{field: sent})
        self.sent.pop()                 # _message() recorded it as a text message
        self.uploads.append(dict(params, method=method, filename=filename, data=data,
                                 time=time.monotonic()))
        return msg

    def _api_sendChatAction(self, params):
        if params.get("action") not in ("typing", "upload_document", "upload_photo",
                                         "record_voice", "upload_voice"):
            raise ApiError(400, "Bad Request: wrong parameter action in request")
        return True

    def _api_getFile(self, params):
        f = self.files.get(params.get("file_id"))
        if f is None:
            raise ApiError(400, "Bad Request: invalid file_id")
        if f["file_size"] > 20 * 1024 * 1024:
            raise ApiError(400, "Bad Request: file is too big")
        return {k: v for k, v in f.items() if k != "data"}

    def _api_deleteWebhook(self, params):
        self.webhook = False
        return True

    def _api_setMyCommands(self, params):
        return True
