"""An evaluator of ListOps expressions, written independently of the generator.

It reads the token *strings* (``[MAX``, ``]``, digits...; parentheses ignored) left to right with
an explicit stack of open operators, and checks the structure as it goes. Used by the tests to
check the generator's labels and usable on any LRA source string.
"""

from __future__ import annotations

from typing import Iterable


class ListOpsSyntaxError(ValueError):
    pass


def _reduce(op: str, values: list[int]) -> int:
    if not values:
        raise ListOpsSyntaxError(f"operator {op} closed with no arguments")
    if op == "[MAX":
        return max(values)
    if op == "[MIN":
        return min(values)
    if op == "[SM":
        total = 0
        for v in values:
            total += v
        return total % 10
    if op == "[MED":
        ordered = sorted(values)
        n = len(ordered)
        if n % 2:
            return ordered[n // 2]
        return (ordered[n // 2 - 1] + ordered[n // 2]) // 2
    raise ListOpsSyntaxError(f"unknown operator {op!r}")


def evaluate_tokens(tokens: Iterable[str]) -> int:
    """Value of a ListOps expression given as token strings."""
    stack: list[tuple[str, list[int]]] = []
    result: int | None = None
    for pos, tok in enumerate(tokens):
        if tok in ("(", ")"):
            continue
        if result is not None:
            raise ListOpsSyntaxError(f"token {tok!r} at {pos} after the expression ended")
        if tok.startswith("["):
            stack.append((tok, []))
        elif tok == "]":
            if not stack:
                raise ListOpsSyntaxError(f"']' at {pos} closes nothing")
            op, values = stack.pop()
            value = _reduce(op, values)
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
        elif len(tok) == 1 and tok.isdigit():
            if stack:
                stack[-1][1].append(int(tok))
            else:
                result = int(tok)
        else:
            raise ListOpsSyntaxError(f"unknown token {tok!r} at {pos}")
    if stack:
        raise ListOpsSyntaxError(f"{len(stack)} operator(s) never closed with ']'")
    if result is None:
        raise ListOpsSyntaxError("empty expression")
    return result


def evaluate_source(source: str) -> int:
    """Value of an LRA source string such as ``( ( [MAX 2 ) 9 ) ] )``."""
    return evaluate_tokens(source.replace("(", " ( ").replace(")", " ) ").split())
