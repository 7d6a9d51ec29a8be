"""The address guard of SPEC §8: a URL the model or a message chose never reaches the owner's
network. Resolve the host once, check every address, connect to the address checked (no second
DNS lookup), check every redirect again; one wall-clock deadline covers the whole fetch.

    page = get(url, allow_hosts, 30, "tools.web.fetch.timeout", max_body)   # or ToolError
    page.url, page.headers, page.body, page.cut
"""
import http.client
import ipaddress
import socket
import ssl
import string
import threading
import time
from typing import NamedTuple
from urllib.parse import quote, urljoin, urlsplit

from lib.errors import ToolError

MAX_REDIRECTS, REDIRECTS = 5, (301, 302, 303, 307, 308)
HEADERS = {"User-Agent": "nanoclaw", "Accept": "text/html,text/*,*/*;q=0.5",
           "Accept-Encoding": "identity", "Connection": "close"}
CGNAT, ULA = ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("fc00::/7")
NAT64, GLOBAL_V6, SIX_TO_FOUR = (ipaddress.ip_network(n) for n in ("64:ff9b::/96", "2000::/3", "2002::/16"))


class Page(NamedTuple):
    url: str            # after redirects
    headers: http.client.HTTPMessage
    body: bytes         # at most max_body bytes
    cut: bool           # the body was longer


def refusal(ip) -> str:
    """Why the web tools may not reach `ip` ('a loopback address'…), or '' for a public address."""
    v4 = ip.version == 6 and (ip.ipv4_mapped or ip in NAT64 and ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if v4:                         # a translation to IPv4 (::ffff:a.b.c.d, NAT64): the IPv4 address decides
        why = refusal(v4)
        return why and f"{why} (IPv4 {v4} inside IPv6)"
    for kind, bad in [("a loopback", ip.is_loopback), ("an unspecified", ip.is_unspecified),
                      ("a link-local", ip.is_link_local), ("a multicast", ip.is_multicast),
                      ("a CGNAT (100.64.0.0/10)", ip in CGNAT), ("a unique-local (fc00::/7)", ip in ULA),
                      ("a private", ip.is_private)]:
        if bad:
            return f"{kind} address"
    if not ip.is_global or ip.is_reserved or ip.version == 6 and (ip not in GLOBAL_V6 or ip in SIX_TO_FOUR):
        return "a reserved address, not a public one"   # 6to4 and site-local too: when in doubt, refuse
    return ""


def _entry(entry: str):
    """An allow_hosts entry as (network or host name, port or None)."""
    host, port = entry.strip().lower().rstrip("."), None
    name, sep, digits = host.rpartition(":")
    if sep and digits.isdigit() and not _network(host):     # "nas.local:8080", "[fd00::1]:80"
        host, port = name, int(digits)
    host = host.strip("[]")
    return _network(host) or host, port


def _network(text: str):
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def allowed(host: str, port: int, ip, allow_hosts) -> bool:
    """Whether tools.web.allow_hosts lets `host:port` at address `ip` through (by name, name:port,
    address or CIDR)."""
    for what, only_port in map(_entry, allow_hosts):
        if only_port in (None, port) and (what == host if isinstance(what, str) else ip in what):
            return True
    return False


class _Deadline:
    """A timer that shuts the current socket down when time is up, so that no read, however
    slowly the server drips, can outlast it (per-read timeouts cannot: each read succeeds)."""

    def __init__(self, seconds: float):
        self.end, self.expired, self.sock = time.monotonic() + seconds, False, None
        self.lock = threading.Lock()
        self.timer = threading.Timer(seconds, self._expire)
        self.timer.daemon = True
        self.timer.start()

    def _expire(self):
        with self.lock:
            self.expired = True
            if self.sock:      # the plain socket method: works for TLS too, without touching SSL state
                try:
                    socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
                except OSError:
                    pass

    def left(self) -> float:
        if self.expired or self.end <= time.monotonic():
            raise TimeoutError
        return self.end - time.monotonic()

    def use(self, sock):
        """Watch `sock` from now on; the one watched before is closed."""
        with self.lock:
            if self.sock:
                self.sock.close()
            self.sock = sock
        if sock and self.expired:
            raise TimeoutError

    def stop(self):
        self.timer.cancel()
        self.use(None)


def _resolve(host: str, port: int, clock: _Deadline) -> list:
    """getaddrinfo, once, in a thread of its own so that a slow resolver cannot outlast the deadline."""
    box = []

    def run():
        try:
            box.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as e:
            box.append(e)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(clock.left())
    if not box:
        raise TimeoutError
    if isinstance(box[0], Exception):
        raise ToolError(f"cannot resolve the host {host!r}") from None
    return box[0]


def _check(url: str, allow_hosts, clock: _Deadline):
    """The parts of `url` and the addresses it may use; ToolError if any address is refused."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ToolError(f"only http and https URLs can be fetched, not {parts.scheme or 'a path'}: {url}")
    host, port = parts.hostname.rstrip("."), parts.port or (443 if parts.scheme == "https" else 80)
    addrs = _resolve(host, port, clock)
    for *_, sockaddr in addrs:      # refuse if ANY address is bad: the connection may use any of them
        ip = ipaddress.ip_address(sockaddr[0].split("%")[0])
        why = refusal(ip)
        if why and not allowed(host, port, ip, allow_hosts):
            who = host if host == str(ip) else f"{host} ({ip})"
            raise ToolError(f"refusing {url}: {who} is {why}, and the web tools do not reach the owner's "
                            "network unless tools.web.allow_hosts lists it")
    return parts, host, addrs


def _connect(addrs: list, clock: _Deadline) -> socket.socket:
    """A socket connected to the first of `addrs` (getaddrinfo's answer) that answers."""
    for i, (family, kind, proto, _, sockaddr) in enumerate(addrs, 1):
        sock = socket.socket(family, kind, proto)
        clock.use(sock)
        sock.settimeout(clock.left())
        try:
            sock.connect(sockaddr)
            return sock
        except OSError:
            if i == len(addrs):
                raise


def _request(url: str, allow_hosts, clock: _Deadline) -> http.client.HTTPResponse:
    parts, host, addrs = _check(url, allow_hosts, clock)
    sock = _connect(addrs, clock)      # to the addresses checked, not to the name
    if parts.scheme == "https":      # the certificate must name the host of the URL
        sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host,
                                                        do_handshake_on_connect=False)
        clock.use(sock)
        sock.do_handshake()
    conn = http.client.HTTPConnection(host)     # never connects: it speaks HTTP on our socket
    conn.sock = sock
    target = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe=string.punctuation)
    conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
    for name, value in {"Host": parts.netloc.rpartition("@")[2].encode("idna").decode(), **HEADERS}.items():
        conn.putheader(name, value)
    conn.endheaders()
    return conn.getresponse()


