"""The "typing…" sign that tells a user their message is being worked on, for platforms that show
it for a few seconds per call: renewed per chat until the last reply awaited there is out."""
import logging
import threading
import time

log = logging.getLogger(__name__)


class Typing:
    """A platform's "typing…" sign, per chat: `start(chat)` for each message taken in, `done(chat)`
    for each reply delivered. A thread calls `show(chat)` every `every` seconds until the last
    reply awaited is out (or `cap` seconds have passed), then `hide(chat)` if there is one."""

    def __init__(self, name: str, show, every: float, hide=None, cap: float = 120.0):
        self.name, self.show, self.hide, self.every, self.cap = name, show, hide, every, cap
        self.chats = {}                     # chat -> [stop event, replies awaited]
        self._lock = threading.Lock()

    def start(self, chat: str):
        with self._lock:
            if chat in self.chats:
                self.chats[chat][1] += 1
                return
            stop = threading.Event()
            self.chats[chat] = [stop, 1]
        threading.Thread(target=self._run, args=(chat, stop), name=f"{self.name}-typing",
                         daemon=True).start()

    def done(self, chat: str):
        with self._lock:
            entry = self.chats.get(chat)
            if entry:
                entry[1] -= 1
                if entry[1] <= 0:
                    entry[0].set()
                    del self.chats[chat]

    def stop(self):
        with self._lock:
            for stop, _ in self.chats.values():
                stop.set()

    def _run(self, chat: str, stop: threading.Event):
        end = time.monotonic() + self.cap
        while not stop.is_set() and time.monotonic() < end:
            self._call(self.show, chat)
            stop.wait(self.every)
        if self.hide:
            self._call(self.hide, chat)
        with self._lock:
            if self.chats.get(chat, [None])[0] is stop:
                del self.chats[chat]

    def _call(self, sign, chat: str):
        try:
            sign(chat)
        except Exception as e:              # the sign is a courtesy: its failures are not errors
            log.debug("%s: typing sign for %s: %s", self.name, chat, e)
