"""toysim.study: arms that share one tensor program give the results they give alone.

A fused program stacks the arms' runs on one θ; each arm keeps its sampler, generator,
loss and evaluator, so only float rounding in the shared GEMMs may differ. A narrower
arm trains inside the widest arm's features with its extra coordinates masked, which
must be exactly the narrower policy. Both hold for atomic and for autoregressive
(token-sequence) worlds.
"""

from dataclasses import replace

import pytest
import torch

from shared.protocol import arm_plan
from shared.studies import GOLDEN, Arm
from toysim.presets import PRESETS, quick
from toysim.study import Runner

PRESET = quick(PRESETS["default"])


BOTH_KINDS = pytest.mark.parametrize("preset", [PRESET, quick(PRESETS["paper-protocol-v1"])], ids=["atomic", "autoregressive"])


def _runner(preset=PRESET) -> Runner:
    r = Runner(preset, seeds=2)
    r.run([arm_plan(GOLDEN, preset.train)])
    return r


def _run(r: Runner, *arms: Arm) -> None:
    """Run ``arms`` in the order given, in as few programs as they allow."""
    r.run([arm_plan(a, r.t) for a in arms])


def _runs(r: Runner, arm: Arm) -> list[dict]:
    return r.runs(arm_plan(arm, r.t))


def _assert_same_series(fused: list[dict], alone: list[dict], tol: float) -> None:
    assert [run["seed"] for run in fused] == [run["seed"] for run in alone]
    assert [run["config"] for run in fused] == [run["config"] for run in alone]
    for f, a in zip(fused, alone):
        assert f["series"]["step"] == a["series"]["step"]
        for key in ("kl", "win_rate", "acc_golden", "acc_online_pairs", "chosen_logp_shift"):
            assert f["series"][key] == pytest.approx(a["series"][key], abs=tol, rel=tol), key


@BOTH_KINDS
def test_fused_arms_equal_the_arms_run_alone(preset):
    online = Arm("online", "online", labels="proxy")
    others = [Arm("refresh-4", "refresh", labels="proxy", params={"every": 4}),
              Arm("online-bo2", "online", loss="bo2", labels="proxy"),  # a second loss in the same program
              Arm("offline", "offline", sweep=True),
              Arm("tandem", "replay", params={"stream": "online", "window": 0}),
              Arm("sft-vs-4k", "dataset", params={"pair": (0.0, 1.0)})]
    fused = _runner(preset)
    _run(fused, online, *others)
    alone = _runner(preset)
    _runs(alone, online)
    for arm in others:
        _runs(alone, arm)
        _assert_same_series(_runs(fused, arm), _runs(alone, arm), tol=1e-4)
    _assert_same_series(_runs(fused, online), _runs(alone, online), tol=1e-4)


@BOTH_KINDS
def test_a_narrow_arm_inside_wide_features_is_the_narrow_policy(preset):
    narrow, wide = Arm("offline@0.25", "offline", capacity=0.25), Arm("offline@4", "offline", capacity=4)
    fused = _runner(preset)
    _run(fused, narrow, wide)
    alone = _runner(preset)
    _assert_same_series(_runs(fused, narrow), _runs(alone, narrow), tol=1e-4)
    _assert_same_series(_runs(fused, wide), _runs(alone, wide), tol=1e-4)


def test_masked_coordinates_stay_exactly_zero():
    from shared.losses import ipo_loss
    from shared.sampling import OfflineSampler
    from toysim.policy import LogLinearPolicy
    from toysim.train import train

    w = Runner(replace(PRESET, world=replace(PRESET.world, policy_features=8)), seeds=1).world
    feats = w.policy_features(1)
    pol = LogLinearPolicy(w.sft_logp, feats, 3)
    pol.grad_mask = (torch.arange(8) < torch.tensor([[2], [5], [8]])).to(feats.dtype)
    sampler = OfflineSampler(w.d_golden, 16, torch.Generator().manual_seed(0), lead=(3,))
    train(pol, sampler, ipo_loss, torch.full((3, 1), 0.1), torch.full((3, 1), 0.05), 20, 100, lambda t, s: {}, None)
    assert torch.all(pol.theta[0, 2:] == 0) and torch.all(pol.theta[1, 5:] == 0)
    assert torch.all(pol.theta[0, :2] != 0) and torch.all(pol.theta[2] != 0)


def test_step_0_accuracies_are_exact_ties_whatever_the_program():
    """At step 0 the policy is π_sft, so every implicit-reward margin is a tie (½). The fused
    program re-rounds π_sft's table, so without toysim.evaluate.rounded_sign these read as rounding
    noise (0.49 or 0.50 depending on the CPU's kernels)."""
    r = _runner()
    arms = [Arm("online", "online", labels="proxy"), Arm("offline", "offline", sweep=True)]
    _run(r, *arms)
    for arm in arms:
        for run in _runs(r, arm):
            for key in ("acc_golden", "acc_online_pairs", "acc_self"):
                assert run["series"][key][0] == 0.5, (arm.name, key)
            assert run["series"]["acc_golden"][-1] != 0.5  # trained, the policy decides


