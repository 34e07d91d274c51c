"""Run one study of ``shared.studies`` in the exact simulator.

Docs: docs/studies/*.md. Tests: tests/test_toysim_gap.py.

Order of work (same sections as fullscale.run):
1. the world (golden preference, π_sft, D_golden, proxy PM) — toysim.env;
2. the golden policy: online IPO with golden labels, baseline config, one run
   per seed; its final policy is the win-rate reference of that seed;
3. the study's arms, their runs (arms × seeds × sweep configurations) stacked
   into as few batched programs as the arms allow — toysim.engine.train;
4. the results dict of ``shared.studies`` and the claims' verdicts.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict

import torch

from shared.claims import judge
from shared.preferences import hard_preference
from shared.protocol import (LOSSES, STREAM_SOURCES, SamplerWorld, checkpoint_steps, make_sampler, online_partner, provides_stream,
                             run_order, stream_generator, stream_read_by, sweep_configs)
from shared.sampling import Batch, geometric_mixture, policy_pair_dataset, stack_batches
from shared.studies import Arm, Study
from toysim.engine import Evaluator, TablePolicy, sample_rows, train
from toysim.env import TableOracle, World, golden_training_oracle, make_world
from toysim.presets import Preset
from toysim.theory import equivalence_checks, population_loss, rlhf_objective, theory_checks

__all__ = ["Runner", "run_study"]


class Runner:
    """Holds one world, its golden policy and finished arms, so studies that share arms reuse them."""

    def __init__(self, preset: Preset, seeds: int, mode: str = "sgd", progress_factory=None):
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
        self.proxy_pref = hard_preference(self.proxy_margin).double()
        self.online_state: dict[str, dict] = {}
        self.golden_final = None
        self.keep_tables = False  # True: ``tables[arm name]`` keeps every run's log π table at every checkpoint
        self.tables: dict[str, dict[int, torch.Tensor]] = {}

    def checkpoints(self, steps: int) -> set[int]:
        return checkpoint_steps(steps, self.t)

    # ---------------------------------------------------------------- arms
    def configs(self, arm: Arm) -> list[dict]:
        return sweep_configs(arm, self.t)

    def run_arm(self, arm: Arm, reference: bool = False) -> list[dict]:
        self.run_arms([arm], reference)
        return self.cache[repr(arm)]

    def run_arms(self, arms, reference: bool = False) -> None:
        """Run every arm of ``arms`` not run yet, as few tensor programs as the arms allow.

        Arms that train for the same number of steps on pairs share one program: their runs
        are stacked along the run axis of one policy (the widest arm's features; a narrower
        run's extra coordinates get no gradient and stay 0, which is exactly the narrower
        policy, as features of a smaller width are a prefix of a larger one). Each arm keeps
        its own sampler, generator, loss and evaluator, so its runs see the same data as when
        it runs alone; only float rounding in the shared GEMMs can differ. Arms that generate
        online streams run before the arms that read them (replay, checkpoint datasets).
        RLHF (rollouts, not pairs) and population mode run arm by arm.
        """
        todo = list({repr(a): a for a in arms if repr(a) not in self.cache}.values())
        streams = [a for a in todo if a.source in STREAM_SOURCES]
        for wave in (streams, [a for a in todo if a.source not in STREAM_SOURCES]):
            groups: dict[object, list[Arm]] = {}  # key: the number of steps, or the arm if it runs alone
            for a in wave:
                single = self.mode == "population" or a.source == "rlhf" or reference
                groups.setdefault(repr(a) if single else self.configs(a)[0]["steps"], []).append(a)
            for group in groups.values():
                for a, runs in zip(group, self._run_group(group, reference)):
                    self.cache[repr(a)] = runs

    def _run_group(self, arms: list[Arm], reference: bool) -> list[list[dict]]:
        """Train ``arms`` as one program (``run_arms``); returns each arm's runs in the results schema."""
        w = self.world
        parts, runs = [], []  # per arm: its slice of the stacked runs
        for arm in arms:
            arm_runs = [(c, s) for c in self.configs(arm) for s in range(self.seeds)]
            parts.append(slice(len(runs), len(runs) + len(arm_runs)))
            runs += arm_runs
        R, steps = len(runs), runs[0][0]["steps"]
        seed_idx = torch.tensor([s for _, s in runs])
        beta = torch.tensor([[c["beta"]] for c, _ in runs], dtype=torch.float64)
        lr = torch.tensor([[c["lr"]] for c, _ in runs], dtype=torch.float64)
        policy = w.make_policy(max(a.capacity for a in arms), R)
        feats = policy.feats
        widths = [w.policy_features(a.capacity).shape[-1] for a in arms]
        if min(widths) < feats.shape[-1]:
            policy.grad_mask = torch.cat([(torch.arange(feats.shape[-1]) < wd).to(feats.dtype).expand(sl.stop - sl.start, -1)
                                          for wd, sl in zip(widths, parts)])
        samplers, tables = [], [{} for _ in arms]
        oracles = [self.golden_oracle if arm.labels == "golden" else self.proxy_oracle for arm in arms]
        for arm, sl, tab, oracle in zip(arms, parts, tables, oracles):
            sampler = self.sampler(arm, _Runs(policy, sl), oracle, sl.stop - sl.start, stream_generator(self.p.world.seed, arm.name), seed_idx[sl], steps)
            if provides_stream(arm):  # registered now: arms of this group may read its tables as they are filled
                self.online_state[arm.name] = {"tables": tab, "log": getattr(sampler, "log", None)}
            samplers.append(sampler)
        evaluators = [self._evaluator(arm, seed_idx[sl]) for arm, sl in zip(arms, parts)]

        def evaluate(table, step):
            for sl, tab in zip(parts, tables):
                tab[step] = table[sl].detach().clone()
            res = [ev(tab[step], step) for ev, tab in zip(evaluators, tables)]
            return {k: torch.cat([r[k] for r in res]) for k in res[0]}

        if self.mode == "population":
            loss_fn, sampler = self.population(arms[0], policy, LOSSES[arms[0].loss], oracles[0])  # one arm per group
        else:
            loss_fn, sampler = _stacked_loss([LOSSES[a.loss] for a in arms], parts), _Stacked(samplers)
        desc = arms[0].name if len(arms) == 1 else f"{arms[0].name} +{len(arms) - 1} arms"
        with self.progress_factory(steps, desc) as bar:
            series = train(policy, sampler, loss_fn, beta, lr, steps, self.checkpoints(steps), evaluate, bar)
        if reference:
            self.golden_final = tables[0][steps].exp()
        if self.keep_tables:
            self.tables.update({arm.name: tab for arm, tab in zip(arms, tables)})  # {step: [runs of the arm, X, N]}
        out = []
        for arm, sl in zip(arms, parts):
            arm_out = []
            for r in range(sl.start, sl.stop):
                c, s = runs[r]
                ser = {k: ([int(x) for x in v] if k == "step" else [float(x[r]) for x in v]) for k, v in series.items()}
                arm_out.append({"seed": s, "config": {**c, "loss": arm.loss, "labels": arm.labels, "capacity": arm.capacity}, "series": ser})
            out.append(arm_out)
        return out

    def _evaluator(self, arm: Arm, seed_idx: torch.Tensor) -> Evaluator:
        """Exact metrics of an arm's runs; win rates against each run's seed's golden policy, and
        "online pairs" accuracies on the pairs of its online partner (``shared.protocol.online_partner``)."""
        w, R = self.world, len(seed_idx)
        ref = self.golden_final[seed_idx] if self.golden_final is not None else torch.full_like(w.sft_logp, 1 / w.sft_logp.shape[-1]).expand(R, -1, -1)
        online = self.online_state.get(online_partner(arm))
        pair_probs_at = None
        if not provides_stream(arm) and online is not None:
            pair_probs_at = lambda step: online["tables"][max(k for k in online["tables"] if k <= step)][seed_idx].exp()  # noqa: E731
        return Evaluator(w.sft_logp, ref, w.golden_pref, self.proxy_margin, w.d_golden, pair_probs_at=pair_probs_at)

    def sampler(self, arm: Arm, policy, oracle, R, g, seed_idx, steps):
        """``shared.protocol.make_sampler`` over this world: R runs stacked, tables as reward models."""
        w = self.world
        world = SamplerWorld(
            prompts=torch.arange(w.cfg.prompts), batch=(R, self.t.batch_size), d_golden=w.d_golden,
            mixture=lambda pol, alpha: _Mixture(pol, w.sft_logp, alpha),
            reward=lambda labels: (lambda x, y, t=(w.golden_reward if labels == "golden" else w.proxy_reward): t[x, y]),
            stream=lambda name: self.online_state[name]["log"],
            checkpoint_pairs=lambda a, gen: self.checkpoint_dataset(a, seed_idx, gen))
        return make_sampler(arm, world, policy, oracle, g, steps)

    def checkpoint_dataset(self, arm: Arm, seed_idx, g) -> Batch:
        """Pairs y1 ~ checkpoint a, y2 ~ checkpoint b of the online arm, golden-labelled, one dataset per run."""
        w = self.world
        tables = self.online_state[stream_read_by(arm)]["tables"]
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
        distribution offline, sg(π) online, the mixture for IPO-MD), or for RLHF the exact
        objective; the 'sampler' yields nothing."""
        if arm.source not in POPULATION_SOURCES:
            raise ValueError(f"arm {arm.name!r} ({arm.source}) has no population form; use mode='sgd'")
        w = self.world

        class _Null:
            def next(self):
                return None

        match arm.source:
            case "rlhf":  # the exact policy gradient of J = E_π[r] − β KL(π‖π_sft)
                table = w.golden_reward if arm.labels == "golden" else w.proxy_reward
                return (lambda logp, beta: -rlhf_objective(logp, w.sft_logp, table, beta[..., None])), _Null()
        eps = w.cfg.label_noise
        # golden training labels are flipped at label_noise, so their expected preference is (1 − 2ε)P + ε
        pref = (1 - 2 * eps) * w.golden_pref + eps if arm.labels == "golden" else self.proxy_pref

        def pairs_from(table):  # μ, the distribution both responses of a pair are drawn from
            match arm.source:
                case "offline":
                    return w.mu_logp.exp()
                case "mixture":
                    return geometric_mixture(table.detach(), w.sft_logp, arm.params["alpha"]).exp()
            return table.detach().exp()

        def pop_loss(table, beta):
            return population_loss(loss_fn, table, w.sft_logp, pairs_from(table), pref, beta[..., None, None])

        return pop_loss, _Null()


POPULATION_SOURCES = ("online", "offline", "rlhf", "mixture")
"""Sources with an exact population form (toysim only): the distribution their pairs or
rollouts come from is a table, so the expected loss is a finite sum."""


class _Runs:
    """Runs ``sl`` of a policy that trains several arms at once, as a ``shared.sampling.Policy``
    that samples (the table is computed once per step for all runs, then sliced)."""

    def __init__(self, policy: TablePolicy, sl: slice):
        self.policy, self.sl = policy, sl

    @property
    def theta(self) -> torch.Tensor:
        return self.policy.theta

    def table(self) -> torch.Tensor:
        return self.policy.table()[self.sl]

    def sample(self, x, generator=None):
        return sample_rows(self.policy.probs()[self.sl], x, generator)


class _Stacked:
    """The samplers of the arms of one program: their batches [R_i, B] stacked along runs."""

    def __init__(self, samplers: list):
        self.samplers = samplers

    def next(self):
        batches = [s.next() for s in self.samplers]
        return batches[0] if len(batches) == 1 else stack_batches(batches, dim=0)


def _stacked_loss(fns: list, parts: list[slice]):
    """One pair loss over stacked runs: each arm's loss on its own rows (one call if all agree)."""
    if all(f is fns[0] for f in fns):
        return fns[0]

    def loss(pi_w, pi_l, ref_w, ref_l, beta):
        return torch.cat([f(pi_w[sl], pi_l[sl], ref_w[sl], ref_l[sl], beta[sl]) for f, sl in zip(fns, parts)])

    return loss


class _Mixture:
    """A ``shared.sampling.Policy`` that samples from the geometric mixture of the policy's
    current table and π_sft (``shared.sampling.geometric_mixture``), recomputed when θ changes."""

    def __init__(self, policy: _Runs, sft_logp: torch.Tensor, alpha: float):
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
        out["extras"]["theory"] = theory_checks(seed=preset.world.seed)
        out["claims"] = judge(study, out)
        return out
    if study.name == "equivalence":
        out["extras"]["equivalence"] = equivalence_checks(seed=preset.world.seed)
    runner = runner or Runner(preset, seeds, mode, progress_factory)
    runner.run_arm(Arm("golden", "online", labels="golden"), reference=True)
    arms = run_order(study.arms)
    if mode == "population":
        for a in [a for a in arms if a.source not in POPULATION_SOURCES]:
            out["extras"].setdefault("skipped", []).append(f"{a.name}: no population form")
            arms.remove(a)
    runner.run_arms(arms)  # as few tensor programs as the arms allow
    for arm in arms:
        out["arms"][arm.name] = runner.run_arm(arm)
    out["claims"] = judge(study, out)
    return out
