"""Preference oracles: who says which of two responses wins.

Docs: docs/theory.md (4. Deterministic preferences). Tests: tests/test_sampling.py, tests/test_theory.py.

The paper (Tang et al. 2024, arXiv 2405.08448, §3) makes every decision hard:
y1 ≻ y2 iff r(x, y1, y2) − r(x, y2, y1) > 0. We follow it by default. A
*margin* is any quantity whose sign decides the pair: r(y1) − r(y2) for a
pointwise reward, r(x,y1,y2) − r(x,y2,y1) for a pairwise preference model.
Ties (margin exactly 0) are explicit: broken by a fair coin, or reported.

An oracle is anything with ``margin(x, y1, y2) -> tensor``; x and y are
whatever the backend uses (indices in toysim, token tensors in fullscale).
``label_pairs`` turns any oracle into (y_w, y_l) labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

__all__ = [
    "bt_probability",
    "hard_preference",
    "hard_labels",
    "stochastic_labels",
    "Oracle",
    "RewardOracle",
    "PairwiseOracle",
    "NoisyOracle",
    "label_pairs",
    "random_order",
]


def bt_probability(r_1, r_2):
    """Bradley–Terry: P(y1 ≻ y2) = σ(r(y1) − r(y2)).

    Bradley & Terry 1952; Rafailov et al. 2023 (arXiv 2305.18290), Eq. 1.
    """
    return torch.sigmoid(r_1 - r_2)


def hard_preference(margin):
    """The expected hard label P(y1 ≻ y2) = 1[m > 0] + ½·1[m = 0].

    Tang et al. 2024 (arXiv 2405.08448), §3: decisions are the sign of the margin.

    The population preference of the paper's sign decision with fair-coin tie
    breaking; the exact simulator uses it as the preference matrix.
    """
    return (margin > 0).to(margin.dtype) + 0.5 * (margin == 0).to(margin.dtype)


def hard_labels(margin, generator: torch.Generator | None = None, ties: str = "coin"):
    """Hard decisions y1 ≻ y2 iff margin > 0 (Tang et al. 2024, §3).

    Returns ``(first_wins, tie)``, both bool tensors shaped like ``margin``.
    ``ties="coin"`` breaks a zero margin by a fair coin from ``generator``;
    ``ties="first"`` declares y1 the winner (deterministic). ``tie`` marks
    the pairs that were ties, so a caller can count or drop them.
    """
    if ties not in ("coin", "first"):
        raise ValueError(f"ties must be 'coin' or 'first', got {ties!r}")
    tie = margin == 0
    first_wins = margin > 0
    if ties == "first":
        return first_wins | tie, tie
    coin = torch.rand(margin.shape, generator=generator, device=margin.device) < 0.5
    return torch.where(tie, coin, first_wins), tie


def stochastic_labels(prob_first, generator: torch.Generator | None = None):
    """Sampled labels: y1 wins with probability ``prob_first``, e.g. the Bradley–Terry
    probability σ(r1 − r2) (Bradley & Terry 1952), instead of the paper's hard decision."""
    u = torch.rand(prob_first.shape, generator=generator, device=prob_first.device, dtype=prob_first.dtype)
    return u < prob_first


class Oracle(Protocol):
    """Anything that scores a pair; the sign of the margin decides it."""

    def margin(self, x, y1, y2) -> torch.Tensor: ...

    def prob_first(self, x, y1, y2) -> torch.Tensor: ...


@dataclass(frozen=True)
class RewardOracle:
    """A pointwise reward as an oracle: margin = r(x, y1) − r(x, y2).

    ``stochastic=True`` labels by Bradley–Terry, P(y1 ≻ y2) =
    σ((r1 − r2)/temperature), instead of the paper's hard sign decision.
    """

    reward: Callable[..., torch.Tensor]
    stochastic: bool = False
    temperature: float = 1.0

    def margin(self, x, y1, y2):
        return self.reward(x, y1) - self.reward(x, y2)

    def prob_first(self, x, y1, y2):
        return bt_probability(self.reward(x, y1) / self.temperature, self.reward(x, y2) / self.temperature)


@dataclass(frozen=True)
class PairwiseOracle:
    """A pairwise preference model r(x, y1, y2) ∈ [0, 1] as an oracle.

    margin = r(x, y1, y2) − r(x, y2, y1) (Tang et al. 2024, §3): scoring both
    orders removes the model's position bias from the decision.
    """

    prob: Callable[..., torch.Tensor]
    stochastic: bool = False

    def margin(self, x, y1, y2):
        return self.prob(x, y1, y2) - self.prob(x, y2, y1)

    def prob_first(self, x, y1, y2):
        """Order-symmetrised probability ½·[r(x,y1,y2) + 1 − r(x,y2,y1)]."""
        return 0.5 * (1.0 + self.margin(x, y1, y2))


@dataclass(frozen=True)
class NoisyOracle:
    """An oracle whose hard decision is flipped with probability ``flip``.

    P(y1 ≻ y2) = (1 − flip)·1[m > 0] + flip·1[m < 0] + ½·1[m = 0] for the base
    oracle's margin m: the symmetric label-noise model of Chowdhury et al. 2024
    (arXiv 2403.00409, §2). ``flip = 0`` is the base oracle's hard decision.
    """

    base: object
    flip: float

    stochastic = True

    def __post_init__(self):
        if not 0 <= self.flip < 0.5:
            raise ValueError(f"flip must lie in [0, 0.5), got {self.flip}")

    def margin(self, x, y1, y2):
        return self.base.margin(x, y1, y2)

    def prob_first(self, x, y1, y2):
        p = hard_preference(self.margin(x, y1, y2))
        return (1 - self.flip) * p + self.flip * (1 - p)


def label_pairs(oracle, x, y1, y2, generator: torch.Generator | None = None):
    """Label pairs with an oracle: returns ``(y_w, y_l, tie)`` (Tang et al. 2024, §3).

    Hard sign decisions by default (ties by a fair coin); an oracle with
    ``stochastic=True`` samples labels from its ``prob_first`` instead.
    ``y1``/``y2`` are tensors whose first ``margin.ndim`` dims are the batch;
    trailing dims (tokens) are carried along.
    """
    with torch.no_grad():
        if getattr(oracle, "stochastic", False):
            first_wins = stochastic_labels(oracle.prob_first(x, y1, y2), generator)
            tie = torch.zeros_like(first_wins)
        else:
            first_wins, tie = hard_labels(oracle.margin(x, y1, y2), generator)
    fw = first_wins.reshape(first_wins.shape + (1,) * (y1.ndim - first_wins.ndim))
    return torch.where(fw, y1, y2), torch.where(fw, y2, y1), tie


def random_order(y_w, y_l, generator: torch.Generator | None = None):
    """Present each labelled pair in a random order, for training a pairwise PM.

    Tang et al. 2024, §3: the preference model r(x, y1, y2) is trained with the
    order of the two responses randomised, so it cannot learn a position bias.
    Returns ``(y1, y2, first_wins)``: with probability ½ per pair, (y_w, y_l,
    True), else (y_l, y_w, False). Feed ``first_wins`` to
    ``shared.losses.pairwise_pm_loss``. y_w, y_l: [B, ...].
    """
    first_wins = torch.rand(y_w.shape[0], generator=generator, device=y_w.device) < 0.5
    fw = first_wins.reshape((-1,) + (1,) * (y_w.ndim - 1))
    return torch.where(fw, y_w, y_l), torch.where(fw, y_l, y_w), first_wins