def test_rounded_sign_is_sign_outside_the_rounding_band():
    from toysim.evaluate import ROUNDING, rounded_sign

    eps = torch.finfo(torch.float32).eps
    scale = torch.tensor([10.0, 10.0, 10.0, 10.0, 0.0])
    margin = torch.tensor([ROUNDING * eps * 10 * 0.9, -ROUNDING * eps * 10 * 0.9, 1e-3, -1e-3, 1e-30])
    for m, s, got in zip(margin.tolist(), scale.tolist(), rounded_sign(margin, scale).tolist()):
        want = 0.0 if abs(m) <= ROUNDING * eps * s else (1.0 if m > 0 else -1.0)  # plain loop reference
        assert got == want
    assert rounded_sign(margin, scale).tolist() == [0.0, 0.0, 1.0, -1.0, 1.0]


def test_a_study_gives_the_same_results_alone_and_after_other_studies():
    """An arm's "online pairs" partner comes from its own study's declaration
    (shared.protocol.online_partner), not from whichever online arm ran earlier in the process:
    equivalence after coverage (which runs IPO's "online") equals equivalence alone."""
    from toysim.study import run_study
    from shared.studies import STUDIES

    shared = Runner(PRESET, seeds=1)
    run_study(STUDIES["coverage"], PRESET, 1, runner=shared)
    after = run_study(STUDIES["equivalence"], PRESET, 1, runner=shared)
    alone = run_study(STUDIES["equivalence"], PRESET, 1)
    assert after["arms"] == alone["arms"]
    assert "acc_online_pairs" in alone["arms"]["offline-dpo"][0]["series"]


def test_agreement_table_has_the_form_of_the_rounded_sign_agreement():
    """(B + Bᵀ)/2 is the agreement rounded_sign(h_i − h_j, scale_i + scale_j)·label_ij entry by entry
    (a plain loop), ties inside the band included, so Σ q q B = Σ q q A for every q."""
    from toysim.evaluate import ROUNDING, agreement_table, rounded_sign

    g = torch.Generator().manual_seed(0)
    R, X, N = 2, 3, 7
    h = torch.randn(R, X, N, generator=g)
    h[0, 0, 1] = h[0, 0, 0]  # an exact tie
    scale = torch.rand(R, X, N, generator=g) * 10
    eps = torch.finfo(h.dtype).eps
    h[1, 2, 3] = h[1, 2, 4] + 0.5 * ROUNDING * eps * (scale[1, 2, 3] + scale[1, 2, 4])  # inside the band
    golden = torch.randn(X, N, generator=g)
    golden[1, 5] = golden[1, 6]  # a golden tie
    label = torch.sign(golden[:, :, None] - golden[:, None, :])
    b = agreement_table(h, scale, label)
    for r in range(R):
        for x in range(X):
            for i in range(N):
                for j in range(N):
                    a = rounded_sign(h[r, x, i] - h[r, x, j], scale[r, x, i] + scale[r, x, j]) * label[x, i, j]
                    assert ((b[r, x, i, j] + b[r, x, j, i]) / 2).item() == a.item()
    q = torch.softmax(torch.randn(R, X, N, generator=g), -1)
    a = (b + b.transpose(-1, -2)) / 2
    assert torch.allclose(torch.einsum("rxn,rxnm,rxm->rx", q, b, q), torch.einsum("rxn,rxnm,rxm->rx", q, a, q), atol=1e-6)
    assert (a != 0).any() and (a == 0).sum() > R * X * N  # ties and decided pairs both occur


def test_every_study_trained_at_once_equals_study_by_study():
    """--hypothesis all trains every study's arms before any study reads them (run_studies),
    stacking arms of different studies into one program: the same results as study by study,
    within float rounding, and the same verdicts."""
    from shared.studies import STUDIES
    from toysim.study import run_studies, run_study

    names = ["coverage", "scale", "equivalence", "refresh"]  # on-policy, replay and offline groups, three widths, RLHF, IPO-MD
    together = Runner(PRESET, seeds=2)
    run_studies(together, [STUDIES[n] for n in names])
    apart = Runner(PRESET, seeds=2)
    for n in names:
        a = run_study(STUDIES[n], PRESET, 2, runner=together)
        b = run_study(STUDIES[n], PRESET, 2, runner=apart)
        assert [c["verdict"] for c in a["claims"]] == [c["verdict"] for c in b["claims"]], n
        assert a["arms"].keys() == b["arms"].keys()
        for arm in a["arms"]:
            _assert_same_series(a["arms"][arm], b["arms"][arm], tol=1e-4)
