"""SPEC §9: a risky action waits for the owner's yes, and the worker never waits. Through the
real gateway (channel `local`, the fake OpenAI server), and the CLI."""
import json
import re

import pytest

from lib.approvals import Approvals, risk
from lib.config import load_config
from lib.errors import ToolError
from lib.tools import Context
from tests.conftest import replies, run_cli, wait_for, write_config
from tests.test_gateway import drop, session_rows

CLEAN = "rm -rf build; echo x >> ran.txt"


def router(body):
    """The model: 'clean up' runs CLEAN, 'clean b' a different risky command; after a tool result
    it says what it saw; anything else is echoed."""
    last = body["messages"][-1]
    if last["role"] == "tool" or str(last["content"]).startswith("[The result of your earlier"):
        return f"after: {str(last['content'])[:160]}"
    text = last["content"] if isinstance(last["content"], str) else ""
    if text.startswith("clean"):
        command = CLEAN if text == "clean up" else "rm -rf other"
        also = [{"name": "list_dir", "arguments": {"path": "."}}] * (text == "clean twice")
        return {"tool_calls": [{"name": "exec", "arguments": {"command": command}}, *also]}
    return f"echo: {text}"


@pytest.fixture
def gateway_config(home, llm):
    write_config(home, f"providers:\n  custom: {{api_base: '{llm.url}'}}\n"
                       "agents:\n  defaults: {model: fake-model, retry_backoff_s: 0.01}\n"
                       "heartbeat: {enabled: false}\n"
                       "tools: {exec: {sandbox: 'off'}, restrict_to_workspace: false, "
                       "approval: {timeout_s: 600}}\n")
    ws = home / "workspace"
    (ws / "build").mkdir(parents=True)
    llm.script(*[router] * 50)
    return home


def texts(home):
    return [r["text"] for r in replies(home)]


def ask_and_get_code(home, name="c1.json", chat="x", text="clean up"):
    drop(home, name, {"channel": "local", "chat_id": chat, "text": text})
    question = wait_for(lambda: [r for r in replies(home) if "reply \"yes" in r["text"]
                                 and r["reply_to"] == name[:-5]], what="the question")[0]
    return question, re.search(r'"yes (\d{4})"', question["text"])[1]


def test_a_risky_command_waits_for_yes_while_other_chats_are_answered(gateway, home, llm):
    gateway.start()
    question, code = ask_and_get_code(home)
    assert question["text"] == (f"Run in workspace/: {CLEAN} — reply \"yes {code}\" or "
                                f"\"no {code}\" (expires in 10 min)")
    assert (home / "state" / "approvals" / f"{code}.json").exists()
    assert not (home / "workspace" / "ran.txt").exists()          # not run yet
    drop(home, "other.json", {"channel": "local", "chat_id": "y", "text": "hello"})
    wait_for(lambda: "echo: hello" in texts(home), what="the other chat's answer")
    assert (home / "inbox" / "done" / "c1.json").exists()          # the worker moved on
    drop(home, "yes.json", {"channel": "local", "chat_id": "x", "text": f"yes {code}"})
    final = wait_for(lambda: [r for r in replies(home) if r["text"].startswith("after:")],
                     what="the turn going on")[0]
    assert final["reply_to"] == "c1" and "exit code 0" in final["text"]
    assert not (home / "workspace" / "build").exists()
    # the answer is a message too, and gets its one reply (SPEC §3)
    assert [r["text"] for r in replies(home) if r["reply_to"] == "yes"] == [
        f"Approved {code}; the assistant goes on."]
    drop(home, "yes2.json", {"channel": "local", "chat_id": "x", "text": f"yes {code}"})
    wait_for(lambda: any("already answered" in t for t in texts(home)), what="the second yes")
    assert (home / "workspace" / "ran.txt").read_text() == "x\n"   # run once
    rows = [m for m in session_rows(home, "local_x") if m.get("role") == "tool"]
    assert len(rows) == 1 and rows[0]["id"] == "c1"



