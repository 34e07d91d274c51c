"""Compare two results.json trees (docs/results-schema.md) the way a reproduction is judged:
every number within a stated tolerance, verdicts and every other word exactly.

Why a tolerance at all: floating-point results differ in their last digits from one
CPU to another (vectorised kernels and reduction orders differ) and with the number
of threads; see docs/tutorial.md § "How far results move between machines". Used by
tests/test_figures.py (toysim's committed results) and tests/test_fullscale_run.py
(determinism and resume, where the tolerance is zero).
"""

from __future__ import annotations

import math
import re

__all__ = ["differences"]

_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def _close(x: float, y: float, rel: float, abs_: float) -> bool:
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return math.isclose(x, y, rel_tol=rel, abs_tol=abs_)


def _text_diff(a: str, b: str, rel: float, abs_: float) -> str | None:
    """Texts with numbers in them (a claim's evidence, "+0.019 ± 0.013"): the words must be equal,
    each printed number close. A number printed with d decimals may also differ by one unit in
    its last place (a value within tolerance can round the other way), unless the tolerance is 0."""
    if _NUMBER.sub("#", a) != _NUMBER.sub("#", b):
        return f"{a!r} != {b!r}"
    for u, v in zip(_NUMBER.findall(a), _NUMBER.findall(b)):
        places = len(u.split("e")[0].split("E")[0].partition(".")[2])
        unit = 10.0 ** -places if places and (rel or abs_) else 0.0  # no slack when comparing exactly
        if u != v and not _close(float(u), float(v), rel, abs_ + unit * (1 + 1e-9)):
            return f"{u} != {v} in {a!r}"
    return None


def differences(a, b, rel: float = 0.0, abs_: float = 0.0, path: str = "", exact_keys=("verdict",),
                by_key: dict[str, tuple[float, float]] | None = None) -> list[str]:
    """Where ``a`` and ``b`` differ beyond the tolerance, as "path: what" lines (empty: they match).

    Dicts must have the same keys, lists the same length; booleans, integers and the values
    of ``exact_keys`` (the claims' verdicts) must be equal; floats satisfy
    ``math.isclose(rel_tol=rel, abs_tol=abs_)`` (NaN matches NaN); strings are compared by
    ``_text_diff``. ``by_key``: {key prefix: (rel, abs)}, another tolerance for the values
    under a dict key that starts with the prefix."""
    here = path or "."
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{here}: keys differ: {sorted(set(a) ^ set(b))}"]
        out = []
        for k in a:
            sub = f"{path}.{k}" if path else str(k)
            if k in exact_keys:
                out += [] if a[k] == b[k] else [f"{sub}: {a[k]!r} != {b[k]!r} (compared exactly)"]
                continue
            r, t = next((tol for p, tol in (by_key or {}).items() if str(k).startswith(p)), (rel, abs_))
            out += differences(a[k], b[k], r, t, sub, exact_keys, by_key)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{here}: lengths {len(a)} != {len(b)}"]
        return [d for i, (u, v) in enumerate(zip(a, b)) for d in differences(u, v, rel, abs_, f"{path}[{i}]", exact_keys, by_key)]
    if isinstance(a, bool) or isinstance(b, bool) or (isinstance(a, int) and isinstance(b, int)):
        return [] if a == b and type(a) is type(b) else [f"{here}: {a!r} != {b!r}"]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return [] if _close(float(a), float(b), rel, abs_) else [f"{here}: {a!r} != {b!r} (|diff| {abs(a - b):.3g})"]
    if isinstance(a, str) and isinstance(b, str):
        d = _text_diff(a, b, rel, abs_)
        return [] if d is None else [f"{here}: {d}"]
    return [] if a == b else [f"{here}: {a!r} != {b!r}"]
