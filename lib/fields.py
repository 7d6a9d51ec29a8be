"""Settings fields: a default and, optionally, the values a key may take (checked at load); and
the snake_case spelling of a key written in camelCase."""
import re
from dataclasses import dataclass, field

# A settings section: read-only once loaded. No generated __eq__/__hash__ (nothing compares
# sections), which saves a third of the cost of defining the ~25 classes at every start.
settings = dataclass(frozen=True, eq=False)


def setting(default, *choices, low=None, high=None):
    """A field with a default (copied when mutable) and, optionally, the values it may take:
    one of `choices`, or a number from `low` to `high`."""
    meta = {"choices": choices, "low": low, "high": high}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def snake(name: str) -> str:
    """apiKey, allow-from -> api_key, allow_from."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower().replace("-", "_")
