import json

import pytest

from lib.agent.context import system_prompt
from lib.providers.client import make_provider
from tests.conftest import ask, make_agent
from lib.errors import ProviderDown
from lib.sessions import Session


def turn(agent, text, home):
    """What the CLI and the worker do: answer, then keep memory in shape."""
    session = Session(home, "cli", "default")
    reply = agent.respond(ask(text), session)
    agent.maintain(session)
    return reply


def saved(home, key="cli_default"):
    return [json.loads(x) for x in (home / "sessions" / f"{key}.jsonl").read_text().splitlines()]


def test_a_plain_answer(config, llm):
    llm.script("Hello there.")
    assert make_agent(config).respond(ask("hi")) == "Hello there."
    body = llm.chat_requests[-1]
    assert body["messages"][0]["role"] == "system"
    assert body["messages"][-1] == {"role": "user", "content": "hi"}
    assert {t["function"]["name"] for t in body["tools"]} >= {"read_file", "exec", "message"}


def test_tool_calls_run_and_their_results_go_back_to_the_model(config, llm, home):
    (config.workspace / "note.txt").write_text("the secret is 42")
    llm.script({"tool_calls": [{"name": "read_file", "arguments": {"path": "note.txt"}}]}, "It is 42.")
    assert make_agent(config).respond(ask("what is the secret?", id="m7")) == "It is 42."
    second = llm.chat_requests[1]["messages"]
    assert second[-1]["role"] == "tool" and second[-1]["content"] == "the secret is 42"
    assert second[-1]["tool_call_id"] == second[-2]["tool_calls"][0]["id"]
    rows = saved(home)
    assert [r.get("role") for r in rows[1:]] == ["user", "assistant", "tool", "assistant"]
    assert all(r["id"] == "m7" for r in rows[1:])
    api_keys = {"role", "content", "tool_calls", "tool_call_id", "name", "reasoning_content"}
    assert all(set(m) <= api_keys for m in second), "only API fields go to the model"


def test_unknown_tool_and_bad_arguments_go_back_as_errors_not_crashes(config, llm):
    llm.script({"tool_calls": [{"name": "teleport", "arguments": {}},
                               {"name": "read_file", "arguments": "{not json"}]}, "Sorry.")
    assert make_agent(config).respond(ask("go")) == "Sorry."
    results = [m for m in llm.chat_requests[1]["messages"] if m["role"] == "tool"]
    assert results[0]["content"].startswith("Error: there is no tool named 'teleport'")
    assert results[1]["content"].startswith("Error:") and "JSON" in results[1]["content"]


def test_tool_rounds_are_capped_and_the_user_is_told(config, llm, home):
    import dataclasses
    d = dataclasses.replace(config.agents.defaults, max_tool_iterations=2)
    cfg = dataclasses.replace(config, agents=dataclasses.replace(config.agents, defaults=d))
    loop = {"tool_calls": [{"name": "list_dir", "arguments": {"path": "."}}]}
    llm.script(loop, loop, "never reached")
    reply = make_agent(cfg).respond(ask("loop forever"))
    assert "stopped after 2 rounds" in reply and len(llm.chat_requests) == 2


def test_every_message_is_saved_before_the_next_step(config, llm, home):
    def check_saved(body):
        # when the model is asked the second time, the first answer and tool result are on disk
        assert [r.get("role") for r in saved(home)[1:]] == ["user", "assistant", "tool"]
        return "done"
    llm.script({"tool_calls": [{"name": "list_dir", "arguments": {"path": "."}}]}, check_saved)
    assert make_agent(config).respond(ask("x")) == "done"
    assert not llm.errors


def test_a_turn_that_could_not_start_leaves_the_session_as_it_was(config, llm, home):
    """Issue 15: the user's line was written before the model answered, so after a failure the
    same question, asked again, reached the model twice."""
    agent = make_agent(config)
    agent.provider.retries, agent.provider.backoff = 1, 0.01
    llm.script("Hi.")
    agent.respond(ask("hello"))
    before = saved(home)
    llm.script({"status": 503}, {"status": 503})
    with pytest.raises(ProviderDown, match=r"not answering \(HTTP 503, 2 tries\)"):
        agent.respond(ask("are you there?"))
    assert saved(home) == before
    llm.script("Yes.")
    assert agent.respond(ask("are you there?")) == "Yes."
    contents = [m["content"] for m in llm.chat_requests[-1]["messages"][1:]]
    assert contents == ["hello", "Hi.", "are you there?"]
    assert [r["content"] for r in saved(home)[1:]] == contents + ["Yes."]


