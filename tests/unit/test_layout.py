"""The layout is the architecture: pipeline/ and trainer/ meet only in schemas/, no module or package
imports itself through others, and every package says what it is for.

Every import counts, wherever it stands: at module level, inside a function (a lazy import) or
under `if TYPE_CHECKING:`. A lazy import hides a cycle from the interpreter, not from a reader."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ("schemas", "pipeline", "trainer")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((REPO_ROOT / package).rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Our modules that `path` imports: `from a.b import c` means a.b.c when that is a module, else a.b."""
    found: set[str] = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `import a.b.c` of a function's module, etc.
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    found.discard(_module_name(path))
    return found


def _graph(level: str) -> dict[str, set[str]]:
    """Import edges between modules, or between packages (a module belongs to its folder's package)."""
    modules = _modules()
    edges = {name: _imports(path, modules) for name, path in modules.items()}
    if level == "module":
        return edges

    def package_of(name: str) -> str:
        return name if modules[name].name == "__init__.py" else name.rpartition(".")[0]

    packages: dict[str, set[str]] = {}
    for name, targets in edges.items():
        src = package_of(name)
        packages.setdefault(src, set())
        for target in targets:
            dst = package_of(target)
            # A package's own modules, and a package and its parent's __init__, are not an edge.
            if dst != src and not src.startswith(dst + ".") and not dst.startswith(src + "."):
                packages[src].add(dst)
    return packages


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_packages_do_not_import_each_other():
    """pipeline/ and trainer/ talk only through schemas/ (DESIGN.md); schemas/ imports neither."""
    for package, forbidden in (("pipeline", "trainer"), ("trainer", "pipeline"), ("schemas", "pipeline"), ("schemas", "trainer")):
        for path in (REPO_ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    assert name.split(".")[0] != forbidden, f"{path.relative_to(REPO_ROOT)} imports {name}"


@pytest.mark.parametrize("level", ["module", "package"])
def test_no_import_cycles(level):
    cycles = _cycles(_graph(level))
    assert not cycles, f"{level}s that import each other (move the shared part down): {cycles}"


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_import_resolution_sees_lazy_and_type_checking_imports(tmp_path):
    modules = _modules()
    source = REPO_ROOT / "pipeline" / "check" / "run.py"
    found = _imports(source, modules)
    assert {"pipeline.check.outcome", "pipeline.check.formats", "schemas.manifest"} <= found
    assert "pipeline.check.text" in found  # imported inside run_checks (lazily)


def test_build_and_check_do_not_import_each_other():
    """The two programs share steps, not code paths: only the CLI imports both."""
    graph = _graph("package")
    assert "pipeline.check" not in graph["pipeline.build"]
    assert "pipeline.build" not in graph["pipeline.check"]
    shared = {"pipeline.dedup", "schemas"}
    assert graph["pipeline.dedup"] <= shared | {"pipeline"}, graph["pipeline.dedup"]


def test_every_package_says_what_it_is_for():
    for init in sorted(p for package in PACKAGES for p in (REPO_ROOT / package).rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert len(doc.split()) >= 20, f"{init.relative_to(REPO_ROOT)} needs a docstring: what it is for, its modules, who imports it"


def test_no_test_folder_is_skipped_by_collection():
    """pytest skips folders matching `norecursedirs` (by default also `build`): none of ours may match."""
    import fnmatch
    import tomllib

    patterns = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["norecursedirs"]
    folders = [p for p in (REPO_ROOT / "tests").rglob("*") if p.is_dir() and p.name != "__pycache__" and any(p.glob("test_*.py"))]
    skipped = [str(p.relative_to(REPO_ROOT)) for p in folders if any(fnmatch.fnmatch(p.name, pat) for pat in patterns)]
    assert not skipped, f"pytest would not collect {skipped}; rename them or change norecursedirs"
    assert (REPO_ROOT / "tests" / "unit" / "pipeline" / "build") in folders


def test_the_check_and_the_trainer_share_one_structural_verification():
    """`cpt-prep check` and `cpt-train` run the same structural rules from schemas/verify/, which
    belongs to the contract (it imports only schemas/)."""
    graph = _graph("package")
    assert "schemas.verify" in graph["trainer"] and "schemas.verify" in graph["pipeline.check"]
    assert graph["schemas.verify"] <= {"schemas"}, graph["schemas.verify"]
