"""Preference data formats: the paper's datasets and TRL's preference formats as people
download them, read into pairs (prompt, two responses, label).

Docs: docs/fullscale.md (§ your data). Tests: tests/test_fullscale_data.py.

Files are read by ``fullscale.records`` (JSON lines, a JSON array, gzipped, parquet or a
folder of parquet shards, told apart by content). Formats:
- ``tldr``: OpenAI TL;DR comparisons (Stiennon et al. 2020), as distributed and as the
  Hugging Face export (every ``info`` key present, ``null`` where a row lacks it):
  ``{"info": {"post" | "article", "title"?, "subreddit"?}, "summaries": [{"text"}, {"text"}],
  "choice": 0|1, "split"?}``. Prompts use the paper's query formats (Stiennon et al. 2020,
  Appendix): Reddit rows ``SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:``,
  CNN/DM rows ``Article:\n{article}\n\nTL;DR:``;
- ``hh``: Anthropic HH (Bai et al. 2022): ``{"chosen", "rejected"}``, two transcripts that share
  everything up to the final ``\n\nAssistant:`` turn; identical final turns are skipped;
- ``arena``: Chatbot Arena (Zheng et al. 2023). The conversations export: ``{"winner":
  "model_a"|"model_b"|"tie"|"tie (bothbad)"|"both_bad", "conversation_a", "conversation_b"}``,
  each a list of ``{"role", "content"}`` (content a string or a list of ``{"type": "text",
  "text"}`` parts); the 55k export: ``{"prompt", "response_a", "response_b"}`` (JSON-encoded
  lists of turns) with ``winner_model_a``/``winner_model_b``/``winner_tie``. A single-turn
  battle gives the user turn as prompt and each side's answer as response. A multi-turn battle
  is skipped and counted: after the first answers the two conversations differ, so no later
  turn has a shared prompt, and the vote judges the whole conversation, not its first turn.
  Ties are skipped for a pairwise loss and counted;
- ``jsonl``: TRL's preference formats (the TRL docs, "Dataset formats": preference): standard
  ``{"prompt", "chosen", "rejected"}`` strings; conversational, the same keys as lists of
  ``{"role", "content"}`` messages; and implicit prompt, only ``chosen``/``rejected`` (strings
  or message lists) whose shared beginning is the prompt. Messages are rendered with the
  policy tokenizer's chat template when it has one (``fullscale.data.apply_chat_template``), else plainly,
  as HH is: ``"\n\n{Role}: {content}"`` per message, the prompt ending in ``"\n\nAssistant:"``.

Any format: a record whose ``split`` field differs from ``--data.split`` (when given) is
skipped and counted. Malformed input (invalid JSON, non-UTF-8 bytes, a missing key, an empty
text, a wrong type) raises ``DataError`` naming the file, the line and the field. Records a
format defines as unusable are skipped and counted by reason in ``Loaded.skipped``, never
dropped silently.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fullscale.records import DataError, records

__all__ = ["Pair", "Loaded", "DataError", "FORMATS", "load_pairs"]


@dataclass(frozen=True)
class Pair:
    """A prompt, two responses, and the label: ``a_wins`` True/False, or None for a tie."""

    prompt: str
    a: str
    b: str
    a_wins: bool | None
    messages: tuple | None = None
    """conversational data: (prompt, a, b) as tuples of (role, content) messages, which
    ``fullscale.data.apply_chat_template`` renders again with the policy tokenizer's chat template"""


@dataclass
class Loaded:
    pairs: list[Pair]
    skipped: Counter = field(default_factory=Counter)


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


def _present(rec: dict, key: str) -> bool:
    """A key that is there and not ``null`` (the Hugging Face exports write every key)."""
    return isinstance(rec, dict) and rec.get(key) is not None


