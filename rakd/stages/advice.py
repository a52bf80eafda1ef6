"""Which method when: the rule the comparison's regimes support, applied to a run's own numbers.

Two measurements decide it, both known before RL spends anything: the warm-started student's pass rate on its RL
pool (RL step 1's samples, before any update) and the teacher:student ratio of non-embedding parameters. The
evidence is the table below: one row per measured regime, the method that led it at equal training FLOPs and those
level with it (tests/test_advice.py recomputes both from the committed per-problem results), as docs/results.md
("Which method when") reports it. The rule reads:

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

import math
from dataclasses import asdict, dataclass

SPARSE = 0.15  # between the hard regime's 5.7% (the teacher pays) and the base regime's 21.5% (it does not)
SATURATED = 0.95  # above it few groups have mixed rewards: RL has little left to learn (the default's 99.8%: 2%)
MEASURED_RATIOS = (2.0, 22.5)  # the teacher:student ratios the rule's regimes span (min, max)
CHEAP_TEACHER = 4.0  # between the 2x regime (SeqKD over GRPO +6.2 per FLOP) and the 8x ones (level or behind)
STRONG_TEACHER = 15.0  # between the 8x regimes (GKD per step +4.5 over TRRD) and the 22.5x one (+11.0)


@dataclass(frozen=True)
class Evidence:
    """One measured regime: the student's pass rate on its RL pool at step 0, the teacher:student ratio, the method
    of highest test greedy accuracy at equal training FLOPs (continuing SFT on the warm start's traces aside: rule
    1) and those whose 95% Welch interval against it includes zero, what they did against TRRD, and the per-step
    reading where it differs."""

    regime: str
    pass_rate: float
    ratio: float
    best: str
    level: tuple[str, ...]
    against_trrd: str
    results: str  # the committed results folder under bench/results/
    per_step: str = ""


EVIDENCE = (
    Evidence("hard", 0.057, 8.0, "seqkd_fresh", ("rakd", "gkd"),
             "SeqKD +1.1 [-0.7, +2.8]; GKD, KDRL, OPD level; GRPO -2.1 [-3.8, -0.3]", "compare-hard-2026-12-04"),
    Evidence("base", 0.215, 8.0, "grpo_kl", ("grpo",), "KDRL +3.0 [+0.5, +5.4]; GRPO +2.6 [-0.9, +6.2]",
             "compare-base-2026-12-03-ledger"),
    Evidence("ways", 0.326, 8.0, "grpo", (), "GRPO +2.5 [+0.6, +4.3]; KDRL, TRRD-lower, SeqKD level",
             "compare-ways-2026-12-04"),
    Evidence("edge", 0.424, 8.0, "seqkd_fresh", ("grpo",), "SeqKD +8.1 [+5.0, +11.2]; GRPO +5.9 [+3.9, +8.0]",
             "compare-edge-2026-12-03-ledger", per_step="GKD +4.5 [+1.9, +7.1] over TRRD, GRPO level"),
    Evidence("trace", 0.844, 8.0, "grpo", (), "GRPO +0.7 [+0.2, +1.1]", "compare-trace-2026-12-03-ledger"),
    Evidence("plateau", 0.998, 8.0, "grpo", ("rakd",), "GRPO 99.9, TRRD 99.8 at 200 steps (one seed each)",
             "compare-plateau-2026-12-04"),
    Evidence("ratio-x22", 0.289, 22.5, "grpo", (), "GRPO +13.6 [+11.4, +15.8]; GKD +8.2 [+5.7, +10.7]",
             "compare-ratio-x22-2026-12-04", per_step="GKD +11.0 [+8.2, +13.8] over TRRD, GRPO level"),
    Evidence("ratio-x2", 0.346, 2.0, "seqkd_fresh", ("gkd",),
             "SeqKD +8.5 [+5.7, +11.3], GKD +6.3 [-0.3, +12.9]; GRPO +2.2 [-0.7, +5.1]", "compare-ratio-x2-2026-12-04",
             per_step="GKD +10.3 [+6.7, +13.9] over TRRD, GRPO -3.0 [-5.2, -0.9]"),
    Evidence("real", 0.430, 3.0, "rakd", ("grpo_kl", "opd", "grpo", "seqkd_fresh"),
             "all level: KDRL -0.8 [-5.7, +4.0], OPD -1.0, GRPO -1.5, SeqKD -1.8 [-6.4, +2.8] (2 seeds)",
             "compare-real-2026-12-04", per_step="all level"),
)  # fmt: skip


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
        why = "the warm start stopped before its val plateau: SFT on its traces led every other method per FLOP, "
        why += "18-23 points over TRRD, where measured (edge, hard, ratio-x2, ratio-x22)"
    elif pass_rate < SPARSE:
        method = "rakd"
        why = f"it solves {percent} of its RL pool (< {sparse}): the reward is sparse and the teacher's log-probs "
        why += "pay (hard regime: TRRD level with SeqKD and GKD, ahead of GRPO per FLOP)"
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
        why += f"{cheap.against_trrd} over TRRD; on the pretrained pair, {real.ratio:.0f}x, every method was level)"
    if method == "grpo" and ratio is not None and ratio >= STRONG_TEACHER and pass_rate < SATURATED:
        strong = _measured_at(MEASURED_RATIOS[1])
        why += f"; with a teacher {ratio:.0f}x the student its distribution pays per step ({strong.regime}: "
        why += f"{strong.per_step}): where steps or seconds, not FLOPs, are the limit, gkd"
    if not within:
        why += f" (measured at teachers {MEASURED_RATIOS[0]:.0f}-{MEASURED_RATIOS[1]:.1f}x; this one is {ratio:.1f}x)"
    return Advice(method, why, near.regime, within)


def _measured_at(ratio: float) -> Evidence:
    """The measured regime with a teacher `ratio` times the student (the ratio regimes: one each)."""
    return next(e for e in EVIDENCE if e.ratio == ratio)
