"""The systemd unit template, the Makefile that renders it, and the Dockerfile.

`systemd-analyze verify` is the real check for the unit: it parses every key the way systemd
does and checks that ExecStart can be run. It exits 0 on unknown keys and bad values (it only
warns), so a warning about our file counts as a failure here.
"""
import getpass
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "nanoclaw.service"
PLACEHOLDER = re.compile(r"@([A-Z_]+)@")


def parse_unit(text: str) -> dict:
    """{section: {key: [values in order]}}; a unit may repeat a key."""
    unit, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def render(tmp_path: Path, python: str = sys.executable) -> Path:
    """The template filled in as `make install-service` would, with paths that exist here."""
    home = tmp_path / "home"                    # conftest's NANOCLAW_HOME
    (home / "workspace").mkdir(parents=True, exist_ok=True)
    values = {"REPO": str(ROOT), "PYTHON": python, "USER": getpass.getuser(),
              "NANOCLAW_HOME": str(home), "WORKSPACE": str(home / "workspace")}
    text = PLACEHOLDER.sub(lambda m: values[m.group(1)], TEMPLATE.read_text())
    out = tmp_path / "unit" / "nanoclaw.service"
    out.parent.mkdir()
    out.write_text(text)
    return out


def verify(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                          text=True, timeout=60)


needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian: apt-get install systemd); .ci/run installs it")


@needs_systemd
def test_rendered_unit_passes_systemd_analyze_verify(tmp_path):
    unit = render(tmp_path)
    assert not PLACEHOLDER.search(unit.read_text())
    result = verify(unit)
    about_us = [line for line in (result.stdout + result.stderr).splitlines()
                if "nanoclaw.service" in line]
    assert result.returncode == 0 and not about_us, result.stdout + result.stderr


@needs_systemd
def test_verify_really_checks_the_unit(tmp_path):
    """Guards the test above: a unit whose python does not exist must be refused."""
    result = verify(render(tmp_path, python=str(tmp_path / "no-such-python")))
    assert result.returncode != 0
    assert "no-such-python" in result.stdout + result.stderr


def test_makefile_fills_in_every_placeholder_of_the_template():
    in_template = set(PLACEHOLDER.findall(TEMPLATE.read_text()))
    makefile = (ROOT / "Makefile").read_text()
    filled = set(re.findall(r"s\|@([A-Z_]+)@\|", makefile))
    assert in_template == {"REPO", "PYTHON", "USER", "NANOCLAW_HOME", "WORKSPACE"}
    assert filled == in_template
    assert "/etc/systemd/system/nanoclaw.service" in makefile
    assert "systemctl enable --now nanoclaw" in makefile


def test_unit_is_a_watched_notify_service_that_restarts():
    unit = parse_unit(TEMPLATE.read_text())
    service = unit["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["WatchdogSec"] == ["60"]            # the gateway pings every WatchdogSec/2
    assert service["Restart"] == ["on-failure"]
    assert service["RestartSec"] == ["5"]
    assert service["TimeoutStopSec"] == ["10"]
    assert service["ExecStart"] == ["@PYTHON@ @REPO@/nanoclaw.py gateway"]
    assert "NANOCLAW_HOME=@NANOCLAW_HOME@" in service["Environment"]
    assert unit["Unit"]["After"] == ["network-online.target"]
    assert unit["Unit"]["Wants"] == ["network-online.target"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_is_hardened_but_lets_exec_run_ordinary_programs():
    service = parse_unit(TEMPLATE.read_text())["Service"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "ProtectHome": "read-only", "PrivateTmp": "yes",
                       "ProtectKernelTunables": "yes", "ProtectControlGroups": "yes",
                       "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
                       "MemoryMax": "400M"}.items():
        assert service.get(key) == [value], key
    # Writable again inside the read-only /home: the home folder (required) and the workspace.
    assert service["ReadWritePaths"] == ["@NANOCLAW_HOME@", "-@WORKSPACE@"]
    # These would kill or break programs the exec tool starts (JITs, 32-bit binaries, devices).
    for key in ("SystemCallFilter", "SystemCallArchitectures", "MemoryDenyWriteExecute",
                "PrivateDevices"):
        assert key not in service, key


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_installs_requirements_before_copying_the_code():
    steps = dockerfile_instructions()
    words = [w for w, _ in steps]
    assert words[0] == "FROM" and re.fullmatch(r"python:3\.1[1-9]-slim", steps[0][1])
    copies = [(i, arg) for i, (w, arg) in enumerate(steps) if w == "COPY"]
    assert copies[0][1].split()[0] == "requirements.txt"
    install = next(i for i, (w, arg) in enumerate(steps)
                   if w == "RUN" and "pip install -r requirements.txt" in arg)
    code = next(i for i, arg in copies if arg.split()[0] == ".")
    assert copies[0][0] < install < code            # a code change keeps the dependency layer
    assert ("EXPOSE", "18790") in steps
    assert json.loads(dict(steps)["ENTRYPOINT"]) == ["python", "nanoclaw.py"]
    assert json.loads(dict(steps)["CMD"]) == ["status"]
    assert ("USER" not in words or dict(steps)["USER"] == "root"), \
        "-v ~/.nanoclaw:/root/.nanoclaw must keep working"


def test_dockerignore_keeps_local_environments_out_of_the_image():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".pytest_cache", "bench/.nanobot-venv"} <= ignored
