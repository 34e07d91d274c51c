"""Benchmark one online-IPO training step end to end, on CPU or one GPU.

    python -m fullscale.bench --model tiny                      # CPU, seconds
    python -m fullscale.bench --model gpt2 --batch 32 --prompt-tokens 64 --new-tokens 64

One step is what the online arm does (docs/fullscale.md): generate a pair of
responses per prompt from the current policy (``fullscale.decode``: both in one
batch, static KV cache; ``--decoder reference`` times ``fullscale.decode.sample_responses``
once per response instead), score the pair (a cheap reward, the fraction of even token ids, as
the TRL throughput harness of the GPU-performance issue uses, or a pairwise
preference model of the policy's shape), policy and reference log-probs, the
IPO loss of ``shared.losses``, backward and an Adam step (the runner's,
``fullscale.train``; ``--numerics fast`` as the runner's ``--train.numerics fast``). It prints medians
over the measured steps after warm-up: pairs/s, generated tokens/s, training
tokens/s, the split of the step into generate / score / train, peak GPU memory
(CUDA), and model FLOP utilisation when ``--peak-tflops`` gives the device's
peak. Model FLOPs count 2·N per token for a forward pass and 6·N for forward +
backward (Kaplan et al. 2020, §2.1), N the non-embedding parameters.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from fullscale.decode import LMPolicy, sample_responses
from fullscale.dist import Dist, row_generator
from fullscale.lm import Prompts, pm_scores, sequence_logp
from fullscale.models import ModelSpec, build_model
from fullscale.train import _adam
from shared.cli import cli, fail
from shared.losses import ipo_loss

__all__ = ["BenchConfig", "SHAPES", "main"]

# (width, layers, heads): GPT-2 small and medium, and a CPU-sized model
SHAPES = {"tiny": (64, 2, 2), "gpt2": (768, 12, 12), "gpt2-medium": (1024, 24, 16)}


@dataclass(frozen=True)
class BenchConfig:
    """Time one online-IPO step: generate, score, train."""

    model: Literal["tiny", "gpt2", "gpt2-medium"] = "tiny"
    """policy shape (GPT-2 architecture, random weights)"""
    vocab: int = 50257
    """vocabulary size (GPT-2's by default)"""
    batch: int = 32
    """prompts per step (one pair each)"""
    prompt_tokens: int = 64
    """tokens per prompt"""
    new_tokens: int = 64
    """tokens generated per response (the sampler always runs every step)"""
    score: Literal["cheap", "pm"] = "cheap"
    """cheap: fraction of even token ids; pm: a pairwise preference model of the policy's shape"""
    steps: int = 5
    """measured steps"""
    warmup: int = 2
    """steps before measuring"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: cuda when available"""
    peak_tflops: float = 0.0
    """the device's peak TFLOP/s for MFU (e.g. 989 for an H100's dense bf16); 0: no MFU"""
    lr: float = 1e-5
    """Adam learning rate"""
    beta: float = 0.1
    """IPO's β"""
    draws: Literal["one-generator", "per-example"] = "one-generator"
    """one-generator: the pair's draws from one generator (one process's default); per-example: each row with its own generator (``--dist.strategy ddp``'s draws)"""
    numerics: Literal["exact", "fast"] = "exact"
    """the runner's ``--train.numerics``: exact, or fused Adam and the pair's prompt run once in training (the same maths to float rounding)"""
    decoder: Literal["fast", "reference"] = "fast"
    """fast: the pair in one batch of 2·batch rows, static KV cache, prompt prefilled once (``fullscale.decode``, what the runner uses); reference: ``fullscale.decode.sample_responses`` once per response (a growing cache, the prompt's logits at every position)"""


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _non_embedding_params(model) -> int:
    emb = sum(p.numel() for n, p in model.named_parameters() if "wte" in n or "wpe" in n)
    return sum(p.numel() for p in model.parameters()) - emb


def run(cfg: BenchConfig) -> dict:
    """Measure ``cfg.steps`` steps after ``cfg.warmup``; returns the medians (see the module docstring)."""
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else ("cpu" if cfg.device == "auto" else cfg.device))
    width, layers, heads = SHAPES[cfg.model]
    ids = {"pad": 0, "eos": 2, "cls": 3}
    spec = ModelSpec(arch="gpt2", width=width, layers=layers, heads=heads, max_len=cfg.prompt_tokens + 2 * cfg.new_tokens + 2)
    policy = build_model(spec, cfg.vocab, ids, seed=0).to(device).train()
    ref = build_model(spec, cfg.vocab, ids, seed=0).to(device).eval().requires_grad_(False)
    pm = build_model(spec, cfg.vocab, ids, seed=1, head=True).to(device).eval().requires_grad_(False) if cfg.score == "pm" else None
    fast = cfg.numerics == "fast"
    opt = _adam(policy, cfg.lr, fast)
    g = torch.Generator(device=device).manual_seed(0)
    prompts = Prompts(torch.randint(4, cfg.vocab, (cfg.batch, cfg.prompt_tokens), generator=g, device=device),
                      torch.ones(cfg.batch, cfg.prompt_tokens, dtype=torch.bool, device=device))
    x = torch.arange(cfg.batch, device=device)
    ops = {"eos": ids["eos"], "pad": ids["pad"]}
    dist = Dist(0, 1, True) if cfg.draws == "per-example" else None

    def draws():  # the reference decoder's generator(s) for one response: per-example, one seed drawn from g
        if dist is None:
            return g
        seed = int(torch.randint(1 << 62, (1,), generator=g, device=device))
        return [row_generator(seed, i, device) for i in range(cfg.batch)]

    def step() -> tuple[float, float, float]:
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            if cfg.decoder == "fast":
                y1, y2 = LMPolicy(policy, prompts, cfg.new_tokens, dist=dist, **ops).sample_k(x, g, 2)
            else:
                y1, y2 = (sample_responses(policy, prompts, x, cfg.new_tokens, generator=draws(), **ops) for _ in range(2))
        _sync(device)
        t1 = time.perf_counter()
        with torch.no_grad():
            if pm is None:
                first = (y1 % 2 == 0).float().mean(-1) >= (y2 % 2 == 0).float().mean(-1)
            else:
                first = pm_scores(pm, prompts, x, [y1, y2], cls=ids["cls"], **ops) >= 0
            y_w, y_l = torch.where(first[:, None], y1, y2), torch.where(first[:, None], y2, y1)
        _sync(device)
        t2 = time.perf_counter()
        yy, xx = torch.cat([y_w, y_l]), torch.cat([x, x])
        with torch.no_grad():
            r = sequence_logp(ref, prompts, xx, yy, **ops, fast=fast)
        p = sequence_logp(policy, prompts, xx, yy, **ops, fast=fast)
        loss = ipo_loss(p[: cfg.batch], p[cfg.batch:], r[: cfg.batch], r[cfg.batch:], cfg.beta).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    for _ in range(cfg.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = [step() for _ in range(cfg.steps)]
    gen, score, train = (statistics.median(t[i] for t in times) for i in range(3))
    total = statistics.median(sum(t) for t in times)
    n = _non_embedding_params(policy)
    seq = cfg.prompt_tokens + cfg.new_tokens
    # generation: each prompt once and 2 responses of new_tokens (whichever decoder: the work, not what
    # the reference decoder repeats); training: policy fwd+bwd and reference fwd over 2B sequences; a PM
    # forward over B pair sequences
    flops = (2 * n * cfg.batch * (cfg.prompt_tokens + 2 * cfg.new_tokens) + 6 * n * 2 * cfg.batch * seq + 2 * n * 2 * cfg.batch * seq
             + (2 * n * cfg.batch * (cfg.prompt_tokens + 2 * cfg.new_tokens + 1) if pm is not None else 0))
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "model": cfg.model, "params": sum(p.numel() for p in policy.parameters()), "non_embedding_params": n,
        "step_s": total, "pairs_per_s": cfg.batch / total,
        "generated_tokens_per_s": 2 * cfg.batch * cfg.new_tokens / gen,
        "training_tokens_per_s": 2 * cfg.batch * seq / train,
        "split": {k: sum(t[i] for t in times) / sum(map(sum, times)) for i, k in enumerate(("generate", "score", "train"))},
        "mfu": flops / total / (cfg.peak_tflops * 1e12) if cfg.peak_tflops > 0 else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = cli(BenchConfig, argv, prog="python -m fullscale.bench", description=__doc__.split("\n\n")[0])
    except SystemExit as e:
        return 2 if e.code else 0
    if min(cfg.batch, cfg.prompt_tokens, cfg.new_tokens, cfg.steps) < 1 or cfg.warmup < 0 or cfg.vocab < 8:
        return fail("batch, prompt-tokens, new-tokens and steps must be ≥ 1, warmup ≥ 0, vocab ≥ 8")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        return fail("--device cuda but no CUDA device is available")
    r = run(cfg)
    s = r["split"]
    print(f"device: {r['device']}, torch {torch.__version__}")
    print(f"config: {cfg}")
    print(f"model: {r['model']} ({r['params'] / 1e6:.1f}M parameters, {r['non_embedding_params'] / 1e6:.1f}M non-embedding)")
    print(f"step: {r['step_s'] * 1e3:.1f} ms (median of {cfg.steps})  pairs/s: {r['pairs_per_s']:.1f}  "
          f"generated tokens/s: {r['generated_tokens_per_s']:,.0f}  training tokens/s: {r['training_tokens_per_s']:,.0f}")
    print(f"split: generate {s['generate']:.0%}  score {s['score']:.0%}  train {s['train']:.0%}"
          + (f"  MFU: {r['mfu']:.1%}" if r["mfu"] is not None else "  MFU: n/a (give --peak-tflops)")
          + (f"  peak memory: {r['peak_memory_gib']:.2f} GiB" if r["peak_memory_gib"] is not None else ""))
    print("RESULT " + json.dumps({"bench": "fullscale.bench", **{k: v for k, v in asdict(cfg).items()}, **r,
                                  "torch": torch.__version__}))  # one machine-readable line, as the TRL harness prints
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        raise SystemExit(130)
