"""The gateway as a user runs it: a real subprocess, files in, files out, kill -9, SIGTERM."""
import json
import os
import random
import signal
import stat
import time

import pytest

from tests.conftest import Gateway, replies, run_cli, wait_for, write_config


@pytest.fixture
def gateway_config(home, llm):
    write_config(home, f"providers:\n  custom: {{api_base: '{llm.url}'}}\n"
                       "agents:\n  defaults: {model: fake-model, retry_backoff_s: 0.01}\nheartbeat: {enabled: false}\n")
    return home


def drop(home, name, content, raw=False):
    """Write a message the way SPEC §3 says: into inbox/tmp, then rename into inbox/new."""
    tmp = home / "inbox" / "tmp" / name
    tmp.parent.mkdir(parents=True, exist_ok=True)
    (home / "inbox" / "new").mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(content if raw else json.dumps(content).encode())
    os.rename(tmp, home / "inbox" / "new" / name)


def session_rows(home, name):
    path = home / "sessions" / f"{name}.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_a_local_message_gets_its_reply_in_outbox_sent(gateway, llm, home):
    gateway.start()
    llm.script("Hello, script.")
    drop(home, "m1.json", {"channel": "local", "chat_id": "job", "text": "hi"})
    reply = wait_for(lambda: replies(home), what="reply")[0]
    assert reply["text"] == "Hello, script." and reply["reply_to"] == "m1"
    assert reply["channel"] == "local" and reply["chat_id"] == "job" and reply["created_at"]
    assert set(reply) >= {"id", "channel", "chat_id", "text", "reply_to", "media", "metadata", "created_at"}
    wait_for(lambda: (home / "inbox" / "done" / "m1.json").exists(), what="done/")
    rows = session_rows(home, "local_job")
    assert rows[0]["_type"] == "metadata" and [r["role"] for r in rows[1:]] == ["user", "assistant"]


def test_messages_are_answered_in_arrival_order(gateway, llm, home):
    gateway.start()
    for i in range(5):
        drop(home, f"{i:02d}.json", {"channel": "local", "chat_id": "order", "text": f"n{i}"})
    wait_for(lambda: len(replies(home)) == 5, what="5 replies")
    asked = [b["messages"][-1]["content"] for b in llm.chat_requests]
    assert asked == [f"n{i}" for i in range(5)]


@pytest.mark.parametrize("name,content,reason", [
    ("bad.json", b"{not json", "not valid JSON"),
    ("latin.json", '{"channel":"local","chat_id":"x","text":"caf\xe9"}'.encode("latin-1"), "not UTF-8"),
    ("list.json", b"[1, 2]", "not a JSON object"),
    ("nochan.json", b'{"chat_id": "x", "text": "hi"}', "missing required field 'channel'"),
    ("notext.json", b'{"channel": "local", "chat_id": "x"}', "missing required field 'text'"),
    ("who.json", b'{"channel": "pigeon", "chat_id": "x", "text": "hi"}', "unknown channel 'pigeon'"),
    ("type.json", b'{"channel": "local", "chat_id": "x", "text": 5}', "field 'text' has the wrong type"),
    ("empty.json", b'{"channel": "local", "chat_id": "x", "text": ""}', "empty message"),
    ("big.json", b'{"channel": "local", "chat_id": "x", "text": "' + b"a" * (1024 * 1024) + b'"}',
     "limit is 1 MiB"),
])
def test_malformed_files_go_to_failed_with_the_reason(gateway, llm, home, name, content, reason):
    gateway.start()
    drop(home, name, content, raw=True)
    error = wait_for(lambda: (home / "inbox" / "failed" / (name + ".error")).exists() and
                     (home / "inbox" / "failed" / (name + ".error")).read_text(), what=".error")
    assert reason in error
    assert (home / "inbox" / "failed" / name).read_bytes() == content       # kept as it was
    drop(home, "ok.json", {"channel": "local", "chat_id": "x", "text": "still there?"})
    wait_for(lambda: replies(home), what="the gateway to keep going")
    assert len(llm.chat_requests) == 1



def test_a_file_that_starts_with_a_byte_order_mark_is_read(gateway, llm, home):
    """Windows editors write UTF-8 with a BOM; JSON allows a reader to skip it."""
    gateway.start()
    drop(home, "bom.json", b"\xef\xbb\xbf" + json.dumps(
        {"channel": "local", "chat_id": "x", "text": "from notepad"}).encode(), raw=True)
    assert wait_for(lambda: replies(home), what="the reply")[0]["text"] == "echo: from notepad"

def _fifo(path):
    os.mkfifo(path)


def _symlink(path):
    os.symlink("/etc/passwd", path)


