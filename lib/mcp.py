"""MCP servers as tools (SPEC §12): each server's tools reach the model as mcp_<server>_<tool>.

The official SDK (`mcp`) is asyncio: its clients run on one event loop in this part's thread, and a
tool call is handed across and waited for, never past tool_timeout or the turn's deadline. Tools
are listed once a server answered `initialize`, and again on notifications/tools/list_changed. A
server that fails is logged with its last stderr lines and started again 4 s after its failure
was noticed, then 8 s, … up to 5 min; a call meanwhile says why. The SDK is imported only when a
server is started.
"""
import collections
import contextlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lib.errors import ConfigError, ToolError
from lib.fields import setting
from lib.part import Part

log = logging.getLogger(__name__)
FIRST_RETRY, MAX_RETRY = 4.0, 300.0     # seconds from a failure to the restart: doubling
START_TIMEOUT = 60.0    # to connect and initialize, and for list or ping (npx may download first)
PING_S = 60.0           # an idle server is pinged this often, so that a dead one is noticed
MAX_TOOLS, MAX_PAGES, STDERR_LINES = 100, 10, 20        # per server
MAX_SCHEMA, MAX_RESULT = 20000, 50000   # characters of one tool's schema, of one result
MAX_LINE = 8 << 20      # bytes of one message from a stdio server; a longer one is never held whole


@dataclass(frozen=True)
class McpServer:
    """tools.mcp_servers.NAME: a command (stdio), or a url (Streamable HTTP, else HTTP+SSE)."""
    command: str = ""
    args: list[str] = setting([])
    env: dict[str, str] = setting({})   # its environment, besides PATH HOME USER LOGNAME SHELL TERM
    cwd: str = ""                       # empty: the workspace
    url: str = ""
    headers: dict[str, str] = setting({})
    type: str = setting("", "", "stdio", "sse", "streamableHttp")  # the original project's; sse: only SSE
    tool_timeout: int = setting(30, low=1)
    enabled_tools: list[str] = setting(["*"])   # its own tool names, or mcp_<server>_<tool>
    sandbox: bool = False               # true: run it in the exec sandbox (bubblewrap)


def _problem(s: McpServer) -> str:
    return "" if bool(s.command) != bool(s.url) else "needs either command (a program speaking " \
        "MCP on stdio) or url (an MCP server over HTTP)" + (", not both" if s.command else "")


@contextlib.asynccontextmanager
async def _stdio(name: str, argv: list, env: dict, cwd: Path, errlog):
    """The SDK's stdio transport (one JSON-RPC message per line), except that a line is read up
    to MAX_LINE bytes and never whole: a longer answer (a relayed web page, say) is dropped as it
    arrives and its request answered with an error. The environment: PATH, HOME, USER, LOGNAME,
    SHELL and TERM from ours (as the SDK gives), and the server's own env; nothing else."""
    import anyio
    from mcp.client.stdio import get_default_environment
    from mcp.shared.message import SessionMessage
    from mcp.types import JSONRPCMessage
    to_session, read = anyio.create_memory_object_stream(0)
    write, from_session = anyio.create_memory_object_stream(0)
    process = await anyio.open_process(argv, env={**get_default_environment(), **env}, cwd=cwd,
                                       stderr=errlog, start_new_session=True)

    async def reader():
        parts, size, head, tail = [], 0, b"", None      # tail: the end of a line being dropped
        async with to_session:
            async for chunk in process.stdout:
                *ends, rest = chunk.split(b"\n")
                for end in ends:
                    if tail is not None:            # a dropped line ends: an error for its request
                        message, tail = _too_long(name, head, (tail + end)[-200:]), None
                    else:
                        try:
                            message = SessionMessage(JSONRPCMessage.model_validate_json(b"".join(parts) + end))
                        except ValueError as e:
                            message = e
                    parts, size = [], 0
                    await to_session.send(message)
                if tail is not None:
                    tail = (tail + rest)[-200:]
                else:
                    parts.append(rest)
                    size += len(rest)
                    if size > MAX_LINE:             # from here on only its first and last bytes
                        head, tail, parts, size = b"".join(parts)[:200], b"", [], 0

    async def writer():
        async with from_session:
            async for message in from_session:
                await process.stdin.send(message.message.model_dump_json(
                    by_alias=True, exclude_none=True).encode() + b"\n")

    async with process, anyio.create_task_group() as tasks:
        for task in (reader, writer):       # the session gone first is no error
            tasks.start_soon(_quietly, task, (anyio.ClosedResourceError, anyio.BrokenResourceError))
        try:
            yield read, write
        finally:        # as MCP says: close its stdin, wait, SIGTERM, wait, SIGKILL
            with contextlib.suppress(Exception):
                await process.stdin.aclose()
            for sig in (0, 15, 9):
                if sig:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, sig)         # its own group: its children too
                with anyio.move_on_after(2):
                    await process.wait()
                    break
            tasks.cancel_scope.cancel()


