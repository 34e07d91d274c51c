"""Every way the LLM path samples: the reference sampler ``sample_responses``, the fast decode
path ``decode`` (k responses per prompt in one batch, with a preallocated (static) KV cache and
fixed shapes, drawing exactly the reference's tokens), per-example draws over several processes
(``sample_rows``), and ``LMPolicy``, a causal LM as a ``shared.sampling.Policy``.

Docs: docs/fullscale.md (The decode path). Tests: tests/test_fullscale_decode.py.

``sample_responses`` is the reference: one response per prompt row, a cache that grows by one
position per token, the prompt's logits computed at every position. ``decode`` draws the same
responses faster:

- **The prompt is read once for all k samples.** It is prefilled for the B prompt rows, with
  logits at its last position only, and its keys and values are copied into a cache of k·B rows.
- **One batch for the k samples**, so each decode step reads the weights once, not k times.
  With one generator, k successive ``sample_responses`` calls draw their tokens from one random
  stream, sample after sample; batching them keeps those tokens because every draw's noise is
  taken from the generator up front, in the order the k calls would take it. A categorical
  draw ``torch.multinomial(p, 1)`` is, in torch, ``argmax(p / E)`` with E a tensor of Exp(1)
  noise of p's shape drawn from the generator (the exponential race: E_i / p_i ~ Exp(p_i), and
  the smallest of independent exponentials is i with probability p_i / Σ p; the Gumbel-max
  trick in another form); ``tests/test_fullscale_decode.py`` checks that identity on this
  torch, token for token. On CPU the noise is drawn a third faster by ``_exponential_``, the
  same numbers. With one generator per row (the per-example draws of ``fullscale.dist``) every
  row draws from its own generator (``draw``), so batching changes nothing.
- **A static cache** (``transformers.StaticCache``): keys and values of the prompt plus
  ``length − 1`` positions preallocated, the attention mask a fixed [k·B, P + length − 1]
  tensor updated in place, sampling on the device and no host synchronisation inside the loop,
  so one decode step has fixed shapes (what a CUDA graph or ``torch.compile`` needs). Models
  outside ``STATIC_MODEL_TYPES`` (or a transformers without ``StaticCache``) use a growing
  cache instead, said once per process in one log line.
- **One bf16 autocast region per rollout on CUDA**, so the trained weights' bf16 casts are
  cached for the whole rollout instead of made again at every token.

Not here yet, for want of a GPU to measure them on: capturing the decode step in a CUDA
graph or compiling it, and a bf16 copy of the weights beside autocast.

The logits of a row computed in a batch of k·B rows may differ from those of a batch of B in
the last float bits (matrix products block differently by batch size), so a token may differ
where two tokens' noisy scores tie to the last bit; the tests compare the tokens exactly and
the logits to 1e-5.
"""

from __future__ import annotations

import sys

import torch

from fullscale.dist import row_generator, whole
from fullscale.lm import Prompts, accepts, autocast, cache_arg, no_pad, positions, sequence_logp
from shared.sampling import geometric_mixture

__all__ = ["STATIC_MODEL_TYPES", "decode", "draw_noise", "draw", "sample_responses", "sample_rows", "LMPolicy"]

# architectures whose every layer is full attention and whose static cache the tests check
STATIC_MODEL_TYPES = ("gpt2", "llama", "qwen2")

_said = set()


def _static_ok(model) -> bool:
    import transformers  # lazily: transformers takes seconds to import

    kind = getattr(getattr(model, "config", None), "model_type", None)
    ok = kind in STATIC_MODEL_TYPES and hasattr(transformers, "StaticCache") and accepts(model, "logits_to_keep")
    if not ok and kind not in _said:
        _said.add(kind)
        print(f"decode: no static KV cache for model type {kind!r} here; using the growing cache", file=sys.stderr)
    return ok


_by_formula = {}


