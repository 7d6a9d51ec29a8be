"""Approvals (SPEC §9): a risky action waits for the owner's yes, and the worker never waits.

A tool asks `ask(ctx, binding, question)` before a risky action. Where someone can answer at
once (the terminal) it asks them; in the gateway it raises ApprovalNeeded, the worker parks the
turn as state/approvals/CODE.json, sends the question, and takes the next message. An inbox
message "yes CODE" or "no CODE" from the chat that was asked (or from the owner) claims the file
by renaming it into state/approvals/answered/ (so an approval is used once, however often it is
sent), and the turn goes on with the tool's result, or with `Error: the owner declined`. The
yes is bound to the exact action: the command and folder, and the content of every workspace
file the command names (a script it runs); anything else needs an approval of its own.
"""
import glob
import itertools
import json
import logging
import os
import re
import stat
import time
from dataclasses import field
from pathlib import Path

from lib import maildir
from lib.errors import NanoclawError, ToolError
from lib.fields import setting, settings

log = logging.getLogger(__name__)
ANSWER = re.compile(r"\s*(yes|no|y|n)\s+(\d{4})\s*[.!]?\s*", re.I)
MAX_RECORD = 4 * 1024 * 1024     # a parked turn holds its inbox message (at most 1 MiB)
MAX_BOUND_FILES = 50            # the files of a command an approval is bound to, at most
MAX_LOOKUPS = 20_000            # paths looked at for them: past it, the command is refused
MAX_FOLDERS = 64                # folders it cds to
OWNER_CHANNELS = ("cli", "web")      # written by the owner's own terminal or the token-guarded page
# Risky when tools.approval.mode is `risky` (SPEC §9); a courtesy list, the sandbox is the boundary.
PATTERNS = [
    r"\brm\s+(-\S*\s+)*-\S*[rR]", r"\brm\s+(-\S*\s+)*--recursive\b", r"\brmtree\b",
    r"\bfind\b[^;&|\n]{0,200}\s-(delete|exec\s+rm)\b", r"\bdd\b", r"\b(mkfs|mke2fs|mkswap|wipefs)\b",
    r"\b(shutdown|reboot|poweroff|halt|telinit)\b", r"\binit\s+[0-6]\b", r"\bsystemctl\s+(poweroff|reboot|halt)",
    r"\bch(mod|own|grp)\s+(\S+\s+)*-\S*R", r"\bch(mod|own|grp)\s+(\S+\s+)*--recursive\b",
    r"\b(curl|wget|fetch)\b[^|\n]*\|\s*(sudo\s+(-\S+\s+)*)?\S*(sh|bash|zsh|dash|python\d?|perl|ruby|node)\b",
    r"\b(base64|xxd|openssl)\b[^|\n]*\|\s*(sudo\s+(-\S+\s+)*)?\S*(sh|bash|zsh|dash|python\d?|perl)\b",
    r"<\(\s*(sudo\s+)?(curl|wget|fetch)\b",             # bash <(curl …), source <(wget …)
    r"\b(python\d?(\.\d+)?|perl|ruby|node|php)\s+(-\S+\s+)*-[cer]\b", r"\b(ba|da|z|k)?sh\s+-c\b",
    r"\b(python\d?(\.\d+)?|perl|ruby|node|php)\b[^|;&\n]*<<",  # the program in a here-document
    r"\|\s*(sudo\s+(-\S+\s+)*)?(python\d?(\.\d+)?|perl|ruby|node|php)(\s+-)?\s*($|[;&|)])",  # on stdin
    r"\b(python\d?(\.\d+)?|perl|ruby|node|php)\s+-\s*($|[;&|)<])",
    r"\beval\b",
]


class ApprovalNeeded(NanoclawError):
    """A risky action waits for the owner's yes: the turn is parked, not failed."""

    def __init__(self, binding: dict, question: str, memory: bool = True):
        super().__init__(question)
        self.binding, self.question, self.call = binding, question, None
        self.memory = memory        # the turn may see workspace/memory; so may its approved call


@settings
class Approval:
    mode: str = setting("risky", "off", "risky", "always")     # which exec commands need a yes
    patterns: list[str] = field(default_factory=lambda: list(PATTERNS), metadata={"regex": True})
    timeout_s: int = setting(600, low=1)    # an unanswered request counts as "no" after this
    owner: str = ""              # channel:chat_id of the owner; empty: the last active chat


def risk(ctx, command: str, boxed: bool) -> str:
    """Why `command` needs the owner's yes ("" when it does not), by tools.approval."""
    settings = ctx.config.tools.approval
    if settings.mode == "off":
        return ""
    if settings.mode == "always":
        return "every command needs a yes (tools.approval.mode: always)"
    if not boxed:
        return "the shell has no sandbox"
    return next((f"it matches {p!r} (tools.approval.patterns)" for p in settings.patterns
                 if re.search(p, command, re.I)), "")


