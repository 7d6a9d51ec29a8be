"""The heartbeat: every heartbeat.interval_s, the owner's standing tasks in workspace/HEARTBEAT.md
go to the agent as a system message. A file with nothing but comments, headings and empty list
items costs nothing: no message, no model call. A beat is skipped while the last one still waits.
"""
import logging
import re
from datetime import datetime, timezone

from lib import maildir
from lib.part import Part
from lib.tools.files import read_inside

HEARTBEAT_OK = "HEARTBEAT_OK"      # the reply that means "nothing to do": never sent

log = logging.getLogger(__name__)
SUFFIX = ".heartbeat"               # inbox names end so; they still sort by arrival
_COMMENT = re.compile(r"<!--.*?(-->|\Z)", re.S)             # an unclosed one runs to the end
_EMPTY_ITEM = re.compile(r"\s*(([-*+]|\d+[.)])(\s+\[[ xX]?\])?|[-*_=]{3,})\s*")
_HEADING = re.compile(r"\s*#{1,6}(\s.*)?")


def standing_tasks(text: str) -> str:
    """The tasks in HEARTBEAT.md without comments, blank lines and empty items; "" when no line
    but headings is left."""
    lines = [line.rstrip() for line in _COMMENT.sub("", text).splitlines()
             if line.strip() and not _EMPTY_ITEM.fullmatch(line)]
    return "\n".join(lines) if any(not _HEADING.fullmatch(line) for line in lines) else ""


class Heartbeat(Part):
    name = "heartbeat"

    def __init__(self, config, post, clock=None):
        super().__init__()
        self.config, self.post = config, post         # post(msg, name) -> path
        self.inbox = config.home / "inbox"
        self.clock = clock or (lambda: datetime.now(timezone.utc))   # tests pass a day in a second
        self._last = self.clock()           # the first beat comes one interval after start

    def step(self) -> float:
        """Beat when an interval has passed since the last one (the gateway wakes this after a
        reload, so a new interval_s counts at once). In heartbeat.quiet_hours it waits, and
        beats when they end."""
        from lib.usage import quiet_until
        now = self.clock()
        if until := quiet_until(self.config, now):
            return max(1.0, (until - now).total_seconds())
        settings = self.config.heartbeat
        self._last = min(self._last, now)       # the clock was set back (NTP on a Pi)
        if (now - self._last).total_seconds() >= settings.interval_s:   # >= 1: config.py says so
            self._last = now
            if settings.enabled:                # a reload may turn it off
                self.beat()
        return (self._last - now).total_seconds() + settings.interval_s

    def beat(self) -> bool:
        """Post the tasks if there are any and the last beat is done. True when posted."""
        path = self.config.workspace / "HEARTBEAT.md"
        try:
            tasks = standing_tasks(read_inside(path, path.parent).decode("utf-8"))
        except FileNotFoundError:
            return False
        except (OSError, UnicodeDecodeError) as e:
            log.warning("heartbeat: cannot read %s: %s", path, e)
            return False
        if not tasks:
            return False
        from lib.usage import over_limit, owner
        if over_limit(self.config):
            log.info("heartbeat skipped: a daily limit is reached (limits.*)")
            return False
        if self._waiting():
            log.info("heartbeat skipped: the last one is still in the inbox")
            return False
        text = (f"[Heartbeat] The owner's standing tasks from {path}:\n\n{tasks}\n\n"
                "Do what is due now. Tell the owner only what needs their attention; if nothing "
                f"does, reply exactly {HEARTBEAT_OK} and nothing else.")
        meta = {"kind": "heartbeat", "quiet_reply": HEARTBEAT_OK}
        if to := owner(self.config):    # else nobody has written yet: it stays on "system"
            meta["reply_to"] = {"channel": to[0], "chat_id": to[1]}
        self.post({"channel": "system", "chat_id": "heartbeat", "sender_id": "heartbeat",
                   "text": text, "metadata": meta}, maildir.unique_name() + SUFFIX)
        return True

    def _waiting(self) -> bool:
        return any(any((self.inbox / f).glob("*" + SUFFIX + ".json")) for f in ("new", "cur"))
