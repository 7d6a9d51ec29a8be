"""config.yaml -> frozen dataclasses.

Keys are snake_case; camelCase spellings are accepted (a config.json written for the original
project loads unchanged). `${VAR}` in strings comes from the environment. Every error names the
key path, the file and the line, and stops start-up (ConfigError -> exit 2).
"""
import dataclasses
import difflib
import logging
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

from lib.errors import ConfigError
from lib.providers.registry import PROVIDERS

log = logging.getLogger(__name__)

# Keys the original project's onboard writes (HKUDS/nanobot and its nanoclaw fork, Feb-Mar 2026)
# that mean nothing here: accepted with a warning, the whole subtree skipped. Snake_case paths.
LEGACY_IGNORED = {
    "mcp_servers", "daemon", "audio", "speech", "api",
    "agents.defaults.reasoning_effort", "agents.defaults.context_window_tokens",
    "agents.defaults.subagent_model", "agents.defaults.context_window",
    "agents.defaults.compaction_threshold", "heartbeat.keep_recent_messages",
    *(f"providers.{p}" for p in (
        "openai_codex", "github_copilot", "siliconflow", "volcengine", "volcengine_coding_plan",
        "byteplus", "byteplus_coding_plan", "dashscope_coding_plan", "kilo", "azure_openai",
        "mistral", "stepfun", "ovms")),
    "channels.send_progress", "channels.send_tool_hints", "channels.send_max_retries",
    "channels.matrix", "channels.telegram.reply_to_message", "channels.discord.group_policy",
    "channels.slack.mode", "channels.slack.webhook_path", "channels.slack.user_token_read_only",
    *(f"channels.mochat.{k}" for k in (
        "socket_disable_msgpack", "socket_reconnect_delay_ms", "socket_max_reconnect_delay_ms",
        "socket_connect_timeout_ms", "refresh_interval_ms", "watch_timeout_ms", "watch_limit",
        "retry_delay_ms", "max_retry_attempts", "mention", "groups")),
    "tools.mcp_servers", "tools.ssrf_whitelist", "tools.web.proxy", "tools.web.search.provider",
    "tools.web.search.base_url", "tools.exec.path_append",
}


def _f(default, *choices, low=None, high=None):
    """A field with a default (copied when mutable) and, optionally, the values it may take:
    one of `choices`, or a number from `low` to `high`."""
    meta = {"choices": choices, "low": low, "high": high}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ProviderConfig:
    api_key: str = ""
    api_base: str = ""
    extra_headers: dict[str, str] = _f({})


Providers = dataclasses.make_dataclass(
    "Providers", [(p.name, ProviderConfig, field(default_factory=ProviderConfig)) for p in PROVIDERS],
    frozen=True)


@dataclass(frozen=True)
class AgentDefaults:
    model: str = "anthropic/claude-opus-4-5"
    provider: str = _f("auto", "auto", *[p.name for p in PROVIDERS])
    max_tokens: int = _f(8192, low=1)
    temperature: float = _f(0.7, low=0.0, high=2.0)
    max_tool_iterations: int = _f(20, low=1)
    memory_window: int = _f(50, low=1)
    consolidate_batch: int = _f(100, low=1)   # messages per consolidation call (SPEC §13)
    turn_timeout_s: int = _f(600, low=1)      # one turn, model calls and tools (SPEC §8)
    workspace: str = ""          # empty: $NANOCLAW_HOME/workspace
    timezone: str = field(default="", metadata={"timezone": True})   # empty: the system's


@dataclass(frozen=True)
class Agents:
    defaults: AgentDefaults = _f(AgentDefaults())


# --- channels: credentials as in the original README, plus where the traffic goes ---

@dataclass(frozen=True)
class Telegram:
    enabled: bool = False
    token: str = ""
    allow_from: list[str] = _f([])
    api_base: str = "https://api.telegram.org"
    proxy: str = ""
    groups: bool = False         # answer in groups (when @mentioned or replied to)


@dataclass(frozen=True)
class SlackDM:
    enabled: bool = True
    policy: str = _f("open", "open", "allowlist")
    allow_from: list[str] = _f([])


