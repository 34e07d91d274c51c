"""toysim.judge, docs/judge.md's grid as code: a quick panel writes every cell with its statistics
and reading, --resume reruns nothing, a bad panel is one line; the reading rule on hand-made cells."""

import json

from toysim.judge import PANELS, main, reading


def test_the_reading_rule_of_r5():
    pos, neg, zero = [0.02, 0.01], [-0.02, 0.01], [0.0, 0.01]
    assert reading({"matched_kl_gap": pos, "budget_gap": zero}) == "positive"  # either statistic above 0
    assert reading({"matched_kl_gap": zero, "budget_gap": pos}) == "positive"
    assert reading({"matched_kl_gap": neg, "budget_gap": neg}) == "negative"  # both below
    assert reading({"matched_kl_gap": neg, "budget_gap": zero}) == "no gap detected"
    assert reading({"matched_kl_gap": [float("nan")] * 2, "budget_gap": zero}) == "no gap detected"


def test_a_quick_panel_writes_every_cell_and_resume_reruns_nothing(tmp_path, capsys):
    out = tmp_path / "j"
    args = ["--quick", "--seeds", "2", "--confirm-seeds", "0", "--panels", "Q3", "--out", str(out)]
    assert main(args) == 0
    result = json.loads((out / "judge.json").read_text())
    assert [c["settings"] for c in result["cells"]] == list(PANELS[3][2])
    for c in result["cells"]:
        assert c["reading"] == reading(c)
        assert set(c["claims"]) == {"2", "3", "8", "11", "12"}
        assert c["region_mass"] is not None  # the centre has a region token
        assert 0 <= c["region_mass"]["online"][0] <= 1
    assert (out / "judge.md").read_text().count("| Q3 |") == 3 and (out / "judge.png").exists()
    before = [c["seconds"] for c in result["cells"]]
    assert main(args[:-2] + ["--out", str(out), "--resume"]) == 0
    assert [c["seconds"] for c in json.loads((out / "judge.json").read_text())["cells"]] == before
    assert main(["--panels", "Q9", "--out", str(tmp_path / "k")]) == 2
    assert "unknown panel 'Q9'" in capsys.readouterr().err
    assert not (tmp_path / "k").exists()
