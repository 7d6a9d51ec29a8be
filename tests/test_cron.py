"""Scheduled jobs: the cron parser and next_time (DST included), jobs.json, the CronService part
firing into a real temp inbox, the cron tool and the `cron` CLI."""
import json
import os
import stat
import time
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path

import pytest

from lib import cron as cronlib
from lib.config import load_config
from lib.cron import CronError, CronService, make_schedule, next_time, parse_cron
from lib.errors import ConfigError, UserError
from lib.tools import Context, Services, default_registry, schema
from tests import conftest
from tests.conftest import make_agent, run_cli, write_config

UTC = timezone.utc


def at(text):
    return datetime.fromisoformat(text)


def nxt(expr, after, tz="UTC"):
    """next_time of a cron expression, as an ISO string with the zone's offset."""
    when = next_time({"kind": "cron", "expr": expr}, at(after), tz)
    return when and when.astimezone(cronlib.zone(tz)).isoformat()


# --- the parser ---

@pytest.mark.parametrize("expr, after, expected", [
    ("* * * * *", "2025-06-02T10:00:30+00:00", "2025-06-02T10:01:00+00:00"),
    ("*/5 * * * *", "2025-06-02T10:02:00+00:00", "2025-06-02T10:05:00+00:00"),
    ("*/5 * * * *", "2025-06-02T10:05:00+00:00", "2025-06-02T10:10:00+00:00"),   # strictly after
    ("1-10/2 * * * *", "2025-06-02T10:09:00+00:00", "2025-06-02T11:01:00+00:00"),
    ("5/20 * * * *", "2025-06-02T10:26:00+00:00", "2025-06-02T10:45:00+00:00"),
    ("0 9-17/4 * * *", "2025-06-02T13:00:00+00:00", "2025-06-02T17:00:00+00:00"),
    ("0,30 8,20 * * *", "2025-06-02T08:31:00+00:00", "2025-06-02T20:00:00+00:00"),
    ("0 0 1,15 * *", "2025-06-02T00:00:00+00:00", "2025-06-15T00:00:00+00:00"),
    ("0 12 * jan,JUL *", "2025-02-01T00:00:00+00:00", "2025-07-01T12:00:00+00:00"),
    ("0 12 1 mar-may *", "2025-06-01T00:00:00+00:00", "2026-03-01T12:00:00+00:00"),
    ("0 8 * * mon-fri", "2025-06-07T09:00:00+00:00", "2025-06-09T08:00:00+00:00"),   # Sat -> Mon
    ("0 8 * * MON-FRI", "2025-06-03T07:59:00+00:00", "2025-06-03T08:00:00+00:00"),
    ("0 18 * * 0", "2025-06-02T00:00:00+00:00", "2025-06-08T18:00:00+00:00"),
    ("0 18 * * 7", "2025-06-02T00:00:00+00:00", "2025-06-08T18:00:00+00:00"),       # 7 = Sunday
    ("0 18 * * sun", "2025-06-02T00:00:00+00:00", "2025-06-08T18:00:00+00:00"),
    ("0 0 * * 5-7", "2025-06-02T00:00:00+00:00", "2025-06-06T00:00:00+00:00"),
    ("0 0 13 * 5", "2025-01-01T00:00:00+00:00", "2025-01-03T00:00:00+00:00"),       # OR: a Friday
    ("0 0 13 * 5", "2025-01-11T00:00:00+00:00", "2025-01-13T00:00:00+00:00"),       # OR: the 13th
    ("0 0 * * 5", "2025-01-11T00:00:00+00:00", "2025-01-17T00:00:00+00:00"),        # star: Fridays
    ("0 0 */2 * 1", "2025-06-01T00:00:00+00:00", "2025-06-09T00:00:00+00:00"),      # * prefix: AND
    ("0 0 29 2 *", "2025-03-01T00:00:00+00:00", "2028-02-29T00:00:00+00:00"),       # leap day
    ("0 0 29 2 *", "2096-03-01T00:00:00+00:00", "2104-02-29T00:00:00+00:00"),       # 2100 is not
    ("0 0 31 * *", "2025-04-01T00:00:00+00:00", "2025-05-31T00:00:00+00:00"),
    ("0 0 1 1 *", "2025-12-31T23:59:30+00:00", "2026-01-01T00:00:00+00:00"),
    ("59 23 31 12 *", "2025-01-01T00:00:00+00:00", "2025-12-31T23:59:00+00:00"),
    ("0 0 30 2 *", "2025-01-01T00:00:00+00:00", None),                              # never
])
def test_next_time_of_cron_expressions(expr, after, expected):
    assert nxt(expr, after) == expected


