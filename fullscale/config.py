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
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from fullscale.models import ModelSpec
from fullscale.task import TaskSpec
from shared.protocol import Schedule
from shared.studies import STUDIES

__all__ = ["DataConfig", "ModelsConfig", "TrainConfig", "EvalConfig", "RunConfig", "PRESETS", "preset", "apply_file",
           "LIMITS", "Range", "out_of_range", "flag", "ConfigFileError"]

StudyName = Literal[tuple(n for n in STUDIES if n != "theory")]  # type: ignore[valid-type]
"""The studies fullscale runs: every study of shared.studies but the closed-form theory checks (toysim's alone)."""


@dataclass(frozen=True)
class DataConfig:
    """Where the pairs come from and how they are tokenised."""

    source: Literal["synthetic", "tldr", "hh", "arena", "jsonl"] = "synthetic"
    """synthetic (built in, no download) or a local file's format (fullscale/data.py)"""
    path: Path | None = None
    """the local data file, for every source but synthetic"""
    task: TaskSpec = field(default_factory=TaskSpec)
    """the synthetic task's size and noise"""
    split: str | None = None
    """use only records whose 'split' field is this (TL;DR: train, valid1, valid2); default every record"""
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
    golden_judge_path: Path | None = None
    """a local reward model (sequence classification, one score per text) as the golden judge, used as trained: its own tokenizer, chat template and maximum length, pointwise Bradley–Terry decisions; replaces the golden PM, which is then not trained"""
    proxy_judge_path: Path | None = None
    """a local reward model (as --models.golden-judge-path) as the proxy that labels the online arms' pairs, used as trained; replaces the proxy PM, which is then not trained"""
    golden_pm_init: Literal["scratch", "sft"] = "scratch"
    """scratch: the golden PM is built from ``golden_pm``; sft: it starts from π_sft's weights with a new scalar head, as reward models do in Stiennon et al. 2020 and Ouyang et al. 2022 (``golden_pm_path``, when given, wins)"""
    pm_kind: Literal["pairwise", "bt"] = "pairwise"
    """pairwise r(x, y1, y2) as in the paper, or a Bradley–Terry pointwise reward"""


@dataclass(frozen=True)
class TrainConfig(Schedule):
    """Hyper-parameters of every stage: the protocol's schedule (``shared.protocol.Schedule``,
    with defaults for small models on a CPU) and the stages before and around it."""

    steps: int = 300
    offline_mult: int = 2
    lr: float = 3e-4
    checkpoints: int = 10
    sft_epochs: int = 4
    """epochs of SFT on both responses of every training pair"""
    sft_lr: float = 3e-3
    """Adam learning rate of SFT"""
    pm_epochs: int = 6
    """epochs of training of each preference model"""
    pm_lr: float = 1e-3
    """Adam learning rate of the preference models"""
    proxy_fraction: float = 0.5
    """share of D_golden the proxy PM is trained on (finite proxy data)"""
    temperature: float = 1.0
    """sampling temperature (the paper does not state it)"""
    save_every: int = 50
    """a run's state is also saved every this many steps"""
    numerics: Literal["exact", "fast"] = "exact"
    """exact: every float as the committed results were computed; fast: fused Adam, the output layer on the response positions only, and a repeated prompt's body run once for its responses (one process): the same maths to float rounding, faster, but a run's numbers change in their last digits and a world whose preference model is chaotic at its plateau (the small preset's) then turns out differently (docs/fullscale.md, Speed)"""


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
class DistConfig:
    """Several processes under torchrun (fullscale/dist.py; docs/fullscale.md, Several processes and several GPUs)."""

    strategy: Literal["none", "ddp", "fsdp"] = "none"
    """none: one process, no launcher; ddp: data parallel over the torchrun processes (DistributedDataParallel; one process without torchrun, with the same per-example draws); fsdp: ddp's data parallelism with the trained policy, its gradients and Adam moments sharded over the processes (FSDP2, per transformer block; for policies that do not fit one device)"""
    timeout_s: int = 3600
    """seconds a collective waits for the other processes before the run stops with an error (a rank that died)"""
    reshard_after_forward: bool = True
    """fsdp: free the gathered weights of a block after its forward pass (less memory) or keep them until the backward pass (one all-gather fewer per step)"""


