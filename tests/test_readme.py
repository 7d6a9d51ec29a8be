"""The README (and docs/channels.md) checked against the program, so the two cannot drift apart
(issue 15): every command shown is run as a user would run it, or, when it needs the outside
world (a phone, a chat app, a service that runs until stopped), checked against its --help; the
inbox script runs against a real gateway; every YAML example loads; every key in the settings
tables exists; every link to a section finds it."""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import ROOT, write_config

DOCS = {"README.md": ROOT / "README.md", "docs/channels.md": ROOT / "docs" / "channels.md"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
PYTHON = re.compile(r"(?:\.venv/bin/)?python nanoclaw\.py")
NOT_RUN = {("gateway",): "runs until stopped (tests/test_gateway.py starts it)",
           ("channels", "login"): "needs a phone to scan the QR code"}


def text(name) -> str:
    return DOCS[name].read_text(encoding="utf-8")


def prose(name) -> str:
    """The document without its fenced blocks."""
    return FENCE.sub("", text(name))


def blocks(lang: str):
    return [(name, m.group(2)) for name in DOCS for m in FENCE.finditer(text(name))
            if m.group(1) == lang]


def shell_commands() -> list:
    """The nanoclaw command lines of the bash blocks, in order, continuation lines joined."""
    return [line.strip() for _, body in blocks("bash") for line in body.replace("\\\n", " ").split("\n")
            if PYTHON.search(line)]


def inline_commands() -> list:
    return [span for name in DOCS for span in re.findall(r"`([^`\n]*nanoclaw\.py[^`\n]*)`", prose(name))]


def table_commands() -> list:
    """The first column of the README's command table, as command lines."""
    section = prose("README.md").split("## Command line", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ")[0] for line in section.splitlines() if line.startswith("| `")]
    return ["python nanoclaw.py " + span.replace("\\|", "|") for row in rows
            for span in re.findall(r"`([^`]+)`", row)]


def words(command: str) -> list:
    """What comes after `nanoclaw.py`, as the shell would split it."""
    return shlex.split(command.split("nanoclaw.py", 1)[1], comments=True)


def subcommand(command: str) -> tuple:
    """The command's words before its first option or placeholder: ("cron", "add")."""
    out = []
    for word in words(command):
        if not re.fullmatch(r"[a-z]+", word):
            break
        out.append(word)
    return tuple(out)


def placeholder(command: str) -> bool:
    return any(c in command for c in "…<>")


ALL = sorted(set(shell_commands() + inline_commands() + table_commands()))


@pytest.mark.parametrize("command", ALL)
def test_every_command_shown_exists_with_the_options_shown(command):
    help_text = subprocess.run([sys.executable, "nanoclaw.py", *subcommand(command), "--help"],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert help_text.returncode == 0, f"{command}: {help_text.stderr}"
    options = [w.strip("[]()") for w in words(command) if w.lstrip("[(").startswith("-")]
    for option in options:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text.stdout), \
            f"{command}: {option} is not in `{' '.join(subcommand(command))} --help`"


def test_the_commands_shown_run(home, llm):
    """Each command of the bash blocks, and each complete one in the text, in the order shown,
    in a fresh home whose model is the fake server; JOB_ID is the job added last."""
    write_config(home, f"providers:\n  custom: {{api_base: '{llm.url}'}}\n"
                       "agents: {defaults: {model: fake-model, provider: custom}}\n")
    runnable = shell_commands() + [c for c in inline_commands() if not placeholder(c)]
    seen, job = set(), None
    for command in runnable:
        if subcommand(command) in NOT_RUN or command in seen:
            continue
        seen.add(command)
        line = PYTHON.sub(f"{shlex.quote(sys.executable)} nanoclaw.py", command)
        line = line.replace("JOB_ID", job or "JOB_ID")
        r = subprocess.run(["bash", "-c", line], cwd=ROOT, capture_output=True, text=True,
                           input="exit\n", timeout=60, env={**os.environ, "NANOCLAW_HOME": str(home)})
        assert r.returncode == 0, f"{command}\n{r.stdout}{r.stderr}"
        job = (re.findall(r"^added job (\w+)", r.stdout, re.M) or [job])[0]
    ran = {subcommand(c) for c in seen}
    assert {(), ("onboard",), ("status",), ("agent",), ("cron", "add"), ("cron", "remove")} <= ran
    assert (home / "workspace" / "AGENTS.md").exists()         # onboard made the workspace


def test_the_inbox_script_gets_its_reply(gateway, llm, home, tmp_path):
    """The 'From a script' example, verbatim, against a running gateway."""
    [script] = [body for _, body in blocks("bash") if "inbox/tmp/" in body]
    write_config(home, f"providers:\n  custom: {{api_base: '{llm.url}'}}\n"
                       "agents: {defaults: {model: fake-model, provider: custom}}\n"
                       "heartbeat: {enabled: false}\n")
    user_home = tmp_path / "user"
    user_home.mkdir()
    (user_home / ".nanoclaw").symlink_to(home)          # the script says cd ~/.nanoclaw
    gateway.start()
    r = subprocess.run(["timeout", "60", "bash", "-c", script], capture_output=True, text=True,
                       timeout=90, env={**os.environ, "HOME": str(user_home)})
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert reply["text"] == "echo: Any reminders for today?" and reply["channel"] == "local"


@pytest.mark.parametrize("name, example", blocks("yaml"))
def test_every_yaml_example_loads(home, name, example):
    from lib.config import load_config
    write_config(home, example)
    load_config()


def test_every_key_in_the_settings_tables_exists(home):
    from lib.config import load_config
    cfg = load_config()
    section = prose("README.md").split("## Configuration", 1)[1].split("\n## ", 1)[0]
    tables = section.split("### ")[1:]
    keys = [("agents.defaults." + k if t.startswith("The agent") else k)
            for t in tables for row in t.splitlines() if row.startswith("| `")
            for k in re.findall(r"`([a-z_.]+)`", row.split(" | ")[0])]
    assert len(keys) > 30
    for key in keys:
        value = cfg
        for part in key.split("."):
            assert hasattr(value, part), f"README names {key}, which the config does not have"
            value = getattr(value, part)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_to_a_section_finds_it():
    anchors = {name: {slug(h) for h in re.findall(r"^#+ (.+)$", prose(name), re.M)} for name in DOCS}
    for name in DOCS:
        for target, anchor in re.findall(r"\]\(([\w./-]*)#([\w-]+)\)", prose(name)):
            doc = os.path.normpath(os.path.join(os.path.dirname(name), target)) if target else name
            assert anchor in anchors[doc], f"{name}: a link to {target}#{anchor} finds no section"
