"""Where the probability mass goes: offline against online at matched KL, by D_golden's labels.

    python -m toysim.displacement --preset paper-protocol-v1 --seeds 5 --out docs/figures/displacement

Claim 11 of Tang et al. 2024 (§4.3): the chosen responses' log-likelihood falls
for every method, most for offline, so the mass must go somewhere else. This
command trains online and offline (the coverage study's two arms, offline's
pooled sweep) and, per seed, compares online's final policy with the offline
checkpoint whose exact KL is nearest online's (over its 9 configurations and
every checkpoint). For each prompt, the responses fall in five groups by
D_golden's labels on it (``groups``): chosen (only ever chosen), rejected (only
ever rejected), both, neighbours (unlabelled, one token from a labelled
response in the prefix tree: its parent, a child or a sibling; autoregressive
worlds only) and far (the rest). It reports π − π_sft summed over each group
(averaged over prompts, mean ± 95% CI over seeds) and the golden reward,
above π_sft's average, of the mass each group gained. Writes
``displacement.json`` and ``displacement.png``. The rule is docs/mechanism.md
§ where the mass goes. Tests: tests/test_toysim_tools.py.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.cli import cli, prelude, progress, seeds_problem
from shared.metrics import seed_ci
from shared.studies import Arm, Study
from toysim.presets import MAX_SEEDS, PRESETS, PresetName, quick
from toysim.study import Runner, run_study

__all__ = ["DisplacementConfig", "GROUPS", "group_names", "groups", "mass_moved", "displacement", "plot", "main"]

GROUPS = ("chosen", "rejected", "both", "neighbours", "far")
REGION = "region"  # worlds with an off-support region (docs/judge.md, K1): its unlabelled responses, a group of their own


def group_names(world) -> tuple[str, ...]:
    """The groups of ``groups(world)``: ``GROUPS``, then ``region`` where the world has one."""
    return GROUPS + ((REGION,) if getattr(world, "region", None) is not None else ())

_STUDY = Study("displacement", "where does the mass go?", (Arm("online", "online", labels="proxy"), Arm("offline", "offline", sweep=True)), ())


@dataclass(frozen=True)
class DisplacementConfig:
    """Where the probability mass taken from D_golden's responses goes, offline against online at matched KL."""

    preset: PresetName = "paper-protocol-v1"
    """the world and training settings (toysim.presets)"""
    seeds: int = 5
    """training seeds"""
    quick: bool = False
    """use the preset's quick (smaller, shorter) version: a plumbing check, not the figure"""
    out: Path | None = None
    """output folder; default a new runs/displacement/<preset>-<date-time>; a given DIR must not exist yet"""
    threads: int = 0
    """CPU threads for torch (0: the cores idle at start-up, shared/machine.py; OMP_NUM_THREADS when set)"""


def groups(world) -> torch.Tensor:
    """[X, N] group index (into ``GROUPS``) of every response of every prompt, from D_golden's labels.
    A pair of a response with itself (drawn twice from μ) labels nothing: its margin is 0 whatever
    the policy, so no loss moves it; such pairs are left out."""
    X, N = world.sft_logp.shape
    d = world.d_golden
    real = d.y_w != d.y_l
    chosen = torch.zeros(X, N, dtype=torch.bool)
    rejected = torch.zeros(X, N, dtype=torch.bool)
    chosen[d.x[real], d.y_w[real]] = True
    rejected[d.x[real], d.y_l[real]] = True
    out = torch.full((X, N), GROUPS.index("far"), dtype=torch.long)
    labelled = chosen | rejected
    if world.space is not None:  # one token away in the prefix tree: parent, child or sibling
        resp = world.space.responses
        index = {p: n for n, p in enumerate(resp)}
        parent = torch.tensor([index[p[:-1]] if p else -1 for p in resp])
        near = torch.zeros(X, N, dtype=torch.bool)
        has_parent = parent >= 0
        lab_parent = torch.zeros(X, N, dtype=torch.bool)
        lab_parent[:, has_parent] = labelled[:, parent[has_parent]]  # my parent is labelled
        near |= lab_parent
        children = torch.zeros(X, N, dtype=torch.long)  # labelled children of each response
        children.index_put_((torch.arange(X)[:, None].expand(X, int(has_parent.sum())), parent[has_parent].expand(X, -1)),
                            labelled[:, has_parent].long(), accumulate=True)
        child_lab = children > 0
        near |= child_lab
        near[:, has_parent] |= child_lab[:, parent[has_parent]]  # a sibling is labelled (my parent has a labelled child)
        out[near & ~labelled] = GROUPS.index("neighbours")
    if getattr(world, "region", None) is not None:  # unlabelled responses with a region token
        out[world.region[None, :].expand(X, N) & ~labelled] = len(GROUPS)
    out[chosen & ~rejected] = GROUPS.index("chosen")
    out[rejected & ~chosen] = GROUPS.index("rejected")
    out[chosen & rejected] = GROUPS.index("both")
    return out


def mass_moved(probs: torch.Tensor, sft_probs: torch.Tensor, group: torch.Tensor, reward: torch.Tensor,
               n_groups: int = len(GROUPS)) -> dict[str, list[float]]:
    """For one policy [X, N]: per group, Σ (π − π_sft) averaged over prompts, and the golden reward,
    above π_sft's average on that prompt, of the mass the group gained (Σ max(π − π_sft, 0)·r̃ / Σ max(·, 0);
    nan where it gained none). Returns {"mass": [n_groups], "reward": [n_groups]}."""
    delta = probs - sft_probs
    rel = reward - (sft_probs * reward).sum(-1, keepdim=True)
    gain = delta.clamp(min=0)
    mass, rew = [], []
    for k in range(n_groups):
        m = group == k
        mass.append(float((delta * m).sum(-1).mean()))
        g = float((gain * m).sum())
        rew.append(float((gain * m * rel).sum()) / g if g > 0 else math.nan)
    return {"mass": mass, "reward": rew}


