"""The exec tool with real subprocesses in a temp workspace: output, timeout, deny patterns and
the workspace check. Destructive commands are only ever refused, never run (see `deny`)."""
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from lib.config import load_config
from lib.tools import Context, default_registry
from lib.tools.shell import MAX_OUTPUT
from tests.conftest import write_config


def make_ctx(home, yaml=""):
    write_config(home, yaml)
    cfg = load_config()
    cfg.workspace.mkdir(parents=True, exist_ok=True)
    return Context(cfg, cfg.workspace)


def run(ctx, command, **args):
    return default_registry().call("exec", {"command": command, **args}, ctx)


@pytest.fixture
def ctx(home):
    return make_ctx(home, "tools: {restrict_to_workspace: false}\n")


@pytest.fixture
def strict(home):
    return make_ctx(home, "tools: {restrict_to_workspace: true}\n")


@pytest.fixture
def outside(tmp_path):
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret.txt").write_text("top secret\n")
    return d


def refused(out):
    return out.startswith("Error:") and ("refused" in out or "outside the workspace" in out)


# --- running ---

def test_stdout_stderr_and_exit_code(ctx):
    out = run(ctx, "echo to-out; echo to-err >&2; exit 3")
    assert out == "to-out\n\nSTDERR:\nto-err\n[exit code 3]"


def test_success_and_no_output(ctx):
    assert run(ctx, "true") == "[exit code 0]"


def test_runs_in_the_workspace_by_default(ctx):
    out = run(ctx, "pwd -P; echo hi > made.txt")
    assert Path(out.splitlines()[0]) == ctx.workspace.resolve()
    assert (ctx.workspace / "made.txt").read_text() == "hi\n"


def test_working_dir_is_honoured(ctx):
    (ctx.workspace / "sub" / "deeper").mkdir(parents=True)
    assert Path(run(ctx, "pwd -P", working_dir="sub/deeper").splitlines()[0]) == \
        (ctx.workspace / "sub" / "deeper").resolve()
    assert Path(run(ctx, "pwd -P", working_dir=str(ctx.workspace / "sub")).splitlines()[0]) == \
        (ctx.workspace / "sub").resolve()


def test_missing_working_dir(ctx):
    out = run(ctx, "pwd", working_dir="nowhere")
    assert out.startswith("Error:") and "nowhere" in out


def test_stdin_is_closed(ctx):
    assert run(ctx, "cat; echo done") == "done\n[exit code 0]"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"     # a zombie is dead
    except FileNotFoundError:
        return False


def test_timeout_kills_the_process_group(home):
    ctx = make_ctx(home, "tools: {exec: {timeout: 1}}\n")
    out = run(ctx, "echo started; sleep 30 & echo $! > child.pid; wait")
    assert out.startswith("started\n")
    assert "killed after the 1s timeout" in out and "tools.exec.timeout" in out
    child = int((ctx.workspace / "child.pid").read_text())
    for _ in range(50):          # reaping by init may lag a moment behind the kill
        if not _alive(child):
            break
        time.sleep(0.02)
    assert not _alive(child)


def test_timeout_with_a_child_that_leaves_the_group(home):
    """A daemon that calls setsid survives the kill and keeps our pipes open; exec must still come
    back (while the daemon lives) with the output it has. The timer turns a hang into a failure."""
    ctx = make_ctx(home, "tools: {exec: {timeout: 1}}\n")
    pid_file = ctx.workspace / "daemon.pid"
    timer = threading.Timer(10, lambda: os.kill(int(pid_file.read_text()), signal.SIGKILL))
    timer.start()
    try:
        out = run(ctx, "echo started; setsid sh -c 'echo $$ > daemon.pid; exec sleep 30' & sleep 30")
        assert _alive(int(pid_file.read_text())), "exec waited for the daemon"
        assert out.startswith("started\n") and "killed after the 1s timeout" in out
    finally:
        timer.cancel()
        os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_background_job_with_redirected_output_outlives_the_call(ctx):
    """What TOOLS.md tells the model to do with long jobs: exec returns at once, the job runs on."""
    out = run(ctx, "nohup sleep 30 > job.log 2>&1 & echo $! > job.pid; echo started")
    pid = int((ctx.workspace / "job.pid").read_text())
    try:
        assert out == "started\n[exit code 0]"
        assert _alive(pid)
    finally:
        os.kill(pid, signal.SIGKILL)


def test_long_output_keeps_head_and_tail(ctx):
    out = run(ctx, "seq 1 20000")
    lines = out.splitlines()
    assert lines[:3] == ["1", "2", "3"]
    assert lines[-2:] == ["20000", "[exit code 0]"]
    assert re.search(r"\[\.\.\. \d+ characters cut \.\.\.\]", out)
    assert len(out) < MAX_OUTPUT + 100


# --- deny patterns ---

