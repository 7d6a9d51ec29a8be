"""The heartbeat, a built-in job of the cron part, on a real home folder, and one beat through
the worker and the fake model."""
import dataclasses
import json
from datetime import datetime, timedelta, timezone
from functools import partial

import pytest

from lib import maildir
from lib.cron import CronService
from lib.mail import post_inbox
from lib.worker import Worker
from tests import conftest
from tests.conftest import make_agent


wait_for = partial(conftest.wait_for, timeout=10.0)


def with_interval(config, seconds, enabled=True):
    return dataclasses.replace(config, heartbeat=dataclasses.replace(
        config.heartbeat, interval_s=seconds, enabled=enabled))


def inbox(config, folder="new"):
    return sorted((config.home / "inbox" / folder).glob("*.heartbeat.json"))


@pytest.fixture(autouse=True)
def folders(home):
    maildir.ensure(home / "inbox")          # as the gateway's build() does
    maildir.ensure(home / "outbox", ("sent", "failed"))


class Beats(CronService):
    """The cron part on a clock of its own: beat() lets an interval pass and ticks once; True
    when that posted a heartbeat."""

    def __init__(self, config, post=None):
        self.now = datetime(2026, 1, 1, tzinfo=timezone.utc)
        self.posted = []
        super().__init__(config, post or self._post, lambda: self.now)

    def _post(self, msg, name=None):
        self.posted.append(msg)
        return post_inbox(self.config.home, msg, name)

    def beat(self) -> bool:
        before = len(self.posted)
        self.now += self._interval
        self.tick()
        return len(self.posted) > before


@pytest.fixture
def beat(config):
    return Beats(config)


def write_tasks(config, text):
    (config.workspace / "HEARTBEAT.md").write_text(text)


@pytest.mark.parametrize("text", [
    None,                                           # the template as onboard writes it
    "",
    "\n\n   \n",
    "# Tasks\n\n## Daily\n- \n* [ ]\n1.\n---\n",
    "<!-- one comment -->\n## Tasks\n<!-- an unclosed one\n- check the disk\n",
])
def test_nothing_to_do_means_no_message_and_no_model_call(config, llm, beat, text):
    if text is not None:
        write_tasks(config, text)
    assert not beat.beat()
    assert not list((config.home / "inbox").rglob("*.json"))
    assert llm.requests == []


def test_a_missing_file_is_quiet(config, beat):
    (config.workspace / "HEARTBEAT.md").unlink()
    assert not beat.beat()


def test_tasks_are_posted_once_to_the_last_active_chat(config, beat):
    write_tasks(config, "<!-- notes -->\n## Tasks\n- Check free disk space with df -h\n- \n")
    maildir.atomic_write(config.home / "state" / "last_chat.json",
                         json.dumps({"channel": "telegram", "chat_id": "42"}))
    assert beat.beat()
    [path] = inbox(config)
    msg = json.loads(path.read_text())
    assert (msg["channel"], msg["chat_id"]) == ("system", "heartbeat")
    assert msg["sender_id"] == "heartbeat"
    assert msg["metadata"] == {"kind": "heartbeat", "quiet_reply": "HEARTBEAT_OK",
                               "reply_to": {"channel": "telegram", "chat_id": "42"}}
    assert "## Tasks\n- Check free disk space with df -h\n\n" in msg["text"]
    assert "notes" not in msg["text"] and "reply exactly HEARTBEAT_OK" in msg["text"]


def test_without_a_last_chat_the_beat_stays_on_system(config, beat):
    write_tasks(config, "- water the plants\n")
    assert beat.beat()
    assert json.loads(inbox(config)[0].read_text())["metadata"] == {"kind": "heartbeat", "quiet_reply": "HEARTBEAT_OK"}


def test_no_pile_up_while_the_last_beat_waits_or_runs(config, beat):
    write_tasks(config, "- water the plants\n")
    assert beat.beat() and not beat.beat()
    [path] = inbox(config)
    claimed = maildir.claim(config.home / "inbox", path.name)
    assert not beat.beat()                  # in cur/: the worker is still on it
    maildir.finish(claimed)
    assert beat.beat()
    assert len(inbox(config)) == 1 and len(inbox(config, "done")) == 1


