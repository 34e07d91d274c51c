"""toysim.gap end to end, in subprocesses: every study at --quick, determinism,
and one-line errors with exit code 2 for bad arguments."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.claims import CLAIMS
from shared.studies import STUDIES

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "toysim.gap", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def quick_all(tmp_path_factory):
    out = tmp_path_factory.mktemp("gap") / "run"
    p = _run("--hypothesis", "all", "--quick", "--seeds", "2", "--out", str(out))
    assert p.returncode == 0, p.stderr
    return out, p.stdout


def test_every_study_writes_results_figures_and_verdicts(quick_all):
    out, stdout = quick_all
    seen = set()
    for name, study in STUDIES.items():
        res = json.loads((out / name / "results.json").read_text())
        assert res["study"] == name and res["seeds"] == 2
        assert [c["id"] for c in res["claims"]] == list(study.claims)
        for c in res["claims"]:
            assert c["verdict"] in {"supported", "not supported", "mixed", "inconclusive"}
            assert c["evidence"]
            seen.add(c["id"])
        for arm, runs in res["arms"].items():
            for run in runs:
                s = run["series"]
                assert {"step", "kl", "win_rate", "acc_golden", "chosen_logp_shift"} <= set(s)
                assert len(s["step"]) == len(s["kl"]) == len(s["win_rate"]) > 2
                assert s["step"][0] == 0 and s["kl"][0] == pytest.approx(0.0, abs=1e-6)  # float32 tables
        if res["arms"]:
            assert (out / name / "winrate_vs_kl.png").stat().st_size > 1000
        assert f"== {name}" in stdout
    assert seen == set(CLAIMS)  # every claim of the README's table gets a verdict somewhere
    assert (out / "classification" / "classification.png").exists()
    assert (out / "scale" / "scaling.png").exists()
    assert (out / "coverage" / "gap_vs_kl.png").stat().st_size > 1000  # claim 2's curve
    report = (out / "report.md").read_text()
    assert all(f"## {n}" in report for n in STUDIES)


def test_same_seed_gives_identical_results(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        assert _run("--hypothesis", "coverage", "--quick", "--seeds", "2", "--out", str(d)).returncode == 0
    ra, rb = (json.loads((d / "coverage" / "results.json").read_text()) for d in (a, b))
    for r in (ra, rb):
        r["command_config"].pop("out")
    assert ra == rb


def test_population_mode_runs_online_and_offline(tmp_path):
    p = _run("--hypothesis", "classification", "--quick", "--seeds", "1", "--mode", "population", "--out", str(tmp_path / "p"))
    assert p.returncode == 0, p.stderr
    res = json.loads((tmp_path / "p" / "classification" / "results.json").read_text())
    assert set(res["arms"]) == {"online", "offline"}


@pytest.mark.parametrize("args, message", [
    (["--hypothesis", "nonsense"], "invalid choice 'nonsense' for argument '--hypothesis'"),
    (["--beta", "0"], "--beta must be > 0"),
    (["--beta", "-1"], "--beta must be > 0"),
    (["--beta", "inf"], "--beta must be > 0"),
    (["--lr", "1e300"], "--lr must be > 0"),
    (["--seeds", "0"], "--seeds must be from 1 to 100"),
    (["--seeds", "1000000000"], "--seeds must be from 1 to 100 (all seeds train at once"),
    (["--preset", "nope"], "invalid choice 'nope' for argument '--preset'"),
    (["--out", "/proc/forbidden"], "cannot write"),
    # world knobs: type and range, then the world's size, all before a folder or a table is made
    (["--world", "proxy_features=0"], "--world proxy_features: must be from 1 to 4,096, got 0"),
    (["--world", "golden_pairs=1000000000000"], "--world golden_pairs: must be from 1 to 10,000,000, got 1,000,000,000,000"),
    (["--world", "policy_features=1000000000"], "--world policy_features: must be from 1 to 4,096"),
    (["--world", "label_noise=1.5"], "--world label_noise: must be from 0 to below 0.5"),
    (["--world", "vocab=0"], "--world vocab: must be from 1 to 64, got 0"),
    (["--world", "max_len=0"], "--world max_len: must be from 1 to 16, got 0"),
    (["--world", "golden_pairs=2.5"], "--world golden_pairs: must be a whole number, got 2.5"),
    (["--world", "sft_temp=nan"], "--world sft_temp: must be a finite number"),
    (["--preset", "paper-protocol-v1", "--world", "vocab=1000"], "--world vocab: must be from 1 to 64, got 1,000"),
    (["--preset", "paper-protocol-v1", "--world", "max_len=16"], "the world has 5,726,623,061 responses a prompt (vocab 4, max_len 16)"),
    (["--preset", "paper-protocol-v1", "--world", "max_len=5", "--seeds", "100"], "the world's exact tables need about 601.4 GiB"),
])
def test_bad_arguments_exit_2_without_traceback(args, message, tmp_path, capsys, monkeypatch):
    """In process, through main (what python -m calls); the first two also in a subprocess, as a
    user meets them (a process of its own costs 2.5 s, mostly importing). No run folder is made
    (none under runs/ either) and no world is built."""
    from toysim import gap, study

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(study, "make_world", lambda cfg: pytest.fail("a world was built"))
    if "--out" not in args:
        args = args + ["--out", str(tmp_path / "o")]
    assert gap.main(list(args)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() and not (tmp_path / "runs").exists()
    if args[0] in ("--hypothesis", "--beta") and args[1] in ("nonsense", "0"):
        p = _run(*args)
        assert p.returncode == 2 and "Traceback" not in p.stderr
        assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_never_overwrites_an_earlier_run(quick_all):
    out, _ = quick_all
    before = (out / "coverage" / "results.json").read_text()
    p = _run("--hypothesis", "coverage", "--quick", "--seeds", "2", "--out", str(out))
    assert p.returncode == 2 and "exists" in p.stderr
    assert (out / "coverage" / "results.json").read_text() == before


def test_help_explains_the_options():
    p = _run("--help")
    assert p.returncode == 0
    for word in ("--hypothesis", "--seeds", "--preset", "--out", "--quick", "coverage"):
        assert word in p.stdout


def test_the_printed_config_is_the_one_in_effect(tmp_path):
    """The resolved config shows the β and learning rate actually used, not only the flags (null by default)."""
    p = _run("--hypothesis", "theory", "--quick", "--seeds", "1", "--beta", "0.3", "--out", str(tmp_path / "t"))
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("resolved config: "))
    cfg = json.loads(line.removeprefix("resolved config: "))
    assert cfg["train"]["beta"] == 0.3 and cfg["train"]["lr"] == 0.02 and cfg["train"]["steps"] == 80  # --quick's steps


def test_the_documented_command_runs_twice_into_two_folders(tmp_path):
    """``python -m toysim.gap --hypothesis contrastive`` as printed, twice in a row (here at
    --quick): both succeed, each in a new runs/toysim/<hypothesis>-<date-time>; --study is the alias."""
    for flag in ("--hypothesis", "--study"):
        p = _run(flag, "contrastive", "--quick", "--seeds", "1", cwd=tmp_path)
        assert p.returncode == 0, p.stderr
    runs = sorted((tmp_path / "runs" / "toysim").iterdir())
    assert len(runs) == 2 and all(d.name.startswith("contrastive-") for d in runs)
    assert all((d / "contrastive" / "results.json").exists() and (d / "report.md").exists() for d in runs)


def test_quick_verdicts_are_marked_as_plumbing_checks(quick_all):
    out, stdout = quick_all
    assert stdout.count("note: preset default-quick is sized to check that every stage runs") >= len(STUDIES)  # by each verdict list
    report = (out / "report.md").read_text()
    assert report.count("> preset default-quick is sized to check") == len(STUDIES)


def test_help_lists_the_choices():
    p = _run("--help")
    assert "{default,arena,paper-protocol,paper-protocol-v1}" in p.stdout and "{sgd,population}" in p.stdout and "{coverage,quality," in p.stdout
    assert "python -m toysim.gap --hypothesis contrastive" in p.stdout  # the examples
    p = subprocess.run([sys.executable, "-m", "toysim.sweep", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert "{label_noise,golden_pairs," in p.stdout and "{default,arena,paper-protocol,paper-protocol-v1}" in p.stdout


def test_a_run_folder_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "runs").write_text("a file where the run folders would go")
    p = _run("--hypothesis", "theory", "--quick", "--seeds", "1", cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.startswith("error: cannot make a run folder under runs/toysim") and "Traceback" not in p.stderr


def test_world_overrides_reach_the_run_and_bad_ones_are_one_line(tmp_path, capsys):
    """--world KNOB=VALUE changes the preset's world (the results say so); a bad knob, value or
    world is refused in one line."""
    import json

    from toysim import gap

    for args, msg in ((["--world", "nope=3"], "--world takes KNOB=VALUE"), (["--world", "label_noise=x"], "is not a number"),
                      (["--world", "prompts=0", "--quick", "--out", str(tmp_path / "bad")], "--world prompts: must be from 1")):
        assert gap.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and "\n" not in err, err
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "ok"
    assert gap.main(["--hypothesis", "quality", "--quick", "--seeds", "1", "--world", "proxy_features=4", "label_noise=0", "--out", str(out)]) == 0
    world = json.loads((out / "quality" / "results.json").read_text())["config"]["world"]
    assert world["proxy_features"] == 4 and world["label_noise"] == 0.0
