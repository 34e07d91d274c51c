"""Exercise 2: the two-action optimum of IPO and DPO. Instructions:
docs/exercises/02-two-action.md. Check: python docs/exercises/check.py 2
"""

import math


def ipo_pi1(p: float, beta: float) -> float:
    """π(y1) at the minimum of the population IPO loss (Azar et al. 2023, Eq. 6
    and §4.2): two actions, uniform π_ref and μ, P(y1 ≻ y2) = p ∈ [½, 1]."""
    raise NotImplementedError


def dpo_pi1(p: float, beta: float) -> float:
    """π(y1) at the minimum of the population DPO loss (Rafailov et al. 2023,
    Eq. 7), same setting; for p = 1 return the limit the minimisation drives to."""
    raise NotImplementedError
