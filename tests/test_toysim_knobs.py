"""The three knobs of the token-sequence world (docs/judge.md, R2), each against a plain loop:
an off-support region aliased with good tokens (K1), a golden network outside both students'
classes (K2), and reward-neutral nuisance tokens (K3). Off, the world is today's."""

import math
from dataclasses import replace

import pytest
import torch

from toysim.world import WorldConfig, golden_network, make_world, token_alias, world_problem

SEQ = WorldConfig(prompts=5, golden_pairs=200, policy_kind="autoregressive", vocab=3, max_len=2, policy_features=40, seed=2)


def test_off_the_knobs_leave_the_world_as_it_was():
    """Values of a knob that is off (region_tokens 0) change nothing."""
    a, b = make_world(SEQ), make_world(replace(SEQ, region_mass=0.2, region_alias=0.7, region_penalty=3.0))
    for key in ("golden_reward", "sft_logp", "proxy_reward"):
        assert torch.equal(getattr(a, key), getattr(b, key))
    assert torch.equal(a.policy_features(), b.policy_features())


def _golden_by_loop(w, cfg, eps_of):
    """r*(x, y) = u_x·z_y − penalty·‖z_y‖² + noise·ε(x, y) − cost·(region tokens in y), token by token."""
    V, m = cfg.vocab, cfg.region_tokens
    alias = token_alias(w.u, w.token_traits, cfg.penalty, m).tolist()
    trait = lambda t: w.token_traits[t] if t < V else (w.token_traits[alias[t - V]] if t < V + m else torch.zeros(cfg.traits, dtype=w.u.dtype))  # noqa: E731
    out = torch.zeros(cfg.prompts, len(w.space), dtype=w.u.dtype)
    for x in range(cfg.prompts):
        for n, p in enumerate(w.space.responses):
            z = sum((trait(t) for t in p), torch.zeros(cfg.traits, dtype=w.u.dtype))
            out[x, n] = w.u[x] @ z - cfg.penalty * (z @ z) + cfg.noise * eps_of(x, n)
    return out


def test_region_tokens_cost_the_golden_carry_little_sft_mass_and_alias_in_the_policy():
    cfg = replace(SEQ, region_tokens=1, region_mass=0.003, region_alias=1.0, region_penalty=1.0)
    w = make_world(cfg)
    V, sp = cfg.vocab, w.space
    region = torch.tensor([V in p for p in sp.responses])
    assert torch.equal(w.region, region)
    # π_sft: the region token takes region_mass of every node's choices
    p_tok = torch.softmax(w.sft_tok.double(), -1)
    assert torch.allclose(p_tok[..., V], torch.full_like(p_tok[..., V], 0.003), atol=1e-12)
    assert float(w.sft_logp.exp()[:, region].sum(-1).max()) < 0.01  # under 1% of π_sft's mass, the preset's rule
    # golden: the alias's traits, minus the cost per region token (the mean range of the golden without them)
    base = make_world(replace(cfg, region_penalty=0.0))
    no_region = base.golden_reward[:, ~region]
    cost = float((no_region.amax(-1) - no_region.amin(-1)).mean())
    count = torch.tensor([sum(t == V for t in p) for p in sp.responses], dtype=torch.float64)
    assert torch.allclose(w.golden_reward, base.golden_reward - cost * count, atol=1e-12)
    alias = int(token_alias(w.u, w.token_traits, cfg.penalty, 1))
    assert alias == int(torch.argmax((w.u @ w.token_traits.T).mean(0) - cfg.penalty * (w.token_traits**2).sum(-1)))
    # at α = 1 the policy's features of the region token are its alias's at every node
    phi = w.policy_features()
    assert torch.allclose(phi[:, :, V], phi[:, :, alias], atol=1e-6)
    # the proxy's features: its own class, then the response's count of region tokens
    from toysim.proxy import fit_bt
    from toysim.world import features

    phi_proxy = torch.cat([features(w.u, w.z, cfg.proxy_features, seed=cfg.seed + 2000, squares=cfg.proxy_squares),
                           count[None, :, None].expand(cfg.prompts, -1, 1)], -1)
    d = w.d_golden
    assert torch.allclose(w.proxy_reward, fit_bt(phi_proxy, d.x, d.y_w, d.y_l, cfg.proxy_l2), atol=1e-10)


