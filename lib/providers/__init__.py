"""Model providers. The agent needs one thing from a model, the `Provider` protocol; the
registry maps names and models to endpoints, and client.py speaks to them with the openai SDK."""
from typing import Protocol


class Provider(Protocol):
    def complete(self, messages: list, tools: list | None = None, deadline: float | None = None,
                 source: str = "chat", session: str = ""):
        """The model's next message (a client.Reply), before `deadline` (time.monotonic()).
        `source` and `session` say who asks, for the usage ledger (lib/usage.py, SPEC §10)."""
