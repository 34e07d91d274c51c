"""Regenerate every toysim result and figure the docs and README show, in one command.

    python -m toysim.figures                  # writes docs/figures/ (about 5 minutes on 2 cores)
    python -m toysim.figures --quick --out runs/figs

Runs ``toysim.gap --hypothesis all --seeds 5`` for the ``default``,
``arena`` and ``paper-protocol`` presets, ``toysim.sweep`` with its defaults
and ``toysim.displacement`` (where the mass goes), each into
``OUT/<name>/`` with its console output in ``OUT/<name>.log``. Every figure is
drawn from the results.json (or sweep.json) beside it, and the same seed gives
the same JSON, so ``tests/test_figures.py`` checks the committed figures by
regenerating their data and comparing the JSON, not the pixels. An earlier
``OUT/<name>`` is kept aside until its replacement is complete. Docs:
docs/index.md.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from shared.cli import cli
from shared.report import md_cell

__all__ = ["FiguresConfig", "JOBS", "main", "study_section", "verdict_table", "update_study_pages"]

# (output folder, module, arguments): the runs behind every committed figure
JOBS = [
    ("toysim-default", "toysim.gap", ["--hypothesis", "all", "--seeds", "5", "--preset", "default"]),
    ("toysim-arena", "toysim.gap", ["--hypothesis", "all", "--seeds", "5", "--preset", "arena"]),
    ("toysim-paper-protocol", "toysim.gap", ["--hypothesis", "all", "--seeds", "5", "--preset", "paper-protocol"]),
    ("toysim-paper-protocol-v1", "toysim.gap", ["--hypothesis", "all", "--seeds", "5", "--preset", "paper-protocol-v1"]),
    ("sweep", "toysim.sweep", []),
    ("displacement", "toysim.displacement", ["--preset", "paper-protocol-v1", "--seeds", "5"]),
    ("displacement-judge", "toysim.displacement", ["--preset", "paper-protocol", "--seeds", "5"]),
]
QUICK = {"toysim.gap": ["--quick", "--seeds", "1"], "toysim.sweep": ["--quick", "--seeds", "1", "--x-values", "0.3", "--y-values", "8"],
         "toysim.displacement": ["--quick", "--seeds", "2"]}


@dataclass(frozen=True)
class FiguresConfig:
    """Regenerate the committed toysim results and figures."""

    out: Path | None = None
    """where the figures go (one folder per run, plus its .log); default docs/figures, the committed ones; with --quick, runs/figures-quick"""
    quick: bool = False
    """a fast, smaller version of every run (for a check; not the committed figures, so never written into docs/)"""


START, END = "<!-- results:start (python -m toysim.figures writes this block) -->", "<!-- results:end -->"
PRESETS = ("default", "arena", "paper-protocol", "paper-protocol-v1")


def study_section(study: str, figures: Path = Path("docs/figures"), page_dir: Path = Path("docs/studies")) -> str:
    """The generated block of docs/studies/<study>.md: the committed figures of both presets,
    the verdict table with its evidence, and the fullscale command that confirms it."""
    lines = [START, "", "## Results", ""]
    res = {p: json.loads((figures / f"toysim-{p}" / study / "results.json").read_text()) for p in PRESETS}
    for p in PRESETS:
        for png in sorted((figures / f"toysim-{p}" / study).glob("*.png")):
            rel = os.path.relpath(png, page_dir)
            lines += [f"![{study}, {p} preset: {png.stem}]({rel})", ""]
    lines += ["| claim | " + " | ".join(PRESETS) + " |", "|---|" + "---|" * len(PRESETS)]
    by_id = {p: {c["id"]: c for c in res[p]["claims"]} for p in PRESETS}
    for cid, c in by_id[PRESETS[0]].items():
        lines.append(f"| {cid}. {c['statement']} | " + " | ".join(f"**{by_id[p][cid]['verdict']}**: " + md_cell(by_id[p][cid]["evidence"]) for p in PRESETS) + " |")
    if study == "coverage":
        lines += ["", "Where the gap lives over two knobs of the world (`python -m toysim.sweep`; the README reads it):", "",
                  f"![phase diagram]({os.path.relpath(figures / 'sweep' / 'phase.png', page_dir)})"]
    lines += ["", f"Data: `docs/figures/toysim-{{{','.join(PRESETS)}}}/{study}/results.json` (5 seeds).", ""]
    if study != "theory":
        lines += ["Confirm it with language models (docs/fullscale.md):", "", "```bash",
                  f"python -m fullscale.run --preset small --hypothesis {study}", "```", ""]
    return "\n".join(lines + [END])


TABLE_START, TABLE_END = "<!-- verdicts:start (python -m toysim.figures writes this table) -->", "<!-- verdicts:end -->"
TABLE_PAGES = ("README.md", "docs/findings.md")
"""The pages that show every claim's verdict in every preset (``verdict_table``)."""


