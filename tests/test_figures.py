"""The committed figures are reproducible: regenerating their data with the code
gives the same JSON (we compare the data behind a figure, not its pixels), and
every figure the docs show exists beside the data it is drawn from."""

import json
import re
from pathlib import Path

import pytest

from toysim.figures import JOBS

ROOT = Path(__file__).resolve().parents[1]
FIG = ROOT / "docs" / "figures"


def _data(path: Path) -> dict:
    d = json.loads(path.read_text())
    d.pop("command_config", None)  # the command line (its --out) differs; the data must not
    return d


@pytest.mark.parametrize("preset, study", [("default", "coverage")])
def test_regenerated_study_data_equals_the_committed(tmp_path, preset, study):
    """The same command as toysim.figures runs (its seeds and preset), for the study the
    README's figure shows; one study keeps the suite fast, and the other studies and
    the arena preset run the same code path (regenerating all takes 3 minutes)."""
    from toysim import gap

    name, _, args = next(j for j in JOBS if j[0] == f"toysim-{preset}")
    args = [a if a != "all" else study for a in args]
    assert gap.main(args + ["--out", str(tmp_path)]) == 0
    assert _data(tmp_path / study / "results.json") == _data(FIG / name / study / "results.json")


def test_every_figure_the_docs_show_exists_with_its_data():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    shown = []
    for page in pages:
        for link in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", page.read_text()):
            path = (page.parent / link).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} shows {link}, which does not exist"
            shown.append(path)
            if FIG in path.parents:
                assert (path.parent / "results.json").exists() or (path.parent / "sweep.json").exists(), path
    assert len(shown) >= 2


def test_study_pages_show_the_committed_results():
    """Each docs/studies page's results block is what the committed data gives
    (``python -m toysim.figures`` rewrites it; a stale page fails here)."""
    from toysim.figures import END, START, study_section

    for page in sorted((ROOT / "docs" / "studies").glob("*.md")):
        text = page.read_text()
        assert START in text and END in text, f"{page.name} has no results block"
        block = text[text.index(START): text.index(END) + len(END)]
        assert block == study_section(page.stem, FIG, page.parent), f"{page.name} is stale: run python -m toysim.figures"
