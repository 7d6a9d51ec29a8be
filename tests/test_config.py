"""config.yaml loading: real files in the test's NANOCLAW_HOME, no mocks."""
import json

import pytest

from lib.config import DENY_PATTERNS, load_config
from lib.errors import ConfigError
from tests.conftest import run_cli, write_config


def config_error(home, text, name="config.yaml") -> str:
    """Write `text` as the config file and return the one-line ConfigError message."""
    (home / name).write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config()
    msg = str(e.value)
    assert "\n" not in msg and name in msg
    return msg


# --- where the values come from ---

def test_defaults_without_a_file(home):
    cfg = load_config()
    assert cfg.path == home / "config.yaml" and cfg.home == home
    assert cfg.workspace == home / "workspace"
    assert cfg.agents.defaults.model == "anthropic/claude-opus-4-5"
    assert cfg.agents.defaults.provider == "auto"
    assert cfg.agents.defaults.max_tokens == 8192
    assert cfg.channels.telegram.enabled is False and cfg.channels.telegram.allow_from == []
    assert cfg.channels.telegram.api_base == "https://api.telegram.org"
    assert cfg.tools.exec.deny_patterns == DENY_PATTERNS
    assert cfg.gateway.port == 18790 and cfg.heartbeat.interval_s == 1800
    assert cfg.providers.openrouter.api_key == ""


def test_yaml_values_are_loaded(home):
    write_config(home, """
providers:
  deepseek: {api_key: sk-ds, extra_headers: {X-Title: nanoclaw}}
agents:
  defaults:
    model: deepseek-chat
    max_tokens: 1000
    temperature: 0          # an integer where a number is expected is fine
    workspace: /tmp/elsewhere
channels:
  telegram: {enabled: true, token: "123:abc", allow_from: [alice]}
  slack:
    dm: {policy: allowlist}
tools:
  exec: {timeout: 5, deny_patterns: []}
gateway: {port: 9999}
heartbeat: {enabled: false}
""")
    cfg = load_config()
    assert cfg.providers.deepseek.api_key == "sk-ds"
    assert cfg.providers.deepseek.extra_headers == {"X-Title": "nanoclaw"}
    assert cfg.agents.defaults.model == "deepseek-chat"
    assert cfg.agents.defaults.max_tokens == 1000
    assert cfg.agents.defaults.temperature == 0.0 and isinstance(cfg.agents.defaults.temperature, float)
    assert str(cfg.workspace) == "/tmp/elsewhere"
    assert cfg.channels.telegram.enabled is True and cfg.channels.telegram.token == "123:abc"
    assert cfg.channels.telegram.allow_from == ["alice"]
    assert cfg.channels.slack.dm.policy == "allowlist" and cfg.channels.slack.dm.enabled is True
    assert cfg.tools.exec.timeout == 5 and cfg.tools.exec.deny_patterns == []
    assert cfg.gateway.port == 9999 and cfg.gateway.host == "127.0.0.1"
    assert cfg.heartbeat.enabled is False


def test_camel_case_keys_are_accepted(home):
    write_config(home, """
providers:
  openrouter: {apiKey: sk-or-1, apiBase: "https://example.org/v1", extraHeaders: {HTTP-Referer: me}}
agents:
  defaults: {maxTokens: 2048, maxToolIterations: 3}
channels:
  telegram: {allowFrom: ["42"]}
  slack: {botToken: xoxb-1, groupPolicy: open}
tools: {restrictToWorkspace: true}
heartbeat: {intervalS: 60}
""")
    cfg = load_config()
    assert cfg.providers.openrouter.api_key == "sk-or-1"
    assert cfg.providers.openrouter.api_base == "https://example.org/v1"
    assert cfg.providers.openrouter.extra_headers == {"HTTP-Referer": "me"}   # header names kept
    assert cfg.agents.defaults.max_tokens == 2048 and cfg.agents.defaults.max_tool_iterations == 3
    assert cfg.channels.telegram.allow_from == ["42"]
    assert cfg.channels.slack.bot_token == "xoxb-1" and cfg.channels.slack.group_policy == "open"
    assert cfg.tools.restrict_to_workspace is True
    assert cfg.heartbeat.interval_s == 60


