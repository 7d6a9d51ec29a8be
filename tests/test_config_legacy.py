"""A config.json written by the original project's `onboard` (every field of its schema, camelCase,
nulls) loads: what nanoclaw uses is applied, what it has no use for is a warning, typos still fail."""
import copy
import json
import logging

import pytest

from lib.config import load_config
from lib.fields import snake
from lib.legacy import LEGACY_IGNORED
from lib.errors import ConfigError


def _provider(api_key="", api_base=None):
    return {"apiKey": api_key, "apiBase": api_base, "extraHeaders": None}


# The full dump of HKUDS/nanobot's schema as of late February 2026, with a user's edits
# (telegram, openrouter, vllm, web search, restrictToWorkspace).
ONBOARD_FEB = {
    "agents": {"defaults": {
        "workspace": "~/.nanobot/workspace", "model": "anthropic/claude-opus-4-5",
        "maxTokens": 8192, "temperature": 0.7, "maxToolIterations": 20, "memoryWindow": 50}},
    "channels": {
        "whatsapp": {"enabled": False, "bridgeUrl": "ws://localhost:3001", "bridgeToken": "",
                     "allowFrom": []},
        "telegram": {"enabled": True, "token": "123456:ABC-DEF", "allowFrom": ["987654321"],
                     "proxy": None, "replyToMessage": False},
        "discord": {"enabled": False, "token": "", "allowFrom": [],
                    "gatewayUrl": "wss://gateway.discord.gg/?v=10&encoding=json", "intents": 37377},
        "feishu": {"enabled": False, "appId": "", "appSecret": "", "encryptKey": "",
                   "verificationToken": "", "allowFrom": []},
        "mochat": {"enabled": False, "baseUrl": "https://mochat.io", "socketUrl": "",
                   "socketPath": "/socket.io", "socketDisableMsgpack": False,
                   "socketReconnectDelayMs": 1000, "socketMaxReconnectDelayMs": 10000,
                   "socketConnectTimeoutMs": 10000, "refreshIntervalMs": 30000,
                   "watchTimeoutMs": 25000, "watchLimit": 100, "retryDelayMs": 500,
                   "maxRetryAttempts": 0, "clawToken": "", "agentUserId": "", "sessions": [],
                   "panels": [], "allowFrom": [], "mention": {"requireInGroups": False},
                   "groups": {}, "replyDelayMode": "non-mention", "replyDelayMs": 120000},
        "dingtalk": {"enabled": False, "clientId": "", "clientSecret": "", "allowFrom": []},
        "email": {"enabled": False, "consentGranted": False, "imapHost": "", "imapPort": 993,
                  "imapUsername": "", "imapPassword": "", "imapMailbox": "INBOX",
                  "imapUseSsl": True, "smtpHost": "", "smtpPort": 587, "smtpUsername": "",
                  "smtpPassword": "", "smtpUseTls": True, "smtpUseSsl": False, "fromAddress": "",
                  "autoReplyEnabled": True, "pollIntervalSeconds": 30, "markSeen": False,
                  "maxBodyChars": 12000, "subjectPrefix": "Re: ", "allowFrom": []},
        "slack": {"enabled": False, "mode": "socket", "webhookPath": "/slack/events",
                  "botToken": "", "appToken": "", "userTokenReadOnly": True,
                  "replyInThread": True, "reactEmoji": "eyes", "groupPolicy": "mention",
                  "groupAllowFrom": [], "dm": {"enabled": True, "policy": "open", "allowFrom": []}},
        "qq": {"enabled": False, "appId": "", "secret": "", "allowFrom": []},
    },
    "providers": {
        "custom": _provider(), "anthropic": _provider(), "openai": _provider(),
        "openrouter": _provider("sk-or-v1-abc"), "deepseek": _provider(), "groq": _provider(),
        "zhipu": _provider(), "dashscope": _provider(),
        "vllm": _provider("dummy", "http://localhost:8000/v1"), "gemini": _provider(),
        "moonshot": _provider(), "minimax": _provider(), "aihubmix": _provider(),
        "siliconflow": _provider(), "volcengine": _provider(), "openaiCodex": _provider(),
        "githubCopilot": _provider()},
    "gateway": {"host": "0.0.0.0", "port": 18790},
    "tools": {
        "web": {"search": {"apiKey": "BSA-key", "maxResults": 5}},
        "exec": {"timeout": 60},
        "restrictToWorkspace": True,
        "mcpServers": {"fs": {"command": "npx", "args": ["-y", "server-fs"], "env": {},
                              "url": "", "headers": {}}}},
}
FEB_IGNORED = {
    "channels.telegram.replyToMessage", "channels.slack.mode", "channels.slack.webhookPath",
    "channels.slack.userTokenReadOnly", "channels.mochat.mention", "channels.mochat.groups",
    "providers.siliconflow", "providers.volcengine", "providers.openaiCodex",
    "providers.githubCopilot"} | {
    f"channels.mochat.{k}" for k in (
        "socketReconnectDelayMs", "socketMaxReconnectDelayMs",
        "socketConnectTimeoutMs", "refreshIntervalMs", "watchTimeoutMs", "watchLimit",
        "retryDelayMs", "maxRetryAttempts")}

