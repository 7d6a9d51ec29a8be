"""Web tools: search with the Brave Search API, fetch a page as readable text."""

import json
import os
import re
import socket
import time
from urllib.parse import urljoin, urlsplit

from lib.errors import ToolError

TIMEOUT, DEADLINE = 10, 30  # seconds: for each connect or read, and for a whole fetch
MAX_BODY, MAX_REDIRECTS = 2 * 2**20, 5
METADATA_HOSTS = {"metadata", "metadata.google.internal"}
METADATA_IPS = ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")


def web_search(ctx, query: str, count: int = 0) -> str:
    """Search the web and return titles, URLs and snippets of the top results.

    Args:
        query: What to search for.
        count: How many results to return, 1 to 10 (default: the configured number, normally 5).
    """
    import requests

    cfg = ctx.config.tools.web.search
    key = cfg.api_key or os.environ.get("BRAVE_API_KEY", "")
    if not key:
        raise ToolError("web search needs a Brave Search API key: set tools.web.search.api_key "
                        "(or the BRAVE_API_KEY environment variable)")
    count = max(1, min(10, count if count and count > 0 else cfg.max_results))
    try:
        r = requests.get(cfg.api_base, params={"q": query, "count": count}, timeout=TIMEOUT,
                         headers={"X-Subscription-Token": key, "Accept": "application/json"})
        if r.status_code != 200:
            raise ToolError(_search_error(r))
        results = (r.json().get("web") or {}).get("results") or []  # JSONDecodeError is a RequestException
    except requests.RequestException as e:
        raise ToolError(f"could not get an answer from Brave Search: {type(e).__name__}") from None
    if not results:
        return f"No results for: {query}"
    return "\n".join(f"{i}. {item.get('title') or '(no title)'}\n   {item.get('url', '')}\n   "
                     + _unescape(re.sub(r"<[^>]+>", "", item.get("description") or ""))  # drops <strong>
                     for i, item in enumerate(results[:count], 1))


def _unescape(text: str) -> str:
    import html
    return html.unescape(text)


def _search_error(r) -> str:
    try:
        status = f"HTTP {r.status_code}: {r.json()['error']['detail']}"
    except Exception:
        status = f"HTTP {r.status_code}"
    if r.status_code in (401, 403):
        return f"Brave Search refused the API key ({status}); check tools.web.search.api_key"
    if r.status_code == 429:
        return f"Brave Search rate limit reached ({status}); wait a little and try again"
    return f"Brave Search {'is unavailable' if r.status_code >= 500 else 'failed'} ({status})"


def web_fetch(ctx, url: str, max_chars: int = 0) -> str:
    """Fetch a web page (http or https) and return it as readable text.

    Args:
        url: The address to fetch, starting with http:// or https://.
        max_chars: Return at most this many characters of text (default: the configured limit).
    """
    import requests

    limit = max_chars if max_chars and max_chars > 0 else ctx.config.tools.web.fetch.max_chars
    deadline = time.monotonic() + DEADLINE
    try:
        with _open(requests, url, deadline) as r:
            body, cut = _read(r, deadline)
    except requests.Timeout:
        raise ToolError(f"timed out fetching {url}") from None
    except requests.RequestException as e:
        raise ToolError(f"could not fetch {url}: {type(e).__name__}") from None
    ctype = r.headers.get("Content-Type", "")
    mime = ctype.split(";")[0].strip().lower()
    charset = re.search(r"charset=[\"']?([\w.:-]+)", ctype, re.I)
    try:
        text = body.decode(charset.group(1) if charset else "utf-8", errors="replace")
    except LookupError:
        text = body.decode("utf-8", errors="replace")
    if not mime and b"\0" in body[:1024]:
        raise ToolError(f"{r.url} looks like binary data; web_fetch only reads web pages and text")
    parser = None
    if mime in ("text/html", "application/xhtml+xml") or (not mime and "<html" in text[:1000].lower()):
        from lib.tools.htmltext import TextExtractor      # only when a page is fetched
        parser = TextExtractor(r.url)
        parser.feed(text)
        parser.close()
        text = parser.text()
    elif mime == "application/json" or mime.endswith("+json"):
        try:
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError:
            pass  # not JSON after all: show it as it is
    elif mime and not (mime.startswith("text/") or mime.endswith(("/xml", "+xml", "/javascript"))):
        raise ToolError(f"{r.url} is {mime}; web_fetch only reads web pages and text")
    if len(text) > limit:
        text = f"{text[:limit]}\n\n[truncated: {len(text) - limit} more characters]"
    if cut:
        text += f"\n\n[the page is larger than {MAX_BODY // 2**20} MB; only the first part was read]"
    title = " ".join(parser.title.split()) if parser else ""
    return f"URL: {r.url}\n" + (f"Title: {title}\n" if title else "") + f"\n{text}"


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ToolError(f"only http and https URLs can be fetched, not {parts.scheme or 'a path'}: {url}")
    host = (parts.hostname or "").rstrip(".").lower()
    if host in METADATA_HOSTS:
        raise ToolError(f"refusing to fetch {url}: {host} is a cloud metadata service")
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError, ValueError):
        raise ToolError(f"cannot resolve the host in {url}") from None
    import ipaddress
    metadata = {ipaddress.ip_address(a) for a in METADATA_IPS}
    for info in infos:  # refuse if ANY address is bad: the connection may use any of them
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        ip = (ip.ipv4_mapped or ip) if ip.version == 6 else ip  # ::ffff:169.254.x.x
        if ip in metadata or ip.is_link_local:
            raise ToolError(f"refusing to fetch {url}: {host} is {ip}, a link-local or metadata address")


def _time_left(deadline: float, url: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ToolError(f"gave up on {url} after {DEADLINE} s")
    return min(TIMEOUT, left)


def _open(requests, url: str, deadline: float):
    """GET url, following redirects by hand so that every hop is checked before connecting."""
    for _ in range(MAX_REDIRECTS + 1):
        _check_url(url)
        r = requests.get(url, stream=True, allow_redirects=False, timeout=_time_left(deadline, url),
                         headers={"User-Agent": "nanoclaw", "Accept": "text/html,text/*,*/*;q=0.5"})
        if not r.is_redirect:
            if r.status_code >= 400:
                r.close()
                raise ToolError(f"HTTP {r.status_code} {r.reason or ''}".strip() + f" for {url}")
            return r
        r.close()
        url = urljoin(url, r.headers["Location"])
    raise ToolError(f"too many redirects (more than {MAX_REDIRECTS}); the last was to {url}")


def _read(r, deadline: float) -> tuple[bytes, bool]:
    """The first MAX_BODY bytes of the body, and whether there was more."""
    buf = bytearray()
    for chunk in r.iter_content(64 * 1024):
        buf += chunk
        if len(buf) > MAX_BODY:
            return bytes(buf[:MAX_BODY]), True
        _time_left(deadline, r.url)
    return bytes(buf), False


TOOLS = [web_search, web_fetch]
