"""Declared options: one field helper per role, and the one value coercer.

Every option of a run (``fpt.config.RunConfig``) is declared once, as a dataclass field made by
:func:`what`, :func:`how` or :func:`when`, with its default and its help text. The role says
what changing the option does:

* ``what`` defines the run (task, backbone, freezing, optimiser...): ``--resume`` refuses a
  different value, and a sweep treats trials that differ in it as different settings;
* ``how`` changes only how the run executes (device, threads, precision, compile, run directory...):
  ``--resume`` accepts any value, and sweeps ignore it when they compare a trial with its directory;
* ``when`` says how long training runs and when it is checked (``steps``, ``eval_every``,
  ``stop_at_target``): ``--resume`` may change it (to extend a run), sweeps compare it.

The command-line flags, ``--resume``'s rules, the sweep's comparison and the option tables
(docs/options.md, the README) are all derived from these declarations (``fpt.cli``, ``fpt.sweep``, ``tests/test_docs.py``).

:func:`coerce` turns a value from YAML, the command line (``-o KEY=VALUE``, ``--set``) or Python
into the declared type, or raises ``ValueError`` naming the option. Task options
(``Task.Options``) use the same function.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import yaml

ROLES = ("what", "how", "when")
TRUE_WORDS = ("true", "on", "yes", "1")
FALSE_WORDS = ("false", "off", "no", "0")
NONE_WORDS = ("none", "null", "~")


def _field(role: str, default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with its help text and role. ``default`` may be a type (``dict``) for a
    mutable default. ``meta``: ``choices`` (allowed values, shown in --help), ``expected`` (how to
    describe the type in errors), ``flag=False`` (a YAML key without a command-line flag)."""
    metadata = {"help": help, "role": role, **meta}
    if default in (dict, list):
        return dataclasses.field(default_factory=default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def what(default: Any, help: str, **meta: Any) -> Any:
    """An option that defines the run (see the module doc)."""
    return _field("what", default, help, **meta)


def how(default: Any, help: str, **meta: Any) -> Any:
    """An option that changes only how the run executes."""
    return _field("how", default, help, **meta)


def when(default: Any, help: str, **meta: Any) -> Any:
    """An option that says how long training runs and when it is checked (may change on resume)."""
    return _field("when", default, help, **meta)


# -- the coercer -----------------------------------------------------------------------------
_EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
             "dict": "a mapping", "list": "a list", "tristate": "auto, true or false",
             "str_or_list": "a string or a list of strings"}


def type_name(annotation: Any) -> str:
    """A field's annotation as compact text: ``int``, ``str|None``, ``dict[str,Any]``, ``tristate``."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = text.replace(" ", "").replace("typing.", "")
    if text.startswith("Optional[") and text.endswith("]"):
        text = text[len("Optional["):-1] + "|None"
    return text


def base_kind(annotation: Any) -> tuple[str, bool]:
    """(``int`` | ``float`` | ``bool`` | ``str`` | ``dict`` | ``list`` | ``tristate`` | ``any``, optional)."""
    text = type_name(annotation)
    optional = text.endswith("|None")
    text = text[: -len("|None")] if optional else text
    if text == "str|list[str]":
        return "str_or_list", optional
    for kind in ("tristate", "dict", "list"):
        if text.lower().startswith(kind):
            return kind, optional
    return (text if text in ("int", "float", "bool", "str") else "any"), optional


def parse_text(text: str) -> Any:
    """A command-line value as YAML reads it (numbers, booleans, lists), except that numbers YAML 1.1
    leaves as strings (``1e-3``) are numbers. Never evaluates anything (``safe_load``)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _words(value: Any) -> str | None:
    return str(value).strip().lower() if isinstance(value, (str, int)) and not isinstance(value, float) else None


def _as_bool(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    word = _words(value)
    if word in TRUE_WORDS + FALSE_WORDS:
        return word in TRUE_WORDS
    raise TypeError


def _as_tristate(value: Any) -> Any:
    return "auto" if str(value).strip().lower() == "auto" else _as_bool(value)


def _as_number(value: Any, integer: bool) -> Any:
    read = parse_text(value) if isinstance(value, str) else value
    if isinstance(read, bool) or not isinstance(read, (int, float)):
        raise TypeError
    if integer:
        if isinstance(read, float) and not read.is_integer():
            raise TypeError
        return int(read)
    return float(read)


def _as_str(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError
    return str(value)


def _as_str_or_list(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise TypeError


def _of_type(kind: type) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not isinstance(value, kind):
            raise TypeError
        return list(value) if kind is not dict else value
    return check


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "bool": _as_bool, "tristate": _as_tristate, "int": lambda v: _as_number(v, integer=True),
    "float": lambda v: _as_number(v, integer=False), "str": _as_str, "str_or_list": _as_str_or_list,
    "dict": _of_type(dict), "list": _of_type((list, tuple)), "any": lambda v: v,
}


def probability_or_keep(value: Any) -> Any:
    """A dropout setting: a probability in [0, 1), or the word ``keep`` (the backbone's own rates)."""
    if isinstance(value, str) and value.strip().lower() == "keep":
        return "keep"
    p = _as_number(value, integer=False)
    if not 0.0 <= p < 1.0:
        raise ValueError
    return p


def coerce(value: Any, annotation: Any, name: str, owner: str | None = None, expected: str | None = None,
           convert: Callable[[Any], Any] | None = None) -> Any:
    """``value`` as the declared type ``annotation`` (a field's type), or ``ValueError`` naming ``name``.

    Strings are read as their type would be written (``"3"`` -> 3, ``"1e-3"`` -> 0.001, ``"yes"`` ->
    True); a bool is never an integer; an integer-valued float is an integer. ``owner`` (e.g.
    ``task 'bit-xor'``) prefixes the message and names the declared type instead of describing it.
    ``convert``: the field's own converter (declared as ``convert=`` in its metadata), instead of its type's.
    """
    kind, optional = base_kind(annotation)
    prefix = f"{owner}: " if owner else ""
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in NONE_WORDS + ("",)):
        if optional or kind == "any":
            return None
        raise ValueError(f"{prefix}option {name!r} cannot be empty")
    try:
        return (convert or _CONVERTERS[kind])(value)
    except (TypeError, ValueError):
        what_text = type_name(annotation) if owner else (expected or _EXPECTED.get(kind, type_name(annotation)))
        raise ValueError(f"{prefix}option {name!r} must be {what_text}, got {value!r}") from None


def declared(cls: type) -> dict[str, dataclasses.Field]:
    """The fields of an options dataclass, by name."""
    return {f.name: f for f in dataclasses.fields(cls)}


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None
