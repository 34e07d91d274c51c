"""Reference solution of exercise 3 (docs/exercises/03-rlhf-optimum.md)."""

import torch


def rlhf_optimum(ref_logp, reward, beta):
    """π*(y|x) = π_ref(y|x)·exp(r(x,y)/β)/Z(x) (Rafailov et al. 2023, Eq. 4), in log space;
    log_softmax subtracts log Z(x) row by row."""
    return torch.log_softmax(ref_logp + reward / beta, dim=-1)
