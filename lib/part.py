"""A gateway part: the one lifecycle (start, stop, alive, wake) for every thread the gateway runs:
worker, cron, heartbeat, channels, sub-agents, the HTTP server, the file watcher. The default
loop calls step() until stop(), sleeping in between on an Event that wake() and stop() cut short."""
import logging
import threading

log = logging.getLogger(__name__)


class Part:
    name = "part"

    def __init__(self):
        self._wake, self.stopping, self._threads = threading.Event(), threading.Event(), []

    def loops(self) -> list:
        """The functions this part runs, each in its own thread until `stopping` is set."""
        return [self._run]

    def start(self):
        self.stopping.clear()
        self._threads = [threading.Thread(target=self._guard, args=(loop,), daemon=True,
                                          name=f"{self.name}-{loop.__name__.strip('_')}")
                         for loop in self.loops()]
        for t in self._threads:
            t.start()

    def wake(self):
        self._wake.set()

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads)

    def stop(self, timeout: float = 3.0):
        self.stopping.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)

    def _guard(self, loop):
        try:
            loop()
        except Exception:
            log.exception("%s: thread %s crashed", self.name, loop.__name__)

    def _run(self):
        while not self.stopping.is_set():
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
