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


def _module_graph(root):
    """{module: the first-party modules it imports}, at module level or inside a function, for every
    module of shared/, toysim/ and fullscale/ (``from pkg import mod`` counts as importing pkg.mod)."""
    import ast

    modules = {f"{f.parent.name}.{f.stem}": f for pkg in ("shared", "toysim", "fullscale") for f in (root / pkg).glob("*.py")
               if f.stem != "__init__"}
    graph = {}
    for name, f in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps |= {node.module} & set(modules) | {f"{node.module}.{a.name}" for a in node.names} & set(modules)
        graph[name] = deps - {name}
    return graph


def _cycles(graph):
    """Every import circle of ``graph``, each as the list of modules around it (depth-first search)."""
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                found.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_circle_inside_a_backend_or_the_core():
    """Each module stands on the ones below it: no file imports one that imports it back, directly
    or around a longer circle (function-level imports included)."""
    from pathlib import Path

    cycles = _cycles(_module_graph(Path(__file__).resolve().parents[1]))
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_the_circle_check_finds_a_circle():
    """The check itself: a graph with a circle a -> b -> c -> a (and a tail d -> a) gives that circle."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
