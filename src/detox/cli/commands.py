"""Imports every sub-command module so that each registers itself."""

from detox.cli import attack_cmd, data_cmd, run_cmd, train_cmd  # noqa: F401
