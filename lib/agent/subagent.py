"""Sub-agents: a long, self-contained job runs as a turn of its own in a background thread, and
its result comes back to the inbox as a system message addressed to the chat that asked for it.

Each task is written to state/subagents/<id>.json before it starts, its result is written there
before it is posted, and the file goes only after the post: a kill -9 at any point loses nothing,
and start() runs again (or just posts) whatever it finds there.
"""
import json
import logging
import threading
import time
import uuid

from lib import maildir
from lib.agent.context import clock
from lib.agent.loop import run_turn
from lib.approvals import ApprovalNeeded, Approvals
from lib.errors import ProviderError, ToolError
from lib.part import Part
from lib.sessions import Session, now_iso
from lib.tools import Context, Services, default_registry

log = logging.getLogger(__name__)
MAX_RESULT = 20_000


class Stopped(Exception):
    """The gateway is stopping: the task stays persisted for the next start."""


class Subagents(Part):
    """A gateway part with no loop of its own: each background task runs in its own thread."""
    name = "spawn"

    def __init__(self, config, provider, post, max_running=3):
        super().__init__()
        self.config, self.post, self.max_running = config, post, max_running
        self.dir = config.home / "state" / "subagents"
        self.provider = provider
        skip = ("message", "spawn", "cron") + (() if config.tools.exec.enable else ("exec",))
        self.tools = default_registry(exclude=skip)
        self._running: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self.send, self.services = None, Services()     # what an approved call's context takes

    def loops(self) -> list:
        return []

    def complete(self, messages, tools=None, deadline=None, **who):
        """The provider for the tasks' turns: a stop request ends a turn before its next call."""
        if self.stopping.is_set():
            raise Stopped()
        return self.provider.complete(messages, tools, deadline=deadline, **who)

    def start(self):
        super().start()
        for path in sorted(self.dir.glob("*.json")):
            try:
                job = json.loads(path.read_text(encoding="utf-8"))
                log.info("background task %s (%s) was cut off by a restart; %s", job["id"],
                         job["label"], "reporting it" if "result" in job else "running it again")
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("%s is unreadable (%s); skipped", path, e)
                continue
            if job.get("parked"):
                continue                    # waits for the owner's answer (SPEC §9)
            with self._lock:
                self._launch(job)

    def stop(self, timeout: float = 2.0):
        self.stopping.set()
        with self._lock:
            threads = list(self._running.values())
        for thread in threads:
            thread.join(timeout / max(1, len(threads)))

    def spawn(self, task: str, label="", origin_channel="cli", origin_chat="default",
              memory=True, readable=()) -> str:
        """Start a task with the privacy of the turn that asks (Context.memory, .readable)."""
        if not task.strip():
            raise ToolError("task is empty: describe the whole job, with everything it needs")
        with self._lock:
            if len(self._running) >= self.max_running:
                raise ToolError(f"{self.max_running} background tasks are already running; "
                                "wait for one to finish")
            task_id = uuid.uuid4().hex[:8]
            label = " ".join((label or task).split())[:40]
            job = {"id": task_id, "task": task, "label": label, "origin": {
                "channel": origin_channel, "chat_id": str(origin_chat)}, "created_at": now_iso(),
                   "memory": bool(memory), "readable": list(readable)}
            self.save(job)
            self._launch(job)
        return (f"Started background task '{label}' (id {task_id}); "
                "its result will arrive as a message.")

    def _launch(self, job):
        if job["id"] in self._running:      # started already (relaunched as the gateway started)
            return
        thread = threading.Thread(target=self._run, args=(job,), name=f"subagent-{job['id']}",
                                  daemon=True)
        self._running[job["id"]] = thread
        thread.start()

    def _run(self, job):
        try:
            if "result" not in job:
                try:
                    result = self._work(job)
                except ProviderError as e:
                    result = f"the task failed: {e}"
                except Stopped:
                    return
                except ApprovalNeeded as need:  # parked for the owner; the answer relaunches it
                    return Approvals(self.config).park_task(need, job, self)
                except Exception as e:      # a bug must not lose the task's answer
                    log.exception("background task %s failed", job["id"])
                    result = f"the task failed: {type(e).__name__}: {e}"
                job["result"] = result[:MAX_RESULT]
                self.save(job)             # from here on a restart only reports it
            self._report(job)
        finally:
            with self._lock:
                self._running.pop(job["id"], None)

    def _work(self, job) -> str:
        ws, d = self.config.workspace, self.config.agents.defaults
        prompt = ("You are a background worker for nanoclaw, a personal assistant. Do the task "
                  "below with your tools; nobody can answer questions, so decide for yourself. "
                  "End with a concise result: what you found or did, and where any files are.\n"
                  f"- Time: {clock(d.timezone)}\n"
                  f"- Workspace: {ws} (relative paths start here)")
        session = Session(self.config.home, "subagent", job["id"])
        if not job.get("resumed"):
            session.append({"role": "user", "content": job["task"]})
        ctx = Context(self.config, ws, "subagent", job["id"], source="subagent",
                      deadline=time.monotonic() + d.turn_timeout_s, memory=job.get("memory", True),
                      readable=tuple(job.get("readable") or ()))
        new = run_turn([{"role": "system", "content": prompt}, *session.history(10**6)], self,
                       self.tools, ctx, d.max_tool_iterations, session.append)
        session.sync()
        return (new[-1].get("content") or "").strip() or "(the sub-agent gave no answer)"

    def relaunch(self, job: dict):
        """Go on with a task that waited for the owner (lib/approvals.py settled its call)."""
        self.save(job)
        with self._lock:
            self._launch(job)

    def _report(self, job):
        text = (f"[Background task '{job['label']}' finished]\nTask: {job['task']}\n"
                f"Result: {job['result']}\nTell the user the outcome briefly in your own words.")
        self.post({"channel": "system", "chat_id": f"subagent:{job['id']}", "sender_id": "subagent",
                   "text": text, "metadata": {"kind": "subagent", "task_id": job["id"],
                                              "reply_to": job["origin"]}}, f"subagent-{job['id']}")
        (self.dir / f"{job['id']}.json").unlink(missing_ok=True)

    def save(self, job):
        maildir.atomic_write(self.dir / f"{job['id']}.json", json.dumps(job, ensure_ascii=False))