@dataclass(frozen=True)
class Slack:
    enabled: bool = False
    bot_token: str = ""
    app_token: str = ""
    allow_from: list[str] = _f([])
    api_base: str = "https://slack.com/api/"
    group_policy: str = _f("mention", "mention", "open", "allowlist")
    group_allow_from: list[str] = _f([])
    reply_in_thread: bool = True
    react_emoji: str = "eyes"
    dm: SlackDM = _f(SlackDM())


@dataclass(frozen=True)
class Discord:
    enabled: bool = False
    token: str = ""
    allow_from: list[str] = _f([])
    api_base: str = "https://discord.com/api/v10"
    gateway_url: str = ""
    intents: int = 37377


@dataclass(frozen=True)
class WhatsApp:
    enabled: bool = False
    bridge_url: str = "ws://127.0.0.1:3001"
    bridge_token: str = ""
    allow_from: list[str] = _f([])
    start_bridge: bool = True      # the gateway runs bridge/index.js itself


@dataclass(frozen=True)
class Feishu:
    enabled: bool = False
    app_id: str = ""
    app_secret: str = ""
    encrypt_key: str = ""
    verification_token: str = ""
    allow_from: list[str] = _f([])
    domain: str = "https://open.feishu.cn"
    react_emoji: str = "OnIt"   # the "working on it" reaction (a Feishu emoji_type); "" for none


@dataclass(frozen=True)
class DingTalk:
    enabled: bool = False
    client_id: str = ""
    client_secret: str = ""
    allow_from: list[str] = _f([])
    api_base: str = "https://api.dingtalk.com"


@dataclass(frozen=True)
class QQ:
    enabled: bool = False
    app_id: str = ""
    secret: str = ""
    allow_from: list[str] = _f([])
    api_base: str = "https://api.sgroup.qq.com"
    token_url: str = "https://bots.qq.com/app/getAppAccessToken"


@dataclass(frozen=True)
class Mochat:
    enabled: bool = False
    base_url: str = "https://mochat.io"
    socket_url: str = ""         # empty: base_url
    socket_path: str = "/socket.io"
    claw_token: str = ""
    agent_user_id: str = ""
    sessions: list[str] = _f([])
    panels: list[str] = _f([])
    allow_from: list[str] = _f([])
    reply_delay_mode: str = _f("non-mention", "off", "non-mention")
    reply_delay_ms: int = 120000


@dataclass(frozen=True)
class Email:
    enabled: bool = False
    consent_granted: bool = False
    imap_host: str = ""
    imap_port: int = _f(993, low=1, high=65535)
    imap_username: str = ""
    imap_password: str = ""
    imap_mailbox: str = "INBOX"
    imap_use_ssl: bool = True
    smtp_host: str = ""
    smtp_port: int = _f(587, low=1, high=65535)
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_use_tls: bool = True
    smtp_use_ssl: bool = False
    from_address: str = ""
    ca_file: str = ""
    auto_reply_enabled: bool = True
    poll_interval_seconds: int = _f(30, low=1)
    mark_seen: bool = True       # false: leave mail unread on the server
    max_body_chars: int = 12000
    subject_prefix: str = "Re: "
    allow_from: list[str] = _f([])
    authserv_id: str = ""        # e.g. mx.google.com: only mail its Authentication-Results pass


@dataclass(frozen=True)
class Channels:
    telegram: Telegram = _f(Telegram())
    slack: Slack = _f(Slack())
    discord: Discord = _f(Discord())
    whatsapp: WhatsApp = _f(WhatsApp())
    feishu: Feishu = _f(Feishu())
    dingtalk: DingTalk = _f(DingTalk())
    qq: QQ = _f(QQ())
    mochat: Mochat = _f(Mochat())
    email: Email = _f(Email())


# --- tools, gateway, heartbeat ---

# A courtesy, not the boundary (the sandbox is, SPEC §8): the usual ways to wipe, format, power
# off or fork-bomb a machine; anything here can be written another way. Repeats are bounded
# ({0,9}, {0,200}) so that no command, however long, makes a search slow.
_WHOLE = r"""['"]?(/|~|\$\{?HOME\}?)/?\*?['"]?(\s|$|[;&|)])"""     # / , /* , ~/ , $HOME itself
# a command word: first, after ; & | ( ` or a wrapper (sudo -n, sh -c ', nohup, systemctl, /sbin/)
_COMMAND = (r"(^|[;&|(`\n]|\b(sudo|doas|env|exec|nohup|nice|time|xargs|systemctl|(ba|da|z)?sh\s+-c)\b"
            r"|/s?bin/)([ \t]+-\S+){0,9}[ \t]*['\"]?")
