"""Models and tokenizers of the LLM path: built from a config, or loaded from a local directory.

Docs: docs/fullscale.md. Tests: tests/test_fullscale_lm.py.

With nothing downloaded, the policy and both preference models are small
GPT-2 or Llama models built from a config and trained from scratch; the scale
study varies the policy's width so its parameter count spans 16×. Any causal
LM that ``transformers`` loads from a local directory may replace them
(``local_files_only=True``, never ``trust_remote_code``). A preference model is
a causal LM with a scalar head (``AutoModelForSequenceClassification`` with one
label), in the paper's pairwise form or as a Bradley–Terry reward model.
Everything is saved with ``save_pretrained`` (safetensors) with its tokenizer,
written to a temporary directory and renamed, so a crash never leaves half a
checkpoint.

Every model runs in eval mode with dropout 0: training then draws no random
numbers from torch's global generator, which is what makes a resumed run
reproduce an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

__all__ = ["SPECIALS", "ModelSpec", "word_tokenizer", "special_ids", "build_model", "load_model", "load_tokenizer", "save_model", "width_for_capacity", "param_count"]

SPECIALS = ["<pad>", "<eos>", "<sep>", "<cls>", "<unk>"]


@dataclass(frozen=True)
class ModelSpec:
    """A model built from a config: architecture and size."""

    arch: Literal["gpt2", "llama"] = "gpt2"
    """gpt2 or llama"""
    width: int = 64
    """hidden size (a multiple of ``heads``)"""
    layers: int = 2
    """transformer blocks"""
    heads: int = 4
    """attention heads"""
    max_len: int = 128
    """longest sequence (prompt + two responses + 1 for a preference model)"""


def word_tokenizer(words: list[str]):
    """A whitespace word-level tokenizer over ``words`` plus ``SPECIALS`` (ids 0–4),
    as a ``PreTrainedTokenizerFast`` that ``save_pretrained`` writes and
    ``AutoTokenizer`` loads back. Unknown words map to ``<unk>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers  # lazily: transformers takes seconds to import
    from transformers import PreTrainedTokenizerFast  # lazily: transformers takes seconds to import

    vocab = {w: i for i, w in enumerate(SPECIALS + [w for w in dict.fromkeys(words) if w not in SPECIALS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", sep_token="<sep>",
                                   cls_token="<cls>", unk_token="<unk>")


def special_ids(tokenizer) -> dict[str, int]:
    """pad, eos, sep, cls ids; a tokenizer without pad/sep/cls reuses eos for them."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token; the policy needs one to end responses")
    pick = lambda t: eos if t is None else t  # noqa: E731
    return {"pad": pick(tokenizer.pad_token_id), "eos": eos, "sep": pick(tokenizer.sep_token_id), "cls": pick(tokenizer.cls_token_id)}


def param_count(spec: ModelSpec, vocab: int, ids: dict[str, int]) -> int:
    """Parameters of the causal LM ``spec`` describes (built on the meta device: no memory, no init)."""
    from transformers import AutoModelForCausalLM  # lazily: transformers takes seconds to import

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(_config(spec, vocab, ids, None))
    return sum(p.numel() for p in model.parameters())


def width_for_capacity(spec: ModelSpec, vocab: int, ids: dict[str, int], capacity: float) -> int:
    """The hidden size (a multiple of ``heads``) whose parameter count, embeddings included,
    is closest on a log scale to ``capacity`` × the base model's: the scale study's 16× is
    16× in parameters, as in the paper's Large → XXL."""
    if capacity == 1.0:
        return spec.width
    target = capacity * param_count(spec, vocab, ids)
    guess = spec.width * math.sqrt(capacity)
    candidates = {max(spec.heads, int(round(f * guess / spec.heads)) * spec.heads) for f in np.linspace(0.5, 2.0, 31)}
    return min(sorted(candidates), key=lambda w: abs(math.log(param_count(replace(spec, width=w), vocab, ids) / target)))


def _config(spec: ModelSpec, vocab: int, ids: dict[str, int], num_labels: int | None):
    from transformers import GPT2Config, LlamaConfig  # lazily: transformers takes seconds to import

    if spec.width % spec.heads:
        raise ValueError(f"width {spec.width} must be a multiple of heads {spec.heads}")
    common = dict(vocab_size=vocab, pad_token_id=ids["pad"], eos_token_id=ids["eos"], bos_token_id=ids["eos"])
    if num_labels is not None:
        common["num_labels"] = num_labels
    if spec.arch == "gpt2":
        return GPT2Config(n_embd=spec.width, n_layer=spec.layers, n_head=spec.heads, n_positions=spec.max_len,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    if spec.arch == "llama":
        return LlamaConfig(hidden_size=spec.width, intermediate_size=4 * spec.width, num_hidden_layers=spec.layers,
                           num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
                           max_position_embeddings=spec.max_len, attention_dropout=0.0, tie_word_embeddings=True, **common)
    raise ValueError(f"unknown architecture {spec.arch!r}; choose gpt2 or llama")


def build_model(spec: ModelSpec, vocab: int, ids: dict[str, int], seed: int, head: bool = False):
    """A freshly initialised causal LM (``head=False``) or scalar-head model (``head=True``),
    initialised from ``seed``."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification  # lazily: transformers takes seconds to import

    cfg = _config(spec, vocab, ids, 1 if head else None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (AutoModelForSequenceClassification if head else AutoModelForCausalLM).from_config(cfg)
    return model.eval()


def load_model(path: str | Path, head: bool = False, device: str = "cpu"):
    """Load (model, tokenizer) from a local directory; no download, no remote code."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification  # lazily: transformers takes seconds to import

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model directory (no config.json); models load from local paths only")
    cls = AutoModelForSequenceClassification if head else AutoModelForCausalLM
    kw = {"num_labels": 1} if head else {}
    try:
        model = cls.from_pretrained(path, local_files_only=True, trust_remote_code=False, **kw)
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # corrupt weights, an unknown architecture
        raise ValueError(f"{path}: the model cannot be loaded ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    tok = load_tokenizer(path)
    if head and model.config.pad_token_id is None:
        model.config.pad_token_id = special_ids(tok)["pad"]
    return model.to(device).eval(), tok


def load_tokenizer(path: str | Path):
    """The tokenizer of a local model directory (no download, no remote code); a ValueError
    naming the directory when it has none that loads."""
    from transformers import AutoTokenizer  # lazily: transformers takes seconds to import

    try:
        return AutoTokenizer.from_pretrained(Path(path), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: its tokenizer cannot be loaded ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def save_model(model, tokenizer, path: str | Path) -> None:
    """save_pretrained (safetensors) with the tokenizer, atomically (temp dir, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
