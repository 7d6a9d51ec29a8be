"""One chat-completion call through the openai SDK, with retries the user never has to see."""
import json
import logging
import random
import time
from contextlib import suppress
from dataclasses import dataclass, field
from functools import cached_property

from lib.errors import ProviderDown, ProviderError, TurnTimeout
from lib.providers.registry import Resolved, resolve

log = logging.getLogger(__name__)
_RETRY_STATUS = {408, 409, 429}


@dataclass
class Reply:
    content: str | None = None
    tool_calls: list = field(default_factory=list)   # [{"id", "name", "arguments": json str}]
    reasoning_content: str | None = None
    finish_reason: str = "stop"
    usage: dict = field(default_factory=dict)

    def message(self) -> dict:
        """The assistant message in the OpenAI shape, as sessions store it."""
        msg = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            msg["tool_calls"] = [{"id": c["id"], "type": "function",
                                  "function": {"name": c["name"], "arguments": c["arguments"]}}
                                 for c in self.tool_calls]
        if self.reasoning_content:
            msg["reasoning_content"] = self.reasoning_content
        return msg


def make_provider(config, model: str | None = None, provider: str | None = None,
                  retries: int = 3) -> "OpenAIProvider":
    """The provider for the configured model (or `model` at `provider`): timeout, back-off."""
    d = config.agents.defaults
    return OpenAIProvider(resolve(config, model, provider), max_tokens=d.max_tokens, retries=retries,
                          temperature=d.temperature, timeout=d.model_timeout_s,
                          backoff=d.retry_backoff_s)


class OpenAIProvider:
    """Any OpenAI-compatible endpoint through the openai SDK; implements lib.providers.Provider."""

    def __init__(self, resolved: Resolved, max_tokens=8192, temperature=0.7, retries=3,
                 timeout=90.0, backoff=1.0):
        self.r, self.retries, self.backoff, self.timeout = resolved, retries, backoff, timeout
        asked = {"max_tokens": max_tokens, "temperature": temperature}
        params = asked | {k: asked.get(v[1:]) if isinstance(v, str) and v.startswith("$") else v
                          for k, v in resolved.overrides.items()}     # "$x": the x asked for
        self.params = {k: v for k, v in params.items() if v is not None}

    @property
    def name(self) -> str:
        return self.r.spec.display_name

    @cached_property
    def client(self):
        import openai   # heavy: only when a model is really called
        return openai.OpenAI(api_key=self.r.api_key, base_url=self.r.api_base,
                             default_headers=self.r.extra_headers or None,
                             timeout=self.timeout, max_retries=0)

    def complete(self, messages: list, tools: list | None = None, deadline: float | None = None,
                 source: str = "chat", session: str = "") -> Reply:
        """One answer, retried on passing failures; never past `deadline` (time.monotonic())."""
        import openai
        kwargs = dict(self.params, model=self.r.model, messages=messages)
        if tools:
            kwargs["tools"] = tools
        for attempt in range(self.retries + 1):
            try:
                # the raw JSON: building the SDK's pydantic objects would cost ~1 MB for nothing
                raw = self.client.chat.completions.with_raw_response.create(
                    **kwargs, timeout=self._time_left(deadline, self.timeout))
                return _reply(raw.text)
            except (openai.APIConnectionError, openai.APIStatusError) as e:   # timeouts included
                status = getattr(e, "status_code", None)
                if getattr(e, "code", None) == "insufficient_quota":  # no retry; a fallback may have credit
                    raise ProviderDown(f"{self.name} says the account is out of credit (HTTP "
                                       f"{status}): top it up or use another provider.") from None
                if status is not None and status < 500 and status not in _RETRY_STATUS:
                    raise ProviderError(self._refused(status, e)) from None
                reason = f"HTTP {status}" if status else type(e).__name__.replace("API", "")
                self._time_left(deadline, 0)       # the turn's time is up: no more tries
                if attempt == self.retries:
                    raise ProviderDown(f"{self.name} at {self.r.api_base} is not answering "
                                       f"({reason}, {attempt + 1} {'try' if attempt == 0 else 'tries'})") from None
                if (delay := _retry_after(e)) is None:
                    delay = self.backoff * 2 ** attempt * random.uniform(0.8, 1.2)
                delay = self._time_left(deadline, min(delay, 60), need=min(delay, 60))
                log.info("%s: %s; retrying in %.1fs", self.name, reason, delay)    # --logs shows it
                time.sleep(delay)

    def _time_left(self, deadline, cap: float, need: float = 0.0) -> float:
        """`cap` seconds, or what is left of the turn; TurnTimeout when that is not enough."""
        if deadline is None:
            return cap
        left = deadline - time.monotonic()
        if left <= max(need, 0):
            raise TurnTimeout(f"{self.name} did not answer before the turn's deadline")
        return min(cap, left)

    def _refused(self, status, e) -> str:
        detail = _error_text(e)
        if status in (401, 403):
            return (f"{self.name} refused the API key (HTTP {status}): check providers."
                    f"{self.r.spec.name}.api_key. {detail}").strip()
        if status == 404:
            return (f"{self.name} at {self.r.api_base} does not know model {self.r.model!r} (HTTP "
                    f"404): check agents.defaults.model (and the provider's api_base). {detail}").strip()
        return f"{self.name} rejected the request (HTTP {status}): {detail}"


def _reply(body: str) -> Reply:
    try:
        data = json.loads(body)
        choice = data["choices"][0]
        msg = choice["message"]
        calls = [{"id": c["id"], "name": c["function"]["name"],
                  "arguments": _json_text(c["function"].get("arguments") or "{}")}
                 for c in msg.get("tool_calls") or []]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ProviderError(f"the model's answer is not a chat completion: {body[:200]!r}") from None
    return Reply(msg.get("content"), calls, msg.get("reasoning_content") or msg.get("reasoning"),
                 choice.get("finish_reason") or "stop", data.get("usage") or {})


def _json_text(arguments) -> str:
    """Tool arguments as the JSON text the API sends back later; a few servers send an object."""
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def _retry_after(e) -> float | None:
    """The server's wait: Retry-After-Ms, or Retry-After in seconds or as a date; None if none."""
    import email.utils
    headers = getattr(getattr(e, "response", None), "headers", None) or {}
    for name, seconds in (("retry-after-ms", lambda v: float(v) / 1000), ("retry-after", float),
                          ("retry-after", lambda v: email.utils.parsedate_to_datetime(v).timestamp()
                           - time.time())):
        with suppress(ValueError, TypeError, AttributeError):   # junk: the usual back-off
            if headers.get(name):
                return max(0.0, seconds(headers[name]))
    return None


def _error_text(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        body = body.get("error", body)
        if isinstance(body, dict):
            return str(body.get("message", ""))[:300]
    return str(getattr(e, "message", "") or "")[:300]
