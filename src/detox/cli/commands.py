"""Imports every sub-command module so that each registers itself."""

from detox.cli import data_cmd, train_cmd  # noqa: F401
