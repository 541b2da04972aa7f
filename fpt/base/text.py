"""Small text helpers shared by every layer: spelling suggestions and the descriptions of shipped files.

It imports nothing from fpt, so any module may use it.
"""

from __future__ import annotations

import difflib
from typing import Iterable


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
