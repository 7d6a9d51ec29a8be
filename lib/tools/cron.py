"""cron: the model's way to schedule reminders and recurring tasks (SPEC §7)."""
from lib.errors import NanoclawError, ToolError

SILENT = ("cli", "local", "system")         # no one to deliver a reply to later


def cron(ctx, action: str, message: str = "", every_seconds: int = 0, cron_expr: str = "",
         at: str = "", job_id: str = "") -> str:
    """Schedule reminders and recurring tasks, list them, or remove one. When a job fires, its
    message comes back to you as an instruction, and your reply goes to the chat it was made in.

    Args:
        action: add, list or remove
        message: for add: what to do when the job fires, written as an instruction to yourself
        every_seconds: for add: repeat every this many seconds
        cron_expr: for add: 'minute hour day-of-month month day-of-week', e.g. '0 8 * * 1-5'
        at: for add: one run at an ISO 8601 time with UTC offset, e.g. 2025-06-03T09:00:00+02:00
        job_id: for remove: the job's id, as shown by list
    """
    from lib.cron import CronService, describe, make_schedule     # only when the tool is used
    try:
        service = ctx.services.cron or CronService(ctx.config)
        if action == "list":
            return _list(service)
        if action == "remove":
            if not job_id:
                raise ToolError("remove needs job_id; call cron with action='list' to see the ids")
            job = service.remove(job_id)
            return f"Removed job {job['id']} ({job.get('name', '')})."
        if action != "add":
            raise ToolError(f"unknown action {action!r}; use add, list or remove")
        if not message.strip():
            raise ToolError("add needs a message: what you should do when the job fires")
        schedule = make_schedule(every_seconds or None, cron_expr, at, service.tz,
                                 ("every_seconds", "cron_expr", "at"))
        _check_interval(schedule, service.tz, ctx.config.tools.cron.min_interval_s)
        deliver = ctx.channel not in SILENT
        job = service.add(_name(message), message, schedule, deliver,
                          ctx.channel if deliver else "", ctx.chat_id if deliver else "")
    except NanoclawError as e:          # a ToolError too: the same message
        raise ToolError(str(e)) from None
    where = f"replies go to {ctx.channel}:{ctx.chat_id}" if deliver else "replies go to the owner"
    return (f"Added job {job['id']}: {describe(schedule)}, next run "
            f"{service.local(job['next_run'])}; {where}.")


def _check_interval(schedule: dict, tz, least: int):
    """The model may not schedule itself more often than tools.cron.min_interval_s (SPEC §8):
    a job every second would run up the bill around the clock. The CLI may add any interval."""
    from lib.cron import _now, describe, next_time
    runs = [_now()]
    while schedule["kind"] == "cron" and runs[-1] and len(runs) < 25:   # the next runs' shortest gap
        runs.append(next_time(schedule, runs[-1], tz))
    gaps = [(b - a).total_seconds() for a, b in zip(runs[1:], runs[2:]) if a and b]
    gap = schedule.get("every_s") or min(gaps, default=least)
    if gap < least:
        raise ToolError(f"{describe(schedule)} would run every {gap:.0f} s; the shortest interval "
                        f"allowed is {least} s (tools.cron.min_interval_s)")


def _name(message: str) -> str:
    line = message.strip().splitlines()[0]
    return line if len(line) <= 40 else line[:39].rstrip() + "…"


def _list(service) -> str:
    from lib.cron import describe
    lines = []
    for j in service.jobs():
        to = (f"replies to {j.get('channel')}:{j.get('to')}" if j.get("deliver")
              else "replies to the owner")
        state = f"next run {service.local(j.get('next_run'))}" if j.get("enabled") else "disabled"
        lines.append(f"- {j['id']} {describe(j.get('schedule', {}))}; {state}; {to}; "
                     f"message: {j.get('message', '')}")
    return "\n".join(lines) or "No scheduled jobs."


TOOLS = [cron]
