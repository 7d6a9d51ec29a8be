"""exec: run a shell command in the workspace, with a timeout, an output cap and deny patterns.

Deny patterns and the workspace check are guard rails against accidents, not a sandbox: for
real isolation run the service under the hardened systemd unit (deploy/) or a container.
"""
import os
import re
import signal
import subprocess

from lib.errors import ToolError
from lib.tools.files import resolve

MAX_OUTPUT = 10_000
_PATHS = re.compile(r"""(?:^|[\s'"=<>|;&(`])((?:/|~)[^\s'"|;&<>()`]*)""")
_ALLOWED = {"/dev/null", "/dev/stdout", "/dev/stderr"}


def exec(ctx, command: str, working_dir: str = "") -> str:
    """Run a shell command and return its output and exit code. Runs in the workspace unless
    working_dir is given. Long-running or interactive programs are stopped at the timeout.

    Args:
        command: the shell command line
        working_dir: folder to run in (default: the workspace)
    """
    settings = ctx.config.tools.exec
    for pattern in settings.deny_patterns:
        if re.search(pattern, command, re.IGNORECASE):
            raise ToolError("refused: this looks like a destructive command "
                            f"(matches deny pattern {pattern!r} in tools.exec.deny_patterns)")
    cwd = resolve(ctx, working_dir) if working_dir else ctx.workspace
    if ctx.restrict:
        _check_paths(ctx, command)
    try:
        proc = subprocess.Popen(command, shell=True, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    except OSError as e:
        raise ToolError(f"cannot run the command in {cwd}: {e.strerror}") from None
    try:
        out, err = proc.communicate(timeout=settings.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=0.5)
        except subprocess.TimeoutExpired as e:   # a child left the group (setsid) and holds our pipes
            out, err = e.stdout or b"", e.stderr or b""
            proc.stdout.close()
            proc.stderr.close()
            proc.wait()
        return _format(out, err, f"killed after the {settings.timeout}s timeout (tools.exec.timeout)")
    return _format(out, err, f"exit code {proc.returncode}")


def _check_paths(ctx, command: str):
    if re.search(r"(^|[\s/'\"=])\.\.(/|\s|$|['\"])", command):
        raise ToolError("refused: '..' in a command is not allowed while "
                        "tools.restrict_to_workspace is on")
    if re.search(r"\$\{?HOME\b", command):
        raise ToolError("refused: $HOME is outside the workspace (tools.restrict_to_workspace is on)")
    for path in _PATHS.findall(command):
        if path not in _ALLOWED:
            resolve(ctx, path)      # raises when it lies outside the workspace


def _format(out: bytes, err: bytes, status: str) -> str:
    text = out.decode("utf-8", "replace")
    if err:
        text += ("\n" if text else "") + "STDERR:\n" + err.decode("utf-8", "replace")
    if len(text) > MAX_OUTPUT:
        cut = len(text) - MAX_OUTPUT
        text = f"{text[:MAX_OUTPUT // 2]}\n[... {cut} characters cut ...]\n{text[-MAX_OUTPUT // 2:]}"
    return f"{text.rstrip()}\n[{status}]".lstrip()


TOOLS = [exec]
