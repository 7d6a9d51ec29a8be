import os
import stat
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_cli, write_config


def fake_config(home, llm, extra=""):
    write_config(home, f"providers:\n  custom: {{api_base: '{llm.url}'}}\n"
                       f"agents:\n  defaults: {{model: fake-model, retry_backoff_s: 0.01}}\n{extra}")


def test_onboard_creates_config_and_workspace_and_never_overwrites(home):
    r = run_cli("onboard")
    assert r.returncode == 0, r.stderr
    cfg = home / "config.yaml"
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    ws = home / "workspace"
    for name in ("AGENTS.md", "SOUL.md", "USER.md", "TOOLS.md", "HEARTBEAT.md", "memory/MEMORY.md"):
        assert (ws / name).is_file(), name
    assert (ws / "skills").is_dir() and not list((ws / "skills").iterdir())   # bundled stay in the repo
    cfg.write_text("agents: {defaults: {model: mine}}\n")
    (ws / "SOUL.md").write_text("my soul")
    (ws / "USER.md").unlink()
    r = run_cli("onboard")
    assert r.returncode == 0 and "created" in r.stdout and "USER.md" in r.stdout
    # the owner's config is kept as written; only the web page's token is added (SPEC §11)
    kept, added = cfg.read_text().split("\n", 1)
    assert kept == "agents: {defaults: {model: mine}}" and added.startswith("gateway:\n  token: ")
    assert (ws / "SOUL.md").read_text() == "my soul" and (ws / "USER.md").exists()
    r = run_cli("onboard")
    assert "token" not in r.stdout and cfg.read_text() == kept + "\n" + added


def test_onboarded_config_is_the_example_and_loads(home):
    run_cli("onboard")
    r = run_cli("status")
    assert r.returncode == 0 and "anthropic/claude-opus-4-5" in r.stdout


def test_agent_m_prints_the_reply_alone_on_stdout(home, llm):
    fake_config(home, llm)
    llm.script("**Four.**")
    r = run_cli("agent", "-m", "2+2?")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "**Four.**\n" and r.stderr == ""


def test_no_markdown_gives_plain_text(home, llm):
    fake_config(home, llm)
    llm.script("# Title\n**bold** and `code`")
    r = run_cli("agent", "--no-markdown", "-m", "x")
    assert r.stdout == "Title\nbold and code\n"


def test_session_option_names_the_session_file(home, llm):
    fake_config(home, llm)
    run_cli("agent", "-m", "hi", "-s", "telegram:77")
    assert (home / "sessions" / "telegram_77.jsonl").exists()


def test_logs_go_to_stderr_only_with_logs(home, llm):
    fake_config(home, llm)
    llm.script({"tool_calls": [{"name": "list_dir", "arguments": {"path": "."}}]}, "done")
    r = run_cli("agent", "--logs", "-m", "x")
    assert r.stdout == "done\n" and "tool list_dir" in r.stderr


def test_interactive_chat_until_an_exit_word(home, llm):
    fake_config(home, llm)
    for word in ("exit", "quit", "/exit", "/quit", ":q"):
        llm.script("pong")
        r = run_cli("agent", input=f"ping\n{word}\nnot sent\n")
        assert r.returncode == 0 and "pong" in r.stdout and "not sent" not in str(llm.chat_requests)
        llm.reset()


def test_interactive_chat_ends_on_ctrl_d_and_keeps_going_after_a_model_error(home, llm):
    fake_config(home, llm)
    llm.script({"status": 401}, "second answer")
    r = run_cli("agent", input="first\nsecond\n")
    assert r.returncode == 0 and "second answer" in r.stdout
    assert "refused the API key" in r.stderr and "Traceback" not in r.stderr


def test_no_colour_when_not_a_terminal(home, llm):
    fake_config(home, llm)
    r = run_cli("status")
    assert "\x1b[" not in r.stdout


def test_status_lists_providers_and_channels(home, llm):
    fake_config(home, llm, "channels:\n  telegram: {enabled: true, token: t, allow_from: [123]}\n")
    r = run_cli("status", env={"GROQ_API_KEY": "g"})
    assert r.returncode == 0
    assert f"custom → {llm.url}" in r.stdout
    assert "groq       key set" in r.stdout and "openai     not set" in r.stdout
    assert "telegram   enabled   allow_from: 123" in r.stdout


def test_status_warns_when_other_users_can_read_the_config(home, llm):
    """A config.json from the original project is often 0644: its keys readable by all."""
    fake_config(home, llm, "")
    config = home / "config.yaml"
    config.chmod(0o600)                 # as onboard writes it
    assert "other users can read it" not in run_cli("status").stdout
    config.chmod(0o644)
    r = run_cli("status")
    assert r.returncode == 0 and f"(mode 644; its keys are secrets): chmod 600 {config}" in r.stdout


