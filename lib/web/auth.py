"""Who may use the page and the API (SPEC §11): the owner's token, sent as a bearer header or
as the cookie the page gets after one login; other Origins refused for state changes; wrong
tokens rate-limited. Also writes a new token into the config file (onboard, first start)."""
import collections
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import stat
import threading
import time
from pathlib import Path

from lib import maildir

log = logging.getLogger(__name__)
COOKIE_DAYS = 30


class HttpError(Exception):
    """An answer other than 200, in the OpenAI error shape; `code` is the machine-readable kind."""

    def __init__(self, status: int, message: str, code: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or {}


def bad_request(message: str, status: int = 400) -> HttpError:
    return HttpError(status, message, "invalid_request_error")


def loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Guard:
    """The checks every request but /health, the token prompt and its static files passes."""

    def __init__(self, token, port: int):
        """`token()` is the token now (a config reload may change it)."""
        self._token = token
        self.cookie_name = f"nanoclaw_{port}"       # two gateways on one host keep theirs apart
        self.limiter = Limiter()

    @property
    def token(self) -> str:
        return self._token()

    def cookie_value(self) -> str:
        """What the cookie holds: derived from the token, so a new token ends every login."""
        return hmac.new(self.token.encode(), b"nanoclaw page", hashlib.sha256).hexdigest()

    def login_cookie(self, given: str, client: str) -> str:
        """The Set-Cookie header for a right token; HttpError (401, 429) for a wrong one."""
        self._compare(given, client)
        return (f"{self.cookie_name}={self.cookie_value()}; Path=/; HttpOnly; SameSite=Strict; "
                f"Max-Age={COOKIE_DAYS * 86400}")

    def logout_cookie(self) -> str:
        return f"{self.cookie_name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"

    def check(self, headers, client: str, changes_state: bool):
        """Raise HttpError unless the request carries the token (or the login cookie) and, for a
        state change, comes from no Origin or from the page's own."""
        if changes_state:
            check_origin(headers)
        bearer = headers.get("Authorization", "")
        if bearer[:7].lower() == "bearer ":
            return self._compare(bearer[7:].strip(), client)
        cookie = _cookies(headers.get("Cookie", "")).get(self.cookie_name)
        if cookie is not None:
            return self._compare(cookie, client, self.cookie_value())
        raise HttpError(401, "a token is needed: send 'Authorization: Bearer TOKEN' (the "
                        "gateway.token of config.yaml), or log in on the page", "invalid_api_key")

    def _compare(self, given: str, client: str, expected: str | None = None):
        if not self.token:
            raise HttpError(401, "this gateway has no token yet (gateway.token): run `python "
                            "nanoclaw.py onboard` to make one, then restart it", "no_token")
        wait = self.limiter.blocked(client)
        if wait:
            raise HttpError(429, f"too many wrong tokens; try again in {wait:.0f} s",
                            "rate_limit_exceeded", {"Retry-After": str(int(wait) + 1)})
        expected = self.token if expected is None else expected
        if not hmac.compare_digest(given.encode(), expected.encode()):
            self.limiter.failed(client)
            raise HttpError(401, "wrong token (see gateway.token in config.yaml)", "invalid_api_key")


def check_origin(headers):
    """HttpError 403 for a request a page of another origin made (a browser says which in
    Origin); none (an API client) or the page's own is let through."""
    origin, host = headers.get("Origin"), headers.get("Host", "")
    if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
        raise HttpError(403, f"requests from another origin ({origin[:100]}) may not change "
                        "anything here", "forbidden_origin")


class Limiter:
    """Wrong tokens: at most `per_client` a minute from one address and `total` from all; past
    that every try is refused unread until the minute has passed."""

    def __init__(self, per_client: int = 5, total: int = 30, window: float = 60.0):
        self.per_client, self.total, self.window = per_client, total, window
        self._lock, self._seen = threading.Lock(), {}

    def blocked(self, client: str) -> float:
        """Seconds until `client` may try again (0: now)."""
        now = time.monotonic()
        with self._lock:
            waits = [self._wait(key, limit, now) for key, limit in
                     ((client, self.per_client), ("*", self.total))]
        return max(waits)

    def failed(self, client: str):
        now = time.monotonic()
        with self._lock:
            if len(self._seen) > 1000:      # many addresses: forget the ones that went quiet
                self._seen = {k: q for k, q in self._seen.items() if q and q[-1] > now - self.window}
            for key in (client, "*"):
                self._seen.setdefault(key, collections.deque(maxlen=self.total)).append(now)

    def _wait(self, key, limit, now) -> float:
        times = self._seen.get(key)
        if not times or len(times) < limit:
            return 0.0
        return max(0.0, times[-limit] + self.window - now)


def _cookies(header: str) -> dict:
    out = {}
    for part in header.split(";"):
        name, eq, value = part.strip().partition("=")
        if eq:
            out.setdefault(name, value)
    return out


# --- the token in the config file ---

def ensure_token(config) -> str:
    """gateway.token, or a new one written into the config file (keeping its comments, layout
    and file mode); "" when there is no file or it cannot be written (the log says why)."""
    if config.gateway.token:
        return config.gateway.token
    path = Path(config.path)
    if not path.exists():
        return ""
    token = secrets.token_urlsafe(32)
    try:
        why = write_token(path, token)
    except (OSError, ValueError) as e:
        why = str(e)
    if why:
        log.warning("no gateway.token, and none could be written into %s: %s", path, why)
        return ""
    log.info("wrote a new gateway.token into %s (the web page and the API need it)", path)
    return token


def write_token(path: Path, token: str) -> str:
    """Set gateway.token in the file at `path`; "" when done, else why not."""
    import yaml
    path = Path(path).resolve()             # a config linked from elsewhere stays a link
    text = path.read_text(encoding="utf-8")
    try:
        new = _with_token(text, token)
        done = new is not None and _token_in(yaml.safe_load(new)) == token
    except yaml.YAMLError as e:
        return f"not valid YAML ({getattr(e, 'problem', e)})"
    if not done:
        return "gateway.token is written in a way this cannot edit (a ${VAR} that is empty?); set it by hand"
    maildir.atomic_write(path, new, stat.S_IMODE(os.stat(path).st_mode))
    return ""


def _with_token(text: str, token: str) -> str | None:
    import yaml
    value = json.dumps(token)
    root = yaml.compose(text)
    if not isinstance(root, yaml.MappingNode) and root is not None:
        return None
    found = _child(root, "gateway") if root else None
    if found is None and root is not None and root.flow_style:     # JSON
        return _insert(text, root, "gateway", f'{{"token": {value}}}')
    if found is None:                   # at the end: an empty file, or no gateway section
        return text + ("\n" if text and not text.endswith("\n") else "") + \
            f"gateway:\n  token: {value}\n"
    key, node = found
    if isinstance(node, yaml.ScalarNode) and node.value in ("", "~", "null") and not node.style:
        colon = text.index(":", key.end_mark.index) + 1     # `gateway:` with nothing after it
        return text[:colon] + f' {{"token": {value}}}' + text[colon:]
    if not isinstance(node, yaml.MappingNode):
        return None
    found = _child(node, "token")
    if found is None:
        return _insert(text, node, "token", value) if node.value else \
            _replace(text, node, f'{{"token": {value}}}')
    if found[1].value:                      # ${VAR} that expands to nothing: the owner's choice
        return None
    return _replace(text, found[1], value)


def _child(mapping, name):
    from lib.fields import snake
    return next(((k, v) for k, v in mapping.value if snake(str(k.value)) == name), None)


def _insert(text: str, mapping, key: str, value: str) -> str:
    """`key: value` as the mapping's first entry (quoted and with a comma in {…}, as JSON wants)."""
    first = mapping.value[0][0].start_mark
    entry, glue = (f'"{key}": {value}', ", ") if mapping.flow_style else \
        (f"{key}: {value}", "\n" + " " * first.column)
    return text[:first.index] + entry + glue + text[first.index:]


def _replace(text: str, node, new: str) -> str:
    return text[:node.start_mark.index] + new + text[node.end_mark.index:]


def _token_in(data) -> str | None:
    from lib.fields import snake
    gateway = next((v for k, v in (data or {}).items() if snake(str(k)) == "gateway"), None)
    return gateway.get("token") if isinstance(gateway, dict) else None
