"""Exact metrics of the simulator's policies at a checkpoint, as the results schema names them
(docs/results-schema.md): KL to π_sft, win rate against the golden policy, the
policy-as-classifier accuracies (Tang et al. 2024, §4.3) and the log-likelihood shifts.

Docs: docs/tutorial.md (§ how a run works). Tests: tests/test_toysim_study.py (exact ties at step 0, the
rounding band), tests/test_toysim_sequences.py, tests/test_metrics.py (the exact metrics).

Every metric is a finite sum over the enumerated responses (``shared.metrics``' exact forms), so
two runs differ by their policies only, never by sampling noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shared.metrics import classifier_accuracy_exact, kl_exact, logp_shift, win_rate_exact
from shared.sampling import Batch

__all__ = ["Evaluator", "rounded_sign", "agreement_table", "classifier_accuracy_exact_pairs", "ROUNDING"]


@dataclass
class Evaluator:
    """Exact metrics of a table of policies, all [R].

    ref_probs [R, X, N] (the golden policy of each run's seed), golden_pref
    [X, N, N], proxy_margin [X, N, N], d_golden (the Batch), and optionally
    ``pair_probs_at(step)`` -> [R, X, N]: the online policy at that step, whose
    pairs the "online pairs" accuracies are measured on (default: the policy's own).
    """

    sft_logp: torch.Tensor
    ref_probs: torch.Tensor
    golden_pref: torch.Tensor
    proxy_margin: torch.Tensor
    d_golden: Batch
    pair_probs_at: object = None

    def __post_init__(self):
        self.label_sign = torch.sign(self.golden_pref - 0.5)  # the golden decision, 0 on ties
        self.proxy_agree = torch.sign(self.proxy_margin) * self.label_sign

    def __call__(self, table: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        probs = table.exp()
        h = table - self.sft_logp  # [R, X, N]
        scale = table.abs() + self.sft_logp.abs()  # [R, X, N]: the size of the terms whose rounding h carries
        agree = agreement_table(h, scale, self.label_sign)  # [R, X, N, N], the agreement's form (agreement_table)
        g = self.d_golden
        q = probs if self.pair_probs_at is None else self.pair_probs_at(step)
        R = table.shape[0]
        return {
            "kl": kl_exact(table, self.sft_logp.expand_as(table)),
            "win_rate": win_rate_exact(probs, self.ref_probs, self.golden_pref),
            "acc_golden": classifier_accuracy_exact_pairs(rounded_sign(h[:, g.x, g.y_w] - h[:, g.x, g.y_l],
                                                                       scale[:, g.x, g.y_w] + scale[:, g.x, g.y_l])),
            "acc_online_pairs": classifier_accuracy_exact(None, None, q, agreement=agree),
            "proxy_acc_online_pairs": classifier_accuracy_exact(None, None, q, agreement=self.proxy_agree),
            "acc_self": classifier_accuracy_exact(None, None, probs, agreement=agree),
            "chosen_logp_shift": logp_shift(table[:, g.x, g.y_w], self.sft_logp[g.x, g.y_w].expand(R, -1)),
            "rejected_logp_shift": logp_shift(table[:, g.x, g.y_l], self.sft_logp[g.x, g.y_l].expand(R, -1)),
        }


ROUNDING = 8  # a margin within this many ulps of its terms' size is a tie (see rounded_sign)


def rounded_sign(margin: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """sign(margin), with margins no larger than float rounding of terms of total size ``scale``
    (|margin| ≤ ROUNDING · eps · scale) counted as 0, a tie.

    The policy's implicit reward h = log π − log π_sft is a difference of two separately
    rounded tables: at step 0 (π = π_sft) and wherever the policy has not moved, h is rounding
    noise whose sign changes with the CPU's vector kernels. Without the dead zone the step-0
    accuracies were such noise (0.49 on one CPU, 0.50 on another); with it they are ½, exactly
    the tie they are. Any margin the policy learns is orders of magnitude larger.
    Shapes: margin and scale broadcast -> margin's shape."""
    tol = ROUNDING * torch.finfo(margin.dtype).eps * scale
    return (margin > tol).to(margin.dtype) - (margin < -tol).to(margin.dtype)


def agreement_table(h: torch.Tensor, scale: torch.Tensor, label_sign: torch.Tensor) -> torch.Tensor:
    """A table B [..., X, N, N] whose form Σ_ij q_i q_j B_ij equals that of the agreement
    A_ij = rounded_sign(h_i − h_j, scale_i + scale_j) · label_sign_ij for every q, with half
    the passes over the pair table: B_ij = 2·label_sign_ij where h_i − h_j is above its band, else 0.

    Why: h_i − h_j is exactly −(h_j − h_i) in floating point, the band c·scale_i + c·scale_j
    (c = ROUNDING·eps, a power of two, so it equals c·(scale_i + scale_j) exactly) is symmetric,
    and label_sign is antisymmetric (the sign of a difference of golden rewards); so A is
    symmetric, each pair above its band in one direction is below it in the other, and
    A = (B + Bᵀ)/2, whose form is B's. Shapes: h, scale [..., X, N], label_sign [X, N, N] -> [..., X, N, N]."""
    cs = (ROUNDING * torch.finfo(h.dtype).eps) * scale
    above = (h[..., :, None] - h[..., None, :]) > (cs[..., :, None] + cs[..., None, :])
    return torch.where(above, 2 * label_sign, 0.0)


def classifier_accuracy_exact_pairs(sign_w_minus_l: torch.Tensor) -> torch.Tensor:
    """Accuracy on a labelled set stored as (y_w, y_l) from the sign of each pair's margin
    (``rounded_sign``): +1 is correct, 0 (a tie) counts ½."""
    return ((sign_w_minus_l > 0).to(sign_w_minus_l.dtype) + 0.5 * (sign_w_minus_l == 0)).mean(-1)
