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
from dataclasses import field
from pathlib import Path

from lib.channels import CHANNELS
from lib.errors import ConfigError
from lib.fields import setting, settings, snake
from lib.legacy import LEGACY_IGNORED, migrate
from lib.approvals import Approval
from lib.mcp import McpServer
from lib.providers.registry import PROVIDERS
from lib.sandbox import DENY_PATTERNS, Exec  # noqa: F401 (DENY_PATTERNS: for readers)
from lib.usage import Limits, check_config

log = logging.getLogger(__name__)

@settings
class ProviderConfig:
    api_key: str = ""
    api_base: str = ""
    extra_headers: dict[str, str] = setting({})


Providers = dataclasses.make_dataclass(
    "Providers", [(p.name, ProviderConfig, field(default_factory=ProviderConfig)) for p in PROVIDERS],
    frozen=True, eq=False)


@settings
class AgentDefaults:
    model: str = "anthropic/claude-opus-4-5"
    provider: str = setting("auto", "auto", *[p.name for p in PROVIDERS])
    max_tokens: int = setting(8192, low=1)
    temperature: float = setting(0.7, low=0.0, high=2.0)
    max_tool_iterations: int = setting(20, low=1)
    memory_window: int = setting(50, low=1)
    consolidate_batch: int = setting(100, low=1)   # messages per consolidation call (SPEC §13)
    memory_in_groups: bool = False     # group chats see MEMORY.md too (SPEC §13)
    turn_timeout_s: int = setting(600, low=1)      # one turn, model calls and tools (SPEC §8)
    model_timeout_s: int = setting(90, low=1)      # one model call (retried within the turn)
    retry_backoff_s: float = setting(1.0, low=0.0)  # first wait before a retry; doubles each time
    fallback_models: list[str] = setting([])   # tried in order when the model is down (SPEC §10)
    fallback_cooldown_s: int = setting(60, low=0)  # a model that failed 3 times is skipped this long
    prices: dict[str, list[float]] = setting({})   # MODEL: [USD per million input, per million output]
    workspace: str = ""          # empty: $NANOCLAW_HOME/workspace
    timezone: str = field(default="", metadata={"timezone": True})   # empty: the system's


@settings
class Agents:
    defaults: AgentDefaults = setting(AgentDefaults())


Channels = dataclasses.make_dataclass(
    "Channels", [(name, c.settings, field(default_factory=c.settings)) for name, c in CHANNELS.items()],
    frozen=True, eq=False)


# --- tools, gateway, heartbeat ---

@settings
class Search:
    api_key: str = ""
    api_base: str = "https://api.search.brave.com/res/v1/web/search"
    max_results: int = setting(5, low=1)


@settings
class Fetch:
    max_chars: int = setting(50000, low=1)
    timeout: int = setting(30, low=1)     # seconds for a whole fetch, however slowly the page drips


@settings
class Web:
    search: Search = setting(Search())
    fetch: Fetch = setting(Fetch())
    allow_hosts: list[str] = setting([])  # hosts, host:port or CIDRs on the owner's network web_fetch may reach


@settings
class CronTools:
    min_interval_s: int = setting(300, low=0)   # the shortest schedule the model may ask for


@settings
class Tools:
    restrict_to_workspace: bool = True
    approval: Approval = setting(Approval())
    exec: Exec = setting(Exec())
    web: Web = setting(Web())
    cron: CronTools = setting(CronTools())
    mcp_servers: dict[str, McpServer] = setting({})    # name -> server (SPEC §12, lib/mcp.py)


@settings
class Gateway:
    host: str = "127.0.0.1"
    port: int = setting(18790, low=0, high=65535)   # 0: no HTTP server
    token: str = ""              # the web page's and the API's (SPEC §11); onboard makes one
    api_timeout_s: int = setting(300, low=1)    # an API request waits this long for its reply
    retention_days: int = setting(7, low=0)
    log_file: str = ""           # empty: stderr (the journal); a relative name: $NANOCLAW_HOME/logs/
    log_level: str = setting("info", "debug", "info", "warning", "error")   # `gateway --logs` wins
    log_max_mb: float = setting(1.0, low=0.0)   # log_file is rotated at this size (0: never)
    log_backups: int = setting(3, low=1)        # rotated files kept: log_file.1 … .N


@settings
class Heartbeat:
    enabled: bool = True
    interval_s: int = setting(1800, low=1)
    quiet_hours: str = ""        # e.g. 23:00-07:00: heartbeat and cron wait until the hours end


