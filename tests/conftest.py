"""Shared fixtures: every test gets its own NANOCLAW_HOME and, when it asks, a fake model server."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lib.providers.registry import PROVIDERS
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
                       "agents:\n  defaults: {model: fake-model, memory_window: 10}\n")
    cfg = load_config()
    _copy_missing(repo / "workspace_template", cfg.workspace, skip={"skills"})
    return cfg


def run_cli(*args, input=None, env=None, timeout=60):
    """Run `python nanoclaw.py ARGS` as a user would; returns CompletedProcess (text)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "nanoclaw.py"), *args], input=input,
                          capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT)