def test_status_says_when_email_senders_are_forgeable(home, llm):
    email = ("channels:\n  email: {enabled: true, consent_granted: true, imap_host: h, "
             "imap_username: u, imap_password: p, smtp_host: h, allow_from: [Me@Example.com]")
    fake_config(home, llm, email + "}\n")
    r = run_cli("status")
    assert r.returncode == 0 and "email      enabled   allow_from: me@example.com" in r.stdout
    assert "anyone who knows an allowed address can write as it" in r.stdout
    assert "channels.email.authserv_id" in r.stdout
    fake_config(home, llm, email + ", authserv_id: mx.example.com}\n")
    r = run_cli("status")
    assert r.returncode == 0 and "anyone who knows" not in r.stdout


def test_missing_key_is_one_line_and_exit_2(home):
    r = run_cli("agent", "-m", "hi")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "ANTHROPIC_API_KEY" in r.stderr


def test_model_failure_is_one_sentence_and_exit_1(home, llm):
    fake_config(home, llm)
    llm.script(*[{"status": 500}] * 4)
    r = run_cli("agent", "-m", "hi")
    assert r.returncode == 1 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "not answering" in r.stderr     # retries only with --logs


def test_retries_are_shown_with_logs_only(home, llm):
    """Issue 15: the README says --logs shows retries; they were printed without it too."""
    fake_config(home, llm)
    llm.script({"status": 503}, "fine")
    r = run_cli("agent", "-m", "hi")
    assert r.stdout == "fine\n" and r.stderr == ""
    llm.script({"status": 503}, "fine")
    r = run_cli("agent", "--logs", "-m", "hi")
    assert r.stdout == "fine\n" and "HTTP 503; retrying" in r.stderr


def test_a_failed_turn_is_not_sent_again_with_the_next_one(home, llm):
    """Issue 15: the line of a turn that failed stayed in the session, so asking again sent the
    question twice."""
    fake_config(home, llm)
    llm.script(*[{"status": 500}] * 4)
    assert run_cli("agent", "-m", "are you there?").returncode == 1
    llm.script("yes")
    assert run_cli("agent", "-m", "are you there?").stdout == "yes\n"
    sent = [m["content"] for m in llm.chat_requests[-1]["messages"] if m["role"] == "user"]
    assert sent == ["are you there?"]


