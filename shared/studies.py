"""The studies of Tang et al. 2024 declared once, as data, for both backends: what to run.

Docs: docs/studies/*.md, docs/results-schema.md. Tests: tests/test_studies.py, tests/test_protocol.py.

A ``Study`` lists its ``Arm``s (where pairs come from, which loss, which labels) and the
ids of the claims it tests: claims 1–18 of Tang et al. 2024 (§3–5, as the README's claims
table lists them), 19–21 ours. A backend (toysim or fullscale) runs every arm and fills a
*results* dict (``shared.results``, docs/results-schema.md); ``shared.claims.judge`` then
turns those results into each claim's verdict, so both backends reach verdicts by the same
rules. How an arm is run (its sampler, sweep, checkpoints) is ``shared.protocol``.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Arm", "SOURCES", "Study", "STUDIES", "ARMS", "GOLDEN", "scale_arms"]


@dataclass(frozen=True)
class Arm:
    """One training arm.

    source: "online" (pairs from the current policy), "offline" (D_golden),
    "replay" (the logged stream of arm ``params['stream']``, shuffle window
    ``params['window']`` batches; 0 means the whole stream), "dataset" (pairs
    from two checkpoints, ``params['pair']`` = (a, b) as fractions of the
    online run, 0 = SFT), "refresh" (online pairs drawn ``params['every']``
    steps at a time; 0 means once), "rlhf" (``params['k']`` samples per prompt
    scored by a reward model), "mixture" (online pairs sampled from the
    geometric mixture π^{1−α}·π_sft^α, α = ``params['alpha']``: IPO-MD). loss: a name in the backend's loss table. labels:
    "proxy" or "golden". sweep: offline gets the pooled sweep (lr × β).
    capacity: policy-width multiplier of the default width (scale study).
    """

    name: str
    source: Source
    loss: str = "ipo"
    labels: Literal["golden", "proxy"] = "golden"
    sweep: bool = False
    capacity: float = 1.0
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"arm {self.name!r}: unknown source {self.source!r}; choose from {', '.join(SOURCES)}")
        if self.labels not in ("golden", "proxy"):
            raise ValueError(f"arm {self.name!r}: labels must be 'golden' or 'proxy', got {self.labels!r}")


Source = Literal["online", "offline", "replay", "dataset", "refresh", "rlhf", "mixture"]
SOURCES: tuple[str, ...] = typing.get_args(Source)
"""The closed set of an arm's data sources (``Arm``'s docstring says what each is)."""


@dataclass(frozen=True)
class Study:
    """A question, the arms that answer it, the ids of the claims it tests, and the figures its
    results are drawn as (names of ``shared.plots.DRAWERS``; a figure whose arms a run lacks is
    left out)."""

    name: str
    question: str
    arms: tuple[Arm, ...]
    claims: tuple[int, ...]
    figures: tuple[str, ...] = ("winrate_vs_kl",)


GOLDEN = Arm("golden", "online", labels="golden")
"""The golden policy (Tang et al. 2024, §3): online IPO with golden labels and the baseline
config; its final policy is the reference every win rate is measured against. Both backends
run it first, before any arm of a study (``shared.protocol.plan``)."""


# ---------------------------------------------------------------- studies
_ONLINE = Arm("online", "online", labels="proxy")
_OFFLINE = Arm("offline", "offline", sweep=True)
_CAPS = (0.25, 1, 4)  # ×¼, ×1, ×4 the default width: 16× in capacity

STUDIES: dict[str, Study] = {s.name: s for s in [
    Study("coverage", "Does online win because its data covers what the policy now generates? (H1)", (
        _ONLINE, _OFFLINE,
        Arm("replay-ordered", "replay", params={"stream": "online", "window": 1}),
        Arm("window-4", "replay", params={"stream": "online", "window": 4}),
        Arm("window-32", "replay", params={"stream": "online", "window": 32}),
        Arm("tandem", "replay", params={"stream": "online", "window": 0}),
    ), (1, 2, 3, 4, 5, 6), ("winrate_vs_kl", "gap_vs_kl")),
    Study("quality", "Is online's data simply better? Train offline on the final online policy's own samples (H2).", (
        _ONLINE, _OFFLINE,
        Arm("self-final", "dataset", params={"pair": (1.0, 1.0)}),
    ), (7,)),
    Study("classification", "Are better classifiers of preferences better policies? (H3)", (
        _ONLINE, _OFFLINE,
    ), (8, 9, 10, 11, 12), ("winrate_vs_kl", "classification")),
    Study("contrastive", "Is the gap specific to contrastive losses? Best-of-2 instead of IPO (H4).", (
        _ONLINE, _OFFLINE,
        Arm("online-bo2", "online", loss="bo2", labels="proxy"),
        Arm("offline-bo2", "offline", loss="bo2"),
        Arm("tandem-bo2", "replay", loss="bo2", params={"stream": "online-bo2", "window": 0}),
    ), (13,)),
    Study("scale", "Does a larger policy close the gap? Capacity ×¼, ×1, ×4 (16× in all) with the proxy fixed (H5).", tuple(
        arm for c in _CAPS for arm in (
            Arm(f"online@{c:g}", "online", labels="proxy", capacity=c),
            Arm(f"offline@{c:g}", "offline", capacity=c),
            Arm(f"tandem@{c:g}", "replay", capacity=c, params={"stream": f"online@{c:g}", "window": 0}),
        )), (14, 15), ("winrate_vs_kl", "scaling")),
    Study("data", "Which offline data is best? Pairs from SFT and online checkpoints, golden-labelled (§5).", (
        _ONLINE, _OFFLINE,
        Arm("sft-vs-800", "dataset", params={"pair": (0.0, 0.2)}),
        Arm("800-vs-4k", "dataset", params={"pair": (0.2, 1.0)}),
        Arm("sft-vs-4k", "dataset", params={"pair": (0.0, 1.0)}),
        Arm("4k-vs-4k", "dataset", params={"pair": (1.0, 1.0)}),
    ), (16, 17)),
    Study("theory", "Do the closed-form optima hold exactly in a full-support tabular bandit?", (), (18,)),
    # beyond the paper: the RLHF side of DPO ≡ RLHF, and how online training must be
    Study("equivalence", "Do RLHF (reward model + KL-regularised policy gradient) and DPO reach the same policy? "
                         "Exactly with full coverage; where do they part with finite data?", (
        Arm("rlhf", "rlhf", loss="rloo", labels="proxy", params={"k": 4}),
        Arm("online-dpo", "online", loss="dpo", labels="proxy"),
        Arm("offline-dpo", "offline", loss="dpo", sweep=True),
    ), (19, 20)),
    Study("refresh", "How online must training be? Offline IPO on a dataset refreshed from the current policy every k steps.", (
        _ONLINE, _OFFLINE,
        *(Arm(f"refresh-{k}", "refresh", labels="proxy", params={"every": k}) for k in (4, 16, 64)),
        Arm("refresh-all", "refresh", labels="proxy", params={"every": 0}),
        # IPO-MD (Calandriello et al. 2024, arXiv 2403.08635): online, but sampling pulled towards π_sft (α = 0.25, our choice)
        Arm("ipo-md", "mixture", labels="proxy", params={"alpha": 0.25}),
    ), (21,), ("winrate_vs_kl", "refresh")),
]}


ARMS: dict[str, Arm] = {}
"""Every declared arm by name: how an arm named in a results.json maps back to its fields (a name
means the same arm in every study that declares it)."""
for _study in STUDIES.values():
    for _arm in _study.arms:
        if ARMS.setdefault(_arm.name, _arm) != _arm:
            raise ValueError(f"two different arms are named {_arm.name!r}")


def scale_arms(results, source):
    """The scale study's arms of one source the results hold, smallest capacity first
    (Tang et al. 2024 scale the policy to XL and XXL with the same Large proxy; here ×¼, ×1, ×4 the width)."""
    return [a.name for a in sorted(STUDIES["scale"].arms, key=lambda a: a.capacity) if a.source == source and a.name in results["arms"]]
