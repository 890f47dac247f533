"""The package's layers: imports flow one way, and the checker never imports training.

Read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` of a jaxcheck module, at the top of a file or inside a
function, is an edge of the import graph.
"""

import ast
import functools
import pathlib
import re

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jaxcheck"
#: The flat modules that became jaxcheck.training; nothing may import them again.
OLD_TRAINING_MODULES = ("jaxcheck.sanity", "jaxcheck.monitor", "jaxcheck.plots")
OLD_TRAINING_MODULES += ("jaxcheck.data",)
#: Outside the training half, only these may import it: the package's __init__
#: re-exports it, and the CLI's ``demo`` command runs its demo.
MAY_IMPORT_TRAINING = {"jaxcheck", "jaxcheck.cli"}
#: Import cycles in the checker today; its rewrite removes them (then empty this).
KNOWN_CYCLES: list[list[str]] = []


def _modules(root: pathlib.Path = PACKAGE) -> dict[str, tuple[pathlib.Path, bool]]:
    """``{dotted name: (path, is_package)}`` of every module under ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


def _import_pairs(
    name: str, path: pathlib.Path, is_package: bool
) -> set[tuple[str, str | None]]:
    """``(module, member)`` of every import in ``name``'s source: ``(x, None)``
    for ``import x``, ``(x, y)`` for ``from x import y``, relative imports resolved
    against ``name``."""
    here = name.split(".") if is_package else name.split(".")[:-1]
    found: set[tuple[str, str | None]] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.update((target, alias.name) for alias in node.names)
    return found


def _imports(name: str, path: pathlib.Path, is_package: bool) -> set[str]:
    """Every jaxcheck name that ``name`` imports, dotted (``jaxcheck.x.f``)."""
    return {
        target if member is None else f"{target}.{member}"
        for target, member in _import_pairs(name, path, is_package)
        if target == "jaxcheck" or target.startswith("jaxcheck.")
    }


def _graph(modules: dict[str, tuple[pathlib.Path, bool]]) -> dict[str, set[str]]:
    """``{module: the jaxcheck modules it imports}``; names that are not modules
    (``from jaxcheck.x import f``) resolve to the module that holds them."""
    graph = {}
    for name, (path, is_package) in modules.items():
        edges = set()
        for imported in _imports(name, path, is_package):
            while imported not in modules and "." in imported:
                imported = imported.rsplit(".", 1)[0]
            if imported != name:
                edges.add(imported)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# jaxcheck's modules and import graph, read when a test first asks for them (not
# at collection, in every worker).
@functools.cache
def _package_modules() -> dict[str, tuple[pathlib.Path, bool]]:
    return _modules()


@functools.cache
def _package_graph() -> dict[str, set[str]]:
    return _graph(_package_modules())


def _in_training(name: str) -> bool:
    return name == "jaxcheck.training" or name.startswith("jaxcheck.training.")


# --- the checks find what they look for -------------------------------------------


def _write(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for rel, text in files.items():
        path = root / "jaxcheck" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "jaxcheck"


def test_a_planted_cycle_is_found(tmp_path):
    pkg = _write(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from jaxcheck.b import f\n",
            "b.py": "def f():\n    from . import c\n",
            "c.py": "import jaxcheck.a\n",
            "d.py": "from .a import g\n",
        },
    )
    graph = _graph(_modules(pkg))
    assert graph["jaxcheck.d"] == {"jaxcheck.a"}
    assert _cycles(graph) == [["jaxcheck.a", "jaxcheck.b", "jaxcheck.c"]]


def test_relative_and_package_imports_resolve(tmp_path):
    pkg = _write(
        tmp_path,
        {
            "__init__.py": "from . import training as training\n",
            "check.py": "def f():\n    from .training import demo\n",
            "training/__init__.py": "from jaxcheck.training.demo import run\n",
            "training/demo.py": "from .. import check\nfrom ._render import fmt\n",
            "training/_render.py": "",
        },
    )
    graph = _graph(_modules(pkg))
    assert graph["jaxcheck"] == {"jaxcheck.training"}
    assert graph["jaxcheck.check"] == {"jaxcheck.training.demo"}
    assert graph["jaxcheck.training"] == {"jaxcheck.training.demo"}
    assert graph["jaxcheck.training.demo"] == {
        "jaxcheck.check",
        "jaxcheck.training._render",
    }
    assert _cycles(graph) == [["jaxcheck.check", "jaxcheck.training.demo"]]


# --- the package ------------------------------------------------------------------


def test_the_graph_covers_the_package():
    assert {"jaxcheck", "jaxcheck.check", "jaxcheck.examples"} <= set(_package_graph())
    assert {"jaxcheck.training", "jaxcheck.training.monitor"} <= set(_package_graph())
    assert "jaxcheck.training" in _package_graph()["jaxcheck"]


def test_no_import_cycle_in_the_training_half():
    half = {
        m: e
        for m, e in _package_graph().items()
        if _in_training(m) or m == "jaxcheck.examples"
    }
    assert _cycles(half) == []


def test_no_import_cycle_but_the_known_one():
    assert [c for c in _cycles(_package_graph()) if c not in KNOWN_CYCLES] == []


def test_no_import_cycle_anywhere():
    assert _cycles(_package_graph()) == []


def _training_importers(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Modules outside the training half (and not allowed to) that import it."""
    offenders = {
        name: sorted(e for e in edges if _in_training(e))
        for name, edges in graph.items()
        if not _in_training(name) and name not in MAY_IMPORT_TRAINING
    }
    return {k: v for k, v in offenders.items() if v}


