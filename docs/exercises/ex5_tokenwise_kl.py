"""Exercise 5: the token-wise KL estimator. Instructions:
docs/exercises/05-tokenwise-kl.md. Check: python docs/exercises/check.py 5
"""

import torch


def tokenwise_kl(pi_logits, ref_logits, mask):
    """Tang et al. 2024 (arXiv 2405.08448), §3: for responses y_i ~ π, sum along
    each response the exact KL between the two next-token distributions, then
    average over responses:

        mean_i Σ_t mask[i,t] · KL(π(·|x_i, y_<t) ‖ π_ref(·|x_i, y_<t)).

    pi_logits, ref_logits: [N, T, V] next-token logits at each position;
    mask: [N, T], 1 on response tokens, 0 on padding. Returns a scalar tensor.
    """
    raise NotImplementedError
