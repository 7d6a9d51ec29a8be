"""The one worker thread: claim an inbox message, run the turn, write the reply, mark it done.

Exactly once, even across kill -9: the session records every step under the message's id, the
reply's file name carries the inbox file's name, and only then does the message move to done/.
A message found in cur/ at start-up is looked up in that order and finished where it stopped.
"""
import errno
import json
import logging
import os
import shutil
import time
from pathlib import Path

from lib import maildir
from lib.channels import allowed
from lib.approvals import ApprovalNeeded, Approvals
from lib.errors import LimitReached, ProviderDown, ProviderError
from lib.mail import NO_REMOTE, post_outbox, read_message, reply_exists, target
from lib.part import Part
from lib.sessions import Session
from lib.usage import outage, owner, quiet_held, source

log = logging.getLogger(__name__)
FULL = (errno.ENOSPC, errno.EDQUOT)
RESCAN_S = 10.0         # a safety net under the file watcher
PROACTIVE = ("cron", "heartbeat", "subagent")  # their replies answer no one: no reply_to (SPEC §3)
STUCK_GRACE_S = 60      # past the turn deadline by this much, the worker counts as stuck


class Worker(Part):
    name = "worker"

    def __init__(self, config, agent):
        super().__init__()
        self.config, self.agent, self.home = config, agent, config.home
        self.inbox, self.outbox = self.home / "inbox", self.home / "outbox"
        self._sessions: dict[str, Session] = {}
        self._last_chat = None
        self.busy_since: float | None = None    # monotonic start of the current step of work
        self._backoff, self._retry_at = 0.0, 0.0        # while the disk is full or the model down

    @property
    def approvals(self) -> Approvals:
        """The turns parked for the owner's yes, by the config as it is now (after a reload)."""
        return Approvals(self.config)

    def start(self):
        maildir.ensure(self.inbox)
        maildir.ensure(self.outbox, ("sent", "failed"))
        if left := maildir.recover(self.inbox, requeue=False):
            log.info("finishing %d message(s) left by the last run", len(left))
        super().start()

    def step(self) -> float:
        self.approvals.expire(self.agent)       # an unanswered turn goes on, as an inbox message
        self.drain()
        return max(0.0, self._retry_at - time.monotonic()) or self.approvals.wait(RESCAN_S)

    def drain(self):
        # cur/ first, in place: what a crash or a full disk left there is taken up where it
        # stopped, however often we are killed meanwhile. Then new/. A turn cut off by stop()
        # stays in cur/. While the disk is full, nothing is tried before the back-off ends.
        if time.monotonic() < self._retry_at:
            return
        held = quiet_held(self.config, self.inbox)      # scheduled, in quiet hours (SPEC §10)
        for folder in ("cur", "new"):
            for name in maildir.waiting(self.inbox, folder=folder):
                if self.stopping.is_set():
                    return
                if folder == "new" and name in held:
                    continue            # taken up at a rescan once the quiet hours end
                # a name used before (a script's a1.json again) is taken under a name of its
                # own: its id, its reply's name and the crash check must not meet the first's
                again = folder == "new" and maildir.find(self.inbox, name, ("done", "failed"))
                path = self.inbox / "cur" / name if folder == "cur" else maildir.claim(
                    self.inbox, name, again and maildir.unique_name(Path(name).stem + ".") + ".json")
                if path and not self._take(path, recovered=folder == "cur"):
                    return

    def progressing(self) -> bool:
        """False when one message has held the worker well past the turn deadline (a hang the
        deadline could not cut short): the gateway then stops feeding systemd's watchdog."""
        since = self.busy_since
        limit = self.config.agents.defaults.turn_timeout_s + STUCK_GRACE_S
        return since is None or time.monotonic() - since < limit

    def _take(self, path: Path, recovered: bool) -> bool:
        # handle() one message. False when the disk is full (back-off 1 s, doubling to a minute)
        # or the model is down (going on from the provider's own retries, doubling to 10 min):
        # it waits in cur/, the messages after it in new/.
        # Any other failure files it in failed/, not retried for ever.
        self.busy_since = time.monotonic()
        try:
            # after a full disk: no paid model call until there is room
            if self._backoff and shutil.disk_usage(self.home).free < 1 << 16:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.handle(path, recovered)
        except Exception as e:
            full = isinstance(e, OSError) and e.errno in FULL
            if full or isinstance(e, ProviderDown):
                # the provider retried after 1, 2 and 4 x retry_backoff_s: go on from 8 x
                first = 1.0 if full else max(0.1, 8 * self.config.agents.defaults.retry_backoff_s)
                self._backoff = min(60.0 if full else 600.0, self._backoff * 2 or first)
                self._retry_at = time.monotonic() + self._backoff
                if self._backoff == first:
                    log.error("%s: inbox/%s and the messages after it wait in inbox/; trying "
                              "again", f"the disk is full ({e.strerror})" if full else e, path.name)
                if full:
                    self._sessions.clear()      # their files may lack what could not be written
                return False
            log.exception("inbox/%s failed; moved to inbox/failed/", path.name)
            if os.path.lexists(path):
                maildir.fail(path, f"internal error: {type(e).__name__}: {e}")
        finally:
            self.busy_since = None
        self._backoff = 0.0
        return True

    def handle(self, path: Path, recovered: bool = False):
        # `recovered`: it was in cur/ before (a crash, a full disk), so its reply or part of its
        # turn may exist already. The same name dropped again later is a new message.
        try:
            msg = read_message(path)
        except (ValueError, OSError) as e:
            log.warning("inbox/%s: %s; moved to inbox/failed/", path.name, e)
            maildir.fail(path, str(e))
            return
        sender = str(msg.get("sender_id", ""))
        if msg["channel"] not in NO_REMOTE:
            allow = getattr(self.config.channels, msg["channel"]).allow_from
            if not allowed(allow, sender, msg.get("metadata", {}).get("sender_aliases")):
                reason = (f"sender {sender or '(none)'} is not in channels.{msg['channel']}."
                          "allow_from; add the id there to let them in")
                log.warning("refused %s: %s", path.name, reason)
                maildir.fail(path, reason)
                return
        key = path.stem
        if recovered and reply_exists(self.home, key):
            maildir.finish(path)            # the crash came after the reply was queued
            return
        if said := self.approvals.take(msg, recovered, self.agent):  # "yes 1234": that turn goes on
            # the answer's own reply: taken, or why not
            post_outbox(self.home, *target(msg), said, reply_to=msg["id"], key=key)
        resume = recovered or path.name.startswith("approval-") and \
            msg.get("metadata", {}).get("resume") is True      # approvals.go_on posted it
        session = None if said else self._turn(msg, key, path.stat().st_mtime, resume)
        maildir.finish(path)
        if msg["channel"] not in NO_REMOTE and not msg.get("metadata", {}).get("is_group"):
            self._remember_chat(msg["channel"], msg["chat_id"])     # no group: it is not the owner
        self.busy_since = time.monotonic()     # memory upkeep has a deadline of its own
        try:
            if session:
                self.agent.maintain(session)
        except Exception:
            log.exception("memory upkeep failed; will try again after the next message")

    def _turn(self, msg: dict, key: str, since: float, resume: bool) -> Session | None:
        """Run the turn for `msg` and queue its reply (`key`: the inbox file's name)."""
        channel, chat_id = target(msg)
        session = self._session(channel, chat_id)
        meta = msg.get("metadata", {})
        proactive = msg["channel"] == "system" and meta.get("kind") in PROACTIVE
        try:
            reply = self.agent.respond(dict(msg, channel=channel, chat_id=chat_id, source=source(
                msg)), session, resume=resume)      # a heartbeat in a chat counts as heartbeat
        except ApprovalNeeded as need:      # parked: the next message is taken (SPEC §9)
            to = proactive and owner(self.config) or (channel, chat_id)
            reply = self.approvals.park(need, msg, to)["question"]
            (channel, chat_id), proactive = to, False
        except LimitReached as e:
            if proactive:               # heartbeat and cron skip at the cap (SPEC §10)
                log.info("%s skipped: %s", key, e)
                return None
            reply = str(e)
        except ProviderDown as e:       # it waits in cur/ (_take), told once, unless it waited a day
            reply, notice = outage(e, since, key)
            if notice and not (proactive or channel == "system" or reply_exists(self.home, key + "-wait")):
                post_outbox(self.home, channel, chat_id, notice, reply_to=msg["id"],
                            metadata=msg.get("metadata"), key=key + "-wait")
            if not reply:
                raise
        except ProviderError as e:      # said to the user; marked, so the API answers 502
            reply, meta = str(e), dict(meta, error="model")
        except Exception as e:      # a bug: the user is told; _take logs it and files it in failed/
            if not (isinstance(e, OSError) and e.errno in FULL):    # a full disk: it waits in cur/
                self._sessions.pop(f"{channel}:{chat_id}", None)
                post_outbox(self.home, channel, chat_id, "Sorry, something went wrong inside nanoclaw "
                            "while answering this. The message is kept in inbox/failed/ and the "
                            "error is in the log.", reply_to=msg["id"], key=key,
                            metadata=dict(msg.get("metadata", {}), error="internal"))
            raise
        if meta.get("quiet_reply") and reply.strip().strip(".!").upper() == meta["quiet_reply"]:
            channel = "system"          # nothing worth saying (HEARTBEAT_OK): recorded, not sent
        elif channel == "system":       # cron or heartbeat output with no chat to go to
            log.info("%s has no chat to go to; its reply: %s", msg["chat_id"], reply[:2000])
        post_outbox(self.home, channel, chat_id, reply, reply_to=None if proactive else msg["id"],
                    metadata=meta, key=key)
        return session

    def _session(self, channel, chat_id) -> Session:
        key = f"{channel}:{chat_id}"
        session = self._sessions.get(key)
        if session is None or session.stale:        # e.g. `agent -s telegram:42` wrote to it
            if len(self._sessions) > 64:
                self._sessions.clear()
            session = self._sessions[key] = Session(self.home, channel, chat_id)
        return session

    def _remember_chat(self, channel, chat_id):
        """The owner's last active private chat: where proactive messages and their questions go."""
        data = {"channel": channel, "chat_id": chat_id}
        if data != self._last_chat:         # written (and fsynced) only when it changes
            maildir.atomic_write(self.home / "state" / "last_chat.json", json.dumps(data))
            self._last_chat = data