def test_reasoning_content_is_kept_in_the_session(config, llm, home):
    llm.script({"content": "4", "reasoning_content": "2+2 is 4"})
    make_agent(config).respond(ask("2+2?"))
    assert saved(home)[-1]["reasoning_content"] == "2+2 is 4"


def test_the_system_prompt_has_workspace_files_memory_skills_and_runtime_facts(config):
    (config.workspace / "USER.md").write_text("The owner is called Ada.")
    (config.workspace / "memory" / "MEMORY.md").write_text("Ada likes tea.")
    text = system_prompt(config, "telegram", "123")
    assert "The owner is called Ada." in text and "Ada likes tea." in text
    assert "## SOUL.md" in text and "## AGENTS.md" in text and "## TOOLS.md" in text
    assert "Channel: telegram, chat id: 123" in text and str(config.workspace) in text
    assert "weather" in text and "Time:" in text


def test_old_messages_are_consolidated_into_history_and_memory(config, llm, home):
    agent = make_agent(config)       # memory_window is 10 in the fixture
    for i in range(4):
        llm.script(f"answer {i}")
        turn(agent, f"question {i}", home)
    assert not (config.workspace / "memory" / "HISTORY.md").exists() and not llm.pending
    llm.script("answer 4", {"tool_calls": [{"name": "save_memory", "arguments": {
        "history_entry": "Ada asked five questions about tea.",
        "memory_update": "# Memory\n- Ada likes tea."}}]})
    turn(agent, "question 4", home)         # 10 messages: the next one would push one out
    history = (config.workspace / "memory" / "HISTORY.md").read_text()
    assert "Ada asked five questions about tea." in history and history.startswith("[20")
    assert (config.workspace / "memory" / "MEMORY.md").read_text() == "# Memory\n- Ada likes tea.\n"
    prompt = llm.chat_requests[-1]["messages"][0]["content"]
    assert "question 0" in prompt and "save_memory" in json.dumps(llm.chat_requests[-1]["tools"])
    s = Session(home, "cli", "default")
    assert s.consolidated == 6 and len(s.messages) == 10       # from the first turn in the last 5
    llm.script("ok")
    turn(agent, "next", home)
    sent = [m["content"] for m in llm.chat_requests[-1]["messages"][1:]]
    assert "question 0" not in sent and sent[-1] == "next"
    assert "Ada likes tea." in llm.chat_requests[-1]["messages"][0]["content"]


def test_consolidation_failure_loses_nothing(config, llm, home):
    agent = make_agent(config)
    for i in range(5):
        llm.script(f"a{i}", *(["I refuse to call tools"] if i == 4 else []))
        turn(agent, f"q{i}", home)
    assert not llm.pending
    s = Session(home, "cli", "default")
    assert s.consolidated == 0 and len(s.messages) == 10


def test_new_consolidates_then_starts_over(config, llm, home):
    agent = make_agent(config)
    llm.script("hi")
    agent.respond(ask("I am Ada"))
    llm.script({"tool_calls": [{"name": "save_memory", "arguments": {
        "history_entry": "Met Ada.", "memory_update": "- Name: Ada"}}]})
    reply = agent.respond(ask("/new"))
    assert reply.startswith("New conversation started.") and "saved a summary" in reply
    assert "Met Ada." in (config.workspace / "memory" / "HISTORY.md").read_text()
    assert Session(home, "cli", "default").messages == []
    assert list((home / "sessions" / "archive").iterdir())


def test_help_answers_without_the_model(config, llm):
    assert "/new" in make_agent(config).respond(ask("/help"))
    assert llm.chat_requests == []


