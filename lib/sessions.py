"""Conversations as append-only JSONL (SPEC §4): a metadata line, then one chat message or marker
per line, flushed as soon as it exists and never rewritten; a torn or corrupt line is skipped."""
import json
import logging
import os
import re
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path

from lib import maildir

log = logging.getLogger(__name__)
_MODEL_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")
MAX_NAME = 200          # characters of a session file's name before the hash (a name holds 255)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def session_path(home: Path, channel: str, chat_id: str, hashed: bool = True) -> Path:
    """SPEC §4: sessions/<channel>_<chat_id>.jsonl, characters outside [A-Za-z0-9._-] replaced by
    _, and then a short hash of the key added; `hashed=False`: the name older versions used. A
    name too long for a file is cut to MAX_NAME characters before the hash."""
    raw = f"{channel}_{chat_id}"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", raw)
    if hashed and (name != raw or len(name) > MAX_NAME):
        import hashlib                  # OpenSSL: 2 MB that `status` and `cron list` do without
        key = f"{channel}:{chat_id}".encode("utf-8", "surrogatepass")
        name = name[:MAX_NAME] + "-" + hashlib.sha256(key).hexdigest()[:8]
    return Path(home) / "sessions" / f"{name}.jsonl"


def _rehome(old: Path):
    """Without the hash a@b.com and a_b.com shared email_a_b.com.jsonl: such a file moves to the
    name of the key in its metadata line, whoever opens it first (never over a file)."""
    with suppress(OSError, ValueError, AttributeError):  # none, no key (a torn line), name taken
        with open(old, "rb") as f:
            channel, chat_id = json.loads(f.readline(4096)).get("key").split(":", 1)
        new = session_path(old.parent.parent, channel, chat_id)
        if new != old and session_path(old.parent.parent, channel, chat_id, False) == old:
            maildir.rename_new(old, new)
            log.info("sessions/%s is now sessions/%s (its key has a character a name cannot hold)",
                     old.name, new.name)


class Session:
    def __init__(self, home: Path, channel: str, chat_id: str):
        self.key = f"{channel}:{chat_id}"
        self.path = session_path(home, channel, chat_id)
        _rehome(session_path(home, channel, chat_id, hashed=False))
        self._load()

    @property
    def stale(self) -> bool:
        """True when someone else (another process, /new elsewhere) changed the file since."""
        try:
            return self.path.stat().st_size != self._size
        except FileNotFoundError:
            return self._size != 0

    def _load(self, group=False):       # from the file, or empty when there is none
        self.messages: list[dict] = []
        self.consolidated = 0           # messages before this index are in memory already
        self.consolidation_failures = 0     # in a row, since the last success
        self.retry_consolidation_at = 0.0   # epoch seconds: no new try before (back-off)
        self._size = 0                  # the file's size as this object last saw it
        self.group = group              # a group chat's (SPEC §13): kept across /new
        with suppress(FileNotFoundError), open(self.path, "rb") as f:
            self._size = os.fstat(f.fileno()).st_size
            for n, raw in enumerate(f, 1):
                try:
                    obj = json.loads(raw)
                    if not isinstance(obj, dict):
                        raise ValueError("not an object")
                    self._apply(obj)
                    if obj.get("_type") is None and "role" in obj:
                        self.messages.append(obj)
                except (ValueError, TypeError):     # TypeError: "upto": null
                    if raw.strip():
                        log.warning("%s line %d is torn or corrupt; skipped", self.path, n)

    def append(self, msg: dict):
        """Write one message now, flushed (it survives a kill -9), None fields left out."""
        msg = {"timestamp": now_iso(), **{k: v for k, v in msg.items() if v is not None or k == "content"}}
        self.messages.append(msg)
        self.group = self.group or msg.get("group") is True
        self._write(msg)

    def mark(self, kind: str, **fields):
        """Append a marker: "consolidated" (upto=N) or "consolidation_failed" (retry_at=T)."""
        self._apply({"_type": kind, **fields})
        self._write({"_type": kind, **fields, "at": now_iso()})

    def _apply(self, marker: dict):
        self.group = self.group or marker.get("group") is True     # a message's, or metadata's
        if marker.get("_type") == "consolidated":
            self.consolidated = int(marker.get("upto", 0))
            self.consolidation_failures, self.retry_consolidation_at = 0, 0.0
        elif marker.get("_type") == "consolidation_failed":
            self.consolidation_failures += 1
            self.retry_consolidation_at = float(marker.get("retry_at", 0))

    def _write(self, obj: dict | None):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab+") as f:
            if f.tell() == 0:           # append mode starts at the end: a new or empty file
                meta = {"_type": "metadata", "key": self.key, "created_at": now_iso(),
                        **({"group": True} if self.group else {})}
                f.write(json.dumps(meta).encode() + b"\n")
            else:                       # a torn last line must not swallow this one
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            if obj is not None:
                f.write(json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n")
            f.flush()
            self._size = f.tell()

    def sync(self):
        if self.path.exists():
            maildir.sync(self.path)

    def history(self, window: int) -> list[dict]:
        """The last `window` messages, consolidated or not (SPEC §13), as the API takes them: from
        a user message on, our fields removed, a call left without its result given one."""
        start = max(0, len(self.messages) - max(window, 0))
        while start < len(self.messages) and self.messages[start].get("role") != "user":
            start += 1
        if start > self.consolidated:   # SPEC §13: only while consolidation fails or lags behind
            log.warning("%s: %d older messages are out of the prompt and not yet in memory; they "
                        "wait in %s", self.key, start - self.consolidated, self.path.name)
        out, unanswered = [], []
        for m in self.messages[start:]:
            if m.get("role") == "tool" and any(c.get("id") == m.get("tool_call_id") for c in unanswered):
                unanswered = [c for c in unanswered if c.get("id") != m.get("tool_call_id")]
            else:
                out += [interrupted(c) for c in unanswered]
                if m.get("role") == "tool":
                    # a result that came after other turns (a parked call, approved later): its call
                    # was answered "interrupted" in their requests, and the API takes no tool result
                    # without its call just before, so the model is told it as news
                    m = {"role": "user", "content": (
                        f"[The result of your earlier {m.get('name')} call, which came later]\n"
                        f"{m.get('content')}")}
                unanswered = list(m.get("tool_calls") or [])
            out.append({k: m[k] for k in _MODEL_KEYS if k in m})
        return out + [interrupted(c) for c in unanswered]

    def archive(self):
        """Start over: the old file moves to sessions/archive/ (kept, not deleted)."""
        if self.path.exists():
            dest = self.path.parent / "archive" / (maildir.unique_name(f"{self.path.stem}.") + ".jsonl")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path, dest)
        self._load(self.group)          # no file now: the state of a new session of the same
        if self.group:                  # chat, whose first line says it is a group's
            self._write(None)


def interrupted(call: dict) -> dict:
    """The tool result for a call whose real result never came (Ctrl+C, a crash, a call after
    one that waited for the owner's approval)."""
    return {"role": "tool", "tool_call_id": call.get("id"),
            "name": (call.get("function") or {}).get("name", ""),
            "content": "Error: interrupted before this tool finished; run it again if it is "
                       "still needed."}
