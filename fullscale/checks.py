"""Every input of ``python -m fullscale.run`` checked before any work, each problem as one line.

Docs: docs/fullscale.md (§ bad input). Tests: tests/test_fullscale_checks.py.

Two passes, both before anything is written to ``--out``:
1. ``check_config``: the config's values (type checks happen as the flags and the
   config file are parsed; ranges here, ``fullscale.config.LIMITS``), the rules that
   join two values, and the files the config names: the data file and the local
   model directories (config.json, weights and tokenizer present and readable);
2. ``check_world``: what needs the data read: sequence lengths against each model's
   maximum length, the batch against the number of pairs.
Each returns None or the message of an error (the caller prints ``error: <message>``
and exits 2).
"""

from __future__ import annotations

import importlib.util
import json
import os
import zipfile
from pathlib import Path

import torch

from fullscale.config import RunConfig, flag, out_of_range

__all__ = ["check_config", "check_world", "check_data_file", "check_model_dir", "model_max_len"]

_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")


def check_data_file(path: Path, name: str = "--data.path") -> str | None:
    """A readable data file (JSON lines or array, gzipped or not, parquet) or a folder of
    parquet shards (``fullscale.records``); parquet only when its extra is installed."""
    if path.is_dir():
        if not any(path.glob("*.parquet")):
            return f"{name} {path} is a directory without *.parquet shards; give the data file itself"
        kind = "parquet"
    elif not path.exists():
        return f"{name} {path} does not exist"
    elif not path.is_file():
        return f"{name} {path} is not a regular file"
    else:
        try:
            with path.open("rb") as f:
                head = f.read(4)
        except OSError as e:
            return f"{name} {path} cannot be read: {e.strerror or e}"
        kind = "parquet" if head == b"PAR1" else "other"
    if kind == "parquet" and importlib.util.find_spec("pyarrow") is None:
        return f"{name} {path} is parquet; reading it needs pyarrow: pip install -e \".[parquet]\""
    return None