def test_images_go_to_the_model_inline_and_the_session_keeps_the_path(config, llm, home, tmp_path):
    img = tmp_path / "cat.png"
    img.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    llm.script("A cat.")
    make_agent(config).respond(ask("what is this?", "telegram", "9", media=[str(img)]))
    content = llm.chat_requests[-1]["messages"][-1]["content"]
    assert content[0]["type"] == "text" and content[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert saved(home, "telegram_9")[1]["media"] == [str(img)]


def test_a_file_sent_in_a_chat_can_be_read_then_and_later_and_the_skills_too(config, llm, home):
    """Attachments are saved outside the workspace ($NANOCLAW_HOME/media) and bundled skills live
    in the repo: with restrict_to_workspace (the default) the model still reads both."""
    from lib.agent.skills import discover
    media = home / "media" / "telegram"
    media.mkdir(parents=True)
    (media / "1-notes.txt").write_text("the meeting is at 10\n")
    skill = str(next(s.path for s in discover(config.workspace) if s.name == "weather"))
    read = [{"tool_calls": [{"name": "read_file", "arguments": {"path": str(media / "1-notes.txt")}},
                            {"name": "read_file", "arguments": {"path": skill}}]}, "ok"]
    llm.script(*read, *read)
    agent = make_agent(config)
    agent.respond(ask("summarise this", "telegram", "9", media=[str(media / "1-notes.txt")]))
    agent.respond(ask("and again, the file from before", "telegram", "9"))
    for request in (llm.chat_requests[1], llm.chat_requests[3]):
        notes, weather = [m["content"] for m in request["messages"] if m["role"] == "tool"][-2:]
        assert notes == "the meeting is at 10\n" and "weather" in weather.lower(), (notes, weather)
    llm.script(read[0], "ok")
    agent.respond(ask("read the other chat's file", "telegram", "10"))
    notes = next(m["content"] for m in llm.chat_requests[-1]["messages"] if m["role"] == "tool")
    assert "outside the workspace" in notes


def test_message_tool_reaches_the_send_function_with_the_current_chat(config, llm):
    sent = []
    llm.script({"tool_calls": [{"name": "message", "arguments": {"content": "working on it"}}]}, "done")
    make_agent(config, send=lambda *a: sent.append(a)).respond(ask("go", "slack", "C1"))
    assert sent == [("slack", "C1", "working on it")]


def test_make_provider_uses_the_resolved_endpoint(config, llm):
    llm.script("x")
    assert make_provider(config).complete([{"role": "user", "content": "q"}]).content == "x"


def test_a_message_answered_before_a_crash_is_not_asked_again(config, llm, home):
    agent = make_agent(config)
    llm.script("first answer")
    assert agent.respond(ask("q", id="m1")) == "first answer"
    assert agent.respond(ask("q", id="m1")) == "first answer"
    assert len(llm.chat_requests) == 1
    assert [r.get("role") for r in saved(home)[1:]] == ["user", "assistant"]


def test_a_turn_cut_off_mid_tool_goes_on_without_duplicating_lines(config, llm, home):
    s = Session(home, "cli", "default")
    s.append({"role": "user", "content": "list it", "id": "m2"})
    s.append({"role": "assistant", "content": None, "id": "m2", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "list_dir", "arguments": "{}"}}]})
    llm.script("Listed.")                  # the process died while list_dir ran
    assert make_agent(config).respond(ask("list it", id="m2")) == "Listed."
    roles = [r.get("role") for r in saved(home)[1:]]
    assert roles == ["user", "assistant", "tool", "assistant"]
    tool = saved(home)[3]
    assert tool["tool_call_id"] == "c1" and "interrupted before this tool finished" in tool["content"]
    assert llm.chat_requests[0]["messages"][-1]["role"] == "tool"


def with_defaults(config, **changes):
    import dataclasses
    d = dataclasses.replace(config.agents.defaults, **changes)
    return dataclasses.replace(config, agents=dataclasses.replace(config.agents, defaults=d))


