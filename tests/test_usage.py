"""SPEC §10: the usage ledger, prices, daily limits, fallback models, quiet hours, idle heartbeat,
and the `usage` command. Model calls go to the fake OpenAI server (its `usage` fields) or to the
scripted provider; time is injected, never slept through."""
import json
from datetime import datetime, timedelta, timezone

import pytest

from lib.config import load_config
from lib.errors import ConfigError, LimitReached, ProviderDown, ProviderError
from lib.usage import Ledger, Metered, over_limit, quiet_until, read_day, today
from tests.conftest import ask, make_agent, run_cli, write_config
from tests.fakes.scripted import ScriptedProvider

HEAD = "providers:\n  custom: {{api_base: '{url}'}}\n"


def setup(home, llm, defaults="", extra="") -> object:
    write_config(home, HEAD.format(url=llm.url) + "agents:\n  defaults: {model: fake-model, "
                 f"retry_backoff_s: 0.01{defaults}}}\n{extra}")
    return load_config()


def ledger(home, cfg=None):
    return read_day(home, today(cfg or load_config()))


def scripted(cfg, *replies, name="m"):
    provider = ScriptedProvider(*replies)
    return Metered(cfg, [(name, "scripted", provider)]), provider


def test_every_model_call_is_one_ledger_line_with_the_servers_token_counts(home, llm):
    cfg = setup(home, llm, ", prices: {fake-model: [3, 15]}")
    llm.script({"content": "Hi.", "usage": {"prompt_tokens": 1200, "completion_tokens": 30,
                                            "total_tokens": 1230}})
    assert make_agent(cfg, Metered(cfg)).respond(ask("hello", "telegram", "42")) == "Hi."
    [line] = ledger(home)
    assert line["source"] == "chat" and line["session"] == "telegram:42" and line["ok"] is True
    assert (line["provider"], line["model"]) == ("custom", "fake-model")
    assert (line["prompt_tokens"], line["completion_tokens"]) == (1200, 30)
    assert line["cost_usd"] == pytest.approx((1200 * 3 + 30 * 15) / 1e6)
    assert line["ts"].endswith("Z") and "estimated" not in line
    assert (home / "usage" / f"{today(cfg)}.jsonl").stat().st_mode & 0o777 == 0o600


def test_a_turn_with_tool_rounds_is_one_line_per_call_and_an_unpriced_model_has_no_cost(home, llm):
    cfg = setup(home, llm)
    llm.script({"tool_calls": [{"name": "list_dir", "arguments": {"path": "."}}]}, "done")
    make_agent(cfg, Metered(cfg)).respond(ask("look"))
    lines = ledger(home)
    assert len(lines) == 2 and all("cost_usd" not in x and x["prompt_tokens"] > 0 for x in lines)


@pytest.mark.parametrize("msg, source", [
    (ask("x", "system", "heartbeat", metadata={"kind": "heartbeat"}), "heartbeat"),
    (ask("x", "system", "cron:1", metadata={"kind": "cron"}), "cron"),
    (ask("x", "system", "subagent:1", metadata={"kind": "subagent"}), "subagent"),
    (ask("x", "local", "job"), "chat"),
])
def test_the_source_names_who_the_turn_was_for(home, llm, msg, source):
    cfg = setup(home, llm)
    metered, provider = scripted(cfg, "HEARTBEAT_OK")       # a reply nobody is sent still counts
    make_agent(cfg, metered).respond(msg)
    assert [x["source"] for x in ledger(home)] == [source]
    assert provider.calls == 1



@pytest.mark.parametrize("kind", ["heartbeat", "cron", "subagent"])
def test_a_proactive_turn_that_speaks_to_a_chat_is_still_counted_as_its_own(home, llm, kind):
    """The worker answers a heartbeat, cron job or sub-agent result in the chat named by its
    reply_to; the ledger still names the turn by what it is, not as chat."""
    from lib.mail import post_inbox
    from lib.worker import Worker
    cfg = setup(home, llm)
    metered, _ = scripted(cfg, "Done.")
    post_inbox(home, {"channel": "system", "chat_id": f"{kind}:1", "sender_id": kind, "text": "x",
                      "metadata": {"kind": kind, "reply_to": {"channel": "local", "chat_id": "me"}}})
    from lib import maildir
    maildir.ensure(home / "inbox")
    maildir.ensure(home / "outbox", ("sent", "failed"))
    Worker(cfg, make_agent(cfg, metered)).drain()
    assert [(x["source"], x["session"]) for x in ledger(home)] == [(kind, "local:me")]

