"""No import cycles among the modules of `app/`, counting every import: at the top, inside
functions, and under `TYPE_CHECKING` (a cycle held together by a lazy or a typing-only import
is still one module needing the other's layer)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"


def _modules() -> dict[str, Path]:
    found = {}
    for path in APP.rglob("*.py"):
        parts = path.relative_to(APP.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The app modules `module` imports (a name imported from a package counts as its module
    when it is one, else as the package)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets.extend(f"{base}.{alias.name}" for alias in node.names)
    imported = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != module:
            imported.add(target)
    return imported


def _cycles(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> Iterator[list[str]]:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                yield from visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                yield sorted(component)

    for node in sorted(graph):
        if node not in index:
            yield from visit(node)


def test_the_finder_sees_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert list(_cycles(graph)) == [["a", "b", "c"]]


def test_no_module_of_app_is_part_of_an_import_cycle() -> None:
    modules = _modules()
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    assert "app.kit.db" in graph["app.kit.outbox"]  # the graph holds the imports it should
    assert list(_cycles(graph)) == []


def _package(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_no_package_of_app_is_part_of_an_import_cycle() -> None:
    """Coarser than modules: `auth.service` importing `catalog.repository` while `catalog`
    imports `auth.service` is no module cycle, but it ties the two domains into one."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported = {_package(target) for target in _imported(name, path, modules)}
        graph.setdefault(_package(name), set()).update(imported - {_package(name)})
    assert "kit" in graph["appointments"]
    assert list(_cycles(graph)) == []


DOMAINS = {
    "analytics",
    "appointments",
    "audit",
    "auth",
    "availability",
    "catalog",
    "health",
    "notifications",
    "records",
    "schedules",
    "video",
}


def test_a_domain_reaches_another_only_through_its_service() -> None:
    """Another domain's queries and routes are its own business: a domain calls the other's
    service (or its schemas, errors, events), never its repository or endpoints."""
    modules = _modules()
    trespasses = []
    for name, path in modules.items():
        if _package(name) not in DOMAINS:
            continue
        for target in _imported(name, path, modules):
            private = target.rpartition(".")[2] in {"repository", "endpoints"}
            if private and _package(target) != _package(name):
                trespasses.append(f"{name} -> {target}")
    assert sorted(trespasses) == []
