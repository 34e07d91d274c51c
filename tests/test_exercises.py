"""docs/exercises: every check passes on the reference solution, fails cleanly (exit code
1, no traceback) on the untouched stub, and fails on a deliberately wrong answer.

The checker runs in-process (``check.main``; one torch import for the module) except
for two subprocess runs of the command line itself."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "docs" / "exercises"

_spec = importlib.util.spec_from_file_location("exercises_check", EX / "check.py")
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)
NUMBERS = sorted(check.CHECKS)

# (exercise, text of the reference solution, its wrong replacement): classic mistakes
WRONG = [
    (1, "(h - 1.0 / (2.0 * beta)) ** 2", "(h - 1.0 / beta) ** 2"),  # target margin 1/β
    (1, "return (h - 1.0 / (2.0 * beta)) ** 2", "return ((h - 1.0 / (2.0 * beta)) ** 2).mean()"),  # reduced
    (2, "_sigmoid((p - 0.5) / beta)", "_sigmoid(p / beta)"),  # forgets the (y, y) pairs of μ
    (2, "        return 1.0\n", "        return _sigmoid(0.5 / beta)\n"),  # DPO as regularised as IPO at p = 1
    (3, "ref_logp + reward / beta", "ref_logp + reward * beta"),
    (3, "torch.log_softmax(ref_logp + reward / beta, dim=-1)", "ref_logp + reward / beta"),  # not normalised
    (4, '"ordered_reproduces_online": diff <= 1e-3', '"ordered_reproduces_online": False'),
    (4, '"online_minus_tandem": tandem,', '"online_minus_tandem": (-tandem[0], tandem[1]),'),  # tandem − online
    (5, "(lp.exp() * (lp - lq))", "(lq.exp() * (lq - lp))"),  # KL(π_ref‖π)
    (5, "(per_token * mask.to(per_token.dtype))", "per_token"),  # ignores the padding mask
    (6, "    return steps + ([(tuple(y), end)] if len(y) < max_len else [])", "    return steps"),  # forgets END
    (6, "        new[s] = logits[s] - eta * grad", "        new[s] = logits[s] + eta * grad"),  # ascent, not descent
]


@pytest.fixture(scope="module")
def coverage_results(tmp_path_factory):
    """One quick coverage run (2 seeds, so the interval over seeds is defined) for exercise 4."""
    from toysim import gap

    out = tmp_path_factory.mktemp("ex4")
    assert gap.main(["--hypothesis", "coverage", "--quick", "--seeds", "2", "--out", str(out)]) == 0
    return out


def _run(capsys, n, *extra, results=None):
    argv = [str(n), *extra] + (["--results", str(results)] if n == 4 else [])
    rc = check.main(argv)
    return rc, capsys.readouterr().out


def _results(n, request):
    return request.getfixturevalue("coverage_results") if n == 4 else None


@pytest.mark.parametrize("n", NUMBERS)
def test_reference_solution_passes(n, capsys, request):
    rc, out = _run(capsys, n, "--solution", results=_results(n, request))
    assert rc == 0, out
    assert out.rstrip().endswith(f"PASS (exercise {n})")


@pytest.mark.parametrize("n", NUMBERS)
def test_stub_fails_cleanly(n, capsys, request):
    rc, out = _run(capsys, n, results=_results(n, request))
    assert rc == 1, out
    assert "not implemented yet" in out and "FAIL" in out and "Traceback" not in out


@pytest.mark.parametrize("n, old, new", WRONG, ids=[f"ex{n}-{i}" for i, (n, _, _) in enumerate(WRONG)])
def test_wrong_solution_fails(n, old, new, tmp_path, capsys, request):
    src = (EX / "solutions" / check.FILES[n]).read_text()
    assert old in src, "the reference solution changed; update WRONG"
    wrong = tmp_path / check.FILES[n]
    wrong.write_text(src.replace(old, new))
    rc, out = _run(capsys, n, "--file", str(wrong), results=_results(n, request))
    assert rc == 1, out
    assert "FAIL" in out and "Traceback" not in out


def test_exercise_4_without_results_says_what_to_run(tmp_path, capsys):
    rc = check.main(["4", "--solution", "--results", str(tmp_path / "missing")])
    out = capsys.readouterr().out
    assert rc == 1 and check.EX4_COMMAND in out


@pytest.mark.parametrize("argv, rc, last", [(["1"], 1, "FAIL"), (["5", "--solution"], 0, "PASS")])
def test_command_line(argv, rc, last):
    p = subprocess.run([sys.executable, str(EX / "check.py"), *argv], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert p.returncode == rc, p.stdout + p.stderr
    assert p.stdout.strip().splitlines()[-1].startswith(last) and "Traceback" not in p.stdout + p.stderr


@pytest.mark.parametrize("n", NUMBERS)
def test_pages_and_files_agree(n):
    (page,) = EX.glob(f"{n:02d}-*.md")
    text = page.read_text()
    assert f"python docs/exercises/check.py {n}" in text and check.FILES[n] in text
    assert (EX / check.FILES[n]).is_file() and (EX / "solutions" / check.FILES[n]).is_file()
    assert page.name in (EX / "README.md").read_text()
