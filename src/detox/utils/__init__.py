"""Small shared helpers: devices, seeding, atomic file output, progress bars."""

from detox.utils.device import resolve_device
from detox.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from detox.utils.seed import seed_everything, torch_generator

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "read_json",
    "resolve_device",
    "seed_everything",
    "torch_generator",
]
