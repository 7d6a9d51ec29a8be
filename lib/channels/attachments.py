"""Files going out: an outbox message's `media` are local paths, sent after its text. Each file
counts as one more part for unsent(), so a retry or a restart sends none twice; a file that
cannot be sent (gone since it was queued, swapped for a link) becomes a note in its place, so
the message still goes."""
import logging
import os
import stat
from pathlib import Path
from typing import NamedTuple

from lib.channels.base import unsent

log = logging.getLogger(__name__)
MAX_SEND = 50 * 2**20           # bytes per file (the message tool's limit; Telegram's too)


class Attachment(NamedTuple):
    name: str
    data: bytes


class Note(str):
    """Plain text said in place of a file that cannot go out: no markup to render."""


def note(path, why: str) -> Note:
    return Note(f"[attachment {Path(path).name} could not be sent: {why}]")


def open_attachment(path):
    """An outbox file opened for reading: a regular file of at most MAX_SEND bytes that still is
    the file its (absolute, real) path named when it was queued. A symlink swapped in since
    could lead anywhere: the path the open file really has must be the one given. OSError says
    what is wrong, in words fit for note()."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)   # a FIFO must not block
    except FileNotFoundError:
        raise OSError("it no longer exists") from None
    try:
        info = os.fstat(fd)
        why = ("it is not a regular file" if not stat.S_ISREG(info.st_mode) else
               f"it is larger than {MAX_SEND >> 20} MB" if info.st_size > MAX_SEND else
               "its path now leads to another file"
               if os.readlink(f"/proc/self/fd/{fd}") != os.path.abspath(path) else None)
        if why:
            raise OSError(why)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def with_files(msg: dict, texts: list):
    """unsent() over `texts` (the text parts of outbox message `msg`), then over its files, each
    as an Attachment, or as a Note when it cannot be sent."""
    for i, item in unsent(msg, list(texts) + [Path(p) for p in msg.get("media") or ()]):
        yield i, attachment(item) if isinstance(item, Path) else item


def attachment(path, read: bool = True) -> Attachment | Note:
    """The outbox file at `path` (its bytes only if `read`), or a Note saying why it cannot go."""
    try:
        with open_attachment(path) as f:
            return Attachment(Path(path).name, f.read() if read else b"")
    except OSError as e:
        log.warning("cannot send %s: %s", path, e)
        return note(path, e.strerror or str(e))


def with_notes(msg: dict, why: str) -> str:
    """The text of outbox message `msg` with a note for each of its files, on a platform that
    takes no files."""
    notes = [note(p, why) for p in msg.get("media") or ()]
    return "\n".join(filter(None, [msg.get("text"), *notes]))
