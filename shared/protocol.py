"""The study protocol both backends run, written once: the loss table, each arm's sweep
configurations and step budget, the checkpoint schedule, and the order arms run in.

Docs: docs/index.md (layout). Tests: tests/test_protocol.py.

Tang et al. 2024, §3: online arms train ``steps`` steps, offline arms (on D_golden or on a
checkpoint dataset) ``offline_mult`` × as long (their 4k vs 20k); the offline baseline is
the pooled sweep over learning rates × β (their 3 × 3 grid), as multipliers of the baseline
config; every run is evaluated at log-spaced checkpoints (the curves are read on a log-KL
axis). ``plan`` asks all of it at once: each arm's configurations, steps, checkpoints, snapshots, the
run it reads and its online partner, in run order; ``toysim.study`` and ``fullscale.study``
iterate it, and a backend supplies only its world, its policy and its training step.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from shared import losses
from shared.sampling import Batch, OfflineSampler, OnlineSampler, RefreshSampler, ReplaySampler, RolloutSampler
from shared.studies import GOLDEN, STUDIES, Arm, Study

__all__ = ["LOSSES", "Schedule", "OFFLINE_SOURCES", "ON_POLICY_SOURCES", "ArmPlan", "arm_plan", "plan", "dataset_fractions", "steps_of",
           "sweep_configs", "checkpoint_steps", "snapshot_steps", "provides_stream", "stream_read_by", "online_partner", "run_order",
           "stream_generator", "SamplerWorld", "make_sampler"]

LOSSES = {"ipo": losses.ipo_loss, "dpo": losses.dpo_loss, "slic": losses.slic_loss, "bo2": losses.bo2_loss,
          "rloo": losses.rloo_loss}
"""An arm's ``loss`` name -> the per-example loss of ``shared.losses`` (the one loss table)."""

OFFLINE_SOURCES = ("offline", "dataset")
"""Sources that train on a fixed dataset, for ``offline_mult`` × the online steps."""

ON_POLICY_SOURCES = ("online", "refresh", "mixture", "rlhf")
"""Sources whose pairs come from the policy being trained. They run before the arms on fixed data
(offline, replay, checkpoint datasets), which read their logs and checkpoints (``run_order``)."""


@dataclass(frozen=True)
class Schedule:
    """The training settings of the protocol, the same in both backends (each backend's config
    subclasses it: ``toysim.presets.TrainSettings``, ``fullscale.config.TrainConfig``, and sets
    its own defaults for the size of its models). Tang et al. 2024, §3."""

    steps: int = 4000
    """online steps (the paper's 4k); offline runs ``offline_mult`` × as long"""
    offline_mult: int = 5
    """offline steps / online steps (the paper's 20k / 4k = 5)"""
    batch_size: int = 32
    """pairs per step (the paper's 32)"""
    lr: float = 1e-5
    """Adam learning rate of the baseline config: online arms and the golden policy (the paper's 1e-5 for T5 Large)"""
    beta: float = 0.1
    """β of the baseline config (the paper's 0.1)"""
    sweep_lr: tuple[float, ...] = (0.3, 1.0, 3.0)
    """offline sweep: multipliers of ``lr`` (the paper's 3e-6, 1e-5, 3e-5)"""
    sweep_beta: tuple[float, ...] = (1.0, 5.0, 10.0)
    """offline sweep: multipliers of ``beta`` (the paper's 0.1, 0.5, 1)"""
    checkpoints: int = 20
    """evaluations per online horizon, log-spaced in steps, as dense per decade beyond it (plus step 0)"""


def dataset_fractions() -> list[float]:
    """The online-run fractions the data study's checkpoint datasets read (0 = π_sft), sorted
    (Tang et al. 2024, §5: pairs from SFT, step 800 and step 4k)."""
    return sorted({f for s in STUDIES.values() for a in s.arms if a.source == "dataset" for f in a.params["pair"]})


def steps_of(arm: Arm, t: Schedule) -> int:
    """An arm's step budget: ``t.steps`` online, ``offline_mult`` × that on a fixed dataset
    (Tang et al. 2024, §3: 4k online steps against 20k offline)."""
    return t.steps * (t.offline_mult if arm.source in OFFLINE_SOURCES else 1)


def sweep_configs(arm: Arm, t: Schedule) -> list[dict]:
    """An arm's configurations {lr, beta, steps}: the baseline, or for a swept arm every
    (lr multiplier, β multiplier) of the pooled sweep, lr-major (Tang et al. 2024, §3: offline
    gets lr ∈ {3e-6, 1e-5, 3e-5} × β ∈ {0.1, 0.5, 1} and its best curve is compared)."""
    steps = steps_of(arm, t)
    if arm.sweep:
        return [{"lr": t.lr * a, "beta": t.beta * b, "steps": steps} for a, b in itertools.product(t.sweep_lr, t.sweep_beta)]
    return [{"lr": t.lr, "beta": t.beta, "steps": steps}]


