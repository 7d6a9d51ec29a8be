"""Real mail servers on 127.0.0.1 for the email channel's tests.

* `Dovecot`: Debian's dovecot-imapd started from a private config in a temp dir (passwd-file
  login, static userdb, Maildir, IMAPS and IMAP+STARTTLS listeners on free ports, log to a file).
  Incoming mail is simulated with IMAP APPEND; `flags()` reads what the channel set.
* `SmtpRecorder`: aiosmtpd in a thread of the test process, STARTTLS (or TLS from the start)
  with the same certificate,
  recording each message; `fail_next(code, text, n)` answers DATA with an error n times.
* `make_cert(folder)`: a throwaway CA and a server certificate for 127.0.0.1 / localhost, made
  with the openssl command line; tests give the CA file to the channel (`ca_file`), so TLS is
  verified as in production instead of being switched off.
"""
import grp
import imaplib
import logging
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from email import message_from_bytes, policy
from pathlib import Path

DOVECOT = shutil.which("dovecot") or next(
    (p for p in ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot") if os.path.exists(p)), None)
USER, PASSWORD = "assistant@example.com", "mail-secret"


def unavailable() -> str:
    """Why the dovecot tests cannot run here ('' when they can)."""
    if not DOVECOT:
        return "dovecot is not installed (apt-get install dovecot-imapd; .ci/run does it)"
    if not shutil.which("openssl"):
        return "the openssl command is missing"
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_cert(folder: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, cert.pem, key.pem): a CA and a server certificate it signed."""
    folder = Path(folder)
    ca, ca_key, cert, key = (folder / n for n in ("ca.pem", "ca.key", "cert.pem", "key.pem"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    run("req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=nanoclaw test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    csr = folder / "cert.csr"
    run("req", "-new", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
        "-days", "2", "-extfile", ext)
    for p in (ca, cert, key):
        p.chmod(0o644)
    return ca, cert, key


CONFIG = """\
base_dir = {d}/run
state_dir = {d}/state
instance_name = nanoclaw-test-{imaps}
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{d}/cert.pem
ssl_key = <{d}/key.pem
auth_mechanisms = plain login
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
first_valid_uid = {uid}
first_valid_gid = {gid}
mail_location = maildir:{d}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/mail/%u
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
    ssl = yes
  }}
}}
"""


class Dovecot:
    """A private dovecot on 127.0.0.1. Root runs the mail processes as `nobody` (dovecot never
    lets uid 0 read mail); another user runs everything as itself."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="nanoclaw-dovecot-"))
        self.dir.chmod(0o755)           # the mail user must reach its Maildir below
        self.ca, _, _ = make_cert(self.dir)
        self.imap_port, self.imaps_port = free_port(), free_port()
        user = pwd.getpwnam("nobody") if os.getuid() == 0 else pwd.getpwuid(os.getuid())
        (self.dir / "mail").mkdir()
        self._owner = (user.pw_uid, user.pw_gid)
        os.chown(self.dir / "mail", *self._owner)
        (self.dir / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
        (self.dir / "passwd").chmod(0o644)
        self.conf = self.dir / "dovecot.conf"
        self.conf.write_text(CONFIG.format(d=self.dir, imap=self.imap_port, imaps=self.imaps_port,
                                           user=user.pw_name, group=grp.getgrgid(user.pw_gid).gr_name,
                                           uid=user.pw_uid, gid=user.pw_gid))
        self.proc = None

    def start(self, timeout=10):
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dovecot exited: {self.proc.stderr.read().decode()}\n{self.logs()}")
            try:
                with self.connect():
                    return self
            except (OSError, imaplib.IMAP4.error):
                time.sleep(0.05)
        raise RuntimeError("dovecot did not answer on 127.0.0.1:%d\n%s" % (self.imaps_port, self.logs()))

    def stop(self):
        """Stop the server and every process it started, so every connection drops (dovecot's
        imap processes outlive their master); start() brings it back on the same ports."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)      # its children, in its own group
            except ProcessLookupError:
                pass
            self.proc.stderr.close()

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def logs(self) -> str:
        path = self.dir / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def connect(self) -> imaplib.IMAP4_SSL:
        imap = imaplib.IMAP4_SSL("127.0.0.1", self.imaps_port, ssl_context=self.context(), timeout=5)
        imap.login(USER, PASSWORD)
        imap.select("INBOX")
        return imap

    def append(self, raw: bytes | str, flags: str = "") -> int:
        """Put a message into INBOX as if it had arrived; returns its UID."""
        raw = raw.encode() if isinstance(raw, str) else raw
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        with self.connect() as imap:
            typ, data = imap.append("INBOX", f"({flags})" if flags else None, None, raw)
            assert typ == "OK", data
            # APPENDUID <validity> <uid> (RFC 4315), which dovecot always sends
            return int(data[-1].decode().split("APPENDUID", 1)[1].split()[1].rstrip("]"))

    def drop_in(self, raw: bytes | str):
        """Deliver straight into the Maildir, as the mail system does while IMAP is down."""
        raw = raw.encode() if isinstance(raw, str) else raw
        box = self.dir / "mail" / USER
        name = f"{time.time_ns()}.P{os.getpid()}.nanoclaw-test"
        (box / "tmp" / name).write_bytes(raw)
        os.chown(box / "tmp" / name, *self._owner)
        os.rename(box / "tmp" / name, box / "new" / name)

    def flags(self) -> dict[int, set[str]]:
        """UID -> flags of every message in INBOX."""
        out = {}
        with self.connect() as imap:
            typ, data = imap.uid("FETCH", "1:*", "(FLAGS)")
            for line in data:
                text = line.decode() if isinstance(line, bytes) else ""
                if "UID " not in text:     # a flag change another session made, told unasked
                    continue
                uid = int(text.split("UID ", 1)[1].split()[0].rstrip(")"))
                out[uid] = set(text.split("FLAGS (", 1)[1].split(")", 1)[0].split())
        return out

    def logins(self) -> int:
        return self.logs().count("Login: user=<")


class SmtpRecorder:
    """aiosmtpd on 127.0.0.1 with STARTTLS and AUTH; `messages` holds each received mail
    (parsed) with its envelope. `fail_next(421, "Try later", 1)` answers the next DATA with 421."""

    def __init__(self, cert: Path, key: Path, require_tls: bool = True, implicit_tls: bool = False):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult
        self.messages, self.envelopes, self.failures, self.attempts = [], [], [], 0
        self._lock = threading.Lock()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(cert), str(key))
        self.port = free_port()

        def auth(server, session, envelope, mechanism, data):
            ok = data.login == USER.encode() and data.password == PASSWORD.encode()
            return AuthResult(success=ok)
        logging.getLogger("mail.log").setLevel(logging.ERROR)   # aiosmtpd's own deprecation notes
        tls = {"ssl_context": ctx} if implicit_tls else {"tls_context": ctx, "require_starttls": require_tls}
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, authenticator=auth,
                                     auth_require_tls=require_tls and not implicit_tls,   # it
                                     server_hostname="localhost", **tls)     # counts STARTTLS only

    def fail_next(self, code: int, text: str, times: int = 1):
        with self._lock:
            self.failures += [f"{code} {text}"] * times

    async def handle_DATA(self, server, session, envelope):
        with self._lock:
            self.attempts += 1
            if self.failures:
                return self.failures.pop(0)
            self.envelopes.append(envelope)
            self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK queued"

    def start(self):
        self.controller.start()
        return self

    def stop(self):
        self.controller.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
