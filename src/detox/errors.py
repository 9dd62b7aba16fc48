"""Exceptions raised by detox for bad input. Each message names the input and what was expected."""


class DetoxError(Exception):
    """Base class of every error detox raises on purpose."""


class DataError(DetoxError):
    """A dataset is missing, corrupt, or has the wrong shape, dtype or labels."""


class ChecksumError(DataError):
    """A file's checksum differs from the official value."""


class UnsafePickleError(DataError):
    """A pickle asked for a type outside the allow-list (it could run code)."""


class ConfigError(DetoxError, ValueError):
    """A parameter or configuration value is invalid."""


class DivergedError(DetoxError):
    """A training's loss became NaN or infinite: it stops, and nothing of it is saved."""
