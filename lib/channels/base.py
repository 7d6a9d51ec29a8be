"""What every channel shares: its threads, the allow list, and delivery from the outbox.

A channel subclass writes `listen()` (receive until stopped; call `self.receive(...)` for each
message) and `deliver(msg)` (send one outbox message; raise SendError on failure). The rest is
here: outbox claiming in order, retries with backoff, failed/ after the last try.
"""
import json
import logging
import random
import threading
from pathlib import Path

from lib import maildir
from lib.config import allowed
from lib.worker import post_inbox

log = logging.getLogger(__name__)
RESCAN_S = 5.0
TRIES = 5


class SendError(Exception):
    def __init__(self, message, retry_after: float | None = None, permanent: bool = False):
        super().__init__(message)
        self.retry_after, self.permanent = retry_after, permanent


class Channel:
    name = ""

    def __init__(self, config, home: Path):
        self.config, self.home = config, Path(home)
        self.outbox = self.home / "outbox"
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._threads = []
        self.backoff = 1.0          # seconds before the first retry; doubles each time

    @property
    def settings(self):
        return getattr(self.config.channels, self.name)

    # --- lifecycle ---

    def start(self):
        for target, label in ((self.listen, "listen"), (self._send_loop, "send")):
            t = threading.Thread(target=self._guard, args=(target,), name=f"{self.name}-{label}",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 2.0):
        self.stopping.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads)

    def wake(self):
        self._wake.set()

    def _guard(self, target):
        try:
            target()
        except Exception:
            log.exception("%s: thread %s crashed", self.name, target.__name__)

    # --- receiving ---

    def listen(self):
        """Receive until self.stopping is set. Subclasses override."""
        self.stopping.wait()

    def receive(self, chat_id, sender_id, text, media=(), metadata=None) -> bool:
        """Hand a message to the assistant (via the inbox) if the sender may talk to it."""
        if not allowed(self.settings.allow_from, str(sender_id)):
            log.warning("%s: refused sender %s; add it to channels.%s.allow_from to let them in",
                        self.name, sender_id, self.name)
            return False
        post_inbox(self.home, {"channel": self.name, "chat_id": str(chat_id),
                               "sender_id": str(sender_id), "text": text, "media": list(media),
                               "metadata": metadata or {}})
        return True

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
                if path:
                    self._send_one(path)
            self._wake.wait(RESCAN_S)

    def _send_one(self, path: Path):
        try:
            msg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            maildir.fail(path, f"unreadable outbox file: {e}")
            return
        error = None
        for attempt in range(TRIES):
            try:
                self.deliver(msg)
                maildir.finish(path, "sent")
                return
            except SendError as e:
                error = e
            except Exception as e:          # a network library's own error
                error = SendError(f"{type(e).__name__}: {e}")
            if error.permanent or attempt == TRIES - 1:
                break
            delay = error.retry_after if error.retry_after is not None else \
                self.backoff * 2 ** attempt * random.uniform(0.8, 1.2)
            log.warning("%s: sending %s failed (%s); retry %d in %.1fs", self.name, path.name,
                        error, attempt + 1, delay)
            if self.stopping.wait(delay):
                return          # stays in cur/: recovered and sent at the next start
        log.error("%s: giving up on %s: %s", self.name, path.name, error)
        msg["error"] = str(error)
        maildir.atomic_write(path, json.dumps(msg, ensure_ascii=False))
        maildir.finish(path, "failed")