def test_consolidation_and_subagents_are_counted_as_theirs(home, llm):
    from lib.agent.subagent import Subagents
    from lib.sessions import Session
    cfg = setup(home, llm)
    save = {"tool_calls": [{"name": "save_memory", "arguments": {"history_entry": "talked",
                                                                 "memory_update": "# Memory\n"}}]}
    metered, _ = scripted(cfg, save, "result")
    agent = make_agent(cfg, metered)
    session = Session(home, "cli", "default")
    for i in range(4):
        session.append({"role": "user", "content": f"m{i}"})
    assert agent.memory.consolidate(session, metered, cfg.agents.defaults)
    posted = []
    subs = Subagents(cfg, metered, lambda msg, name=None: posted.append(msg))
    subs.spawn("find it", origin_channel="cli", origin_chat="default")
    for thread in list(subs._running.values()):
        thread.join(10)
    assert [(x["source"], x["session"].split(":")[0]) for x in ledger(home)] == [
        ("consolidation", "cli"), ("subagent", "subagent")]


def test_a_reply_without_usage_is_estimated_and_marked(home, llm):
    cfg = setup(home, llm)
    metered, _ = scripted(cfg, "x" * 400)
    metered.complete([{"role": "user", "content": "y" * 4000}])
    [line] = ledger(home)
    assert line["estimated"] is True and line["prompt_tokens"] >= 1000 and line["completion_tokens"] >= 100


def test_the_day_is_the_configured_time_zones(home, llm):
    cfg = setup(home, llm, ", timezone: Pacific/Kiritimati")      # UTC+14
    metered, _ = scripted(cfg, "a")
    metered.complete([{"role": "user", "content": "q"}])
    day = datetime.now(timezone(timedelta(hours=14))).strftime("%Y-%m-%d")
    assert (home / "usage" / f"{day}.jsonl").exists()


def test_totals_read_only_what_was_appended_since_also_by_another_process(home, llm):
    cfg = setup(home, llm)
    book = Ledger(cfg)
    assert book.totals() == (0, 0.0)
    book.append({"prompt_tokens": 10, "completion_tokens": 5, "cost_usd": 0.5})
    path = home / "usage" / f"{book.day()}.jsonl"
    with open(path, "a") as f:                  # another process, mid-line: not counted yet
        f.write('{"prompt_tokens": 100, "completion_tokens": 0}\n{"prompt_tokens": 7')
    assert book.totals() == (115, 0.5)
    with open(path, "a") as f:
        f.write(', "completion_tokens": 0}\nnot json\n')
    assert book.totals() == (122, 0.5)


# --- limits ---

def fill(home, cfg, tokens, usd=0.0):
    Ledger(cfg).append({"source": "chat", "model": "fake-model", "prompt_tokens": tokens,
                        "completion_tokens": 0, "cost_usd": usd, "ok": True})


def test_at_the_token_cap_no_model_call_is_made_and_the_reply_names_the_key(home, llm):
    cfg = setup(home, llm, extra="limits: {daily_tokens: 1000}\n")
    fill(home, cfg, 1000)
    metered, provider = scripted(cfg, "never")
    with pytest.raises(LimitReached, match=r"limits\.daily_tokens") as e:
        make_agent(cfg, metered).respond(ask("hello"))
    assert provider.calls == 0 and "midnight" in str(e.value)
    from lib.sessions import Session
    assert Session(home, "cli", "default").messages[-1]["content"] == "hello"   # kept for later


def test_the_usd_cap_holds_and_an_unpriced_model_under_it_is_a_config_error(home, llm):
    with pytest.raises(ConfigError, match=r"fake-model has no price in agents\.defaults\.prices"):
        setup(home, llm, extra="limits: {daily_usd: 1.5}\n")        # refused at load
    cfg = setup(home, llm, ", prices: {fake-model: [0, 0]}", "limits: {daily_usd: 1.5}\n")
    Metered(cfg)                                # a free model, said so: fine
    fill(home, cfg, 10, usd=1.5)
    assert "limits.daily_usd" in over_limit(cfg) and "$1.50" in over_limit(cfg)


