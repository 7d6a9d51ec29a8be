"""The tool registry: plain functions whose signature and docstring become the model's schema.

A tool is `def name(ctx, param: type, ...) -> str`. The first paragraph of its docstring is the
description; an `Args:` section describes the parameters. Failures raise ToolError and reach the
model as "Error: ..." text; they never end the turn.
"""
import inspect
import json
import logging
import re
import time
import typing
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lib.approvals import ApprovalNeeded
from lib.errors import ToolError

log = logging.getLogger(__name__)
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array",
               dict: "object"}


@dataclass
class Services:
    """What the gateway runs that tools use; None where there is no gateway (`agent -m`)."""
    cron: typing.Any = None      # lib.cron.CronService
    spawn: typing.Any = None     # lib.agent.subagent.Subagents


@dataclass
class Context:
    """What one tool call may know about the turn it belongs to; passed explicitly to every call."""
    config: typing.Any
    workspace: Path
    channel: str = "cli"
    chat_id: str = "default"
    send: Callable | None = None        # send(channel, chat_id, text, media=None)
    services: Services = field(default_factory=Services)
    deadline: float = float("inf")      # time.monotonic() when the turn must end (SPEC §8)
    source: str = "chat"                # who the turn is for, in the usage ledger (SPEC §10)
    ask: Callable | None = None         # ask(question) -> bool at a terminal; None: park (SPEC §9)
    approved: dict | None = None        # the action the owner said yes to, used once
    memory: bool = True                 # workspace/memory is open (not in groups, SPEC §13)
    readable: tuple = ()                # files outside the workspace it may read: attachments

    def time_left(self, cap: float) -> float:
        """Seconds a tool may take: its own limit `cap`, or less when the turn ends sooner."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ToolError("the turn ran out of time (agents.defaults.turn_timeout_s)")
        return min(cap, left)


def schema(fn) -> dict:
    description, _, args_doc = (inspect.getdoc(fn) or "").partition("\nArgs:")
    described = dict(re.findall(r"^\s*(\w+)(?: \([^)]*\))?:\s*(.+)$", args_doc, re.M))
    hints = typing.get_type_hints(fn)
    props, required = {}, []
    for name, p in list(inspect.signature(fn).parameters.items())[1:]:     # [0] is ctx
        typ = hints.get(name, str)
        props[name] = prop = {"type": _JSON_TYPES.get(typing.get_origin(typ) or typ, "string")}
        if typing.get_origin(typ) is list:
            prop["items"] = {"type": _JSON_TYPES.get(typing.get_args(typ)[0], "string")}
        if name in described:
            prop["description"] = described[name].strip()
        if p.default is inspect.Parameter.empty:
            required.append(name)
    return {"type": "function", "function": {
        "name": fn.__name__, "description": " ".join(description.split()),
        "parameters": {"type": "object", "properties": props, "required": required}}}


class Registry:
    def __init__(self, functions):
        self.tools = {fn.__name__: fn for fn in functions}
        self.more = None        # tools that come and go, named mcp_*: lib/mcp.py's Servers
        self._schemas = [schema(fn) for fn in self.tools.values()]

    def schemas(self, deadline: float = float("inf")) -> list:
        """Ours, and the MCP servers' (waited for while they start, never past `deadline`)."""
        return self._schemas + (self.more.schemas(deadline) if self.more else [])

    def call(self, name: str, arguments, ctx: Context) -> str:
        fn = self.tools.get(name)
        more = self.more if fn is None and name.startswith("mcp_") else None
        if fn is None and more is None:
            return f"Error: there is no tool named {name!r}. Available: {', '.join(self.tools)}"
        try:
            args = _json_object(name, arguments)
            result = more.call(ctx, name, args) if more else fn(ctx, **_parse_args(fn, args))
        except ApprovalNeeded:          # not a failure: the turn is parked until the owner answers
            raise
        except ToolError as e:
            return f"Error: {e}"
        except Exception as e:     # a tool bug must not end the turn either
            log.exception("tool %s failed", name)
            return f"Error: {name} failed: {type(e).__name__}: {e}"
        return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)


def _json_object(tool: str, arguments) -> dict:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except json.JSONDecodeError as e:
            raise ToolError(f"the arguments for {tool} are not valid JSON ({e})") from None
    if not isinstance(arguments, dict):
        raise ToolError(f"the arguments for {tool} must be a JSON object")
    return arguments


def _parse_args(fn, arguments: dict) -> dict:
    params = list(inspect.signature(fn).parameters.values())[1:]
    names = {p.name: p for p in params}
    unknown = [k for k in arguments if k not in names]
    arguments = {k: v for k, v in arguments.items() if v is not None}    # null means "not given"
    missing = [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in arguments]
    problems = [f"{what} {', '.join(these)}" for what, these
                in (("unknown parameter(s)", unknown), ("missing", missing)) if these]
    if problems:
        raise ToolError(f"{fn.__name__}: {'; '.join(problems)}. Parameters: {', '.join(names)}")
    hints = typing.get_type_hints(fn)
    return {k: _coerce(fn.__name__, k, v, hints.get(k, str)) for k, v in arguments.items()}


def _coerce(tool, name, value, typ):
    """Models often send "5" for 5; accept what is unambiguous, refuse the rest clearly."""
    base = typing.get_origin(typ) or typ
    if value is None or isinstance(value, base) and not (base is int and isinstance(value, bool)):
        return value
    with suppress(ValueError):
        if base in (int, float) and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            if base is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)         # 2.5 is not 2
            return base(value)
        if base is str and isinstance(value, (int, float)):
            return str(value)
        if base is bool and str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
    raise ToolError(f"{tool}: {name} must be {_JSON_TYPES.get(base, 'string')}, got {value!r}")


def default_registry(exclude=()) -> Registry:
    from lib.tools import cron, files, message, shell, spawn, web
    fns = files.TOOLS + shell.TOOLS + web.TOOLS + message.TOOLS + spawn.TOOLS + cron.TOOLS
    return Registry([f for f in fns if f.__name__ not in exclude])
