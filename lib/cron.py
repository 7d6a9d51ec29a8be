"""Scheduled jobs: $NANOCLAW_HOME/cron/jobs.json, a 5-field cron parser, and the gateway thread
that posts each due job into the inbox as a "system" message, and beats the heartbeat (a built-in
job, lib/heartbeat.py). In heartbeat.quiet_hours nothing fires; what fell due runs when they end.

Times are read in agents.defaults.timezone ("" is the system's). A wall time the clock skips
(spring forward) runs at the first minute after the gap: 02:30 on the night Berlin jumps from
02:00 to 03:00 runs at 03:00. A wall time the clock passes twice (fall back) runs once, the first
time. A run missed while the gateway was down happens once on start, not once per missed slot.
A one-off (`at`) job is deleted once posted. Each run's inbox file is named after the job and its
scheduled second, so a crash between posting and saving next_run cannot post it twice.
"""
import fcntl
import functools
import json
import logging
import os
from contextlib import contextmanager, suppress
from datetime import datetime, time as dtime, timedelta, timezone

from lib import heartbeat, maildir
from lib.errors import ConfigError, UserError
from lib.mail import post_inbox
from lib.part import Part
from lib.usage import over_limit, owner, quiet_until

log = logging.getLogger(__name__)
MAX_SLEEP_S = 60        # the Pi has no RTC: look at the wall clock again after NTP moves it
FIELDS = (("minute", 0, 59, ""), ("hour", 0, 23, ""), ("day-of-month", 1, 31, ""),     # names
          ("month", 1, 12, "jan feb mar apr may jun jul aug sep oct nov dec"),   # count from lo
          ("day-of-week", 0, 7, "sun mon tue wed thu fri sat"))
MAX_EVERY_S = 10 * 365 * 86400     # an interval of at most 10 years
BAD_JOB = (ValueError, KeyError, TypeError, AttributeError, OverflowError)   # a hand-edited job


class CronError(UserError, ValueError):
    """A bad schedule, an unknown job or an unreadable jobs.json: one line, exit 2 in the CLI."""


def parse_cron(expr: str) -> tuple:
    """(minutes, hours, days, months, weekdays, either) as sorted tuples; `either` is the OR rule:
    when neither day field starts with *, a day matching one of them will do."""
    parts = expr.split()
    if len(parts) != 5:
        raise CronError(f"cron expression {expr!r}: expected 5 fields (minute hour day-of-month "
                        f"month day-of-week), got {len(parts)}")
    sets = [_field(expr, text, *spec) for text, spec in zip(parts, FIELDS)]
    sets[4] = {d % 7 for d in sets[4]}                  # 7 is Sunday too
    return (*(tuple(sorted(s)) for s in sets), parts[2][0] != "*" and parts[4][0] != "*")


def _field(expr, text, name, lo, hi, words) -> set:
    names = {word: lo + i for i, word in enumerate(words.split())}

    def number(s):
        value = names.get(s.lower(), int(s) if s.isdigit() else None)
        if value is None:
            raise CronError(f"cron expression {expr!r}: {name} {s!r} is not a number"
                            + (f" or a name ({', '.join(names)})" if names else ""))
        if not lo <= value <= hi:
            raise CronError(f"cron expression {expr!r}: {name} {s} is outside {lo}-{hi}")
        return value

    values = set()
    for item in text.split(","):
        base, slash, step = item.partition("/")
        if slash and (not step.isdigit() or int(step) == 0):
            raise CronError(f"cron expression {expr!r}: step {step!r} in the {name} field must be "
                            "a whole number of at least 1")
        a, dash, b = (f"{lo}-{hi}" if base == "*" else base).partition("-")     # * is lo-hi
        first = number(a)
        last = number(b) if dash else hi if slash else first
        if first > last:
            raise CronError(f"cron expression {expr!r}: {name} range {base} goes backwards")
        values.update(range(first, last + 1, int(step) if slash else 1))
    return values


@functools.cache
def zone(name: str = ""):
    """The tzinfo for a zone name, looked up once; "" is the system's ($TZ, /etc/localtime)."""
    from zoneinfo import ZoneInfo
    key = name or os.environ.get("TZ", "").lstrip(":")
    try:
        if key:
            return ZoneInfo(key)
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (KeyError, ValueError, OSError):         # ZoneInfoNotFoundError is a KeyError
        if name:
            raise ConfigError(f"agents.defaults.timezone: unknown time zone {name!r}; expected a "
                              'name like Europe/Berlin, or "" for the system\'s') from None
    return datetime.now().astimezone().tzinfo          # a fixed offset: better than nothing


