"""Files that appear whole: write in a temporary name on the same filesystem, fsync, rename."""
import itertools
import os
from pathlib import Path


def atomic_write(path: Path, data: str | bytes, mode: int | None = None):
    """Replace `path` so that a reader (or a crash) sees the old content or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if mode is None else mode)
    try:
        os.write(fd, raw)
        os.fsync(fd)
    finally:
        os.close(fd)
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)


_counter = itertools.count()


def unique_name() -> str:
    """Sortable by arrival and unique across processes: nanoseconds, pid, counter."""
    import time
    return f"{time.time_ns():020d}.{os.getpid()}.{next(_counter):04d}"


def deliver(box: Path, obj: dict, name: str | None = None) -> Path:
    """Put a JSON message into box/new/ whole: write box/tmp/NAME, fsync, rename."""
    import json
    name = name or unique_name()
    tmp = Path(box) / "tmp" / f"{name}.json"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    (Path(box) / "new").mkdir(parents=True, exist_ok=True)
    atomic_write(tmp, json.dumps(obj, ensure_ascii=False), 0o600)
    dest = Path(box) / "new" / tmp.name
    os.replace(tmp, dest)
    return dest
