"""Memory that never loses anything by accident (SPEC §13, issue 14), with the scripted model:
session lines only ever appended, consolidation before anything leaves the prompt, bounded
requests, back-off, versions, an undecodable MEMORY.md, group chats, /forget and the CLI."""
import json
import time

import pytest

from lib import maildir
from lib.agent import memory as memory_module
from lib.agent.memory import Memory
from lib.errors import ProviderDown
from lib.sessions import Session
from lib.worker import Worker
from tests.conftest import ask, make_agent, run_cli, write_config
from tests.fakes.scripted import ScriptedProvider

FACTS = "# Memory\n- Name: Ada\n- Likes green tea\n- Works on the Pi cluster\n"


@pytest.fixture
def cfg(home):
    """A config with a small window and batch, telegram chat 42 allowed, and the template
    workspace (its MEMORY.md replaced by FACTS)."""
    def make(**defaults):
        from lib.cli import ROOT, _copy_missing
        from lib.config import load_config
        d = {"model": "scripted", "provider": "custom", "memory_window": 10,
             "consolidate_batch": 6, **defaults}
        write_config(home, "providers: {custom: {api_base: 'http://127.0.0.1:9'}}\n"
                     f"agents: {{defaults: {json.dumps(d)}}}\n"
                     "channels: {telegram: {allow_from: ['42']}}\n")
        config = load_config()
        _copy_missing(ROOT / "workspace_template", config.workspace, skip={"skills"})
        (config.workspace / "memory" / "MEMORY.md").write_text(FACTS)
        return config
    return make


def is_consolidation(messages) -> bool:
    return messages[0]["role"] == "user" and messages[0]["content"].startswith("You consolidate")


def saving(entry="Talked.", memory=None):
    """A consolidation answer: save_memory with this entry (and MEMORY.md unchanged or new)."""
    def reply(messages):
        current = messages[0]["content"].split("## Current MEMORY.md\n", 1)[1].split(
            "\n\n## Conversation", 1)[0]
        return {"tool_calls": [{"name": "save_memory", "arguments": {
            "history_entry": entry, "memory_update": memory or current}}]}
    return reply


# --- a long conversation ---

