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
    """LMPolicy.sample under data parallelism: the rows a rank samples, in one batch, are those one
    process samples for the same global batch, and those of each row sampled alone with its own
    generator: a row's draws depend on its generator only."""
    from fullscale.decode import LMPolicy, sample_responses
    from fullscale.lm import Prompts
    from fullscale.models import ModelSpec, build_model

    ids = {"pad": 0, "bos": 1, "eos": 2, "sep": 3, "cls": 4}
    model = build_model(ModelSpec(width=16, layers=1, heads=2), 20, ids, seed=0)
    prompts = Prompts(torch.randint(5, 20, (6, 3), generator=torch.Generator().manual_seed(0)), torch.ones(6, 3, dtype=torch.bool))
    prompts.mask[1, 0] = prompts.mask[4, :2] = False  # left-padded prompts of other lengths
    x = torch.tensor([0, 3, 5, 1, 2, 4])

    def sample(dist):
        return LMPolicy(model, prompts, 6, 2, 0, dist=dist).sample(x, torch.Generator().manual_seed(9))

    whole = sample(Dist(0, 1, True))
    seed = int(torch.randint(1 << 62, (1,), generator=torch.Generator().manual_seed(9)))  # the batch's seed, as sample draws it
    alone = torch.cat([sample_responses(model, prompts, x[i:i + 1], 6, 2, 0, [row_generator(seed, i, "cpu")]) for i in range(len(x))])
    assert torch.equal(alone, whole)
    for rank in range(2):  # what each of 2 ranks samples before the gather: its own rows, in one batch
        d = Dist(rank, 2, True)
        s = d.share(len(x))
        mine = sample_responses(model, prompts, x[s], 6, 2, 0, [row_generator(seed, i, "cpu") for i in range(*s.indices(len(x)))])
        assert torch.equal(mine, whole[s])
    assert (whole == 2).any() and (whole == 0).any()  # EOS and the pads after it are in the test
    assert not torch.equal(whole, LMPolicy(model, prompts, 6, 2, 0).sample(x, torch.Generator().manual_seed(9)))  # not one process's default draws


def test_k_samples_in_one_batch_are_k_successive_samples():
    """LMPolicy.sample_k under data parallelism (what the online and RLHF samplers call): the k
    responses per prompt drawn in one batch are those of k successive ``sample`` calls, and the
    generator ends in the same state."""
    from fullscale.decode import LMPolicy
    from fullscale.lm import Prompts
    from fullscale.models import ModelSpec, build_model

    ids = {"pad": 0, "bos": 1, "eos": 2, "sep": 3, "cls": 4}
    model = build_model(ModelSpec(width=16, layers=1, heads=2), 20, ids, seed=0)
    prompts = Prompts(torch.randint(5, 20, (6, 3), generator=torch.Generator().manual_seed(0)), torch.ones(6, 3, dtype=torch.bool))
    x = torch.tensor([0, 3, 5, 1, 2])
    policy = LMPolicy(model, prompts, 5, 2, 0, dist=Dist(0, 1, True))
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    batched = policy.sample_k(x, g1, 3)
    one_by_one = [policy.sample(x, g2) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(batched, one_by_one)) and len(batched) == 3
    assert torch.equal(g1.get_state(), g2.get_state())
    assert not torch.equal(batched[0], batched[1])


def test_per_row_draws_are_each_rows_inverse_cdf():
    """``_draw`` with one generator per row against a plain loop over the cumulative sums, a token of
    probability 0 never drawn, and the frequencies of many draws within 5 standard errors of the
    probabilities."""
    from fullscale.decode import draw as _draw

    probs = torch.softmax(torch.randn(4, 7, generator=torch.Generator().manual_seed(1)), -1)
    probs[:, 0] = probs[2, 3] = 0.0
    gens = [torch.Generator().manual_seed(100 + i) for i in range(4)]
    twins = [torch.Generator().manual_seed(100 + i) for i in range(4)]
    counts = torch.zeros(4, 7)
    for _ in range(4000):
        tok = _draw(probs, gens)
        for i in range(4):
            u = (1.0 - torch.rand(1, generator=twins[i]).item()) * probs[i].sum().item()
            c, want = 0.0, 6
            for j in range(7):
                c += probs[i, j].item()
                if c >= u and probs[i, j] > 0:
                    want = j
                    break
            assert tok[i].item() == want
            counts[i, want] += 1
    assert counts[:, 0].sum() == 0 and counts[2, 3] == 0
    p = probs / probs.sum(-1, keepdim=True)
    assert ((counts / 4000 - p).abs() <= 5 * (p * (1 - p) / 4000).sqrt() + 1e-9).all()


