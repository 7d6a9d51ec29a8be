"""Long-term memory (SPEC §13): memory/MEMORY.md (facts, in the prompt) and memory/HISTORY.md
(append-only, dated summaries), written by the model as it consolidates a session. Nothing is lost
by accident: session lines stay as they are, each MEMORY.md is kept in memory/versions/ when it
is replaced, and one that is not valid UTF-8 is never replaced."""
import json
import logging
import os
import time
from contextlib import suppress
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

    def consolidate(self, session, provider, d, window: int = 0, deadline: float | None = None) -> bool:
        """Before one more message would push one out of the last `window` (0: all), fold the old
        part into memory: up to the first turn in the last half window, or the last one it holds
        whole; d.consolidate_batch messages per call at most. False while the model fails."""
        msgs, deadline = session.messages, deadline or time.monotonic() + d.turn_timeout_s
        if len(msgs) - session.consolidated < window:
            return True
        turns = [i for i in range(max(session.consolidated, len(msgs) - window + 1), len(msgs))
                 if msgs[i]["role"] == "user"]
        upto = next((i for i in turns if i >= len(msgs) - window // 2), turns[-1] if turns else len(msgs))
        while session.consolidated < upto and time.time() >= session.retry_consolidation_at:
            start = session.consolidated
            end = min(upto, start + d.consolidate_batch)
            end = next((i for i in range(end, start, -1) if i == upto or msgs[i]["role"] == "user"), end)
            prompt = _PROMPT.format(memory=self.read() or "(empty)", transcript=_transcript(msgs[start:end]))
            try:
                saved = _arguments(provider.complete([{"role": "user", "content": prompt}], [_SAVE],
                                   deadline=deadline, source="consolidation", session=session.key))
            except ProviderError as e:
                return self._failed(session, str(e))
            if not saved:
                return self._failed(session, "the model did not call save_memory")
            self._store(session.key, saved)
            session.mark("consolidated", upto=end)
        return session.consolidated >= upto         # False: a back-off is not over yet

    def _store(self, key: str, saved: dict):
        """A consolidation's result: its entry appended to HISTORY.md, its MEMORY.md written."""
        entry = " ".join(str(saved.get("history_entry", "")).split())
        if entry:
            self.dir.mkdir(parents=True, exist_ok=True)
            try:
                fd = open_inside(self.history_file, self.workspace, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                with open(fd, "a", encoding="utf-8") as f:
                    f.write(f"[{datetime.now():%Y-%m-%d %H:%M}] ({key}) {entry}\n\n")
            except OSError as e:
                log.warning("%s not written: %s", self.history_file, e)
        update = saved.get("memory_update")
        if isinstance(update, str) and update.strip() and update.strip() != self.read():
            self.write(update.strip() + "\n")

    def write(self, text: str) -> bool:
        """Replace MEMORY.md, the old one kept in versions/; not when it cannot be read whole."""
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
            log.warning("%s is left as it is (%s)", self.memory_file, e)
            return False
        atomic_write(self.memory_file, text)
        return True

    def forget(self, text: str, show: bool = True) -> str:
        """/forget TEXT: the lines with TEXT (any case) go; the answer quotes them, or counts them."""
        needle, lines = text.strip().casefold(), self.read().splitlines()
        gone = [line for line in lines if needle and needle in line.casefold()]
        if not gone:
            return f'Nothing in MEMORY.md contains "{text.strip()}"; nothing was removed.' if needle \
                else "Usage: /forget TEXT removes the lines of MEMORY.md that contain TEXT."
        if not self.write("".join(line + "\n" for line in lines if line not in gone)):
            return "MEMORY.md cannot be read as text, so it was left as it is (see the log)."
        return (f"Removed {len(gone)} line{'s' * (len(gone) > 1)} from MEMORY.md (the previous "
                "version is kept in memory/versions/)" + (":\n" + "\n".join(gone) if show else "."))

    def _failed(self, session, why: str) -> bool:
        wait = min(MAX_BACKOFF_S, BACKOFF_S * 2 ** session.consolidation_failures)
        session.mark("consolidation_failed", retry_at=time.time() + wait)
        log.warning("memory consolidation of %s postponed for %d s: %s", session.key, wait, why)
        return False


def _transcript(messages) -> str:
    lines = []
    for m in messages:
        text, cut = m.get("content") or "", 300 if m["role"] == "tool" else MAX_CHARS_PER_MESSAGE
        text = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False)
        if len(text) > cut:
            text = text[:cut] + f" [… {len(text) - cut} characters cut]"
        if m.get("tool_calls"):
            text += " [used tools: " + ", ".join(c["function"]["name"] for c in m["tool_calls"]) + "]"
        if m["role"] == "tool":
            text = f"[{m.get('name', 'tool')} result] {text}"
        lines.append(f"[{str(m.get('timestamp', ''))[:16]}] {m['role'].upper()}: {text}")
    return "\n".join(lines)


def _arguments(reply) -> dict | None:
    candidates = [c["arguments"] for c in reply.tool_calls if c["name"] == "save_memory"]
    text = reply.content or ""      # some models answer with the JSON as text instead of calling
    candidates.append(text[text.find("{"):text.rfind("}") + 1])
    for raw in candidates:
        with suppress(ValueError):      # not JSON: the next candidate
            data = json.loads(raw)
            if isinstance(data, dict) and ("history_entry" in data or "memory_update" in data):
                return data
    return None
