"""web_search against a fake Brave API and web_fetch against a fake site, all on 127.0.0.1.

The fake sites live on this machine, which web_fetch refuses (SPEC §8) unless
tools.web.allow_hosts lists it: make_ctx allows 127.0.0.1 unless a test says otherwise."""

import inspect
import re
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lib.errors import ToolError
from lib.tools import Context, web
from lib.tools.web import web_fetch, web_search
from tests.fakes.brave_server import FakeBrave, FakeDrip, FakeSite


def make_ctx(api_key="test-key", api_base="http://127.0.0.1:9/unused", max_results=5, max_chars=50000,
             allow_hosts=("127.0.0.1",), timeout=30, deadline=float("inf")):
    search = SimpleNamespace(api_key=api_key, api_base=api_base, max_results=max_results)
    fetch = SimpleNamespace(max_chars=max_chars, timeout=timeout)
    web = SimpleNamespace(search=search, fetch=fetch, allow_hosts=list(allow_hosts))
    config = SimpleNamespace(tools=SimpleNamespace(web=web))
    return Context(config=config, workspace=Path("."), deadline=deadline)


@pytest.fixture(autouse=True)
def no_proxy_no_key(monkeypatch):
    for var in ("http_proxy", "https_proxy", "all_proxy", "BRAVE_API_KEY"):
        monkeypatch.delenv(var.upper(), raising=False)
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def brave():
    with FakeBrave(api_key="test-key") as fake:
        yield fake


@pytest.fixture
def site():
    with FakeSite() as fake:
        yield fake


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- registry conventions ---

def test_tools_list_and_docstrings():
    assert web.TOOLS == [web_search, web_fetch]
    for fn in web.TOOLS:
        doc = inspect.getdoc(fn)
        assert doc.split("\n\n")[0].strip() and "Args:" in doc
        for name in list(inspect.signature(fn).parameters)[1:]:
            assert f"    {name}: " in doc
    from lib.tools import schema
    params = schema(web_search)["function"]["parameters"]
    assert params["required"] == ["query"] and params["properties"]["count"]["type"] == "integer"
    assert schema(web_fetch)["function"]["parameters"]["required"] == ["url"]


# --- web_search ---

def test_search_ok(brave):
    out = web_search(make_ctx(api_base=brave.url), "raspberry pi")
    lines = out.splitlines()
    assert lines[:3] == ["1. Result 1 about raspberry pi", "   https://example.com/1",
                         "   Snippet 1 mentioning raspberry pi."]
    assert len(lines) == 15 and lines[12] == "5. Result 5 about raspberry pi"
    path, query, headers = brave.requests[-1]
    assert path == "/res/v1/web/search" and query == {"q": "raspberry pi", "count": "5"}
    assert headers["X-Subscription-Token"] == "test-key" and headers["Accept"] == "application/json"


def test_search_count_clamped_and_default(brave):
    web_search(make_ctx(api_base=brave.url), "x", count=50)
    assert brave.requests[-1][1]["count"] == "10"
    for count in (-2, None):
        web_search(make_ctx(api_base=brave.url), "x", count=count)
        assert brave.requests[-1][1]["count"] == "5"
    out = web_search(make_ctx(api_base=brave.url, max_results=3), "x")
    assert brave.requests[-1][1]["count"] == "3" and out.count("https://example.com/") == 3
    web_search(make_ctx(api_base=brave.url, max_results=99), "x")
    assert brave.requests[-1][1]["count"] == "10"
    out = web_search(make_ctx(api_base=brave.url), "x", count=1)
    assert out.startswith("1. ") and "2. " not in out


def test_search_missing_key(brave):
    with pytest.raises(ToolError) as e:
        web_search(make_ctx(api_key="", api_base=brave.url), "x")
    assert "tools.web.search.api_key" in str(e.value) and "BRAVE_API_KEY" in str(e.value)
    assert brave.requests == []


def test_search_key_from_environment(brave, monkeypatch):
    monkeypatch.setenv("BRAVE_API_KEY", "test-key")
    assert web_search(make_ctx(api_key="", api_base=brave.url), "x").startswith("1. Result 1 about x")


def test_search_bad_key(brave):
    with pytest.raises(ToolError) as e:
        web_search(make_ctx(api_key="wrong", api_base=brave.url), "x")
    msg = str(e.value)
    assert "401" in msg and "tools.web.search.api_key" in msg and "invalid" in msg and "\n" not in msg


def test_search_rate_limited(brave):
    brave.script(429)
    with pytest.raises(ToolError) as e:
        web_search(make_ctx(api_base=brave.url), "x")
    assert "rate limit" in str(e.value) and "429" in str(e.value)
    assert web_search(make_ctx(api_base=brave.url), "x").startswith("1. ")  # next one is fine


