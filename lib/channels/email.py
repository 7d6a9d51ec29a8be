"""Email: poll an IMAP mailbox for mail from allowed senders and answer over SMTP.

Nothing touches the mailbox unless channels.email.consent_granted is true. Mail is read with
BODY.PEEK[] (it stays unread), handed to the inbox, and only then marked \\Seen (when mark_seen is
true). Every handled message is also remembered in state/email.json (UIDVALIDITY, the last UID,
recent Message-IDs), so a lost connection, a restart or mark_seen: false never answers a mail twice.
Strangers and spoofed senders are logged, never answered: a reply to a forged address is spam.
"""
import imaplib
import json
import logging
import mimetypes
import os
import re
import smtplib
import ssl
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid, parsedate_to_datetime
from html.parser import HTMLParser

from lib import maildir
from lib.channels import EMAIL_FORGEABLE
from lib.channels.attachments import Attachment, Note, attachment
from lib.channels.base import Channel, SendError

log = logging.getLogger(__name__)
TIMEOUT = 30                                # seconds for every IMAP and SMTP socket operation
MAX_MESSAGE_BYTES = 25 * 1024 * 1024        # larger mail: only its headers are downloaded
MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024     # larger attachments are not saved (the text says so)
REMEMBER = 2000                             # Message-IDs kept in the state file
IMAP_ERRORS = (imaplib.IMAP4.error, OSError, EOFError)
PLAIN = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{}~-]+@[A-Za-z0-9.-]+")    # no quotes, | or spaces


