"""gateway.token written into the owner's config file (SPEC §11): every other line kept as it was,
the file mode kept, a linked config still linked, JSON still JSON; never over a ${VAR}."""
import json
import os

import pytest
import yaml

from lib.web.auth import write_token


@pytest.mark.parametrize("before, after", [
    ("gateway:\n  token: \"\"   # note\n  port: 1\n", "gateway:\n  token: \"T\"   # note\n  port: 1\n"),
    ("gateway:\n  port: 1\n", "gateway:\n  token: \"T\"\n  port: 1\n"),
    ("# mine\nagents: {}\n", "# mine\nagents: {}\ngateway:\n  token: \"T\"\n"),
    ("agents: {}", "agents: {}\ngateway:\n  token: \"T\"\n"),
    ("", "gateway:\n  token: \"T\"\n"),
    ("gateway: {port: 1}\n", "gateway: {\"token\": \"T\", port: 1}\n"),
    ("gateway:\nagents: {}\n", "gateway: {\"token\": \"T\"}\nagents: {}\n"),
    ("gateway: {}\n", "gateway: {\"token\": \"T\"}\n"),
    ('{"agents": {}}', '{"gateway": {"token": "T"}, "agents": {}}'),
    ('{"gateway": {"port": 1}}', '{"gateway": {"token": "T", "port": 1}}'),
])
def test_the_token_goes_in_and_nothing_else_changes(tmp_path, before, after):
    path = tmp_path / "config.yaml"
    path.write_text(before)
    path.chmod(0o640)
    assert write_token(path, "T") == ""
    assert path.read_text() == after
    assert yaml.safe_load(after)["gateway"]["token"] == "T"
    assert oct(path.stat().st_mode & 0o777) == "0o640"


def test_a_json_config_stays_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"gateway": {"port": 1}, "agents": {"defaults": {"model": "m"}}}, indent=2))
    assert write_token(path, "T") == ""
    assert json.loads(path.read_text())["gateway"] == {"token": "T", "port": 1}


def test_a_linked_config_stays_a_link(tmp_path):
    real = tmp_path / "dotfiles" / "nanoclaw.yaml"
    real.parent.mkdir()
    real.write_text("gateway:\n  port: 1\n")
    link = tmp_path / "config.yaml"
    link.symlink_to(real)
    assert write_token(link, "T") == ""
    assert link.is_symlink() and "token" in real.read_text()


def test_a_token_given_as_a_variable_is_never_replaced(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("gateway:\n  token: ${MY_TOKEN}\n")
    assert "set it by hand" in write_token(path, "T")
    assert path.read_text() == "gateway:\n  token: ${MY_TOKEN}\n"


def test_a_config_that_is_not_a_mapping_is_left_alone(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("- a list\n")
    assert write_token(path, "T") and path.read_text() == "- a list\n"
    assert os.path.exists(path)
