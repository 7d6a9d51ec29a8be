"""What the page shows and does (SPEC §11), read from the files the gateway keeps: parts and
channels, the queues and their failed messages (retry, drop), sessions and transcripts,
MEMORY.md, cron jobs, today's usage (SPEC §10) and pending approvals (SPEC §9). Every read is
bounded; a file that is missing shows as none. The chat is channel `web`, chat `page`."""
import json
import os
import stat
import time
from datetime import datetime

from lib import maildir
from lib.mail import MAX_BYTES
from lib.sessions import session_path
from lib.web.auth import HttpError, bad_request

CHAT = "page"
LIST_MAX = 200              # entries a list shows (the newest)
PEEK = 64 * 1024            # bytes read of one message file
TAIL = 2 * 1024 * 1024      # bytes read from the end of a transcript
MEMORY_MAX = 256 * 1024


def _overview(web, req):
    gw, home = web.gateway, web.gateway.home
    parts = [{"name": p.name, "alive": p.alive(), "connected": _connected(p)} for p in gw.parts]
    queues = {box: {f: _count(home / box / f) for f in folders} for box, folders in
              (("inbox", ("new", "cur", "failed")), ("outbox", ("new", "cur", "failed")))}
    off = [n for n in gw.config.channels.__dataclass_fields__ if not getattr(gw.config.channels, n).enabled]
    req.send_json({"healthy": gw.healthy(say=False), "model": gw.config.agents.defaults.model,
                   "parts": parts, "queues": queues, "channels_off": off})


def _connected(part):
    ready = getattr(part, "_ready", None)       # telegram and whatsapp say so with an Event
    if hasattr(ready, "is_set"):
        return ready.is_set()
    return getattr(part, "connected", None)


def _count(folder) -> int:
    try:
        return sum(n.endswith(".json") for n in os.listdir(folder))
    except OSError:
        return 0


# --- failed messages ---

def _failed(web, req):
    home, out = web.gateway.home, {}
    for box in ("inbox", "outbox"):
        names = [n for n in maildir.waiting(home / box, folder="failed") if not n.endswith(".error")]
        out[box] = [_failed_entry(home / box / "failed", n) for n in names[-LIST_MAX:][::-1]]
    req.send_json(out)


def _failed_entry(folder, name) -> dict:
    raw, kind = _peek(folder / name)
    entry = {"name": name, "kind": kind, "reason": ""}
    try:
        msg = json.loads(raw)
        if isinstance(msg, dict):
            entry.update({k: str(msg.get(k, ""))[:2000] for k in ("channel", "chat_id", "text")})
            entry["reason"] = str(msg.get("error", ""))[:2000]
    except ValueError:
        entry["text"] = raw[:2000].decode("utf-8", "replace")
    error, _ = _peek(folder / f"{name}.error")
    entry["reason"] = entry["reason"] or error.decode("utf-8", "replace").strip()[:2000]
    return entry