class EmailChannel(Channel):
    name = "email"

    def __init__(self, config, home):
        super().__init__(config, home)
        self.state_path = self.home / "state" / "email.json"
        self._validity = ""
        self._msgids = {}           # outbox id -> Message-ID, the same on every retry

    # --- receiving ---

    def listen(self):
        s = self.settings
        if not s.consent_granted:
            log.warning("email: channels.email.consent_granted is false, so email is off: the "
                        "mailbox is not touched and no mail is sent")
            self.stopping.wait()
            return
        if not (s.smtp_use_ssl or s.smtp_use_tls):
            log.warning("email: smtp_use_ssl and smtp_use_tls are both false: replies and the SMTP "
                        "password travel unencrypted")
        if not s.authserv_id:
            log.warning("email: %s", EMAIL_FORGEABLE)
        attempt = 0
        while not self.stopping.is_set():
            imap = None
            try:
                imap = self._imap()
                attempt = 0
                while True:
                    self._poll(imap)
                    if self.stopping.wait(max(1, self.settings.poll_interval_seconds)):
                        break
                imap.logout()
            except IMAP_ERRORS as e:
                log.warning("email: %s; reconnecting to IMAP %s:%s", e, s.imap_host, s.imap_port)
                if imap:
                    _close(imap)
                if not self.reconnect_wait(attempt):
                    return
                attempt += 1

    def _imap(self) -> imaplib.IMAP4:
        s = self.settings
        if s.imap_use_ssl:
            imap = imaplib.IMAP4_SSL(s.imap_host, s.imap_port, ssl_context=self._tls(), timeout=TIMEOUT)
        else:
            imap = imaplib.IMAP4(s.imap_host, s.imap_port, timeout=TIMEOUT)
        try:
            if not s.imap_use_ssl:
                imap.starttls(ssl_context=self._tls())      # required: no password in clear text
            imap.login(s.imap_username, s.imap_password)
            typ, data = imap.select(f'"{s.imap_mailbox}"')
            if typ != "OK":
                raise imaplib.IMAP4.error(f"cannot open mailbox {s.imap_mailbox}: {data}")
        except Exception:
            _close(imap)
            raise
        self._validity = ((imap.response("UIDVALIDITY")[1] or [b""])[0] or b"").decode()
        log.info("email: reading %s as %s on %s", s.imap_mailbox, s.imap_username, s.imap_host)
        return imap

    def _tls(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if self.settings.ca_file:
            ctx.load_verify_locations(cafile=os.path.expanduser(self.settings.ca_file))
        return ctx

    def _state(self) -> dict:
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("validity") != self._validity:         # a new mailbox: UIDs start over
            state = {"validity": self._validity, "last_uid": 0, "ids": state.get("ids", [])}
        return state

    def _poll(self, imap):
        imap.noop()                 # lets the server report mail that arrived since the last poll
        state = self._state()
        since = state["last_uid"]
        typ, data = imap.uid("SEARCH", None, f"UID {since + 1}:* UNSEEN" if since else "UNSEEN")
        if typ != "OK":
            raise imaplib.IMAP4.error(f"SEARCH failed: {data}")
        for uid in sorted(int(u) for u in (data[0] or b"").split() if int(u) > since):
            if self.stopping.is_set():
                return
            self._take(imap, uid, state)

    def _take(self, imap, uid: int, state: dict):
        """Fetch one mail without marking it read, hand it on, remember it, then mark it read."""
        typ, data = imap.uid("FETCH", str(uid), "(RFC822.SIZE)")
        found = re.search(rb"RFC822\.SIZE (\d+)", b" ".join(x for x in data if isinstance(x, bytes)))
        size = int(found.group(1)) if found else 0
        part = "BODY.PEEK[]" if size <= MAX_MESSAGE_BYTES else "BODY.PEEK[HEADER]"
        typ, data = imap.uid("FETCH", str(uid), f"({part})")
        raw = next((x[1] for x in data or () if isinstance(x, tuple)), None)
        if typ != "OK" or raw is None:
            raise imaplib.IMAP4.error(f"FETCH {uid} failed: {data}")
        msg = message_from_bytes(raw, policy=policy.default)
        # raw: the parsed Message-ID header raises on "<>" and kin, and a stranger's mail must
        # not stop the channel (it would again after every restart)
        key = (_raw(msg, "Message-ID") or [""])[0][:500] or f"uid:{self._validity}:{uid}"
        if key not in state["ids"]:
            try:
                self._handle(msg, size if part != "BODY.PEEK[]" else 0, key)
            except IMAP_ERRORS:
                raise               # the inbox could not be written: the mail stays unread
            except Exception:
                log.exception("email: cannot read mail %s (uid %s); skipped", key, uid)
            state["ids"] = (state["ids"] + [key])[-REMEMBER:]
        state["last_uid"] = uid
        maildir.atomic_write(self.state_path, json.dumps(state))
        if self.settings.mark_seen:
            imap.uid("STORE", str(uid), "+FLAGS", "(\\Seen)")

    def _handle(self, msg, too_big: int = 0, key: str = ""):
        s = self.settings
        sender, why = from_address(msg)
        if not sender:
            log.warning("email: refused mail %s (not answered): %s",
                        _one_line(msg.get("Message-ID", "")) or "without a Message-ID", why)
            return
        if sender in {a.lower() for a in (s.from_address, s.smtp_username, s.imap_username) if a}:
            return
        if str(msg.get("Auto-Submitted", "no")).strip().lower() != "no" or \
                str(msg.get("Precedence", "")).strip().lower() in ("bulk", "junk", "list"):
            log.info("email: automatic mail from %s ignored (no replies to robots)", sender)
            return
        if not self.admits(sender):
            self._refuse(sender, sender, None)
            return
        genuine, verdict = verified(msg, sender, s.authserv_id) if s.authserv_id else \
            authentic(msg, sender)
        if not genuine:
            log.warning("email: refused mail claiming to be from %s as spoofed (%s)", sender, verdict)
            return
        subject = _one_line(msg.get("Subject", ""))[:500]
        if too_big:
            body = (f"[This email is {too_big // 2**20} MB, over the {MAX_MESSAGE_BYTES // 2**20} MB "
                    "the assistant downloads; only its headers were read.]")
        else:
            body = body_text(msg).strip()
            if len(body) > s.max_body_chars:
                body = body[:s.max_body_chars] + f"\n[… cut at {s.max_body_chars} characters]"
        media, notes = self._attachments(msg) if not too_big else ([], [])
        text = "\n\n".join(x for x in (f"Subject: {subject}", body, "\n".join(notes)) if x)
        meta = {"subject": subject, "message_id": _one_line(msg.get("Message-ID", "")),
                "references": _one_line(msg.get("References", ""))}
        try:        # the mail's own time and id name its inbox file: read again after a crash, dropped
            at = parsedate_to_datetime(str(msg.get("Date", ""))).timestamp()
        except (TypeError, ValueError):
            at = 0.0
        self.receive(sender, sender, text, media, meta, key=key or None, at=at)

    def _refuse(self, chat_id, sender_id, metadata):
        """Unlike other channels, a stranger is not told anything: mail senders are trivially
        forged, and a notice to a forged address is backscatter spam. Logged only."""
        log.warning("email: refused mail from %s (not answered); add the address to "
                    "channels.email.allow_from to let them in", chat_id)

    def _attachments(self, msg) -> tuple[list[str], list[str]]:
        media, notes = [], []
        for part in _attachment_parts(msg):
            name = part.get_filename() or "attachment" + (
                mimetypes.guess_extension(part.get_content_type()) or "")
            data = part.get_payload(decode=True)
            data = part.as_bytes() if data is None else data        # e.g. a forwarded message
            if len(data) > MAX_ATTACHMENT_BYTES:
                notes.append(f"[attachment {name} not saved: {len(data) // 2**20} MB is over the "
                             f"{MAX_ATTACHMENT_BYTES // 2**20} MB limit]")
                continue
            path = self.media_path(name)
            path.write_bytes(data)
            media.append(str(path))
        return media, notes

    # --- sending ---

    def deliver(self, msg: dict):
        s = self.settings
        if not s.consent_granted:
            raise SendError("channels.email.consent_granted is false: no mail is sent", permanent=True)
        meta = msg.get("metadata") or {}
        if meta.get("message_id") and not s.auto_reply_enabled:
            note = "not emailed: channels.email.auto_reply_enabled is false"
            log.info("email: reply to %s %s", msg.get("chat_id"), note)
            maildir.atomic_write(self.outbox / "cur" / f"{msg['id']}.json",
                                 json.dumps(dict(msg, note=note), ensure_ascii=False))
            return
        mail = self._compose(msg, meta)
        try:
            with self._smtp() as smtp:
                smtp.send_message(mail)
        except Exception as e:
            error = _send_error(e, f"SMTP {s.smtp_host}:{s.smtp_port}")
            if error.permanent:
                self._msgids.pop(msg["id"], None)
            raise error from None
        self._msgids.pop(msg["id"], None)

    def _smtp(self) -> smtplib.SMTP:
        s = self.settings
        if s.smtp_use_ssl:
            smtp = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=TIMEOUT, context=self._tls())
        else:
            smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=TIMEOUT)
        try:
            if s.smtp_use_tls and not s.smtp_use_ssl:
                smtp.starttls(context=self._tls())
            if s.smtp_username:
                smtp.login(s.smtp_username, s.smtp_password)
        except Exception:
            smtp.close()
            raise
        return smtp

    def _compose(self, msg: dict, meta: dict) -> EmailMessage:
        s = self.settings
        sender = s.from_address or s.smtp_username or s.imap_username
        mail = EmailMessage()
        mail["From"], mail["To"] = sender, msg["chat_id"]
        if meta.get("message_id"):
            mail["Subject"] = reply_subject(meta.get("subject", ""), s.subject_prefix)
            mail["In-Reply-To"] = meta["message_id"]
            mail["References"] = " ".join(x for x in (meta.get("references"), meta["message_id"]) if x)
            mail["Auto-Submitted"] = "auto-replied"         # RFC 3834: other robots stay quiet
        else:
            mail["Subject"] = meta.get("subject") or "Message from your assistant"
        mail["Date"] = formatdate(localtime=True)
        mail["Message-ID"] = self._msgids.setdefault(
            msg["id"], make_msgid(domain=sender.rpartition("@")[2] or None))
        files = [attachment(p) for p in msg.get("media") or ()]     # a file gone since: a note
        mail.set_content("\n".join([msg.get("text") or ""] + [f for f in files if
                                                               isinstance(f, Note)]))
        for name, data in (f for f in files if isinstance(f, Attachment)):
            ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
            mail.add_attachment(data, maintype=ctype.split("/")[0], subtype=ctype.split("/")[1],
                                filename=name)
        return mail