def test_a_checker_module_that_imports_training_is_found(tmp_path):
    pkg = _write(
        tmp_path,
        {
            "__init__.py": "from . import training\n",
            "cli.py": "from .training import demo\n",
            "engine.py": "def f():\n    from jaxcheck.training.plots import plot\n",
            "training/__init__.py": "",
            "training/plots.py": "from jaxcheck import engine\n",
            "training/demo.py": "",
        },
    )
    graph = _graph(_modules(pkg))
    assert _training_importers(graph) == {
        "jaxcheck.engine": ["jaxcheck.training.plots"]
    }


def test_the_checker_never_imports_the_training_half():
    assert _training_importers(_package_graph()) == {}


def _is_old(dotted: str) -> bool:
    return any(dotted == m or dotted.startswith(m + ".") for m in OLD_TRAINING_MODULES)


def test_the_old_flat_training_modules_are_gone():
    assert not [m for m in _package_modules() if _is_old(m)]
    importers = {
        name: sorted(d for d in _imports(name, path, is_package) if _is_old(d))
        for name, (path, is_package) in _package_modules().items()
    }
    assert {k: v for k, v in importers.items() if v} == {}


def test_tests_benchmarks_and_notebooks_use_the_new_names():
    root = PACKAGE.parent
    pattern = re.compile(
        r"jaxcheck\.(sanity|monitor|plots|data)\b"
        r"|from jaxcheck import [^\n]*\b(sanity|monitor|plots|data)\b"
    )
    files = [*root.glob("tests/*.py"), *root.glob("benchmarks/*.py")]
    files += root.glob("notebooks/*.ipynb")
    hits = [
        f"{path.name}: {line.strip()}"
        for path in files
        if path.name != "test_layers.py"
        for line in path.read_text().splitlines()
        if pattern.search(line)
    ]
    assert hits == []


def test_examples_import_nothing_from_jaxcheck():
    assert _package_graph()["jaxcheck.examples"] == set()


def test_the_training_half_reaches_into_no_private_name():
    """A training module imports public names only, except from a private module
    (``_render``, ``_capture``, ``_optional``), whose names are its interface;
    private modules themselves are imported by name."""
    reaches = [
        f"{name}: {target}.{member}"
        for name, (path, is_package) in _package_modules().items()
        if _in_training(name) or name == "jaxcheck.examples"
        for target, member in _import_pairs(name, path, is_package)
        if member is not None
        and member.startswith("_")
        and not member.startswith("__")
        and not target.rsplit(".", 1)[-1].startswith("_")
        and f"{target}.{member}" not in _package_modules()
    ]
    assert reaches == []


def test_a_private_reach_is_found(tmp_path):
    pkg = _write(
        tmp_path,
        {
            "__init__.py": "",
            "training/__init__.py": "",
            "training/a.py": "from jaxcheck.training.b import _helper\n",
            "training/b.py": "from . import _render\nfrom ._render import fmt\n",
            "training/_render.py": "",
        },
    )
    modules = _modules(pkg)
    pairs = _import_pairs("jaxcheck.training.a", *modules["jaxcheck.training.a"])
    assert pairs == {("jaxcheck.training.b", "_helper")}
    pairs = _import_pairs("jaxcheck.training.b", *modules["jaxcheck.training.b"])
    assert pairs == {
        ("jaxcheck.training", "_render"),
        ("jaxcheck.training._render", "fmt"),
    }


def test_no_module_over_800_lines_and_no_function_over_100_lines_of_code():
    root = PACKAGE
    long_modules, long_functions = [], []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > 800:
            long_modules.append(str(path.relative_to(root)))
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            lines = node.end_lineno - node.lineno + 1
            if ast.get_docstring(node) is not None:  # a docstring is not code
                doc = node.body[0]
                lines -= doc.end_lineno - doc.lineno + 1
            if lines > 100:
                long_functions.append(f"{path.relative_to(root)}:{node.name} ({lines})")
    assert long_modules == [] and long_functions == []