def test_a_long_conversation_keeps_every_line_and_saves_each_fact_before_it_leaves_the_prompt(
        cfg, home, caplog):
    """300 turns (some with a tool call), one failing stretch. At every step the raw session
    file is a byte-for-byte prefix of what follows, HISTORY.md only grows, no request is large,
    and a message is out of the prompt only once it is consolidated (or, while consolidation
    fails and backs off, with a warning in the log); each message is consolidated exactly once."""
    config = cfg()
    session = Session(home, "telegram", "42")
    state = {"failing": False, "fact": 0}
    transcripts, chat_requests, failed_calls = [], [], []

    def model(messages):
        if is_consolidation(messages):
            if state["failing"]:
                failed_calls.append(time.time())
                raise ProviderDown("the model is down")
            transcripts.append(messages[0]["content"].split("## Conversation\n", 1)[1])
            state["fact"] += 1
            return saving(f"Summary {state['fact']}.",
                          FACTS + f"- Fact {state['fact']}\n")(messages)
        question = messages[-1]["content"] if messages[-1]["role"] == "user" else ""
        shown = len(messages) - 1               # the request but its system prompt
        known = session.messages + [{"content": question}] * bool(question)    # not saved yet
        first = len(known) - shown
        assert known[first]["content"] == messages[1]["content"]
        chat_requests.append((first, shown, session.consolidated, state["failing"]))
        if question.endswith("7"):                  # some turns use a tool: 4 messages, not 2
            return {"tool_calls": [{"name": "list_dir", "arguments": {"path": "."}}]}
        return f"answer to: {question or 'the tool'}"

    agent = make_agent(config, ScriptedProvider(*[model] * 2000))
    before_session, before_history = b"", b""
    history = config.workspace / "memory" / "HISTORY.md"
    for i in range(300):
        if i == 120:
            state["failing"] = True
        if i == 160:                                # as if the back-off had passed
            state["failing"], session.retry_consolidation_at = False, 0.0
        agent.respond(ask(f"question {i}", channel="telegram", chat_id="42", id=f"m{i}"), session)
        agent.maintain(session)                     # what the worker does after each turn
        raw = session.path.read_bytes()
        assert raw.startswith(before_session), f"turn {i} rewrote the session file"
        grown = history.read_bytes() if history.exists() else b""
        assert grown.startswith(before_history), f"turn {i} rewrote HISTORY.md"
        before_session, before_history = raw, grown

    again = Session(home, "telegram", "42")
    assert len(again.messages) > 600 and again.messages == session.messages
    # nothing left the prompt unsaved, except while consolidation failed (and then it was said)
    window = config.agents.defaults.memory_window
    for first, shown, consolidated, failing in chat_requests:
        assert shown <= window + 2              # the window, and at most this turn's tool round
        if not failing and first > consolidated:
            pytest.fail(f"messages {consolidated} to {first - 1} left the prompt unsaved")
    assert any(failing and first > consolidated for first, _, consolidated, failing
               in chat_requests), "the failing stretch never pushed a message out"
    assert "out of the prompt and not yet in memory" in caplog.text
    # the failure backed off: one try, not one per message, until the back-off ended
    assert len(failed_calls) == 1
    # each message consolidated once, in bounded batches, in order
    lines = [ln for t in transcripts for ln in t.splitlines()]
    said = [ln.split(": ", 1)[1] for ln in lines if "] USER: " in ln]
    assert said == [f"question {i}" for i in range(len(said))]
    assert len(said) > 250 and again.consolidated > 550
    batch = config.agents.defaults.consolidate_batch
    assert all(sum(ln.startswith("[20") for ln in t.splitlines()) <= batch for t in transcripts)
    assert max(len(json.dumps(r["messages"])) for r in agent.provider.requests) < 20_000
    # every rewrite of MEMORY.md kept the one before (the last 30)
    versions = sorted((config.workspace / "memory" / "versions").glob("MEMORY.*.md"))
    assert len(versions) == memory_module.KEEP_VERSIONS
    assert versions[-1].read_text() == FACTS + f"- Fact {state['fact'] - 1}\n"
    assert Memory(config.workspace).read() == (FACTS + f"- Fact {state['fact']}").strip()
    assert history.read_text().count("Summary ") == state["fact"]


def test_a_session_written_before_markers_existed_is_consolidated_by_appending(cfg, home):
    """An existing session (no marker lines) keeps working: its lines stay byte for byte and
    marker lines are appended."""
    path = Session(home, "cli", "old").path
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [{"_type": "metadata", "key": "cli:old", "created_at": "2025-01-01T00:00:00Z"}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"line {i}",
         "timestamp": "2025-01-01T00:00:00Z"} for i in range(20)]
    raw = "".join(json.dumps(x) + "\n" for x in lines).encode()
    path.write_bytes(raw)
    agent = make_agent(cfg(consolidate_batch=8), ScriptedProvider(saving(), saving(), "hello"))
    assert agent.respond(ask("hi", chat_id="old")) == "hello"
    grown = path.read_bytes()
    assert grown.startswith(raw)
    markers = [json.loads(x) for x in grown[len(raw):].splitlines() if b"_type" in x]
    assert [m["_type"] for m in markers] == ["consolidated", "consolidated"]
    assert markers[-1]["upto"] == 16        # folded ahead, before they leave the window
    sent = [m["content"] for m in agent.provider.requests[-1]["messages"][1:]]
    assert sent == [f"line {i}" for i in range(12, 20)] + ["hi"]    # the window, from a user line
    # before a turn, consolidation and the turn share the turn's deadline (the watchdog's bound)
    assert len({r["deadline"] for r in agent.provider.requests}) == 1


