"""Manager setups from a TOML or JSON file (or a plain mapping), with one readable line per problem.

::

    ws, connections = load_setups("gateio.toml")
    manager = Manager(ws)
    for setup in connections:
        manager.add_connection(setup)

The file holds one ``[exchange]`` table (the fields of
:class:`~engine.config.WebsocketSetup`) and one ``[[connections]]`` table per
:class:`~engine.config.ConnectionSetup`, keys named as the fields::

    [exchange]
    exchange = "gateio"
    use_multi_connection_management = false      # single style: the callbacks below serve every connection
    max_subscriptions_per_connection = 240
    traffic_timeout = 30
    connection_monitor_interval = 2
    handler = "mypkg.handlers:on_message"        # callbacks are "module:attribute" references
    subscriber = "mypkg.gate:subscribe"          # (an async def where the setup needs one)

    [[connections]]
    name = "spot"
    url = "wss://api.gateio.ws/ws/v4/"
    pong_timeout = 5
    backoff = { initial = 1, maximum = 60, max_attempts = 20 }

    [[connections]]
    name = "orders"
    url = "wss://api.gateio.ws/ws/v4/"
    authenticated = true
    connector = "mypkg.gate:login"
    subscriptions_not_required = true             # requests only: no subscriber needed
    extra_headers = { X-Gate-Channel-Id = "mine" }

The same shape in JSON: ``{"exchange": {...}, "connections": [{...}, ...]}``.

Values:

- numbers, booleans and strings as the fields declare them (no quietly
  converted ``"30"`` for a number, no ``1`` for ``true``);
- callbacks (``handler``, ``batch_handler``, ``connector``, ``subscriber``,
  ``unsubscriber``, ``generate_subscriptions``, ``response_key``,
  ``on_state_change`` (one or a list), and ``policy`` / ``ssl_context``,
  which name an object) are ``"module:attribute"`` strings, imported when
  the file is loaded (``"pkg.mod:Class.attr"`` reaches into the object);
- ``backoff`` is a table of :class:`~engine.policy.Backoff` fields;
  ``extra_headers`` a table of header names to strings; ``subprotocols`` a
  string or a list of strings.

:func:`load_setups` checks everything before it raises, each ``[[connections]]``
table on its own, so three mistakes in three places are three lines of one
:class:`SetupFileError` (``.problems``)::

    exchange.handler: cannot import 'mypkg.handlers:on_mesage': module 'mypkg.handlers' has no attribute 'on_mesage'
    connections[0]: unknown key 'tiemout'
    connections[1].traffic_timeout: must be a positive number, not -5

It also checks what :meth:`Manager.add_connection <engine.manager.Manager.add_connection>`
checks, by the same code (:meth:`engine.slots.Group.complete`): every
connection ends up with a handler (its own, or in single style the one in
``[exchange]``) and a subscriber unless ``subscriptions_not_required = true``;
and no two connections share a ``name``. Messages show a URL only redacted
(scheme, host and port) and never a header value. ``wirestate check-config
FILE`` runs all this from the command line.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from cattrs.errors import (
    AttributeValidationNote,
    BaseValidationError,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
)

from engine.config import ConnectionSetup, WebsocketSetup
from engine.errors import ConfigError
from engine.policy import Backoff
from engine.setupfields import Problem, converter, kind_of

__all__ = ["SetupFileError", "load_setups"]

#: The keys of the top-level table.
_TOP_KEYS = ("exchange", "connections")


class SetupFileError(ConfigError):
    """A setup file (or mapping) is unusable; ``problems`` holds one line per mistake.

    ``source`` is the file's path as given (None for a mapping). Each problem
    starts with where it is (``connections[1].traffic_timeout: ...``), except
    those about the file as a whole (cannot be read, not valid TOML).
    """

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = source if source is not None else "setup"
        if len(self.problems) == 1:
            message = f"{where}: {self.problems[0]}"
        else:
            message = f"{len(self.problems)} problems in {where}:\n" + "\n".join(f"  {p}" for p in self.problems)
        super().__init__(message)


# -- errors -> lines -------------------------------------------------------------------------------

_CLASS_NAMES = "|".join(c.__name__ for c in (Backoff, ConnectionSetup, WebsocketSetup))
# "ConnectionSetup.url: ...", "ConnectionSetup.traffic_timeout must be ...", "WebsocketSetup takes one of ..."
_FIELD_MESSAGE = re.compile(rf"(?:{_CLASS_NAMES})\.(\w+)(?::\s*|\s+(?=must |needs ))(.*)", re.DOTALL)
_CLASS_MESSAGE = re.compile(rf"(?:{_CLASS_NAMES})\s+(.*)", re.DOTALL)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _config_line(path: str, message: str) -> str:
    """A ConfigError of engine.config as ``path.field: problem``."""
    match = _FIELD_MESSAGE.fullmatch(message)
    if match:
        field, rest = match.groups()
        if not path.endswith(f".{field}"):
            path = f"{path}.{field}"
        return f"{path}: {rest}"
    match = _CLASS_MESSAGE.fullmatch(message)
    return f"{path}: {match.group(1) if match else message}"


def _did_you_mean(key: str, known: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for a likely misspelling or a shortened name, else ``""``."""
    longer = [name for name in known if name.startswith(key)]
    near = longer if len(longer) == 1 else difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _unknown_keys(path: str, keys: set[str], cls: type[Any] | None) -> list[str]:
    known = [f.name for f in attrs.fields(cls) if f.init] if cls is not None else []
    return [f"{path}: unknown key {key!r}{_did_you_mean(key, known)}" for key in sorted(keys)]


