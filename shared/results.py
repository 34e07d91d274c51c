"""Reading a results dict: the accessors the claim rules and the reports share.

Docs: docs/results-schema.md. Tests: tests/test_studies.py.

The one writer of the schema too: ``results_header`` and ``run_record`` are what both backends
fill; ``best_run`` and ``first_series`` the two ways every reader picks a run.

Schema (what the rules read):

    results["arms"][arm_name] = [run, ...]
    run = {"seed": int, "config": {...},
           "series": {"step": [...], "kl": [...], "win_rate": [...], ...}}

An arm with a hyper-parameter sweep has several runs per seed; ``curves`` returns
them all and ``gap`` pools them by their upper envelope (Tang et al. 2024, §3).
"""

from __future__ import annotations

import math

from shared.metrics import budget_gap as metrics_budget_gap
from shared.metrics import gap_at_matched_kl, seed_ci
from shared.studies import STUDIES

__all__ = ["results_header", "run_record", "arm_order", "seeds_of", "runs_of", "best_run", "first_series", "curves", "peak", "final",
           "per_seed", "gap", "budget_gap", "has", "has_halves", "ci_over_seeds", "verdict_from_ci", "fmt"]


def results_header(study, preset: str, mode: str, seeds: int, config: dict, setting: str, **more) -> dict:
    """The top of a results dict (docs/results-schema.md), before its arms are filled in: the study's
    name and question, the preset, the mode, the seeds per arm, the resolved config, and
    ``setting``, one line saying what the backend ran (toysim: its mode; fullscale: its data and
    models) that the report prints under the study's heading; ``more``: backend-specific keys."""
    return {"study": study.name, "question": study.question, "preset": preset, "mode": mode, "seeds": seeds, **more,
            "config": config, "setting": setting, "arms": {}, "extras": {}}


def run_record(seed: int, config: dict, arm, series: dict, **more) -> dict:
    """One run of an arm in the results schema: its seed, its config (the sweep's lr, β and steps,
    with the arm's loss, labels and capacity), its metric series, and any ``more`` (fullscale: the
    per-step training loss). Docs: docs/results-schema.md."""
    return {"seed": seed, "config": {**config, "loss": arm.loss, "labels": arm.labels, "capacity": arm.capacity}, "series": series,
            **more}


def ci_over_seeds(values) -> tuple[float, float]:
    """``shared.metrics.seed_ci`` (Student 1908) over the seeds where the quantity is defined,
    or (nan, nan) when fewer than half of them are (a verdict must not rest on a selected minority)."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals or len(vals) < len(values) / 2:
        return math.nan, math.nan
    return seed_ci(vals)


def verdict_from_ci(mean: float, half: float, tol: float = 0.0) -> str:
    """'supported' if the CI lies above ``tol``, 'not supported' if below it,
    else 'mixed'. With one seed (half = nan) the sign of mean − tol decides.
    'inconclusive' when the quantity is undefined (nan: e.g. no KL overlap)."""
    if math.isnan(mean):
        return "inconclusive"
    if math.isnan(half):
        return "supported" if mean > tol else "not supported"
    if mean - half > tol:
        return "supported"
    if mean + half < tol:
        return "not supported"
    return "mixed"


def fmt(mean: float, half: float) -> str:
    """A mean ± CI half-width as evidence text ("undefined" for nan)."""
    if math.isnan(mean):
        return "undefined"
    return f"{mean:+.3f} ± {half:.3f}" if not math.isnan(half) else f"{mean:+.3f}"


def seeds_of(results: dict, arm: str) -> list[int]:
    """The seeds an arm ran, sorted."""
    return sorted({r["seed"] for r in results["arms"][arm]})


def runs_of(results: dict, arm: str, seed: int) -> list[dict]:
    """An arm's runs for one seed (several for a sweep)."""
    return [r for r in results["arms"][arm] if r["seed"] == seed]