def test_a_bad_price_or_owner_is_one_line(home, llm):
    with pytest.raises(ConfigError, match=r"prices\.fake-model \(line 4\) must be \[USD"):
        setup(home, llm, ", prices: {fake-model: [3]}")
    with pytest.raises(ConfigError, match=r"approval\.owner \(line 5\) must be channel:chat_id"):
        setup(home, llm, extra="tools: {approval: {owner: '12345'}}\n")


def test_the_owner_is_warned_once_a_day_at_80_percent(home, llm):
    from tests.conftest import replies
    cfg = setup(home, llm, extra="limits: {daily_tokens: 1000}\ntools: {approval: {owner: 'local:me'}}\n")
    fill(home, cfg, 700)
    metered, _ = scripted(cfg, {"content": "a"}, "b", "c")
    metered.complete([{"role": "user", "content": "q" * 400}])      # ~100 estimated: not yet 80 %
    metered.complete([{"role": "user", "content": "q" * 400}])
    metered.complete([{"role": "user", "content": "q"}])
    warnings = [r for r in replies(home) if "80%" in r["text"]]
    assert len(warnings) == 1 and warnings[0]["chat_id"] == "me" and warnings[0]["channel"] == "local"
    assert "limits.daily_tokens" in warnings[0]["text"]


def test_a_chat_at_the_cap_through_the_gateway_gets_one_reply_and_is_done(gateway, llm, home):
    from tests.conftest import replies, wait_for
    from tests.test_gateway import drop
    cfg = setup(home, llm, extra="heartbeat: {enabled: false}\nlimits: {daily_tokens: 50}\n")
    fill(home, cfg, 60)
    gateway.start()
    drop(home, "c.json", {"channel": "local", "chat_id": "x", "text": "hi"})
    reply = wait_for(lambda: replies(home), what="the refusal")[0]
    assert "limits.daily_tokens" in reply["text"] and reply["reply_to"] == "c"
    wait_for(lambda: (home / "inbox" / "done" / "c.json").exists(), what="done/")
    assert not llm.chat_requests
    assert "of 50 tokens" in run_cli("status").stdout


# --- fallback ---

def test_a_model_that_is_down_falls_back_at_once_and_the_ledger_names_who_answered(home, llm):
    cfg = setup(home, llm, ", fallback_models: [custom/backup-model]")
    llm.script({"status": 503}, "from the backup")
    reply = Metered(cfg).complete([{"role": "user", "content": "hi"}])
    assert reply.content == "from the backup"
    assert [r["model"] for r in llm.chat_requests] == ["fake-model", "backup-model"]  # no retry
    first, second = ledger(home)
    assert (first["model"], first["ok"]) == ("fake-model", False) and "503" in first["error"]
    assert (second["model"], second["ok"]) == ("custom/backup-model", True)



def test_an_account_out_of_credit_falls_back_too(home, llm):
    """SPEC §10: a 429 is a reason to try the next model, the quota kind included (another
    provider's account may have credit); it is not retried on the same one."""
    cfg = setup(home, llm, ", fallback_models: [custom/backup-model]")
    quota = {"error": {"message": "You exceeded your current quota.", "type": "insufficient_quota",
                       "param": None, "code": "insufficient_quota"}}
    llm.script({"status": 429, "body": quota}, "from the backup")
    assert Metered(cfg).complete([{"role": "user", "content": "hi"}]).content == "from the backup"
    assert [r["model"] for r in llm.chat_requests] == ["fake-model", "backup-model"]
    assert "out of credit" in ledger(home)[0]["error"]

def test_a_refusal_is_not_a_reason_to_fall_back(home, llm):
    cfg = setup(home, llm, ", fallback_models: [custom/backup-model]")
    llm.script({"status": 401})
    with pytest.raises(ProviderError, match="refused the API key") as e:
        Metered(cfg).complete([{"role": "user", "content": "hi"}])
    assert not isinstance(e.value, ProviderDown) and len(llm.chat_requests) == 1