def _peek(path, limit: int = PEEK) -> tuple[bytes, str]:
    """The start of a regular file, never following a link nor opening a FIFO; and its kind."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return b"", "not a regular file"
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as f:
            return f.read(limit), "file"
    except OSError:
        return b"", "missing"


def _failed_action(web, req):
    body = req.body()
    box, name, action = body.get("box"), body.get("name"), body.get("action")
    if box not in ("inbox", "outbox") or action not in ("retry", "drop"):
        raise bad_request("expected box inbox|outbox and action retry|drop")
    folder = web.gateway.home / box / "failed"
    if name not in maildir.waiting(web.gateway.home / box, folder="failed") or name.endswith(".error"):
        raise HttpError(404, f"no failed message {str(name)[:100]!r} in {box}", "not_found")
    path = folder / name
    if stat.S_ISDIR(os.lstat(path).st_mode):
        raise bad_request(f"{box}/failed/{name} is a folder; remove it by hand")
    if action == "retry":
        if _peek(path)[1] != "file":
            raise bad_request("only a regular file can be tried again")
        if box == "outbox":             # the channel sends it again, from the part it stopped at
            try:
                msg = json.loads(_peek(path, MAX_BYTES)[0])
                msg.pop("error", None)
            except (ValueError, AttributeError):
                raise bad_request("not an outbox message (unreadable JSON)") from None
            maildir.atomic_write(path, json.dumps(msg, ensure_ascii=False))
        try:
            maildir.rename_new(path, web.gateway.home / box / "new" / name)
        except maildir.Clash:
            raise HttpError(409, f"{box}/new/{name} exists already", "conflict") from None
    else:
        os.unlink(path)
    try:
        os.unlink(folder / f"{name}.error")
    except FileNotFoundError:
        pass
    req.send_json({"ok": True})


# --- sessions ---

def _sessions(web, req):
    folder = web.gateway.home / "sessions"
    found = []
    for entry in os.scandir(folder) if folder.is_dir() else ():
        if entry.name.endswith(".jsonl") and entry.is_file(follow_symlinks=False):
            st = entry.stat(follow_symlinks=False)
            found.append((st.st_mtime, entry.name, st.st_size))
    found.sort(reverse=True)
    req.send_json([{"name": n, "key": _key(folder / n), "size": size, "updated": _iso(mtime)}
                   for mtime, n, size in found[:LIST_MAX]])


def _key(path) -> str:
    raw, _ = _peek(path)
    try:
        return str(json.loads(raw.split(b"\n", 1)[0]).get("key", ""))
    except (ValueError, AttributeError):
        return ""


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def _session(web, req):
    name = req.query.get("name", "")
    folder = web.gateway.home / "sessions"
    if "/" in name or "\0" in name or name.startswith(".") or not name.endswith(".jsonl"):
        raise bad_request("name a session file, e.g. web_page.jsonl")
    req.send_json(transcript(folder / name))


def transcript(path, limit: int = LIST_MAX) -> list[dict]:
    """The last `limit` chat messages of a session file, shortened for a screen."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise FileNotFoundError
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as f:
            f.seek(max(0, st.st_size - TAIL))
            lines = f.read(TAIL).split(b"\n")[1 if st.st_size > TAIL else 0:]
    except FileNotFoundError:
        return []
    out = []
    for raw in lines:
        try:
            msg = json.loads(raw)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("role"):
            out.append(shown(msg))
    return out[-limit:]


def shown(msg: dict) -> dict:
    """One session line as the page shows it: who, what (tool calls named), when."""
    content = msg.get("content")
    if isinstance(content, list):
        content = " ".join(p.get("text", "[image]") for p in content if isinstance(p, dict))
    calls = [f"{f.get('name', '?')}({str(f.get('arguments', ''))[:300]})" for f in
             (c.get("function") or {} for c in msg.get("tool_calls") or () if isinstance(c, dict))
             if isinstance(f, dict)]
    return {"role": str(msg.get("role")), "text": str(content or "")[:20000], "calls": calls,
            "name": str(msg.get("name") or ""), "time": str(msg.get("timestamp") or ""),
            "id": str(msg.get("id") or "")}


# --- memory, cron ---

def _memory(web, req):
    from lib.tools.files import open_inside
    ws = web.gateway.config.workspace
    try:
        with open(open_inside(ws / "memory" / "MEMORY.md", ws), "rb") as f:
            raw = f.read(MEMORY_MAX + 1)
    except OSError:
        return req.send_json({"text": "", "missing": True})
    req.send_json({"text": raw[:MEMORY_MAX].decode("utf-8", "replace"),
                   "truncated": len(raw) > MEMORY_MAX})


def _cron(web, req):
    from lib.cron import CronError, describe
    service = web.gateway.services.cron
    try:
        jobs = service.jobs()
    except CronError as e:
        raise HttpError(500, str(e), "cron_error") from None
    req.send_json([{"id": j["id"], "name": str(j.get("name", "")),
                    "message": str(j.get("message", ""))[:2000],
                    "schedule": describe(j.get("schedule") or {}), "enabled": bool(j.get("enabled")),
                    "next_run": service.local(j.get("next_run")) if j.get("enabled") else "",
                    "last_status": str(j.get("last_status") or "")} for j in jobs])


def _cron_action(web, req):
    from lib.cron import CronError
    body = req.body()
    service, job, action = web.gateway.services.cron, str(body.get("id", "")), body.get("action")
    do = {"enable": lambda: service.enable(job, True), "disable": lambda: service.enable(job, False),
          "run": lambda: service.run_now(job), "remove": lambda: service.remove(job)}.get(action)
    if do is None:
        raise bad_request("action must be enable, disable, run or remove")
    try:
        do()
    except CronError as e:
        raise HttpError(400, str(e), "cron_error") from None
    req.send_json({"ok": True})


# --- usage (SPEC §10) and approvals (SPEC §9), read from their files ---

def _usage(web, req):
    req.send_json(usage_today(web.gateway.config))