def test_the_same_chat_talks_on_while_its_turn_waits_and_the_answer_still_fits(gateway, home, llm):
    """A message in the parked chat is answered meanwhile (its request says the parked call was
    cut off); the later result must not become a tool message without its call, which the API
    refuses with a 400 for ever after (the fake checks the order as OpenAI does)."""
    gateway.start()
    _, code = ask_and_get_code(home)
    drop(home, "meanwhile.json", {"channel": "local", "chat_id": "x", "text": "meanwhile"})
    wait_for(lambda: "echo: meanwhile" in texts(home), what="the answer meanwhile")
    drop(home, "yes.json", {"channel": "local", "chat_id": "x", "text": f"yes {code}"})
    wait_for(lambda: (home / "inbox" / "done" / "yes.json").exists(), what="the yes")
    final = wait_for(lambda: [r for r in replies(home) if r["reply_to"] == "c1" and "reply" not in
                              r["text"]], what="the turn going on")[0]
    assert "exit code 0" in final["text"] and not final["metadata"].get("error"), final
    drop(home, "later.json", {"channel": "local", "chat_id": "x", "text": "later"})
    wait_for(lambda: "echo: later" in texts(home), what="the chat still working")
    assert (home / "workspace" / "ran.txt").read_text() == "x\n"


def test_the_calls_after_a_parked_one_are_not_run_and_the_turn_still_goes_on(gateway, home, llm):
    gateway.start()
    _, code = ask_and_get_code(home, text="clean twice")
    drop(home, "yes.json", {"channel": "local", "chat_id": "x", "text": f"yes {code}"})
    final = wait_for(lambda: [r for r in replies(home) if r["reply_to"] == "c1" and
                              r["text"].startswith("after:")], what="the turn going on")[0]
    assert not final["metadata"].get("error"), final
    rows = [m for m in session_rows(home, "local_x") if m.get("role") == "tool"]
    assert sorted(m["name"] for m in rows) == ["exec", "list_dir"]
    assert "exit code 0" in next(m["content"] for m in rows if m["name"] == "exec")
    assert next(m["content"] for m in rows if m["name"] == "list_dir").startswith("Error: ")

def test_no_gives_the_model_the_owners_refusal(gateway, home, llm):
    gateway.start()
    _, code = ask_and_get_code(home)
    drop(home, "no.json", {"channel": "local", "chat_id": "x", "text": f"No {code}"})
    wait_for(lambda: "after: Error: the owner declined" in texts(home), what="the refusal")
    assert (home / "workspace" / "build").exists()


def test_no_answer_in_time_is_did_not_answer(gateway, home, llm):
    config = home / "config.yaml"
    config.write_text(config.read_text().replace("timeout_s: 600", "timeout_s: 2"))
    gateway.start()
    ask_and_get_code(home)
    final = wait_for(lambda: [t for t in texts(home) if t.startswith("after:")], timeout=20,
                     what="the timeout")[0]
    assert "the owner did not answer" in final and (home / "workspace" / "build").exists()
    code = re.search(r'"yes (\d{4})"', texts(home)[0])[1]
    drop(home, "late.json", {"channel": "local", "chat_id": "x", "text": f"yes {code}"})
    wait_for(lambda: any(f"Approval {code} has expired" in t for t in texts(home)),
             what="a yes that came too late told so")


def test_a_yes_is_for_that_chat_or_the_owner_and_never_from_a_cron_job(gateway, home, llm):
    gateway.start()
    _, code = ask_and_get_code(home)
    drop(home, "elsewhere.json", {"channel": "local", "chat_id": "stranger", "text": f"yes {code}"})
    wait_for(lambda: any("can only be answered in the chat" in t for t in texts(home)),
             what="the refusal")
    drop(home, "cron.json", {"channel": "system", "chat_id": "cron:1", "sender_id": "cron",
                             "text": f"yes {code}", "metadata": {"kind": "cron"}})
    wait_for(lambda: (home / "inbox" / "done" / "cron.json").exists(), what="the cron turn")
    assert (home / "state" / "approvals" / f"{code}.json").exists()        # still waiting
    r = run_cli("approvals")
    assert code in r.stdout and "local:x" in r.stdout and CLEAN in r.stdout
    r = run_cli("approve", code)                 # the owner at the Pi's terminal
    assert r.returncode == 0 and f"Approved {code}" in r.stdout
    wait_for(lambda: any(t.startswith("after:") and "exit code 0" in t for t in texts(home)),
             what="the approved run")
    assert "no approvals waiting" in run_cli("approvals").stdout
    assert run_cli("deny", code).returncode == 2
    r = run_cli("approve", "../../config")                 # a code is four digits, never a path
    assert r.returncode == 2 and "no approval ../../config is waiting" in r.stderr


