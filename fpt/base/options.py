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
(docs/options.md, the README) are all derived from these declarations (``fpt.cli``, ``fpt.experiments``, ``tests/test_docs.py``).

:func:`coerce` turns a value from YAML, the command line (``-o KEY=VALUE``, ``--set``) or Python
into the declared type, or raises ``ValueError`` naming the option. Task options
(``Task.Options``) use the same function.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import yaml

ROLES = ("what", "how", "when")
TRUE_WORDS = ("true", "on", "yes", "1")
FALSE_WORDS = ("false", "off", "no", "0")
NONE_WORDS = ("none", "null", "~")


def _field(role: str, default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with its help text and role. ``default`` may be a type (``dict``) for a
    mutable default. ``meta``: ``choices`` (allowed values, shown in --help), ``bounds`` (the numbers
    it accepts: :func:`at_least`, :func:`above`, :func:`between`), ``max_length`` (of a string),
    ``expected`` (how to describe the type in errors), ``convert`` (its own converter), ``flag=False``
    (a YAML key without a command-line flag)."""
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


def bounded(default: Any, bounds: "Bounds") -> Any:
    """A task option's default with the numbers it accepts (``Task.Options``; checked by ``make_options``)::

        n_bits: int = bounded(5, at_least(1))  # length of each string
    """
    return dataclasses.field(default=default, metadata={"bounds": bounds})


# -- the numbers an option accepts ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Bounds:
    """An interval of accepted numbers (``None``: unbounded on that side). Every number an option
    takes must also be finite (no inf, no NaN), bounded or not."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: ``low`` itself is refused
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def describe(self) -> str:
        """``>= 1``, ``> 0``, ``in [0, 1)``, ``in 0..4294967295``."""
        low, high = _num(self.low), _num(self.high)
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}" if self.low is not None else ""
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {high}"
        if isinstance(self.low, int) and isinstance(self.high, int) and not (self.low_open or self.high_open):
            return f"in {low}..{high}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"

    def outside(self, integer: bool) -> list[Any]:
        """Values just outside (for tests: tests/test_cli.py generates its bad-input table from these)."""
        step = 1 if integer else 0.5
        out = []
        if self.low is not None:
            out.append(self.low if self.low_open else self.low - step)
        if self.high is not None:
            out.append(self.high if self.high_open else self.high + step)
        return out


def _num(x: float | None) -> str:
    return "" if x is None else (f"{x:g}" if isinstance(x, float) else str(x))


def at_least(low: float) -> Bounds:
    return Bounds(low=low)


def above(low: float) -> Bounds:
    return Bounds(low=low, low_open=True)


def between(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Bounds:
    return Bounds(low, high, low_open, high_open)


SEEDS = between(0, 2**32 - 1)  # what numpy and torch accept as a seed
FRACTION = between(0.0, 1.0, low_open=True, high_open=True)  # a share of a split: (0, 1)
PROBABILITY = between(0.0, 1.0, high_open=True)  # [0, 1)
MAX_TEXT = 4096  # characters of a string option (names, paths) unless declared otherwise (max_length)
MAX_ITEMS = 256  # entries of a list or mapping option, at every level
MAX_NODES = 4096  # values in one option, all levels together
MAX_DEPTH = 4  # levels of nesting in one option


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
           convert: Callable[[Any], Any] | None = None, bounds: Bounds | None = None, choices: Any = None,
           max_length: int | None = None, flag: str | None = None) -> Any:
    """``value`` as the declared type ``annotation`` (a field's type), or ``ValueError`` naming ``name``.

    Strings are read as their type would be written (``"3"`` -> 3, ``"1e-3"`` -> 0.001, ``"yes"`` ->
    True); a bool is never an integer; an integer-valued float is an integer. ``owner`` (e.g.
    ``task 'bit-xor'``) prefixes the message and names the declared type instead of describing it.
    ``convert``: the field's own converter (declared as ``convert=`` in its metadata), instead of its type's.
    Then the checks every value passes: a number is finite and within ``bounds``; a value is one of
    ``choices``; a string has at most ``max_length`` characters (default ``MAX_TEXT``), a list or
    mapping at most ``MAX_ITEMS`` entries. ``flag``: the command-line flag, named in the message too.
    """
    kind, optional = base_kind(annotation)
    prefix = f"{owner}: " if owner else ""
    label = f"option {name!r}" + (f" ({flag})" if flag else "")
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in NONE_WORDS + ("",)):
        if optional or kind == "any":
            return None
        raise ValueError(f"{prefix}{label} cannot be empty")
    what_text = type_name(annotation) if owner else (expected or _EXPECTED.get(kind, type_name(annotation)))
    _check_size(value, f"{prefix}{label}", max_length)
    try:
        converted = (convert or _CONVERTERS[kind])(value)
    except (TypeError, ValueError):
        raise ValueError(f"{prefix}{label} must be {what_text}, got {_show(value)}") from None
    if choices and converted not in choices:
        raise ValueError(f"{prefix}{label} must be {one_of(choices)}, got {_show(value)}")
    if isinstance(converted, (int, float)) and not isinstance(converted, bool):
        finite = not isinstance(converted, float) or math.isfinite(converted)
        if not finite or (bounds is not None and converted not in bounds):
            number = "an integer" if isinstance(converted, int) else "a finite number"
            rule = f"{number} {bounds.describe()}" if bounds is not None else number
            raise ValueError(f"{prefix}{label} must be {rule}, got {_show(value)}")
    return converted


def coerce_field(value: Any, f: dataclasses.Field, owner: str | None = None, flag: str | None = None) -> Any:
    """:func:`coerce` with everything the field declares (type, bounds, choices, converter, length)."""
    meta = f.metadata
    return coerce(value, f.type, f.name, owner=owner, expected=meta.get("expected"), convert=meta.get("convert"),
                  bounds=meta.get("bounds"), choices=meta.get("choices"), max_length=meta.get("max_length"), flag=flag)


def one_of(choices) -> str:
    quoted = [repr(c) for c in choices]
    return "one of " + ", ".join(quoted) if len(quoted) > 6 else (
        ", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else quoted[0])


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"


def _check_size(value: Any, label: str, max_length: int | None) -> None:
    """Strings, lists and mappings of bounded size (a label is a short string): at most ``MAX_ITEMS``
    entries per list or mapping, ``MAX_NODES`` values in all, ``MAX_DEPTH`` levels."""
    seen = 0

    def visit(item: Any, depth: int, limit: int | None) -> None:
        nonlocal seen
        seen += 1
        if seen > MAX_NODES or depth > MAX_DEPTH:
            raise ValueError(f"{label} is too large (more than {MAX_NODES} values or {MAX_DEPTH} levels deep)")
        if isinstance(item, str):
            if len(item) > (limit or MAX_TEXT):
                raise ValueError(f"{label} is {len(item):,} characters long; at most {limit or MAX_TEXT:,} are accepted")
        elif isinstance(item, (list, tuple, dict)):
            if len(item) > MAX_ITEMS:
                raise ValueError(f"{label} holds {len(item):,} entries; at most {MAX_ITEMS} are accepted")
            for key, sub in (item.items() if isinstance(item, dict) else ((None, v) for v in item)):
                if key is not None:
                    visit(key, depth + 1, None)
                visit(sub, depth + 1, None)

    visit(value, 0, max_length)


def declared(cls: type) -> dict[str, dataclasses.Field]:
    """The fields of an options dataclass, by name."""
    return {f.name: f for f in dataclasses.fields(cls)}


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None
