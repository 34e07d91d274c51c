"""The file store of the LLM path: atomic writes, safe loads, the stage cache's folders and the
temporary files a killed process leaves in them, and the fault points the kill-and-resume tests use.

Docs: docs/fullscale.md (§ resuming). Tests: tests/test_fullscale_store.py, tests/test_fullscale_train.py (kill and
resume), tests/test_fullscale_run.py (the stage cache shared by two runs at once).

Every file a run reads back is written under a temporary name and renamed into place
(``atomic_save``), so a kill at any moment leaves either the old file or the new one. A stage of
the world or a run of an arm is a folder ``cache/<name>-<hash>`` (``stage_dir``), the hash over
everything it depends on (``config_hash``); it is finished when its ``DONE`` file exists
(``mark_done``). Runs that share a cache (``--cache``) build each stage once: its writer holds the
stage's lock file (``lock_stage``, an advisory ``flock`` the system drops when the process ends,
killed or not), and another run that needs the stage waits for it, then reuses it; only the lock's
holder removes the temporary files a killed writer left.
"""

from __future__ import annotations

import hashlib
import json
import os

try:
    import fcntl  # POSIX (Linux, macOS): the stage locks
except ImportError:  # elsewhere runs sharing a cache are not serialised
    fcntl = None
import shutil
import signal
import sys
from pathlib import Path

import torch

__all__ = ["DamagedFile", "atomic_save", "safe_load", "config_hash", "stage_dir", "mark_done", "lock_stage", "unlock_stage", "clear_stage_tmp",
           "fault_point"]


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary name and a rename: never half a file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class DamagedFile(ValueError):
    """A file of a run that cannot be read back: the message names it and what to do."""


def safe_load(path: Path):
    """torch.load restricted to tensors and plain containers (weights_only=True). A file damaged
    outside the program (truncated, overwritten) raises ``DamagedFile``, whose one line names the
    file and the two ways on: delete its stage folder (``--resume`` builds that stage again, from
    its start) or start the run afresh in a new ``--out``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DamagedFile(f"{path} is damaged and cannot be read ({reason}); delete {Path(path).parent} and --resume builds that "
                          "stage again, or start the run afresh with a new --out") from None


def config_hash(*parts) -> str:
    """12 hex digits of the SHA-256 of ``parts`` as sorted-key JSON: a stage's cache key."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def stage_dir(cache: Path, name: str, *deps) -> Path:
    """The folder of stage ``name`` with dependencies ``deps`` in ``cache``."""
    return Path(cache) / f"{name}-{config_hash(*deps)}"


def lock_stage(d: Path):
    """Wait for and take the lock of stage folder ``d`` (the file ``<d>.lock`` beside it): one writer
    a stage across the processes sharing a cache. Returns the handle ``unlock_stage`` takes; the lock
    also goes when the process ends."""
    d.parent.mkdir(parents=True, exist_ok=True)
    f = open(d.with_name(d.name + ".lock"), "a")  # noqa: SIM115  (held open while the stage is built)
    if fcntl is not None:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another run is building it: say so, then wait
            print(f"waiting for another run that is building the cache stage {d.name}", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
    return f


def unlock_stage(handle) -> None:
    """Release a lock ``lock_stage`` took (closing the file drops the ``flock``)."""
    handle.close()


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