async def _quietly(task, errors):
    with contextlib.suppress(*errors):
        await task()


def _too_long(name: str, head: bytes, tail: bytes):
    """What the session gets for a dropped message: an error for its request when its first or
    last bytes name the response's id (the Python SDK writes it first, the TypeScript SDK last),
    else the reason (logged by the SDK)."""
    from mcp.shared.message import SessionMessage
    from mcp.types import ErrorData, JSONRPCError, JSONRPCMessage
    log.warning("MCP server %s sent a message longer than %d bytes; dropped", name, MAX_LINE)
    why, ident = f"its answer is longer than {MAX_LINE} bytes", rb'"id"\s*:\s*(-?\d+|"[^"]{0,100}")'
    m = b'"method"' not in head and (     # a request of the server's is not ours to answer
        re.match(rb'\s*\{(?:\s*"jsonrpc"\s*:\s*"2\.0"\s*,)?\s*' + ident, head)
        or re.search(ident + rb'\s*\}\s*$', tail))
    if m:
        return SessionMessage(JSONRPCMessage(JSONRPCError(
            jsonrpc="2.0", id=json.loads(m[1]), error=ErrorData(code=-32000, message=why))))
    return ValueError(why)


def _safe(name: str) -> str:
    """What model APIs accept in a tool name: letters, digits, _ and -."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


class _Down(Exception):
    """Why a connection ended or could not be made, said in one line."""


def _reason(e: BaseException) -> str:
    while isinstance(e, BaseExceptionGroup) and e.exceptions:   # anyio's task groups wrap it
        e = e.exceptions[0]
    text = str(e) if isinstance(e, _Down) else f"{type(e).__name__}: {e}".rstrip(": ")
    return " ".join(text.split())[:300]


class _Server:
    """One configured server: its settings, how it is, and (while it is up) its tools."""

    def __init__(self, name: str, settings: McpServer):
        self.name, self.settings, self.prefix = name, settings, f"mcp_{_safe(name)}_"
        self.conn, self.tools = None, {}    # tools: exposed name -> (its own name, our schema)
        self.up, self.status, self.since = None, "starting", time.time()    # for status and calls
        self.stderr = collections.deque(maxlen=STDERR_LINES)
        self.settled = threading.Event()    # its first start has succeeded or failed


class _Conn:
    """One connection to a server, and what its owner task is woken for."""

    def __init__(self):
        import asyncio
        self.wake, self.ended = asyncio.Event(), asyncio.Event()
        self.client, self.lost, self.stale, self.calls = None, "", False, set()   # calls: tasks

    def end(self, why: str):
        self.lost = self.lost or why
        self.ended.set()
        self.wake.set()

    async def on_message(self, message):        # the SDK's message_handler
        if getattr(getattr(message, "root", None), "method", "") == "notifications/tools/list_changed":
            self.stale = True
            self.wake.set()


class Servers(Part):
    """The configured servers: a gateway part, and the tool registry's tools that come and go."""
    name = "mcp"

    def __init__(self, config):
        super().__init__()
        for name, s in config.tools.mcp_servers.items():
            if _problem(s):
                raise ConfigError(f"{config.path}: tools.mcp_servers.{name} {_problem(s)}")
        self.config, self.loop, self._main, self.state_file = config, None, None, None
        self.servers = [_Server(name, s) for name, s in config.tools.mcp_servers.items()]
        self._lock = threading.Lock()

    # --- the registry's side (the worker's thread) ---

    def schemas(self, deadline: float = float("inf")) -> list:
        """The tools of the servers that are up. The first call starts them (in the CLI) and
        waits, a while but never past the turn's `deadline`, until each has answered or failed."""
        self.start(publish=False)
        until = min(deadline, time.monotonic() + START_TIMEOUT)
        for srv in self.servers:
            srv.settled.wait(max(0.0, until - time.monotonic()))
        return [schema for srv in self.servers for _, schema in srv.tools.values()]

    def call(self, ctx, name: str, arguments: dict) -> str:
        import asyncio
        self.schemas(ctx.deadline)      # started, and each server's first answer waited for
        srv = next((s for s in self.servers if name in s.tools), None) or max(
            (s for s in self.servers if name.startswith(s.prefix)), key=lambda s: len(s.prefix), default=None)
        conn, tool = (srv.conn, srv.tools.get(name, ("",))[0]) if srv else (None, "")
        if conn is None or not tool:
            raise ToolError(self._missing(srv, name))
        limit = srv.settings.tool_timeout
        timeout = ctx.time_left(limit)
        future = asyncio.run_coroutine_threadsafe(self._call(conn, tool, arguments), self.loop)
        try:
            result = future.result(timeout)
        except TimeoutError:
            future.cancel()
            why = f"tools.mcp_servers.{srv.name}.tool_timeout" if timeout == limit else \
                "the turn ran out of time, agents.defaults.turn_timeout_s"
            raise ToolError(f"{name} gave no answer within {timeout:.0f} s ({why})") from None
        except Exception as e:      # cancelled: the server went down during the call
            why = f"MCP server {srv.name} is {srv.status}" if future.cancelled() else _reason(e)
            raise ToolError(f"{name} failed: {why}") from None
        if result.isError:
            raise ToolError(_text(result) or f"{name} failed and did not say why")
        return _text(result)

    def _missing(self, srv, name: str) -> str:
        if srv is None:
            return f"there is no tool named {name!r}: no MCP server in tools.mcp_servers has it"
        if not srv.up:
            return f"MCP server {srv.name} is {srv.status}; its tools come when it answers"
        return f"MCP server {srv.name} has no tool {name!r}; its tools: {', '.join(srv.tools) or 'none'}"

    # --- the part: one thread running the event loop ---

    def start(self, publish: bool = True):
        """Connect every server (once). `publish`: the gateway's, which writes state/mcp.json."""
        with self._lock:
            if self._threads:
                return
            self.state_file = self.config.home / "state" / "mcp.json" if publish else None
            self._publish()
            super().start()
            if not publish:
                import atexit
                atexit.register(self.stop)      # the CLI: servers end with it, cleanly

    def stop(self, timeout: float = 10.0):
        self.stopping.set()
        with contextlib.suppress(AttributeError, RuntimeError):    # not started, or over already
            self.loop.call_soon_threadsafe(self._main.cancel)
        super().stop(timeout)

    def _run(self):
        import asyncio
        with contextlib.suppress(asyncio.CancelledError):   # stop()
            asyncio.run(self._serve_all())

    async def _serve_all(self):
        import asyncio
        if not log.isEnabledFor(logging.DEBUG):     # its tracebacks; we log one line a failure
            logging.getLogger("mcp").setLevel(logging.CRITICAL)
        self.loop, self._main = asyncio.get_running_loop(), asyncio.current_task()
        if not self.stopping.is_set():          # (stop() came before the loop)
            await asyncio.gather(*(self._serve(srv) for srv in self.servers), return_exceptions=True)

    async def _serve(self, srv: _Server):
        """Keep one server connected: start it, and again after each failure, with back-off."""
        import asyncio
        delay = FIRST_RETRY
        while True:
            conn = _Conn()
            try:
                await self._session(srv, conn)
            except Exception as e:
                why = _reason(e)
            failed = time.monotonic()
            if self.stopping.is_set():      # the SDK's clean-up may have turned stop()'s cancel
                return                      # into an error of its own
            if srv.settings.command:    # its last words on stderr, before they are logged
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(conn.ended.wait(), 1.0)
                why = conn.lost if conn.lost and why.endswith("Connection closed") else why
            if srv.up and time.time() - srv.since > delay:
                delay = FIRST_RETRY     # it ran a good while: a new failure, not a crash loop
            said = "\n    ".join(srv.stderr)
            log.warning("MCP server %s is down: %s; starting it again in %g s%s", srv.name, why,
                        delay, f". Its last lines on stderr:\n    {said}" if said else "")
            self._set(srv, None, False, f"down: {why}; next try at {_clock(time.time() + delay)}")
            for task in conn.calls:     # no answer can come now
                task.cancel()
            await asyncio.sleep(delay - (time.monotonic() - failed))  # the wait for stderr too
            delay = min(delay * 2, MAX_RETRY)

    async def _session(self, srv: _Server, conn: _Conn):
        """One connection, from initialize until it fails (raises) or the part stops."""
        import asyncio
        async with contextlib.AsyncExitStack() as stack:
            conn.client = await self._connect(srv, conn, stack)
            await self._list(srv, conn)
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(conn.wake.wait(), PING_S)
                conn.wake.clear()
                if conn.lost:
                    raise _Down(conn.lost)
                if conn.stale:
                    conn.stale = False
                    await self._list(srv, conn)
                elif not conn.calls:
                    await conn.client.send_ping()

    async def _connect(self, srv: _Server, conn: _Conn, stack):
        """The SDK's session, initialized, over the first transport that works."""
        from datetime import timedelta

        from mcp import ClientSession
        s, errors = srv.settings, []
        kinds = ["stdio"] if s.command else ["sse"] if s.type == "sse" else ["http", "sse"]
        for kind in kinds:
            try:    # a failing transport cancels this task; leaving its `async with` says why
                async with contextlib.AsyncExitStack() as attempt:
                    with self._errlog(srv, conn) if kind == "stdio" else contextlib.nullcontext() as err:
                        streams = await attempt.enter_async_context(
                            await self._transport(srv, kind, attempt, err))
                        client = await attempt.enter_async_context(ClientSession(
                            *streams[:2], timedelta(seconds=START_TIMEOUT), message_handler=conn.on_message))
                        await client.initialize()
                    await stack.enter_async_context(attempt.pop_all())
                    return client
            except Exception as e:
                errors.append(_reason(e) if len(kinds) == 1 else f"{kind}: {_reason(e)}")
        raise _Down("; ".join(errors))

    async def _transport(self, srv: _Server, kind: str, stack, errlog):
        s = srv.settings
        if kind == "sse":
            from mcp.client.sse import sse_client
            return sse_client(s.url, headers=dict(s.headers), timeout=30)
        if kind == "http":
            from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client
            http = await stack.enter_async_context(create_mcp_http_client(headers=dict(s.headers)))
            return streamable_http_client(s.url, http_client=http)
        import shlex

        cwd = Path(os.path.expanduser(s.cwd or self.config.workspace))
        cwd.mkdir(parents=True, exist_ok=True)      # the workspace, before onboard made it
        argv = [os.path.expanduser(s.command), *s.args]
        if s.sandbox:
            from lib import sandbox
            if sandbox.problem():
                raise _Down(f"tools.mcp_servers.{srv.name}.sandbox is true, but "
                            f"{sandbox.problem()}: {sandbox.FIX}")
            argv = sandbox.bwrap_argv(self.config, self.config.workspace.resolve(), cwd,
                                      "exec " + shlex.join(argv))
        srv.stderr.clear()
        return _stdio(srv.name, argv, s.env, cwd, errlog)

    def _errlog(self, srv: _Server, conn: _Conn):
        """A pipe for the server's stderr, read by a thread into srv.stderr; its end (the server
        has exited) ends the connection. The file returned is our copy of the writing end."""
        read, write = os.pipe()

        def reader():
            with open(read, "rb") as f:
                for line in iter(lambda: f.readline(1000), b""):
                    srv.stderr.append(line.decode(errors="replace").rstrip())
                    log.debug("MCP server %s: %s", srv.name, srv.stderr[-1])
            with contextlib.suppress(RuntimeError):     # the loop has closed
                self.loop.call_soon_threadsafe(conn.end, "the server exited")
        threading.Thread(target=reader, daemon=True, name=f"mcp-{srv.name}-stderr").start()
        return open(write, "w")

    async def _list(self, srv: _Server, conn: _Conn):
        from mcp.types import PaginatedRequestParams
        tools, cursor = [], None
        for _ in range(MAX_PAGES):
            page = await conn.client.list_tools(params=cursor and PaginatedRequestParams(cursor=cursor))
            tools, cursor = tools + page.tools, page.nextCursor
            if not cursor:
                break
        enabled, names = srv.settings.enabled_tools, {}
        taken = {name for other in self.servers if other is not srv for name in other.tools}
        for tool in tools:
            exposed = f"{srv.prefix}{_safe(tool.name)}"[:64]
            if not {"*", tool.name, exposed} & set(enabled):
                continue
            schema = _schema(exposed, tool)
            if exposed in taken or len(names) >= MAX_TOOLS or len(json.dumps(schema)) > MAX_SCHEMA:
                log.warning("MCP server %s: tool %r left out (name taken, schema too long, or over "
                            "%d tools)", srv.name, tool.name, MAX_TOOLS)
                continue
            taken.add(exposed)
            names[exposed] = (tool.name, schema)
        srv.tools = names
        log.info("MCP server %s is up with %d tool(s): %s", srv.name, len(names), ", ".join(names))
        self._set(srv, conn, True, f"up since {_clock(srv.since if srv.up else time.time())}, "
                  f"{len(names)} tool(s)")

    async def _call(self, conn: _Conn, tool: str, arguments: dict):
        import asyncio
        conn.calls.add(asyncio.current_task())
        try:
            return await conn.client.call_tool(tool, arguments)
        except Exception:
            conn.wake.set()     # a ping tells whether the server is still there
            raise
        finally:
            conn.calls.discard(asyncio.current_task())

    def _set(self, srv: _Server, conn, up: bool, status: str):
        """A server is up (on `conn`) or down: for calls, for the first turn (which waits for
        this) and for `status` (state/mcp.json, which only the gateway's part keeps)."""
        if up is not srv.up:
            srv.since = time.time()
        srv.conn, srv.up, srv.status = conn, up, status
        if not up:
            srv.tools = {}
        srv.settled.set()
        self._publish()

    def _publish(self):
        if self.state_file:
            from lib.maildir import atomic_write
            state = {s.name: [s.up, s.status] for s in self.servers}
            try:
                atomic_write(self.state_file, json.dumps({"pid": os.getpid(), "servers": state}))
            except OSError as e:
                log.warning("cannot write %s: %s", self.state_file, e)


