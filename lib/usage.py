"""Usage, limits and quiet (SPEC §10). Every model call passes through `Metered`: it refuses the
call at a daily limit, tries the fallback models when one is down, and appends one line per call
to usage/YYYY-MM-DD.jsonl (the day as agents.defaults.timezone counts it). The heartbeat and cron
ask `over_limit` and `quiet_until` before they wake the model; `usage` and `status` read the files.
"""
import json
import logging
import os
import re
import time
from contextlib import suppress
from datetime import datetime, timedelta, timezone
from pathlib import Path

from lib.errors import ConfigError, LimitReached, ProviderDown, ProviderError
from lib.fields import setting, settings

log = logging.getLogger(__name__)
DOWN_FILE = "state/model_down.json"
GIVE_UP_S = 24 * 3600   # a message no model answered for this long is answered with regret
FAILS_TO_SKIP = 3       # failures in a row before a model is skipped for fallback_cooldown_s
WARN_AT = 0.8           # of a limit: the owner is told once a day
_HOURS = re.compile(r"(\d{1,2}):(\d\d)\s*-\s*(\d{1,2}):(\d\d)")


@settings
class Limits:
    daily_tokens: int = setting(0, low=0)      # 0: no limit
    daily_usd: float = setting(0.0, low=0.0)


def _zone(config):
    from lib.cron import zone
    return zone(config.agents.defaults.timezone)


def outage(error, since: float, key: str) -> tuple[str, str]:
    """While no model answers (SPEC §10): ("", the notice its chat gets once) while the message
    `key`, here since `since`, waits; (an apology as its reply, "") after GIVE_UP_S."""
    if time.time() - since < GIVE_UP_S:
        return "", (f"The model is not answering right now ({error}). Your message is kept, and I "
                    "will answer it as soon as the model is back.")
    log.error("%s: given up after %d hours without an answer from the model (%s)",
              key, GIVE_UP_S // 3600, error)
    return (f"Sorry: the model has not answered for {GIVE_UP_S // 3600} hours ({error}), so I gave "
            "up on this message. Send it again when you like."), ""


def source(msg: dict) -> str:
    """Who a turn is for, as the ledger names it: heartbeat, cron, subagent, api or chat."""
    kind = (msg.get("metadata") or {}).get("kind")
    if msg["channel"] == "system" and kind in ("heartbeat", "cron", "subagent"):
        return kind
    return "api" if msg["channel"] == "api" else "chat"


def today(config, tz=None) -> str:
    return datetime.now(tz or _zone(config)).strftime("%Y-%m-%d")


def read_day(home, day: str) -> list[dict]:
    """The ledger lines of one day; a torn or foreign line is skipped."""
    try:
        with open(home / "usage" / f"{day}.jsonl", "rb") as f:
            return [r for r in map(_record, f) if r]
    except FileNotFoundError:
        return []


def _record(raw: bytes) -> dict | None:
    try:
        rec = json.loads(raw)
        return rec if isinstance(rec, dict) else None
    except ValueError:
        return None


def number(value, kind=int):
    """A figure of a ledger line; a mangled (hand-edited) one counts as none."""
    try:
        return kind(value or 0)
    except (TypeError, ValueError):
        return kind(0)


def tokens(rec: dict) -> int:
    return number(rec.get("prompt_tokens")) + number(rec.get("completion_tokens"))


class Ledger:
    """Appends lines to today's file and keeps today's totals, reading only what was appended
    since it last looked (by this process or any other: `agent -m` beside the gateway)."""

    def __init__(self, config):
        self.config, self.dir = config, config.home / "usage"
        self._day, self._offset, self.tokens, self.usd = "", 0, 0, 0.0

    def day(self) -> str:
        return today(self.config)       # the zone as configured now: a reload may change it

    def append(self, line: dict):
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / f"{self.day()}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:        # one write of one line: lines of two processes never interleave
            os.write(fd, (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))
        finally:
            os.close(fd)

    def totals(self) -> tuple[int, float]:
        """Today's (tokens, USD)."""
        day = self.day()
        if day != self._day:
            self._day, self._offset, self.tokens, self.usd = day, 0, 0, 0.0
        try:
            with open(self.dir / f"{day}.jsonl", "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return self.tokens, self.usd
        whole = chunk[:chunk.rfind(b"\n") + 1]      # a line still being written waits
        for rec in filter(None, map(_record, whole.splitlines())):
            self.tokens += tokens(rec)
            self.usd += number(rec.get("cost_usd"), float)
        self._offset += len(whole)
        return self.tokens, self.usd


def over_limit(config, ledger: Ledger | None = None) -> str:
    """Why no model call may be made now ("" when one may): a daily limit is reached."""
    limits = config.limits
    if not (limits.daily_tokens or limits.daily_usd):
        return ""
    used_tokens, used_usd = (ledger or Ledger(config)).totals()
    for used, cap, key, show in ((used_tokens, limits.daily_tokens, "daily_tokens", "{:,.0f} tokens"),
                                 (used_usd, limits.daily_usd, "daily_usd", "${:,.2f}")):
        if cap and used >= cap:
            return (f"Today's limit is used up ({show.format(used)} of limits.{key} "
                    f"{show.format(cap)}). I can answer again after midnight; to go on now, "
                    f"raise limits.{key} in config.yaml.")
    return ""


def _hours(config, where=lambda at: "") -> tuple[int, int] | None:
    """heartbeat.quiet_hours as (start, end) minutes of the day; None when it is not set."""
    text = config.heartbeat.quiet_hours.strip()
    if not text:
        return None
    m = _HOURS.fullmatch(text)
    start, end = (int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])) if m else (0, 0)
    if not m or start == end or max(start, end) >= 24 * 60 or int(m[2]) > 59 or int(m[4]) > 59:
        at = ("heartbeat", "quiet_hours")
        raise ConfigError(f"{config.path}: {'.'.join(at)}{where(at)} must be HH:MM-HH:MM, such "
                          f"as 23:00-07:00, got {text!r}")
    return start, end