def check_model_dir(path: Path, name: str) -> str | None:
    """A local model directory that ``fullscale.models.load_model`` can load: a valid
    config.json of a known architecture, its weights (safetensors headers checked, so a
    truncated or corrupt file is found here, not mid-run), and tokenizer files."""
    if not path.is_dir():
        return f"{name} {path} is not a directory" + ("" if path.exists() else " (it does not exist)")
    cfg = path / "config.json"
    if not cfg.is_file():
        return f"{name} {path} has no config.json; models load from local directories saved with save_pretrained"
    try:
        json.loads(cfg.read_text(encoding="utf-8"))
        from transformers import AutoConfig  # lazily: transformers takes seconds to import; only a model folder needs it

        AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001  (json, unicode, or the library's ValueError/KeyError/OSError)
        return f"{name} {path}/config.json cannot be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    weights = [path / w for w in _WEIGHTS if (path / w).is_file()]
    if not weights:
        return f"{name} {path} has no weights ({' or '.join(_WEIGHTS[::2])})"
    files = weights[:1]
    if files[0].name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(files[0].read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as e:
            return f"{name} {files[0]} is not a valid weight index: {e}"
        files = [path / s for s in shards]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            return f"{name} {path} lacks weight shard(s) {', '.join(missing)}"
    for f in files:
        problem = _weights_problem(f)
        if problem:
            return f"{name} {f} {problem}"
    if not any((path / t).is_file() for t in _TOKENIZER):
        return f"{name} {path} has no tokenizer files ({', '.join(_TOKENIZER)}); save the tokenizer beside the model"
    return None


def _weights_problem(f: Path) -> str | None:
    if f.suffix == ".safetensors":
        from safetensors import safe_open  # lazily: a dependency of transformers, only to open a weights file

        try:
            with safe_open(str(f), "pt"):
                return None
        except Exception as e:  # noqa: BLE001  (SafetensorError and OSError)
            return f"is corrupt or truncated ({str(e).splitlines()[0]})"
    if not zipfile.is_zipfile(f):
        return "is corrupt or truncated (not a torch.save archive)"
    return None


def model_max_len(cfg: RunConfig, which: str) -> int:
    """The longest sequence the model ``which`` (policy, golden_pm, proxy_pm) accepts."""
    m = cfg.models
    path = getattr(m, f"{which}_path")
    if which == "golden_pm" and path is None and m.golden_pm_init == "sft":
        which, path = "policy", m.policy_path
    if path is None:
        return getattr(m, which).max_len
    from transformers import AutoConfig  # lazily: transformers takes seconds to import; only a model folder needs it

    c = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(getattr(c, key, None), int):
            return getattr(c, key)
    return 1 << 30  # the architecture states no limit


def check_config(cfg: RunConfig) -> str | None:
    """Ranges, the rules between values, and the files and directories the config names."""
    problem = out_of_range(cfg)
    if problem:
        return problem
    d, m, ev = cfg.data, cfg.models, cfg.eval
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and cfg.dist.strategy == "none":
        return "started by torchrun with several processes but --dist.strategy none: add --dist.strategy ddp or fsdp"
    if world > 1 and cfg.out is None:
        return "several processes need one run folder: give --out DIR"
    if world > cfg.train.batch_size:
        return f"--train.batch-size {cfg.train.batch_size} is smaller than the {world} processes: each needs at least one row of the global batch"
    if ev.kl_prompts > ev.win_prompts:
        return f"--eval.kl-prompts {ev.kl_prompts} must be at most --eval.win-prompts {ev.win_prompts} (the KL is measured on the first win-rate prompts)"
    if d.source == "synthetic":
        if d.path is not None:
            return "--data.path is read only with --data.source tldr, hh, arena or jsonl (the source is synthetic); add --data.source"
        if d.task.doc_words > d.task.words:
            return f"--data.task.doc-words {d.task.doc_words} cannot exceed --data.task.words {d.task.words}"
    elif d.path is None:
        return f"--data.source {d.source} needs --data.path (a local file)"
    else:
        problem = check_data_file(d.path)
        if problem:
            return problem
    built = {"policy": m.policy_path is None, "proxy_pm": m.proxy_pm_path is None,
             "golden_pm": m.golden_pm_path is None and m.golden_pm_init == "scratch"}
    for which, spec in (("policy", m.policy), ("golden_pm", m.golden_pm), ("proxy_pm", m.proxy_pm)):
        name = f"models.{which}"
        if built[which] and spec.width % spec.heads:
            return f"{flag(name + '.width')} {spec.width} must be a multiple of {flag(name + '.heads')} {spec.heads}"
        path = getattr(m, f"{which}_path")
        if path is not None:
            problem = check_model_dir(path, flag(f"models.{which}_path"))
            if problem:
                return problem
    if m.golden_judge_path is not None and (m.golden_pm_path is not None or m.golden_pm_init != "scratch"):
        return "--models.golden-judge-path replaces the golden PM; drop --models.golden-pm-path / --models.golden-pm-init"
    if m.proxy_judge_path is not None and m.proxy_pm_path is not None:
        return "--models.proxy-judge-path replaces the proxy PM; drop --models.proxy-pm-path"
    for which in ("golden", "proxy"):
        path = getattr(m, f"{which}_judge_path")
        if path is None:
            continue
        problem = check_model_dir(path, flag(f"models.{which}_judge_path"))
        if problem:
            return problem
        from transformers import AutoConfig  # lazily, as above

        n = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False).num_labels
        if n != 1:
            return f"{flag(f'models.{which}_judge_path')} {path}: a judge must be a reward model with one score per text (num_labels 1), this one has {n}"
    if cfg.hypothesis == "scale" and m.policy_path is not None:
        return "the scale study builds policies of several widths; it cannot scale a model loaded from --models.policy-path"
    if cfg.device == "cuda":
        if not torch.cuda.is_available():
            return "--device cuda, but no CUDA device is available"
    return None


def check_world(cfg: RunConfig, prompt_len: int, pairs: int, train_pairs: int) -> str | None:
    """What needs the data read: ``prompt_len`` (the longest prompt in tokens, after cutting),
    ``pairs`` (all pairs, D_golden's size) and ``train_pairs`` (labelled training pairs, no ties).

    Sequences: the policy reads prompt + response; a pairwise preference model prompt + two
    responses + a scoring token, a Bradley–Terry one (and the RLHF arm's reward model) prompt +
    one response + the scoring token (fullscale.lm.pm_inputs)."""
    T = cfg.data.max_response_tokens
    per_pm = 2 if cfg.models.pm_kind == "pairwise" else 1
    needs = {"policy": prompt_len + T, "golden_pm": prompt_len + per_pm * T + 1, "proxy_pm": prompt_len + per_pm * T + 1}
    for which in ("golden", "proxy"):  # a judge cuts its own texts to its own maximum length
        if getattr(cfg.models, f"{which}_judge_path") is not None:
            del needs[f"{which}_pm"]
    names = {"policy": "policy", "golden_pm": "golden PM", "proxy_pm": "proxy PM"}
    for which, need in needs.items():
        have = model_max_len(cfg, which)
        if need > have:
            source = (flag(f"models.{which}_path") if getattr(cfg.models, f"{which}_path") is not None
                      else flag(f"models.{which}.max_len"))
            parts = (f"a response of {T}" if which == "policy" else
                     f"{per_pm} response{'s' if per_pm > 1 else ''} of {T} + 1")
            return (f"the {names[which]} reads up to {need} tokens (a prompt of {prompt_len} + {parts}), beyond its maximum "
                    f"length {have} ({source}); lower --data.max-prompt-tokens or --data.max-response-tokens")
    if cfg.train.batch_size > pairs:
        return f"--train.batch-size {cfg.train.batch_size} exceeds the {pairs} pairs of the data (the offline arms draw batches from them)"
    if train_pairs < 1:
        return f"the data has no labelled training pairs without a tie (of {pairs} pairs, 10% are held out); use more data"
    return None
