"""The few error types that cross module boundaries. The CLI turns them into one line."""


class NanoclawError(Exception):
    """Base for errors we raise on purpose."""


class ConfigError(NanoclawError):
    """The configuration is wrong; the message names the key, file and line. Exit 2."""


class UserError(NanoclawError):
    """The user asked for something that cannot be done as asked. Exit 2."""


class ToolError(NanoclawError):
    """A tool could not do its job; the model sees 'Error: <message>'."""


class ProviderError(NanoclawError):
    """The model provider failed after retries; the message is one sentence for the user."""


class TurnTimeout(ProviderError):
    """The turn's deadline (agents.defaults.turn_timeout_s) passed before the model answered."""


class ProviderDown(ProviderError):
    """The model could not be reached (a timeout, 408/429, 5xx, no connection): worth a retry."""


class LimitReached(ProviderError):
    """A daily limit of SPEC §10 is reached: no model call is made until midnight."""