def _tldr(rec: dict, where: str, skipped: Counter) -> Pair | None:
    info = rec.get("info")
    if not isinstance(info, dict):
        raise DataError(f"{where}: missing field 'info' (an object)")
    if _present(info, "post"):
        post = _text(info, "post", where, "info.")
        head = "".join(f"{label}: {prefix}{_text(info, k, where, 'info.').strip()}\n\n"
                       for k, label, prefix in (("subreddit", "SUBREDDIT", "r/"), ("title", "TITLE", "")) if _present(info, k))
        prompt = f"{head}POST: {post.strip()}\n\nTL;DR:"
    elif _present(info, "article"):  # the CNN/DM rows of the validation comparisons
        prompt = f"Article:\n{_text(info, 'article', where, 'info.').strip()}\n\nTL;DR:"
    else:
        raise DataError(f"{where}: field 'info' has neither a 'post' nor an 'article' text")
    s = rec.get("summaries")
    if not isinstance(s, list) or len(s) != 2:
        raise DataError(f"{where}: field 'summaries' must be a list of two objects")
    a, b = (_text(x, "text", where, f"summaries[{i}].") for i, x in enumerate(s))
    choice = rec.get("choice")
    if choice not in (0, 1) or isinstance(choice, bool):
        raise DataError(f"{where}: field 'choice' must be 0 or 1, got {choice!r}")
    return Pair(prompt, a.strip(), b.strip(), choice == 0)


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
    if a == b:
        skipped["hh: chosen and rejected final turns are identical (no preference)"] += 1
        return None
    return Pair(prompt, a, b, True)


def _content(turn, where: str, name: str) -> str:
    """A message's text: a string, or the text parts of a list of ``{"type", "text"}`` parts."""
    if not isinstance(turn, dict) or "content" not in turn:
        raise DataError(f"{where}: {name} must be an object with 'role' and 'content'")
    c = turn["content"]
    if isinstance(c, list):
        c = "".join(p.get("text") or "" for p in c if isinstance(p, dict) and p.get("type", "text") == "text")
    if not isinstance(c, str):
        raise DataError(f"{where}: field '{name}.content' must be a string or a list of text parts, got {type(c).__name__}")
    if not c.strip():
        raise DataError(f"{where}: field '{name}.content' is empty")
    return c


def _turns(conv, where: str, name: str) -> list[tuple[str, str]]:
    if not isinstance(conv, list) or not conv:
        raise DataError(f"{where}: field {name!r} must be a non-empty list of turns")
    out = []
    for k, turn in enumerate(conv):
        role = turn.get("role") if isinstance(turn, dict) else None
        if not isinstance(role, str):
            raise DataError(f"{where}: field '{name}[{k}].role' must be a string")
        out.append((role, _content(turn, where, f"{name}[{k}]")))
    return out


ARENA_WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)", "both_bad")


def _arena(rec: dict, where: str, skipped: Counter) -> Pair | None:
    if "winner_model_a" in rec:
        return _arena_55k(rec, where, skipped)
    winner = rec.get("winner")
    if winner not in ARENA_WINNERS:
        raise DataError(f"{where}: field 'winner' must be one of {', '.join(ARENA_WINNERS)}, got {winner!r}")
    conv_a, conv_b = _turns(rec.get("conversation_a"), where, "conversation_a"), _turns(rec.get("conversation_b"), where, "conversation_b")
    users = [c for r, c in conv_a if r == "user"]
    if not users:
        raise DataError(f"{where}: field 'conversation_a' has no 'user' turn")
    if len(users) > 1:
        skipped["arena: multi-turn battle (the vote judges the whole conversation, no later turn has a shared prompt)"] += 1
        return None
    prompt = users[0]
    if [c for r, c in conv_b if r == "user"][:1] != [prompt]:
        skipped["arena: the two conversations start with different user turns"] += 1
        return None
    answers = [[c for r, c in conv if r == "assistant"] for conv in (conv_a, conv_b)]
    for side, ans in zip("ab", answers):
        if not ans:
            raise DataError(f"{where}: field 'conversation_{side}' has no 'assistant' turn")
    if winner != "model_a" and winner != "model_b":
        skipped[f"arena: {winner} (no preference for a pairwise loss)"] += 1
        return None
    return Pair(prompt, answers[0][0], answers[1][0], winner == "model_a")


def _json_list(rec: dict, key: str, where: str) -> list:
    v = rec.get(key)
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            raise DataError(f"{where}: field {key!r} must be a JSON-encoded list of turns") from None
    if not isinstance(v, list) or not v:
        raise DataError(f"{where}: field {key!r} must be a non-empty list of turns (or its JSON encoding)")
    return v


