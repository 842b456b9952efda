"""The house rules of docs/architecture.md, checked on the source: dependencies run one way, nothing imports the API
layer, the store never imports the runtime, the server never imports the importer or the evaluation (which reaches the
server over HTTP only), no import cycle (counting every import: module level, inside functions and under
TYPE_CHECKING), and no module of the server over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGE = "rerank_server"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    files = [*sorted((REPO_ROOT / PACKAGE).rglob("*.py")), REPO_ROOT / "service.py", REPO_ROOT / "import_models.py"]
    files += [REPO_ROOT / "evaluate.py"] if (REPO_ROOT / "evaluate.py").exists() else []
    return {_module_name(path): path for path in files}


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every project module `path` imports, wherever the import statement stands. `from a.b import c` imports `a.b.c`
    when that is a module, else `a.b` itself."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in known:
                    found.add(f"{node.module}.{alias.name}")
                elif node.module in known:
                    found.add(node.module)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_there_is_no_import_cycle(graph) -> None:
    assert _cycle(graph) is None, " → ".join(_cycle(graph) or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def _importers(graph: dict[str, set[str]], prefix: str) -> set[str]:
    return {name for name, targets in graph.items() if any(t == prefix or t.startswith(prefix + ".") for t in targets)}


def _inside(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_nothing_but_the_service_imports_the_api_layer(graph) -> None:
    outside = {name for name in _importers(graph, f"{PACKAGE}.api") if not _inside(name, f"{PACKAGE}.api")}
    assert outside <= {"service"}, outside


def test_dependencies_run_one_way(graph) -> None:
    """api → engine → models → recipes / backends: no layer imports one above it."""
    layers = [f"{PACKAGE}.api", f"{PACKAGE}.engine", f"{PACKAGE}.models", f"{PACKAGE}.recipes", f"{PACKAGE}.backends"]
    for lower_index, lower in enumerate(layers):
        for higher in layers[:lower_index]:
            if {lower, higher} == {f"{PACKAGE}.recipes", f"{PACKAGE}.backends"}:
                continue
            wrong = {name for name in _importers(graph, higher) if _inside(name, lower)}
            assert not wrong, f"{wrong} (in {lower}) import {higher}"


def test_the_store_never_imports_the_runtime(graph) -> None:
    runtime = (f"{PACKAGE}.models.loaded", f"{PACKAGE}.models.registry", f"{PACKAGE}.engine", f"{PACKAGE}.api")
    store = f"{PACKAGE}.models.store"
    assert not [t for t in graph[store] if any(_inside(t, r) for r in runtime)], graph[store]


TOOLS = (f"{PACKAGE}.importer", f"{PACKAGE}.evaluation")  # what the command lines use, never the server


def _server(graph: dict[str, set[str]]) -> list[str]:
    return [n for n in graph if n == "service" or (_inside(n, PACKAGE) and not any(_inside(n, t) for t in TOOLS))]


def test_the_server_never_imports_the_importer(graph) -> None:
    wrong = {name for name in _server(graph) if any(_inside(t, f"{PACKAGE}.importer") for t in graph[name])}
    assert not wrong, wrong


def test_the_server_never_imports_the_evaluation(graph) -> None:
    wrong = {name for name in _server(graph) if any(_inside(t, f"{PACKAGE}.evaluation") for t in graph[name])}
    assert not wrong, wrong


def test_the_evaluation_reaches_the_server_only_over_http(graph) -> None:
    """evaluate.py scores through `POST /v1/rerank`, so it works the same against another vendor's endpoint."""
    evaluation = [name for name in graph if _inside(name, f"{PACKAGE}.evaluation")]
    assert evaluation
    wrong = {n: t for n in evaluation for t in graph[n] if not _inside(t, f"{PACKAGE}.evaluation") and t != PACKAGE}
    assert not wrong, wrong


def test_backends_know_no_wire_type(graph) -> None:
    backends = [name for name in graph if _inside(name, f"{PACKAGE}.backends")]
    assert not [name for name in backends if any(_inside(t, f"{PACKAGE}.api") for t in graph[name])]


def test_no_module_of_the_server_is_over_400_lines() -> None:
    long = {
        str(path.relative_to(REPO_ROOT)): lines
        for path in _modules().values()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, long
