"""Long-term memory: memory/MEMORY.md (facts, always in the prompt) and memory/HISTORY.md
(append-only, dated summaries of older conversation). The model writes both by consolidating."""
import json
import logging
from datetime import datetime
from pathlib import Path

from lib.errors import ProviderError
from lib.maildir import atomic_write

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

_PROMPT = ("You consolidate an assistant's memory. Read the current long-term memory and a part "
           "of a conversation that is leaving the assistant's context window, then call "
           "save_memory once.\n\n## Current MEMORY.md\n{memory}\n\n## Conversation\n{transcript}")


class Memory:
    def __init__(self, workspace: Path):
        self.dir = Path(workspace) / "memory"
        self.memory_file = self.dir / "MEMORY.md"
        self.history_file = self.dir / "HISTORY.md"

    def read(self) -> str:
        try:
            return self.memory_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return ""

    def consolidate(self, session, provider, keep: int) -> bool:
        """Fold all but the last `keep` unconsolidated messages into memory. False (and nothing
        lost: the messages stay in the session) when the model does not cooperate."""
        end = max(session.consolidated, len(session.messages) - keep)
        part = session.messages[session.consolidated:end]
        if not part:
            return True
        prompt = _PROMPT.format(memory=self.read() or "(empty)", transcript=_transcript(part))
        try:
            reply = provider.complete([{"role": "user", "content": prompt}], [_SAVE])
        except ProviderError as e:
            log.warning("memory consolidation postponed: %s", e)
            return False
        saved = _arguments(reply)
        if not saved:
            log.warning("memory consolidation postponed: the model did not call save_memory")
            return False
        entry = " ".join(str(saved.get("history_entry", "")).split())
        if entry:
            stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(self.history_file, "a", encoding="utf-8") as f:
                f.write(f"[{stamp}] ({session.key}) {entry}\n\n")
        update = saved.get("memory_update")
        if isinstance(update, str) and update.strip() and update.strip() != self.read():
            atomic_write(self.memory_file, update.strip() + "\n")
        session.mark_consolidated(end)
        return True


def _transcript(messages) -> str:
    lines = []
    for m in messages:
        text = m.get("content") or ""
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
