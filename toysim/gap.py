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

from shared.studies import STUDIES

__all__ = ["GapConfig", "main", "fail"]

Hypothesis = Literal[(*STUDIES, "all")]  # type: ignore[valid-type]  (the study names of shared.studies, or all)
PresetName = Literal["default", "arena", "paper-protocol"]  # the keys of toysim.presets.PRESETS (tests/test_cli.py holds them equal)


@dataclass(frozen=True)
class GapConfig:
    """Run a study of the online/offline gap in the exact simulator."""

    hypothesis: Hypothesis = "coverage"
    """which study (also --study): coverage (H1), quality (H2), classification (H3), contrastive (H4), scale (H5), data (§5), theory, equivalence (RLHF vs DPO), refresh (semi-online k), or all"""
    preset: PresetName = "default"
    """world and training settings: default (large gap, the paper's TL;DR and helpfulness), arena (small gap, Chatbot Arena) or paper-protocol (the paper's protocol: noise-free golden labels, token-sequence responses); toysim/presets.py"""
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
    """override fields of the preset's world, as KNOB=VALUE (e.g. --world proxy_features=64 label_noise=0.1); a knob is a numeric field of toysim.env.WorldConfig, listed in its docstrings"""
    threads: int = 0
    """CPU threads for torch (0: the cores idle at start-up, shared/machine.py; OMP_NUM_THREADS when set)"""


MAX_SEEDS = 100
"""Every seed's runs are stacked in one tensor program, so memory grows with the seeds (the
default preset's coverage study peaked at 0.56 GB with 5 seeds and 1.17 GB with 25: about
30 MB a seed, so 100 seeds need a few GB); the bound keeps a typo such as 1000000000 from
filling the machine before any output."""


def fail(message: str) -> int:
    """One-line error on stderr, exit code 2 (bad arguments)."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"{desc:>16}", file=sys.stderr, leave=False, mininterval=0.5, disable=None)


def _check(cfg: GapConfig, studies: list[str]) -> str | None:
    from shared.cli import threads_problem
    from toysim.presets import PRESETS

    if cfg.preset not in PRESETS:
        return f"unknown preset {cfg.preset!r}; choose from {', '.join(PRESETS)}"
    if not 1 <= cfg.seeds <= MAX_SEEDS:
        return f"--seeds must be at least 1 and at most {MAX_SEEDS} (all seeds train at once: memory grows with them), got {cfg.seeds}"
    # finite and > 0; bounded so that the offline sweep's multiples stay representable in float32
    if cfg.beta is not None and not (math.isfinite(cfg.beta) and 0 < cfg.beta <= 1e3):
        return f"--beta must be > 0 and at most 1e3, got {cfg.beta}"
    if cfg.lr is not None and not (math.isfinite(cfg.lr) and 0 < cfg.lr <= 10):
        return f"--lr must be > 0 and at most 10, got {cfg.lr}"
    if threads_problem(cfg.threads):
        return threads_problem(cfg.threads)
    try:
        _world_overrides(cfg.world)
    except ValueError as e:
        return str(e)
    return None


def _world_overrides(items: tuple[str, ...]) -> dict:
    """--world KNOB=VALUE pairs as {knob: value of the field's type}; a ValueError names a bad one."""
    from toysim.sweep import KNOBS, _cast

    out = {}
    for item in items:
        knob, eq, value = item.partition("=")
        if not eq or knob not in KNOBS:
            raise ValueError(f"--world takes KNOB=VALUE with KNOB one of {', '.join(KNOBS)}; got {item!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--world {knob}: {value!r} is not a number") from None
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"--world {knob}: must be a finite number ≥ 0, got {value}")
        out[knob] = _cast(knob, number)
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


def _write_json(path: Path, obj) -> None:
    """Atomic write: a crash never leaves a half-written results.json."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    from shared.cli import claim_run_dir, cli

    try:
        cfg = cli(GapConfig, argv, prog="python -m toysim.gap", description="\n\n".join(__doc__.split("\n\n")[:2]))
    except SystemExit as e:  # --help (0), or a bad argument reported in one line (2)
        return 0 if e.code in (0, None) else 2

    studies = list(STUDIES) if cfg.hypothesis == "all" else [cfg.hypothesis]
    problem = _check(cfg, studies)
    if problem:
        return fail(problem)
    if cfg.out is None:  # the arguments are good: this run writes, into a folder of its own
        try:
            cfg = replace(cfg, out=claim_run_dir(Path("runs/toysim"), cfg.hypothesis))
        except OSError as e:
            return fail(f"cannot make a run folder under runs/toysim: {e.strerror or e}")
    problem = _check_out(cfg, studies)
    if problem:
        return fail(problem)

    # lazy: torch loads only once the inputs are checked (fast --help and errors)
    from shared import plots, report
    from shared.machine import apply_threads
    from toysim.presets import PRESETS, quick
    from toysim.study import Runner, run_study

    preset = PRESETS[cfg.preset]
    preset = quick(preset) if cfg.quick else preset
    train = preset.train
    if cfg.beta is not None:
        train = replace(train, beta=cfg.beta)
    if cfg.lr is not None:
        train = replace(train, lr=cfg.lr)
    preset = replace(preset, train=train, world=replace(preset.world, **_world_overrides(cfg.world)))
    command = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    # the settings in effect (the preset's, with --quick, --beta, --lr and --world applied), not only the flags
    threads = apply_threads(cfg.threads)
    print(f"resolved config: {json.dumps({**command, 'threads': threads, 'world': asdict(preset.world), 'train': asdict(preset.train)})}")

    t0 = time.time()
    try:
        runner = Runner(preset, cfg.seeds, cfg.mode, _progress)
    except ValueError as e:  # a world its knobs cannot make (--world prompts=0, vocab=0, ...)
        return fail(f"cannot build the world: {e}")
    all_results, figs = [], {}
    for name in studies:
        t = time.time()
        try:
            res = run_study(STUDIES[name], preset, cfg.seeds, cfg.mode, runner=runner)
        except (RuntimeError, ValueError, FloatingPointError) as e:  # e.g. training diverged to non-finite values
            print(f"error: study {name} failed: {str(e).splitlines()[0]}", file=sys.stderr)
            return 1
        res["command_config"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
        d = cfg.out / name
        d.mkdir(parents=True)
        _write_json(d / "results.json", res)
        figs[name] = plots.figures(res, d)
        all_results.append(res)
        print(f"\n== {name}: {res['question']}  ({time.time() - t:.1f} s)")
        if res["arms"]:
            print(report.format_table(res))
        print(report.format_claims(res))
    path = report.write_report(all_results, cfg.out, figs)
    print(f"\nwrote {path} and {len(studies)} results.json in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
    raise SystemExit(130)
