"""Shared fixtures: every test gets its own NANOCLAW_HOME and, when it asks, a fake model server,
the gateway as a subprocess, or channels run in-process."""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lib.providers.registry import PROVIDERS
from tests.fakes.base import wait_for  # noqa: F401  (tests import it from here)
from tests.fakes.openai_server import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A private home folder; provider keys from the developer's environment never leak in."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("NANOCLAW_HOME", str(home))
    for var in ["NANOCLAW_CONFIG", "BRAVE_API_KEY", "NO_COLOR"] + [p.env_key for p in PROVIDERS if p.env_key]:
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def llm_server():
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def llm(llm_server):
    """The fake OpenAI-compatible server, with an empty script and request log."""
    llm_server.reset()
    yield llm_server
    llm_server.reset()


def model_yaml(llm, groq="gk", provider="custom") -> str:
    """The head of a config.yaml for a channel test: the fake model as the `custom` provider (and
    as groq with api key `groq`, for transcription; none if groq is None), heartbeat off."""
    groq_line = f"  groq: {{api_key: {groq}, api_base: '{llm.url}'}}\n" if groq else ""
    model = (f"{{model: fake-model, provider: {provider}, retry_backoff_s: 0.01}}" if provider
             else "{model: fake-model, retry_backoff_s: 0.01}")
    return (f"providers:\n  custom: {{api_base: '{llm.url}'}}\n{groq_line}"
            f"agents: {{defaults: {model}}}\nheartbeat: {{enabled: false}}\n")


def write_config(home: Path, text: str) -> Path:
    path = Path(home) / "config.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def config(home, llm):
    """A loaded Config that talks to the fake server, with a workspace made by onboard's template."""
    from lib.cli import ROOT as repo
    from lib.cli import _copy_missing
    from lib.config import load_config
    write_config(home, f"providers:\n  custom: {{api_base: '{llm.url}'}}\n"
                       "agents:\n  defaults: {model: fake-model, memory_window: 10, retry_backoff_s: 0.01}\n")
    cfg = load_config()
    _copy_missing(repo / "workspace_template", cfg.workspace, skip={"skills"})
    return cfg


def make_agent(config, provider=None, send=None, services=None):
    """The agent as the gateway and the CLI build it: the configured provider (or the one given)
    and the conversation's tools."""
    from lib.agent.loop import Agent, agent_tools
    from lib.providers.client import make_provider
    return Agent(config, provider or make_provider(config), agent_tools(config), send, services)


def ask(text, channel="cli", chat_id="default", **fields):
    """An inbox message as Agent.respond takes it."""
    return {"channel": channel, "chat_id": chat_id, "text": text, **fields}


def run_cli(*args, input=None, env=None, timeout=60):
    """Run `python nanoclaw.py ARGS` as a user would; returns CompletedProcess (text)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "nanoclaw.py"), *args], input=input,
                          capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT)


class Gateway:
    """`python nanoclaw.py gateway` in a subprocess, ready when it says READY=1 over NOTIFY_SOCKET."""

    def __init__(self, home: Path):
        self.home, self.proc = home, None

    def start(self, timeout=15, args=()):
        sock_path = str(self.home / "notify.sock")
        if os.path.exists(sock_path):
            os.unlink(sock_path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(sock_path)
        self.sock.settimeout(timeout)
        env = {**os.environ, "NOTIFY_SOCKET": sock_path, "NANOCLAW_HOME": str(self.home)}
        self.log = open(self.home / "gateway.log", "ab")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "nanoclaw.py"), "gateway", *args],
                                     env=env, stdout=self.log, stderr=self.log, cwd=ROOT)
        assert self.notice() == "READY=1", self.logs()
        return self

    def notice(self) -> str:
        return self.sock.recv(256).decode()

    def kill(self):
        self.proc.kill()
        self.proc.wait()
        self.sock.close()

    def term(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(10)
        self.sock.close()
        return code

    def logs(self) -> str:
        return (self.home / "gateway.log").read_text(errors="replace")


@pytest.fixture
def gateway_config():
    """What the `gateway` fixture needs first; a module overrides it to write its config.yaml."""


@pytest.fixture
def gateway(home, gateway_config):
    """A Gateway for `home` (not started yet); killed after the test if it still runs."""
    g = Gateway(home)
    yield g
    if g.proc and g.proc.poll() is None:
        g.kill()


@pytest.fixture
def run_channel(home):
    """run_channel(ChannelClass) starts that channel in-process (no worker: messages stop in
    inbox/new) with the config in `home`; every channel started is stopped after the test."""
    from lib import maildir
    from lib.config import load_config
    started = []

    def start(cls, backoff=0.05):
        maildir.ensure(home / "inbox")
        maildir.ensure(home / "outbox", ("sent", "failed"))
        ch = cls(load_config(), home)
        if backoff is not None:
            ch.backoff = backoff
        ch.start()
        started.append(ch)
        return ch
    yield start
    for ch in started:
        ch.stop()


def block(folder):
    """A file where `folder` goes, so that writing there fails as on a full disk; the undo."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.is_dir():
        folder.rmdir()
    folder.write_text("in the way")
    return folder.unlink


def kill_mid_download(gateway, fake, send, also=lambda: True):
    """send() a message whose file the fake holds back, kill -9 the gateway while it downloads
    (and once `also()` holds; nothing in the inbox yet), then let the file through and start
    the gateway again."""
    fake.downloads_open.clear()
    send()
    wait_for(lambda: fake.downloads and also(), what="the download begun")
    gateway.kill()
    assert not list((gateway.home / "inbox").glob("*/*.json"))
    fake.downloads_open.set()
    gateway.start()


def inbox(home):
    """The messages waiting in inbox/new, oldest name first."""
    return [json.loads(p.read_text()) for p in sorted((home / "inbox" / "new").glob("*.json"))]


def replies(home, folder="sent"):
    path = home / "outbox" / folder
    return [json.loads(p.read_text()) for p in sorted(path.glob("*.json"))] if path.is_dir() else []
