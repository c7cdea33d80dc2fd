"""The shape of the code: no import cycles, no internal module importing the package facade, every
package installed, and the backends' folders side by side with the same file names."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"attngraph": ROOT / "attngraph", "attngraph_backends": ROOT / "backends"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Every internal module ``module`` imports, at the top or inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: never imported at run time
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in known else base)
    return {m for m in out if m in known and m != module}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {m: _imports(p, m, known) for m, p in modules.items()}


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_import_hidden_behind_importlib():
    """Defect s3-6: ``importlib.import_module("attngraph....")`` hid a cycle between the two ONNX importers from
    the test above. Only the backend registry loads modules by name (the backends it is told about)."""
    offenders = []
    for module, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
                    and node.args and isinstance(node.args[0], ast.Constant)
                    and str(node.args[0].value).startswith(("attngraph", "backends"))):
                offenders.append(f"{module}: import_module({node.args[0].value!r})")
    assert not offenders, offenders


def test_onnx_importers_import_one_way():
    """Defect s3-6: discovery and ``from_onnx`` share the single-node importer, which sits below both."""
    graph = _graph()
    discovery = {m for m in graph if m.startswith("attngraph.frontends.onnx_discovery")}
    assert not any("attngraph.frontends.onnx_import" in graph[m] for m in discovery)
    assert "attngraph.frontends.onnx_node_import" in graph["attngraph.frontends.onnx_discovery.single"]
    assert not any(d.startswith("attngraph.frontends.onnx_discovery") or d == "attngraph.frontends.onnx_import"
                   for d in graph["attngraph.frontends.onnx_node_import"])


def test_no_leftover_shims():
    """Defect s3-5: no module is a bare alias of another (a docstring and star imports, such as the old
    ``attngraph/registry.py`` beside ``lowering/registry.py``): each module has one home."""
    shims = []
    for module, path in _modules().items():
        if path.name == "__init__.py":
            continue
        body = ast.parse(path.read_text(encoding="utf-8")).body
        code = [n for n in body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        if code and all(isinstance(n, ast.ImportFrom | ast.Import) for n in code) and any(
                a.name == "*" for n in code if isinstance(n, ast.ImportFrom) for a in n.names):
            shims.append(module)
    assert not shims, f"alias modules that only re-export another: {shims}"
    for gone in ("attngraph.mha", "attngraph.torch_masks", "attngraph.registry"):
        assert gone not in _modules(), gone


def test_no_internal_module_imports_the_package_facade():
    offenders = sorted(m for m, deps in _graph().items() if "attngraph" in deps and m != "attngraph")
    assert not offenders, f"these modules import the package facade `attngraph` (import from its stages): {offenders}"


def test_the_core_never_imports_the_backends_by_name():
    """attngraph/ reaches backends only through the registry's strings, so the core has no edge to them."""
    offenders = sorted(m for m, deps in _graph().items() if m.startswith("attngraph.") or m == "attngraph"
                       for d in deps if d.startswith("attngraph_backends"))
    assert not offenders, offenders


def test_every_package_folder_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    folders = {m for m, p in _modules().items() if p.name == "__init__.py"}
    assert folders == listed, f"pyproject lists {sorted(listed - folders)} too many, misses {sorted(folders - listed)}"
    assert config["package-dir"] == {"attngraph_backends": "backends"}


def test_backend_folders_read_side_by_side():
    for name in ("numpy", "numba", "torch", "onnx"):
        files = {p.name for p in (ROOT / "backends" / name).glob("*.py")}
        assert {"__init__.py", "backend.py", "rules.py"} <= files, (name, sorted(files))