def test_the_golden_with_region_and_nuisance_tokens_equals_a_plain_loop():
    cfg = replace(SEQ, region_tokens=1, nuisance_tokens=1, region_penalty=0.0)
    w = make_world(cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    torch.randn(cfg.prompts, cfg.traits, generator=g, dtype=torch.float64)  # u
    torch.randn(cfg.vocab, cfg.traits, generator=g, dtype=torch.float64)  # e
    raw = torch.randn(cfg.prompts, len(w.space), generator=g, dtype=torch.float64)
    nuisance = cfg.vocab + cfg.region_tokens
    index = {p: i for i, p in enumerate(w.space.responses)}
    stripped = [index[tuple(t for t in p if t != nuisance)] for p in w.space.responses]
    want = _golden_by_loop(w, cfg, lambda x, n: raw[x, stripped[n]])
    assert torch.allclose(w.golden_reward, want, atol=1e-12)


def test_nuisance_tokens_are_reward_neutral_exactly():
    cfg = replace(SEQ, nuisance_tokens=2, golden_net=0.5, region_tokens=1)
    w = make_world(cfg)
    index = {p: i for i, p in enumerate(w.space.responses)}
    drop = {cfg.vocab + 1, cfg.vocab + 2}  # after the region token
    for n, p in enumerate(w.space.responses):
        same = index[tuple(t for t in p if t not in drop)]
        assert torch.equal(w.golden_reward[:, n], w.golden_reward[:, same])
        assert torch.all(w.golden_pref[:, n, same] == 0.5)  # a golden tie
    # π_sft gives a nuisance token the mean ordinary logit, as END
    tok = w.sft_tok[:, 0].double()
    assert torch.allclose(tok[:, cfg.vocab + 1], tok[:, : cfg.vocab].mean(-1))


def test_the_golden_network_equals_a_plain_loop():
    w = make_world(SEQ)
    g = torch.Generator().manual_seed(11)
    f = golden_network(w.space, w.u, g)
    g = torch.Generator().manual_seed(11)
    V1, L, k = SEQ.vocab + 1, SEQ.max_len, SEQ.traits
    d_in = k + L * V1
    w1 = torch.randn(32, d_in, generator=g, dtype=torch.float64) / math.sqrt(d_in)
    b1 = torch.randn(32, generator=g, dtype=torch.float64)
    w2 = torch.randn(32, generator=g, dtype=torch.float64) / math.sqrt(32)
    raw = torch.zeros(SEQ.prompts, len(w.space), dtype=torch.float64)
    for x in range(SEQ.prompts):
        for n, p in enumerate(w.space.responses):
            inp = list(w.u[x].tolist())
            for t in range(L):
                slot = p[t] if t < len(p) else SEQ.vocab
                inp += [1.0 if v == slot else 0.0 for v in range(V1)]
            hidden = [math.tanh(sum(w1[h, i].item() * inp[i] for i in range(d_in)) + b1[h].item()) for h in range(32)]
            raw[x, n] = sum(w2[h].item() * hidden[h] for h in range(32))
    assert torch.allclose(f, (raw - raw.mean()) / raw.std(), atol=1e-10)
    on = make_world(replace(SEQ, golden_net=0.5))
    assert not torch.allclose(on.golden_reward, w.golden_reward)


def test_atomic_worlds_refuse_the_token_knobs():
    atomic = WorldConfig()
    for knob in ("region_tokens", "golden_net", "nuisance_tokens"):
        problem = world_problem(replace(atomic, **{knob: 1}), runs=1)
        assert problem and knob in problem and "token-sequence" in problem
        with pytest.raises(ValueError, match="token-sequence"):
            make_world(replace(atomic, **{knob: 1}))