def test_parse_fields():
    minutes, hours, days, months, weekdays, either = parse_cron("1-10/2 */6 1,15 jan-mar 1-5")
    assert minutes == (1, 3, 5, 7, 9) and hours == (0, 6, 12, 18) and days == (1, 15)
    assert months == (1, 2, 3) and weekdays == (1, 2, 3, 4, 5) and either
    assert parse_cron("0 0 * * 0,7")[4] == (0,) and not parse_cron("0 0 * * 1")[5]


@pytest.mark.parametrize("expr, message", [
    ("61 * * * *", "cron expression '61 * * * *': minute 61 is outside 0-59"),
    ("0 24 * * *", "hour 24 is outside 0-23"),
    ("0 0 0 * *", "day-of-month 0 is outside 1-31"),
    ("0 0 * 13 *", "month 13 is outside 1-12"),
    ("0 0 * * 8", "day-of-week 8 is outside 0-7"),
    ("* * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 4"),
    ("* * * * * *", "got 6"),
    ("", "got 0"),
    ("*/0 * * * *", "step '0' in the minute field"),
    ("*/x * * * *", "step 'x'"),
    ("5-1 * * * *", "minute range 5-1 goes backwards"),
    ("x * * * *", "minute 'x' is not a number"),
    ("0 0 * foo *", "month 'foo' is not a number or a name (jan, feb"),
    ("0 0 * * funday", "day-of-week 'funday' is not a number or a name (sun, mon"),
    ("1,,2 * * * *", "minute '' is not a number"),
    ("-1 * * * *", "minute '' is not a number"),
])
def test_bad_expressions_say_what_is_wrong(expr, message):
    with pytest.raises(ValueError) as e:
        parse_cron(expr)
    assert message in str(e.value) and "\n" not in str(e.value)


# --- time zones and DST (Europe/Berlin: 2025-03-30 02:00 -> 03:00, 2025-10-26 03:00 -> 02:00) ---

@pytest.mark.parametrize("expr, after, expected", [
    # spring forward: a skipped wall time runs at the first minute after the gap
    ("30 2 * * *", "2025-03-29T12:00:00+01:00", "2025-03-30T03:00:00+02:00"),
    ("30 2 * * *", "2025-03-30T03:00:00+02:00", "2025-03-31T02:30:00+02:00"),
    ("0 3 * * *", "2025-03-30T00:00:00+01:00", "2025-03-30T03:00:00+02:00"),
    ("*/15 * * * *", "2025-03-30T01:50:00+01:00", "2025-03-30T03:00:00+02:00"),
    ("*/15 * * * *", "2025-03-30T03:00:00+02:00", "2025-03-30T03:15:00+02:00"),
    ("0 9 * * *", "2025-03-29T09:00:00+01:00", "2025-03-30T09:00:00+02:00"),       # 23 h later
    # fall back: a doubled wall time runs once, the first time
    ("30 2 * * *", "2025-10-25T12:00:00+02:00", "2025-10-26T02:30:00+02:00"),
    ("30 2 * * *", "2025-10-26T02:30:00+02:00", "2025-10-27T02:30:00+01:00"),
    ("0 * * * *", "2025-10-26T02:00:00+02:00", "2025-10-26T03:00:00+01:00"),
    ("*/15 * * * *", "2025-10-26T02:10:00+01:00", "2025-10-26T03:00:00+01:00"),    # 2nd pass
    ("0 9 * * *", "2025-10-25T09:00:00+02:00", "2025-10-26T09:00:00+01:00"),       # 25 h later
])
def test_dst_in_berlin(expr, after, expected):
    assert nxt(expr, after, "Europe/Berlin") == expected


def test_same_expression_in_another_zone():
    assert nxt("0 8 * * *", "2025-06-01T22:00:00+00:00", "Asia/Tokyo") == \
        "2025-06-02T08:00:00+09:00"
    assert nxt("0 8 * * *", "2025-06-02T00:00:00+00:00", "America/New_York") == \
        "2025-06-02T08:00:00-04:00"