# What the original project's README tells users to write, with the nulls its onboard writes.
ORIGINAL_JSON = {
    "providers": {"openrouter": {"apiKey": "sk-or-v1-xxx", "apiBase": None, "extraHeaders": None},
                  "vllm": {"apiKey": "dummy", "apiBase": "http://localhost:8000/v1"}},
    "agents": {"defaults": {"model": "anthropic/claude-opus-4-5", "maxTokens": 8192,
                            "temperature": 0.7, "maxToolIterations": 20}},
    "channels": {
        "telegram": {"enabled": True, "token": "YOUR_BOT_TOKEN", "allowFrom": ["YOUR_USER_ID"],
                     "proxy": None},
        "discord": {"enabled": True, "token": "t", "allowFrom": ["1234"]},
        "whatsapp": {"enabled": True, "allowFrom": ["+1234567890"]},
        "feishu": {"enabled": True, "appId": "cli_xxx", "appSecret": "xxx", "encryptKey": "",
                   "verificationToken": "", "allowFrom": []},
        "qq": {"enabled": True, "appId": "YOUR_APP_ID", "secret": "s", "allowFrom": []},
        "dingtalk": {"enabled": True, "clientId": "k", "clientSecret": "s", "allowFrom": []},
        "slack": {"enabled": True, "botToken": "xoxb-...", "appToken": "xapp-...",
                  "groupPolicy": "mention"},
        "email": {"enabled": True, "consentGranted": True, "imapHost": "imap.gmail.com",
                  "imapPort": 993, "imapUsername": "bot@gmail.com", "imapPassword": "pw",
                  "smtpHost": "smtp.gmail.com", "smtpPort": 587, "smtpUsername": "bot@gmail.com",
                  "smtpPassword": "pw", "fromAddress": "bot@gmail.com",
                  "allowFrom": ["me@gmail.com"], "autoReplyEnabled": False},
        "mochat": {"enabled": True, "base_url": "https://mochat.io", "claw_token": "claw_xxx",
                   "sessions": ["*"], "panels": ["*"], "reply_delay_mode": "non-mention",
                   "reply_delay_ms": 120000},
    },
    "tools": {"restrictToWorkspace": True, "web": {"search": {"apiKey": "BSA", "maxResults": 5}},
              "exec": {"timeout": 60}},
    "gateway": {"host": "0.0.0.0", "port": 18790},
}


def test_config_json_in_the_original_format_is_read(home):
    (home / "config.json").write_text(json.dumps(ORIGINAL_JSON, indent=2))
    cfg = load_config()
    assert cfg.path == home / "config.json"
    assert cfg.providers.openrouter.api_key == "sk-or-v1-xxx"
    assert cfg.providers.openrouter.api_base == ""             # null: the default
    assert cfg.providers.vllm.api_base == "http://localhost:8000/v1"
    assert cfg.channels.telegram.allow_from == ["YOUR_USER_ID"]
    assert cfg.channels.telegram.proxy == ""
    assert cfg.channels.feishu.app_id == "cli_xxx"
    assert cfg.channels.dingtalk.client_id == "k"
    assert cfg.channels.email.consent_granted is True and cfg.channels.email.smtp_port == 587
    assert cfg.channels.email.auto_reply_enabled is False
    assert cfg.channels.mochat.sessions == ["*"]
    assert cfg.tools.restrict_to_workspace is True and cfg.tools.web.search.api_key == "BSA"
    assert cfg.gateway.host == "0.0.0.0"


def test_config_yaml_wins_over_config_json_and_says_so(home):
    (home / "config.json").write_text(json.dumps({"agents": {"defaults": {"model": "from-json"}}}))
    write_config(home, "agents: {defaults: {model: from-yaml}}\n")
    cfg = load_config()
    assert cfg.path == home / "config.yaml" and cfg.agents.defaults.model == "from-yaml"
    status = run_cli("status")      # the original project's docs send people to config.json
    assert f"{home / 'config.json'} is not read: {home / 'config.yaml'} is" in status.stderr


