"""Every command in a code block of docs/ and the README runs, at fast settings, so the
docs cannot drift from the code. Substitutions: --seeds 1 (2 where an interval is needed), --quick added (fullscale: the
tiny config of tests/fixtures/fullscale-tiny.json), --out in a
temporary folder, a 1×1 sweep grid; install lines (venv, pip) are skipped."""

import importlib
import re
import shlex
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
FAST = {"toysim.gap": ["--quick", "--seeds", "1"],
        "toysim.figures": ["--quick"],
        # one stage cache for every fullscale command: the world (data, SFT, PMs, golden policy) is built once
        "fullscale.run": ["--config", "tests/fixtures/fullscale-tiny.json", "--seeds", "1", "--cache", tempfile.mkdtemp(prefix="fs-doc-cache-")],
        "toysim.sweep": ["--quick", "--seeds", "1", "--x-values", "0.3", "--y-values", "8"],
        "toysim.search": ["--quick", "--seeds", "2", "--confirm-seeds", "0", "--panels", "P4"],
        "toysim.displacement": ["--quick", "--seeds", "2"],
        # later flags win: a tiny CPU step, whatever shape the page shows
        "fullscale.bench": ["--model", "tiny", "--vocab", "64", "--batch", "2", "--prompt-tokens", "4", "--new-tokens", "3",
                            "--steps", "1", "--warmup", "0", "--device", "cpu"]}


def _commands():
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.splitlines():
                for part in line.split("&&"):
                    words = shlex.split(part.strip())
                    if len(words) >= 3 and words[:2] == ["python", "-m"] and words[2] in FAST:
                        yield f"{page.relative_to(ROOT)}: {part.strip()}", words[2], words[3:]


def _fast(module, args, out):
    args = list(args)
    for flag, n in (("--seeds", 1), ("--out", 1), ("--x-values", None), ("--y-values", None), ("--panels", None), ("--confirm-seeds", 1)):
        while flag in args:
            i = args.index(flag)
            j = i + 1
            while j < len(args) and (n is None and not args[j].startswith("--") or n is not None and j < i + 1 + n):
                j += 1
            del args[i:j]
    args = [a for a in args if a not in ("--quick", "--resume")]
    return args + FAST[module] + ([] if module == "fullscale.bench" else ["--out", str(out)])  # the bench writes nothing


COMMANDS = list(_commands())


def test_docs_have_commands():
    assert len(COMMANDS) >= 8


@pytest.mark.parametrize("label, module, args", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_doc_command_runs(label, module, args, tmp_path, monkeypatch, capsys):
    """In this process, through the module's ``main`` (what ``python -m`` calls), so the
    commands share one import of torch and transformers; tests/test_toysim_gap.py and
    tests/test_fullscale_run.py run the entry points as subprocesses."""
    monkeypatch.chdir(ROOT)
    code = importlib.import_module(module).main(_fast(module, args, tmp_path / "out"))
    assert code == 0, f"{label}\n{capsys.readouterr().err[-2000:]}"
