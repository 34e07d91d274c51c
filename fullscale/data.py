"""Preference data: loaders for local files in the paper's datasets' native formats,
and tokenisation into the tensors the LLM path trains on.

Docs: docs/fullscale.md (§ data). Tests: tests/test_fullscale_data.py.

Formats (one record per line, JSON; Arena also as one JSON array):
- ``tldr``: OpenAI TL;DR comparisons (Stiennon et al. 2020):
  ``{"info": {"post" | "article", "title"?, "subreddit"?}, "summaries": [{"text"}, {"text"}], "choice": 0|1}``;
- ``hh``: Anthropic HH (Bai et al. 2022): ``{"chosen", "rejected"}``, two transcripts
  that share everything up to the final ``\\n\\nAssistant:`` turn;
- ``arena``: Chatbot Arena conversations (Zheng et al. 2023): ``{"winner":
  "model_a"|"model_b"|"tie"|"tie (bothbad)", "conversation_a", "conversation_b"}``,
  each a list of ``{"role", "content"}``; the first user turn is the prompt and
  each side's first assistant turn its response. Ties are skipped for a pairwise
  loss and counted;
- ``jsonl``: ``{"prompt", "chosen", "rejected"}``.

Malformed input (invalid JSON, non-UTF-8 bytes, a missing key, an empty text,
a wrong type) raises ``DataError`` naming the file, the line and the field.
Records a format defines as unusable are skipped and counted by reason in
``Loaded.skipped``, never dropped silently.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["Pair", "Loaded", "DataError", "FORMATS", "load_pairs", "Encoded", "encode_pairs", "Prepared", "prepare"]


@dataclass(frozen=True)
class Pair:
    """A prompt, two responses, and the label: ``a_wins`` True/False, or None for a tie."""

    prompt: str
    a: str
    b: str
    a_wins: bool | None


@dataclass
class Loaded:
    pairs: list[Pair]
    skipped: Counter = field(default_factory=Counter)


class DataError(ValueError):
    """A malformed record: the message names file, line and field."""


def _text(rec: dict, key: str, where: str, prefix: str = "") -> str:
    """``rec[key]`` as a non-empty string; ``prefix`` names where ``rec`` sits in the record."""
    name = prefix + key
    if not isinstance(rec, dict) or key not in rec:
        raise DataError(f"{where}: missing field {name!r}")
    obj = rec[key]
    if not isinstance(obj, str):
        raise DataError(f"{where}: field {name!r} must be a string, got {type(obj).__name__}")
    if not obj.strip():
        raise DataError(f"{where}: field {name!r} is empty")
    return obj


def _tldr(rec: dict, where: str, skipped: Counter) -> Pair | None:
    info = rec.get("info")
    if not isinstance(info, dict):
        raise DataError(f"{where}: missing field 'info' (an object)")
    body = _text(info, "post" if "post" in info else "article", where, "info.")
    head = "".join(f"{k.upper()}: {info[k]}\n" for k in ("subreddit", "title") if isinstance(info.get(k), str))
    s = rec.get("summaries")
    if not isinstance(s, list) or len(s) != 2:
        raise DataError(f"{where}: field 'summaries' must be a list of two objects")
    a, b = (_text(x, "text", where, f"summaries[{i}].") for i, x in enumerate(s))
    choice = rec.get("choice")
    if choice not in (0, 1) or isinstance(choice, bool):
        raise DataError(f"{where}: field 'choice' must be 0 or 1, got {choice!r}")
    return Pair(f"{head}POST: {body}\nTL;DR:", a.strip(), b.strip(), choice == 0)


HH_TURN = "\n\nAssistant:"


def _hh(rec: dict, where: str, skipped: Counter) -> Pair | None:
    chosen, rejected = _text(rec, "chosen", where), _text(rec, "rejected", where)
    i, j = chosen.rfind(HH_TURN), rejected.rfind(HH_TURN)
    if i < 0:
        raise DataError(f"{where}: field 'chosen' has no {HH_TURN!r} turn")
    if j < 0:
        raise DataError(f"{where}: field 'rejected' has no {HH_TURN!r} turn")
    prompt = chosen[: i + len(HH_TURN)]
    if rejected[: j + len(HH_TURN)] != prompt:
        skipped["hh: chosen and rejected differ before the last assistant turn"] += 1
        return None
    a, b = chosen[i + len(HH_TURN):].strip(), rejected[j + len(HH_TURN):].strip()
    if not a or not b:
        skipped["hh: empty final assistant turn"] += 1
        return None
    return Pair(prompt, a, b, True)


def _first(conv, role: str, where: str, name: str) -> str:
    if not isinstance(conv, list):
        raise DataError(f"{where}: field {name!r} must be a list of turns")
    for k, turn in enumerate(conv):
        if isinstance(turn, dict) and turn.get("role") == role:
            return _text(turn, "content", where, f"{name}[{k}].")
    raise DataError(f"{where}: field {name!r} has no {role!r} turn")


def _arena(rec: dict, where: str, skipped: Counter) -> Pair | None:
    winner = rec.get("winner")
    if winner not in ("model_a", "model_b", "tie", "tie (bothbad)"):
        raise DataError(f"{where}: field 'winner' must be model_a, model_b, tie or 'tie (bothbad)', got {winner!r}")
    prompt = _first(rec.get("conversation_a"), "user", where, "conversation_a")
    if _first(rec.get("conversation_b"), "user", where, "conversation_b") != prompt:
        skipped["arena: the two conversations start with different user turns"] += 1
        return None
    a = _first(rec["conversation_a"], "assistant", where, "conversation_a")
    b = _first(rec["conversation_b"], "assistant", where, "conversation_b")
    if winner.startswith("tie"):
        skipped[f"arena: {winner} (no preference for a pairwise loss)"] += 1
        return None
    return Pair(prompt, a, b, winner == "model_a")


def _jsonl(rec: dict, where: str, skipped: Counter) -> Pair | None:
    return Pair(_text(rec, "prompt", where), _text(rec, "chosen", where), _text(rec, "rejected", where), True)


FORMATS = {"tldr": _tldr, "hh": _hh, "arena": _arena, "jsonl": _jsonl}


def _records(path: Path):
    """(line number, parsed object) for a JSON-lines file, or for a JSON array file."""
    raw = path.read_bytes()
    if raw.lstrip()[:1] == b"[":
        try:
            arr = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 (byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        yield from ((f"{path}: record {i}", r) for i, r in enumerate(arr))
        return
    for n, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{n}: not UTF-8 (byte {e.start} of the line)") from None
        try:
            yield f"{path}:{n}", json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: invalid JSON: {e.msg}") from None


def load_pairs(path: str | Path, fmt: str) -> Loaded:
    """Read every record of ``path`` in format ``fmt`` (one of ``FORMATS``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; choose from {', '.join(FORMATS)}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    out = Loaded([])
    for where, rec in _records(path):
        if not isinstance(rec, dict):
            raise DataError(f"{where}: a record must be a JSON object, got {type(rec).__name__}")
        pair = FORMATS[fmt](rec, where, out.skipped)
        if pair is not None:
            out.pairs.append(pair)
    if not out.pairs:
        raise DataError(f"{path}: no usable pairs (skipped: {dict(out.skipped)})")
    return out


# ---------------------------------------------------------------- tokenisation
@dataclass
class Encoded:
    """Pairs as tensors. prompt_ids/prompt_mask: [N, P] (left-padded); x: [M] prompt row
    of each pair; y_a, y_b: [M, T] responses (EOS appended, right-padded); a_wins: [M]
    bool; tie: [M] bool (a_wins is False there)."""

    prompt_texts: list[str]
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    a_wins: torch.Tensor
    tie: torch.Tensor


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_pairs(pairs: list[Pair], tokenizer, max_prompt: int, max_response: int, eos: int, pad: int) -> Encoded:
    """Tokenise: prompts deduplicated and cut from the left to ``max_prompt`` tokens
    (the end of a prompt is nearest the response); responses get EOS appended and
    are cut to ``max_response`` tokens (a cut response has no EOS)."""
    texts = list(dict.fromkeys(p.prompt for p in pairs))
    row = {t: i for i, t in enumerate(texts)}
    p_tok = [_ids(tokenizer, t)[-max_prompt:] for t in texts]
    P = max(map(len, p_tok))
    prompt_ids = torch.full((len(texts), P), pad, dtype=torch.long)
    prompt_mask = torch.zeros((len(texts), P), dtype=torch.long)
    for i, t in enumerate(p_tok):
        if not t:
            raise DataError(f"prompt {texts[i][:40]!r} has no tokens")
        prompt_ids[i, P - len(t):] = torch.tensor(t)
        prompt_mask[i, P - len(t):] = 1

    def resp(text):
        t = (_ids(tokenizer, text) + [eos])[:max_response]
        return t + [pad] * (max_response - len(t))

    return Encoded(texts, prompt_ids, prompt_mask, torch.tensor([row[p.prompt] for p in pairs]),
                   torch.tensor([resp(p.a) for p in pairs]), torch.tensor([resp(p.b) for p in pairs]),
                   torch.tensor([bool(p.a_wins) for p in pairs]), torch.tensor([p.a_wins is None for p in pairs]))


# ---------------------------------------------------------------- a run's data, read and encoded in memory
@dataclass
class Prepared:
    """A run's data before anything is written: the tokenizer, the tensors of the data stage
    (prompt_ids, prompt_mask, x, y_a, y_b, a_wins, tie, train), its info record, and the
    synthetic task's prompt texts (None for a data file)."""

    tokenizer: object
    tensors: dict
    info: dict
    prompt_texts: list[str] | None


def prepare(cfg) -> Prepared:
    """Build the synthetic task or read ``cfg.data.path``; tokenise with the policy's tokenizer
    (``--models.policy-path``) or a word tokenizer of the data; hold out 10% of the pairs
    (seeded by ``cfg.seed``) to measure the preference models. Writes nothing."""
    from fullscale.models import load_tokenizer, special_ids, word_tokenizer

    skipped: Counter = Counter()
    if cfg.data.source == "synthetic":
        from fullscale.task import END, FILLERS, make_task

        task = make_task(cfg.data.task, cfg.data.max_response_tokens - 1)
        pairs, words = task.pairs, task.words + FILLERS + [END]
    else:
        loaded = load_pairs(cfg.data.path, cfg.data.source)
        pairs, skipped = loaded.pairs[: cfg.data.max_pairs], loaded.skipped
        counts = Counter(w for p in pairs for t in (p.prompt, p.a, p.b) for w in t.split())
        words = [w for w, _ in counts.most_common(cfg.data.vocab_words)]
    tok = load_tokenizer(cfg.models.policy_path) if cfg.models.policy_path is not None else word_tokenizer(words)
    ids = special_ids(tok)
    enc = encode_pairs(pairs, tok, cfg.data.max_prompt_tokens, cfg.data.max_response_tokens, ids["eos"], ids["pad"])
    g = torch.Generator().manual_seed(cfg.seed)
    train = torch.rand(len(enc.x), generator=g) >= 0.1  # 10% held out to measure the preference models
    tensors = {"prompt_ids": enc.prompt_ids, "prompt_mask": enc.prompt_mask, "x": enc.x, "y_a": enc.y_a,
               "y_b": enc.y_b, "a_wins": enc.a_wins, "tie": enc.tie, "train": train}
    info = {"pairs": len(pairs), "prompts": len(enc.prompt_texts), "ties": int(enc.tie.sum()),
            "skipped": dict(skipped), "vocab": len(tok), "source": cfg.data.source}
    return Prepared(tok, tensors, info, enc.prompt_texts if cfg.data.source == "synthetic" else None)
