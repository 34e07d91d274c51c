"""The theory of docs/theory.md checked numerically on random tabular bandits.

Two independent routes meet in each test: a closed form (toysim.theory) and
the gradient or minimiser of a population loss built from shared.losses.
"""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from shared.losses import bt_loss, dpo_loss, ipo_loss, ipo_loss_tang
from shared.preferences import bt_probability
from toysim import theory as T

bandits = st.tuples(st.integers(1, 3), st.integers(2, 6), st.integers(0, 10_000))
betas = st.sampled_from([0.1, 0.3, 1.0, 3.0])


def _grad_at(loss_of_logits, logp):
    th = logp.clone().requires_grad_(True)
    loss_of_logits(th).backward()
    return th.grad


@given(bandits, betas)
def test_rlhf_optimum_is_stationary_point_of_population_dpo(b, beta):
    """π_ref·exp(r/β)/Z zeroes the gradient of the population DPO loss with BT labels."""
    ref_logp, reward, _ = T.random_bandit(*b)
    mu = torch.softmax(torch.randn(ref_logp.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(b[2] + 1)), -1)
    pref = bt_probability(reward[..., :, None], reward[..., None, :])
    opt = T.rlhf_optimum(ref_logp, reward, beta)
    g = _grad_at(lambda th: T.population_loss(dpo_loss, th, ref_logp, mu, pref, beta), opt)
    assert g.abs().max() < 1e-10
    # and it is not stationary elsewhere: the reference policy is not optimal
    g0 = _grad_at(lambda th: T.population_loss(dpo_loss, th, ref_logp, mu, pref, beta), ref_logp)
    assert g0.abs().max() > 1e-6


@given(bandits, betas)
def test_rlhf_optimum_is_stationary_for_rlhf_objective(b, beta):
    ref_logp, reward, _ = T.random_bandit(*b)
    opt = T.rlhf_optimum(ref_logp, reward, beta)
    g = _grad_at(lambda th: -T.rlhf_objective(th, ref_logp, reward, beta), opt)
    assert g.abs().max() < 1e-10


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dpo_minimiser_equals_rlhf_minimiser(seed):
    """Two procedures, one policy: argmin population DPO = argmax RLHF objective = closed form."""
    beta = 0.5
    ref_logp, reward, _ = T.random_bandit(3, 6, seed)
    pref = bt_probability(reward[..., :, None], reward[..., None, :])
    init = torch.zeros_like(ref_logp)
    dpo = T.minimise(lambda th: T.population_loss(dpo_loss, th, ref_logp, ref_logp.exp(), pref, beta), init)
    rlhf = T.minimise(lambda th: -T.rlhf_objective(th, ref_logp, reward, beta), init)
    closed = T.rlhf_optimum(ref_logp, reward, beta)
    assert T.total_variation(dpo, closed) < 1e-5
    assert T.total_variation(rlhf, closed) < 1e-5


@given(st.integers(0, 10_000), betas, st.floats(-100, 100))
def test_partition_function_cancels(seed, beta, c):
    """Adding a per-prompt constant to the implied reward leaves DPO and BT losses unchanged."""
    g = torch.Generator().manual_seed(seed)
    pw, pl, rw, rl = (torch.randn(5, generator=g, dtype=torch.float64) for _ in range(4))
    torch.testing.assert_close(dpo_loss(pw + c, pl + c, rw, rl, beta), dpo_loss(pw, pl, rw, rl, beta))
    r_w, r_l = beta * (pw - rw), beta * (pl - rl)
    torch.testing.assert_close(bt_loss(r_w + c, r_l + c), bt_loss(r_w, r_l))


@given(st.integers(0, 10_000), betas)
def test_dpo_is_bt_on_implied_reward(seed, beta):
    g = torch.Generator().manual_seed(seed)
    pw, pl, rw, rl = (torch.randn(5, generator=g, dtype=torch.float64) * 3 for _ in range(4))
    torch.testing.assert_close(dpo_loss(pw, pl, rw, rl, beta), bt_loss(beta * (pw - rw), beta * (pl - rl)))


