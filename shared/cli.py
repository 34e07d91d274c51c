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

__all__ = ["cli", "one_line"]

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


def cli(cls, argv: list[str] | None, prog: str, description: str, **kwargs):
    """``tyro.cli(cls, ...)``; a bad argument prints ``error: <tyro's message>`` as one
    line on stderr and raises ``SystemExit(2)``. ``--help`` is untouched."""
    import tyro

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
