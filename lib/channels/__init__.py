"""Chat channels: their settings, the table of them, and who may talk to them. Each channel lives
in its own module, imported only when enabled (its SDK may be heavy)."""
import importlib
import os
from typing import NamedTuple

from lib.errors import ConfigError
from lib.fields import setting, settings

# --- the settings of each channel: credentials as in the original README, plus where the traffic goes ---

@settings
class Telegram:
    enabled: bool = False
    token: str = ""
    allow_from: list[str] = setting([])
    api_base: str = "https://api.telegram.org"
    proxy: str = ""
    groups: bool = False         # answer in groups (when @mentioned or replied to)


@settings
class SlackDM:
    enabled: bool = True
    policy: str = setting("open", "open", "allowlist")
    allow_from: list[str] = setting([])


@settings
class Slack:
    enabled: bool = False
    bot_token: str = ""
    app_token: str = ""
    allow_from: list[str] = setting([])
    api_base: str = "https://slack.com/api/"
    group_policy: str = setting("mention", "mention", "open", "allowlist")
    group_allow_from: list[str] = setting([])
    reply_in_thread: bool = True
    react_emoji: str = "eyes"
    dm: SlackDM = setting(SlackDM())


@settings
class Discord:
    enabled: bool = False
    token: str = ""
    allow_from: list[str] = setting([])
    api_base: str = "https://discord.com/api/v10"
    gateway_url: str = ""
    intents: int = 37377


@settings
class WhatsApp:
    enabled: bool = False
    bridge_url: str = "ws://127.0.0.1:3001"
    bridge_token: str = ""
    allow_from: list[str] = setting([])
    start_bridge: bool = True      # the gateway runs bridge/index.js itself


@settings
class Feishu:
    enabled: bool = False
    app_id: str = ""
    app_secret: str = ""
    encrypt_key: str = ""
    verification_token: str = ""
    allow_from: list[str] = setting([])
    domain: str = "https://open.feishu.cn"
    react_emoji: str = "OnIt"   # the "working on it" reaction (a Feishu emoji_type); "" for none


@settings
class DingTalk:
    enabled: bool = False
    client_id: str = ""
    client_secret: str = ""
    allow_from: list[str] = setting([])
    api_base: str = "https://api.dingtalk.com"


@settings
class QQ:
    enabled: bool = False
    app_id: str = ""
    secret: str = ""
    allow_from: list[str] = setting([])
    api_base: str = "https://api.sgroup.qq.com"
    token_url: str = "https://bots.qq.com/app/getAppAccessToken"


@settings
class Mochat:
    enabled: bool = False
    base_url: str = "https://mochat.io"
    socket_url: str = ""         # empty: base_url
    socket_path: str = "/socket.io"
    socket_disable_msgpack: bool = False    # true: Socket.IO packets as JSON text, not msgpack
    claw_token: str = ""
    agent_user_id: str = ""
    sessions: list[str] = setting([])
    panels: list[str] = setting([])
    allow_from: list[str] = setting([])
    reply_delay_mode: str = setting("non-mention", "off", "non-mention")
    reply_delay_ms: int = 120000


@settings
class Email:
    enabled: bool = False
    consent_granted: bool = False
    imap_host: str = ""
    imap_port: int = setting(993, low=1, high=65535)
    imap_username: str = ""
    imap_password: str = ""
    imap_mailbox: str = "INBOX"
    imap_use_ssl: bool = True
    smtp_host: str = ""
    smtp_port: int = setting(587, low=1, high=65535)
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_use_tls: bool = True
    smtp_use_ssl: bool = False
    from_address: str = ""
    ca_file: str = ""
    auto_reply_enabled: bool = True
    poll_interval_seconds: int = setting(30, low=1)
    mark_seen: bool = True       # false: leave mail unread on the server
    max_body_chars: int = 12000
    subject_prefix: str = "Re: "
    allow_from: list[str] = setting([])
    authserv_id: str = ""        # e.g. mx.google.com: only mail its Authentication-Results pass

    def __post_init__(self):     # mail addresses are compared lower-cased (SPEC §8)
        object.__setattr__(self, "allow_from", [a.lower() for a in self.allow_from])


class Spec(NamedTuple):
    settings: type      # the frozen dataclass of channels.<name>
    module: str         # imported only when the channel is enabled
    cls: str
    required: tuple     # settings that must be set before it can start