def _device(path):
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))     # what /dev/null is
    except PermissionError:
        pytest.skip("making a device file needs root")


@pytest.mark.parametrize("make,kind", [(_fifo, "a FIFO"), (_symlink, "a symbolic link"),
                                       (os.mkdir, "a folder"), (_device, "a device")])
def test_an_entry_that_is_not_a_file_goes_to_failed_unopened(gateway, llm, home, make, kind):
    """A FIFO would block a reader for ever; a symlink could point anywhere (the reason must
    not come from reading /etc/passwd as JSON); a device could be /dev/zero."""
    gateway.start()
    make(home / "inbox" / "tmp" / "odd.json")
    os.rename(home / "inbox" / "tmp" / "odd.json", home / "inbox" / "new" / "odd.json")
    error = home / "inbox" / "failed" / "odd.json.error"
    wait_for(error.exists, what=".error")
    assert f"not a regular file ({kind})" in error.read_text()
    assert os.path.lexists(home / "inbox" / "failed" / "odd.json")     # kept for a person
    drop(home, "ok.json", {"channel": "local", "chat_id": "x", "text": "still there?"})
    wait_for(lambda: replies(home), what="the gateway to keep going")


def test_json_nested_too_deep_goes_to_failed(gateway, llm, home):
    gateway.start()
    deep = b'{"channel": "local", "chat_id": "x", "text": "hi", "metadata": {"a": %s}}'
    for name, depth in (("deep.json", 100_000), ("less.json", 500)):
        drop(home, name, deep % (b"[" * depth + b"]" * depth), raw=True)
        error = home / "inbox" / "failed" / (name + ".error")
        wait_for(error.exists, what=".error")
        assert "nested too deep" in error.read_text()
    drop(home, "ok.json", {"channel": "local", "chat_id": "x", "text": "still there?"})
    wait_for(lambda: replies(home), what="the gateway to keep going")


def test_a_stranger_never_reaches_the_model(gateway, llm, home):
    write_config(home, (home / "config.yaml").read_text() +
                 "channels:\n  telegram: {allow_from: ['111']}\n")
    gateway.start()
    drop(home, "s.json", {"channel": "telegram", "chat_id": "5", "sender_id": "999", "text": "hi"})
    error = wait_for(lambda: (home / "inbox" / "failed" / "s.json.error").exists() and
                     (home / "inbox" / "failed" / "s.json.error").read_text(), what="refusal")
    assert "999" in error and "channels.telegram.allow_from" in error
    assert llm.chat_requests == []


def test_a_reply_for_a_channel_that_is_not_running_goes_to_failed(gateway, llm, home):
    write_config(home, (home / "config.yaml").read_text() +
                 "channels:\n  telegram: {allow_from: ['111']}\n")
    gateway.start()
    drop(home, "t.json", {"channel": "telegram", "chat_id": "5", "sender_id": "111", "text": "hi"})
    failed = wait_for(lambda: list((home / "outbox" / "failed").glob("telegram.*.json.error")),
                      what="outbox failure")
    assert "channel telegram is not running" in failed[0].read_text()
    reply = json.loads(failed[0].with_suffix("").read_text())      # SPEC §3: an `error` field
    assert reply["text"] and "channel telegram is not running" in reply["error"]


def test_during_a_provider_outage_messages_wait_in_the_inbox_and_are_answered_after(
        gateway, llm, home):
    """Issue 15: the user is told once; the message waits (status counts it); the model's
    return answers it and the one after it, in order; the log says when it came back."""
    gateway.start()
    llm.script(*[{"status": 503}] * 12)         # three rounds of 1 + 3 tries
    drop(home, "o.json", {"channel": "local", "chat_id": "x", "text": "anyone?"})
    notice = wait_for(lambda: replies(home), timeout=30, what="the notice")[0]
    assert "not answering" in notice["text"] and "kept" in notice["text"]
    assert notice["reply_to"] == "o"
    drop(home, "p.json", {"channel": "local", "chat_id": "x", "text": "and this?"})
    wait_for(lambda: len(llm.chat_requests) >= 8, timeout=30, what="a second round")
    status = run_cli("status").stdout
    assert "fake-model; not answering since" in status and "messages wait in the inbox" in status
    assert "inbox: 1 waiting, 1 in work" in status
    assert (home / "inbox" / "cur" / "o.json").exists()
    llm.script("Here I am.", "This too.")
    texts = wait_for(lambda: [r["text"] for r in replies(home)][1:] or None, timeout=60,
                     what="the answers")
    wait_for(lambda: len(replies(home)) == 3, timeout=30, what="the second answer")
    assert [r["text"] for r in replies(home)][1:] == ["Here I am.", "This too."], texts
    assert len([r for r in replies(home) if "not answering" in r["text"]]) == 1    # told once
    assert [m["content"] for m in session_rows(home, "local_x") if m.get("role")] == [
        "anyone?", "Here I am.", "and this?", "This too."]
    assert not (home / "state" / "model_down.json").exists()
    assert "the model answers again" in gateway.logs()