def test_next_time_every_and_at():
    t = at("2025-06-02T10:00:00+00:00")
    assert next_time({"kind": "every", "every_s": 90}, t, "UTC") == t + timedelta(seconds=90)
    once = {"kind": "at", "at": "2025-06-03T09:00:00+02:00"}
    assert next_time(once, t, "UTC") == at("2025-06-03T07:00:00+00:00")
    assert next_time(once, at("2025-06-03T07:00:00+00:00"), "UTC") is None
    with pytest.raises(ValueError, match="unknown schedule kind 'weekly'"):
        next_time({"kind": "weekly"}, t, "UTC")


def test_a_time_at_the_ends_of_the_calendar_is_a_cron_error_not_an_overflow():
    """Years 1 and 9999 are where a time zone's offset pushes a date off the calendar."""
    tokyo = cronlib.zone("Asia/Tokyo")
    for text in ("0001-01-01T00:00", "9999-12-31T23:30", "9999-12-31T23:59:59-12:00"):
        with pytest.raises(CronError, match=f"at '{text}' is out of range; expected a year from 2"):
            make_schedule(at=text, tz=tokyo)
    assert make_schedule(at="9998-12-31T23:30", tz=tokyo)["at"] == "9998-12-31T23:30:00+09:00"


def test_make_schedule_checks_its_options():
    berlin = cronlib.zone("Europe/Berlin")
    assert make_schedule(every_s=60) == {"kind": "every", "every_s": 60}
    assert make_schedule(expr=" 0  8 * * 1-5 ") == {"kind": "cron", "expr": "0 8 * * 1-5"}
    assert make_schedule(at="2025-06-03T09:00", tz=berlin)["at"] == "2025-06-03T09:00:00+02:00"
    assert make_schedule(at="2025-03-30T02:30", tz=berlin)["at"] == "2025-03-30T03:00:00+02:00"
    assert make_schedule(at="2025-06-03T07:00:00Z")["at"] == "2025-06-03T07:00:00+00:00"
    for kw, message in [({}, "give exactly one schedule: every_s, expr, at"),
                        ({"every_s": 5, "expr": "* * * * *"}, "(got every_s and expr)"),
                        ({"every_s": 0}, "every_s must be at least 1 second"),
                        ({"at": "tomorrow"}, "at 'tomorrow' is not an ISO 8601 time"),
                        ({"expr": "61 * * * *"}, "minute 61")]:
        with pytest.raises(CronError, match=message.replace("(", r"\(").replace(")", r"\)")):
            make_schedule(**kw)


def test_zone():
    assert str(cronlib.zone("Europe/Berlin")) == "Europe/Berlin"
    assert datetime(2025, 1, 1, tzinfo=cronlib.zone("")).utcoffset() is not None   # system's
    with pytest.raises(ConfigError, match="timezone: unknown time zone 'Mars/Base'"):
        cronlib.zone("Mars/Base")


# --- jobs.json ---

@pytest.fixture
def cfg(home):
    return load_config()


def jobs_file(home) -> Path:
    return home / "cron" / "jobs.json"


def read_jobs(home) -> list:
    return json.loads(jobs_file(home).read_text())["jobs"]


def write_jobs(home, jobs):
    path = jobs_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("hand-edit.tmp")
    tmp.write_text(json.dumps({"version": 1, "jobs": jobs}))
    os.replace(tmp, path)           # as an editor that saves by renaming does


def job(id="abc123", schedule=None, next_run=None, **kw):
    return {"id": id, "name": "test", "enabled": True,
            "schedule": schedule or {"kind": "every", "every_s": 600}, "message": "Say hi.",
            "deliver": False, "channel": "", "to": "", "next_run": next_run, "last_run": None,
            "last_status": None, "created_at": "2025-01-01T00:00:00Z", **kw}


def ago(seconds) -> str:
    return cronlib.iso(datetime.now(UTC) - timedelta(seconds=seconds))


def inbox_files(home, folder="new") -> list[Path]:
    return sorted((home / "inbox" / folder).glob("cron-*.json"))


wait_for = partial(conftest.wait_for, timeout=10.0)


