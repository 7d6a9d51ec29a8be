"""A scripted, OpenAI-compatible HTTP server for tests (stdlib only).

Usage::

    with FakeOpenAI() as server:
        server.script("hello", {"tool_calls": [{"name": "read_file",
                                                "arguments": {"path": "a.txt"}}]})
        client = openai.OpenAI(api_key="x", base_url=server.url, max_retries=0)
        ...
        assert server.requests[0]["body"]["messages"][-1]["content"] == "hi"

Endpoints
---------
* ``POST /v1/chat/completions``   -- scripted replies (JSON or SSE when ``"stream": true``)
* ``GET  /v1/models``             -- a list with one model
* ``POST /v1/audio/transcriptions`` -- multipart upload; answers from ``server.transcripts``
* anything else                   -- 404 with an OpenAI-style error body

Reply forms accepted by :meth:`FakeOpenAI.script`
-------------------------------------------------
* ``"text"``                                    -- assistant text message
* ``{"content": ..., "tool_calls": [...], "reasoning_content": ..., "finish_reason": ...,
  "usage": {...}}``                             -- assistant message
* ``{"status": 429, "body": {...}, "headers": {...}, "message": "..."}`` -- HTTP error
* ``{"delay": seconds, ...}``                   -- sleep first, then the rest of the dict
  (a dict holding only ``delay`` sleeps and then gives the default echo reply)
* ``{"drop": True}``                            -- close the connection without answering
* ``callable(request_body) -> reply``           -- computed reply (any form above)

With an empty script every chat request gets ``"echo: <last user text>"``.
"""

from __future__ import annotations

import collections
import itertools
import json
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

__all__ = ["FakeOpenAI", "DEFAULT_MODEL", "DEFAULT_TRANSCRIPT"]

DEFAULT_MODEL = "fake-model"
DEFAULT_TRANSCRIPT = "hello from a voice note"

# Default error bodies, shaped like the ones api.openai.com returns.
_ERROR_DEFAULTS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request (scripted by FakeOpenAI).", "invalid_request_error", None),
    401: ("Incorrect API key provided (scripted by FakeOpenAI).", "invalid_request_error",
          "invalid_api_key"),
    403: ("Forbidden (scripted by FakeOpenAI).", "invalid_request_error", None),
    404: ("Not found (scripted by FakeOpenAI).", "invalid_request_error", None),
    429: ("Rate limit reached (scripted by FakeOpenAI).", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request (scripted by FakeOpenAI).",
          "server_error", None),
    502: ("Bad gateway (scripted by FakeOpenAI).", "server_error", None),
    503: ("The engine is currently overloaded (scripted by FakeOpenAI).", "server_error",
          "service_unavailable"),
}

_STREAM_PIECES = 3  # content / arguments are split into about this many SSE chunks


def _error_body(status: int, message: str | None = None) -> dict:
    default_message, etype, code = _ERROR_DEFAULTS.get(
        status, (f"HTTP {status} (scripted by FakeOpenAI).", "server_error" if status >= 500
                 else "invalid_request_error", None))
    return {"error": {"message": message or default_message, "type": etype, "param": None,
                      "code": code}}


