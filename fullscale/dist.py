"""Several processes: data parallelism under ``torchrun`` with DistributedDataParallel or FSDP2.

    torchrun --standalone --nproc_per_node 2 -m fullscale.run --preset smoke --dist.strategy ddp
    torchrun --standalone --nproc_per_node 2 -m fullscale.run --preset smoke --dist.strategy fsdp

One process stays the default (``--dist.strategy none``) and needs no launcher. With
``--dist.strategy ddp`` a run is data parallel over the ``torchrun`` processes (one
process when started without it): the global batch is the config's batch size, each
rank trains on its share of it, and every draw of a sampled response comes from a
generator of its own, seeded by (the batch's seed, the response's index in the global
batch), so no draw depends on the number of processes. The loss of a rank's share is
normalised by the global count (``global_mean``), so N processes follow the trajectory
of one (up to the order of float reductions). Every rank runs every stage: SFT and the
preference models train data parallel (``average_gradients``), the golden policy and the
arms as above. Rank 0 writes every file and prints progress; the others read what it wrote.

With ``--dist.strategy fsdp`` the trained policy is sharded with FSDP2
(``torch.distributed.fsdp.fully_shard``): each transformer block (the classes the model
names in ``_no_split_modules``) is a group, then the root, which holds the embeddings and
the output layer, so tied input/output embeddings (GPT-2, Llama-3.2, Qwen) stay in one
group. Parameters, gradients and Adam moments are split over the ranks; gradients are
averaged over ranks as under DDP, so the same ``global_mean`` applies. A rollout gathers
the shards once (``whole``) and samples with whole weights, so there is no collective
per token and ranks may run different numbers of forward passes. The run state is saved
with ``torch.distributed.checkpoint`` (``save_state``/``load_state``), which reshards on
load. The reference policies are sharded the same way with no gradients (``shard_frozen``)
once the world and the golden policy are built; the preference models, called through
their backbone and head, stay whole on every rank.
Backend gloo on CPU, nccl on CUDA. Docs: docs/fullscale.md (Several processes and several GPUs).
Tests: tests/test_fullscale_dist.py.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from fullscale.store import atomic_save, safe_load

__all__ = ["Dist", "setup", "SINGLE", "row_generator", "fsdp_units", "whole", "memory_per_gpu", "memory_table"]


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: ``rank`` of ``world`` processes; ``active`` when the
    run is data parallel (``--dist.strategy ddp``, even with one process)."""

    rank: int = 0
    world: int = 1
    active: bool = False
    fsdp: bool = False
    """the trained policy is sharded (``--dist.strategy fsdp`` with several processes)"""
    reshard_after_forward: bool = True

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

    def from_main(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (a broadcast: every rank calls it), so that all agree."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device="cuda" if torch.distributed.get_backend() == "nccl" else "cpu")
        torch.distributed.broadcast(t, 0)
        return bool(t.item())

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

    def map_rows(self, fn, n: int, *rows: torch.Tensor) -> torch.Tensor:
        """fn over this rank's share of the ``n`` rows of each tensor in ``rows``, gathered in row
        order: the same [n, ...] on every rank, each row computed by one rank only."""
        s = self.share(n)
        if s.stop > s.start or n == 0:
            return self.gather_rows(fn(*(r[s] for r in rows)), n)
        # an empty share (fewer rows than ranks): row 0's value gives the shape and dtype of nothing
        return self.gather_rows(fn(*(r[:1] for r in rows))[:0], n)

    def my_rows(self, n: int) -> tuple[slice, float]:
        """This rank's rows of a batch of ``n`` for a training step, and their weight: its share
        and 1, or, when the share is empty (fewer rows than ranks), row 0 and weight 0, so the
        rank still runs the forward and backward passes its collectives need, adding nothing."""
        s = self.share(n)
        return (s, 1.0) if s.stop > s.start else (slice(0, 1), 0.0)

    def wrap(self, model, reshard_after_forward: bool | None = None):
        """The module to train: DistributedDataParallel over ``model``, or ``model`` sharded in place
        with FSDP2 (per transformer block, then the root), or ``model`` itself with one process."""
        if not self.fsdp and self.world == 1:
            return model
        if not self.fsdp:
            return torch.nn.parallel.DistributedDataParallel(model)
        from torch.distributed.device_mesh import init_device_mesh  # lazily: torch.distributed is optional in a torch build, and only a distributed run needs it
        from torch.distributed.fsdp import fully_shard  # lazily: torch.distributed is optional in a torch build, and only a distributed run needs it

        dev = next(model.parameters()).device
        mesh = init_device_mesh(dev.type, (self.world,))
        reshard = self.reshard_after_forward if reshard_after_forward is None else reshard_after_forward
        for unit in fsdp_units(model):
            fully_shard(unit, mesh=mesh, reshard_after_forward=reshard)
            unit._fullscale_reshard = reshard  # what ``whole`` restores
        fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
        model._fullscale_reshard = reshard
        return model

    def shard_frozen(self, model):
        """A model that is not trained (the reference policy, a preference model), sharded like
        the policy (``wrap``) with no gradients, when the run is sharded; else ``model`` as is."""
        if not self.fsdp:
            return model
        model.requires_grad_(False)
        return self.wrap(model, reshard_after_forward=True)  # no backward pass would ever reshard it

    def settle(self, model) -> None:
        """After a forward pass of a sharded frozen model: clear the per-iteration records FSDP
        keeps until a backward pass, which a frozen model never runs (they would grow by one
        entry per block and forward pass)."""
        if self.fsdp:
            _settle(model)

    def full_state(self, model, everywhere: bool = False) -> dict:
        """The model's whole state dict. Sharded: every rank must call it (a collective); only rank
        0 gets it (on CPU, to write it) unless ``everywhere`` (every rank, on the model's device)."""
        if not self.fsdp:
            return model.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # lazily: torch.distributed is optional in a torch build, and only a distributed run needs it

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=not everywhere))

    def save_state(self, model, opt, run: dict, path: Path) -> None:
        """A sharded run state with ``torch.distributed.checkpoint`` (every rank writes its shards
        of the model and the optimiser) plus ``run`` (the same on every rank: sampler, series,
        step) written by rank 0, into a new folder ``path``-<step>; the pointer file ``path``
        names the latest complete one and is replaced atomically, so a kill at any moment
        leaves the previous state readable."""
        import torch.distributed.checkpoint as dcp  # lazily: torch.distributed is optional in a torch build, and only a distributed run needs it
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict  # lazily: torch.distributed is optional in a torch build, and only a distributed run needs it


        folder = path.with_name(f"{path.name}-{run['step']}")
        if self.main:
            shutil.rmtree(folder, ignore_errors=True)
        self.barrier()
        # an optimiser before its first step has no state to save; asking for it would create it
        # with a step of learning rate 0 that counts in Adam's bias correction
        state = {"model": get_model_state_dict(model)}
        if opt.state:
            state["opt"] = get_optimizer_state_dict(model, opt)
        dcp.save(state, checkpoint_id=str(folder))
        if self.main:
            atomic_save({**run, "has_opt": bool(opt.state)}, folder / "run.pt")
            previous = path.read_text().strip() if path.exists() else None
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(folder.name)
            os.replace(tmp, path)
            if previous and previous != folder.name:
                shutil.rmtree(path.with_name(previous), ignore_errors=True)
        self.barrier()

    def load_state(self, model, opt, path: Path) -> dict:
        """The state ``save_state`` wrote: model and optimiser shards loaded in place (resharded
        to this run's number of ranks); returns ``run``."""
        import torch.distributed.checkpoint as dcp  # lazily: torch.distributed is optional in a torch build, and only a distributed run needs it
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict, set_model_state_dict, set_state_dict  # lazily: torch.distributed is optional in a torch build, and only a distributed run needs it


        folder = path.with_name(path.read_text().strip())
        run = safe_load(folder / "run.pt")
        if run.pop("has_opt"):
            msd, osd = get_state_dict(model, opt)  # creates the state it then overwrites, Adam's step count included
            state = {"model": msd, "opt": osd}
            dcp.load(state, checkpoint_id=str(folder))
            set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["opt"])
        else:
            state = {"model": get_model_state_dict(model)}
            dcp.load(state, checkpoint_id=str(folder))
            set_model_state_dict(model, state["model"])
        return run

    def average_gradients(self, model) -> None:
        """Average the gradients of ``model``'s parameters over the ranks (what DDP does during the
        backward pass), in one all-reduce of one flat buffer: the data-parallel SFT and
        preference-model stages, whose models are called through submodules DDP cannot wrap."""
        if self.world == 1:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        bucket: list[torch.Tensor] = []
        for i, g in enumerate(grads):  # buckets of about 2^24 elements: a bounded extra buffer
            bucket.append(g)
            if i + 1 == len(grads) or sum(b.numel() for b in bucket) >= 1 << 24:
                flat = torch.cat([b.reshape(-1) for b in bucket])
                torch.distributed.all_reduce(flat)
                flat /= self.world
                for b, part in zip(bucket, flat.split([b.numel() for b in bucket])):
                    b.copy_(part.view_as(b))
                bucket = []

    def total(self, value: torch.Tensor) -> float:
        """The sum of a scalar over the ranks."""
        if self.world == 1:
            return float(value)
        v = value.detach().clone().float().reshape(1)
        torch.distributed.all_reduce(v)
        return float(v)

    def global_mean(self, per_example: torch.Tensor, n: int) -> torch.Tensor:
        """The loss whose gradient, averaged over ranks by DDP, is the gradient of the mean over
        the global batch of ``n``: world · Σ(this rank's share) / n."""
        return per_example.sum() * (self.world / n)


