"""Map the online−offline and tandem−offline gaps over the world's knobs.

    python -m toysim.sweep --x label_noise --x-values 0 0.1 0.2 0.3 \\
                           --y policy_features --y-values 16 32 64 128 --out runs/sweep

For each cell (a world with the two knobs set, everything else from the
preset) it runs online, offline (pooled sweep) and tandem over ``--seeds``
seeds and records the win-rate gaps at matched KL and the peak gaps
(``shared.results.gap``). It writes ``sweep.json`` and ``phase.png``: a phase
diagram of where the gap lives. The paper has no such map (Tang et al. 2024
compare four fixed tasks); it tells a user which properties of a task create
the gap. Docs: docs/studies/coverage.md (§ the map). Tests: tests/test_toysim_tools.py,
tests/test_plots.py (the cell text colours).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from shared.cli import cli, prelude, seeds_problem
from shared.metrics import seed_ci
from shared.results import final, gap, peak, per_seed
from shared.studies import Arm, Study
from toysim.presets import MAX_SEEDS, PRESETS, PresetName, quick
from toysim.study import run_study
from toysim.world import KNOBS, cast_knob, knob_problem, world_problem

__all__ = ["SweepConfig", "sweep", "cell", "plot", "PANELS", "text_colors", "main"]

Knob = Literal[KNOBS]  # type: ignore[valid-type]  (the numeric fields of toysim.world.WorldConfig)


@dataclass(frozen=True)
class SweepConfig:
    """Sweep two knobs of the world and map the gaps."""

    x: Knob = "label_noise"
    """knob on the horizontal axis (a field of toysim.world.WorldConfig: what it does is in its docstring)"""
    x_values: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3)
    """its values"""
    y: Knob = "policy_features"
    """knob on the vertical axis (a field of toysim.world.WorldConfig)"""
    y_values: tuple[float, ...] = (16, 32, 64, 128)
    """its values"""
    preset: PresetName = "default"
    """preset whose other settings every cell keeps: default (large gap), arena (small gap), paper-protocol (the paper's protocol and judge, docs/judge.md) or paper-protocol-v1 (its first version)"""
    seeds: int = 3
    """training seeds per cell"""
    quick: bool = False
    """use the preset's quick (smaller, shorter) version: a plumbing check, not the map"""
    out: Path | None = None
    """output directory; default a new runs/sweep/<x>-<y>-<date-time> per run; a given DIR must not exist yet"""
    threads: int = 0
    """CPU threads for torch (0: the cores idle at start-up, shared/machine.py; OMP_NUM_THREADS when set)"""


_STUDY = Study("sweep", "where does the gap live?", (
    Arm("online", "online", labels="proxy"),
    Arm("offline", "offline", sweep=True),
    Arm("tandem", "replay", params={"stream": "online", "window": 0}),
), ())


def cell(preset, seeds: int) -> dict:
    """Gaps for one world: online−offline and tandem−offline at matched KL and at the peak, and
    claim 11's signature: each arm's final chosen log-likelihood shift on D_golden and online −
    offline (``shared.claims``' rule for claim 11 reads the same numbers). Each [mean, 95% half-width]."""
    res = run_study(_STUDY, preset, seeds)
    out = {}
    for a in ("online", "tandem"):
        m, h = gap(res, a, "offline")
        pm, ph = seed_ci(per_seed(res, (a, "offline"), lambda s, a=a: peak(res, a, s) - peak(res, "offline", s)))
        out[f"{a}_minus_offline_matched_kl"] = [m, h]
        out[f"{a}_minus_offline_peak"] = [pm, ph]
    shift = {a: per_seed(res, (a,), lambda s, a=a: final(res, a, s, "chosen_logp_shift")) for a in ("online", "offline")}
    for a in ("online", "offline"):
        out[f"{a}_chosen_shift"] = list(seed_ci(shift[a]))
    out["online_minus_offline_chosen_shift"] = list(seed_ci([u - v for u, v in zip(shift["online"], shift["offline"])]))
    return out


def grid_problem(cfg: SweepConfig) -> str | None:
    """The one-line problem with a sweep's axes and values, or None: two different knobs, each value
    in its knob's range (``toysim.world.knob_problem``), every cell's world within the size bound
    (``toysim.world.world_problem``, the preset's sweep × seeds runs at once)."""
    if cfg.x == cfg.y:
        return f"--x and --y must be two different knobs, got {cfg.x} twice"
    for axis, knob, values in (("--x-values", cfg.x, cfg.x_values), ("--y-values", cfg.y, cfg.y_values)):
        if not values:
            return f"{axis} needs at least one value"
        for v in values:
            problem = knob_problem(knob, float(v), axis)
            if problem:
                return problem
    base = quick(PRESETS[cfg.preset]) if cfg.quick else PRESETS[cfg.preset]
    runs = cfg.seeds * len(base.train.sweep_lr) * len(base.train.sweep_beta)
    for yv in cfg.y_values:
        for xv in cfg.x_values:
            world = replace(base.world, **{cfg.x: cast_knob(cfg.x, xv), cfg.y: cast_knob(cfg.y, yv)})
            problem = world_problem(world, runs)
            if problem:
                return f"the cell {cfg.x} {xv:g}, {cfg.y} {yv:g}: {problem}"
    return None


def sweep(cfg: SweepConfig, progress=None) -> dict:
    """Every cell of the grid, y-major: ``cell`` of the preset's world with the two knobs set;
    ``progress.update(1)`` after each. Returns the sweep.json dict."""
    base = PRESETS[cfg.preset]
    base = quick(base) if cfg.quick else base
    cells = []
    for yv in cfg.y_values:
        for xv in cfg.x_values:
            world = replace(base.world, **{cfg.x: cast_knob(cfg.x, xv), cfg.y: cast_knob(cfg.y, yv)})
            r = cell(replace(base, world=world), cfg.seeds)
            cells.append({cfg.x: xv, cfg.y: yv, **r})
            if progress is not None:
                progress.update(1)
    return {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}, "cells": cells}


