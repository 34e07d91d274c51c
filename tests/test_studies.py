"""shared/claims.py: the claim rules on synthetic results whose answer is known."""

import math

import numpy as np
import pytest

from shared.results import verdict_from_ci
from shared.claims import CLAIMS, judge
from shared.studies import STUDIES


def _run(seed, kl, wr, **extra):
    return {"seed": seed, "config": {}, "series": {"step": list(range(len(kl))), "kl": list(kl), "win_rate": list(wr), **extra}}


def _curve(offset, n=12, fall=True):
    kl = np.concatenate([[0.0], np.geomspace(0.05, 5, n - 1)])
    x = np.log(np.maximum(kl, 1e-3))
    wr = 0.3 + offset - 0.05 * (x - np.log(1.0)) ** 2 * (1 if fall else 0) + 0.02 * x * (0 if fall else 1)
    wr[0] = 0.2
    return kl, wr


def _results(on_offset, off_offset, seeds=4, noise=0.002):
    rng = np.random.default_rng(0)
    arms = {"online": [], "offline": []}
    for s in range(seeds):
        for arm, off in (("online", on_offset), ("offline", off_offset)):
            kl, wr = _curve(off)
            arms[arm].append(_run(s, kl, wr + rng.normal(0, noise, len(wr))))
    return {"arms": arms, "extras": {}}


def _verdict(results, cid):
    study = next(s for s in STUDIES.values() if cid in s.claims)
    return next(c for c in judge(study, results) if c["id"] == cid)["verdict"]


def test_every_claim_is_tested_by_exactly_one_study():
    ids = [c for s in STUDIES.values() for c in s.claims]
    assert sorted(ids) == sorted(CLAIMS) == list(range(1, 22))  # Tang et al. 2024's 1–18 (README's table), then ours (19–21)


def test_refresh_rule_reads_the_recovered_fractions():
    """Claim 21: an arm refreshed every few steps that recovers the online − offline gap,
    against a one-shot arm that does not, is supported; the reverse is not."""
    def curves(wr_top):
        return [{"seed": s, "config": {}, "series": {"step": [0, 1, 2], "kl": [0.0, 0.5, 1.0],
                                                   "win_rate": [0.5, 0.5 + wr_top / 2 + 0.01 * s, 0.5 + wr_top + 0.01 * s]}} for s in range(3)]

    base = {"online": curves(0.2), "offline": curves(0.0)}
    good = {"arms": {**base, "refresh-4": curves(0.19), "refresh-all": curves(0.02)}, "extras": {}}
    bad = {"arms": {**base, "refresh-4": curves(0.02), "refresh-all": curves(0.19)}, "extras": {}}
    assert CLAIMS[21].judge(good)[0] == "supported"
    assert CLAIMS[21].judge(bad)[0] == "not supported"


def test_claim_2_follows_the_sign_of_the_gap():
    assert _verdict(_results(0.05, 0.0), 2) == "supported"
    assert _verdict(_results(0.0, 0.05), 2) == "not supported"


def test_claim_3_compares_peaks():
    assert _verdict(_results(0.05, 0.0), 3) == "supported"
    assert _verdict(_results(-0.05, 0.0), 3) == "not supported"


def test_claim_1_needs_a_fall():
    assert _verdict(_results(0.0, 0.0), 1) == "supported"
    r = _results(0.0, 0.0)
    for run in r["arms"]["online"]:
        run["series"]["win_rate"] = sorted(run["series"]["win_rate"])  # monotone: no over-optimisation
    assert _verdict(r, 1) in ("mixed", "not supported")


def test_claim_4_is_exact_replay():
    r = _results(0.05, 0.0)
    r["arms"]["replay-ordered"] = [dict(run) for run in r["arms"]["online"]]
    assert _verdict(r, 4) == "supported"
    r["arms"]["replay-ordered"] = [_run(run["seed"], run["series"]["kl"], np.array(run["series"]["win_rate"]) + 0.01)
                                   for run in r["arms"]["online"]]
    assert _verdict(r, 4) == "not supported"


