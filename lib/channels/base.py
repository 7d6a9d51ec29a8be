"""The channel contract: what every channel shares: its threads, the allow list, and delivery
from the outbox.

A channel subclass writes `listen()` (receive until stopped; call `self.receive(...)` for each
message) and `deliver(msg)` (send one outbox message; raise SendError on failure). The rest is
here: outbox claiming in order, retries with backoff, failed/ after the last try, parts sent
once. A platform that wants its events acked fast keeps each one on disk first (`keep()`), acks
it, and handles it in `handle_kept()` on a thread of its own. What talking to a platform needs
(a websocket kept connected, downloads, voice notes) is in net.py.
"""
import hashlib
import itertools
import json
import logging
import queue
import random
import re
import threading
import time
from datetime import datetime
from pathlib import Path

from lib import maildir
from lib.channels.net import Network
from lib.part import Part
from lib.channels import allowed
from lib.mail import fail_outbox, post_inbox, post_outbox

log = logging.getLogger(__name__)
RESCAN_S = 5.0
TRIES = 5                   # failures of a send before the message goes to outbox/failed/
RATE_LIMITED_S = 900        # the longest the "too many requests" waits of one message add up to


_refused_lock = threading.Lock()


class SendError(Exception):
    def __init__(self, message, retry_after: float | None = None, permanent: bool = False):
        super().__init__(message)
        self.retry_after, self.permanent = retry_after, permanent


class Outgoing(dict):
    """An outbox message being sent, with its file in outbox/cur/: unsent() records progress there."""

    def __init__(self, path: Path, msg: dict):
        super().__init__(msg)
        self.path = path

    def save(self):
        maildir.atomic_write(self.path, json.dumps(self, ensure_ascii=False))