def test_three_failures_in_a_row_skip_a_model_for_the_cooldown_and_status_says_so(home, llm):
    cfg = setup(home, llm, ", fallback_models: [custom/backup-model], fallback_cooldown_s: 600")
    metered = Metered(cfg)
    for _ in range(3):
        llm.script({"status": 500}, "ok")
        metered.complete([{"role": "user", "content": "hi"}])
    llm.reset()
    llm.script("still the backup")
    metered.complete([{"role": "user", "content": "hi"}])
    assert [r["model"] for r in llm.chat_requests] == ["backup-model"]
    assert "fake-model skipped for" in run_cli("status").stdout
    llm.reset()             # agent -m is a process of its own: state/models.json tells it too
    llm.script("the backup again")
    Metered(cfg).complete([{"role": "user", "content": "hi"}])
    assert [r["model"] for r in llm.chat_requests] == ["backup-model"]
    metered._fails["fake-model"][1] = 0         # the cooldown is over
    llm.script("back")
    assert metered.complete([{"role": "user", "content": "hi"}]).content == "back"
    assert llm.chat_requests[-1]["model"] == "fake-model"


def test_a_model_down_mark_another_process_left_goes_with_the_next_answer(home, llm):
    """`agent -m` can mark the model down while the gateway runs; the gateway's next answer must
    clear it, or the API would answer 502 for ever (it reads the mark)."""
    cfg = setup(home, llm)
    metered = Metered(cfg)                              # the gateway's, made before the mark
    (home / "state").mkdir(parents=True, exist_ok=True)
    (home / "state" / "model_down.json").write_text('{"since": "2026-12-03T01:00:00Z"}')
    llm.script("back")
    metered.complete([{"role": "user", "content": "hi"}])
    assert not (home / "state" / "model_down.json").exists()

# --- quiet and idle ---

def at(hour, minute=0, day=2):
    return datetime(2026, 12, day, hour, minute, tzinfo=timezone.utc)


def test_quiet_hours_across_midnight_and_within_a_day(home, llm):
    cfg = setup(home, llm, ", timezone: UTC", "heartbeat: {quiet_hours: '23:00-07:00'}\n")
    assert quiet_until(cfg, at(22, 59)) is None
    assert quiet_until(cfg, at(23, 0)) == at(7, day=3)
    assert quiet_until(cfg, at(3, 30)) == at(7)
    assert quiet_until(cfg, at(7, 0)) is None
    cfg = setup(home, llm, ", timezone: UTC", "heartbeat: {quiet_hours: '12:00-13:30'}\n")
    assert quiet_until(cfg, at(12, 45)) == at(13, 30) and quiet_until(cfg, at(14)) is None
    for bad in ("23-7", "25:00-07:00", "07:00-07:00", "7:60-8:00"):
        with pytest.raises(ConfigError, match=r"quiet_hours \(line 5\) must be HH:MM-HH:MM"):
            setup(home, llm, ", timezone: UTC", f"heartbeat: {{quiet_hours: '{bad}'}}\n")


def beats_over_a_day(cfg, start, template=None):
    """Run the cron part's rounds over 24 hours of an injected clock; the beats it posted."""
    from lib.cron import CronService
    posted, clock = [], [start]
    hb = CronService(cfg, lambda msg, name=None: posted.append((clock[0], msg)), lambda: clock[0])
    if template is not None:
        (cfg.workspace / "HEARTBEAT.md").write_text(template)
    while clock[0] < start + timedelta(days=1):
        clock[0] += timedelta(seconds=hb.step())
        for p in (cfg.home / "inbox" / "new").glob("*"):
            p.unlink()
    return posted


def test_an_idle_heartbeat_makes_no_model_call_all_day(config):
    template = (config.workspace / "HEARTBEAT.md").read_text()
    assert template.strip()                     # the shipped file: headings and comments only
    assert beats_over_a_day(config, at(0)) == []


def test_a_heartbeat_with_a_task_beats_each_interval_and_waits_out_quiet_hours(home, llm):
    cfg = setup(home, llm, ", timezone: UTC", "heartbeat: {interval_s: 3600, quiet_hours: '23:00-07:00'}\n")
    cfg.workspace.mkdir(parents=True, exist_ok=True)
    posted = beats_over_a_day(cfg, at(12), "- check the mail\n")
    hours = [when.hour for when, _ in posted]
    assert 7 in hours and not any(h == 23 or h < 7 for h in hours), hours
    assert hours == [13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 7, 8, 9, 10, 11]