def test_search_server_error(brave):
    brave.script(503)
    with pytest.raises(ToolError, match="unavailable .*503"):
        web_search(make_ctx(api_base=brave.url), "x")


def test_search_answer_not_json():
    with FakeSite() as site:
        site.page("/search", "<html>captive portal</html>")
        with pytest.raises(ToolError, match="Brave Search: .*JSONDecodeError"):
            web_search(make_ctx(api_base=site.url_for("/search")), "x")


def test_search_no_results():
    with FakeBrave(api_key="test-key", results=[]) as brave:
        assert web_search(make_ctx(api_base=brave.url), "zzqx") == "No results for: zzqx"


def test_search_unreachable():
    with pytest.raises(ToolError, match="could not get an answer from Brave Search: ConnectionError"):
        web_search(make_ctx(api_base=f"http://127.0.0.1:{closed_port()}/res/v1/web/search"), "x")


# --- web_fetch: content ---

PAGE = """<!doctype html>
<html><head><title>My  Page &amp; Co</title>
<meta charset="utf-8"><style>body { color: red }</style>
<script>var secret = "do not show";</script></head>
<body>
<noscript>Enable JavaScript</noscript>
<svg><title>icon title</title><path d="M0"/></svg>
<h1>Main   heading</h1>
<p>First paragraph with a <a href="/docs/intro.html">relative link</a> and
   <a href="https://other.example/x">an absolute one</a>.</p>
<h2>Section</h2>
<ul><li>one</li><li>two <b>bold</b></li></ul>
<pre>  indented
    code</pre>
<script>alert("also hidden")</script>
<p>Last&nbsp;words</p>
</body></html>"""


def test_fetch_html_to_text(site):
    site.page("/page", PAGE)
    url = site.url_for("/page")
    out = web_fetch(make_ctx(), url)
    head, body = out.split("\n\n", 1)
    assert head == f"URL: {url}\nTitle: My Page & Co"
    assert body.startswith("# Main heading\n")
    assert f"relative link ({site.url_for('/docs/intro.html')})" in body
    assert "an absolute one (https://other.example/x)." in body
    assert "\n## Section\n" in body
    assert "- one\n- two bold\n" in body
    assert "  indented\n    code" in body
    assert "Last words" in body  # &nbsp; collapses like any space
    for hidden in ("secret", "also hidden", "color", "Enable JavaScript", "icon title"):
        assert hidden not in body
    assert "\n\n\n" not in body


def test_fetch_json_pretty(site):
    site.json("/api", {"name": "pi", "tags": ["a", "b"]})
    out = web_fetch(make_ctx(), site.url_for("/api"))
    pretty = '{\n  "name": "pi",\n  "tags": [\n    "a",\n    "b"\n  ]\n}'
    assert out == f"URL: {site.url_for('/api')}\n\n{pretty}"


def test_fetch_text_and_charset(site):
    site.raw("/plain", "  keep   as is\n".encode(), "text/plain")
    assert web_fetch(make_ctx(), site.url_for("/plain")).endswith("\n\n  keep   as is\n")
    site.raw("/latin", b"caf\xe9", "text/plain; charset=ISO-8859-1")
    assert web_fetch(make_ctx(), site.url_for("/latin")).endswith("café")
    site.raw("/broken", b"caf\xe9", "text/plain")
    assert web_fetch(make_ctx(), site.url_for("/broken")).endswith("caf\ufffd")


def test_fetch_binary_refused(site):
    site.raw("/img", b"\x89PNG\r\n\x1a\n" + bytes(100), "image/png")
    with pytest.raises(ToolError, match="image/png"):
        web_fetch(make_ctx(), site.url_for("/img"))
    site.raw("/blob", bytes(100), None)
    with pytest.raises(ToolError, match="binary"):
        web_fetch(make_ctx(), site.url_for("/blob"))


def test_fetch_http_error(site):
    with pytest.raises(ToolError, match="HTTP 404"):
        web_fetch(make_ctx(), site.url_for("/missing"))


def test_fetch_connection_refused():
    with pytest.raises(ToolError, match="could not fetch"):
        web_fetch(make_ctx(), f"http://127.0.0.1:{closed_port()}/")


# --- web_fetch: limits ---

def test_fetch_size_cap(site):
    site.raw("/big", b"a" * (5 * 2**20), "text/plain")
    out = web_fetch(make_ctx(), site.url_for("/big"), max_chars=10**8)
    assert out.split("\n\n")[1] == "a" * web.MAX_BODY
    assert out.endswith("[the page is larger than 2 MB; only the first part was read]")