def test_errors_in_config_json_name_that_file_and_line(home):
    msg = config_error(home, '{\n  "channels": {\n    "telegram": {\n      "alowFrom": []\n    }\n  }\n}\n',
                       name="config.json")
    assert "unknown key channels.telegram.alowFrom (line 4)" in msg
    assert "did you mean allow_from?" in msg


def test_explicit_config_path(home, tmp_path):
    write_config(home, "agents: {defaults: {model: from-home}}\n")
    other = tmp_path / "other.yaml"
    other.write_text("agents: {defaults: {model: from-other}}\n")
    cfg = load_config(str(other))
    assert cfg.path == other and cfg.agents.defaults.model == "from-other"
    assert cfg.home == home                                    # the home folder stays


def test_nanoclaw_config_env_var(home, tmp_path, monkeypatch):
    other = tmp_path / "env.yaml"
    other.write_text("agents: {defaults: {model: from-env}}\n")
    monkeypatch.setenv("NANOCLAW_CONFIG", str(other))
    cfg = load_config()
    assert cfg.path == other and cfg.agents.defaults.model == "from-env"


def test_explicitly_given_file_that_is_missing_is_an_error(home, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="nope.yaml: no such config file"):
        load_config(str(tmp_path / "nope.yaml"))
    monkeypatch.setenv("NANOCLAW_CONFIG", str(tmp_path / "gone.yaml"))
    with pytest.raises(ConfigError, match="gone.yaml: no such config file"):
        load_config()


def test_var_expansion_from_the_environment(home, monkeypatch):
    monkeypatch.setenv("MY_TG_TOKEN", "123:secret")
    monkeypatch.setenv("ME", "4242")
    write_config(home, "channels:\n  telegram: {token: '${MY_TG_TOKEN}', allow_from: ['${ME}', 'x${ME}y']}\n"
                       "providers:\n  custom: {extra_headers: {Authorization: 'Bearer ${MY_TG_TOKEN}'}}\n")
    cfg = load_config()
    assert cfg.channels.telegram.token == "123:secret"
    assert cfg.channels.telegram.allow_from == ["4242", "x4242y"]
    assert cfg.providers.custom.extra_headers == {"Authorization": "Bearer 123:secret"}


def test_var_expansion_of_an_unset_variable_is_empty(home):
    write_config(home, "channels:\n  telegram: {token: 'a${NANOCLAW_TEST_UNSET_VAR}b'}\n")
    assert load_config().channels.telegram.token == "ab"


def test_provider_key_from_env_when_the_file_leaves_it_empty(home, monkeypatch):
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-env")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env")
    monkeypatch.setenv("ZHIPUAI_API_KEY", "zp-env")
    write_config(home, "providers:\n  openrouter: {api_key: ''}\n  anthropic: {api_key: sk-ant-file}\n")
    cfg = load_config()
    assert cfg.providers.openrouter.api_key == "sk-or-env"
    assert cfg.providers.anthropic.api_key == "sk-ant-file"      # the file wins
    assert cfg.providers.zhipu.api_key == "zp-env"               # absent from the file
    assert cfg.providers.deepseek.api_key == ""


def test_numbers_in_allow_from_become_strings(home):
    write_config(home, "channels:\n  telegram: {allow_from: [12345, '678', 9.5]}\n")
    assert load_config().channels.telegram.allow_from == ["12345", "678", "9.5"]


def test_an_empty_value_keeps_the_default(home):
    write_config(home, "providers:\n  openrouter:\n    api_key:\n    api_base:\n"
                       "channels:\n  telegram:\n    api_base:\n    allow_from:\ngateway:\n  port:\n")
    cfg = load_config()
    assert cfg.providers.openrouter.api_key == "" and cfg.providers.openrouter.api_base == ""
    assert cfg.channels.telegram.api_base == "https://api.telegram.org"
    assert cfg.channels.telegram.allow_from == []
    assert cfg.gateway.port == 18790


# --- every error names the key path, the file and the line ---

def test_unknown_key_names_path_file_line_and_a_suggestion(home):
    msg = config_error(home, "channels:\n  telegram:\n    enabled: true\n    alow_from: [1]\n")
    assert msg.startswith(str(home / "config.yaml") + ": ")
    assert "unknown key channels.telegram.alow_from (line 4); did you mean allow_from?" in msg