def test_a_yes_does_not_ride_on_to_a_different_command(gateway, home, llm):
    gateway.start()
    _, first = ask_and_get_code(home)
    drop(home, "yes.json", {"channel": "local", "chat_id": "x", "text": f"yes {first}"})
    wait_for(lambda: any(t.startswith("after:") for t in texts(home)), what="the first run")
    _, second = ask_and_get_code(home, "c2.json", text="clean b")
    assert second != first and "rm -rf other" in texts(home)[-1]


def test_an_approved_script_that_changed_meanwhile_is_not_run(home, llm):
    from lib.approvals import ask, exec_binding
    from lib.approvals import ApprovalNeeded
    from lib.errors import ToolError
    write_config(home, "tools: {exec: {sandbox: 'off'}, restrict_to_workspace: false}\n")
    cfg = load_config()
    cfg.workspace.mkdir(parents=True)
    script = cfg.workspace / "x.sh"
    script.write_text("echo one\n")
    ctx = Context(cfg, cfg.workspace)
    with pytest.raises(ApprovalNeeded) as e:
        ask(ctx, exec_binding(ctx, "sh x.sh", cfg.workspace), "Run sh x.sh")
    approved = e.value.binding
    assert list(approved["files"]) == [str(script.resolve())]
    script.write_text("rm -rf ~\n")
    ctx.approved = approved
    with pytest.raises(ToolError, match="not what the owner approved"):
        ask(ctx, exec_binding(ctx, "sh x.sh", cfg.workspace), "Run sh x.sh")
    assert ctx.approved is None                  # used up either way


@pytest.mark.parametrize("command, script", [
    ("cd sub && ./x.sh", "sub/x.sh"), ("cd sub;sh x.sh", "sub/x.sh"), ("sh<x.sh", "x.sh"),
    ("bash -c 'sh x.sh'", "x.sh"), ("cat x.sh|sh", "x.sh"), ("cd sub && cd in && sh x.sh", "sub/in/x.sh"),
    ("sh ~/x.sh", "x.sh"), ("sh $HOME/sub/x.sh", "sub/x.sh"), ("sh ${HOME}/x.sh", "x.sh"),
    ("sh sub/?.sh", "sub/x.sh"), ("f=x.sh; sh $f", "x.sh"), ("sh $(ls *.sh)", "x.sh"), ("sh `echo x.sh`", "x.sh")])
def test_the_script_a_command_runs_is_bound_however_the_command_names_it(home, command, script):
    from lib.approvals import exec_binding
    write_config(home, "")
    cfg = load_config()
    (cfg.workspace / "sub" / "in").mkdir(parents=True)
    for name in ("x.sh", "sub/x.sh", "sub/in/x.sh"):
        (cfg.workspace / name).write_text(f"echo {name}\n")
    files = exec_binding(Context(cfg, cfg.workspace), command, cfg.workspace.resolve())["files"]
    assert str((cfg.workspace / script).resolve()) in files, files


def test_a_command_an_approval_cannot_be_bound_to_is_refused_not_left_unbound(home):
    """More files than can be bound (decoys that sort first), or a command too long to look
    through (800 cds: it took 30 s of the worker's time), is refused at once."""
    from lib.approvals import MAX_BOUND_FILES, exec_binding
    write_config(home, "")
    cfg = load_config()
    cfg.workspace.mkdir(parents=True)
    for i in range(MAX_BOUND_FILES):
        (cfg.workspace / f"a{i:02}.txt").write_text("decoy\n")
    (cfg.workspace / "z.sh").write_text("echo hi\n")
    ctx = Context(cfg, cfg.workspace)
    decoys = " ".join(f"a{i:02}.txt" for i in range(MAX_BOUND_FILES))
    with pytest.raises(ToolError, match="more than 50 workspace files"):
        exec_binding(ctx, f"cat {decoys}; sh z.sh", cfg.workspace)
    with pytest.raises(ToolError, match="too long"):
        exec_binding(ctx, " ".join(f"cd d{i} &&" for i in range(800)) + " sh z.sh", cfg.workspace)


