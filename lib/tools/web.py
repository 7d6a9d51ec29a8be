"""Web tools: search with the Brave Search API, fetch a page as readable text."""

import json
import os
import re
from contextlib import suppress

from lib.errors import ToolError

TIMEOUT = 10            # seconds, for each connect or read of a search
MAX_BODY = 2 * 2**20    # bytes of a page web_fetch reads


def web_search(ctx, query: str, count: int = 0) -> str:
    """Search the web and return titles, URLs and snippets of the top results.

    Args:
        query: What to search for.
        count: How many results to return, 1 to 10 (default: the configured number, normally 5).
    """
    import html
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
                     + html.unescape(re.sub(r"<[^>]+>", "", item.get("description") or ""))
                     for i, item in enumerate(results[:count], 1))      # re.sub drops <strong>


def _search_error(r) -> str:
    status = f"HTTP {r.status_code}"
    with suppress(Exception):
        status += f": {r.json()['error']['detail']}"
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
    from lib import netguard

    cfg = ctx.config.tools.web
    limit = max_chars if max_chars and max_chars > 0 else cfg.fetch.max_chars
    seconds = ctx.time_left(cfg.fetch.timeout)      # the turn may end sooner
    why = ("tools.web.fetch.timeout" if seconds >= cfg.fetch.timeout
           else "the turn's end, agents.defaults.turn_timeout_s")
    r = netguard.get(url, cfg.allow_hosts, seconds, why, MAX_BODY)
    ctype = r.headers.get("Content-Type", "")
    mime = ctype.split(";")[0].strip().lower()
    charset = re.search(r"charset=[\"']?([\w.:-]+)", ctype, re.I)
    try:
        text = r.body.decode(charset.group(1) if charset else "utf-8", errors="replace")
    except LookupError:
        text = r.body.decode("utf-8", errors="replace")
    if not mime and b"\0" in r.body[:1024]:
        raise ToolError(f"{r.url} looks like binary data; web_fetch only reads web pages and text")
    title = ""
    if mime in ("text/html", "application/xhtml+xml") or (not mime and "<html" in text[:1000].lower()):
        from lib.tools.htmltext import TextExtractor      # only when a page is fetched
        title, text = TextExtractor(r.url).convert(text)
    elif mime == "application/json" or mime.endswith("+json"):
        with suppress(ValueError):      # not JSON after all: show it as it is
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    elif mime and not (mime.startswith("text/") or mime.endswith(("/xml", "+xml", "/javascript"))):
        raise ToolError(f"{r.url} is {mime}; web_fetch only reads web pages and text")
    if len(text) > limit:
        text = f"{text[:limit]}\n\n[truncated: {len(text) - limit} more characters]"
    if r.cut:
        text += f"\n\n[the page is larger than {MAX_BODY // 2**20} MB; only the first part was read]"
    return f"URL: {r.url}\n" + (f"Title: {title}\n" if title else "") + f"\n{text}"


TOOLS = [web_search, web_fetch]