def checkpoint_steps(steps: int, t: Schedule) -> set[int]:
    """Log-spaced evaluation steps of a run of ``steps`` steps: ``t.checkpoints`` per online
    horizon and as dense per decade beyond it, plus the fractions of the online horizon the
    data study's checkpoint datasets name, and the last step (step 0 is always evaluated).
    Log spacing because the curves are read against log KL (Tang et al. 2024, Fig. 2)."""
    per_decade = t.checkpoints / math.log10(max(t.steps, 10))
    num = max(2, int(round(per_decade * math.log10(max(steps, 10)))))
    out = {int(round(v)) for v in np.geomspace(1, steps, num)}
    out |= {round(f * t.steps) for f in dataset_fractions() if f * t.steps <= steps}
    return {s for s in out if 0 < s <= steps} | {steps}


def snapshot_steps(arm: Arm, t: Schedule) -> set[int]:
    """The steps at which an arm's policy is kept for the checkpoint datasets other arms train on:
    the fractions of the online horizon the data study names (Tang et al. 2024, §5: steps 800 and
    4k of 4k), for an arm whose run others read (``provides_stream``); none otherwise. Each is
    also a checkpoint (``checkpoint_steps``)."""
    if not provides_stream(arm):
        return set()
    return {round(f * t.steps) for f in dataset_fractions() if 0 < f}


def provides_stream(arm: Arm) -> bool:
    """Whether other arms read this arm's run: its logged pairs (replay), its checkpoints
    (checkpoint datasets) and its own evaluation pairs (the "online pairs" accuracies,
    Tang et al. 2024, §4.3). True for online arms."""
    return arm.source == "online"


def stream_read_by(arm: Arm) -> str | None:
    """The online arm whose run ``arm`` trains on: its logged stream (replay: ``params['stream']``)
    or its checkpoints (dataset: the "online" arm); None for an arm that reads no other run
    (Tang et al. 2024, §4.1 tandem replay; §5 checkpoint datasets)."""
    match arm.source:
        case "replay":
            return arm.params["stream"]
        case "dataset":
            return "online"
    return None


def online_partner(arm: Arm) -> str | None:
    """The online arm whose own pairs ``arm``'s "online pairs" accuracies are measured on
    (Tang et al. 2024, §4.3, Fig. 5) and whose curve it is compared with: the online arm of the same study
    and capacity, with the same loss where the study has one. An online arm is its own partner;
    an arm no study declares has none."""
    if provides_stream(arm):
        return arm.name
    study = next((s for s in STUDIES.values() if any(a.name == arm.name for a in s.arms)), None)
    if study is None:
        return None
    online = [a for a in study.arms if provides_stream(a) and a.capacity == arm.capacity]
    pick = [a for a in online if a.loss == arm.loss] or online
    return pick[0].name if pick else None


def run_order(arms) -> list[Arm]:
    """The arms in the order they run (the one ordering rule of both backends): the arms on the
    policy's own pairs (``ON_POLICY_SOURCES``) before the arms on fixed data, which read their
    logs and checkpoints; within each, the arms others read (``provides_stream``) first, whose
    evaluation pairs the others' "online pairs" accuracies use; otherwise as declared."""
    return sorted(arms, key=lambda a: (a.source not in ON_POLICY_SOURCES, not provides_stream(a)))


@dataclass(frozen=True)
class ArmPlan:
    """What the protocol says of one arm, asked once (``plan``): everything a runner needs to run
    it, as data.

    configs: its runs' {lr, beta, steps}, lr-major (``sweep_configs``); steps: each run's length
    (``steps_of``); checkpoints: the steps evaluated besides step 0 (``checkpoint_steps``);
    snapshots: the steps its policy is kept at for other arms' checkpoint datasets
    (``snapshot_steps``); reads: the online arm whose run it trains on (``stream_read_by``);
    partner: the online arm whose pairs its "online pairs" accuracies use (``online_partner``);
    provides: other arms read its run (``provides_stream``); on_policy: its pairs come from the
    policy being trained (``ON_POLICY_SOURCES``): such arms run first."""

    arm: Arm
    configs: tuple[dict, ...]
    steps: int
    checkpoints: frozenset[int]
    snapshots: frozenset[int]
    reads: str | None
    partner: str | None
    provides: bool
    on_policy: bool

    def describe(self) -> str:
        """One line for ``--dry-run``: the arm, its runs, steps, checkpoints and what it reads."""
        a, c = self.arm, self.configs
        runs = f"{len(c)} config{'s' if len(c) != 1 else ''}"
        parts = [f"{a.name:<16} {a.source:<8} loss {a.loss:<5} labels {a.labels:<6} {runs}, {self.steps} steps",
                 f"{len(self.checkpoints) + 1} evaluations"]
        if self.snapshots:
            parts.append(f"snapshots at {sorted(self.snapshots)}")
        if self.reads:
            parts.append(f"reads {self.reads}")
        if self.partner and self.partner != a.name:
            parts.append(f"online pairs of {self.partner}")
        return ", ".join(parts)