def _split(text: str, pieces: int = _STREAM_PIECES) -> list[str]:
    """Split text into at most `pieces` non-empty parts (empty text -> [])."""
    if not text:
        return []
    size = max(1, -(-len(text) // pieces))
    return [text[i:i + size] for i in range(0, len(text), size)]


def _message_text(content: Any) -> str:
    """Text of a message `content` (a string or a list of content parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
            elif isinstance(part, str):
                out.append(part)
        return "".join(out)
    return str(content)


def _last_user_text(body: Any) -> str:
    messages = body.get("messages") if isinstance(body, dict) else None
    if isinstance(messages, list):
        for msg in reversed(messages):
            if isinstance(msg, dict) and msg.get("role") == "user":
                return _message_text(msg.get("content"))
    return ""


def _tool_order(messages: Any) -> str | None:
    """OpenAI's 400 for a conversation whose tool messages do not answer the calls just before
    them: every call answered before anything else is said, and no result without its call."""
    waiting: list = []
    for i, msg in enumerate(messages if isinstance(messages, list) else []):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role == "tool":
            if msg.get("tool_call_id") not in waiting:
                return (f"Invalid parameter: messages with role 'tool' must be a response to a "
                        f"preceeding message with 'tool_calls' (messages.[{i}].role).")
            waiting.remove(msg.get("tool_call_id"))
            continue
        if waiting:
            break
        if role == "assistant":
            waiting = [c.get("id") for c in msg.get("tool_calls") or [] if isinstance(c, dict)]
    if waiting:
        return ("An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(waiting)}")
    return None


def _estimate_tokens(text: str) -> int:
    # Rough, deterministic: ~4 characters per token.
    return (len(text) + 3) // 4


def _parse_multipart(body: bytes, content_type: str) -> dict[str, dict]:
    """Minimal multipart/form-data parser: {name: {"filename", "data", "headers"}}."""
    match = re.search(r'boundary=(?:"([^"]+)"|([^;\s]+))', content_type, re.I)
    if not match:
        raise ValueError("multipart body without a boundary")
    boundary = (match.group(1) or match.group(2)).encode("latin-1")
    fields: dict[str, dict] = {}
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):  # closing delimiter
            break
        if chunk.startswith(b"\r\n"):
            chunk = chunk[2:]
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        if data.endswith(b"\r\n"):
            data = data[:-2]
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key:
                headers[key.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        params = dict(
            (k.lower(), v if v is not None and v != "" else w)
            for k, v, w in re.findall(r';\s*([\w*-]+)=(?:"((?:[^"\\]|\\.)*)"|([^;]*))',
                                      disposition)
        )
        name = params.get("name")
        if name is None:
            continue
        fields[name] = {"filename": params.get("filename"), "data": data, "headers": headers}
    return fields


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, fake: "FakeOpenAI"):
        self.fake = fake
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        # Clients closing keep-alive / half-read streaming connections is normal here.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)

    def close_all_connections(self):
        with self.sockets_lock:
            socks = list(self.open_sockets)
            self.open_sockets.clear()
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Drop(Exception):
    """Raised inside the handler to close the connection without an answer."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeOpenAI/1.0"
    sys_version = ""

    server: _Server  # type: ignore[assignment]

    # ------------------------------------------------------------------ plumbing
    def setup(self):
        super().setup()
        # Small request/response pairs otherwise hit Nagle + delayed-ACK stalls (~40 ms).
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, format, *args):  # noqa: A002 - silence stderr logging
        pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until an empty line
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)  # CRLF after the chunk
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_bytes(self, status: int, payload: bytes, content_type: str,
                    extra_headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-request-id", self.server.fake._next_id("req_"))
        for key, value in (extra_headers or {}).items():
            self.send_header(str(key), str(value))
        # Headers and body in one write (end_headers() would flush the headers alone).
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(payload)
        self.flush_headers()

    def _send_json(self, status: int, obj: Any, extra_headers: dict | None = None) -> None:
        self._send_bytes(status, json.dumps(obj).encode("utf-8"), "application/json",
                         extra_headers)

    def _send_error_reply(self, status: int, message: str | None = None,
                          body: Any = None, headers: dict | None = None) -> None:
        self._send_json(status, body if body is not None else _error_body(status, message),
                        headers)

    def _dispatch(self, routes: dict[str, Callable[[Any, bytes], None]]) -> None:
        path = self.path.split("?", 1)[0]
        try:
            raw = self._read_body() if self.command in ("POST", "PUT", "PATCH") else b""
        except (ValueError, OSError):
            self.close_connection = True
            return
        fake = self.server.fake
        headers = {k.lower(): v for k, v in self.headers.items()}
        entry: dict[str, Any] = {"method": self.command, "path": path, "headers": headers,
                                 "body": None}
        handler = routes.get(path)
        parsed: Any = None
        parse_error = None
        if raw and path != "/v1/audio/transcriptions":  # multipart is parsed by its handler
            try:
                parsed = json.loads(raw)
            except ValueError as exc:
                parse_error = f"Could not parse request body as JSON: {exc}"
                parsed = raw.decode("utf-8", "replace")
        entry["body"] = parsed
        try:
            if handler is None:
                fake._log(entry)
                self._send_error_reply(404, f"Unknown request URL: {self.command} {path}.")
            elif parse_error is not None:
                fake._log(entry)
                self._send_error_reply(400, parse_error)
            else:
                handler(entry, raw)
        except _Drop:
            self._drop()
        except OSError:
            # The client gave up (e.g. a timeout test); nothing more to do.
            self.close_connection = True

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ------------------------------------------------------------------ verbs
    def do_GET(self):
        self._dispatch({"/v1/models": self._models})

    def do_POST(self):
        self._dispatch({"/v1/chat/completions": self._chat,
                        "/v1/audio/transcriptions": self._transcription})

    def do_PUT(self):
        self._dispatch({})

    def do_PATCH(self):
        self._dispatch({})

    def do_DELETE(self):
        self._dispatch({})

    # ------------------------------------------------------------------ endpoints
    def _models(self, entry: dict, raw: bytes) -> None:
        self.server.fake._log(entry)
        self._send_json(200, {"object": "list", "data": [
            {"id": DEFAULT_MODEL, "object": "model", "created": 1700000000,
             "owned_by": "fake-openai"}]})

    def _chat(self, entry: dict, raw: bytes) -> None:
        fake = self.server.fake
        body = entry["body"] if isinstance(entry["body"], dict) else {}
        fake._log(entry)
        problem = _tool_order(body.get("messages"))
        if problem:         # as OpenAI answers it, before any scripted reply is used
            self._send_error_reply(400, problem)
            return
        reply = fake._resolve(fake._next_reply(), body, self)
        if reply is None:  # already answered (error) inside _resolve
            return
        message, finish_reason, usage_override = reply
        model = body.get("model") or DEFAULT_MODEL
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream_chat(body, model, message, finish_reason, usage_override,
                              include_usage)
            return
        self._send_json(200, {
            "id": fake._next_id("chatcmpl-"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": usage_override or _usage(body, message),
        })

    def _stream_chat(self, body: dict, model: str, message: dict, finish_reason: str,
                     usage_override: dict | None, include_usage: bool) -> None:
        fake = self.server.fake
        cid = fake._next_id("chatcmpl-")
        created = int(time.time())

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", fake._next_id("req_"))
        self.end_headers()

        def chunk(delta: dict, finish: str | None = None) -> dict:
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created,
                   "model": model, "system_fingerprint": "fp_fake",
                   "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                "finish_reason": finish}]}
            if include_usage:
                obj["usage"] = None
            return obj

        def send(data: str) -> None:
            payload = f"data: {data}\n\n".encode("utf-8")
            self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))

        send(json.dumps(chunk({"role": "assistant", "content": ""})))
        for piece in _split(message.get("reasoning_content") or ""):
            send(json.dumps(chunk({"reasoning_content": piece})))
        for piece in _split(message.get("content") or ""):
            send(json.dumps(chunk({"content": piece})))
        for index, call in enumerate(message.get("tool_calls") or []):
            fn = call["function"]
            send(json.dumps(chunk({"tool_calls": [{
                "index": index, "id": call["id"], "type": "function",
                "function": {"name": fn["name"], "arguments": ""}}]})))
            for piece in _split(fn["arguments"]):
                send(json.dumps(chunk({"tool_calls": [{
                    "index": index, "function": {"arguments": piece}}]})))
        send(json.dumps(chunk({}, finish_reason)))
        if include_usage:
            send(json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                             "model": model, "system_fingerprint": "fp_fake", "choices": [],
                             "usage": usage_override or _usage(body, message)}))
        # [DONE] and the terminating zero-size chunk go out in one write, so the client sees
        # the end of the body as soon as it sees [DONE] and can reuse the connection.
        done = b"data: [DONE]\n\n"
        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))

    def _transcription(self, entry: dict, raw: bytes) -> None:
        fake = self.server.fake
        content_type = self.headers.get("Content-Type") or ""
        try:
            fields = _parse_multipart(raw, content_type)
        except ValueError as exc:
            entry["body"] = None
            fake._log(entry)
            self._send_error_reply(400, str(exc))
            return

        def text_field(name: str) -> str | None:
            field = fields.get(name)
            return field["data"].decode("utf-8", "replace") if field else None

        file_part = fields.get("file")
        entry["body"] = {
            "model": text_field("model"),
            "filename": file_part["filename"] if file_part else None,
            "size": len(file_part["data"]) if file_part else 0,
        }
        for extra in ("language", "prompt", "response_format", "temperature"):
            value = text_field(extra)
            if value is not None:
                entry["body"][extra] = value
        fake._log(entry)
        if file_part is None:
            self._send_error_reply(400, "Missing required multipart field 'file'.")
            return

        item = fake._next_transcript()
        if callable(item):
            item = item(entry["body"])
        if isinstance(item, dict):
            if item.get("delay"):
                fake._sleep(float(item["delay"]))
            if item.get("drop"):
                raise _Drop()
            if "status" in item:
                self._send_error_reply(int(item["status"]), item.get("message"),
                                       item.get("body"), item.get("headers"))
                return
            item = item.get("text", DEFAULT_TRANSCRIPT)
        text = str(item)
        fmt = entry["body"].get("response_format") or "json"
        if fmt in ("text", "srt", "vtt"):
            self._send_bytes(200, text.encode("utf-8"), "text/plain; charset=utf-8")
        elif fmt == "verbose_json":
            self._send_json(200, {"task": "transcribe", "language": "english",
                                  "duration": 1.0, "text": text, "segments": []})
        else:
            self._send_json(200, {"text": text})