def _exponential_(out: torch.Tensor, generator) -> torch.Tensor:
    """``out.exponential_(1, generator=generator)``, the noise ``torch.multinomial(p, 1)`` draws.
    On CPU torch draws it element by element as −log1p(−u), u a double from the generator's
    53-bit uniform; the same doubles drawn in one ``uniform_`` call and transformed as a whole
    are the same numbers (and leave the generator in the same state) in a third less time, the
    noise being most of a decode step's time at a small model with a large vocabulary. Used
    where a check on this machine at first use finds the two equal, bit for bit and with the
    same generator state after; elsewhere (CUDA, another torch) ``exponential_`` itself."""
    dev = out.device.type
    if dev not in _by_formula:
        _by_formula[dev] = dev == "cpu" and _formula_matches()
    if not _by_formula[dev]:
        return out.exponential_(1, generator=generator)
    u = torch.empty(out.shape, dtype=torch.float64, device=out.device).uniform_(generator=generator)
    return out.copy_(u.neg_().log1p_().neg_())


def _formula_matches() -> bool:
    a, b = torch.Generator().manual_seed(12345), torch.Generator().manual_seed(12345)
    ref = torch.empty(1 << 16).exponential_(1, generator=a)
    u = torch.empty(1 << 16, dtype=torch.float64).uniform_(generator=b)
    return torch.equal(ref, u.neg_().log1p_().neg_().float()) and torch.equal(a.get_state(), b.get_state())


def draw_noise(generator, rows: int, vocab: int, length: int, k: int, device) -> torch.Tensor:
    """The Exp(1) noise of k successive ``sample_responses`` calls of ``length`` tokens over
    ``rows`` prompts, drawn from ``generator`` in their order: [length, k·rows, vocab], row block
    j the j-th call's. Each draw is the one ``torch.multinomial(p, 1, generator)`` makes for a
    [rows, vocab] p, so the generator ends where the k calls leave it."""
    noise = torch.empty(length, k * rows, vocab, device=device)
    for j in range(k):
        for t in range(length):
            _exponential_(noise[t, j * rows:(j + 1) * rows], generator)
    return noise


def _prefill(model, ids, mask, k, max_len, static):
    """Prompt logits at the last position, and a cache of k copies of the prompt rows, block
    after block: static, or (``static`` False) the growing cache the prefill returned."""
    arg = cache_arg(model)
    kw = {"logits_to_keep": 1} if static else {}
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=True, **kw)
    grown = out[arg]
    if not static:
        if k > 1:
            grown.batch_select_indices(torch.arange(len(ids), device=ids.device).repeat(k))
        return out.logits[:, -1], grown
    from transformers import StaticCache  # lazily: transformers takes seconds to import

    cache = StaticCache(config=model.config, max_cache_len=max_len)
    for layer, src in zip(cache.layers, grown.layers):
        layer.update(src.keys.repeat(k, 1, 1, 1), src.values.repeat(k, 1, 1, 1))
    return out.logits[:, -1], cache


