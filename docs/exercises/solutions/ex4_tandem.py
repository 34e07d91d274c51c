"""Reference solution of exercise 4 (docs/exercises/04-tandem.md)."""

import math

from shared.metrics import gap_at_matched_kl, seed_ci


def _runs(results, arm, seed):
    return [r for r in results["arms"][arm] if r["seed"] == seed]


def _curves(results, arm, seed):
    # one (kl, win_rate) curve per run; offline has one per sweep configuration
    return [(r["series"]["kl"], r["series"]["win_rate"]) for r in _runs(results, arm, seed)]


def _gap(results, a, b):
    seeds = sorted({r["seed"] for r in results["arms"][a]} & {r["seed"] for r in results["arms"][b]})
    return seed_ci([gap_at_matched_kl(_curves(results, a, s), _curves(results, b, s)) for s in seeds])


def answer(results: dict) -> dict:
    seeds = sorted({r["seed"] for r in results["arms"]["online"]})
    diff = max(
        abs(a - b)
        for s in seeds
        for a, b in zip(_runs(results, "online", s)[0]["series"]["win_rate"],
                        _runs(results, "replay-ordered", s)[0]["series"]["win_rate"])
    )
    tandem = _gap(results, "online", "tandem")
    return {
        "ordered_max_abs_diff": diff,
        "ordered_reproduces_online": diff <= 1e-3,
        "online_minus_offline": _gap(results, "online", "offline"),
        "online_minus_tandem": tandem,
        "tandem_clearly_below_online": not math.isnan(tandem[1]) and tandem[0] - tandem[1] > 0,
    }