def _run(out: Path, *launcher, strategy="ddp", extra=(), env=None, timeout=600):
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full.pop("WORLD_SIZE", None)
    cmd = [*launcher, "-m", "fullscale.run", "--config", str(TINY), "--dist.strategy", strategy, "--out", str(out), *extra]
    return subprocess.run(cmd, cwd=ROOT, env=full, capture_output=True, text=True, timeout=timeout)


def torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]


TORCHRUN = torchrun(2)
# two arms (online, offline): the cheapest study with a swept offline arm; minibatches of 3 and one KL
# prompt, so that some shares are empty (a minibatch's last row alone, the KL prompt): such a rank
# trains on row 0 with weight 0 and evaluates nothing, and its collectives still match
CLS = ("--hypothesis", "classification", "--train.batch-size", "3", "--eval.kl-prompts", "1")
LLAMA = (*CLS, "--models.policy.arch", "llama")


def _one(out: Path, *extra: str) -> Path:
    """One process with the per-example draws (--dist.strategy ddp, no launcher), run in this
    process through ``main`` (what ``python -m fullscale.run`` calls: one import of torch fewer)."""
    from fullscale import run

    assert "WORLD_SIZE" not in os.environ
    assert run.main(["--config", str(TINY), "--dist.strategy", "ddp", "--out", str(out), *extra]) == 0
    return out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The classification study of the tiny config in one process: the reference of the 2-process runs."""
    return _one(tmp_path_factory.mktemp("dist") / "one", *CLS)


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """Under torchrun, 2 processes (gloo), in one launch (tests/dist_runs.py): the classification study
    with DDP, with FSDP2 (the GPT-2 policy, tied embeddings, sharded), and with FSDP2 on a Llama policy."""
    d = tmp_path_factory.mktemp("dist")
    runs = {"ddp": ("ddp", CLS), "fsdp": ("fsdp", CLS), "llama": ("fsdp", LLAMA)}
    commands = [["--config", str(TINY), "--dist.strategy", strategy, "--out", str(d / name), *extra] for name, (strategy, extra) in runs.items()]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    r = subprocess.run([*TORCHRUN, str(ROOT / "tests" / "dist_runs.py"), json.dumps(commands)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return {name: d / name for name in runs}


@pytest.fixture(scope="module")
def two_processes(two_process_runs):
    return two_process_runs["ddp"]


@pytest.fixture(scope="module")
def two_sharded(two_process_runs):
    return two_process_runs["fsdp"]


def _results(out: Path) -> dict:
    r = json.loads((out / "results.json").read_text())
    r["extras"].pop("machine")
    for k in ("threads", "resume", "dist"):
        r["config"].pop(k, None)
    return r


def _same_study(a: Path, b: Path) -> None:
    """Every number of results.json (the metrics at every checkpoint, each run's loss at every step)
    within 1e-4 relative or 1e-6 absolute (float reductions run in
    another order), accuracies within 0.02 (they count the signs of margins near zero, as
    tests/test_figures.py explains), every verdict identical."""
    from results_diff import differences

    ra, rb = _results(a), _results(b)
    assert [c["verdict"] for c in ra["claims"]] == [c["verdict"] for c in rb["claims"]]
    diff = differences(ra, rb, 1e-4, 1e-6, by_key={"acc_": (0.0, 0.02)})
    assert not diff, diff[:5]
    assert ra["arms"]["online"][0]["series"]["win_rate"] != [] and (b / "report.md").exists()
    # the online arm's loss at every training step is among the numbers compared
    online = ra["arms"]["online"][0]
    assert len(online["loss"]) == online["config"]["steps"] == len(rb["arms"]["online"][0]["loss"])


def _same_evaluation_of_sft(a: Path, b: Path) -> None:
    """Sharded evaluation equals one process's on the same checkpoint: every arm's step-0 metrics are
    those of the SFT policy, the same weights in both runs, evaluated with the prompts and pairs split
    over the ranks in one and whole in the other; within 1e-5 relative or 1e-7 absolute (the
    forward passes run on other batch sizes), accuracies exactly."""
    ra, rb = _results(a), _results(b)
    n = 0
    for arm, runs in ra["arms"].items():
        for ru, rv in zip(runs, rb["arms"][arm]):
            for k, v in ru["series"].items():
                w = rv["series"][k][0]
                assert (v[0] == w) if k.startswith(("acc_", "win_rate")) else v[0] == pytest.approx(w, rel=1e-5, abs=1e-7), (arm, k)
                n += 1
    assert n >= 20


@pytest.mark.slow  # about 15 s: `pytest -m "not slow"` skips it locally; CI runs it
def test_two_processes_under_torchrun_reproduce_one(one_process, two_processes):
    """torchrun --nproc_per_node 2 with DDP (gloo) against one process with the same global batch and
    the same per-example draws."""
    _same_study(one_process, two_processes)
    _same_evaluation_of_sft(one_process, two_processes)


@pytest.mark.slow  # about 15 s
def test_fsdp_over_two_processes_reproduces_one(one_process, two_sharded):
    """FSDP2 over 2 processes (GPT-2 policy with tied input/output embeddings) against one process."""
    _same_study(one_process, two_sharded)
    _same_evaluation_of_sft(one_process, two_sharded)
    assert not list(two_sharded.glob("cache/run-*/state-dcp*"))  # a finished run leaves no state behind


@pytest.mark.slow  # about 25 s
def test_fsdp_on_a_llama_policy_reproduces_one(tmp_path, two_process_runs):
    """FSDP2 over 2 processes with a Llama policy (tied embeddings, RMSNorm, rotary positions)."""
    one = _one(tmp_path / "one", *LLAMA)
    assert _results(one)["config"]["models"]["policy"]["arch"] == "llama"
    _same_study(one, two_process_runs["llama"])
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.slow  # about 20 s
def test_a_rank_killed_mid_arm_stops_the_run_and_resume_reproduces_it(tmp_path, two_sharded):
    """FSDP over 2 processes. Rank 1 is sent SIGKILL (by itself) after its 65th optimiser step
    (29 of SFT, 14 and 8 of the two preference models, 4 of the golden policy, 4 of the online arm:
    the 6th of the offline arm, whose sharded state was saved with DCP at step 4): torchrun stops
    the other rank and exits non-zero (no hang: the subprocess timeout bounds it). --resume under
    torchrun with ONE process loads that state resharded to one rank and finishes; the
    results.json is the uninterrupted 2-process run's (1e-4 relative: the last steps reduce in
    another order)."""
    kill = {"FULLSCALE_FAULT_RANK": "1", "FULLSCALE_FAULT_SIGNAL": "KILL", "FULLSCALE_FAULT_AFTER_STEPS": "65"}
    killed = _run(tmp_path / "k", *TORCHRUN, strategy="fsdp", extra=CLS, env=kill, timeout=300)
    assert killed.returncode != 0 and not (tmp_path / "k" / "results.json").exists()
    assert "Signal 9 (SIGKILL)" in killed.stderr  # torchrun's report of rank 1
    assert [p.name for p in (tmp_path / "k").glob("cache/run-offline-*/state-dcp-*")] == ["state-dcp-4"]  # what it resumes from
    resumed = _run(tmp_path / "k", *torchrun(1), strategy="fsdp", extra=(*CLS, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _same_study(tmp_path / "k", two_sharded)


def test_bad_distributed_settings_are_one_line(tmp_path, monkeypatch, capsys):
    from fullscale import run

    args = ["--config", str(TINY), "--out", str(tmp_path / "x")]
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it
    assert run.main(args) == 2
    assert "add --dist.strategy ddp or fsdp" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "9")
    assert run.main(args + ["--dist.strategy", "fsdp"]) == 2
    assert "--train.batch-size 8 is smaller than the 9 processes" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run.main(["--config", str(TINY), "--dist.strategy", "ddp"]) == 2
    assert "give --out DIR" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_memory_table_in_the_docs_is_computed_from_the_parameter_counts():
    from fullscale.dist import memory_per_gpu, memory_table

    doc = (ROOT / "docs" / "fullscale.md").read_text()
    assert memory_table() in doc.split("<!-- memory:start -->")[1].split("<!-- memory:end -->")[0]
    p = 1_000_000_000  # against the byte counts written out: 16 + 4 (DDP buckets) + 4 (reference); (16 + 4)/N + 4 + 4 (gathered)
    assert memory_per_gpu(p, "ddp") == 24e9 and memory_per_gpu(p, "fsdp", 8) == 2.5e9 + 8e9 and memory_per_gpu(p, "world") == 16e9
    with pytest.raises(ValueError, match="ddp or fsdp"):
        memory_per_gpu(p, "zero3")


def test_an_empty_share_runs_row_0_with_weight_0_and_evaluates_nothing():
    """Fewer rows than ranks: the rank with no rows trains on row 0 with weight 0 (its forward and
    backward passes, and so its collectives, still run) and ``map_rows`` gives it no row."""
    assert Dist(2, 3, True).my_rows(2) == (slice(0, 1), 0.0)
    assert Dist(1, 3, True).my_rows(2) == (slice(1, 2), 1.0)

    class Local(Dist):  # rank 2 of 3 without a process group: the gather returns this rank's part
        def gather_rows(self, local, n):
            return local

    seen = []
    out = Local(2, 3, True).map_rows(lambda a: seen.append(len(a)) or a * 2.0, 2, torch.tensor([1.0, 2.0]))
    assert out.shape == (0,) and out.dtype == torch.float32 and seen == [1]
