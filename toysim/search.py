"""The pre-registered search for where the matched-KL gap lives with noise-free labels.

    python -m toysim.search                          # the grid, then its confirmations (about 20 minutes)
    python -m toysim.search --out DIR --resume       # go on after an interruption (also redraws DIR's figures)

The grid and the decision rule are docs/mechanism.md's, committed before the
first run; this module is that text as code. Each cell is a world, the
``paper-protocol-v1`` preset's centre with one or two knobs changed
(``GRID``), run by ``toysim.sweep.cell`` (online, offline's pooled sweep and
tandem) over ``--seeds`` seeds. A cell reads *positive* if the 95% interval of
its matched-KL gap lies above 0 (rule 1); every noise-free cell that reads
positive, or shows claim 11's signature (rule 2), is run again with
``--confirm-seeds`` seeds (rule 3). Writes ``search.json`` after every cell
(an interrupted search loses at most the cell it was in), one phase diagram
per panel (``P1.png`` …) and ``search.md``, a table of every cell.
Tests: tests/test_toysim_tools.py.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tqdm import tqdm

from shared.cli import cli, fail, prelude, resume_from, seeds_problem, write_json
from shared.results import verdict_from_ci
from toysim.presets import MAX_SEEDS, PRESETS
from toysim.presets import quick as quick_version
from toysim.sweep import cell, plot
from toysim.world import cast_knob

__all__ = ["POLICIES", "Panel", "GRID", "SearchConfig", "cell_preset", "reading", "signature", "search", "plot_panels", "table", "main"]

POLICIES: dict[str, dict] = {
    "atomic": {"policy_kind": "atomic", "responses": 85, "policy_features": 128},
    "ar-bigram": {"policy_kind": "autoregressive", "policy_features": 45},
    "ar-recurrent": {"policy_kind": "autoregressive", "policy_features": 128},
    "ar-wide": {"policy_kind": "autoregressive", "policy_features": 512},
}
"""The policy classes of the grid, as world settings (docs/mechanism.md § the grid). 45 features
are exactly the bigram table and the prompt-per-token columns for a vocabulary of 4 (5² + 4·5)."""


@dataclass(frozen=True)
class Panel:
    name: str
    title: str
    x: str
    x_values: tuple
    y: str
    y_values: tuple


_P = tuple(POLICIES)
GRID: tuple[Panel, ...] = (
    Panel("P1", "coverage by data size", "policy", _P, "golden_pairs", (128, 512, 2048)),
    Panel("P2", "coverage by SFT width", "policy", _P, "sft_temp", (0.3, 1.0, 3.0)),
    Panel("P3", "proxy quality", "policy", _P, "proxy_features", (4, 16, 64)),
    Panel("P4", "KL weight", "policy", _P, "beta", (0.03, 0.1, 0.3)),
    Panel("P5", "length and capacity (autoregressive)", "max_len", (2, 3, 4), "policy_features", (45, 128, 512)),
    Panel("P6", "label noise (the bridge to the default preset)", "policy", _P, "label_noise", (0.0, 0.1, 0.3)),
)
"""The pre-registered panels (docs/mechanism.md): every other knob at the centre, the preset."""

CENTRE = "paper-protocol-v1"


@dataclass(frozen=True)
class SearchConfig:
    """Run the pre-registered grid of docs/mechanism.md and its confirmations."""

    out: Path | None = None
    """output folder; default a new runs/search/search-<date-time>; the committed one is docs/figures/search"""
    seeds: int = 3
    """training seeds per cell (rule 1)"""
    confirm_seeds: int = 10
    """seeds of a confirmation run (rule 3); 0 skips the confirmations"""
    panels: tuple[str, ...] = tuple(p.name for p in GRID)
    """the panels to run (P1 … P6)"""
    resume: bool = False
    """go on in an existing --out: cells already in its search.json are kept, not rerun"""
    quick: bool = False
    """centre on the preset's quick (smaller, shorter) version: a plumbing check, not the search"""
    threads: int = 0
    """CPU threads for torch (0: the cores idle at start-up, shared/machine.py; OMP_NUM_THREADS when set)"""