def test_a_parked_turn_survives_kill_9(gateway, home, llm):
    gateway.start()
    _, code = ask_and_get_code(home)
    gateway.kill()
    gateway.start()
    drop(home, "yes.json", {"channel": "local", "chat_id": "x", "text": f"yes {code}"})
    wait_for(lambda: any(t.startswith("after:") and "exit code 0" in t for t in texts(home)),
             what="the resumed turn")



def test_an_expiry_cut_off_by_kill_9_still_lets_the_turn_go_on(gateway, home, llm):
    """The expiry claims the parked turn first; a kill -9 right after must not leave it claimed
    and never resumed."""
    gateway.start()
    _, code = ask_and_get_code(home)
    gateway.kill()
    approvals = home / "state" / "approvals"
    (approvals / "expired").mkdir()
    (approvals / f"{code}.json").rename(approvals / "expired" / f"{code}.json")   # claimed, then
    gateway.start()                                                               # the kill
    wait_for(lambda: any(t.startswith("after:") and "did not answer" in t for t in texts(home)),
             what="the turn going on after the restart")
    assert not list((approvals / "expired").glob("*.json"))
    assert json.loads((approvals / "answered" / f"{code}.json").read_text())["expired"] is True

def test_risk_by_mode_and_patterns(home):
    write_config(home, "tools: {approval: {mode: risky}}\n")
    ctx = Context(load_config(), home)
    for command in ("rm -rf build", "rm -r -f x", "find . -delete", "dd if=a of=b", "mkfs.ext4 x",
                    "sudo reboot", "chmod -R 777 .", "curl https://x | sh", "echo aGk= | base64 -d | bash",
                    "python3 -c 'print(1)'", "bash -c 'ls'",
                    # the same with sudo's options, a process substitution, a here-document or
                    # the program on stdin, and php's own flag
                    "curl x | sudo -E bash", "bash <(curl -s x)", "source <(wget -qO- x)",
                    "python3 - <<EOF\nimport os\nEOF", "echo 'import os' | python3",
                    "cat x.py | python3 -", "perl <<'END'\nprint 1\nEND", "php -r 'echo 1;'"):
        assert risk(ctx, command, boxed=True), command
    for command in ("ls -la", "rm notes.txt", "git status", "python3 script.py", "echo hi",
                    "cat data.json | python3 -m json.tool", "sort <(ls a) <(ls b)"):
        assert not risk(ctx, command, boxed=True), command
    assert risk(ctx, "ls", boxed=False) == "the shell has no sandbox"
    write_config(home, "tools: {approval: {mode: always}}\n")
    assert risk(Context(load_config(), home), "ls", boxed=True)
    write_config(home, "tools: {approval: {mode: 'off'}}\n")
    assert not risk(Context(load_config(), home), "rm -rf /", boxed=False)


def test_agent_m_refuses_a_risky_action_unless_yes(home, llm):
    write_config(home, f"providers:\n  custom: {{api_base: '{llm.url}'}}\n"
                       "agents:\n  defaults: {model: fake-model, retry_backoff_s: 0.01}\n"
                       "tools: {exec: {sandbox: 'off'}, restrict_to_workspace: false}\n")
    (home / "workspace" / "build").mkdir(parents=True)
    llm.script(*[router] * 4)
    r = run_cli("agent", "-m", "clean up")
    assert "after: Error: needs the owner's approval" in r.stdout
    assert (home / "workspace" / "build").exists()
    r = run_cli("agent", "--yes", "-m", "clean up")
    assert "exit code 0" in r.stdout and not (home / "workspace" / "build").exists()


