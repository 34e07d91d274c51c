"""Named presets: a world plus training settings.

Docs: docs/tutorial.md (§ presets). The presets play the roles of the paper's
tasks (Tang et al. 2024, §3): ``default`` a task with a large online−offline
gap (like TL;DR summarisation and helpfulness), ``arena`` one where the gap is
small and tandem comes close (like Chatbot Arena). ``python -m toysim.sweep``
maps the gaps over the world's knobs and shows where each preset sits. Tests: tests/test_cli.py (the
names), tests/test_toysim_gap.py, tests/test_figures.py (the committed results of each).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from shared.protocol import Schedule
from toysim.world import WorldConfig

__all__ = ["TrainSettings", "Preset", "PRESETS", "PresetName", "MAX_SEEDS", "quick"]

PresetName = Literal["default", "arena", "paper-protocol", "paper-protocol-v1"]
"""The presets' names, as every command's ``--preset`` lists them (the keys of ``PRESETS``;
tests/test_cli.py holds them equal)."""

MAX_SEEDS = 100
"""Every seed's runs are stacked in one tensor program, so memory grows with the seeds (the
default preset's coverage study peaked at 0.56 GB with 5 seeds and 1.17 GB with 25: about
30 MB a seed, so 100 seeds need a few GB); the bound keeps a typo such as 1000000000 from
filling the machine before any output."""


@dataclass(frozen=True)
class TrainSettings(Schedule):
    """Training hyper-parameters shared by every arm of a study (``shared.protocol.Schedule``,
    with the simulator's defaults)."""

    steps: int = 400
    offline_mult: int = 5
    lr: float = 0.02
    checkpoints: int = 20


@dataclass(frozen=True)
class Preset:
    name: str
    role: str
    world: WorldConfig = field(default_factory=WorldConfig)
    train: TrainSettings = field(default_factory=TrainSettings)


PRESETS: dict[str, Preset] = {p.name: p for p in [
    # Large gap: a noisy golden rater (30% of training labels flipped), finite D_golden (512 pairs),
    # a narrow SFT, and a policy with capacity to overfit (128 features). Offline IPO fits the
    # flipped labels and spends KL on noise; online trains on fresh pairs labelled by a small
    # proxy that averages the noise away. In both atomic presets the proxy's penalty is chosen on
    # held-out pairs of D_golden (docs/judge.md, R1); it was a fixed 0.1 (default) and 0.01 (arena). Found by exploring the knobs; the phase diagram
    # (python -m toysim.sweep, README) shows it sits in the high-noise corner where the matched-KL gap
    # is positive, not in a broad region.
    Preset("default", "large gap (the paper's TL;DR / helpfulness)",
           world=WorldConfig(golden_pairs=512, policy_features=128, label_noise=0.3, noise=0.1,
                             proxy_squares=True, penalty=0.6, sft_temp=0.3, proxy_fit="validated")),
    # Small gap: the opposite ingredients — little label noise, 4× more golden pairs, a small
    # policy and a wide SFT, so the offline data is already clean and covering.
    Preset("arena", "small gap, tandem close (the paper's Chatbot Arena)",
           world=WorldConfig(golden_pairs=2048, policy_features=16, label_noise=0.1, noise=0.1,
                             proxy_squares=True, penalty=0.6, sft_temp=1.0, proxy_fit="validated")),
    # The paper's protocol (Tang et al. 2024, §3), first version: golden training labels are the golden
    # rater's own hard decisions (no flips), and responses are token sequences (every sequence of at most 3
    # tokens over 4, 85 a prompt) from an autoregressive policy. Fixed by the rule of
    # docs/mechanism.md before any of its runs: `default`'s world with label noise off and
    # the autoregressive policy of the same width; not chosen by its verdicts. Its proxy is the old one
    # (a fixed penalty 0.1, 16 random features): the first search (toysim.search) ran on it.
    Preset("paper-protocol-v1", "the paper's protocol, first version (fixed-penalty proxy; docs/mechanism.md)",
           world=WorldConfig(golden_pairs=512, policy_features=128, label_noise=0.0, noise=0.1,
                             proxy_squares=True, penalty=0.6, sft_temp=0.3, proxy_l2=0.1,
                             policy_kind="autoregressive", vocab=4, max_len=3)),
    # The paper's protocol with the paper's judge and the literature's mechanisms, every value by the
    # rule of docs/judge.md (R3), committed before it ran: v1 with the proxy validated on held-out pairs
    # and of the policy's own class (the paper's proxy is the policy's size); one off-support region
    # token (under 1% of π_sft's mass, aliased at 0.9 with the best ordinary token, costing the golden's
    # mean range); a golden network of weight 0.5 (a fifth of the golden's variance outside both
    # students); one nuisance token. 6 tokens of at most 3: 259 responses a prompt.
    Preset("paper-protocol", "the paper's protocol and judge: noise-free labels, token sequences, validated proxy of the "
           "policy's class, an aliased off-support region, a complex golden, nuisance tokens (docs/judge.md)",
           world=WorldConfig(golden_pairs=512, policy_features=128, label_noise=0.0, noise=0.1,
                             proxy_squares=True, penalty=0.6, sft_temp=0.3, proxy_fit="validated", proxy_class="policy",
                             policy_kind="autoregressive", vocab=4, max_len=3,
                             region_tokens=1, region_mass=0.003, region_alias=0.9, region_penalty=1.0,
                             golden_net=0.5, nuisance_tokens=1)),
]}


def quick(p: Preset) -> Preset:
    """A smaller, shorter version of a preset for plumbing checks (``--quick``), named
    ``<preset>-quick`` so every table and report of its results says what it is
    (``shared.report.plumbing_note``)."""
    w = replace(p.world, prompts=12, responses=24, golden_pairs=min(p.world.golden_pairs, 256),
                policy_features=min(p.world.policy_features, 16), max_len=min(p.world.max_len, 2))  # token worlds: sequences of 2 at most
    t = replace(p.train, steps=80, offline_mult=2, checkpoints=8)
    return replace(p, name=f"{p.name}-quick", world=w, train=t)