def _schema(name: str, tool) -> dict:
    params = {k: v for k, v in (tool.inputSchema or {}).items() if k != "$schema"}
    params.setdefault("type", "object")
    params.setdefault("properties", {})
    return {"type": "function", "function": {
        "name": name, "description": " ".join((tool.description or tool.name).split())[:1000],
        "parameters": params}}


def _text(result) -> str:
    """A tool result's text; other content (an image, a file) is named, not shown."""
    def one(b):
        text = b.text if b.type == "text" else getattr(getattr(b, "resource", None), "text", None)
        return text if text is not None else \
            f"[{b.type} {getattr(b, 'mimeType', '') or getattr(b, 'uri', '')}, not shown]"
    text = "\n".join(map(one, result.content))
    if not text and result.structuredContent is not None:
        text = json.dumps(result.structuredContent, ensure_ascii=False)
    cut = len(text) - MAX_RESULT
    return text if cut <= 0 else f"{text[:MAX_RESULT]}\n[... {cut} more characters cut]"


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def describe(config) -> list:
    """For `status`: (up: True, False or None when not known, line) for each configured server,
    as the running gateway's state/mcp.json says."""
    try:
        state = json.loads((config.home / "state" / "mcp.json").read_text())
        os.kill(state["pid"], 0)        # the gateway that wrote it still runs
        state = state["servers"]
    except (OSError, ValueError, KeyError, TypeError):
        state = {}
    rows = []
    for name, s in config.tools.mcp_servers.items():
        up, text = [False, _problem(s)] if _problem(s) else \
            state.get(name) or [None, "not running (the gateway starts it)"]
        how = (s.url.split("?")[0] or s.command) + (" in the sandbox" if s.sandbox else "")
        rows.append((up, f"{name:<11}{text}  [{how}]"))
    return rows