def test_a_tiny_interval_beats_again_and_again_until_stopped(config):
    config = with_interval(config, 0.01)
    write_tasks(config, "- water the plants\n")
    hb = CronService(config, lambda msg, name=None: post_inbox(config.home, msg, name))
    hb.start()
    try:
        for _ in range(3):                  # play the worker: take each beat as it comes
            path = wait_for(lambda: inbox(config))[0]
            maildir.finish(maildir.claim(config.home / "inbox", path.name))
        assert hb.alive()
    finally:
        hb.stop()
    assert not hb.alive()


def test_a_disabled_heartbeat_never_beats(config):
    config = with_interval(config, 0.01, enabled=False)
    write_tasks(config, "- water the plants\n")
    hb = CronService(config, lambda msg, name=None: pytest.fail("posted while disabled"))
    hb._beat -= timedelta(seconds=1)        # an interval has passed
    assert 0 < hb.step() <= 0.01


@pytest.mark.parametrize("answer, where", [("HEARTBEAT_OK", "sent"), ("Disk is 95% full!", "new")])
def test_the_worker_sends_a_beat_only_when_it_matters(config, llm, beat, answer, where):
    write_tasks(config, "- tell me if the disk is over 90% full\n")
    maildir.atomic_write(config.home / "state" / "last_chat.json",
                         json.dumps({"channel": "telegram", "chat_id": "42"}))
    llm.script(answer)
    beat.beat()
    worker = Worker(config, make_agent(config))
    worker.drain()
    [out] = list((config.home / "outbox" / where).glob("*.json"))
    reply = json.loads(out.read_text())
    assert reply["text"] == answer
    assert reply["channel"] == ("system" if answer == "HEARTBEAT_OK" else "telegram")
    assert "tell me if the disk" in llm.chat_requests[0]["messages"][-1]["content"]


def test_a_reload_that_turns_the_heartbeat_on_or_off_is_obeyed_at_once(config):
    """The gateway swaps in a reloaded config: enabling starts the beats without a restart,
    disabling stops them."""
    write_tasks(config, "- water the plants\n")
    posted = []
    off = CronService(with_interval(config, 0.01, enabled=False), lambda *a: posted.append(a))
    off.start()
    try:
        assert off.alive()
        off.config = with_interval(config, 0.01, enabled=True)
        off.wake()
        wait_for(lambda: posted, what="a beat once enabled")
    finally:
        off.stop()
    on = CronService(with_interval(config, 3600), lambda *a: pytest.fail("posted while disabled"))
    on._beat -= timedelta(seconds=3600)     # an interval has passed
    on.config = with_interval(config, 3600, enabled=False)
    on.step()
    assert (on._beat - datetime.now(timezone.utc)).total_seconds() > -10    # it counted anew


def test_the_owner_setting_wins_over_the_last_active_chat(config, beat, home):
    """SPEC §10: proactive messages go to tools.approval.owner, default the last active chat."""
    import dataclasses
    write_tasks(config, "- water the plants\n")
    maildir.atomic_write(config.home / "state" / "last_chat.json",
                         json.dumps({"channel": "telegram", "chat_id": "42"}))
    approval = dataclasses.replace(config.tools.approval, owner="slack:C0OWNER")
    beat.config = dataclasses.replace(config, tools=dataclasses.replace(config.tools, approval=approval))
    assert beat.beat()
    assert json.loads(inbox(config)[0].read_text())["metadata"]["reply_to"] == {
        "channel": "slack", "chat_id": "C0OWNER"}


def test_a_broken_jobs_file_does_not_stop_the_heartbeat(config, beat):
    """The heartbeat is a built-in job: a jobs.json the owner mangled stops the jobs, not it."""
    write_tasks(config, "- water the plants\n")
    beat.path.write_text("{not json")
    assert beat.beat()
    assert beat.path.read_text() == "{not json"         # left as it is
