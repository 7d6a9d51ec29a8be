"""spawn: hand a long, self-contained job to a background sub-agent (lib/agent/subagent.py)."""
from lib.errors import ToolError


def spawn(ctx, task: str, label: str = "") -> str:
    """Start a background sub-agent for a long, self-contained job, so this conversation can go on.
    It has the file, shell and web tools but not this conversation: put everything it needs in
    the task. Its result comes back to you later as a system message, and you relay it.

    Args:
        task: the whole job, with every detail and the result expected
        label: a short name for the job, shown to the user
    """
    if ctx.services.spawn is None:
        raise ToolError("background tasks need the gateway (python nanoclaw.py gateway)")
    return ctx.services.spawn.spawn(task, label, ctx.channel, ctx.chat_id, ctx.memory, ctx.readable)


TOOLS = [spawn]