def test_fetch_truncation_note_and_max_chars(site):
    site.raw("/long", b"x" * 1000, "text/plain")
    out = web_fetch(make_ctx(), site.url_for("/long"), max_chars=100)
    assert out.endswith("\n\n" + "x" * 100 + "\n\n[truncated: 900 more characters]")
    out = web_fetch(make_ctx(max_chars=250), site.url_for("/long"))
    assert "x" * 250 + "\n\n[truncated: 750 more characters]" in out
    assert "truncated" not in web_fetch(make_ctx(), site.url_for("/long"))


# --- web_fetch: redirects and address checks ---

def test_fetch_follows_redirects(site):
    site.redirect("/old", "/mid", 301)
    site.redirect("/mid", site.url_for("/new"), 307)
    site.page("/new", "<title>New</title><p>moved here</p>")
    out = web_fetch(make_ctx(), site.url_for("/old"))
    assert out.startswith(f"URL: {site.url_for('/new')}\nTitle: New\n\nmoved here")
    assert [r[0] for r in site.requests] == ["/old", "/mid", "/new"]


def test_fetch_too_many_redirects(site):
    for i in range(10):
        site.redirect(f"/r{i}", f"/r{i + 1}")
    with pytest.raises(ToolError, match="too many redirects"):
        web_fetch(make_ctx(), site.url_for("/r0"))
    assert len(site.requests) == 6


def test_fetch_redirect_to_metadata_refused(site):
    site.redirect("/go", "http://169.254.169.254/latest/meta-data/")
    with pytest.raises(ToolError, match="169.254.169.254 is a link-local address"):
        web_fetch(make_ctx(), site.url_for("/go"))


@pytest.fixture
def no_connect(monkeypatch):
    """Any attempt to connect anywhere fails the test (the guard must refuse before connecting)."""
    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail(f"connected to {a[1:]}"))


@pytest.mark.parametrize("url", [
    "http://169.254.1.1/", "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]:8080/",
    "http://[::ffff:169.254.169.254]/", "http://100.100.100.200/", "http://[fd00:ec2::254]/",
    "http://10.0.0.1/", "http://192.168.1.1:8080/", "http://172.16.0.1/", "http://100.64.0.1/",
    "http://224.0.0.1/", "http://[ff02::1]/", "http://[fec0::1]/", "http://[64:ff9b::a00:1]/",
    "http://[64:ff9b::127.0.0.1]/",
    "http://[2002:c0a8:101::1]/", "http://255.255.255.255/", "http://240.0.0.1/",
])
def test_fetch_owner_network_refused_before_connecting(url, no_connect):
    with pytest.raises(ToolError, match="refusing .* tools.web.allow_hosts"):
        web_fetch(make_ctx(allow_hosts=()), url)


def test_fetch_refuses_if_any_address_is_link_local(monkeypatch, no_connect):
    def fake_getaddrinfo(host, *args, **kwargs):
        assert host == "mixed.example"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", 443)),
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1%eth0", 443, 0, 2))]
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    with pytest.raises(ToolError, match="mixed.example \\(fe80::1\\) is a link-local address"):
        web_fetch(make_ctx(), "https://mixed.example/")


@pytest.mark.parametrize("host", [
    "127.0.0.1", "0x7f000001", "2130706433", "0", "0.0.0.0", "0177.0.0.1", "127.1", "0x7f.1",
    "localhost", "LocalHost.", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::]",
    "[0:0:0:0:0:ffff:127.0.0.1]",
])
def test_fetch_refuses_every_spelling_of_this_machine(site, host):
    """Each spelling reaches the fake site on 127.0.0.1 (or nothing, for the IPv6 ones), and none
    is let through when allow_hosts is empty; the error says why and what to change."""
    site.page("/", "<p>secret</p>")
    url = f"http://{host}:{site.bound_port}/"
    with pytest.raises(ToolError) as e:
        web_fetch(make_ctx(allow_hosts=()), url)
    assert str(e.value).startswith(f"refusing {url}: ") and "tools.web.allow_hosts" in str(e.value)
    assert any(kind in str(e.value) for kind in ("loopback", "unspecified", "reserved"))
    assert site.requests == []


def test_fetch_redirect_to_another_local_port_refused(site):
    """A redirect is checked like the first URL: the allowed port does not open the others."""
    with FakeSite() as other:
        other.page("/admin", "<p>router admin</p>")
        site.redirect("/go", other.url_for("/admin"))
        with pytest.raises(ToolError, match=f"refusing {other.url_for('/admin')}: 127.0.0.1 is a loopback"):
            web_fetch(make_ctx(allow_hosts=[f"127.0.0.1:{site.bound_port}"]), site.url_for("/go"))
        assert [r[0] for r in site.requests] == ["/go"] and other.requests == []


