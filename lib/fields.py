"""Settings fields: a default and, optionally, the values a key may take (checked at load)."""
from dataclasses import field


def setting(default, *choices, low=None, high=None):
    """A field with a default (copied when mutable) and, optionally, the values it may take:
    one of `choices`, or a number from `low` to `high`."""
    meta = {"choices": choices, "low": low, "high": high}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)
