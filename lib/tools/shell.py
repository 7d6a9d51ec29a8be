"""exec: run a shell command in the workspace, with a timeout and its output bounded.

What protects the host is the sandbox (lib/sandbox.py; what a command sees there: SPEC §8 and
README.md, Security); the environment holds no keys, sandbox or not. Without bubblewrap nothing
isolates a command: it can do whatever the gateway's user can, and a child that leaves its
process group (setsid) outlives it. Deny patterns, and the path checks made when the workspace
is restricted but the sandbox is off, are only a courtesy: no check of a command's text can hold.
"""
import re

from lib.errors import ToolError
from lib.tools.files import resolve


def exec(ctx, command: str, working_dir: str = "") -> str:
    """Run a shell command and return its output and exit code. Runs in the workspace unless
    working_dir is given. Long-running or interactive programs are stopped at the timeout, and
    whatever the command started (background jobs too) ends when it returns.

    Args:
        command: the shell command line
        working_dir: folder to run in (default: the workspace)
    """
    from lib import approvals, sandbox
    settings = ctx.config.tools.exec
    for pattern in settings.deny_patterns:
        if re.search(pattern, command, re.IGNORECASE):
            raise ToolError("refused: this looks like a destructive command "
                            f"(matches deny pattern {pattern!r} in tools.exec.deny_patterns)")
    workspace = ctx.workspace.resolve()
    cwd = resolve(ctx, working_dir) if working_dir else workspace
    restrict = ctx.config.tools.restrict_to_workspace
    boxed = sandbox.use_bwrap(settings, restrict)
    if restrict and not boxed:
        sandbox.check_paths(command, lambda path: resolve(ctx, path))
    if approvals.risk(ctx, command, boxed):        # the owner's yes first (SPEC §9)
        approvals.ask(ctx, approvals.exec_binding(ctx, command, cwd),
                      approvals.question(ctx, command, cwd))
    argv = sandbox.bwrap_argv(ctx.config, workspace, cwd, command, ctx.memory) if boxed else \
        ["/bin/sh", "-c", command]
    timeout = ctx.time_left(settings.timeout)
    env = sandbox.environment(settings, workspace, ctx.config.agents.defaults.timezone)
    text, code = sandbox.run(argv, env, cwd, timeout, settings.max_output)
    return f"{text.rstrip()}\n[{_status(code, timeout, settings.timeout)}]".lstrip()


def _status(code, timeout: float, own_limit: int) -> str:
    if code is not None:
        return f"exit code {code}"
    if timeout == own_limit:
        return f"killed after the {own_limit}s timeout (tools.exec.timeout)"
    return f"killed after {timeout:.0f}s: the turn ran out of time (agents.defaults.turn_timeout_s)"


TOOLS = [exec]