def test_store_round_trip_and_atomic_write(cfg, home):
    svc = CronService(cfg)
    job_ = svc.add("stretch", "Remind the owner to stretch.", make_schedule(every_s=7200),
                   deliver=True, channel="telegram", to="42")
    assert len(job_["id"]) == 8 and int(job_["id"], 16) >= 0
    data = json.loads(jobs_file(home).read_text())
    assert data["version"] == 1 and data["jobs"] == [job_] and svc.jobs() == [job_]
    assert set(job_) == {"id", "name", "enabled", "schedule", "message", "deliver", "channel", "to",
                         "next_run", "last_run", "last_status", "created_at"}
    assert job_["next_run"].endswith("Z") and job_["enabled"] and job_["last_run"] is None
    next_run = datetime.fromisoformat(job_["next_run"])
    assert 7100 < (next_run - datetime.now(UTC)).total_seconds() <= 7200
    assert stat.S_IMODE(jobs_file(home).stat().st_mode) == 0o600
    assert sorted(p.name for p in jobs_file(home).parent.iterdir()) == [".lock", "jobs.json"]
    second = svc.add("b", "B.", make_schedule(expr="0 8 * * *"))
    assert [j["id"] for j in svc.jobs()] == [job_["id"], second["id"]]
    assert svc.remove(job_["id"]) == job_ and svc.jobs() == [second]
    with pytest.raises(CronError, match="no cron job with id 'nope'"):
        svc.remove("nope")


def test_corrupt_jobs_json_is_an_error_and_is_kept(cfg, home):
    jobs_file(home).parent.mkdir(parents=True)
    jobs_file(home).write_text('{"version": 1, "jobs": [')
    svc = CronService(cfg)
    with pytest.raises(UserError) as e:
        svc.jobs()
    assert str(jobs_file(home)) in str(e.value) and "not valid JSON (line 1" in str(e.value)
    with pytest.raises(UserError):
        svc.add("x", "y", make_schedule(every_s=5))
    assert svc.tick() == cronlib.MAX_SLEEP_S            # the gateway logs it and keeps running
    assert jobs_file(home).read_text() == '{"version": 1, "jobs": ['
    jobs_file(home).write_text('[{"id": "x"}]')
    with pytest.raises(UserError, match='expected {"version": 1, "jobs": \\[...\\]}'):
        svc.jobs()
    write_jobs(home, [job(next_run=ago(5))])           # fixed: it fires again
    svc.tick()
    assert len(inbox_files(home)) == 1


# --- the service ---

def test_a_job_fires_into_the_inbox_and_its_next_run_is_saved(cfg, home):
    svc = CronService(cfg)
    j = svc.add("ping", "Say ping.", make_schedule(every_s=1), deliver=True, channel="telegram",
                to="42")
    due = datetime.fromisoformat(j["next_run"])
    svc.start()
    try:
        assert svc.alive()
        first = wait_for(lambda: inbox_files(home))[0]
        assert first.name == f"cron-{j['id']}-{int(due.timestamp())}.json"
        msg = json.loads(first.read_text())
        assert msg["channel"] == "system" and msg["chat_id"] == f"cron:{j['id']}"
        assert msg["sender_id"] == "cron" and "Say ping." in msg["text"] and "ping" in msg["text"]
        assert msg["metadata"] == {"kind": "cron", "job_id": j["id"],
                                   "reply_to": {"channel": "telegram", "chat_id": "42"}}
        saved = wait_for(lambda: [x for x in read_jobs(home) if x["last_status"] == "posted"])[0]
        assert datetime.fromisoformat(saved["next_run"]) > due and saved["last_run"]
    finally:
        svc.stop()
    assert not svc.alive()


def test_without_deliver_and_without_an_owner_there_is_no_reply_to(cfg, home):
    write_jobs(home, [job(next_run=ago(1))])
    CronService(cfg).tick()
    msg = json.loads(inbox_files(home)[0].read_text())
    assert msg["metadata"] == {"kind": "cron", "job_id": "abc123"}
    assert "only logged" in msg["text"]


def test_a_run_missed_while_down_happens_once_and_the_schedule_goes_on(cfg, home):
    write_jobs(home, [job(next_run=ago(3600))])          # six 10-minute slots missed
    svc = CronService(cfg)
    svc.start()
    try:
        wait_for(lambda: read_jobs(home)[0]["last_status"] == "posted")
    finally:
        svc.stop()
    assert len(inbox_files(home)) == 1
    next_run = datetime.fromisoformat(read_jobs(home)[0]["next_run"])
    assert 500 < (next_run - datetime.now(UTC)).total_seconds() <= 600
    svc = CronService(cfg)                               # a restart repeats nothing
    assert svc.tick() > 1 and len(inbox_files(home)) == 1


