"""What every command shares: a command line generated from its config dataclass (tyro), a bad
argument reported in one line (``cli``, ``fail``), the start of a run (``prelude``: its seeds, its
threads, its own folder), a progress bar, and atomic JSON writes.

Every entry point (``toysim.gap``, ``toysim.sweep``, ``toysim.search``, ``toysim.displacement``,
``toysim.bench``, ``toysim.figures``, ``fullscale.run``, ``fullscale.bench``) parses through ``cli``.
Tests: tests/test_cli.py, tests/test_toysim_gap.py and tests/test_fullscale_run.py (bad arguments).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from shared.machine import apply_threads

__all__ = ["cli", "one_line", "ALIASES", "fail", "progress", "write_json", "prelude", "new_run_dir", "claim_run_dir", "output_dir",
           "threads_problem", "seeds_problem"]

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


def output_dir(out: Path | None, base: Path, name: str, exists_hint: str = "") -> tuple[Path | None, str | None]:
    """A writing command's folder: ``out`` when given and not there yet (results are never
    overwritten), else a new one claimed under ``base`` (``claim_run_dir``). Returns (folder,
    None), or (None, a one-line problem; ``exists_hint`` ends the one for an existing ``out``)."""
    if out is not None:
        if out.exists():
            return None, f"{out} exists; choose a new --out, or leave it out for a new folder (results are never overwritten){exists_hint}"
        return out, None
    try:
        return claim_run_dir(base, name), None
    except OSError as e:
        return None, f"cannot make a run folder under {base}: {e.strerror or e}"


def fail(message: str) -> int:
    """A bad input: ``error: <message>`` as one line on stderr; returns exit code 2 for the command to return."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def progress(total: int, desc: str, width: int = 16):
    """A progress bar on stderr for ``total`` steps (tqdm), removed when done; none when stderr is
    not a terminal."""
    return tqdm(total=total, desc=f"{desc:>{width}}", file=sys.stderr, leave=False, mininterval=0.5, disable=None)


def write_json(path: Path, obj, sort_keys: bool = True, **kwargs) -> None:
    """Write ``obj`` as JSON to ``path`` atomically: to a side file first, then renamed, so a kill
    never leaves half a file (a results.json, a search.json)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=sort_keys, **kwargs))
    os.replace(tmp, path)


def seeds_problem(seeds: int, low: int, high: int, flag: str = "--seeds") -> str | None:
    """The one-line problem with a seed count, or None: from ``low`` (2 where an interval is read)
    to ``high`` (every seed trains at once, so memory grows with them)."""
    if not low <= seeds <= high:
        need = "a confidence interval needs two seeds; " if low > 1 else ""
        return f"{flag} must be from {low} to {high} ({need}all seeds train at once: memory grows with them), got {seeds}"
    return None


def prelude(cfg, base: Path, name: str, problems=(), make: bool = True, exists_hint: str = ""):
    """The start every writing toysim command shares, in order: the command's own problems
    (``problems``, one-line texts or None), ``--threads``, then its folder (``output_dir``: ``cfg.out``
    when it does not exist yet, else a new ``base/<name>-<time>``, made only once the inputs are
    good), and torch's thread count set (``shared.machine.apply_threads``). Returns ``cfg`` with
    ``out`` resolved, or the exit code 2 after one line on stderr. ``make=False``: a given
    ``cfg.out`` may exist (the caller checks what it holds); ``exists_hint`` is added to the line
    that refuses an existing ``--out``."""
    problem = next((p for p in [*problems, threads_problem(cfg.threads)] if p), None)
    if problem is None and (make or cfg.out is None):
        out, problem = output_dir(cfg.out, base, name, exists_hint)
        cfg = dataclasses.replace(cfg, out=out)
    if problem:
        return fail(problem)
    apply_threads(cfg.threads)
    return cfg


def resume_from(cfg, filename: str, keys: tuple[str, ...]) -> tuple[dict | None, str | None]:
    """``--resume`` of a search that writes ``cfg.out/filename`` as it goes (toysim.search,
    toysim.judge): (the earlier results, None), or (None, the one-line problem) when the file is
    unreadable or was made with other settings (``keys`` of its recorded config against ``cfg``'s)."""
    path = cfg.out / filename
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"cannot resume: {path} unreadable ({e})"
    was = {k: done.get("config", {}).get(k) for k in keys}
    now = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items() if k in was}
    if was != now:
        return None, f"cannot resume: {cfg.out} holds a search with {was}; resume it with the same settings"
    return done, None


def threads_problem(threads: int) -> str | None:
    """The one-line problem with a --threads value, or None (0: the cores idle at start-up)."""
    if not 0 <= threads <= 4096:
        return f"--threads must be 0 (the cores idle at start-up) or a count up to 4096, got {threads}"
    return None


def cli(cls, argv: list[str] | None, prog: str, description: str, **kwargs):
    """``tyro.cli(cls, ...)``; a bad argument prints ``error: <tyro's message>`` as one
    line on stderr and raises ``SystemExit(2)``. ``--help`` is untouched; the spellings of
    ``ALIASES`` are accepted."""
    import tyro  # lazily: a second to import, and only a command line needs it

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