_GATHERED: set[int] = set()  # the sharded modules whose weights ``whole`` holds whole now

SINGLE = Dist()
"""One process, the default: no launcher, today's draws."""


def setup(strategy: str, device: torch.device, timeout_s: int = 3600, reshard_after_forward: bool = True) -> Dist:
    """Join the ``torchrun`` process group when there is one (WORLD_SIZE > 1 in the environment).
    ``strategy`` "none" is one process whatever the environment says. With one process, "fsdp"
    has nothing to shard and runs as "ddp" does, except under ``torchrun --nproc_per_node 1``,
    where it joins a process group of one and saves its state with DCP like several would
    (so a sharded run can resume with one process)."""
    if strategy == "none":
        return SINGLE
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and not (strategy == "fsdp" and "TORCHELASTIC_RUN_ID" in os.environ):
        return Dist(0, 1, True)
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), True, strategy == "fsdp", reshard_after_forward)


@contextlib.contextmanager
def whole(*models):
    """Whole weights for a stretch of forward passes without gradients (a rollout, an evaluation,
    a preference model's scores): a sharded model (FSDP2) is all-gathered once on entry (a
    collective: every rank enters together) and resharded on exit; no collective runs inside,
    so ranks may run different numbers of forward passes, and submodules may be called on their
    own (a preference model's backbone and head). A nested ``whole`` leaves the models to the
    outer one. Nothing happens to models that are not sharded."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():  # nothing can be sharded
        yield
        return
    from torch.distributed.fsdp import FSDPModule  # lazily: torch.distributed is optional in a torch build, and only a distributed run needs it

    sharded = [m for model in models if model is not None for m in model.modules()
               if isinstance(m, FSDPModule) and id(m) not in _GATHERED]
    _GATHERED.update(id(m) for m in sharded)
    kept = [getattr(m, "_fullscale_reshard", True) for m in sharded]
    for m in sharded:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m, k in zip(sharded, kept):
            _GATHERED.discard(id(m))
            m.reshard()
            m.set_reshard_after_forward(k, recurse=False)
        for model in models:
            if model is not None and any(id(model) == id(m) for m in sharded):
                _settle(model)


def _settle(model) -> None:
    """``Dist.settle`` for a root FSDP module with no trainable parameter; nothing otherwise."""
    from torch.distributed.fsdp import FSDPModule  # lazily: torch.distributed is optional in a torch build, and only a distributed run needs it

    if isinstance(model, FSDPModule) and not any(p.requires_grad for p in model.parameters()):
        model.reset_iter_state()


def fsdp_units(model) -> list[torch.nn.Module]:
    """The submodules FSDP2 shards one by one: the transformer blocks, found by the class names a
    ``transformers`` model lists in ``_no_split_modules`` (GPT2Block, LlamaDecoderLayer, ...).
    The embeddings and the output layer stay with the root, so tied weights share one group."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    units = [m for m in model.modules() if type(m).__name__ in names]
    if not units:
        raise ValueError(f"{type(model).__name__} names no transformer block class (_no_split_modules); FSDP cannot shard it per block")
    return units


