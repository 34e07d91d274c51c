"""One checkpoint's metrics in the LLM study (Tang et al. 2024, §3 and §4.3), as the
results schema names them (docs/results-schema.md).

Docs: docs/fullscale.md (§ metrics). Tests: tests/test_fullscale_run.py.

``evaluate_checkpoint(world, golden, ...)`` reads the world (``fullscale.world.World``: prompts,
judges, the processes) and the golden policy's record (``fullscale.study.Golden``: its responses,
the accuracy pairs): win rate against the golden policy (on two halves of the prompts too),
token-wise KL to π_sft, the policy-as-classifier accuracies (on D_golden, on its own pairs, on the
online partner's pairs, and the proxy PM's on those) and the log-likelihood shifts of chosen and
rejected responses.
"""

from __future__ import annotations

import torch

from fullscale.decode import decode, sample_rows
from fullscale.dist import whole
from fullscale.lm import sequence_logp, tokenwise_kl
from shared.metrics import classifier_accuracy, logp_shift, policy_margin, win_rate_from_labels
from shared.protocol import provides_stream, stream_generator
from shared.studies import GOLDEN, Arm

__all__ = ["evaluate_checkpoint"]


@torch.no_grad()
def evaluate_checkpoint(world, golden, model, ref, arm: Arm, seed: int, step: int, partner_pairs=None):
    """One checkpoint's metrics (docs/results-schema.md) of ``model`` (π_sft of its width:
    ``ref``), on fixed prompts with a fixed sampling seed per checkpoint so that curves differ by
    the policy, not by sampling noise. ``world``: a ``fullscale.world.World``; ``golden``: the
    golden policy's ``fullscale.study.Golden``; ``partner_pairs(step)``: the online partner's own
    pairs at its latest checkpoint ≤ step (None: the arm's own pairs, or none). Returns (metrics,
    this checkpoint's own pairs where the arm is online, else None).

    Data parallel (``world.dist.active``, ``fullscale.dist``): the prompts and pairs are split
    over the ranks, each samples and scores its share (per-example draws, ``sample_rows``)
    and the per-row values are gathered before any mean, so every rank gets the numbers of
    one process with the same per-example draws. Sharded models (the policy, its reference)
    are gathered once for the whole evaluation."""
    with whole(model, ref):
        return _evaluate(world, golden, model, ref, arm, seed, step, partner_pairs)


def _evaluate(w, golden, model, ref, arm: Arm, seed: int, step: int, partner_pairs):
    ops, dist, ev = w.policy_ops(), w.dist, w.cfg.eval
    L, temp = w.cfg.data.max_response_tokens, w.t.temperature
    g = stream_generator(seed, f"eval/{step}", w.device)

    def sample(x):
        if not dist.active:
            return decode(model, w.prompts, x, L, **ops, generator=g, temperature=temp)
        batch_seed = int(torch.randint(1 << 62, (1,), generator=g, device=x.device))
        return sample_rows(model, w.prompts, x, L, **ops, seed=batch_seed, dist=dist, temperature=temp)

    def logp(m, x, y):
        return dist.map_rows(lambda xs, ys: sequence_logp(m, w.prompts, xs, ys, **ops), len(x), x, y)

    x = golden.win_x
    y = sample(x)
    m = dist.map_rows(w.golden_oracle.margin, len(x), x, y, golden.y)
    won, tie, h = m > 0, m == 0, len(m) // 2  # halves: a sweep's envelope is cross-fitted (shared.results.curves)
    res = {"win_rate": float(win_rate_from_labels(won, tie)), "win_rate_a": float(win_rate_from_labels(won[:h], tie[:h])),
           "win_rate_b": float(win_rate_from_labels(won[h:2 * h], tie[h:2 * h]))}
    k = min(ev.kl_prompts, len(x))
    kl = dist.map_rows(lambda xs, ys: tokenwise_kl(model, ref, w.prompts, xs, ys, **ops), k, x[:k], y[:k])
    res["kl"] = float(kl.mean())
    if arm == GOLDEN:
        return res, None
    acc = golden.acc
    pw, pl = logp(model, acc.x, acc.y_w), logp(model, acc.x, acc.y_l)
    if ref is w.sft[1.0]:
        rw, rl = golden.acc_ref
    else:
        rw, rl = logp(ref, acc.x, acc.y_w), logp(ref, acc.x, acc.y_l)
    res["acc_golden"] = float(classifier_accuracy(policy_margin(pw, pl, rw, rl), torch.ones_like(acc.tie)))
    res["chosen_logp_shift"] = float(logp_shift(pw, rw))
    res["rejected_logp_shift"] = float(logp_shift(pl, rl))
    # the policy's own pairs (acc_self); for an online arm they are also the "online pairs"
    n = min(ev.acc_pairs, len(x))
    y2 = sample(x[:n])
    own = _pair_record(w, x[:n], y[:n], y2)
    res["acc_self"] = _policy_acc(w, model, ref, own)
    online = provides_stream(arm)
    pairs = own if online else None
    stream = own if online else (partner_pairs(step) if partner_pairs is not None else None)
    if stream is not None and len(stream["x"]):
        res["acc_online_pairs"] = _policy_acc(w, model, ref, stream)
        res["proxy_acc_online_pairs"] = float(classifier_accuracy(stream["proxy_margin"], stream["first_wins"]))
    return res, pairs


def _pair_record(w, x, y1, y2) -> dict:
    """Pairs with y1 ≠ y2 and a golden decision (no tie), with the proxy's margin."""
    gm = w.dist.map_rows(w.golden_oracle.margin, len(x), x, y1, y2)
    keep = (y1 != y2).any(-1) & (gm != 0)
    x, y1, y2, gm = x[keep], y1[keep], y2[keep], gm[keep]
    proxy = w.dist.map_rows(w.proxy_oracle.margin, len(x), x, y1, y2)
    return {"x": x, "y1": y1, "y2": y2, "first_wins": gm > 0, "proxy_margin": proxy}


def _policy_acc(w, model, ref, rec) -> float:
    if not len(rec["x"]):
        return float("nan")
    ops, n = w.policy_ops(), len(rec["x"])
    f = [w.dist.map_rows(lambda xs, ys: sequence_logp(mm, w.prompts, xs, ys, **ops), n, rec["x"], y) for mm in (model, ref)
         for y in (rec["y1"], rec["y2"])]
    return float(classifier_accuracy(policy_margin(f[0], f[1], f[2], f[3]), rec["first_wins"]))