@given(bandits, betas)
def test_offline_ipo_closed_form_is_stationary(b, beta):
    """π_ref·exp(p(y≻μ)/β)/Z zeroes the population IPO gradient for full-support μ (Azar Prop. 4)."""
    ref_logp, _, pref = T.random_bandit(*b)
    mu = torch.softmax(torch.randn(ref_logp.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(b[2] + 7)), -1)
    opt = T.offline_ipo_optimum(ref_logp, pref, mu, beta)
    g = _grad_at(lambda th: T.population_loss(ipo_loss, th, ref_logp, mu, pref, beta), opt)
    assert g.abs().max() < 1e-10
    # Tang's form (βh − ½)² = β²·Azar's: same stationary point
    g2 = _grad_at(lambda th: T.population_loss(ipo_loss_tang, th, ref_logp, mu, pref, beta), opt)
    assert g2.abs().max() < 1e-10


@pytest.mark.parametrize("seed", [0, 1])
def test_offline_ipo_minimiser_matches_closed_form(seed):
    beta = 0.3
    ref_logp, _, pref = T.random_bandit(2, 5, seed)
    mu = ref_logp.exp()
    found = T.minimise(lambda th: T.population_loss(ipo_loss, th, ref_logp, mu, pref, beta), torch.zeros_like(ref_logp))
    assert T.total_variation(found, T.offline_ipo_optimum(ref_logp, pref, mu, beta)) < 1e-6


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5, 2.0])
def test_azar_two_action_example(beta):
    """P(y1≻y2) = 1, uniform π_ref and μ: IPO gives π(y1) = σ(0.5/β); DPO → 1."""
    ref = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    det = torch.tensor([[[0.5, 1.0], [0.0, 0.5]]], dtype=torch.float64)
    ipo = T.minimise(lambda th: T.population_loss(ipo_loss, th, ref, ref.exp(), det, beta), torch.zeros_like(ref))
    assert ipo.exp()[0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(0.5 / beta, dtype=torch.float64)).item(), abs=1e-6)
    dpo = T.minimise(lambda th: T.population_loss(dpo_loss, th, ref, ref.exp(), det, beta), torch.zeros_like(ref), max_iter=2000)
    assert dpo.exp()[0, 0].item() > 0.999


@given(st.floats(-5, 5), betas)  # |βh| ≤ 15: beyond, the true gradient is below float64 rounding of the tied pairs
def test_dpo_deterministic_labels_has_no_stationary_point(h, beta):
    """With y1 always preferred, the population DPO loss decreases in h everywhere: no finite optimum."""
    ref = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    det = torch.tensor([[[0.5, 1.0], [0.0, 0.5]]], dtype=torch.float64)
    th = torch.tensor([[h / 2, -h / 2]], dtype=torch.float64, requires_grad=True)
    T.population_loss(dpo_loss, th, ref, ref.exp(), det, beta).backward()
    assert th.grad[0, 0] < 0 < th.grad[0, 1]


@settings(deadline=None)
@given(bandits, st.sampled_from([0.3, 1.0, 3.0]))
def test_online_ipo_fixed_point(b, beta):
    """The fixed point satisfies π = π_ref·exp(P(y≻π)/β)/Z and zeroes the online population gradient."""
    ref_logp, _, pref = T.random_bandit(*b)
    fixed = T.online_ipo_fixed_point(ref_logp, pref, beta)
    p_vs_pi = torch.einsum("xnm,xm->xn", pref, fixed.exp())
    torch.testing.assert_close(fixed, torch.log_softmax(ref_logp + p_vs_pi / beta, -1), atol=1e-10, rtol=0)
    # online loss: both responses from sg(π); at the fixed point the gradient vanishes
    mu = fixed.exp().detach()
    g = _grad_at(lambda th: T.population_loss(ipo_loss, th, ref_logp, mu, pref, beta), fixed)
    assert g.abs().max() < 1e-9


def test_online_and_offline_ipo_optima_differ():
    """Online's fixed point is not offline's optimum over π_ref (the two arms aim at different policies)."""
    ref_logp, _, pref = T.random_bandit(2, 6, 0)
    fixed = T.online_ipo_fixed_point(ref_logp, pref, 0.3)
    off = T.offline_ipo_optimum(ref_logp, pref, ref_logp.exp(), 0.3)
    assert T.total_variation(fixed, off) > 1e-3


def test_theory_checks_all_within_tolerance():
    out = T.theory_checks(seed=0, beta=0.5)
    for k, v in out.items():
        if k.endswith("_tv"):
            assert v < out["tolerance"], k
    assert out["dpo_det_max_prob"] > 0.99
