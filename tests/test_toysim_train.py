"""toysim.policy, toysim.train and toysim.world: Adam against torch's, batching against single runs, the world's invariants."""

import pytest
import torch

from shared.losses import ipo_loss
from shared.sampling import OfflineSampler
from toysim.policy import LogLinearPolicy, gather_logp
from toysim.train import adam_init, adam_update, train
from toysim.world import WorldConfig, features, make_world


def test_adam_matches_torch_optim():
    g = torch.Generator().manual_seed(0)
    theta0 = torch.randn(3, 4, generator=g, dtype=torch.float64)
    grads = [torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(5)]
    p = torch.nn.Parameter(theta0.clone())
    opt = torch.optim.Adam([p], lr=0.01)
    theta, state = theta0.clone(), adam_init(theta0)
    for gr in grads:
        p.grad = gr.clone()
        opt.step()
        theta, state = adam_update(theta, gr, state, 0.01)
    torch.testing.assert_close(theta, p.detach(), rtol=1e-12, atol=1e-12)


def test_batched_runs_equal_separate_runs():
    """R runs trained together give each run what it would get alone (runs are independent)."""
    w = make_world(WorldConfig(prompts=4, responses=8, golden_pairs=64, policy_features=6))
    feats = w.policy_features(1)
    beta = torch.tensor([[0.1], [0.5]], dtype=torch.float64)
    lr = torch.tensor([[0.01], [0.03]], dtype=torch.float64)
    order = torch.Generator().manual_seed(0)
    sampler = OfflineSampler(w.d_golden, 8, order, lead=(2,))
    batches = [sampler.next() for _ in range(10)]

    class Fixed:
        def __init__(self, bs):
            self.bs, self.i = bs, 0

        def next(self):
            self.i += 1
            return self.bs[self.i - 1]

    pol = LogLinearPolicy(w.sft_logp, feats, 2)
    train(pol, Fixed(batches), ipo_loss, beta, lr, 10, 100, lambda t, s: {}, None)
    for r in range(2):
        single = LogLinearPolicy(w.sft_logp, feats, 1)
        bs = [type(b)(b.x[r : r + 1], b.y_w[r : r + 1], b.y_l[r : r + 1], b.tie[r : r + 1]) for b in batches]
        train(single, Fixed(bs), ipo_loss, beta[r : r + 1], lr[r : r + 1], 10, 100, lambda t, s: {}, None)
        torch.testing.assert_close(single.theta[0], pol.theta[r], rtol=1e-10, atol=1e-12)


def test_gather_logp_shared_and_batched_tables():
    t = torch.arange(2 * 3 * 4, dtype=torch.float64).reshape(2, 3, 4)
    x, y = torch.tensor([[0, 2], [1, 1]]), torch.tensor([[3, 0], [2, 1]])
    assert gather_logp(t, x, y).tolist() == [[t[0, 0, 3].item(), t[0, 2, 0].item()], [t[1, 1, 2].item(), t[1, 1, 1].item()]]
    assert gather_logp(t[0], x, y).tolist() == [[t[0, 0, 3].item(), t[0, 2, 0].item()], [t[0, 1, 2].item(), t[0, 1, 1].item()]]


def test_world_is_deterministic_and_well_formed():
    cfg = WorldConfig(prompts=6, responses=10, golden_pairs=50)
    a, b = make_world(cfg), make_world(cfg)
    torch.testing.assert_close(a.proxy_reward, b.proxy_reward)
    assert torch.equal(a.d_golden.y_w, b.d_golden.y_w)
    torch.testing.assert_close(a.sft_logp.exp().sum(-1), torch.ones(6, dtype=torch.float64))
    p = a.golden_pref
    torch.testing.assert_close(p + p.transpose(-1, -2), torch.ones_like(p))  # P(y≻y') + P(y'≻y) = 1
    assert a.d_golden.x.shape == (50,)


def test_label_noise_flips_d_golden_labels_at_its_rate():
    clean = make_world(WorldConfig(golden_pairs=4000, label_noise=0.0))
    noisy = make_world(WorldConfig(golden_pairs=4000, label_noise=0.3))
    def agree(w):
        g = w.golden_reward
        return (g[w.d_golden.x, w.d_golden.y_w] >= g[w.d_golden.x, w.d_golden.y_l]).double().mean().item()
    assert agree(clean) == 1.0
    assert abs(agree(noisy) - 0.7) < 0.04


