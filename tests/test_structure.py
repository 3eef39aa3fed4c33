"""The shape of ``src/unpacked``, kept by a test rather than by habit (DESIGN.md section 4).

Read from the source with ``ast`` (nothing is imported): imports under ``if TYPE_CHECKING:``
are annotations only and do not count; imports inside functions do.

1. The pure core does no I/O: it imports, transitively, no module outside the core and no
   standard or third-party module that reaches the outside world.
2. ``unpacked.publish`` knows nothing of the domain: only ``unpacked.errors``, itself and
   libraries.
3. Nothing imports ``unpacked.cli`` but the CLI itself and ``__main__``.
4. No module imports another package's private (``_x``) module or private name.
5. No source file is over 500 lines.
6. No function has a cyclomatic complexity over 10 (lizard).

Each rule subtracts its entry in ``KNOWN``: the offenders of today, which other work is
removing. A KNOWN entry that no longer offends fails its rule too, so the lists only shrink.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lizard
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "unpacked"

PURE = frozenset(
    {
        "unpacked",  # the package's __init__, which every import of the core runs
        "unpacked.digest",
        "unpacked.errors",
        "unpacked.events",
        "unpacked.layout",
        "unpacked.manifest",
        "unpacked.mediatype",
        "unpacked.platform",
        "unpacked.records",
        "unpacked.reference",
        "unpacked.repository._model",  # the read-side view's rules
    }
)
"""Modules that are functions on values: no file system, network or process."""

IO_MODULES = frozenset(
    {
        "asyncio",
        "concurrent",
        "fcntl",
        "gzip",
        "http",
        "httpx",
        "io",
        "mmap",
        "multiprocessing",
        "os",
        "select",
        "shutil",
        "signal",
        "socket",
        "ssl",
        "subprocess",
        "tarfile",
        "tempfile",
        "threading",
        "urllib",
        "zstandard",
    }
)
"""Top-level modules whose use reaches the outside world (``pathlib`` is checked by name:
its pure paths are fine, ``Path`` is not)."""

MAX_LINES = 500
MAX_COMPLEXITY = 10

KNOWN: dict[str, frozenset[str]] = {
    "pure": frozenset(),
    "publish": frozenset(),
    "cli": frozenset(),
    "private": frozenset(),
    "lines": frozenset(),
    "complexity": frozenset(),
}
"""Today's offenders, per rule; remove an entry with the change that fixes it."""


