"""Which method when: the rule the comparison's regimes support, applied to a run's own numbers.

Two measurements decide it, both known before RL spends anything: the warm-started student's pass rate on its RL
pool (RL step 1's samples, before any update) and the teacher:student ratio of non-embedding parameters. The
evidence is `evidence.json` beside this module: one record per measured regime, computed from its committed results
folder by `rakd.compare.evidence` (`bench/compare_regimes.py --evidence` writes it; tests/test_advice.py recomputes
every record from the per-problem answers kept in git), as docs/results.md ("Which method when") reports it. The
rule reads:

1. A warm start stopped by a target it reached, before its val plateau, still has traces to learn from: SFT on
   them led every other method per FLOP, 18-23 points over TRRD, where it was measured (edge, hard and both ratio
   regimes); where SFT had run to its plateau or its last step it trailed (trace, ways) or was level (the
   pretrained pair, healed to its 800-step cap: +1.5 over TRRD, interval across zero).
2. Where the student solves fewer than `SPARSE` of its RL pool, GRPO's reward is sparse and the teacher pays:
   TRRD (`rakd`), level with SeqKD and GKD, ahead of GRPO.
3. Otherwise plain GRPO: it needs no teacher pass, so it takes more steps in the same FLOPs, and it led or was
   level with the leader in every such regime with a teacher 8x the student or larger. Above `SATURATED` RL has
   little left to learn.

The ratio: the teacher costs about `ratio` student forwards per token it scores or generates, so the larger the
teacher the more GRPO gains per FLOP, and the smaller, the more the teacher's own output pays. SeqKD on fresh
teacher traces against GRPO per FLOP: +6.2 at 2x, level at 8x, -8.3 at 22.5x; so up to `CHEAP_TEACHER` the rule
picks `seqkd_fresh` where it would pick GRPO. On the pretrained pair (3x) no method moved its healed student in the
budget measured: every one level with the others, SeqKD among them. Per step a larger teacher's distribution pays
(GKD over TRRD +4.5 at 8x, +11.0 at 22.5x), so from `STRONG_TEACHER` on the advice says so for a run whose limit is
steps or seconds rather than FLOPs.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

SPARSE = 0.15  # between the hard regime's 5.7% (the teacher pays) and the base regime's 21.5% (it does not)
SATURATED = 0.95  # above it few groups have mixed rewards: RL has little left to learn (the default's 99.8%: 2%)
MEASURED_RATIOS = (2.0, 22.5)  # the teacher:student ratios the rule's regimes span (min, max)
CHEAP_TEACHER = 4.0  # between the 2x regime (SeqKD over GRPO +6.2 per FLOP) and the 8x ones (level or behind)
STRONG_TEACHER = 15.0  # between the 8x regimes (GKD per step +4.5 over TRRD) and the 22.5x one (+11.0)


EVIDENCE_FILE = Path(__file__).with_name("evidence.json")  # written by bench/compare_regimes.py --evidence
LABELS = {"rakd": "TRRD", "grpo": "GRPO", "grpo_kl": "KDRL", "seqkd_fresh": "SeqKD", "gkd": "GKD", "opd": "OPD",
          "rakd_lower": "TRRD-lower", "sft": "more SFT", "fkl": "FKL"}  # fmt: skip


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one object per regime
class Evidence:
    """One measured regime (a record of `rakd.compare.evidence.regime_evidence`): the student's pass rate on its RL
    pool at step 0, the teacher:student ratio, the method of highest test greedy accuracy at equal training FLOPs
    (continuing SFT on the warm start's traces aside: rule 1) and those whose 95% Welch interval against it includes
    zero, and each method against TRRD per FLOP, per step and per second (the readings the comparison took)."""

    regime: str
    pass_rate: float
    ratio: float
    best: str
    level: tuple[str, ...]
    results: str  # the committed results folder under bench/results/
    seeds: dict
    greedy: dict
    best_with_continue: str
    per_flop: dict
    per_step: dict
    per_second: dict

    @classmethod
    def of(cls, record: dict) -> Evidence:
        from rakd.compare.evidence import interval_of  # the inverse of the writer's own [low, point, high]

        def intervals(name: str) -> dict:
            return {m: interval_of(triple) for m, triple in record.get(name, {}).items()}

        fields = {k: record[k] for k in ("regime", "pass_rate", "ratio", "best", "results", "seeds", "greedy")}
        return cls(**fields, level=tuple(record["level"]), best_with_continue=record["best_with_continue"],
                   per_flop=intervals("per_flop"), per_step=intervals("per_step"),
                   per_second=intervals("per_second"))  # fmt: skip

    def against(self, method: str, reading: str = "per_flop") -> str:
        """'SeqKD +8.5 [+5.7, +11.3]': `method` against TRRD in `reading`, in points."""
        return f"{LABELS.get(method, method)} {getattr(self, reading)[method].format()}"

    @property
    def continuing_led(self) -> bool:
        """Continuing SFT on the warm start's traces led every method per FLOP, clear of TRRD."""
        interval = self.per_flop.get("sft")
        return self.best_with_continue == "sft" and interval is not None and interval.low > 0


def read_evidence(path: Path = EVIDENCE_FILE) -> tuple[Evidence, ...]:
    """The measured regimes, in the file's order."""
    return tuple(Evidence.of(record) for record in json.loads(path.read_text())["regimes"])


EVIDENCE = read_evidence()


@dataclass(frozen=True)
class Advice:
    """What the rule recommends for one run, why, and the measured regime closest to it."""

    method: str
    why: str
    nearest: str
    within_evidence: bool  # False: the run's ratio lies outside the measured ones, the rule extrapolates

    def as_dict(self) -> dict:
        return asdict(self)


def nearest_regime(pass_rate: float, ratio: float | None = None) -> Evidence:
    """The measured regime whose step-0 pass rate is closest to `pass_rate`, among those whose teacher:student ratio
    is closest to `ratio` (on a log scale; every regime when it is None)."""
    candidates = EVIDENCE
    if ratio is not None:
        gap = {e: abs(math.log(e.ratio / ratio)) for e in EVIDENCE}
        nearest = min(gap.values())
        candidates = [e for e in EVIDENCE if gap[e] == nearest]
    return min(candidates, key=lambda e: abs(e.pass_rate - pass_rate))


def recommend(pass_rate: float, ratio: float | None = None, *, before_plateau: bool = False) -> Advice:
    """The method the rule picks for a student that passes `pass_rate` of its RL pool, with a teacher `ratio` times
    its non-embedding parameters; `before_plateau`: its warm start was stopped by a target, not at its val plateau."""
    if not 0.0 <= pass_rate <= 1.0:
        raise ValueError(f"pass_rate must lie in [0, 1], got {pass_rate}")
    near = nearest_regime(pass_rate, ratio)
    within = ratio is None or MEASURED_RATIOS[0] / 1.5 <= ratio <= MEASURED_RATIOS[1] * 1.5
    percent, sparse = f"{100 * pass_rate:.0f}%", f"{100 * SPARSE:.0f}%"
    if before_plateau:
        method = "sft"
        led = [e for e in EVIDENCE if e.continuing_led]
        points = [100 * e.per_flop["sft"].point for e in led]
        why = "the warm start stopped before its val plateau: SFT on its traces led every other method per FLOP, "
        why += (
            f"{min(points):.0f}-{max(points):.0f} points over TRRD, where measured ({', '.join(e.regime for e in led)})"
        )
    elif pass_rate < SPARSE:
        method = "rakd"
        why = f"it solves {percent} of its RL pool (< {sparse}): the reward is sparse and the teacher's log-probs "
        sparse_regime = min(EVIDENCE, key=lambda e: e.pass_rate)
        with_trrd = [LABELS[m] for m in (sparse_regime.best, *sparse_regime.level) if m != "rakd"]
        why += f"pay ({sparse_regime.regime} regime: TRRD level with {' and '.join(with_trrd)}; "
        why += f"{sparse_regime.against('grpo')} per FLOP)"
    elif pass_rate >= SATURATED:
        method = "grpo"
        why = f"it solves {percent} of its RL pool: few groups have mixed rewards and RL has little left to learn; "
        why += "GRPO is the cheapest step (no teacher pass)"
    else:
        method = "grpo"
        why = f"it solves {percent} of its RL pool (>= {sparse}): the teacher's log-probs did not pay their "
        why += "compute; GRPO takes more steps in the same FLOPs"
    if method == "grpo" and ratio is not None and ratio <= CHEAP_TEACHER and pass_rate < SATURATED:
        cheap, real = _measured_at(MEASURED_RATIOS[0]), next(e for e in EVIDENCE if e.regime == "real")
        method = "seqkd_fresh"
        why = f"it solves {percent} of its RL pool (>= {sparse}) with a teacher {ratio:.1f}x the student: the "
        why += f"teacher's fresh traces cost little to generate, and SFT on them led per FLOP ({cheap.regime}: "
        why += f"{cheap.against(cheap.best)} over TRRD; on the pretrained pair, {real.ratio:.0f}x, every method was "
        why += "level)"
    if method == "grpo" and ratio is not None and ratio >= STRONG_TEACHER and pass_rate < SATURATED:
        strong = _measured_at(MEASURED_RATIOS[1])
        why += f"; with a teacher {ratio:.0f}x the student its distribution pays per step ({strong.regime}: "
        why += f"{strong.against('gkd', 'per_step')} over TRRD, GRPO {_level_or(strong, 'grpo')}): where steps or "
        why += "seconds, not FLOPs, are the limit, gkd"
    if not within:
        why += f" (measured at teachers {MEASURED_RATIOS[0]:.0f}-{MEASURED_RATIOS[1]:.1f}x; this one is {ratio:.1f}x)"
    return Advice(method, why, near.regime, within)


def _measured_at(ratio: float) -> Evidence:
    """The measured regime with a teacher `ratio` times the student (the ratio regimes: one each)."""
    return next(e for e in EVIDENCE if e.ratio == ratio)


def _level_or(evidence: Evidence, method: str, reading: str = "per_step") -> str:
    """'level' when `method`'s interval against TRRD includes zero, else the interval."""
    interval = getattr(evidence, reading)[method]
    return interval.format() if interval.excludes_zero else "level"
