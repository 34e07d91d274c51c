"""Training loops of the LLM path: SFT, preference models, and preference optimisation
(online, offline, replay) with checkpoints that make a killed run resumable.

Docs: docs/fullscale.md. Tests: tests/test_fullscale_train.py.

``optimise`` is the loop every policy arm runs, top to bottom:

    for step in 0..steps:
        evaluate at checkpoints; save the run state
        batch   = sampler.next()                           # shared.sampling
        pi_logp = log π(y_w), log π(y_l)                   # one forward, summed log-probs
        ref     = log π_sft(y_w), log π_sft(y_l)           # no gradient, once per batch
        loss    = mean(LOSSES[name](pi_w, pi_l, ref_w, ref_l, β))   # shared.protocol.LOSSES
        Adam step

A run's state (model, optimiser, sampler position, generator states, logged
online stream, metrics so far) is written atomically at every checkpoint and
every ``save_every`` steps; ``optimise`` resumes from it and then reproduces
the uninterrupted run exactly on CPU (all randomness flows through explicit
generators whose states are saved; models have no dropout).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from fullscale.lm import Prompts, pm_scores, sequence_logp
from fullscale.store import atomic_save, fault_point, safe_load
from shared import losses
from shared.protocol import LOSSES
from shared.preferences import random_order
from shared.sampling import Rollouts

__all__ = ["supervised", "fit_pm", "optimise"]


def _adam(model, lr: float, fused: bool = False):
    """Adam (Kingma & Ba 2015, Algorithm 1) over the trainable parameters. ``fused`` (``--train.numerics
    fast``): one kernel over every parameter, where torch has it (CPU and CUDA from torch 2.4) and the
    parameters are plain tensors; at GPT-2-small size on 2 CPU cores its step takes 0.06 s against the
    for-loop's 0.57 s (docs/fullscale.md, Speed). Its updates equal the for-loop's to float rounding,
    not bit for bit. FSDP's sharded parameters (DTensor) keep the for-loop."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not fused:
        return torch.optim.Adam(params, lr=lr)
    try:
        from torch.distributed.tensor import DTensor  # lazily: torch.distributed is optional in a torch build
    except ImportError:  # a torch without it has no FSDP2 either
        DTensor = ()
    if params and not any(isinstance(p, DTensor) for p in params) and all(p.device.type in ("cpu", "cuda") for p in params):
        try:
            return torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):  # an older torch, or a dtype without a fused kernel
            pass
    return torch.optim.Adam(params, lr=lr)


def _fit(model, n: int, batch_loss, lr: float, epochs: int, batch_size: int, generator: torch.Generator, progress=None,
         dist=None, fast: bool = False) -> list[float]:
    """Adam over ``epochs`` shuffled passes of ``n`` examples; ``batch_loss(idx, rows)`` gives the
    per-example losses of the minibatch ``idx``'s positions ``rows`` (a slice; every draw for the
    whole minibatch is made first, so it is the same on every rank). Returns the mean loss per
    epoch. Data parallel (``dist.active``): each rank computes its share of every minibatch,
    normalised by the minibatch's size, and the gradients are averaged over the ranks
    (``Dist.average_gradients``), so N processes follow one. ``fast``: fused Adam (``_adam``)."""
    active = dist is not None and dist.active
    opt = _adam(model, lr, fast)
    hist = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        tot = 0.0
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            if active:
                rows, weight = dist.my_rows(len(idx))
                per = batch_loss(idx, rows) * weight
                loss = dist.global_mean(per, len(idx))
            else:
                per = batch_loss(idx, slice(None))
                loss = per.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if active:
                dist.average_gradients(model)
            opt.step()
            tot += dist.total(per.detach().sum()) if active else float(loss.detach()) * len(idx)
            if progress is not None:
                progress.update(1)
            fault_point()
        hist.append(tot / n)
    return hist


def supervised(model, prompts: Prompts, x, y, eos: int, pad: int, lr: float, epochs: int, batch_size: int,
               generator: torch.Generator, progress=None, dist=None, fast: bool = False) -> list[float]:
    """SFT: maximise Σ log π(y|x) over (x, y) pairs (mean over the batch), shuffled
    each epoch. Returns the mean loss per epoch. ``dist``: data parallel; ``fast``: fused Adam (``_fit``)
    and ``fullscale.lm.response_logits``'s fast path."""
    return _fit(model, len(x), lambda idx, rows: -sequence_logp(model, prompts, x[idx][rows], y[idx][rows], eos, pad, fast),
                lr, epochs, batch_size, generator, progress, dist, fast)


def fit_pm(pm, prompts: Prompts, x, y_w, y_l, kind: str, eos: int, pad: int, cls: int, lr: float, epochs: int,
           batch_size: int, generator: torch.Generator, progress=None, dist=None, fast: bool = False) -> list[float]:
    """Train a preference model on labelled pairs (chosen y_w, rejected y_l).

    pairwise: r(x, y1, y2) = σ(score) by maximum likelihood with the order of the two
    responses randomised each time (Tang et al. 2024, §3; ``shared.losses.pairwise_pm_loss``);
    bt: a pointwise reward with the Bradley–Terry loss −log σ(r_w − r_l) (``bt_loss``).
    ``dist``: data parallel (``_fit``); the orders are drawn for the whole minibatch first.
    ``fast``: fused Adam (``_fit``).
    """
    def batch_loss(idx, rows):
        xs, yw, yl = x[idx], y_w[idx], y_l[idx]
        if kind == "pairwise":
            y1, y2, first = random_order(yw, yl, generator)
            return losses.pairwise_pm_loss(pm_scores(pm, prompts, xs[rows], [y1[rows], y2[rows]], eos, pad, cls), first[rows])
        xs, yw, yl = xs[rows], yw[rows], yl[rows]
        return losses.bt_loss(pm_scores(pm, prompts, xs, [yw], eos, pad, cls), pm_scores(pm, prompts, xs, [yl], eos, pad, cls))

    return _fit(pm, len(x), batch_loss, lr, epochs, batch_size, generator, progress, dist, fast)


