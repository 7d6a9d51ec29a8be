"""The system prompt: who the assistant is (workspace files), what it remembers, which skills it
has, and the facts of this moment (time, channel, workspace)."""
import platform
import time
from datetime import datetime
from pathlib import Path

from lib.agent import skills
from lib.agent.memory import Memory
from lib.tools.files import read_inside

BOOTSTRAP = ("AGENTS.md", "SOUL.md", "USER.md", "TOOLS.md")


def clock(tz: str = "") -> str:
    """The time now in zone `tz` ("" is the system's), as the prompts give it."""
    from zoneinfo import ZoneInfo
    moment = datetime.now(ZoneInfo(tz)) if tz else datetime.now().astimezone()
    return f"{moment:%Y-%m-%d %H:%M (%A)} {moment.tzname() or time.strftime('%Z')}"


def system_prompt(config, channel: str, chat_id: str, memory: bool = True) -> str:
    ws = config.workspace
    parts = [
        "You are nanoclaw, a personal AI assistant running on the owner's own computer. "
        "You can read and write files, run shell commands, search and fetch the web, send "
        "messages and follow skills. Be brief; answer in the user's language.",
        "## Now\n"
        f"- Time: {clock(config.agents.defaults.timezone)}\n"
        f"- Channel: {channel}, chat id: {chat_id}\n"
        f"- Workspace: {ws} (relative paths start here)\n"
        f"- Memory: {ws / 'memory' / 'MEMORY.md'} (facts; {'below' if memory else 'not in groups'}) and "
        f"{ws / 'memory' / 'HISTORY.md'} (older conversation summaries; grep it)\n"
        f"- System: {platform.system()} {platform.machine()}, Python {platform.python_version()}",
    ]
    sections = [(name, _read(ws / name)) for name in BOOTSTRAP] + [
        ("Long-term memory (memory/MEMORY.md)", Memory(ws).read() if memory else ""),
        ("Skills", skills.prompt_section(skills.discover(ws)))]
    return "\n\n".join(parts + [f"## {title}\n{text}" for title, text in sections if text])


def _read(path: Path) -> str:
    try:
        return read_inside(path, path.parent).decode("utf-8").strip()     # never through a link
    except (OSError, UnicodeDecodeError):
        return ""
