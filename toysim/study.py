"""Run one study of ``shared.studies`` in the exact simulator: ``Runner`` and ``run_study``.

Docs: docs/studies/*.md. Tests: tests/test_toysim_study.py, tests/test_toysim_gap.py.

Same sections, in the same order, as ``fullscale.study``:
1. the world (golden preference, π_sft, D_golden, proxy PM) — ``toysim.world``;
2. the golden policy (``shared.studies.GOLDEN``, the first entry of ``shared.protocol.plan``):
   online IPO with golden labels, baseline config, one run per seed; its final policy is the
   win-rate reference of that seed;
3. the study's arms, in the plan's order, their runs (arms × seeds × sweep configurations)
   stacked into as few batched programs as the arms allow — ``toysim.train.train``, evaluated
   at checkpoints by ``toysim.evaluate.Evaluator``;
4. the results dict (``shared.results``) and the claims' verdicts.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict

import torch

from shared.claims import judge
from shared.preferences import hard_preference
from shared.protocol import LOSSES, ArmPlan, SamplerWorld, make_sampler, plan, stream_generator
from shared.results import results_header, run_record
from shared.sampling import Batch, policy_pair_dataset, stack_batches
from shared.studies import GOLDEN, Study
from toysim.evaluate import Evaluator
from toysim.policy import TablePolicy, sample_rows
from toysim.presets import Preset
from toysim.theory import equivalence_checks, population_loss, rlhf_objective, theory_checks
from toysim.train import train
from toysim.world import TableOracle, World, golden_training_oracle, make_world

__all__ = ["Runner", "run_study", "run_studies", "study_plans"]


class Runner:
    """Holds one world, its golden policy and finished arms, so studies that share arms reuse them."""

    def __init__(self, preset: Preset, seeds: int, mode: str = "sgd", progress_factory=None):
        if progress_factory is None:
            progress_factory = lambda total, desc: contextlib.nullcontext(None)  # noqa: E731
        self.p, self.t, self.seeds, self.mode = preset, preset.train, seeds, mode
        self.cache: dict[str, list[dict]] = {}
        # ---------------------------------------------------------------- 1. the world
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

    # ---------------------------------------------------------------- 2. the golden policy, 3. the arms
    def runs(self, p: ArmPlan) -> list[dict]:
        """The runs of a planned arm, run now if they have not been (``run``)."""
        self.run([p])
        return self.cache[repr(p.arm)]

    def run(self, plans: list[ArmPlan]) -> None:
        """Run every arm of ``plans`` not run yet, in the plan's order (``shared.protocol.plan``),
        as few tensor programs as the arms allow.

        Arms that train for the same number of steps on pairs, at the same width, share one
        program: their runs are stacked along the run axis of one policy. (A program may mix
        widths: a narrower run's extra coordinates get no gradient and stay 0, which is exactly
        the narrower policy, as features of a smaller width are a prefix of a larger one; the
        runner keeps widths apart, since every run of a program pays for its widest features.) Each arm keeps
        its own sampler, generator, loss and evaluator, so its runs see the same data as when
        it runs alone; only float rounding in the shared GEMMs can differ. An arm on the
        policy's own pairs never shares a program with an arm on fixed data (``ArmPlan.on_policy``),
        since those read its logs and checkpoints once it has run. The golden policy, RLHF
        (rollouts, not pairs) and population mode run arm by arm.
        """
        todo = list({repr(p.arm): p for p in plans if repr(p.arm) not in self.cache}.values())
        groups: dict[object, list[ArmPlan]] = {}  # key: (on-policy?, steps, width), or the arm if it runs alone
        for p in todo:
            single = self.mode == "population" or p.arm.source == "rlhf" or p.arm == GOLDEN
            groups.setdefault(repr(p.arm) if single else (p.on_policy, p.steps, p.arm.capacity), []).append(p)
        for group in sorted(groups.values(), key=lambda g: not g[0].on_policy):  # stable: the plan's order within each
            for p, runs in zip(group, self._run_group(group)):
                self.cache[repr(p.arm)] = runs

    def _run_group(self, plans: list[ArmPlan]) -> list[list[dict]]:
        """Train the arms of ``plans`` as one program (``run``); returns each arm's runs in the results schema."""
        w = self.world
        arms = [p.arm for p in plans]
        reference = arms[0] == GOLDEN  # the golden policy: its final tables are every later arm's win-rate reference
        parts, runs = [], []  # per arm: its slice of the stacked runs
        for p in plans:
            arm_runs = [(c, s) for c in p.configs for s in range(self.seeds)]
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
        for p, sl, tab, oracle in zip(plans, parts, tables, oracles):
            g = stream_generator(self.p.world.seed, p.arm.name)
            sampler = self.sampler(p, _Runs(policy, sl), oracle, sl.stop - sl.start, g, seed_idx[sl], steps)
            if p.provides:  # registered now: arms of this group may read its tables as they are filled
                self.online_state[p.arm.name] = {"tables": tab, "log": getattr(sampler, "log", None)}
            samplers.append(sampler)
        evaluators = [self._evaluator(p, seed_idx[sl]) for p, sl in zip(plans, parts)]

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
            series = train(policy, sampler, loss_fn, beta, lr, steps, plans[0].checkpoints, evaluate, bar)
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
                arm_out.append(run_record(s, c, arm, ser))
            out.append(arm_out)
        return out

    def _evaluator(self, p: ArmPlan, seed_idx: torch.Tensor) -> Evaluator:
        """Exact metrics of an arm's runs; win rates against each run's seed's golden policy (uniform
        while the golden policy itself trains), and "online pairs" accuracies on the pairs of its
        online partner (``ArmPlan.partner``)."""
        w, R = self.world, len(seed_idx)
        if self.golden_final is not None:
            ref = self.golden_final[seed_idx]
        else:
            ref = torch.full_like(w.sft_logp, 1 / w.sft_logp.shape[-1]).expand(R, -1, -1)
        online = self.online_state.get(p.partner)
        pair_probs_at = None
        if not p.provides and online is not None:
            pair_probs_at = lambda step: online["tables"][max(k for k in online["tables"] if k <= step)][seed_idx].exp()  # noqa: E731
        return Evaluator(w.sft_logp, ref, w.golden_pref, self.proxy_margin, w.d_golden, pair_probs_at=pair_probs_at)

    def sampler(self, p: ArmPlan, policy, oracle, R, g, seed_idx, steps):
        """``shared.protocol.make_sampler`` over this world: R runs stacked, tables as reward models."""
        w = self.world
        world = SamplerWorld(
            prompts=torch.arange(w.cfg.prompts), batch=(R, self.t.batch_size), d_golden=w.d_golden,
            mixture=lambda pol, alpha: _Mixture(pol, w.sft_logp, alpha),
            reward=lambda labels: (lambda x, y, t=(w.golden_reward if labels == "golden" else w.proxy_reward): t[x, y]),
            stream=lambda name: self.online_state[name]["log"],
            checkpoint_pairs=lambda a, gen: self.checkpoint_dataset(p, seed_idx, gen))
        return make_sampler(p.arm, world, policy, oracle, g, steps)

    def checkpoint_dataset(self, p: ArmPlan, seed_idx, g) -> Batch:
        """Pairs y1 ~ checkpoint a, y2 ~ checkpoint b of the online arm it reads (``ArmPlan.reads``;
        its tables at the plan's snapshot steps), golden-labelled, one dataset per run."""
        w, arm = self.world, p.arm
        tables = self.online_state[p.reads]["tables"]
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

    def population(self, arm, policy, loss_fn, oracle):
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
                case "mixture":  # per token for token sequences (TablePolicy.mixture_table)
                    return policy.mixture_table(arm.params["alpha"]).detach().exp()
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
    """One pair loss over stacked runs: each arm's loss on its own rows, one call per distinct
    loss (the rows of the arms that share it gathered; a loss is elementwise over runs, so the
    values are those of arm-by-arm calls)."""
    if all(f is fns[0] for f in fns):
        return fns[0]
    rows: dict[object, list[int]] = {}
    for f, sl in zip(fns, parts):
        rows.setdefault(f, []).extend(range(sl.start, sl.stop))
    rows_t = [(f, torch.tensor(r)) for f, r in rows.items()]
    order = torch.argsort(torch.cat([r for _, r in rows_t]))  # gathered order -> run order

    def loss(pi_w, pi_l, ref_w, ref_l, beta):
        out = [f(pi_w[r], pi_l[r], ref_w[r], ref_l[r], beta[r]) for f, r in rows_t]
        return torch.cat(out)[order]

    return loss


