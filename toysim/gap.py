"""Why does online preference optimisation beat offline at the same KL budget?
Run one study (or all) of Tang et al. 2024 in the exact tabular simulator.

    python -m toysim.gap --hypothesis contrastive            # one study, about 10 s
    python -m toysim.gap --hypothesis all --seeds 5           # every study, about a minute
    python -m toysim.gap --hypothesis coverage --quick        # a plumbing check in seconds
    python -m toysim.gap --hypothesis coverage --mode population --out runs/exact

Prints per study a table (arm, peak win rate ± 95% CI over seeds, KL at the
peak, win rate at matched KL against online) and a verdict for each claim of
the study tests (the README's claims table); writes DIR/<study>/results.json (schema:
docs/results-schema.md), PNG figures, and DIR/report.md. DIR is --out, or a new
runs/toysim/<hypothesis>-<date-time> per run. Docs: docs/tutorial.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from shared import plots, report
from shared.cli import cli, fail, prelude, progress, seeds_problem, write_json
from shared.protocol import plan
from shared.studies import STUDIES
from toysim.presets import MAX_SEEDS, PRESETS, PresetName, quick
from toysim.study import Runner, run_studies, run_study
from toysim.world import KNOBS, cast_knob, knob_problem, world_problem

__all__ = ["GapConfig", "main"]

Hypothesis = Literal[(*STUDIES, "all")]  # type: ignore[valid-type]  (the study names of shared.studies, or all)


@dataclass(frozen=True)
class GapConfig:
    """Run a study of the online/offline gap in the exact simulator."""

    hypothesis: Hypothesis = "coverage"
    """which study (also --study): coverage (H1), quality (H2), classification (H3), contrastive (H4), scale (H5), data (§5), theory, equivalence (RLHF vs DPO), refresh (semi-online k), or all"""
    preset: PresetName = "default"
    """world and training settings: default (large gap, the paper's TL;DR and helpfulness), arena (small gap, Chatbot Arena), paper-protocol (the paper's protocol and judge: noise-free golden labels, token-sequence responses, a validated proxy of the policy's class, the three mechanisms of docs/judge.md) or paper-protocol-v1 (its first version, docs/mechanism.md); toysim/presets.py"""
    seeds: int = 5
    """training seeds per arm (CIs are over seeds); at most 100, since all of them train at once"""
    out: Path | None = None
    """output directory; default a new runs/toysim/<hypothesis>-<date-time> per run; a given DIR must not hold DIR/<study> or DIR/report.md yet (results are never overwritten)"""
    quick: bool = False
    """a smaller, shorter world and run: a plumbing check in seconds, whose verdicts are not the study's (the preset is named <preset>-quick)"""
    mode: Literal["sgd", "population"] = "sgd"
    """sgd: minibatch pairs (the paper's setting); population: exact expected gradients (online/offline arms only)"""
    beta: float | None = None
    """override the preset's baseline β (the offline sweep scales with it)"""
    lr: float | None = None
    """override the preset's baseline Adam learning rate"""
    world: tuple[str, ...] = ()
    """override fields of the preset's world, as KNOB=VALUE (e.g. --world proxy_features=64 label_noise=0.1); a knob is a numeric
    field of toysim.world.WorldConfig, listed in its docstrings, within its range (toysim.world.KNOB_RANGES); the world's size is
    checked before anything is built"""
    dry_run: bool = False
    """print each study's plan (shared.protocol.plan: the arms in run order, their configurations, steps, checkpoints and what
    they read) and exit without training"""
    threads: int = 0
    """CPU threads for torch (0: the cores idle at start-up, shared/machine.py; OMP_NUM_THREADS when set)"""


def _check(cfg: GapConfig, studies: list[str]) -> str | None:
    if cfg.preset not in PRESETS:
        return f"unknown preset {cfg.preset!r}; choose from {', '.join(PRESETS)}"
    if seeds_problem(cfg.seeds, 1, MAX_SEEDS):
        return seeds_problem(cfg.seeds, 1, MAX_SEEDS)
    # finite and > 0; bounded so that the offline sweep's multiples stay representable in float32
    if cfg.beta is not None and not (math.isfinite(cfg.beta) and 0 < cfg.beta <= 1e3):
        return f"--beta must be > 0 and at most 1e3, got {cfg.beta}"
    if cfg.lr is not None and not (math.isfinite(cfg.lr) and 0 < cfg.lr <= 10):
        return f"--lr must be > 0 and at most 10, got {cfg.lr}"
    try:
        _world_overrides(cfg.world)
    except ValueError as e:
        return str(e)
    preset = _preset(cfg)  # the world's size from its knobs, before anything is allocated
    return world_problem(preset.world, cfg.seeds * len(preset.train.sweep_lr) * len(preset.train.sweep_beta))


def _world_overrides(items: tuple[str, ...]) -> dict:
    """--world KNOB=VALUE pairs as {knob: value of the field's type}; a ValueError names a bad one."""
    out = {}
    for item in items:
        knob, eq, value = item.partition("=")
        if not eq or knob not in KNOBS:
            raise ValueError(f"--world takes KNOB=VALUE with KNOB one of {', '.join(KNOBS)}; got {item!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--world {knob}: {value!r} is not a number") from None
        problem = knob_problem(knob, number)
        if problem:
            raise ValueError(problem)
        out[knob] = cast_knob(knob, number)
    return out


def _check_out(cfg: GapConfig, studies: list[str]) -> str | None:
    """--out holds none of the run's results yet and can be written (made if missing)."""
    for s in studies + ["report.md"]:
        if (cfg.out / s).exists():
            return f"{cfg.out / s} exists; choose a new --out (results are never overwritten)"
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
        probe = cfg.out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        return f"cannot write to --out {cfg.out}: {e.strerror or e}"
    return None


def _preset(cfg: GapConfig):
    """The preset in effect: the named one, with --quick, --beta, --lr and --world applied."""
    preset = quick(PRESETS[cfg.preset]) if cfg.quick else PRESETS[cfg.preset]
    train = preset.train
    if cfg.beta is not None:
        train = replace(train, beta=cfg.beta)
    if cfg.lr is not None:
        train = replace(train, lr=cfg.lr)
    return replace(preset, train=train, world=replace(preset.world, **_world_overrides(cfg.world)))


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = cli(GapConfig, argv, prog="python -m toysim.gap", description="\n\n".join(__doc__.split("\n\n")[:2]))
    except SystemExit as e:  # --help (0), or a bad argument reported in one line (2)
        return 0 if e.code in (0, None) else 2

    studies = list(STUDIES) if cfg.hypothesis == "all" else [cfg.hypothesis]
    problem = _check(cfg, studies)
    if problem:
        return fail(problem)
    if cfg.dry_run:
        return _dry_run(_preset(cfg), studies)
    cfg = prelude(cfg, Path("runs/toysim"), cfg.hypothesis, make=False)  # the arguments are good: a folder of its own
    if isinstance(cfg, int):
        return cfg
    problem = _check_out(cfg, studies)
    if problem:
        return fail(problem)

    preset = _preset(cfg)
    command = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    # the settings in effect (the preset's, with --quick, --beta, --lr and --world applied), not only the flags
    threads = torch.get_num_threads()
    print(f"resolved config: {json.dumps({**command, 'threads': threads, 'world': asdict(preset.world), 'train': asdict(preset.train)})}")

    t0 = time.time()
    try:
        runner = Runner(preset, cfg.seeds, cfg.mode, progress)
    except ValueError as e:  # a world its knobs cannot make (--world prompts=0, vocab=0, ...)
        return fail(f"cannot build the world: {e}")
    all_results, figs = [], {}
    try:  # every study's arms at once, in as few tensor programs as they allow; each study then reads its own
        run_studies(runner, [STUDIES[name] for name in studies])
    except (RuntimeError, ValueError, FloatingPointError) as e:  # e.g. training diverged to non-finite values
        print(f"error: training failed: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    if len(studies) > 1:
        print(f"trained the arms of {len(studies)} studies together in {time.time() - t0:.1f} s; each study's time below is its own rest")
    for name in studies:
        t = time.time()
        try:
            res = run_study(STUDIES[name], preset, cfg.seeds, cfg.mode, runner=runner)
        except (RuntimeError, ValueError, FloatingPointError) as e:  # e.g. training diverged to non-finite values
            print(f"error: study {name} failed: {str(e).splitlines()[0]}", file=sys.stderr)
            return 1
        res["command_config"] = command
        d = cfg.out / name
        d.mkdir(parents=True)
        write_json(d / "results.json", res)
        figs[name] = plots.figures(res, d)
        all_results.append(res)
        print(f"\n== {name}: {res['question']}  ({time.time() - t:.1f} s)")
        if res["arms"]:
            print(report.format_table(res))
        print(report.format_claims(res))
    path = report.write_report(all_results, cfg.out, figs)
    print(f"\nwrote {path} and {len(studies)} results.json in {time.time() - t0:.1f} s")
    return 0


def _dry_run(preset, studies: list[str]) -> int:
    """--dry-run: each study's plan, one line an arm, nothing trained or written."""
    print(f"preset {preset.name}: {preset.train.steps} online steps, batch {preset.train.batch_size}, lr {preset.train.lr:g}, "
          f"beta {preset.train.beta:g}")
    for name in studies:
        plans = plan(STUDIES[name], preset.train)
        print(f"\n== {name}: {len(plans)} arms" + ("" if plans else " (closed-form checks only)"))
        for p in plans:
            print("  " + p.describe())
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
    raise SystemExit(130)