def test_a_hung_model_ends_the_turn_at_its_deadline_with_a_notice(config, llm, home):
    """agents.defaults.turn_timeout_s bounds the whole turn, a model that never answers included
    (SPEC §8): the user is told, the session records it, and the next message is answered."""
    import time
    llm.script({"delay": 30}, "back again")
    agent = make_agent(with_defaults(config, turn_timeout_s=2))
    started = time.monotonic()
    reply = agent.respond(ask("hello?", id="m1"))
    assert time.monotonic() - started < 10
    assert "ran out of time" in reply and "turn_timeout_s" in reply
    assert saved(home)[-1]["content"] == reply
    assert agent.respond(ask("still there?", id="m2")) == "back again"


def test_retries_stop_at_the_turns_deadline(config, llm):
    """A provider failing again and again is retried only while the turn has time left."""
    import time
    llm.script(*[{"status": 500, "headers": {"retry-after": "1"}}] * 20)
    agent = make_agent(with_defaults(config, turn_timeout_s=2))
    started = time.monotonic()
    reply = agent.respond(ask("hello?"))
    assert time.monotonic() - started < 10 and "ran out of time" in reply


def test_a_tool_sees_the_turns_deadline(config, llm):
    from lib.tools import Context
    seen = []
    agent = make_agent(with_defaults(config, turn_timeout_s=100))
    agent.tools.tools["list_dir"] = lambda ctx, path=".": seen.append(ctx.time_left(1000)) or "ok"
    llm.script({"tool_calls": [{"name": "list_dir", "arguments": {"path": "."}}]}, "done")
    agent.respond(ask("go"))
    assert 90 < seen[0] <= 100 and Context(config, config.workspace).time_left(5) == 5


SAVE = {"tool_calls": [{"name": "save_memory", "arguments": {
    "history_entry": "Talked about tea.", "memory_update": "# Memory\n- Likes tea."}}]}


def chat(agent, home, n, start=0):
    """n question/answer pairs written straight to the session (no model calls)."""
    s = Session(home, "cli", "default")
    for i in range(start, start + n):
        s.append({"role": "user", "content": f"question {i}", "id": f"m{i}"})
        s.append({"role": "assistant", "content": f"answer {i}", "id": f"m{i}"})
    return s


def test_an_undecodable_memory_file_is_never_rewritten(config, llm, home):
    """One bad byte used to make MEMORY.md read as empty, and the next consolidation replaced
    every fact (SPEC §8): now it stays byte for byte, and the summary still reaches HISTORY.md."""
    memory = config.workspace / "memory" / "MEMORY.md"
    raw = "# Memory\n- Name: Ada\n- Café: Fl\xf6te\n".encode("latin-1")
    memory.write_bytes(raw)
    agent = make_agent(config)
    assert "Name: Ada" in system_prompt(config, "cli", "default")
    s = chat(agent, home, 10)
    llm.script(SAVE)
    agent.maintain(s)
    assert memory.read_bytes() == raw
    assert "Talked about tea." in (config.workspace / "memory" / "HISTORY.md").read_text()
    assert "Name: Ada" in llm.chat_requests[-1]["messages"][0]["content"]


def test_each_rewrite_of_memory_keeps_the_previous_version(config, llm, home):
    from lib.agent import memory as memory_module
    mem = memory_module.Memory(config.workspace)
    (config.workspace / "memory" / "MEMORY.md").write_text("version 0\n")
    for i in range(1, memory_module.KEEP_VERSIONS + 3):
        assert mem.write(f"version {i}\n")
    versions = sorted((config.workspace / "memory" / "versions").iterdir())
    assert len(versions) == memory_module.KEEP_VERSIONS
    assert versions[-1].read_text() == f"version {memory_module.KEEP_VERSIONS + 1}\n"
    assert versions[0].read_text() == "version 2\n"
    assert mem.read() == f"version {memory_module.KEEP_VERSIONS + 2}"


def test_consolidation_goes_in_bounded_batches(config, llm, home):
    """A long backlog is summarised consolidate_batch messages per call (SPEC §13), and a huge
    message is cut in the transcript: the request stays small."""
    agent = make_agent(with_defaults(config, consolidate_batch=40))
    s = chat(agent, home, 50)
    s.append({"role": "user", "content": "x" * 1_000_000, "id": "big"})
    s.append({"role": "assistant", "content": "ok", "id": "big"})
    llm.script(*[SAVE] * 5)
    agent.respond(ask("/new"), s)
    sizes = [len(json.dumps(r["messages"])) for r in llm.chat_requests]
    assert len(sizes) == 3 and max(sizes) < 100_000
    assert all(r["messages"][0]["content"].count("USER: ") <= 20 for r in llm.chat_requests)


