"""Exercise 6: pushing a rejected sequence down. Instructions:
docs/exercises/06-displacement.md. Check: python docs/exercises/check.py 6
"""

import torch  # noqa: F401  (you will need it)


def sequence_logp(logits, y, max_len):
    """log π(y) of an autoregressive policy: Σ_t log softmax(logits[y_<t])[y_t], plus the END
    choice (index V) when len(y) < max_len.

    logits: dict prefix tuple -> tensor [V + 1] of next-choice logits, for every prefix
    shorter than max_len; y: a tuple of at most max_len tokens in 0..V−1. Returns a 0-d tensor.
    """
    raise NotImplementedError


def push_down(logits, y_l, max_len, eta):
    """One gradient-descent step on log π(y_l) in logit space:
    logits'[s] = logits[s] − eta · ∂ log π(y_l) / ∂ logits[s]. Returns a new dict (the input
    is left unchanged)."""
    raise NotImplementedError
