"""The ``.ts`` time-series format of the UCR / UEA / TSER archives: the reader.

A ``.ts`` file is a header of ``@key value`` lines, ``@data``, then one case per line::

    # comments start with '#' (or '%', as in ARFF)
    @problemName GunPoint
    @timeStamps false
    @missing false
    @univariate true            (or: @univariate false + @dimensions 6)
    @equalLength true
    @seriesLength 150
    @classLabel true 1 2        (or: @targetLabel true for regression; @classLabel false: no labels)
    @data
    -0.64,-0.63,...,-0.64:2     one channel per ':'-separated field, values separated by ',', label last

What this reader accepts (and the archive's own files use):

* header keys in any case (``@problemname``, ``@equallength``...) and in any order; keys may be left
  out: ``@univariate`` / ``@dimensions`` are then taken from the first case, ``@equalLength`` from
  the data, and the label kind must still be clear (``@classLabel`` or ``@targetLabel``; when both
  are missing the last field counts as a class label only if the channel count is known and the
  line has one field more). Unknown keys are kept in ``TSHeader.extra`` and otherwise ignored;
* univariate and multivariate series (channels separated by ``:``); all channels of one case must
  have the same length, cases may differ (``@equalLength false``: variable length);
* missing values written ``?`` or ``NaN`` (any case) become ``nan``; the reader never fills them
  in: :func:`fill_missing` is the explicit policy a task applies (``fpt.tasks.timeseries``:
  ``missing=error`` stops with the file, the count and the first line; ``missing=interpolate``);
* class labels (strings; the header's order is the class order) and regression targets (floats);
* ``@timeStamps true`` (values written ``(time,value)``) is refused with a message.

Every malformed file is an error (:class:`TSFormatError`) naming the file and the line.

Where a problem's files are found: :mod:`fpt.data.ts_archive` (and :mod:`fpt.data.aeon`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HEADER_KEYS = ("problemname", "timestamps", "missing", "univariate", "dimension", "dimensions", "equallength",
               "serieslength", "classlabel", "targetlabel")


_BOOLEAN_KEYS = ("timestamps", "missing", "univariate", "equallength", "targetlabel")


_MISSING_TOKENS = ("?", "nan")


_COMMENT = ("#", "%")  # '%' as in ARFF, used by some archive files (aeon's UnitTest)


class TSFormatError(ValueError):
    """A ``.ts`` file that does not follow the format; the message names the file and the line."""


@dataclass
class TSHeader:
    """The header of a ``.ts`` file; ``None``: the key was not given."""

    problem_name: str | None = None
    timestamps: bool | None = None
    missing: bool | None = None
    univariate: bool | None = None
    dimensions: int | None = None
    equal_length: bool | None = None
    series_length: int | None = None
    class_label: bool | None = None  # @classLabel true / false
    class_values: tuple[str, ...] = ()  # the classes @classLabel true lists, in the header's order
    target_label: bool | None = None  # @targetLabel true: one regression target per case
    extra: dict[str, str] = field(default_factory=dict)  # keys this reader does not know (kept, ignored)


@dataclass
class TSData:
    """The cases of one ``.ts`` file."""

    path: Path
    header: TSHeader
    series: list[np.ndarray]  # one float64 array [length, channels] per case (time-major); nan = missing
    labels: list[str] | None  # class labels as written (classification), else None
    targets: np.ndarray | None  # float64 [N] regression targets, else None
    lines: np.ndarray  # int64 [N]: the line (1-based) each case is on, for messages

    @property
    def kind(self) -> str:
        """``classification``, ``regression`` or ``unlabelled``."""
        if self.targets is not None:
            return "regression"
        return "classification" if self.labels is not None else "unlabelled"

    @property
    def num_channels(self) -> int:
        return int(self.series[0].shape[1])

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(s) for s in self.series), dtype=np.int64, count=len(self.series))

    @property
    def class_values(self) -> tuple[str, ...]:
        """The classes: the header's list, else the labels seen, sorted (numerically when they are numbers)."""
        if self.header.class_values:
            return self.header.class_values
        if self.labels is None:
            return ()
        return sort_labels(set(self.labels))

    def missing_count(self) -> int:
        return int(sum(int(np.isnan(s).sum()) for s in self.series))

    def __len__(self) -> int:
        return len(self.series)


