"""Importing the core stays light: no transformers, no matplotlib, no scipy."""

import subprocess
import sys


def test_import_shared_and_toysim_is_light():
    code = ("import sys, shared, toysim, shared.losses, shared.metrics, shared.sampling, shared.studies, shared.claims, shared.protocol, shared.preferences, "
            "toysim.world, toysim.policy, toysim.train, toysim.evaluate, toysim.theory, toysim.study; "
            "bad = [m for m in ('transformers', 'matplotlib', 'scipy', 'tyro') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def _first_party_imports(path):
    """Top-level package names of every import in a file, at module level or inside a function."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & {"shared", "toysim", "fullscale"}


def test_the_backends_depend_only_on_the_core():
    """toysim and fullscale are two backends over shared/: neither imports the other, and the
    core imports neither."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    allowed = {"shared": {"shared"}, "toysim": {"shared", "toysim"}, "fullscale": {"shared", "fullscale"}}
    bad = [f"{f.relative_to(root)} imports {sorted(_first_party_imports(f) - ok)}"
           for pkg, ok in allowed.items() for f in sorted((root / pkg).glob("*.py")) if _first_party_imports(f) - ok]
    assert not bad, bad
    assert _first_party_imports(root / "fullscale" / "run.py") == {"shared", "fullscale"}  # the check reads function-level imports
