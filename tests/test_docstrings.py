"""Every public function of the shared core documents its formula's source."""

import importlib
import inspect
import re

import pytest

MODULES = ["shared.losses", "shared.preferences", "shared.sampling", "shared.metrics", "shared.studies", "shared.claims", "shared.results",
           "shared.protocol", "shared.plots", "shared.machine", "fullscale.lm", "fullscale.judge", "fullscale.formats"]
SOURCE = re.compile(r"et al\.|arXiv|Algorithm|Bradley|Student|docs/[a-z]")  # a paper, or a docs page a reader can open
# plumbing, not formulas: each carries a docstring but has no equation to cite
PLUMBING = {"shared.sampling.stack_batches", "shared.claims.judge", "shared.results.verdict_from_ci", "shared.results.fmt",
            "shared.results.seeds_of", "shared.results.runs_of", "shared.results.curves", "shared.results.final",
            "shared.results.per_seed", "shared.results.has", "shared.results.has_halves",
            "shared.protocol.run_order", "shared.protocol.make_sampler", "shared.protocol.arm_plan",
            "fullscale.lm.response_mask", "fullscale.lm.response_logits", "fullscale.decode.sample_responses", "fullscale.lm.pm_inputs",
            "fullscale.lm.autocast", "fullscale.lm.no_pad", "fullscale.lm.cache_arg", "fullscale.lm.accepts", "fullscale.lm.positions"}


def _public(modname):
    mod = importlib.import_module(modname)
    for name in getattr(mod, "__all__", []):
        obj = getattr(mod, name)
        if inspect.isfunction(obj):
            yield f"{modname}.{name}", obj


@pytest.mark.parametrize("qualname, fn", [p for m in MODULES for p in _public(m)], ids=lambda v: v if isinstance(v, str) else "")
def test_public_function_cites_its_source(qualname, fn):
    doc = inspect.getdoc(fn) or ""
    assert doc, f"{qualname} has no docstring"
    if qualname not in PLUMBING:
        assert SOURCE.search(doc), f"{qualname}'s docstring cites no source (a paper, its equation, or a docs page)"


def _modules():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return [(pkg, f) for pkg in ("shared", "toysim", "fullscale") for f in sorted((root / pkg).glob("*.py")) if f.stem != "__init__"]


@pytest.mark.parametrize("pkg, path", _modules(), ids=lambda v: v if isinstance(v, str) else v.stem)
def test_every_module_says_where_it_is_tested(pkg, path):
    """A module's tests are tests/test_<module>.py (the core) or tests/test_<backend>_<module>.py, or its
    docstring's ``Tests:`` line names the files that hold them (each must exist), or says none."""
    import ast

    tests = path.parents[1] / "tests"
    if (tests / f"test_{path.stem}.py").exists() or (tests / f"test_{pkg}_{path.stem}.py").exists():
        return
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    line = re.search(r"Tests?: ([^\n]*(?:\n[^\n]*)?)", doc)
    assert line, f"{pkg}/{path.name} has no test module of its name and no Tests: line"
    named = re.findall(r"tests/[\w/]+\.py", line.group(1))
    assert named or line.group(1).startswith("none"), f"{pkg}/{path.name}: its Tests: line names no test file"
    assert all((path.parents[1] / n).exists() for n in named), f"{pkg}/{path.name} names a test file that does not exist: {named}"
