"""Sub-agents in-process: real home folder, the fake model, results posted to the real inbox."""
import json
import re
import threading
from functools import partial

import pytest

from lib import maildir
from lib.agent.subagent import Subagents
from lib.providers.client import Reply, make_provider
from lib.tools import Context, Services, default_registry
from lib.mail import post_inbox
from lib.worker import Worker
from tests import conftest
from tests.conftest import make_agent
from tests.fakes.scripted import ScriptedProvider


wait_for = partial(conftest.wait_for, timeout=10.0)


def posted(config, task_id):
    path = config.home / "inbox" / "new" / f"subagent-{task_id}.json"
    return json.loads(path.read_text()) if path.exists() else None


def state(config, task_id):
    return config.home / "state" / "subagents" / f"{task_id}.json"


def task_id(started: str) -> str:
    return re.search(r"\(id (\w+)\)", started).group(1)


def make(config, provider=None, **kw):
    subs = Subagents(config, provider or make_provider(config),
                     lambda msg, name=None: post_inbox(config.home, msg, name), **kw)
    subs.start()
    return subs


@pytest.fixture
def parts():
    made = []
    yield made
    for subs in made:
        subs.stop()
        wait_for(lambda: not subs._running)     # no thread outlives its test


def test_the_spawn_tool_runs_a_background_turn_and_posts_its_result(config, llm, home, parts):
    (config.workspace / "note.txt").write_text("the code is 42")
    llm.script({"tool_calls": [{"name": "read_file", "arguments": {"path": "note.txt"}}]},
               "The note says the code is 42.")
    parts.append(subs := make(config))
    ctx = Context(config, config.workspace, "telegram", "99", services=Services(spawn=subs))
    started = default_registry().call("spawn", {"task": "Read note.txt", "label": "note"}, ctx)
    assert started.startswith("Started background task 'note' (id ")
    assert started.endswith("its result will arrive as a message.")
    tid = task_id(started)
    msg = wait_for(lambda: posted(config, tid))
    assert msg["channel"] == "system" and msg["chat_id"] == f"subagent:{tid}"
    assert msg["sender_id"] == "subagent"
    assert msg["metadata"] == {"kind": "subagent", "task_id": tid,
                               "reply_to": {"channel": "telegram", "chat_id": "99"}}
    assert msg["text"] == ("[Background task 'note' finished]\nTask: Read note.txt\n"
                           "Result: The note says the code is 42.\n"
                           "Tell the user the outcome briefly in your own words.")
    wait_for(lambda: not state(config, tid).exists())
    first, second = llm.chat_requests
    assert "background worker" in first["messages"][0]["content"]
    assert first["messages"][1] == {"role": "user", "content": "Read note.txt"}
    assert second["messages"][-1]["content"] == "the code is 42"
    names = {t["function"]["name"] for t in first["tools"]}
    assert {"read_file", "exec", "web_fetch"} <= names and not names & {"message", "spawn", "cron"}
    session = home / "sessions" / f"subagent_{tid}.jsonl"
    rows = [json.loads(x) for x in session.read_text().splitlines()]
    assert rows[0]["key"] == f"subagent:{tid}"
    assert [r["role"] for r in rows[1:]] == ["user", "assistant", "tool", "assistant"]


def test_a_task_from_a_group_keeps_its_privacy_and_may_read_what_was_sent(config, llm, home,
                                                                         parts):
    """A sub-agent started in a group does not see memory/; one asked to look at a file sent
    in the chat may read it (it lives in $NANOCLAW_HOME/media, outside the workspace)."""
    (config.workspace / "memory").mkdir(exist_ok=True)
    (config.workspace / "memory" / "MEMORY.md").write_text("- the owner's PIN hint\n")
    (home / "media" / "telegram").mkdir(parents=True)
    sent = home / "media" / "telegram" / "1-report.txt"
    sent.write_text("quarterly numbers\n")
    llm.script({"tool_calls": [{"name": "read_file", "arguments": {"path": "memory/MEMORY.md"}},
                               {"name": "read_file", "arguments": {"path": str(sent)}}]}, "done")
    parts.append(subs := make(config))
    ctx = Context(config, config.workspace, "telegram", "-100", services=Services(spawn=subs),
                  memory=False, readable=(str(sent),))
    tid = task_id(default_registry().call("spawn", {"task": "summarise the report"}, ctx))
    wait_for(lambda: posted(config, tid))
    memory, report = [m["content"] for m in llm.chat_requests[1]["messages"] if m["role"] == "tool"]
    assert "memory_in_groups" in memory and report == "quarterly numbers\n"


