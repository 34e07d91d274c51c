"""A built-in synthetic task that behaves like summarisation and needs no download.

Docs: docs/fullscale.md. Tests: tests/test_fullscale_data.py.

Prompts are short "documents": a handful of distinct content words followed by
``tl;dr``. A hidden programmatic *rater* scores a response (its words up to
EOS) by how much of the document's salient content it covers, minus penalties
for repetition, padding (fillers and words not in the document), length, and
for running on without ending (a response cut off at the length limit) (Stiennon et al. 2020's TL;DR raters ask for
exactly this: coverage, concision, no filler). Salience is hidden: each word
has a weight, and the document's first words (its "lead") count double.

The initial pairs come from *writers of mixed quality* (careful extractive
writers, careless ones, ramblers that repeat, padders that add filler), two
writers per pair; the "human" label is the rater's hard decision, flipped with
probability ``label_noise``. The golden preference model is trained on those
labels (it plays the humans, as in Tang et al. 2024), and the rater itself is
available as an exact oracle for checks (``Rater`` works on token tensors).

The task produces the same records as the dataset loaders (``fullscale.formats``),
so everything after this module treats synthetic and real data alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fullscale.formats import Pair
from fullscale.lm import response_mask

__all__ = ["TaskSpec", "SynthTask", "Rater", "make_task"]

FILLERS = ["um", "so", "basically", "very", "really", "like"]
END = "tl;dr"


@dataclass(frozen=True)
class TaskSpec:
    """The synthetic summarisation task."""

    prompts: int = 256
    """distinct documents"""
    pairs: int = 2048
    """initial labelled pairs (two writers per pair, prompts drawn uniformly)"""
    words: int = 40
    """content vocabulary"""
    doc_words: int = 6
    """distinct content words per document"""
    label_noise: float = 0.1
    """probability that a "human" label is the opposite of the rater's decision"""
    seed: int = 0
    """seed of the task (salience, documents, writers, labels)"""


@dataclass
class SynthTask:
    spec: TaskSpec
    words: list[str]
    salience: dict[str, float]
    docs: list[list[str]]
    pairs: list[Pair]

    def prompt_text(self, i: int) -> str:
        return " ".join(self.docs[i] + [END])


def _score_words(doc: list[str], resp: list[str], ended: bool, sal: dict[str, float]) -> float:
    """The rater on words (reference for ``Rater``): coverage − penalties."""
    lead = set(doc[:2])
    seen, cover, junk, rep = set(), 0.0, 0, 0
    for w in resp:
        if w in seen:
            rep += 1
        elif w in doc:
            cover += sal[w] * (2.0 if w in lead else 1.0)
        else:
            junk += 1
        seen.add(w)
    return cover - 0.5 * rep - 0.4 * junk - 0.15 * (len(resp) + 1) - (0.0 if ended else 0.5)


def _writer(rng: np.random.Generator, doc: list[str], sal: dict[str, float], words: list[str], max_words: int):
    """One response (a list of words) by a random writer of random quality."""
    skill = rng.uniform()  # 1 = careful: picks salient words; 0 = careless
    k = int(rng.integers(1, max_words + 1))
    w = np.array([sal[d] * (2.0 if i < 2 else 1.0) for i, d in enumerate(doc)]) ** (4 * skill) + 1e-9
    take = rng.choice(len(doc), size=min(k, len(doc)), replace=False, p=w / w.sum())
    resp = [doc[i] for i in take]
    if rng.uniform() < 0.35 * (1 - skill):  # rambler: repeats a word
        resp.insert(int(rng.integers(0, len(resp) + 1)), resp[int(rng.integers(0, len(resp)))])
    if rng.uniform() < 0.35 * (1 - skill):  # padder: filler or an off-document word
        junk = FILLERS[int(rng.integers(len(FILLERS)))] if rng.uniform() < 0.5 else words[int(rng.integers(len(words)))]
        resp.insert(int(rng.integers(0, len(resp) + 1)), junk)
    return resp[:max_words]


def make_task(spec: TaskSpec, max_words: int) -> SynthTask:
    """Documents, hidden salience, and ``spec.pairs`` writer pairs with noisy rater labels."""
    if not 0 <= spec.label_noise < 0.5:
        raise ValueError(f"label_noise must lie in [0, 0.5), got {spec.label_noise}")
    if spec.doc_words > spec.words:
        raise ValueError(f"doc_words ({spec.doc_words}) cannot exceed words ({spec.words})")
    rng = np.random.default_rng(spec.seed)
    words = [f"w{i:02d}" for i in range(spec.words)]
    sal = {w: float(s) for w, s in zip(words, rng.uniform(size=spec.words) ** 2)}
    docs = [[words[i] for i in rng.choice(spec.words, spec.doc_words, replace=False)] for _ in range(spec.prompts)]
    pairs = []
    for _ in range(spec.pairs):
        i = int(rng.integers(spec.prompts))
        ra, rb = (_writer(rng, docs[i], sal, words, max_words) for _ in range(2))
        sa, sb = _score_words(docs[i], ra, True, sal), _score_words(docs[i], rb, True, sal)
        a_wins = None if sa == sb else sa > sb
        if a_wins is not None and rng.uniform() < spec.label_noise:
            a_wins = not a_wins
        pairs.append(Pair(prompt=" ".join(docs[i] + [END]), a=" ".join(ra), b=" ".join(rb), a_wins=a_wins))
    return SynthTask(spec, words, sal, docs, pairs)


class Rater:
    """The hidden rater on token tensors: an exact pointwise oracle (``shared.preferences.RewardOracle``).

    Same score as the word-level reference ``_score_words``, vectorised over a
    batch: x [B] prompt rows of ``doc_ids`` [N, D]; y [B, T] response tokens.
    """

    def __init__(self, task: SynthTask, vocab: dict[str, int], eos: int, pad: int, prompt_rows: list[str]):
        self.eos, self.pad = eos, pad
        V = max(vocab.values()) + 1
        self.sal = torch.zeros(V)
        for w, s in task.salience.items():
            self.sal[vocab[w]] = s
        by_text = {task.prompt_text(i): d for i, d in enumerate(task.docs)}
        self.doc_ids = torch.tensor([[vocab[w] for w in by_text[p]] for p in prompt_rows])

    def reward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mask = response_mask(y, self.eos, self.pad)
        ended = ((y == self.eos) & mask).any(-1)
        words = mask & (y != self.eos)
        doc = self.doc_ids[x]  # [B, D]
        in_doc = (y[..., None] == doc[:, None, :]).any(-1) & words
        lead = (y[..., None] == doc[:, None, :2]).any(-1)
        T = y.shape[-1]
        earlier = torch.tril(torch.ones(T, T, dtype=torch.bool), -1)  # [t, s]: s < t
        dup = ((y[:, :, None] == y[:, None, :]) & earlier & words[:, None, :]).any(-1) & words
        first = words & ~dup
        cover = (self.sal[y] * torch.where(lead, 2.0, 1.0) * (first & in_doc)).sum(-1)
        junk = (first & ~in_doc).sum(-1)
        n = words.sum(-1)
        return cover - 0.5 * dup.sum(-1) - 0.4 * junk - 0.15 * (n + 1) - 0.5 * (~ended)