def test_a_repeat_post_after_a_crash_is_ignored(cfg, home):
    """The crash came after posting and before next_run was saved: same name, no second post."""
    due = ago(30)
    name = f"cron-abc123-{int(datetime.fromisoformat(due).timestamp())}.json"
    (home / "inbox" / "done").mkdir(parents=True)
    (home / "inbox" / "done" / name).write_text("{}")
    write_jobs(home, [job(next_run=due)])
    CronService(cfg).tick()
    assert inbox_files(home) == [] and read_jobs(home)[0]["next_run"] > due


def test_a_cron_job_runs_at_its_next_slot_after_a_restart(cfg, home):
    write_jobs(home, [job(schedule={"kind": "cron", "expr": "*/5 * * * *"}, next_run=ago(1))])
    CronService(cfg).tick()
    nr = datetime.fromisoformat(read_jobs(home)[0]["next_run"])
    assert nr.minute % 5 == 0 and nr.second == 0 and nr > datetime.now(UTC)
    assert len(inbox_files(home)) == 1


def test_a_hand_edit_is_picked_up_after_wake(cfg, home):
    svc = CronService(cfg)
    svc.start()
    try:
        time.sleep(0.2)
        write_jobs(home, [job(next_run=ago(1))])
        svc.wake()
        assert wait_for(lambda: inbox_files(home))
    finally:
        svc.stop()


def test_a_hand_edited_schedule_starts_afresh(cfg, home):
    far = cronlib.iso(datetime.now(UTC) + timedelta(days=300))
    write_jobs(home, [job(schedule={"kind": "cron", "expr": "0 0 1 1 *"}, next_run=far)])
    svc = CronService(cfg)
    svc.tick()
    write_jobs(home, [job(schedule={"kind": "every", "every_s": 60}, next_run=far)])
    assert svc.tick() <= 60
    assert read_jobs(home)[0]["next_run"] < far
    write_jobs(home, [job(next_run=None)])               # no next_run: it gets one
    svc.tick()
    assert read_jobs(home)[0]["next_run"]


def test_the_cron_folder_watcher_wakes_the_service(cfg, home):
    """What the gateway wires: a change in cron/ wakes the part without waiting for its timer."""
    from lib.gateway import Watcher
    svc = CronService(cfg)
    watcher = Watcher()
    watcher.watch(home / "cron", svc.wake)
    svc.start()
    watcher.start()
    try:
        time.sleep(0.3)
        write_jobs(home, [job(next_run=ago(1))])
        assert wait_for(lambda: inbox_files(home), timeout=cronlib.MAX_SLEEP_S / 2)
    finally:
        watcher.stop()
        svc.stop()


def test_disabled_jobs_never_fire(cfg, home):
    write_jobs(home, [job(next_run=ago(60), enabled=False)])
    svc = CronService(cfg)
    assert svc.tick() == cronlib.MAX_SLEEP_S
    assert inbox_files(home) == []


def test_an_at_job_runs_once_and_is_removed(cfg, home):
    svc = CronService(cfg)
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    j = svc.add("once", "Take the pizza out.", make_schedule(at=when.isoformat()))
    assert j["next_run"] == cronlib.iso(when)
    svc.start()
    try:
        wait_for(lambda: inbox_files(home))
        wait_for(lambda: read_jobs(home) == [])
    finally:
        svc.stop()
    assert [p.name for p in inbox_files(home)] == [f"cron-{j['id']}-{int(when.timestamp())}.json"]
    with pytest.raises(CronError, match="is in the past"):
        svc.add("late", "x", make_schedule(at="2020-01-01T00:00:00Z"))


def test_enable_disable_and_run_now(cfg, home):
    svc = CronService(cfg)
    j = svc.add("n", "Do it.", make_schedule(expr="0 8 * * *"))
    assert svc.enable(j["id"], False)["enabled"] is False
    assert svc.tick() == cronlib.MAX_SLEEP_S
    assert svc.enable(j["id"])["enabled"] is True
    path = svc.run_now(j["id"])
    assert path.parent == home / "inbox" / "new" and path.name.startswith(f"cron-{j['id']}-run-")
    assert read_jobs(home)[0]["last_status"].startswith("posted")
    with pytest.raises(CronError):
        svc.run_now("nope")


