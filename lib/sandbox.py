"""The exec tool's sandbox (SPEC §8): whether to use bubblewrap, its command line, the scrubbed
environment, running a command with its output bounded in memory, and the tools.exec settings.

Under bubblewrap a command sees the workspace read-write at its real path, the rest of the file
system read-only, empty folders where $NANOCLAW_HOME and the user's home are, a private /tmp and
/dev, and its own PID namespace: when it ends or is killed, everything it started dies with it
(also `setsid`/`nohup` children). Without bubblewrap a command's end or timeout kills its process
group, which is best effort: a child that left the group (setsid) lives on.
"""
import codecs
import logging
import os
import re
import shutil
import time
from contextlib import suppress
from dataclasses import field
from pathlib import Path
from types import SimpleNamespace

from lib.errors import ToolError
from lib.fields import setting, settings

log = logging.getLogger(__name__)
BWRAP = "bwrap"          # the program looked up on PATH; tests point it at one that is missing
FIX = "install bubblewrap (sudo apt install bubblewrap)"
BASE = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
        "--unshare-pid", "--die-with-parent", "--new-session"]
DEFAULT_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "TERM": "dumb",
               "TZ": ":/etc/localtime"}      # the system's zone, when neither config nor TZ names one
CHUNK = 65536
GRACE = 0.5              # seconds to drain the pipes after the command ended
_problems: dict = {}     # bwrap's path -> why it does not work ("" when it does); probed once

# A courtesy, not the boundary (the sandbox is, SPEC §8): the usual ways to wipe, format, power
# off or fork-bomb a machine; anything here can be written another way. Repeats are bounded
# ({0,9}, {0,200}) so that no command, however long, makes a search slow.
_WHOLE = r"""['"]?(/|~|\$\{?HOME\}?)/?\*?['"]?(\s|$|[;&|)])"""     # / , /* , ~/ , $HOME itself
# a command word: first, after ; & | ( ` or a wrapper (sudo -n, sh -c ', nohup, systemctl, /sbin/)
_COMMAND = (r"(^|[;&|(`\n]|\b(sudo|doas|env|exec|nohup|nice|time|xargs|systemctl|(ba|da|z)?sh\s+-c)\b"
            r"|/s?bin/)([ \t]+-\S+){0,9}[ \t]*['\"]?")
DENY_PATTERNS = [
    rf"\brm\s+(-\S*\s+){{0,9}}{_WHOLE}", rf"\bfind\s+{_WHOLE}[^;&|\n]{{0,200}}-(delete|exec\s+rm)\b",
    r"""\brmtree\s*\(\s*['"](/|~/?)['"]""", rf"\bch(mod|own|grp)\s+([^\s;&|]+\s+){{0,9}}{_WHOLE}",
    r"\|\s*(sudo(\s+-\S+)*\s+)?(/usr)?(/bin/)?(ba|da|z|k)?sh(\s|$|[;&|)])",     # ... | sh
    r"\b(mkfs|mke2fs|mkswap|wipefs|blkdiscard)\b", r"\bdd\b[^;&|\n]{0,200}\bof=/dev/(?!(null|zero|stdout|stderr)\b)",
    r">\s*/dev/(sd|nvme|mmcblk|hd|vd|xvd|mapper/|dm-|md\d|loop|disk)",
    rf"{_COMMAND}(shutdown|reboot|poweroff|halt)(\s|$|[;&|)`'\"])", r"\b(tel)?init\s+[06]\b",
    r"\bkill\s+(-\S+\s+)*-1\s*($|[;&|)])", r"(?<![^\s;&|])([^\s(){};&|]{1,40})\s*\(\)\s*\{[^}]{0,80}\1\s*\|\s*\1",
    r"\bformat\s+[a-z]:", r"\bdiskpart\b",
]


@settings
class Exec:
    enable: bool = True          # false: no shell tool at all
    timeout: int = setting(60, low=1)
    deny_patterns: list[str] = field(default_factory=lambda: list(DENY_PATTERNS),
                                     metadata={"regex": True})
    sandbox: str = setting("auto", "auto", "bwrap", "off")
    network: bool = True         # false: commands have no network (bwrap --unshare-net)
    expose: list[str] = setting([])   # extra paths visible in the sandbox, read-only ("PATH:rw" to write)
    env: dict[str, str] = setting({})  # variables commands get besides PATH HOME LANG TERM TZ
    max_output: int = setting(10000, low=100)