DENY_PATTERNS = [
    rf"\brm\s+(-\S*\s+){{0,9}}{_WHOLE}", rf"\bfind\s+{_WHOLE}[^;&|\n]{{0,200}}-(delete|exec\s+rm)\b",
    r"""\brmtree\s*\(\s*['"](/|~/?)['"]""", rf"\bch(mod|own|grp)\s+([^\s;&|]+\s+){{0,9}}{_WHOLE}",
    r"\|\s*(sudo(\s+-\S+)*\s+)?(/usr)?(/bin/)?(ba|da|z|k)?sh(\s|$|[;&|)])",     # ... | sh
    r"\b(mkfs|mke2fs|mkswap|wipefs|blkdiscard)\b", r"\bdd\b[^;&|\n]{0,200}\bof=/dev/(?!(null|zero|stdout|stderr)\b)",
    r">\s*/dev/(sd|nvme|mmcblk|hd|vd|xvd|mapper/|dm-|md\d|loop|disk)",
    rf"{_COMMAND}(shutdown|reboot|poweroff|halt)(\s|$|[;&|)`'\"])", r"\b(tel)?init\s+[06]\b",
    r"\bkill\s+(-\S+\s+)*-1\s*($|[;&|)])", r"(?<![^\s;&|])([^\s(){};&|]{1,40})\s*\(\)\s*\{[^}]{0,80}\1\s*\|\s*\1",
    r"\bformat\s+[a-z]:", r"\bdiskpart\b",
]


@dataclass(frozen=True)
class Exec:
    enable: bool = True          # false: no shell tool at all
    timeout: int = _f(60, low=1)
    deny_patterns: list[str] = field(default_factory=lambda: list(DENY_PATTERNS),
                                     metadata={"regex": True})
    sandbox: str = _f("auto", "auto", "bwrap", "off")
    network: bool = True         # false: commands have no network (bwrap --unshare-net)
    expose: list[str] = _f([])   # extra paths visible in the sandbox, read-only ("PATH:rw" to write)
    env: dict[str, str] = _f({})  # variables commands get besides PATH HOME LANG TERM TZ
    max_output: int = _f(10000, low=100)


@dataclass(frozen=True)
class Search:
    api_key: str = ""
    api_base: str = "https://api.search.brave.com/res/v1/web/search"
    max_results: int = _f(5, low=1)


@dataclass(frozen=True)
class Fetch:
    max_chars: int = _f(50000, low=1)
    timeout: int = _f(30, low=1)     # seconds for a whole fetch, however slowly the page drips


@dataclass(frozen=True)
class Web:
    search: Search = _f(Search())
    fetch: Fetch = _f(Fetch())
    allow_hosts: list[str] = _f([])  # hosts, host:port or CIDRs on the owner's network web_fetch may reach


@dataclass(frozen=True)
class CronTools:
    min_interval_s: int = _f(300, low=0)   # the shortest schedule the model may ask for


@dataclass(frozen=True)
class Tools:
    restrict_to_workspace: bool = True
    exec: Exec = _f(Exec())
    web: Web = _f(Web())
    cron: CronTools = _f(CronTools())


@dataclass(frozen=True)
class Gateway:
    host: str = "127.0.0.1"
    port: int = _f(18790, low=0, high=65535)   # 0: no HTTP server
    retention_days: int = _f(7, low=0)
    log_file: str = ""           # empty: stderr (the journal); a relative name: $NANOCLAW_HOME/logs/


@dataclass(frozen=True)
class Heartbeat:
    enabled: bool = True
    interval_s: int = _f(1800, low=1)


