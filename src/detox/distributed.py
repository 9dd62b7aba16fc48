"""Data-parallel training under ``torchrun`` (PyTorch DDP), for single trainings too large
for one device.

    torchrun --standalone --nproc_per_node 2 -m detox train --dataset cifar10 --preset paper --out runs/x

``detox train`` notices the launcher's environment (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``) and then:

* joins the process group (``gloo`` on CPUs, ``nccl`` on CUDA devices, one device per
  process: ``cuda:LOCAL_RANK``);
* gives every process a disjoint, equal share of the training set (a seeded permutation
  split round-robin; the remainder ``N mod W`` examples are left out);
* keeps the *global* batch of the config: each process takes ``batch_size / W`` examples
  per step, so the number of steps per epoch and the LR schedule are those of the
  single-process run, and DDP averages the gradients of the W shares, which is the
  gradient of the global batch;
* BatchNorm statistics stay per process (no buffer sync in the forward pass); the checkpoint,
  the evaluation and the run folder are written by rank 0 only.

With one process (``--nproc_per_node 1``) nothing is sharded and training equals the
plain run exactly; with W processes the examples are grouped into batches differently,
so results agree within run-to-run tolerance rather than to the bit
(``tests/test_distributed.py``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from detox.errors import ConfigError


@dataclasses.dataclass
class DDPRun:
    """The process's place in a distributed run."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, x: torch.Tensor, y: torch.Tensor, seed: int):
        """This process's share of the training set (all of it when ``world == 1``)."""
        if self.world == 1:
            return x, y
        n = (len(x) // self.world) * self.world
        if n == 0:
            raise ConfigError(
                f"{len(x)} training images cannot be split over {self.world} processes"
            )
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(seed)))[:n]
        mine = perm[self.rank :: self.world].sort().values
        return x[mine], y[mine]

    def batch_config(self, cfg: Any) -> Any:
        """The per-process config: the global batch split evenly over the processes."""
        if cfg.batch_size % self.world:
            raise ConfigError(
                f"batch_size={cfg.batch_size} is not divisible by the {self.world} processes"
            )
        return dataclasses.replace(
            cfg,
            batch_size=cfg.batch_size // self.world,
            progress=bool(cfg.progress and self.is_main),
        )

    def wrap(self, model: nn.Module, channels_last: bool) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = model.to(self.device)
        if channels_last:  # before wrapping, so DDP's gradient buckets match the layout
            model = model.to(memory_format=torch.channels_last)
        import inspect

        ids = [self.device.index] if self.device.type == "cuda" else None
        # per-process BatchNorm statistics (buffers are synced once, at construction)
        no_sync = (
            {"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
            else {"broadcast_buffers": False}
        )
        return DDP(model, device_ids=ids, **no_sync)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def launched() -> bool:
    """True when started by torchrun (or any launcher that sets WORLD_SIZE and RANK)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


@contextmanager
def ddp_session(device: torch.device) -> Iterator[DDPRun | None]:
    """Join the process group when launched by torchrun; yields None otherwise."""
    if not launched():
        yield None
        return
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ConfigError(f"distributed training on {device.type!r}: expected cpu or cuda")
    dist.init_process_group(backend=backend)
    try:
        yield DDPRun(rank, world, local, device)
    finally:
        dist.barrier()
        dist.destroy_process_group()