def quiet_until(config, now: datetime | None = None) -> datetime | None:
    """When the quiet hours (heartbeat.quiet_hours) that `now` falls in end; None outside them."""
    if not (hours := _hours(config)):
        return None
    start, end = hours
    tz = _zone(config)
    local = (now or datetime.now(timezone.utc)).astimezone(tz)
    minute = local.hour * 60 + local.minute
    if not (start <= minute < end if start < end else minute >= start or minute < end):
        return None
    day = local.date() + timedelta(days=1 if start > end and minute >= start else 0)
    return datetime(day.year, day.month, day.day, end // 60, end % 60, tzinfo=tz)


def quiet_held(config, inbox: Path) -> set[str]:
    """The names in inbox/new/ that wait for the end of the quiet hours: what cron or the
    heartbeat posted on schedule; not a job run by hand, nor one of their turns going on after
    the owner answered (they are awake). Empty outside quiet hours."""
    if not quiet_until(config):
        return set()
    from lib import maildir
    from lib.mail import read_message
    held = set()
    for name in maildir.waiting(inbox):
        with suppress(OSError, ValueError, AttributeError):
            msg = read_message(inbox / "new" / name)
            meta = msg.get("metadata") or {}
            answered = meta.get("resume") and meta.get("verdict") in ("yes", "no")
            if msg["channel"] == "system" and meta.get("kind") in ("cron", "heartbeat") \
                    and not meta.get("by_hand") and not answered:
                held.add(name)
    return held


def owner(config) -> tuple[str, str] | None:
    """(channel, chat_id) of tools.approval.owner, else the last chat someone wrote from."""
    if config.tools.approval.owner:
        channel, _, chat_id = config.tools.approval.owner.partition(":")
        return channel, chat_id
    try:
        last = json.loads((config.home / "state" / "last_chat.json").read_text())
        return last["channel"], str(last["chat_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_config(config, where=lambda at: ""):
    """ConfigError for settings that would make a limit leak, a schedule fail or proactive
    messages go nowhere. load_config runs it; `where(key path)` is " (line N)" there."""
    def fail(at: tuple, msg: str):
        raise ConfigError(f"{config.path}: {'.'.join(at)}{where(at)} {msg}")

    _hours(config, where)
    d = config.agents.defaults
    for model, price in d.prices.items():
        if len(price) != 2 or min(price) < 0:
            fail(("agents", "defaults", "prices", model), "must be [USD per million input "
                 f"tokens, per million output], got {price}")
    unpriced = [m for m in (d.model, *d.fallback_models) if m not in d.prices]
    if config.limits.daily_usd and unpriced:
        fail(("limits", "daily_usd"), f"is set, but {', '.join(unpriced)} has no price in "
             "agents.defaults.prices (give [0, 0] for a free one)")
    if owner := config.tools.approval.owner:
        from lib.mail import CHANNELS       # only when it is set: an import less at start-up
        channel, colon, chat_id = owner.partition(":")
        names = [c for c in CHANNELS if c != "system"]      # a system chat's replies are logged
        if not colon or not chat_id.strip():
            fail(("tools", "approval", "owner"), "must be channel:chat_id, such as "
                 f"telegram:123456789, got {owner!r}")
        if channel not in names:
            what = "channel system, whose replies are only logged" if channel == "system" \
                else f"an unknown channel {channel!r}"
            fail(("tools", "approval", "owner"), f"has {what}; expected one of {', '.join(names)}")


def make_models(config) -> list:
    """[(model, provider name, provider)]: the configured model, then agents.defaults.
    fallback_models. With fallbacks a failing model is not retried: the next one is asked."""
    from lib.providers.client import make_provider
    from lib.providers.registry import BY_NAME
    d = config.agents.defaults
    retries = 0 if d.fallback_models else 3
    models = [(d.model, make_provider(config, retries=retries))]
    for name in d.fallback_models:      # provider/model, or a bare model name for auto
        first, _, rest = name.partition("/")
        named = first in BY_NAME and rest
        models.append((name, make_provider(config, rest if named else name,
                                           first if named else "auto", retries=0)))
    return [(name, p.r.spec.name, p) for name, p in models]


class Metered:
    """A Provider that checks the limits, falls back, and writes the ledger (SPEC §10)."""

    def __init__(self, config, models: list | None = None):
        self.ledger = Ledger(config)        # it keeps the config: see `config`
        self.models = models if models is not None else make_models(config)
        self._fails: dict[str, list] = {        # model -> [failures in a row, skipped until]
            m: [FAILS_TO_SKIP, until] for m, until in skipped_models(config.home).items()}
        self.down_file = config.home / DOWN_FILE     # while no model answers (any process's)

    @property
    def config(self):
        return self.ledger.config

    @config.setter
    def config(self, config):       # a reload: limits, prices, and the zone the ledger's day is in
        self.ledger.config = config

    def complete(self, messages, tools=None, deadline=None, source="chat", session=""):
        why = over_limit(self.config, self.ledger)
        if why:
            raise LimitReached(why)
        error = None
        for model, provider_name, provider in self._order():
            line = {"ts": _now(), "source": source, "session": session,
                    "provider": provider_name, "model": model}
            started = time.monotonic()
            try:
                reply = provider.complete(messages, tools, deadline=deadline)
            except ProviderError as e:
                self._write(line, started, {}, messages, None, error=str(e))
                if not isinstance(e, ProviderDown):
                    raise
                self._failed(model)
                error = e
                continue
            if self._fails.pop(model, None):
                self._save_skips()
            if since := model_down(self.config.home).get("since"):
                log.info("the model answers again (it did not since %s)", since)
                self.down_file.unlink(missing_ok=True)
            self._write(line, started, reply.usage, messages, reply)
            self._warn()
            return reply
        from lib import maildir
        since = model_down(self.config.home).get("since") or _now()     # `status` shows it
        maildir.atomic_write(self.down_file, json.dumps({"since": since, "error": str(error)}))
        raise error

    def _order(self) -> list:
        """The models not cooling down, in order; all of them when every one is."""
        now = time.time()
        ready = [m for m in self.models if self._fails.get(m[0], (0, 0))[1] <= now]
        return ready or list(self.models)

    def _failed(self, model):
        count = self._fails.get(model, [0, 0])[0] + 1
        skip = len(self.models) > 1 and count >= FAILS_TO_SKIP
        until = time.time() + self.config.agents.defaults.fallback_cooldown_s if skip else 0
        self._fails[model] = [count, until]
        if skip:
            log.warning("model %s failed %d times in a row; skipped for %d s", model, count,
                        self.config.agents.defaults.fallback_cooldown_s)
            self._save_skips()

    def _save_skips(self):
        from lib import maildir
        skips = {m: until for m, (_, until) in self._fails.items() if until > time.time()}
        maildir.atomic_write(self.config.home / "state" / "models.json", json.dumps(skips))

    def _write(self, line, started, usage, messages, reply, error=""):
        usage = usage if isinstance(usage, dict) else {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if reply is not None and not isinstance(prompt, int):     # no usage from the server:
            prompt = len(json.dumps(messages, ensure_ascii=False)) // 4         # an estimate,
            completion = len(json.dumps(reply.message(), ensure_ascii=False)) // 4   # said so
            line["estimated"] = True
        line.update(prompt_tokens=prompt or 0, completion_tokens=completion or 0,
                    ok=not error, ms=round((time.monotonic() - started) * 1000))
        price = self.config.agents.defaults.prices.get(line["model"])
        if price:
            line["cost_usd"] = round((line["prompt_tokens"] * price[0] +
                                      line["completion_tokens"] * price[1]) / 1e6, 6)
        if error:
            line["error"] = error[:300]
        try:
            self.ledger.append(line)
        except OSError as e:        # a full disk must not cost the user the answer
            log.error("cannot write the usage ledger: %s", e)

    def _warn(self):
        """At 80 % of a limit, tell the owner, once a day."""
        limits, (used_tokens, used_usd) = self.config.limits, self.ledger.totals()
        near = [key for used, cap, key in ((used_tokens, limits.daily_tokens, "daily_tokens"),
                                           (used_usd, limits.daily_usd, "daily_usd"))
                if cap and used >= WARN_AT * cap]
        mark = self.config.home / "state" / "usage_warned"
        day = self.ledger.day()
        if not near or _read(mark) == day:
            return
        from lib import maildir
        from lib.mail import post_outbox
        maildir.atomic_write(mark, day)
        text = (f"Heads-up: today's model use has reached {WARN_AT:.0%} of limits.{near[0]}. At "
                "the limit I stop calling the model until midnight (`python nanoclaw.py usage` "
                "shows where it went).")
        to = owner(self.config)
        if to is None:
            log.warning("%s (no owner chat to tell: set tools.approval.owner)", text)
            return
        try:
            post_outbox(self.config.home, *to, text, metadata={"kind": "usage"})
        except (OSError, ValueError) as e:
            log.error("cannot warn the owner at %s:%s: %s", *to, e)


def model_down(home) -> dict:
    """{"since", "error"} while no model answers (state/model_down.json), else {}."""
    return _load(home / DOWN_FILE)


def skipped_models(home) -> dict:
    """{model: epoch seconds it is skipped until} for models cooling down now."""
    skips = _load(home / "state" / "models.json")
    return {m: t for m, t in skips.items() if isinstance(t, (int, float)) and t > time.time()}


def _read(path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _load(path) -> dict:
    """A small JSON object of ours from state/; {} when it is missing or mangled."""
    try:
        obj = json.loads(_read(path) or "{}")
        return obj if isinstance(obj, dict) else {}
    except ValueError:
        return {}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def summary(config, days: int = 7) -> dict:
    """{"today": {...}, "days": [{day, by: {(source, model): {...}}}]} for `usage` and `status`."""
    tz = _zone(config)
    now = datetime.now(tz)
    out = []
    for back in range(days):
        day = (now - timedelta(days=back)).strftime("%Y-%m-%d")
        rows: dict = {}
        for rec in read_day(config.home, day):
            row = rows.setdefault(f"{rec.get('source', '?')}\t{rec.get('model', '?')}",
                                  {"calls": 0, "failed": 0, "prompt_tokens": 0,
                                   "completion_tokens": 0, "cost_usd": 0.0, "unpriced": 0})
            row["calls"] += 1
            row["failed"] += not rec.get("ok", True)
            row["prompt_tokens"] += number(rec.get("prompt_tokens"))
            row["completion_tokens"] += number(rec.get("completion_tokens"))
            if "cost_usd" in rec:
                row["cost_usd"] += number(rec["cost_usd"], float)
            elif tokens(rec):
                row["unpriced"] += 1
        out.append({"day": day, "rows": [dict(zip(("source", "model"), k.split("\t")), **v)
                                         for k, v in sorted(rows.items())]})
    return {"timezone": str(tz), "days": out,
            "limits": {"daily_tokens": config.limits.daily_tokens,
                       "daily_usd": config.limits.daily_usd}}
