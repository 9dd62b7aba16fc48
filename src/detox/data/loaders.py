"""Imports every dataset loader module so that each registers itself."""

from detox.data import cifar10, folder, gtsrb, tinyimagenet  # noqa: F401