@dataclass(frozen=True)
class RunConfig:
    """Run a study of the online/offline gap with language models (torch + transformers)."""

    preset: Literal["smoke", "small", "paper"] = "smoke"
    """smoke (≤ 2 min on a laptop CPU), small (the coverage study in ≤ 30 min on CPU), paper (the paper's hyper-parameters; GPU)"""
    config: Path | None = None
    """a JSON or TOML file of overrides, applied after the preset and before these flags"""
    hypothesis: StudyName = "coverage"
    """which study (also --study): coverage (H1), quality (H2), classification (H3), contrastive (H4), scale (H5), data (§5), equivalence (RLHF vs DPO), refresh (semi-online k); docs/studies/"""
    seeds: int = 1
    """training seeds per arm (CIs are over seeds)"""
    out: Path | None = None
    """output directory for results.json, figures, report.md, metrics.jsonl and the stage cache; default a new runs/fullscale/<hypothesis>-<preset>-<date-time> per run; a given DIR must not hold a finished run"""
    resume: bool = False
    """continue the run in --out DIR (required): reuse finished stages, resume unfinished runs"""
    dry_run: bool = False
    """print the study's plan (shared.protocol.plan: the arms in run order, their configurations, steps, checkpoints and what they
    read) and exit without building anything or writing a file"""
    cache: Path | None = None
    """stage cache directory (default DIR/cache); point several runs at one to share stages"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: cuda when available"""
    threads: int = 0
    """CPU threads for torch (0: the cores idle at start-up, shared/machine.py). Recorded in config.json; --resume restores it, since results depend on it in their last digits"""
    seed: int = 0
    """seed of model initialisation and of the golden policy"""
    data: DataConfig = field(default_factory=DataConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dist: DistConfig = field(default_factory=DistConfig)


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


# ---------------------------------------------------------------- the allowed values
@dataclass(frozen=True)
class Range:
    """Allowed values of a number (of each element, for a tuple); ``open_lo``: lo itself is excluded."""

    lo: float
    hi: float
    open_lo: bool = False

    def check(self, value) -> str | None:
        """None when ``value`` is allowed, else what is wrong (the end of a one-line message)."""
        values = value if isinstance(value, tuple) else (value,)
        if isinstance(value, tuple) and not value:
            return "needs at least one value"
        for v in values:
            ok = math.isfinite(v) and (v > self.lo if self.open_lo else v >= self.lo) and v <= self.hi
            if not ok:
                kind = "an integer" if isinstance(v, int) else "a number"
                low = f"> {_num(self.lo)}" if self.open_lo else f"≥ {_num(self.lo)}"
                return f"must be {kind} {low} and ≤ {_num(self.hi)}, got {v!r}" + (f" in {value!r}" if isinstance(value, tuple) else "")
        return None


def _num(x: float) -> str:
    """A bound as a reader writes it: 2147483647, 10000000, 0.4999, 1000."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


_MODEL = {"width": Range(1, 65536), "layers": Range(1, 1024), "heads": Range(1, 1024), "max_len": Range(2, 1 << 20)}
LIMITS: dict[str, Range] = {
    # upper bounds keep a typo from allocating gigabytes or running for days before it fails
    "seeds": Range(1, 100), "seed": Range(0, 2**31 - 1), "threads": Range(0, 4096),
    "data.max_pairs": Range(1, 10**8), "data.max_prompt_tokens": Range(1, 1 << 16),
    "data.max_response_tokens": Range(2, 1 << 14), "data.vocab_words": Range(1, 10**7),
    "data.task.prompts": Range(1, 10**6), "data.task.pairs": Range(1, 10**7), "data.task.words": Range(1, 10**5),
    "data.task.doc_words": Range(1, 10**4), "data.task.label_noise": Range(0, 0.4999),
    "data.task.seed": Range(0, 2**31 - 1),
    **{f"models.{m}.{k}": r for m in ("policy", "golden_pm", "proxy_pm") for k, r in _MODEL.items()},
    "train.sft_epochs": Range(0, 10**4), "train.sft_lr": Range(0, 10, True), "train.pm_epochs": Range(0, 10**4),
    "train.pm_lr": Range(0, 10, True), "train.proxy_fraction": Range(0, 1, True), "train.steps": Range(1, 10**7),
    "train.offline_mult": Range(1, 1000), "train.batch_size": Range(1, 1 << 16), "train.lr": Range(0, 10, True),
    "train.beta": Range(0, 1e3, True), "train.sweep_lr": Range(0, 1e3, True), "train.sweep_beta": Range(0, 1e3, True),
    "train.temperature": Range(0, 1e3, True), "train.checkpoints": Range(1, 1000), "train.save_every": Range(1, 10**7),
    "eval.win_prompts": Range(2, 10**6), "eval.kl_prompts": Range(1, 10**6), "eval.acc_pairs": Range(1, 10**6),
    "dist.timeout_s": Range(1, 86400),
}
"""The allowed range of every number of ``RunConfig``, by its dotted name (``--train.lr`` is "train.lr")."""


def flag(name: str) -> str:
    """The command-line flag of a dotted field name: "train.max_len" -> "--train.max-len"."""
    return "--" + name.replace("_", "-")


def out_of_range(cfg: RunConfig) -> str | None:
    """The first number of ``cfg`` outside ``LIMITS``, as a one-line message naming its flag."""
    for name, rng in LIMITS.items():
        value = cfg
        for part in name.split("."):
            value = getattr(value, part)
        problem = None if value is None else rng.check(value)
        if problem:
            return f"{flag(name)} {problem}"
    return None


# ---------------------------------------------------------------- config files
class ConfigFileError(ValueError):
    """A config file that cannot be applied: the message names the file and the key."""


def _typed(value, tp, where: str):
    """``value`` (parsed from JSON or TOML) as the field type ``tp``, or ConfigFileError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigFileError(f"{where} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _typed(value, inner, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigFileError(f"{where} must be a list, got {value!r}")
        return tuple(_typed(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigFileError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigFileError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigFileError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is Path or tp is str:
        if not isinstance(value, str) or not value:
            raise ConfigFileError(f"{where} must be a non-empty string, got {value!r}")
        return Path(value) if tp is Path else value
    raise TypeError(f"no config-file rule for {where}'s type {tp!r}")  # a new field type: add a rule


def _merge(obj, overrides, file: Path, prefix: str = ""):
    """A copy of dataclass ``obj`` with ``overrides`` (nested tables) applied, each value checked
    by type (``_typed``) and range (``LIMITS``); an unknown key or a bad value is a ConfigFileError."""
    if not isinstance(overrides, dict):
        what = f"key {prefix[:-1]!r}" if prefix else "the top level"
        raise ConfigFileError(f"{file}: {what} must be a table of {type(obj).__name__} fields, got {type(overrides).__name__}")
    names = {f.name for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    changes = {}
    for k, v in overrides.items():
        if not prefix and k == "study":  # the key's earlier name (shared.cli.ALIASES)
            k = "hypothesis"
        name = prefix + k
        if k not in names:
            raise ConfigFileError(f"{file}: unknown key {name!r}; expected one of {', '.join(sorted(names))}")
        if dataclasses.is_dataclass(getattr(obj, k)):
            changes[k] = _merge(getattr(obj, k), v, file, name + ".")
            continue
        if name == "config" and v is not None:
            raise ConfigFileError(f"{file}: key 'config' cannot name another config file")
        if name == "preset" and v != obj.preset:
            raise ConfigFileError(f"{file}: key 'preset' is {v!r}, but the preset in use is {obj.preset!r}; pass --preset {v}")
        value = _typed(v, hints[k], f"{file}: key {name!r}")
        problem = LIMITS[name].check(value) if name in LIMITS and value is not None else None
        if problem:
            raise ConfigFileError(f"{file}: key {name!r} {problem}")
        changes[k] = value
    return replace(obj, **changes)


def apply_file(cfg: RunConfig, path: Path) -> RunConfig:
    """Apply a JSON (.json) or TOML (.toml) file of overrides (every value checked: ``_merge``)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigFileError(f"--config {path} is a directory, not a JSON or TOML file")
    if not path.exists():
        raise ConfigFileError(f"--config {path} does not exist")
    if not path.is_file():
        raise ConfigFileError(f"--config {path} is not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigFileError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigFileError(f"--config {path}: {e.strerror or e}") from None
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigFileError(f"{path}: invalid TOML: {str(e).splitlines()[0]}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigFileError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    return _merge(cfg, data, path)
