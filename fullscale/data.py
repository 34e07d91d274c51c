"""A run's preference data as tensors: pairs read (``fullscale.formats``), rendered with the
policy tokenizer's chat template where they are conversations, tokenised, and held out.

Docs: docs/fullscale.md (§ your data). Tests: tests/test_fullscale_data.py.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from fullscale.formats import DataError, Pair, load_pairs
from fullscale.models import load_tokenizer, special_ids, word_tokenizer
from fullscale.task import END, FILLERS, make_task

__all__ = ["DataError", "apply_chat_template", "Encoded", "encode_pairs", "Prepared", "prepare"]


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


def apply_chat_template(pairs: list[Pair], tokenizer) -> list[Pair]:
    """Conversational pairs rendered with the tokenizer's chat template, when it has one
    (the transformers docs, "Chat templates"): the prompt is the template applied to the
    prompt messages with the generation prompt; a response is what the template adds after
    that prompt when the response's messages follow it (its end-of-turn tokens included).
    Other pairs, and every pair when the tokenizer has no template, are returned as they are
    (the plain rendering of ``_render``)."""
    if not getattr(tokenizer, "chat_template", None):
        return pairs
    out = []
    for pair in pairs:
        if pair.messages is None:
            out.append(pair)
            continue
        p, a, b = ([{"role": r, "content": c} for r, c in m] for m in pair.messages)
        prompt = tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        responses = []
        for resp in (a, b):
            full = tokenizer.apply_chat_template(p + resp, tokenize=False)
            if not full.startswith(prompt):
                raise DataError("the tokenizer's chat template renders a conversation differently from its prompt "
                                f"(prompt {prompt[-40:]!r}, conversation {full[:len(prompt)][-40:]!r}); the response boundary is undefined")
            responses.append(full[len(prompt):])
        out.append(Pair(prompt, responses[0], responses[1], pair.a_wins, pair.messages))
    return out


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
    skipped: Counter = Counter()
    if cfg.data.source == "synthetic":
        task = make_task(cfg.data.task, cfg.data.max_response_tokens - 1)
        pairs, words = task.pairs, task.words + FILLERS + [END]
    else:
        loaded = load_pairs(cfg.data.path, cfg.data.source, cfg.data.split)
        pairs, skipped = loaded.pairs[: cfg.data.max_pairs], loaded.skipped
        counts = Counter(w for p in pairs for t in (p.prompt, p.a, p.b) for w in t.split())
        words = [w for w, _ in counts.most_common(cfg.data.vocab_words)]
    tok = load_tokenizer(cfg.models.policy_path) if cfg.models.policy_path is not None else word_tokenizer(words)
    pairs = apply_chat_template(pairs, tok)
    ids = special_ids(tok)
    enc = encode_pairs(pairs, tok, cfg.data.max_prompt_tokens, cfg.data.max_response_tokens, ids["eos"], ids["pad"])
    g = torch.Generator().manual_seed(cfg.seed)
    train = torch.rand(len(enc.x), generator=g) >= 0.1  # 10% held out to measure the preference models
    tensors = {"prompt_ids": enc.prompt_ids, "prompt_mask": enc.prompt_mask, "x": enc.x, "y_a": enc.y_a,
               "y_b": enc.y_b, "a_wins": enc.a_wins, "tie": enc.tie, "train": train}
    info = {"pairs": len(pairs), "prompts": len(enc.prompt_texts), "ties": int(enc.tie.sum()),
            "skipped": dict(skipped), "vocab": len(tok), "source": cfg.data.source}
    return Prepared(tok, tensors, info, enc.prompt_texts if cfg.data.source == "synthetic" else None)
