"""Delivery as Maildir does it: a fresh tmp/ file, a hard link into new/, never a replace."""
import os
import json
import stat
import threading
import time

import pytest

from lib import maildir
from lib.mail import post_inbox


def test_a_name_clash_fails_loudly_and_the_delivered_file_is_kept(tmp_path):
    box = tmp_path / "box"
    first = maildir.deliver(box, {"text": "first"}, "m")
    with pytest.raises(FileExistsError, match=r"new/m\.json"):
        maildir.deliver(box, {"text": "second"}, "m")
    assert json.loads(first.read_text()) == {"text": "first"}
    assert not list((box / "tmp").iterdir())


def test_a_delivered_file_is_whole_private_and_leaves_nothing_in_tmp(tmp_path):
    box, obj = tmp_path / "box", {"text": "héllo " * 1000, "media": ["a", "b"]}
    path = maildir.deliver(box, obj, into="sent")
    assert path.parent == box / "sent" and json.loads(path.read_text("utf-8")) == obj
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_nlink == 1
    assert not list((box / "tmp").iterdir())


def test_one_name_posted_by_two_threads_at_once_is_delivered_once(home):
    for round in range(20):
        barrier, got = threading.Barrier(2), []

        def post(who):
            barrier.wait()
            got.append(post_inbox(home, {"channel": "local", "chat_id": "x", "text": who},
                                  f"job-{round}"))

        threads = [threading.Thread(target=post, args=(who,)) for who in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        [path] = [p for p in got if p is not None]
        assert len(got) == 2 and json.loads(path.read_text())["text"] in ("a", "b")
    assert len(list((home / "inbox" / "new").iterdir())) == 20
    assert not list((home / "inbox" / "tmp").iterdir())


@pytest.mark.parametrize("later", ["cur", "done", "failed"])
def test_a_name_in_a_later_folder_is_not_posted_again(home, later):
    maildir.ensure(home / "inbox")
    path = post_inbox(home, {"channel": "local", "chat_id": "x", "text": "once"}, "job")
    path.rename(home / "inbox" / later / path.name)
    assert post_inbox(home, {"channel": "local", "chat_id": "x", "text": "twice"}, "job") is None
    assert not list((home / "inbox" / "new").iterdir())


def test_prune_and_recover_leave_a_folder_alone_and_go_on(tmp_path):
    """A folder someone put into done/ (or media/<kind>/) older than the retention made prune
    raise IsADirectoryError at start-up, so the gateway died and systemd restarted it for ever."""
    box = tmp_path / "inbox"
    maildir.ensure(box)
    old = time.time() - 30 * 86400
    for name in ("a-folder", "old.json", "new.json"):
        path = box / "done" / name
        path.mkdir() if name == "a-folder" else path.write_text("{}")
        if name != "new.json":
            os.utime(path, (old, old))
    (box / "tmp" / "stale-folder").mkdir()
    os.utime(box / "tmp" / "stale-folder", (old, old))
    assert maildir.prune(box, 7) == 1
    assert sorted(p.name for p in (box / "done").iterdir()) == ["a-folder", "new.json"]
    maildir.recover(box)
    assert (box / "tmp" / "stale-folder").is_dir()


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path):
    """A write that fails (a full disk; here: a folder where the file goes) must not leave its
    half-written temporary file behind, or each retry eats more of the space just freed."""
    (tmp_path / "box" / "state.json").mkdir(parents=True)
    with pytest.raises(OSError):
        maildir.atomic_write(tmp_path / "box" / "state.json", "{}")
    assert [p.name for p in (tmp_path / "box").iterdir()] == ["state.json"]