class Channel(Part, Network):
    name = ""

    def __init__(self, config, home: Path):
        super().__init__()
        self.config, self.home = config, Path(home)
        self.outbox = self.home / "outbox"
        self.backoff = 1.0          # seconds before the first retry; doubles each time
        self.ws = None              # the open websocket, if any: stop() aborts it
        self.connected = False      # set by a session that got through: the backoff starts over
        self.kept = self.home / "state" / self.name / "pending"     # events acked, not yet handled
        self._kept = queue.Queue()

    @property
    def settings(self):
        return getattr(self.config.channels, self.name)

    # --- lifecycle ---

    def loops(self) -> list:
        kept = type(self).handle_kept is not Channel.handle_kept
        return [self.listen, self._send_loop] + [self._handle_kept_loop] * kept

    def stop(self, timeout: float = 2.0):
        self.stopping.set()
        self._kept.put(None)        # wakes the kept events' thread
        ws = self.ws
        if ws is not None:
            ws.abort()              # wakes the listen thread out of its blocking read
        super().stop(timeout)

    # --- receiving ---

    def listen(self):
        """Receive until self.stopping is set. Subclasses override."""
        self.stopping.wait()

    def receive(self, chat_id, sender_id, text, media=(), metadata=None, key=None, at=None) -> bool:
        """Hand a message to the assistant (via the inbox) if the sender may talk to it.
        A stranger is logged and told their id, at most once a day; the model never sees them.
        With the platform's message `key` and time `at` (epoch seconds) the inbox name is fixed,
        so the same message received again (after a crash, a redelivery) is dropped.
        `metadata["sender_aliases"]` lists the sender's other names, which allow_from may hold;
        `metadata["is_group"]` says whether the chat is a group (there, no MEMORY.md: SPEC §13)."""
        if not self.admits(sender_id, metadata):
            self._refuse(str(chat_id), str(sender_id), metadata)
            return False
        name = None
        if key is not None and at is not None:     # sorts among unique_name()s by time
            safe = re.sub(r"[^A-Za-z0-9_-]", "_", str(key))
            if len(safe) > 64:                      # a long platform id: its hash, same each time
                safe = hashlib.sha256(str(key).encode("utf-8", "replace")).hexdigest()[:32]
            name = f"{int(at * 1e9):020d}.{self.name}.{safe}"
        post_inbox(self.home, {"channel": self.name, "chat_id": str(chat_id),
                               "sender_id": str(sender_id), "text": text, "media": list(media),
                               "metadata": metadata or {}}, name)
        return True

    def keep(self, key: str, event: bytes | str | dict) -> Path:
        """Keep an event on disk (written whole, fsynced) under the platform's id for it, and queue
        it for handle_kept(): call this before acking the event, and do not ack on OSError. The
        ack then waits for no download, and an event acked just before a crash is handled at the
        next start. The same event kept again replaces its file; inbox names make it harmless."""
        data = event if isinstance(event, (bytes, str)) else json.dumps(event)
        key = key or hashlib.sha256(data if isinstance(data, bytes) else data.encode()).hexdigest()
        digest = hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:16]    # ids that
        path = self.kept / f"{re.sub(r'[^A-Za-z0-9_-]', '_', key)[:60]}-{digest}.json"  # differ
        maildir.atomic_write(path, data)
        maildir.sync(path.parent)           # its name survives a power cut too
        self._kept.put(path)
        return path

    def handle_kept(self, event: dict):
        """Turn one kept event into a message (downloads, receive()); channels that keep() say how."""

    def _handle_kept_loop(self):
        """The kept events in the order they came, those a crash left first; a file goes once its
        event is handled. A full disk is waited out (the events after it wait too); an event
        that fails otherwise is tried again at the next start."""
        left = sorted(self.kept.glob("*.json"), key=lambda p: p.stat().st_mtime_ns) \
            if self.kept.is_dir() else []
        for path in left:
            self._kept.put(path)
        while not self.stopping.is_set():
            if (path := self._kept.get()) is None:
                continue                            # stop() woke us
            try:
                if not isinstance(event := json.loads(path.read_bytes()), dict):
                    raise ValueError("not a JSON object")
            except FileNotFoundError:
                continue                            # kept twice, handled already
            except ValueError as e:
                log.error("%s: %s is unreadable (%s); moved aside", self.name, path, e)
                path.rename(path.with_suffix(".bad"))
                continue
            for wait in (min(60, 2 ** n) for n in itertools.count()):
                try:
                    self.handle_kept(event)
                    path.unlink(missing_ok=True)
                except OSError as e:
                    log.error("%s: cannot put a message in the inbox (%s); trying again in %d s",
                              self.name, e, wait)
                    if not self.stopping.wait(wait):
                        continue
                except Exception:
                    log.exception("%s: cannot handle an event; it is tried again at the next "
                                  "start", self.name)
                break

    def admits(self, sender_id, metadata=None) -> bool:
        """Whether allow_from lets in `sender_id`, or one of metadata's sender_aliases."""
        aliases = (metadata or {}).get("sender_aliases", ())
        return allowed(self.settings.allow_from, str(sender_id), aliases)

    def _refuse(self, chat_id, sender_id, metadata):
        log.warning("%s: refused sender %s; add it to channels.%s.allow_from to let them in",
                    self.name, sender_id, self.name)
        path = self.home / "state" / "refused.json"
        with _refused_lock:             # every channel's thread reads and rewrites this file
            try:
                seen = json.loads(path.read_text())
            except (OSError, ValueError):
                seen = {}
            key, today = f"{self.name}:{sender_id}", time.strftime("%Y-%m-%d")
            if seen.get(key) == today:
                return
            seen = {k: v for k, v in seen.items() if v == today}     # forget older days
            seen[key] = today
            maildir.atomic_write(path, json.dumps(seen))
        post_outbox(self.home, self.name, chat_id, f"This assistant is private. Your {self.name} "
                    f"id is {sender_id}.", metadata=metadata)

    # --- sending ---

    def deliver(self, msg: dict):
        """Send one outbox message to the platform. Subclasses override."""
        raise SendError(f"channel {self.name} cannot send", permanent=True)

    def _send_loop(self):
        while not self.stopping.is_set():
            self._wake.clear()
            for name in maildir.waiting(self.outbox, prefix=f"{self.name}."):
                if self.stopping.is_set():
                    return
                path = maildir.claim(self.outbox, name)
                try:
                    if path:
                        self._send_one(path)
                except OSError as e:            # it cannot be filed (a full disk)
                    log.error("%s: %s: %s; it waits in outbox/cur/ for the next start",
                              self.name, name, e)
            self._wake.wait(RESCAN_S)

    def _send_one(self, path: Path):
        try:
            msg = Outgoing(path, json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as e:       # TypeError: not a JSON object
            maildir.fail(path, f"unreadable outbox file: {e}")
            return
        failures, waited = 0, 0.0       # a wait the platform asks for is not a failure
        for attempt in itertools.count(1):
            try:
                self.deliver(msg)
            except SendError as e:
                error = e
            except Exception as e:          # a network library's own error
                error = SendError(f"{type(e).__name__}: {e}")
            else:
                try:                        # sent: never delivered again, whatever comes now
                    maildir.sync(maildir.finish(path, "sent").parent)   # not after a power cut
                except OSError as e:
                    log.error("%s: %s was sent but cannot be filed in outbox/sent/ (%s)",
                              self.name, path.name, e)
                return
            asked = error.retry_after
            failures += asked is None
            if error.permanent or failures == TRIES or asked is not None and waited >= RATE_LIMITED_S:
                break
            if asked is None:
                delay = self.backoff * 2 ** (failures - 1) * random.uniform(0.8, 1.2)
            else:                           # "wait 0 s" is not a reason to hammer it
                delay = min(max(asked, self.backoff), RATE_LIMITED_S - waited)
                waited += delay
            log.warning("%s: sending %s failed (%s); retry %d in %.1fs", self.name, path.name,
                        error, attempt, delay)
            if self.stopping.wait(delay):
                return          # stays in cur/: recovered and sent at the next start
        log.error("%s: giving up on %s: %s", self.name, path.name, error)
        fail_outbox(path, str(error), msg)


def epoch(iso) -> float | None:
    """Epoch seconds of a platform's ISO 8601 time (receive()'s `at`); None when it is not one."""
    try:
        return datetime.fromisoformat(iso).timestamp()
    except (TypeError, ValueError):
        return None


def json_of(response) -> dict:
    """The JSON object in a `requests` response, or {} (an error page, a list, nothing)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def unsent(msg: dict, parts: list):
    """(index, part) for the parts of outbox message `msg` not sent yet: it goes on after the last
    part that got through, on a retry and after a crash. A part counts as sent once the loop body
    that took it has finished, and is recorded in the outbox file (Outgoing.save, fsynced) before
    the next one is taken: a crash sends again at most the part in flight. `msg["_done"]` exists
    from the first try on."""
    for i in range(msg.setdefault("_done", 0), len(parts)):
        yield i, parts[i]
        msg["_done"] = i + 1
        if i + 1 < len(parts) and isinstance(msg, Outgoing):
            msg.save()


def split_message(text: str, limit: int) -> list[str]:
    """Cut a long reply into parts of at most `limit` characters: between paragraphs where
    possible, else between lines, else at spaces. A code block is kept whole when it fits in a
    part; one that does not is cut between lines and each piece closed and reopened."""
    parts, current = [], ""
    for block in _blocks(text):
        for piece in _fit(block, limit):
            if current and len(current) + 2 + len(piece) <= limit:
                current += "\n\n" + piece
            else:
                if current:
                    parts.append(current)
                current = piece
    return parts + [current] if current else parts


def _blocks(text: str) -> list[str]:
    """Paragraphs, with each fenced code block as one block however many blank lines it has."""
    blocks, lines, fenced = [], [], False
    for line in text.strip("\n").split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not line.strip() and not fenced:
            if lines:
                blocks.append("\n".join(lines))
            lines = []
        else:
            lines.append(line)
    return blocks + ["\n".join(lines)] if lines else blocks


def _fit(block: str, limit: int) -> list[str]:
    if len(block) <= limit:
        return [block]
    lines = block.split("\n")
    fence = lines[0].strip() if lines[0].lstrip().startswith("```") else ""
    if fence:
        lines = lines[1:-1] if lines[-1].strip().startswith("```") else lines[1:]
    room = limit - (len(fence) + 5 if fence else 0)        # the fence lines around each piece
    pieces, current = [], ""
    for line in lines:
        while len(line) > room:                             # a single line longer than a part
            cut = line.rfind(" ", 0, room)
            cut = cut if cut > room // 2 else room
            pieces, current = pieces + ([current] if current else []), ""
            pieces.append(line[:cut])
            line = line[cut:].lstrip(" ")
        if current and len(current) + 1 + len(line) > room:
            pieces.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    pieces.append(current)
    return [f"{fence}\n{p}\n```" if fence else p for p in pieces]