def test_a_fired_job_reaches_the_chat_through_the_worker(config, llm):
    """The whole way: the cron message is a turn in the telegram chat's session, reply queued."""
    from lib.worker import Worker
    llm.script("Time to stretch!")
    svc = CronService(config)
    j = svc.add("s", "Remind the owner to stretch.", make_schedule(every_s=60), True, "telegram",
                "42")
    svc.enable(j["id"])
    svc.run_now(j["id"])
    worker = Worker(config, make_agent(config))
    worker.start()
    try:
        out = wait_for(lambda: list((config.home / "outbox" / "new").glob("telegram.*.json")))
    finally:
        worker.stop()
    reply = json.loads(out[0].read_text())
    assert reply["chat_id"] == "42" and reply["text"] == "Time to stretch!"
    assert (config.home / "sessions" / "telegram_42.jsonl").exists()



def test_a_job_with_no_chat_of_its_own_speaks_to_the_owner(home):
    """SPEC §10: proactive messages go to the owner (tools.approval.owner, else the last active
    chat); only with nobody to tell is the answer just logged."""
    posted = []
    post = lambda msg, name=None: posted.append(msg) or home / "x.json"      # noqa: E731
    svc = CronService(load_config(), post)
    job = svc.add("disk", "Check the disk.", make_schedule(every_s=3600))
    svc.run_now(job["id"])
    assert "reply_to" not in posted[-1]["metadata"] and "only logged" in posted[-1]["text"]
    (home / "state").mkdir(parents=True, exist_ok=True)
    (home / "state" / "last_chat.json").write_text('{"channel": "slack", "chat_id": "D1"}')
    svc.run_now(job["id"])
    assert posted[-1]["metadata"]["reply_to"] == {"channel": "slack", "chat_id": "D1"}
    write_config(home, "tools: {approval: {owner: 'telegram:7'}}\n")
    svc.config = load_config()
    svc.run_now(job["id"])
    assert posted[-1]["metadata"]["reply_to"] == {"channel": "telegram", "chat_id": "7"}
    assert "sent to telegram:7" in posted[-1]["text"]

# --- the tool ---

def ctx_for(cfg, channel="telegram", chat_id="42", services=None):
    cfg.workspace.mkdir(parents=True, exist_ok=True)
    return Context(cfg, cfg.workspace, channel, chat_id, services=services or Services())


def call(ctx, **args):
    return default_registry().call("cron", args, ctx)


def test_tool_schema_matches_the_spec():
    fn = schema(default_registry().tools["cron"])["function"]
    props = fn["parameters"]["properties"]
    assert list(props) == ["action", "message", "every_seconds", "cron_expr", "at", "job_id"]
    assert fn["parameters"]["required"] == ["action"]
    assert props["every_seconds"]["type"] == "integer"
    assert all(p.get("description") for p in props.values())


def test_tool_add_list_remove(cfg, home):
    ctx = ctx_for(cfg)
    out = call(ctx, action="add", message="Remind the owner to stretch.", every_seconds=7200)
    assert out.startswith("Added job ") and "every 2h" in out and "telegram:42" in out
    (j,) = read_jobs(home)
    assert j["deliver"] and (j["channel"], j["to"]) == ("telegram", "42")
    assert j["name"] == "Remind the owner to stretch."
    out = call(ctx_for(cfg, "cli", "default"), action="add", message="Check the backup log.",
               cron_expr="0 7 * * *")
    assert "replies go to the owner" in out and read_jobs(home)[1]["deliver"] is False
    listed = call(ctx, action="list")
    assert j["id"] in listed and "cron 0 7 * * *" in listed and "Check the backup log." in listed
    assert call(ctx, action="remove", job_id=j["id"]).startswith(f"Removed job {j['id']}")
    assert j["id"] not in call(ctx, action="list")


def test_tool_errors_the_model_can_act_on(cfg, home):
    ctx = ctx_for(cfg)
    cases = [({"action": "add", "every_seconds": 60}, "add needs a message"),
             ({"action": "add", "message": "x"}, "exactly one schedule: every_seconds, cron_expr"),
             ({"action": "add", "message": "x", "every_seconds": 5, "at": "2030-01-01T00:00:00Z"},
              "(got every_seconds and at)"),
             ({"action": "add", "message": "x", "cron_expr": "0 25 * * *"}, "hour 25 is outside"),
             ({"action": "add", "message": "x", "at": "2020-01-01T00:00:00Z"}, "in the past"),
             ({"action": "add", "message": "x", "every_seconds": -5}, "at least 1 second"),
             ({"action": "add", "message": "x", "every_seconds": 10**12}, "at most 315360000"),
             ({"action": "remove"}, "remove needs job_id"),
             ({"action": "remove", "job_id": "nope"}, "no cron job with id 'nope'"),
             ({"action": "pause"}, "unknown action 'pause'; use add, list or remove")]
    for args, message in cases:
        out = call(ctx, **args)
        assert out.startswith("Error: ") and message in out, (args, out)
    assert call(ctx, action="list") == "No scheduled jobs."
    jobs_file(home).write_text("garbage")
    assert call(ctx, action="list").startswith(f"Error: {jobs_file(home)} is not valid JSON")


