"""The store's folders keep their rules, checked on the source with `ast`: a backend folder
never imports another backend, the contract and the shared code import no backend, and no
module of store/ or testing/ is over 600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import flowmill.store

STORE = Path(flowmill.store.__file__).parent
SHARED = ("contract", "_common")


def _backends() -> list[str]:
    return sorted(
        p.name
        for p in STORE.iterdir()
        if p.is_dir() and (p / "__init__.py").exists() and p.name not in SHARED
    )


def _imported(source: str, package: list[str]) -> set[str]:
    """Every module a file of `package` imports (module level, under TYPE_CHECKING or in a
    function), and every name it imports from one as if it were a module."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)
    return out


def _store_part(module: str) -> str | None:
    """The folder of flowmill.store a module name falls in, if any."""
    parts = module.split(".")
    if parts[:2] != ["flowmill", "store"] or len(parts) < 3:
        return None
    return parts[2]


def _offences(folder: str, forbidden: set[str]) -> list[str]:
    found = []
    for path in sorted((STORE / folder).rglob("*.py")):
        package = ["flowmill", "store", *path.parent.relative_to(STORE).parts]
        for module in sorted(_imported(path.read_text(encoding="utf-8"), package)):
            if _store_part(module) in forbidden:
                found.append(f"{path.relative_to(STORE)} imports {module}")
    return found


def test_there_are_backends_to_check() -> None:
    assert {"sqlite", "postgres"} <= set(_backends())


def test_backend_folders_never_import_each_other() -> None:
    backends = set(_backends())
    offences = [o for b in sorted(backends) for o in _offences(b, backends - {b})]
    assert offences == []


def test_contract_and_common_import_no_backend() -> None:
    backends = set(_backends())
    offences = [o for shared in SHARED for o in _offences(shared, backends)]
    assert offences == []


def test_the_checker_sees_relative_and_function_local_imports() -> None:
    source = (
        "from ..postgres import PostgresStore\n"
        "from . import _threads\n"
        "def f():\n    import flowmill.store.redis\n"
    )
    seen = {_store_part(m) for m in _imported(source, ["flowmill", "store", "sqlite"])}
    assert {"postgres", "redis", "sqlite"} <= seen


def test_no_store_or_testing_module_is_over_600_lines() -> None:
    roots = [STORE, STORE.parent / "testing"]
    long = {
        str(path.relative_to(STORE.parent)): n
        for root in roots
        for path in root.rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 600
    }
    assert long == {}