# The one table of chat channels. A new one is a module (a Channel subclass), its settings class
# above and a row here.
CHANNELS = {
    "telegram": Spec(Telegram, "lib.channels.telegram", "TelegramChannel", ("token",)),
    "slack": Spec(Slack, "lib.channels.slack", "SlackChannel", ("bot_token", "app_token")),
    "discord": Spec(Discord, "lib.channels.discord", "DiscordChannel", ("token",)),
    "whatsapp": Spec(WhatsApp, "lib.channels.whatsapp", "WhatsAppChannel", ("bridge_url",)),
    "feishu": Spec(Feishu, "lib.channels.feishu", "FeishuChannel", ("app_id", "app_secret")),
    "dingtalk": Spec(DingTalk, "lib.channels.dingtalk", "DingTalkChannel", ("client_id", "client_secret")),
    "qq": Spec(QQ, "lib.channels.qq", "QQChannel", ("app_id", "secret")),
    "mochat": Spec(Mochat, "lib.channels.mochat", "MochatChannel", ("claw_token",)),
    "email": Spec(Email, "lib.channels.email", "EmailChannel",
                  ("imap_host", "imap_username", "imap_password", "smtp_host")),    # consent: below
}
# said once at start-up and by `status` while channels.email.authserv_id is empty (SPEC §8)
EMAIL_FORGEABLE = ("channels.email.authserv_id is not set: anyone who knows an allowed address can "
                   "write as it (set it to your mail server's name, e.g. mx.google.com)")
# the modules whose package (in requirements.txt) has another name
PACKAGES = {"websocket": "websocket-client", "telegram": "python-telegram-bot",
            "slack_sdk": "slack-sdk", "yaml": "pyyaml"}


def missing(config, name) -> list[str]:
    settings = getattr(config.channels, name)
    return [f"channels.{name}.{key}" for key in CHANNELS[name].required if not getattr(settings, key)]


def enabled(config, home):
    """The channel objects the config enables. A channel whose code or SDK is missing is an
    error naming what to install (a channel imports its packages when it is made, so that this
    happens at start-up); one with missing credentials is an error naming the keys."""
    out = []
    for name, (_, module, cls, _) in CHANNELS.items():
        if not getattr(config.channels, name).enabled:
            continue
        lack = missing(config, name)
        if lack:
            raise ConfigError(f"{config.path}: channel {name} is enabled but {', '.join(lack)} "
                              "is not set")
        try:
            out.append(getattr(importlib.import_module(module), cls)(config, home))
        except ModuleNotFoundError as e:
            if e.name == module:
                raise ConfigError(f"channel {name} is not available in this version of nanoclaw; "
                                  f"set channels.{name}.enabled: false") from None
            package = PACKAGES.get(str(e.name).split(".")[0], e.name)
            raise ConfigError(f"channel {name} needs the Python package {package}: "
                              ".venv/bin/pip install -r requirements.txt") from None
    return out


def describe(config) -> list[dict]:
    """One row per channel for `channels status`: settings and outbox queue depths."""
    rows = []
    for name in CHANNELS:
        settings = getattr(config.channels, name)
        depth = {}
        for folder in ("new", "cur", "failed"):
            path = config.home / "outbox" / folder
            names = os.listdir(path) if path.is_dir() else []
            depth[folder] = sum(n.startswith(name + ".") and n.endswith(".json") for n in names)
        lack = missing(config, name)
        rows.append({"name": name, "enabled": settings.enabled, "configured": not lack,
                     "missing": ", ".join(k.rsplit(".", 1)[1] for k in lack),
                     "allow_from": ", ".join(settings.allow_from) or "nobody", **depth})
    return rows


def allowed(allow_from: list, sender_id: str, aliases=()) -> bool:
    """Deny by default: [] lets nobody in, ["*"] everyone. The sender id is one opaque string,
    compared whole with each entry (surrounding spaces and a leading @ or + aside), never split;
    so is each of `aliases`, the other names the platform gives that sender (a Telegram username).
    Anything but a list of strings as aliases counts as none."""
    if "*" in allow_from:
        return True
    names = [sender_id, *(aliases if isinstance(aliases, (list, tuple)) else ())]
    ids = {_bare(n) for n in names if isinstance(n, str)} - {""}
    return bool(ids & {_bare(str(a)) for a in allow_from})


def _bare(name: str) -> str:
    return name.strip().lstrip("@+")