def arm_plan(arm: Arm, t: Schedule) -> ArmPlan:
    """``ArmPlan`` of one arm under schedule ``t``."""
    steps = steps_of(arm, t)
    return ArmPlan(arm, tuple(sweep_configs(arm, t)), steps, frozenset(checkpoint_steps(steps, t)), frozenset(snapshot_steps(arm, t)),
                   stream_read_by(arm), online_partner(arm), provides_stream(arm), arm.source in ON_POLICY_SOURCES)


def plan(study: Study, t: Schedule) -> list[ArmPlan]:
    """Every arm a study runs, in run order (``run_order``), each as an ``ArmPlan``: the golden
    policy first (``shared.studies.GOLDEN``: its final policy is the win-rate reference of every
    other arm, Tang et al. 2024, §3), then the study's arms. A study without arms (theory) runs
    nothing. Both backends run exactly this list."""
    if not study.arms:
        return []
    return [arm_plan(a, t) for a in [GOLDEN, *run_order(study.arms)]]


def stream_generator(seed: int, name: str, device="cpu") -> torch.Generator:
    """The generator of one named stream of draws (an arm's runs, an evaluation, the golden
    policy's responses) in the world of ``seed``: seeded by the SHA-256 of ``[seed, name]``, so
    two streams of one world never share draws and a stream's draws do not depend on which
    other streams ran before it (the run order of ``run_order`` can change freely).
    Docs: docs/tutorial.md (Seeds)."""
    digest = hashlib.sha256(json.dumps([seed, name]).encode()).hexdigest()[:12]
    return torch.Generator(device=device).manual_seed(int(digest, 16) % (2**62))


@dataclass
class SamplerWorld:
    """What a backend gives ``make_sampler``: its prompts, the shape of a batch of pairs, D_golden,
    and how to build the parts that differ between backends (each called only when an arm needs it).

    batch: (B,) for one run, (R, B) for R runs stacked on one policy (toysim); prompts: the prompt
    rows online pairs are drawn from; mixture(policy, alpha): a policy sampling from
    π^{1−α}·π_sft^α; reward(labels): r(x, y) of the reward model for those labels; stream(name):
    the logged batches of an online arm; checkpoint_pairs(arm, g): the checkpoint dataset an arm
    of source "dataset" trains on (one per run when ``batch`` has a run axis)."""

    prompts: object
    batch: tuple[int, ...]
    d_golden: Batch
    mixture: Callable
    reward: Callable
    stream: Callable
    checkpoint_pairs: Callable


def make_sampler(arm: Arm, world: SamplerWorld, policy, oracle, generator, steps: int):
    """The pair sampler of ``arm`` (``Arm``'s docstring defines each source): the one dispatch
    from an arm's source to a sampler of ``shared.sampling``. ``steps``: the run's length (a
    refresh arm with every = 0 draws one dataset for the whole run)."""
    B, lead = world.batch[-1], world.batch[:-1]
    g = generator
    match arm.source:
        case "online":
            return OnlineSampler(policy, oracle, world.prompts, world.batch, g)
        case "offline":
            return OfflineSampler(world.d_golden, B, g, lead=lead)
        case "refresh":  # every = 0: one dataset for the whole run
            return RefreshSampler(OnlineSampler(policy, oracle, world.prompts, world.batch, g), arm.params["every"] or steps)
        case "mixture":  # IPO-MD (Calandriello et al. 2024): online pairs from the per-token mixture
            return OnlineSampler(world.mixture(policy, arm.params["alpha"]), oracle, world.prompts, world.batch, g)
        case "rlhf":  # k samples per prompt, as many sampled responses per step as online's 2B
            k = arm.params.get("k", 4)
            return RolloutSampler(policy, world.reward(arm.labels), world.prompts, lead + (max(1, 2 * B // k),), k, g)
        case "replay":  # window 0: a uniform shuffle of the whole stream (tandem)
            stream = world.stream(arm.params["stream"])
            return ReplaySampler(stream, arm.params["window"] or len(stream), g)
        case "dataset":
            return OfflineSampler(world.checkpoint_pairs(arm, g), B, g, lead=lead, per_run=bool(lead))
    raise ValueError(f"unknown arm source {arm.source!r}")