def exec_binding(ctx, command: str, cwd: Path) -> dict:
    """The command, its folder, and the hash of every workspace file it names (a script): a
    word's file is looked for in the folder and in each folder the command cds to; the words
    of an inline script (bash -c '…') count too; ~ and $HOME are the workspace (the command's
    HOME) and a glob is expanded. A word the shell makes up as it runs ($f, $(…), `…`) could
    name any file there, so every file in those folders is bound. A command whose files cannot
    all be bound (over MAX_BOUND_FILES, unreadable, or too long to look through) is refused:
    an approval must not leave its script unbound."""
    workspace, folders = ctx.workspace.resolve(), [cwd]
    words = _words(command)
    words += [w for word in words if " " in word for w in _words(word)]
    words = [re.sub(r"^(~|\$HOME|\$\{HOME\})(?=/|$)", str(workspace), w) for w in words]
    too_long = ToolError("this command is too long to ask the owner about; split it up")
    try:
        for cd, word in zip(words, words[1:]):
            if cd == "cd" and (folder := (folders[-1] / word).resolve()) not in folders:
                folders.append(folder)      # each cd goes on from where the one before led
                if len(folders) > MAX_FOLDERS:
                    raise too_long
        found = list(itertools.islice(_named(folders, words), MAX_LOOKUPS + 1))
        if len(found) > MAX_LOOKUPS:        # never a part of them: that would leave one unbound
            raise too_long
        bound = [p for p in sorted({Path(p).resolve() for p in found})
                 if p.is_relative_to(workspace) and p.is_file()]
        if len(bound) > MAX_BOUND_FILES:
            raise ToolError(f"this command may run more than {MAX_BOUND_FILES} workspace files; "
                            "an approval cannot be bound to them all: split it up, or name the "
                            "script it runs")
        files = dict(map(_digest, bound))
    except (OSError, RuntimeError, ValueError) as e:        # unreadable, a symlink loop, a NUL
        raise ToolError(f"cannot tell which files this command runs ({e}); an approval needs "
                        "that") from None
    return {"tool": "exec", "command": command, "cwd": str(cwd), "files": files}


def _named(folders: list, words: list):
    """Every path the words may name in each folder: a glob expanded; with $ or ` (words the
    shell makes up as it runs) every entry of the folder."""
    dynamic = any("$" in w or "`" in w for w in words)
    for folder in folders:
        for word in (w for w in words if w and not w.startswith("-")):
            glob_ = re.search(r"[*?[]", word)
            yield from glob.iglob(str(folder / word)) if glob_ else [folder / word]
        if dynamic and folder.is_dir():
            yield from folder.iterdir()


def _digest(path: Path) -> tuple[str, str]:
    """(path, sha256) of a regular file, read in pieces; a FIFO or device is not waited on."""
    import hashlib
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW), "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        return str(path), hashlib.file_digest(f, "sha256").hexdigest()


def _words(command: str) -> list[str]:
    """The shell's words, with ; | && < and the like as words of their own (sh<x.sh)."""
    import shlex
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:              # an unclosed quote: the shell refuses it anyway
        return command.split()


def ask_write(ctx, path: Path, change: str) -> Path:
    """`path` (real) once it may be written: outside the workspace only with the owner's yes
    (SPEC §9), bound to the file and the change."""
    if not path.is_relative_to(ctx.workspace.resolve()):
        import hashlib
        digest = hashlib.sha256(change.encode("utf-8", "surrogatepass")).hexdigest()
        ask(ctx, {"tool": "write", "path": str(path), "change": digest}, f"Change {path}")
    return path


def ask(ctx, binding: dict, question: str):
    """Return when the action may go ahead; else ToolError (refused) or ApprovalNeeded (parked)."""
    if ctx.config.tools.approval.mode == "off":
        return
    if ctx.approved is not None:
        approved, ctx.approved = ctx.approved, None         # used once
        if approved == binding:
            return
        raise ToolError("this is not what the owner approved (the command, its folder or a "
                        "script it runs changed); it needs a new approval")
    if ctx.ask is None:
        raise ApprovalNeeded(binding, question, ctx.memory)
    if not ctx.ask(question):
        raise ToolError("the owner declined")


def _folder(ctx, cwd: str) -> str:
    workspace = ctx.config.workspace.resolve()
    path = Path(cwd)
    return "workspace/" + (str(path.relative_to(workspace)) + "/" if path != workspace else "") \
        if path.is_relative_to(workspace) else cwd