def test_the_spawn_tool_without_the_gateway_says_so(config):
    ctx = Context(config, config.workspace)
    assert default_registry().call("spawn", {"task": "x"}, ctx) == \
        "Error: background tasks need the gateway (python nanoclaw.py gateway)"


def test_no_more_than_max_running_at_once(config, parts):
    model = ScriptedProvider("done", "done", "done", gate=threading.Event())
    parts.append(subs := make(config, model))
    ids = [task_id(subs.spawn(f"job {n}", "", "telegram", "1")) for n in range(3)]
    ctx = Context(config, config.workspace, services=Services(spawn=subs))
    refused = default_registry().call("spawn", {"task": "one too many"}, ctx)
    assert refused == "Error: 3 background tasks are already running; wait for one to finish"
    assert len(list((config.home / "state" / "subagents").glob("*.json"))) == 3
    model.gate.set()
    for tid in ids:
        assert wait_for(lambda: posted(config, tid))["text"].startswith(f"[Background task 'job ")
    wait_for(lambda: not subs._running)
    assert subs.spawn("now there is room", "room").startswith("Started")


def test_a_task_left_by_a_crash_runs_again_on_start(config, llm, parts):
    job = {"id": "abc123", "task": "Say hi", "label": "hi", "created_at": "2026-01-01T00:00:00Z",
           "origin": {"channel": "slack", "chat_id": "C1"}}
    maildir.atomic_write(state(config, "abc123"), json.dumps(job))
    llm.script("Hi!")
    parts.append(make(config))
    msg = wait_for(lambda: posted(config, "abc123"))
    assert "Result: Hi!" in msg["text"]
    assert msg["metadata"]["reply_to"] == {"channel": "slack", "chat_id": "C1"}
    wait_for(lambda: not state(config, "abc123").exists())


def test_a_result_saved_before_a_crash_is_posted_without_asking_again(config, llm, parts):
    job = {"id": "def456", "task": "Say hi", "label": "hi", "created_at": "2026-01-01T00:00:00Z",
           "origin": {"channel": "slack", "chat_id": "C1"}, "result": "Hi!"}
    maildir.atomic_write(state(config, "def456"), json.dumps(job))
    parts.append(make(config))
    assert "Result: Hi!" in wait_for(lambda: posted(config, "def456"))["text"]
    wait_for(lambda: not state(config, "def456").exists())
    assert llm.requests == []


def test_stop_leaves_an_unfinished_task_for_the_next_start(config, llm, parts):
    call = Reply(tool_calls=[{"id": "c1", "name": "list_dir", "arguments": "{}"}])
    model = ScriptedProvider(call, gate=threading.Event())
    subs = make(config, model)
    tid = task_id(subs.spawn("List the workspace", "ls", "telegram", "7"))
    wait_for(lambda: model.calls == 1)
    subs.stop(timeout=0.05)                 # the model call is still out
    model.gate.set()
    wait_for(lambda: not subs._running)     # it stopped before asking the model again
    assert model.calls == 1 and posted(config, tid) is None and state(config, tid).exists()
    llm.script("Three files.")
    parts.append(make(config))
    assert "Result: Three files." in wait_for(lambda: posted(config, tid))["text"]


def test_a_provider_failure_becomes_the_result(config, llm, parts):
    llm.script({"status": 401})
    parts.append(subs := make(config))
    tid = task_id(subs.spawn("Do it", "it", "telegram", "5"))
    msg = wait_for(lambda: posted(config, tid))
    assert "Result: the task failed: " in msg["text"] and "api_key" in msg["text"]
    wait_for(lambda: not state(config, tid).exists())


def test_through_the_worker_the_result_reaches_the_chat_that_asked(config, llm, home, parts):
    def model(body):
        last = body["messages"][-1]
        if last["role"] == "tool":
            return "On it."
        if last["content"] == "count the files":
            return {"tool_calls": [{"name": "spawn", "arguments": {"task": "Count files"}}]}
        return "Five files." if last["content"] == "Count files" else "Done: five files."
    llm.script(*[model] * 4)
    maildir.ensure(home / "inbox")
    services = Services()
    worker = Worker(config, make_agent(config, services=services))
    parts.append(subs := make(config))
    services.spawn = subs                   # as the gateway does, after the worker exists
    post_inbox(home, {"channel": "local", "chat_id": "me", "text": "count the files"})
    worker.drain()
    wait_for(lambda: list((home / "inbox" / "new").glob("subagent-*.json")))
    worker.drain()
    sent = [json.loads(p.read_text()) for p in sorted((home / "outbox" / "sent").glob("*.json"))]
    assert [(m["chat_id"], m["text"]) for m in sent] == [("me", "On it."),
                                                          ("me", "Done: five files.")]
