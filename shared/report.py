"""Tables, claim verdicts and the one-page report of a study's results.

Both backends write results in the schema of ``shared.studies``; this module
only reads that schema, so fullscale can use it too. The figures the report
shows are drawn by ``shared.plots``.

Docs: docs/results-schema.md. Tests: tests/test_toysim_gap.py, tests/test_fullscale_run.py.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from shared import plots
from shared.metrics import seed_ci
from shared.protocol import online_partner
from shared.results import arm_order, best_run, gap, has, peak, runs_of, seeds_of
from shared.studies import ARMS, STUDIES

__all__ = ["PLUMBING_PRESETS", "plumbing_note", "summary_rows", "md_cell", "format_table", "format_claims", "write_report", "redraw", "main"]


def summary_rows(results: dict) -> list[dict]:
    """Per arm: peak win rate ± CI, KL at the peak, and online − arm at matched KL (signed as
    the claims are: positive when online is ahead; the online arm of the same capacity and loss,
    ``shared.protocol.online_partner``)."""
    rows = []
    arms = results["arms"]
    for arm in arm_order(results):
        seeds = seeds_of(results, arm)
        pk = seed_ci([peak(results, arm, s) for s in seeds])

        def kl_at_peak(s):
            best = best_run(runs_of(results, arm, s))
            return best["series"]["kl"][int(np.argmax(best["series"]["win_rate"]))]

        kl = seed_ci([kl_at_peak(s) for s in seeds])
        ref = online_partner(ARMS[arm]) if arm in ARMS else None
        g = gap(results, ref, arm) if ref is not None and has(results, ref) and ref != arm else (math.nan, math.nan)
        rows.append({"arm": arm, "peak": pk, "kl_at_peak": kl, "online_minus_arm": g, "runs": len(arms[arm]), "ref": ref})
    return rows


def _pm(m, half, digits=3, signed=False):
    if math.isnan(m):
        return "—"
    sign = "+" if signed else ""
    return f"{m:{sign}.{digits}f} ± {half:.{digits}f}" if not math.isnan(half) else f"{m:{sign}.{digits}f}"


PLUMBING_PRESETS = ("smoke",)
"""Presets sized to check that every stage runs, not to test a claim (toysim's ``--quick``
versions are named ``<preset>-quick``, ``toysim.presets.quick``)."""


def plumbing_note(results: dict) -> str | None:
    """The caveat a run sized for a plumbing check carries wherever its verdicts are printed;
    None for a run sized to test the claims. Docs: docs/tutorial.md (A first figure)."""
    preset = results["preset"]
    if preset in PLUMBING_PRESETS or preset.endswith("-quick"):
        return (f"preset {preset} is sized to check that every stage runs, not to test the claims: its verdicts can "
                "contradict the committed results (README); run without --quick / with a larger preset to read them")
    return None


def _heading(r: dict) -> str:
    """A study's heading in report.md: the preset, the seeds, and the backend's one-line ``setting``
    (``shared.results.results_header``; results written before it had one show their mode)."""
    seeds = f"{r['seeds']} seed{'s' if r['seeds'] != 1 else ''}"
    setting = r.get("setting") or f"mode {r['mode']}"
    preset = f"preset `{r['preset']}`"
    return f"## {r['study']} ({'; '.join([preset, seeds, setting])})"


def md_cell(text: str) -> str:
    """Text as one cell of a Markdown table: a ``|`` in it (``max |win-rate difference|``) escaped,
    so it does not end the cell."""
    return text.replace("|", "\\|")


def format_table(results: dict, markdown: bool = False) -> str:
    """The per-arm table of ``summary_rows`` (plain text or markdown), under the plumbing-check
    note where the run's sizes call for one (``plumbing_note``)."""
    rows = summary_rows(results)
    head = ["arm", "runs", "peak win rate", "KL at peak", "online − arm @ matched KL"]
    body = [[r["arm"], str(r["runs"]), _pm(*r["peak"]), _pm(*r["kl_at_peak"], 2),
             (_pm(*r["online_minus_arm"], signed=True) + ("" if r["ref"] == "online" else f" ({r['ref']} − arm)"))
             if not math.isnan(r["online_minus_arm"][0]) else "—"] for r in rows]
    note = plumbing_note(results)
    if markdown:
        lines = ([f"> {note}", ""] if note else []) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(md_cell(x) for x in b) + " |" for b in body])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join(([f"note: {note}"] if note else []) + [fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body])


def format_claims(results: dict) -> str:
    """Each claim's verdict and evidence, two lines per claim, under the plumbing-check note
    where the run's sizes call for one."""
    note = plumbing_note(results)
    lines = [f"claim {c['id']:>2} [{c['verdict']}] {c['statement']}\n          {c['evidence']}" for c in results["claims"]]
    return "\n".join(([f"note: {note}"] if note else []) + lines)


def write_report(all_results: list[dict], out: Path, figs: dict[str, list[str]], title: str = "toysim report",
                 flat: bool = False) -> Path:
    """DIR/report.md: per study its table, verdicts and figures on one page. ``flat``: the
    figures lie in DIR itself (one study per directory, as fullscale writes them)."""
    lines = [f"# {title}", ""]
    for r in all_results:
        lines += [_heading(r), "", f"*{r['question']}*", ""]
        if r["arms"]:
            lines += [format_table(r, markdown=True), ""]
        elif plumbing_note(r):
            lines += [f"> {plumbing_note(r)}", ""]
        lines += ["| claim | verdict | evidence |", "|---|---|---|"]
        lines += [f"| {c['id']}. {md_cell(c['statement'])} | **{c['verdict']}** | {md_cell(c['evidence'])} |" for c in r["claims"]]
        lines += [""] + [f"![{f}]({f if flat else r['study'] + '/' + f})" for f in figs.get(r["study"], [])] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def redraw(run_dir: Path) -> Path:
    """Draw the figures and report.md of a finished run again from its results.json (after a
    change to the figures or the report): a fullscale run (DIR/results.json) or a toysim one
    (DIR/<study>/results.json). Nothing else in DIR changes."""
    run_dir = Path(run_dir)
    flat = (run_dir / "results.json").exists()
    paths = [run_dir / "results.json"] if flat else sorted(run_dir.glob("*/results.json"))
    if not paths:
        raise FileNotFoundError(f"{run_dir} holds no results.json (nor DIR/<study>/results.json)")
    all_results, figs = [], {}
    for p in paths:
        res = json.loads(p.read_text())
        figs[res["study"]] = plots.figures(res, p.parent)
        all_results.append(res)
    if not flat:  # the order toysim.gap wrote them in: the studies' declared order
        order = list(STUDIES)
        all_results.sort(key=lambda r: order.index(r["study"]) if r["study"] in order else len(order))
    title = "fullscale report" if all_results[0].get("backend") == "fullscale" else "toysim report"
    return write_report(all_results, run_dir, figs, title=title, flat=flat)


def main(argv: list[str] | None = None) -> int:
    """``python -m shared.report DIR [DIR ...]``: ``redraw`` each finished run."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m shared.report DIR [DIR ...]\n\nDraw the figures and report.md of finished runs again from their "
              "results.json (toysim or fullscale).")
        return 0 if args else 2
    for d in args:
        try:
            print(f"wrote {redraw(Path(d))}")
        except (FileNotFoundError, ValueError, KeyError) as e:
            print(f"error: {d}: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
