"""Reference solution of exercise 2 (docs/exercises/02-two-action.md)."""

import math


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def ipo_pi1(p: float, beta: float) -> float:
    """Azar et al. 2023, Eq. 6 with Ψ = identity: π(y) ∝ π_ref(y)·exp(p(y≻μ)/β).
    p(y1≻μ) = ½·½ + ½·p and p(y2≻μ) = ½·½ + ½·(1 − p), so log π(y1)/π(y2) = (p − ½)/β."""
    return _sigmoid((p - 0.5) / beta)


def dpo_pi1(p: float, beta: float) -> float:
    """Population DPO (Rafailov et al. 2023, Eq. 7) over the pair {y1, y2}:
    −p·log σ(βh) − (1 − p)·log σ(−βh) is minimised at σ(βh) = p, i.e.
    h = log π(y1)/π(y2) = logit(p)/β (π_ref uniform). At p = 1 there is no
    finite minimiser: the loss decreases in h forever and π(y1) → 1."""
    if p >= 1.0:
        return 1.0
    return _sigmoid(math.log(p / (1.0 - p)) / beta)