def _resolve(wall: datetime, tz) -> datetime:
    """Naive wall time -> aware: a doubled time's first occurrence, a skipped time's gap end."""
    for _ in range(1441):
        when = wall.replace(tzinfo=tz, fold=0)
        if when.astimezone(timezone.utc).astimezone(tz).replace(tzinfo=None) == wall:
            return when
        wall += timedelta(minutes=1)
    return when


def parse_at(text: str, tz) -> datetime:
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CronError(f"at {text!r} is not an ISO 8601 time; expected e.g. "
                        "2025-06-03T09:00:00+02:00") from None
    # OverflowError: a year off the ends of the calendar in UTC, or in a zone a day away from it
    with suppress(OverflowError):
        when = when if when.tzinfo else _resolve(when, tz)
        if 1 < when.astimezone(timezone.utc).year < 9999:
            return when
    raise CronError(f"at {text!r} is out of range; expected a year from 2 to 9998")


def next_time(schedule: dict, after: datetime, tz) -> datetime | None:
    """The first run strictly after `after` (aware), or None when there is none."""
    tz = zone(tz) if isinstance(tz, str) else tz
    kind = schedule.get("kind")
    if kind == "every":
        return after + timedelta(seconds=int(schedule["every_s"]))
    if kind == "at":
        when = parse_at(schedule["at"], tz)
        return when if when > after else None
    if kind != "cron":
        raise CronError(f"unknown schedule kind {kind!r}; expected every, cron or at")
    minutes, hours, days, months, weekdays, either = parse_cron(schedule["expr"])
    start = after.astimezone(tz).replace(tzinfo=None, second=0, microsecond=0)
    start += timedelta(minutes=1)
    # a leap day on a given weekday comes back within 28 years
    for day in (start.date() + timedelta(days=n) for n in range(366 * 28)):
        dom, dow = day.day in days, day.isoweekday() % 7 in weekdays
        if day.month in months and ((dom or dow) if either else (dom and dow)):
            for wall in (datetime.combine(day, dtime(h, m)) for h in hours for m in minutes):
                if wall >= start and (when := _resolve(wall, tz)) > after:
                    return when
    return None


def make_schedule(every_s=None, expr=None, at=None, tz=None, names=("every_s", "expr", "at")):
    """A checked schedule from exactly one of the three options (None or "" = not given)."""
    given = [n for n, v in zip(names, (every_s, expr, at)) if v not in (None, "")]
    if len(given) != 1:
        raise CronError(f"give exactly one schedule: {', '.join(names)}"
                        + (f" (got {' and '.join(given)})" if given else ""))
    if expr:
        parse_cron(expr)
        return {"kind": "cron", "expr": " ".join(expr.split())}
    if at:
        return {"kind": "at", "at": parse_at(at, tz or zone()).isoformat()}
    if not 1 <= int(every_s) <= MAX_EVERY_S:
        raise CronError(f"{names[0]} must be at least 1 second and at most {MAX_EVERY_S} "
                        f"seconds (10 years), got {every_s}")
    return {"kind": "every", "every_s": int(every_s)}


def describe(schedule: dict) -> str:
    try:
        if schedule["kind"] == "every":
            s = int(schedule["every_s"])
            return "every " + next(f"{s // d}{u}" for d, u in ((86400, "d"), (3600, "h"),
                                                                (60, "m"), (1, "s")) if s % d == 0)
        return f"{schedule['kind']} {schedule.get('expr') or schedule['at']}"
    except BAD_JOB:
        return f"invalid schedule {json.dumps(schedule)}"


def iso(when: datetime | None) -> str | None:
    return when and when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text) -> datetime | None:
    try:
        when = datetime.fromisoformat(str(text))
        return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        return None


def _due(job, now) -> datetime | None:
    when = _parse_iso(job.get("next_run"))
    return when if job.get("enabled") and when and when <= now else None


def _find(jobs, job_id) -> dict:
    if job := next((j for j in jobs if j["id"] == job_id), None):
        return job
    raise CronError(f"no cron job with id {job_id!r}; ids are listed by `cron list`")


def _now() -> datetime:
    return datetime.now(timezone.utc)


