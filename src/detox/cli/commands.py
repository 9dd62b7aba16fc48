"""Imports every sub-command module so that each registers itself."""

from detox.cli import (  # noqa: F401
    attack_cmd,
    bench_cmd,
    cache_cmd,
    data_cmd,
    diffusion_cmd,
    purify_cmd,
    run_cmd,
    scan_cmd,
    train_cmd,
)