def test_missing_arms_are_not_tested_not_guessed():
    r = {"arms": {"online": _results(0.0, 0.0)["arms"]["online"]}, "extras": {}}
    assert _verdict(r, 2) == "not tested"
    assert _verdict(r, 13) == "not tested"


def test_not_tested_names_only_the_arms_that_did_not_run():
    """Population mode runs online-bo2 and offline-bo2 but no replay: claim 13 names tandem-bo2 alone."""
    base = _results(0.0, 0.0)["arms"]
    r = {"arms": {"online-bo2": base["online"], "offline-bo2": base["offline"]}, "extras": {}}
    claim = next(c for c in judge(STUDIES["contrastive"], r) if c["id"] == 13)
    assert claim["verdict"] == "not tested" and claim["evidence"] == "arms missing: tandem-bo2"
    r = {"arms": {"online@1": base["online"]}, "extras": {}}  # the scale rule needs two capacities
    claim = next(c for c in judge(STUDIES["scale"], r) if c["id"] == 14)
    assert claim["evidence"] == "arms missing: online@* (too few of them ran)"


def test_claim_5_tandem_between():
    r = _results(0.05, 0.0)
    r["arms"]["tandem"] = [_run(run["seed"], run["series"]["kl"], np.array(run["series"]["win_rate"]) + 0.005)
                           for run in r["arms"]["offline"]]
    assert _verdict(r, 5) == "supported"
    r["arms"]["tandem"] = [dict(run) for run in r["arms"]["online"]]
    assert _verdict(r, 5) == "not supported"


@pytest.mark.parametrize("mean, half, expected", [
    (0.1, 0.05, "supported"), (-0.1, 0.05, "not supported"), (0.01, 0.05, "mixed"),
    (0.1, math.nan, "supported"), (math.nan, 0.1, "inconclusive"),
])
def test_verdict_from_ci(mean, half, expected):
    assert verdict_from_ci(mean, half) == expected


def test_fraction_rules_do_not_rest_on_a_minority_of_seeds():
    """If online beats offline in only 1 of 4 seeds, 'fraction of the gap recovered' is undefined."""
    r = _results(0.0, 0.05)  # offline better in every seed ...
    kl, wr = _curve(0.1)
    r["arms"]["online"][0] = _run(0, kl, wr)  # ... except seed 0
    r["arms"]["tandem"] = [dict(run) for run in r["arms"]["offline"]]
    r["arms"]["window-4"] = [dict(run) for run in r["arms"]["online"]]
    assert _verdict(r, 5) == "inconclusive"
    assert _verdict(r, 6) == "inconclusive"  # a window arm ran, but no gap is defined


def test_claim_10_uses_absolute_correlation_per_seed():
    """Seeds with r = +0.9 and r = −0.9 must not average into 'uncorrelated'."""
    arms = {"offline": []}
    for s, sign in ((0, 1), (1, -1), (2, 1), (3, -1)):
        for k in range(4):
            wr = [0.2, 0.3 + 0.05 * k, 0.25]
            acc = [0.5, 0.5 + sign * 0.05 * k + 0.001 * (k % 2), 0.5]
            arms["offline"].append(_run(s, [0.0, 0.5, 1.0], wr, acc_golden=acc))
    assert _verdict({"arms": arms, "extras": {}}, 10) == "not supported"


def test_scale_rule_with_a_peak_at_sft_is_not_a_crash():
    """A peak at step 0 (KL 0) leaves the KL-at-peak ratio undefined, not a ZeroDivisionError."""
    from shared.claims import CLAIMS

    def run(wr, kl):
        return [{"seed": 0, "config": {}, "series": {"step": [0, 1, 2], "kl": kl, "win_rate": wr}}]

    res = {"arms": {"online@0.25": run([0.5, 0.4, 0.3], [0.0, 0.1, 0.2]), "online@4": run([0.5, 0.7, 0.6], [0.0, 0.1, 0.2])}}
    verdict, evidence = CLAIMS[14].judge(res)
    assert verdict in ("not supported", "mixed") and "undefined" in evidence
