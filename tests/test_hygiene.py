"""The package sources touch no dependency's private names.

A private name is one with a leading underscore that is not a dunder
(``__init__``) or an Enum-style sunder (``_missing_``). Private names of
``engine``, ``machines`` and ``transports`` themselves are fine; those of
anything else (anyio, transitions, wsproto, h11, attrs, cattrs, orjson, trio,
asyncio and the rest of the standard library) are not: they change without
notice between releases and break the tested version ranges.

Checked from the syntax tree of every module (and, for subclasses, the
imported classes themselves):

- imports: ``import anyio._backends``, ``from anyio._backends._asyncio import X``,
  ``from asyncio import _enter_task``;
- attribute chains on an imported name: ``asyncio.tasks._enter_task``,
  ``Machine._process``;
- any attribute (or ``getattr``/``setattr``/``hasattr``/``delattr`` string)
  with a private name that no package module defines: ``scope._tasks``,
  ``loop._ready``;
- a class that derives from a dependency's class and defines, or reaches
  through ``self``/``cls``/``super()``, a private name that the dependency's
  class has: overriding ``Transition._change_state``.

The last rules of this file check the checker on small sources, so that it
keeps catching what it is meant to once the packages are clean.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
OWN_PACKAGES = ("engine", "machines", "transports")

# Underscore names that are documented public API of the standard library.
PUBLIC_UNDERSCORE = frozenset({"_asdict", "_replace", "_fields", "_field_defaults", "_make", "_getframe", "_exit"})

_ATTR_FUNCTIONS = frozenset({"getattr", "setattr", "hasattr", "delattr"})


class Violation(NamedTuple):
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def is_private(name: str) -> bool:
    if not name.startswith("_") or name == "_" or name in PUBLIC_UNDERSCORE:
        return False
    if name.startswith("__") and name.endswith("__"):
        return False  # dunder
    if len(name) > 2 and name.endswith("_") and not name.startswith("__") and not name.endswith("__"):
        return False  # sunder (Enum's _missing_, _value_, ...)
    return True


def is_own(module: str) -> bool:
    return module.split(".")[0] in OWN_PACKAGES


def source_files() -> list[Path]:
    return sorted(p for package in OWN_PACKAGES for p in (ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _attr_string(node: ast.Call) -> str | None:
    """The name in ``getattr(x, "_name")``-like calls and ``object.__setattr__(x, "_name", v)``."""
    func = node.func
    named = isinstance(func, ast.Name) and func.id in _ATTR_FUNCTIONS
    dunder = isinstance(func, ast.Attribute) and func.attr in ("__setattr__", "__getattribute__", "__delattr__")
    if (named or dunder) and len(node.args) >= 2:
        arg = node.args[1]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
    return None


def _is_self_target(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id in ("self", "cls")


def defined_private_names(trees: Iterable[ast.AST]) -> set[str]:
    """Private names the packages themselves define: functions, classes, assigned
    names, ``self._x``/``cls._x`` attributes, ``__slots__`` entries and
    ``setattr(self, "_x", ...)`` strings."""
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _is_self_target(node.value):
                names.add(node.attr)
            elif isinstance(node, ast.alias) and node.asname:
                names.add(node.asname)
            elif isinstance(node, ast.Call) and node.args and _is_self_target(node.args[0]):
                name = _attr_string(node)
                if name is not None:
                    names.add(name)
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets):
                for const in ast.walk(node.value):
                    if isinstance(const, ast.Constant) and isinstance(const.value, str):
                        names.add(const.value)
    return {n for n in names if is_private(n)}


def _external_bindings(tree: ast.AST) -> dict[str, str]:
    """Local names bound by imports from outside the packages -> what they name."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if is_own(alias.name):
                    continue
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    bound[top] = top
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and not is_own(node.module):
            for alias in node.names:
                if alias.name != "*":
                    bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return bound


