"""Small text helpers shared by every layer: spelling suggestions, the descriptions of shipped files, and how
a metric is written in a table (:func:`format_metric`, the one formatter of sweeps, status lines and reports).

It imports nothing from fpt, so any module may use it.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Iterable


def close_matches(name: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.5) -> list[str]:
    return difflib.get_close_matches(name, list(choices), n=n, cutoff=cutoff)


def suggest(name: str, choices: Iterable[str]) -> str:
    """``" Did you mean 'x', 'y'?"`` for names close to ``name``, else ``""`` (appended to error messages)."""
    close = close_matches(name, choices)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def description(yaml_text: str) -> str:
    """The leading comment paragraph of a shipped YAML file, as one line (whole sentences, never cut).

    The paragraph ends at the first empty comment line, the first non-comment line, or the first
    ``Key:`` line (``Command:``, ``Expected:``...) after some text.
    """
    lines: list[str] = []
    for raw in yaml_text.splitlines():
        if not raw.startswith("#"):
            if lines or raw.strip():
                break
            continue
        text = raw[1:].strip()
        if not text:
            if lines:
                break
            continue
        head = text.split(":", 1)[0]
        if lines and ":" in text and head.istitle() and " " not in head:
            break
        lines.append(text)
    return " ".join(lines)


PERCENT_METRICS = ("accuracy", "exact_accuracy")  # written in percent; other metrics (rmse, mae) as they are


def as_percent(fraction: Any) -> float | None:
    """An accuracy (a fraction) in percent, None kept."""
    return None if fraction is None else 100 * float(fraction)


def format_metric(value: Any, metric: str, std: float | None = None, n: int = 1) -> str:
    """A metric in a table: accuracies in percent with one decimal, other metrics to 4 significant digits;
    ``"-"`` when missing (None or NaN); with ``std`` and more than one value (``n``), `` ± std`` after it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    spread = std is not None and n > 1
    if metric in PERCENT_METRICS:
        return f"{100 * float(value):.1f}" + (f" ± {100 * std:.1f}" if spread else "")
    return f"{float(value):.4g}" + (f" ± {std:.2g}" if spread else "")


def plural(n: object, word: str, words: str | None = None) -> str:
    """``"1 layer"``, ``"2 layers"``: a count and its noun, in the number the count asks for."""
    return f"{n} {word if str(n) == '1' else (words or word + 's')}"