def test_features_prefix_property_and_capacity():
    u, z = torch.randn(3, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    f16, f64 = features(u, z, 16, seed=1), features(u, z, 64, seed=1)
    assert f16.shape == (3, 5, 16) and f64.shape == (3, 5, 64)
    torch.testing.assert_close(f64[..., :16], f16)


def test_bad_world_raises():
    with pytest.raises(ValueError):
        make_world(WorldConfig(responses=1))


def test_proxy_fit_is_the_regularised_bt_minimiser():
    """The Newton fit zeroes the gradient of the L2-regularised BT objective (autograd, independent of the Hessian)."""
    from shared.losses import bt_loss
    from toysim.world import features

    cfg = WorldConfig(prompts=8, responses=12, golden_pairs=300, proxy_features=6, proxy_l2=0.05)
    w = make_world(cfg)
    feats = features(w.u, w.z, cfg.proxy_features, seed=cfg.seed + 2000, squares=cfg.proxy_squares)
    coef = torch.linalg.lstsq(feats.reshape(-1, 6), w.proxy_reward.reshape(-1, 1)).solution[:, 0].requires_grad_(True)
    d = w.d_golden
    loss = bt_loss(feats[d.x, d.y_w] @ coef, feats[d.x, d.y_l] @ coef).mean() + cfg.proxy_l2 * (coef**2).sum()
    (g,) = torch.autograd.grad(loss, coef)
    assert g.abs().max() < 1e-8


def test_gather_log_softmax_matches_autograd_reference():
    from toysim.policy import gather_log_softmax

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 6, generator=g, dtype=torch.float64)
    x = torch.randint(0, 4, (3, 7), generator=g)
    y = torch.randint(0, 6, (3, 7), generator=g)
    up = torch.randn(3, 7, generator=g, dtype=torch.float64)
    a = logits.clone().requires_grad_(True)
    out = gather_log_softmax(a, x, y)
    (out * up).sum().backward()
    b = logits.clone().requires_grad_(True)
    ref = torch.log_softmax(b, -1)[torch.arange(3)[:, None].expand_as(x), x, y]
    (ref * up).sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(a.grad, b.grad)  # repeated (x, y) pairs included
    assert torch.autograd.gradcheck(lambda t: gather_log_softmax(t, x, y), (logits.clone().requires_grad_(True),))


def test_prompt_groups_match_a_plain_loop():
    """members[x] starts with the runs that read prompt x, in order; col is each pair's place there."""
    from toysim.policy import prompt_groups

    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        runs, prompts, k = (int(v) for v in torch.randint(2, 12, (3,), generator=g))
        x = torch.randint(0, prompts, (runs, k), generator=g)
        members, col = prompt_groups(x, prompts)
        groups = [[r for r in range(runs) if (x[r] == p).any()] for p in range(prompts)]
        assert members.shape == (prompts, max(map(len, groups)))
        for p, grp in enumerate(groups):
            assert members[p, : len(grp)].tolist() == grp
        assert all(col[r, j] == groups[x[r, j]].index(r) for r in range(runs) for j in range(k))


@pytest.mark.parametrize("path", ["rows", "pairs"])
@pytest.mark.parametrize("runs", [1, 3])
def test_pair_logp_matches_logits_table_reference(runs, path, monkeypatch):
    """The log-linear training step's grouped rows and closed-form gradient equal autograd through the
    full table, by either backward path (each forced in turn)."""
    from toysim import policy as engine
    from toysim.policy import gather_log_softmax, prompt_groups

    monkeypatch.setattr(engine, "_FORCE_PATH", path)

    w = make_world(WorldConfig(prompts=5, responses=7, golden_pairs=20, policy_features=4))
    pol = LogLinearPolicy(w.sft_logp, w.policy_features(1), runs)
    g = torch.Generator().manual_seed(runs)
    theta = torch.randn(runs, 4, generator=g, dtype=torch.float64)
    x = torch.randint(0, 5, (runs, 6), generator=g)
    y = torch.randint(0, 7, (runs, 6), generator=g)
    up = torch.randn(runs, 6, generator=g, dtype=torch.float64)
    members, col = prompt_groups(x, 5)
    assert all(members[x[r, k], col[r, k]] == r for r in range(runs) for k in range(6))
    a, b = theta.clone().requires_grad_(True), theta.clone().requires_grad_(True)
    out, ref = pol.pair_logp(a, x, y), gather_log_softmax(pol.logits(b), x, y)
    (out * up).sum().backward()
    (ref * up).sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(a.grad, b.grad)
    assert torch.autograd.gradcheck(lambda t: pol.pair_logp(t, x, y), (theta.clone().requires_grad_(True),))


@pytest.mark.parametrize("scale", [0.1, 1.0, 300.0])
def test_pair_logp_in_float32_for_small_and_huge_logits(scale):
    """The forward reads log π(y|x) off the softmax while every picked entry is ≥ 1e-30, and
    falls back to logit − log-sum-exp otherwise (logits of ±hundreds: entries underflow float32):
    both give the max-shifted log-softmax of the full table, values and gradients."""
    from toysim.policy import gather_log_softmax

    w = make_world(WorldConfig(prompts=5, responses=7, golden_pairs=20, policy_features=4)).to(torch.float32)
    pol = LogLinearPolicy(w.sft_logp, w.policy_features(1), 3)
    g = torch.Generator().manual_seed(7)
    theta = torch.randn(3, 4, generator=g) * scale
    x = torch.randint(0, 5, (3, 6), generator=g)
    y = torch.randint(0, 7, (3, 6), generator=g)
    a, b = theta.clone().requires_grad_(True), theta.clone().requires_grad_(True)
    out, ref = pol.pair_logp(a, x, y), gather_log_softmax(pol.logits(b), x, y)
    out.sum().backward()
    ref.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(a.grad).all()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * scale)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4)