def _chain(node: ast.Attribute) -> tuple[ast.expr, list[str]]:
    """``a.b.c`` -> (Name a, ["b", "c"])."""
    attrs: list[str] = []
    current: ast.expr = node
    while isinstance(current, ast.Attribute):
        attrs.append(current.attr)
        current = current.value
    return current, attrs[::-1]


def _import_violations(tree: ast.AST, path: str) -> Iterator[Violation]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not is_own(alias.name) and any(is_private(part) for part in alias.name.split(".")):
                    yield Violation(path, node.lineno, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and not is_own(node.module):
            private_module = any(is_private(part) for part in node.module.split("."))
            for alias in node.names:
                if private_module or is_private(alias.name):
                    yield Violation(path, node.lineno, f"from {node.module} import {alias.name}")


def _attribute_violations(tree: ast.AST, path: str, own: set[str]) -> Iterator[Violation]:
    bound = _external_bindings(tree)
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            root, attrs = _chain(node)
            if isinstance(root, ast.Name) and root.id in bound and id(node) not in inner:
                for i, attr in enumerate(attrs):
                    if is_private(attr):
                        dotted = ".".join([bound[root.id], *attrs[: i + 1]])
                        yield Violation(path, node.lineno, f"{dotted} (a private name of an imported module)")
                        break
            if is_private(node.attr) and node.attr not in own:
                yield Violation(path, node.lineno, f".{node.attr} (not defined by any package module)")
        elif isinstance(node, ast.Call):
            name = _attr_string(node)
            if name is not None and is_private(name) and name not in own:
                yield Violation(path, node.lineno, f'"{name}" (not defined by any package module)')


def _class_body_names(cls: ast.ClassDef) -> Iterator[tuple[int, str, str]]:
    """(line, name, how) for private names a class defines or reaches on itself."""
    for stmt in cls.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield stmt.lineno, stmt.name, "defines"
        elif isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    yield stmt.lineno, target.id, "defines"
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            yield stmt.lineno, stmt.target.id, "defines"
    for stmt in cls.body:
        if isinstance(stmt, ast.ClassDef):
            continue
        for node in ast.walk(stmt):
            if isinstance(node, ast.Attribute):
                value = node.value
                is_super = (
                    isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super"
                )
                if _is_self_target(value) or is_super:
                    yield node.lineno, node.attr, "uses"


def _resolve(namespace: dict[str, Any], qualname: list[str]) -> Any:
    obj: Any = None
    for i, part in enumerate(qualname):
        obj = namespace.get(part) if i == 0 else getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _subclass_violations(tree: ast.AST, path: str, namespace: dict[str, Any]) -> Iterator[Violation]:
    """Classes (at module level or nested in classes) whose dependency bases have
    the private names they define or reach."""

    def visit(body: list[ast.stmt], outer: list[str]) -> Iterator[Violation]:
        for stmt in body:
            if not isinstance(stmt, ast.ClassDef):
                continue
            qualname = [*outer, stmt.name]
            cls = _resolve(namespace, qualname)
            if isinstance(cls, type):
                foreign = [base for base in cls.__mro__[1:] if not is_own(base.__module__) and base is not object]
                for line, name, how in _class_body_names(stmt):
                    if not is_private(name):
                        continue
                    for base in foreign:
                        if name in vars(base):
                            where = f"{base.__module__}.{base.__qualname__}"
                            yield Violation(path, line, f"{'.'.join(qualname)} {how} {where}.{name}")
                            break
            yield from visit(stmt.body, qualname)

    yield from visit(tree.body if isinstance(tree, ast.Module) else [], [])


def check(
    sources: dict[str, str], namespaces: dict[str, dict[str, Any]] | None = None
) -> list[Violation]:
    """Violations in ``{path: source}``; ``namespaces[path]`` is the module's
    globals, to resolve classes for the subclass rule."""
    trees = {path: ast.parse(source, path) for path, source in sources.items()}
    own = defined_private_names(trees.values())
    found: list[Violation] = []
    for path, tree in trees.items():
        found += _import_violations(tree, path)
        found += _attribute_violations(tree, path, own)
        if namespaces and path in namespaces:
            found += _subclass_violations(tree, path, namespaces[path])
    return sorted(set(found))


def test_packages_touch_no_private_name_of_a_dependency() -> None:
    files = source_files()
    assert len(files) > 10, files
    sources = {str(p.relative_to(ROOT)): p.read_text() for p in files}
    namespaces = {str(p.relative_to(ROOT)): vars(importlib.import_module(module_name(p))) for p in files}
    violations = check(sources, namespaces)
    assert not violations, "private names of dependencies used:\n" + "\n".join(map(str, violations))


# --- the checker itself ------------------------------------------------------


def _check_one(source: str, run: bool = False) -> list[str]:
    namespaces = None
    if run:
        namespace: dict[str, Any] = {"__name__": "snippet"}
        exec(compile(source, "snippet.py", "exec"), namespace)  # noqa: S102
        namespaces = {"snippet.py": namespace}
    return [v.what for v in check({"snippet.py": source}, namespaces)]


@pytest.mark.parametrize(
    "source",
    [
        "from anyio._backends._asyncio import TaskState\n",
        "from anyio._backends import _asyncio\n",
        "import anyio._backends._asyncio as backend\n",
        "from asyncio.tasks import _enter_task\n",
        "from asyncio import _get_running_loop\n",
        "import asyncio\nasyncio.tasks._enter_task\n",
        "import asyncio.tasks as t\nt._current_tasks.get(None)\n",
        "from transitions import Machine\nMachine._process\n",
        "import anyio\nscope = anyio.CancelScope()\nscope._tasks.add(1)\n",
        "def f(loop):\n    return len(loop._ready)\n",
        "def f(task):\n    return getattr(task, '_coro')\n",
    ],
)
def test_checker_flags_private_names_of_dependencies(source: str) -> None:
    assert _check_one(source), source


@pytest.mark.parametrize(
    "source",
    [
        "class A:\n    __slots__ = ('_x',)\n    def __init__(self):\n        self._x = 1\n    def get(self):\n        return self._x\n",
        "def _helper():\n    pass\n\nclass B:\n    def run(self, other):\n        return other._helper\n",
        "import anyio\nanyio.__name__\n",
        "import enum\nclass E(enum.Enum):\n    A = 1\n    @classmethod\n    def _missing_(cls, value):\n        return cls.A\n",
        "from typing import NamedTuple\nclass P(NamedTuple):\n    x: int\nP(1)._replace(x=2)\n",
        "class C:\n    def __init__(self):\n        object.__setattr__(self, '_url', 1)\n    def u(self):\n        return self._url\n",
    ],
)
def test_checker_passes_own_private_names(source: str) -> None:
    assert _check_one(source, run=True) == [], source


def test_checker_passes_private_imports_from_the_packages() -> None:
    assert _check_one("from engine import _private_thing\nimport machines._x as m\n") == []


def test_checker_flags_overriding_a_private_method_of_a_dependency_class() -> None:
    source = (
        "from transitions.core import Transition\n"
        "class T(Transition):\n"
        "    def _change_state(self, event_data):\n"
        "        return super()._change_state(event_data)\n"
    )
    found = _check_one(source, run=True)
    assert any("defines transitions.core.Transition._change_state" in v for v in found), found
    assert any("uses transitions.core.Transition._change_state" in v for v in found), found


def test_checker_flags_the_anyio_bookkeeping_engine_tasks_used() -> None:
    source = (
        "import anyio\n"
        "try:\n"
        "    from anyio._backends._asyncio import TaskState as _TaskState\n"
        "    from anyio._backends._asyncio import _task_states\n"
        "except ImportError:\n"
        "    _TaskState = None\n"
        "def start(task, host):\n"
        "    body = anyio.CancelScope()\n"
        "    _task_states[task] = _TaskState(id(host), body)\n"
        "    body._tasks.add(task)\n"
    )
    found = _check_one(source)
    assert "from anyio._backends._asyncio import TaskState" in found
    assert "from anyio._backends._asyncio import _task_states" in found
    assert any(v.startswith("._tasks") for v in found), found
