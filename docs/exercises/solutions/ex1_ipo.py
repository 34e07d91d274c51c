"""Reference solution of exercise 1 (docs/exercises/01-ipo-loss.md)."""

import torch


def ipo_loss(pi_logp_w, pi_logp_l, ref_logp_w, ref_logp_l, beta):
    """IPO, Azar et al. 2023 (arXiv 2310.12036), Eq. 17: (h − 1/(2β))² per example."""
    h = (pi_logp_w - ref_logp_w) - (pi_logp_l - ref_logp_l)
    beta = torch.as_tensor(beta, dtype=h.dtype)
    return (h - 1.0 / (2.0 * beta)) ** 2
