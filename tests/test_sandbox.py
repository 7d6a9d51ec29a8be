"""exec inside bubblewrap (SPEC §8), against the real bwrap: the escapes of issue 8 item 4 fail,
the workspace stays writable, /tmp is private, network: false cuts the network, expose opens
folders, children die with the command; and what happens when bubblewrap is missing."""
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from lib import sandbox
from lib.config import load_config
from lib.tools import Context, default_registry
from tests.conftest import write_config

SECRET = "sk-or-v1-FAKE-SECRET-8d1f"


def _why_not() -> str:
    return "bwrap is not installed" if not shutil.which("bwrap") else sandbox.problem()


needs_bwrap = pytest.mark.skipif(bool(_why_not()), reason=f"bubblewrap unusable: {_why_not()}")


def survivors(marker: str) -> list:
    """Processes whose command line holds `marker`, after giving the kernel a moment to reap."""
    for _ in range(50):
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace") and \
                        (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(proc.name))
            except OSError:
                pass
        if not found:
            return []
        time.sleep(0.02)
    return found


def make_ctx(home, restrict=True, sandbox="bwrap", **exec_keys):
    """A config.yaml holding a provider key the commands must never see."""
    write_config(home, yaml.safe_dump({
        "providers": {"openrouter": {"api_key": SECRET}},
        "tools": {"restrict_to_workspace": restrict, "exec": {"sandbox": sandbox, **exec_keys}}}))
    cfg = load_config()
    cfg.workspace.mkdir(parents=True, exist_ok=True)
    return Context(cfg, cfg.workspace, ask=lambda question: True)        # the owner says yes (SPEC §9 is tested apart)


def call(ctx, tool, **args):
    return default_registry().call(tool, args, ctx)


def run(ctx, command, **args):
    out = call(ctx, "exec", command=command, **args)
    assert SECRET not in out
    return out


@pytest.fixture
def boxed(home):
    return make_ctx(home)


@pytest.fixture
def etc_file():
    """A name in /etc a command tries to write; removed afterwards should the sandbox fail."""
    path = Path(f"/etc/nanoclaw-test-{uuid.uuid4().hex}")
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture
def outside(tmp_path):
    d = tmp_path / "outside"
    d.mkdir()
    (d / "note.txt").write_text("outside note\n")
    return d


# --- the escapes of issue 8 item 4 ---

@needs_bwrap
@pytest.mark.parametrize("command", [
    "cd ..; cat config.yaml", "cd ..&&ls -a", "cat ../config.yaml; ls -a ..",
    "cat {home}/config.yaml; ls -a {home}", "grep -rs sk-or {home} ~ /root /home",
    "ls -a ~root $HOME/..",
])
def test_the_home_and_its_config_are_not_visible(boxed, home, command):
    (home / "inbox").mkdir()
    out = run(boxed, command.format(home=home))     # run() checks that the key never shows
    assert not out.startswith("Error") and "inbox" not in out, out


@needs_bwrap
def test_a_symlink_out_cannot_write_or_see_the_home(boxed, home, etc_file):
    out = run(boxed, f"""ln -s "$(printf '\\057etc')" d; cat d/hostname >/dev/null && echo read;
                         echo x > d/{etc_file.name}; ln -s {home} h; ls -a h; cat h/config.yaml""")
    assert "read\n" in out and "Read-only file system" in out and "No such file" in out
    assert not etc_file.exists()


@needs_bwrap
def test_python_may_read_the_system_but_not_write_it(boxed, home, etc_file):
    config = (home / "config.yaml").read_text()
    out = run(boxed, "python3 -c \"print(open(chr(47)+'etc/hostname').read() != '')\"")
    assert out == "True\n[exit code 0]"
    assert "Read-only file system" in run(boxed, f"python3 -c \"open(chr(47)+'{str(etc_file)[1:]}', 'w')\"")
    run(boxed, f"""python3 -c "open('{home}/config.yaml', 'w').write('allow_from: [\\'*\\']')" """)
    assert (home / "config.yaml").read_text() == config and not etc_file.exists()


