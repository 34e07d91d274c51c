"""Language-model scoring of the LLM path: sequence log-probs, the token-wise KL estimate,
preference-model scores, and the helpers every forward pass shares (masks, position ids,
autocast, the KV cache's argument name). Sampling is ``fullscale.decode``.

Docs: docs/fullscale.md. Tests: tests/test_fullscale_lm.py.

Layout. A prompt is a row of a ``Prompts`` table, left-padded to a common
length; a response ``y`` is a row of token ids of fixed length T, right-padded
with ``pad`` after its end-of-sequence token (a response cut at T has none).
A sequence fed to a model is ``[prompt | response]`` with an attention mask that
hides every pad and position ids that count only real tokens, so a padded row
is computed exactly as its unpadded sequence would be. Prompts are referred to
by their row index ``x`` (a long tensor), which keeps ``shared.sampling.Batch``
small and lets toysim and fullscale share the samplers.

Log-probabilities are **summed** over response tokens (including the EOS
token), as in Tang et al. 2024 and Azar et al. 2023; TRL's offline trainers
average per token instead. On CUDA the forward passes run under bf16 autocast;
log-softmax and every sum are taken in float32.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import torch

from shared.metrics import kl_tokenwise_per_sample

__all__ = ["Prompts", "response_mask", "response_logits", "sequence_logp", "tokenwise_kl", "pm_inputs", "pm_scores", "PMOracle",
           "autocast", "no_pad", "cache_arg", "accepts", "positions"]


@dataclass
class Prompts:
    """Prompt token table. ids: [N, P] left-padded with ``pad``; mask: [N, P] (1 = token)."""

    ids: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self):
        if self.ids.shape != self.mask.shape or self.ids.ndim != 2:
            raise ValueError(f"prompt ids {tuple(self.ids.shape)} and mask {tuple(self.mask.shape)} must be equal [N, P]")
        if not bool((self.mask.sum(-1) > 0).all()):
            raise ValueError("every prompt needs at least one token")

    def to(self, device) -> "Prompts":
        return Prompts(self.ids.to(device), self.mask.to(device))


def response_mask(y: torch.Tensor, eos: int, pad: int) -> torch.Tensor:
    """1 on a response's tokens up to and including its first EOS, 0 after it
    and on pads. y: [..., T] -> bool [..., T]."""
    is_eos = (y == eos).long()
    before_eos = (is_eos.cumsum(-1) - is_eos) == 0
    return before_eos & (y != pad)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (log-softmax and sums stay float32), nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def no_pad(logits: torch.Tensor, pad: int, eos: int) -> torch.Tensor:
    """The policy never emits ``pad`` mid-response (it would end the response without EOS):
    its logit is −∞ in both sampling and scoring, so the two describe one distribution."""
    if pad == eos:
        return logits
    return logits.index_fill(-1, torch.tensor([pad], device=logits.device), float("-inf"))


def cache_arg(model) -> str:
    """The KV cache's name in ``forward`` and its output: ``cache`` from transformers 5.24
    (``past_key_values`` is deprecated there, to be removed in 5.40), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def accepts(model, name: str) -> bool:
    """Whether the model's ``forward`` (under a DistributedDataParallel wrapper, its module's) takes ``name``."""
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    return name in inspect.signature(inner.forward).parameters


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only attended tokens (pads get 0, never attended)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logits(model, prompts: Prompts, x: torch.Tensor, y: torch.Tensor, eos: int, pad: int, fast: bool = False):
    """Next-token logits at each response position, and the response mask.

    x: [B] prompt rows; y: [B, T]. Returns (logits [B, T, V] float32, mask [B, T]):
    logits[:, t] is the model's distribution of y[:, t] given the prompt and y[:, :t].
    ``fast`` (``--train.numerics fast``): the output layer runs on the response positions only
    (``logits_to_keep``), and rows that share a prompt run on one pass of its body
    (``_shared_prompt_logits``; one process): the same numbers to float rounding, not bit for bit.
    """
    if x.ndim != 1 or y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(f"x must be [B] and y [B, T], got {tuple(x.shape)} and {tuple(y.shape)}")
    p_ids, p_mask = prompts.ids[x], prompts.mask[x]
    r_mask = response_mask(y, eos, pad)
    ids = torch.cat([p_ids, y], -1)
    mask = torch.cat([p_mask, r_mask.long()], -1)
    P, T = p_ids.shape[1], y.shape[1]
    kept = fast and accepts(model, "logits_to_keep")
    rows, where = torch.unique(x, return_inverse=True) if kept else (x, None)
    with autocast(ids.device):
        if kept and len(rows) < len(x) and P > 1 and _plain(model):
            logits = _shared_prompt_logits(model, prompts, rows, where, p_ids[:, -1:], y, mask)
        else:
            # the logits at position P-1+t predict response token t (fast: the output layer runs on
            # those T positions only, ``logits_to_keep``; otherwise on all P + T, then cut)
            kw = {"logits_to_keep": torch.arange(P - 1, P - 1 + T, device=ids.device)} if kept else {}
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), **kw)
            logits = out.logits if kw else out.logits[:, P - 1 : P - 1 + T]
    return no_pad(logits.float(), pad, eos), r_mask


