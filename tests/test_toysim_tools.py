"""Smoke tests of the other toysim entry points, in subprocesses: sweep and bench."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(module, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_sweep_writes_a_phase_diagram(tmp_path):
    out = tmp_path / "sweep"
    p = _run("toysim.sweep", "--quick", "--seeds", "1", "--x", "label_noise", "--x-values", "0", "0.3",
             "--y", "policy_features", "--y-values", "8", "--out", str(out))
    assert p.returncode == 0, p.stderr
    result = json.loads((out / "sweep.json").read_text())
    assert len(result["cells"]) == 2
    for cell in result["cells"]:
        assert {"online_minus_offline_matched_kl", "tandem_minus_offline_matched_kl", "online_minus_offline_peak"} <= set(cell)
        assert cell["policy_features"] == 8
    assert (out / "phase.png").stat().st_size > 1000


def test_sweep_rejects_unknown_knob_and_existing_out(tmp_path):
    p = _run("toysim.sweep", "--x", "nonsense", "--out", str(tmp_path / "s"))
    assert p.returncode == 2 and "invalid choice 'nonsense' for argument '--x'" in p.stderr and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0
    p = _run("toysim.sweep", "--out", str(tmp_path))
    assert p.returncode == 2 and "exists" in p.stderr


def test_bench_prints_both_rates_and_their_ratio():
    p = _run("toysim.bench", "--prompts", "4", "--responses", "8", "--runs", "4", "--steps", "5", "--repeats", "1", "--loop-runs", "1")
    assert p.returncode == 0, p.stderr
    lines = [line for line in p.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 2 and all("run-steps/s" in line and "ratio:" in line for line in lines)


def test_figures_quick_never_writes_into_docs(tmp_path, monkeypatch, capsys):
    """--quick runs are checks, not the committed figures: pointed at docs/ they are refused
    with one line and nothing there changes; without --out they go to runs/figures-quick."""
    from pathlib import Path

    from toysim import figures

    root = Path(__file__).resolve().parents[1]
    committed = root / "docs" / "figures" / "toysim-default" / "coverage" / "results.json"
    before = committed.read_bytes(), committed.stat().st_mtime_ns
    for out in (root / "docs" / "figures", root / "docs" / "elsewhere"):
        assert figures.main(["--quick", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --quick figures are not the committed ones") and "\n" not in err
    assert (committed.read_bytes(), committed.stat().st_mtime_ns) == before
    assert not (root / "docs" / "elsewhere").exists()
    monkeypatch.setattr(figures, "JOBS", [j for j in figures.JOBS if j[0] == "sweep"])  # one quick job keeps it fast
    monkeypatch.chdir(tmp_path)
    assert figures.main(["--quick"]) == 0
    assert (tmp_path / "runs" / "figures-quick" / "sweep" / "sweep.json").exists()


def _crash_a_regeneration(tmp_path, monkeypatch):
    """Run toysim.figures into ``tmp_path`` with a toysim.gap that makes its folder and raises."""
    import toysim.figures
    import toysim.gap

    def crash(argv):
        (tmp_path / "toysim-default").mkdir()
        raise RuntimeError("a bug")

    monkeypatch.setattr(toysim.gap, "main", crash)
    with pytest.raises(RuntimeError):
        toysim.figures.main(["--out", str(tmp_path)])


def test_figures_put_the_earlier_results_back_when_a_run_crashes(tmp_path, monkeypatch):
    """A run that raises (a bug, Ctrl-C) must not leave the committed folder deleted."""
    earlier = tmp_path / "toysim-default"
    earlier.mkdir()
    (earlier / "results.json").write_text("{}")
    _crash_a_regeneration(tmp_path, monkeypatch)
    assert (earlier / "results.json").read_text() == "{}"
    assert not (tmp_path / ".toysim-default.old").exists()


def test_figures_recover_the_results_a_killed_regeneration_kept_aside(tmp_path, monkeypatch):
    """After a kill (no finally runs), OUT/.<name>.old holds the good results and OUT/<name> a
    partial run: the next regeneration starts from the kept ones instead of deleting them."""
    (tmp_path / ".toysim-default.old").mkdir()
    (tmp_path / ".toysim-default.old" / "results.json").write_text("good")
    (tmp_path / "toysim-default").mkdir()  # the partial run
    _crash_a_regeneration(tmp_path, monkeypatch)
    assert (tmp_path / "toysim-default" / "results.json").read_text() == "good"
