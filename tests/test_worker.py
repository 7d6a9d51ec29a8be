"""The worker in-process, on a real home folder, with the fake model: what a script sees."""
import errno
import json
import os
import subprocess
from functools import partial

import pytest

from lib import maildir
from lib.worker import Worker
from tests import conftest
from tests.conftest import make_agent


@pytest.fixture
def worker(config):
    maildir.ensure(config.home / "inbox")
    maildir.ensure(config.home / "outbox", ("sent", "failed"))
    return Worker(config, make_agent(config))


wait_for = partial(conftest.wait_for, timeout=10.0)


def sent(home):
    return [json.loads(p.read_text()) for p in sorted((home / "outbox" / "sent").glob("*.json"))]


def test_a_file_name_used_again_is_a_new_question(worker, llm, home):
    """A shell script that always writes inbox/new/q.json gets an answer to each question."""
    llm.script("answer one", "answer two")
    maildir.deliver(home / "inbox", {"channel": "local", "chat_id": "x", "text": "first"}, "q")
    worker.drain()
    maildir.deliver(home / "inbox", {"channel": "local", "chat_id": "x", "text": "second"}, "q")
    worker.drain()
    assert [r["text"] for r in sent(home)] == ["answer one", "answer two"]
    assert llm.chat_requests[-1]["messages"][-1]["content"] == "second"


def test_an_id_given_twice_does_not_replay_the_old_answer(worker, llm, home):
    llm.script("answer one", "answer two")
    for name, text in (("a", "first"), ("b", "second")):
        maildir.deliver(home / "inbox", {"channel": "local", "chat_id": "x", "text": text,
                                         "id": "1"}, name)
    worker.drain()
    assert [r["text"] for r in sent(home)] == ["answer one", "answer two"]


def test_a_recovered_name_dropped_again_later_still_gets_a_reply(worker, llm, home):
    llm.script("after the crash", "later")
    (home / "inbox" / "cur" / "q.json").write_text(
        json.dumps({"channel": "local", "chat_id": "x", "text": "first"}))
    worker.start()
    try:
        wait_for(lambda: len(sent(home)) == 1)
        maildir.deliver(home / "inbox", {"channel": "local", "chat_id": "x", "text": "again"}, "q")
        worker.wake()
        wait_for(lambda: len(sent(home)) == 2)
    finally:
        worker.stop()
    assert [r["text"] for r in sent(home)] == ["after the crash", "later"]


@pytest.mark.parametrize("kind", ["cron", "heartbeat", "subagent"])
def test_proactive_replies_have_no_reply_to(worker, llm, home, kind):
    llm.script("Time to stretch!")
    maildir.deliver(home / "inbox", {"channel": "system", "chat_id": f"{kind}:1", "text": "go",
                                     "metadata": {"kind": kind, "reply_to": {
                                         "channel": "telegram", "chat_id": "42"}}}, "p")
    worker.drain()
    [out] = list((home / "outbox" / "new").glob("telegram.*.json"))
    reply = json.loads(out.read_text())
    assert reply["text"] == "Time to stretch!" and "reply_to" not in reply