def test_a_failed_consolidation_backs_off_instead_of_retrying_every_message(config, llm, home):
    import time
    agent = make_agent(config)           # memory_window 10
    s = chat(agent, home, 10)
    llm.script("I will not call tools")
    agent.maintain(s)
    asked = len(llm.chat_requests)
    agent.maintain(s)                                   # the same process, at once
    agent.maintain(Session(home, "cli", "default"))     # a new process (agent -m), at once
    assert len(llm.chat_requests) == asked == 1
    again = Session(home, "cli", "default")
    assert again.consolidation_failures == 1 and 50 < again.retry_consolidation_at - time.time() <= 60
    again.mark("consolidation_failed", retry_at=time.time() - 1)    # as if the back-off had passed
    llm.script("still no")
    agent.maintain(again)
    assert len(llm.chat_requests) == 2
    third = Session(home, "cli", "default")
    assert third.consolidation_failures == 3 and third.retry_consolidation_at - time.time() > 200
    third.mark("consolidation_failed", retry_at=time.time() - 1)
    llm.script(SAVE)
    agent.maintain(third)
    assert Session(home, "cli", "default").consolidation_failures == 0


def test_the_loop_hands_the_provider_the_turns_deadline_and_the_tool_schemas(config):
    """The agent is handed its provider (lib.providers.Provider): here a scripted one, no HTTP."""
    import time
    from tests.fakes.scripted import ScriptedProvider
    model = ScriptedProvider({"tool_calls": [{"name": "list_dir", "arguments": {"path": "."}}]}, "Listed.")
    before = time.monotonic()
    assert make_agent(with_defaults(config, turn_timeout_s=50), model).respond(ask("ls")) == "Listed."
    assert model.calls == 2 and all(before + 49 < r["deadline"] <= time.monotonic() + 50
                                    for r in model.requests)
    assert {t["function"]["name"] for t in model.requests[0]["tools"]} >= {"exec", "list_dir"}
    assert model.requests[1]["messages"][-1]["role"] == "tool"


def test_links_planted_in_the_workspace_never_lead_the_gateway_out(config, llm, home, tmp_path):
    """The gateway reads and writes workspace files outside the sandbox: a command that plants a
    symbolic link must not make it read the keys or write elsewhere (found in review)."""
    import os
    secret = home / "config.yaml"
    secret.write_text(secret.read_text() + "# SECRET-KEY-123\n")
    outside, inbox = tmp_path / "outside.txt", home / "inbox" / "new"
    outside.write_text("untouched\n")
    inbox.mkdir(parents=True, exist_ok=True)
    ws, mem = config.workspace, config.workspace / "memory"
    for name in ("AGENTS.md", "HEARTBEAT.md"):
        (ws / name).unlink(missing_ok=True)
        os.symlink(secret, ws / name)
    (ws / "skills" / "evil").mkdir(parents=True)
    os.symlink(secret, ws / "skills" / "evil" / "SKILL.md")
    (mem / "MEMORY.md").unlink(missing_ok=True)
    os.symlink(secret, mem / "MEMORY.md")
    os.symlink(outside, mem / "HISTORY.md")
    os.symlink(inbox, mem / "versions")
    assert "SECRET-KEY-123" not in system_prompt(config, "cli", "default")
    agent = make_agent(config)
    s = chat(agent, home, 10)
    llm.script(SAVE)
    agent.maintain(s)
    assert "SECRET-KEY-123" not in json.dumps(llm.chat_requests)
    assert outside.read_text() == "untouched\n" and list(inbox.iterdir()) == []
    assert os.path.islink(mem / "MEMORY.md") and "SECRET-KEY-123" in secret.read_text()
    from lib import heartbeat
    assert heartbeat.message(config) is None
