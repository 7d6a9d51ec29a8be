"""read_file, write_file, edit_file, list_dir. Relative paths start in the workspace; with
tools.restrict_to_workspace, nothing outside it is reachable (symlinks and `..` resolved first)."""
import errno
import os
import stat
from contextlib import contextmanager
from pathlib import Path

from lib.errors import ToolError

MAX_READ = 128 * 1024
BUNDLED = Path(__file__).resolve().parents[2] / "workspace_template" / "skills"


def open_inside(path: Path, root: Path, flags=os.O_RDONLY) -> int:
    """An fd for `path`, a regular file inside `root` reached without a symbolic link. The gateway
    reads and writes workspace files outside the sandbox, where a link planted by a command
    would lead it to the keys or let it write anywhere: OSError (ELOOP) instead."""
    path, root = Path(path), Path(root)
    if path.parent.resolve() != root.resolve() / path.parent.relative_to(root):
        raise OSError(errno.ELOOP, "a symbolic link leads out of the workspace", str(path))
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return fd


def read_inside(path: Path, root: Path) -> bytes:
    with open(open_inside(path, root), "rb") as f:
        return f.read()


def resolve(ctx, path: str, reading: bool = False) -> Path:
    """The real path a tool may touch, or ToolError: see _check. A relative path starts in the
    workspace (an absolute one replaces it); every symlink is followed, even one not at the end."""
    real = (ctx.workspace / Path(os.path.expandvars(path)).expanduser()).resolve()
    _check(ctx, real, path, reading)
    return real


def _check(ctx, real: Path, path: str, reading: bool):
    """ToolError when `real` is in memory/ during a turn that may not see it (a group chat, SPEC
    §13), or outside a restricted workspace (`reading`: the bundled skills and the files sent in
    this chat are open too)."""
    workspace = ctx.workspace.resolve()
    memory = workspace / "memory"                   # or where it leads, when it is a link
    if not ctx.memory and (real.is_relative_to(memory) or real.is_relative_to(memory.resolve())):
        raise ToolError(f"{path}: the assistant's memory is not open in group chats "
                        "(agents.defaults.memory_in_groups)")
    inside = real.is_relative_to(workspace) or reading and (
        real.is_relative_to(BUNDLED) or _sent(ctx, real))
    if ctx.config.tools.restrict_to_workspace and not inside:
        raise ToolError(f"{path} is outside the workspace ({ctx.workspace}); "
                        "tools.restrict_to_workspace is on")


def _sent(ctx, real: Path) -> bool:
    """A file sent in this chat: one the channels saved under $NANOCLAW_HOME/media."""
    sent = {Path(p).resolve() for p in ctx.readable if "\0" not in p}
    return real in sent and real.is_relative_to((ctx.config.home / "media").resolve())


@contextmanager
def _opened(ctx, path: str, flags: int, reading: bool = False):
    """An fd for `path`, checked again where the open file really is, so a link swapped in
    meanwhile (by a command running in a sub-agent) gains nothing; closed afterwards."""
    fd = os.open(resolve(ctx, path, reading), flags | os.O_CLOEXEC | os.O_NONBLOCK)  # FIFO: no wait
    try:
        _check(ctx, Path(os.readlink(f"/proc/self/fd/{fd}")), path, reading)
        yield fd
    finally:
        os.close(fd)


def _writable(ctx, path: str, change: str) -> Path:
    """resolve(), and for a file outside the workspace the owner's yes first (SPEC §9)."""
    p = resolve(ctx, path)
    if not p.is_relative_to(ctx.workspace.resolve()):
        from lib.approvals import ask_write
        ask_write(ctx, p, change)
    return p


