"""Known answers for the claim rules of shared.claims: for each rule, small synthetic results
where it must say "supported" and results where it must not. (Claims 1–5, 10 and 21 have
more cases in tests/test_studies.py.) The results use the schema of docs/results-schema.md;
curves share one KL grid, so a gap at matched KL is the difference of win-rate offsets."""

import numpy as np
import pytest

from shared.claims import CLAIMS

KL = [0.0, 0.05, 0.2, 0.5, 1.0, 2.0, 5.0]
SHAPE = np.array([0.0, 0.05, 0.10, 0.14, 0.12, 0.08, 0.04])  # rises, then falls (over-optimisation)


def run(seed, wr, kl=KL, **series):
    wr = list(map(float, wr))
    return {"seed": seed, "config": {}, "series": {"step": list(range(len(wr))), "kl": list(kl), "win_rate": wr,
                                                   **{k: list(map(float, v)) for k, v in series.items()}}}


def arm(offset, seeds=3, **series):
    """Runs of one arm: the common curve shape raised by ``offset``, a little seed jitter."""
    return [run(s, 0.3 + SHAPE + offset + 0.002 * s, **series) for s in range(seeds)]


def verdict(cid, arms, **extras):
    return CLAIMS[cid].judge({"arms": arms, "extras": extras})[0]


def test_claim_6_windows_recover_the_gap_and_degrade_as_they_grow():
    base = {"online": arm(0.10), "offline": arm(0.0)}
    good = {**base, "window-4": arm(0.095), "window-32": arm(0.05), "tandem": arm(0.01)}
    assert verdict(6, good) == "supported"
    bad = {**base, "window-4": arm(0.01), "window-32": arm(0.05), "tandem": arm(0.09)}
    assert verdict(6, bad) == "not supported"


def test_claim_7_data_of_the_final_online_policy_barely_beats_sft():
    online = [run(s, [0.2, 0.4, 0.5 + 0.01 * s]) for s in range(3)]  # gains 0.3 over SFT by the end
    assert verdict(7, {"online": online, "self-final": [run(s, [0.2, 0.22, 0.21]) for s in range(3)]}) == "supported"
    assert verdict(7, {"online": online, "self-final": [run(s, [0.2, 0.45, 0.40]) for s in range(3)]}) == "not supported"


def _classifiers(proxy, online_acc, offline_acc):
    kl = [0.0, 0.5, 1.0]
    online = [run(s, [0.2, 0.4, 0.5], kl, acc_online_pairs=online_acc, proxy_acc_online_pairs=proxy) for s in range(3)]
    offline = [run(s, [0.2, 0.3, 0.35], kl, acc_online_pairs=offline_acc) for s in range(3)]
    return {"online": online, "offline": offline}


def test_claim_8_the_proxy_classifies_online_pairs_better_and_decays():
    assert verdict(8, _classifiers([0.8, 0.8, 0.7], [0.5, 0.6, 0.6], [0.5, 0.55, 0.6])) == "supported"
    assert verdict(8, _classifiers([0.5, 0.5, 0.6], [0.5, 0.7, 0.7], [0.5, 0.7, 0.7])) == "not supported"


def test_claim_8_an_offline_policy_that_classifies_better_than_the_proxy_is_not_supported():
    assert verdict(8, _classifiers([0.8, 0.8, 0.7], [0.5, 0.6, 0.6], [0.5, 0.9, 0.9])) != "supported"


def test_a_rule_without_its_arms_is_not_tested():
    """No arms at all: every rule says "not tested", never a guess; so do the rules that compare
    online with offline (1, 11) given online alone, and the scale rules (14, 15) given one capacity."""
    for cid in CLAIMS:
        v, evidence = CLAIMS[cid].judge({"arms": {}, "extras": {}})
        assert v == "not tested", (cid, evidence)
    one = {"online": arm(0.1), "online@1": arm(0.1), "tandem@1": arm(0.0), "offline@1": arm(0.0)}
    for cid in (1, 11, 14, 15):
        v, evidence = CLAIMS[cid].judge({"arms": one, "extras": {}})
        assert v == "not tested" and evidence.startswith("arms missing"), (cid, evidence)


def test_claim_9_offline_classifies_d_golden_better():
    on, off = arm(0.1, acc_golden=[0.5] * 7), arm(0.0, acc_golden=[0.5] * 6 + [0.7])
    assert verdict(9, {"online": on, "offline": off}) == "supported"
    assert verdict(9, {"online": off, "offline": on}) == "not supported"


def test_claim_10_accuracy_uncorrelated_with_win_rate():
    """Four sweep runs per seed whose accuracies at their peaks (0.6, 0.5, 0.5, 0.6) have zero
    correlation with their peak win rates (0.30 … 0.45)."""
    runs = [run(s, [0.2, 0.3 + 0.05 * k, 0.25], [0.0, 0.5, 1.0], acc_golden=[0.5, (0.6, 0.5, 0.5, 0.6)[k] + 0.001 * s, 0.5])
            for s in range(3) for k in range(4)]
    assert verdict(10, {"offline": runs}) == "supported"