def _lines(exc: BaseException, path: str) -> list[str]:
    """One line per leaf of a cattrs error tree, each prefixed with where it is."""
    if isinstance(exc, ClassValidationError):
        with_notes, without = exc.group_exceptions()
        lines = []
        for sub, note in with_notes:
            lines += _lines(sub, f"{path}.{note.name}" if isinstance(note, AttributeValidationNote) else path)
        for sub in without:
            lines += _lines(sub, path)
        return lines
    if isinstance(exc, IterableValidationError):
        with_index, without = exc.group_exceptions()
        return [line for sub, note in with_index for line in _lines(sub, f"{path}[{note.index}]")] + [
            line for sub in without for line in _lines(sub, path)
        ]
    if isinstance(exc, ForbiddenExtraKeysError):
        return _unknown_keys(path, set(exc.extra_fields), exc.cl)
    if isinstance(exc, BaseValidationError):
        return [line for sub in exc.exceptions for line in _lines(sub, path)]
    if isinstance(exc, KeyError):  # cattrs: a required key is absent
        return [f"{path}: missing"]
    if isinstance(exc, ConfigError):
        return [_one_line(_config_line(path, str(exc)))]
    if isinstance(exc, Problem):
        return [_one_line(f"{path}: {exc}")]
    return [_one_line(f"{path}: {type(exc).__name__}: {exc}")]


def _structure_table(value: Any, cls: type[Any], path: str) -> tuple[Any, list[str]]:
    """(the setup, []) or (None, its problems)."""
    try:
        return converter.structure(value, cls), []
    except Exception as exc:
        return None, _lines(exc, path) or [f"{path}: invalid {cls.__name__}"]


# -- completeness: what the manager will require ---------------------------------------------------


def _handler_stub(conn: Any, message: Any) -> None:
    """Stands in for a missing handler, to find what else is missing."""