def usage_today(config) -> dict:
    """Today's model calls (lib/usage.py's ledger), by source, against limits.daily_tokens and
    limits.daily_usd (0 or absent: no limit)."""
    from lib import usage
    day, limits = usage.today(config), getattr(config, "limits", None)
    out = {"day": day, "calls": 0, "tokens": 0, "cost_usd": 0.0, "by_source": {},
           "limits": {k: getattr(limits, k, 0) or 0 for k in ("daily_tokens", "daily_usd")}}
    for line in usage.read_day(config.home, day):
        source = out["by_source"].setdefault(str(line.get("source", "?")),
                                             {"calls": 0, "tokens": 0, "cost_usd": 0.0})
        for d in (out, source):
            d["calls"], d["tokens"] = d["calls"] + 1, d["tokens"] + usage.tokens(line)
            d["cost_usd"] += usage.number(line.get("cost_usd"), float)
    return out


def _approvals(web, req):
    req.send_json(pending_approvals(web.gateway.config))


def pending_approvals(config) -> list[dict]:
    """The parked turns in state/approvals/ (SPEC §9, lib/approvals.py) that wait for a yes."""
    from lib.approvals import Approvals
    return [{"code": r["code"], "command": str(r["binding"].get("command") or r["binding"].get("path")
                                                or r.get("question", ""))[:4000],
             "folder": str(r["binding"].get("cwd", "")), "chat": f"{r['channel']}:{r['chat_id']}",
             "expires": time.strftime("%H:%M", time.localtime(r.get("expires_at", 0))),
             "question": str(r.get("question", ""))[:4000]}
            for r in Approvals(config).pending()[:LIST_MAX] if isinstance(r.get("binding"), dict)]


def _approve(web, req):
    """The owner's answer from the page: an inbox message of channel web (SPEC §9): "yes CODE"."""
    body = req.body()
    code, answer = str(body.get("code", "")), body.get("answer")
    if answer not in ("yes", "no"):
        raise bad_request("answer must be yes or no")
    if not any(a["code"] == code for a in pending_approvals(web.gateway.config)):
        raise HttpError(404, f"no pending approval with code {code[:20]!r}", "not_found")
    from lib.mail import post_inbox
    post_inbox(web.gateway.home, {"channel": "web", "chat_id": CHAT, "sender_id": "owner",
                                  "text": f"{answer} {code}", "metadata": {"via": "web page"}},
               f"approval-{code}-web")
    req.send_json({"ok": True})


# --- the chat: channel web, the reply as it is written ---

def _chat_history(web, req):
    req.send_json(transcript(session_path(web.gateway.home, "web", CHAT), 100))


def _chat(web, req):
    text = req.body().get("text")
    if not isinstance(text, str):
        raise bad_request("expected {\"text\": \"...\"}")
    path = session_path(web.gateway.home, "web", CHAT)
    seen = [path.stat().st_size if path.exists() else 0, b""]     # before the worker can write
    key = web.exchange.post("web", CHAT, text)
    req.start_events()

    def steps():            # each session line of this turn, as soon as it is written
        try:
            size = path.stat().st_size
            if size < seen[0]:
                seen[0], seen[1] = 0, b""       # /new moved the file away
            with open(path, "rb") as f:
                f.seek(seen[0])
                raw = f.read(TAIL)
        except FileNotFoundError:
            return
        seen[0] += len(raw)
        *lines, seen[1] = (seen[1] + raw).split(b"\n")
        for line in lines:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict) and msg.get("id") == key and msg.get("role") in ("assistant", "tool"):
                req.event(shown(msg), "step")
    limit = web.gateway.config.gateway.api_timeout_s
    try:
        reply = web.exchange.wait(key, limit, steps)
        if reply and (reply.get("metadata") or {}).get("error") == "waiting":     # model down
            req.event({"role": "assistant", "text": reply.get("text", ""), "calls": []}, "notice")
            reply = web.exchange.wait(key, limit, steps, notice=False)
    except HttpError as e:
        return req.event({"message": str(e)}, "failure")
    if reply is None:
        return req.event({"message": "no reply yet; it will appear here when it comes"}, "failure")
    req.event({"text": reply.get("text", ""), "error": (reply.get("metadata") or {}).get("error")},
              "reply")


ROUTES = {("GET", "/ui/overview"): _overview, ("GET", "/ui/failed"): _failed,
          ("POST", "/ui/failed"): _failed_action, ("GET", "/ui/sessions"): _sessions,
          ("GET", "/ui/session"): _session, ("GET", "/ui/memory"): _memory,
          ("GET", "/ui/cron"): _cron, ("POST", "/ui/cron"): _cron_action,
          ("GET", "/ui/usage"): _usage, ("GET", "/ui/approvals"): _approvals,
          ("POST", "/ui/approvals"): _approve, ("GET", "/ui/chat"): _chat_history,
          ("POST", "/ui/chat"): _chat}