def test_unknown_key_far_from_any_lists_the_expected_keys(home):
    msg = config_error(home, "gateway:\n  port: 1\n  zzz: 2\n")
    assert "unknown key gateway.zzz (line 3)" in msg
    assert "expected one of: host, port, token, api_timeout_s, retention_days" in msg


def test_unknown_top_level_section(home):
    msg = config_error(home, "\n\nchanels: {}\n")
    assert "unknown key chanels (line 3); did you mean channels?" in msg


@pytest.mark.parametrize("name", ["path", "home"])
def test_internal_field_names_are_unknown_keys(home, name):
    msg = config_error(home, f"agents: {{}}\n{name}: /etc\n")
    assert f"unknown key {name} (line 2)" in msg


def test_wrong_type_for_an_integer(home):
    msg = config_error(home, "agents:\n  defaults:\n    model: x\n    max_tokens: lots\n")
    assert "agents.defaults.max_tokens (line 4) must be an integer, got str 'lots'" in msg


def test_true_is_not_an_integer(home):
    msg = config_error(home, "gateway:\n  port: true\n")
    assert "gateway.port (line 2) must be an integer" in msg


def test_string_where_true_or_false_is_expected(home):
    msg = config_error(home, 'channels:\n  telegram:\n    enabled: "yes"\n')
    assert "channels.telegram.enabled (line 3) must be true or false, got str 'yes'" in msg


def test_list_where_a_mapping_is_expected(home):
    msg = config_error(home, "providers: {}\nchannels:\n  - telegram\n")
    assert "channels (line 2) must be a mapping of keys, got list" in msg


def test_scalar_where_extra_headers_mapping_is_expected(home):
    msg = config_error(home, "providers:\n  custom:\n    extra_headers: [a, b]\n")
    assert "providers.custom.extra_headers (line 3) must be a mapping (name: value), got list" in msg


def test_mapping_where_a_list_is_expected(home):
    msg = config_error(home, "channels:\n  telegram:\n    allow_from: {alice: 1}\n")
    assert "channels.telegram.allow_from (line 3) must be a list, got dict" in msg


def test_bad_choice_for_provider(home):
    msg = config_error(home, "agents:\n  defaults:\n    provider: foo\n")
    assert "agents.defaults.provider (line 3) must be one of auto, openrouter," in msg
    assert "got 'foo'" in msg


def test_bad_choice_for_group_policy(home):
    msg = config_error(home, "channels:\n  slack:\n    enabled: false\n    group_policy: sometimes\n")
    assert ("channels.slack.group_policy (line 4) must be one of mention, open, allowlist, "
            "got 'sometimes'") in msg


def test_invalid_yaml_names_the_line(home):
    msg = config_error(home, "agents:\n  defaults:\n    model: [unclosed\n    max_tokens: 1\ngateway: {\n")
    assert "not valid YAML (line " in msg
    msg = config_error(home, "a: 1\nb: 2\n  c: 3\n")
    assert "not valid YAML (line 3)" in msg


@pytest.mark.parametrize("text, line", [
    ("agents:\n  defaults:\n    model: foo\n\n\n  bad\n\n\nheartbeat: {}\n", 6),   # no colon
    ('providers:\n  openrouter:\n    api_key: "sk-or\n\n# note\nagents: {}\n', 3),  # no quote
    ("agents:\n  defaults:\n    model: [a, b\n\n\nheartbeat: {}\n", 3),            # no ]
    ("agents:\n  defaults:\n    model: foo\n  - x\nheartbeat: {}\n", 4),
])
def test_a_yaml_mistake_names_the_line_it_is_on_not_where_it_was_noticed(home, text, line):
    """Issue 15: the line YAML noticed the mistake on was two lines late."""
    assert f"not valid YAML (line {line})" in config_error(home, text)


def test_unreadable_file(home):
    (home / "config.yaml").mkdir()          # tests may run as root: a folder can't be read either
    with pytest.raises(ConfigError, match="config.yaml: cannot read"):
        load_config()


