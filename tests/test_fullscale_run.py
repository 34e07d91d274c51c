"""``python -m fullscale.run`` end to end, in subprocesses but for one test: a tiny run writes results,
figures and verdicts; bad arguments give one line and exit 2; a run killed at any
point and resumed reproduces the uninterrupted run's results.json (CPU)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "fullscale-tiny.json"  # a run of seconds: tiny models, a few steps


def run(*args, env=None, cwd=ROOT):
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "fullscale.run", *map(str, args)], capture_output=True, text=True, env=e, cwd=cwd)


@pytest.fixture(scope="module")
def tiny_config():
    return TINY


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_config):
    out = tmp_path_factory.mktemp("runs") / "full"
    r = run("--config", tiny_config, "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    return out, r


def test_tiny_run_writes_results_figures_and_verdicts(uninterrupted):
    out, r = uninterrupted
    res = json.loads((out / "results.json").read_text())
    assert res["backend"] == "fullscale" and res["study"] == "coverage"
    assert set(res["arms"]) == {"online", "offline", "replay-ordered", "window-4", "window-32", "tandem"}
    assert len(res["arms"]["offline"]) == 2  # the pooled sweep
    series = res["arms"]["online"][0]["series"]
    for key in ("step", "kl", "win_rate", "acc_golden", "acc_self", "acc_online_pairs", "proxy_acc_online_pairs", "chosen_logp_shift"):
        assert len(series[key]) == len(series["step"]), key
    assert series["step"][0] == 0 and series["kl"][0] == pytest.approx(0.0, abs=1e-6)
    # win rates on two halves of the evaluation prompts, whose mean is the full win rate (an even count here)
    for a, b, full in zip(series["win_rate_a"], series["win_rate_b"], series["win_rate"]):
        assert (a + b) / 2 == pytest.approx(full, abs=1e-6)
    assert "cross-fitted" in next(c for c in res["claims"] if c["id"] == 2)["evidence"]
    assert {c["id"] for c in res["claims"]} == {1, 2, 3, 4, 5, 6}
    assert all(c["verdict"] in ("supported", "not supported", "mixed", "inconclusive") for c in res["claims"])
    assert next(c for c in res["claims"] if c["id"] == 4)["verdict"] == "supported"  # ordered replay = online
    assert (out / "winrate_vs_kl.png").stat().st_size > 1000 and "claim  4" in r.stdout
    assert "![winrate_vs_kl.png](winrate_vs_kl.png)" in (out / "report.md").read_text()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["arm"] == "tandem"
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 4


def test_rlhf_refresh_and_ipo_md_arms_run_end_to_end(tmp_path, tiny_config):
    """The arms beyond the paper, through ``main`` (what the command line calls; in this process,
    one import of torch fewer) at the tiny config: RLOO on the proxy Bradley–Terry reward model
    (equivalence), refresh every k steps and IPO-MD's mixture sampler (refresh); the two
    studies share one stage cache. (No test runs ``--preset smoke`` at its own size:
    tests/test_docs.py runs its command line with the tiny config applied on top.)"""
    from fullscale import run as run_main

    cache = tmp_path / "cache"
    want = {"refresh": {"online", "offline", "refresh-4", "refresh-16", "refresh-64", "refresh-all", "ipo-md"},
            "equivalence": {"rlhf", "online-dpo", "offline-dpo"}}
    for study, arms in want.items():
        out = tmp_path / study
        assert run_main.main(["--config", str(tiny_config), "--study", study, "--cache", str(cache), "--out", str(out)]) == 0
        res = json.loads((out / "results.json").read_text())
        assert set(res["arms"]) == arms
        for arm in arms:
            series = res["arms"][arm][0]["series"]
            assert series["step"][-1] == res["arms"][arm][0]["config"]["steps"] and all(k >= 0 for k in series["kl"]), arm
            assert series["kl"][-1] > 0, f"{arm} never moved from SFT"
        assert {c["verdict"] for c in res["claims"]} <= {"supported", "not supported", "mixed", "inconclusive", "not tested"}


# Kill points: ("step", N) dies right after the N-th optimiser step of any stage, ("save", N) right
# after the N-th saved state of a policy run; the tiny run has ~60 steps and ~40 saves. One
# sequence, each resumed process counting from 0 again: ("step", 13), ("step", 19), ("step", 30):
# inside the golden PM (a stage that keeps no state, like SFT: it trains again), then inside the
# first offline run, then further on in the arms. ("save", 1),
# ("save", 3): right after the golden run's step-0 save, then (resumed: the golden run saves at
# steps 2 and 4) right after the online arm's step-0 save, its step 0 evaluated and logged but
# not trained: the window where a resume once evaluated step 0 twice. (A seeded random sequence
# of kills ran here too until the suite's time went to the distributed tests.)
KILLS = [[("step", 13), ("step", 19), ("step", 30)], [("save", 1), ("save", 3)]]


@pytest.mark.parametrize("kills", KILLS, ids=lambda k: "-".join(f"{e}{n}" for e, n in k))
def test_killed_and_resumed_run_reproduces_results(tmp_path, tiny_config, uninterrupted, kills):
    out = tmp_path / "run"
    env_name = {"step": "FULLSCALE_FAULT_AFTER_STEPS", "save": "FULLSCALE_FAULT_AFTER_SAVES"}
    finished = False
    for i, (event, n) in enumerate(kills):
        r = run("--config", tiny_config, "--out", out, *(["--resume"] if i else []), env={env_name[event]: str(n)})
        finished = r.returncode == 0  # a kill point past the end of what is left: the run finishes
        if finished:
            break
        assert r.returncode == 75, r.stderr[-2000:]
        assert not (out / "results.json").exists()
        if event == "save" and i == 0:  # a run state damaged outside the program: one line, the file, the ways on
            state = next((out / "cache").glob("run-*/state.pt"))
            state.write_bytes(state.read_bytes()[:100])
            r = run("--config", tiny_config, "--out", out, "--resume")
            assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
            assert f"{state} is damaged" in r.stderr and f"delete {state.parent}" in r.stderr and "new --out" in r.stderr
            shutil.rmtree(state.parent)  # as it says: that stage is built again from its start
    if not finished:
        r = run("--config", tiny_config, "--out", out, "--resume")
        assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "results.json").read_text()) == json.loads((uninterrupted[0] / "results.json").read_text())
    key = lambda line: tuple(json.loads(line)[k] for k in ("arm", "seed", "lr", "beta", "step"))  # noqa: E731
    logged = [key(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted(logged) == sorted(key(line) for line in (uninterrupted[0] / "metrics.jsonl").read_text().splitlines())


def test_the_smoke_preset_twice_side_by_side_on_one_cache_gives_two_folders_and_the_solo_results(tmp_path, uninterrupted):
    """The documented command as printed (no --out; on the tiny config, to keep the suite fast),
    twice at once from one folder and sharing one --cache (the documented way to reuse stages):
    each run gets a folder of its own even when both start in the same second; each stage is built
    once, by whichever run takes its lock first, the other waiting and reusing it (no run removes
    the other's temporary files); and, one thread each, both write the results.json of the run made
    alone (its config never records --out or --cache). tests/test_docs.py runs the smoke preset's
    documented commands too."""
    e = {**os.environ, "OMP_NUM_THREADS": "1"}
    tiny = str(Path(__file__).resolve().parent / "fixtures" / "fullscale-tiny.json")
    cmd = [sys.executable, "-m", "fullscale.run", "--preset", "smoke", "--config", tiny, "--cache", str(tmp_path / "cache")]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # side by side
    for p in procs:
        _, err = p.communicate()
        assert p.returncode == 0, err[-2000:]
    runs = sorted((tmp_path / "runs" / "fullscale").iterdir())
    assert len(runs) == 2 and all(d.name.startswith("coverage-smoke-") for d in runs)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in runs)
    solo = json.loads((uninterrupted[0] / "results.json").read_text())
    assert ra == rb == solo and ra["config"]["preset"] == "smoke" and "out" not in ra["config"]
    assert not list((tmp_path / "cache").glob("*/*.tmp"))


@pytest.mark.parametrize("args, message", [
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--train.beta", "-1"], "--train.beta must be a number > 0"),
    (["--study", "nonsense"], "invalid choice 'nonsense' for argument '--hypothesis'"),  # the alias
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, message):
    """In a subprocess, as a user meets them: one case of each kind (a preset, a range, the CLI
    parser); tests/test_fullscale_checks.py has every case in-process."""
    r = run(*args, "--out", tmp_path / "x")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()


def test_existing_run_is_never_overwritten_and_resume_checks_the_config(tmp_path, uninterrupted, tiny_config):
    before = (uninterrupted[0] / "results.json").read_text()
    for extra in ([], ["--resume"]):  # a finished run: one line that says what works, either way
        r = run("--config", tiny_config, "--out", uninterrupted[0], *extra)
        assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
        assert "holds a finished run" in r.stderr and "leave out --out" in r.stderr
    assert (uninterrupted[0] / "results.json").read_text() == before
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"seeds": 7}))
    r = run("--config", tiny_config, "--out", out, "--resume")
    assert r.returncode == 2 and "different config" in r.stderr


def test_bad_config_file_key(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"train": {"stepz": 3}}))
    r = run("--config", p, "--out", tmp_path / "o")
    assert r.returncode == 2 and "unknown key 'train.stepz'" in r.stderr and str(p) in r.stderr


def test_help_is_generated_from_the_config():
    r = run("--help")
    assert r.returncode == 0 and "--train.steps" in r.stdout and "offline runs" in r.stdout
    assert "python -m fullscale.run --preset smoke" in r.stdout  # the examples
    assert "{smoke,small,paper}" in r.stdout and "{coverage,quality," in r.stdout  # the choices


def test_resume_needs_the_folder_it_continues(tmp_path):
    r = run("--resume")
    assert r.returncode == 2 and "--resume continues the run in --out DIR" in r.stderr


@pytest.mark.parametrize("init", ["sft", "scratch"])
def test_golden_pm_starts_from_the_sft_policy_when_asked(tmp_path, init):
    """models.golden_pm_init = "sft": untrained (pm_epochs 0), the golden PM's transformer is π_sft's
    weight for weight, under a new scalar head; "scratch" builds it afresh (weights differ)."""
    from dataclasses import replace

    from fullscale.config import RunConfig, apply_file
    from fullscale.world import World

    base = apply_file(RunConfig(), TINY)
    cfg = replace(base, out=tmp_path, device="cpu", models=replace(base.models, golden_pm_init=init),
                  train=replace(base.train, pm_epochs=0))
    p = World(cfg)
    pm, sft = p.golden_pm.transformer.state_dict(), p.sft[1.0].transformer.state_dict()
    assert pm.keys() == sft.keys()
    same = all(torch.equal(pm[k], sft[k]) for k in pm)
    assert same == (init == "sft")


def test_resume_restores_the_recorded_thread_count(tmp_path):
    """--threads 0 (torch's choice) on --resume takes the count the run recorded in config.json."""
    from dataclasses import replace

    from fullscale.config import RunConfig
    from fullscale.run import _threads

    before = torch.get_num_threads()
    try:
        (tmp_path / "config.json").write_text(json.dumps({"threads": 1}))
        assert _threads(replace(RunConfig(), out=tmp_path, resume=True)).threads == 1 and torch.get_num_threads() == 1
        assert _threads(replace(RunConfig(), out=tmp_path, resume=True, threads=2)).threads == 2  # a flag wins
        assert _threads(replace(RunConfig(), out=tmp_path / "new")).threads == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
