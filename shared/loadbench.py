"""Benchmark: the documented commands on a quiet machine and beside a competing CPU-bound process.

    python -m shared.loadbench                       # the three commands below, 3 times each
    python -m shared.loadbench --repeats 1 --commands gap-contrastive

A laptop or a shared server is rarely idle. This runs each command (in a fresh temporary
folder, as printed in the README) with nothing else running, then beside ``--competitors``
processes that each keep one core busy (a Python busy loop), and prints the median wall
time of each and their ratio. ``--all-cores`` adds the same command with one torch thread
per core (``OMP_NUM_THREADS``: torch's own default, before ``shared.machine`` chose the
count from the idle cores), quiet and, with ``--all-cores-loaded``, under load, to show what
the default protects against. Docs: docs/tutorial.md (Speed). Tests: none (a benchmark of the
commands the suite runs elsewhere).
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shared.cli import cli

__all__ = ["LoadBenchConfig", "COMMANDS", "main"]

ROOT = Path(__file__).resolve().parents[1]

COMMANDS = {
    "readme-main": ["toysim.gap", "--hypothesis", "all", "--seeds", "5"],
    "gap-contrastive": ["toysim.gap", "--hypothesis", "contrastive"],
    "fullscale-smoke": ["fullscale.run", "--preset", "smoke"],
}
"""The README's main command, the command the project is known by, and the fullscale smoke run."""

Name = Literal[tuple(COMMANDS)]  # type: ignore[valid-type]


@dataclass(frozen=True)
class LoadBenchConfig:
    """Time the documented commands quiet and under load."""

    commands: tuple[Name, ...] = tuple(COMMANDS)
    """which commands: readme-main (toysim.gap --hypothesis all --seeds 5), gap-contrastive, fullscale-smoke"""
    repeats: int = 3
    """runs per command and condition; the median is printed"""
    competitors: int = 1
    """CPU-bound processes running beside the command under load (each keeps one core busy)"""
    all_cores: bool = False
    """also time each command quiet with one torch thread per core (torch's own default)"""
    all_cores_loaded: bool = False
    """also time that under load (slow: this is the case the default protects against)"""


def _cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _timed(module_args: list[str], env: dict) -> float:
    """Wall seconds of one run of ``python -m <module_args>`` in a fresh folder; raises on failure."""
    with tempfile.TemporaryDirectory() as cwd:
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", *module_args], cwd=cwd, env=env, capture_output=True, text=True)
        dt = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(module_args)} failed (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:]}")
    return dt


class _Load:
    """``n`` busy-loop processes for the duration of a ``with`` block."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        time.sleep(1.0)  # running before the command starts, as a busy machine is
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = cli(LoadBenchConfig, argv, prog="python -m shared.loadbench", description=__doc__.split("\n\n")[0])
    except SystemExit as e:
        return 0 if e.code in (0, None) else 2
    if cfg.repeats < 1 or cfg.competitors < 1:
        print("error: --repeats and --competitors must be at least 1", file=sys.stderr)
        return 2
    base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    base["PYTHONPATH"] = str(ROOT) + os.pathsep + base.get("PYTHONPATH", "")
    all_cores = {**base, "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    conditions = [("quiet", base, 0), ("loaded", base, cfg.competitors)]
    if cfg.all_cores:
        conditions.append(("quiet, all cores", all_cores, 0))
    if cfg.all_cores_loaded:
        conditions.append(("loaded, all cores", all_cores, cfg.competitors))
    print(f"machine: {_cpu_name()} ({platform.machine()}), {os.cpu_count()} cores; python {platform.python_version()}; "
          f"{cfg.repeats} runs each, medians; load: {cfg.competitors} busy-loop process(es)")
    print(f"{'command':<18}" + "".join(f"{c:>20}" for c, _, _ in conditions) + f"{'loaded / quiet':>16}")
    for name in cfg.commands:
        runs = {c: [] for c, _, _ in conditions}
        for _ in range(cfg.repeats):  # the conditions take turns, so a drift of the machine hits them alike
            for cond, env, load in conditions:
                with _Load(load) if load else contextlib.nullcontext():
                    try:
                        runs[cond].append(_timed(COMMANDS[name], env))
                    except RuntimeError as e:
                        print(f"error: {e}", file=sys.stderr)
                        return 1
        times = {c: statistics.median(v) for c, v in runs.items()}
        print(f"{name:<18}" + "".join(f"{times[c]:>19.1f}s" for c, _, _ in conditions) + f"{times['loaded'] / times['quiet']:>15.2f}×",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
