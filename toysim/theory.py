"""Exact theory on a full-support tabular bandit: closed-form optima, population
losses built from ``shared.losses``, and a solver that minimises them.

Docs: docs/theory.md. Tests: tests/test_theory.py. Run: ``python -m toysim.gap
--hypothesis theory`` (claim 18 of the README's claims table).

Everything works on tensors [..., X, N]: X prompts, N enumerable responses.
The closed forms (docs/theory.md):

- RLHF / DPO with Bradley–Terry labels (Rafailov et al. 2023, Eq. 4):
  π*(y) = π_ref(y)·exp(r(y)/β)/Z.
- Offline IPO / ΨPO with Ψ = identity (Azar et al. 2023, Eq. 6 and Prop. 4):
  π*(y) = π_ref(y)·exp(p(y≻μ)/β)/Z with p(y≻μ) = Σ_y' μ(y') P(y≻y').
- Online IPO (Calandriello et al. 2024, arXiv 2403.08635, Prop. 4.1):
  the fixed point π = π_ref·exp(P(y≻π)/β)/Z.
"""

from __future__ import annotations

import torch

from shared.losses import dpo_loss, ipo_loss
from shared.preferences import bt_probability, hard_preference

__all__ = [
    "rlhf_optimum",
    "offline_ipo_optimum",
    "online_ipo_fixed_point",
    "population_loss",
    "rlhf_objective",
    "minimise",
    "total_variation",
    "random_bandit",
    "theory_checks",
]


def rlhf_optimum(ref_logp, reward, beta):
    """log π* = log π_ref + r/β − log Z (Rafailov et al. 2023, Eq. 4). [..., N] -> [..., N]."""
    return torch.log_softmax(ref_logp + reward / beta, -1)


def offline_ipo_optimum(ref_logp, pref, mu, beta):
    """log π* = log π_ref + p(y≻μ)/β − log Z (Azar et al. 2023, Eq. 6, Ψ = id).

    pref [..., N, N] with pref[y, y'] = P(y≻y'); mu [..., N].
    """
    p_vs_mu = torch.einsum("...nm,...m->...n", pref, mu)
    return torch.log_softmax(ref_logp + p_vs_mu / beta, -1)


def online_ipo_fixed_point(ref_logp, pref, beta, damping: float = 0.5, tol: float = 1e-13, max_iter: int = 100_000):
    """Solve π = π_ref·exp(P(y≻π)/β)/Z by damped fixed-point iteration in log space.

    Calandriello et al. 2024 (arXiv 2403.08635), Prop. 4.1: the online IPO
    stationary point. The map is a contraction when β is large relative to
    P's spread; damping extends convergence to smaller β. Raises if not converged.
    """
    logp = ref_logp.clone()
    for _ in range(max_iter):
        new = offline_ipo_optimum(ref_logp, pref, logp.exp(), beta)
        nxt = torch.log_softmax((1 - damping) * logp + damping * new, -1)
        if (nxt - logp).abs().max() < tol:
            return nxt
        logp = nxt
    raise RuntimeError("online IPO fixed-point iteration did not converge; raise damping or beta")


def population_loss(loss_fn, logits, ref_logp, mu, pref, beta):
    """Population pairwise loss E_{y,y'~μ} E_{label~P}[ℓ(y_w, y_l)].

    Pairs (y, y') are drawn from μ⊗μ and y wins with probability P(y≻y');
    by the swap symmetry of ordered pairs this equals
    2·Σ_{y,y'} μ(y)μ(y')P(y≻y')·ℓ(y, y'), which we compute (dropping the 2).
    ``loss_fn`` is any policy loss of ``shared.losses``.
    Shapes: logits [..., X, N], ref_logp [X, N], mu [..., X, N], pref [X, N, N] -> [...].
    """
    logp = torch.log_softmax(logits, -1)
    n = logp.shape[-1]
    shape = logp.shape + (n,)
    w, l_ = logp[..., :, None].expand(shape), logp[..., None, :].expand(shape)
    rw, rl = ref_logp[..., :, None].expand(shape), ref_logp[..., None, :].expand(shape)
    per_pair = loss_fn(w, l_, rw, rl, beta)
    weight = mu[..., :, None] * mu[..., None, :] * pref
    return (weight * per_pair).sum((-1, -2)).mean(-1)


def rlhf_objective(logits, ref_logp, reward, beta):
    """E_{y~π}[r(y)] − β·KL(π‖π_ref), averaged over prompts (docs/theory.md, 1)."""
    logp = torch.log_softmax(logits, -1)
    p = logp.exp()
    return (p * (reward - beta * (logp - ref_logp))).sum(-1).mean(-1)


def minimise(objective, init_logits, max_iter: int = 500, tolerance_grad: float = 1e-12):
    """Minimise ``objective(logits)`` over free logits with L-BFGS (float64).

    scipy's L-BFGS-B (Byrd et al. 1995) on the flattened logits, gradients by autograd;
    restarted up to twice from where it stopped, as L-BFGS can stop early on flat
    stretches. (torch.optim.LBFGS would do too, but building any torch optimiser
    imports torch._dynamo, about 2 s, which is most of a ``--quick`` study.)
    """
    from scipy.optimize import minimize  # lazily: scipy is heavy, and only this check's solver needs it

    shape = init_logits.shape

    def value_and_grad(flat):
        theta = torch.from_numpy(flat).reshape(shape).requires_grad_(True)
        value = objective(theta)
        (grad,) = torch.autograd.grad(value, theta)
        return value.item(), grad.reshape(-1).numpy()

    flat = init_logits.detach().to(torch.float64).reshape(-1).numpy().copy()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problems; torch's idle threads would otherwise contend with scipy's BLAS
    try:
        for _ in range(3):
            res = minimize(value_and_grad, flat, jac=True, method="L-BFGS-B",
                           options={"maxiter": max_iter, "maxcor": 50, "gtol": tolerance_grad, "ftol": 1e-15})
            flat = res.x
    finally:
        torch.set_num_threads(threads)
    return torch.log_softmax(torch.from_numpy(flat).reshape(shape), -1)


