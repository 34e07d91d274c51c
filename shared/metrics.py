"""What the study measures: win rate, KL, classification accuracy, log-likelihood
shifts, gaps at matched KL, and confidence intervals over seeds.

Docs: docs/results-schema.md. Tests: tests/test_metrics.py.

Exact versions take distributions over enumerable responses on the last axis
(toysim); estimators take samples (fullscale). Tang et al. 2024 (arXiv
2405.08448) §3 defines the win rate and the KL estimator; §4.3 the
policy-as-classifier.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from shared._validate import same_shape

__all__ = [
    "win_rate_exact",
    "budget_gap",
    "win_rate_from_labels",
    "kl_exact",
    "kl_tokenwise_per_sample",
    "kl_tokenwise_estimate",
    "policy_margin",
    "classifier_accuracy",
    "classifier_accuracy_exact",
    "logp_shift",
    "envelope_on_grid",
    "gap_curve_at_matched_kl",
    "gap_at_matched_kl",
    "seed_ci",
]


def win_rate_exact(pi, ref, pref):
    """Exact win rate of π against ρ: E_x Σ_{y,y'} π(y|x) ρ(y'|x) P(y ≻ y' | x).

    Tang et al. 2024, §3 (win rate against the golden policy, judged by the
    golden PM). ``pref[..., y, y']`` = P(y ≻ y'), with ties counted ½ (hard
    decisions: ``shared.preferences.hard_preference``).
    Shapes: pi [..., X, N], ref [..., X, N], pref [X, N, N] -> [...].
    """
    if pi.shape[-1] != pref.shape[-1] or ref.shape[-1] != pref.shape[-1]:
        raise ValueError(f"response axes differ: pi {tuple(pi.shape)}, ref {tuple(ref.shape)}, pref {tuple(pref.shape)}")
    per_x = torch.einsum("...xn,xnm,...xm->...x", pi, pref, ref)
    return per_x.mean(-1)


def win_rate_from_labels(first_wins, tie=None):
    """Sampled win rate: mean of hard decisions, a tie counting ½ (Tang et al. 2024, §3).

    ``first_wins`` [..., N] bool: the policy's response won; ``tie`` optional.
    """
    w = first_wins.to(torch.float64)
    if tie is not None:
        w = torch.where(tie, torch.full_like(w, 0.5), w)
    return w.mean(-1)


def kl_exact(logp, ref_logp):
    """KL(π‖π_ref) = E_x Σ_y π(y|x) [log π(y|x) − log π_ref(y|x)], exact
    (Tang et al. 2024, §3: the x-axis of every win-rate curve).

    Shapes: logp [..., X, N], ref_logp [..., X, N] (normalised log-probs over
    the N enumerable responses) -> [...]. Zero-probability responses contribute 0.
    """
    same_shape(logp=logp, ref_logp=ref_logp)
    p = logp.exp()
    terms = torch.where(p > 0, p * (logp - ref_logp), torch.zeros_like(p))
    return terms.sum(-1).mean(-1)


def kl_tokenwise_per_sample(pi_logits, ref_logits, mask):
    """Σ_t KL(π(·|x, y_<t) ‖ π_ref(·|x, y_<t)) along each sampled response: the summand of the
    paper's KL estimator (Tang et al. 2024, §3, "KL divergence"; ``kl_tokenwise_estimate`` is
    its mean). A token of zero probability under π contributes 0 (also where both log-probs
    are −∞, as at a masked position).
    Shapes: pi_logits [N, T, V], ref_logits [N, T, V] (next-token logits at each response
    position), mask [N, T] (1 on response tokens) -> [N].
    """
    same_shape(pi_logits=pi_logits, ref_logits=ref_logits)
    if mask.shape != pi_logits.shape[:-1]:
        raise ValueError(f"mask {tuple(mask.shape)} must be logits' shape without the vocab axis {tuple(pi_logits.shape[:-1])}")
    dt = torch.promote_types(pi_logits.dtype, torch.float32)  # bf16 logits are summed in fp32
    lp = torch.log_softmax(pi_logits.to(dt), -1)
    lq = torch.log_softmax(ref_logits.to(dt), -1)
    p = lp.exp()
    per_token = torch.where(p > 0, p * (lp - lq), torch.zeros_like(p)).sum(-1)
    return (per_token * mask.to(per_token.dtype)).sum(-1)


def kl_tokenwise_estimate(pi_logits, ref_logits, mask):
    """The paper's KL estimator: sample y ~ π, sum along y the exact KL between
    the two next-token distributions, average over prompts.

    KL(π‖π_sft) ≈ mean_i Σ_t KL(π(·|x_i, y_<t) ‖ π_sft(·|x_i, y_<t)),
    Tang et al. 2024, §3 ("KL divergence"). Unbiased for the sequence KL when
    y is sampled from π (tests/test_metrics.py checks it against enumeration).
    Shapes: pi_logits [N, T, V], ref_logits [N, T, V], mask [N, T] -> scalar.
    """
    return kl_tokenwise_per_sample(pi_logits, ref_logits, mask).mean()


def policy_margin(pi_logp_1, pi_logp_2, ref_logp_1, ref_logp_2):
    """The policy as a classifier (Tang et al. 2024, §4.3):

        f(x, y1, y2) = [log π(y1) − log π_sft(y1)] − [log π(y2) − log π_sft(y2)],

    predicting y1 ≻ y2 iff f > 0. Same quantity as ``losses.log_ratio_margin``.
    """
    same_shape(pi_logp_1=pi_logp_1, pi_logp_2=pi_logp_2, ref_logp_1=ref_logp_1, ref_logp_2=ref_logp_2)
    return (pi_logp_1 - ref_logp_1) - (pi_logp_2 - ref_logp_2)


def classifier_accuracy(margin, first_wins):
    """Accuracy of the decision margin > 0 against labels; a zero margin counts ½
    (Tang et al. 2024, §4.3, the policy-as-classifier evaluation).

    Works for a policy (``policy_margin``) and a preference model (its margin).
    Shapes: margin [..., N], first_wins [..., N] bool -> [...].
    """
    if margin.shape != first_wins.shape:
        raise ValueError(f"margin {tuple(margin.shape)} and labels {tuple(first_wins.shape)} differ in shape")
    s = torch.sign(margin)
    target = torch.where(first_wins, 1.0, -1.0).to(s.dtype)
    score = torch.where(s == 0, torch.full_like(s, 0.5), (s == target).to(s.dtype))
    return score.mean(-1)


def classifier_accuracy_exact(margin, label_margin, q, agreement=None):
    """Exact accuracy of ``margin`` on pairs (y, y') ~ q⊗q with y ≠ y':

        E_x [Σ_{y≠y'} q(y)q(y')·s(y, y')] / [Σ_{y≠y'} q(y)q(y')],

    s = 1 where sign(margin) = sign(label_margin), 0 where they differ, ½
    where either is 0 (an undecided classifier or a tie label). Identical
    responses are excluded: they carry no preference. The enumerable version
    of ``classifier_accuracy`` (Tang et al. 2024, §4.3).

    Computed as ½ + ½·Σ q q A / (1 − Σ q²) with A = sign(margin)·sign(label)
    (s = (1 + A)/2, and A vanishes on the diagonal of an antisymmetric
    margin); pass ``agreement`` = A to reuse it across several q.
    Shapes: margin [..., X, N, N], label_margin [X, N, N], q [..., X, N] -> [...].
    """
    if agreement is None:
        if margin.shape[-3:] != label_margin.shape or q.shape[-2:] != label_margin.shape[:2]:
            raise ValueError(f"shapes disagree: margin {tuple(margin.shape)}, labels {tuple(label_margin.shape)}, q {tuple(q.shape)}")
        agreement = torch.sign(margin) * torch.sign(label_margin)
    if agreement.diagonal(dim1=-2, dim2=-1).any():  # an identical pair carries no preference: its entry must not count
        agreement = agreement * (1 - torch.eye(q.shape[-1], dtype=q.dtype, device=q.device))
    num = torch.einsum("...xn,...xnm,...xm->...x", q, agreement, q)
    den = 1 - (q * q).sum(-1)
    tiny = torch.finfo(q.dtype).tiny
    acc = torch.where(den > 1e-12, 0.5 + 0.5 * num / den.clamp_min(tiny), torch.full_like(num, 0.5))
    return acc.mean(-1)


def logp_shift(pi_logp, ref_logp):
    """Mean log-likelihood shift E[log π(y) − log π_sft(y)] over given responses
    (chosen or rejected), Tang et al. 2024, §4.3 (Fig. 6). Shapes: [..., N] -> [...]."""
    same_shape(pi_logp=pi_logp, ref_logp=ref_logp)
    return (pi_logp - ref_logp).mean(-1)


KL_FLOOR = 1e-3
"""Checkpoints with KL below this (the SFT point itself) have no place on a log-KL axis."""


def _positive_kl(kl, wr):
    kl, wr = np.asarray(kl, dtype=float), np.asarray(wr, dtype=float)
    if kl.shape != wr.shape:
        raise ValueError("each curve needs as many win rates as KL values")
    keep = kl >= KL_FLOOR
    return kl[keep], wr[keep]


def _on_grid(kl, wr, grid):
    """One curve linearly interpolated on log KL (points sorted by KL), ``nan`` outside its range."""
    lk = np.log(kl)
    order = np.argsort(lk, kind="stable")
    f = np.interp(grid, lk[order], wr[order])
    f[(grid < lk.min()) | (grid > lk.max())] = np.nan
    return f


def envelope_on_grid(curves, grid):
    """Upper envelope of several win-rate-vs-log-KL curves on a log-KL grid.

    ``curves`` is a list of (kl, win_rate) 1-D arrays (one per run, e.g. the
    configurations of a pooled sweep). Each curve is linearly interpolated on
    log KL (points sorted by KL) inside the range it covers and is ``nan``
    outside it; the envelope is the max over curves, ``nan`` where none covers.
    Tang et al. 2024 pool offline's sweep this way to give it its best chance
    at every KL (§3, Fig. 2).

    Curves given as (kl, win_rate_a, win_rate_b), win rates measured on two disjoint
    halves of the evaluation prompts, get a cross-fitted envelope instead: at each KL
    the curve that is best on one half is read on the other, averaged over both
    directions. With estimated win rates the max over curves is biased upward (the
    best of several noisy estimates; the winner's curse), and more so the more curves
    a sweep pools; selecting on one half and measuring on the other removes that bias
    (cross-fitting, as in sample splitting for selection: Cox 1975; Chernozhukov et
    al. 2018). A single curve's cross-fitted envelope is the mean of its two halves.
    """
    rows = []
    for c in curves:
        kl, *wrs = c
        kept = [_positive_kl(kl, wr) for wr in wrs]
        if kept[0][0].size:
            rows.append([_on_grid(k, w, grid) for k, w in kept])
    if not rows:
        return np.full(len(grid), np.nan)
    if len({len(r) for r in rows}) != 1:
        raise ValueError("curves must all have one win-rate series or all have two halves")
    table = np.array(rows)  # [curves, 1 or 2 halves, grid]
    if table.shape[1] == 1:
        return np.fmax.reduce(table[:, 0], axis=0)
    covered = ~np.isnan(table[:, 0]).all(0)
    out = np.full(len(grid), np.nan)
    sel = np.where(np.isnan(table), -np.inf, table)
    best_a, best_b = sel[:, 0].argmax(0), sel[:, 1].argmax(0)  # per grid point: the best curve on each half
    cols = np.arange(len(grid))
    out[covered] = (0.5 * (table[best_a, 1, cols] + table[best_b, 0, cols]))[covered]
    return out


def gap_curve_at_matched_kl(curves_a, curves_b, num: int = 64):
    """Win-rate difference a − b along KL: (log-KL grid, difference on it).

    ``curves_a``/``curves_b``: lists of (kl, win_rate) curves, or of (kl, win_rate_a,
    win_rate_b) for a cross-fitted envelope; each side is
    reduced to its upper envelope (``envelope_on_grid``) on a grid of ``num``
    log-KL points spanning the range both sides cover (Tang et al. 2024 compare
    at matched KL, Fig. 2); the difference is ``nan`` where a side is undefined.
    Returns ``None`` when the ranges do not overlap.
    """
    def span(curves):
        kls = np.concatenate([_positive_kl(c[0], c[1])[0] for c in curves])
        return (np.log(kls.min()), np.log(kls.max())) if kls.size else (np.inf, -np.inf)

    (a_lo, a_hi), (b_lo, b_hi) = span(curves_a), span(curves_b)
    lo, hi = max(a_lo, b_lo), min(a_hi, b_hi)
    if not hi > lo:
        return None
    grid = np.linspace(lo, hi, num)
    return grid, envelope_on_grid(curves_a, grid) - envelope_on_grid(curves_b, grid)


def gap_at_matched_kl(curves_a, curves_b, num: int = 64):
    """Mean win-rate difference a − b at matched KL (Tang et al. 2024, Fig. 2):
    ``gap_curve_at_matched_kl`` averaged over the grid points where both sides are
    defined. Returns ``nan`` when the ranges do not overlap.
    """
    curve = gap_curve_at_matched_kl(curves_a, curves_b, num)
    if curve is None:
        return math.nan
    d = curve[1][np.isfinite(curve[1])]
    return float(d.mean()) if d.size else math.nan


def budget_gap(curves_a, curves_b, num: int = 50):
    """The budget gap (docs/judge.md, R5): at each KL budget k, the best win rate each side reached
    at KL ≤ k, a − b, averaged over ``num`` budgets log-spaced over a's whole range (from its
    first checkpoint with KL ≥ ``KL_FLOOR`` to its largest KL). "At the same KL budget" read as
    a budget: what each method can offer without spending more than k. Every curve's points at
    KL < ``KL_FLOOR`` (its SFT point) qualify at every budget; b's sweep is pooled (the best of all
    its runs). ``curves_*``: lists of (kl, win_rate) 1-D arrays (the first two entries of
    ``shared.results.curves``'s tuples). Returns ``nan`` when a never reaches ``KL_FLOOR``."""
    def points(curves):
        kl = np.concatenate([np.asarray(c[0], dtype=float) for c in curves])
        wr = np.concatenate([np.asarray(c[1], dtype=float) for c in curves])
        return kl, wr

    kl_a, wr_a = points(curves_a)
    kl_b, wr_b = points(curves_b)
    above = kl_a[kl_a >= KL_FLOOR]
    if above.size == 0:
        return math.nan
    budgets = np.exp(np.linspace(np.log(above.min()), np.log(kl_a.max()), num))
    budgets[0], budgets[-1] = above.min(), kl_a.max()  # the ends exactly: exp(log k) may round below k

    def best(kl, wr, k):
        ok = (kl <= k) | (kl < KL_FLOOR)
        return wr[ok].max() if ok.any() else math.nan

    d = np.array([best(kl_a, wr_a, k) - best(kl_b, wr_b, k) for k in budgets])
    d = d[np.isfinite(d)]
    return float(d.mean()) if d.size else math.nan


def seed_ci(values, level: float = 0.95):
    """Mean and half-width of a Student-t confidence interval over seeds
    (Student 1908): mean ± t_{(1+level)/2, n−1}·s/√n.

    Returns ``(mean, half_width)``; the half-width is ``nan`` for one seed.
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    if v.size == 1:
        return float(v[0]), math.nan
    from scipy.special import stdtrit  # Student-t quantile; lazily, and not scipy.stats (0.8 s to import)

    half = stdtrit(v.size - 1, 0.5 + level / 2) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean()), float(half)
