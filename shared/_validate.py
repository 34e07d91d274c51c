"""Input checks shared by the `shared` core: one clear error instead of a
silent broadcast. Internal; every public function calls these on entry.

Tests: tests/test_losses.py, tests/test_metrics.py (bad shapes and dtypes)."""

from __future__ import annotations

import math

import torch


def same_shape(**tensors: torch.Tensor) -> torch.Size:
    """Check that every named tensor is a floating tensor of one common shape.

    Returns that shape. Raises ``TypeError`` for a non-tensor or a non-float
    tensor and ``ValueError`` naming each argument's shape on a mismatch.
    """
    shape = None
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got dtype {t.dtype}")
        if shape is None:
            shape = t.shape
    for name, t in tensors.items():
        if t.shape != shape:
            shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in tensors.items())
            raise ValueError(f"shape mismatch: all inputs must share one shape, got {shapes}")
    return shape  # type: ignore[return-value]


def positive(name: str, value, like: torch.Tensor) -> torch.Tensor:
    """Return ``value`` (float or tensor) as a tensor on ``like``'s device and
    dtype, checking it is finite and > 0 and broadcasts against ``like``."""
    if isinstance(value, (int, float)):  # a plain number: check it without tensor ops
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be finite and > 0, got {value!r}")
        return torch.as_tensor(value, dtype=like.dtype, device=like.device)
    v = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    n = v.numel()
    if not (n > 0 and (_positive_finite(v) if n > 1 else math.isfinite(v.item()) and v.item() > 0)):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    if not _broadcastable(v.shape, like.shape):
        raise ValueError(f"{name} of shape {tuple(v.shape)} does not broadcast against {tuple(like.shape)}")
    return v


def _positive_finite(v: torch.Tensor) -> bool:
    lo, hi = torch.aminmax(v)  # one pass; nan fails both comparisons
    return bool(lo > 0) and bool(hi < math.inf)


def _broadcastable(a: tuple, b: tuple) -> bool:
    """numpy broadcasting rules on two shapes, in plain Python (torch.broadcast_shapes is ~100× slower)."""
    return all(x == y or x == 1 or y == 1 for x, y in zip(reversed(a), reversed(b)))