class CronService(Part):
    """The gateway part, and the one API for the CLI and the cron tool (usable without start()).
    jobs.json is read whole and replaced whole (atomic_write) under a lock file, so the CLI, the
    tool and the gateway never lose each other's edits; a file that cannot be read is left alone."""

    def __init__(self, config, post=None, clock=_now):
        self.config = config
        self.path = config.home / "cron" / "jobs.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)     # the file watcher needs it
        self.tz                         # looked up now: a bad zone name stops start-up
        self.post = post or (lambda msg, name=None: post_inbox(config.home, msg, name))
        super().__init__()
        self._jobs, self._stamp, self._seen = [], "unread", {}
        self.clock = clock              # the gateway part's; tests pass a day in a second
        self._beat = clock()            # the heartbeat's last: the first comes an interval on

    @property
    def tz(self):
        """The configured zone; the gateway may swap in a reloaded config at any time."""
        return zone(self.config.agents.defaults.timezone)

    def _load(self) -> list[dict]:
        try:
            data = json.loads(self.path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            return []
        except ValueError as e:
            where = f" (line {e.lineno}, column {e.colno})" if hasattr(e, "lineno") else ""
            raise CronError(f"{self.path} is not valid JSON{where}; fix it or move it away "
                            "(it was left as it is)") from None
        if not (isinstance(data, dict) and isinstance(data.get("jobs"), list) and
                all(isinstance(j, dict) and j.get("id") and isinstance(j["id"], str)
                    for j in data["jobs"])):
            raise CronError(f'{self.path}: expected {{"version": 1, "jobs": [...]}} with a text '
                            '"id" in every job; fix it or move it away (it was left as it is)')
        return data["jobs"]

    @contextmanager
    def _edit(self):
        """Lock, load, let the caller change the list, save it if it changed."""
        with open(os.open(self.path.with_name(".lock"), os.O_RDONLY | os.O_CREAT, 0o600)) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            jobs = self._load()
            before = json.dumps(jobs)
            yield jobs
            if json.dumps(jobs) != before:
                maildir.atomic_write(self.path, json.dumps({"version": 1, "jobs": jobs}, indent=2,
                                                           ensure_ascii=False) + "\n")
            self._saved = maildir.stamp(self.path)

    def jobs(self) -> list[dict]:
        with self._edit() as jobs:
            return list(jobs)

    def add(self, name, message, schedule, deliver=False, channel="", to="") -> dict:
        now = _now()
        when = next_time(schedule, now, self.tz)
        if when is None:
            why = f"is in the past (now: {self.local(iso(now))})" if schedule["kind"] == "at" \
                else "never comes"
            raise CronError(f"{describe(schedule)} {why}")
        with self._edit() as jobs:
            ids = {j["id"] for j in jobs}
            job = {"id": next(i for i in (os.urandom(4).hex() for _ in range(99)) if i not in ids),
                   "name": name, "enabled": True, "schedule": schedule, "message": message,
                   "deliver": bool(deliver), "channel": channel, "to": str(to),
                   "next_run": iso(when), "last_run": None, "last_status": None,
                   "created_at": iso(now)}
            jobs.append(job)
        self.wake()
        return job

    def remove(self, job_id) -> dict:
        with self._edit() as jobs:
            jobs.remove(job := _find(jobs, job_id))
        self.wake()
        return job

    def enable(self, job_id, on=True) -> dict:
        with self._edit() as jobs:
            job = _find(jobs, job_id)
            job["enabled"] = bool(on)
            if on:
                try:
                    when = next_time(job["schedule"], _now(), self.tz)
                except BAD_JOB as e:
                    raise CronError(f"job {job_id} has a bad schedule ({describe(job.get('schedule'))}"
                                    f": {e}); remove it and add it again") from None
                job["next_run"] = iso(when)
                if when is None:
                    raise CronError(f"job {job_id} runs {describe(job['schedule'])}, which has "
                                    "passed; add a new job instead")
        self.wake()
        return job

    def run_now(self, job_id):
        """Post the job into the inbox now, whatever its schedule; the inbox file's path."""
        with self._edit() as jobs:
            job = _find(jobs, job_id)
            msg = self._message(job, _now())
            msg["metadata"]["by_hand"] = True       # not held in quiet hours
            path = self.post(msg, maildir.unique_name(f"cron-{job_id}-run-"))
            job["last_run"], job["last_status"] = iso(_now()), "posted (run now)"
        return path

    def local(self, text) -> str:
        when = _parse_iso(text)
        return f"{when.astimezone(self.tz):%Y-%m-%d %H:%M %Z}" if when else "-"

    def _message(self, job, due) -> dict:
        text = (f"[A scheduled job fired: {job.get('name')!r} (cron job {job['id']}, due "
                f"{due.astimezone(self.tz):%Y-%m-%d %H:%M %Z}). Do what it says now.]\n"
                f"{job.get('message', '')}\n")
        meta = {"kind": "cron", "job_id": job["id"]}
        chat = job.get("deliver") and job.get("channel") and job.get("to") and (
            job["channel"], str(job["to"]))
        if to := chat or owner(self.config):      # SPEC §10: else proactive messages go to the owner
            meta["reply_to"] = {"channel": to[0], "chat_id": to[1]}
            text += f"(Your reply is sent to {to[0]}:{to[1]}.)"
        else:
            text += "(Your reply is only logged: nobody has written to the assistant yet.)"
        return {"channel": "system", "chat_id": f"cron:{job['id']}", "sender_id": "cron",
                "text": text, "metadata": meta}

    name = "cron"

    def tick(self) -> float:
        """Reload jobs.json if it changed, post what is due, beat; the seconds until the next."""
        now, stamp, retry = self.clock(), maildir.stamp(self.path), False
        quiet = quiet_until(self.config, now)       # due jobs wait for the end of quiet hours
        if stamp != self._stamp or not quiet and any(_due(job, now) for job in self._jobs):
            try:
                with self._edit() as jobs:
                    self._reconcile(jobs, now)
                    retry = not quiet and self._fire(jobs, now)
            except CronError as e:          # said once: this version is not read again
                log.error("cron: %s", e)
                self._jobs, self._stamp = [], stamp
            else:
                self._jobs, self._stamp = jobs, self._saved
        times = [t for j in self._jobs if j.get("enabled") and (t := _parse_iso(j.get("next_run")))]
        times.append(self._heartbeat(now) if not quiet else self._beat + self._interval)
        wait = min([(max(t, quiet or t) - self.clock()).total_seconds() for t in times] + [MAX_SLEEP_S])
        return MAX_SLEEP_S if retry else max(wait, 0.0)

    step = tick         # the gateway part: Part runs step() in a thread

    @property
    def _interval(self) -> timedelta:
        return timedelta(seconds=self.config.heartbeat.interval_s)

    def _heartbeat(self, now) -> datetime:
        """Beat when an interval has passed since the last beat, enabled or not (a reload may
        turn it on; the gateway wakes this part then, so a new interval counts at once). When
        the next beat is due."""
        self._beat = min(self._beat, now)       # the clock was set back (NTP on a Pi)
        if now - self._beat >= self._interval:
            self._beat = now
            msg = self.config.heartbeat.enabled and heartbeat.message(self.config)
            if msg and over_limit(self.config):
                log.info("heartbeat skipped: a daily limit is reached (limits.*)")
            elif msg:
                self.post(msg, maildir.unique_name() + heartbeat.SUFFIX)
        return self._beat + self._interval

    def _reconcile(self, jobs, now):
        """Give enabled jobs without a next run one; a schedule edited by hand starts afresh."""
        seen = {}
        for job in jobs:
            seen[job["id"]] = sig = json.dumps([job.get("schedule"), job.get("enabled")])
            if self._seen.get(job["id"], sig) != sig or \
                    job.get("enabled") and not _parse_iso(job.get("next_run")):
                try:
                    job["next_run"] = iso(next_time(job["schedule"], now, self.tz))
                except BAD_JOB as e:
                    job["next_run"] = None
                    log.warning("cron job %s: bad schedule (%s); it will not run", job["id"], e)
        self._seen = seen

    def _fire(self, jobs, now) -> bool:
        """Post every due job, then move it on; True when the inbox could not be written. At a
        daily limit (SPEC §10) a due job is skipped: no post, and it moves on."""
        retry, capped = False, over_limit(self.config)
        for job, due in [(j, when) for j in jobs if (when := _due(j, now))]:
            name = f"cron-{job['id']}-{int(due.timestamp())}"
            try:
                if capped:
                    log.info("cron job %s skipped: a daily limit is reached", job["id"])
                elif self.post(self._message(job, due), name) is None:
                    log.info("cron job %s: %s was posted before a restart", job["id"], name)
            except OSError as e:
                log.error("cron job %s: cannot post to the inbox (%s); retrying", job["id"], e)
                job["last_status"], retry = f"error: {e}", True
                continue
            job["last_run"], job["last_status"] = iso(now), "skipped (daily limit)" if capped else "posted"
            try:
                if job["schedule"]["kind"] == "at":
                    jobs.remove(job)
                    continue
                after = next_time(job["schedule"], due, self.tz)
                job["next_run"] = iso(after if after and after > now else
                                      next_time(job["schedule"], now, self.tz))
            except BAD_JOB as e:
                job["next_run"], job["last_status"] = None, f"error: {e}"
        return retry