def test_claim_11_chosen_likelihood_falls_most_for_offline():
    def shifts(final_on, final_off):
        return {"online": arm(0.1, chosen_logp_shift=[0] * 6 + [final_on]),
                "offline": arm(0.0, chosen_logp_shift=[0] * 6 + [final_off])}
    assert verdict(11, shifts(-1.0, -3.0)) == "supported"
    assert verdict(11, shifts(0.5, 1.0)) == "not supported"
    assert verdict(11, shifts(-3.0, -1.0)) == "mixed"  # both fall, but online more


def test_claim_12_no_policy_classifies_its_own_samples_above_chance():
    def own(acc):
        return {"online": arm(0.1, acc_self=[0.5] + [acc] * 6), "offline": arm(0.0, acc_self=[0.5] + [acc] * 6)}
    assert verdict(12, own(0.52)) == "supported"
    assert verdict(12, own(0.70)) == "not supported"


def test_claim_13_bo2_online_beats_offline_and_tandem_recovers():
    good = {"online-bo2": arm(0.10), "offline-bo2": arm(0.0), "tandem-bo2": arm(0.095)}
    assert verdict(13, good) == "supported"
    bad = {"online-bo2": arm(0.0), "offline-bo2": arm(0.10), "tandem-bo2": arm(0.0)}
    assert verdict(13, bad) == "not supported"


def _scaled(peaks, kl_peak_index=(3, 3)):
    arms = {}
    for (cap, p), i in zip(peaks.items(), kl_peak_index):
        wr = np.full(7, 0.3)
        wr[i] = p
        arms[f"online@{cap}"] = [run(s, wr + 0.001 * s) for s in range(3)]
    return arms


def test_claim_14_larger_policies_peak_higher_at_a_similar_kl():
    assert verdict(14, _scaled({"0.25": 0.4, "4": 0.5})) == "supported"
    assert verdict(14, _scaled({"0.25": 0.5, "4": 0.4})) == "not supported"
    assert verdict(14, _scaled({"0.25": 0.4, "4": 0.5}, kl_peak_index=(1, 6))) == "mixed"  # KL at peak 100× apart


def test_claim_15_tandem_approaches_online_with_scale_before_offline():
    def arms(tandem_small, tandem_large, offline_small, offline_large):
        out = {}
        for cap, t, o in (("0.25", tandem_small, offline_small), ("4", tandem_large, offline_large)):
            out[f"online@{cap}"], out[f"tandem@{cap}"], out[f"offline@{cap}"] = arm(0.2), arm(0.2 * t), arm(0.2 * o)
        return out
    assert verdict(15, arms(0.2, 0.9, 0.2, 0.3)) == "supported"
    assert verdict(15, arms(0.2, 0.3, 0.2, 0.9)) == "not supported"


def test_claim_16_wider_separation_does_not_help():
    assert verdict(16, {"sft-vs-800": arm(0.05), "sft-vs-4k": arm(0.05)}) == "supported"
    assert verdict(16, {"sft-vs-800": arm(0.0), "sft-vs-4k": arm(0.05)}) == "not supported"


def test_claim_17_proximity_to_sft_beats_separation_and_d_golden_is_hard_to_beat():
    good = {"sft-vs-800": arm(0.05), "800-vs-4k": arm(0.0), "offline": arm(0.05)}
    assert verdict(17, good) == "supported"
    bad = {"sft-vs-800": arm(0.0), "800-vs-4k": arm(0.05), "offline": arm(0.0)}
    assert verdict(17, bad) == "not supported"


def test_claim_18_reads_the_closed_form_checks():
    th = {"tolerance": 1e-4, "a_tv": 1e-6, "b_tv": 2e-6, "dpo_det_max_prob": 0.999, "ipo_det_prob": 0.7311,
          "ipo_det_closed_form": 0.7311}
    assert verdict(18, {}, theory=th) == "supported"
    assert verdict(18, {}, theory={**th, "b_tv": 1e-2}) == "not supported"
    assert verdict(18, {}, theory={**th, "dpo_det_max_prob": 0.9}) == "not supported"  # DPO did not collapse


def test_claim_19_reads_the_equivalence_checks():
    e = {"tolerance": 1e-4, "tv_rlhf_vs_dpo": 1e-6, "tv_rlhf_vs_closed_form": 2e-6, "tv_dpo_vs_closed_form": 1e-6,
         "tv_sft_vs_closed_form": 0.3}
    assert verdict(19, {}, equivalence=e) == "supported"
    assert verdict(19, {}, equivalence={**e, "tv_rlhf_vs_dpo": 1e-2}) == "not supported"


def test_claim_20_rlhf_at_least_offline_dpo_at_matched_kl():
    assert verdict(20, {"rlhf": arm(0.05), "offline-dpo": arm(0.0)}) == "supported"
    assert verdict(20, {"rlhf": arm(0.0), "offline-dpo": arm(0.05)}) == "not supported"


@pytest.mark.parametrize("cid", sorted(CLAIMS))
def test_every_rule_has_a_known_answer_test(cid):
    """Claims 1–5, 10 and 21: tests/test_studies.py; the rest: this file."""
    import inspect
    import sys
    from pathlib import Path

    here = inspect.getsource(sys.modules[__name__])
    there = (Path(__file__).parent / "test_studies.py").read_text()
    assert f"verdict({cid}," in here or f"_claim_{cid}_" in here or f"_claim_{cid}_" in there or f"CLAIMS[{cid}]" in there
