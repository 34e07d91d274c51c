"""The one config of ``python -m fullscale.run``, its presets, and config files.

Docs: docs/fullscale.md. Tests: tests/test_fullscale_run.py.

Resolution order: the preset's values, then a config file (``--config FILE``,
JSON or TOML, nested like the dataclasses below, e.g. ``{"train": {"steps":
200}}``), then command-line flags (``--train.steps 200``). The resolved config
is printed, saved as ``DIR/config.json`` and stored in every results.json.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from fullscale.models import ModelSpec
from fullscale.task import TaskSpec

__all__ = ["DataConfig", "ModelsConfig", "TrainConfig", "EvalConfig", "RunConfig", "PRESETS", "preset", "apply_file"]

StudyName = Literal["coverage", "quality", "classification", "contrastive", "scale", "data", "equivalence", "refresh"]


@dataclass(frozen=True)
class DataConfig:
    """Where the pairs come from and how they are tokenised."""

    source: Literal["synthetic", "tldr", "hh", "arena", "jsonl"] = "synthetic"
    """synthetic (built in, no download) or a local file's format (fullscale/data.py)"""
    path: Path | None = None
    """the local data file, for every source but synthetic"""
    task: TaskSpec = field(default_factory=TaskSpec)
    """the synthetic task's size and noise"""
    max_pairs: int | None = None
    """use at most this many pairs of a file (the first ones)"""
    max_prompt_tokens: int = 16
    """prompts are cut from the left to this many tokens"""
    max_response_tokens: int = 8
    """responses (EOS included) are cut to this many tokens; sampling generates this many"""
    vocab_words: int = 4000
    """from-scratch models on a data file: the word tokenizer keeps this many most frequent words"""


