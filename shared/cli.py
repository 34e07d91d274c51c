"""Command lines generated from a command's config dataclass (tyro), with bad
arguments reported in one line.

Every entry point (``toysim.gap``, ``toysim.sweep``, ``toysim.bench``,
``toysim.figures``, ``fullscale.run``) parses through ``cli``. Tests:
tests/test_toysim_gap.py and tests/test_fullscale_run.py (bad arguments).
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from pathlib import Path

__all__ = ["cli", "one_line", "ALIASES", "new_run_dir", "claim_run_dir", "output_dir", "threads_problem"]

ALIASES = {"--study": "--hypothesis"}
"""Other spellings of a flag, accepted by every command that has the flag: one concept, one name
(``--hypothesis``, the documented command's) across toysim and fullscale."""

_BOX = "╭╮╰╯│─ "


def one_line(message: str) -> str:
    """The text of tyro's boxed error message on one line: the lines inside the box
    up to its first rule, box drawing removed."""
    words = []
    for line in message.splitlines():
        text = line.strip().strip(_BOX)
        if line.strip().startswith("╭"):
            continue  # the box's title bar
        if not text:
            if words and set(line.strip()) <= set(_BOX):  # a rule inside the box: the message ended
                break
            continue
        words.append(text)
    return " ".join(words) or "invalid arguments"


def _canonical(argv: list[str]) -> list[str]:
    """``argv`` with every alias of ``ALIASES`` (``--study x``, ``--study=x``) spelled canonically."""
    out = []
    for a in argv:
        flag, eq, value = a.partition("=")
        out.append(ALIASES.get(flag, flag) + eq + value if flag in ALIASES else a)
    return out


def new_run_dir(base: Path, name: str) -> Path:
    """A folder for one run that does not exist yet: ``base/<name>-<YYYYmmdd-HHMMSS>``, with
    ``-2``, ``-3``… appended when two runs start in the same second. The convention of the
    field's run loggers (a study name and a timestamp), so a command can be run again as
    printed and never overwrites results. Docs: docs/tutorial.md (A first figure)."""
    stem = base / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, k = stem, 1
    while path.exists():
        k += 1
        path = stem.with_name(f"{stem.name}-{k}")
    return path


def claim_run_dir(base: Path, name: str) -> Path:
    """Create a new run folder ``new_run_dir(base, name)`` atomically and return it; when another
    run created that name first (two runs started in the same second), take the next free one.
    Only a run that writes calls this; an OSError (no permission, ``base`` a file) is the caller's."""
    while True:
        path = new_run_dir(base, name)
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue


def output_dir(out: Path | None, base: Path, name: str) -> tuple[Path | None, str | None]:
    """A writing command's folder: ``out`` when given and not there yet (results are never
    overwritten), else a new one claimed under ``base`` (``claim_run_dir``). Returns (folder,
    None), or (None, a one-line problem)."""
    if out is not None:
        if out.exists():
            return None, f"{out} exists; choose a new --out, or leave it out for a new folder (results are never overwritten)"
        return out, None
    try:
        return claim_run_dir(base, name), None
    except OSError as e:
        return None, f"cannot make a run folder under {base}: {e.strerror or e}"


def threads_problem(threads: int) -> str | None:
    """The one-line problem with a --threads value, or None (0: the cores idle at start-up)."""
    if not 0 <= threads <= 4096:
        return f"--threads must be 0 (the cores idle at start-up) or a count up to 4096, got {threads}"
    return None


def cli(cls, argv: list[str] | None, prog: str, description: str, **kwargs):
    """``tyro.cli(cls, ...)``; a bad argument prints ``error: <tyro's message>`` as one
    line on stderr and raises ``SystemExit(2)``. ``--help`` is untouched; the spellings of
    ``ALIASES`` are accepted."""
    import tyro

    import dataclasses

    argv = sys.argv[1:] if argv is None else list(argv)
    if any(f.name == "hypothesis" for f in dataclasses.fields(cls)):
        argv = _canonical(argv)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return tyro.cli(cls, args=argv, prog=prog, description=description, **kwargs)
    except SystemExit as e:
        if e.code in (0, None):
            sys.stderr.write(err.getvalue())
            raise
        print(f"error: {one_line(err.getvalue())}", file=sys.stderr)
        raise SystemExit(2) from None
