"""fullscale.dist: a global batch's shares, the per-example draws that make sampling independent
of the number of processes, and a run under ``torchrun`` with two processes (gloo, CPU) that
reproduces one process with the same global batch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fullscale.dist import SINGLE, Dist, row_generator

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "fullscale-tiny.json"


@pytest.mark.parametrize("n, world", [(32, 2), (7, 3), (2, 4), (1, 1)])
def test_the_shares_cover_the_global_batch_once_in_order(n, world):
    shares = [Dist(r, world, True).share(n) for r in range(world)]
    rows = [i for s in shares for i in range(*s.indices(n))]
    assert rows == list(range(n))
    sizes = [s.stop - s.start for s in shares]
    assert max(sizes) - min(sizes) <= 1


def test_the_global_mean_is_the_mean_once_ranks_average():
    """world · Σ(share) / n, averaged over the ranks (what DDP does to gradients), is the mean."""
    per = torch.randn(10, dtype=torch.float64)
    world = 3
    parts = [Dist(r, world, True).global_mean(per[Dist(r, world, True).share(10)], 10) for r in range(world)]
    assert torch.stack(parts).mean().item() == pytest.approx(per.mean().item(), rel=1e-12)
    assert SINGLE.global_mean(per, 10).item() == pytest.approx(per.mean().item(), rel=1e-12)


def test_a_rows_draws_depend_on_the_seed_and_its_index_only():
    a = torch.rand(5, generator=row_generator(11, 3, "cpu"))
    assert torch.equal(a, torch.rand(5, generator=row_generator(11, 3, "cpu")))
    assert not torch.equal(a, torch.rand(5, generator=row_generator(11, 4, "cpu")))
    assert not torch.equal(a, torch.rand(5, generator=row_generator(12, 3, "cpu")))


def test_sampling_a_share_gives_the_rows_of_the_whole_batch():
    """LMPolicy.sample under data parallelism: the rows a rank samples are those one process
    samples for the same global batch (each row has its own generator)."""
    from fullscale.lm import LMPolicy, Prompts, sample_responses
    from fullscale.models import ModelSpec, build_model

    ids = {"pad": 0, "bos": 1, "eos": 2, "sep": 3, "cls": 4}
    model = build_model(ModelSpec(width=16, layers=1, heads=2), 20, ids, seed=0)
    prompts = Prompts(torch.randint(5, 20, (6, 3), generator=torch.Generator().manual_seed(0)), torch.ones(6, 3, dtype=torch.bool))
    x = torch.tensor([0, 3, 5, 1, 2])

    def sample(dist):
        return LMPolicy(model, prompts, 4, 2, 0, dist=dist).sample(x, torch.Generator().manual_seed(9))

    whole = sample(Dist(0, 1, True))
    seed = int(torch.randint(1 << 62, (1,), generator=torch.Generator().manual_seed(9)))  # the batch's seed, as sample draws it
    for rank in range(2):  # what each of 2 ranks samples before the gather: its own rows, each with its own generator
        d = Dist(rank, 2, True)
        rows = range(*d.share(len(x)).indices(len(x)))
        mine = torch.cat([sample_responses(model, prompts, x[i:i + 1], 4, 2, 0, row_generator(seed, i, "cpu")) for i in rows])
        assert torch.equal(mine, whole[d.share(len(x))])
    assert not torch.equal(whole, LMPolicy(model, prompts, 4, 2, 0).sample(x, torch.Generator().manual_seed(9)))  # not one process's default draws


def _run(out: Path, *launcher, extra=(), env=None, timeout=600):
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full.pop("WORLD_SIZE", None)
    cmd = [*launcher, "-m", "fullscale.run", "--config", str(TINY), "--dist.strategy", "ddp", "--out", str(out), *extra]
    return subprocess.run(cmd, cwd=ROOT, env=full, capture_output=True, text=True, timeout=timeout)


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """One uninterrupted run of the tiny config under torchrun, 2 processes, DDP (gloo)."""
    out = tmp_path_factory.mktemp("dist") / "two"
    r = _run(out, *TORCHRUN)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def _results(out: Path) -> dict:
    r = json.loads((out / "results.json").read_text())
    r["extras"].pop("machine")
    for k in ("threads", "resume"):
        r["config"].pop(k, None)
    return r


@pytest.mark.slow  # about 25 s: `pytest -m "not slow"` skips it locally; CI runs it
def test_two_processes_under_torchrun_reproduce_one(tmp_path, two_processes):
    """torchrun --nproc_per_node 2 with DDP (gloo) against one process with the same global batch and
    the same per-example draws: every number of results.json within 1e-4 relative or 1e-6 absolute
    (float reductions run in another order), accuracies within 0.02 (they count the signs of margins
    near zero, as tests/test_figures.py explains), every verdict identical."""
    from results_diff import differences

    one = _run(tmp_path / "one", sys.executable)
    assert one.returncode == 0, one.stderr[-2000:]
    a, b = _results(tmp_path / "one"), _results(two_processes)
    assert [c["verdict"] for c in a["claims"]] == [c["verdict"] for c in b["claims"]]
    diff = differences(a, b, 1e-4, 1e-6, by_key={"acc_": (0.0, 0.02)})
    assert not diff, diff[:5]
    assert a["arms"]["online"][0]["series"]["win_rate"] != [] and (two_processes / "report.md").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.slow  # about 16 s
def test_a_rank_killed_mid_arm_stops_the_run_and_resume_reproduces_it(tmp_path, two_processes):
    """Rank 1 dies (os._exit, like a SIGKILL) after its 6th training step, inside the second arm:
    torchrun stops the other rank and exits non-zero (no hang: the subprocess timeout bounds it);
    --resume under torchrun then gives the uninterrupted run's results.json exactly."""
    from results_diff import differences

    killed = _run(tmp_path / "k", *TORCHRUN, env={"FULLSCALE_FAULT_AFTER_STEPS": "6", "FULLSCALE_FAULT_RANK": "1"}, timeout=300)
    assert killed.returncode != 0 and not (tmp_path / "k" / "results.json").exists()
    resumed = _run(tmp_path / "k", *TORCHRUN, extra=("--resume",))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not differences(_results(tmp_path / "k"), _results(two_processes))


def test_bad_distributed_settings_are_one_line(tmp_path, monkeypatch, capsys):
    from fullscale import run

    args = ["--config", str(TINY), "--out", str(tmp_path / "x")]
    assert run.main(args + ["--dist.strategy", "fsdp"]) == 2
    assert "fsdp is not implemented yet" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it
    assert run.main(args) == 2
    assert "add --dist.strategy ddp" in capsys.readouterr().err
    assert run.main(["--config", str(TINY), "--dist.strategy", "ddp"]) == 2
    assert "give --out DIR" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