def test_tool_uses_and_wakes_the_gateway_service(cfg, home):
    svc = CronService(cfg)
    call(ctx_for(cfg, services=Services(cron=svc)), action="add", message="x", every_seconds=600)
    assert svc._wake.is_set() and len(read_jobs(home)) == 1


def test_agent_m_adds_a_job_without_a_gateway(home, llm):
    write_config(home, f"providers:\n  custom: {{api_base: '{llm.url}'}}\n"
                       "agents:\n  defaults: {model: fake-model}\n")
    llm.script({"tool_calls": [{"name": "cron", "arguments": {
        "action": "add", "message": "Remind the owner to call mum.",
        "cron_expr": "0 18 * * sun"}}]},
        "Done: every Sunday at 18:00.")
    r = run_cli("agent", "-m", "remind me to call mum every sunday at 6pm")
    assert r.returncode == 0 and "every Sunday" in r.stdout, r.stderr
    (j,) = read_jobs(home)
    assert j["schedule"] == {"kind": "cron", "expr": "0 18 * * sun"} and not j["deliver"]


# --- the command line ---

def test_cli_add_list_enable_run_remove(home):
    r = run_cli("cron", "add", "--name", "weather", "--message", "Send today's weather.",
                "--cron", "0 8 * * 1-5", "--deliver", "--channel", "telegram", "--to", "42")
    assert r.returncode == 0 and r.stdout.startswith("added job "), r.stderr
    (j,) = read_jobs(home)
    assert j["deliver"] and j["to"] == "42" and j["schedule"]["expr"] == "0 8 * * 1-5"
    r = run_cli("cron", "add", "--name", "water", "--message", "Drink.", "--every", "3600")
    assert r.returncode == 0, r.stderr
    r = run_cli("cron", "list")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines[0].split() == ["id", "name", "schedule", "enabled", "next",
                                                      "run", "last", "status"]
    assert j["id"] in lines[1] and "cron 0 8 * * 1-5" in lines[1] and "yes" in lines[1]
    assert "every 1h" in lines[2]
    r = run_cli("cron", "enable", j["id"], "--disable")
    assert r.returncode == 0 and "disabled" in r.stdout and not read_jobs(home)[0]["enabled"]
    r = run_cli("cron", "enable", j["id"])
    assert r.returncode == 0 and read_jobs(home)[0]["enabled"]
    r = run_cli("cron", "run", j["id"])
    assert r.returncode == 0 and "gateway will answer" in r.stdout
    (posted,) = inbox_files(home)
    assert json.loads(posted.read_text())["metadata"]["reply_to"] == {"channel": "telegram",
                                                                      "chat_id": "42"}
    r = run_cli("cron", "remove", j["id"])
    assert r.returncode == 0 and [x["name"] for x in read_jobs(home)] == ["water"]


def test_cli_list_in_the_configured_time_zone(home):
    write_config(home, "agents: {defaults: {timezone: Asia/Tokyo}}\n")
    r = run_cli("cron", "add", "--name", "n", "--message", "m", "--cron", "0 8 * * *")
    assert r.returncode == 0, r.stderr
    r = run_cli("cron", "list")
    assert " 08:00 JST" in r.stdout and read_jobs(home)[0]["next_run"].endswith("T23:00:00Z")


