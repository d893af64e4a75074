"""Errors every layer raises (kept apart so config sections in sub-packages can use them without
importing ``fedlr.config``)."""


class ConfigError(ValueError):
    """A configuration problem, reported to the user with exit code 2 before any work."""
