"""The original project's config (HKUDS/nanobot's config.json and its forks) loads unchanged:
the keys it wrote that mean nothing here are skipped with one warning, and the settings it kept
in other places are moved to where nanoclaw reads them."""
from lib.fields import snake

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
        "socket_reconnect_delay_ms", "socket_max_reconnect_delay_ms",
        "socket_connect_timeout_ms", "refresh_interval_ms", "watch_timeout_ms", "watch_limit",
        "retry_delay_ms", "max_retry_attempts", "mention", "groups")),
    "tools.ssrf_whitelist", "tools.web.proxy", "tools.web.search.provider",
    "tools.web.search.base_url", "tools.exec.path_append",
}


# Settings the original project kept elsewhere: (old path, new path), snake_case.
MOVED = ((("tools", "exec", "restrict_to_workspace"), ("tools", "restrict_to_workspace")),
         (("gateway", "heartbeat"), ("heartbeat",)))


def migrate(data):
    """Move old-place settings to where nanoclaw reads them, unless already set there. Each new
    place's section exists: it is the root, or the section the old place was found in."""
    for old, new in MOVED:
        src, dest = _section(data, old[:-1]), _section(data, new[:-1])
        if (key := _key(src, old[-1])) is not None:
            value = src.pop(key)
            if dest is not None and _key(dest, new[-1]) is None:
                dest[new[-1]] = value
    return data


def _section(d, keys):
    for k in keys:
        d = d[found] if (found := _key(d, k)) is not None else None
    return d if isinstance(d, dict) else None


def _key(d, name: str):
    """The key of `d` that means `name` in any spelling (camelCase too), or None."""
    return next((k for k in d if snake(k) == name), None) if isinstance(d, dict) else None
