"""Tables, figures and the one-page report of a study's results.

Docs: docs/results-schema.md. Both backends write results in the schema of
``shared.studies``; this module only reads that schema, so fullscale can use it
too. Figures follow the paper's (Tang et al. 2024): win rate against log KL
per arm (Fig. 2), accuracy over training (Fig. 5), chosen log-likelihood over
training (Fig. 6), and the scaling curve (Fig. 8).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from shared.metrics import gap_curve_at_matched_kl, seed_ci
from shared.protocol import online_partner
from shared.results import curves, gap, has, has_halves, peak, per_seed, runs_of, seeds_of
from shared.studies import ARMS, scale_arms

__all__ = ["summary_rows", "format_table", "figures", "write_report"]


def summary_rows(results: dict) -> list[dict]:
    """Per arm: peak win rate ± CI, KL at the peak, gap to online at matched KL."""
    rows = []
    arms = results["arms"]
    for arm in arms:
        seeds = seeds_of(results, arm)
        pk = seed_ci([peak(results, arm, s) for s in seeds])

        def kl_at_peak(s):
            best = max(runs_of(results, arm, s), key=lambda r: max(r["series"]["win_rate"]))
            return best["series"]["kl"][int(np.argmax(best["series"]["win_rate"]))]

        kl = seed_ci([kl_at_peak(s) for s in seeds])
        ref = online_partner(ARMS[arm]) if arm in ARMS else None
        g = gap(results, arm, ref) if ref is not None and has(results, ref) and ref != arm else (math.nan, math.nan)
        rows.append({"arm": arm, "peak": pk, "kl_at_peak": kl, "vs_online": g, "runs": len(arms[arm]), "ref": ref})
    return rows


def _pm(m, half, digits=3):
    if math.isnan(m):
        return "—"
    return f"{m:.{digits}f} ± {half:.{digits}f}" if not math.isnan(half) else f"{m:.{digits}f}"


def format_table(results: dict, markdown: bool = False) -> str:
    rows = summary_rows(results)
    head = ["arm", "runs", "peak win rate", "KL at peak", "Δ win rate vs online @ matched KL"]
    body = [[r["arm"], str(r["runs"]), _pm(*r["peak"]), _pm(*r["kl_at_peak"], 2),
             (_pm(*r["vs_online"]) + f" (vs {r['ref']})") if not math.isnan(r["vs_online"][0]) else "—"] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body])


def format_claims(results: dict) -> str:
    return "\n".join(f"claim {c['id']:>2} [{c['verdict']}] {c['statement']}\n          {c['evidence']}" for c in results["claims"])


def _figure(figsize: tuple[float, float]):
    """A figure without pyplot (no GUI backend, no global state, faster to import), with fixed
    margins in inches: a layout engine would draw every figure twice (half of a ``--quick`` study's
    figure time) to fit margins these figures' labels never need to move."""
    from matplotlib.figure import Figure

    w, h = figsize
    fig = Figure(figsize=figsize)
    fig.subplots_adjust(left=0.75 / w, right=1 - 0.15 / w, bottom=0.5 / h, top=1 - 0.35 / h, wspace=0.25)
    return fig


def _arm_series(results, arm, key):
    """[seeds, checkpoints] of ``key`` for the arm's best run (by peak win rate) per seed."""
    out = []
    for s in seeds_of(results, arm):
        best = max(runs_of(results, arm, s), key=lambda r: max(r["series"]["win_rate"]))
        out.append(best["series"][key])
    n = min(len(v) for v in out)
    return np.array([v[:n] for v in out]), np.array(best["series"]["step"][:n])


