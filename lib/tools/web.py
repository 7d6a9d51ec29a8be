"""Web tools: search with the Brave Search API, fetch a page as readable text."""

import html
import ipaddress
import json
import os
import re
import socket
import time
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

from lib.errors import ToolError

TIMEOUT, DEADLINE = 10, 30  # seconds: for each connect or read, and for a whole fetch
MAX_BODY, MAX_REDIRECTS = 2 * 2**20, 5
METADATA_HOSTS = {"metadata", "metadata.google.internal"}
METADATA_IPS = {ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")}


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
                     + html.unescape(re.sub(r"<[^>]+>", "", item.get("description") or ""))  # drops <strong>
                     for i, item in enumerate(results[:count], 1))


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
        parser = _TextExtractor(r.url)
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
    for info in infos:  # refuse if ANY address is bad: the connection may use any of them
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        ip = (ip.ipv4_mapped or ip) if ip.version == 6 else ip  # ::ffff:169.254.x.x
        if ip in METADATA_IPS or ip.is_link_local:
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


class _TextExtractor(HTMLParser):
    """HTML to text: '# ' headings, '- ' list items, 'text (href)' links, <pre> kept as it is."""

    SKIP = {"script", "style", "noscript", "svg", "head", "template"}
    LINE, PARA = "\n", "\x01"  # a line break; a blank line (both collapse with their neighbours in text())
    BREAKS = dict.fromkeys("div section article header footer nav main aside ul ol li tr dl dt dd br hr form "
                           "figure figcaption details summary address".split(), LINE) | \
        dict.fromkeys("p pre blockquote table h1 h2 h3 h4 h5 h6".split(), PARA)
    PREFIX = {"li": "- ", "td": " ", "th": " ", **{f"h{n}": "#" * n + " " for n in range(1, 7)}}

    def __init__(self, base: str):
        super().__init__()
        self.base, self.title, self.parts, self.pres, self.skip, self.links = base, "", [], [], [], []
        self.in_title = self.in_pre = False

    def handle_starttag(self, tag, attrs):
        if tag == "body" and "head" in self.skip:
            self.skip.remove("head")  # </head> is optional
        if tag in self.SKIP:
            self.skip.append(tag)
        self.in_title = self.in_title or (tag == "title" and set(self.skip) <= {"head"} and not self.title)
        if self.skip:
            return
        self.parts += [self.BREAKS.get(tag, ""), self.PREFIX.get(tag, "")]
        if tag == "pre":
            self.in_pre = True
            self.pres.append("")
            self.parts.append(f"\0{len(self.pres) - 1}\0")  # put back after whitespace is collapsed
        elif tag == "a":
            self.links.append((dict(attrs).get("href") or "", len(self.parts)))

    def handle_endtag(self, tag):
        if tag in self.skip:
            del self.skip[len(self.skip) - 1 - self.skip[::-1].index(tag):]
        self.in_title = self.in_title and tag != "title"
        if self.skip:
            return
        self.in_pre = self.in_pre and tag != "pre"
        if tag == "a" and self.links:
            href, start = self.links.pop()
            full = urljoin(self.base, href.strip())
            label = "".join(self.parts[start:]).strip()
            if urlsplit(full).scheme in ("http", "https", "mailto") and label != full and href[:1] != "#":
                self.parts.append(f" ({full})")
        self.parts.append(self.BREAKS.get(tag, ""))

    def handle_data(self, data):
        if self.in_title:
            self.title += data
        elif self.in_pre and not self.skip:
            self.pres[-1] += data
        elif not self.skip:
            self.parts.append(re.sub(r"\s+", " ", data))

    def text(self) -> str:
        text = re.sub(r" ?\n[\n ]*", "\n", re.sub(r" +", " ", "".join(self.parts)))
        text = re.sub(r"[\s\x01]*\x01[\s\x01]*", "\n\n", text).strip()
        return re.sub(r"\0(\d+)\0", lambda m: self.pres[int(m.group(1))].strip("\n"), text)


TOOLS = [web_search, web_fetch]
