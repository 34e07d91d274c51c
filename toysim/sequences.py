"""Autoregressive toy policies, still exact: responses are token sequences, every one enumerated.

A language model's responses are token sequences that share prefixes and parameters; pushing
one sequence down moves probability onto others that share its prefix (the likelihood
displacement of Razin et al. 2024, arXiv 2410.08847; Ren & Sutherland 2024, arXiv 2407.10490).
An atomic response (``toysim.policy.LogLinearPolicy``) cannot show that. Here a response is a
sequence of at most ``max_len`` tokens from a vocabulary of ``vocab``, ended by an END token
(or by reaching ``max_len``), and the policy is a token-level softmax whose parameters are
shared across prefixes:

    log π(y|x) = Σ_t log softmax_v( sft(x, s_t, ·) + φ(x, s_t, ·)·θ )[y_t]          (1)

over the prefixes s_t of y (the token log-probs of an LLM, summed). With vocab V and max_len L
there are N = Σ_{l=0}^{L} V^l responses per prompt (V = 4, L = 4: 341), few enough that
every KL, win rate and accuracy stays an exact sum over them. ``AutoregressivePolicy`` gives
the [R, X, N] table of (1) and the interface of ``LogLinearPolicy`` that ``toysim.train.train``
uses, so the same losses, samplers and metrics apply.

Docs: docs/theory.md. Tests: tests/test_toysim_sequences.py.
"""

from __future__ import annotations

import itertools

import torch

from shared.sampling import geometric_mixture
from toysim.policy import TablePolicy

__all__ = ["SequenceSpace", "AutoregressivePolicy", "bigram_features"]


class SequenceSpace:
    """Every response of at most ``max_len`` tokens over ``vocab`` tokens, and where its tokens
    are chosen.

    Nodes are the prefixes shorter than ``max_len`` (node 0 is the empty prefix); at a node the
    next choice is a token 0..V−1 or END (= V). Response n is a prefix p of length 0..L: its
    choices are p's tokens, then END unless |p| = L. ``choice[n, t]`` is the flat index
    node·(V+1) + token of its t-th choice and ``valid[n, t]`` marks the real ones (L+1 slots).
    """

    def __init__(self, vocab: int, max_len: int):
        if vocab < 1 or max_len < 1:
            raise ValueError(f"vocab and max_len must be at least 1, got {vocab} and {max_len}")
        self.vocab, self.max_len, self.end = vocab, max_len, vocab
        prefixes = [p for n in range(max_len + 1) for p in itertools.product(range(vocab), repeat=n)]
        node_of = {p: i for i, p in enumerate(q for q in prefixes if len(q) < max_len)}
        self.nodes = len(node_of)
        self.responses = prefixes  # response n: the tokens of prefixes[n] (END not listed)
        self.node_depth = torch.tensor([len(p) for p in node_of])
        self.node_last = torch.tensor([p[-1] if p else vocab for p in node_of])  # vocab: no token yet (BOS)
        self.node_parent = torch.tensor([node_of[p[:-1]] if p else -1 for p in node_of])  # −1: the root has none
        choice = torch.zeros(len(prefixes), max_len + 1, dtype=torch.long)
        valid = torch.zeros(len(prefixes), max_len + 1, dtype=torch.bool)
        for n, p in enumerate(prefixes):
            steps = [(node_of[p[:t]], p[t]) for t in range(len(p))] + ([(node_of[p], self.end)] if len(p) < max_len else [])
            for t, (node, tok) in enumerate(steps):
                choice[n, t], valid[n, t] = node * (vocab + 1) + tok, True
        self.choice, self.valid = choice, valid
        self.lengths = torch.tensor([len(p) for p in prefixes])
        # where a choice leads (ancestral sampling): child[s, v] the node after token v (−1 when the
        # prefix then has max_len tokens), done[s, v] the response it completes (−1 if none: a
        # shorter prefix continues); END completes the node's own prefix
        resp_of = {p: n for n, p in enumerate(prefixes)}
        nodes = list(node_of)
        self.child = torch.full((self.nodes, vocab + 1), -1, dtype=torch.long)
        self.done = torch.full((self.nodes, vocab + 1), -1, dtype=torch.long)
        for i, p in enumerate(nodes):
            self.done[i, self.end] = resp_of[p]
            for v in range(vocab):
                q = p + (v,)
                if len(q) < max_len:
                    self.child[i, v] = node_of[q]
                else:
                    self.done[i, v] = resp_of[q]

    def __len__(self) -> int:
        return len(self.responses)


def bigram_features(space: SequenceSpace, prompt_feats: torch.Tensor, mix: torch.Tensor | None = None) -> torch.Tensor:
    """φ(x, s, v) shared across prefixes: a one-hot of (last token of s, v) and the prompt's
    features times a one-hot of v. prompt_feats [X, k] -> [X, S, V+1, (V+1)² + k·(V+1)].
    ``mix`` [V+1, V+1] replaces each token's one-hot by its row (an aliased token's row mixes in
    its alias's: ``toysim.world``'s K1); None is the identity (index V, END or no token yet, included)."""
    X, k = prompt_feats.shape
    V1 = space.vocab + 1
    S = space.nodes
    if mix is not None:
        rows = mix.to(prompt_feats.dtype)
        big = torch.einsum("sa,vb->svab", rows[space.node_last], rows).reshape(S, V1, V1 * V1)
        px = torch.einsum("xk,vw->xvkw", prompt_feats, rows).reshape(X, V1, k * V1)
        return torch.cat([big[None].expand(X, -1, -1, -1), px[:, None].expand(-1, S, -1, -1)], -1)
    big = torch.zeros(S, V1, V1 * V1, dtype=prompt_feats.dtype)
    big[torch.arange(S)[:, None], torch.arange(V1)[None, :], (space.node_last[:, None] * V1 + torch.arange(V1)[None, :])] = 1.0
    tok = torch.eye(V1, dtype=prompt_feats.dtype)
    px = torch.einsum("xk,vw->xvkw", prompt_feats, tok).reshape(X, V1, k * V1)  # [X, V+1, k·(V+1)]: φ_x ⊗ e_v
    return torch.cat([big[None].expand(X, -1, -1, -1), px[:, None].expand(-1, S, -1, -1)], -1)