def question(ctx, command: str, cwd: Path) -> str:
    return f"Run in {_folder(ctx, str(cwd))}: {command}"


class Approvals:
    """The parked turns of one home: park, answer, expire."""

    def __init__(self, config):
        self.config = config
        self.dir = config.home / "state" / "approvals"

    def pending(self) -> list[dict]:
        return [r for r in map(_load, sorted(self.dir.glob("*.json"))) if r]

    def park(self, need: ApprovalNeeded, msg: dict, to: tuple[str, str]) -> dict:
        """Write the parked turn of `msg`; the question (with its code) is returned for the chat
        `to`."""
        import secrets
        self.dir.mkdir(parents=True, exist_ok=True)
        taken = {p.stem for p in self.dir.rglob("*.json")}     # pending, expired, answered
        code = next(c for c in (f"{secrets.randbelow(10000):04d}" for _ in range(1000)) if c not in taken)
        minutes = max(1, round(self.config.tools.approval.timeout_s / 60))
        record = {"code": code, "binding": need.binding, "call": need.call, "msg": msg,
                  "memory": need.memory,
                  "channel": to[0], "chat_id": to[1], "asked_at": time.time(),
                  "expires_at": time.time() + self.config.tools.approval.timeout_s,
                  "question": f'{need.question} — reply "yes {code}" or "no {code}" '
                              f"(expires in {minutes} min)"}
        maildir.atomic_write(self.dir / f"{code}.json", json.dumps(record, ensure_ascii=False))
        log.info("approval %s asked in %s:%s: %s", code, *to, need.question)
        return record

    def park_task(self, need: ApprovalNeeded, job: dict, spawn):
        """A background task's question, to the owner (else the chat that started it); its file
        in state/subagents/ says it is parked, with the code."""
        from lib.mail import post_outbox
        from lib.usage import owner
        to = owner(self.config) or (job["origin"]["channel"], job["origin"]["chat_id"])
        msg = {"id": job["id"], "channel": "system", "chat_id": f"subagent:{job['id']}",
               "text": job["task"], "metadata": {"kind": "subagent", "task_id": job["id"]}}
        record = self.park(need, msg, to)
        spawn.save(dict(job, parked=record["code"]))
        post_outbox(self.config.home, *to, f"Background task '{job['label']}': {record['question']}")

    def take(self, msg: dict, again: bool, agent) -> str | None:
        """For "yes CODE" / "no CODE": the parked turn goes on (go_on), and the answer's own reply
        says so, or why not ("Approval 1234 has expired…"); None when `msg` is no answer at all."""
        record, verdict = self.answer(msg, again)
        if not record:
            return verdict or None
        self.go_on(record, verdict, agent)
        return f"{'Approved' if verdict == 'yes' else 'Declined'} {record['code']}; the assistant goes on."

    def go_on(self, record: dict, verdict: str, agent):
        """The parked call's result into its conversation (settle), then the turn goes on as an
        inbox message of its own, marked `resume` (crash-safe like any); a background task is
        started again instead."""
        from lib.mail import post_inbox, target
        from lib.sessions import Session
        msg = record["msg"]
        if msg.get("metadata", {}).get("kind") == "subagent":
            return self.resume_task(agent.services.spawn, record, verdict)
        channel, chat_id = target(msg)          # its conversation, as the worker chose it
        self.settle(record, verdict, agent, Session(self.config.home, channel, chat_id), channel, chat_id)
        meta = dict(msg.get("metadata") or {}, resume=True, verdict=verdict)
        post_inbox(self.config.home, dict(msg, metadata=meta),
                   f"approval-{record['code']}-{int(record.get('asked_at', 0))}")

    def answer(self, msg: dict, again: bool = False) -> tuple[dict | None, str]:
        """For "yes CODE" / "no CODE": (the claimed record, "yes" or "no"), or (None, why not);
        (None, "") when the message is no answer at all. `again`: the answer was cut off by a
        crash after its claim, so the record comes from answered/, marked "again"."""
        m = ANSWER.fullmatch(msg["text"])
        if not m or msg["channel"] == "system":     # a cron job's text never approves anything
            return None, ""
        verdict, code = ("yes" if m[1].lower().startswith("y") else "no"), m[2]
        record = _load(self.dir / f"{code}.json")
        if record is None and again:
            record = _load(self.dir / "answered" / f"{code}.json")
            return (dict(record, again=True), verdict) if record else (None, "")
        expired = f"Approval {code} has expired; the assistant was told you did not answer."
        answered = f"Approval {code} was already answered."
        if record is None:          # an unknown code: just words for the assistant ("no 2024")
            done = _load(self.dir / "answered" / f"{code}.json")
            return None, "" if done is None else expired if done.get("expired") else answered
        if not self._may_answer(msg, record):
            return None, f"Approval {code} can only be answered in the chat that was asked, or by the owner."
        if record.get("expires_at", 0) <= time.time():
            return None, expired
        return (record, verdict) if self._claim(code) else (None, answered)

    def expire(self, agent):
        """Each pending approval past its time goes on as "did not answer": claimed into expired/,
        its turn set going, then filed in answered/ marked so. A kill -9 between is taken up at
        the next call (go_on writes nothing twice)."""
        now = time.time()
        for record in self.pending():
            if record.get("expires_at", 0) <= now and self._claim(record["code"], "expired"):
                log.info("approval %s expired unanswered", record["code"])
        for path in sorted((self.dir / "expired").glob("*.json")):
            record = _load(path) or {}
            try:
                self.go_on(record, "timeout", agent)
            except Exception:
                log.exception("the turn parked as approval %s could not go on", path.stem)
            maildir.atomic_write(self.dir / "answered" / path.name,
                                 json.dumps(dict(record, expired=True), ensure_ascii=False))
            path.unlink()

    def wait(self, most: float) -> float:
        """Seconds until the first pending approval expires, at most `most`."""
        return min([most] + [max(1.0, r.get("expires_at", 0) - time.time()) for r in self.pending()])

    def settle(self, record: dict, verdict: str, agent, session, channel: str, chat_id: str):
        """The parked call's result into the session: its output when the owner said yes, else
        why it did not run. After a crash half-way (`again`) nothing is added: the turn's resume
        says the call was cut off, so it never runs twice."""
        if record.get("again"):
            return
        msg, call = record["msg"], record["call"]
        if any(m.get("tool_call_id") == call["id"] and m.get("id") == msg["id"] for m in session.messages):
            return                          # settled before a kill -9 (an expiry taken up again)
        content = run(agent, record, channel, chat_id) if verdict == "yes" else result(verdict)
        session.append({"role": "tool", "tool_call_id": call["id"], "name": call["name"],
                        "content": content, "id": msg["id"]})

    def resume_task(self, spawn, record: dict, verdict: str):
        """A background task's answer: the call's result into its session, then it goes on."""
        from lib.sessions import Session
        task_id = record["msg"]["metadata"]["task_id"]
        job = json.loads((spawn.dir / f"{task_id}.json").read_text(encoding="utf-8"))
        if job.pop("parked", None) is None:
            return                          # relaunched already, before a kill -9
        self.settle(record, verdict, spawn, Session(self.config.home, "subagent", task_id),
                    "subagent", task_id)
        spawn.relaunch(dict(job, resumed=True))

    def _may_answer(self, msg, record) -> bool:
        here = f"{msg['channel']}:{msg['chat_id']}"
        return (here == f"{record['channel']}:{record['chat_id']}" or msg["channel"] in OWNER_CHANNELS
                or here == self.config.tools.approval.owner)

    def _claim(self, code: str, into: str = "answered") -> bool:
        (self.dir / into).mkdir(parents=True, exist_ok=True)
        try:
            os.rename(self.dir / f"{code}.json", self.dir / into / f"{code}.json")
            return True
        except FileNotFoundError:
            return False