def verdict_table(figures: Path = Path("docs/figures")) -> str:
    """Every claim's verdict in every preset of ``PRESETS``, from the committed results.json
    files: the table of the README and docs/findings.md, between its markers."""
    rows: dict[int, dict] = {}
    for p in PRESETS:
        for res in sorted((figures / f"toysim-{p}").glob("*/results.json")):
            data = json.loads(res.read_text())
            for c in data["claims"]:
                rows.setdefault(c["id"], {"statement": c["statement"], "study": data["study"]})[p] = c["verdict"]
    lines = [TABLE_START, "", "| # | claim (study) | " + " | ".join(PRESETS) + " |", "|---|---|" + "---|" * len(PRESETS)]
    for cid in sorted(rows):
        r = rows[cid]
        lines.append(f"| {cid} | {r['statement']} ({r['study']}) | " + " | ".join(r.get(p, "—") for p in PRESETS) + " |")
    return "\n".join(lines + ["", TABLE_END])


def update_study_pages(figures: Path = Path("docs/figures"), pages: Path = Path("docs/studies")) -> list[Path]:
    """Rewrite the generated block of every study page (appended when missing) and the verdict
    table of ``TABLE_PAGES`` (where it has its markers)."""
    changed = []
    root = pages.parent.parent
    table = verdict_table(figures)
    for page in [root / t for t in TABLE_PAGES]:
        text = page.read_text() if page.exists() else ""
        if TABLE_START in text:
            new = text[: text.index(TABLE_START)] + table + text[text.index(TABLE_END) + len(TABLE_END):]
            if new != text:
                page.write_text(new)
                changed.append(page)
    for page in sorted(pages.glob("*.md")):
        text = page.read_text()
        block = study_section(page.stem, figures, pages)
        new = (text[: text.index(START)] + block + text[text.index(END) + len(END):]) if START in text else text.rstrip("\n") + "\n\n" + block + "\n"
        if new != text:
            page.write_text(new)
            changed.append(page)
    return changed


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self):
        for st in self.streams:
            st.flush()


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = cli(FiguresConfig, argv, prog="python -m toysim.figures", description=__doc__.split("\n\n")[0])
    except SystemExit as e:
        return 0 if e.code in (0, None) else 2
    docs = Path(__file__).resolve().parents[1] / "docs"
    out = cfg.out or Path("runs/figures-quick" if cfg.quick else "docs/figures")
    if cfg.quick and (out.resolve() == docs or docs in out.resolve().parents):
        print(f"error: --quick figures are not the committed ones and are never written into {docs}; choose another --out",
              file=sys.stderr)
        return 2
    cfg = replace(cfg, out=out)
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: cannot write to --out {cfg.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    for name, module, args in JOBS:
        dest, old = cfg.out / name, cfg.out / f".{name}.old"
        if old.exists():  # an earlier regeneration was killed mid-run: its kept results are the good ones
            shutil.rmtree(dest, ignore_errors=True)
            old.rename(dest)
        if dest.exists():
            dest.rename(old)
        args = args + (QUICK[module] if cfg.quick else []) + ["--out", str(dest)]
        print(f"== {name}: python -m {module} {' '.join(args)}", flush=True)
        rc = 1
        try:
            with (cfg.out / f"{name}.log").open("w") as log, contextlib.redirect_stdout(_Tee(sys.stdout, log)):
                rc = importlib.import_module(module).main(args)
        finally:  # a failed run, an exception or Ctrl-C: the earlier results go back in place
            if rc != 0:
                shutil.rmtree(dest, ignore_errors=True)
                if old.exists():
                    old.rename(dest)
                print(f"error: {name} failed (exit {rc}); the earlier {dest} is kept", file=sys.stderr)
        if rc != 0:
            return rc
        shutil.rmtree(old, ignore_errors=True)
    if not cfg.quick and cfg.out.resolve() == (Path(__file__).resolve().parents[1] / "docs" / "figures"):
        for page in update_study_pages(cfg.out, cfg.out.parent / "studies"):
            print(f"updated {page}")
    print(f"wrote {', '.join(str(cfg.out / n) for n, _, _ in JOBS)}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
    raise SystemExit(130)