def _send_error(e: Exception, where: str) -> SendError:
    """SMTP 4xx (and a lost connection) are worth another try; 5xx are final."""
    if isinstance(e, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in e.recipients.values()]
        return SendError(f"{where} refused {list(e.recipients)}: {codes}", permanent=min(codes) >= 500)
    if isinstance(e, smtplib.SMTPResponseException):
        text = e.smtp_error.decode(errors="replace") if isinstance(e.smtp_error, bytes) else e.smtp_error
        return SendError(f"SMTP {e.smtp_code} {text}", permanent=e.smtp_code >= 500)
    return SendError(f"{where}: {e}")


def _close(imap):
    try:
        imap.shutdown()
    except OSError:
        pass


def _one_line(value) -> str:
    return " ".join(str(value or "").split())


def reply_subject(subject: str, prefix: str) -> str:
    """`prefix` + the subject without the Re: prefixes it already has (no "Re: Re: Re:")."""
    subject = _one_line(subject)
    words = {"re", prefix.strip().rstrip(":").strip().lower()}
    while True:
        head, colon, rest = subject.partition(":")
        if not (colon and head.strip().lower() in words):
            return prefix + subject
        subject = rest.strip()


def from_address(msg) -> tuple[str, str]:
    """(the lower-cased address of the one From mailbox, "") or ("", why not). The raw header is
    parsed by email.utils, not the decoded one: a =?utf-8?…?= word could decode to an address."""
    froms = _raw(msg, "From")
    boxes = getaddresses(froms)
    if len(froms) != 1 or len(boxes) != 1:
        return "", f"{len(froms)} From header(s) with {len(boxes)} mailbox(es); one of each is read"
    if not PLAIN.fullmatch(boxes[0][1]):
        return "", f"the From address {boxes[0][1]!r} is not a plain address"
    return boxes[0][1].lower(), ""


