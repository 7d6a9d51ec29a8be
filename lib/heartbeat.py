"""The heartbeat: the owner's standing tasks in workspace/HEARTBEAT.md go to the agent as a system
message every heartbeat.interval_s. The cron part beats it, as a built-in job (lib/cron.py), so
quiet hours and daily limits hold for it as for any job. A file with nothing but comments,
headings and empty list items costs nothing: no message, no model call. A beat is skipped while
the last one still waits.
"""
import logging
import re

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


def message(config) -> dict | None:
    """The beat's inbox message, addressed to the owner; None when there is no task or the last
    beat still waits in the inbox."""
    path = config.workspace / "HEARTBEAT.md"
    try:
        tasks = standing_tasks(read_inside(path, path.parent).decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        log.warning("heartbeat: cannot read %s: %s", path, e)
        return None
    if not tasks:
        return None
    if any(any((config.home / "inbox" / f).glob(f"*{SUFFIX}.json")) for f in ("new", "cur")):
        log.info("heartbeat skipped: the last one is still in the inbox")
        return None
    from lib.usage import owner
    meta = {"kind": "heartbeat", "quiet_reply": HEARTBEAT_OK}
    if to := owner(config):         # else nobody has written yet: it stays on "system"
        meta["reply_to"] = {"channel": to[0], "chat_id": to[1]}
    text = (f"[Heartbeat] The owner's standing tasks from {path}:\n\n{tasks}\n\n"
            "Do what is due now. Tell the owner only what needs their attention; if nothing "
            f"does, reply exactly {HEARTBEAT_OK} and nothing else.")
    return {"channel": "system", "chat_id": "heartbeat", "sender_id": "heartbeat", "text": text,
            "metadata": meta}
