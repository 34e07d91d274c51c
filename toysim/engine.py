"""The batched training engine: R runs (seeds × sweep configurations) of one arm
trained at once as one tensor program, with exact evaluation at checkpoints.

Docs: docs/tutorial.md (§ how a run works). Tests: tests/test_toysim_engine.py.

A policy is log-linear, logits[r] = sft_logits + Φ·θ[r] (or tabular θ[r, x, y]),
so its whole table log π(·|x) [R, X, N] is one einsum and every metric is
exact. Pairs come from ``shared.sampling``; losses from ``shared.losses``;
metrics from ``shared.metrics``. The optimiser is Adam (Kingma & Ba 2015,
Algorithm 1) with a per-run learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shared.metrics import classifier_accuracy_exact, kl_exact, logp_shift, win_rate_exact
from shared.sampling import Batch

__all__ = ["LogLinearPolicy", "sample_rows", "adam_init", "adam_update", "gather_logp", "train", "Evaluator"]


class LogLinearPolicy:
    """R log-linear policies over one world: logp table [R, X, N].

    ``feats`` [X, N, d] gives θ of shape [R, d]; ``feats=None`` is tabular,
    θ of shape [R, X, N]. θ = 0 is π_sft. Implements ``shared.sampling.Policy``.
    """

    def __init__(self, sft_logp: torch.Tensor, feats: torch.Tensor | None, runs: int):
        self.sft_logp, self.feats = sft_logp, feats
        shape = (runs, feats.shape[-1]) if feats is not None else (runs,) + tuple(sft_logp.shape)
        self.theta = torch.zeros(shape, dtype=sft_logp.dtype)
        self._probs = None

    def table(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """log π(y|x) for every run, prompt and response: [R, X, N]."""
        theta = self.theta if theta is None else theta
        delta = torch.einsum("xnd,rd->rxn", self.feats, theta) if self.feats is not None else theta
        return torch.log_softmax(self.sft_logp + delta, -1)

    def set_theta(self, theta: torch.Tensor) -> None:
        self.theta, self._probs = theta, None

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One response per prompt, x [R, B] -> y [R, B], from the current θ (no gradient)."""
        if self._probs is None:
            with torch.no_grad():
                self._probs = self.table().exp()
        return sample_rows(self._probs, x, generator)

    def logp(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return gather_logp(self.table(), x, y)


def sample_rows(probs: torch.Tensor, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """y[r, b] ~ probs[r, x[r, b], :] for a table of distributions [R, X, N] and prompts x [R, B]."""
    r = torch.arange(x.shape[0])[:, None].expand_as(x)
    p = probs[r, x]  # [R, B, N]
    return torch.multinomial(p.reshape(-1, p.shape[-1]), 1, generator=generator).reshape(x.shape)


def gather_logp(table: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """table [R, X, N], x/y [R, B] -> log π_r(y|x) [R, B]; table [X, N] is shared by all runs."""
    if table.ndim == 2:
        return table[x, y]
    r = torch.arange(table.shape[0])[:, None].expand_as(x)
    return table[r, x, y]


def adam_init(theta: torch.Tensor):
    return torch.zeros_like(theta), torch.zeros_like(theta), 0


def adam_update(theta, grad, state, lr, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """One Adam step (Kingma & Ba 2015, Algorithm 1); ``lr`` broadcasts per run."""
    m, v, t = state
    t += 1
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad**2
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    return theta - lr * m_hat / (v_hat.sqrt() + eps), (m, v, t)


@dataclass
class Evaluator:
    """Exact metrics of a table of policies, all [R].

    ref_probs [R, X, N] (the golden policy of each run's seed), golden_pref
    [X, N, N], proxy_margin [X, N, N], d_golden (the Batch), and optionally
    ``pair_probs_at(step)`` -> [R, X, N]: the online policy at that step, whose
    pairs the "online pairs" accuracies are measured on (default: the policy's own).
    """

    sft_logp: torch.Tensor
    ref_probs: torch.Tensor
    golden_pref: torch.Tensor
    proxy_margin: torch.Tensor
    d_golden: Batch
    pair_probs_at: object = None

    def __call__(self, table: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        probs = table.exp()
        label_sign = torch.sign(self.golden_pref - 0.5)  # the golden decision, 0 on ties
        h = table - self.sft_logp  # [R, X, N]
        agree = torch.sign(h[..., :, None] - h[..., None, :]) * label_sign  # [R, X, N, N]
        proxy_agree = torch.sign(self.proxy_margin) * label_sign
        g = self.d_golden
        q = probs if self.pair_probs_at is None else self.pair_probs_at(step)
        R = table.shape[0]
        return {
            "kl": kl_exact(table, self.sft_logp.expand_as(table)),
            "win_rate": win_rate_exact(probs, self.ref_probs, self.golden_pref),
            "acc_golden": classifier_accuracy_exact_pairs(h[:, g.x, g.y_w] - h[:, g.x, g.y_l]),
            "acc_online_pairs": classifier_accuracy_exact(None, None, q, agreement=agree),
            "proxy_acc_online_pairs": classifier_accuracy_exact(None, None, q, agreement=proxy_agree),
            "acc_self": classifier_accuracy_exact(None, None, probs, agreement=agree),
            "chosen_logp_shift": logp_shift(table[:, g.x, g.y_w], self.sft_logp[g.x, g.y_w].expand(R, -1)),
            "rejected_logp_shift": logp_shift(table[:, g.x, g.y_l], self.sft_logp[g.x, g.y_l].expand(R, -1)),
        }


def classifier_accuracy_exact_pairs(margin_w_minus_l: torch.Tensor) -> torch.Tensor:
    """Accuracy on a labelled set stored as (y_w, y_l): margin > 0 is correct, 0 counts ½."""
    return ((margin_w_minus_l > 0).to(margin_w_minus_l.dtype) + 0.5 * (margin_w_minus_l == 0)).mean(-1)


def train(policy: LogLinearPolicy, sampler, loss_fn, beta: torch.Tensor, lr: torch.Tensor, steps: int,
          eval_at, evaluate, progress=None) -> dict[str, list]:
    """Train every run of ``policy`` for ``steps`` steps of ``sampler`` pairs.

    Per step: pairs [R, B] from ``sampler.next()``; loss = mean over the batch
    of ``loss_fn(pi_logp_w, pi_logp_l, sft_logp_w, sft_logp_l, beta)``, summed
    over runs (runs are independent, so each gets its own gradient); one Adam
    step with per-run ``lr`` ([R, 1]). ``evaluate(table, step)`` is called at step
    0 and at every step in ``eval_at`` (a collection of steps, or an int: every
    that many steps). Returns {metric: [checkpoints × R]} plus "step".
    """
    theta = policy.theta.detach().clone()
    state = adam_init(theta)
    beta = beta.to(theta.dtype)
    lr_b = lr.to(theta.dtype).reshape(lr.shape + (1,) * (theta.ndim - lr.ndim))
    series: dict[str, list] = {"step": []}
    for step in range(steps + 1):
        if step == 0 or (step % eval_at == 0 if isinstance(eval_at, int) else step in eval_at):
            with torch.no_grad():
                res = evaluate(policy.table(), step)
            series["step"].append(step)
            for key, v in res.items():
                series.setdefault(key, []).append(v)
        if step == steps:
            break
        batch = sampler.next()
        theta.requires_grad_(True)
        table = policy.table(theta)
        if batch is None:  # exact population mode: loss_fn(table, beta) -> [R]
            loss = loss_fn(table, beta).sum()
        else:
                loss = loss_fn(gather_logp(table, batch.x, batch.y_w), gather_logp(table, batch.x, batch.y_l),
                           gather_logp(policy.sft_logp, batch.x, batch.y_w), gather_logp(policy.sft_logp, batch.x, batch.y_l),
                           beta).mean(-1).sum()
        (grad,) = torch.autograd.grad(loss, theta)
        with torch.no_grad():
            theta, state = adam_update(theta.detach(), grad, state, lr_b)
        policy.set_theta(theta)
        if progress is not None:
            progress.update(1)
    return series