def test_file_that_is_not_utf8(home):
    (home / "config.yaml").write_bytes(b"agents:\n  defaults:\n    model: caf\xe9\n")
    with pytest.raises(ConfigError, match="config.yaml: cannot read: .*utf-8"):
        load_config()


def test_top_level_must_be_a_mapping(home):
    msg = config_error(home, "- providers\n- agents\n")
    assert "the file must be a mapping of keys, got list" in msg
    msg = config_error(home, "just some words\n")
    assert "the file must be a mapping of keys, got str" in msg


def test_empty_file_gives_the_defaults(home):
    write_config(home, "# nothing yet\n")
    assert load_config().agents.defaults.model == "anthropic/claude-opus-4-5"


# --- the command line ---

def test_cli_bad_config_is_one_line_and_exit_2(home):
    write_config(home, "channels:\n  telegram:\n    alow_from: [1]\n")
    r = run_cli("status")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert "unknown key channels.telegram.alow_from (line 3); did you mean allow_from?" in lines[0]


def test_cli_config_option(home, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("agents: {defaults: {model: deepseek-chat}}\nproviders: {deepseek: {api_key: k}}\n")
    r = run_cli("status", "--config", str(other))
    assert r.returncode == 0, r.stderr
    assert f"config     {other}" in r.stdout and "model      deepseek-chat" in r.stdout


def test_an_invalid_deny_pattern_is_a_config_error(home):
    from lib.config import load_config
    from lib.errors import ConfigError
    write_config(home, "tools:\n  exec:\n    deny_patterns: ['ok', '(unclosed']\n")
    with pytest.raises(ConfigError, match=r"tools\.exec\.deny_patterns \(line 3\).*not a valid regular expression"):
        load_config()


def test_an_unknown_time_zone_is_a_config_error(home):
    write_config(home, "agents:\n  defaults:\n    timezone: Mars/Olympus\n")
    with pytest.raises(ConfigError, match=r"agents\.defaults\.timezone \(line 3\) is not a time zone"):
        load_config()
    write_config(home, "agents:\n  defaults:\n    timezone: Europe/Berlin\n")
    assert load_config().agents.defaults.timezone == "Europe/Berlin"


def test_config_example_lists_every_key_with_its_default():
    """SPEC §5: config.example.yaml lists every key with its default."""
    import dataclasses
    import typing
    from pathlib import Path

    import yaml

    from lib.config import Config
    example = yaml.safe_load((Path(__file__).parent.parent / "config.example.yaml").read_text())
    documented_elsewhere = {"tools.exec.deny_patterns", "tools.approval.patterns"}   # long lists: in a comment

    def walk(cls, data, path):
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            key = f"{path}.{f.name}".lstrip(".")
            if key in documented_elsewhere:
                continue
            assert isinstance(data, dict) and f.name in data, f"config.example.yaml lacks {key}"
            typ = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(typ):
                walk(typ, data[f.name], key)
            else:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                value = data[f.name]
                assert value == default or (value is None and default in ("", [], {})), \
                    f"{key}: example says {value!r}, default is {default!r}"
    walk(Config, example, "")


def test_ids_written_as_numbers_keep_their_digits_with_libyaml(home):
    """libyaml marks a plain scalar with style '' (the pure-Python loader with None): 0123 must
    not become 83 nor +49 lose its plus."""
    write_config(home, "channels:\n  telegram: {allow_from: [0123, +4917612345]}\n"
                       "  whatsapp: {bridge_token: 00123}\nagents:\n  defaults: {max_tokens: 100}\n")
    cfg = load_config()
    assert cfg.channels.telegram.allow_from == ["0123", "+4917612345"]
    assert cfg.channels.whatsapp.bridge_token == "00123" and cfg.agents.defaults.max_tokens == 100


@pytest.mark.parametrize("text, expected", [
    ("gateway: {port: 99999999}", "gateway.port (line 1) must be from 0 to 65535, got 99999999"),
    ("gateway: {retention_days: -1}", "gateway.retention_days (line 1) must be at least 0, got -1"),
    ("heartbeat: {interval_s: 0}", "heartbeat.interval_s (line 1) must be at least 1, got 0"),
    ("agents:\n  defaults: {memory_window: 0}", "agents.defaults.memory_window (line 2) must be at"),
    ("agents:\n  defaults: {max_tool_iterations: -3}", "max_tool_iterations (line 2) must be at"),
    ("agents:\n  defaults: {max_tokens: 0}", "agents.defaults.max_tokens (line 2) must be at least"),
    ("agents:\n  defaults: {temperature: .nan}", "agents.defaults.temperature (line 2) must be from"),
    ("agents:\n  defaults: {temperature: 7}", "temperature (line 2) must be from 0.0 to 2.0, got 7.0"),
    ("tools:\n  exec: {timeout: 0}", "tools.exec.timeout (line 2) must be at least 1, got 0"),
])
def test_a_number_out_of_range_is_a_config_error(home, text, expected):
    assert expected in config_error(home, text + "\n")


def test_a_key_set_twice_is_an_error_naming_both_lines(home):
    """Issue 15: YAML keeps the second silently, so an edit at the top did nothing."""
    text = "agents:\n  defaults:\n    model: a\n    temperature: 0.2\n    model: b\n"
    assert config_error(home, text) == \
        f"{home / 'config.yaml'}: agents.defaults.model is set twice (lines 3 and 5)"


@pytest.mark.parametrize("text", [
    "a: &x [*x]\n",                                     # a list inside itself
    "agents: &x\n  defaults: *x\n",                     # a section inside itself
    "channels:\n  telegram:\n    allow_from: " + "[" * 3000 + "]" * 3000 + "\n",
    "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(  # aliases that multiply: 10^9 values
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)),
])
def test_a_config_that_nests_itself_or_explodes_is_one_line(home, text):
    write_config(home, text)
    r = run_cli("status", timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr[-500:]
    assert "config.yaml" in r.stderr


# --- the settings of SPEC §10: checked at load, so every command and a reload refuse them ---

MODEL = "anthropic/claude-opus-4-5"


@pytest.mark.parametrize("text, expected", [
    ("heartbeat:\n  quiet_hours: '23-7'", "heartbeat.quiet_hours (line 2) must be HH:MM-HH:MM"),
    ("heartbeat: {quietHours: '25:00-07:00'}", "heartbeat.quiet_hours (line 1) must be HH:MM"),
    ("agents:\n  defaults:\n    prices: {gpt-4.1: [3]}", "agents.defaults.prices.gpt-4.1 (line 3) "
     "must be [USD"),
    ("limits:\n  daily_usd: 2", f"limits.daily_usd (line 2) is set, but {MODEL} has no price"),
    ("tools:\n  approval: {owner: '12345'}", "tools.approval.owner (line 2) must be channel:chat"),
    ("tools:\n  approval: {owner: 'telegram:'}", "tools.approval.owner (line 2) must be channel:"),
    ("tools:\n  approval: {owner: 'telgram:123'}",
     "tools.approval.owner (line 2) has an unknown channel 'telgram'; expected one of telegram, "),
    ("tools:\n  approval: {owner: 'system:cron'}", "has channel system, whose replies are only "
     "logged; expected one of telegram, "),
])
def test_usage_settings_are_checked_at_load_naming_key_file_and_line(home, text, expected):
    assert expected in config_error(home, text + "\n")


def test_the_owner_may_be_any_chat_app_or_a_local_channel(home):
    for owner in ("telegram:123", "email:me@example.com", "web:page", "local:me", "cli:owner"):
        write_config(home, f"tools: {{approval: {{owner: '{owner}'}}}}\n")
        assert load_config().tools.approval.owner == owner
    msg = config_error(home, "tools: {approval: {owner: 'telgram:1'}}\n")
    assert all(name in msg for name in ("slack", "email", "web", "local", "cli", "api"))


@pytest.mark.parametrize("args", [["status"], ["usage"], ["cron", "list"]])
def test_every_command_refuses_a_bad_usage_setting(home, args):
    write_config(home, "heartbeat:\n  quiet_hours: '25:00-07:00'\n")
    r = run_cli(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert "config.yaml: heartbeat.quiet_hours (line 2) must be HH:MM-HH:MM" in r.stderr