def verified(msg, sender: str, authserv_id: str) -> tuple[bool, str]:
    """SPEC §8: the topmost Authentication-Results written by `authserv_id` (the one it added;
    lower ones may be forged) must show dmarc=pass, or dkim=pass for header.d = the From domain."""
    for value in _raw(msg, "Authentication-Results"):
        server, results = auth_results(value)
        if server.lower() == authserv_id.strip().lower():
            break
    else:
        return False, f"no Authentication-Results from {authserv_id}"
    domain = sender.rpartition("@")[2]
    for method, result, props in results:       # a DMARC pass names the domain it checked
        checked = props.get("header.from", domain) if method == "dmarc" else \
            props.get("header.d", "") if method == "dkim" else ""
        if result == "pass" and checked.lower() == domain:
            return True, f"{authserv_id}: {method}=pass"
    return False, f"{authserv_id}: " + (", ".join(
        f"{m}={r}" + (f" for {p['header.d']}" if "header.d" in p else "") for m, r, p in results)
        or "no results")


def authentic(msg, sender: str) -> tuple[bool, str]:
    """A best effort without channels.email.authserv_id: the verdict of the topmost
    Authentication-Results, whoever wrote it. DMARC decides when it says pass or fail; else a
    passing DKIM or SPF must be for the From domain. No header, or no results in it: no verdict."""
    headers = _raw(msg, "Authentication-Results")
    results = auth_results(headers[0])[1] if headers else []
    if not results:
        return True, "no Authentication-Results" if not headers else "no results"
    dmarc = next((result for method, result, _ in results if method == "dmarc"), "")
    if dmarc in ("pass", "fail"):
        return dmarc == "pass", f"dmarc={dmarc}"
    domain, seen = sender.rpartition("@")[2], []
    for method, result, props in results:
        keys = {"dkim": ("header.d", "header.i"), "spf": ("smtp.mailfrom", "smtp.helo")}.get(method)
        if keys:
            d = next((props[k] for k in keys if k in props), "").rpartition("@")[2].lower()
            if result == "pass" and d and (d == domain or domain.endswith("." + d) or d.endswith("." + domain)):
                return True, f"{method}=pass"
            seen.append(f"{method}={result}" + (f" for {d}" if d else ""))
    return False, ", ".join(seen or [f"{m}={r}" for m, r, _ in results])


