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
            found.append((node.lineno, node.module))
            # ``from corral.store import db`` names a module too.
            if node.module == "corral.store":
                found += [(node.lineno, f"corral.store.{alias.name}") for alias in node.names
                          if (PACKAGE / "store" / f"{alias.name}.py").exists()]
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
