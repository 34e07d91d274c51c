"""The other toysim entry points: sweep and bench in subprocesses; the pre-registered search's
bookkeeping and rules; where the mass goes (groups against a plain loop, mass conserved)."""

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


@pytest.mark.parametrize("args, message", [
    (["--x", "label_noise", "--y", "label_noise"], "--x and --y must be two different knobs, got label_noise twice"),
    (["--x-values", "2.0"], "--x-values label_noise: must be from 0 to below 0.5"),
    (["--y-values", "1e8"], "--y-values policy_features: must be from 1 to 4,096"),
    (["--y", "golden_pairs", "--y-values", "12.5"], "--y-values golden_pairs: must be a whole number, got 12.5"),
    (["--preset", "paper-protocol-v1", "--x", "max_len", "--x-values", "3", "6", "--y", "vocab", "--y-values", "4"],
     "the cell max_len 6, vocab 4: the world has 5,461 responses a prompt"),
])
def test_sweep_checks_its_axes_and_every_cell_before_any_work(args, message, tmp_path, capsys, monkeypatch):
    """In process: one line, exit 2, no folder, no cell run."""
    from toysim import sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweep, "cell", lambda *a: pytest.fail("a cell ran"))
    assert sweep.main(args + ["--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s").exists() and not (tmp_path / "runs").exists()


def test_every_preset_world_is_within_the_bounds():
    from toysim.presets import MAX_SEEDS, PRESETS, quick
    from toysim.search import GRID, cell_preset
    from toysim.world import world_problem

    for p in PRESETS.values():
        for q in (p, quick(p)):
            assert world_problem(q.world, 9 * 10) is None, q.name  # ten seeds of the offline sweep: every confirmation's size
            problem = world_problem(q.world, 9 * MAX_SEEDS)  # the most seeds: fits, or is refused by the size bound in one line
            assert problem is None or ("GiB" in problem and "\n" not in problem), (q.name, problem)
    assert world_problem(PRESETS["default"].world, 9 * MAX_SEEDS) is None  # the atomic presets take every seed count
    for panel in GRID:  # every cell of the committed search, with its 10-seed confirmations
        for yv in panel.y_values:
            for xv in panel.x_values:
                assert world_problem(cell_preset({panel.x: xv, panel.y: yv}).world, 9 * 10) is None


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


def _fake_cell(stats):
    """A stand-in for toysim.sweep.cell: each cell's numbers from ``stats(settings, seeds)``."""
    calls = []

    def cell(preset, seeds):
        settings = {"label_noise": preset.world.label_noise, "golden_pairs": preset.world.golden_pairs}
        calls.append((settings, seeds))
        gapv, shift = stats(settings, seeds)
        return {"online_minus_offline_matched_kl": gapv, "online_minus_offline_peak": [0.1, 0.01],
                "tandem_minus_offline_matched_kl": [0.0, 0.01], "tandem_minus_offline_peak": [0.0, 0.01],
                "online_chosen_shift": [-1.0, 0.1], "offline_chosen_shift": [-1.0 - shift, 0.1],
                "online_minus_offline_chosen_shift": [shift, 0.05]}
    return cell, calls


def test_search_confirms_noise_free_positives_and_signatures_only(monkeypatch, tmp_path):
    """Rules 1-3 of docs/mechanism.md: a cell reads positive when its interval is above 0; every
    noise-free cell reading positive or showing claim 11's signature is rerun with more seeds, noisy
    ones are not; a resumed search reruns nothing it has."""
    import toysim.search as S

    panel = S.Panel("T", "test", "label_noise", (0.0, 0.3), "golden_pairs", (128, 512))
    monkeypatch.setattr(S, "GRID", (panel,))

    def stats(settings, seeds):
        positive = settings["golden_pairs"] == 128  # positive in both noise columns
        signature = settings["golden_pairs"] == 512 and settings["label_noise"] == 0.0
        return ([0.05, 0.01] if positive else [0.0, 0.02]), (0.5 if signature else -0.5)

    fake, calls = _fake_cell(stats)
    monkeypatch.setattr(S, "cell", fake)
    saved = []
    cfg = S.SearchConfig(seeds=3, confirm_seeds=10, panels=("T",))
    result = S.search(cfg, save=lambda r: saved.append(len(r["cells"]) + len(r["confirmations"])))
    assert [c["reading"] for c in result["cells"]] == ["positive", "positive", "no gap detected", "no gap detected"]
    assert [c["signature"] for c in result["cells"]] == [False, False, True, False]
    confirmed = [(c["settings"]["label_noise"], c["settings"]["golden_pairs"], c["seeds"]) for c in result["confirmations"]]
    assert confirmed == [(0.0, 128, 10), (0.0, 512, 10)]  # not the noisy positive (0.3, 128)
    assert saved == [1, 2, 3, 4, 5, 6]
    calls.clear()
    again = S.search(cfg, done=json.loads(json.dumps(result)))
    assert calls == [] and again["cells"] == json.loads(json.dumps(result))["cells"]
    md = S.table(result)
    assert md.count("| label_noise 0.0, golden_pairs 128 |") == 2 and "no gap detected" in md
    paths = S.plot_panels(result, tmp_path)
    assert [p.name for p in paths] == ["T.png"] and paths[0].stat().st_size > 1000


def test_search_rejects_bad_input_in_one_line(tmp_path, capsys):
    from toysim.search import main

    (tmp_path / "s").mkdir()
    for args, msg in ((["--panels", "P9"], "unknown panel 'P9'"), (["--resume"], "--resume needs the --out"),
                      (["--seeds", "1"], "--seeds must be from 2"), (["--confirm-seeds", "1"], "--confirm-seeds must be from 2"),
                      (["--out", str(tmp_path / "s")], "exists; choose a new --out"),
                      (["--out", str(tmp_path / "s"), "--resume"], "cannot resume")):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("region", [0, 1])
def test_displacement_groups_equal_a_plain_loop(region):
    from toysim.displacement import group_names, groups
    from toysim.world import WorldConfig, make_world

    w = make_world(WorldConfig(prompts=4, policy_kind="autoregressive", vocab=3, max_len=3, golden_pairs=40, region_tokens=region,
                               region_mass=0.2))
    got, GROUPS = groups(w), group_names(w)
    assert ("region" in GROUPS) == bool(region)
    resp = w.space.responses
    for x in range(4):
        pairs = [(int(a), int(b)) for xx, a, b in zip(w.d_golden.x, w.d_golden.y_w, w.d_golden.y_l) if int(xx) == x and int(a) != int(b)]
        chosen, rejected = {a for a, _ in pairs}, {b for _, b in pairs}
        labelled = {resp[n] for n in chosen | rejected}
        for n, y in enumerate(resp):
            if n in chosen and n in rejected:
                want = "both"
            elif n in chosen:
                want = "chosen"
            elif n in rejected:
                want = "rejected"
            elif region and 3 in y:  # the region token (index vocab): unlabelled responses with it
                want = "region"
            elif any(q == y[:-1] and y for q in labelled) or any(q[:-1] == y and q for q in labelled) \
                    or any(q and y and q[:-1] == y[:-1] for q in labelled):
                want = "neighbours"
            else:
                want = "far"
            assert GROUPS[int(got[x, n])] == want, (x, y)


def test_displacement_moves_no_mass_out_of_nowhere(tmp_path):
    """End to end on a small world: the groups' mass changes sum to 0 (π and π_sft are both
    distributions), offline is read at the checkpoint whose KL is nearest online's, and the figure is drawn."""
    from toysim.displacement import DisplacementConfig, displacement, plot

    result = displacement(DisplacementConfig(preset="paper-protocol-v1", seeds=2, quick=True))
    assert result["preset"] == "paper-protocol-v1-quick"
    for arm in ("online", "offline"):
        for per in result["per_seed"][arm]:
            assert abs(sum(per["mass"])) < 1e-5
    for m in result["matched"]:
        assert m["offline_step"] > 0 and m["offline_kl"] > 0
    plot(result, tmp_path / "d.png")
    assert (tmp_path / "d.png").stat().st_size > 1000