def auth_results(value: str) -> tuple[str, list[tuple[str, str, dict]]]:
    """One Authentication-Results value (RFC 8601) as (authserv-id, [(method, result,
    {property: value})])."""
    clauses = _clauses(value)
    server = clauses[0][0].lstrip('"') if clauses[0] else ""
    results = []
    for w in clauses[1:]:
        if len(w) >= 3 and w[1] == "=":
            props = {w[i].lower(): w[i + 2].lstrip('"')
                     for i in range(3, len(w) - 2) if w[i + 1] == "="}
            results.append((w[0].split("/")[0].lower(), w[2].lower(), props))
    return server, results


def _clauses(value: str) -> list[list[str]]:
    """The words of each ';'-separated clause, '=' a word of its own, comments dropped. A quoted
    string is one word starting with '"', whatever ';', '=' or '(' it holds: it never passes
    for a method, a result or a property name."""
    clauses, word, depth, quoted, escaped = [[]], "", 0, False, False
    for ch in value + ";":
        if escaped or quoted and ch not in '\\"':        # an escaped or quoted character
            word, escaped = word + ("" if depth else ch), False
        elif ch == "\\":
            escaped = True
        elif ch == '"' and not depth:                   # a quoted string starts or ends
            quoted, word = not quoted, word or '"'
        elif ch in "()":
            depth = max(depth + (1 if ch == "(" else -1), 0)
        elif depth or ch not in " \t\r\n=;":
            word += "" if depth else ch
        else:                                           # a word ends
            clauses[-1] += [w for w in (word, "=" if ch == "=" else "") if w]
            word = ""
            if ch == ";":
                clauses.append([])
    return clauses[:-1]


def _raw(msg, name: str) -> list[str]:
    """Each `name` header as it came (unfolded, not decoded)."""
    return [" ".join(str(v).split()) for k, v in msg.raw_items() if k.lower() == name.lower()]


def _attachment_parts(msg):
    if msg.is_multipart():
        for part in msg.iter_attachments():
            if part.get_content_maintype() == "multipart":
                yield from _attachment_parts(part)
            else:
                yield part


def body_text(msg) -> str:
    """The plain-text body; an HTML-only mail is turned into text."""
    part = msg.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        text = part.get_content()
    except (LookupError, ValueError):                        # an unknown or lying charset
        text = (part.get_payload(decode=True) or b"").decode("utf-8", "replace")
    return html_to_text(text) if part.get_content_subtype() == "html" else text


class _TextOfHtml(HTMLParser):
    """Blocks become lines, list items dashes, links keep their address; scripts and styles go."""
    BLOCKS = {"p", "div", "br", "li", "tr", "table", "ul", "ol", "blockquote", "pre", "hr",
              "h1", "h2", "h3", "h4", "h5", "h6"}
    HIDDEN = {"script", "style", "head", "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out, self.hidden, self.href = [], 0, None

    def handle_starttag(self, tag, attrs):
        self.hidden = 0 if tag == "body" else self.hidden + (tag in self.HIDDEN)   # <head> may stay open
        self.out.append(("\n- " if tag == "li" else "\n") if tag in self.BLOCKS else "")
        self.href = dict(attrs).get("href") or "" if tag == "a" else self.href

    def handle_endtag(self, tag):
        self.hidden = max(0, self.hidden - (tag in self.HIDDEN))
        self.out.append("\n" if tag in self.BLOCKS else "")
        if tag == "a" and (self.href or "").startswith(("http://", "https://")):
            self.out.append(f" ({self.href})")

    def handle_data(self, data):
        self.out.append("" if self.hidden else data)


def html_to_text(markup: str) -> str:
    parser = _TextOfHtml()
    parser.feed(markup)
    parser.close()
    text = re.sub(r"[ \t\r\f\v\xa0]+", " ", "".join(parser.out))
    return re.sub(r"\n{3,}", "\n\n", re.sub(r" *\n *", "\n", text)).strip()
