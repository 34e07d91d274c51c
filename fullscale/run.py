"""Run a study of the online/offline gap with language models: the protocol of
Tang et al. 2024 on small models trained from scratch, or on your own local models and data.

    python -m fullscale.run --preset smoke                  # every stage on tiny models, about 15 s on a CPU
    python -m fullscale.run --preset small --hypothesis coverage --out runs/fs-small
    python -m fullscale.run --preset small --data.source hh --data.path hh.jsonl
    python -m fullscale.run --preset small --hypothesis coverage --out runs/fs-small --resume  # after a kill
    python -m fullscale.run --config my.toml --train.steps 200

Writes DIR/results.json (the schema of docs/results-schema.md, shared with
toysim), PNG figures, DIR/report.md, DIR/metrics.jsonl (one line per
checkpoint) and DIR/config.json; stages are cached in DIR/cache. DIR is
--out, or a new runs/fullscale/<hypothesis>-<preset>-<date-time> per run.
Docs: docs/fullscale.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from fullscale.checks import check_config, check_world
from fullscale.config import ConfigFileError, RunConfig, apply_file, preset
from fullscale.data import DataError, prepare
from fullscale.dist import SINGLE, setup
from fullscale.store import safe_load
from fullscale.study import Runner, run_study
from fullscale.world import data_stage_dir
from shared import plots, report
from shared.cli import claim_run_dir, cli, fail, new_run_dir, progress, write_json
from shared.machine import apply_threads
from shared.protocol import plan
from shared.studies import STUDIES

__all__ = ["main"]

_RUN_ONLY = ("resume", "dry_run")
"""Flags that say how to run, not what: never a difference between a run and its --resume."""


def _progress(total: int, desc: str):
    return progress(total, desc, width=28)


def _resolve(argv: list[str] | None):
    """Preset, then config file, then flags (tyro, defaults from the first two)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="smoke")
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    base = preset(known.preset)
    if known.config:
        base = apply_file(base, Path(known.config))
    return cli(RunConfig, argv, default=base, prog="python -m fullscale.run", description="\n\n".join(__doc__.split("\n\n")[:2]))


def _check_out(cfg) -> str | None:
    """The run directory's state: a finished run is never overwritten, a started one only
    continued with --resume and the same config; writable. Writes nothing."""
    out = cfg.out
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file; choose a directory"
    if (out / "results.json").exists():
        return (f"{out} holds a finished run (its report: {out}/report.md); to run again, leave out --out "
                "(each run gets a new folder) or choose a new --out")
    if (out / "config.json").exists():
        if not cfg.resume:
            return f"{out} holds an unfinished run; add --resume to continue it, or leave out --out to start a new one"
        try:
            saved = json.loads((out / "config.json").read_text())
        except (ValueError, OSError) as e:
            return f"{out}/config.json cannot be read ({e}); choose a new --out"
        now = _jsonable(cfg)
        diff = sorted(k for k in set(saved) | set(now) if k not in _RUN_ONLY and saved.get(k) != now.get(k))
        if diff:
            return f"--resume with a different config than {out}/config.json (differs in: {', '.join(diff)})"
    for d in (out, cfg.cache):
        if d is None:
            continue
        probe = Path(d).absolute()
        while not probe.exists():
            probe = probe.parent
        if not os.access(probe, os.W_OK | os.X_OK):
            return f"cannot write to {'--out' if d is out else '--cache'} {d}: permission denied at {probe}"
        if not probe.is_dir():
            return f"{'--out' if d is out else '--cache'} {d}: {probe} is not a directory"
    return None


def _threads(cfg):
    """Fix torch's CPU thread count: --threads, else the count a resumed run recorded, else
    the cores idle at start-up (``shared.machine.default_threads``). Results depend on it in
    their last digits (docs/fullscale.md)."""
    n = cfg.threads
    if n == 0 and cfg.resume and (cfg.out / "config.json").is_file():
        with contextlib.suppress(ValueError, OSError, AttributeError):
            n = int(json.loads((cfg.out / "config.json").read_text()).get("threads") or 0)
    return replace(cfg, threads=apply_threads(n))


def _run_dir(cfg):
    """--out as given, else the name of a new folder per run (``shared.cli.new_run_dir``; made
    by ``claim_run_dir`` once the inputs are read)."""
    if cfg.out is not None:
        return cfg
    return replace(cfg, out=new_run_dir(Path("runs/fullscale"), f"{cfg.hypothesis}-{cfg.preset}"))


def _jsonable(cfg) -> dict:
    return json.loads(json.dumps(asdict(cfg), default=str))


def _read_inputs(cfg):
    """The run's data (read and encoded, or the finished data stage of a resumed run) and the
    checks that need it. Returns (prepared data or None, problem or None); writes nothing."""
    cached = data_stage_dir(cfg)
    try:
        if (cached / "DONE").exists():
            prep, t = None, safe_load(cached / "data.pt")
        else:
            prep = prepare(cfg)
            t = prep.tensors
    except (DataError, ValueError, OSError) as e:
        return None, str(e).splitlines()[0]
    train = int((t["train"] & ~t["tie"]).sum())
    return prep, check_world(cfg, t["prompt_ids"].shape[1], len(t["x"]), train)