class _Mixture:
    """A ``shared.sampling.Policy`` that samples from the geometric mixture of the policy's
    current table and π_sft, recomputed when θ changes (``TablePolicy.mixture_table``: per token
    for a token-sequence policy, as fullscale mixes its models' next-token distributions)."""

    def __init__(self, policy: _Runs, sft_logp: torch.Tensor, alpha: float):
        self.policy, self.sft_logp, self.alpha = policy, sft_logp, alpha
        self._theta, self._probs = None, None

    def sample(self, x, generator=None):
        if self._theta is not self.policy.theta:
            with torch.no_grad():
                self._probs = self.policy.policy.mixture_table(self.alpha)[self.policy.sl].exp()
            self._theta = self.policy.theta
        return sample_rows(self._probs, x, generator)



def setting(mode: str) -> str:
    """The one-line ``setting`` of a toysim results dict (``shared.results.results_header``)."""
    return f"mode {mode}"


def run_study(study: Study, preset: Preset, seeds: int, mode: str = "sgd", progress_factory=None,
              runner: Runner | None = None) -> dict:
    """Run every arm of ``study`` and judge its claims. Returns the results dict.

    Pass a ``runner`` to share the world, the golden policy and finished arms
    between studies (``--hypothesis all``).
    """
    out = results_header(study, preset.name, mode, seeds, {"world": asdict(preset.world), "train": asdict(preset.train)}, setting(mode))
    if study.name == "theory":
        out["extras"]["theory"] = theory_checks(seed=preset.world.seed)
        out["claims"] = judge(study, out)
        return out
    if study.name == "equivalence":
        out["extras"]["equivalence"] = equivalence_checks(seed=preset.world.seed)
    runner = runner or Runner(preset, seeds, mode, progress_factory)
    if runner.world.proxy_choice is not None:  # a validated proxy: its penalty and the held-out accuracies it was chosen by
        out["extras"]["proxy"] = runner.world.proxy_choice
    plans = study_plans(study, preset, mode)  # the golden policy first, then the arms in run order
    skipped = [p for p in plan(study, preset.train) if p not in plans]
    if skipped:
        out["extras"]["skipped"] = [f"{p.arm.name}: no population form" for p in skipped]
    runner.run(plans)  # as few tensor programs as the arms allow (none: all run already by run_studies)
    # ---------------------------------------------------------------- 4. results
    for p in plans[1:]:
        out["arms"][p.arm.name] = runner.runs(p)
    out["claims"] = judge(study, out)
    return out


def study_plans(study: Study, preset: Preset, mode: str = "sgd") -> list[ArmPlan]:
    """The arms ``run_study`` trains for ``study``: its plan (``shared.protocol.plan``), less the
    arms with no population form in population mode."""
    plans = plan(study, preset.train)
    return plans if mode != "population" else [p for p in plans if p.arm.source in POPULATION_SOURCES]


def run_studies(runner: Runner, studies: list[Study]) -> None:
    """Train the arms of several studies at once (``--hypothesis all``), before their
    ``run_study`` calls read them: ``Runner.run`` then stacks arms of different studies that
    train alike into one program (the offline arms of six studies into one, for example),
    fewer and larger tensor operations than study by study. The same data and the same
    results, up to float rounding in the shared GEMMs."""
    runner.run([p for s in studies for p in study_plans(s, runner.p, runner.mode)])
