"""The OpenAI-compatible API (SPEC §11): POST /v1/chat/completions, GET /v1/models.

A request is an inbox message of channel `api` (chat `user`, default `default`), answered
through the outbox like any other, so a gateway killed mid-request answers it after the restart;
a client that sends the same Idempotency-Key again gets that answer, not a second one.
Exchange is that round trip, shared with the page's chat."""
import hashlib
import json
import threading
import time

from lib import maildir
from lib.mail import post_inbox
from lib.web.auth import HttpError, bad_request

MODEL = "nanoclaw"
MAX_TEXT = 512 * 1024       # what one message may carry (an inbox file holds at most 1 MiB)
KEPT = (" The message is kept and will be answered when the model is back: send it again with "
        "the same Idempotency-Key header to get that answer.")


class Exchange:
    """Posts messages into the inbox and waits for their replies in outbox/sent/. The file
    watcher calls changed() when a reply or a session line is written; nobody polls."""

    def __init__(self, home):
        self.home = home
        self._cond, self._changes, self.closed = threading.Condition(), 0, False

    def changed(self):
        with self._cond:
            self._changes += 1
            self._cond.notify_all()

    def close(self):
        self.closed = True
        self.changed()

    def post(self, channel: str, chat_id: str, text: str, name: str | None = None,
             metadata=None) -> str:
        """The inbox message's key (its file name): its reply's file name carries it."""
        if not text.strip():
            raise bad_request("the message is empty")
        if len(text.encode("utf-8", "replace")) > MAX_TEXT:
            raise bad_request(f"the message is over {MAX_TEXT // 1024} KiB", 413)
        msg = {"channel": channel, "chat_id": chat_id, "sender_id": channel, "text": text,
               "metadata": metadata or {}}
        path = post_inbox(self.home, msg, name)
        return path.stem if path else name         # None: posted before (the same key again)

    def wait(self, key: str, seconds: float, tick=None, every: float = 1.0,
             notice: bool = True) -> dict | None:
        """The reply to `key` (an outbox message), or None after `seconds`. With `notice`, the
        worker's word that the model is down and the message waits counts as a reply (its
        metadata.error is "waiting"). `tick()` is called after each change and at least every
        `every` seconds (it may raise to give up)."""
        deadline = time.monotonic() + seconds
        while True:
            with self._cond:
                seen = self._changes
            reply = self.reply(key, notice)
            if reply is not None:
                return reply
            if self.closed:
                raise HttpError(503, "the gateway is stopping; the message is kept and will be "
                                "answered after the restart", "unavailable")
            if tick:
                tick()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            with self._cond:
                if self._changes == seen:
                    self._cond.wait(min(left, every))

    def reply(self, key: str, notice: bool = True) -> dict | None:
        found = {}
        for name in maildir.waiting(self.home / "outbox", folder="sent"):
            for suffix in (f".r{key}.json", f".r{key}-wait.json"):
                if name.endswith(suffix) and name[:-len(suffix)].count(".") == 3:
                    found[suffix] = name
        name = found.get(f".r{key}.json") or notice and found.get(f".r{key}-wait.json")
        if name:
            try:
                reply = json.loads((self.home / "outbox" / "sent" / name).read_bytes())
            except (OSError, ValueError):
                return None         # pruned meanwhile, or torn: the next change tells
            if name.endswith("-wait.json"):
                reply["metadata"] = dict(reply.get("metadata") or {}, error="waiting")
            return reply
        failed = self.home / "inbox" / "failed" / f"{key}.json.error"
        if failed.exists():
            raise HttpError(500, "the message could not be handled: " +
                            failed.read_text(errors="replace")[:500].strip(), "internal_error")
        return None


def _models(web, req):
    req.send_json({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0,
                                               "owned_by": "nanoclaw"}]})


def _completions(web, req):
    body = req.body()
    text = _last_user_text(body.get("messages"))
    user = body.get("user") or "default"
    if not isinstance(user, str) or len(user) > 128:
        raise bad_request("'user' names the session: a string of at most 128 characters")
    model = body["model"][:100] if isinstance(body.get("model"), str) else MODEL
    again = req.headers.get("Idempotency-Key")
    name = "api-" + hashlib.sha256(f"{user}\0{again}".encode()).hexdigest()[:32] if again else None
    key = web.exchange.post("api", user, text, name, {"api_model": model})
    created, cid = int(time.time()), f"chatcmpl-{key}"
    limit = web.gateway.config.gateway.api_timeout_s
    text = _answer(web.exchange.wait(key, limit, lambda: _queued_while_down(web, key)), limit)
    if body.get("stream") is True:
        return _stream(req, text, cid, created, model)
    req.send_json({"id": cid, "object": "chat.completion", "created": created, "model": model,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop"}]})


def _stream(req, text, cid, created, model):
    """The answer as Server-Sent Events. It is sent once it is there (the model is not streamed),
    so a failure is an HTTP status with the OpenAI error, as without `stream`."""
    def chunk(delta, finish=None):
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    req.start_events()
    req.event(chunk({"role": "assistant", "content": ""}))
    req.event(chunk({"content": text}))
    req.event(chunk({}, "stop"))
    req.event("[DONE]")


def _queued_while_down(web, key: str):
    """While no model answers (usage.model_down), a message still queued behind the one the
    worker holds gets 502 now, as that one did, not 504 after api_timeout_s; it stays queued."""
    from lib.usage import model_down
    home = web.gateway.home
    if model_down(home) and (home / "inbox" / "new" / f"{key}.json").exists():
        raise HttpError(502, "The model is not answering right now." + KEPT, "model_unreachable")


def _answer(reply: dict | None, limit: int) -> str:
    if reply is None:
        raise HttpError(504, f"no reply within {limit} s (gateway.api_timeout_s); the message is "
                        "kept, and its answer will be in the session", "timeout")
    error = (reply.get("metadata") or {}).get("error")
    if error in ("model", "waiting"):
        raise HttpError(502, (reply.get("text") or "the model cannot be reached") +
                        (KEPT if error == "waiting" else ""), "model_unreachable")
    if error:
        raise HttpError(500, reply.get("text") or "internal error", "internal_error")
    return reply.get("text") or ""


def _last_user_text(messages) -> str:
    """SPEC §11: the last user message is the input; the session keeps the history."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list")
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, list):       # parts: the text ones are read
                content = "\n".join(p.get("text", "") for p in content
                                    if isinstance(p, dict) and p.get("type") == "text")
            if isinstance(content, str) and content.strip():
                return content
            raise bad_request("the last user message has no text")
    raise bad_request("no message with role 'user' in 'messages'")


ROUTES = {("GET", "/v1/models"): _models, ("POST", "/v1/chat/completions"): _completions}
