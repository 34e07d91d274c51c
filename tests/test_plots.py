"""The figures: every file is written, the mean curve is the plain-loop mean, coinciding arms are
named, the phase diagram's cell text is readable. Code: shared/plots.py, toysim/sweep.py (plot)."""

import colorsys
import math

import numpy as np
import pytest

from shared import plots
from shared.results import seeds_of


def _series(seed: int, n: int, scale: float, lift: float = 0.0) -> dict:
    """A made-up run: KL grows from 0 (the SFT point), win rate rises and falls, classifier keys too."""
    t = np.linspace(0.0, 1.0, n)
    kl = scale * (np.exp(3 * t) - 1)
    wr = 0.25 + lift + 0.2 * np.sin(np.pi * t) + 0.01 * seed
    keys = ("acc_golden", "acc_online_pairs", "acc_self", "proxy_acc_online_pairs", "chosen_logp_shift", "rejected_logp_shift")
    return {"step": list(range(0, 10 * n, 10)), "kl": kl.tolist(), "win_rate": wr.tolist(), **{k: (0.5 + 0.1 * t).tolist() for k in keys}}


def _results(study: str, arms: dict[str, tuple[int, float]], seeds: int = 3) -> dict:
    """A results dict in the schema of docs/results-schema.md: per arm (runs per seed, win-rate lift);
    a second run of a sweep differs from the first in its KL scale."""
    out = {name: [{"seed": s, "config": {}, "series": _series(s, 8, 0.1 * (1 + k), lift)} for s in range(seeds) for k in range(runs)]
           for name, (runs, lift) in arms.items()}
    return {"study": study, "preset": "test", "seeds": seeds, "arms": out, "config": {"train": {"steps": 70}}, "claims": []}


COVERAGE = {"online": (1, 0.05), "offline": (2, 0.0), "replay-ordered": (1, 0.05), "tandem": (1, 0.02)}


@pytest.mark.parametrize("study, arms, expected", [
    ("coverage", COVERAGE, {"winrate_vs_kl.png", "gap_vs_kl.png"}),
    ("classification", {"online": (1, 0.05), "offline": (2, 0.0)}, {"winrate_vs_kl.png", "classification.png"}),
    ("refresh", {"online": (1, 0.05), "offline": (2, 0.0), "refresh-4": (1, 0.04), "refresh-all": (1, 0.01)},
     {"winrate_vs_kl.png", "refresh.png"}),
    ("scale", {f"{a}@{c}": (1, 0.0) for a in ("online", "offline", "tandem") for c in ("0.25", "1")}, {"winrate_vs_kl.png", "scaling.png"}),
])
def test_every_figure_file_is_written(tmp_path, study, arms, expected):
    names = plots.figures(_results(study, arms), tmp_path)
    assert set(names) == expected
    assert {p.name for p in tmp_path.iterdir()} == expected
    assert all((tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)


def test_mean_curve_is_the_plain_loop_mean_on_the_shared_range():
    # seed a covers KL 0.01..1 (its SFT point, KL 0, is dropped); seed b covers 0.02..2, not in KL order
    a = ([0.0, 0.01, 0.1, 1.0], [0.25, 0.3, 0.5, 0.4])
    b = ([0.02, 0.5, 0.05, 2.0], [0.2, 0.45, 0.3, 0.35])
    num = 9
    kl, per_seed, mean, half = plots.mean_curve([a, b], num=num)
    lo, hi = math.log(0.02), math.log(1.0)  # the range both seeds cover: no extrapolation
    t975 = 12.706204736174698  # Student t, 1 degree of freedom, 97.5% quantile
    for i in range(num):
        g = lo + (hi - lo) * i / (num - 1)
        ys = []
        for kls, wrs in (a, b):
            pts = sorted((math.log(k), w) for k, w in zip(kls, wrs) if k >= 1e-3)
            ys.append(np.interp(g, [p[0] for p in pts], [p[1] for p in pts]))
        assert kl[i] == pytest.approx(math.exp(g))
        assert per_seed[:, i] == pytest.approx(ys)
        assert mean[i] == pytest.approx(sum(ys) / 2)
        assert half[i] == pytest.approx(t975 * abs(ys[0] - ys[1]) / 2)
    assert plots.mean_curve([([0.01, 0.1], [0.3, 0.4]), ([0.2, 1.0], [0.3, 0.4])]) is None  # no shared range


def test_coinciding_arms_are_detected_and_named_in_the_legend():
    res = _results("coverage", COVERAGE)
    means = {}
    for arm in res["arms"]:
        best = [plots._best_run(res, arm, s)["series"] for s in seeds_of(res, arm)]
        kl, _, mean, _ = plots.mean_curve([(r["kl"], r["win_rate"]) for r in best])
        means[arm] = (kl, mean)
    assert plots.coinciding(means) == {"replay-ordered": "online"}
    nudged = dict(means, **{"replay-ordered": (means["online"][0], means["online"][1] + 1e-3)})
    assert plots.coinciding(nudged) == {}
    labels = [t.get_text() for t in plots._winrate_vs_kl(res).axes[0].get_legend().get_texts()]
    assert any(t.startswith("replay-ordered (= online)") for t in labels)
    assert any(t.startswith("offline envelope (best of sweep)") for t in labels)  # offline ran a sweep of 2 runs per seed
    assert not any(t.startswith("tandem (=") for t in labels)


def test_phase_diagram_text_is_white_on_the_darkest_and_black_on_the_lightest_cell(tmp_path):
    from toysim.sweep import plot, text_colors

    assert list(text_colors([[0, 0, 0, 1], [1, 1, 1, 1]])) == ["white", "black"]
    xs = [0.0, 0.1, 0.2, 0.3, 0.4]
    values = [-0.04, -0.02, 0.0, 0.01, 0.03]  # RdBu: dark red, light red, near white, light blue, blue
    keys = ("online_minus_offline_matched_kl", "tandem_minus_offline_matched_kl", "online_minus_offline_peak")
    result = {"config": {"x": "label_noise", "x_values": xs, "y": "policy_features", "y_values": [16], "preset": "test", "seeds": 1},
              "cells": [{"label_noise": x, "policy_features": 16, **{k: [v, 0.0] for k in keys}} for x, v in zip(xs, values)]}
    fig = plot(result, tmp_path / "phase.png")
    assert (tmp_path / "phase.png").exists()
    ax = fig.axes[0]
    im = ax.images[0]
    # lightness by another formula (HLS), from the colour the image shows at each cell
    light = [colorsys.rgb_to_hls(*im.cmap(im.norm(v))[:3])[1] for v in values]
    ink = {round(t.get_position()[0]): t.get_color() for t in ax.texts}
    assert ink[int(np.argmin(light))] == "white"
    assert ink[int(np.argmax(light))] == "black"