def cell_preset(settings: dict, quick: bool = False):
    """The centre preset (its quick version if ``quick``) with a cell's settings: ``policy`` (a name
    of ``POLICIES``), ``beta`` (the training β; offline's sweep multiplies it) or any field of
    ``toysim.world.WorldConfig``."""
    p = quick_version(PRESETS[CENTRE]) if quick else PRESETS[CENTRE]
    world, train = {}, {}
    for knob, value in settings.items():
        if knob == "policy":
            world.update(POLICIES[value])
        elif knob == "beta":
            train["beta"] = float(value)
        else:
            world[knob] = cast_knob(knob, value)
    return replace(p, world=replace(p.world, **world), train=replace(p.train, **train))


def reading(stat) -> str:
    """Rule 1: positive, negative or no gap detected, from [mean, 95% half-width]."""
    v = verdict_from_ci(*stat)
    return {"supported": "positive", "not supported": "negative"}.get(v, "no gap detected")


def signature(cell: dict) -> bool:
    """Rule 2 (claim 11's rule): both arms' chosen log-likelihood falls and offline's falls more."""
    falls = all(verdict_from_ci(-cell[f"{a}_chosen_shift"][0], cell[f"{a}_chosen_shift"][1]) == "supported" for a in ("online", "offline"))
    return falls and verdict_from_ci(*cell["online_minus_offline_chosen_shift"]) == "supported"


def _key(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True)


def _cells_of(panel: Panel) -> list[dict]:
    return [{panel.x: xv, panel.y: yv} for yv in panel.y_values for xv in panel.x_values]


def _noise_free(settings: dict) -> bool:
    return float(settings.get("label_noise", 0.0)) == 0.0


def search(cfg: SearchConfig, done: dict | None = None, save=None, progress=None) -> dict:
    """Run every cell of the chosen panels not in ``done`` (a previous search.json), then the
    confirmations; ``save(result)`` is called after every cell. Returns the search.json dict."""
    panels = [p for p in GRID if p.name in cfg.panels]
    result = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k not in ("resume", "threads")},
              "centre": CENTRE + ("-quick" if cfg.quick else ""), "panels": [asdict(p) for p in panels], "cells": [], "confirmations": []}
    def world(settings: dict) -> str:  # cells that name the same world (the centre row recurs in every panel) run once
        return repr(cell_preset(settings, cfg.quick))

    old = {(world(c["settings"]), c["seeds"]): c for c in (done or {}).get("cells", []) + (done or {}).get("confirmations", [])}

    def run(settings: dict, seeds: int, into: list):
        k = (world(settings), seeds)
        if k not in old:
            t0 = time.time()
            old[k] = {**cell(cell_preset(settings, cfg.quick), seeds), "seconds": round(time.time() - t0, 1)}
        c = {"settings": settings, "seeds": seeds, **{n: v for n, v in old[k].items() if n not in ("settings", "seeds")}}
        c["reading"], c["signature"] = reading(c["online_minus_offline_matched_kl"]), signature(c)
        into.append(c)
        if save is not None:
            save(result)
        if progress is not None:
            progress.update(1)

    unique = list({_key(s): s for p in panels for s in _cells_of(p)}.values())
    for s in unique:
        run(s, cfg.seeds, result["cells"])
    if cfg.confirm_seeds:
        todo = list({world(c["settings"]): c for c in result["cells"]
                     if _noise_free(c["settings"]) and (c["reading"] == "positive" or c["signature"])}.values())
        if progress is not None:
            progress.total += len(todo)
            progress.refresh()
        for c in todo:
            run(c["settings"], cfg.confirm_seeds, result["confirmations"])
    return result


def _find(result: dict, settings: dict, seeds: int):
    return next((c for c in result["cells"] + result["confirmations"] if c["seeds"] == seeds and _key(c["settings"]) == _key(settings)), None)


_PLOTTED = [("online_minus_offline_matched_kl", "online − offline at matched KL"),
            ("online_minus_offline_chosen_shift", "chosen log-lik. shift, online − offline"),
            ("online_minus_offline_peak", "online − offline, peak win rate")]


