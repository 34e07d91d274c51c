"""Reference solution of exercise 6 (docs/exercises/06-displacement.md)."""

import torch


def _path(y, max_len, end):
    """(prefix, choice) at every step of y: its tokens, then END unless it has max_len tokens."""
    steps = [(tuple(y[:t]), y[t]) for t in range(len(y))]
    return steps + ([(tuple(y), end)] if len(y) < max_len else [])


def sequence_logp(logits, y, max_len):
    end = next(iter(logits.values())).shape[-1] - 1
    return sum(torch.log_softmax(logits[s], -1)[c] for s, c in _path(y, max_len, end))


def push_down(logits, y_l, max_len, eta):
    end = next(iter(logits.values())).shape[-1] - 1
    new = {s: v.clone() for s, v in logits.items()}
    for s, c in _path(y_l, max_len, end):
        grad = -torch.softmax(logits[s], -1)
        grad[c] += 1.0  # ∂ log π(y_l) / ∂ logits[s] = onehot(c) − softmax(logits[s])
        new[s] = logits[s] - eta * grad
    return new
