"""The agent loop: `run_turn` asks the model, runs the tools it asks for and saves each message as
soon as it exists; `Agent.respond` adds commands, the session, the system prompt and memory."""
import base64
import logging
import mimetypes
import time
from pathlib import Path

from lib.agent.context import system_prompt
from lib.agent.memory import Memory
from lib.approvals import ApprovalNeeded
from lib.errors import LimitReached, TurnTimeout
from lib.mcp import Servers
from lib.usage import source
from lib.sessions import Session, interrupted, now_iso
from lib.providers import Provider
from lib.tools import Context, Registry, Services, default_registry

log = logging.getLogger(__name__)
HELP = ("Commands:\n/new — start a new conversation (a summary of this one goes to memory)\n"
        "/forget TEXT — remove the lines of MEMORY.md that contain TEXT\n"
        "/help — this list\nAnything else goes to the assistant.")


def run_turn(messages: list, provider, tools: Registry, ctx: Context, max_iterations: int,
             on_message=lambda m: None) -> list:
    """Returns the new messages; `messages` (the request so far) grows with them. The turn ends
    with a notice when `ctx.deadline` passes; tools bound their own waits by it."""
    new = []

    def add(msg):
        messages.append(msg)                    # the request stays in the API's shape
        saved = dict(msg, timestamp=now_iso())  # the session also records when
        new.append(saved)
        on_message(saved)

    for _ in range(max_iterations):
        try:
            schemas = tools.schemas(ctx.deadline)
            if time.monotonic() >= ctx.deadline:
                raise TurnTimeout("no time left")
            reply = provider.complete(messages, schemas, deadline=ctx.deadline,
                                      source=ctx.source, session=f"{ctx.channel}:{ctx.chat_id}")
        except TurnTimeout:
            limit = ctx.config.agents.defaults.turn_timeout_s
            add({"role": "assistant", "content": f"I ran out of time for this message (the limit "
                 f"is {limit} s, agents.defaults.turn_timeout_s) and stopped. Ask again, perhaps "
                 "with a smaller task, or say 'continue'."})
            return new
        add(reply.message())
        if not reply.tool_calls:
            return new
        for call in reply.tool_calls:
            log.info("tool %s %s", call["name"], call["arguments"][:200])
            try:
                result = tools.call(call["name"], call["arguments"], ctx)
            except ApprovalNeeded as need:      # parked (SPEC §9): the owner's answer goes on from
                need.call = call                # this call; those after it are closed then (_resume)
                raise
            add({"role": "tool", "tool_call_id": call["id"], "name": call["name"], "content": result})
    add({"role": "assistant", "content": f"I stopped after {max_iterations} rounds of tool use "
         "without finishing (agents.defaults.max_tool_iterations). Say 'continue' to let me go on."})
    return new


def agent_tools(config) -> Registry:
    """The tools a conversation gets: all (exec if tools.exec.enable), and the MCP servers'."""
    tools = default_registry(exclude=() if config.tools.exec.enable else ("exec",))
    tools.more = Servers(config) if config.tools.mcp_servers else None
    return tools