@dataclass(frozen=True)
class ModelsConfig:
    """The policy and the two preference models: built from a spec, or loaded from a local directory."""

    policy: ModelSpec = field(default_factory=lambda: ModelSpec(width=64, layers=2, heads=4))
    """policy size when built from scratch (the scale study scales its width)"""
    golden_pm: ModelSpec = field(default_factory=lambda: ModelSpec(width=96, layers=3, heads=4))
    """golden preference model size (the paper's 11B stand-in: the largest)"""
    proxy_pm: ModelSpec = field(default_factory=lambda: ModelSpec(width=32, layers=1, heads=2))
    """proxy preference model size (limited capacity)"""
    policy_path: Path | None = None
    """a local directory with a causal LM and its tokenizer to start SFT from (replaces the built policy)"""
    golden_pm_path: Path | None = None
    """a local causal LM directory to start the golden PM from (a scalar head is added)"""
    proxy_pm_path: Path | None = None
    """a local causal LM directory to start the proxy PM from"""
    golden_pm_init: Literal["scratch", "sft"] = "scratch"
    """scratch: the golden PM is built from ``golden_pm``; sft: it starts from π_sft's weights with a new scalar head, as reward models do in Stiennon et al. 2020 and Ouyang et al. 2022 (``golden_pm_path``, when given, wins)"""
    pm_kind: Literal["pairwise", "bt"] = "pairwise"
    """pairwise r(x, y1, y2) as in the paper, or a Bradley–Terry pointwise reward"""


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of every stage."""

    sft_epochs: int = 4
    sft_lr: float = 3e-3
    pm_epochs: int = 6
    pm_lr: float = 1e-3
    proxy_fraction: float = 0.5
    """share of D_golden the proxy PM is trained on (finite proxy data)"""
    steps: int = 300
    """online steps (the paper's 4k); offline runs ``offline_mult`` × as long"""
    offline_mult: int = 2
    """offline steps / online steps (the paper's 20k / 4k = 5)"""
    batch_size: int = 32
    """pairs per step (the paper's 32)"""
    lr: float = 3e-4
    """Adam learning rate of the baseline config (the paper's 1e-5 for T5 Large)"""
    beta: float = 0.1
    """β of the baseline config (the paper's 0.1)"""
    sweep_lr: tuple[float, ...] = (0.3, 1.0, 3.0)
    """offline sweep: multipliers of ``lr`` (the paper's 3e-6, 1e-5, 3e-5)"""
    sweep_beta: tuple[float, ...] = (1.0, 5.0, 10.0)
    """offline sweep: multipliers of ``beta`` (the paper's 0.1, 0.5, 1)"""
    temperature: float = 1.0
    """sampling temperature (the paper does not state it)"""
    checkpoints: int = 10
    """evaluations per run, log-spaced in steps (plus step 0)"""
    save_every: int = 50
    """a run's state is also saved every this many steps"""


@dataclass(frozen=True)
class EvalConfig:
    """How checkpoints are evaluated (Tang et al. 2024, §3)."""

    win_prompts: int = 256
    """prompts for the win rate against the golden policy (the paper's 2048)"""
    kl_prompts: int = 128
    """prompts for the token-wise KL estimate (the paper's 256); the first of the win-rate prompts"""
    acc_pairs: int = 256
    """pairs for the classification accuracies and log-likelihood shifts"""


@dataclass(frozen=True)
class RunConfig:
    """Run a study of the online/offline gap with language models (torch + transformers)."""

    preset: Literal["smoke", "small", "paper"] = "smoke"
    """smoke (≤ 2 min on a laptop CPU), small (the coverage study in ≤ 30 min on CPU), paper (the paper's hyper-parameters; GPU)"""
    config: Path | None = None
    """a JSON or TOML file of overrides, applied after the preset and before these flags"""
    study: StudyName = "coverage"
    """which study of shared/studies.py to run"""
    seeds: int = 1
    """training seeds per arm (CIs are over seeds)"""
    out: Path = Path("runs/fullscale")
    """output directory: results.json, figures, report.md, metrics.jsonl, and the stage cache"""
    resume: bool = False
    """continue in an existing --out: reuse finished stages, resume unfinished runs"""
    cache: Path | None = None
    """stage cache directory (default DIR/cache); point several runs at one to share stages"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: cuda when available"""
    seed: int = 0
    """seed of model initialisation and of the golden policy"""
    data: DataConfig = field(default_factory=DataConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


PRESETS: dict[str, RunConfig] = {
    "smoke": RunConfig(
        preset="smoke", seeds=1,
        data=DataConfig(task=TaskSpec(prompts=64, pairs=512)),
        models=ModelsConfig(policy=ModelSpec(width=32, layers=1, heads=2), golden_pm=ModelSpec(width=48, layers=2, heads=2),
                            proxy_pm=ModelSpec(width=32, layers=1, heads=2)),
        train=TrainConfig(sft_epochs=3, pm_epochs=3, steps=40, offline_mult=2, sweep_lr=(1.0, 3.0), sweep_beta=(1.0,),
                          checkpoints=5, save_every=20),
        eval=EvalConfig(win_prompts=64, kl_prompts=64, acc_pairs=64),
    ),
    "small": RunConfig(
        preset="small", seeds=3,
        data=DataConfig(task=TaskSpec(prompts=512, pairs=4096)),
        models=ModelsConfig(golden_pm=ModelSpec(width=64, layers=2, heads=4)),
        train=TrainConfig(pm_epochs=20, pm_lr=5e-4, lr=1e-3),
        eval=EvalConfig(win_prompts=512, kl_prompts=128, acc_pairs=256),
    ),
    "paper": RunConfig(
        preset="paper", seeds=3,
        data=DataConfig(max_prompt_tokens=512, max_response_tokens=64, task=TaskSpec(prompts=2048, pairs=16384)),
        models=ModelsConfig(policy=ModelSpec(width=512, layers=8, heads=8, max_len=1024),
                            golden_pm=ModelSpec(width=1024, layers=12, heads=16, max_len=1024),
                            proxy_pm=ModelSpec(width=512, layers=8, heads=8, max_len=1024)),
        train=TrainConfig(steps=4000, offline_mult=5, lr=1e-5, beta=0.1, checkpoints=20, save_every=200),
        eval=EvalConfig(win_prompts=2048, kl_prompts=256, acc_pairs=1024),
    ),
}


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


def _merge(obj, overrides: dict, where: str):
    """A copy of dataclass ``obj`` with ``overrides`` (nested dicts) applied; unknown keys are errors."""
    names = {f.name: f for f in dataclasses.fields(obj)}
    changes = {}
    for k, v in overrides.items():
        if k not in names:
            raise ValueError(f"{where}: unknown key {k!r}; expected one of {', '.join(names)}")
        cur = getattr(obj, k)
        if dataclasses.is_dataclass(cur):
            if not isinstance(v, dict):
                raise ValueError(f"{where}: {k!r} must be a table of {type(cur).__name__} fields")
            changes[k] = _merge(cur, v, f"{where}.{k}")
        elif isinstance(cur, Path) or (cur is None and k.endswith(("path", "cache", "config", "out"))):
            changes[k] = None if v is None else Path(v)
        elif isinstance(cur, tuple):
            changes[k] = tuple(v)
        else:
            changes[k] = v
    return replace(obj, **changes)


def apply_file(cfg: RunConfig, path: Path) -> RunConfig:
    """Apply a JSON (.json) or TOML (.toml) file of overrides."""
    text = Path(path).read_text()
    if str(path).endswith(".toml"):
        import tomllib

        data = tomllib.loads(text)
    else:
        data = json.loads(text)
    return _merge(cfg, data, str(path))
