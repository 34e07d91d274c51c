"""Where preference pairs come from: the data sources the study compares.

Docs: docs/studies/coverage.md. Tests: tests/test_sampling.py.

Tang et al. 2024 (arXiv 2405.08448) run one loss on pairs from different
sources; this module is those sources, behind one small policy interface that
both backends implement (``Policy``):

- ``OnlineSampler``: each step, prompts are drawn, both responses are sampled
  from the *current* policy without gradient, labelled by an oracle (the proxy
  PM in the paper), and the labelled batch is logged (§3, "online").
- ``OfflineSampler``: minibatches of a fixed labelled dataset, epoch by epoch
  in a shuffled order (§3, "offline", D_golden).
- ``ReplaySampler``: a logged online stream replayed with a shuffle window
  (§4.1, H1): ``window=1`` is ordered replay (the batches exactly as logged),
  ``window >= len(stream)`` the uniform "tandem" shuffle, in between the pairs
  are permuted inside consecutive blocks of ``window`` batches.
- ``RefreshSampler``: "semi-online" training: every ``every`` steps a fresh
  dataset of ``every`` batches is drawn from the current policy and labelled,
  then trained on in order; ``every=1`` is online, ``every`` = all steps is one
  pass over a one-shot dataset from the initial policy.
- ``policy_pair_dataset``: a dataset whose two responses come from two given
  policies (e.g. SFT vs a checkpoint), labelled by an oracle (§5).
- ``geometric_mixture``: IPO-MD's sampling distribution π^{1−α}·π_ref^α/Z; an
  ``OnlineSampler`` over a policy that samples from it is the ``ipo-md`` arm.

Shapes: a ``Batch`` holds tensors whose leading dims ``[*lead, B]`` are the
batch (``lead`` is empty, or ``(R,)`` when one program trains R runs at once);
responses may carry trailing dims (tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Protocol

import torch

from shared.preferences import label_pairs

__all__ = [
    "Policy",
    "Batch",
    "stack_batches",
    "OnlineSampler",
    "OfflineSampler",
    "ReplaySampler",
    "RefreshSampler",
    "Rollouts",
    "RolloutSampler",
    "replay_order",
    "policy_pair_dataset",
    "geometric_mixture",
]


class Policy(Protocol):
    """What a sampler needs of a policy; toysim and fullscale both implement it."""

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One response per prompt in ``x`` (no gradient)."""
        ...

    def logp(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Summed sequence log-probability log π(y|x), differentiable."""
        ...


@dataclass
class Batch:
    """Labelled pairs. x: [*lead, B, ...]; y_w, y_l: [*lead, B, ...]; tie: [*lead, B]."""

    x: torch.Tensor
    y_w: torch.Tensor
    y_l: torch.Tensor
    tie: torch.Tensor

    def take(self, idx: torch.Tensor, dim: int = 0) -> "Batch":
        """Select pairs along the pair axis ``dim``; ``idx`` has the leading
        dims before ``dim`` (or none) followed by the new pair dims."""
        return Batch(**{f.name: _take(getattr(self, f.name), idx, dim) for f in fields(self)})

    def __len__(self) -> int:
        return self.tie.shape[-1]


def _take(t: torch.Tensor, idx: torch.Tensor, dim: int) -> torch.Tensor:
    if dim == 0:
        return t.take(idx) if t.ndim == 1 else t[idx]
    # idx: [*lead, M] with lead == t.shape[:dim]; keep trailing dims of t.
    extra = t.ndim - idx.ndim
    i = idx.reshape(idx.shape + (1,) * extra).expand(idx.shape + t.shape[dim + 1 :])
    return torch.gather(t, dim, i)


def stack_batches(batches: list[Batch], dim: int = 0) -> Batch:
    """Concatenate batches along the pair axis ``dim``."""
    if not batches:
        raise ValueError("cannot stack an empty list of batches")
    return Batch(**{f.name: torch.cat([getattr(b, f.name) for b in batches], dim) for f in fields(Batch)})


def _batches_state(batches: list[Batch]) -> dict:
    """A list of batches as stacked tensors {x, y_w, y_l, tie} (empty dict for none): what
    ``torch.save(weights_only=True)`` stores."""
    return {f.name: torch.stack([getattr(b, f.name) for b in batches]) for f in fields(Batch)} if batches else {}


def _batches_from(state: dict) -> list[Batch]:
    if not state:
        return []
    return [Batch(**{f.name: state[f.name][i] for f in fields(Batch)}) for i in range(len(state["x"]))]


def sample_k(policy: Policy, x: torch.Tensor, generator: torch.Generator | None, k: int) -> list[torch.Tensor]:
    """k responses per prompt: ``policy.sample`` called k times in a row, or the policy's own
    ``sample_k`` when it has one, which must return the same k samples (``fullscale.decode.LMPolicy``
    draws them in one batch)."""
    if hasattr(policy, "sample_k"):
        return policy.sample_k(x, generator, k)
    return [policy.sample(x, generator) for _ in range(k)]


@dataclass
class OnlineSampler:
    """Online pairs: both responses from the current policy, labelled by ``oracle``.

    ``prompts`` is indexed by a tensor of shape ``shape`` each step (``(B,)`` or
    ``(R, B)``). Sampling is stop-gradient. Every batch is appended to ``log``
    so the stream can be replayed exactly (``ReplaySampler``).
    """

    policy: Policy
    oracle: object
    prompts: torch.Tensor
    shape: tuple[int, ...]
    generator: torch.Generator
    log: list[Batch] = field(default_factory=list)

    def next(self) -> Batch:
        i = torch.randint(len(self.prompts), self.shape, generator=self.generator, device=self.prompts.device)
        x = self.prompts[i]
        with torch.no_grad():
            y1, y2 = sample_k(self.policy, x, self.generator, 2)
            y_w, y_l, tie = label_pairs(self.oracle, x, y1, y2, self.generator)
        batch = Batch(x, y_w, y_l, tie)
        self.log.append(batch)
        return batch

    def state_dict(self) -> dict:
        """Everything needed to continue exactly where it stopped: the logged stream and the
        generator's state (tensors and plain containers, for a resumable checkpoint)."""
        return {"log": _batches_state(self.log), "gen": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.log[:] = _batches_from(state["log"])
        self.generator.set_state(state["gen"])


@dataclass
class OfflineSampler:
    """Minibatches of a fixed dataset, reshuffled every epoch.

    ``data`` holds N pairs along dim 0. ``lead=(R,)`` draws an independent
    order for each of R runs; each ``next()`` then returns [R, B] pairs. With
    ``per_run=True`` the data has one dataset per run, pairs along dim 1
    ([R, N, ...]).
    """

    data: Batch
    batch_size: int
    generator: torch.Generator
    lead: tuple[int, ...] = ()
    per_run: bool = False
    _order: torch.Tensor | None = None
    _pos: int = 0

    def __post_init__(self):
        n = self.data.tie.shape[-1]
        if not 0 < self.batch_size <= n:
            raise ValueError(f"batch_size must be in 1..{n} (dataset size), got {self.batch_size}")
        if self.per_run and tuple(self.data.tie.shape[:-1]) != self.lead:
            raise ValueError(f"per-run data of lead shape {tuple(self.data.tie.shape[:-1])} does not match lead {self.lead}")

    def next(self) -> Batch:
        n = self.data.tie.shape[-1]
        if self._order is None or self._pos + self.batch_size > n:
            keys = torch.rand(self.lead + (n,), generator=self.generator, device=self.data.tie.device)
            self._order, self._pos = keys.argsort(dim=-1), 0
        idx = self._order[..., self._pos : self._pos + self.batch_size].contiguous()  # one copy, not one per field
        self._pos += self.batch_size
        return self.data.take(idx, dim=len(self.lead) if self.per_run else 0)

    def state_dict(self) -> dict:
        """The epoch's order, the position in it and the generator's state."""
        return {"order": self._order, "pos": self._pos, "gen": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self._order, self._pos = state["order"], state["pos"]
        self.generator.set_state(state["gen"])


def replay_order(num_steps: int, batch_size: int, window: int, generator: torch.Generator | None = None, lead: tuple[int, ...] = ()):
    """Indices into a flattened stream of ``num_steps × batch_size`` pairs.

    Returns [*lead, num_steps, batch_size]. The stream is cut into consecutive
    blocks of ``window`` batches and the pairs inside each block are permuted
    uniformly (independently for each lead index). ``window=1`` is the identity
    (ordered replay; permuting inside one batch would not change the loss but
    would change float summation order, so we do not). ``window >= num_steps``
    is the uniform "tandem" shuffle of Tang et al. 2024, §4.1.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1 (batches), got {window}")
    n = num_steps * batch_size
    flat = torch.arange(n).expand(lead + (n,)).clone()
    if window > 1:
        block = window * batch_size
        for start in range(0, n, block):
            stop = min(start + block, n)
            keys = torch.rand(lead + (stop - start,), generator=generator)
            flat[..., start:stop] = start + keys.argsort(dim=-1)
    return flat.reshape(lead + (num_steps, batch_size))


class ReplaySampler:
    """Replay a logged online stream (list of batches) with a shuffle window.

    Each logged batch has pair dims ``[*lead, B]``; the pair axis is ``len(lead)``.
    """

    def __init__(self, stream: list[Batch], window: int, generator: torch.Generator | None = None):
        if not stream:
            raise ValueError("cannot replay an empty stream")
        self.lead = tuple(stream[0].tie.shape[:-1])
        self.dim = len(self.lead)
        self.batch_size = stream[0].tie.shape[-1]
        self.data = stack_batches(stream, dim=self.dim)
        self.order = replay_order(len(stream), self.batch_size, window, generator, self.lead)
        self.step = 0

    def __len__(self) -> int:
        return self.order.shape[-2]

    def next(self) -> Batch:
        if self.step >= len(self):
            raise StopIteration("the replayed stream is exhausted")
        idx = self.order[..., self.step, :]
        self.step += 1
        return self.data.take(idx, dim=self.dim)

    def state_dict(self) -> dict:
        """The position in the replay order (the order itself is drawn at construction)."""
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]


@dataclass
class Rollouts:
    """k sampled responses per prompt with their rewards, for a policy-gradient loss.
    x: [*lead, B]; y: [*lead, B, k, ...]; reward: [*lead, B, k]."""

    x: torch.Tensor
    y: torch.Tensor
    reward: torch.Tensor


@dataclass
class RolloutSampler:
    """RLHF's data: each step, prompts are drawn, k responses per prompt are sampled from
    the current policy (stop-gradient) and scored by a pointwise ``reward(x, y)`` (a
    Bradley–Terry reward model in classic RLHF; Stiennon et al. 2020, Ouyang et al. 2022).
    Feeds ``shared.losses.rloo_loss``."""

    policy: Policy
    reward: object
    prompts: torch.Tensor
    shape: tuple[int, ...]
    k: int
    generator: torch.Generator

    def next(self) -> Rollouts:
        i = torch.randint(len(self.prompts), self.shape, generator=self.generator, device=self.prompts.device)
        x = self.prompts[i]
        with torch.no_grad():
            y = torch.stack(sample_k(self.policy, x, self.generator, self.k), dim=len(self.shape))
            xk = x.reshape(x.shape + (1,)).expand(x.shape + (self.k,))
            r = self.reward(xk, y)
        return Rollouts(x, y, r)

    def state_dict(self) -> dict:
        return {"gen": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["gen"])


class RefreshSampler:
    """Semi-online pairs: every ``every`` steps, ``every`` batches are drawn at once from the
    policy as it is at that step (an ``OnlineSampler``'s draws, so with the same generator
    ``every=1`` yields exactly the online stream), then served in order.

    The iterative / semi-online DPO practice (Xu et al. 2023, arXiv 2312.16682; Xiong et
    al. 2024, arXiv 2312.11456): the dataset is refreshed from the current policy and
    relabelled every k steps. The pairs of one refresh are i.i.d., so their order does
    not matter statistically; serving them in drawing order makes k = 1 bitwise online.
    ``log`` holds every batch served, like ``OnlineSampler.log``.
    """

    def __init__(self, online: OnlineSampler, every: int):
        if every < 1:
            raise ValueError(f"every must be >= 1 (steps), got {every}")
        self.online, self.every = online, every
        self.queue: list[Batch] = []

    @property
    def log(self) -> list[Batch]:
        return self.online.log

    def next(self) -> Batch:
        if not self.queue:
            self.queue = [self.online.next() for _ in range(self.every)]  # the policy is frozen meanwhile
        return self.queue.pop(0)

    def state_dict(self) -> dict:
        """The online sampler's state and the batches of the current refresh not served yet."""
        return {"online": self.online.state_dict(), "queue": _batches_state(self.queue)}

    def load_state_dict(self, state: dict) -> None:
        self.online.load_state_dict(state["online"])
        self.queue = _batches_from(state["queue"])


def policy_pair_dataset(policy_a: Policy, policy_b: Policy, x: torch.Tensor, oracle, generator: torch.Generator | None = None) -> Batch:
    """One pair per prompt in ``x``: y1 ~ policy_a, y2 ~ policy_b, labelled by ``oracle``.

    Tang et al. 2024, §5 ("improving offline data"): D_sft-vs-800 and the like.
    With ``policy_a is policy_b`` this is the self-play dataset of §4.2 (H2).
    """
    with torch.no_grad():
        y1 = policy_a.sample(x, generator)
        y2 = policy_b.sample(x, generator)
        y_w, y_l, tie = label_pairs(oracle, x, y1, y2, generator)
    return Batch(x, y_w, y_l, tie)


def geometric_mixture(logp: torch.Tensor, ref_logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """log π_α over the last axis, where π_α(y) = π(y)^{1−α}·π_ref(y)^α / Z.

    The regularised sampling policy of Nash-MD (Munos et al. 2023, arXiv
    2312.00886) that IPO-MD samples its pairs from (Calandriello et al. 2024,
    arXiv 2403.08635): α = 0 is online IPO's π, α = 1 samples from π_ref. For an
    autoregressive policy the mixture is taken per token, over the next-token
    distributions, as those papers do for LLMs (the sequence-level mixture is not
    autoregressive). logp, ref_logp: log-probabilities [..., N], broadcastable -> [..., N].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    try:
        logp, ref_logp = torch.broadcast_tensors(logp, ref_logp)
    except RuntimeError as e:
        raise ValueError(f"logp{tuple(logp.shape)} and ref_logp{tuple(ref_logp.shape)} do not broadcast") from e
    if alpha in (0.0, 1.0):  # exactly π or π_ref (0·(−inf) would be nan where a response is impossible)
        return torch.log_softmax(ref_logp if alpha == 1.0 else logp, -1)
    return torch.log_softmax((1.0 - alpha) * logp + alpha * ref_logp, -1)