@dataclass(frozen=True)
class Config:
    providers: Providers = _f(Providers())
    agents: Agents = _f(Agents())
    channels: Channels = _f(Channels())
    tools: Tools = _f(Tools())
    gateway: Gateway = _f(Gateway())
    heartbeat: Heartbeat = _f(Heartbeat())
    # not keys: where this config came from
    path: Path = field(default=Path("config.yaml"), metadata={"internal": True})
    home: Path = field(default=Path("."), metadata={"internal": True})

    @property
    def workspace(self) -> Path:
        ws = self.agents.defaults.workspace
        return Path(ws).expanduser() if ws else self.home / "workspace"

    def provider(self, name: str) -> ProviderConfig:
        return getattr(self.providers, name)


# --- loading ---

def home_dir() -> Path:
    return Path(os.environ.get("NANOCLAW_HOME") or "~/.nanoclaw").expanduser()


def config_path(explicit: str | None = None) -> Path:
    """The file to read: --config, $NANOCLAW_CONFIG, config.yaml, else an existing config.json."""
    given = explicit or os.environ.get("NANOCLAW_CONFIG")
    if given:
        return Path(given).expanduser()
    yaml_path = home_dir() / "config.yaml"
    json_path = home_dir() / "config.json"
    return json_path if not yaml_path.exists() and json_path.exists() else yaml_path


def load_config(explicit: str | None = None) -> Config:
    path = config_path(explicit)
    data, lines = {}, {}
    if path.exists():
        data, lines = _read(path)
    elif explicit or os.environ.get("NANOCLAW_CONFIG"):
        raise ConfigError(f"{path}: no such config file")
    cfg = _build(Config, _migrate(data), (), lines, path)
    if lines.get("ignored"):
        log.warning("%s: %d setting(s) of the original project are not used by nanoclaw and were "
                    "ignored: %s", path, len(lines["ignored"]), ", ".join(lines["ignored"]))
    return dataclasses.replace(cfg, providers=_env_keys(cfg.providers), path=path, home=home_dir())


def _read(path: Path):
    """Parse YAML (JSON is YAML too) keeping each key's line number."""
    import yaml
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml: 10x faster
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    lines = {}
    if node is None:
        return {}, lines

    def walk(n, p):
        if isinstance(n, yaml.MappingNode):
            out = {}
            for k, v in n.value:
                key = str(k.value)
                lines[p + (key,)] = k.start_mark.line + 1
                out[key] = walk(v, p + (key,))
            return out
        if isinstance(n, yaml.SequenceNode):
            return [walk(v, p + (str(i),)) for i, v in enumerate(n.value)]
        value = loader.construct_object(n)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not n.style:
            return _Number(n.value, value)
        return value

    loader = yaml.SafeLoader("")
    return walk(node, ()), lines


class _Number(str):
    """A YAML number with the text it was written as, so that a string field keeps an id like
    +1234567890 or 0123 exactly as typed, while a number field gets the number."""
    def __new__(cls, raw: str, value):
        self = super().__new__(cls, raw)
        self.value = value
        return self


# Settings the original project kept elsewhere: (old path, new path), snake_case.
MOVED = ((("tools", "exec", "restrict_to_workspace"), ("tools", "restrict_to_workspace")),
         (("gateway", "heartbeat"), ("heartbeat",)))


