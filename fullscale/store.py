"""The file store of the LLM path: atomic writes, safe loads, the stage cache's folders and the
temporary files a killed process leaves in them, and the fault points the kill-and-resume tests use.

Docs: docs/fullscale.md (§ resuming). Tests: tests/test_fullscale_train.py (kill and resume), tests/test_fullscale_run.py (the stage cache).

Every file a run reads back is written under a temporary name and renamed into place
(``atomic_save``), so a kill at any moment leaves either the old file or the new one. A stage of
the world or a run of an arm is a folder ``cache/<name>-<hash>`` (``stage_dir``), the hash over
everything it depends on (``config_hash``); it is finished when its ``DONE`` file exists
(``mark_done``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import torch

__all__ = ["atomic_save", "safe_load", "config_hash", "stage_dir", "mark_done", "clear_stage_tmp", "fault_point"]


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary name and a rename: never half a file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def safe_load(path: Path):
    """torch.load restricted to tensors and plain containers (weights_only=True)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def config_hash(*parts) -> str:
    """12 hex digits of the SHA-256 of ``parts`` as sorted-key JSON: a stage's cache key."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def stage_dir(cache: Path, name: str, *deps) -> Path:
    """The folder of stage ``name`` with dependencies ``deps`` in ``cache``."""
    return Path(cache) / f"{name}-{config_hash(*deps)}"


def mark_done(d: Path, info: dict | None = None) -> None:
    """Finish a stage: its ``info.json``, then its ``DONE`` marker (what a later run looks for)."""
    (d / "info.json").write_text(json.dumps(info or {}, indent=1, sort_keys=True, default=str))
    (d / "DONE").write_text("")


_FAULT_ENV = {"step": "FULLSCALE_FAULT_AFTER_STEPS", "save": "FULLSCALE_FAULT_AFTER_SAVES"}
_events: dict[str, int] = {"step": 0, "save": 0}


def fault_point(event: str = "step") -> None:
    """Test hook for the kill-and-resume tests: with FULLSCALE_FAULT_AFTER_STEPS=N (or
    FULLSCALE_FAULT_AFTER_SAVES=N) in the environment, the process dies (like a SIGKILL:
    no cleanup) right after the N-th optimiser step of any stage (SFT, preference models,
    policies), or right after the N-th saved run state of a policy run. Under torchrun,
    FULLSCALE_FAULT_RANK=R limits it to the process of rank R (the others run on), and
    FULLSCALE_FAULT_SIGNAL=KILL makes it a real SIGKILL instead of exit status 75."""
    only = os.environ.get("FULLSCALE_FAULT_RANK")
    if only is not None and os.environ.get("RANK", "0") != only:
        return
    _events[event] += 1
    limit = os.environ.get(_FAULT_ENV[event])
    if limit is not None and _events[event] >= int(limit):
        if os.environ.get("FULLSCALE_FAULT_SIGNAL") == "KILL":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(75)


def clear_stage_tmp(stage: Path) -> None:
    """Remove the temporary files (``*.tmp``, from ``atomic_save`` and ``save_model``) that a killed
    process left directly in one stage folder; they are never read. Nothing else is touched."""
    if not stage.is_dir():
        return
    for p in stage.glob("*.tmp"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