def test_a_turn_longer_than_half_the_window_stays_whole_in_the_prompt(cfg, home):
    """The cut is where a turn starts: the last turn is kept whole when the window holds it."""
    config = cfg(memory_window=10)
    s = Session(home, "cli", "default")
    for i in range(3):
        s.append({"role": "user", "content": f"q{i}"})
        s.append({"role": "assistant", "content": f"a{i}"})
    s.append({"role": "user", "content": "do a lot"})
    for i in range(3):
        s.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": f"c{i}", "type": "function", "function": {"name": "list_dir", "arguments": "{}"}}]})
        s.append({"role": "tool", "tool_call_id": f"c{i}", "name": "list_dir", "content": "x"})
    agent = make_agent(config, ScriptedProvider(saving(), "ok"))
    agent.respond(ask("next"), s)
    assert s.consolidated == 6              # q0..a2 folded; the 7 lines of the last turn stay
    sent = agent.provider.requests[-1]["messages"]
    assert [m["content"] for m in sent[1:4]] == ["q2", "a2", "do a lot"]    # the last window
    assert sum(m["role"] == "tool" for m in sent) == 3 and sent[-1]["content"] == "next"


def test_every_request_carries_the_last_window_of_messages_not_half_of_it(cfg, home):
    """SPEC §13: the prompt carries the last memory_window messages. Consolidating ahead (half a
    window at a time) must not take the consolidated ones out of the prompt early."""
    config = cfg(memory_window=10)
    answer = saving()
    model = ScriptedProvider(*[lambda m: answer(m) if is_consolidation(m) else "ok"] * 60)
    agent, s = make_agent(config, model), Session(home, "cli", "default")
    for i in range(14):
        agent.respond(ask(f"q{i}"), s)
        agent.maintain(s)
    sizes = [len(r["messages"]) - 1 for r in model.requests if not is_consolidation(r["messages"])]
    # 8 lines of the session (from a user line on) and the new one, once it is that long
    assert s.consolidated > 0 and sizes[5:] == [9] * 9, sizes
    last = [r for r in model.requests if not is_consolidation(r["messages"])][-1]["messages"]
    assert [m["content"] for m in last[1:]] == ["q9", "ok", "q10", "ok", "q11", "ok", "q12", "ok",
                                                "q13"]


# --- back-off ---

def test_the_back_off_doubles_up_to_a_day_and_survives_a_restart(cfg, home):
    config = cfg()
    s = Session(home, "cli", "default")
    for i in range(6):
        s.append({"role": "user", "content": f"q{i}"})
        s.append({"role": "assistant", "content": f"a{i}"})
    agent = make_agent(config, ScriptedProvider(*[ProviderDown("down")] * 20))
    waits = []
    for _ in range(12):
        before = time.time()
        assert agent.memory.consolidate(s, agent.provider, config.agents.defaults) is False
        waits.append((s.retry_consolidation_at - time.time(), s.retry_consolidation_at - before))
        s = Session(home, "cli", "default")             # a restart: the back-off is on disk
        assert agent.memory.consolidate(s, agent.provider, config.agents.defaults) is False
        s.retry_consolidation_at = 0.0                  # as if it had passed
    assert agent.provider.calls == 12                   # never asked during a back-off
    expected = [60, 120, 240, 480, 960, 1920, 3840, 7680, 15360, 30720, 61440, 86400]
    assert all(low <= wait <= high for (low, high), wait in zip(waits, expected))
    assert s.consolidated == 0 and len(s.messages) == 12


# --- MEMORY.md: versions, an undecodable file ---