def row_generator(seed: int, index: int, device) -> torch.Generator:
    """The generator of one example of a global batch: seeded by SHA-256 of (the batch's seed,
    the example's index), so its draws are the same whichever rank samples it."""
    h = int.from_bytes(hashlib.sha256(f"{seed}/{index}".encode()).digest()[:8], "little") & ((1 << 63) - 1)
    return torch.Generator(device=device).manual_seed(h)


# Parameter counts from the models' published configurations (Hugging Face model cards), tied
# input/output embeddings counted once.
MODEL_SIZES = {"GPT-2 (124M)": 124_439_808, "GPT-2 medium (355M)": 354_823_168, "Llama-3.2-1B": 1_235_814_400,
               "Llama-3.2-3B": 3_212_749_824, "Llama-3.1-8B": 8_030_261_248}


def memory_per_gpu(params: int, strategy: str, world: int = 1) -> float:
    """Peak bytes per GPU of a policy of ``params`` parameters and its frozen reference while the
    arms train, as this runner holds them (float32 weights; bf16 only inside autocast). The
    trained policy's weights, gradients and two Adam moments are 16 bytes a parameter and the
    reference's weights 4. DDP holds all 20 on every rank, plus its gradient buckets (4). FSDP
    splits the 20 over ``world`` ranks and gathers whole weights when it samples or evaluates:
    the policy's (4) for a rollout, the policy's and the reference's (8) for an evaluation, the
    peak. ``strategy`` "world": the stages that build the world (SFT, preference models) train
    data parallel but not sharded, 16 bytes a parameter on every rank whatever the strategy.
    Activations, the KV cache and the preference models (4 bytes a parameter each, whole on
    every rank) come on top."""
    if strategy == "world":
        return 16.0 * params
    if strategy == "ddp":
        return 24.0 * params
    if strategy == "fsdp":
        return 20.0 * params / world + 8.0 * params
    raise ValueError(f"strategy must be world, ddp or fsdp, got {strategy!r}")


def memory_table(worlds=(2, 8)) -> str:
    """The Markdown table of ``memory_per_gpu`` for ``MODEL_SIZES`` in GiB (docs/fullscale.md)."""
    head = ("| policy | parameters | SFT stage, any N | arms, DDP, any N | "
            + " | ".join(f"arms, FSDP, N = {n}" for n in worlds) + " |")
    rows = [head, "|" + "---|" * (4 + len(worlds))]
    for name, p in MODEL_SIZES.items():
        cells = [memory_per_gpu(p, "world"), memory_per_gpu(p, "ddp")] + [memory_per_gpu(p, "fsdp", n) for n in worlds]
        rows.append(f"| {name} | {p / 1e9:.2f} B | " + " | ".join(f"{c / 2**30:.1f} GiB" for c in cells) + " |")
    return "\n".join(rows)