@settings
class Config:
    providers: Providers = setting(Providers())
    agents: Agents = setting(Agents())
    channels: Channels = setting(Channels())
    tools: Tools = setting(Tools())
    gateway: Gateway = setting(Gateway())
    heartbeat: Heartbeat = setting(Heartbeat())
    limits: Limits = setting(Limits())
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
    if given := explicit or os.environ.get("NANOCLAW_CONFIG"):
        return Path(given).expanduser()
    yaml_path, json_path = home_dir() / "config.yaml", home_dir() / "config.json"
    if yaml_path.exists() and json_path.exists():      # the original project's docs say .json
        log.warning("%s is not read: %s is (move what you need into it)", json_path, yaml_path)
    return json_path if not yaml_path.exists() and json_path.exists() else yaml_path


def load_config(explicit: str | None = None) -> Config:
    path = config_path(explicit)
    if not path.exists() and (explicit or os.environ.get("NANOCLAW_CONFIG")):
        raise ConfigError(f"{path}: no such config file")
    data, lines = _read(path) if path.exists() else ({}, {})
    cfg = _build(Config, migrate(data), (), lines, path)
    if lines.get("ignored"):
        log.warning("%s: %d setting(s) of the original project are not used by nanoclaw and were "
                    "ignored: %s", path, len(lines["ignored"]), ", ".join(lines["ignored"]))
    cfg = dataclasses.replace(cfg, providers=_env_keys(cfg.providers), path=path, home=home_dir())
    check_config(cfg, lambda at: _line(lines, at))     # SPEC §10's settings, checked together
    return cfg


def _line(lines, at: tuple) -> str:
    """" (line N)" of the key path `at`, however the file spells its keys (camelCase too)."""
    line = next((n for k, n in lines.items() if isinstance(k, tuple)
                 and tuple(map(snake, k)) == tuple(map(snake, at))), None)
    return f" (line {line})" if line else ""


def _read(path: Path):
    """Parse YAML (JSON is YAML too) keeping each key's line number."""
    import yaml
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml: 10x faster
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    except yaml.YAMLError as e:
        context = getattr(e, "context", None) or ""     # "while scanning a quoted scalar": the
        mark = "block" not in context and getattr(e, "context_mark", None)  # line it starts on
        mark = mark or getattr(e, "problem_mark", None)  # (the problem is found lines later)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)} {context}"
                          .rstrip()) from None
    lines, budget = {}, [MAX_VALUES]

    def walk(n, p):
        budget[0] -= 1          # aliases can repeat each other into billions of values
        if budget[0] < 0:
            raise ConfigError(f"{path}: more than {MAX_VALUES} values (YAML aliases that repeat "
                              "each other?)")
        if isinstance(n, yaml.MappingNode):
            out = {}
            for k, v in n.value:
                key = str(k.value)
                if key in out:          # YAML keeps the last silently; a typo'd copy is a mistake
                    raise ConfigError(f"{path}: {'.'.join(p + (key,))} is set twice (lines "
                                      f"{lines[p + (key,)]} and {k.start_mark.line + 1})")
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
    try:
        return (walk(node, ()) if node is not None else {}), lines    # None: an empty file
    except RecursionError:
        raise ConfigError(f"{path}: nested too deep, or an alias (*name) inside what it names") from None


class _Number(str):
    """A YAML number with the text it was written as, so that a string field keeps an id like
    +1234567890 or 0123 exactly as typed, while a number field gets the number."""
    def __new__(cls, raw: str, value):
        self = super().__new__(cls, raw)
        self.value = value
        return self


MAX_VALUES = 100_000        # in one config file, aliases expanded
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
            where = ".".join(at) + (f" (line {lines[at]})" if at in lines else "")
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
    if origin in (list, dict) and value is None:
        return origin()
    if origin is list:
        if not isinstance(value, list):
            fail(f"must be a list, got {_show(value)}", at)
        return [_value(typing.get_args(typ)[0], fld, v, at, lines, file, fail) for v in value]
    if origin is dict:
        item = typing.get_args(typ)[1]      # str, or the settings of a named thing (McpServer)
        if not isinstance(value, dict):
            fail(f"must be a mapping (name: value), got {_show(value)}", at)
        return {str(k): _value(item, fld, v, at + (str(k),), lines, file, fail) for k, v in value.items()}
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
