"""The statistics a study's answer needs: intervals over seeds, ranks over problems, paired tests across problems.

All tests are scipy's (``scipy.stats``); the critical-difference diagram is scikit-posthocs'. Conventions:

* **Per problem** (:func:`interval`): mean, sample standard deviation (ddof 1) and the two-sided 95% Student t
  interval over seeds, ``mean +- t(0.975, n-1) * std / sqrt(n)``; none for one seed.
* **Ranks** (:func:`mean_ranks`): on each problem the arms are ranked by their score, 1 the best (higher
  accuracy, lower RMSE), ties sharing the mean of their ranks (``scipy.stats.rankdata``); an arm's mean rank
  is over the problems where every arm has a score.
* **Pairs** (:func:`paired`): per problem the difference ``a - b`` oriented so that positive means a is better
  (for RMSE: ``b - a``), in units the problems share (the caller passes them: accuracy, or RMSE over the
  problem's trivial RMSE). Wins / ties / losses count the problems where it is > 0, == 0, < 0. The two-sided
  Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, zero differences dropped, exact where scipy computes
  it exactly) across problems; its n is the number of problems with a non-zero difference. With n non-zero
  differences no p-value can be below ``2 / 2**n`` (every difference on one side), so below n = 6 the test
  cannot reach 0.05 and the verdict says so rather than "no difference".
* **Friedman + Nemenyi** (:func:`friedman_nemenyi`): ``scipy.stats.friedmanchisquare`` over the problems x arms
  table (three arms or more), the Nemenyi critical difference ``q_alpha * sqrt(k (k + 1) / (6 N))`` with
  ``q_alpha`` the studentized range quantile over ``sqrt(2)`` (Demsar 2006), and the pairwise Nemenyi
  p-values of ``scikit_posthocs.posthoc_nemenyi_friedman`` that the diagram draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

ALPHA = 0.05


@dataclass
class Interval:
    mean: float
    std: float | None  # None for one value
    n: int
    low: float | None  # the 95% t-interval; None for one value
    high: float | None


def interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean, sample std and the two-sided Student t interval of the mean."""
    from scipy import stats

    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("an interval needs at least one value")
    n = len(xs)
    mean = sum(xs) / n
    if n == 1:
        return Interval(mean, None, 1, None, None)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Interval(mean, std, n, mean - half, mean + half)


def problem_ranks(scores: dict[str, float], higher_is_better: bool) -> dict[str, float]:
    """Ranks of the arms on one problem: 1 the best, ties sharing the mean rank."""
    from scipy import stats

    arms = list(scores)
    signed = [-scores[a] if higher_is_better else scores[a] for a in arms]
    return dict(zip(arms, (float(r) for r in stats.rankdata(signed))))


def complete_problems(table: dict[str, dict[str, float]], arms: Sequence[str]) -> list[str]:
    """The problems where every one of ``arms`` has a score."""
    return [p for p, row in table.items() if all(a in row and row[a] is not None for a in arms)]


def mean_ranks(table: dict[str, dict[str, float]], higher: dict[str, bool], arms: Sequence[str]
               ) -> tuple[dict[str, float], int]:
    """Each arm's mean rank over the problems where every arm has a score, and how many problems those are."""
    problems = complete_problems(table, arms)
    if not problems:
        return {}, 0
    total = {a: 0.0 for a in arms}
    for p in problems:
        for a, r in problem_ranks({a: table[p][a] for a in arms}, higher[p]).items():
            total[a] += r
    return {a: total[a] / len(problems) for a in arms}, len(problems)


@dataclass
class Welch:
    """Two arms on one problem, independent seeds: ``a - b`` in the metric's own units (its sign as measured)."""

    difference: float  # mean(a) - mean(b)
    low: float | None  # the two-sided 95% Welch interval of the difference; None below 2 seeds a side
    high: float | None
    p: float | None  # Welch's t-test, two-sided; None below 2 seeds a side
    n_a: int
    n_b: int


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Welch:
    """Mean difference of ``a`` and ``b`` with Welch's t-test and interval (``scipy.stats.ttest_ind``,
    ``equal_var=False``): seeds of one problem, no pairing assumed, no equal variances."""
    from scipy import stats

    xa, xb = [float(v) for v in a], [float(v) for v in b]
    if not xa or not xb:
        raise ValueError("a comparison needs at least one value on each side")
    difference = sum(xa) / len(xa) - sum(xb) / len(xb)
    if len(xa) < 2 or len(xb) < 2:
        return Welch(difference, None, None, None, len(xa), len(xb))
    result = stats.ttest_ind(xa, xb, equal_var=False)
    if not math.isfinite(float(result.pvalue)):  # both sides constant
        return Welch(difference, difference, difference, 1.0 if difference == 0 else 0.0, len(xa), len(xb))
    ci = result.confidence_interval(confidence)
    return Welch(difference, float(ci.low), float(ci.high), float(result.pvalue), len(xa), len(xb))


def welch_verdict(result: Welch, lower_is_better: bool, a: str, b: str, alpha: float = ALPHA) -> str:
    """One phrase: which arm is better at ``alpha``, or that it cannot be told at these seeds."""
    if result.p is None:
        return f"cannot tell: {result.n_a} and {result.n_b} seeds (a test needs 2 a side)"
    if result.p >= alpha:
        return f"cannot tell (p = {result.p:.2g} at {result.n_a} and {result.n_b} seeds)"
    a_better = (result.difference < 0) == lower_is_better
    return f"{a if a_better else b} better (p = {result.p:.2g})"