def get(url: str, allow_hosts, seconds: float, why: str, max_body: int) -> Page:
    """GET `url` within `seconds` in all (`why` names that limit in the error), following redirects;
    read at most `max_body` bytes of the body."""
    clock, r = _Deadline(seconds), None
    try:
        for _ in range(MAX_REDIRECTS + 1):
            if r is not None:
                r.close()          # the redirect before
            r = _request(url, allow_hosts, clock)
            if r.status in REDIRECTS and r.getheader("Location"):
                url = urljoin(url, r.getheader("Location"))
                continue
            if r.status >= 400:
                raise ToolError(f"HTTP {r.status} {r.reason or ''}".strip() + f" for {url}")
            body = r.read(max_body + 1)
            clock.left()           # a body cut short by the deadline is not the whole page
            return Page(url, r.headers, body[:max_body], len(body) > max_body)
        raise ToolError(f"too many redirects (more than {MAX_REDIRECTS}); the last was to {url}")
    except (OSError, http.client.HTTPException, ValueError) as e:    # TimeoutError is an OSError
        if isinstance(e, TimeoutError) or clock.expired:
            raise ToolError(f"gave up on {url} after {seconds:.3g} s ({why})") from None
        raise ToolError(f"could not fetch {url}: {type(e).__name__}") from None
    finally:
        if r is not None:
            r.close()
        clock.stop()
