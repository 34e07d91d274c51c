"""Benchmark: the batched engine against a one-run-at-a-time loop of the same computation.

    python -m toysim.bench --prompts 64 --responses 256 --runs 64 --steps 2000

Both train offline IPO (shared.losses.ipo_loss) on minibatches of a fixed
dataset with Adam, through the same ``toysim.train.train``: the batched
engine trains ``runs`` runs at once as one tensor program; the loop trains the
same runs one after another. The loop is timed on ``loop_runs`` of them (its
cost per run-step does not depend on how many runs follow) and both are
reported in run-steps per second, with their ratio. Timings are medians over
``repeats`` measurements in this one process, batched and loop interleaved. Docs: docs/tutorial.md (§ speed).
Tests: tests/test_toysim_tools.py.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass
from typing import Literal

import torch

from shared.cli import cli, fail
from shared.losses import ipo_loss
from shared.machine import apply_threads
from shared.sampling import OfflineSampler
from toysim.policy import LogLinearPolicy
from toysim.train import train
from toysim.world import WorldConfig, make_world

__all__ = ["BenchConfig", "main"]


@dataclass(frozen=True)
class BenchConfig:
    """Measure run-steps per second, batched vs looped."""

    prompts: int = 64
    """prompts X"""
    responses: int = 256
    """responses N per prompt"""
    runs: int = 64
    """runs trained at once by the batched engine"""
    steps: int = 2000
    """training steps per run"""
    batch_size: int = 32
    """pairs per step"""
    policy: Literal["loglinear", "tabular", "both"] = "both"
    """policy class: log-linear on ``features`` features (compute-bound), tabular logits (overhead-bound), or both"""
    features: int = 16
    """log-linear policy width (WorldConfig's default); the batched engine's work grows linearly with it"""
    loop_runs: int = 2
    """runs timed in the one-at-a-time loop"""
    repeats: int = 5
    """timed repetitions (the median is reported); a busy or shared machine varies from one run to the next"""
    threads: int = 0
    """CPU threads for torch (0: the cores idle at start-up, shared/machine.py; OMP_NUM_THREADS when set)"""


def _setup(cfg: BenchConfig, runs: int, policy: str):
    w = make_world(WorldConfig(prompts=cfg.prompts, responses=cfg.responses, golden_pairs=4 * cfg.batch_size * cfg.prompts,
                               policy_features=cfg.features, proxy_features=8)).to(torch.float32)
    feats = w.policy_features(1) if policy == "loglinear" else None
    pol = LogLinearPolicy(w.sft_logp, feats, runs)
    sampler = OfflineSampler(w.d_golden, cfg.batch_size, torch.Generator().manual_seed(0), lead=(runs,))
    beta = torch.full((runs, 1), 0.1)
    lr = torch.full((runs, 1), 1e-3)
    return pol, sampler, beta, lr


def _time_once(cfg: BenchConfig, runs: int, policy: str, steps: int) -> float:
    pol, sampler, beta, lr = _setup(cfg, runs, policy)
    t = time.perf_counter()
    train(pol, sampler, ipo_loss, beta, lr, steps, steps + 1, lambda table, step: {}, None)
    return time.perf_counter() - t


def _measure(cfg: BenchConfig, policy: str) -> tuple[list[float], list[float]]:
    """Interleaved timings: each repeat times one batched training and then ``loop_runs``
    single runs, so that a change in machine load during the benchmark hits both sides."""
    batched, looped = [], []
    for _ in range(cfg.repeats):
        batched.append(_time_once(cfg, cfg.runs, policy, cfg.steps))
        looped += [_time_once(cfg, 1, policy, cfg.steps) for _ in range(cfg.loop_runs)]
    return batched, looped


def main(argv=None) -> int:
    cfg = cli(BenchConfig, argv, prog="python -m toysim.bench", description=__doc__.split("\n\n")[0])
    if min(cfg.prompts, cfg.runs, cfg.steps, cfg.loop_runs, cfg.repeats) < 1 or cfg.responses < 2:
        return fail("sizes must be positive (responses ≥ 2)")
    apply_threads(cfg.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"config: {cfg}")
    policies = ("loglinear", "tabular") if cfg.policy == "both" else (cfg.policy,)
    for policy in policies:
        _time_once(cfg, cfg.runs, policy, min(cfg.steps, 20))  # warm-up
        batched, looped = _measure(cfg, policy)
        b_rate = cfg.runs * cfg.steps / statistics.median(batched)
        l_rate = cfg.steps / statistics.median(looped)  # a run alone: the loop's cost per run
        pairs = [cfg.runs * statistics.median(looped[i * cfg.loop_runs:(i + 1) * cfg.loop_runs]) / b for i, b in enumerate(batched)]
        print(f"[{policy}] batched: {b_rate:,.0f} run-steps/s ({statistics.median(batched):.2f} s for {cfg.runs} runs × {cfg.steps} steps)  "
              f"loop: {l_rate:,.0f} run-steps/s ({statistics.median(looped):.2f} s per run)  ratio: {b_rate / l_rate:.1f}x  "
              f"(per repeat {min(pairs):.1f}–{max(pairs):.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