def _load(path) -> dict | None:
    """One parked turn; None for a file that is missing, unreadable, or not a regular file (a
    FIFO or a link is never opened for reading: the worker looks here at every step)."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise OSError(f"{path} is not a regular file")
            record = json.loads(f.read(MAX_RECORD))
        return record if isinstance(record, dict) and "code" in record else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        log.warning("%s is unreadable; left as it is", path)
        return None


def run(agent, record: dict, channel: str, chat_id: str) -> str:
    """The approved call, now, bound to what was approved (its tool checks that it still is)."""
    from lib.tools import Context
    d = agent.config.agents.defaults
    group = (record["msg"].get("metadata") or {}).get("is_group") is True     # an older record
    ctx = Context(agent.config, agent.config.workspace, channel, chat_id, agent.send,
                  agent.services, deadline=time.monotonic() + d.turn_timeout_s,
                  approved=record["binding"],
                  memory=record.get("memory", not group or d.memory_in_groups))
    log.info("approval %s: running %s", record["code"], record["call"]["name"])
    return agent.tools.call(record["call"]["name"], record["call"]["arguments"], ctx)


def result(verdict: str) -> str:
    """What the model sees for a parked call that was not run."""
    return {"no": "Error: the owner declined", "timeout": "Error: the owner did not answer "
            "(the approval expired; ask again if it is still needed)"}[verdict]