@torch.no_grad()
def decode(model, prompts: Prompts, x: torch.Tensor, length: int, eos: int, pad: int, generator=None, k: int = 1,
           temperature: float = 1.0, mix: tuple | None = None, return_logits: bool = False):
    """k responses per prompt row of x [B] in one batch: [k·B, length], row block j the j-th
    sample. ``generator`` one generator: the tokens of k successive ``sample_responses`` calls
    with it (and it ends in the same state); a list of k·B generators: row i draws from its own,
    as ``sample_responses`` with that list over ``x.repeat(k)``. ``mix=(ref_model, alpha)``:
    IPO-MD's geometric mixture, as in ``sample_responses``; ``return_logits`` adds the logits
    each token was drawn from, [k·B, length, V]. On CUDA the whole rollout is one bf16 autocast
    region, so the trained weights are cast to bf16 once per rollout, not once per token."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module  # no gradient here: the module itself, without the wrapper's hooks
    with autocast(prompts.ids.device):
        return _decode(model, prompts, x, length, eos, pad, generator, k, temperature, mix, return_logits)


def _decode(model, prompts, x, length, eos, pad, generator, k, temperature, mix, return_logits):
    per_row = isinstance(generator, (list, tuple))
    if per_row and len(generator) != k * len(x):
        raise ValueError(f"{len(generator)} generators for {k}·{len(x)} rows")
    p_ids, p_mask = prompts.ids[x], prompts.mask[x].long()
    B, P = p_ids.shape
    dev = p_ids.device
    models = [model] if mix is None else [model, mix[0]]
    max_len = P + max(length - 1, 1)
    static = all([_static_ok(m) for m in models])
    firsts, caches = zip(*(_prefill(m, p_ids, p_mask, k, max_len, static) for m in models))
    caches = list(caches)
    mask = torch.zeros(k * B, max_len, dtype=p_mask.dtype, device=dev)
    mask[:, :P] = p_mask.repeat(k, 1)
    pos = p_mask.sum(-1, keepdim=True).repeat(k, 1)
    args = [cache_arg(m) for m in models]

    def scores(logits_per_model):
        out = [no_pad(lg.float(), pad, eos) / temperature for lg in logits_per_model]
        if mix is None:
            return out[0]
        return geometric_mixture(torch.log_softmax(out[0], -1), torch.log_softmax(out[1], -1), mix[1])

    logits = scores([f.repeat(k, 1) for f in firsts])
    V = logits.shape[-1]
    noise = draw_noise(generator, B, V, length, k, dev) if not per_row and k > 1 else None
    step_noise = torch.empty(B, V, device=dev) if not per_row and k == 1 else None
    done = torch.zeros(k * B, dtype=torch.bool, device=dev)
    ys, all_logits = [], []
    for t in range(length):
        if return_logits:
            all_logits.append(logits * temperature if mix is None else logits)
        probs = torch.softmax(logits, -1)
        if per_row:
            tok = draw(probs, generator)
        else:  # torch.multinomial(probs, 1, generator), as argmax(probs / Exp(1) noise)
            tok = (probs / (noise[t] if noise is not None else _exponential_(step_noise, generator))).argmax(-1)
        tok = torch.where(done, torch.full_like(tok, pad), tok)
        ys.append(tok)
        done = done | (tok == eos)
        if t + 1 == length:
            break
        mask[:, P + t] = 1
        step_mask = mask if static else mask[:, :P + t + 1]  # a growing cache takes the mask of what it holds
        kw = {"logits_to_keep": 1} if static else {}
        out = []
        for i, m in enumerate(models):
            o = m(input_ids=tok[:, None], attention_mask=step_mask, position_ids=pos, use_cache=True, **{args[i]: caches[i]}, **kw)
            caches[i] = o[args[i]]
            out.append(o.logits[:, -1])
        logits = scores(out)
        pos = pos + 1
    y = torch.stack(ys, -1)
    return (y, torch.stack(all_logits, 1)) if return_logits else y


# ---------------------------------------------------------------- the reference sampler, per-example draws, the policy
def draw(probs: torch.Tensor, generator) -> torch.Tensor:
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
    one generator per row (``draw``): each row's draws then come from its own.
    """
    p_ids, p_mask = prompts.ids[x], prompts.mask[x].long()
    B = p_ids.shape[0]
    dev = p_ids.device
    mask = p_mask
    models = [model] if mix is None else [model, mix[0]]
    caches = [None] * len(models)
    cache_args = [cache_arg(m) for m in models]

    def next_logits(tokens, position_ids):
        out = []
        for i, m in enumerate(models):
            with autocast(dev):
                o = m(input_ids=tokens, attention_mask=mask, position_ids=position_ids, use_cache=True, **{cache_args[i]: caches[i]})
            caches[i] = o[cache_args[i]]
            out.append(no_pad(o.logits[:, -1].float(), pad, eos) / temperature)
        if mix is None:
            return out[0]
        return geometric_mixture(torch.log_softmax(out[0], -1), torch.log_softmax(out[1], -1), mix[1])

    logits = next_logits(p_ids, positions(mask))
    pos = mask.sum(-1, keepdim=True)  # next position id per row
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    ys, all_logits = [], []
    for t in range(length):
        if return_logits:
            all_logits.append(logits * temperature if mix is None else logits)
        tok = draw(torch.softmax(logits, -1), generator)
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