# What the schema gained up to March 2026, and what the nanoclaw fork's own schema added.
LATER = {
    "agents": {"defaults": {"provider": "auto", "reasoningEffort": None,
                            "contextWindowTokens": 65536, "subagentModel": None,
                            "timezone": "Europe/Paris"}},
    "channels": {"sendProgress": True, "sendToolHints": False, "sendMaxRetries": 3,
                 "discord": {"groupPolicy": "mention"}, "feishu": {"reactEmoji": "THUMBSUP"},
                 "slack": {"allowFrom": ["U1"]},
                 "matrix": {"enabled": False, "homeserver": "https://matrix.org",
                            "accessToken": "", "userId": "", "deviceId": "", "e2eeEnabled": True,
                            "syncStopGraceSeconds": 2, "maxMediaBytes": 20971520,
                            "allowFrom": [], "groupPolicy": "open", "groupAllowFrom": [],
                            "allowRoomMentions": False}},
    "providers": {p: _provider() for p in (
        "kilo", "dashscopeCodingPlan", "azureOpenai", "ollama", "ovms", "mistral", "stepfun",
        "volcengineCodingPlan", "byteplus", "byteplusCodingPlan")},
    "gateway": {"heartbeat": {"enabled": True, "intervalS": 1800, "keepRecentMessages": 8}},
    "tools": {"web": {"proxy": None, "search": {"provider": "brave", "baseUrl": ""}},
              "exec": {"pathAppend": ""}, "ssrfWhitelist": [],
              "mcpServers": {"fs": {"type": None, "toolTimeout": 45, "enabledTools": ["read"]}}},
    "audio": {"tts": {"provider": "edge_tts", "voice": "en-US-ChristopherNeural", "speed": 1.0}},
    "api": {"host": "127.0.0.1", "port": 8900, "timeout": 120.0},
    # luthebao/nanoclaw
    "heartbeat": {"intervalS": 300, "enabled": True},
    "daemon": {"envPassthrough": []},
    "mcpServers": {},
}


def _merge(a, b):
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _ignored_warnings(caplog):
    """The ignored keys, each as 'key (line N)', from the one combined warning."""
    msgs = [r.getMessage() for r in caplog.records if "are not used by nanoclaw" in r.getMessage()]
    assert len(msgs) <= 1, "one warning for all ignored keys"
    if not msgs:
        return []
    head, _, keys = msgs[0].partition(" and were ignored: ")
    count = int(head.split(": ")[1].split(" ")[0])
    entries = [k.strip() for k in keys.split(", ")]
    assert count == len(entries)
    return entries


def _write(home, data):
    (home / "config.json").write_text(json.dumps(data, indent=2))


def test_full_onboard_config_json_loads_and_values_are_applied(home, caplog):
    _write(home, ONBOARD_FEB)
    with caplog.at_level(logging.WARNING, logger="lib.config"):
        cfg = load_config()
    assert cfg.path == home / "config.json"
    t = cfg.channels.telegram
    assert t.enabled is True and t.token == "123456:ABC-DEF" and t.allow_from == ["987654321"]
    assert t.proxy == ""                                           # null: the default
    assert cfg.providers.openrouter.api_key == "sk-or-v1-abc"
    assert cfg.providers.openrouter.api_base == "" and cfg.providers.openrouter.extra_headers == {}
    assert cfg.providers.vllm.api_base == "http://localhost:8000/v1"
    assert cfg.tools.restrict_to_workspace is True
    assert cfg.tools.web.search.api_key == "BSA-key" and cfg.tools.exec.timeout == 60
    assert cfg.agents.defaults.memory_window == 50 and cfg.agents.defaults.temperature == 0.7
    assert cfg.channels.discord.gateway_url == "wss://gateway.discord.gg/?v=10&encoding=json"
    assert cfg.channels.slack.dm.policy == "open" and cfg.channels.mochat.reply_delay_ms == 120000
    assert cfg.channels.mochat.socket_disable_msgpack is False      # read, not ignored
    assert cfg.channels.email.mark_seen is False
    assert cfg.channels.whatsapp.bridge_url == "ws://localhost:3001"
    fs = cfg.tools.mcp_servers["fs"]                   # SPEC §12: tools.mcpServers loads as is
    assert (fs.command, fs.args, fs.url, fs.tool_timeout, fs.enabled_tools) == \
        ("npx", ["-y", "server-fs"], "", 30, ["*"])


