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
from typing import Any

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
             "dict": "a mapping", "list": "a list", "tristate": "auto, true or false"}


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


def coerce(value: Any, annotation: Any, name: str, owner: str | None = None, expected: str | None = None) -> Any:
    """``value`` as the declared type ``annotation`` (a field's type), or ``ValueError`` naming ``name``.

    Strings are read as their type would be written (``"3"`` -> 3, ``"1e-3"`` -> 0.001, ``"yes"`` ->
    True); a bool is never an integer; an integer-valued float is an integer. ``owner`` (e.g.
    ``task 'bit-xor'``) prefixes the message and names the declared type instead of describing it.
    """
    kind, optional = base_kind(annotation)

    def fail(detail: str = ""):
        if owner:
            return ValueError(f"{owner}: option {name!r} must be {type_name(annotation)}, got {value!r}{detail}")
        what_text = expected or _EXPECTED.get(kind, type_name(annotation))
        return ValueError(f"option {name!r} must be {what_text}, got {value!r}{detail}")

    if value is None or (optional and isinstance(value, str) and value.strip().lower() in NONE_WORDS + ("",)):
        if optional or kind == "any":
            return None
        raise ValueError(f"{owner + ': ' if owner else ''}option {name!r} cannot be empty")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).strip().lower() in TRUE_WORDS + FALSE_WORDS:
            return str(value).strip().lower() in TRUE_WORDS
        raise fail()
    if kind == "tristate":
        if value in ("auto", True, False):
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if text in TRUE_WORDS + FALSE_WORDS:
            return text in TRUE_WORDS
        raise fail()
    if kind == "int":
        if isinstance(value, str):
            value_read = parse_text(value)
        else:
            value_read = value
        if isinstance(value_read, bool) or not isinstance(value_read, (int, float)):
            raise fail()
        if isinstance(value_read, float) and not value_read.is_integer():
            raise fail()
        return int(value_read)
    if kind == "float":
        value_read = parse_text(value) if isinstance(value, str) else value
        if isinstance(value_read, bool) or not isinstance(value_read, (int, float)):
            raise fail()
        return float(value_read)
    if kind == "str":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise fail()
        return str(value)
    if kind == "dict":
        if not isinstance(value, dict):
            raise fail()
        return value
    if kind == "list":
        if not isinstance(value, (list, tuple)):
            raise fail()
        return list(value)
    if kind == "str_or_list":
        if isinstance(value, str):
            return value
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise fail()
    return value


def declared(cls: type) -> dict[str, dataclasses.Field]:
    """The fields of an options dataclass, by name."""
    return {f.name: f for f in dataclasses.fields(cls)}


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None