@dataclass(frozen=True)
class Import:
    importer: str
    module: str
    """The module imported (for ``from m import n``: ``m.n`` when that is a module)."""
    names: tuple[str, ...]
    """The names taken from ``module`` (``from m import a, b``), empty for ``import m``."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _sources() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted((SRC / ROOT).rglob("*.py"))}


def _is_package(module: str) -> bool:
    return _sources()[module].name == "__init__.py"


def _is_private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


class _Collector(ast.NodeVisitor):
    """Every import in a module, except those under ``if TYPE_CHECKING:``."""

    def __init__(self, module: str) -> None:
        self.module = module
        self.imports: list[Import] = []

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
        if name != "TYPE_CHECKING":
            self.generic_visit(node)
            return
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        self.imports += [Import(self.module, alias.name, ()) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._resolve(node)
        plain = []
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in _sources():
                self.imports.append(Import(self.module, submodule, ()))
            else:
                plain.append(alias.name)
        if plain or not node.names:
            self.imports.append(Import(self.module, base, tuple(plain)))

    def _resolve(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        package = self.module if _is_package(self.module) else self.module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        return f"{package}.{node.module}" if node.module else package


@functools.cache
def _imports(module: str) -> tuple[Import, ...]:
    collector = _Collector(module)
    collector.visit(ast.parse(_sources()[module].read_text(), str(_sources()[module])))
    return tuple(item for item in collector.imports if item.module != "__future__")


def _ours(module: str) -> bool:
    return module == ROOT or module.startswith(ROOT + ".")


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _loaded(module: str) -> Iterator[str]:
    """The modules of ours that importing ``module`` runs: it and its parent packages."""
    parts = module.split(".")
    for end in range(1, len(parts) + 1):
        name = ".".join(parts[:end])
        if name in _sources():
            yield name


def _all_imports() -> Iterator[Import]:
    for module in _sources():
        yield from _imports(module)


# --- the rules: each returns its offenders as strings ------------------------------------


def _io_use(item: Import) -> str | None:
    top = item.module.partition(".")[0]
    if top in IO_MODULES:
        return item.module
    if top == "pathlib" and (not item.names or any(not n.startswith("Pure") for n in item.names)):
        return f"pathlib ({', '.join(item.names) or 'the module'})"
    return None


def _pure_offenders() -> set[str]:
    offenders: set[str] = set()
    seen: set[str] = set()
    todo = sorted(PURE)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for item in _imports(module):
            if not _ours(item.module):
                if (culprit := _io_use(item)) is not None:
                    offenders.add(f"{module} -> {culprit}")
                continue
            for loaded in _loaded(item.module):
                if loaded not in PURE:
                    offenders.add(f"{module} -> {loaded}")
                todo.append(loaded)
    return offenders


def _publish_offenders() -> set[str]:
    allowed = ("unpacked.errors", "unpacked.publish")
    return {
        f"{item.importer} -> {item.module}"
        for item in _all_imports()
        if _within(item.importer, "unpacked.publish")
        and _ours(item.module)
        and item.module != ROOT
        and not any(_within(item.module, ok) for ok in allowed)
    }


def _cli_offenders() -> set[str]:
    return {
        f"{item.importer} -> {item.module}"
        for item in _all_imports()
        if _within(item.module, "unpacked.cli")
        and not _within(item.importer, "unpacked.cli")
        and item.importer != "unpacked.__main__"
    }


def _private_owner(module: str) -> str | None:
    """The package a private module is internal to (``a.b`` for ``a.b._c.d``), else None."""
    parts = module.split(".")
    for index, part in enumerate(parts):
        if _is_private(part):
            return ".".join(parts[:index])
    return None


def _name_owner(module: str) -> str:
    """Where the private names of ``module`` may be used: a package's within the package, a
    private module's within its package, a public module's within itself."""
    if _is_package(module):
        return module
    return _private_owner(module) or module


def _private_offenders() -> set[str]:
    offenders: set[str] = set()
    for item in _all_imports():
        if not _ours(item.module) or item.module not in _sources():
            continue
        owner = _private_owner(item.module)
        if owner is not None and not _within(item.importer, owner):
            offenders.add(f"{item.importer} -> {item.module}")
        private = [name for name in item.names if _is_private(name)]
        if private and not _within(item.importer, _name_owner(item.module)):
            offenders |= {f"{item.importer} -> {item.module}.{name}" for name in private}
    return offenders


def _line_offenders() -> set[str]:
    return {
        str(path.relative_to(SRC))
        for path in _sources().values()
        if len(path.read_text().splitlines()) > MAX_LINES
    }


def _complexity_offenders() -> set[str]:
    offenders: set[str] = set()
    for path in _sources().values():
        for function in lizard.analyze_file(str(path)).function_list:
            if function.cyclomatic_complexity > MAX_COMPLEXITY:
                where = f"{path.relative_to(SRC)}:{function.name}"
                offenders.add(f"{where} ({function.cyclomatic_complexity})")
    return offenders


RULES = {
    "pure": _pure_offenders,
    "publish": _publish_offenders,
    "cli": _cli_offenders,
    "private": _private_offenders,
    "lines": _line_offenders,
    "complexity": _complexity_offenders,
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_structure_rule(rule: str) -> None:
    offenders = RULES[rule]()
    known = KNOWN[rule]
    assert sorted(offenders - known) == [], f"new offenders of the {rule!r} rule"
    assert sorted(known - offenders) == [], f"fixed: remove these from KNOWN[{rule!r}]"


# --- the checker itself: each rule sees what it is there to see ------------------------------


def test_the_sources_are_found_and_read() -> None:
    assert {"unpacked.cli", "unpacked.loop", "unpacked.publish._base"} <= set(_sources())
    assert Import("unpacked.loop", "unpacked.events", ("CycleDone", "EventCallback", "emit")) in (
        _imports("unpacked.loop")
    )
    assert Import("unpacked.cli._wishlist", "unpacked.cli._render", ()) in (
        _imports("unpacked.cli._wishlist")
    )


def test_type_checking_imports_are_left_out() -> None:
    # events names batch's types for annotations only; batch is not pure
    assert all(item.module != "unpacked.batch" for item in _imports("unpacked.events"))


def test_the_rules_catch_what_they_are_for(monkeypatch: pytest.MonkeyPatch) -> None:
    planted = {
        "unpacked.layout": Import("unpacked.layout", "unpacked.batch", ("BatchReport",)),
        "unpacked.reference": Import("unpacked.reference", "pathlib", ("Path",)),
        "unpacked.publish._base": Import("unpacked.publish._base", "unpacked.wishlist", ()),
        "unpacked.batch": Import("unpacked.batch", "unpacked.cli._render", ()),
        "unpacked.stats": Import("unpacked.stats", "unpacked.verify", ("_private",)),
    }
    real = _imports

    def with_planted(module: str) -> tuple[Import, ...]:
        extra = planted.get(module)
        return real(module) + ((extra,) if extra else ())

    monkeypatch.setitem(globals(), "_imports", with_planted)
    assert "unpacked.layout -> unpacked.batch" in _pure_offenders()
    assert "unpacked.reference -> pathlib (Path)" in _pure_offenders()
    assert "unpacked.publish._base -> unpacked.wishlist" in _publish_offenders()
    assert "unpacked.batch -> unpacked.cli._render" in _cli_offenders()
    private = _private_offenders()
    assert "unpacked.batch -> unpacked.cli._render" in private
    assert "unpacked.stats -> unpacked.verify._private" in private


def test_lizard_counts_the_branches_of_python() -> None:
    branches = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(10))
    code = f"def planted(x):\n{branches}    return -1\n"
    (function,) = lizard.analyze_file.analyze_source_code("planted.py", code).function_list
    assert function.cyclomatic_complexity == MAX_COMPLEXITY + 1