def test_a_scheduled_message_waits_out_quiet_hours_and_nothing_else_does(config, llm, home):
    """SPEC §10: quiet hours hold proactive messages. Cron holds a due job itself; one already in
    the inbox when they begin (queued behind a long turn, a model outage) waits there too. A job
    run by hand and every chat message go on."""
    import dataclasses
    from datetime import datetime, timedelta, timezone
    from lib.cron import CronService
    now = datetime.now(timezone.utc)
    hours = f"{now - timedelta(hours=1):%H:%M}-{now + timedelta(hours=2):%H:%M}"
    quiet = dataclasses.replace(config, heartbeat=dataclasses.replace(config.heartbeat,
                                                                      quiet_hours=hours))
    quiet = dataclasses.replace(quiet, agents=dataclasses.replace(quiet.agents, defaults=dataclasses
                                .replace(quiet.agents.defaults, timezone="UTC")))
    maildir.ensure(home / "inbox")
    maildir.ensure(home / "outbox", ("sent", "failed"))
    worker = Worker(quiet, make_agent(quiet))
    for kind in ("cron", "heartbeat"):
        maildir.deliver(home / "inbox", {"channel": "system", "chat_id": f"{kind}:1", "text": "go",
                                         "metadata": {"kind": kind}}, f"a-{kind}")
    for code, verdict in (("1", "yes"), ("2", "timeout")):     # the owner answered; nobody did
        maildir.deliver(home / "inbox", {"channel": "system", "chat_id": "cron:2", "text": "go",
                                         "metadata": {"kind": "cron", "resume": True,
                                                      "verdict": verdict}}, f"approval-{code}-1")
    maildir.deliver(home / "inbox", {"channel": "local", "chat_id": "c", "text": "hi"}, "b-chat")
    cron = CronService(quiet)
    cron.run_now(cron.add("j", "by hand", {"kind": "every", "every_s": 3600})["id"])
    llm.script("answered", "chat answer", "job run by hand")
    worker.drain()
    assert sorted(r["text"] for r in sent(home)) == ["answered", "chat answer", "job run by hand"]
    assert maildir.waiting(home / "inbox") == ["a-cron.json", "a-heartbeat.json",
                                               "approval-2-1.json"]
    llm.script("cron answer", "heartbeat answer", "expired")
    Worker(config, make_agent(config)).drain()          # the hours are over
    assert maildir.waiting(home / "inbox") == [] and len(llm.chat_requests) == 6


def test_a_group_chat_never_becomes_the_owners_last_chat(llm, home):
    """Proactive messages, and the approvals of cron jobs and background tasks, go to the last
    active chat when tools.approval.owner is empty: never a group, whose members may answer."""
    from lib.config import load_config
    conftest.write_config(home, conftest.model_yaml(llm) + "channels: {telegram: {allow_from: [42]}}\n")
    config = load_config()
    maildir.ensure(home / "inbox")
    maildir.ensure(home / "outbox", ("sent", "failed"))
    worker, last = Worker(config, make_agent(config)), home / "state" / "last_chat.json"
    llm.script("hi all", "hi you")
    maildir.deliver(home / "inbox", {"channel": "telegram", "chat_id": "-100", "sender_id": "42",
                                     "text": "hello", "metadata": {"is_group": True}}, "g")
    worker.drain()
    assert not last.exists()
    maildir.deliver(home / "inbox", {"channel": "telegram", "chat_id": "42", "sender_id": "42",
                                     "text": "hello"}, "d")
    worker.drain()
    assert json.loads(last.read_text()) == {"channel": "telegram", "chat_id": "42"}


def test_a_script_on_the_system_channel_still_gets_reply_to(worker, llm, home):
    llm.script("ok")
    maildir.deliver(home / "inbox", {"channel": "system", "chat_id": "s", "text": "hi"}, "m")
    worker.drain()
    assert sent(home)[0]["reply_to"] == "m"