@dataclass
class Paired:
    a: str
    b: str
    problems: list[str]  # the problems where both have a score
    differences: list[float]  # a - b, positive = a better, one per problem
    wins: int
    ties: int
    losses: int
    n: int  # problems with a non-zero difference: the Wilcoxon test's n
    statistic: float | None
    p: float | None  # None: no test (n = 0: every problem a tie)
    min_p: float | None  # the smallest p-value this n allows (2 / 2**n), None for n = 0

    @property
    def median(self) -> float | None:
        if not self.differences:
            return None
        xs = sorted(self.differences)
        mid = len(xs) // 2
        return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def paired(a: str, b: str, differences: dict[str, float], tie: float = 0.0) -> Paired:
    """Wins / ties / losses and the two-sided Wilcoxon signed-rank test of ``differences`` (problem -> a - b,
    positive when a is better). A difference of at most ``tie`` in size is a tie (0: exactly equal only)."""
    from scipy import stats

    problems = list(differences)
    d = [0.0 if abs(float(differences[p])) <= tie else float(differences[p]) for p in problems]
    wins, losses = sum(x > 0 for x in d), sum(x < 0 for x in d)
    nonzero = [x for x in d if x != 0]
    n = len(nonzero)
    statistic = p = min_p = None
    if n:
        result = stats.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided")
        statistic, p = float(result.statistic), float(result.pvalue)
        min_p = min(1.0, 2.0 / 2 ** n)
    return Paired(a, b, problems, d, wins, len(d) - wins - losses, losses, n, statistic, p, min_p)


def verdict(result: Paired, what: str | None = None, alpha: float = ALPHA) -> tuple[str, str]:
    """("helps" | "hurts" | "cannot tell", one sentence worded by the numbers). ``what``: the thing a stands for
    against b, e.g. "pretraining" (a pretrained arm against its random twin); by default "a over b"."""
    what = what or f"{result.a} over {result.b}"
    counts = (f"{result.a} is better on {result.wins} of {len(result.problems)} problems, worse on {result.losses}, "
              f"tied on {result.ties}")
    if not result.problems:
        return "cannot tell", f"{what}: cannot tell: no problem has both {result.a} and {result.b} yet."
    if result.p is None:
        return "cannot tell", f"{what}: cannot tell: {counts}; every problem is a tie, so there is nothing to test."
    test = f"Wilcoxon signed-rank p = {result.p:.3g} (n = {result.n} problems with a difference)"
    if result.p < alpha:
        word = "helps" if result.wins > result.losses else "hurts"
        return word, f"{what} {word}: {counts}; {test}."
    if result.min_p is not None and result.min_p >= alpha:
        return "cannot tell", (f"{what}: cannot tell at this n: {counts}; {test}, and with {result.n} problems no "
                               f"p-value can be below {result.min_p:.3g}: it needs at least 6 problems that differ.")
    return "cannot tell", f"{what}: cannot tell at this n: {counts}; {test} is not below {alpha:g}."


@dataclass
class Friedman:
    arms: list[str]
    problems: list[str]
    mean_ranks: dict[str, float]
    statistic: float | None
    p: float | None
    critical_difference: float | None  # Nemenyi, at alpha
    nemenyi: Any  # pandas DataFrame of pairwise p-values (arms x arms), or None


def friedman_nemenyi(table: dict[str, dict[str, float]], higher: dict[str, bool], arms: Sequence[str],
                     alpha: float = ALPHA) -> Friedman:
    """Friedman's test over the problems where every arm has a score, Nemenyi's critical difference and p-values."""
    from scipy import stats

    arms = list(arms)
    problems = complete_problems(table, arms)
    ranks, _ = mean_ranks(table, higher, arms)
    k, n = len(arms), len(problems)
    if k < 3 or n < 2:
        return Friedman(arms, problems, ranks, None, None, None, None)
    # oriented so that larger is better on every problem (Friedman and Nemenyi rank within each problem)
    columns = [[table[p][a] if higher[p] else -table[p][a] for p in problems] for a in arms]
    if all(len(set(row)) == 1 for row in zip(*columns)):  # every problem a full tie: the statistic is undefined
        statistic, p = None, None
    else:
        result = stats.friedmanchisquare(*columns)
        statistic, p = float(result.statistic), float(result.pvalue)
    q = float(stats.studentized_range.ppf(1 - alpha, k, math.inf)) / math.sqrt(2)
    cd = q * math.sqrt(k * (k + 1) / (6 * n))
    nemenyi = None
    try:
        import numpy as np
        import pandas as pd
        import scikit_posthocs as sp

        # scikit-posthocs ranks each row ascending; minus the oriented scores puts the best at rank 1 as here
        data = pd.DataFrame(-np.array(columns, dtype=float).T, columns=arms)
        nemenyi = sp.posthoc_nemenyi_friedman(data)
    except ImportError:  # the diagram needs it; the numbers above do not
        pass
    return Friedman(arms, problems, ranks, statistic, p, cd, nemenyi)


def cd_diagram(result: Friedman, title: str, alpha: float = ALPHA):
    """The critical-difference diagram (scikit-posthocs): arms on the mean-rank axis (1 = best, on the left),
    bars joining arms whose Nemenyi p-value is not below ``alpha``; the CD in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scikit_posthocs as sp

    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * len(result.arms)))
    sp.critical_difference_diagram(result.mean_ranks, result.nemenyi, ax=ax, alpha=alpha,
                                   label_props={"fontsize": 9}, text_h_margin=0.3)
    p = f"Friedman p = {result.p:.3g}" if result.p is not None else "Friedman: no test"
    ax.set_title(f"{title}\nmean rank over {len(result.problems)} problems (1 = best); {p}\nNemenyi CD = "
                 f"{result.critical_difference:.2f} at alpha {alpha:g}; a bar joins arms not significantly different",
                 fontsize=9)
    return fig
