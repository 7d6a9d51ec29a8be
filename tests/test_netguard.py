"""lib/netguard.py: the address classifier and allow_hosts with literal addresses (nothing is
contacted), and TLS through the pinned address against real servers on 127.0.0.1."""
import ipaddress
import ssl
import time
from http.server import ThreadingHTTPServer

import pytest

from lib import netguard
from lib.errors import ToolError
from tests.fakes.brave_server import FakeDrip, FakeSite

REFUSED = {
    "a loopback": ["127.0.0.1", "127.255.255.254", "::1"],
    "an unspecified": ["0.0.0.0", "::"],
    "a private": ["10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.10"],
    "a CGNAT": ["100.64.0.1", "100.127.255.254"],
    "a link-local": ["169.254.169.254", "fe80::1"],
    "a unique-local": ["fc00::1", "fd12:3456::1", "fd00:ec2::254"],
    "a multicast": ["224.0.0.251", "239.255.255.250", "ff02::1", "ff0e::1"],
}
NOT_PUBLIC = ["0.1.2.3", "198.18.0.1", "192.0.2.1", "240.0.0.1", "255.255.255.255", "2001::1",
              "2001:db8::1", "fec0::1", "::7f00:1", "100::1", "2002:7f00:1::1", "2002:808:808::1"]


@pytest.mark.parametrize("kind,ip", [(k, ip) for k, ips in REFUSED.items() for ip in ips])
def test_refused_addresses(kind, ip):
    assert netguard.refusal(ipaddress.ip_address(ip)).startswith(kind + " ")


@pytest.mark.parametrize("ip", NOT_PUBLIC)
def test_other_non_public_addresses_refused(ip):
    """Reserved, documentation, benchmark, Teredo, 6to4, site-local, IPv4-compatible: Python
    versions name some of them differently ('private', 'reserved'); all are refused."""
    assert netguard.refusal(ipaddress.ip_address(ip))


@pytest.mark.parametrize("ip,why", [
    ("::ffff:127.0.0.1", "a loopback address (IPv4 127.0.0.1 inside IPv6)"),
    ("::ffff:10.0.0.1", "a private address (IPv4 10.0.0.1 inside IPv6)"),
    ("64:ff9b::7f00:1", "a loopback address (IPv4 127.0.0.1 inside IPv6)"),          # NAT64
    ("64:ff9b::a9fe:a9fe", "a link-local address (IPv4 169.254.169.254 inside IPv6)"),
])
def test_ipv4_inside_ipv6_judged_by_the_ipv4(ip, why):
    assert netguard.refusal(ipaddress.ip_address(ip)) == why


@pytest.mark.parametrize("ip", ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111",
                                "2001:4860:4860::8888", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses_pass(ip):
    assert netguard.refusal(ipaddress.ip_address(ip)) == ""


@pytest.mark.parametrize("entries,host,port,ip,ok", [
    (["nas.local"], "nas.local", 8080, "192.168.1.10", True),
    (["Nas.Local."], "nas.local", 80, "192.168.1.10", True),
    (["nas.local:8080"], "nas.local", 8080, "192.168.1.10", True),
    (["nas.local:8080"], "nas.local", 8081, "192.168.1.10", False),
    (["nas.local"], "other.local", 80, "192.168.1.10", False),
    (["192.168.1.10"], "nas.local", 80, "192.168.1.10", True),
    (["192.168.1.10:8080"], "192.168.1.10", 80, "192.168.1.10", False),
    (["192.168.1.0/24"], "192.168.1.99", 443, "192.168.1.99", True),
    (["192.168.1.0/24"], "192.168.2.1", 443, "192.168.2.1", False),
    (["fd00::1"], "fd00::1", 80, "fd00::1", True),
    (["[fd00::1]:8080"], "fd00::1", 8080, "fd00::1", True),
    (["[fd00::1]:8080"], "fd00::1", 80, "fd00::1", False),
    (["[FD00::1]"], "fd00::1", 80, "fd00::1", True),
    (["fd00::/8"], "fd00::5", 80, "fd00::5", True),
    (["192.168.1.10"], "::ffff:192.168.1.10", 80, "::ffff:192.168.1.10", False),   # when in doubt, refuse
    ([], "nas.local", 80, "192.168.1.10", False),
])
def test_allow_hosts_entries(entries, host, port, ip, ok):
    assert netguard.allowed(host, port, ipaddress.ip_address(ip), entries) is ok


def tls_fake(fake, tmp_path, names=None):
    """`fake` (not started yet) serving TLS with a certificate for localhost and 127.0.0.1 from a
    throwaway CA; the SNI names clients send go to `names`. Returns the CA file."""
    from tests.fakes.mailserver import make_cert
    ca, cert, key = make_cert(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: names.append(name) if names is not None else None

    def server(address, handler):
        httpd = ThreadingHTTPServer(address, handler)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        return httpd
    fake.server_class = server
    return ca


def test_https_verifies_the_url_host_name_not_the_address(tmp_path, monkeypatch):
    """TLS to the pinned address still checks the certificate, against the URL's host: the name
    goes out as SNI (Python sends none for an address), and a CA that is not trusted fails."""
    names, site = [], FakeSite()
    ca = tls_fake(site, tmp_path, names)
    with site:
        site.page("/", "<p>over tls</p>")
        url = f"https://localhost:{site.bound_port}/"
        with pytest.raises(ToolError, match="SSLCertVerificationError"):   # the CA is not trusted yet
            netguard.get(url, ["localhost"], 5, "test", 1000)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        page = netguard.get(url, ["localhost"], 5, "test", 1000)
    assert page.body == b"<p>over tls</p>" and page.url == url and not page.cut
    assert names == ["localhost", "localhost"]


def test_https_dripping_server_cut_off_at_the_deadline(tmp_path, monkeypatch):
    """The deadline shuts a TLS socket down too, while the body drips."""
    drip = FakeDrip(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b"x", every=0.2, count=60)
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_fake(drip, tmp_path)))
    with drip:
        url = f"https://localhost:{drip.bound_port}/"
        start = time.monotonic()
        with pytest.raises(ToolError, match=f"gave up on {url} after 1 s \\(the limit\\)"):
            netguard.get(url, ["localhost"], 1, "the limit", 1000)
        assert time.monotonic() - start < 10 and drip.requests == 1
