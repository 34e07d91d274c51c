"""Regenerate every toysim result and figure the docs and README show, in one command.

    python -m toysim.figures                  # writes docs/figures/ (about 3 minutes on 2 cores)
    python -m toysim.figures --quick --out runs/figs

Runs ``toysim.gap --hypothesis all --seeds 5`` for the ``default`` and
``arena`` presets and ``toysim.sweep`` with its defaults, each into
``OUT/<name>/`` with its console output in ``OUT/<name>.log``. Every figure is
drawn from the results.json (or sweep.json) beside it, and the same seed gives
the same JSON, so ``tests/test_figures.py`` checks the committed figures by
regenerating their data and comparing the JSON, not the pixels. An earlier
``OUT/<name>`` is kept aside until its replacement is complete. Docs:
docs/index.md.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FiguresConfig", "JOBS", "main"]

# (output folder, module, arguments): the runs behind every committed figure
JOBS = [
    ("toysim-default", "toysim.gap", ["--hypothesis", "all", "--seeds", "5", "--preset", "default"]),
    ("toysim-arena", "toysim.gap", ["--hypothesis", "all", "--seeds", "5", "--preset", "arena"]),
    ("sweep", "toysim.sweep", []),
]
QUICK = {"toysim.gap": ["--quick", "--seeds", "1"], "toysim.sweep": ["--quick", "--seeds", "1", "--x-values", "0.3", "--y-values", "8"]}


@dataclass(frozen=True)
class FiguresConfig:
    """Regenerate the committed toysim results and figures."""

    out: Path = Path("docs/figures")
    """where the figures live (one folder per run, plus its .log)"""
    quick: bool = False
    """a fast, smaller version of every run (for a check; not the committed figures)"""


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
    import importlib

    import tyro

    try:
        cfg = tyro.cli(FiguresConfig, args=argv, prog="python -m toysim.figures", description=__doc__.split("\n\n")[0])
    except SystemExit as e:
        return 0 if e.code in (0, None) else 2
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: cannot write to --out {cfg.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    for name, module, args in JOBS:
        dest, old = cfg.out / name, cfg.out / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        args = args + (QUICK[module] if cfg.quick else []) + ["--out", str(dest)]
        print(f"== {name}: python -m {module} {' '.join(args)}", flush=True)
        with (cfg.out / f"{name}.log").open("w") as log, contextlib.redirect_stdout(_Tee(sys.stdout, log)):
            rc = importlib.import_module(module).main(args)
        if rc != 0:
            shutil.rmtree(dest, ignore_errors=True)
            if old.exists():
                old.rename(dest)
            print(f"error: {name} failed (exit {rc}); the earlier {dest} is kept", file=sys.stderr)
            return rc
        shutil.rmtree(old, ignore_errors=True)
    print(f"wrote {', '.join(str(cfg.out / n) for n, _, _ in JOBS)}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
    raise SystemExit(130)