def test_sigterm_stops_cleanly_and_unfinished_work_waits_in_cur(gateway, llm, home):
    gateway.start()
    llm.script({"delay": 30, "content": "too late"})
    drop(home, "slow.json", {"channel": "local", "chat_id": "x", "text": "take your time"})
    wait_for(lambda: llm.chat_requests, what="the model call")
    start = time.monotonic()
    assert gateway.term() == 0
    assert time.monotonic() - start < 5
    assert (home / "inbox" / "cur" / "slow.json").exists() and not replies(home)
    llm.reset()
    llm.script("now then")
    gateway.start()
    reply = wait_for(lambda: replies(home), what="reply after restart")[0]
    assert reply["text"] == "now then"
    users = [r for r in session_rows(home, "local_x") if r.get("role") == "user"]
    assert len(users) == 1


def test_sd_notify_sends_watchdog_pings_and_stopping(gateway_config, llm):
    write_config(gateway_config, (gateway_config / "config.yaml").read_text())
    g = Gateway(gateway_config)
    os.environ["WATCHDOG_USEC"] = "2000000"      # ping every second
    try:
        g.start()
        assert g.notice() == "WATCHDOG=1"
        g.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: g.notice() == "STOPPING=1", what="STOPPING=1")
        assert g.proc.wait(10) == 0
    finally:
        del os.environ["WATCHDOG_USEC"]
        if g.proc.poll() is None:
            g.kill()


# --- crash recovery: each state a kill -9 can leave behind ---

def put_in_cur(home, name, msg):
    for sub in ("tmp", "new", "cur", "done", "failed"):
        (home / "inbox" / sub).mkdir(parents=True, exist_ok=True)
    (home / "inbox" / "cur" / name).write_text(json.dumps(msg))


def test_crash_before_the_model_was_asked(gateway, llm, home):
    put_in_cur(home, "a.json", {"channel": "local", "chat_id": "c", "text": "q"})
    gateway.start()
    wait_for(lambda: replies(home), what="reply")
    assert len(llm.chat_requests) == 1 and len(replies(home)) == 1


def test_crash_after_the_answer_was_saved_but_before_the_reply_was_queued(gateway, llm, home):
    from lib.sessions import Session
    s = Session(home, "local", "c")
    s.append({"role": "user", "content": "q", "id": "b"})
    s.append({"role": "assistant", "content": "saved answer", "id": "b"})
    put_in_cur(home, "b.json", {"channel": "local", "chat_id": "c", "text": "q"})
    gateway.start()
    reply = wait_for(lambda: replies(home), what="reply")[0]
    assert reply["text"] == "saved answer" and llm.chat_requests == []
    assert len(session_rows(home, "local_c")) == 3


def test_crash_after_the_reply_was_queued_but_before_done(gateway, llm, home):
    from lib.mail import post_outbox
    post_outbox(home, "local", "c", "already sent", reply_to="d", key="d")
    put_in_cur(home, "d.json", {"channel": "local", "chat_id": "c", "text": "q"})
    gateway.start()
    wait_for(lambda: (home / "inbox" / "done" / "d.json").exists(), what="done/")
    assert len(replies(home)) == 1 and llm.chat_requests == []


def test_a_kill_during_recovery_still_gives_one_reply_each(gateway, llm, home):
    """Two messages left in cur/: b was answered already, a was cut off in its turn. The gateway
    is killed again while it works on a; b must still be finished without the model."""
    from lib.mail import post_outbox
    post_outbox(home, "local", "c", "b's answer", reply_to="b", key="b")
    put_in_cur(home, "a.json", {"channel": "local", "chat_id": "c", "text": "qa"})
    put_in_cur(home, "b.json", {"channel": "local", "chat_id": "c", "text": "qb"})
    llm.script({"delay": 30, "content": "too late"})
    gateway.start()
    wait_for(lambda: llm.chat_requests, what="a's turn")
    gateway.kill()                                          # the second crash
    llm.reset()
    llm.script("a's answer")
    gateway.start()
    wait_for(lambda: len(list((home / "inbox" / "done").glob("*.json"))) == 2, what="both done")
    assert sorted(r["reply_to"] for r in replies(home)) == ["a", "b"]
    assert [b["messages"][-1]["content"] for b in llm.chat_requests] == ["qa"]
    users = [r["id"] for r in session_rows(home, "local_c") if r.get("role") == "user"]
    assert users == ["a"]