def _open_log(path: Path, resume: bool):
    """metrics.jsonl for appending; a resumed run does not log a checkpoint twice (one
    evaluated again after a kill before its state was saved)."""
    seen = set()
    if resume and path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut by the kill
                continue
            seen.add(tuple(rec.get(k) for k in _LOG_KEY))
    f = path.open("a")
    if path.stat().st_size and not path.read_text().endswith("\n"):
        f.write("\n")
    return f, seen


_LOG_KEY = ("arm", "seed", "lr", "beta", "step")


def _join(cfg):
    """This process's place (``fullscale.dist``): one process unless --dist.strategy says otherwise."""
    if cfg.dist.strategy == "none":
        return SINGLE
    dev = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else ("cpu" if cfg.device == "auto" else cfg.device))
    return setup(cfg.dist.strategy, dev, cfg.dist.timeout_s, cfg.dist.reshard_after_forward)


def _follow(cfg, prepared, dist) -> int:
    """A rank other than 0: run the study with rank 0 (``fullscale.dist``), which writes every file."""
    try:
        run_study(Runner(cfg, None, None, data=prepared, dist=dist), cfg.hypothesis)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: rank {dist.rank}: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


def _dry_run(cfg) -> int:
    """--dry-run: the study's plan, one line an arm; nothing built, nothing written."""
    t = cfg.train
    print(f"preset {cfg.preset}: {t.steps} online steps, batch {t.batch_size}, lr {t.lr:g}, beta {t.beta:g}, {cfg.seeds} seed(s)")
    plans = plan(STUDIES[cfg.hypothesis], t)
    print(f"\n== {cfg.hypothesis}: {len(plans)} arms")
    for p in plans:
        print("  " + p.describe())
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = _resolve(argv)
    except SystemExit as e:
        return 0 if e.code in (0, None) else 2
    except (ConfigFileError, ValueError, OSError) as e:  # preset name, config file
        return fail(str(e).splitlines()[0])
    problem = check_config(cfg)
    if problem:
        return fail(problem)
    if cfg.dry_run:
        return _dry_run(cfg)
    if cfg.resume and cfg.out is None:
        return fail("--resume continues the run in --out DIR; name that folder")
    auto_out = cfg.out is None
    dist = _join(cfg)
    if dist.world > 1 and cfg.threads == 0 and not cfg.resume:  # the processes of one machine share its cores (a resume keeps the recorded count)
        cfg = replace(cfg, threads=max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", dist.world))))
    cfg = _threads(_run_dir(cfg))
    problem = _check_out(cfg) if dist.main else None  # rank 0 is about to write there; the others only read
    if problem:
        return fail(problem)

    from transformers.utils import logging as hf_logging  # lazily: transformers takes seconds to import, and --help needs none of it

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    prepared, problem = _read_inputs(cfg)
    if problem:
        return fail(problem)
    # inputs read and checked: only now is anything written to --out (by rank 0 only)
    if not dist.main:
        return _follow(cfg, prepared, dist)
    try:
        if auto_out:  # a folder of its own: another run may have taken the name since
            cfg = replace(cfg, out=claim_run_dir(Path("runs/fullscale"), f"{cfg.hypothesis}-{cfg.preset}"))
        resolved = _jsonable(cfg)
        for d in (cfg.out, cfg.cache):
            if d is not None:
                Path(d).mkdir(parents=True, exist_ok=True)
        write_json(cfg.out / "config.json", resolved)
    except OSError as e:
        where = Path(e.filename or cfg.out)
        flag = "--cache" if cfg.cache is not None and Path(cfg.cache) in (where, *where.parents) else "--out"
        return fail(f"cannot write to {flag} {where}: {e.strerror or e}")
    print(f"resolved config: {json.dumps(resolved)}")

    t0 = time.time()
    metrics, logged = _open_log(cfg.out / "metrics.jsonl", cfg.resume)

    def log(rec):
        key = tuple(rec.get(k) for k in _LOG_KEY)
        if key in logged:
            return
        logged.add(key)
        metrics.write(json.dumps({"time": round(time.time() - t0, 2), **rec}) + "\n")
        metrics.flush()

    try:
        runner = Runner(cfg, _progress, log, data=prepared, dist=dist)  # the world
        res = run_study(runner, cfg.hypothesis)  # the golden policy, then the arms
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        metrics.close()
    write_json(cfg.out / "results.json", res)
    figs = plots.figures(res, cfg.out)
    path = report.write_report([res], cfg.out, {res["study"]: figs}, title="fullscale report", flat=True)
    print(f"\n== {res['study']}: {res['question']}  ({time.time() - t0:.1f} s, {res['extras']['machine']})")
    print(report.format_table(res))
    print(report.format_claims(res))
    print(f"\nwrote {cfg.out}/results.json, {len(figs)} figures and {path} in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
    raise SystemExit(130)
