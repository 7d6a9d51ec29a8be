"""A gateway part: one thread that runs step() until stop(), sleeping in between on an Event
that wake() and stop() cut short. Every loop in the gateway starts and stops this one way."""
import logging
import threading

log = logging.getLogger(__name__)


class Part:
    name = "part"

    def __init__(self):
        self._wake, self._stop, self._thread = threading.Event(), threading.Event(), None

    def start(self):
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self):
        self._wake.set()

    def alive(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    def stop(self, timeout: float = 3.0):
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)

    def _run(self):
        while not self._stop.is_set():
            self._wake.clear()
            try:
                delay = self.step()
            except Exception:           # one bad round must not end the part
                log.exception("%s: unexpected error; trying again in a minute", self.name)
                delay = 60.0
            self._wake.wait(delay)

    def step(self) -> float:
        """One round of work; returns the seconds until the next round (unless woken)."""
        return 60.0