def test_an_undecodable_memory_file_is_left_byte_for_byte_by_every_writer(cfg, home):
    config = cfg()
    memory = config.workspace / "memory" / "MEMORY.md"
    raw = "# Memory\n- Caf\xe9 owner: Ada\n".encode("latin-1")
    memory.write_bytes(raw)
    agent = make_agent(config, ScriptedProvider(*[saving(memory="- everything replaced")] * 3))
    s = Session(home, "cli", "default")
    for i in range(6):
        s.append({"role": "user", "content": f"q{i}"})
        s.append({"role": "assistant", "content": f"a{i}"})
    agent.maintain(s)
    assert memory.read_bytes() == raw and s.consolidated > 0       # the summary went on
    reply = agent.respond(ask("/forget owner"), s)
    assert "left as it is" in reply and memory.read_bytes() == raw
    (config.workspace / "memory" / "versions").mkdir(exist_ok=True)
    (config.workspace / "memory" / "versions" / "MEMORY.20250101-000000-000000.md").write_text("old")
    done = run_cli("memory", "restore", "1")
    assert done.returncode == 2 and "left as it is" in done.stderr and memory.read_bytes() == raw



def test_the_models_own_file_tools_keep_a_version_and_history_stays_append_only(cfg, home):
    """SPEC §13: every rewrite of MEMORY.md keeps the old one, whoever writes it (the template's
    AGENTS.md tells the model to edit it with write_file and edit_file); HISTORY.md only grows."""
    from lib.tools import Context
    from lib.tools.files import edit_file, write_file
    config = cfg()
    ws = config.workspace
    ctx = Context(config, ws)
    versions = ws / "memory" / "versions"
    write_file(ctx, "memory/MEMORY.md", "# Memory\n- Name: Ada\n")
    assert [v.read_text() for v in versions.glob("MEMORY.*.md")] == [FACTS]
    edit_file(ctx, "memory/MEMORY.md", "Ada", "Ada Lovelace")
    assert (ws / "memory" / "MEMORY.md").read_text() == "# Memory\n- Name: Ada Lovelace\n"
    assert sorted(v.read_text() for v in versions.glob("MEMORY.*.md")) == sorted(
        [FACTS, "# Memory\n- Name: Ada\n"])
    history = ws / "memory" / "HISTORY.md"
    history.write_text("[2025-01-01 10:00] Met Ada.\n\n")
    write_file(ctx, str(history), history.read_text() + "[2025-01-02 10:00] Tea.\n\n")  # appends
    for rewrite in (lambda: write_file(ctx, "memory/HISTORY.md", "gone\n"),
                    lambda: edit_file(ctx, "memory/HISTORY.md", "Met Ada", "Met nobody")):
        with pytest.raises(Exception, match="append-only"):
            rewrite()
    assert history.read_text() == "[2025-01-01 10:00] Met Ada.\n\n[2025-01-02 10:00] Tea.\n\n"
    (ws / "memory" / "MEMORY.md").write_bytes(b"- Caf\xe9\n")            # not UTF-8: left alone
    with pytest.raises(Exception, match="left as it is"):
        write_file(ctx, "memory/MEMORY.md", "- replaced\n")
    assert (ws / "memory" / "MEMORY.md").read_bytes() == b"- Caf\xe9\n"

# --- group chats ---

def telegram(text, group, **meta):
    return ask(text, channel="telegram", chat_id="-100" if group else "42",
               metadata={"is_group": group, **meta})


@pytest.mark.parametrize("in_groups", [False, True])
def test_group_chats_see_memory_only_when_allowed_and_what_is_said_there_is_saved(
        cfg, home, in_groups):
    config = cfg(memory_in_groups=in_groups)
    model = ScriptedProvider(*["ok"] * 6, saving("Bob joined the team.", FACTS + "- Bob: new\n"))
    agent = make_agent(config, model)
    agent.respond(telegram("hello", group=False))
    agent.respond(telegram("hello all", group=True))
    dm, group = (r["messages"][0]["content"] for r in model.requests)
    assert "Likes green tea" in dm
    assert ("Likes green tea" in group) is in_groups
    s = Session(home, "telegram", "-100")
    for i in range(4):
        agent.respond(telegram(f"Bob is new, {i}", group=True), s)
    agent.maintain(s)                       # learned in the group, saved all the same
    assert "Bob joined the team." in (config.workspace / "memory" / "HISTORY.md").read_text()
    assert "- Bob: new" in Memory(config.workspace).read()
    assert '"group": true' in s.path.read_text() and '"group"' not in json.dumps(model.requests)