def _arena_55k(rec: dict, where: str, skipped: Counter) -> Pair | None:
    """The arena-human-preference-55k layout: prompt/response_a/response_b as JSON-encoded
    lists of turns, and three 0/1 winner columns."""
    flags = [rec.get(k) for k in ("winner_model_a", "winner_model_b", "winner_tie")]
    if any(f not in (0, 1) for f in flags) or sum(flags) != 1:
        raise DataError(f"{where}: fields winner_model_a, winner_model_b, winner_tie must be 0/1 with exactly one 1, got {flags}")
    prompts = _json_list(rec, "prompt", where)
    if len(prompts) > 1:
        skipped["arena: multi-turn battle (the vote judges the whole conversation, no later turn has a shared prompt)"] += 1
        return None
    texts = [prompts[0], _json_list(rec, "response_a", where)[0], _json_list(rec, "response_b", where)[0]]
    if not all(isinstance(t, str) and t.strip() for t in texts):
        skipped["arena: a missing or empty prompt or response"] += 1
        return None
    if flags[2]:
        skipped["arena: tie (no preference for a pairwise loss)"] += 1
        return None
    return Pair(texts[0], texts[1], texts[2], bool(flags[0]))


def _render(messages: list[tuple[str, str]]) -> str:
    """Messages as plain text, HH's way: ``"\n\n{Role}: {content}"`` per message."""
    return "".join(f"\n\n{role.capitalize()}: {content.strip()}" for role, content in messages)


def _response(messages: list[tuple[str, str]]) -> str:
    """What follows the prompt's ``"\n\nAssistant:"``: the first message's text, then any
    further messages rendered as ``_render`` does."""
    return messages[0][1].strip() + _render(messages[1:])


def _common_prefix(a: str, b: str) -> int:
    """The length of the shared beginning of two strings, backed off to the last whitespace
    so a word is not split (TRL's ``extract_prompt`` for the implicit-prompt format)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    if a != b:
        while n > 0 and not a[n - 1].isspace():
            n -= 1
    return n


def _jsonl(rec: dict, where: str, skipped: Counter) -> Pair | None:
    pair = _trl_pair(rec, where)
    if pair is None or pair.a.strip() == pair.b.strip():
        skipped["jsonl: chosen and rejected are identical (no preference)"] += 1
        return None
    return pair


def _trl_pair(rec: dict, where: str) -> Pair | None:
    """A record of one of TRL's preference formats as a pair (chosen first); None when chosen
    and rejected are the same messages."""
    chosen, rejected = rec.get("chosen"), rec.get("rejected")
    if isinstance(chosen, list) or isinstance(rejected, list):  # conversational
        c, r = _turns(chosen, where, "chosen"), _turns(rejected, where, "rejected")
        if "prompt" in rec:
            p = _turns(rec["prompt"], where, "prompt")
        else:  # implicit prompt: the messages both share
            k = 0
            while k < min(len(c), len(r)) and c[k] == r[k]:
                k += 1
            p, c, r = c[:k], c[k:], r[k:]
            if not p:
                raise DataError(f"{where}: fields 'chosen' and 'rejected' share no first message to be the prompt (or give 'prompt')")
        if not c or not r:
            return None
        return Pair(_render(p) + HH_TURN, _response(c), _response(r), True, (tuple(p), tuple(c), tuple(r)))
    if "prompt" in rec:
        return Pair(_text(rec, "prompt", where), _text(rec, "chosen", where), _text(rec, "rejected", where), True)
    chosen, rejected = _text(rec, "chosen", where), _text(rec, "rejected", where)  # implicit prompt
    if chosen == rejected:
        return None
    n = _common_prefix(chosen, rejected)
    if n == 0:
        raise DataError(f"{where}: fields 'chosen' and 'rejected' share no beginning to be the prompt (or give 'prompt')")
    return Pair(chosen[:n], chosen[n:], rejected[n:], True)


FORMATS = {"tldr": _tldr, "hh": _hh, "arena": _arena, "jsonl": _jsonl}


def load_pairs(path: str | Path, fmt: str, split: str | None = None) -> Loaded:
    """Read every record of ``path`` in format ``fmt`` (one of ``FORMATS``); with ``split``,
    only records whose ``split`` field is that value (the others skipped and counted).
    Docs: docs/fullscale.md (Your models and your data)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; choose from {', '.join(FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    out = Loaded([])
    for where, rec in records(path):
        if not isinstance(rec, dict):
            raise DataError(f"{where}: a record must be a JSON object, got {type(rec).__name__}")
        if split is not None and rec.get("split") != split:
            out.skipped[f"split {rec.get('split')!r}, not {split!r}"] += 1
            continue
        pair = FORMATS[fmt](rec, where, out.skipped)
        if pair is not None:
            out.pairs.append(pair)
    if not out.pairs:
        raise DataError(f"{path}: no usable pairs (skipped: {dict(out.skipped)})")
    return out