DANGEROUS = ["rm -rf /", "rm -rf ~", "rm -rf ~/", "rm -fr /*", "rm -rf $HOME", "sudo rm -rf /",
             "mkfs.ext4 /dev/sda1", "mkfs -t ext4 /dev/sdb", "dd if=/dev/zero of=/dev/sda bs=1M",
             "echo x > /dev/sda", "shutdown -h now", "sudo shutdown -r now", "reboot",
             "cd /tmp && reboot", "poweroff", "systemctl poweroff", "/sbin/halt", "init 0",
             ":(){ :|:& };:", "chmod -R 777 /", "format c:", "diskpart"]


@pytest.fixture
def deny(ctx, tmp_path, monkeypatch):
    """Run a command that must be refused. Safety belts, since these tests run as whoever runs
    pytest: the command must match a configured pattern before it is handed to exec at all,
    and PATH is empty, so that nothing but shell builtins could run even if exec let it through."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))

    def deny(command):
        assert any(re.search(p, command, re.I) for p in ctx.config.tools.exec.deny_patterns), command
        return run(ctx, command)
    return deny


@pytest.mark.parametrize("command", DANGEROUS)
def test_default_deny_patterns_refuse(deny, command):
    out = deny(command)
    assert out.startswith("Error: refused") and "deny pattern" in out


@pytest.mark.parametrize("command", [
    "rm -rf build/", "rm -rf ./build", "echo reboot-notes > notes.txt", "cat shutdown.log",
    "echo 'graceful shutdown done'", "echo halting", "git log --format=%h main",
    "echo -vf format=yuv420p -c:v libx264", "echo dd is a tool", "echo init 1",
])
def test_ordinary_commands_are_not_denied(ctx, command):
    (ctx.workspace / "build").mkdir()
    (ctx.workspace / "shutdown.log").write_text("")
    out = run(ctx, command)
    assert not out.startswith("Error"), out
    assert out.endswith("]")


def test_rm_rf_of_a_workspace_folder_runs(ctx):
    (ctx.workspace / "build" / "obj").mkdir(parents=True)
    assert run(ctx, "rm -rf build/") == "[exit code 0]"
    assert not (ctx.workspace / "build").exists()


def test_custom_deny_patterns_replace_the_defaults(home):
    ctx = make_ctx(home, "tools:\n  exec:\n    deny_patterns: ['\\bgit\\s+push\\b', 'curl']\n")
    assert run(ctx, "git push origin main").startswith("Error: refused")
    assert run(ctx, "CURL http://x").startswith("Error: refused")        # case does not matter
    assert run(ctx, "echo reboot") == "reboot\n[exit code 0]"            # defaults replaced


# --- the workspace check (tools.restrict_to_workspace) ---

@pytest.mark.parametrize("command", [
    "cat /etc/passwd", "cat</etc/passwd", "ls -la /", "cd /tmp && ls", "python3 -c \"open('/etc/x')\"",
    "cat ../secret.txt", "cd .. && ls", "ls ..", "cat sub/../../x",
    "echo $HOME", "ls ${{HOME}}/", "cat ~/.bashrc", "ls ~",
    "echo hi > {outside}/new.txt", "cat {ws}2/secret.txt",
])
def test_paths_outside_are_refused(strict, outside, command):
    command = command.format(outside=outside, ws=strict.workspace)
    out = run(strict, command)
    assert refused(out), out
    assert not (outside / "new.txt").exists()


@pytest.mark.parametrize("command", [
    "echo hi > /dev/null", "ls nothing 2>/dev/null; echo ok", "echo hi >/dev/stderr",
    "echo https://example.com/a/b", "echo a/b ./c", "cat {ws}/mine.txt",
    "git log main..feature 2>&1 | head -1", "echo x=1",
])
def test_harmless_paths_are_allowed(strict, command):
    (strict.workspace / "mine.txt").write_text("mine\n")
    out = run(strict, command.format(ws=strict.workspace))
    assert not out.startswith("Error"), out


def test_url_is_not_a_path(strict):
    assert run(strict, "echo https://example.com/a/b") == "https://example.com/a/b\n[exit code 0]"


def test_working_dir_outside_is_refused(strict, outside):
    for wd in (str(outside), "..", "~", "$HOME"):
        assert refused(run(strict, "pwd", working_dir=wd)), wd


def test_same_commands_run_when_not_restricted(ctx, outside, monkeypatch):
    monkeypatch.setenv("HOME", str(outside))
    assert run(ctx, f"cat {outside}/secret.txt") == "top secret\n[exit code 0]"
    assert run(ctx, "cat ../../outside/secret.txt") == "top secret\n[exit code 0]"
    assert run(ctx, "cat $HOME/secret.txt") == "top secret\n[exit code 0]"
    assert run(ctx, "cat secret.txt", working_dir=str(outside)) == "top secret\n[exit code 0]"
