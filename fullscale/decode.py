"""The fast decode path: k responses per prompt in one batch, with a preallocated (static)
KV cache and fixed shapes, drawing exactly the tokens of ``fullscale.lm.sample_responses``.

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
  row draws from its own generator (``fullscale.lm._draw``), so batching changes nothing.
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

from fullscale.lm import Prompts, _accepts, _autocast, _cache_arg, _draw, _no_pad, _positions
from shared.sampling import geometric_mixture

__all__ = ["STATIC_MODEL_TYPES", "decode", "draw_noise"]

# architectures whose every layer is full attention and whose static cache the tests check
STATIC_MODEL_TYPES = ("gpt2", "llama", "qwen2")

_said = set()


def _static_ok(model) -> bool:
    import transformers

    kind = getattr(getattr(model, "config", None), "model_type", None)
    ok = kind in STATIC_MODEL_TYPES and hasattr(transformers, "StaticCache") and _accepts(model, "logits_to_keep")
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
    arg = _cache_arg(model)
    kw = {"logits_to_keep": 1} if static else {}
    out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True, **kw)
    grown = out[arg]
    if not static:
        if k > 1:
            grown.batch_select_indices(torch.arange(len(ids), device=ids.device).repeat(k))
        return out.logits[:, -1], grown
    from transformers import StaticCache

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
    with _autocast(prompts.ids.device):
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
    args = [_cache_arg(m) for m in models]

    def scores(logits_per_model):
        out = [_no_pad(lg.float(), pad, eos) / temperature for lg in logits_per_model]
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
            tok = _draw(probs, generator)
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