def test_a_bug_during_a_turn_still_answers_and_keeps_the_message(worker, llm, home, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("kaboom")
    monkeypatch.setattr(worker.agent, "respond", broken)
    maildir.deliver(home / "inbox", {"channel": "local", "chat_id": "x", "text": "hi"}, "m")
    worker.drain()
    assert [r["reply_to"] for r in sent(home)] == ["m"] and "went wrong" in sent(home)[0]["text"]
    assert "kaboom" in (home / "inbox" / "failed" / "m.json.error").read_text()


def test_turns_written_by_another_process_are_seen(worker, llm, home):
    from lib.sessions import Session
    llm.script("one", "two")
    maildir.deliver(home / "inbox", {"channel": "local", "chat_id": "x", "text": "first"}, "a")
    worker.drain()
    other = Session(home, "local", "x")              # e.g. `agent -s local:x` meanwhile
    other.append({"role": "user", "content": "from the terminal"})
    other.append({"role": "assistant", "content": "noted"})
    maildir.deliver(home / "inbox", {"channel": "local", "chat_id": "x", "text": "second"}, "b")
    worker.drain()
    contents = [m["content"] for m in llm.chat_requests[-1]["messages"][1:]]
    assert contents == ["first", "one", "from the terminal", "noted", "second"]


@pytest.mark.parametrize("answer", ["HEARTBEAT_OK", "HEARTBEAT_OK.", " heartbeat_ok! "])
def test_heartbeat_ok_in_any_dress_is_not_sent(worker, llm, home, answer):
    """The message says which reply stays quiet (metadata.quiet_reply): the worker knows no
    heartbeat rules."""
    (home / "state").mkdir(exist_ok=True)
    llm.script(answer)
    maildir.deliver(home / "inbox", {"channel": "system", "chat_id": "heartbeat", "text": "tasks",
                                     "metadata": {"quiet_reply": "HEARTBEAT_OK", "reply_to": {
                                         "channel": "local", "chat_id": "owner"}}}, "h")
    worker.drain()
    assert [r["channel"] for r in sent(home)] == ["system"]


def test_a_name_waiting_in_new_and_left_in_cur_by_a_crash_are_both_answered(worker, llm, home):
    (home / "inbox" / "cur" / "q.json").write_text(
        json.dumps({"channel": "local", "chat_id": "x", "text": "the one cut off"}))
    maildir.deliver(home / "inbox", {"channel": "local", "chat_id": "x", "text": "a new one"}, "q")
    worker.start()
    try:
        wait_for(lambda: len(sent(home)) == 2)
    finally:
        worker.stop()
    asked = sorted(b["messages"][-1]["content"] for b in llm.chat_requests)
    assert asked == ["a new one", "the one cut off"]


def test_a_sender_id_is_compared_whole_and_aliases_come_from_the_metadata(llm, home):
    """Issue 8: "x|owner@example.com|" passed for owner@example.com when ids were split on '|'."""
    from lib.config import load_config
    conftest.write_config(home, conftest.model_yaml(llm) + "channels:\n"
                          "  email: {allow_from: [owner@example.com]}\n"
                          "  telegram: {allow_from: ['@alice']}\n")
    config = load_config()
    maildir.ensure(home / "inbox")
    worker = Worker(config, make_agent(config))
    llm.script("hello alice")
    for name, channel, sender, meta in [
            ("a", "email", "x|owner@example.com|", {}), ("b", "telegram", "7|alice", {}),
            ("c", "telegram", "8", {"sender_aliases": "alice"}),      # a string is not a list
            ("d", "telegram", "7", {"sender_aliases": ["alice"]})]:
        maildir.deliver(home / "inbox", {"channel": channel, "chat_id": "1", "sender_id": sender,
                                         "text": "hi", "metadata": meta}, name)
    worker.drain()
    failed = sorted(p.name for p in (home / "inbox" / "failed").glob("*.json"))
    assert failed == ["a.json", "b.json", "c.json"]
    assert "sender x|owner@example.com| is not in channels.email.allow_from" in \
        (home / "inbox" / "failed" / "a.json.error").read_text()
    [reply] = [json.loads(p.read_text()) for p in (home / "outbox" / "new").glob("*.json")]
    assert len(llm.chat_requests) == 1 and reply["text"] == "hello alice"


@pytest.fixture
def small_disk(home):
    """`home` on a tmpfs of 1 MiB (mounted before the config and workspace are written into
    it): a real file system that really fills up. Mounting needs root, as in the test container."""
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(home)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"the full disk is a small tmpfs, and mounting one failed: {r.stderr.strip()}")
    yield home
    subprocess.run(["umount", "-l", str(home)], check=True)


def fill(folder):
    """Write a file until the file system says ENOSPC; returns the file."""
    path = folder / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return path


def test_a_full_disk_holds_messages_back_and_they_are_answered_once_space_is_free(
        small_disk, worker, llm, home, caplog):
    assert os.path.ismount(home) and (home / "config.yaml").exists()
    llm.script("lost answer", "answer")
    maildir.deliver(home / "inbox", {"channel": "local", "chat_id": "x", "text": "hi"}, "m")
    filler = fill(home)
    worker.start()
    try:
        wait_for(lambda: "disk is full" in caplog.text)
        assert (home / "inbox" / "cur" / "m.json").exists() and not sent(home)
        wait_for(lambda: worker._backoff >= 2)      # it tried again, without asking the model
        assert len(llm.chat_requests) == 1          # (a call each time would cost money)
        filler.unlink()
        wait_for(lambda: sent(home))
    finally:
        worker.stop()
    assert [r["text"] for r in sent(home)] == ["answer"] and len(llm.chat_requests) == 2
    assert (home / "inbox" / "done" / "m.json").exists()
    assert len([line for line in caplog.text.splitlines() if "disk is full" in line]) == 1
    rows = (home / "sessions" / "local_x.jsonl").read_text().splitlines()
    assert [json.loads(r).get("role") for r in rows if r.strip()] == [None, "user", "assistant"]


