"""Language-model operations of the LLM path: sequence log-probs, sampling with a
KV cache, the token-wise KL estimate, and preference-model scores.

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
from shared.sampling import geometric_mixture

__all__ = [
    "Prompts",
    "response_mask",
    "response_logits",
    "sequence_logp",
    "sample_responses",
    "sample_rows",
    "tokenwise_kl",
    "LMPolicy",
    "pm_inputs",
    "pm_scores",
    "PMOracle",
]


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


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _no_pad(logits: torch.Tensor, pad: int, eos: int) -> torch.Tensor:
    """The policy never emits ``pad`` mid-response (it would end the response without EOS):
    its logit is −∞ in both sampling and scoring, so the two describe one distribution."""
    if pad == eos:
        return logits
    return logits.index_fill(-1, torch.tensor([pad], device=logits.device), float("-inf"))


def _cache_arg(model) -> str:
    """The KV cache's name in ``forward`` and its output: ``cache`` from transformers 5.24
    (``past_key_values`` is deprecated there, to be removed in 5.40), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _accepts(model, name: str) -> bool:
    """Whether the model's ``forward`` (under a DistributedDataParallel wrapper, its module's) takes ``name``."""
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    return name in inspect.signature(inner.forward).parameters


def _positions(mask: torch.Tensor) -> torch.Tensor:
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
    kept = fast and _accepts(model, "logits_to_keep")
    rows, where = torch.unique(x, return_inverse=True) if kept else (x, None)
    with _autocast(ids.device):
        if kept and len(rows) < len(x) and P > 1 and _plain(model):
            logits = _shared_prompt_logits(model, prompts, rows, where, p_ids[:, -1:], y, mask)
        else:
            # the logits at position P-1+t predict response token t (fast: the output layer runs on
            # those T positions only, ``logits_to_keep``; otherwise on all P + T, then cut)
            kw = {"logits_to_keep": torch.arange(P - 1, P - 1 + T, device=ids.device)} if kept else {}
            out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), **kw)
            logits = out.logits if kw else out.logits[:, P - 1 : P - 1 + T]
    return _no_pad(logits.float(), pad, eos), r_mask


