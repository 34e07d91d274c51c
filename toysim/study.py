"""Run one study of ``shared.studies`` in the exact simulator.

Docs: docs/studies/*.md. Tests: tests/test_toysim_gap.py.

Order of work (same sections as fullscale.run):
1. the world (golden preference, π_sft, D_golden, proxy PM) — toysim.env;
2. the golden policy: online IPO with golden labels, baseline config, one run
   per seed; its final policy is the win-rate reference of that seed;
3. each arm of the study, all its runs (seeds × sweep configurations) as one
   batched program — toysim.engine.train;
4. the results dict of ``shared.studies`` and the claims' verdicts.
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import asdict

import torch

from shared import losses
from shared.sampling import Batch, OfflineSampler, OnlineSampler, RefreshSampler, ReplaySampler, RolloutSampler, geometric_mixture
from shared.studies import STUDIES, Arm, Study, judge
from toysim.engine import Evaluator, LogLinearPolicy, sample_rows, train
from toysim.env import TableOracle, World, golden_training_oracle, make_world
from toysim.presets import Preset
from toysim.theory import population_loss

__all__ = ["LOSSES", "Runner", "run_study"]

# checkpoint fractions the "dataset" arms read from the online run (0 = SFT)
STUDIES_PAIRS = [a.params["pair"] for s in STUDIES.values() for a in s.arms if a.source == "dataset"]

LOSSES = {"ipo": losses.ipo_loss, "dpo": losses.dpo_loss, "slic": losses.slic_loss, "bo2": losses.bo2_loss,
          "rloo": losses.rloo_loss}


def _gen(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


class Runner:
    """Holds one world, its golden policy and finished arms, so studies that share arms reuse them."""

    def __init__(self, preset: Preset, seeds: int, mode: str = "sgd", progress_factory=None):
        import contextlib

        if progress_factory is None:
            progress_factory = lambda total, desc: contextlib.nullcontext(None)  # noqa: E731
        self.p, self.t, self.seeds, self.mode = preset, preset.train, seeds, mode
        self.cache: dict[str, list[dict]] = {}
        self.world: World = make_world(preset.world).to(torch.float32)  # exact enough, twice as fast as float64
        self.progress_factory = progress_factory
        w = self.world
        self.golden_oracle = golden_training_oracle(w.golden_reward, w.cfg.label_noise)
        self.proxy_oracle = TableOracle(w.proxy_reward)
        self.proxy_margin = w.proxy_reward[:, :, None] - w.proxy_reward[:, None, :]
        self.proxy_pref = (self.proxy_margin > 0).double() + 0.5 * (self.proxy_margin == 0).double()
        self.data_fracs = sorted({f for a in STUDIES_PAIRS for f in a})
        self.online_state: dict[str, dict] = {}
        self.golden_final = None

    def checkpoints(self, steps: int) -> set[int]:
        """Log-spaced evaluation steps (the curves are read on a log-KL axis), ``checkpoints`` per
        online horizon and as dense per decade beyond it, plus the fractions the data study's
        checkpoint datasets name, and the last step."""
        import math

        import numpy as np

        per_decade = self.t.checkpoints / math.log10(max(self.t.steps, 10))
        num = max(2, int(round(per_decade * math.log10(max(steps, 10)))))
        out = {int(round(v)) for v in np.geomspace(1, steps, num)}
        out |= {round(f * self.t.steps) for f in self.data_fracs if f * self.t.steps <= steps}
        return {s for s in out if 0 < s <= steps} | {steps}

    # ---------------------------------------------------------------- arms
    def configs(self, arm: Arm) -> list[dict]:
        t = self.t
        steps = t.steps * (t.offline_mult if arm.source in ("offline", "dataset") else 1)
        if arm.sweep:
            return [{"lr": t.lr * a, "beta": t.beta * b, "steps": steps} for a, b in itertools.product(t.sweep_lr, t.sweep_beta)]
        return [{"lr": t.lr, "beta": t.beta, "steps": steps}]

    def run_arm(self, arm: Arm, reference: bool = False) -> list[dict]:
        key = repr(arm)
        if key not in self.cache:
            self.cache[key] = self._run_arm(arm, reference)
        return self.cache[key]

    def _run_arm(self, arm: Arm, reference: bool) -> list[dict]:
        w = self.world
        cfgs = self.configs(arm)
        runs = [(c, s) for c in cfgs for s in range(self.seeds)]
        R = len(runs)
        seed_idx = torch.tensor([s for _, s in runs])
        steps = cfgs[0]["steps"]
        beta = torch.tensor([[c["beta"]] for c, _ in runs], dtype=torch.float64)
        lr = torch.tensor([[c["lr"]] for c, _ in runs], dtype=torch.float64)
        policy = LogLinearPolicy(w.sft_logp, w.policy_features(arm.capacity), R)
        g = _gen(self.p.world.seed, arm.name)
        oracle = self.golden_oracle if arm.labels == "golden" else self.proxy_oracle
        sampler = self.sampler(arm, policy, oracle, R, g, seed_idx, steps)

        ref = self.golden_final[seed_idx] if self.golden_final is not None else None
        tables: dict[int, torch.Tensor] = {}
        # the online run whose pairs the "online pairs" accuracies use: same loss family and capacity
        stream = "online" + ("-bo2" if arm.loss == "bo2" else "") + ("@" + arm.name.split("@")[1] if "@" in arm.name else "")
        online = self.online_state.get(stream)
        ev = Evaluator(w.sft_logp, ref if ref is not None else torch.full_like(w.sft_logp, 1 / w.sft_logp.shape[-1]).expand(R, -1, -1),
                       w.golden_pref, self.proxy_margin, w.d_golden,
                       pair_probs_at=None if arm.source == "online" or online is None else
                       (lambda step: online["tables"][max(k for k in online["tables"] if k <= step)][seed_idx].exp()))

        def evaluate(table, step):
            tables[step] = table.detach().clone()
            return ev(table, step)

        loss_fn = LOSSES[arm.loss]
        if self.mode == "population":
            loss_fn, sampler = self.population(arm, policy, loss_fn, oracle)
        with self.progress_factory(steps, arm.name) as bar:
            series = train(policy, sampler, loss_fn, beta, lr, steps, self.checkpoints(steps), evaluate, bar)
        if arm.source == "online":
            self.online_state[arm.name] = {"tables": tables, "log": getattr(sampler, "log", None)}
        if reference:
            self.golden_final = tables[steps].exp()
        out = []
        for r, (c, s) in enumerate(runs):
            ser = {k: ([int(x) for x in v] if k == "step" else [float(x[r]) for x in v]) for k, v in series.items()}
            out.append({"seed": s, "config": {**c, "loss": arm.loss, "labels": arm.labels, "capacity": arm.capacity}, "series": ser})
        return out

    def sampler(self, arm: Arm, policy, oracle, R, g, seed_idx, steps):
        w, B = self.world, self.t.batch_size
        if arm.source == "online":
            return OnlineSampler(policy, oracle, torch.arange(w.cfg.prompts), (R, B), g)
        if arm.source == "offline":
            return OfflineSampler(w.d_golden, B, g, lead=(R,))
        if arm.source == "refresh":  # every = 0: one dataset for the whole run
            every = arm.params["every"] or steps
            return RefreshSampler(OnlineSampler(policy, oracle, torch.arange(w.cfg.prompts), (R, B), g), every)
        if arm.source == "mixture":  # IPO-MD: online pairs from π^{1−α}·π_sft^α
            return OnlineSampler(_Mixture(policy, w.sft_logp, arm.params["alpha"]), oracle, torch.arange(w.cfg.prompts), (R, B), g)
        if arm.source == "rlhf":  # k samples per prompt; as many sampled responses per step as online's 2B
            k = arm.params.get("k", 4)
            table = w.golden_reward if arm.labels == "golden" else w.proxy_reward
            return RolloutSampler(policy, lambda x, y: table[x, y], torch.arange(w.cfg.prompts), (R, max(1, 2 * B // k)), k, g)
        if arm.source == "replay":
            stream = self.online_state[arm.params["stream"]]["log"]
            window = arm.params["window"] or len(stream)
            return ReplaySampler(stream, window, g)
        if arm.source == "dataset":
            return OfflineSampler(self.checkpoint_dataset(arm, seed_idx, g), B, g, lead=(R,), per_run=True)
        raise ValueError(f"unknown arm source {arm.source!r}")

    def checkpoint_dataset(self, arm: Arm, seed_idx, g) -> Batch:
        """Pairs y1 ~ checkpoint a, y2 ~ checkpoint b of the online arm, golden-labelled, one dataset per run."""
        from shared.sampling import policy_pair_dataset

        w = self.world
        tables = self.online_state["online"]["tables"]
        n, R = w.cfg.golden_pairs, len(seed_idx)

        class _Frozen:  # a checkpoint as a shared.sampling.Policy
            def __init__(self, probs):
                self.probs = probs  # [R, X, N]

            def sample(self, x, generator=None):
                return sample_rows(self.probs, x, generator)

        def at(frac):
            return _Frozen(tables[round(frac * self.t.steps)][seed_idx].exp())

        a, b = arm.params["pair"]
        x = torch.randint(w.cfg.prompts, (R, n), generator=g)
        return policy_pair_dataset(at(a), at(b), x, self.golden_oracle, g)

    def population(self, arm: Arm, policy, loss_fn, oracle):
        """Exact mode: the loss is the population loss over μ⊗μ (μ = π_sft's D_golden
        distribution offline, sg(π) online); the 'sampler' yields nothing."""
        if arm.source not in ("online", "offline", "rlhf", "mixture"):
            raise ValueError(f"arm {arm.name!r} ({arm.source}) has no population form; use mode='sgd'")
        w = self.world

        class _Null:
            def next(self):
                return None

        if arm.source == "rlhf":  # the exact policy gradient of J = E_π[r] − β KL(π‖π_sft)
            from toysim.theory import rlhf_objective

            table = w.golden_reward if arm.labels == "golden" else w.proxy_reward
            return (lambda logp, beta: -rlhf_objective(logp, w.sft_logp, table, beta[..., None])), _Null()
        eps = w.cfg.label_noise
        # golden training labels are flipped at label_noise, so their expected preference is (1 − 2ε)P + ε
        pref = (1 - 2 * eps) * w.golden_pref + eps if arm.labels == "golden" else self.proxy_pref

        def pop_loss(table, beta):
            if arm.source == "mixture":
                mu = geometric_mixture(table.detach(), w.sft_logp, arm.params["alpha"]).exp()
            else:
                mu = w.mu_logp.exp() if arm.source == "offline" else table.detach().exp()
            return population_loss(loss_fn, table, w.sft_logp, mu, pref, beta[..., None, None])

        return pop_loss, _Null()


class _Mixture:
    """A ``shared.sampling.Policy`` that samples from the geometric mixture of the policy's
    current table and π_sft (``shared.sampling.geometric_mixture``), recomputed when θ changes."""

    def __init__(self, policy: LogLinearPolicy, sft_logp: torch.Tensor, alpha: float):
        self.policy, self.sft_logp, self.alpha = policy, sft_logp, alpha
        self._theta, self._probs = None, None

    def sample(self, x, generator=None):
        if self._theta is not self.policy.theta:
            with torch.no_grad():
                self._probs = geometric_mixture(self.policy.table(), self.sft_logp, self.alpha).exp()
            self._theta = self.policy.theta
        return sample_rows(self._probs, x, generator)


def run_study(study: Study, preset: Preset, seeds: int, mode: str = "sgd", progress_factory=None,
              runner: Runner | None = None) -> dict:
    """Run every arm of ``study`` and judge its claims. Returns the results dict.

    Pass a ``runner`` to share the world, the golden policy and finished arms
    between studies (``--hypothesis all``).
    """
    out = {"study": study.name, "question": study.question, "preset": preset.name, "mode": mode, "seeds": seeds,
           "config": {"world": asdict(preset.world), "train": asdict(preset.train)}, "arms": {}, "extras": {}}
    if study.name == "theory":
        from toysim.theory import theory_checks

        out["extras"]["theory"] = theory_checks(seed=preset.world.seed)
        out["claims"] = judge(study, out)
        return out
    if study.name == "equivalence":
        from toysim.theory import equivalence_checks

        out["extras"]["equivalence"] = equivalence_checks(seed=preset.world.seed)
    runner = runner or Runner(preset, seeds, mode, progress_factory)
    runner.run_arm(Arm("golden", "online", labels="golden"), reference=True)
    for arm in sorted(study.arms, key=lambda a: a.source != "online"):  # streams and checkpoints first
        if mode == "population" and arm.source not in ("online", "offline", "rlhf", "mixture"):
            out["extras"].setdefault("skipped", []).append(f"{arm.name}: no population form")
            continue
        out["arms"][arm.name] = runner.run_arm(arm)
    out["claims"] = judge(study, out)
    return out