def test_an_unexpected_error_files_the_message_in_failed_and_the_next_is_taken(worker, llm, home):
    """Nothing stays in cur/ to be tried (and to fail) again and again: here inbox/done is a
    file, so finishing fails."""
    llm.script("one", "two")
    (home / "inbox" / "done").rmdir()
    (home / "inbox" / "done").write_text("not a folder")
    for name in ("a", "b"):
        maildir.deliver(home / "inbox", {"channel": "local", "chat_id": "x", "text": name}, name)
    worker.drain()
    failed = home / "inbox" / "failed"
    assert sorted(p.name for p in failed.glob("*.json")) == ["a.json", "b.json"]
    assert "internal error: FileExistsError" in (failed / "a.json.error").read_text()
    assert not list((home / "inbox" / "cur").iterdir())


def test_start_up_sweeps_stale_leftovers_and_a_folder_in_tmp_does_not_stop_it(worker, llm, home):
    inbox = home / "inbox"
    stale = [inbox / "tmp" / "cut-off.json", inbox / "cur" / ".m.json.1.2.tmp"]
    for path in stale:
        path.write_text("{")
    (inbox / "tmp" / "odd").mkdir()
    for path in (*stale, inbox / "tmp" / "odd"):
        os.utime(path, (0, 0))
    worker.start()
    worker.stop()
    assert not any(p.exists() for p in stale) and (inbox / "tmp" / "odd").is_dir()


def test_the_worker_runs_the_agent_it_is_handed(config, home):
    """No HTTP at all: the worker, the agent and a scripted provider (tests/fakes/scripted.py)."""
    from tests.fakes.scripted import ScriptedProvider
    model = ScriptedProvider("first", "second")
    maildir.ensure(home / "inbox")
    maildir.ensure(home / "outbox", ("sent", "failed"))
    worker = Worker(config, make_agent(config, model))
    for name, text in (("a", "one"), ("b", "two")):
        maildir.deliver(home / "inbox", {"channel": "local", "chat_id": "c", "text": text}, name)
    worker.drain()
    assert [r["text"] for r in sent(home)] == ["first", "second"]
    assert [m["content"] for m in model.requests[1]["messages"][1:]] == ["one", "first", "two"]


def test_a_reply_to_another_message_is_not_taken_for_this_ones(worker, llm, home):
    """The reply to inbox `x.rabc` ends in `.rabc.json` too; recovery must not mistake it for the
    reply to `abc` (found in review)."""
    from lib.mail import post_outbox
    post_outbox(home, "local", "c", "for x.rabc", key="x.rabc")
    (home / "inbox" / "cur" / "abc.json").write_text(
        json.dumps({"channel": "local", "chat_id": "c", "text": "mine"}))
    llm.script("the answer to abc")
    worker.drain()
    assert "the answer to abc" in [r["text"] for r in sent(home)]


def test_a_message_the_model_has_not_answered_for_a_day_is_answered_with_regret(worker, llm, home):
    """SPEC §10's outage: a message waits while no model answers, told once; after 24 hours it is
    answered with an apology instead, and the next one is taken."""
    llm.script(*[{"status": 503}] * 40)
    stale = maildir.deliver(home / "inbox", {"channel": "local", "chat_id": "x", "text": "old"}, "q")
    os.utime(stale, (os.path.getmtime(stale) - 25 * 3600,) * 2)
    worker.drain()
    [reply] = sent(home)
    assert reply["text"].startswith("Sorry: the model has not answered for 24 hours") and \
        reply["reply_to"] == "q"
    assert (home / "inbox" / "done" / "q.json").exists()