def test_kill_9_at_random_moments_loses_nothing_and_doubles_nothing(gateway, llm, home):
    """Messages keep arriving while the gateway is killed again and again, also during the
    recovery of what the last kill cut off; in the end every message has exactly one reply and
    the session has each message's lines once. Names do not sort in arrival order, so a message
    cut off often waits behind newer ones at the next start, and the next kill finds it there."""
    rng = random.Random(int(os.environ.get("CRASH_SEED", "7")))
    llm.script(*[{"delay": rng.uniform(0, 0.05),
                  **({"tool_calls": [{"name": "list_dir", "arguments": {"path": "."}}]} if i % 3 == 0 else {})}
                 for i in range(80)])
    n = 24
    for i, k in enumerate(rng.sample(range(n), n)):
        drop(home, f"k{k:03d}.json", {"channel": "local", "chat_id": "crash", "text": f"m{k}"})
        if i % 6 == 5:
            for pause in (rng.uniform(0.05, 0.4), *(rng.uniform(0, 0.1) for _ in range(3))):
                gateway.start()
                time.sleep(pause)
                gateway.kill()
    gateway.start()
    wait_for(lambda: len(list((home / "inbox" / "done").glob("*.json"))) == n, timeout=60,
             what="all messages done")
    by_reply = {}
    for r in replies(home):
        by_reply.setdefault(r["reply_to"], []).append(r)
    assert sorted(by_reply) == [f"k{i:03d}" for i in range(n)]
    assert all(len(v) == 1 for v in by_reply.values()), "exactly one reply each"
    rows = [r for r in session_rows(home, "local_crash") if "role" in r]
    users = [r["id"] for r in rows if r["role"] == "user"]
    assert sorted(users) == sorted(f"k{i:03d}" for i in range(n)), "one user line per message"
    finals = [r["id"] for r in rows if r["role"] == "assistant" and not r.get("tool_calls")]
    assert sorted(finals) == sorted(users), "one final answer per message"
    assert not list((home / "inbox" / "cur").iterdir()) and not list((home / "inbox" / "new").iterdir())


def test_allow_list_changes_apply_without_a_restart(gateway, llm, home):
    base = (home / "config.yaml").read_text()
    write_config(home, base + "channels:\n  telegram: {allow_from: ['1']}\n")
    gateway.start()
    drop(home, "a.json", {"channel": "telegram", "chat_id": "9", "sender_id": "9", "text": "hi"})
    wait_for(lambda: (home / "inbox" / "failed" / "a.json").exists(), what="refusal")
    write_config(home, base + "channels:\n  telegram: {allow_from: ['1', '9']}\n")
    wait_for(lambda: "config reloaded" in gateway.logs(), what="reload")
    drop(home, "b.json", {"channel": "telegram", "chat_id": "9", "sender_id": "9", "text": "hi"})
    wait_for(lambda: (home / "inbox" / "done" / "b.json").exists(), what="accepted")
    write_config(home, base + "channels:\n  telegram: {alow_from: ['9']}\n")      # a typo
    wait_for(lambda: "config not reloaded" in gateway.logs(), what="refused reload")
    assert gateway.proc.poll() is None and "did you mean allow_from" in gateway.logs()




def test_a_file_name_used_again_is_a_new_message_and_the_first_file_is_kept(gateway, llm, home):
    """A script that names its files a1.json every time: the second a1.json is answered too,
    with an id of its own, and inbox/done/ keeps both files (it replaced the first one)."""
    gateway.start()
    drop(home, "a1.json", {"channel": "local", "chat_id": "job", "text": "first"})
    wait_for(lambda: len(replies(home)) == 1, what="the first reply")
    drop(home, "a1.json", {"channel": "local", "chat_id": "job", "text": "second"})
    wait_for(lambda: len(replies(home)) == 2, what="the second reply")
    first, second = replies(home)
    assert (first["text"], first["reply_to"]) == ("echo: first", "a1")
    assert second["text"] == "echo: second" and second["reply_to"].startswith("a1.")
    done = sorted(json.loads(p.read_text())["text"] for p in (home / "inbox" / "done").glob("*"))
    assert done == ["first", "second"]
    assert [m["id"] for m in session_rows(home, "local_job") if m.get("role") == "user"] == \
        ["a1", second["reply_to"]]

