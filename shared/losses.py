"""Preference-optimisation losses as pure functions over sequence log-probs.

Docs: docs/theory.md. Tests: tests/test_losses.py, tests/test_theory.py.

Every policy loss takes per-example *summed* sequence log-probabilities

    (pi_logp_w, pi_logp_l, ref_logp_w, ref_logp_l, beta)

of any common batch shape and returns the unreduced per-example loss of that
shape; the caller reduces. ``beta`` is a float or a tensor that broadcasts
against the batch (so one call can serve many runs with different β). The same
function serves a tabular toy (log-probs read off a table) and an LLM batch
(log-probs summed over response tokens).

Notation (docs/theory.md): the log-ratio margin

    h = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)].

Summed vs averaged log-probs: we always *sum* token log-probs, as the papers
write the losses. TRL's offline trainers average per token, which changes the
effective β per example by the response length; we do not.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from shared._validate import positive, same_shape

__all__ = [
    "log_ratio_margin",
    "dpo_loss",
    "ipo_loss",
    "ipo_loss_tang",
    "slic_loss",
    "robust_dpo_loss",
    "gpo_loss",
    "bo2_loss",
    "bt_loss",
    "pairwise_pm_loss",
    "rloo_loss",
]


def log_ratio_margin(pi_logp_w, pi_logp_l, ref_logp_w, ref_logp_l):
    """h_π(y_w, y_l) = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)].

    docs/theory.md, 3; Azar et al. 2023 (arXiv 2310.12036) write it h_π in §5.1.
    Shapes: four tensors of one shape [...] -> [...].
    """
    same_shape(pi_logp_w=pi_logp_w, pi_logp_l=pi_logp_l, ref_logp_w=ref_logp_w, ref_logp_l=ref_logp_l)
    return (pi_logp_w - ref_logp_w) - (pi_logp_l - ref_logp_l)


def dpo_loss(pi_logp_w, pi_logp_l, ref_logp_w, ref_logp_l, beta):
    """DPO: −log σ(β·h).

    Rafailov et al. 2023 (arXiv 2305.18290), Eq. 7. Computed with logsigmoid,
    accurate and finite for any finite input (torch's softplus switches to the
    identity above 20, an error of up to e^{−20}). Shapes: [...] x4, beta broadcastable -> [...].
    """
    h = log_ratio_margin(pi_logp_w, pi_logp_l, ref_logp_w, ref_logp_l)
    beta = positive("beta", beta, h)
    return -F.logsigmoid(beta * h)


def ipo_loss(pi_logp_w, pi_logp_l, ref_logp_w, ref_logp_l, beta):
    """IPO: (h − 1/(2β))².

    Azar et al. 2023 (arXiv 2310.12036), Eq. 17, on summed log-probs. This is
    the form the project uses everywhere. Tang et al. 2024 (arXiv 2405.08448,
    and GPO, arXiv 2402.05749) write f(βh) with f(z) = (z − ½)², which equals
    β²·(this loss): same minimiser, gradients scaled by β² (see
    ``ipo_loss_tang``; tests/test_losses.py checks the identity).
    Shapes: [...] x4, beta broadcastable -> [...].
    """
    h = log_ratio_margin(pi_logp_w, pi_logp_l, ref_logp_w, ref_logp_l)
    beta = positive("beta", beta, h)
    return (h - 1.0 / (2.0 * beta)) ** 2


def ipo_loss_tang(pi_logp_w, pi_logp_l, ref_logp_w, ref_logp_l, beta):
    """IPO as Tang et al. write it: (β·h − ½)² = β²·``ipo_loss``.

    Tang et al. 2024, GPO (arXiv 2402.05749), Table 1 with f(z) = (z − ½)².
    Kept for comparison with their learning rates; not used by the studies.
    """
    h = log_ratio_margin(pi_logp_w, pi_logp_l, ref_logp_w, ref_logp_l)
    beta = positive("beta", beta, h)
    return (beta * h - 0.5) ** 2


def slic_loss(pi_logp_w, pi_logp_l, ref_logp_w, ref_logp_l, beta):
    """SLiC (calibration hinge) in GPO form: max(0, 1 − β·h).

    Zhao et al. 2023 (arXiv 2305.10425), Eq. 4 with δ = 1 and the reference
    log-ratio as in Tang et al. 2024, GPO (arXiv 2402.05749), Table 1.
    """
    h = log_ratio_margin(pi_logp_w, pi_logp_l, ref_logp_w, ref_logp_l)
    beta = positive("beta", beta, h)
    return F.relu(1.0 - beta * h)


def robust_dpo_loss(pi_logp_w, pi_logp_l, ref_logp_w, ref_logp_l, beta, eps):
    """Robust DPO for labels flipped at rate ε ∈ [0, ½):

        [(1 − ε)·(−log σ(βh)) − ε·(−log σ(−βh))] / (1 − 2ε).

    Chowdhury et al. 2024, "Provably Robust DPO" (arXiv 2403.00409), §3. It is
    an unbiased estimate of the clean DPO loss: averaged over a flip of the
    label with probability ε it equals ``dpo_loss`` on the clean label
    (tests/test_losses.py checks this). ε = 0 gives DPO.
    """
    h = log_ratio_margin(pi_logp_w, pi_logp_l, ref_logp_w, ref_logp_l)
    beta = positive("beta", beta, h)
    eps = torch.as_tensor(eps, dtype=h.dtype, device=h.device)
    if not bool(torch.all((eps >= 0) & (eps < 0.5))):
        raise ValueError(f"eps must lie in [0, 0.5), got {eps!r}")
    return (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)


def gpo_loss(f: Callable[[torch.Tensor], torch.Tensor], pi_logp_w, pi_logp_l, ref_logp_w, ref_logp_l, beta):
    """Generalised preference optimisation: f(β·h) for a convex f.

    Tang et al. 2024, GPO (arXiv 2402.05749), Eq. 4. DPO is f(z) = log(1+e^{−z}),
    Tang's IPO is f(z) = (z − ½)², SLiC is f(z) = max(0, 1 − z).
    """
    h = log_ratio_margin(pi_logp_w, pi_logp_l, ref_logp_w, ref_logp_l)
    beta = positive("beta", beta, h)
    return f(beta * h)


def bo2_loss(pi_logp_w, pi_logp_l=None, ref_logp_w=None, ref_logp_l=None, beta=None):
    """Best-of-2 / contrastive-free baseline: −log π(y_w).

    Tang et al. 2024 (arXiv 2405.08448), §6 (the "Best-of-2" loss): maximise the
    likelihood of the winner of each pair; no reference model, no β. The other
    arguments are accepted and ignored so it fits the common signature.
    """
    same_shape(pi_logp_w=pi_logp_w)
    return -pi_logp_w


def bt_loss(r_w, r_l):
    """Bradley–Terry reward-model loss: −log σ(r_w − r_l).

    Bradley & Terry 1952; Ouyang et al. 2022 (arXiv 2203.02155), Eq. 1;
    docs/theory.md, 3. Shapes: [...] x2 -> [...].
    """
    same_shape(r_w=r_w, r_l=r_l)
    return -F.logsigmoid(r_w - r_l)


def pairwise_pm_loss(logit_12, first_wins):
    """Pairwise preference-model loss: binary cross-entropy of r(x, y1, y2).

    Tang et al. 2024 (arXiv 2405.08448), §3: the PM outputs
    r(x, y1, y2) = σ(logit_12) = P(y1 ≻ y2) and is trained by maximum
    likelihood on pairs whose order is randomised (the caller draws the order;
    ``first_wins`` is 1 where y1 is the chosen response, 0 where it is the
    rejected one). Shapes: logit_12 [...], first_wins [...] -> [...].
    """
    first_wins = torch.as_tensor(first_wins, device=logit_12.device).to(logit_12.dtype)
    same_shape(logit_12=logit_12, first_wins=first_wins)
    return F.binary_cross_entropy_with_logits(logit_12, first_wins, reduction="none")


def rloo_loss(pi_logp, ref_logp, reward, beta):
    """KL-regularised policy gradient with a leave-one-out baseline (RLOO), as a surrogate loss.

    The RLHF objective (Stiennon et al. 2020; Ouyang et al. 2022; docs/theory.md, 1):
    J(π) = E_{y~π}[r(x,y) − β·(log π(y|x) − log π_ref(y|x))]. Since E_{y~π}[∇log π(y)] = 0,
    ∇J = E_{y~π}[R(y)·∇log π(y)] with the sequence reward R = r − β·(log π − log π_ref)
    (the KL enters the reward, as in Ziegler et al. 2019). With k ≥ 2 samples
    y_1..y_k ~ π per prompt, REINFORCE with the leave-one-out baseline
    b_i = mean_{j≠i} R_j (Kool et al. 2019; Ahmadian et al. 2024, arXiv 2402.14740, Eq. 4)
    is unbiased for ∇J and lower-variance:

        loss = −(1/k)·Σ_i sg(R_i − b_i)·log π(y_i|x),   ∇loss = −ĝ, E[ĝ] = ∇J.

    Shapes: pi_logp, ref_logp, reward [..., k] (the k samples of one prompt on the
    last axis; pi_logp differentiable) -> [...] per prompt. ``beta`` broadcasts
    against [..., 1]. The returned value is a surrogate: only its gradient means J.
    """
    same_shape(pi_logp=pi_logp, ref_logp=ref_logp, reward=reward)
    k = pi_logp.shape[-1]
    if k < 2:
        raise ValueError(f"RLOO needs at least 2 samples per prompt on the last axis, got {k}")
    beta = positive("beta", beta, pi_logp[..., :1])
    with torch.no_grad():
        R = reward - beta * (pi_logp - ref_logp)
        advantage = R - (R.sum(-1, keepdim=True) - R) / (k - 1)
    return -(advantage * pi_logp).mean(-1)
