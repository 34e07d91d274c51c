"""The PNG figures of a study's results, after the paper's (Tang et al. 2024).

    from shared.plots import figures
    figures(json.loads(Path("runs/x/coverage/results.json").read_text()), Path("runs/x/coverage"))

Win rate against log KL per arm (Fig. 2): the mean over seeds of each seed's best
run, a 95% CI band, the mean curve's peak, each seed as a faint line, and a
sweep's envelope; the online − offline gap along KL (coverage); accuracy and
log-likelihood shifts over training (Fig. 5, 6); peak win rate against the
refresh period; and the scaling curve (Fig. 8). Every figure is drawn from a
results dict alone (the schema of docs/results-schema.md), so toysim and
fullscale share it.

matplotlib (and scipy, through ``seed_ci``) is imported inside the functions
that draw: it takes about a second to import, and the core must stay light
(tests/test_imports.py).

Docs: docs/results-schema.md. Tests: tests/test_plots.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from shared.metrics import KL_FLOOR, envelope_on_grid, gap_curve_at_matched_kl, seed_ci
from shared.results import arm_order, best_run, curves, has, has_halves, peak, per_seed, runs_of, seeds_of
from shared.studies import ARMS, STUDIES, scale_arms

__all__ = ["DRAWERS", "figures", "mean_curve", "coinciding"]

BAND = "95% CI over seeds (Student t)"
"""What every shaded band is: ``shared.metrics.seed_ci`` at each point of the x grid."""


def _figure(figsize: tuple[float, float], right: float = 0.15, left: float = 0.75):
    """A figure without pyplot (no GUI backend, no global state, faster to import), with fixed
    margins in inches: a layout engine would draw every figure twice (half of a ``--quick`` study's
    figure time) to fit margins these figures' labels never need to move. ``left``/``right``: the
    margins in inches (a two-line axis label; a legend outside the axes)."""
    from matplotlib.figure import Figure  # lazily: matplotlib is heavy (see the module docstring)

    w, h = figsize
    fig = Figure(figsize=figsize)
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=0.5 / h, top=1 - 0.35 / h, wspace=0.25)
    return fig


def _colors(results: dict) -> dict[str, str]:
    """One colour per arm, in the study's declaration order (``shared.studies.STUDIES``), so an
    arm keeps its colour whatever order a results.json lists its arms in."""
    import matplotlib  # lazily: matplotlib is heavy

    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    return {a: cycle[i % len(cycle)] for i, a in enumerate(arm_order(results))}


def _best_run(results: dict, arm: str, seed: int) -> dict:
    """The seed's run with the highest peak win rate (the best configuration of a sweep)."""
    return best_run(runs_of(results, arm, seed))


def _arm_series(results, arm, key):
    """[seeds, checkpoints] of ``key`` for the arm's best run (by peak win rate) per seed."""
    out = [_best_run(results, arm, s)["series"] for s in seeds_of(results, arm)]
    n = min(len(v[key]) for v in out)
    return np.array([v[key][:n] for v in out]), np.array(out[-1]["step"][:n])


