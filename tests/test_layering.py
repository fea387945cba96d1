"""One direction of dependency: no import cycle between modules, nor between subpackages.

The import graph is read from the source with `ast` (imports inside functions count: a lazy import
is still a dependency). `exporters/` and `prompts/` are installed as `autolabel.exporters` and
`autolabel.prompts`. For the coarse graph each subpackage (backends, evaluation, prima, review,
exporters, ...) is one node and each top-level module its own node.
"""

from __future__ import annotations

import ast
import re
import warnings
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"autolabel": ROOT / "autolabel", "autolabel.exporters": ROOT / "exporters",
                "autolabel.prompts": ROOT / "prompts"}

Edges = dict[str, dict[str, list[str]]]  # importer -> imported -> ["file:line", ...]


def package_modules(dirs: dict[str, Path] = PACKAGE_DIRS) -> dict[str, Path]:
    """Every module of the installed `autolabel` package, by dotted name."""
    modules = {}
    for package, folder in dirs.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
                continue
            modules[".".join([package, *parts])] = path
    return modules


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement may load (a `from X import y` names both X.y and X)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = module.split(".")
        anchor = anchor if is_package else anchor[:-1]
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def import_graph(modules: dict[str, Path], root: Path = ROOT) -> Edges:
    edges: Edges = defaultdict(lambda: defaultdict(list))
    for module, path in modules.items():
        with warnings.catch_warnings():  # a bad escape in a string is not this test's business
            warnings.simplefilter("ignore")
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = _imported(node, module, path.name == "__init__.py")
            # `from pkg import sub` imports the submodule when there is one, else a name of pkg
            targets = {n for n in names[:-1] if n in modules} if isinstance(node, ast.ImportFrom) else set()
            if not targets:
                for name in names if isinstance(node, ast.Import) else names[-1:]:
                    while name and name not in modules:
                        name = name.rpartition(".")[0]
                    if name:
                        targets.add(name)
            for target in targets - {module}:
                edges[module][target].append(f"{path.relative_to(root)}:{node.lineno}")
    return edges


def node_of(module: str) -> str:
    """A subpackage as one node (autolabel.backends.x -> autolabel.backends); a top-level module as itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


def coarse(edges: Edges) -> Edges:
    out: Edges = defaultdict(lambda: defaultdict(list))
    for a, targets in edges.items():
        for b, where in targets.items():
            if node_of(a) != node_of(b):
                out[node_of(a)][node_of(b)] += [f"{w} ({a} -> {b})" for w in where]
    return out


def cycles(edges: Edges) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(edges) | {w for ts in edges.values() for w in ts}):
        if v not in index:
            visit(v)
    return found


def describe(found: list[list[str]], edges: Edges) -> str:
    lines = []
    for component in found:
        lines.append("cycle: " + " <-> ".join(component))
        for a in component:
            for b in component:
                for where in edges.get(a, {}).get(b, []):
                    lines.append(f"    {a} -> {b}: {where}")
    return "\n".join(lines)


def test_the_graph_sees_lazy_relative_and_package_imports(tmp_path):
    pkg = tmp_path / "autolabel"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "top.py").write_text("def f():\n    from autolabel.sub import leaf\n")
    (pkg / "sub" / "__init__.py").write_text("from .leaf import X\n")
    (pkg / "sub" / "leaf.py").write_text("from .. import top\nX = 1\n")
    modules = package_modules({"autolabel": pkg})
    edges = import_graph(modules, tmp_path)
    assert set(edges["autolabel.top"]) == {"autolabel.sub.leaf"}
    assert set(edges["autolabel.sub"]) == {"autolabel.sub.leaf"}
    assert set(edges["autolabel.sub.leaf"]) == {"autolabel.top"}
    assert cycles(edges) == [["autolabel.sub.leaf", "autolabel.top"]]
    assert cycles(coarse(edges)) == [["autolabel.sub", "autolabel.top"]]


def test_no_module_imports_itself_back():
    edges = import_graph(package_modules())
    found = cycles(edges)
    assert not found, "import cycles between modules:\n" + describe(found, edges)


def test_no_two_subpackages_or_top_level_modules_import_each_other():
    modules = package_modules()
    edges = coarse(import_graph(modules))
    found = cycles(edges)
    assert not found, "import cycles between subpackages / top-level modules:\n" + describe(found, edges)


def test_prima_never_imports_the_backends():
    """The backends build on the PRIMA model (backends/prima.py); the model never on the backends."""
    edges = import_graph(package_modules())
    into_backends = [f"{a} -> {b}: {w}" for a, ts in edges.items() if node_of(a) == "autolabel.prima"
                     for b, where in ts.items() if node_of(b) == "autolabel.backends" for w in where]
    assert not into_backends, "\n".join(into_backends)


def test_the_readme_where_things_live_matches_the_tree():
    """Every path the README's "Where things live" names exists, and every top-level module and
    subpackage of the installed package is named there (a new module needs its line)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Where things live\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`((?:autolabel|exporters|prompts|tests|benchmarks|examples)/[\w./]*)`", section))
    assert {"autolabel/store.py", "exporters/"} <= named, "the section was not found or not parsed"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"README names paths that do not exist: {missing}"
    folders = {p for p in named if p.endswith("/")}
    parts = [f"{p.relative_to(ROOT)}" for p in (ROOT / "autolabel").glob("*.py") if p.name != "__init__.py"]
    parts += [f"{p.parent.relative_to(ROOT)}/" for p in (ROOT / "autolabel").glob("*/__init__.py")]
    parts += ["exporters/", "prompts/"]
    unnamed = sorted(p for p in parts if p not in named and not any(p.startswith(f) for f in folders))
    assert not unnamed, f"README's Where things live does not name: {unnamed}"
