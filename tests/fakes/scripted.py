"""A scripted model for tests that need no HTTP: implements lib.providers.Provider.

    provider = ScriptedProvider("Hello.", {"tool_calls": [{"name": "list_dir", "arguments": {"path": "."}}]})
    agent = make_agent(config, provider)

Each reply is a text, a client.Reply, a dict {"content", "tool_calls": [{"name", "arguments"}]},
an exception (raised), or callable(messages) -> any of those. When the script runs out, the
answer is "echo: <last user text>". `gate` (an Event), when given, is waited for before each
answer, so a test can hold the model mid-turn. Every request is kept in `requests`.
"""
import itertools
import json
import threading

from lib.providers.client import Reply

_ids = itertools.count(1)


class ScriptedProvider:
    def __init__(self, *replies, gate: threading.Event | None = None):
        self.script, self.gate, self.requests = list(replies), gate, []

    def complete(self, messages, tools=None, deadline=None, source="chat", session=""):
        self.requests.append({"messages": list(messages), "tools": tools, "deadline": deadline,
                              "source": source, "session": session})
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        reply = self.script.pop(0) if self.script else None
        if callable(reply) and not isinstance(reply, Reply):
            reply = reply(messages)
        if isinstance(reply, BaseException):
            raise reply
        if reply is None:
            last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
            reply = f"echo: {last}"
        if isinstance(reply, str):
            return Reply(content=reply)
        if isinstance(reply, dict):
            calls = [{"id": c.get("id") or f"call_{next(_ids)}", "name": c["name"],
                      "arguments": c["arguments"] if isinstance(c["arguments"], str)
                      else json.dumps(c["arguments"])} for c in reply.get("tool_calls", [])]
            return Reply(content=reply.get("content"), tool_calls=calls)
        return reply

    @property
    def calls(self) -> int:
        return len(self.requests)