def _migrate(data):
    """Move old-place settings to where nanoclaw reads them, unless already set there."""
    def parent(d, keys, make=False):
        for k in keys:
            found = next((key for key in d if snake(key) == k), None) if isinstance(d, dict) else None
            if found is None:
                if not make or not isinstance(d, dict):
                    return None
                found = k
                d[k] = {}
            d = d[found]
        return d if isinstance(d, dict) else None

    for old, new in MOVED:
        src = parent(data, old[:-1])
        key = next((k for k in src if snake(k) == old[-1]), None) if src else None
        if key is None:
            continue
        value = src.pop(key)
        dest = parent(data, new[:-1], make=True)
        if dest is not None and not any(snake(k) == new[-1] for k in dest):
            dest[new[-1]] = value
    return data


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower().replace("-", "_")


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _build(cls, data, path, lines, file):
    def fail(msg, at=path):
        line = next((lines[at[:i]] for i in range(len(at), 0, -1) if at[:i] in lines), None)
        where = f" (line {line})" if line else ""
        raise ConfigError(f"{file}: {'.'.join(at) or 'the file'}{where} {msg}")

    if not isinstance(data, dict):
        fail(f"must be a mapping of keys, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in data.items():
        name, at = snake(key), path + (key,)
        if name not in known:
            line = lines.get(at)
            where = ".".join(at) + (f" (line {line})" if line else "")
            if ".".join(map(snake, at)) in LEGACY_IGNORED:
                lines.setdefault("ignored", []).append(where)    # one warning for them all
                continue
            near = difflib.get_close_matches(name, known, 1, 0.6)
            hint = f"; did you mean {near[0]}?" if near else f"; expected one of: {', '.join(known)}"
            raise ConfigError(f"{file}: unknown key {where}{hint}")
        kwargs[name] = _value(hints[name], known[name], value, at, lines, file, fail)
    return cls(**kwargs)


def _value(typ, fld, value, at, lines, file, fail):
    if dataclasses.is_dataclass(typ):
        return _build(typ, {} if value is None else value, at, lines, file)
    origin = typing.get_origin(typ)
    if origin is list:
        if value is None:
            return []
        if not isinstance(value, list):
            fail(f"must be a list, got {_show(value)}", at)
        return [_value(typing.get_args(typ)[0], fld, v, at, lines, file, fail) for v in value]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(v, (str, int)) for v in value.values()):
            fail(f"must be a mapping of names to strings, got {_show(value)}", at)
        return {str(k): _expand(str(v)) for k, v in value.items()}
    if isinstance(value, _Number):
        value = str(value) if typ is str else value.value
    if value is None and fld.default is not dataclasses.MISSING:
        return fld.default      # `api_key:` left empty, or null in a JSON config: the default
    if typ is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)      # ids written as numbers: allow_from: [12345]
    if typ is str and value is False and "off" in fld.metadata.get("choices", ()):
        value = "off"           # YAML reads a bare `off` as false: sandbox: off
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typ is int and isinstance(value, bool) or not isinstance(value, typ):
        fail(f"must be {_TYPE_NAMES.get(typ, typ.__name__)}, got {_show(value)}", at)
    if typ is str:
        value = _expand(value)
    if fld.metadata.get("regex"):
        try:
            re.compile(value)
        except re.error as e:
            fail(f"has a pattern that is not a valid regular expression ({e}): {value!r}", at)
    if fld.metadata.get("timezone") and value:
        from zoneinfo import ZoneInfo
        try:
            ZoneInfo(value)
        except (ValueError, OSError, KeyError, ImportError):    # KeyError: ZoneInfoNotFoundError
            fail(f"is not a time zone name like Europe/Berlin or UTC: {value!r}", at)
    choices = fld.metadata.get("choices")
    if choices and value not in choices:
        fail(f"must be one of {', '.join(choices)}, got {value!r}", at)
    low, high = fld.metadata.get("low"), fld.metadata.get("high")
    if low is not None and not value >= low or high is not None and not value <= high:  # NaN too
        fail(f"must be {f'from {low} to {high}' if high is not None else f'at least {low}'}, "
             f"got {value!r}", at)
    return value


def _expand(s: str) -> str:
    def var(m):
        if m.group(1) not in os.environ:
            log.warning("config uses ${%s}, which is not set; using an empty value", m.group(1))
        return os.environ.get(m.group(1), "")
    return _VAR.sub(var, s)


def _show(value) -> str:
    value = value.value if isinstance(value, _Number) else value
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]


def _env_keys(providers):
    """A provider with no key in the file takes it from its usual environment variable."""
    changes = {}
    for spec in PROVIDERS:
        pc = getattr(providers, spec.name)
        if not pc.api_key and spec.env_key and os.environ.get(spec.env_key):
            changes[spec.name] = dataclasses.replace(pc, api_key=os.environ[spec.env_key])
    return dataclasses.replace(providers, **changes)


def allowed(allow_from: list, sender_id: str) -> bool:
    """Deny by default: [] lets nobody in, ["*"] everyone. A sender id may carry several
    spellings joined by '|' (Telegram's "12345|alice"); any one of them may be listed."""
    if "*" in allow_from:
        return True
    ids = {s.strip().lstrip("@+") for s in str(sender_id).split("|") if s.strip()}
    return bool(ids & {a.strip().lstrip("@+") for a in allow_from})