def optimise(model, ref_model, prompts: Prompts, sampler, loss_name: str, beta: float, lr: float, steps: int,
             eval_at: set[int], evaluate, eos: int, pad: int, state_path: Path | None = None, save_every: int = 50,
             snapshot_at: set[int] = frozenset(), snapshot=None, progress=None, dist=None, losses: list | None = None,
             fast: bool = False) -> dict[str, list]:
    """Train ``model`` on ``sampler``'s pairs with loss ``LOSSES[loss_name]`` (see the module
    docstring). ``evaluate(step) -> dict`` runs at step 0 and at each step in ``eval_at``;
    ``snapshot(step)`` at each step in ``snapshot_at``. Resumes from ``state_path`` when it
    exists. Returns the metric series {key: [one value per checkpoint]} with "step"; ``losses``,
    when given, receives the loss of every step (the mean over the global batch; saved in the
    state with the rest).

    Data parallel (``dist.active``, ``fullscale.dist``): every rank holds the same global batch,
    computes the loss on its share of the rows, normalised by the global count, and
    DistributedDataParallel averages the gradients; only rank 0 saves the state. Under FSDP
    (``dist.fsdp``) ``model`` is sharded in place and every rank saves its shards of the state
    (``Dist.save_state``); ``state_path`` is then a pointer to the latest state's folder.

    ``fast`` (``--train.numerics fast``): fused Adam, and the output layer on the response positions only
    and one pass of a prompt's body for the responses that share it (``fullscale.lm.response_logits``)."""
    loss_fn = LOSSES[loss_name]
    active = dist is not None and dist.active
    net = dist.wrap(model) if active else model  # FSDP shards ``model`` in place, before Adam sees its parameters
    opt = _adam(model, lr, fast)
    sharded = active and dist.fsdp
    series: dict[str, list] = {"step": []}
    start, resumed = 0, False
    if state_path is not None and state_path.exists():
        if sharded:
            st = dist.load_state(model, opt, state_path)
        else:
            st = safe_load(state_path)
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["opt"])
        sampler.load_state_dict(st["sampler"])
        series, start, resumed = st["series"], st["step"], True
        if losses is not None:
            losses[:] = st.get("losses", [])
        if progress is not None:
            progress.update(start)

    def save(step):
        if state_path is None:
            return
        run = {"sampler": sampler.state_dict(), "series": series, "step": step, "losses": list(losses or [])}
        if sharded:  # every rank writes its shards (torch.distributed.checkpoint)
            dist.save_state(model, opt, run, state_path)
            fault_point("save")
        elif not active or dist.main:
            atomic_save({"model": model.state_dict(), "opt": opt.state_dict(), **run}, state_path)
            fault_point("save")

    for step in range(start, steps + 1):
        # the state saved at ``start`` was written after that step's evaluation, snapshot and
        # save, and before its training step: a resumed run skips those three there (step 0 too)
        resumed_here = resumed and step == start
        if step in snapshot_at and snapshot is not None and not resumed_here:
            snapshot(step)
        if (step == 0 or step in eval_at) and not resumed_here:
            res = evaluate(step)
            series["step"].append(step)
            for k, v in res.items():
                series.setdefault(k, []).append(v)
            save(step)
        elif step % save_every == 0 and not resumed_here:
            save(step)
        if step == steps:
            break
        batch = sampler.next()
        n = batch.x.shape[0]  # the global batch
        weight = 1.0
        if active:  # this rank's share of its rows
            rows, weight = dist.my_rows(n)
            batch = type(batch)(**{f.name: getattr(batch, f.name)[rows] for f in dataclasses.fields(batch)})
        if isinstance(batch, Rollouts):  # RLHF: k responses per prompt, y [B, k, T]
            B, k = batch.y.shape[:2]
            x, y = batch.x[:, None].expand(B, k).reshape(-1), batch.y.reshape(B * k, -1)
            pi = sequence_logp(net, prompts, x, y, eos, pad, fast).reshape(B, k)
            with torch.no_grad():
                ref = sequence_logp(ref_model, prompts, x, y, eos, pad, fast).reshape(B, k)
            per = loss_fn(pi, ref, batch.reward, beta)  # one value per prompt (the mean over its k samples)
            loss = dist.global_mean(per * weight, n) if active else per.mean()
        else:
            B = batch.x.shape[0]
            xx, yy = torch.cat([batch.x, batch.x]), torch.cat([batch.y_w, batch.y_l])
            pi = sequence_logp(net, prompts, xx, yy, eos, pad, fast)
            with torch.no_grad():
                ref = sequence_logp(ref_model, prompts, xx, yy, eos, pad, fast)
            per = loss_fn(pi[:B], pi[B:], ref[:B], ref[B:], beta)
            loss = dist.global_mean(per * weight, n) if active else per.mean()
        if active:
            dist.settle(ref_model)  # a sharded reference ran a forward pass and no backward
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if losses is not None:
            losses.append(dist.total(loss.detach()) / dist.world if active else float(loss.detach()))
        if progress is not None:
            progress.update(1)
        fault_point()
    return series
