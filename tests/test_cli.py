"""shared.cli: a bad argument is one line on stderr and exit code 2; --help is tyro's own."""

from dataclasses import dataclass
from typing import Literal

import pytest

from shared.cli import cli, one_line


@dataclass(frozen=True)
class _Config:
    """A command."""

    study: Literal["coverage", "theory"] = "coverage"
    """which study"""
    seeds: int = 5
    """seeds per arm"""


@pytest.mark.parametrize("argv, message", [
    (["--study", "nope"], "invalid choice 'nope' for argument '--study'. Expected one of ('coverage', 'theory')."),
    (["--seeds", "x"], "--seeds"),
    (["--bogus"], "--bogus"),
])
def test_bad_argument_is_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli(_Config, argv, prog="prog", description="A command.")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not set(err) & set("╭╮╰╯│")


def test_good_arguments_and_help_pass_through(capsys):
    assert cli(_Config, ["--seeds", "3"], prog="prog", description="A command.") == _Config(seeds=3)
    with pytest.raises(SystemExit) as e:
        cli(_Config, ["--help"], prog="prog", description="A command.")
    assert e.value.code == 0
    assert "seeds per arm" in capsys.readouterr().out


def test_one_line_reads_the_text_inside_the_box_up_to_its_rule():
    box = "╭─ Invalid choice ─╮\n│ first part       │\n│ second part.     │\n│ ──────────────── │\n│ For full help    │\n╰──────────────────╯\n"
    assert one_line(box) == "first part second part."


def test_the_choices_the_help_lists_are_the_real_ones():
    """toysim's preset choices are the keys of PRESETS; the sweep's knobs are WorldConfig's numeric fields."""
    import dataclasses
    import typing

    from toysim.world import WorldConfig
    from toysim.presets import PresetName
    from toysim.presets import PRESETS
    from toysim.world import KNOB_RANGES, KNOBS

    assert set(typing.get_args(PresetName)) == set(PRESETS)
    numeric = {f.name for f in dataclasses.fields(WorldConfig) if f.type in ("int", "float", int, float)} - {"seed"}
    assert set(KNOBS) == numeric == set(KNOB_RANGES)  # every knob has its range


def test_study_is_an_alias_of_hypothesis_only_where_hypothesis_exists():
    from shared.cli import _canonical

    assert _canonical(["--study", "x", "--study=y", "--studyx"]) == ["--hypothesis", "x", "--hypothesis=y", "--studyx"]
    assert cli(_Config, ["--study", "theory"], prog="prog", description="A command.").study == "theory"  # a real --study stays


def test_a_claimed_run_folder_is_never_shared(tmp_path, monkeypatch):
    """Runs started in the same second get <name>-<time>, then -2, then -3 (never -2-2)."""
    import time

    from shared.cli import claim_run_dir

    monkeypatch.setattr(time, "strftime", lambda fmt: "20261201-120000")
    made = [claim_run_dir(tmp_path / "runs", "coverage") for _ in range(3)]
    assert [d.name for d in made] == ["coverage-20261201-120000", "coverage-20261201-120000-2", "coverage-20261201-120000-3"]
    assert all(d.is_dir() for d in made)