def displacement(cfg: DisplacementConfig, progress_factory=None) -> dict:
    """Train both arms, pick offline at matched KL per seed, and measure where the mass went."""
    preset = quick(PRESETS[cfg.preset]) if cfg.quick else PRESETS[cfg.preset]
    runner = Runner(preset, cfg.seeds, progress_factory=progress_factory)
    runner.keep_tables = True
    res = run_study(_STUDY, preset, cfg.seeds, runner=runner)
    w = runner.world
    grp, sft, names = groups(w), w.sft_logp.exp().double(), group_names(w)
    reward = w.golden_reward.double()
    per_seed = {"online": [], "offline": []}
    picks = []
    for s in range(cfg.seeds):
        on = res["arms"]["online"][s]
        kl_on, step_on = on["series"]["kl"][-1], on["series"]["step"][-1]
        # offline runs are listed config-major (toysim.study._run_group): run i is config i // seeds, seed i % seeds
        best = min(((abs(kl - kl_on), i, step) for i, r in enumerate(res["arms"]["offline"]) if r["seed"] == s
                    for kl, step in zip(r["series"]["kl"], r["series"]["step"])))
        _, i, step = best
        off = res["arms"]["offline"][i]
        picks.append({"seed": s, "online_kl": kl_on, "offline_kl": off["series"]["kl"][off["series"]["step"].index(step)],
                      "offline_config": off["config"], "offline_step": step})
        per_seed["online"].append(mass_moved(runner.tables["online"][step_on][s].exp().double(), sft, grp, reward, len(names)))
        per_seed["offline"].append(mass_moved(runner.tables["offline"][step][i].exp().double(), sft, grp, reward, len(names)))
    summary = {arm: {key: [list(seed_ci([v[key][k] for v in vals])) for k in range(len(names))] for key in ("mass", "reward")}
               for arm, vals in per_seed.items()}
    sizes = [float((grp == k).sum(-1).double().mean()) for k in range(len(names))]
    return {"preset": preset.name, "seeds": cfg.seeds, "groups": list(names), "responses_per_group": sizes,
            "matched": picks, "per_seed": per_seed, "summary": summary,
            "config": {"world": res["config"]["world"], "train": res["config"]["train"]}}


def plot(result: dict, path: Path):
    """Two panels of bars per group, offline and online: mass moved, and the golden reward of the mass gained."""
    from matplotlib.figure import Figure  # lazily: matplotlib is heavy, and only drawing needs it

    fig = Figure(figsize=(10.5, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    names = result["groups"]
    xs = np.arange(len(names))
    for ax, key, label in ((axes[0], "mass", "π − π_sft summed over the group"),
                           (axes[1], "reward", "golden reward of the mass gained\n(above π_sft's average)")):
        for j, (arm, colour) in enumerate((("offline", "tab:orange"), ("online", "tab:blue"))):
            stats = np.array(result["summary"][arm][key], dtype=float)
            ax.bar(xs + (j - 0.5) * 0.38, stats[:, 0], 0.38, yerr=np.nan_to_num(stats[:, 1]), color=colour, label=arm, capsize=3)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(xs, [f"{g}\n({n:.1f})" for g, n in zip(names, result["responses_per_group"])])
        ax.set_ylabel(label)
    axes[0].legend()
    m = result["matched"]
    fig.suptitle(f"Where the mass goes, preset {result['preset']}, {result['seeds']} seeds: online's final policy (KL "
                 f"{np.mean([p['online_kl'] for p in m]):.2f}), offline at the KL nearest it reaches ({np.mean([p['offline_kl'] for p in m]):.2f});\n"
                 "responses grouped by D_golden's labels on their prompt (responses per prompt in brackets)", fontsize=10)
    fig.savefig(path, dpi=110)
    return fig


def _no_nan(obj):
    """NaN as JSON null (strict JSON has no NaN): an undefined number, e.g. the reward of a group that gained no mass."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_nan(v) for v in obj]
    return obj


def main(argv=None) -> int:
    try:
        cfg = cli(DisplacementConfig, argv, prog="python -m toysim.displacement", description="\n\n".join(__doc__.split("\n\n")[:2]))
    except SystemExit as e:
        return 0 if e.code in (0, None) else 2
    preset_problem = None if cfg.preset in PRESETS else f"unknown preset {cfg.preset!r}; choose from {', '.join(PRESETS)}"
    cfg = prelude(cfg, Path("runs/displacement"), cfg.preset, [preset_problem, seeds_problem(cfg.seeds, 2, MAX_SEEDS)])
    if isinstance(cfg, int):
        return cfg
    t0 = time.time()

    def bar(total, desc):
        return progress(total, desc, width=0)

    result = displacement(cfg, bar)
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "displacement.json").write_text(json.dumps(_no_nan(result), indent=1, allow_nan=False))
    plot(result, cfg.out / "displacement.png")
    for arm in ("offline", "online"):
        parts = ", ".join(f"{g} {m[0]:+.3f}" for g, m in zip(result["groups"], result["summary"][arm]["mass"]))
        print(f"{arm:8s} mass moved: {parts}")
    print(f"wrote {cfg.out / 'displacement.json'} and displacement.png in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