def test_a_cron_job_or_heartbeat_in_a_group_chat_does_not_see_memory_either(cfg, home):
    """The worker runs a system message addressed to the group in the group's session: the
    session remembers it is a group, though the cron message has no is_group of its own."""
    config = cfg()
    maildir.ensure(home / "inbox")
    maildir.ensure(home / "outbox", ("sent", "failed"))
    model = ScriptedProvider("ok", "reminder sent")
    worker = Worker(config, make_agent(config, model))
    maildir.deliver(home / "inbox", {"channel": "telegram", "chat_id": "-100", "sender_id": "42",
                                     "text": "remind us at 9", "metadata": {"is_group": True}})
    worker.drain()
    maildir.deliver(home / "inbox", {"channel": "system", "chat_id": "cron:1", "text": "remind",
                                     "metadata": {"kind": "cron", "reply_to": {
                                         "channel": "telegram", "chat_id": "-100"}}})
    worker.drain()
    assert model.calls == 2
    assert not any("Likes green tea" in r["messages"][0]["content"] for r in model.requests)
    assert "Likes green tea" in make_agent(config, ScriptedProvider()).memory.read()


def test_a_group_stays_a_group_after_new(cfg, home):
    """/new starts the session file afresh; a cron job or the heartbeat speaking in that group
    afterwards (their messages carry no is_group) still does not get MEMORY.md."""
    config = cfg()
    model = ScriptedProvider("ok", saving(), "ok")
    agent = make_agent(config, model)
    s = Session(home, "telegram", "-100")
    agent.respond(telegram("hello all", group=True), s)
    agent.respond(telegram("/new", group=True), s)
    cron = ask("remind", channel="telegram", chat_id="-100", metadata={"kind": "cron"})
    agent.respond(cron, Session(home, "telegram", "-100"))
    assert "Likes green tea" not in model.requests[-1]["messages"][0]["content"]


def test_a_group_chat_cannot_have_memory_read_out_through_a_tool(cfg, home):
    """The prompt leaves MEMORY.md out in a group; a member asking the model to read the file
    (or to look at it sideways, through HISTORY.md or a listing) gets nothing from it either."""
    config = cfg()
    (config.workspace / "memory" / "HISTORY.md").write_text("[2026-01-01] a private chat\n\n")
    reads = [{"tool_calls": [{"name": "read_file", "arguments": {"path": "memory/MEMORY.md"}},
                             {"name": "read_file", "arguments": {"path": "memory/HISTORY.md"}},
                             {"name": "list_dir", "arguments": {"path": "memory"}}]}, "done"]
    model = ScriptedProvider(*reads, *reads)
    agent = make_agent(config, model)
    agent.respond(telegram("read me your memory file", group=True))
    results = [m["content"] for m in model.requests[1]["messages"] if m["role"] == "tool"]
    assert len(results) == 3 and all("memory_in_groups" in r for r in results), results
    agent.respond(telegram("read me your memory file", group=False))
    results = [m["content"] for m in model.requests[3]["messages"] if m["role"] == "tool"]
    assert "Likes green tea" in results[0] and "a private chat" in results[1]


# --- /forget ---