def _plain(model) -> bool:
    """A module of one process: not under DistributedDataParallel, not sharded by FSDP."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return False
    try:
        from torch.distributed.fsdp import FSDPModule
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
    arg = _cache_arg(body)
    cache = body(input_ids=u_ids, attention_mask=u_mask, position_ids=_positions(u_mask), use_cache=True)[arg]
    cache.batch_select_indices(where)
    P = u_ids.shape[1] + 1
    T = y.shape[1]
    tail = torch.cat([p_last, y[:, :-1]], -1)  # [B, T]: the tokens whose next-token logits are wanted
    m = mask[:, :P + T - 1]
    out = model(input_ids=tail, attention_mask=m, position_ids=_positions(m)[:, P - 1:], use_cache=True, **{_cache_arg(model): cache})
    return out.logits


def sequence_logp(model, prompts: Prompts, x: torch.Tensor, y: torch.Tensor, eos: int, pad: int, fast: bool = False) -> torch.Tensor:
    """log π(y|x) = Σ_t log π(y_t | x, y_<t), summed over the response's tokens
    (EOS included; Tang et al. 2024 and Azar et al. 2023 use summed log-probs).
    x: [B]; y: [B, T] -> [B] float32, differentiable. ``fast``: ``response_logits``."""
    logits, mask = response_logits(model, prompts, x, y, eos, pad, fast)
    lp = torch.log_softmax(logits, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, lp, torch.zeros_like(lp)).sum(-1)  # where, not ×: lp is −∞ at pads


def _draw(probs: torch.Tensor, generator) -> torch.Tensor:
    """One token per row of probs [B, V]. ``generator`` a list of one generator per row (the
    per-example draws of ``fullscale.dist``): inverse-CDF sampling, the first token whose
    cumulative probability reaches u·total with u ∈ (0, 1] drawn from the row's own generator,
    so a row's token depends on its generator only, not on the batch it is drawn in (a token of
    probability 0 is never drawn). Otherwise ``torch.multinomial`` with the one generator."""
    if not isinstance(generator, (list, tuple)):
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    if len(generator) != probs.shape[0]:
        raise ValueError(f"{len(generator)} generators for {probs.shape[0]} rows")
    u = torch.cat([1.0 - torch.rand(1, generator=g, device=probs.device) for g in generator]) if generator else probs.new_zeros(0)
    cdf = probs.cumsum(-1)
    return (cdf < u[:, None] * cdf[:, -1:]).sum(-1).clamp(max=probs.shape[-1] - 1)


@torch.no_grad()
def sample_responses(model, prompts: Prompts, x: torch.Tensor, length: int, eos: int, pad: int,
                     generator: torch.Generator | None = None, temperature: float = 1.0, return_logits: bool = False,
                     mix: tuple | None = None):
    """Sample one response per prompt row, batched, with a KV cache (stop-gradient).

    Ancestral sampling from softmax(logits / temperature) for ``length`` steps;
    after a row emits EOS the rest of it is ``pad``. x: [B] -> y [B, length]
    (and, with ``return_logits``, the logits each token was drawn from,
    [B, length, V], for checking against ``response_logits``). With
    ``mix=(ref_model, alpha)`` every token is drawn from the per-token geometric
    mixture of the two models' next-token distributions,
    ``shared.sampling.geometric_mixture`` (IPO-MD's sampler), and the logits
    returned are the mixture's log-probabilities. ``generator`` may be a list of
    one generator per row (``_draw``): each row's draws then come from its own.
    """
    p_ids, p_mask = prompts.ids[x], prompts.mask[x].long()
    B = p_ids.shape[0]
    dev = p_ids.device
    mask = p_mask
    models = [model] if mix is None else [model, mix[0]]
    caches = [None] * len(models)
    cache_args = [_cache_arg(m) for m in models]

    def next_logits(tokens, position_ids):
        out = []
        for i, m in enumerate(models):
            with _autocast(dev):
                o = m(input_ids=tokens, attention_mask=mask, position_ids=position_ids, use_cache=True, **{cache_args[i]: caches[i]})
            caches[i] = o[cache_args[i]]
            out.append(_no_pad(o.logits[:, -1].float(), pad, eos) / temperature)
        if mix is None:
            return out[0]
        return geometric_mixture(torch.log_softmax(out[0], -1), torch.log_softmax(out[1], -1), mix[1])

    logits = next_logits(p_ids, _positions(mask))
    pos = mask.sum(-1, keepdim=True)  # next position id per row
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    ys, all_logits = [], []
    for t in range(length):
        if return_logits:
            all_logits.append(logits * temperature if mix is None else logits)
        tok = _draw(torch.softmax(logits, -1), generator)
        tok = torch.where(done, torch.full_like(tok, pad), tok)
        ys.append(tok)
        done = done | (tok == eos)
        if t + 1 == length:
            break
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=dev)], -1)
        logits = next_logits(tok[:, None], pos)
        pos = pos + 1
    y = torch.stack(ys, -1)
    return (y, torch.stack(all_logits, 1)) if return_logits else y


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


def sample_rows(model, prompts: Prompts, x: torch.Tensor, length: int, eos: int, pad: int, seed, dist,
                temperature: float = 1.0, mix: tuple | None = None) -> torch.Tensor:
    """``sample_responses`` for a global batch x [B] shared over ``dist``'s ranks (``fullscale.dist``):
    this rank samples its share of the rows in one batch, row i with its own generator
    ``row_generator(seed, i)``, and the rows are gathered, so every rank returns the same
    [B, length] whatever the number of ranks. ``seed`` a list of k seeds: k samples per prompt
    in one batch, [k·B, length], block j drawn with ``row_generator(seed[j], i)``, so it equals
    k calls with those seeds. A sharded model (FSDP) is gathered once for the whole rollout,
    not once per token (``fullscale.dist.whole``). Docs: docs/fullscale.md (Several processes and
    several GPUs)."""
    from fullscale.decode import decode
    from fullscale.dist import row_generator, whole

    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed]
    B = len(x)
    xs = x.repeat(len(seeds))
    share = dist.share(len(xs))
    gens = [row_generator(seeds[m // B], m % B, x.device) for m in range(*share.indices(len(xs)))]
    with whole(model, *(mix[:1] if mix else ())):
        local = decode(model, prompts, xs[share], length, eos, pad, gens, temperature=temperature, mix=mix) if gens else \
            torch.empty(0, length, dtype=torch.long, device=x.device)
    return dist.gather_rows(local, len(xs))


class LMPolicy:
    """A causal LM as a ``shared.sampling.Policy`` over prompt rows; with ``mix=(ref_model,
    alpha)`` it samples from the per-token geometric mixture with ``ref_model`` (IPO-MD)."""

    def __init__(self, model, prompts: Prompts, length: int, eos: int, pad: int, temperature: float = 1.0, mix: tuple | None = None,
                 dist=None):
        self.model, self.prompts, self.length, self.eos, self.pad, self.temperature = model, prompts, length, eos, pad, temperature
        self.mix, self.dist = mix, dist

    def sample(self, x, generator=None):
        """One response per prompt row of x [B]. Data parallel (``fullscale.dist``, ``dist.active``):
        one seed is drawn from ``generator`` (the same on every rank), each rank samples its share
        of the rows, each row with its own generator (``sample_rows``), and the rows are gathered,
        so every rank returns the same [B, T] whatever the number of ranks."""
        if self.dist is None or not self.dist.active:
            return self._decode(x, generator, 1)
        seed = int(torch.randint(1 << 62, (1,), generator=generator, device=x.device))
        return sample_rows(self.model, self.prompts, x, self.length, self.eos, self.pad, seed, self.dist, self.temperature, self.mix)

    def _decode(self, x, generator, k):
        from fullscale.decode import decode

        return decode(self.model, self.prompts, x, self.length, self.eos, self.pad, generator, k, self.temperature, self.mix)

    def sample_k(self, x, generator, k: int) -> list[torch.Tensor]:
        """k successive ``sample`` calls, drawn in one batch of k·B rows, so the model's weights
        are read once per token for all k, not k times; the samples are those of the k calls.
        One process: ``fullscale.decode.decode`` draws the noise of the k calls from ``generator``
        up front, in their order. Data parallel: k seeds are drawn from ``generator`` as k calls
        would, each row with its own generator."""
        if self.dist is None or not self.dist.active:
            return list(self._decode(x, generator, k).split(len(x)))
        seeds = [int(torch.randint(1 << 62, (1,), generator=generator, device=x.device)) for _ in range(k)]
        y = sample_rows(self.model, self.prompts, x, self.length, self.eos, self.pad, seeds, self.dist, self.temperature, self.mix)
        return list(y.split(len(x)))

    def logp(self, x, y):
        return sequence_logp(self.model, self.prompts, x, y, self.eos, self.pad)


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
    with _autocast(ids.device):
        # backbone + scalar head read at the last position ourselves: the library's
        # pooling looks for the last non-pad token, which fails when cls == pad
        h = pm.base_model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).last_hidden_state
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
