"""The message contract (SPEC §3), on the ground floor: the channel names, how a message enters
the inbox or the outbox, and how an inbox file is read and checked. Channels, the worker, cron,
the heartbeat and the web side use it; it imports none of them."""
import json
import os
import stat
from pathlib import Path

from lib import maildir
from lib.channels import CHANNELS as CHAT_APPS
from lib.sessions import now_iso

CHANNELS = (*CHAT_APPS, "cli", "system", "local", "web", "api")
# replies go straight to outbox/sent/: a script, the web page (web) or an API client (api) reads them there
NO_REMOTE = ("local", "cli", "system", "web", "api")
MAX_BYTES = 1024 * 1024
MAX_DEPTH = 100         # deeper JSON is refused: the decoder (and every encoder after) recurses
KINDS = dict(p="a FIFO", l="a symbolic link", d="a folder", c="a device", b="a device", s="a socket")


def post_inbox(home: Path, msg: dict, name: str | None = None) -> Path | None:
    """Drop a message into the inbox. With a fixed `name`, a second post of the same name (a job
    re-run after a crash) is ignored: returns None. The link into new/ decides between two
    posts at once; cur/, done/ and failed/ (looked at in that order) hold it later."""
    inbox = Path(home) / "inbox"
    if name and maildir.find(inbox, name + ".json"):
        return None
    try:
        return maildir.deliver(inbox, dict(msg, created_at=msg.get("created_at") or now_iso()), name)
    except maildir.Clash:
        return None


def post_outbox(home: Path, channel: str, chat_id: str, text: str, *, reply_to=None, media=(),
                metadata=None, key: str = "") -> Path:
    """Queue a message for a channel. `key` (the inbox file's name) marks a reply, so a restart
    can see that the reply exists. Channels without a remote side file it as sent at once."""
    if channel not in CHANNELS:         # it becomes part of a file name: no "../"
        raise ValueError(f"unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}")
    name = maildir.unique_name(f"{channel}.") + (f".r{key}" if key else "")
    obj = {"id": name, "channel": channel, "chat_id": str(chat_id), "text": text,
           "media": list(media), "metadata": metadata or {}, "created_at": now_iso()}
    if reply_to:
        obj["reply_to"] = reply_to
    return maildir.deliver(Path(home) / "outbox", obj, name,
                           into="sent" if channel in NO_REMOTE else "new")


def target(msg: dict) -> tuple[str, str]:
    """Where the reply goes and whose conversation it belongs to. A system message (cron,
    heartbeat, sub-agent result) may name a chat in metadata.reply_to."""
    to = msg.get("metadata", {}).get("reply_to") if msg["channel"] == "system" else None
    if isinstance(to, dict) and to.get("channel") in CHANNELS and to.get("chat_id"):
        return to["channel"], str(to["chat_id"])
    return msg["channel"], msg["chat_id"]


def reply_exists(home: Path, key: str) -> bool:
    """Whether the reply to inbox message `key` was queued (post_outbox names it …rKEY.json)."""
    suffix = f".r{key}.json"        # outbox names: CHANNEL.TIME.PID.COUNT.rKEY.json
    return any(n.endswith(suffix) and n[:-len(suffix)].count(".") == 3
               for folder in ("new", "cur", "sent", "failed")
               for n in maildir.waiting(Path(home) / "outbox", folder=folder))


def fail_outbox(path: Path, reason: str, msg: dict | None = None) -> Path:
    """A reply that cannot be delivered goes to outbox/failed/ with the reason in its `error`
    field (SPEC §3) and in NAME.error beside it; a file that is no message keeps its bytes."""
    try:
        msg = read_message(path) if msg is None else msg
        maildir.atomic_write(path, json.dumps(dict(msg, error=reason), ensure_ascii=False))
    except (OSError, ValueError):
        pass
    return maildir.fail(path, reason)


def read_message(path: Path) -> dict:
    """The inbox message in `path`, checked against SPEC §3; ValueError says what is wrong."""
    # Anything but a regular file is refused unread: a FIFO would block, a link point anywhere.
    _regular(os.lstat(path))
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW), "rb") as f:
        _regular(os.fstat(f.fileno()))          # it may have been swapped meanwhile
        raw = f.read(MAX_BYTES + 1)             # a file still growing is not read without end
        if len(raw) > MAX_BYTES:
            raise ValueError(f"the file is over {MAX_BYTES} bytes; the limit is 1 MiB")
    deep = ValueError(f"JSON nested too deep (the limit is {MAX_DEPTH} levels)")
    try:
        msg = json.loads(raw.decode("utf-8-sig"))    # a BOM (Windows editors) is skipped
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise deep from None
    if not _within(msg, MAX_DEPTH):
        raise deep
    if not isinstance(msg, dict):
        raise ValueError("not a JSON object")
    for field in ("channel", "chat_id", "text"):
        if field not in msg:
            raise ValueError(f"missing required field {field!r}")
    if msg["channel"] not in CHANNELS:
        raise ValueError(f"unknown channel {msg['channel']!r}; expected one of {', '.join(CHANNELS)}")
    for field, types in (("chat_id", (str, int)), ("text", str), ("sender_id", (str, int)),
                         ("media", list), ("metadata", dict), ("id", (str, int))):
        if field in msg and not isinstance(msg[field], types) or isinstance(msg.get(field), bool):
            raise ValueError(f"field {field!r} has the wrong type ({type(msg[field]).__name__})")
    if not all(isinstance(m, str) for m in msg.get("media", [])):
        raise ValueError("field 'media' must be a list of file paths")
    if not msg["text"] and not msg.get("media"):
        raise ValueError("empty message: 'text' is empty and there is no 'media'")
    msg["chat_id"] = str(msg["chat_id"])
    msg["id"] = str(msg.get("id") or path.stem)
    msg.setdefault("created_at", now_iso())
    return msg


def _regular(st: os.stat_result) -> os.stat_result:
    if not stat.S_ISREG(st.st_mode):
        kind = KINDS.get(stat.filemode(st.st_mode)[0], "of another kind")
        raise ValueError(f"not a regular file ({kind}); it was not read")
    return st


def _within(obj, depth: int) -> bool:
    # True when `obj` nests lists and objects at most `depth` levels (walked level by level).
    level = [obj]
    for _ in range(depth):
        level = [v for o in level if isinstance(o, (dict, list))
                 for v in (o.values() if isinstance(o, dict) else o)]
        if not level:
            return True
    return False
