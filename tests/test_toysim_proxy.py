"""The proxy as Tang et al. 2024 train it (App. A.3; docs/judge.md, R1): its penalty chosen on
held-out pairs of D_golden by a fixed rule, and a proxy of the policy's own feature class."""

import math
from dataclasses import replace

import pytest
import torch

from toysim.proxy import PROXY_L2_GRID, fit_bt, held_out_split, pair_accuracy, plateau_choice
from toysim.world import WorldConfig, make_world, response_features

SMALL = WorldConfig(prompts=6, responses=12, golden_pairs=120, proxy_features=8, seed=3)
SEQ = replace(SMALL, policy_kind="autoregressive", vocab=3, max_len=2, policy_features=20)


def test_plateau_choice_on_a_case_solved_by_hand():
    # best 0.72 (at 0.01); within 0.01 of it: 0.1 (0.715) and 0.01; the largest of those is 0.1
    accs = {10.0: 0.60, 1.0: 0.70, 0.1: 0.715, 0.01: 0.72, 0.0: 0.70}
    assert plateau_choice(accs) == 0.1
    assert plateau_choice({**accs, 1.0: 0.711}) == 1.0  # now 1 is on the plateau too
    assert plateau_choice({1.0: float("nan"), 0.1: 0.6}) == 0.1  # no accuracy: never chosen


def test_held_out_split_holds_out_a_fifth_disjointly():
    fit, held = held_out_split(101, seed=5)
    assert len(held) == math.ceil(0.2 * 101) and len(fit) + len(held) == 101
    assert set(fit.tolist()).isdisjoint(held.tolist()) and set(fit.tolist()) | set(held.tolist()) == set(range(101))
    assert torch.equal(held_out_split(101, seed=5)[1], held)  # the same split every time


def test_pair_accuracy_against_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    reward = torch.randn(4, 6, generator=g).round(decimals=1)  # rounded: some exact ties
    x, y_w, y_l = (torch.randint(4, (50,), generator=g), torch.randint(6, (50,), generator=g), torch.randint(6, (50,), generator=g))
    score = [1.0 if reward[a, b] > reward[a, c] else 0.5 if reward[a, b] == reward[a, c] else 0.0
             for a, b, c in zip(x.tolist(), y_w.tolist(), y_l.tolist()) if b != c]
    assert pair_accuracy(reward, x, y_w, y_l) == pytest.approx(sum(score) / len(score), abs=1e-12)


@pytest.mark.parametrize("cfg", [SMALL, SEQ], ids=["atomic", "autoregressive"])
def test_validated_world_takes_the_penalty_a_plain_loop_chooses(cfg):
    world = make_world(replace(cfg, proxy_fit="validated"))
    base = make_world(cfg)  # the same D_golden and features; only the proxy's penalty differs
    from toysim.world import features

    feats = features(base.u, base.z, cfg.proxy_features, seed=cfg.seed + 2000, squares=cfg.proxy_squares)
    d = base.d_golden
    fit, held = held_out_split(len(d.x), cfg.seed + 3000)
    accs = {}
    for l2 in PROXY_L2_GRID:  # the rule by hand: fit on the fit split, score on the held-out pairs
        r = fit_bt(feats, d.x[fit], d.y_w[fit], d.y_l[fit], l2)
        kept = [(a, b, c) for a, b, c in zip(d.x[held].tolist(), d.y_w[held].tolist(), d.y_l[held].tolist()) if b != c]
        accs[l2] = sum(1.0 if r[a, b] > r[a, c] else 0.5 if r[a, b] == r[a, c] else 0.0 for a, b, c in kept) / len(kept)
    best = max(accs.values())
    want = max(l2 for l2, a in accs.items() if a >= best - 0.01)
    assert world.proxy_choice["l2"] == want
    assert world.proxy_choice["grid"] == pytest.approx({str(k): v for k, v in accs.items()}, abs=1e-12)
    refit = fit_bt(feats, d.x, d.y_w, d.y_l, want)  # then refit on all of D_golden
    assert torch.allclose(world.proxy_reward, refit, atol=1e-10)
    assert base.proxy_choice is None


def test_response_features_sum_the_token_features_along_each_response():
    world = make_world(SEQ)
    tok = torch.randn(SEQ.prompts, world.space.nodes, SEQ.vocab + 1, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = response_features(world.space, tok)
    sp, V1 = world.space, SEQ.vocab + 1
    for n in range(len(sp)):
        want = sum(tok[:, int(sp.choice[n, t]) // V1, int(sp.choice[n, t]) % V1] for t in range(sp.max_len + 1) if sp.valid[n, t])
        assert torch.allclose(got[:, n], want)


@pytest.mark.parametrize("cfg", [SMALL, SEQ], ids=["atomic", "autoregressive"])
def test_a_proxy_of_the_policy_class_is_linear_in_the_policy_features(cfg):
    world = make_world(replace(cfg, proxy_class="policy"))
    phi = world.policy_features(1.0)
    if world.space is not None:
        phi = response_features(world.space, phi)
    want = fit_bt(phi, world.d_golden.x, world.d_golden.y_w, world.d_golden.y_l, cfg.proxy_l2)
    assert torch.allclose(world.proxy_reward, want, atol=1e-10)


def test_the_penalty_grid_includes_none_and_a_fit_without_penalty_is_finite():
    assert PROXY_L2_GRID[0] == max(PROXY_L2_GRID) and PROXY_L2_GRID[-1] == 0.0
    w = make_world(replace(SMALL, proxy_l2=0.0, proxy_class="policy", policy_features=64))  # more features than pairs' worth
    assert torch.isfinite(w.proxy_reward).all()