def _plain(model) -> bool:
    """A module of one process: not under DistributedDataParallel, not sharded by FSDP."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return False
    try:
        from torch.distributed.fsdp import FSDPModule  # lazily: torch.distributed is optional in a torch build
    except ImportError:
        return True
    return not isinstance(model, FSDPModule)


def _shared_prompt_logits(model, prompts: Prompts, rows, where, p_last, y, mask):
    """``response_logits``'s logits when prompts repeat (the two responses of a pair, RLHF's k
    samples): the prompt's first P − 1 positions run once per distinct prompt row (``rows``) in
    the model's body, and their keys and values, gradients flowing through them, are copied to
    the rows that share them (``where``); then [last prompt token | response] runs on that cache,
    its T positions giving the T logits in one pass of the output layer. The same numbers as one
    pass over [prompt | response] to float rounding, with most of the prompt's work done once
    per prompt rather than once per response. One process only (``_plain``): the prompt pass is
    a second call before the backward pass."""
    u_ids, u_mask = prompts.ids[rows][:, :-1], prompts.mask[rows][:, :-1].long()
    body = model.base_model
    arg = cache_arg(body)
    cache = body(input_ids=u_ids, attention_mask=u_mask, position_ids=positions(u_mask), use_cache=True)[arg]
    cache.batch_select_indices(where)
    P = u_ids.shape[1] + 1
    T = y.shape[1]
    tail = torch.cat([p_last, y[:, :-1]], -1)  # [B, T]: the tokens whose next-token logits are wanted
    m = mask[:, :P + T - 1]
    out = model(input_ids=tail, attention_mask=m, position_ids=positions(m)[:, P - 1:], use_cache=True, **{cache_arg(model): cache})
    return out.logits


def sequence_logp(model, prompts: Prompts, x: torch.Tensor, y: torch.Tensor, eos: int, pad: int, fast: bool = False) -> torch.Tensor:
    """log π(y|x) = Σ_t log π(y_t | x, y_<t), summed over the response's tokens
    (EOS included; Tang et al. 2024 and Azar et al. 2023 use summed log-probs).
    x: [B]; y: [B, T] -> [B] float32, differentiable. ``fast``: ``response_logits``."""
    logits, mask = response_logits(model, prompts, x, y, eos, pad, fast)
    lp = torch.log_softmax(logits, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, lp, torch.zeros_like(lp)).sum(-1)  # where, not ×: lp is −∞ at pads


@torch.no_grad()
def tokenwise_kl(model, ref_model, prompts: Prompts, x: torch.Tensor, y: torch.Tensor, eos: int, pad: int) -> torch.Tensor:
    """Per-sample Σ_t KL(π(·|x, y_<t) ‖ π_ref(·|x, y_<t)) along responses y ~ π.

    Tang et al. 2024, §3: the KL is estimated by sampling one response per prompt
    and summing the exact next-token KLs along it; its mean over samples is an
    unbiased estimate of KL(π‖π_ref) (chain rule). x: [B]; y: [B, T] -> [B].
    The sum is ``shared.metrics.kl_tokenwise_per_sample``; its mean over prompts is
    ``shared.metrics.kl_tokenwise_estimate``.
    """
    lp, mask = response_logits(model, prompts, x, y, eos, pad)
    lq, _ = response_logits(ref_model, prompts, x, y, eos, pad)
    return kl_tokenwise_per_sample(lp, lq, mask)


# ---------------------------------------------------------------- preference models
def pm_inputs(prompts: Prompts, x, ys: list[torch.Tensor], eos: int, pad: int, cls: int):
    """Token ids and mask of ``[prompt | y1 | (y2) | cls]`` for a preference model.

    Pads inside the row are masked out and skipped by the position ids, so the
    model sees the packed sequence; the score is read at the final ``cls`` token.
    """
    parts = [prompts.ids[x]] + list(ys)
    masks = [prompts.mask[x].long()] + [response_mask(y, eos, pad).long() for y in ys]
    B = x.shape[0]
    tail = torch.full((B, 1), cls, dtype=parts[0].dtype, device=x.device)
    return torch.cat(parts + [tail], -1), torch.cat(masks + [torch.ones_like(tail)], -1)


def pm_scores(pm, prompts: Prompts, x, ys: list[torch.Tensor], eos: int, pad: int, cls: int) -> torch.Tensor:
    """Scalar head output at the final token. Pairwise: ys = [y1, y2] gives the logit
    of r(x, y1, y2) = P(y1 ≻ y2) (Tang et al. 2024, §3); pointwise (Bradley–Terry):
    ys = [y] gives the reward r(x, y). -> [B] float32."""
    ids, mask = pm_inputs(prompts, x, ys, eos, pad, cls)
    with autocast(ids.device):
        # backbone + scalar head read at the last position ourselves: the library's
        # pooling looks for the last non-pad token, which fails when cls == pad
        h = pm.base_model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).last_hidden_state
        return pm.score(h[:, -1]).float().squeeze(-1)


class PMOracle:
    """A trained preference model as an oracle for ``shared.preferences.label_pairs``.

    kind "pairwise": margin = r(x,y1,y2) − r(x,y2,y1) with r = σ(score) (Tang et al.
    2024, §3; both orders, so position bias cannot decide); kind "bt": margin =
    r(x,y1) − r(x,y2). Scored in chunks of ``chunk`` rows, without gradient.
    """

    stochastic = False

    def __init__(self, pm, prompts: Prompts, kind: str, eos: int, pad: int, cls: int, chunk: int = 512):
        if kind not in ("pairwise", "bt"):
            raise ValueError(f"preference model kind must be 'pairwise' or 'bt', got {kind!r}")
        self.pm, self.prompts, self.kind, self.eos, self.pad, self.cls, self.chunk = pm, prompts, kind, eos, pad, cls, chunk

    @torch.no_grad()
    def margin(self, x, y1, y2):
        out = []
        for i in range(0, x.shape[0], self.chunk):
            s = slice(i, i + self.chunk)
            args = (self.prompts, x[s])
            tok = (self.eos, self.pad, self.cls)
            if self.kind == "pairwise":
                m = torch.sigmoid(pm_scores(self.pm, *args, [y1[s], y2[s]], *tok)) - torch.sigmoid(pm_scores(self.pm, *args, [y2[s], y1[s]], *tok))
            else:
                m = pm_scores(self.pm, *args, [y1[s]], *tok) - pm_scores(self.pm, *args, [y2[s]], *tok)
            out.append(m)
        return torch.cat(out) if out else torch.zeros(0, device=x.device)

    def prob_first(self, x, y1, y2):
        return 0.5 * (1.0 + self.margin(x, y1, y2)) if self.kind == "pairwise" else torch.sigmoid(self.margin(x, y1, y2))
