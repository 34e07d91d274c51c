"""Map the online−offline and tandem−offline gaps over the world's knobs.

    python -m toysim.sweep --x label_noise --x-values 0 0.1 0.2 0.3 \\
                           --y policy_features --y-values 16 32 64 128 --out runs/sweep

For each cell (a world with the two knobs set, everything else from the
preset) it runs online, offline (pooled sweep) and tandem over ``--seeds``
seeds and records the win-rate gaps at matched KL and the peak gaps
(``shared.results.gap``). It writes ``sweep.json`` and ``phase.png``: a phase
diagram of where the gap lives. The paper has no such map (Tang et al. 2024
compare four fixed tasks); it tells a user which properties of a task create
the gap. Docs: docs/studies/coverage.md (§ the map).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from shared.metrics import seed_ci
from shared.results import gap, peak, per_seed
from shared.studies import Arm, Study

__all__ = ["SweepConfig", "sweep", "main"]

KNOBS = ("label_noise", "golden_pairs", "proxy_features", "proxy_l2", "policy_features", "sft_temp", "mu_shift",
         "responses", "penalty", "noise")


@dataclass(frozen=True)
class SweepConfig:
    """Sweep two knobs of the world and map the gaps."""

    x: str = "label_noise"
    """knob on the horizontal axis (a WorldConfig field)"""
    x_values: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3)
    """its values"""
    y: str = "policy_features"
    """knob on the vertical axis (a WorldConfig field)"""
    y_values: tuple[float, ...] = (16, 32, 64, 128)
    """its values"""
    preset: str = "default"
    """preset whose other settings every cell keeps"""
    seeds: int = 3
    """training seeds per cell"""
    quick: bool = False
    """use the preset's quick (smaller, shorter) version"""
    out: Path = Path("runs/sweep")
    """output directory (must not exist yet)"""


_STUDY = Study("sweep", "where does the gap live?", (
    Arm("online", "online", labels="proxy"),
    Arm("offline", "offline", sweep=True),
    Arm("tandem", "replay", params={"stream": "online", "window": 0}),
), ())


def _cast(knob: str, value: float):
    from toysim.env import WorldConfig

    kind = {f.name: f.type for f in dataclasses.fields(WorldConfig)}[knob]
    return int(value) if kind in (int, "int") else bool(value) if kind in (bool, "bool") else float(value)


def cell(preset, seeds: int) -> dict:
    """Gaps for one world: online−offline and tandem−offline at matched KL and at the peak."""
    from toysim.study import run_study

    res = run_study(_STUDY, preset, seeds)
    out = {}
    for a in ("online", "tandem"):
        m, h = gap(res, a, "offline")
        pm, ph = seed_ci(per_seed(res, (a, "offline"), lambda s, a=a: peak(res, a, s) - peak(res, "offline", s)))
        out[f"{a}_minus_offline_matched_kl"] = [m, h]
        out[f"{a}_minus_offline_peak"] = [pm, ph]
    return out


def sweep(cfg: SweepConfig, progress=None) -> dict:
    from toysim.presets import PRESETS, quick

    base = PRESETS[cfg.preset]
    base = quick(base) if cfg.quick else base
    cells = []
    for yv in cfg.y_values:
        for xv in cfg.x_values:
            world = replace(base.world, **{cfg.x: _cast(cfg.x, xv), cfg.y: _cast(cfg.y, yv)})
            r = cell(replace(base, world=world), cfg.seeds)
            cells.append({cfg.x: xv, cfg.y: yv, **r})
            if progress is not None:
                progress.update(1)
    return {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}, "cells": cells}


def plot(result: dict, path: Path) -> None:
    import numpy as np
    from matplotlib.figure import Figure

    c = result["config"]
    xs, ys = list(c["x_values"]), list(c["y_values"])
    keys = [("online_minus_offline_matched_kl", "online − offline at matched KL"),
            ("tandem_minus_offline_matched_kl", "tandem − offline at matched KL"),
            ("online_minus_offline_peak", "online − offline, peak win rate")]
    fig = Figure(figsize=(4.6 * len(keys), 3.8), layout="constrained")
    axes = fig.subplots(1, len(keys))
    for ax, (key, title) in zip(axes, keys):
        grid = np.array([[next(cl[key][0] for cl in result["cells"] if cl[c["x"]] == xv and cl[c["y"]] == yv) for xv in xs] for yv in ys])
        lim = max(np.nanmax(np.abs(grid)), 1e-3)
        im = ax.imshow(grid, origin="lower", cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:+.3f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
        ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
        ax.set_xlabel(c["x"])
        ax.set_ylabel(c["y"])
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"Where the gap lives (preset {c['preset']}, {c['seeds']} seeds; blue = first arm better)", fontsize=10)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    from shared.cli import cli
    from tqdm import tqdm

    from toysim.env import WorldConfig
    from toysim.gap import MAX_SEEDS, fail
    from toysim.presets import PRESETS

    cfg = cli(SweepConfig, argv, prog="python -m toysim.sweep", description=__doc__.split("\n\n")[0])
    fields = {f.name for f in dataclasses.fields(WorldConfig)}
    for knob in (cfg.x, cfg.y):
        if knob not in fields:
            return fail(f"unknown knob {knob!r}; choose from {', '.join(sorted(fields))}")
    if cfg.preset not in PRESETS:
        return fail(f"unknown preset {cfg.preset!r}; choose from {', '.join(PRESETS)}")
    if not 1 <= cfg.seeds <= MAX_SEEDS:
        return fail(f"--seeds must be at least 1 and at most {MAX_SEEDS}, got {cfg.seeds}")
    if cfg.out.exists():
        return fail(f"{cfg.out} exists; choose a new --out (results are never overwritten)")
    t0 = time.time()
    with tqdm(total=len(cfg.x_values) * len(cfg.y_values), desc="cells", file=sys.stderr) as bar:
        result = sweep(cfg, bar)
    cfg.out.mkdir(parents=True)
    (cfg.out / "sweep.json").write_text(json.dumps(result, indent=1))
    plot(result, cfg.out / "phase.png")
    print(f"wrote {cfg.out / 'sweep.json'} and {cfg.out / 'phase.png'} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