class Agent:
    """Answers messages with the provider and tools it is given. `send(channel, chat_id, text,
    media=None)` is the `message` tool's way out; `services` are what the gateway runs."""

    def __init__(self, config, provider: Provider, tools: Registry, send=None,
                 services: Services | None = None):
        self.config, self.provider, self.tools = config, provider, tools
        self.send, self.services = send, services or Services()
        self.ask = None             # how a risky action is asked about: None parks the turn
        self.memory = Memory(config.workspace)

    def respond(self, msg: dict, session: Session | None = None, resume=True) -> str:
        """One turn for `msg` (an inbox message: channel, chat_id, text, [media], [id]). With
        `resume`, a message whose id the session already has is taken up where it stopped (a
        restart after a crash); without it, the message is new whatever its id."""
        channel, chat_id, text = msg["channel"], msg["chat_id"], msg["text"]
        media, msg_id = msg.get("media") or (), msg.get("id")
        session = session or Session(self.config.home, channel, chat_id)
        d, command = self.config.agents.defaults, text.strip().lower()
        # a group chat's message, or one to a chat that is a group's (a cron job's in a group too)
        group = (msg.get("metadata") or {}).get("is_group") is True or session.group
        show = not group or d.memory_in_groups          # MEMORY.md in this chat (SPEC §13)
        if command == "/help":
            return HELP
        if command.split(None, 1)[:1] == ["/forget"]:
            return self.memory.forget(text.strip()[7:], show)
        if command == "/new":
            session.retry_consolidation_at = 0.0       # asked for now: no back-off
            saved = self.memory.consolidate(session, self.provider, d)
            session.archive()
            return "New conversation started." + (
                " I saved a summary of the last one to memory." if saved else
                " (The model could not summarise the last one; it is kept in sessions/archive/.)")
        mine = [m for m in session.messages if resume and msg_id and m.get("id") == msg_id]
        if mine and (done := self._resume(session, mine)) is not None:
            return done
        user = {"role": "user", "content": text + "".join(f"\n[attached: {p}]" for p in media)}
        first = [] if mine else [dict(user, media=list(media) or None, group=group or None)]
        ctx = Context(self.config, self.config.workspace, channel, chat_id, self.send, self.services,
                      deadline=time.monotonic() + d.turn_timeout_s, ask=self.ask,
                      source=msg.get("source") or source(msg),     # the worker's, or ours
                      memory=show, readable=(*media, *(p for m in session.messages  # files sent
                                                       for p in m.get("media") or ())))
        self.maintain(session, ctx.deadline)    # what would leave the prompt is saved first
        messages = [{"role": "system", "content": system_prompt(self.config, channel, chat_id, show)},
                    *session.history(d.memory_window - len(first)), *[user][:len(first)]]
        if media and messages[-1]["role"] == "user":
            messages[-1] = {"role": "user", "content": _parts(messages[-1]["content"], media)}

        def save(m):        # the user's line is written with the first answer: a turn that never
            while first:    # started (no model, a missing package) leaves the session as it was
                session.append(dict(first.pop(), id=msg_id))
            session.append(dict(m, id=msg_id))
        try:
            new = run_turn(messages, self.provider, self.tools, ctx, d.max_tool_iterations, save)
        except LimitReached:
            if first and ctx.source in ("chat", "api"):     # kept, to be taken up after the
                session.append(dict(first.pop(), id=msg_id))    # reset or a raise (SPEC §10)
            raise
        session.sync()
        return _text(new[-1])

    def _resume(self, session: Session, mine: list) -> str | None:
        """After a crash or an approval the same message comes again, and `mine` are its lines in
        the session. If its answer is there, that is the reply (the model is not asked twice); a
        call left without a result is told it was interrupted, and the turn goes on from there."""
        last = mine[-1]
        if last["role"] == "assistant" and not last.get("tool_calls"):
            return _text(last)
        calls = next((m["tool_calls"] for m in reversed(mine) if m.get("tool_calls")), [])
        answered = {m.get("tool_call_id") for m in mine if m["role"] == "tool"}
        for call in calls:
            if call["id"] not in answered:
                session.append(dict(interrupted(call), id=last["id"]))
        return None

    def maintain(self, session: Session, deadline: float | None = None):
        """Memory upkeep, by `deadline`: nothing leaves the prompt's window unconsolidated."""
        d = self.config.agents.defaults
        self.memory.consolidate(session, self.provider, d, d.memory_window, deadline)


def _text(msg: dict) -> str:
    return (msg.get("content") or "").strip() or "(The model gave an empty answer.)"


def _parts(text: str, media) -> list | str:
    """Images go to the model inline; other files are named in the text for read_file."""
    parts = [{"type": "text", "text": text}]
    for path in media:
        mime = mimetypes.guess_type(path)[0] or ""
        if mime.startswith("image/") and Path(path).is_file():
            data = base64.b64encode(Path(path).read_bytes()).decode()
            parts.append({"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}})
    return parts if len(parts) > 1 else text
