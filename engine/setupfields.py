"""How a setup file's values become setup fields: the cattrs converter, its per-field hooks, and references.

The converter structures an ``[exchange]`` table into a
:class:`~engine.config.WebsocketSetup`, a ``[[connections]]`` table into a
:class:`~engine.config.ConnectionSetup` and a ``backoff`` table into a
:class:`~engine.policy.Backoff`, strictly: numbers, booleans and strings as
the fields declare them (no ``"30"`` for a number, no ``1`` for ``true``),
unknown keys refused, callbacks and objects given as ``"module:attribute"``
references (imported here), and each field's attrs validator run as soon as
the field is structured so every bad field is reported, not just the first.
What cannot be structured raises :class:`Problem` (one readable line, without
its place) or the validator's :class:`~engine.errors.ConfigError`; turning
those into lines and loading the file is :mod:`engine.setupfile`.
"""

from __future__ import annotations

import collections.abc
import importlib
import inspect
import ssl
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from engine.config import ConnectionSetup, WebsocketSetup
from engine.errors import ConfigError
from engine.policy import Backoff, ReconnectPolicy
from transports.base import InvalidURL, parse_url

__all__ = ["Problem", "converter", "import_reference", "kind_of"]


class Problem(ValueError):
    """One readable problem found while structuring a value (the message is the line, without its place)."""


# -- references: "module:attribute" -> the object ------------------------------------------------


def kind_of(value: Any) -> str:
    """A value's kind in the file's terms, never its content (strings may be secrets)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def import_reference(value: Any) -> Any:
    """The object a ``"module:attribute"`` string names, imported; a :class:`Problem` says why not."""
    if not isinstance(value, str):
        raise Problem(f"must be a 'module:attribute' reference, not {kind_of(value)}")
    module_name, colon, attribute = value.partition(":")
    if not colon or not module_name.strip() or not attribute.strip():
        raise Problem(f"{value!r} is not a 'module:attribute' reference (like 'mypkg.handlers:on_message')")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise Problem(f"cannot import {value!r}: {exc}") from None
    except (Exception, SystemExit) as exc:  # the module itself failed while importing
        why = f"importing {module_name!r} raised {type(exc).__name__}: {exc}"
        raise Problem(f"cannot import {value!r}: {why}") from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise Problem(f"cannot import {value!r}: {exc}") from None
    return obj


def _is_reference_type(tp: Any) -> bool:
    """Types a file can only give by reference: callables, the policy protocol, an SSL context."""
    return typing.get_origin(tp) is collections.abc.Callable or tp in (ReconnectPolicy, ssl.SSLContext)


# -- strict scalars: no "30" for a number, no 1 for true -----------------------------------------


def _bool(value: Any, _: Any) -> bool:
    if not isinstance(value, bool):
        raise Problem(f"must be true or false, not {kind_of(value)}")
    return value


def _int(value: Any, _: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        shown = f"{value!r}" if isinstance(value, float) else kind_of(value)
        raise Problem(f"must be an integer, not {shown}")
    return value


def _float(value: Any, _: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Problem(f"must be a number, not {kind_of(value)}")
    return value  # an int stays an int: messages show the number as written


def _str(value: Any, _: Any) -> str:
    if not isinstance(value, str):
        raise Problem(f"must be a string, not {kind_of(value)}")
    return value


# -- fields with their own shape in a file ---------------------------------------------------------


def _url(value: Any) -> str:
    url = _str(value, str)
    try:
        parse_url(url)
    except InvalidURL as exc:  # its message shows the URL redacted
        raise Problem(str(exc)) from None
    return url


def _subprotocols(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise Problem("must be a string or a list of strings")
    return tuple(items)


def _extra_headers(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise Problem(f"must be a table of header names to strings, not {kind_of(value)}")
    for name, header_value in value.items():
        if not isinstance(header_value, str):  # the value is not shown: headers carry API keys
            raise Problem(f"the value of {name!r} must be a string, not {kind_of(header_value)}")
    return tuple((str(k), v) for k, v in value.items())


def _on_state_change(value: Any) -> tuple[Any, ...]:
    references = [value] if isinstance(value, str) else value
    if not isinstance(references, list):
        raise Problem(f"must be a 'module:attribute' reference or a list of them, not {kind_of(value)}")
    listeners = []
    for i, reference in enumerate(references):
        try:
            listeners.append(import_reference(reference))
        except Problem as exc:
            raise Problem(f"[{i}] {exc}" if len(references) > 1 else str(exc)) from None
    return tuple(listeners)


#: field name -> hook, for fields whose file form differs from their declared type
_FIELD_SHAPES: dict[str, Callable[[Any], Any]] = {
    "url": _url,
    "subprotocols": _subprotocols,
    "extra_headers": _extra_headers,
    "on_state_change": _on_state_change,
}


# -- the converter ---------------------------------------------------------------------------------


def _optional(tp: Any) -> tuple[bool, Any]:
    """(True, T) for ``T | None``; (False, tp) otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(rest) < len(args) and len(rest) == 1:
            return True, rest[0]
    return False, tp


def _field_hook(cls: type[Any], field: attrs.Attribute[Any]) -> Callable[[Any, Any], Any]:
    """Structure one field's value, then run its attrs validator at once (so every bad field is reported)."""
    shape = _FIELD_SHAPES.get(field.name) if cls is ConnectionSetup else None
    nullable, inner = _optional(field.type)

    def hook(value: Any, _: Any) -> Any:
        if value is None and nullable:
            structured = None
        elif shape is not None:
            structured = shape(value)
        else:
            structured = converter.structure(value, inner)
        if field.converter is not None and inspect.isfunction(field.converter):
            structured = field.converter(structured)
        if field.validator is not None:
            stub = object.__new__(cls)  # validators name the class from the instance, nothing more
            try:
                field.validator(stub, field, structured)
            except ConfigError:
                raise
            except Exception:  # a validator that reads other fields: __init__ runs it again with them
                pass
        return structured

    return hook


def _table_hook(cls: type[Any]) -> Callable[[Any, Any], Any]:
    overrides = {f.name: override(struct_hook=_field_hook(cls, f)) for f in attrs.fields(cls) if f.init}
    structure_fields = make_dict_structure_fn(cls, converter, **overrides)  # type: ignore[arg-type]

    def hook(value: Any, tp: Any) -> Any:
        if not isinstance(value, Mapping):
            raise Problem(f"must be a table, not {kind_of(value)}")
        return structure_fields(value, tp)

    return hook


converter = cattrs.Converter(forbid_extra_keys=True)
converter.register_structure_hook(bool, _bool)
converter.register_structure_hook(int, _int)
converter.register_structure_hook(float, _float)
converter.register_structure_hook(str, _str)
converter.register_structure_hook_func(_is_reference_type, lambda value, _: import_reference(value))
for _cls in (Backoff, ConnectionSetup, WebsocketSetup):
    attrs.resolve_types(_cls)
    converter.register_structure_hook(_cls, _table_hook(_cls))
