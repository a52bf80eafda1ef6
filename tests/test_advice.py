"""The which-method-when rule (rakd.stages.advice): its thresholds against the measured regimes it cites."""

from pathlib import Path

import pytest

from rakd.compare.stats import comparison_runs, leaders
from rakd.stages.advice import CHEAP_TEACHER, EVIDENCE, SPARSE, nearest_regime, recommend

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


@pytest.mark.parametrize("evidence", EVIDENCE, ids=lambda e: e.regime)
def test_the_evidence_is_what_its_committed_results_say(evidence):
    # the leader at equal FLOPs and the methods level with it, recomputed from the per-problem answers kept in git
    # (continuing SFT on the warm start's traces aside: the rule's first item covers it)
    runs = comparison_runs(RESULTS / evidence.results)
    runs.pop("sft", None)
    assert leaders(runs) == (evidence.best, evidence.level)


def test_the_rule_picks_each_measured_regimes_winner_or_one_level_with_it():
    picks = {e.regime: recommend(e.pass_rate, e.ratio).method for e in EVIDENCE}
    assert picks == {"hard": "rakd", "base": "grpo", "ways": "grpo", "edge": "grpo", "trace": "grpo", "plateau": "grpo",
                     "ratio-x22": "grpo", "ratio-x2": "seqkd_fresh", "real": "seqkd_fresh"}  # fmt: skip
    assert all(picks[e.regime] in (e.best, *e.level) for e in EVIDENCE)
    assert all(recommend(e.pass_rate, e.ratio).nearest == e.regime for e in EVIDENCE)
    assert all(recommend(e.pass_rate, e.ratio).within_evidence for e in EVIDENCE)


def test_threshold_and_warm_start_before_its_plateau():
    assert recommend(SPARSE - 0.001).method == "rakd" and recommend(SPARSE).method == "grpo"
    advice = recommend(0.05, 8.0, before_plateau=True)
    assert advice.method == "sft" and "plateau" in advice.why
    assert recommend(0.25).nearest == nearest_regime(0.25).regime == "base"
    saturated = recommend(0.998, 8.0)
    assert saturated.method == "grpo" and "little left to learn" in saturated.why


def test_the_ratio_picks_the_nearest_regime_and_a_strong_teacher_is_named_for_a_step_budget():
    # 30% of the pool: at 8x the many-ways regime is nearest, at 20x the 22.5x one
    assert recommend(0.30, 8.0).nearest == "ways" and recommend(0.30, 20.0).nearest == "ratio-x22"
    strong = recommend(0.30, 20.0)
    assert strong.method == "grpo" and "gkd" in strong.why and strong.within_evidence
    assert "gkd" not in recommend(0.30, 8.0).why and "gkd" not in recommend(0.99, 20.0).why


def test_a_cheap_teacher_picks_seqkd_on_fresh_traces_where_grpo_would_be_picked():
    cheap = recommend(0.40, 2.2)
    assert cheap.method == "seqkd_fresh" and cheap.nearest == "ratio-x2" and "SeqKD +8.5" in cheap.why
    assert "every method was level" in cheap.why and recommend(0.40, 2.8).nearest == "real"
    assert recommend(0.40, CHEAP_TEACHER * 1.01).method == "grpo"
    # a sparse reward or a saturated student keep their own method; no ratio, no clause
    assert recommend(0.05, 2.0).method == "rakd" and recommend(0.99, 2.0).method == "grpo"
    assert recommend(0.40).method == "grpo"


def test_a_ratio_outside_the_measured_ones_is_said_to_extrapolate():
    far = recommend(0.5, 40.0)
    assert not far.within_evidence and "40.0x" in far.why
    assert recommend(0.5, None).within_evidence and not recommend(0.5, 1.2).within_evidence


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_a_pass_rate_outside_0_1_is_refused(rate):
    with pytest.raises(ValueError, match="pass_rate"):
        recommend(rate)