def best_run(runs: list[dict]) -> dict:
    """The run of a sweep with the highest peak win rate (Tang et al. 2024, §3: offline's best curve
    of its lr × β sweep is the one compared)."""
    return max(runs, key=lambda r: max(r["series"]["win_rate"]))


def first_series(results: dict, arm: str, seed: int) -> dict:
    """The series of an arm's first run for one seed: the run of an arm without a sweep (docs/results-schema.md)."""
    return runs_of(results, arm, seed)[0]["series"]


def curves(results: dict, arm: str, seed: int, crossfit: bool = True):
    """(kl, win_rate) series of each of an arm's runs for one seed, or (kl, win_rate_a,
    win_rate_b) where the backend estimated win rates on two halves of its evaluation
    prompts (fullscale), so that envelopes over a sweep are cross-fitted
    (``shared.metrics.envelope_on_grid``); toysim's win rates are exact and have no halves.
    ``crossfit=False``: the full-set win rates, for the plain envelope."""
    runs = runs_of(results, arm, seed)
    if crossfit and all("win_rate_a" in r["series"] for r in runs):
        return [(r["series"]["kl"], r["series"]["win_rate_a"], r["series"]["win_rate_b"]) for r in runs]
    return [(r["series"]["kl"], r["series"]["win_rate"]) for r in runs]


def peak(results: dict, arm: str, seed: int) -> float:
    """Peak win rate over checkpoints, best over a sweep's runs (Tang et al. 2024, §3 and Fig. 2)."""
    return max(max(r["series"]["win_rate"]) for r in runs_of(results, arm, seed))


def final(results: dict, arm: str, seed: int, key: str) -> float:
    """Last checkpoint's value of ``key``, best over a sweep's runs by win rate."""
    return best_run(runs_of(results, arm, seed))["series"][key][-1]


def per_seed(results: dict, arms: tuple[str, ...], fn) -> list[float]:
    """``fn(seed)`` for every seed all of ``arms`` ran."""
    common = set.intersection(*(set(seeds_of(results, a)) for a in arms))
    return [fn(s) for s in sorted(common)]


def gap(results: dict, a: str, b: str, crossfit: bool = True) -> tuple[float, float]:
    """Win rate of a minus b at matched KL (Tang et al. 2024, Fig. 2; ``shared.metrics.gap_at_matched_kl``),
    mean and CI half-width over seeds; cross-fitted where the results have win-rate halves (``curves``)."""
    def one(s):
        return gap_at_matched_kl(curves(results, a, s, crossfit), curves(results, b, s, crossfit))

    return ci_over_seeds(per_seed(results, (a, b), one))


def budget_gap(results: dict, a: str, b: str) -> tuple[float, float]:
    """The budget gap of a over b (``shared.metrics.budget_gap``; docs/judge.md, R5) on the
    full-set win rates, mean and CI half-width over seeds."""
    def one(s):
        return metrics_budget_gap(curves(results, a, s, crossfit=False), curves(results, b, s, crossfit=False))

    return ci_over_seeds(per_seed(results, (a, b), one))


def has_halves(results: dict, arm: str) -> bool:
    """Whether an arm's win rates were also measured on two halves of the evaluation prompts."""
    return all("win_rate_a" in r["series"] for r in results["arms"][arm])


def arm_order(results: dict) -> list[str]:
    """The results' arms in the order their study declares them (``shared.studies.STUDIES``),
    then any others as listed: a results.json written with sorted keys reads like the run.
    Docs: docs/results-schema.md."""
    study = STUDIES.get(results["study"])
    declared = [a.name for a in study.arms if a.name in results["arms"]] if study else []
    return declared + [a for a in results["arms"] if a not in declared]


def has(results: dict, *arms: str) -> bool:
    """Whether the results hold runs of every one of ``arms``."""
    return all(a in results.get("arms", {}) and results["arms"][a] for a in arms)