def test_a_missing_package_is_one_line_naming_make_install(home, llm):
    """Issue 15: run with a Python that lacks the requirements (here: no site-packages at all),
    a turn was a ModuleNotFoundError traceback."""
    fake_config(home, llm)
    r = subprocess.run([sys.executable, "-S", str(ROOT / "nanoclaw.py"), "agent", "-m", "hi"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert "is not installed" in r.stderr and "make install" in r.stderr
    assert ".venv/bin/python nanoclaw.py" in r.stderr
    assert not (home / "sessions").exists() or not list((home / "sessions").iterdir())


def test_onboard_names_the_command_that_works_and_knows_a_key_is_set(home, tmp_path):
    """Issue 15: onboard suggested `python nanoclaw.py`, which outside the venv fails, and asked
    for an API key when one was set."""
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("needs the checkout's .venv (make install)")
    r = run_cli("onboard")
    assert "put an API key in" in r.stdout
    assert ".venv/bin/python nanoclaw.py agent -m 'Hello'" in r.stdout     # run from the checkout
    assert "  python nanoclaw.py" not in r.stdout
    r = run_cli("onboard", env={"OPENROUTER_API_KEY": "sk-or-v1-x"})
    assert "API key" not in r.stdout and "The provider is OpenRouter" in r.stdout
    elsewhere = subprocess.run([sys.executable, str(ROOT / "nanoclaw.py"), "onboard"],
                               capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert f"{ROOT}/.venv/bin/python {ROOT}/nanoclaw.py agent" in elsewhere.stdout


def test_cron_add_warns_when_the_chat_app_to_deliver_to_is_off(home):
    args = ("cron", "add", "--name", "n", "--message", "m", "--every", "60", "--deliver", "--to", "1")
    r = run_cli(*args, "--channel", "telegram")
    assert r.returncode == 0 and "added job" in r.stdout
    assert "channel telegram is not enabled (channels.telegram.enabled is false)" in r.stderr
    write_config(home, "channels: {telegram: {enabled: true, token: t}}\n")
    assert run_cli(*args, "--channel", "telegram").stderr == ""
    assert run_cli(*args, "--channel", "local").stderr == ""


def test_usage_errors_exit_2_with_one_line(home):
    """SPEC §6: exit 2, always with one clear line on stderr (argparse's usage block is two)."""
    for args in (["frobnicate"], ["agent", "--bogus"], [], ["channels"], ["cron", "add"]):
        r = run_cli(*args)
        assert r.returncode == 2 and r.stdout == "", args
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), (args, r.stderr)
        assert "--help" in r.stderr


def test_config_option_and_environment_variable(home, llm, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(f"providers: {{custom: {{api_base: '{llm.url}'}}}}\nagents: {{defaults: {{model: elsewhere}}}}\n")
    assert "elsewhere" in run_cli("status", "--config", str(other)).stdout
    assert "elsewhere" in run_cli("status", env={"NANOCLAW_CONFIG": str(other)}).stdout
    r = run_cli("status", "--config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "no such config file" in r.stderr


def test_help_is_fast_to_import(home):
    r = run_cli("--help")
    assert r.returncode == 0 and "onboard" in r.stdout
    probe = "import sys, lib.cli; lib.cli.main(['status']); print(sorted(m for m in ('openai', 'requests', 'yaml') if m in sys.modules))"
    import subprocess, sys
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__))).stdout
    assert out.strip().splitlines()[-1] == "[]"      # no SDK imported for status without a config


def test_channels_status_shows_settings_and_queue_depths(home, llm):
    fake_config(home, llm, "channels:\n  telegram: {enabled: true, token: t, allow_from: [123]}\n")
    from lib.mail import post_outbox
    post_outbox(home, "telegram", "1", "waiting")
    r = run_cli("channels", "status")
    assert r.returncode == 0, r.stderr
    tg = next(line for line in r.stdout.splitlines() if line.startswith("telegram"))
    assert tg.split()[:5] == ["telegram", "yes", "yes", "1", "0"] and "123" in tg
    slack = next(line for line in r.stdout.splitlines() if line.startswith("slack"))
    assert "no (bot_token, app_token)" in slack and slack.rstrip().endswith("nobody")


def test_gateway_without_a_key_is_a_config_error(home):
    r = run_cli("gateway")
    assert r.returncode == 2 and "ANTHROPIC_API_KEY" in r.stderr and "Traceback" not in r.stderr


def test_message_tool_to_another_chat_is_queued_for_the_gateway(home, llm):
    fake_config(home, llm)
    llm.script({"tool_calls": [{"name": "message", "arguments": {
        "content": "ping from cli", "channel": "telegram", "chat_id": "55"}}]}, "sent it")
    r = run_cli("agent", "-m", "tell telegram")
    assert r.stdout == "sent it\n" and "queued for telegram:55" in r.stderr
    import json
    queued = [json.loads(p.read_text()) for p in (home / "outbox" / "new").glob("telegram.*.json")]
    assert [(m["chat_id"], m["text"]) for m in queued] == [("55", "ping from cli")]


def test_message_tool_files_to_this_chat_are_named_in_the_output(home, llm):
    fake_config(home, llm)
    (home / "workspace").mkdir()
    (home / "workspace" / "chart.png").write_bytes(b"\x89PNG")
    llm.script({"tool_calls": [{"name": "message", "arguments": {
        "content": "the chart", "media": ["chart.png"]}}]}, "done")
    r = run_cli("agent", "-m", "chart please", "--no-markdown")
    assert r.stdout == f"the chart\n[file: {(home / 'workspace' / 'chart.png').resolve()}]\ndone\n"


def test_a_home_that_cannot_be_made_is_one_line_not_a_traceback(home, tmp_path):
    (tmp_path / "a-file").write_text("")
    r = run_cli("onboard", env={"NANOCLAW_HOME": str(tmp_path / "a-file" / "home")})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "a-file" in r.stderr


def test_output_to_a_closed_pipe_is_no_traceback(home):
    import subprocess
    import sys
    from tests.conftest import ROOT
    proc = subprocess.Popen([sys.executable, str(ROOT / "nanoclaw.py"), "status"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.close()                 # like `| head` that has already left
    err = proc.stderr.read().decode()
    assert proc.wait(30) == 1 and err == ""


def test_status_says_whether_the_shell_is_sandboxed(home):
    """SPEC §8: status names the sandbox, or why exec refuses and the fix."""
    import shutil
    if shutil.which("bwrap"):
        assert "shell      in the bubblewrap sandbox" in run_cli("status").stdout
    r = run_cli("status", env={"PATH": "/nonexistent"})         # no bwrap to be found
    assert "refused: no sandbox (bwrap is not installed); install bubblewrap" in r.stdout
    write_config(home, "tools: {exec: {sandbox: off}}\n")
    assert "no sandbox (tools.exec.sandbox: off)" in run_cli("status").stdout


def test_make_run_stops_on_a_config_mistake_with_its_line(home):
    """Issue 15: a config error used to print, then 'Set one provider key', and exit 0."""
    import shutil
    if not shutil.which("make") or not (ROOT / ".venv" / ".installed").exists():
        pytest.skip("needs make and the .venv that `make install` builds")
    write_config(home, "agents: {defaults: {modle: x}}\n")
    r = subprocess.run(["make", "-s", "run"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "NANOCLAW_HOME": str(home)})
    assert r.returncode != 0 and "unknown key agents.defaults.modle" in r.stderr
    assert "Set one provider key" not in r.stdout + r.stderr and "Starting" not in r.stdout


def test_piped_interactive_chat_prints_plain_lines(home, llm):
    """Issue 15: with stdin or stdout not a terminal, no prompt or banner is glued to the reply."""
    fake_config(home, llm)
    llm.script("first answer", "second answer")
    r = run_cli("agent", input="one\ntwo\n")
    assert r.returncode == 0 and r.stdout == "first answer\nsecond answer\n", r.stdout