def text_colors(rgba):
    """"black" or "white" per cell colour, whichever contrasts more with it: white where the WCAG 2
    relative luminance L = 0.2126 R + 0.7152 G + 0.0722 B of the linearised sRGB channels is below
    0.179, where (1 + 0.05) / (L + 0.05) exceeds (L + 0.05) / (0 + 0.05).

    ``rgba``: [..., 3 or 4] colours in [0, 1] (a colormap's output); returns [...] of str."""
    rgb = np.asarray(rgba, dtype=float)[..., :3]
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    lum = lin @ np.array([0.2126, 0.7152, 0.0722])
    return np.where(lum < 0.179, "white", "black")


PANELS = [("online_minus_offline_matched_kl", "online − offline at matched KL"),
          ("tandem_minus_offline_matched_kl", "tandem − offline at matched KL"),
          ("online_minus_offline_peak", "online − offline, peak win rate")]
"""The phase diagrams ``plot`` draws by default: (cell key, title)."""


def plot(result: dict, path: Path, keys=PANELS, suptitle: str | None = None):
    """Write the phase diagram of a sweep's result to ``path``, one panel per (cell key, title) of
    ``keys``; returns the figure. Knob values may be numbers or names."""
    from matplotlib.figure import Figure  # lazily: matplotlib is heavy, and only drawing needs it

    c = result["config"]
    xs, ys = list(c["x_values"]), list(c["y_values"])
    fig = Figure(figsize=(4.6 * len(keys), 3.8), layout="constrained")
    axes = fig.subplots(1, len(keys))
    for ax, (key, title) in zip(axes, keys):
        grid = np.array([[next(cl[key][0] for cl in result["cells"] if cl[c["x"]] == xv and cl[c["y"]] == yv) for xv in xs] for yv in ys])
        lim = max(np.nanmax(np.abs(grid)), 1e-3)
        im = ax.imshow(grid, origin="lower", cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        ink = text_colors(im.cmap(im.norm(grid)))  # [y, x]: readable on each cell's own colour
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:+.3f}", ha="center", va="center", fontsize=8, color=ink[i, j])
        ax.set_xticks(range(len(xs)), [_label(v) for v in xs])
        ax.set_yticks(range(len(ys)), [_label(v) for v in ys])
        ax.set_xlabel(c["x"])
        ax.set_ylabel(c["y"])
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(suptitle or f"Where the gap lives (preset {c['preset']}, {c['seeds']} seeds; blue = first arm better)", fontsize=10)
    fig.savefig(path, dpi=110)
    return fig


def _label(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def main(argv=None) -> int:
    try:
        cfg = cli(SweepConfig, argv, prog="python -m toysim.sweep", description="\n\n".join(__doc__.split("\n\n")[:2]))
    except SystemExit as e:  # --help (0), or a bad argument reported in one line (2)
        return 0 if e.code in (0, None) else 2
    preset_problem = None if cfg.preset in PRESETS else f"unknown preset {cfg.preset!r}; choose from {', '.join(PRESETS)}"
    # every cell's world checked before the folder is made (so that the results have a place when the sweep ends)
    problems = [preset_problem, seeds_problem(cfg.seeds, 1, MAX_SEEDS), None if preset_problem else grid_problem(cfg)]
    cfg = prelude(cfg, Path("runs/sweep"), f"{cfg.x}-{cfg.y}", problems)
    if isinstance(cfg, int):
        return cfg
    t0 = time.time()
    with tqdm(total=len(cfg.x_values) * len(cfg.y_values), desc="cells", file=sys.stderr) as bar:
        result = sweep(cfg, bar)
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "sweep.json").write_text(json.dumps(result, indent=1))
    plot(result, cfg.out / "phase.png")
    print(f"wrote {cfg.out / 'sweep.json'} and {cfg.out / 'phase.png'} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
