"""Reference solution of exercise 5 (docs/exercises/05-tokenwise-kl.md)."""

import torch


def tokenwise_kl(pi_logits, ref_logits, mask):
    """Tang et al. 2024, §3: mean_i Σ_t mask·KL(π(·|y_<t) ‖ π_ref(·|y_<t))."""
    lp = torch.log_softmax(pi_logits, dim=-1)
    lq = torch.log_softmax(ref_logits, dim=-1)
    per_token = (lp.exp() * (lp - lq)).sum(-1)  # exact KL of the next-token distributions, [N, T]
    return (per_token * mask.to(per_token.dtype)).sum(-1).mean()