def test_heartbeat_and_cron_skip_at_the_cap(home, llm):
    from lib.cron import CronService
    cfg = setup(home, llm, extra="limits: {daily_tokens: 10}\n")
    cfg.workspace.mkdir(parents=True, exist_ok=True)
    (cfg.workspace / "HEARTBEAT.md").write_text("- water the plants\n")
    fill(home, cfg, 10)
    posted = []
    cron = CronService(cfg, lambda msg, name=None: posted.append(msg))
    cron._beat -= cron._interval            # a beat is due too
    job = cron.add("j", "do it", {"kind": "every", "every_s": 60})
    jobs = json.loads(cron.path.read_text())
    jobs["jobs"][0]["next_run"] = "2000-01-01T00:00:00Z"
    cron.path.write_text(json.dumps(jobs))
    cron.tick()
    [after] = cron.jobs()
    assert posted == [] and after["last_status"] == "skipped (daily limit)"
    assert after["next_run"] > "2001" and after["id"] == job["id"]


def test_cron_holds_due_jobs_in_quiet_hours(home, llm):
    from lib.cron import CronService
    cfg = setup(home, llm, ", timezone: UTC", "heartbeat: {quiet_hours: '00:00-23:59'}\n")
    posted = []
    cron = CronService(cfg, lambda msg, name=None: posted.append(msg))
    cron.add("j", "do it", {"kind": "every", "every_s": 60})
    jobs = json.loads(cron.path.read_text())
    jobs["jobs"][0]["next_run"] = "2000-01-01T00:00:00Z"
    cron.path.write_text(json.dumps(jobs))
    now = datetime.now(timezone.utc)
    wait = cron.tick()
    if quiet_until(cfg, now):                   # (the one minute a day outside them: no check)
        assert posted == [] and wait > 0 and cron.jobs()[0]["last_status"] is None


# --- the command ---

def test_usage_command_table_and_json(home, llm):
    cfg = setup(home, llm, ", prices: {fake-model: [1, 2]}")
    fill(home, cfg, 1_000_000, usd=1.0)
    Ledger(cfg).append({"source": "heartbeat", "model": "other", "prompt_tokens": 5,
                        "completion_tokens": 5, "ok": False})
    out = run_cli("usage").stdout
    assert "chat" in out and "fake-model" in out and "1,000,000" in out and "$1.00" in out
    assert "heartbeat" in out and "no price" in out and "the last 7 days" in out
    data = json.loads(run_cli("usage", "--json").stdout)
    today_rows = data["days"][0]["rows"]
    assert {r["source"] for r in today_rows} == {"chat", "heartbeat"} and len(data["days"]) == 7
    assert "today 1,000,010 tokens, $1.00" in run_cli("status").stdout


def test_a_timeout_or_429_falls_back_too(home, llm):
    cfg = setup(home, llm, ", model_timeout_s: 1, fallback_models: [custom/b, custom/c]")
    llm.script({"delay": 3, "content": "too late"}, {"status": 429}, "from c")
    assert Metered(cfg).complete([{"role": "user", "content": "hi"}]).content == "from c"
    assert [(x["model"], x["ok"]) for x in ledger(home)] == [
        ("fake-model", False), ("custom/b", False), ("custom/c", True)]
    assert "Timeout" in ledger(home)[0]["error"] and "429" in ledger(home)[1]["error"]


def test_a_mangled_ledger_line_counts_as_nothing_instead_of_stopping_every_call(home, llm):
    """A hand-edited "cost_usd": "x" raised ValueError from every model call and from status."""
    cfg = setup(home, llm, extra="limits: {daily_tokens: 1000}\n")
    Ledger(cfg).append({"prompt_tokens": "many", "completion_tokens": 5, "cost_usd": "x"})
    metered, _ = scripted(cfg, "fine")
    assert metered.complete([{"role": "user", "content": "q"}]).content == "fine"
    assert run_cli("usage").returncode == 0 and run_cli("status").returncode == 0
