"""User mistakes as one exception family, so the CLI can print one sentence and exit 2."""

__all__ = ["UserError", "DataError", "ConfigError"]


class UserError(Exception):
    """A mistake in the input or the configuration: its message is the whole report."""


class DataError(UserError, ValueError):
    """A data file is missing, malformed or inconsistent (message names file, row, column)."""


class ConfigError(UserError, ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""
