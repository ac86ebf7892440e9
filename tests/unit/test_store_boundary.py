"""The store port is the only way to the database: no module outside
``corral/store/`` imports SQLAlchemy, alembic, a database driver or a
backend's own modules (whose exceptions would leak with them)."""

from __future__ import annotations

import ast
from pathlib import Path

import corral

PACKAGE = Path(corral.__file__).parent
# Database libraries and drivers, by top-level module name.
FORBIDDEN = {"sqlalchemy", "alembic", "psycopg", "psycopg2", "psycopg_pool", "sqlite3",
             "MySQLdb", "pymysql", "mariadb", "asyncmy", "aiomysql", "mysql"}
# What the rest of Corral may use of the store: the package, the port and the values.
ALLOWED_STORE = {"corral.store", "corral.store.port", "corral.store.values"}


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from corral.store import queries`` imports a module of the package.
            folder = PACKAGE.parent.joinpath(*node.module.split("."))
            modules = [f"{node.module}.{alias.name}" for alias in node.names
                       if (folder / f"{alias.name}.py").exists()
                       or (folder / alias.name / "__init__.py").exists()]
            if len(modules) < len(node.names):
                found.append((node.lineno, node.module))
            found += [(node.lineno, module) for module in modules]
    return found


def violations() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent)
        if relative.parts[:2] == ("corral", "store"):
            continue
        for line, module in imports_of(path):
            top = module.split(".")[0]
            if top in FORBIDDEN:
                problems.append(f"{relative}:{line} imports {module}")
            elif module.startswith("corral.store.") and module not in ALLOWED_STORE:
                problems.append(f"{relative}:{line} imports {module} (use corral.store, "
                                "corral.store.port or corral.store.values)")
    return problems


def test_nothing_outside_the_store_imports_a_database_library():
    assert violations() == []


def test_the_check_sees_a_forbidden_import(tmp_path, monkeypatch):
    """The check itself finds what it is looking for (here, in a module made
    to break the rule)."""
    module = tmp_path / "corral" / "api" / "leaky.py"
    module.parent.mkdir(parents=True)
    module.write_text("import psycopg\nfrom sqlalchemy.exc import IntegrityError\n"
                      "from corral.store import queries\nfrom corral.store.port import Store\n")
    (tmp_path / "corral" / "store").mkdir()
    (tmp_path / "corral" / "store" / "queries.py").write_text("")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE",
                        tmp_path / "corral")
    assert violations() == [
        "corral/api/leaky.py:1 imports psycopg",
        "corral/api/leaky.py:2 imports sqlalchemy.exc",
        "corral/api/leaky.py:3 imports corral.store.queries (use corral.store, "
        "corral.store.port or corral.store.values)",
    ]


def module_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (at any level, type-only
    imports included)."""
    root = PACKAGE.parent
    graph: dict[str, set[str]] = {}
    for path in sorted((root / package.replace(".", "/")).rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {module for _, module in imports_of(path)
                       if module.startswith(package + ".") or module == package}
    return {name: {m for m in deps if m in graph and m != name} for name, deps in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            found.append([*path[path.index(node):], node])
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*path, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    return found


def test_no_module_of_corral_imports_itself_through_others():
    """No import cycle, type-only and function-level imports included (the
    engine's parts, in particular, are layered: events, planning, then
    firing, sweeping, the outbox and group commit, then the engine)."""
    graph = module_graph("corral")
    assert {"corral.engine.planning", "corral.engine.firing", "corral.engine.group"} <= set(graph)
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
