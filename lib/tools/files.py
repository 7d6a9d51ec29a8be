"""read_file, write_file, edit_file, list_dir. Relative paths start in the workspace; with
tools.restrict_to_workspace, nothing outside it is reachable (symlinks and `..` resolved first)."""
import errno
import os
import stat
from contextlib import contextmanager
from pathlib import Path

from lib.approvals import ask_write
from lib.errors import ToolError

MAX_READ = 128 * 1024
MAX_EDIT = 8 << 20              # edit_file reads a file whole
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
    try:
        real = (ctx.workspace / Path(os.path.expandvars(path)).expanduser()).resolve()
    except (RuntimeError, ValueError) as e:          # a symlink loop; a NUL
        raise ToolError(f"cannot use {path}: {e}") from None
    _check(ctx, real, path, reading)
    return real


def _check(ctx, real: Path, path: str, reading: bool):
    """ToolError when `real` is in memory/ during a turn that may not see it (a group chat, SPEC
    §13), or outside a restricted workspace (`reading`: what _readable opens is fine too)."""
    workspace = ctx.workspace.resolve()
    memory = workspace / "memory"                   # or where it leads, when it is a link
    if not ctx.memory and (real.is_relative_to(memory) or real.is_relative_to(memory.resolve())):
        raise ToolError(f"{path}: the assistant's memory is not open in group chats "
                        "(agents.defaults.memory_in_groups)")
    if ctx.config.tools.restrict_to_workspace and not (
            real.is_relative_to(workspace) or reading and _readable(ctx, real)):
        raise ToolError(f"{path} is outside the workspace ({ctx.workspace}); "
                        "tools.restrict_to_workspace is on")


def _readable(ctx, real: Path) -> bool:
    """Outside the workspace, to read: a bundled skill, or a file saved for this chat (media/)."""
    return real.is_relative_to(BUNDLED) or real.is_relative_to(
        (ctx.config.home / "media").resolve()) and real in {
            Path(p).resolve() for p in ctx.readable if "\0" not in p}


def _regular(fd: int, path: str) -> os.stat_result:
    """The open file's stat; ToolError unless it is a regular file (a FIFO is never waited on)."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise ToolError(f"{path} is a folder; use list_dir" if stat.S_ISDIR(info.st_mode)
                        else f"{path} is not a regular file")
    return info


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


def read_file(ctx, path: str) -> str:
    """Read a text file and return its contents.

    Args:
        path: file path; relative paths are inside the workspace
    """
    try:
        with _opened(ctx, path, os.O_RDONLY, reading=True) as fd:
            info = _regular(fd, path)
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
    p = ask_write(ctx, resolve(ctx, path), content)   # outside: the owner's yes
    try:
        _save(ctx, p, content)
    except (OSError, UnicodeError) as e:            # UnicodeError: a lone surrogate
        raise ToolError(f"cannot write {path}: {getattr(e, 'strerror', None) or e}") from None
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
    data = text.encode("utf-8")                     # before the file is touched
    p.parent.mkdir(parents=True, exist_ok=True)
    with _opened(ctx, str(p.parent), os.O_RDONLY | os.O_DIRECTORY) as folder:    # where it is
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO
        fd = os.open(p.name, flags, 0o666, dir_fd=folder)          # must not hold the worker
    with open(fd, "wb") as f:
        _regular(fd, str(p))
        os.ftruncate(fd, 0)
        f.write(data)


def edit_file(ctx, path: str, old_text: str, new_text: str) -> str:
    """Replace one exact occurrence of old_text with new_text in a file.

    Args:
        path: file path; relative paths are inside the workspace
        old_text: the exact text to find; it must occur exactly once
        new_text: the text to put in its place
    """
    p = ask_write(ctx, resolve(ctx, path), f"{len(old_text)}:{old_text}{new_text}")
    try:
        with _opened(ctx, str(p), os.O_RDONLY) as fd:
            if (size := _regular(fd, path).st_size) > MAX_EDIT:     # it is read whole
                raise ToolError(f"{path} is {size} bytes; edit_file takes up to 8 MB (use exec)")
            text = open(fd, encoding="utf-8", closefd=False).read()
        count = text.count(old_text) if old_text else 0
        if count == 0:
            raise ToolError(f"old_text was not found in {path}; read the file and copy the text exactly")
        if count > 1:
            raise ToolError(f"old_text occurs {count} times in {path}; include more surrounding "
                            "lines so it matches exactly once")
        _save(ctx, p, text.replace(old_text, new_text, 1))
    except FileNotFoundError:
        raise ToolError(f"no such file: {path}") from None
    except (OSError, UnicodeError) as e:
        raise ToolError(f"cannot edit {path}: {getattr(e, 'strerror', None) or e}") from None
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
