"""Exceptions with one clear line each; CLIs turn them into exit code 2."""


class MonetError(Exception):
    """Base class of every error monet raises on purpose."""


class ConfigError(MonetError, ValueError):
    """A configuration field, flag or file has a value that is not allowed."""


class DataError(MonetError, ValueError):
    """A data file or dataset is malformed (names the file and, where known, the line)."""


class NonFiniteLossError(MonetError, FloatingPointError):
    """The training loss became NaN or infinite."""