def test_allow_hosts_by_name_port_and_cidr(site):
    site.page("/", "<p>home server</p>")
    port = site.bound_port
    for allow in (["localhost"], ["LOCALHOST."], [f"localhost:{port}"]):
        assert web_fetch(make_ctx(allow_hosts=allow), f"http://localhost:{port}/").endswith("home server")
    for allow in (["127.0.0.1"], [f"127.0.0.1:{port}"], ["127.0.0.0/8"], ["10.0.0.0/8", "127.0.0.1/32"]):
        assert web_fetch(make_ctx(allow_hosts=allow), f"http://127.0.0.1:{port}/").endswith("home server")
    assert web_fetch(make_ctx(allow_hosts=["127.0.0.1"]), f"http://0x7f000001:{port}/").endswith("server")
    for allow in ([f"127.0.0.1:{port + 1}"], [f"localhost:{port + 1}"], ["10.0.0.0/8"], ["otherhost"],
                  ["127.0.0.2"], ["::1"]):
        with pytest.raises(ToolError, match="tools.web.allow_hosts"):
            web_fetch(make_ctx(allow_hosts=allow), f"http://127.0.0.1:{port}/")
    assert len(site.requests) == 8


def test_fetch_connects_to_the_address_it_checked(site, monkeypatch):
    """No second DNS lookup: a resolver that answers 127.0.0.1 (allowed) first and a forbidden
    address afterwards (DNS rebinding) cannot move the connection. The resolver is asked once,
    the request reaches the fake site, and it carries the URL's host name."""
    answers = []

    def rebinding(host, port, *args, **kwargs):
        ip = "127.0.0.1" if not answers else "169.254.169.254"
        answers.append(ip)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]
    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    site.page("/", "<p>pinned</p>")
    url = f"http://rebind.example:{site.bound_port}/"
    assert web_fetch(make_ctx(allow_hosts=["127.0.0.1"], timeout=2), url).endswith("pinned")
    assert answers == ["127.0.0.1"]
    assert site.requests[0][2]["Host"] == f"rebind.example:{site.bound_port}"


def test_fetch_loopback_needs_allow_hosts(site):
    site.page("/", "<p>hello</p>")
    url = site.url_for("/").replace("127.0.0.1", "localhost")
    with pytest.raises(ToolError) as e:
        web_fetch(make_ctx(allow_hosts=()), url)
    assert re.match(r"refusing .*: localhost \((127.0.0.1|::1)\) is a loopback address.*allow_hosts",
                    str(e.value))
    assert web_fetch(make_ctx(allow_hosts=["localhost"]), url).endswith("hello")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "javascript:alert(1)", "/etc/x"])
def test_fetch_other_schemes_refused(url):
    with pytest.raises(ToolError, match="only http and https"):
        web_fetch(make_ctx(), url)


# --- web_fetch: one deadline for the whole fetch ---

DRIPS = {"body": (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n", b"x"),
         "headers": (b"HTTP/1.1 200 OK\r\n", b"X-Drip: 1\r\n")}


@pytest.mark.parametrize("what", DRIPS)
def test_fetch_dripping_server_cut_off_at_the_deadline(what):
    """A byte (or a header line) every 0.3 s: every read succeeds, only the whole fetch's
    deadline (tools.web.fetch.timeout: 2) stops it; the server would go on for 12 s."""
    with FakeDrip(*DRIPS[what], every=0.3, count=40) as drip:
        start = time.monotonic()
        with pytest.raises(ToolError) as e:
            web_fetch(make_ctx(timeout=2), drip.base + "/slow")
        assert time.monotonic() - start < 10
    assert str(e.value) == f"gave up on {drip.base}/slow after 2 s (tools.web.fetch.timeout)"


def test_fetch_bounded_by_the_turn_deadline():
    with FakeDrip(*DRIPS["body"], every=0.3, count=40) as drip:
        start = time.monotonic()
        with pytest.raises(ToolError, match=f"gave up on {drip.base}/ after .* s .*turn_timeout_s"):
            web_fetch(make_ctx(timeout=30, deadline=time.monotonic() + 1), drip.base + "/")
        assert time.monotonic() - start < 10
    with pytest.raises(ToolError, match="turn ran out of time"):
        web_fetch(make_ctx(deadline=time.monotonic() - 1), drip.base + "/")


def test_fetch_slow_resolver_bounded(monkeypatch):
    """The name lookup is inside the deadline too (a resolver that never answers here)."""
    release = threading.Event()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: release.wait(30) and [])
    start = time.monotonic()
    try:
        with pytest.raises(ToolError, match="gave up on http://slow.example/ after 1 s"):
            web_fetch(make_ctx(timeout=1), "http://slow.example/")
        assert time.monotonic() - start < 10
    finally:
        release.set()