def _band(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and CI half-width (``seed_ci``) of a [seeds, points] table, per point; ``nan`` at a
    point some seed does not cover (a mean over fewer seeds would not be the same quantity)."""
    stats = [seed_ci(col) if np.isfinite(col).all() else (math.nan, math.nan) for col in table.T]
    return np.array([m for m, _ in stats]), np.array([h for _, h in stats])


def mean_curve(seed_curves, num: int = 64):
    """Mean over seeds of win-rate-vs-KL curves, on the log-KL range every seed covers.

    ``seed_curves``: one (kl, y) pair of equal-length 1-D sequences per seed (y: a win rate,
    or a gap). Points with KL below ``shared.metrics.KL_FLOOR`` or a non-finite y are dropped;
    each curve is linearly interpolated on log KL (points sorted by KL, as
    ``shared.metrics.envelope_on_grid`` reads a curve) onto ``num`` points spanning
    [max of the seeds' smallest log KL, min of their largest]: the range they share, so no
    seed is extrapolated. Tang et al. 2024 (Fig. 2) compare arms along this axis.

    Returns ``(kl [num], per_seed [seeds, num], mean [num], half [num])`` with ``half`` the
    95% CI half-width over seeds (``seed_ci``; ``nan`` for one seed), or ``None`` when the
    seeds share no KL range.
    """
    kept = []
    for kl, y in seed_curves:
        kl, y = np.asarray(kl, dtype=float), np.asarray(y, dtype=float)
        if kl.ndim != 1 or kl.shape != y.shape:
            raise ValueError(f"each curve needs 1-D kl and y of one length, got {kl.shape} and {y.shape}")
        keep = (kl >= KL_FLOOR) & np.isfinite(y)
        if not keep.any():
            return None
        order = np.argsort(kl[keep], kind="stable")
        kept.append((np.log(kl[keep][order]), y[keep][order]))
    if not kept:
        return None
    lo, hi = max(lk[0] for lk, _ in kept), min(lk[-1] for lk, _ in kept)
    if not hi > lo:
        return None
    grid = np.linspace(lo, hi, num)
    table = np.array([np.interp(grid, lk, y) for lk, y in kept])  # [seeds, num]
    mean, half = _band(table)
    return np.exp(grid), table, mean, half


def coinciding(means: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, str]:
    """Arms whose mean curves are identical (``np.allclose`` on the same KL grid) to an arm
    listed before them: ``{arm: the earlier arm it coincides with}``. In the coverage study
    (docs/studies/coverage.md) replay-ordered replays online's own stream in order, so the two
    coincide by construction.
    ``means``: per arm, (kl grid, mean win rate on it), as ``mean_curve`` returns them."""
    out: dict[str, str] = {}
    names = list(means)
    for i, b in enumerate(names):
        for a in names[:i]:
            if a in out:
                continue
            (ka, ma), (kb, mb) = means[a], means[b]
            if ka.shape == kb.shape and np.allclose(ka, kb) and np.allclose(ma, mb, equal_nan=True):
                out[b] = a
                break
    return out


def _is_sweep(results: dict, arm: str) -> bool:
    """Whether the arm ran several configurations per seed (offline's pooled lr × β sweep)."""
    return any(len(runs_of(results, arm, s)) > 1 for s in seeds_of(results, arm))


def _sweep_envelope(results: dict, arm: str, num: int = 64):
    """(kl grid, mean over seeds of each seed's envelope over its sweep) on the KL range every seed's
    sweep covers: the curve ``shared.results.gap`` compares against (cross-fitted where the results
    hold win-rate halves), or ``None``."""
    spans = []
    for s in seeds_of(results, arm):
        kls = np.concatenate([np.asarray(c[0], dtype=float) for c in curves(results, arm, s)])
        kls = kls[kls >= KL_FLOOR]
        if not kls.size:
            return None
        spans.append((np.log(kls.min()), np.log(kls.max())))
    lo, hi = max(a for a, _ in spans), min(b for _, b in spans)
    if not hi > lo:
        return None
    grid = np.linspace(lo, hi, num)
    table = np.array([envelope_on_grid(curves(results, arm, s), grid) for s in seeds_of(results, arm)])
    return np.exp(grid), table.mean(0)


def _legend_outside(ax, handles=None, **kw):
    """A small legend to the right of the axes, where it covers no curve."""
    if handles is not None:
        kw["handles"] = handles
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=7, frameon=False, **kw)


def _key(replay: bool) -> list:
    """Legend entries that say what the line kinds of ``_winrate_vs_kl`` are."""
    from matplotlib.lines import Line2D  # lazily: matplotlib is heavy (see the module docstring)
    from matplotlib.patches import Patch  # lazily, as above

    key = [Patch(color="grey", alpha=0.3, lw=0, label=f"band: {BAND}"),
           Line2D([], [], color="grey", lw=0.6, alpha=0.5, label="faint: one seed's best run"),
           Line2D([], [], ls="", marker="^", color="grey", mec="k", mew=0.6, label="peak of the mean curve")]
    return key + ([Line2D([], [], color="grey", ls="--", label="dashed: replays a logged stream")] if replay else [])


def _winrate_vs_kl(results: dict):
    """Fig. 2 of Tang et al. 2024, per arm: the mean over seeds of each seed's best run (``mean_curve``),
    its band and its peak, each seed faint, a sweep's envelope dotted, replay arms dashed. Online is
    thick and beneath the thin lines, so an arm that coincides with it shows on it and it around them."""
    colors = _colors(results)
    fig = _figure(figsize=(9.4, 4.6), right=2.75, left=0.95)
    ax = fig.subplots()
    best = {a: [_best_run(results, a, s)["series"] for s in seeds_of(results, a)] for a in colors}
    means = {a: m for a in colors if (m := mean_curve([(r["kl"], r["win_rate"]) for r in best[a]])) is not None}
    same = coinciding({a: (m[0], m[2]) for a, m in means.items()})
    handles = []
    for arm, c in colors.items():
        ls = "--" if arm in ARMS and ARMS[arm].source == "replay" else "-"
        lw, z = (3.4, 3) if arm == "online" else (1.4, 4)
        label = arm + (f" (= {same[arm]})" if arm in same else "")
        if arm not in same:  # a copy's seeds and band would only darken the original's
            for r in best[arm]:
                kl, wr = np.asarray(r["kl"]), np.asarray(r["win_rate"])
                ax.plot(kl[kl >= KL_FLOOR], wr[kl >= KL_FLOOR], ls, color=c, lw=0.5, alpha=0.2, zorder=1)
        if arm not in means:
            handles += ax.plot([], [], ls, color=c, lw=lw, label=f"{label}: its seeds share no KL range")
            continue
        kl, _, mean, half = means[arm]
        if arm not in same and np.isfinite(half).any():
            ax.fill_between(kl, mean - half, mean + half, color=c, alpha=0.1, lw=0, zorder=2)
        i = int(np.argmax(mean))
        handles += ax.plot(kl, mean, ls, color=c, lw=lw, zorder=z, label=f"{label}  (peak {mean[i]:.3f})")
        ax.plot(kl[i], mean[i], "^", color=c, mec="k", mew=0.6, ms=8, zorder=6)
        env = _sweep_envelope(results, arm) if _is_sweep(results, arm) else None
        if env is not None:
            kind = "cross-fitted best of sweep" if has_halves(results, arm) else "best of sweep"
            handles += ax.plot(*env, ":", color=c, lw=1.8, zorder=4, label=f"{arm} envelope ({kind})")
    ax.set_xscale("log")
    ax.set_xlabel("KL(π ‖ π_sft)")
    ax.set_ylabel("win rate vs golden policy\n(mean over seeds of each seed's best run)")
    ax.set_title(f"{results['study']}: win rate against KL (preset {results['preset']}, {results['seeds']} seeds)", fontsize=10)
    _legend_outside(ax, handles + _key(any(a in ARMS and ARMS[a].source == "replay" for a in colors)))
    return fig


def _gap_vs_kl(results: dict):
    """Claim 2's curve: online − offline (best of sweep) at matched KL, per seed and its mean."""
    if not has(results, "online", "offline"):
        return None
    colors = _colors(results)
    def one(s):
        return gap_curve_at_matched_kl(curves(results, "online", s), curves(results, "offline", s))

    per = [g for g in per_seed(results, ("online", "offline"), one) if g is not None]
    if not per:
        return None
    fig = _figure(figsize=(8.8, 3.8), right=2.6, left=0.95)
    ax = fig.subplots()
    c = colors["online"]
    for j, (grid, diff) in enumerate(per):
        ax.plot(np.exp(grid), diff, color=c, lw=0.7, alpha=0.35, label=None if j else "one seed")
    m = mean_curve([(np.exp(grid), diff) for grid, diff in per])
    if m is not None:
        kl, _, mean, half = m
        if np.isfinite(half).any():
            ax.fill_between(kl, mean - half, mean + half, color=c, alpha=0.2, lw=0, label=f"band: {BAND}")
        ax.plot(kl, mean, color=c, lw=2.4, label=f"mean over {len(per)} seeds")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("KL(π ‖ π_sft)")
    crossed = has_halves(results, "online") and has_halves(results, "offline")
    ax.set_ylabel("online − offline win rate\n(offline: best of sweep" + (", cross-fitted)" if crossed else ")"))
    ax.set_title(f"win rate online − offline at matched KL (preset {results['preset']})", fontsize=10)
    _legend_outside(ax)
    return fig


def _classification(results: dict):
    """Tang et al. 2024, Fig. 5 (accuracy as a classifier) and Fig. 6 (log-likelihood shifts), mean over seeds."""
    from matplotlib.lines import Line2D  # lazily: matplotlib is heavy (see the module docstring)

    colors = _colors(results)
    fig = _figure(figsize=(11.5, 3.8), right=2.3)
    axes = fig.subplots(1, 2)
    styles = {"acc_golden": "-", "acc_online_pairs": "--", "acc_self": ":", "chosen_logp_shift": "-", "rejected_logp_shift": "--"}
    for arm, c in colors.items():
        for key in ("acc_golden", "acc_online_pairs", "acc_self"):
            v, steps = _arm_series(results, arm, key)
            axes[0].plot(steps, v.mean(0), styles[key], color=c)
        if arm == "online":
            v, steps = _arm_series(results, arm, "proxy_acc_online_pairs")
            axes[0].plot(steps, v.mean(0), "-.", color="k")
        for key in ("chosen_logp_shift", "rejected_logp_shift"):
            v, steps = _arm_series(results, arm, key)
            axes[1].plot(steps, v.mean(0), styles[key], color=c)
    axes[0].axhline(0.5, color="grey", lw=0.5)
    axes[0].set_ylabel("accuracy vs golden labels")
    axes[1].set_ylabel("log π − log π_sft on D_golden")
    for ax in axes:
        ax.set_xlabel("step")
    fig.suptitle(f"classification: the policy as a classifier, mean over seeds of each seed's best run (preset {results['preset']})",
                 fontsize=10)
    handles = [Line2D([], [], color=c, lw=2, label=a) for a, c in colors.items()]
    handles += [Line2D([], [], color="grey", ls=ls, label=k) for k, ls in styles.items()]
    if "online" in colors:
        handles.append(Line2D([], [], color="k", ls="-.", label="proxy PM on online's pairs"))
    _legend_outside(axes[1], handles)
    return fig


def _refresh(results: dict):
    """Claim 21: peak win rate against the number of steps between dataset refreshes."""
    if not has(results, "online", "offline"):
        return None
    fig = _figure(figsize=(7.8, 4), right=2.4, left=0.95)
    ax = fig.subplots()
    steps = results["config"]["train"]["steps"]
    ks = {"online": 1, **{a: ARMS[a].params["every"] or steps for a in results["arms"] if a in ARMS and ARMS[a].source == "refresh"}}
    ci = {a: seed_ci([peak(results, a, s) for s in seeds_of(results, a)]) for a in ks}
    order = sorted(ks, key=ks.get)
    ax.errorbar([ks[a] for a in order], [ci[a][0] for a in order], yerr=[0 if math.isnan(ci[a][1]) else ci[a][1] for a in order],
                marker="o", capsize=3, label="refresh every k steps (k = 1: online)")
    off = seed_ci([peak(results, "offline", s) for s in seeds_of(results, "offline")])
    ax.axhline(off[0], color="grey", ls="--", label="offline on D_golden (best of sweep)")
    ax.set_xscale("log")
    ax.set_xlabel("k: steps between dataset refreshes")
    ax.set_ylabel(f"peak win rate\n(mean ± {BAND})")
    ax.set_title(f"refresh: how online must it be? (preset {results['preset']})", fontsize=10)
    _legend_outside(ax)
    return fig


def _scaling(results: dict):
    """Tang et al. 2024, Fig. 8: peak win rate against policy width, per data source."""
    fig = _figure(figsize=(7.2, 3.8), right=1.4, left=0.95)
    ax = fig.subplots()
    for prefix, source in (("online", "online"), ("offline", "offline"), ("tandem", "replay")):
        arms = scale_arms(results, source)
        caps = [ARMS[a].capacity for a in arms]
        ci = [seed_ci([peak(results, a, s) for s in seeds_of(results, a)]) for a in arms]
        ax.errorbar(caps, [m for m, _ in ci], yerr=[0 if math.isnan(half) else half for _, half in ci], marker="o", capsize=3, label=prefix)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("policy width (× the default number of features)")
    ax.set_ylabel(f"peak win rate\n(mean ± {BAND})")
    ax.set_title(f"scale: peak win rate against policy width (preset {results['preset']})", fontsize=10)
    _legend_outside(ax)
    return fig


DRAWERS = {"winrate_vs_kl": _winrate_vs_kl, "gap_vs_kl": _gap_vs_kl, "classification": _classification, "refresh": _refresh,
           "scaling": _scaling}
"""A figure's name (``shared.studies.Study.figures``) -> the function that draws it from a results
dict, or returns None when the results lack the arms it needs."""


def figures(results: dict, out: Path) -> list[str]:
    """Write the figures the study names (``shared.studies.Study.figures``; win rate against KL
    only for a study no declaration names) into ``out`` as PNG files (win rate against KL as in
    Tang et al. 2024, Fig. 2, and each study's own; docs/results-schema.md); returns their file names."""
    if not results["arms"]:
        return []
    study = STUDIES.get(results["study"])
    names = []
    for name in study.figures if study else ("winrate_vs_kl",):
        fig = DRAWERS[name](results)
        if fig is not None:
            fig.savefig(out / f"{name}.png", dpi=110)
            names.append(f"{name}.png")
    return names
