"""Model providers. The agent needs one thing from a model, the `Provider` protocol; the
registry maps names and models to endpoints, and client.py speaks to them with the openai SDK."""
from typing import Protocol


class Provider(Protocol):
    def complete(self, messages: list, tools: list | None = None, deadline: float | None = None):
        """The model's next message (a client.Reply), before `deadline` (time.monotonic())."""
