"""fullscale.store: a stage's lock makes a second process wait until the first releases it, a
damaged file names itself and the ways on, and a stage's folder is named by the hash of its
dependencies (worked by hand)."""

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fullscale.store import DamagedFile, atomic_save, lock_stage, safe_load, stage_dir, unlock_stage

ROOT = Path(__file__).resolve().parents[1]

_WAITER = """
import sys, time
from pathlib import Path
from fullscale.store import lock_stage
d = Path(sys.argv[1])
print("trying", flush=True)
h = lock_stage(d)
(d.parent / "got").write_text(str(time.time()))
"""


def test_a_second_process_waits_for_the_stage_lock_and_says_so(tmp_path):
    d = tmp_path / "cache" / "sft@1-abc"
    held = lock_stage(d)
    p = subprocess.Popen([sys.executable, "-c", _WAITER, str(d)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "trying"
    time.sleep(1.0)  # the waiter has had time to take a free lock
    assert p.poll() is None and not (tmp_path / "cache" / "got").exists()  # it waits
    released = time.time()
    unlock_stage(held)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0 and float((tmp_path / "cache" / "got").read_text()) >= released
    assert "waiting for another run that is building the cache stage sft@1-abc" in err


def test_a_damaged_file_names_itself_and_the_two_ways_on(tmp_path):
    f = tmp_path / "run-x-123" / "state.pt"
    f.parent.mkdir()
    atomic_save({"w": torch.ones(3)}, f)
    assert torch.equal(safe_load(f)["w"], torch.ones(3)) and not list(f.parent.glob("*.tmp"))
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(DamagedFile) as e:
        safe_load(f)
    msg = str(e.value)
    assert msg.startswith(f"{f} is damaged") and f"delete {f.parent}" in msg and "new --out" in msg and "\n" not in msg
    with pytest.raises(FileNotFoundError):  # a missing file is not a damaged one
        safe_load(tmp_path / "none.pt")


def test_a_stage_folder_is_named_by_the_hash_of_its_dependencies():
    deps = ({"b": 1, "a": [2, 3]}, "x", None)
    digest = hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()[:12]  # by hand
    assert stage_dir(Path("c"), "sft@1", *deps) == Path("c") / f"sft@1-{digest}"
    assert stage_dir(Path("c"), "sft@1", *deps) != stage_dir(Path("c"), "sft@1", {"b": 2, "a": [2, 3]}, "x", None)
