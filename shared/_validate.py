"""Input checks shared by the `shared` core: one clear error instead of a
silent broadcast. Internal; every public function calls these on entry."""

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
    if not bool(torch.all(torch.isfinite(v) & (v > 0))):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    try:
        torch.broadcast_shapes(v.shape, like.shape)
    except RuntimeError as e:
        raise ValueError(f"{name} of shape {tuple(v.shape)} does not broadcast against {tuple(like.shape)}") from e
    return v
