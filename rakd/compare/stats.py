"""The interval of a difference in mean test accuracy between two methods, for few seeds on one test set.

Two sources of noise: the seeds (each method's training is random: its seed means scatter) and the test problems
(a fixed sample of the problems a user cares about; both methods see the same ones, so their difference is paired
by problem). With 3 seeds a bootstrap over seeds is too narrow: resampling 3 values shrinks their variance by 2/3,
and normal quantiles ignore that the variance itself is estimated from 3 values. So the interval is Welch's: the
variance of the difference is

    s²_A / n_A + s²_B / n_B + s²_d / n_problems

(s²_A, s²_B: the sample variances of each method's seed means; s²_d: the sample variance over problems of the
per-problem difference of seed-averaged correctness), with Student-t quantiles at the Welch-Satterthwaite degrees
of freedom of those three terms. With one seed on either side the seed variance is unknown and there is no
interval. `tests/test_compare_stats.py` checks the coverage by simulation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rakd.schema import decode_answers

INTERVAL = "Welch t: seed-mean variances of both methods plus the paired per-problem variance, Welch-Satterthwaite df"


@dataclass(frozen=True)
class Interval:
    """A difference (point) and its two-sided interval at `level`; NaN bounds when it cannot be estimated."""

    low: float
    point: float
    high: float
    df: float
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def format(self, scale: float = 100.0) -> str:
        """'+6.1 [+2.5, +9.8]' in points (or 'n/a' bounds with one seed)."""
        if math.isnan(self.low):
            return f"{scale * self.point:+.1f} [n/a: one seed]"
        return f"{scale * self.point:+.1f} [{scale * self.low:+.1f}, {scale * self.high:+.1f}]"


def difference_interval(
    ours: Sequence[Sequence[float]], theirs: Sequence[Sequence[float]], level: float = 0.95
) -> Interval:
    """Mean accuracy of `ours` minus `theirs`: each a list of runs (seeds), each run its per-problem correctness
    (0/1) on the same test problems in the same order."""
    from scipy.stats import t as student_t

    a, b = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not a.shape[1]:
        raise ValueError(f"per-problem results of different shapes: {a.shape} and {b.shape}")
    point = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Interval(math.nan, point, math.nan, math.nan, level)
    problems = a.shape[1]
    terms = [
        (a.mean(1).var(ddof=1) / len(a), len(a) - 1),
        (b.mean(1).var(ddof=1) / len(b), len(b) - 1),
        ((a.mean(0) - b.mean(0)).var(ddof=1) / problems if problems > 1 else 0.0, problems - 1),
    ]
    variance = sum(v for v, _ in terms)
    if variance == 0:
        return Interval(point, point, point, math.inf, level)
    df = variance**2 / sum(v**2 / k for v, k in terms if v > 0)
    half = float(student_t.ppf(0.5 + level / 2, df)) * math.sqrt(variance)
    return Interval(point - half, point, point + half, float(df), level)


def correctness(row: dict) -> list[int]:
    """A job row's per-problem greedy results as 0/1 (stored as rakd.evaluate.encode_answers writes them)."""
    return bits(row["greedy_correct"])


def bits(encoded: str) -> list[int]:
    """Per-problem answers as stored (rakd.schema.encode_answers) as 0/1."""
    return [int(c) for c in decode_answers(encoded)]


def runs_by_method(rows: list[dict], reading: str | None = None) -> dict[str, list[list[int]]]:
    """A comparison's runs (rows carrying their `greedy_correct`, as `rakd.compare.record.read_comparison` reads
    them) as each method's runs (seeds), each a list of 0/1 per problem; `reading` (`at_reference_steps`,
    `at_reference_seconds`): the rows' answers at that reading instead, from the rows that have it. One variant per
    method is expected (a comparison with several α or clamps of one method is refused, naming them)."""
    from rakd.compare.jobs import named

    variants: dict[str, set[str]] = {}
    runs: dict[str, list[list[int]]] = {}
    for row in map(named, rows):
        answers = row.get(reading) if reading else row
        if not answers:
            continue
        variants.setdefault(row["method"], set()).add(row["variant"])
        runs.setdefault(row["method"], []).append(correctness(answers))
    several = {m: sorted(v) for m, v in variants.items() if len(v) > 1}
    if several:
        raise ValueError(f"several variants of one method: {several}")
    return runs


def leaders(runs: dict[str, list[list[int]]], level: float = 0.95) -> tuple[str, tuple[str, ...]]:
    """(the method of highest mean accuracy, the others whose interval against it includes zero, best first)."""
    mean = {m: float(np.mean(r)) for m, r in runs.items()}
    best = max(mean, key=mean.__getitem__)
    tied = [m for m in runs if m != best and not difference_interval(runs[m], runs[best], level).excludes_zero]
    return best, tuple(sorted(tied, key=mean.__getitem__, reverse=True))
