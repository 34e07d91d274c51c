"""shared.report: report.md names what a run was made of, signs its table as the claims read,
and marks plumbing checks; ``redraw`` rebuilds a finished run's figures and report."""

import json
import re
import shutil
from pathlib import Path

from shared import report

ROOT = Path(__file__).resolve().parents[1]
FS_SMALL = ROOT / "docs" / "results" / "fullscale-small"


def test_plumbing_note_marks_smoke_and_quick_presets_only():
    assert report.plumbing_note({"preset": "smoke"}) and report.plumbing_note({"preset": "arena-quick"})
    assert report.plumbing_note({"preset": "default"}) is None and report.plumbing_note({"preset": "small"}) is None


def test_redraw_names_data_models_and_seeds_and_signs_deltas_like_the_claims(tmp_path):
    run = tmp_path / "fs"
    run.mkdir()
    shutil.copy(FS_SMALL / "results.json", run / "results.json")
    text = report.redraw(run).read_text()
    heading = next(line for line in text.splitlines() if line.startswith("## coverage"))
    assert "preset `small`" in heading and "3 seeds" in heading and "data: synthetic" in heading
    assert "policy gpt2 (2 layers × width 64, from scratch)" in heading and "proxy_pm gpt2 (1 layer × width 32, from scratch)" in heading
    assert "mode sgd" not in heading  # fullscale has no population mode
    assert {"winrate_vs_kl.png", "gap_vs_kl.png"} <= {p.name for p in run.glob("*.png")}
    # claim 2 reads online − offline; the table's offline row must carry the same number and sign
    res = json.loads((run / "results.json").read_text())
    claim2 = next(c for c in res["claims"] if c["id"] == 2)["evidence"]
    number = re.search(r"matched KL: ([+-]\d\.\d{3})", claim2).group(1)
    offline_row = next(line for line in text.splitlines() if line.startswith("| offline |"))
    assert offline_row.split("|")[5].strip().startswith(number)
    assert "plumbing" not in text


def test_one_seed_is_singular_and_a_quick_run_says_it_is_a_plumbing_check(tmp_path):
    run = tmp_path / "fs"
    run.mkdir()
    res = json.loads((FS_SMALL / "results.json").read_text())
    res["seeds"], res["preset"] = 1, "smoke"
    (run / "results.json").write_text(json.dumps(res))
    text = report.redraw(run).read_text()
    assert "1 seed;" in text and "> preset smoke is sized to check that every stage runs" in text


def test_redraw_of_a_folder_without_results_is_one_line_and_exit_2(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_every_table_row_of_a_report_has_as_many_cells_as_its_header(tmp_path):
    """Evidence with a ``|`` in it (claim 4: ``max |win-rate difference|``; claims 10 and 14)
    is escaped, so a Markdown parser sees every cell: each row splits, on unescaped ``|``, into
    as many cells as its table's header."""
    run = tmp_path / "toy"
    shutil.copytree(ROOT / "docs" / "figures" / "toysim-default", run, ignore=shutil.ignore_patterns("*.png", "report.md"))
    text = report.redraw(run).read_text()
    assert "\\|win-rate difference\\|" in text
    cells = lambda line: len(re.split(r"(?<!\\)\|", line.strip())) - 2  # noqa: E731
    width = None
    for line in text.splitlines():
        if not line.startswith("|"):
            width = None
            continue
        if width is None:
            width = cells(line)  # a header
        assert cells(line) == width, line