def total_variation(logp_a, logp_b):
    """Largest over prompts of ½ Σ_y |π_a(y) − π_b(y)|."""
    return 0.5 * (logp_a.exp() - logp_b.exp()).abs().sum(-1).max().item()


def random_bandit(num_prompts: int, num_responses: int, seed: int, dtype=torch.float64):
    """A random full-support bandit: (ref_logp, reward, hard preference matrix)."""
    g = torch.Generator().manual_seed(seed)
    ref_logp = torch.log_softmax(torch.randn(num_prompts, num_responses, generator=g, dtype=dtype), -1)
    reward = torch.randn(num_prompts, num_responses, generator=g, dtype=dtype)
    diff = reward[..., :, None] - reward[..., None, :]
    pref = hard_preference(diff).to(dtype)
    return ref_logp, reward, pref


def theory_checks(seed: int = 0, beta: float = 0.5, num_prompts: int = 4, num_responses: int = 8) -> dict:
    """Claim 18, computed exactly. Returns the numbers ``shared.claims`` judges."""

    ref_logp, reward, pref = random_bandit(num_prompts, num_responses, seed)
    mu = ref_logp.exp()  # offline data from the reference policy, full support
    init = torch.zeros_like(ref_logp)
    bt_pref = bt_probability(reward[..., :, None], reward[..., None, :])

    # the policy gradient fades with π(y) on rare responses, so L-BFGS crawls near the optimum;
    # a gradient of 1e-7 already puts it within ~1e-6 of the closed form (TV), far inside 1e-4
    rlhf = minimise(lambda th: -rlhf_objective(th, ref_logp, reward, beta), init, tolerance_grad=1e-7)
    dpo = minimise(lambda th: population_loss(dpo_loss, th, ref_logp, mu, bt_pref, beta), init)
    ipo = minimise(lambda th: population_loss(ipo_loss, th, ref_logp, mu, pref, beta), init)
    fixed = online_ipo_fixed_point(ref_logp, pref, beta)
    online = minimise(lambda th: population_loss(ipo_loss, th, ref_logp, fixed.exp(), pref, beta), init)

    # Azar et al. 2023 §4.2 two-action example: y1 always preferred, uniform π_ref and μ.
    two_ref = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    det = torch.tensor([[[0.5, 1.0], [0.0, 0.5]]], dtype=torch.float64)
    ipo_two = minimise(lambda th: population_loss(ipo_loss, th, two_ref, two_ref.exp(), det, beta), torch.zeros_like(two_ref))
    dpo_two = minimise(lambda th: population_loss(dpo_loss, th, two_ref, two_ref.exp(), det, beta), torch.zeros_like(two_ref), max_iter=2000)
    return {
        "tolerance": 1e-4,
        "rlhf_solver_vs_closed_form_tv": total_variation(rlhf, rlhf_optimum(ref_logp, reward, beta)),
        "dpo_bt_vs_rlhf_optimum_tv": total_variation(dpo, rlhf_optimum(ref_logp, reward, beta)),
        "offline_ipo_vs_closed_form_tv": total_variation(ipo, offline_ipo_optimum(ref_logp, pref, mu, beta)),
        "online_ipo_stationary_vs_fixed_point_tv": total_variation(online, fixed),
        "ipo_det_prob": ipo_two.exp()[0, 0].item(),
        "ipo_det_closed_form": torch.sigmoid(torch.tensor(0.5 / beta, dtype=torch.float64)).item(),
        "dpo_det_max_prob": dpo_two.exp()[0, 0].item(),
        "beta": beta,
    }


def equivalence_checks(seed: int = 0, beta: float = 0.5, num_prompts: int = 4, num_responses: int = 8) -> dict:
    """RLHF and DPO reach the same policy from different procedures (the DPO ≡ RLHF
    derivation of Rafailov et al. 2023, §4, shown end to end on a full-coverage bandit).

    RLHF: maximise J(π) = E_π[r] − β·KL(π‖π_ref) by its exact gradient (L-BFGS on
    −J). DPO: minimise the population DPO loss over μ⊗μ, μ = π_ref (full support),
    labels from the Bradley–Terry model of the same r. Both should equal
    π_ref·exp(r/β)/Z; returns the total variations between the three.
    """

    ref_logp, reward, _ = random_bandit(num_prompts, num_responses, seed)
    init = torch.zeros_like(ref_logp)
    # the policy gradient fades with π(y) on rare responses, so L-BFGS crawls near the optimum;
    # a gradient of 1e-7 already puts it within ~1e-6 of the closed form (TV), far inside 1e-4
    rlhf = minimise(lambda th: -rlhf_objective(th, ref_logp, reward, beta), init, tolerance_grad=1e-7)
    bt = bt_probability(reward[..., :, None], reward[..., None, :])
    dpo = minimise(lambda th: population_loss(dpo_loss, th, ref_logp, ref_logp.exp(), bt, beta), init)
    star = rlhf_optimum(ref_logp, reward, beta)
    return {"tolerance": 1e-4, "beta": beta, "tv_rlhf_vs_dpo": total_variation(rlhf, dpo),
            "tv_rlhf_vs_closed_form": total_variation(rlhf, star), "tv_dpo_vs_closed_form": total_variation(dpo, star),
            "tv_sft_vs_closed_form": total_variation(ref_logp, star)}
