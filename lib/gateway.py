"""The 24/7 service: wires channels, the worker, cron (which beats the heartbeat) together, and owns
start-up and shutdown. Every part is a thread with start() and stop(); a file watcher wakes them.
"""
import logging
import os
import signal
import socket
import threading
import time
from contextlib import suppress
from functools import partial

from lib import maildir
from lib.errors import ConfigError, UserError
from lib.part import Part
from lib.mail import fail_outbox, post_inbox, post_outbox
from lib.worker import Worker

log = logging.getLogger(__name__)
PRUNE_EVERY_S = 3600
RELOAD_QUIET_S = 1.0    # a changed config is read once it has rested this long


def notify(state: str):
    """Tell systemd how we are (READY=1, WATCHDOG=1, STOPPING=1) when it asked to be told."""
    if not (address := os.environ.get("NOTIFY_SOCKET")):
        return
    if address.startswith("@"):
        address = "\0" + address[1:]            # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(state.encode(), address)
    except OSError as e:
        log.warning("cannot notify systemd at %s: %s", address, e)


class Watcher(Part):
    """One file-system observer for every folder we wait on; a periodic rescan covers the
    platforms where inotify is missing or full."""
    name = "watcher"

    def __init__(self):
        super().__init__()
        self._watches, self._observer = [], None

    def watch(self, folder, callback):
        self._watches.append((str(folder), callback))

    def start(self):
        from watchdog.events import (FileClosedEvent, FileCreatedEvent, FileModifiedEvent,
                                     FileMovedEvent, FileSystemEventHandler)
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver
        # watchdog holds each moved-away event 0.5 s to pair it, and every event queued behind it
        # waits too; we need no pairs
        with suppress(ImportError):
            from watchdog.observers import inotify_move_event_grouper as grouper
            grouper.InotifyMoveEventGrouper.delay = 0
        # only changes: reading a folder (the worker's rescan) must wake no thread at idle
        changes = [FileCreatedEvent, FileMovedEvent, FileModifiedEvent, FileClosedEvent]

        for kind in (Observer, PollingObserver):
            self._observer = kind()
            try:
                for folder, callback in self._watches:
                    handler = FileSystemEventHandler()
                    handler.on_any_event = lambda event, wake=callback: wake()
                    self._observer.schedule(handler, folder, recursive=False, event_filter=changes)
                self._observer.start()
                return
            except OSError as e:
                log.warning("file watcher %s unavailable (%s); polling instead", kind.__name__, e)

    def alive(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def stop(self, timeout: float = 2.0):
        # watchdog may log a harmless ERROR when an emitter is stopped mid-read; we are leaving
        logging.getLogger("watchdog.observers.inotify").setLevel(logging.CRITICAL)
        self._observer.stop()
        self._observer.join(timeout)


class Gateway:
    def __init__(self, config, agent=None):
        from lib.agent.loop import Agent, agent_tools
        from lib.tools import Services
        from lib.usage import Metered
        self.config, self.home = config, config.home
        self.services = Services()          # filled by build()
        self.agent = agent or Agent(config, Metered(config), agent_tools(config),
                                    send=partial(post_outbox, self.home), services=self.services)
        self.worker = Worker(config, self.agent)
        self.parts = []                 # started in order, stopped in reverse
        self.stopping = threading.Event()
        self._reload = None             # the timer that reads a changed config

    def build(self):
        """Create every part the config asks for (their threads start in run())."""
        from lib import channels
        self._lock = _single_instance(self.home)      # the worker makes inbox/ and outbox/
        maildir.recover(self.home / "outbox")     # sends cut off by a crash are sent again
        self.channels = channels.enabled(self.config, self.home)
        if self.config.tools.exec.enable and self.config.tools.exec.sandbox != "off":
            from lib import sandbox
            sandbox.problem()       # a missing sandbox is said once, now, not at the first command
        self.watcher = Watcher()
        self.watcher.watch(self.home / "inbox" / "new", self.worker.wake)
        self.watcher.watch(self.home / "outbox" / "new", self._outbox_changed)
        if self.config.path.parent.is_dir():
            self.watcher.watch(self.config.path.parent, self._config_changed)
        mcp = getattr(getattr(self.agent, "tools", None), "more", None)  # MCP servers: up first
        self.parts = [*filter(None, [mcp]), self.worker, *self.channels, *self._optional_parts(),
                      *self._web(), self.watcher]   # the watcher last: nothing wakes a stopped part
        self._config_stamp = maildir.stamp(self.config.path)    # after _web(): it may add the token

    def _optional_parts(self):
        """The parts that wake the assistant without a user: sub-agents, cron (and the heartbeat)."""
        from lib.agent.subagent import Subagents
        from lib.cron import CronService
        post = partial(post_inbox, self.home)
        self.services.cron = CronService(self.config, post)
        self.services.spawn = Subagents(self.config, self.agent.provider, post)
        self.watcher.watch(self.home / "cron", self.services.cron.wake)
        return [self.services.spawn, self.services.cron]

    def run(self) -> int:
        self.build()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        for part in self.parts:
            part.start()
            log.debug("started %s", part.name)
        notify("READY=1")
        log.info("gateway ready: home %s, model %s", self.home, self.config.agents.defaults.model)
        if not self.channels:
            log.warning("no chat app is enabled (channels.*.enabled): talk to the assistant with "
                        "`python nanoclaw.py agent`, or drop message files into %s",
                        self.home / "inbox" / "new")
        ping, last_prune = _watchdog_interval(), time.monotonic()
        self._prune()
        self._outbox_changed()
        while not self.stopping.wait(ping):
            if self.healthy():
                notify("WATCHDOG=1")        # a dead or stuck thread stops the pings
            if time.monotonic() - last_prune > PRUNE_EVERY_S:
                self._prune()
                last_prune = time.monotonic()
        notify("STOPPING=1")
        log.info("stopping")
        if self._reload:
            self._reload.cancel()
        for part in reversed(self.parts):
            part.stop()
        log.info("stopped")
        return 0

    def healthy(self, say: bool = True) -> bool:
        """Every part alive and the worker making progress; else (with `say`) log which, and why."""
        dead = [p.name for p in self.parts if not p.alive()]
        stuck = not dead and not self.worker.progressing()
        if say and dead:
            log.error("a part of the gateway has died: %s", ", ".join(dead))
        elif say and stuck:
            log.error("the worker has been on one message for %.0f s, past the turn deadline "
                      "(agents.defaults.turn_timeout_s): no more watchdog pings, so systemd "
                      "restarts the service", time.monotonic() - (self.worker.busy_since or 0))
        return not dead and not stuck

    def _web(self) -> list:
        """The web page and the API on gateway.host:port (SPEC §11), unless port is 0."""
        if not self.config.gateway.port:
            return []
        from lib.web.server import serve
        return serve(self)

    def _outbox_changed(self):
        for channel in self.channels:
            channel.wake()
        running = {c.name for c in self.channels}
        for name in maildir.waiting(self.home / "outbox"):
            target = name.split(".", 1)[0]
            if target not in running and (path := maildir.claim(self.home / "outbox", name)):
                log.warning("outbox/%s: channel %s is not running; moved to outbox/failed/",
                            name, target)
                fail_outbox(path, f"channel {target} is not running (channels.{target}.enabled "
                            "is false or it is not configured)")

    def _config_changed(self):
        """Read a changed config once it has rested RELOAD_QUIET_S: an editor writing in place
        (truncate, then write) is never caught half-way."""
        if self._reload:
            self._reload.cancel()
        self._reload = threading.Timer(RELOAD_QUIET_S, self._reload_config)
        self._reload.daemon = True
        self._reload.start()

    def _reload_config(self):
        """Allow lists and other settings apply at once; credentials and which channels run
        need a restart (their connections are built from them). An emptied file is not read."""
        stamp = maildir.stamp(self.config.path)
        if stamp == self._config_stamp:
            return
        self._config_stamp = stamp
        from lib.config import load_config
        try:
            if stamp and not stamp[1]:
                raise ConfigError(f"{self.config.path} is empty")
            config = load_config(str(self.config.path))
        except ConfigError as e:
            log.error("config not reloaded, the running one stays: %s", e)
            return
        self.config = self.agent.config = self.agent.provider.config = config   # limits, prices
        for part in self.parts:
            part.config = config
            part.wake()                 # a new heartbeat interval counts at once
        log.info("config reloaded from %s", config.path)

    def _prune(self):
        days = self.config.gateway.retention_days
        media = self.home / "media"         # downloads go too: a Pi's SD card is small
        kinds = tuple(p.name for p in media.iterdir() if p.is_dir()) if media.is_dir() else ()
        removed = maildir.prune(self.home / "inbox", days) + maildir.prune(self.home / "outbox", days) \
            + maildir.prune(media, days, kinds)
        if removed:
            log.info("pruned %d message(s) older than %d days", removed, days)


def _single_instance(home):
    """One gateway per home folder: a second would take the first one's work in progress."""
    import fcntl
    home.mkdir(parents=True, exist_ok=True)
    maildir.make_private(home)
    f = open(home / "gateway.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        raise UserError(f"a gateway is already running for {home} (pid {f.read().strip() or '?'}); "
                        "stop it first (systemctl stop nanoclaw)") from None
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f


def _watchdog_interval() -> float:
    """Half of systemd's WatchdogSec, or a lazy minute when nobody watches."""
    usec = os.environ.get("WATCHDOG_USEC")
    return max(1.0, int(usec) / 2e6) if usec and usec.isdigit() else 60.0
