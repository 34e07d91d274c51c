"""The batched training loop of the simulator: R runs (arms × seeds × sweep configurations)
trained at once as one tensor program, evaluated exactly at checkpoints.

Docs: docs/tutorial.md (§ how a run works). Tests: tests/test_toysim_train.py.

Pairs come from ``shared.sampling``; losses from ``shared.losses``; the policies from
``toysim.policy``; the metrics at checkpoints from ``toysim.evaluate``. The optimiser is Adam
(Kingma & Ba 2015, Algorithm 1) with a per-run learning rate.
"""

from __future__ import annotations

import torch

from shared.sampling import Rollouts
from toysim.policy import LogLinearPolicy, gather_log_softmax, gather_logp

__all__ = ["adam_init", "adam_update", "train"]


def adam_init(theta: torch.Tensor):
    return torch.zeros_like(theta), torch.zeros_like(theta), 0


def adam_update(theta, grad, state, lr, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """One Adam step (Kingma & Ba 2015, Algorithm 1); ``lr`` broadcasts per run.

    The moment buffers in ``state`` are updated in place (they belong to the
    training loop); returns the new θ and the state.
    """
    m, v, t = state
    t += 1
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = (v / (1 - b2**t)).sqrt_().add_(eps)
    return theta - (lr / (1 - b1**t)) * m / denom, (m, v, t)


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
        if batch is None:  # exact population mode: loss_fn(table, beta) -> [R]
            loss = loss_fn(policy.table(theta), beta).sum()
        elif isinstance(batch, Rollouts):  # policy gradient: k samples per prompt, [R, B, k]
            xk = batch.x[..., None].expand_as(batch.y)
            pi = gather_log_softmax(policy.logits(theta), xk.reshape(xk.shape[0], -1), batch.y.reshape(xk.shape[0], -1)).reshape(batch.y.shape)
            loss = loss_fn(pi, gather_logp(policy.sft_logp, xk, batch.y), batch.reward, beta[..., None]).mean(-1).sum()
        else:  # log π at (x, y_w) and (x, y_l) in one gather: [R, 2B] -> two [R, B]
            x2, y2 = torch.cat([batch.x, batch.x], -1), torch.cat([batch.y_w, batch.y_l], -1)
            pi_w, pi_l = policy.pair_logp(theta, x2, y2).split(batch.x.shape[-1], -1)
            ref_w, ref_l = gather_logp(policy.sft_logp, x2, y2).split(batch.x.shape[-1], -1)
            loss = loss_fn(pi_w, pi_l, ref_w, ref_l, beta).mean(-1).sum()
        (grad,) = torch.autograd.grad(loss, theta)
        if policy.grad_mask is not None:  # masked coordinates keep zero moments, so Adam leaves them at 0
            grad = grad * policy.grad_mask
        with torch.no_grad():
            theta, state = adam_update(theta.detach(), grad, state, lr_b)
        policy.set_theta(theta)
        if progress is not None:
            progress.update(1)
    return series
