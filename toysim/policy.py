"""The simulator's policies: log-linear (or tabular) tables of log π(y|x) for R runs at once,
their log-probabilities at index pairs, and sampling from them.

Docs: docs/tutorial.md (§ how a run works). Tests: tests/test_toysim_train.py.

A policy is log-linear, logits[r] = sft_logits + Φ·θ[r] (or tabular θ[r, x, y]), so its whole
table log π(·|x) [R, X, N] is one GEMM and every metric of ``toysim.evaluate`` is exact. The
training step's log-probabilities at pairs (``_GroupedLogLinearLogp``) are computed on the rows the
pairs read, with a closed-form backward pass (the exponential family's score). The
autoregressive policies over token sequences are ``toysim.sequences``.
"""

from __future__ import annotations

import numpy as np
import torch

from shared.sampling import geometric_mixture

__all__ = ["TablePolicy", "LogLinearPolicy", "sample_rows", "gather_log_softmax", "gather_logp", "prompt_groups"]


class TablePolicy:
    """What every exact policy shares once it can give its table ``table(theta)`` [R, X, N] of
    log π(y|x): θ, π cached per θ, and log π at index pairs (``shared.sampling.Policy``)."""

    theta: torch.Tensor
    _probs: torch.Tensor | None = None

    def table(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def set_theta(self, theta: torch.Tensor) -> None:
        self.theta, self._probs = theta, None

    def probs(self) -> torch.Tensor:
        """π(y|x) [R, X, N] at the current θ, computed once per θ (no gradient)."""
        if self._probs is None:
            with torch.no_grad():
                self._probs = self.table().exp()
        return self._probs

    def logp(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return gather_logp(self.table(), x, y)

    def mixture_table(self, alpha: float) -> torch.Tensor:
        """log π_α [R, X, N] of IPO-MD's sampling policy at the current θ, the geometric mixture
        π^{1−α}·π_sft^α (``shared.sampling.geometric_mixture``); over the enumerated responses here,
        where a response is its own single token. Token-sequence policies mix per token
        (``toysim.sequences.AutoregressivePolicy.mixture_table``)."""
        return geometric_mixture(self.table(), self.sft_logp, alpha)


class LogLinearPolicy(TablePolicy):
    """R log-linear policies over one world: logp table [R, X, N].

    ``feats`` [X, N, d] gives θ of shape [R, d]; ``feats=None`` is tabular,
    θ of shape [R, X, N]. θ = 0 is π_sft. Implements ``shared.sampling.Policy``.
    """

    def __init__(self, sft_logp: torch.Tensor, feats: torch.Tensor | None, runs: int):
        self.sft_logp, self.feats = sft_logp, feats
        # Φ as a contiguous [d, X·N] matrix: θ [R, d] @ Φᵀ is then one GEMM whose output is already
        # laid out as [R, X, N] (an einsum over [X, N, d] would transpose a full table copy each step)
        self._feats_t = feats.reshape(-1, feats.shape[-1]).T.contiguous() if feats is not None else None
        # Φ_x [X, N, d] and Φ_xᵀ [X, d, N], contiguous per prompt: the training step's batched GEMMs
        self._feats_x = feats.contiguous() if feats is not None else None
        self._feats_xt = feats.transpose(-1, -2).contiguous() if feats is not None else None
        shape = (runs, feats.shape[-1]) if feats is not None else (runs,) + tuple(sft_logp.shape)
        self.theta = torch.zeros(shape, dtype=sft_logp.dtype)
        self._probs = None
        self.grad_mask = None  # [R, d] 0/1: runs narrower than Φ train only their first columns (``train``)

    def logits(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised log π: sft_logits + Φ·θ, [R, X, N]."""
        theta = self.theta if theta is None else theta
        delta = (theta @ self._feats_t).reshape(theta.shape[0], *self.sft_logp.shape) if self.feats is not None else theta
        return self.sft_logp + delta

    def table(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """log π(y|x) for every run, prompt and response: [R, X, N]."""
        return torch.log_softmax(self.logits(theta), -1)

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One response per prompt, x [R, B] -> y [R, B], from the current θ (no gradient)."""
        return sample_rows(self.probs(), x, generator)

    def pair_logp(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log π_θ(y|x) at pairs x/y [R, K] -> [R, K], differentiable in θ; what a training step needs.

        Log-linear: ``_GroupedLogLinearLogp``, on only the (prompt, run) rows the pairs read;
        tabular: ``gather_log_softmax`` over the logits table.
        """
        if self.feats is None:
            return gather_log_softmax(self.logits(theta), x, y)
        return _GroupedLogLinearLogp.apply(theta, self._feats_x, self._feats_xt, self.sft_logp, x, y)


def sample_rows(probs: torch.Tensor, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """y[r, b] ~ probs[r, x[r, b], :] for a table of distributions [R, X, N] and prompts x [R, B]."""
    R, X, N = probs.shape
    rows = (x + X * torch.arange(R)[:, None]).reshape(-1)  # row (r, x[r, b]) of the flattened [R·X, N] table
    p = probs.reshape(R * X, N).index_select(0, rows)  # [R·B, N]: one flat gather (cheaper than two-tensor indexing)
    return torch.multinomial(p, 1, generator=generator).reshape(x.shape)


def gather_logp(table: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """table [R, X, N], x/y [R, B] -> log π_r(y|x) [R, B]; table [X, N] is shared by all runs."""
    if table.ndim == 2:  # one flat gather: cheaper than two-tensor indexing at these sizes
        return table.reshape(-1).index_select(0, (x * table.shape[1] + y).reshape(-1)).view(x.shape)
    r = torch.arange(table.shape[0])[:, None].expand_as(x)
    return table[r, x, y]


class _GatherLogSoftmax(torch.autograd.Function):
    """log_softmax(logits)[r, x, y] for index pairs, without materialising the log-softmax table.

    Forward: logits [R, X, N] -> log-sum-exp over N [R, X], then logits[r, x, y] − lse[r, x].
    Backward (d log π(y|x) / d logits(x, n) = 1[n = y] − π(n|x)): the upstream gradient g [R, K]
    lands on its (x, y) entries, and −(Σ_k g_k 1[x_k = x])·π(·|x) on every row. Same result as
    autograd through log_softmax + gather (tests/test_toysim_train.py), with fewer passes over
    the table, which is what bounds a batched step.
    """

    @staticmethod
    def forward(ctx, logits, x, y):
        m = logits.amax(-1, keepdim=True)  # [R, X, 1]
        e = torch.exp(logits - m)  # unnormalised softmax, kept for backward
        z = e.sum(-1)  # [R, X]
        lse = m.squeeze(-1) + torch.log(z)
        r = torch.arange(logits.shape[0], device=x.device)[:, None].expand_as(x)
        ctx.save_for_backward(e, z, x, y)
        return logits[r, x, y] - lse[r, x]

    @staticmethod
    def backward(ctx, g):
        e, z, x, y = ctx.saved_tensors
        r = torch.arange(e.shape[0], device=x.device)[:, None].expand_as(x)
        row_mass = torch.zeros_like(z).index_put_((r, x), g, accumulate=True)  # [R, X]
        grad = e * (-row_mass / z)[..., None]  # −(Σ_k g_k 1[x_k = x])·π(·|x), one pass
        grad.index_put_((r, x, y), g, accumulate=True)
        return grad, None, None


def gather_log_softmax(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits, -1)[r, x[r, k], y[r, k]]: logits [R, X, N], x/y [R, K] -> [R, K]."""
    return _GatherLogSoftmax.apply(logits, x, y)


def prompt_groups(x: torch.Tensor, prompts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Group a step's rows by prompt: x [R, K] (CPU) -> (members [X, C], col [R, K]).

    Row x of ``members`` lists, in increasing order, the runs whose pairs include prompt x
    (C is the largest such count; shorter rows are padded with run 0, whose rows are
    computed and never read), and (r, x[r, k]) is column col[r, k] of row x[r, k].
    The pairs read only these rows of the log π table: with 32 pairs a run over 64 prompts,
    C is about 35 of 64 runs. One run is its own group. Index bookkeeping on a few thousand
    integers, done in numpy: a dozen torch calls would cost more than the numbers they move.
    """
    runs = x.shape[0]
    if runs == 1:
        return x.new_zeros(prompts, 1), torch.zeros_like(x)
    cell = x.numpy() * runs + np.arange(runs)[:, None]  # (x, r) as a flat index into [X, R]
    active = np.zeros(prompts * runs, dtype=np.int64)
    active[cell.ravel()] = 1
    rank = np.cumsum(active.reshape(prompts, runs), 1).ravel()  # at an active (x, r): 1 + active runs before r
    on = np.flatnonzero(active)  # active cells in (x, r) order
    width = int(rank.reshape(prompts, runs)[:, -1].max())
    members = np.zeros((prompts, width), dtype=np.int64)
    members[on // runs, rank[on] - 1] = on % runs
    return torch.from_numpy(members), torch.from_numpy(rank[cell] - 1)


class _GroupedLogLinearLogp(torch.autograd.Function):
    """log π_θ(y|x) at pairs for log-linear policies (logits = sft + Φ·θ), on the rows the pairs read.

    Forward: with ``prompt_groups``, one batched GEMM gives the logits of prompt x's group,
    θ[members[x]]·Φ_xᵀ + sft_x, [X, C, N] (C of R rows per prompt); one fused, max-shifted
    softmax over N gives π(·|x) per row, kept for backward, and the pairs read log π(y|x) off it.
    Backward: a log-linear policy's score is ∇_θ log π(y|x) = φ(x, y) − E_{π(·|x)}[φ(x, ·)]
    (exponential family), so with upstream g, ∇_θ[r] = Σ_k g_k (φ(x_k, y_k) − E_k). Two exact
    ways to form it; the cheaper for the sizes runs:
    - rows: the logits gradient of each row, G = Σ_k g_k (1[n = y_k] − π(n|x)) (as
      ``_GatherLogSoftmax``), then G·Φ_x [X, C, d] summed per run: passes over [X, C, N];
    - pairs: E_k = π·Φ_x per row [X, C, d], then φ(x_k, y_k) − E_k gathered per pair and
      weighted by g: passes over [R, K, d] instead, cheaper when the features are few.
    Same values as autograd through ``LogLinearPolicy.logits`` + ``gather_log_softmax`` up to
    float rounding, either way (tests/test_toysim_train.py). Gathers go through flat
    ``index_select``: multi-tensor indexing costs several times more on these sizes.
    """

    @staticmethod
    def forward(ctx, theta, feats_x, feats_xt, sft_logp, x, y):
        members, col = prompt_groups(x, sft_logp.shape[0])
        (X, C), N = members.shape, sft_logp.shape[-1]
        th = theta.index_select(0, members.view(-1)).view(X, C, -1)
        logits = torch.baddbmm(sft_logp[:, None, :], th, feats_xt)  # [X, C, N]
        # π(·|x) per row: one fused, max-shifted kernel, in the logits' buffer (a second table-sized
        # allocation each step costs more in page faults than the softmax itself)
        probs = torch.softmax(logits, -1, out=logits)
        cell = x * C + col  # row (x, r) of the flattened [X·C] table
        at = (cell * N + y).view(-1)  # entry (x, r, y) of the flattened [X·C·N] table
        picked = probs.view(-1).index_select(0, at).view_as(x)
        # log π(y|x) = log of the softmax entry, exact to rounding while it is a normal float; an
        # entry below 1e-30 (a row where y is all but excluded) is read as logit − log-sum-exp instead
        if picked.min() >= 1e-30:
            out = picked.log_()
        else:
            logits = torch.baddbmm(sft_logp[:, None, :], th, feats_xt)
            out = logits.view(-1).index_select(0, at).view_as(x) - torch.logsumexp(logits, -1).view(-1).index_select(0, cell.view(-1)).view_as(x)
        ctx.save_for_backward(probs, x, y, cell, members, feats_x)
        ctx.runs = theta.shape[0]
        return out

    @staticmethod
    def backward(ctx, g):
        probs, x, y, cell, members, feats_x = ctx.saved_tensors
        (X, C, N), d = probs.shape, feats_x.shape[-1]
        if _FORCE_PATH == "pairs" or (_FORCE_PATH is None and x.numel() * d < probs.numel()):
            expected = torch.bmm(probs, feats_x).view(-1, d)  # E_π[φ(x, ·)] per row, [X·C, d]
            phi = feats_x.view(-1, d).index_select(0, (x * N + y).view(-1))
            diff = (phi - expected.index_select(0, cell.view(-1))).view(*x.shape, d)  # [R, K, d]
            return (g[:, None, :] @ diff).squeeze(1), None, None, None, None, None
        row_mass = probs.new_zeros(X * C).index_add_(0, cell.view(-1), g.reshape(-1))  # Σ_k g_k on each row
        grad_logits = probs * (-row_mass).view(X, C, 1)  # −(Σ_k g_k)·π(·|x)
        grad_logits.view(-1).index_add_(0, (cell * N + y).view(-1), g.reshape(-1))
        per_row = torch.bmm(grad_logits, feats_x)  # [X, C, d]
        grad = per_row.new_zeros(ctx.runs, d).index_add_(0, members.reshape(-1), per_row.reshape(-1, d))
        return grad, None, None, None, None, None


_FORCE_PATH = None  # "rows" or "pairs": tests check each path whatever the sizes choose