@pytest.mark.parametrize("args, message", [
    (["remove", "nope"], "no cron job with id 'nope'"),
    (["run", "nope"], "no cron job with id 'nope'"),
    (["enable", "nope"], "no cron job with id 'nope'"),
    (["add", "--name", "x", "--message", "y", "--cron", "61 * * * *"], "minute 61 is outside 0-59"),
    (["add", "--name", "x", "--message", "y", "--every", "5", "--deliver"],
     "--deliver needs --channel and --to"),
    (["add", "--name", "x", "--message", "y", "--every", "5", "--to", "1"], "add --deliver"),
    (["add", "--name", "x", "--message", "y", "--every", "5", "--deliver", "--channel", "icq",
      "--to", "1"], "unknown channel 'icq'"),
    (["add", "--name", "x", "--message", "y", "--every", "5", "--cron", "* * * * *"],
     "give exactly one schedule: --every, --cron, --at (got --every and --cron)"),
    (["add", "--name", "x", "--message", "y"], "give exactly one schedule"),
    (["add", "--name", "x", "--message", "y", "--every", "0"], "--every must be at least 1 second"),
    (["add", "--name", "x", "--message", "y", "--at", "2020-01-01T00:00:00Z"], "in the past"),
    (["add", "--name", "x", "--message", "y", "--every", "300000000000"],   # beyond year 9999
     "--every must be at least 1 second and at most 315360000 seconds (10 years), got 300000000000"),
    (["add", "--name", "x", "--message", "y", "--at", "9999-12-31T23:59:59-12:00"],
     "at '9999-12-31T23:59:59-12:00' is out of range; expected a year from 2 to 9998"),
])
def test_cli_mistakes_are_one_line_and_exit_2(home, args, message):
    r = run_cli("cron", *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not jobs_file(home).exists() or read_jobs(home) == []


def test_cli_with_a_corrupt_jobs_json(home):
    jobs_file(home).parent.mkdir(parents=True)
    jobs_file(home).write_text("{oops")
    for args in (["list"], ["add", "--name", "x", "--message", "y", "--every", "5"]):
        r = run_cli("cron", *args)
        assert r.returncode == 2 and str(jobs_file(home)) in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert jobs_file(home).read_text() == "{oops"


def test_a_reloaded_config_changes_the_time_zone(cfg):
    import dataclasses
    svc = CronService(cfg)
    tokyo = dataclasses.replace(cfg.agents.defaults, timezone="Asia/Tokyo")
    svc.config = dataclasses.replace(cfg, agents=dataclasses.replace(cfg.agents, defaults=tokyo))
    assert svc.local("2025-06-01T23:00:00Z") == "2025-06-02 08:00 JST"


@pytest.mark.parametrize("schedule", [{"kind": "every", "every_s": "x"}, "garbage",
                                      {"kind": "every", "every_s": 10**15}])   # overflows a date
def test_enabling_a_job_with_a_mangled_schedule_is_one_line(home, schedule):
    write_jobs(home, [job(schedule=schedule, enabled=False)])
    r = run_cli("cron", "enable", "abc123")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "bad schedule" in r.stderr
    assert read_jobs(home)[0]["enabled"] is False                  # left as it was


def test_a_job_id_that_is_not_text_is_reported_not_a_crash(home):
    write_jobs(home, [job(id=5)])
    r = run_cli("cron", "list")
    assert r.returncode == 2 and "Traceback" not in r.stderr and '"id"' in r.stderr


@pytest.mark.parametrize("args", [{"every_seconds": 1}, {"every_seconds": 299},
                                  {"cron_expr": "* * * * *"}, {"cron_expr": "*/2 * * * *"},
                                  {"cron_expr": "0-3 9 * * *"}, {"cron_expr": "0,59 * * * *"}])
def test_the_model_cannot_schedule_itself_more_often_than_the_minimum(cfg, home, args):
    """tools.cron.min_interval_s (300) bounds what the cron TOOL may add (SPEC §8)."""
    out = call(ctx_for(cfg), action="add", message="ping", **args)
    assert out.startswith("Error: ") and "tools.cron.min_interval_s" in out and "300 s" in out
    assert not jobs_file(home).exists() or read_jobs(home) == []


@pytest.mark.parametrize("args", [{"every_seconds": 300}, {"cron_expr": "*/5 * * * *"},
                                  {"cron_expr": "0 8 * * 1-5"}, {"at": "2099-01-01T00:00:00Z"}])
def test_schedules_at_or_above_the_minimum_are_accepted(cfg, home, args):
    assert call(ctx_for(cfg), action="add", message="ping", **args).startswith("Added job ")


def test_the_command_line_may_add_any_interval(home):
    from tests.conftest import run_cli
    r = run_cli("cron", "add", "--name", "fast", "--message", "m", "--every", "5",
                env={"NANOCLAW_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    assert read_jobs(home)[0]["schedule"] == {"kind": "every", "every_s": 5}
