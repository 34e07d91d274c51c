"""One checkpoint's metrics in the LLM study (Tang et al. 2024, §3 and §4.3), as the
results schema names them (docs/results-schema.md).

Docs: docs/fullscale.md (§ metrics). Tests: tests/test_fullscale_run.py.

``evaluate_checkpoint(pipe, ...)`` reads the world and the golden policy's reference
responses from a ``fullscale.study.Pipeline``: win rate against the golden policy (on
two halves of the prompts too), token-wise KL to π_sft, the policy-as-classifier accuracies
(on D_golden, on its own pairs, on the online run's pairs, and the proxy PM's on those) and
the log-likelihood shifts of chosen and rejected responses.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fullscale.decode import decode
from fullscale.dist import whole
from fullscale.lm import sample_rows, sequence_logp, tokenwise_kl
from fullscale.train import safe_load
from shared.metrics import classifier_accuracy, logp_shift, policy_margin, win_rate_from_labels
from shared.protocol import online_partner, provides_stream, stream_generator
from shared.studies import Arm

__all__ = ["evaluate_checkpoint"]


@torch.no_grad()
def evaluate_checkpoint(pipe, model, ref, arm: Arm, seed: int, step: int):
    """One checkpoint's metrics (docs/results-schema.md), on fixed prompts with a fixed
    sampling seed per checkpoint so that curves differ by the policy, not by sampling noise.

    Data parallel (``pipe.dist.active``, ``fullscale.dist``): the prompts and pairs are split
    over the ranks, each samples and scores its share (per-example draws, ``sample_rows``)
    and the per-row values are gathered before any mean, so every rank gets the numbers of
    one process with the same per-example draws. Sharded models (the policy, its reference)
    are gathered once for the whole evaluation."""
    with whole(model, ref):
        return _evaluate(pipe, model, ref, arm, seed, step)


def _evaluate(pipe, model, ref, arm: Arm, seed: int, step: int):
    ops, dist = pipe.policy_ops(), pipe.dist
    L, temp = pipe.cfg.data.max_response_tokens, pipe.t.temperature
    g = stream_generator(seed, f"eval/{step}", pipe.device)

    def sample(x):
        if not dist.active:
            return decode(model, pipe.prompts, x, L, **ops, generator=g, temperature=temp)
        batch_seed = int(torch.randint(1 << 62, (1,), generator=g, device=x.device))
        return sample_rows(model, pipe.prompts, x, L, **ops, seed=batch_seed, dist=dist, temperature=temp)

    def logp(m, x, y):
        return dist.map_rows(lambda xs, ys: sequence_logp(m, pipe.prompts, xs, ys, **ops), len(x), x, y)

    x = pipe.win_x
    y = sample(x)
    m = dist.map_rows(pipe.golden_oracle.margin, len(x), x, y, pipe.golden_y)
    won, tie, h = m > 0, m == 0, len(m) // 2  # halves: a sweep's envelope is cross-fitted (shared.results.curves)
    res = {"win_rate": float(win_rate_from_labels(won, tie)), "win_rate_a": float(win_rate_from_labels(won[:h], tie[:h])),
           "win_rate_b": float(win_rate_from_labels(won[h:2 * h], tie[h:2 * h]))}
    k = min(pipe.cfg.eval.kl_prompts, len(x))
    kl = dist.map_rows(lambda xs, ys: tokenwise_kl(model, ref, pipe.prompts, xs, ys, **ops), k, x[:k], y[:k])
    res["kl"] = float(kl.mean())
    if arm.name == "golden":
        return res, None
    acc = pipe.acc_batch
    pw, pl = logp(model, acc.x, acc.y_w), logp(model, acc.x, acc.y_l)
    if ref is pipe.sft[1.0]:
        rw, rl = pipe.acc_ref
    else:
        rw, rl = logp(ref, acc.x, acc.y_w), logp(ref, acc.x, acc.y_l)
    res["acc_golden"] = float(classifier_accuracy(policy_margin(pw, pl, rw, rl), torch.ones_like(acc.tie)))
    res["chosen_logp_shift"] = float(logp_shift(pw, rw))
    res["rejected_logp_shift"] = float(logp_shift(pl, rl))
    # the policy's own pairs (acc_self); for an online arm they are also the "online pairs"
    n = min(pipe.cfg.eval.acc_pairs, len(x))
    y2 = sample(x[:n])
    own = _pair_record(pipe, x[:n], y[:n], y2)
    res["acc_self"] = _policy_acc(pipe, model, ref, own)
    pairs = own if provides_stream(arm) else None
    stream = own if provides_stream(arm) else _online_pairs_for(pipe, arm, seed, step)
    if stream is not None and len(stream["x"]):
        res["acc_online_pairs"] = _policy_acc(pipe, model, ref, stream)
        res["proxy_acc_online_pairs"] = float(classifier_accuracy(stream["proxy_margin"], stream["first_wins"]))
    return res, pairs


def _pair_record(pipe, x, y1, y2) -> dict:
    """Pairs with y1 ≠ y2 and a golden decision (no tie), with the proxy's margin."""
    gm = pipe.dist.map_rows(pipe.golden_oracle.margin, len(x), x, y1, y2)
    keep = (y1 != y2).any(-1) & (gm != 0)
    x, y1, y2, gm = x[keep], y1[keep], y2[keep], gm[keep]
    proxy = pipe.dist.map_rows(pipe.proxy_oracle.margin, len(x), x, y1, y2)
    return {"x": x, "y1": y1, "y2": y2, "first_wins": gm > 0, "proxy_margin": proxy}


def _policy_acc(pipe, model, ref, rec) -> float:
    if not len(rec["x"]):
        return float("nan")
    ops, n = pipe.policy_ops(), len(rec["x"])
    f = [pipe.dist.map_rows(lambda xs, ys: sequence_logp(mm, pipe.prompts, xs, ys, **ops), n, rec["x"], y) for mm in (model, ref)
         for y in (rec["y1"], rec["y2"])]
    return float(classifier_accuracy(policy_margin(f[0], f[1], f[2], f[3]), rec["first_wins"]))


def _online_pairs_for(pipe, arm: Arm, seed: int, step: int):
    """The own pairs of the arm's online partner (``shared.protocol.online_partner``) at its
    latest checkpoint ≤ step."""
    name = online_partner(arm)
    if name not in pipe.arms:
        return None
    p = Path(pipe.stream_dir(name, seed)) / "eval_pairs.pt"
    if not p.exists():
        return None
    pairs = safe_load(p)
    steps = [s for s in pairs if s <= step] or [min(pairs)]
    return {k: v.to(pipe.device) for k, v in pairs[max(steps)].items()}