def test_each_ignored_key_is_one_warning_naming_it_and_its_line(home, caplog):
    _write(home, ONBOARD_FEB)
    with caplog.at_level(logging.WARNING, logger="lib.config"):
        load_config()
    warned = _ignored_warnings(caplog)
    assert len(warned) == len(FEB_IGNORED)          # a section (providers.siliconflow) is one warning
    assert {w.split(" ")[0] for w in warned} == FEB_IGNORED
    assert any(r.getMessage().startswith(str(home / "config.json") + ": ") for r in caplog.records)
    text = (home / "config.json").read_text().splitlines()
    line = next(i for i, s in enumerate(text, 1) if '"webhookPath"' in s)
    assert any(w == f"channels.slack.webhookPath (line {line})"
               for w in warned)


def test_later_schema_and_the_fork_s_keys_load_too(home, caplog):
    _write(home, _merge(ONBOARD_FEB, LATER))
    with caplog.at_level(logging.WARNING, logger="lib.config"):
        cfg = load_config()
    assert cfg.agents.defaults.timezone == "Europe/Paris" and cfg.agents.defaults.provider == "auto"
    assert cfg.channels.slack.allow_from == ["U1"]
    assert cfg.heartbeat.interval_s == 300                 # the fork's top-level heartbeat is ours
    fs = cfg.tools.mcp_servers["fs"]
    assert (fs.type, fs.tool_timeout, fs.enabled_tools) == ("", 45, ["read"])
    warned = " ".join(_ignored_warnings(caplog))
    for key in ("channels.matrix ", "providers.kilo ", "audio ",
                "tools.web.proxy ", "channels.sendProgress ", "agents.defaults.reasoningEffort "):
        assert key in warned
    assert "e2eeEnabled" not in warned and "keepRecentMessages" not in warned   # not descended into


def test_ignored_keys_in_snake_case_yaml_too(home, caplog):
    (home / "config.yaml").write_text("channels:\n  slack:\n    webhook_path: /x\n"
                                      "tools:\n  ssrf_whitelist: [10.0.0.1]\n")
    with caplog.at_level(logging.WARNING, logger="lib.config"):
        load_config()
    assert len(_ignored_warnings(caplog)) == 2


def _error(home, data) -> str:
    _write(home, data)
    with pytest.raises(ConfigError) as e:
        load_config()
    return str(e.value)


def test_a_typo_in_a_real_key_still_fails_with_a_suggestion(home):
    data = copy.deepcopy(ONBOARD_FEB)
    data["channels"]["telegram"]["alowFrom"] = data["channels"]["telegram"].pop("allowFrom")
    msg = _error(home, data)
    assert "unknown key channels.telegram.alowFrom" in msg and "did you mean allow_from?" in msg


@pytest.mark.parametrize("path, key", [
    (("tools",), "restrictToWorkspce"),          # a real key, misspelt
    (("channels", "slack"), "webhookPth"),       # an ignored key, misspelt
    (("providers",), "openruter"),               # a provider name, misspelt
    (("channels", "telegram"), "mode"),          # an ignored key, in the wrong place
    (("channels",), "matrx"),
])
def test_only_the_exact_legacy_paths_are_ignored(home, path, key):
    data = copy.deepcopy(ONBOARD_FEB)
    node = data
    for p in path:
        node = node[p]
    node[key] = "x"
    assert f"unknown key {'.'.join(path + (key,))}" in _error(home, data)


def test_the_table_names_no_key_nanoclaw_uses(home):
    cfg = load_config()
    for dotted in LEGACY_IGNORED:
        assert dotted == snake(dotted)
        node = cfg
        *parents, last = dotted.split(".")
        for p in parents:
            node = getattr(node, p)
        assert not hasattr(node, last), dotted


def test_settings_the_original_kept_elsewhere_are_moved_not_dropped(home):
    _write(home, {"tools": {"exec": {"restrictToWorkspace": True, "enable": False}},
                  "gateway": {"heartbeat": {"enabled": False, "intervalS": 600}}})
    cfg = load_config()
    assert cfg.tools.restrict_to_workspace is True          # a sandbox asked for stays on
    assert cfg.heartbeat.enabled is False and cfg.heartbeat.interval_s == 600
    from lib.agent.loop import agent_tools
    assert "exec" not in agent_tools(cfg).tools   # no shell when disabled


def test_the_new_place_wins_over_the_old_one(home):
    _write(home, {"tools": {"restrictToWorkspace": False, "exec": {"restrictToWorkspace": True}}})
    assert load_config().tools.restrict_to_workspace is False