class AutoregressivePolicy(TablePolicy):
    """R autoregressive log-linear policies (1) over one ``SequenceSpace``: θ [R, d].

    ``sft_tok`` [X, S, V+1]: π_sft's token logits at every node (a prefix of ``max_len`` tokens
    is not a node: it ends there); ``feats`` [X, S, V+1, d]. θ = 0 is π_sft. The
    table is exact: log π(y|x) of every enumerated response. Implements what
    ``toysim.train.train`` and ``shared.sampling`` read of a policy.
    """

    def __init__(self, space: SequenceSpace, sft_tok: torch.Tensor, feats: torch.Tensor, runs: int):
        X, S, V1, d = feats.shape
        if sft_tok.shape != (X, S, V1) or S != space.nodes or V1 != space.vocab + 1:
            raise ValueError(f"sft_tok {tuple(sft_tok.shape)} and feats {tuple(feats.shape)} do not match the space "
                             f"({space.nodes} nodes, {space.vocab + 1} choices)")
        self.space, self.sft_tok, self.feats = space, sft_tok, feats
        self._feats_t = feats.reshape(X * S * V1, d).T.contiguous()  # [d, X·S·(V+1)]: θ @ it is one GEMM laid out as [R, X, S, V+1]
        self.theta = torch.zeros(runs, d, dtype=sft_tok.dtype)
        self.grad_mask = None
        self._probs = None
        with torch.no_grad():
            self.sft_logp = self._table(torch.zeros(1, d, dtype=sft_tok.dtype))[0]  # [X, N]

    def token_logp(self, theta: torch.Tensor) -> torch.Tensor:
        """log π(v | x, s) for every run, prompt, node and choice: [R, X, S, V+1]."""
        X, S, V1, _ = self.feats.shape
        logits = self.sft_tok + (theta @ self._feats_t).reshape(theta.shape[0], X, S, V1)
        return torch.log_softmax(logits, -1)

    def _table(self, theta: torch.Tensor) -> torch.Tensor:
        return self.sequence_logp(self.token_logp(theta))

    def sequence_logp(self, token_logp: torch.Tensor) -> torch.Tensor:
        """Token log-probs [R, X, S, V+1] -> every response's log-probability, the sum over its
        choices (1): [R, X, N]."""
        R, X, S, V1 = token_logp.shape
        flat = token_logp.reshape(R, X, S * V1)
        picked = flat[:, :, self.space.choice.reshape(-1)].reshape(R, X, *self.space.choice.shape)  # [R, X, N, L+1]
        return (picked * self.space.valid).sum(-1)

    def mixture_table(self, alpha: float, theta: torch.Tensor | None = None) -> torch.Tensor:
        """log π_α(y|x) [R, X, N] of IPO-MD's sampling policy for token sequences: the geometric
        mixture π^{1−α}·π_sft^α taken per token, over each node's next-token distributions, then
        multiplied along the response (``shared.sampling.geometric_mixture``; Calandriello et al.
        2024, arXiv 2403.08635, as fullscale samples it), not over whole sequences."""
        tok = self.token_logp(self.theta if theta is None else theta)
        return self.sequence_logp(geometric_mixture(tok, torch.log_softmax(self.sft_tok, -1), alpha))

    def table(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """log π(y|x) (1) for every run, prompt and response: [R, X, N]."""
        return self._table(self.theta if theta is None else theta)

    def logits(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """The table itself: it is normalised, so its log-softmax is itself (what the RLHF path reads)."""
        return self.table(theta)

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None, runs: slice = slice(None)) -> torch.Tensor:
        """One response per prompt, x [R', B] -> y [R', B], token by token from (1) at the current θ
        of ``runs`` (ancestral sampling: the table's distribution, without computing the table)."""
        sp, (R, B), theta = self.space, x.shape, self.theta[runs]
        node = torch.zeros(R, B, dtype=torch.long)
        out = torch.full((R, B), -1, dtype=torch.long)
        with torch.no_grad():
            for _ in range(sp.max_len):
                live = out < 0
                logits = self.sft_tok[x, node] + torch.einsum("rbvd,rd->rbv", self.feats[x, node], theta)  # [R, B, V+1]
                tok = torch.multinomial(torch.softmax(logits, -1).reshape(R * B, -1), 1, generator=generator).reshape(R, B)
                finished = sp.done[node, tok]
                out = torch.where(live & (finished >= 0), finished, out)
                node = torch.where(live & (finished < 0), sp.child[node, tok], node)
        return out

    def pair_logp(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log π_θ(y|x) at pairs x/y [R, K] -> [R, K], differentiable in θ: (1) summed over each
        response's choices, read off the token log-prob table of every node (one GEMM: the
        [X·S·(V+1)] token logits cost less than gathering the features of every pair's path)."""
        R, (X, S, V1, _) = theta.shape[0], self.feats.shape
        flat = self.token_logp(theta).reshape(R, X * S * V1)
        at = x[..., None] * (S * V1) + self.space.choice[y]  # [R, K, L+1]
        picked = flat.gather(1, at.reshape(R, -1)).reshape(at.shape)
        return (picked * self.space.valid[y]).sum(-1)
