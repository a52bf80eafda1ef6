"""The which-method-when rule's evidence, computed from a kept comparison: one record per measured regime.

A record holds the student's pass rate on its RL pool at step 0 and the teacher:student ratio (from the
comparison's context), each method's seeds and mean test greedy accuracy, the leader at equal training FLOPs
(continuing SFT on the warm start's traces aside: the rule's first item covers it) and the methods level with it,
and every method's interval against TRRD (`rakd`) at equal FLOPs, at the reference's step count and at its seconds
(where the comparison read them). `bench/compare_regimes.py --evidence` writes the records of the regimes the rule
cites to `rakd/stages/evidence.json`; `rakd.stages.advice` reads them; a test recomputes each from its committed
folder.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from rakd.compare.record import read_comparison
from rakd.compare.stats import Interval, difference_interval, leaders, runs_by_method

REFERENCE = "rakd"  # what every interval is against: TRRD
CONTINUE = "sft"  # continuing SFT on the warm start's traces: outside the leader's reading
READINGS = {"per_flop": None, "per_step": "at_reference_steps", "per_second": "at_reference_seconds"}
DIGITS = 4  # fractions kept to 0.01 points: the record is the same wherever float orders differ below that


def regime_evidence(regime: str, folder: Path, level: float = 0.95) -> dict:
    """The evidence record of the comparison kept in `folder` (a regime of `rakd compare`)."""
    kept = read_comparison(folder)
    step0, parameters = kept.context.get("step0"), kept.context.get("parameters")
    if not step0 or not parameters:
        raise ValueError(f"{folder}: its context has no step-0 diagnostic or no parameter ratio")
    runs = runs_by_method(kept.rows)
    if REFERENCE not in runs:
        raise ValueError(f"{folder}: no {REFERENCE} jobs to read every method against")
    without = {m: r for m, r in runs.items() if m != CONTINUE}
    best, tied = leaders(without, level)
    record = {
        "regime": regime,
        "results": folder.name,
        "pass_rate": round(step0["pass_rate"], 3),
        "ratio": round(parameters["ratio"], 1),
        "seeds": {m: len(r) for m, r in runs.items()},
        "greedy": {m: _round(float(np.mean(r))) for m, r in runs.items()},
        "best": best,
        "level": list(tied),
        "best_with_continue": leaders(runs, level)[0],
    }
    reference = runs[REFERENCE]  # the reference jobs are read at their own end in every reading
    for name, reading in READINGS.items():
        at = runs if reading is None else runs_by_method(kept.rows, reading)
        if reading and not at:
            continue
        record[name] = {m: _interval(difference_interval(r, reference, level)) for m, r in at.items() if m != REFERENCE}
    return record


def _round(x: float) -> float | None:
    return None if math.isnan(x) else round(x, DIGITS)


def _interval(interval: Interval) -> list[float | None]:
    return [_round(interval.low), _round(interval.point), _round(interval.high)]


def interval_of(triple: list[float | None]) -> Interval:
    """An evidence record's [low, point, high] back as an Interval (no bounds: one seed)."""
    low, point, high = (math.nan if v is None else v for v in triple)
    return Interval(low, point, high, math.nan)