def _usage(body: dict, message: dict) -> dict:
    prompt_chars = 0
    for msg in body.get("messages") or []:
        if isinstance(msg, dict):
            prompt_chars += len(_message_text(msg.get("content"))) + 4
    completion = (message.get("content") or "") + (message.get("reasoning_content") or "")
    for call in message.get("tool_calls") or []:
        completion += call["function"]["name"] + call["function"]["arguments"]
    prompt_tokens = _estimate_tokens("x" * prompt_chars) if prompt_chars else 0
    completion_tokens = max(1, _estimate_tokens(completion))
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


_ECHO = object()  # sentinel: "use the default echo reply"


class FakeOpenAI:
    """Scripted OpenAI-compatible server. See the module docstring for reply forms."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.port = port
        self.requests: list[dict] = []
        self.transcripts: list = []
        self.errors: list[str] = []  # problems with scripted replies (bad form, callable raised)
        self._script: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._call_ids = itertools.count(1)
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FakeOpenAI":
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _Server((self.host, self.port), _Handler, self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"FakeOpenAI:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()  # wakes handlers sleeping on a scripted delay
        httpd.shutdown()
        httpd.close_all_connections()  # keep-alive connections would otherwise linger
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL for the SDK, e.g. ``http://127.0.0.1:PORT/v1``."""
        if self._httpd is None:
            raise RuntimeError("FakeOpenAI is not started")
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}/v1"

    # ------------------------------------------------------------------ scripting
    def script(self, *replies) -> "FakeOpenAI":
        """Queue replies; each POST /v1/chat/completions consumes one."""
        with self._lock:
            self._script.extend(replies)
        return self

    @property
    def pending(self) -> int:
        """Number of scripted replies not consumed yet."""
        return len(self._script)

    def reset(self) -> None:
        """Forget the script, transcripts, the request log and recorded errors."""
        with self._lock:
            self._script.clear()
            self.requests.clear()
            self.transcripts.clear()
            self.errors.clear()

    @property
    def chat_requests(self) -> list[dict]:
        """The logged request bodies of POST /v1/chat/completions, in order."""
        return [r["body"] for r in self.requests if r["path"] == "/v1/chat/completions"]

    # ------------------------------------------------------------------ internals
    def _log(self, entry: dict) -> None:
        with self._lock:
            self.requests.append(entry)

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    def _next_reply(self):
        if not self._script:  # fast path: no lock for the default echo
            return _ECHO
        with self._lock:
            return self._script.popleft() if self._script else _ECHO

    def _next_transcript(self):
        with self._lock:
            return self.transcripts.pop(0) if self.transcripts else DEFAULT_TRANSCRIPT

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self._stopping.wait(seconds):
            raise _Drop()  # the server is stopping: don't answer a delayed request

    def _bad_reply(self, handler: _Handler, problem: str) -> None:
        self.errors.append(problem)
        handler._send_error_reply(500, f"FakeOpenAI: {problem}")

    def _resolve(self, reply, body: dict, handler: _Handler):
        """Turn a scripted reply into (message, finish_reason, usage) or answer an error.

        Returns None when the response (an error) was already sent.
        """
        if reply is _ECHO:
            return _text_message("echo: " + _last_user_text(body)), "stop", None
        if callable(reply):
            try:
                reply = reply(body)
            except Exception as exc:  # surfaced as a 500 and in .errors
                self._bad_reply(handler, f"reply callable raised {exc!r}")
                return None
            if callable(reply):
                return self._resolve(reply, body, handler)
        if reply is None:
            return _text_message("echo: " + _last_user_text(body)), "stop", None
        if isinstance(reply, str):
            return _text_message(reply), "stop", None
        if not isinstance(reply, dict):
            self._bad_reply(handler, f"unsupported scripted reply {reply!r}")
            return None

        if reply.get("delay"):
            self._sleep(float(reply["delay"]))
        if reply.get("drop"):
            raise _Drop()
        if "status" in reply:
            handler._send_error_reply(int(reply["status"]), reply.get("message"),
                                      reply.get("body"), reply.get("headers"))
            return None
        if not ({"content", "tool_calls", "reasoning_content"} & reply.keys()):
            # e.g. {"delay": 1} alone: delayed default echo
            return _text_message("echo: " + _last_user_text(body)), \
                reply.get("finish_reason") or "stop", reply.get("usage")

        message: dict[str, Any] = {"role": "assistant", "content": reply.get("content"),
                                   "refusal": None}
        calls = []
        for call in reply.get("tool_calls") or []:
            fn = call.get("function") if isinstance(call.get("function"), dict) else call
            args = fn.get("arguments", {})
            if not isinstance(args, str):
                args = json.dumps(args)
            calls.append({"id": call.get("id") or f"call_{next(self._call_ids)}",
                          "type": "function",
                          "function": {"name": fn.get("name"), "arguments": args}})
        if calls:
            message["tool_calls"] = calls
        if reply.get("reasoning_content") is not None:
            message["reasoning_content"] = reply["reasoning_content"]
        finish = reply.get("finish_reason") or ("tool_calls" if calls else "stop")
        return message, finish, reply.get("usage")


def _text_message(text: str) -> dict:
    return {"role": "assistant", "content": text, "refusal": None}