def read_file(ctx, path: str) -> str:
    """Read a text file and return its contents.

    Args:
        path: file path; relative paths are inside the workspace
    """
    try:
        with _opened(ctx, path, os.O_RDONLY, reading=True) as fd:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ToolError(f"{path} is a folder; use list_dir" if stat.S_ISDIR(info.st_mode)
                                else f"{path} is not a regular file")
            data = open(fd, "rb", closefd=False).read(MAX_READ + 1)
    except FileNotFoundError:
        raise ToolError(f"no such file: {path}") from None
    except OSError as e:
        raise ToolError(f"cannot read {path}: {e.strerror}") from None
    if b"\0" in data[:8192]:
        raise ToolError(f"{path} is a binary file ({info.st_size} bytes)")
    text = data[:MAX_READ].decode("utf-8", errors="replace")
    if len(data) > MAX_READ:
        text += f"\n[truncated: the file is {info.st_size} bytes; read it in parts with exec]"
    return text


def write_file(ctx, path: str, content: str) -> str:
    """Create or replace a file with the given content, making parent folders as needed.

    Args:
        path: file path; relative paths are inside the workspace
        content: the complete new content of the file
    """
    p = _writable(ctx, path, content)
    try:
        _save(ctx, p, content)
    except OSError as e:
        raise ToolError(f"cannot write {path}: {e.strerror}") from None
    return f"Wrote {len(content.encode())} bytes to {p}"


def _save(ctx, p: Path, text: str):
    """Write `text` to `p`. MEMORY.md goes through Memory.write, which keeps the old one in
    memory/versions/; HISTORY.md only grows, by an append (SPEC §13: nothing lost by accident)."""
    memory = ctx.workspace.resolve() / "memory"
    if p == memory / "HISTORY.md" and p.exists():
        old = read_inside(p, memory).decode("utf-8", "surrogateescape")
        if not text.startswith(old):
            raise ToolError("memory/HISTORY.md is append-only: keep its text as it is and add after it")
        with open(open_inside(p, memory, os.O_WRONLY | os.O_APPEND), "a", encoding="utf-8") as f:
            return f.write(text[len(old):])     # a crash cannot leave it cut short
    if p == memory / "MEMORY.md":
        from lib.agent.memory import Memory
        if not Memory(ctx.workspace).write(text):
            raise ToolError("memory/MEMORY.md cannot be read as text, so it was left as it is")
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    with _opened(ctx, str(p.parent), os.O_RDONLY | os.O_DIRECTORY) as folder:    # where it is
        fd = os.open(p.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o666, dir_fd=folder)
    with open(fd, "w", encoding="utf-8") as f:
        f.write(text)


def edit_file(ctx, path: str, old_text: str, new_text: str) -> str:
    """Replace one exact occurrence of old_text with new_text in a file.

    Args:
        path: file path; relative paths are inside the workspace
        old_text: the exact text to find; it must occur exactly once
        new_text: the text to put in its place
    """
    p = _writable(ctx, path, f"{len(old_text)}:{old_text}{new_text}")
    try:
        with _opened(ctx, str(p), os.O_RDONLY) as fd:
            text = open(fd, encoding="utf-8", closefd=False).read()
    except FileNotFoundError:
        raise ToolError(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ToolError(f"cannot edit {path}: {e}") from None
    count = text.count(old_text) if old_text else 0
    if count == 0:
        raise ToolError(f"old_text was not found in {path}; read the file and copy the text exactly")
    if count > 1:
        raise ToolError(f"old_text occurs {count} times in {path}; include more surrounding "
                        "lines so it matches exactly once")
    _save(ctx, p, text.replace(old_text, new_text, 1))
    return f"Edited {path}"


def list_dir(ctx, path: str) -> str:
    """List the entries of a folder; folders end with '/'.

    Args:
        path: folder path; relative paths are inside the workspace
    """
    try:
        with _opened(ctx, path, os.O_RDONLY | os.O_DIRECTORY, reading=True) as fd, \
                os.scandir(fd) as found:
            entries = sorted((not e.is_dir(), e.name.lower(), e.name) for e in found)
    except FileNotFoundError:
        raise ToolError(f"no such folder: {path}") from None
    except NotADirectoryError:
        raise ToolError(f"{path} is a file; use read_file") from None
    except OSError as e:
        raise ToolError(f"cannot list {path}: {e.strerror}") from None
    return "\n".join(name + ("" if not_dir else "/") for not_dir, _, name in entries) \
        or f"{path} is empty"


TOOLS = [read_file, write_file, edit_file, list_dir]