def sort_labels(labels) -> tuple[str, ...]:
    labels = list(labels)
    try:
        return tuple(sorted(labels, key=float))
    except ValueError:
        return tuple(sorted(labels))


# -- the reader --------------------------------------------------------------------------------
def _bool(value: str, key: str, where: str) -> bool:
    v = value.lower()
    if v == "true":
        return True
    if v == "false":
        return False
    raise TSFormatError(f"{where}: @{key} must be true or false, got {value!r}")


def _int(value: str, key: str, where: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 1:
        raise TSFormatError(f"{where}: @{key} must be a positive integer, got {value!r}")
    return n


def _parse_header_line(header: TSHeader, tokens: list[str], where: str, seen: dict[str, str]) -> None:
    key = tokens[0][1:].lower()
    values = tokens[1:]
    text = " ".join(values)
    if key in seen and key != "problemname" and seen[key] != text:
        raise TSFormatError(f"{where}: @{key} given twice with different values ({seen[key]!r}, then {text!r})")
    if key == "problemname":
        if header.problem_name is None and values:  # a repeated name (seen in aeon's UnitTest) keeps the first
            header.problem_name = text
        seen[key] = text
        return
    seen[key] = text
    if key not in HEADER_KEYS:
        header.extra[key] = text
        return
    if key == "classlabel":
        if not values:
            raise TSFormatError(f"{where}: @classLabel needs true (followed by the class values) or false")
        header.class_label = _bool(values[0], "classLabel", where)
        if header.class_label:
            if len(values) < 2:
                raise TSFormatError(f"{where}: @classLabel true must list the class values, e.g. @classLabel true 1 2")
            if len(set(values[1:])) != len(values) - 1:
                raise TSFormatError(f"{where}: @classLabel lists a class twice: {' '.join(values[1:])}")
            header.class_values = tuple(values[1:])
        elif len(values) > 1:
            raise TSFormatError(f"{where}: @classLabel false takes no class values, got {' '.join(values[1:])!r}")
        return
    if len(values) != 1:
        raise TSFormatError(f"{where}: @{key} takes one value, got {text!r}")
    value = values[0]
    if key in _BOOLEAN_KEYS:
        flag = _bool(value, key, where)
        setattr(header, {"timestamps": "timestamps", "missing": "missing", "univariate": "univariate",
                         "equallength": "equal_length", "targetlabel": "target_label"}[key], flag)
    elif key in ("dimension", "dimensions"):
        header.dimensions = _int(value, key, where)
    elif key == "serieslength":
        header.series_length = _int(value, key, where)


def _check_header(header: TSHeader, path: Path, key_lines: dict[str, int]) -> None:
    def where(*keys: str) -> str:
        return f"{path}, line {min(key_lines[k] for k in keys if k in key_lines)}"

    if header.timestamps:
        raise TSFormatError(f"{where('timestamps')}: @timeStamps true: values written as (time,value) pairs are not supported; "
                            "write the series as plain comma-separated values (one value per time step) "
                            "with @timeStamps false")
    if header.class_label and header.target_label:
        raise TSFormatError(f"{where('classlabel', 'targetlabel')}: both @classLabel true and @targetLabel true: "
                            "a case has one label, either a class (classification) or a number (regression)")
    if header.univariate and header.dimensions not in (None, 1):
        raise TSFormatError(f"{where('univariate', 'dimension', 'dimensions')}: @univariate true but "
                            f"@dimensions {header.dimensions}")


FLOAT32_MAX = float(np.finfo(np.float32).max)  # the models compute in float32 (or narrower): larger is inf there


def _parse_values(text: str, where: str, channel: int) -> np.ndarray:
    parts = text.split(",")
    try:
        values = np.array([math.nan if p.strip().lower() in _MISSING_TOKENS else float(p) for p in parts],
                          dtype=np.float64)
    except ValueError:
        values = None
    if values is not None:
        big = np.abs(values) > FLOAT32_MAX  # inf too; nan (missing) is not
        if big.any():
            i = int(np.flatnonzero(big)[0])
            raise TSFormatError(f"{where}: channel {channel}, value {i + 1}: {parts[i].strip()[:40]} does not fit "
                                f"float32, the dtype fpt computes in (at most {FLOAT32_MAX:.3g} in magnitude): scaling "
                                "would turn the whole series into inf or 0. Rescale the data (e.g. divide by a power of "
                                "ten) or write it as missing (?)")
        return values
    for i, p in enumerate(parts):
        s = p.strip()
        if s.lower() in _MISSING_TOKENS:
            continue
        try:
            float(s)
        except ValueError:
            what = "an empty value" if not s else f"{s[:40]!r}"
            hint = " (timestamped (time,value) pairs need @timeStamps true, which fpt does not read)" \
                if "(" in s or ")" in s else ""
            raise TSFormatError(f"{where}: channel {channel}, value {i + 1}: {what} is not a number "
                                f"(missing values are written ? or NaN){hint}") from None
    raise TSFormatError(f"{where}: channel {channel}: cannot read the values")  # pragma: no cover


def read_ts(path: str | Path) -> TSData:
    """Read one ``.ts`` file (see the module docstring for what is accepted)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such .ts file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise TSFormatError(f"{path}, line {line}: not UTF-8 text (byte {raw[e.start]:#04x}); is it a .ts file?") from None
    header = TSHeader()
    seen: dict[str, str] = {}
    key_lines: dict[str, int] = {}  # header key -> the line it is on, for messages
    lines = text.splitlines()
    data_start = None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith(_COMMENT):
            continue
        where = f"{path}, line {number}"
        if not line.startswith("@"):
            raise TSFormatError(f"{where}: expected a @key header line or @data before the first case, got "
                                f"{line[:60]!r}")
        tokens = line.split()
        if tokens[0].lower() == "@data":
            if len(tokens) > 1:
                raise TSFormatError(f"{where}: @data takes no value (the cases start on the next line)")
            data_start = number
            break
        _parse_header_line(header, tokens, where, seen)
        key_lines.setdefault(tokens[0][1:].lower(), number)
    if data_start is None:
        raise TSFormatError(f"{path}, line {len(lines)} (end of file): no @data line: the header must end with @data, "
                            "followed by one case per line")
    _check_header(header, path, key_lines)

    labelled = header.class_label is True or header.target_label is True
    decided = header.class_label is not None or header.target_label is not None
    channels = 1 if header.univariate else header.dimensions
    series: list[np.ndarray] = []
    raw_labels: list[str] = []
    case_lines: list[int] = []
    for number in range(data_start + 1, len(lines) + 1):
        line = lines[number - 1].strip()
        if not line or line.startswith(_COMMENT):
            continue
        where = f"{path}, line {number}"
        if line.startswith("@"):
            raise TSFormatError(f"{where}: header line {line.split()[0]!r} after @data")
        fields = line.split(":")
        if not decided:
            if channels is None:
                raise TSFormatError(
                    f"{where}: the header says neither @classLabel nor @targetLabel, and not how many channels "
                    "a case has (@univariate / @dimensions), so it is unclear whether the last ':' field is a "
                    "label. Add @classLabel true <classes>, @targetLabel true, or @classLabel false")
            labelled = len(fields) == channels + 1
            decided = True
            if len(fields) not in (channels, channels + 1):
                raise TSFormatError(f"{where}: {len(fields)} ':'-separated fields, expected {channels} channels "
                                    f"(plus a label)")
        if labelled:
            if len(fields) < 2:
                raise TSFormatError(f"{where}: no label: the header says each case ends with ':<label>'")
            label = fields[-1].strip()
            fields = fields[:-1]
            if not label:
                raise TSFormatError(f"{where}: empty label after the last ':'")
            raw_labels.append(label)
        if channels is None:
            channels = len(fields)
        if len(fields) != channels:
            expected = f"{channels} channel{'s' * (channels != 1)}"
            source = "as the header says" if (header.univariate is not None or header.dimensions) else "as the first case"
            raise TSFormatError(f"{where}: {len(fields)} channel{'s' * (len(fields) != 1)}, expected {expected} "
                                f"{source}" + (" (a label without @classLabel / @targetLabel in the header?)"
                                               if not labelled and len(fields) == channels + 1 else ""))
        values = [_parse_values(f, f"{where} (case {len(series) + 1})", c + 1) for c, f in enumerate(fields)]
        length = len(values[0])
        for c, v in enumerate(values[1:], 2):
            if len(v) != length:
                raise TSFormatError(f"{where}: channel {c} has {len(v)} values, channel 1 has {length}: all channels "
                                    "of a case must have the same length")
        if header.series_length is not None and header.equal_length is not False and length != header.series_length:
            raise TSFormatError(f"{where}: {length} values per channel, but @seriesLength is {header.series_length}")
        if header.equal_length and series and length != len(series[0]):
            raise TSFormatError(f"{where}: {length} values per channel, the first case has {len(series[0])}, "
                                "but the header says @equalLength true")
        series.append(np.stack(values, axis=1))
        case_lines.append(number)
    if not series:
        raise TSFormatError(f"{path}, line {data_start} (@data): no cases after @data")

    labels = targets = None
    if labelled and header.target_label:
        targets = np.empty(len(raw_labels), dtype=np.float64)
        for i, (label, number) in enumerate(zip(raw_labels, case_lines)):
            try:
                targets[i] = math.nan if label.lower() in _MISSING_TOKENS else float(label)
            except ValueError:
                raise TSFormatError(f"{path}, line {number}: regression target {label!r} is not a number "
                                    "(@targetLabel true)") from None
            if not math.isfinite(targets[i]) or abs(targets[i]) > FLOAT32_MAX:
                raise TSFormatError(f"{path}, line {number}: regression target {label!r} is missing or not finite")
    elif labelled:
        labels = raw_labels
        if header.class_values:
            known = set(header.class_values)
            for label, number in zip(raw_labels, case_lines):
                if label not in known:
                    raise TSFormatError(f"{path}, line {number}: class {label!r} is not among the header's "
                                        f"@classLabel values ({' '.join(header.class_values)})")
    data = TSData(path, header, series, labels, targets, np.asarray(case_lines, dtype=np.int64))
    if header.missing is False and data.missing_count():
        first = next(int(n) for s, n in zip(series, data.lines) if np.isnan(s).any())
        raise TSFormatError(f"{path}, line {first}: a missing value (? or NaN), but the header says @missing false")
    return data


# -- missing values ----------------------------------------------------------------------------
MISSING_POLICIES = ("error", "interpolate")


def fill_missing(data: TSData, policy: str, task: str = "timeseries") -> TSData:
    """Apply the missing-value policy: ``error`` (default) or ``interpolate`` (linear in time within each
    channel; leading / trailing gaps take the nearest value). A channel with no value at all is an error."""
    if policy not in MISSING_POLICIES:
        raise ValueError(f"{task}: option missing must be one of {MISSING_POLICIES}, got {policy!r}")
    count = data.missing_count()
    if not count:
        return data
    bad = [(i, int(n)) for i, (s, n) in enumerate(zip(data.series, data.lines)) if np.isnan(s).any()]
    if policy == "error":
        raise TSFormatError(
            f"{data.path}: {count} missing values (? or NaN) in {len(bad)} cases, the first on line {bad[0][1]}. "
            f"fpt does not guess them unless asked: -o missing=interpolate fills each gap linearly in time "
            f"(edges take the nearest value), or fill them yourself")
    filled = []
    for s, n in zip(data.series, data.lines):
        if not np.isnan(s).any():
            filled.append(s)
            continue
        s = s.copy()
        t = np.arange(len(s))
        for c in range(s.shape[1]):
            ok = ~np.isnan(s[:, c])
            if not ok.any():
                raise TSFormatError(f"{data.path}, line {int(n)}: channel {c + 1} has no value at all: nothing to "
                                    "interpolate from")
            s[:, c] = np.interp(t, t[ok], s[ok, c])
        filled.append(s)
    return TSData(data.path, data.header, filled, data.labels, data.targets, data.lines)