@needs_bwrap
def test_a_script_written_with_write_file_stays_inside(boxed, home, outside):
    call(boxed, "write_file", path="job.sh", content=(
        f"cat {home}/config.yaml ../config.yaml\n"
        f"echo pwned > {outside}/pwned.txt\necho pwned > {home}/pwned.txt\n"
        "echo mine > made-here.txt\n"))
    out = run(boxed, "sh job.sh; cat made-here.txt")
    assert out.startswith("mine\n")
    assert not (outside / "pwned.txt").exists() and not (home / "pwned.txt").exists()
    assert (boxed.workspace / "made-here.txt").read_text() == "mine\n"


@needs_bwrap
def test_the_workspace_is_writable_at_its_real_path(home, tmp_path):
    real = tmp_path / "real-ws"
    real.mkdir()
    (tmp_path / "link-ws").symlink_to(real)
    ctx = make_ctx(home)
    ctx = Context(ctx.config, tmp_path / "link-ws")
    assert run(ctx, "pwd; echo $HOME; echo hi > f; mkdir -p a/b") == \
        f"{real}\n{real}\n[exit code 0]"
    assert (real / "f").read_text() == "hi\n" and (real / "a" / "b").is_dir()


@needs_bwrap
def test_tmp_is_private(boxed):
    name = f"/tmp/nanoclaw-sandbox-{uuid.uuid4().hex}"
    assert run(boxed, f"echo x > {name}; cat {name}") == "x\n[exit code 0]"
    assert not Path(name).exists()
    assert "No such file" in run(boxed, f"cat {name}")


@needs_bwrap
def test_restrict_off_still_sandboxes(home, outside, etc_file):
    ctx = make_ctx(home, restrict=False)
    out = run(ctx, f"cat {outside}/note.txt; cat {home}/config.yaml; echo x > {etc_file}")
    assert "outside note" not in out and "Read-only file system" in out
    assert not etc_file.exists()


# --- network, expose ---

