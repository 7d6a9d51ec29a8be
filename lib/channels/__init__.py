"""Chat channels. Each lives in its own module, imported only when enabled (its SDK may be heavy)."""
import importlib
import os

from lib.errors import ConfigError

# name -> (module, class, credentials that must be set)
CHANNELS = {
    "telegram": ("lib.channels.telegram", "TelegramChannel", ("token",)),
    "slack": ("lib.channels.slack", "SlackChannel", ("bot_token", "app_token")),
    "discord": ("lib.channels.discord", "DiscordChannel", ("token",)),
    "whatsapp": ("lib.channels.whatsapp", "WhatsAppChannel", ("bridge_url",)),
    "feishu": ("lib.channels.feishu", "FeishuChannel", ("app_id", "app_secret")),
    "dingtalk": ("lib.channels.dingtalk", "DingTalkChannel", ("client_id", "client_secret")),
    "qq": ("lib.channels.qq", "QQChannel", ("app_id", "secret")),
    "mochat": ("lib.channels.mochat", "MochatChannel", ("claw_token",)),
    "email": ("lib.channels.email", "EmailChannel",
              ("consent_granted", "imap_host", "imap_username", "imap_password", "smtp_host")),
}
# said once at start-up and by `status` while channels.email.authserv_id is empty (SPEC §8)
EMAIL_FORGEABLE = ("channels.email.authserv_id is not set: anyone who knows an allowed address can "
                   "write as it (set it to your mail server's name, e.g. mx.google.com)")
# the modules whose package (in requirements.txt) has another name
PACKAGES = {"websocket": "websocket-client", "telegram": "python-telegram-bot",
            "slack_sdk": "slack-sdk", "yaml": "pyyaml"}


def missing(config, name) -> list[str]:
    settings = getattr(config.channels, name)
    return [f"channels.{name}.{key}" for key in CHANNELS[name][2] if not getattr(settings, key)]


def enabled(config, home):
    """The channel objects the config enables. A channel whose code or SDK is missing is an
    error naming what to install (a channel imports its packages when it is made, so that this
    happens at start-up); one with missing credentials is an error naming the keys."""
    out = []
    for name, (module, cls, _) in CHANNELS.items():
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