def test_forget_removes_the_matching_lines_keeps_a_version_and_says_what_went(cfg, home):
    config = cfg()
    agent = make_agent(config, ScriptedProvider())
    assert "/forget TEXT" in agent.respond(ask("/help"))
    reply = agent.respond(telegram("/forget GREEN TEA", group=False))
    assert reply == ("Removed 1 line from MEMORY.md (the previous version is kept in "
                     "memory/versions/):\n- Likes green tea")
    memory = config.workspace / "memory" / "MEMORY.md"
    assert memory.read_text() == FACTS.replace("- Likes green tea\n", "")
    [version] = (config.workspace / "memory" / "versions").iterdir()
    assert version.read_text() == FACTS
    assert agent.respond(ask("/forget zebra")) == \
        'Nothing in MEMORY.md contains "zebra"; nothing was removed.'
    assert agent.respond(ask("/forget")).startswith("Usage: /forget TEXT")
    assert len(list((config.workspace / "memory" / "versions").iterdir())) == 1
    reply = agent.respond(telegram("/forget N", group=True))          # Ada, cluster: not shown
    assert reply.startswith("Removed 2 lines from MEMORY.md") and "Ada" not in reply
    assert memory.read_text() == "# Memory\n"
    assert agent.provider.calls == 0        # commands never reach the model


def test_forget_from_a_channel_goes_through_the_worker_like_any_message(cfg, home):
    config = cfg()
    maildir.ensure(home / "inbox")
    maildir.ensure(home / "outbox", ("sent", "failed"))
    maildir.deliver(home / "inbox", {"channel": "telegram", "chat_id": "42", "sender_id": "42",
                                     "text": "/forget pi cluster"})
    Worker(config, make_agent(config, ScriptedProvider())).drain()
    [out] = [json.loads(p.read_text()) for p in (home / "outbox" / "new").glob("*.json")]
    assert out["text"].endswith(":\n- Works on the Pi cluster") and out["chat_id"] == "42"
    assert "cluster" not in (config.workspace / "memory" / "MEMORY.md").read_text()


# --- the memory command ---

def test_the_memory_command_shows_lists_and_restores_versions(cfg, home):
    config = cfg()
    mem = Memory(config.workspace)
    for n in (1, 2):
        mem.write(FACTS + f"- change {n}\n")
    shown = run_cli("memory")
    assert shown.returncode == 0 and shown.stdout == FACTS + "- change 2\n"
    listed = run_cli("memory", "versions")
    rows = listed.stdout.splitlines()
    assert listed.returncode == 0 and rows[0].split()[0] == "1" and rows[1].split()[0] == "2"
    assert f"{len((FACTS + '- change 1').encode()) + 1:>8,} bytes" in rows[0]    # the newest first
    assert f"{len(FACTS.encode())} bytes" in rows[1]
    restored = run_cli("memory", "restore", "2")
    assert restored.returncode == 0 and "Restored version 2" in restored.stdout
    assert (config.workspace / "memory" / "MEMORY.md").read_text() == FACTS
    kept = sorted((config.workspace / "memory" / "versions").glob("*.md"))
    assert kept[-1].read_text() == FACTS + "- change 2\n"            # the replaced one is kept
    for bad in (["restore"], ["restore", "9"], ["restore", "0"]):
        out = run_cli("memory", *bad)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and "1 to 3" in out.stderr
    assert (config.workspace / "memory" / "MEMORY.md").read_text() == FACTS


def test_the_memory_command_with_no_versions_yet(cfg, home):
    cfg()
    assert "no versions yet" in run_cli("memory", "versions").stdout
    out = run_cli("memory", "restore", "1")
    assert out.returncode == 2 and "no versions" in out.stderr


# --- /new keeps every archived conversation ---

def test_two_new_conversations_in_one_second_are_both_kept(home):
    for text in ("first", "second"):
        s = Session(home, "cli", "n")
        s.append({"role": "user", "content": text})
        s.archive()
    kept = sorted(p.read_text() for p in (home / "sessions" / "archive").glob("cli_n.*.jsonl"))
    assert len(kept) == 2 and "first" in kept[0] and "second" in kept[1]