@pytest.fixture
def listener():
    """A TCP server on 127.0.0.1 that counts the connections it accepts."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.close()
    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], accepted
    server.close()


CONNECT = ("python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 2); "
           "print('connected')\"")


@needs_bwrap
@pytest.mark.parametrize("network", [True, False])
def test_network_false_cuts_the_network(home, listener, network):
    port, accepted = listener
    out = run(make_ctx(home, network=network), CONNECT.format(port=port))
    assert ("connected\n" in out) == network, out
    assert bool(accepted) == network


@needs_bwrap
def test_expose_read_only_and_read_write(home, outside, tmp_path, caplog):
    (tmp_path / "rw").mkdir()
    ctx = make_ctx(home, expose=[str(outside), f"{tmp_path / 'rw'}:rw", str(tmp_path / "missing")])
    with caplog.at_level(logging.WARNING, logger="lib.sandbox"):
        out = run(ctx, f"cat {outside}/note.txt; echo x > {outside}/new; echo y > {tmp_path}/rw/new")
    assert out.startswith("outside note\n") and "Read-only file system" in out
    assert not (outside / "new").exists() and (tmp_path / "rw" / "new").read_text() == "y\n"
    assert "missing does not exist; skipped" in caplog.text


@needs_bwrap
def test_expose_expands_the_user_home(home, tmp_path, monkeypatch):
    user = tmp_path / "user"
    (user / ".config" / "gh").mkdir(parents=True)
    (user / ".config" / "gh" / "hosts.yml").write_text("token: t\n")
    (user / "private.txt").write_text("private\n")
    monkeypatch.setenv("HOME", str(user))
    ctx = make_ctx(home, expose=["~/.config/gh"])
    out = run(ctx, f"cat {user}/.config/gh/hosts.yml; cat {user}/private.txt")
    assert out.startswith("token: t\n") and "private\n" not in out


@needs_bwrap
def test_a_device_exposed_read_write_can_be_opened(home):
    device = next((d for d in ("/dev/fuse", "/dev/kvm", "/dev/loop-control")
                   if os.access(d, os.R_OK | os.W_OK)), None)
    if device is None:
        pytest.skip("no device to open here")
    command = f"[ -c {device} ] && exec 3<>{device} && echo opened"
    assert run(make_ctx(home), command) == "[exit code 1]"     # not in the sandbox's /dev
    assert run(make_ctx(home, expose=[f"{device}:rw"]), command) == "opened\n[exit code 0]"


# --- everything a command starts dies with it ---

@needs_bwrap
@pytest.mark.parametrize("end", ["exit 0", "sleep 30"])
def test_setsid_and_nohup_children_die_with_the_command(home, end):
    marker = f"1000.{os.getpid()}{uuid.uuid4().int % 10**6}"
    ctx = make_ctx(home, timeout=1)
    out = run(ctx, f"setsid sleep {marker}1 & nohup sleep {marker}2 >/dev/null 2>&1 & "
                   f"setsid sh -c 'sleep {marker}3 & exec sleep {marker}4' >/dev/null 2>&1 & "
                   f"echo started; {end}")
    assert out.startswith("started\n")
    assert not survivors(marker)


# --- without a working bubblewrap ---

@pytest.fixture
def no_bwrap(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox, "BWRAP", str(tmp_path / "no" / "bwrap"))
    monkeypatch.setattr(sandbox, "_problems", {})       # as in a fresh process


def test_sandbox_bwrap_without_bubblewrap_is_one_clear_error(home, no_bwrap):
    for restrict in (True, False):
        out = run(make_ctx(home, restrict=restrict), "echo hi")
        assert out.startswith("Error: tools.exec.sandbox is bwrap, but ") and "\n" not in out
        assert "sudo apt install bubblewrap" in out and "tools.exec.sandbox: off" in out


def test_restricted_without_a_sandbox_refuses(home, no_bwrap):
    out = run(make_ctx(home, sandbox="auto"), "echo hi")
    assert out.startswith("Error: refused: exec has no sandbox") and "\n" not in out
    assert "sudo apt install bubblewrap" in out and "tools.exec.sandbox: off" in out


def test_auto_without_bubblewrap_warns_once_and_runs_when_not_restricted(home, no_bwrap, caplog):
    ctx = make_ctx(home, restrict=False, sandbox="auto")
    with caplog.at_level(logging.WARNING, logger="lib.sandbox"):
        assert run(ctx, "echo hi") == "hi\n[exit code 0]"
        assert run(ctx, "echo again") == "again\n[exit code 0]"
    assert caplog.text.count("exec has no sandbox") == 1


def test_sandbox_off_and_restrict_off_runs_as_before(home, outside):
    ctx = make_ctx(home, restrict=False, sandbox="off")
    assert run(ctx, f"cat {outside}/note.txt") == "outside note\n[exit code 0]"


def test_a_bwrap_that_fails_is_reported_with_its_message(home, tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "bwrap"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sandbox, "BWRAP", str(fake))
    out = run(make_ctx(home), "echo hi")
    assert out.startswith("Error: tools.exec.sandbox is bwrap, but ")
    assert "does not work here (bwrap: setting up uid map: Permission denied)" in out


def test_sandbox_off_may_be_written_unquoted(home):
    """YAML reads a bare `off` as false; the fix that the errors above name must load."""
    write_config(home, "tools:\n  exec: {sandbox: off}\n")
    assert load_config().tools.exec.sandbox == "off"


def test_a_config_kept_outside_the_homes_is_hidden_too(home, monkeypatch):
    """`--config /srv/…/config.yaml`: that file holds every key; inside it reads empty (review)."""
    import shutil
    folder = Path(f"/var/tmp/nanoclaw-test-{uuid.uuid4().hex}")     # not under /tmp, not a home
    folder.mkdir()
    try:
        config = folder / "config.yaml"
        config.write_text(yaml.safe_dump({"providers": {"openrouter": {"api_key": SECRET}},
                                          "tools": {"exec": {"sandbox": "bwrap"}}}))
        monkeypatch.setenv("NANOCLAW_CONFIG", str(config))
        cfg = load_config()
        cfg.workspace.mkdir(parents=True, exist_ok=True)
        out = call(Context(cfg, cfg.workspace), "exec", command=f"cat {config}; ls {folder}")
        assert SECRET not in out and "config.yaml" in out, out
    finally:
        shutil.rmtree(folder)


# --- memory (SPEC §13): read-only to commands, hidden from group chats ---

@needs_bwrap
def test_commands_can_read_memory_but_not_rewrite_it(boxed):
    memory = boxed.workspace / "memory"
    memory.mkdir()
    (memory / "MEMORY.md").write_text("- a fact\n")
    (memory / "HISTORY.md").write_text("[2026-01-01] a summary\n\n")
    out = run(boxed, "cat memory/MEMORY.md; sed -i /fact/d memory/MEMORY.md; rm -f memory/MEMORY.md;"
                     " (echo x > memory/new.md); (: > memory/HISTORY.md); echo done")
    assert out.startswith("- a fact\n") and "done" in out and "Read-only file system" in out
    assert (memory / "MEMORY.md").read_text() == "- a fact\n"
    assert (memory / "HISTORY.md").read_text() == "[2026-01-01] a summary\n\n"
    assert not (memory / "new.md").exists()
    assert run(boxed, "echo kept > notes.txt; cat notes.txt") == "kept\n[exit code 0]"


@needs_bwrap
def test_a_group_chats_commands_do_not_see_memory(boxed):
    memory = boxed.workspace / "memory"
    memory.mkdir()
    (memory / "MEMORY.md").write_text("- the owner's PIN hint\n")
    group = Context(boxed.config, boxed.workspace, ask=boxed.ask, memory=False)
    out = run(group, "cat memory/MEMORY.md; ls -a memory; grep -rs PIN . /proc/self/root/$PWD")
    assert "PIN" not in out, out
    assert "PIN" in run(boxed, "cat memory/MEMORY.md")


@needs_bwrap
def test_an_approved_command_from_a_group_still_does_not_see_memory(home):
    """The yes comes later, from the owner, through approvals.run: the call it runs keeps the
    privacy of the turn that asked (a cron job or a sub-agent in a group has no is_group)."""
    from lib.approvals import ApprovalNeeded, Approvals, run
    from tests.conftest import make_agent
    from tests.fakes.scripted import ScriptedProvider
    write_config(home, yaml.safe_dump({"tools": {"exec": {"sandbox": "bwrap"},
                                                 "approval": {"mode": "always"}}}))
    cfg = load_config()
    cfg.workspace.mkdir(parents=True, exist_ok=True)
    boxed = Context(cfg, cfg.workspace)
    (boxed.workspace / "memory").mkdir()
    (boxed.workspace / "memory" / "MEMORY.md").write_text("- the owner's PIN hint\n")
    group = Context(boxed.config, boxed.workspace, "telegram", "-100", memory=False)
    with pytest.raises(ApprovalNeeded) as need:
        call(group, "exec", command="cat memory/MEMORY.md")
    need.value.call = {"id": "c1", "name": "exec",
                       "arguments": '{"command": "cat memory/MEMORY.md"}'}
    msg = {"id": "m", "channel": "system", "chat_id": "cron:1", "text": "x", "metadata": {}}
    record = Approvals(boxed.config).park(need.value, msg, ("telegram", "42"))
    out = run(make_agent(boxed.config, ScriptedProvider()), record, "telegram", "-100")
    assert "PIN" not in out and "exit code 1" in out, out


@needs_bwrap
@pytest.mark.parametrize("shape", ["missing", "link"])
def test_memory_is_guarded_when_it_is_missing_or_a_link(boxed, tmp_path, shape):
    """A workspace without memory/ (a group command would make one, and plant a MEMORY.md the
    owner's prompt then carries), or with memory/ a link elsewhere: guarded all the same."""
    memory = boxed.workspace / "memory"
    if shape == "link":
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "MEMORY.md").write_text("- the owner's PIN hint\n")
        memory.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    group = Context(boxed.config, boxed.workspace, ask=boxed.ask, memory=False)
    out = run(group, "cat memory/MEMORY.md; mkdir -p memory; echo planted > memory/MEMORY.md")
    assert "PIN" not in out
    out = run(boxed, "cat memory/MEMORY.md; echo rewritten > memory/MEMORY.md")
    assert "planted" not in out and "Read-only file system" in out, out
    real = memory.resolve() / "MEMORY.md"
    assert (real.read_text() if real.exists() else "") in ("", "- the owner's PIN hint\n")
