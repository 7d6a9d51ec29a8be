"""Message folders in the manner of Maildir: a file appears whole in new/, is claimed by renaming
it into cur/, and ends in a final folder (done/, sent/ or failed/). Every step is one rename, so a
crash leaves each message in exactly one place, and a restart can tell where it stopped.

    box/tmp/   being written (by us or by any script)
    box/new/   ready, not yet taken
    box/cur/   taken by a worker or a channel
    box/<final>/   done/ or sent/ (pruned after retention_days), failed/ (kept, with the reason)
"""
import errno
import itertools
import json
import os
import time
from contextlib import suppress
from pathlib import Path

_counter = itertools.count()
STALE_TMP_S = 3600


def atomic_write(path: Path, data: str | bytes, mode: int = 0o600):
    """Replace `path` so that a reader (or a crash) sees the old content or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_counter)}.tmp")
    try:
        _write_synced(tmp, data.encode("utf-8") if isinstance(data, str) else data, mode=mode)
        os.replace(tmp, path)
    except OSError:                 # a full disk: no half-written file left to eat space
        tmp.unlink(missing_ok=True)
        raise


class Clash(FileExistsError):
    """A message of that name is there already: it is never replaced."""


def _write_synced(path: Path, raw: bytes, new: int = os.O_TRUNC, mode: int = 0o600):
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | new, 0o600), "wb", buffering=0) as f:
        f.write(raw)                # one write(2), as os.write would make
        os.fsync(f.fileno())
    os.chmod(path, mode)          # private whatever the umask, unless asked otherwise


def stamp(path: Path) -> tuple | None:
    """What tells that a file changed: (mtime, size, inode); None when it is not there."""
    with suppress(OSError):
        st = os.stat(path)
        return st.st_mtime_ns, st.st_size, st.st_ino
    return None


def make_private(folder: Path):
    """A home made before files were private (0755) becomes 0700: nobody else can look inside."""
    with suppress(OSError):
        if Path(folder).stat().st_mode & 0o077:
            os.chmod(folder, 0o700)


def unique_name(prefix: str = "") -> str:
    """Sortable by arrival and unique across processes: nanoseconds, pid, counter."""
    return f"{prefix}{time.time_ns():020d}.{os.getpid()}.{next(_counter) % 10000:04d}"


def ensure(box: Path, finals=("done", "failed")):
    for sub in ("tmp", "new", "cur", *finals):
        (Path(box) / sub).mkdir(parents=True, exist_ok=True)


def deliver(box: Path, obj: dict, name: str | None = None, into: str = "new") -> Path:
    """Put a JSON message into box/<into>/NAME.json whole, as Maildir does: a fresh file in tmp/
    (O_EXCL), fsync, renamed without replacing (Clash if NAME is taken), the folder fsynced."""
    name = (name or unique_name()) + ".json"
    tmp, dest = Path(box) / "tmp" / f"{unique_name()}.{name}", Path(box) / into / name
    tmp.parent.mkdir(parents=True, exist_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _write_synced(tmp, json.dumps(obj, ensure_ascii=False).encode("utf-8"), os.O_EXCL)
    try:
        rename_new(tmp, dest)
    except Clash:
        os.unlink(tmp)
        raise
    sync(dest.parent)
    return dest


def rename_new(src: Path, dest: Path):
    """A rename that never replaces: Clash (naming `dest`) when the name is taken. A hard link,
    then an unlink, as Maildir does; where there are no hard links (FAT), a look, then a rename."""
    try:
        try:
            os.link(src, dest)
        except PermissionError:
            if os.path.lexists(dest):
                raise FileExistsError from None
            return os.rename(src, dest)
    except FileExistsError:
        raise Clash(errno.EEXIST, "there already; it is never replaced", str(dest)) from None
    os.unlink(src)


def sync(path: Path):
    """fsync a file, or a folder (so that a new name in it survives a power cut)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def waiting(box: Path, prefix: str = "", folder: str = "new") -> list[str]:
    """Names in new/ (or another folder), oldest first."""
    with suppress(FileNotFoundError):
        return sorted(n for n in os.listdir(Path(box) / folder)
                      if n.startswith(prefix) and not n.startswith("."))
    return []


def claim(box: Path, name: str, as_name: str = "") -> Path | None:
    """new/NAME -> cur/NAME (or cur/AS_NAME). None when another thread or process took it first."""
    dest = Path(box) / "cur" / (as_name or name)
    with suppress(FileNotFoundError):
        os.rename(Path(box) / "new" / name, dest)
        return dest
    return None


def finish(path: Path, final: str = "done") -> Path:
    dest = path.parent.parent / final / path.name
    if os.path.lexists(dest):           # a name used again: both files are kept
        dest = dest.with_name(f"{unique_name()}.{path.name}")
    dest.parent.mkdir(exist_ok=True)
    os.replace(path, dest)
    return dest


def fail(path: Path, reason: str) -> Path:
    """Move to failed/ with a sibling NAME.error saying why (the original bytes are kept)."""
    dest = path.parent.parent / "failed" / path.name      # atomic_write makes failed/
    if os.path.lexists(dest) and (os.path.isdir(dest) or os.path.isdir(path)):
        dest = dest.with_name(f"{unique_name()}.{path.name}")   # no rename over or of a folder
    atomic_write(dest.with_name(dest.name + ".error"), reason.rstrip() + "\n")
    os.replace(path, dest)
    return dest


def recover(box: Path, requeue: bool = True) -> list[str]:
    """At start-up: what a crash left in cur/ goes back to new/ when `requeue`; leftovers of
    writes nobody finished within an hour are removed. Returns the names in cur/."""
    # An outbox file keeps the parts it sent. The inbox keeps its files in cur/: moved to new/
    # they would look fresh, and a second crash before they were taken up would answer them twice.
    box = Path(box)
    left = waiting(box, folder="cur")
    for name in left if requeue else ():
        os.replace(box / "cur" / name, box / "new" / name)
    cutoff = time.time() - STALE_TMP_S
    _sweep(box / "tmp", cutoff)
    _sweep(box / "cur", cutoff, lambda name: name.startswith("."))  # cur/.NAME…tmp: atomic_write cut off
    return left


def prune(box: Path, days: float, finals=("done", "sent")) -> int:
    """Delete messages older than `days` from the final folders; failed/ is kept for a person."""
    return sum(_sweep(Path(box) / final, time.time() - days * 86400) for final in finals)


def _sweep(folder: Path, cutoff: float, match=lambda name: True) -> int:
    """Unlink the files in `folder` (never a folder: one may be someone's) last changed before
    `cutoff` whose names match; how many went."""
    removed = 0
    for entry in os.scandir(folder) if folder.is_dir() else ():
        with suppress(OSError):         # gone already
            if match(entry.name) and not entry.is_dir(follow_symlinks=False) and \
                    entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
    return removed


def find(box: Path, name: str, folders=("new", "cur", "sent", "done", "failed")) -> Path | None:
    """Where a message of this name is now, if anywhere."""
    return next((p for f in folders if (p := Path(box) / f / name).exists()), None)