def _missing_callbacks(path: str, setup: ConnectionSetup, ws: WebsocketSetup) -> list[str]:
    """What :meth:`Group.complete` (run by ``Manager.add_connection``) refuses, every problem of it."""
    from engine.slots import Group  # the manager's own rules, not a copy of them

    prefix = f"connection setup {path!r}: "
    where = (
        "set it in this table (multi-connection style: [exchange] callbacks are not used)"
        if ws.use_multi_connection_management
        else "set it in this table or in [exchange]"
    )

    def refusal(candidate: ConnectionSetup) -> str | None:
        try:
            Group.complete(path, candidate, ws)
        except ConfigError as exc:
            message = str(exc).removeprefix(prefix)
            return _one_line(f"{path}: {message} - {where}" if "missing callback" in message else f"{path}: {message}")
        return None

    first = refusal(setup)
    if first is None:
        return []
    lines = [first]
    if "handler" in first and setup.handler is None and setup.batch_handler is None:
        # Group.complete stops at the first refusal: stand in for the handler to hear the next one
        second = refusal(attrs.evolve(setup, handler=_handler_stub))
        if second is not None:
            lines.append(second)
    return lines


# -- loading ---------------------------------------------------------------------------------------


def _read(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        suffix_shown = repr(suffix) if suffix else "a name without a suffix"
        raise SetupFileError([f"cannot tell the format from {suffix_shown}: name it .toml or .json"], str(path))
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SetupFileError([f"cannot read the file: {exc.strerror or exc}"], str(path)) from None
    try:
        if suffix == ".toml":
            return tomllib.loads(raw.decode("utf-8"))
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start})"
        raise SetupFileError([problem], str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise SetupFileError([_one_line(f"invalid TOML: {exc}")], str(path)) from None
    except json.JSONDecodeError as exc:
        raise SetupFileError([_one_line(f"invalid JSON: {exc}")], str(path)) from None
    except RecursionError:
        raise SetupFileError(["invalid: nested too deeply"], str(path)) from None


def load_setups(
    source: Mapping[str, Any] | str | os.PathLike[str],
) -> tuple[WebsocketSetup, list[ConnectionSetup]]:
    """The exchange setup and the connection setups in ``source`` (see the module doc for the shape).

    ``source``: a path ending in ``.toml`` or ``.json``, or a mapping of the
    same shape. Raises :class:`SetupFileError` listing every problem found,
    one line each, and nothing else (an unreadable file or a syntax error is
    one problem too).
    """
    where: str | None = None
    if isinstance(source, Mapping):
        data: Any = source
    elif isinstance(source, (str, os.PathLike)):
        where = os.fspath(source)
        data = _read(Path(where))
    else:
        raise SetupFileError([f"expected a .toml/.json path or a mapping, not {type(source).__name__}"])
    if not isinstance(data, Mapping):
        problem = f"the top level must be an object with exchange and connections, not {kind_of(data)}"
        raise SetupFileError([problem], where)

    problems: list[str] = []
    for key in sorted(set(data) - set(_TOP_KEYS)):
        hint = _did_you_mean(str(key), _TOP_KEYS) or " (expected [exchange] and [[connections]])"
        problems.append(f"unknown top-level key {key!r}{hint}")

    ws: WebsocketSetup | None = None
    if "exchange" not in data:
        problems.append("exchange: missing (an [exchange] table)")
    else:
        ws, found = _structure_table(data["exchange"], WebsocketSetup, "exchange")
        problems += found

    connections: list[ConnectionSetup] = []
    tables = data.get("connections")
    if tables is None:
        problems.append("connections: missing (at least one [[connections]] table)")
    elif not isinstance(tables, list):
        problems.append(f"connections: must be a list of tables ([[connections]]), not {kind_of(tables)}")
    elif not tables:
        problems.append("connections: empty (at least one [[connections]] table)")
    else:
        names: dict[str, str] = {}
        for i, table in enumerate(tables):
            path = f"connections[{i}]"
            setup, found = _structure_table(table, ConnectionSetup, path)
            problems += found
            if setup is None:
                continue
            connections.append(setup)
            if setup.name is not None:
                if setup.name in names:
                    problems.append(f"{path}.name: {setup.name!r} is already the name of {names[setup.name]}")
                names.setdefault(setup.name, path)
            if ws is not None:  # (without a valid [exchange], what a connection lacks is unknown)
                problems += _missing_callbacks(path, setup, ws)

    if problems:
        raise SetupFileError(problems, where)
    assert ws is not None
    return ws, connections