def test_a_config_written_in_place_is_read_whole_and_an_emptied_one_not_at_all(gateway, llm, home):
    """Editors such as nano truncate the file and write it again; a reload in between read an
    empty (all defaults: nobody allowed) or half-written config."""
    import time
    base = (home / "config.yaml").read_text()
    full = base + "channels:\n  telegram: {allow_from: ['1', '9']}\n"
    write_config(home, full)
    gateway.start()
    with open(home / "config.yaml", "w") as f:      # in place: empty, then two halves
        f.flush()
        time.sleep(0.2)
        f.write(full[:len(base)])
        f.flush()
        time.sleep(0.2)
        f.write(full[len(base):])
    wait_for(lambda: "config reloaded" in gateway.logs(), what="reload")
    (home / "config.yaml").write_text("")                   # emptied by mistake
    wait_for(lambda: "is empty" in gateway.logs(), what="the empty file refused")
    drop(home, "b.json", {"channel": "telegram", "chat_id": "9", "sender_id": "9", "text": "hi"})
    wait_for(lambda: (home / "inbox" / "done" / "b.json").exists(), what="accepted")
    assert gateway.logs().count("config reloaded") == 1

def test_a_cron_job_added_from_the_cli_fires_in_the_running_gateway(gateway, llm, home):
    from tests.conftest import run_cli
    gateway.start()
    llm.script(lambda body: "reminder: " + body["messages"][-1]["content"][-40:])
    r = run_cli("cron", "add", "--name", "tick", "--message", "say tick", "--every", "1",
                env={"NANOCLAW_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    reply = wait_for(lambda: [m for m in replies(home) if m["chat_id"].startswith("cron:")],
                     what="the job's answer")[0]
    assert "say tick" in llm.chat_requests[0]["messages"][-1]["content"]
    assert reply["channel"] == "system"
    done = wait_for(lambda: list((home / "inbox" / "done").glob("cron-*.json")), what="done/")
    assert json.loads(done[0].read_text())["metadata"]["kind"] == "cron"


def test_heartbeat_tasks_reach_the_owners_last_chat(gateway_config, llm, home):
    write_config(home, (home / "config.yaml").read_text().replace(
        "heartbeat: {enabled: false}", "heartbeat: {enabled: true, interval_s: 1}"))
    (home / "workspace").mkdir(exist_ok=True)
    (home / "workspace" / "HEARTBEAT.md").write_text("<!-- tasks -->\n- water the plants\n")
    (home / "state").mkdir(exist_ok=True)
    (home / "state" / "last_chat.json").write_text('{"channel": "local", "chat_id": "owner"}')
    llm.script("Time to water the plants.", *["HEARTBEAT_OK"] * 20)
    g = Gateway(home).start()
    try:
        to_owner = lambda: [m for m in replies(home) if (m["channel"], m["chat_id"]) == ("local", "owner")]  # noqa: E731
        reply = wait_for(to_owner, what="heartbeat message")[0]
        assert reply["text"] == "Time to water the plants."
        assert "water the plants" in llm.chat_requests[0]["messages"][-1]["content"]
        wait_for(lambda: len(llm.chat_requests) >= 2, what="a second beat")
        time.sleep(0.5)
        assert [m["text"] for m in to_owner()] == ["Time to water the plants."]   # OK is not sent
        assert any(m["text"] == "HEARTBEAT_OK" and m["channel"] == "system" for m in replies(home))
    finally:
        g.kill()


def test_a_new_heartbeat_interval_counts_at_once(gateway_config, llm, home):
    """Issue 15: a changed heartbeat.interval_s used to wait for the end of the current wait."""
    base = (home / "config.yaml").read_text()
    write_config(home, base.replace("heartbeat: {enabled: false}",
                                    "heartbeat: {enabled: true, interval_s: 3600}"))
    (home / "workspace").mkdir(exist_ok=True)
    (home / "workspace" / "HEARTBEAT.md").write_text("- water the plants\n")
    llm.script(*["HEARTBEAT_OK"] * 20)
    g = Gateway(home).start()
    try:
        write_config(home, base.replace("heartbeat: {enabled: false}",
                                        "heartbeat: {enabled: true, interval_s: 1}"))
        wait_for(lambda: "config reloaded" in g.logs(), what="reload")
        wait_for(lambda: llm.chat_requests, what="a beat at the new interval")
        assert "water the plants" in llm.chat_requests[0]["messages"][-1]["content"]
    finally:
        g.kill()


def test_a_reload_refuses_bad_usage_settings_and_cron_goes_on(gateway, llm, home):
    """SPEC §5: a bad value is refused at a reload as at start-up. Taken, a limits.daily_usd
    without prices never applied, and bad quiet hours stopped every cron job until a restart."""
    from lib.config import load_config
    from lib.cron import CronService, make_schedule
    base = (home / "config.yaml").read_text()
    gateway.start()
    CronService(load_config()).add("tick", "say tick", make_schedule(every_s=1))
    fired = lambda: sum(m["chat_id"].startswith("cron:") for m in replies(home))  # noqa: E731
    wait_for(fired, what="the job's first answer")
    for bad, key in (("{enabled: false, quiet_hours: '25:00-07:00'}", "heartbeat.quiet_hours"),
                     ("{enabled: false}\nlimits: {daily_usd: 5}", "limits.daily_usd")):
        write_config(home, base.replace("heartbeat: {enabled: false}", "heartbeat: " + bad))
        said = f"config not reloaded, the running one stays: {home / 'config.yaml'}: {key} (line "
        wait_for(lambda: said in gateway.logs(), what=f"the reload refused for {key}")
    seen = fired()
    wait_for(lambda: fired() > seen, what="the job firing on")
    assert "config reloaded" not in gateway.logs() and "Traceback" not in gateway.logs()


def test_a_reload_reaches_the_approvals_and_the_usage_ledger(gateway_config, llm, home):
    """tools.approval.owner and timeout_s, and the zone the ledger counts its days in, apply
    after a reload like every other setting (they were read once, at start-up)."""
    from lib.approvals import ApprovalNeeded
    from lib.config import load_config
    from lib.gateway import Gateway as InProcess
    from lib.usage import read_day, today
    base = (home / "config.yaml").read_text()

    def settings(zone, owner, timeout_s):
        write_config(home, base.replace("retry_backoff_s: 0.01", f"retry_backoff_s: 0.01, "
                                        f"timezone: {zone}") +
                     f"tools: {{approval: {{owner: '{owner}', timeout_s: {timeout_s}}}}}\n")
        return load_config()

    before = settings("Etc/GMT+12", "local:old", 600)        # UTC-12 and, below, UTC+14:
    gw = InProcess(before)                                  # never the same day
    gw.parts, gw._config_stamp = [gw.worker], None
    after = settings("Etc/GMT-14", "local:new", 60)
    gw._reload_config()
    assert gw.config.tools.approval.owner == "local:new"
    gw.agent.provider.complete([{"role": "user", "content": "hi"}])
    assert read_day(home, today(after)) and not read_day(home, today(before))
    msg = {"id": "m1", "channel": "local", "chat_id": "c", "text": "clean up"}
    need = ApprovalNeeded({"tool": "exec"}, "Run x")
    record = gw.worker.approvals.park(need, msg, ("local", "c"))
    assert record["question"].endswith("(expires in 1 min)")
    answer = {"channel": "local", "chat_id": "new", "text": f"yes {record['code']}"}
    assert gw.worker.approvals.answer(answer) == (record, "yes")     # the new owner may answer


def test_done_and_sent_are_pruned_after_retention_days_and_failed_is_kept(config, home):
    import dataclasses
    from lib.gateway import Gateway as Service
    config = dataclasses.replace(config, gateway=dataclasses.replace(config.gateway,
                                                                     retention_days=3))
    old = time.time() - 4 * 86400
    for box, folder in (("inbox", "done"), ("outbox", "sent"), ("inbox", "failed"),
                        ("outbox", "failed"), ("inbox", "new")):
        for name, when in (("old.json", old), ("recent.json", time.time() - 2 * 86400)):
            path = home / box / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")
            os.utime(path, (when, when))
    for name, when in (("old.ogg", old), ("recent.ogg", time.time() - 2 * 86400)):
        path = home / "media" / "telegram" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
        os.utime(path, (when, when))
    Service(config, agent=object())._prune()
    assert [p.name for p in (home / "media" / "telegram").iterdir()] == ["recent.ogg"]
    left = sorted(str(p.relative_to(home)) for p in home.glob("*box/*/*.json"))
    assert left == ["inbox/done/recent.json", "inbox/failed/old.json", "inbox/failed/recent.json",
                    "inbox/new/old.json", "inbox/new/recent.json", "outbox/failed/old.json",
                    "outbox/failed/recent.json", "outbox/sent/recent.json"]


def test_a_second_gateway_on_the_same_home_refuses_to_start(gateway, home):
    gateway.start()
    from tests.conftest import run_cli
    r = run_cli("gateway", env={"NANOCLAW_HOME": str(home)})
    assert r.returncode == 2 and "already running" in r.stderr and str(gateway.proc.pid) in r.stderr
    assert gateway.proc.poll() is None


def test_health_endpoint_says_alive_and_nothing_more(gateway_config, llm, home):
    """SPEC §11: /health is liveness only: no counts, no part names, no token needed."""
    import socket as _socket
    import urllib.error
    import urllib.request
    with _socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write_config(home, (home / "config.yaml").read_text() + f"gateway: {{port: {port}}}\n")
    g = Gateway(home).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            body = json.loads(r.read())
        assert r.status == 200 and body == {"ok": True}
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing-here", timeout=5)
        assert e.value.code == 401          # every path but /health and the page needs the token
    finally:
        g.kill()


def test_logs_go_to_a_file_only_when_log_file_is_set(gateway_config, llm, home):
    before = (home / "config.yaml").read_text()    # the first start adds gateway.token to it
    g = Gateway(home).start()
    g.kill()
    assert not (home / "logs").exists()                    # SPEC §2: logs/ only when configured
    write_config(home, before + "gateway: {log_file: gateway.log}\n")
    g = Gateway(home).start()
    try:
        log = home / "logs" / "gateway.log"
        wait_for(lambda: log.exists() and "gateway ready" in log.read_text(), what="the log file")
        assert "\x1b[" not in log.read_text() and " INFO " in log.read_text()
    finally:
        g.kill()


def broken_messages(home, n, size=1):
    """`n` inbox files that are not JSON: each costs one WARNING line."""
    for i in range(n):
        drop(home, f"bad{i}.json", b"{" * size, raw=True)
    wait_for(lambda: len(list((home / "inbox" / "failed").glob("bad*.json"))) == n, what="failed/")


@pytest.mark.parametrize("how", [["gateway: {log_level: warning}"], ["", "--logs", "warning"]])
def test_log_level_warning_hides_the_info_lines(gateway_config, llm, home, how):
    line, *args = how
    write_config(home, (home / "config.yaml").read_text() + line + "\n")
    g = Gateway(home).start(args=args)
    try:
        broken_messages(home, 1)
        wait_for(lambda: "moved to inbox/failed/" in g.logs(), what="the warning")
        assert " WARNING " in g.logs() and " INFO " not in g.logs()
    finally:
        g.kill()


@pytest.mark.parametrize("how", [["gateway: {log_level: debug}"], ["", "--logs"],
                                 ["gateway: {log_level: error}", "--logs", "debug"]])
def test_log_level_debug_shows_debug_lines(gateway_config, llm, home, how):
    line, *args = how
    write_config(home, (home / "config.yaml").read_text() + line + "\n")
    g = Gateway(home).start(args=args)
    try:
        wait_for(lambda: " INFO lib.gateway: gateway ready" in g.logs(), what="the ready line")
        assert " DEBUG lib.gateway: started worker" in g.logs()
    finally:
        g.kill()


def test_the_log_file_rotates_at_the_configured_size_and_keeps_that_many(gateway_config, llm, home):
    write_config(home, (home / "config.yaml").read_text() +
                 "gateway: {log_file: g.log, log_max_mb: 0.002, log_backups: 2}\n")   # 2097 bytes
    g = Gateway(home).start()
    try:
        broken_messages(home, 40)
    finally:
        g.kill()
    logs = home / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["g.log", "g.log.1", "g.log.2"]
    assert all(0 < p.stat().st_size <= 2097 for p in logs.iterdir())
    assert all("moved to inbox/failed/" in (logs / f"g.log.{n}").read_text() for n in (1, 2))


def test_a_bad_log_level_is_a_config_error_naming_the_key(home, llm):
    write_config(home, f"providers:\n  custom: {{api_base: '{llm.url}'}}\n"
                       "agents: {defaults: {model: fake-model}}\ngateway: {log_level: loud}\n")
    r = run_cli("gateway")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "gateway.log_level (line 4) must be one of debug, info, warning, error" in r.stderr
    assert run_cli("gateway", "--logs", "loud").returncode == 2


def test_a_stuck_worker_stops_the_watchdog_pings(gateway_config, llm, home, monkeypatch):
    """The systemd watchdog is fed only while the worker makes progress (SPEC §8): a turn held
    past turn_timeout_s (plus the grace) makes healthy() false, so systemd restarts the service."""
    import threading
    from lib import worker as worker_module
    from lib.config import load_config
    from lib.gateway import Gateway as InProcess
    monkeypatch.setattr(worker_module, "STUCK_GRACE_S", 0)
    write_config(home, (home / "config.yaml").read_text().replace(
        "defaults: {model: fake-model", "defaults: {turn_timeout_s: 1, model: fake-model"))
    release, entered = threading.Event(), threading.Event()

    class Hanging:          # an agent whose turn hangs where no deadline can reach it
        config = provider = None

        def respond(self, *args, **kwargs):
            entered.set()
            release.wait(30)
            return "late"

        def maintain(self, session):
            pass

    gw = InProcess(load_config(), agent=Hanging())
    gw.build()
    gw.parts = [gw.worker]          # the one part this test is about
    gw.worker.start()
    try:
        assert gw.healthy()
        drop(home, "m1.json", {"channel": "local", "chat_id": "c", "text": "hi"})
        gw.worker.wake()
        assert entered.wait(10)
        assert wait_for(lambda: not gw.healthy(), what="the worker counted as stuck")
        release.set()
        assert wait_for(gw.healthy, what="the worker moving again")
    finally:
        release.set()
        gw.worker.stop()
        gw._lock.close()


def test_everything_the_gateway_writes_is_private(gateway_config, llm, home):
    """SPEC §8: files 0600, folders 0700, a home made before that rule tightened at start."""
    os.chmod(home, 0o755)
    g = Gateway(home).start()
    try:
        drop(home, "a.json", {"channel": "local", "chat_id": "c", "text": "hi"})
        drop(home, "b.json", b"{broken", raw=True)
        wait_for(lambda: replies(home) and (home / "inbox" / "failed" / "b.json.error").exists())
    finally:
        g.kill()
    assert os.stat(home).st_mode & 0o777 == 0o700
    test_files = {"gateway.log", "notify.sock", "config.yaml", "a.json", "b.json"}  # the test's
    for folder, dirs, files in os.walk(home):
        for name in dirs:
            assert os.stat(os.path.join(folder, name)).st_mode & 0o077 == 0, name
        for name in set(files) - test_files:
            assert os.stat(os.path.join(folder, name)).st_mode & 0o077 == 0, name


def test_with_no_chat_app_the_gateway_says_how_to_talk_to_it_and_logs_lone_output(
        gateway_config, llm, home):
    """Issue 15: a gateway with no channel did nothing visible, and cron or heartbeat output
    with no chat to go to was nowhere but outbox/sent/."""
    g = Gateway(home).start()
    try:
        wait_for(lambda: "no chat app is enabled" in g.logs() and "nanoclaw.py agent" in g.logs(),
                 what="the hint at start")
        llm.script("The backup ran fine.")
        drop(home, "j.json", {"channel": "system", "chat_id": "cron:ab12", "text": "check backup",
                              "metadata": {"kind": "cron"}})
        wait_for(lambda: "cron:ab12 has no chat to go to; its reply: The backup ran fine."
                 in g.logs(), what="the reply in the log")
    finally:
        g.kill()


def test_status_says_whether_a_gateway_runs_with_its_pid_and_queues(gateway_config, llm, home):
    """Issue 15: status did not say whether a gateway was running."""
    from tests.conftest import run_cli
    assert "gateway    not running" in run_cli("status").stdout
    g = Gateway(home).start()
    try:
        line = next(x for x in run_cli("status").stdout.splitlines() if x.startswith("gateway"))
        assert f"running (pid {g.proc.pid}, since " in line and "inbox: 0 waiting" in line
    finally:
        g.kill()
    assert "gateway    not running" in run_cli("status").stdout


def test_a_silent_connection_to_the_http_server_is_dropped(gateway_config, monkeypatch):
    """A client that connects and says nothing must not hold a server thread for ever."""
    import socket as _socket
    from lib.config import load_config
    from lib.gateway import Gateway as InProcess
    from lib.web import server
    assert 0 < (server._Handler.timeout or 0) <= 30         # bounded by default
    monkeypatch.setattr(server._Handler, "timeout", 0.5)    # shorter, for the test
    write_config(gateway_config, (gateway_config / "config.yaml").read_text() + "gateway: {port: 0}\n")
    gw = InProcess(load_config())
    gw.build()
    gw.parts = [gw.worker]                  # healthy() asks the parts
    gw.worker.start()
    web = server.WebServer(gw, "a-token")   # on a port of its own
    web.start()
    try:
        with _socket.create_connection(("127.0.0.1", web.port), timeout=10) as s:
            started = time.monotonic()
            assert s.recv(100) == b"" and time.monotonic() - started < 8     # closed by the server
        with _socket.create_connection(("127.0.0.1", web.port), timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
            reply = b"".join(iter(lambda: s.recv(1000), b""))        # HTTP/1.0: read to the close
            assert b'{"ok": true}' in reply
    finally:
        web.stop()
        gw.worker.stop()
        gw._lock.close()


def test_port_0_opens_no_http_server(gateway_config, llm, home):
    """SPEC §11: gateway.port 0 turns the HTTP side off (nothing listens, nothing imported)."""
    from lib.config import load_config
    from lib.gateway import Gateway as InProcess
    write_config(home, (home / "config.yaml").read_text() + "gateway: {port: 0}\n")
    gw = InProcess(load_config())
    gw.build()
    try:
        assert "web" not in [p.name for p in gw.parts]
    finally:
        gw._lock.close()