def figures(results: dict, out: Path) -> list[str]:
    """Write the study's PNG figures into ``out``; returns their file names."""
    if not results["arms"]:
        return []
    import matplotlib

    names = []
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]

    # win rate vs log KL, every checkpoint of every run, one colour per arm
    fig = _figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    for i, arm in enumerate(results["arms"]):
        c = colors[i % len(colors)]
        for j, run in enumerate(results["arms"][arm]):
            kl, wr = np.asarray(run["series"]["kl"]), np.asarray(run["series"]["win_rate"])
            keep = kl > 1e-3
            ax.plot(kl[keep], wr[keep], "-" if len(results["arms"][arm]) <= 10 else ".", color=c, alpha=0.5 if j else 0.9,
                    lw=1, ms=2, label=arm if j == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel("KL(π ‖ π_sft)")
    ax.set_ylabel("win rate vs golden policy")
    ax.set_title(f"{results['study']}: win rate against KL ({results['preset']})")
    ax.legend(fontsize=8)
    fig.savefig(out / "winrate_vs_kl.png", dpi=110)
    names.append("winrate_vs_kl.png")

    if results["study"] == "coverage" and has(results, "online", "offline"):
        # claim 2's number is the mean of these curves: where along KL does online win?
        fig = _figure(figsize=(6.4, 3.6))
        ax = fig.subplots()
        drawn = 0
        for s in per_seed(results, ("online", "offline"), lambda s: s):
            curve = gap_curve_at_matched_kl(curves(results, "online", s), curves(results, "offline", s))
            if curve is not None:
                ax.plot(np.exp(curve[0]), curve[1], color=colors[0], lw=1, alpha=0.8, label=None if drawn else "each line: one seed")
                drawn += 1
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("KL(π ‖ π_sft)")
        crossed = has_halves(results, "online") and has_halves(results, "offline")
        ax.set_ylabel("online − offline (best of sweep" + (", cross-fitted)" if crossed else ")"))
        ax.set_title(f"win rate online − offline at matched KL ({results['preset']})")
        if drawn:
            ax.legend(fontsize=8)
        fig.savefig(out / "gap_vs_kl.png", dpi=110)
        names.append("gap_vs_kl.png")

    if results["study"] == "classification":
        fig = _figure(figsize=(10, 3.8))
        axes = fig.subplots(1, 2)
        for i, arm in enumerate(results["arms"]):
            c = colors[i % len(colors)]
            for key, ls in (("acc_golden", "-"), ("acc_online_pairs", "--"), ("acc_self", ":")):
                v, steps = _arm_series(results, arm, key)
                axes[0].plot(steps, v.mean(0), ls, color=c, label=f"{arm}: {key}")
            if arm == "online":
                v, steps = _arm_series(results, arm, "proxy_acc_online_pairs")
                axes[0].plot(steps, v.mean(0), "-.", color="k", label="proxy PM on online pairs")
            for key, ls in (("chosen_logp_shift", "-"), ("rejected_logp_shift", "--")):
                v, steps = _arm_series(results, arm, key)
                axes[1].plot(steps, v.mean(0), ls, color=c, label=f"{arm}: {key}")
        axes[0].axhline(0.5, color="grey", lw=0.5)
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("accuracy vs golden labels")
        axes[0].legend(fontsize=7)
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("log π − log π_sft on D_golden")
        axes[1].legend(fontsize=7)
        fig.savefig(out / "classification.png", dpi=110)
        names.append("classification.png")

    if results["study"] == "refresh" and has(results, "online", "offline"):
        fig = _figure(figsize=(5.5, 4))
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
        ax.set_ylabel("peak win rate")
        ax.set_title(f"refresh: how online must it be? ({results['preset']})")
        ax.legend(fontsize=8)
        fig.savefig(out / "refresh.png", dpi=110)
        names.append("refresh.png")

    if results["study"] == "scale":
        fig = _figure(figsize=(5.6, 3.8))
        ax = fig.subplots()
        for prefix, source in (("online", "online"), ("offline", "offline"), ("tandem", "replay")):
            arms = scale_arms(results, source)
            caps = [ARMS[a].capacity for a in arms]
            ci = [seed_ci([peak(results, a, s) for s in seeds_of(results, a)]) for a in arms]
            ax.errorbar(caps, [m for m, _ in ci], yerr=[0 if math.isnan(half) else half for _, half in ci], marker="o", capsize=3, label=prefix)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("policy width (× the default number of features)")
        ax.set_ylabel("peak win rate")
        ax.legend()
        fig.savefig(out / "scaling.png", dpi=110)
        names.append("scaling.png")
    return names


def write_report(all_results: list[dict], out: Path, figs: dict[str, list[str]], title: str = "toysim report",
                 flat: bool = False) -> Path:
    """DIR/report.md: per study its table, verdicts and figures on one page. ``flat``: the
    figures lie in DIR itself (one study per directory, as fullscale writes them)."""
    lines = [f"# {title}", ""]
    for r in all_results:
        lines += [f"## {r['study']} (preset `{r['preset']}`, {r['seeds']} seeds, mode {r['mode']})", "", f"*{r['question']}*", ""]
        if r["arms"]:
            lines += [format_table(r, markdown=True), ""]
        lines += ["| claim | verdict | evidence |", "|---|---|---|"]
        lines += [f"| {c['id']}. {c['statement']} | **{c['verdict']}** | {c['evidence']} |" for c in r["claims"]]
        lines += [""] + [f"![{f}]({f if flat else r['study'] + '/' + f})" for f in figs.get(r["study"], [])] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