def use_bwrap(settings, restrict: bool) -> bool:
    """Whether exec runs in bubblewrap; ToolError when the settings need a sandbox there is not."""
    if settings.sandbox == "off":
        return False
    why = problem()
    if not why:
        return True
    if settings.sandbox == "bwrap":
        raise ToolError(f"tools.exec.sandbox is bwrap, but {why}: {FIX}, "
                        "or set tools.exec.sandbox: off")
    if restrict:
        raise ToolError(f"refused: exec has no sandbox ({why}) and tools.restrict_to_workspace is "
                        f"on: {FIX}, or set tools.exec.sandbox: off to accept best-effort checks")
    return False


def problem() -> str:
    """Why bubblewrap cannot run here ("" when it can): probed once per binary, then cached."""
    path = shutil.which(BWRAP)
    if path not in _problems:
        _problems[path] = _probe(path)
        if _problems[path]:
            log.warning("exec has no sandbox: %s. To get one, %s", _problems[path], FIX)
    return _problems[path]


def _probe(path) -> str:
    import subprocess
    if path is None:
        return f"{BWRAP} is not installed"
    try:
        done = subprocess.run([path, *BASE, "true"], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{path} does not run ({e})"
    said = done.stderr.decode(errors="replace").strip().splitlines()
    return f"{path} does not work here ({said[0] if said else f'exit code {done.returncode}'})" \
        if done.returncode else ""


def environment(settings, workspace: Path, tz: str = "") -> dict:
    """PATH, HOME (the workspace), LANG, TERM and TZ (`tz`, agents.defaults.timezone, when set),
    plus tools.exec.env: nothing else."""
    env = {k: os.environ.get(k) or default for k, default in DEFAULT_ENV.items()}
    env = {k: v for k, v in env.items() if v}
    return {**env, "HOME": str(workspace), **({"TZ": tz} if tz else {}),
            **{k: str(v) for k, v in settings.env.items()}}


def bwrap_argv(config, workspace: Path, cwd: Path, command: str, memory: bool = True) -> list:
    """bubblewrap's command line. It mounts in argv order, so a folder comes before what is in
    it: the homes are hidden first, then an exposed path or the workspace inside them reappears.
    workspace/memory is read-only (SPEC §13: MEMORY.md changes through the tools, which keep a
    version, and HISTORY.md only grows), and hidden when `memory` is false (a group chat)."""
    settings, homes, keys = config.tools.exec, _homes(config.home), Path(config.path).resolve()
    mounts = [("--tmpfs", p) for p in homes] + _exposed(settings.expose) + [("--bind", workspace)]
    with suppress(FileExistsError):         # made now, or a command could make it unguarded
        (workspace / "memory").mkdir()
    if (target := (workspace / "memory").resolve()).is_dir() or not memory:    # a link: its target
        mounts.append(("--ro-bind" if memory else "--tmpfs", target))
    if keys.is_file() and not any(keys.is_relative_to(h) for h in homes):
        mounts.append(("hide", keys))       # a config kept elsewhere (--config /etc/…): empty
    argv = [shutil.which(BWRAP) or BWRAP, *BASE] + ([] if settings.network else ["--unshare-net"])
    for flag, path in sorted(mounts, key=lambda mount: len(mount[1].parts)):
        source = {"--tmpfs": [], "hide": ["/dev/null"]}.get(flag, [str(path)])
        argv += ["--ro-bind" if flag == "hide" else flag, *source, str(path)]
    return argv + ["--chdir", str(cwd), "/bin/sh", "-c", command]


def _homes(nanoclaw_home) -> list:
    """$NANOCLAW_HOME, $HOME and the user's home from the password database, at their real paths."""
    import pwd
    paths = [nanoclaw_home, os.environ.get("HOME")]
    try:
        paths.append(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:            # a uid without a name (a container run with --user)
        pass
    real = {Path(p).resolve() for p in paths if p}
    return sorted(p for p in real if p != Path("/") and p.is_dir())


def _exposed(entries) -> list:
    """(flag, path) for tools.exec.expose: read-only, or writable with ":rw" (a device: usable)."""
    mounts = []
    for entry in entries:
        rw = entry.endswith(":rw")
        path = Path(os.path.abspath(os.path.expanduser(entry[:-3] if rw else entry)))
        if not path.exists():
            log.warning("tools.exec.expose: %s does not exist; skipped", path)
        elif rw:
            mounts.append(("--dev-bind" if path.is_relative_to("/dev") else "--bind", path))
        else:
            mounts.append(("--ro-bind", path))
    return mounts


class Kept:
    """The first and the last `limit` characters of a stream of bytes, and how many it had."""

    def __init__(self, limit: int):
        self.limit, self.head, self.tail, self.total = limit, "", "", 0
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode

    def add(self, data: bytes, final=False):
        text = self._decode(data, final)
        self.total += len(text)
        room = self.limit - len(self.head)
        self.head += text[:room]
        if len(text) > room:
            self.tail = (self.tail + text[room:])[-self.limit:]


def run(argv, env, cwd, timeout: float, limit: int) -> tuple[str, int | None]:
    """Run argv; return its output (stdout, then a STDERR: section; past `limit` characters, the
    first and last halves) and its exit code, or None when `timeout` passed and it was killed."""
    import subprocess
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    except OSError as e:
        raise ToolError(f"cannot run the command in {cwd}: {e.strerror}") from None
    out, err = Kept(limit), Kept(limit)
    try:
        code = _pump(proc, {proc.stdout.fileno(): out, proc.stderr.fileno(): err}, timeout)
    finally:
        if proc.returncode is None:
            _kill(proc)
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    out.add(b"", final=True)
    err.add(b"", final=True)
    return _join(out, err, limit), code


def _pump(proc, sinks: dict, timeout: float) -> int | None:
    """Read the pipes into `sinks` until the command has ended and they are closed (or GRACE
    after its end, when something it started holds them); its exit code, or None at the timeout."""
    import selectors
    deadline, code = time.monotonic() + timeout, None
    pidfd = os.pidfd_open(proc.pid)
    try:
        with selectors.DefaultSelector() as sel:
            for fd in (pidfd, *sinks):
                sel.register(fd, selectors.EVENT_READ)
            while sel.get_map() and (left := deadline - time.monotonic()) > 0:
                for key, _ in sel.select(left):
                    if key.fd == pidfd:         # it ended: take down what it left in its group
                        sel.unregister(pidfd)
                        _kill(proc)
                        code = proc.wait()
                        deadline = min(deadline, time.monotonic() + GRACE)
                    elif data := os.read(key.fd, CHUNK):
                        sinks[key.fd].add(data)
                    else:
                        sel.unregister(key.fd)
    finally:
        os.close(pidfd)
    return code


def _kill(proc):
    """SIGKILL to the command's process group; for bwrap, its PID namespace dies with it."""
    import signal
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _join(out: Kept, err: Kept, limit: int) -> str:
    parts = [out]
    if err.total:
        label = ("\n" if out.total else "") + "STDERR:\n"
        parts += [SimpleNamespace(head=label, tail="", total=len(label)), err]
    total = sum(p.total for p in parts)
    if total <= limit:
        return "".join(p.head for p in parts)
    half, head, tail = limit // 2, "", ""
    for p in parts:
        head += p.head[:half - len(head)]
    for p in reversed(parts):
        whole = p.head + p.tail
        tail = whole[max(len(whole) - (half - len(tail)), 0):] + tail
    return f"{head}\n[... {total - 2 * half} characters cut ...]\n{tail}"


_PATHS = re.compile(r"""(?:^|[\s'"=<>|;&(`])((?:/|~)[^\s'"|;&<>()`]*)""")
_ALLOWED = {"/dev/null", "/dev/stdout", "/dev/stderr"}


def check_paths(command: str, resolve):
    """The best effort without a sandbox, when the workspace is restricted: refuse `..`, $HOME
    and absolute paths that `resolve` (the file tools' check) refuses. Easy to get around."""
    if re.search(r"(^|[\s/'\"=])\.\.(/|\s|$|['\"])", command):
        raise ToolError("refused: '..' in a command is not allowed while "
                        "tools.restrict_to_workspace is on")
    if re.search(r"\$\{?HOME\b", command):
        raise ToolError("refused: $HOME is outside the workspace (tools.restrict_to_workspace is on)")
    for path in _PATHS.findall(command):
        if path not in _ALLOWED:
            resolve(path)           # raises when it lies outside the workspace
