"""The claims of the study and the rules that judge them from results: how results become verdicts.

Docs: README (the claims table), docs/studies/*.md. Tests: tests/test_claim_rules.py, tests/test_studies.py.

Each ``Claim`` is a statement of Tang et al. 2024 (§3–5; 1–18) or of this project (19–21)
and a rule: a function of a results dict (``shared.results``, docs/results-schema.md) that
returns a verdict ("supported", "not supported", "mixed", "inconclusive" or "not tested")
and the evidence it was computed from. The rules read arms by name and their declared
fields (``shared.studies.ARMS``); ``judge`` runs a study's rules. Numbers carry the mean and
the half-width ``half`` of a 95% interval over seeds (``shared.results.ci_over_seeds``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from shared.metrics import gap_at_matched_kl
from shared.results import (best_run, ci_over_seeds, curves, final, first_series, fmt, gap, has, has_halves, peak, per_seed, runs_of,
                            seeds_of, verdict_from_ci)
from shared.studies import ARMS, Arm, Study, scale_arms

__all__ = ["Claim", "CLAIMS", "judge"]


@dataclass(frozen=True)
class Claim:
    """A claim (the README's claims table: Tang et al. 2024 §3–5, or ours) and the rule that judges it from results."""

    id: int
    statement: str
    judge: Callable[[dict], tuple[str, str]]


def _missing(results: dict, *arms: str) -> tuple[str, str]:
    """"not tested", naming those of ``arms`` the results lack ("window-*": any window arm); when
    each is there but a rule needs more of them (two scale arms, say), all of them."""
    present = set(results.get("arms", {}))
    absent = [a for a in arms if not (any(p.startswith(a[:-1]) for p in present) if a.endswith("*") else a in present)]
    return "not tested", "arms missing: " + ", ".join(absent or arms) + ("" if absent else " (too few of them ran)")


def _declared(results: dict, keep) -> list[Arm]:
    """The declared arms (``ARMS``) the results hold that satisfy ``keep``."""
    return [ARMS[a] for a in results["arms"] if a in ARMS and keep(ARMS[a])]


# ---------------------------------------------------------------- claim rules
def _rise_then_fall(results: dict) -> tuple[str, str]:
    arms = [a for a in ("online", "offline") if has(results, a)]
    if len(arms) < 2:
        return _missing(results, "online", "offline")
    parts, ok = [], []
    for a in arms:
        flags = []
        for s in seeds_of(results, a):
            for r in (runs_of(results, a, s)[:1] if a == "online"
                      else [best_run(runs_of(results, a, s))]):
                wr = np.asarray(r["series"]["win_rate"])
                i = int(wr.argmax())
                flags.append(0 < i < len(wr) - 1 and wr[i] - wr[-1] > 0.005 and wr[i] - wr[0] > 0.005)
        frac = float(np.mean(flags))
        ok.append(frac >= 0.8)
        parts.append(f"{a}: peak strictly inside and final < peak − 0.005 in {frac:.0%} of seeds")
    return ("supported" if all(ok) else "mixed" if any(ok) else "not supported"), "; ".join(parts)


def _online_ge_offline(results):
    if not has(results, "online", "offline"):
        return _missing(results, "online", "offline")
    m, half = gap(results, "online", "offline")
    evidence = f"win rate online − offline at matched KL: {fmt(m, half)}"
    if has_halves(results, "online") and has_halves(results, "offline"):
        # estimated win rates: the envelope over the sweep is cross-fitted; the plain one is biased towards offline
        evidence += (" (cross-fitted over halves of the evaluation prompts; plain envelope: "
                     f"{fmt(*gap(results, 'online', 'offline', crossfit=False))})")
    return verdict_from_ci(m, half), evidence


def _online_peak(results):
    if not has(results, "online", "offline"):
        return _missing(results, "online", "offline")
    m, half = ci_over_seeds(per_seed(results, ("online", "offline"), lambda s: peak(results, "online", s) - peak(results, "offline", s)))
    return verdict_from_ci(m, half), f"peak win rate online − best-of-sweep offline: {fmt(m, half)}"


def _ordered_replay(results):
    if not has(results, "online", "replay-ordered"):
        return _missing(results, "online", "replay-ordered")
    diffs = per_seed(results, ("online", "replay-ordered"), lambda s: float(np.max(np.abs(
        np.asarray(first_series(results, "online", s)["win_rate"])
        - np.asarray(first_series(results, "replay-ordered", s)["win_rate"])))))
    worst = max(diffs)
    return ("supported" if worst <= 1e-3 else "not supported"), (
        f"max |win-rate difference| vs online over checkpoints and seeds: {worst:.2e} (threshold 1e-3)")


def _recovered(results, arm, lo="offline", hi="online"):
    """Fraction of the hi − lo gap at matched KL that ``arm`` recovers, over the seeds
    where hi beats lo (undefined, nan, when that is fewer than half of them)."""
    def f(s):
        g = gap_at_matched_kl(curves(results, hi, s), curves(results, lo, s))
        return gap_at_matched_kl(curves(results, arm, s), curves(results, lo, s)) / g if g > 0 else math.nan
    return ci_over_seeds(per_seed(results, (arm, lo, hi), f))


def _tandem(results):
    if not has(results, "online", "offline", "tandem"):
        return _missing(results, "online", "offline", "tandem")
    m_t, half_t = gap(results, "online", "tandem")
    r, half_r = _recovered(results, "tandem")
    evidence = (f"online − tandem at matched KL: {fmt(m_t, half_t)}; tandem recovers {fmt(r, half_r)} "
                "of the online − offline gap (supported needs < 0.5)")
    if math.isnan(r):
        return "inconclusive", evidence + "; online does not beat offline here, so no gap is defined"
    below_half = verdict_from_ci(0.5 - r, half_r)
    if verdict_from_ci(m_t, half_t) == "supported" and below_half == "supported":
        return "supported", evidence
    return ("not supported" if below_half == "not supported" else "mixed"), evidence


def _windows(results):
    windows = _declared(results, lambda a: a.source == "replay" and a.params["stream"] == "online" and a.params["window"] > 1)
    arms = [a.name for a in sorted(windows, key=lambda a: a.params["window"])]
    if not arms or not has(results, "online", "offline"):
        return _missing(results, "online", "offline", "window-*")
    rec = [(a, *_recovered(results, a)) for a in arms] + ([("tandem", *_recovered(results, "tandem"))] if has(results, "tandem") else [])
    vals = [m for _, m, _ in rec]
    if any(math.isnan(v) for v in vals):
        return "inconclusive", "online does not beat offline at matched KL here, so no fraction of a gap is defined: " + ", ".join(
            f"{a} {fmt(m, half)}" for a, m, half in rec)
    small_ok = rec[0][1] > 0.8
    degrades = all(b <= a + 0.1 for a, b in zip(vals, vals[1:])) and vals[-1] < vals[0]
    v = "supported" if small_ok and degrades else "mixed" if small_ok or degrades else "not supported"
    return v, "fraction of the online − offline gap recovered: " + ", ".join(f"{a} {fmt(m, half)}" for a, m, half in rec)


def _quality(results):
    if not has(results, "online", "self-final"):
        return _missing(results, "online", "self-final")
    def f(s):
        wr0 = first_series(results, "online", s)["win_rate"][0]
        top = first_series(results, "online", s)["win_rate"][-1]
        return (peak(results, "self-final", s) - wr0) / (top - wr0) if top > wr0 else math.nan
    m, half = ci_over_seeds(per_seed(results, ("online", "self-final"), f))
    return verdict_from_ci(0.25 - m, half), (f"self-final's peak gain over SFT as a fraction of the final online policy's gain: "
                                             f"{fmt(m, half)} (supported needs < 0.25)")


def _proxy_beats_policies(results):
    if not has(results, "online", "offline"):
        return _missing(results, "online", "offline")
    def margin(s):
        on = first_series(results, "online", s)
        last = on["step"][-1]
        best_off = best_run(runs_of(results, "offline", s))["series"]
        off = [a for st, a in zip(best_off["step"], best_off["acc_online_pairs"]) if 0 < st <= last]
        proxy = float(np.mean(on["proxy_acc_online_pairs"][1:]))
        return proxy - max(float(np.mean(on["acc_online_pairs"][1:])), float(np.mean(off)))
    m, half = ci_over_seeds(per_seed(results, ("online", "offline"), margin))
    decay = ci_over_seeds(per_seed(results, ("online",), lambda s: first_series(results, "online", s)["proxy_acc_online_pairs"][1]
                                 - first_series(results, "online", s)["proxy_acc_online_pairs"][-1]))
    v1, v2 = verdict_from_ci(m, half), verdict_from_ci(*decay)
    v = v1 if v1 == v2 else "mixed"
    return v, (f"proxy accuracy on online pairs − the better policy's (online: mean over its trained checkpoints; offline: mean over "
               f"its checkpoints within the online run's steps): {fmt(m, half)}; "
               f"proxy accuracy first trained − last checkpoint: {fmt(*decay)}")


def _offline_classifies_better(results):
    if not has(results, "online", "offline"):
        return _missing(results, "online", "offline")
    m, half = ci_over_seeds(per_seed(results, ("online", "offline"),
                                     lambda s: final(results, "offline", s, "acc_golden") - final(results, "online", s, "acc_golden")))
    return verdict_from_ci(m, half), f"accuracy on D_golden, offline − online (final checkpoints): {fmt(m, half)}"


def _acc_uncorrelated(results):
    if not has(results, "offline"):
        return _missing(results, "offline")
    def f(s):
        rs = runs_of(results, "offline", s)
        acc = [r["series"]["acc_golden"][int(np.argmax(r["series"]["win_rate"]))] for r in rs]
        wr = [max(r["series"]["win_rate"]) for r in rs]
        return abs(float(np.corrcoef(acc, wr)[0, 1])) if np.std(acc) > 0 and np.std(wr) > 0 else math.nan
    m, half = ci_over_seeds(per_seed(results, ("offline",), f))
    if math.isnan(m):
        return "not tested", "the sweep has fewer than two distinct runs per seed"
    return verdict_from_ci(0.5 - m, half), (f"|Pearson r|(accuracy on D_golden, peak win rate) across the offline sweep, per seed: "
                                            f"{fmt(m, half)} (supported needs < 0.5)")


def _chosen_falls(results):
    arms = [a for a in ("online", "offline") if has(results, a)]
    if len(arms) < 2:
        return _missing(results, "online", "offline")
    shifts = {a: ci_over_seeds(per_seed(results, (a,), lambda s, a=a: final(results, a, s, "chosen_logp_shift"))) for a in arms}
    all_fall = all(verdict_from_ci(-m, half) == "supported" for m, half in shifts.values())
    m, half = ci_over_seeds(per_seed(results, ("online", "offline"), lambda s: final(results, "online", s, "chosen_logp_shift")
                                     - final(results, "offline", s, "chosen_logp_shift")))
    most = verdict_from_ci(m, half)
    v = "supported" if all_fall and most == "supported" else "mixed" if all_fall or most == "supported" else "not supported"
    return v, ("chosen log-likelihood shift (D_golden): " + ", ".join(f"{a} {fmt(*shifts[a])}" for a in arms)
               + f"; online − offline {fmt(m, half)}")


def _self_chance(results):
    arms = [a for a in ("online", "offline") if has(results, a)]
    if not arms:
        return _missing(results, "online", "offline")
    parts, ok = [], True
    for a in arms:
        m, half = ci_over_seeds(per_seed(results, (a,), lambda s, a=a: float(np.max(
            best_run(runs_of(results, a, s))["series"]["acc_self"][1:]))))
        ok &= verdict_from_ci(0.55 - m, half) == "supported"
        parts.append(f"{a} best accuracy on its own samples {fmt(m, half)}")
    return ("supported" if ok else "not supported"), "; ".join(parts) + " (supported needs < 0.55)"


def _bo2(results):
    """Best-of-2 has no β to trade KL for reward, and its online and offline curves
    need not share a KL range; the paper compares them by their best win rate."""
    if not has(results, "online-bo2", "offline-bo2", "tandem-bo2"):
        return _missing(results, "online-bo2", "offline-bo2", "tandem-bo2")
    m, half = ci_over_seeds(per_seed(results, ("online-bo2", "offline-bo2"),
                                     lambda s: peak(results, "online-bo2", s) - peak(results, "offline-bo2", s)))
    def rec(s):
        g = peak(results, "online-bo2", s) - peak(results, "offline-bo2", s)
        return (peak(results, "tandem-bo2", s) - peak(results, "offline-bo2", s)) / g if g > 0 else math.nan
    r, half_r = ci_over_seeds(per_seed(results, ("online-bo2", "offline-bo2", "tandem-bo2"), rec))
    v1 = verdict_from_ci(m, half)
    v2 = verdict_from_ci(r - 0.8, half_r)
    v = "supported" if v1 == v2 == "supported" else "not supported" if "supported" not in (v1, v2) else "mixed"
    return v, (f"peak win rate Bo2 online − offline: {fmt(m, half)}; "
               f"tandem-Bo2 recovers {fmt(r, half_r)} of that peak gap (supported needs > 0.8)")



def _scale_peaks(results):
    arms = scale_arms(results, "online")
    if len(arms) < 2:
        return _missing(results, "online@*")
    peaks = [ci_over_seeds(per_seed(results, (a,), lambda s, a=a: peak(results, a, s))) for a in arms]
    gain = ci_over_seeds(per_seed(results, (arms[0], arms[-1]), lambda s: peak(results, arms[-1], s) - peak(results, arms[0], s)))
    def overopt(a):
        return ci_over_seeds(per_seed(results, (a,), lambda s: peak(results, a, s) - first_series(results, a, s)["win_rate"][-1]))
    still = all(verdict_from_ci(*overopt(a)) == "supported" for a in arms)
    def kl_at_peak(a, s):
        r = first_series(results, a, s)
        return r["kl"][int(np.argmax(r["win_rate"]))]
    def log_ratio(s):  # undefined when a peak sits at π_sft itself (KL 0)
        a, b = kl_at_peak(arms[-1], s), kl_at_peak(arms[0], s)
        return math.log(a / b) if a > 0 and b > 0 else math.nan
    ratio = ci_over_seeds(per_seed(results, (arms[0], arms[-1]), log_ratio))
    similar = not math.isnan(ratio[0]) and abs(ratio[0]) < math.log(3)
    v = ("supported" if verdict_from_ci(*gain) == "supported" and still and similar
         else "mixed" if verdict_from_ci(*gain) == "supported" else "not supported")
    return v, ("peak win rate " + ", ".join(f"{a} {fmt(*p)}" for a, p in zip(arms, peaks))
               + f"; largest − smallest {fmt(*gain)}; all over-optimise (peak > final): {still}; "
                 f"log KL-at-peak ratio {fmt(*ratio)} (similar needs |·| < log 3)")


def _scale_tandem(results):
    on, ta, of = (scale_arms(results, source) for source in ("online", "replay", "offline"))
    if len(on) < 2 or len(ta) != len(on) or len(of) != len(on):
        return _missing(results, "online@*", "tandem@*", "offline@*")
    def norm(arm, ref, s):  # 90th percentile over runs would need many runs; we use the peak (documented)
        return peak(results, arm, s) / peak(results, ref, s)
    t_gain = ci_over_seeds(per_seed(results, (ta[0], ta[-1], on[0], on[-1]), lambda s: norm(ta[-1], on[-1], s) - norm(ta[0], on[0], s)))
    o_gain = ci_over_seeds(per_seed(results, (of[0], of[-1], on[0], on[-1]), lambda s: norm(of[-1], on[-1], s) - norm(of[0], on[0], s)))
    d = ci_over_seeds(per_seed(results, (ta[0], ta[-1], of[0], of[-1], on[0], on[-1]),
                         lambda s: (norm(ta[-1], on[-1], s) - norm(ta[0], on[0], s)) - (norm(of[-1], on[-1], s) - norm(of[0], on[0], s))))
    return verdict_from_ci(*d), (f"change in peak/online-peak from smallest to largest: tandem {fmt(*t_gain)}, offline {fmt(*o_gain)};"
                                 f" tandem − offline {fmt(*d)}")


def _separation(results):
    if not has(results, "sft-vs-800", "sft-vs-4k"):
        return _missing(results, "sft-vs-800", "sft-vs-4k")
    m, half = ci_over_seeds(per_seed(results, ("sft-vs-800", "sft-vs-4k"),
                                     lambda s: peak(results, "sft-vs-800", s) - peak(results, "sft-vs-4k", s)))
    return verdict_from_ci(m + 0.01, half), (f"peak win rate sft-vs-800 − sft-vs-4k (wider pair): {fmt(m, half)}"
                                             " (supported unless the wider pair is better by > 0.01)")


def _proximity(results):
    if not has(results, "sft-vs-800", "800-vs-4k", "offline"):
        return _missing(results, "sft-vs-800", "800-vs-4k", "offline")
    m, half = ci_over_seeds(per_seed(results, ("sft-vs-800", "800-vs-4k"),
                                     lambda s: peak(results, "sft-vs-800", s) - peak(results, "800-vs-4k", s)))
    others = [a for a in ("sft-vs-800", "800-vs-4k", "sft-vs-4k", "4k-vs-4k") if has(results, a)]
    g, half_g = ci_over_seeds(per_seed(results, ("offline", *others),
                                       lambda s: peak(results, "offline", s) - max(peak(results, a, s) for a in others)))
    v1, v2 = verdict_from_ci(m, half), verdict_from_ci(g + 0.01, half_g)
    v = "supported" if v1 == v2 == "supported" else "mixed" if "supported" in (v1, v2) else "not supported"
    return v, f"peak sft-vs-800 − 800-vs-4k: {fmt(m, half)}; D_golden − best checkpoint dataset: {fmt(g, half_g)}"


def _theory(results):
    th = results.get("extras", {}).get("theory")
    if not th:
        return _missing(results, "theory")
    tol = th["tolerance"]
    ok = all(v <= tol for k, v in th.items() if k.endswith("_tv"))
    collapse = th["dpo_det_max_prob"] > 0.99 and abs(th["ipo_det_prob"] - th["ipo_det_closed_form"]) <= tol
    items = ", ".join(f"{k}={v:.2e}" for k, v in th.items() if k.endswith("_tv"))
    return ("supported" if ok and collapse else "not supported"), (
        f"total-variation distances to the closed forms: {items} (tolerance {tol:.0e}); "
        f"deterministic labels: DPO max π(y1) {th['dpo_det_max_prob']:.4f}, IPO π(y1) {th['ipo_det_prob']:.4f} "
        f"vs σ(0.5/β) {th['ipo_det_closed_form']:.4f}")


def _equivalence(results):
    e = results.get("extras", {}).get("equivalence")
    if e is None:
        return "not tested", "the exact full-coverage check runs in toysim: python -m toysim.gap --hypothesis equivalence"
    worst = max(e["tv_rlhf_vs_dpo"], e["tv_rlhf_vs_closed_form"], e["tv_dpo_vs_closed_form"])
    return ("supported" if worst <= e["tolerance"] else "not supported"), (
        f"TV(RLHF, DPO) {e['tv_rlhf_vs_dpo']:.1e}, TV(RLHF, closed form) {e['tv_rlhf_vs_closed_form']:.1e}, "
        f"TV(DPO, closed form) {e['tv_dpo_vs_closed_form']:.1e} (tolerance {e['tolerance']:.0e}; TV(π_sft, closed form) "
        f"{e['tv_sft_vs_closed_form']:.2f})")


def _rlhf_vs_offline_dpo(results):
    if not has(results, "rlhf", "offline-dpo"):
        return _missing(results, "rlhf", "offline-dpo")
    m, half = gap(results, "rlhf", "offline-dpo")
    parts = [f"win rate RLHF − offline DPO at matched KL: {fmt(m, half)}"]
    if has(results, "online-dpo"):
        parts.append(f"online DPO − offline DPO: {fmt(*gap(results, 'online-dpo', 'offline-dpo'))}")
    return verdict_from_ci(m, half), "; ".join(parts)


def _refresh(results):
    arms = [a.name for a in sorted(_declared(results, lambda a: a.source == "refresh"), key=lambda a: a.params["every"] or math.inf)]
    if not arms or not has(results, "online", "offline"):
        return _missing(results, "online", "offline", "refresh-*")
    rec = [(a, *_recovered(results, a)) for a in arms]
    vals = [m for _, m, _ in rec]
    listing = ", ".join(f"{a} {fmt(m, half)}" for a, m, half in rec)
    if any(math.isnan(v) for v in vals):
        return "inconclusive", "online does not beat offline at matched KL here, so no fraction of a gap is defined: " + listing
    first, last = arms[0], arms[-1]

    def spread(s):  # recovered by the most often refreshed arm minus by the one-shot arm, per seed
        g = gap_at_matched_kl(curves(results, "online", s), curves(results, "offline", s))
        if g <= 0:
            return math.nan
        return (gap_at_matched_kl(curves(results, first, s), curves(results, "offline", s))
                - gap_at_matched_kl(curves(results, last, s), curves(results, "offline", s))) / g
    m, half = ci_over_seeds(per_seed(results, (first, last, "online", "offline"), spread))
    monotone = all(b <= a + 0.1 for a, b in zip(vals, vals[1:]))
    v = verdict_from_ci(m, half)
    v = "mixed" if v == "supported" and not monotone else v
    return v, (f"fraction of the online − offline gap recovered at matched KL: {listing}; {first} − {last}: {fmt(m, half)}"
               f" (supported needs > 0 and no rise of more than 0.1 as k grows)")


CLAIMS: dict[int, Claim] = {c.id: c for c in [
    Claim(1, "Win rate vs KL rises then falls, online and offline.", _rise_then_fall),
    Claim(19, "Beyond the paper: with full coverage, RLHF (exact policy gradient) and DPO (population loss, Bradley–Terry labels) "
              "reach the same policy π_ref·exp(r/β)/Z.", _equivalence),
    Claim(20, "Beyond the paper: with finite data, RLHF on the proxy reward ≥ offline DPO at matched KL.", _rlhf_vs_offline_dpo),
    Claim(21, "Beyond the paper: refreshing the data more often (smaller k) recovers more of the online − offline gap.", _refresh),
    Claim(2, "At matched KL, online ≥ offline.", _online_ge_offline),
    Claim(3, "Online's peak (one config) > offline's peak (best of the sweep).", _online_peak),
    Claim(4, "Offline on D_online in original order reproduces the online run.", _ordered_replay),
    Claim(5, "Tandem (uniform shuffle) ≈ offline, well below online.", _tandem),
    Claim(6, "Windowed shuffling ≈ online; degrades as the window grows.", _windows),
    Claim(7, "Offline on data from the final online policy barely beats SFT.", _quality),
    Claim(8, "On online pairs the proxy PM classifies better than either policy; its accuracy decays.", _proxy_beats_policies),
    Claim(9, "On D_golden, offline policies classify better than online ones.", _offline_classifies_better),
    Claim(10, "Across offline runs, accuracy on D_golden ≈ uncorrelated with win rate.", _acc_uncorrelated),
    Claim(11, "Chosen log-likelihood falls for all methods, most for offline.", _chosen_falls),
    Claim(12, "No policy classifies its own sample pairs above chance.", _self_chance),
    Claim(13, "Bo2: online > offline; tandem Bo2 ≈ online Bo2 (by peak win rate).", _bo2),
    Claim(14, "Larger policies peak higher at a similar KL and still over-optimise.", _scale_peaks),
    Claim(15, "With scale, tandem approaches online before offline does.", _scale_tandem),
    Claim(16, "Wider separation inside a pair (sft-vs-4k vs sft-vs-800) does not help.", _separation),
    Claim(17, "Proximity to SFT (sft-vs-800) beats separation (800-vs-4k); D_golden is hard to beat.", _proximity),
    Claim(18, "Theory: the closed-form optima of offline IPO, online IPO and DPO ≡ RLHF; "
              "DPO collapses under deterministic labels, IPO does not.", _theory),
]}


def judge(study: Study, results: dict) -> list[dict]:
    """Verdict for every claim the study tests: [{id, statement, verdict, evidence}]."""
    out = []
    for cid in study.claims:
        c = CLAIMS[cid]
        try:
            verdict, evidence = c.judge(results)
        except (KeyError, IndexError, ValueError) as e:  # a backend that did not log what the rule needs
            verdict, evidence = "not tested", f"results lack what this claim needs: {e!r}"
        out.append({"id": c.id, "statement": c.statement, "verdict": verdict, "evidence": evidence})
    return out
