"""Several processes: data parallelism under ``torchrun`` with DistributedDataParallel.

    torchrun --standalone --nproc_per_node 2 -m fullscale.run --preset smoke --dist.strategy ddp

One process stays the default (``--dist.strategy none``) and needs no launcher. With
``--dist.strategy ddp`` a run is data parallel over the ``torchrun`` processes (one
process when started without it): the global batch is the config's batch size, each
rank trains on its share of it, and every draw of a sampled response comes from a
generator of its own, seeded by (the batch's seed, the response's index in the global
batch), so no draw depends on the number of processes. The loss of a rank's share is
normalised by the global count (``global_mean``), so N processes follow the trajectory
of one (up to the order of float reductions). Rank 0 builds the world and the golden
policy, writes every file and prints progress; the other ranks read what it cached.
Backend gloo on CPU, nccl on CUDA. Docs: docs/fullscale.md (Several processes).
Tests: tests/test_fullscale_dist.py.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass

import torch

__all__ = ["Dist", "setup", "SINGLE", "row_generator"]


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: ``rank`` of ``world`` processes; ``active`` when the
    run is data parallel (``--dist.strategy ddp``, even with one process)."""

    rank: int = 0
    world: int = 1
    active: bool = False

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's rows of a global batch of ``n``: contiguous, sizes differing by at most one."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def gather_rows(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """The global batch [n, ...] from every rank's share (``share``), in row order."""
        if self.world == 1:
            return local
        sizes = [Dist(r, self.world, True).share(n) for r in range(self.world)]
        width = max(s.stop - s.start for s in sizes)
        padded = torch.zeros((width,) + tuple(local.shape[1:]), dtype=local.dtype, device=local.device)
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded)
        return torch.cat([p[: s.stop - s.start] for p, s in zip(parts, sizes)])

    def global_mean(self, per_example: torch.Tensor, n: int) -> torch.Tensor:
        """The loss whose gradient, averaged over ranks by DDP, is the gradient of the mean over
        the global batch of ``n``: world · Σ(this rank's share) / n."""
        return per_example.sum() * (self.world / n)


SINGLE = Dist()
"""One process, the default: no launcher, today's draws."""


def setup(strategy: str, device: torch.device, timeout_s: int = 3600) -> Dist:
    """Join the ``torchrun`` process group when there is one (WORLD_SIZE > 1 in the environment).
    ``strategy`` "none" is one process whatever the environment says."""
    if strategy == "none":
        return SINGLE
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(0, 1, True)
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), True)


def row_generator(seed: int, index: int, device) -> torch.Generator:
    """The generator of one example of a global batch: seeded by SHA-256 of (the batch's seed,
    the example's index), so its draws are the same whichever rank samples it."""
    h = int.from_bytes(hashlib.sha256(f"{seed}/{index}".encode()).digest()[:8], "little") & ((1 << 63) - 1)
    return torch.Generator(device=device).manual_seed(h)
