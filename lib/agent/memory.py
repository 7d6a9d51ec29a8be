"""Long-term memory: memory/MEMORY.md (facts, always in the prompt) and memory/HISTORY.md
(append-only, dated summaries of older conversation). The model writes both by consolidating.

Nothing is lost by accident: session lines are never touched (a marker records how far
consolidation got), each rewrite of MEMORY.md keeps the previous version in memory/versions/,
a MEMORY.md that is not valid UTF-8 is never rewritten, and a failing model is asked again only
after a back-off (60 s, doubling, at most a day), not after every message."""
import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path

from lib.errors import ProviderError
from lib.maildir import atomic_write
from lib.tools.files import open_inside, read_inside

log = logging.getLogger(__name__)

_SAVE = {"type": "function", "function": {
    "name": "save_memory",
    "description": "Save the consolidated memory.",
    "parameters": {"type": "object", "required": ["history_entry", "memory_update"], "properties": {
        "history_entry": {"type": "string", "description":
            "2-5 sentences: what happened, was decided or learned, with names, dates and numbers "
            "someone would grep for later."},
        "memory_update": {"type": "string", "description":
            "The complete new MEMORY.md: the existing facts plus new lasting ones (who the user "
            "is, preferences, projects, commitments). Unchanged if nothing new."}}}}}

KEEP_VERSIONS = 30
MAX_CHARS_PER_MESSAGE = 2000     # of each message in the transcript: a request stays bounded
BACKOFF_S, MAX_BACKOFF_S = 60, 86400

_PROMPT = ("You consolidate an assistant's memory. Read the current long-term memory and a part "
           "of a conversation that is leaving the assistant's context window, then call "
           "save_memory once.\n\n## Current MEMORY.md\n{memory}\n\n## Conversation\n{transcript}")


class Memory:
    def __init__(self, workspace: Path):
        self.workspace = Path(workspace)
        self.dir = self.workspace / "memory"
        self.memory_file = self.dir / "MEMORY.md"
        self.history_file = self.dir / "HISTORY.md"

    def read(self) -> str:
        """MEMORY.md for the prompt; bytes that are not UTF-8 are shown replaced, never dropped."""
        try:
            return read_inside(self.memory_file, self.workspace).decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def consolidate(self, session, provider, keep: int, batch: int = 100,
                    deadline: float | None = None) -> bool:
        """Fold the oldest unconsolidated messages, at most `batch`, into memory, leaving the
        last `keep`. False (nothing lost: the messages stay in the session, and the next try
        waits for the back-off) when the model does not cooperate."""
        end = min(max(session.consolidated, len(session.messages) - keep), session.consolidated + batch)
        part = session.messages[session.consolidated:end]
        if not part:
            return True
        if time.time() < session.retry_consolidation_at:
            return False
        prompt = _PROMPT.format(memory=self.read() or "(empty)", transcript=_transcript(part))
        try:
            reply = provider.complete([{"role": "user", "content": prompt}], [_SAVE], deadline=deadline,
                                      source="consolidation", session=session.key)
        except ProviderError as e:
            return self._failed(session, str(e))
        saved = _arguments(reply)
        if not saved:
            return self._failed(session, "the model did not call save_memory")
        entry = " ".join(str(saved.get("history_entry", "")).split())
        if entry:
            stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
            self.dir.mkdir(parents=True, exist_ok=True)
            try:
                fd = open_inside(self.history_file, self.workspace, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                with open(fd, "a", encoding="utf-8") as f:
                    f.write(f"[{stamp}] ({session.key}) {entry}\n\n")
            except OSError as e:
                log.warning("%s not written: %s", self.history_file, e)
        update = saved.get("memory_update")
        if isinstance(update, str) and update.strip() and update.strip() != self.read():
            self.write(update.strip() + "\n")
        session.mark_consolidated(end)
        return True

    def write(self, text: str) -> bool:
        """Replace MEMORY.md, keeping the old one in memory/versions/ (the newest 30). Never when
        the old one cannot be read whole (not UTF-8, or a link out of the workspace)."""
        versions = self.dir / "versions"
        try:
            old = read_inside(self.memory_file, self.workspace)
            old.decode("utf-8")
            versions.mkdir(parents=True, exist_ok=True)
            name = f"MEMORY.{datetime.now():%Y%m%d-%H%M%S-%f}.md"
            with open(open_inside(versions / name, self.workspace,
                                  os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as f:
                f.write(old)
            for stale in sorted(versions.glob("MEMORY.*.md"))[:-KEEP_VERSIONS]:
                stale.unlink()
        except FileNotFoundError:
            pass                # the first MEMORY.md: nothing to keep
        except (OSError, UnicodeDecodeError) as e:
            log.warning("%s is left as it is (%s); the summary went to HISTORY.md only",
                        self.memory_file, e)
            return False
        atomic_write(self.memory_file, text)
        return True

    def _failed(self, session, why: str) -> bool:
        wait = min(MAX_BACKOFF_S, BACKOFF_S * 2 ** session.consolidation_failures)
        session.mark_consolidation_failed(time.time() + wait)
        log.warning("memory consolidation of %s postponed for %d s: %s", session.key, wait, why)
        return False


def _transcript(messages) -> str:
    lines = []
    for m in messages:
        text = m.get("content") or ""
        if not isinstance(text, str):
            text = json.dumps(text, ensure_ascii=False)
        if len(text) > MAX_CHARS_PER_MESSAGE:
            text = text[:MAX_CHARS_PER_MESSAGE] + f" [… {len(text) - MAX_CHARS_PER_MESSAGE} characters cut]"
        if m.get("tool_calls"):
            text += " [used tools: " + ", ".join(c["function"]["name"] for c in m["tool_calls"]) + "]"
        if m.get("role") == "tool":
            text = f"[{m.get('name', 'tool')} result] {text[:300]}"
        lines.append(f"[{str(m.get('timestamp', ''))[:16]}] {m['role'].upper()}: {text}")
    return "\n".join(lines)


def _arguments(reply) -> dict | None:
    candidates = [c["arguments"] for c in reply.tool_calls if c["name"] == "save_memory"]
    if reply.content:       # some models answer with the JSON as text instead of calling
        start, end = reply.content.find("{"), reply.content.rfind("}")
        candidates.append(reply.content[start:end + 1] if start >= 0 else "")
    for raw in candidates:
        try:
            data = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            continue
        if isinstance(data, dict) and ("history_entry" in data or "memory_update" in data):
            return data
    return None
