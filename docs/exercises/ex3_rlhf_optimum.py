"""Exercise 3: the optimum of KL-regularised RLHF, which DPO shares. Instructions:
docs/exercises/03-rlhf-optimum.md. Check: python docs/exercises/check.py 3
"""

import torch


def rlhf_optimum(ref_logp, reward, beta):
    """log π*(y|x) for max_π E_{y~π}[r(x,y)] − β·KL(π‖π_ref) (Rafailov et al. 2023, Eq. 4).

    ref_logp: [X, N] normalised log π_ref(y|x); reward: [X, N]; beta: float > 0.
    Returns [X, N] normalised log-probabilities (each row's exp sums to 1).
    """
    raise NotImplementedError