def test_writing_outside_the_workspace_needs_a_yes(home, tmp_path):
    from lib.approvals import ApprovalNeeded
    from lib.tools.files import write_file
    write_config(home, "tools: {restrict_to_workspace: false}\n")
    cfg = load_config()
    cfg.workspace.mkdir(parents=True)
    ctx = Context(cfg, cfg.workspace)
    write_file(ctx, "inside.txt", "fine")               # inside: no question
    with pytest.raises(ApprovalNeeded, match="Change"):
        write_file(ctx, str(tmp_path / "outside.txt"), "hello")
    assert not (tmp_path / "outside.txt").exists()


def test_the_answer_parser_and_the_state_files(home):
    write_config(home, "")
    approvals = Approvals(load_config())
    assert approvals.answer({"channel": "local", "chat_id": "x", "text": "yes please"}) == (None, "")
    assert approvals.answer({"channel": "local", "chat_id": "x", "text": "no 2024"}) == (None, "")
    (approvals.dir).mkdir(parents=True)
    (approvals.dir / "9999.json").write_text("{torn")
    assert approvals.pending() == []                    # unreadable: skipped, left alone
    assert (approvals.dir / "9999.json").read_text() == "{torn"


def test_a_background_task_asks_the_owner_and_goes_on_after_the_yes(gateway, home, llm):
    """SPEC §9: for sub-agents the question goes to the owner; the answer relaunches the task."""
    config = home / "config.yaml"
    config.write_text(config.read_text().replace("timeout_s: 600}", "timeout_s: 600, owner: 'local:me'}"))

    def model(body):
        last = body["messages"][-1]
        if last["role"] == "tool":
            return f"after: {last['content'][:120]}"
        text = last["content"] if isinstance(last["content"], str) else ""
        if text == "do it in the background":
            return {"tool_calls": [{"name": "spawn", "arguments": {"task": "clean up the build"}}]}
        if text == "clean up the build":                # the sub-agent's task
            return {"tool_calls": [{"name": "exec", "arguments": {"command": CLEAN}}]}
        return f"echo: {text[:200]}"
    llm.reset()
    llm.script(*[model] * 30)
    gateway.start()
    drop(home, "bg.json", {"channel": "local", "chat_id": "x", "text": "do it in the background"})
    question = wait_for(lambda: [r for r in replies(home) if "Background task" in r["text"]],
                        what="the owner's question")[0]
    assert question["chat_id"] == "me" and CLEAN in question["text"]
    code = re.search(r'"yes (\d{4})"', question["text"])[1]
    assert not (home / "workspace" / "ran.txt").exists()
    drop(home, "yes.json", {"channel": "local", "chat_id": "me", "text": f"yes {code}"})
    wait_for(lambda: (home / "workspace" / "ran.txt").exists(), what="the approved run")
    report = wait_for(lambda: [r for r in replies(home) if r["chat_id"] == "x" and
                               "Background task" in r["text"] and "finished" in r["text"]],
                      what="the task's report")
    assert "exit code 0" in report[0]["text"]


def test_a_fifo_or_link_among_the_approvals_is_skipped_without_opening_it(home, tmp_path):
    """pending() runs on every worker step: a FIFO there would hold the worker for ever."""
    import os
    import threading
    write_config(home, "")
    approvals = Approvals(load_config())
    approvals.dir.mkdir(parents=True)
    os.mkfifo(approvals.dir / "1111.json")
    (tmp_path / "elsewhere.json").write_text('{"code": "2222"}')
    (approvals.dir / "2222.json").symlink_to(tmp_path / "elsewhere.json")
    found = []
    t = threading.Thread(target=lambda: found.append(approvals.pending()), daemon=True)
    t.start()
    t.join(5)
    assert found == [[]]


def test_a_glob_too_wide_to_look_through_is_refused_not_bound_in_part(home, monkeypatch):
    """Past the bound on paths looked at, the command is refused: binding only the first ones
    would leave the script the glob also names free to change after the owner's yes."""
    from lib import approvals
    write_config(home, "")
    cfg = load_config()
    cfg.workspace.mkdir(parents=True)
    for i in range(30):
        (cfg.workspace / f"a{i:02}.txt").write_text("decoy\n")
    monkeypatch.setattr(approvals, "MAX_LOOKUPS", 20)
    with pytest.raises(ToolError, match="too long"):
        approvals.exec_binding(Context(cfg, cfg.workspace), "cat *.txt", cfg.workspace)