def plot_panels(result: dict, out: Path) -> list[Path]:
    """One phase diagram per panel: the matched-KL gap and claim 11's online − offline chosen shift."""
    paths = []
    seeds = result["config"]["seeds"]
    for p in result["panels"]:
        cells = []
        for s in [{p["x"]: xv, p["y"]: yv} for yv in p["y_values"] for xv in p["x_values"]]:
            c = _find(result, s, seeds)
            cells.append({**s, **{k: (c[k] if c else [math.nan, math.nan]) for k, _ in _PLOTTED}})
        sub = {"config": {"x": p["x"], "x_values": p["x_values"], "y": p["y"], "y_values": p["y_values"]}, "cells": cells}
        path = out / f"{p['name']}.png"
        plot(sub, path, keys=_PLOTTED,
             suptitle=f"{p['name']}: {p['title']} (centre {result['centre']}, {seeds} seeds a cell; blue = online higher)")
        paths.append(path)
    return paths


def table(result: dict) -> str:
    """search.md: every cell and confirmation, its numbers and its readings."""
    def f(stat):
        return "undefined" if math.isnan(stat[0]) else f"{stat[0]:+.3f} ± {stat[1]:.3f}"

    lines = [f"# The search of docs/mechanism.md: every cell (centre `{result['centre']}`)", "",
             "Matched-KL gap and peak gap: online − offline (best of its sweep); chosen shift: final log-likelihood "
             "shift of D_golden's chosen responses. Reading (rule 1): the gap's 95% interval above 0 (positive), "
             "below (negative) or neither. Signature (rule 2): both chosen shifts fall, offline's more.", ""]
    for name, rows in (("Cells", result["cells"]), ("Confirmations (rule 3)", result["confirmations"])):
        lines += [f"## {name}", "", "| settings | seeds | matched-KL gap | reading | peak gap | chosen shift online "
                                    "| chosen shift offline | online − offline | signature |", "|---|---|---|---|---|---|---|---|---|"]
        for c in rows:
            cols = [", ".join(f"{k} {v}" for k, v in c["settings"].items()), str(c["seeds"]), f(c["online_minus_offline_matched_kl"]), c["reading"],
                    f(c["online_minus_offline_peak"]), f(c["online_chosen_shift"]), f(c["offline_chosen_shift"]),
                    f(c["online_minus_offline_chosen_shift"]), "yes" if c["signature"] else "no"]
            lines.append("| " + " | ".join(cols) + " |")
        if not rows:
            lines.append("| (none) | | | | | | | | |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    try:
        cfg = cli(SearchConfig, argv, prog="python -m toysim.search", description="\n\n".join(__doc__.split("\n\n")[:3]))
    except SystemExit as e:  # --help (0), or a bad argument reported in one line (2)
        return 0 if e.code in (0, None) else 2
    confirm = seeds_problem(cfg.confirm_seeds, 2, MAX_SEEDS, "--confirm-seeds") if cfg.confirm_seeds else None
    seeds = seeds_problem(cfg.seeds, 2, MAX_SEEDS) or (confirm and confirm + " (--confirm-seeds 0 skips the confirmations)")
    unknown = [p for p in cfg.panels if p not in {g.name for g in GRID}]
    panel = f"unknown panel {unknown[0]!r}; choose from {', '.join(g.name for g in GRID)}" if unknown else None
    resume = "--resume needs the --out of the search to go on with" if cfg.resume and cfg.out is None else None
    cfg = prelude(cfg, Path("runs/search"), "search", [seeds, panel, resume], make=not cfg.resume,
                  exists_hint=" (or --resume to go on with it)")
    if isinstance(cfg, int):
        return cfg
    done, problem = resume_from(cfg, "search.json", ("seeds", "confirm_seeds", "panels", "quick")) if cfg.resume else (None, None)
    if problem:
        return fail(problem)
    cfg.out.mkdir(parents=True, exist_ok=True)

    def save(result):  # written whole to a side file, then renamed: a kill never leaves half a file
        write_json(cfg.out / "search.json", result, sort_keys=False)

    t0 = time.time()
    panels = [p for p in GRID if p.name in cfg.panels]
    n = len({_key(s) for p in panels for s in _cells_of(p)})
    with tqdm(total=n, desc="cells (then confirmations)", file=sys.stderr) as bar:
        result = search(cfg, done, save, bar)
    save(result)
    plot_panels(result, cfg.out)
    (cfg.out / "search.md").write_text(table(result))
    pos = [c for c in result["confirmations"] if c["reading"] == "positive"]
    print(f"{len(result['cells'])} cells, {len(result['confirmations'])} confirmations, {len(pos)} confirmed positive; "
          f"wrote {cfg.out / 'search.json'}, search.md and {len(panels)} phase diagrams in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
