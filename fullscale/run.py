"""Run a study of the online/offline gap with language models: the protocol of
Tang et al. 2024 on small models trained from scratch, or on your own local models and data.

    python -m fullscale.run --preset smoke
    python -m fullscale.run --preset small --study coverage --out runs/fs-small
    python -m fullscale.run --preset small --data.source hh --data.path hh.jsonl
    python -m fullscale.run --config my.toml --train.steps 200 --resume
    python -m fullscale.run --help

Writes DIR/results.json (the schema of docs/results-schema.md, shared with
toysim), PNG figures, DIR/report.md, DIR/metrics.jsonl (one line per
checkpoint) and DIR/config.json; stages are cached in DIR/cache. Docs:
docs/fullscale.md.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

__all__ = ["main"]


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"{desc:>28}", file=sys.stderr, leave=False, mininterval=0.5, disable=None)


def _resolve(argv: list[str] | None):
    """Preset, then config file, then flags (tyro, defaults from the first two)."""
    import argparse

    from fullscale.config import RunConfig, apply_file, preset
    from shared.cli import cli

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="smoke")
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    base = preset(known.preset)
    if known.config:
        base = apply_file(base, Path(known.config))
    return cli(RunConfig, argv, default=base, prog="python -m fullscale.run", description=__doc__.split("\n\n")[0])


def _check(cfg) -> str | None:
    if cfg.seeds < 1:
        return f"--seeds must be at least 1, got {cfg.seeds}"
    t = cfg.train
    for name in ("steps", "batch_size", "checkpoints", "save_every", "offline_mult"):
        if getattr(t, name) < 1:
            return f"--train.{name.replace('_', '-')} must be at least 1, got {getattr(t, name)}"
    if not (t.beta > 0 and t.lr > 0 and t.temperature > 0):
        return "--train.beta, --train.lr and --train.temperature must be > 0"
    if cfg.data.max_response_tokens < 2:
        return "--data.max-response-tokens must be at least 2"
    if cfg.data.source != "synthetic" and cfg.data.path is None:
        return f"--data.source {cfg.data.source} needs --data.path (a local file)"
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "--device cuda, but no CUDA device is available"
    out = cfg.out
    if (out / "results.json").exists() or ((out / "config.json").exists() and not cfg.resume):
        if not cfg.resume:
            return f"{out} holds a run; pass --resume to continue it or choose a new --out (results are never overwritten)"
        if (out / "results.json").exists():
            return f"{out}/results.json exists: that run is finished; choose a new --out"
    if cfg.resume and (out / "config.json").exists():
        saved = json.loads((out / "config.json").read_text())
        now = _jsonable(cfg)
        diff = sorted(k for k in set(saved) | set(now) if k not in ("resume",) and saved.get(k) != now.get(k))
        if diff:
            return f"--resume with a different config than {out}/config.json (differs in: {', '.join(diff)})"
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-test").write_text("")
        (out / ".write-test").unlink()
    except OSError as e:
        return f"cannot write to --out {out}: {e.strerror or e}"
    return None


def _jsonable(cfg) -> dict:
    return json.loads(json.dumps(asdict(cfg), default=str))


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = _resolve(argv)
    except SystemExit as e:
        return 0 if e.code in (0, None) else 2
    except (ValueError, OSError) as e:  # preset name, config file
        return fail(str(e).splitlines()[0])
    problem = _check(cfg)
    if problem:
        return fail(problem)
    resolved = _jsonable(cfg)
    print(f"resolved config: {json.dumps(resolved)}")
    _write_json(cfg.out / "config.json", resolved)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from fullscale.pipeline import Pipeline, run_study
    from fullscale.train import clear_stage_tmp
    from toysim import report

    t0 = time.time()
    metrics = (cfg.out / "metrics.jsonl").open("a")

    def log(rec):
        metrics.write(json.dumps({"time": round(time.time() - t0, 2), **rec}) + "\n")
        metrics.flush()

    try:
        if cfg.cache is not None or (cfg.out / "cache").exists():
            clear_stage_tmp(Path(cfg.cache or cfg.out / "cache"))
        pipe = Pipeline(cfg, _progress, log)
        res = run_study(pipe, cfg.study)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        metrics.close()
    _write_json(cfg.out / "results.json", res)
    figs = report.figures(res, cfg.out)
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
