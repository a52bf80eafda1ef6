"""The which-method-when rule (rakd.stages.advice): its thresholds against the measured regimes it cites."""

import json
from pathlib import Path

import pytest

from rakd.compare.evidence import regime_evidence
from rakd.stages.advice import CHEAP_TEACHER, EVIDENCE, EVIDENCE_FILE, SPARSE, nearest_regime, recommend

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


RECORDS = json.loads(EVIDENCE_FILE.read_text())["regimes"]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r["regime"])
def test_the_evidence_is_what_its_committed_results_say(record):
    # every number of the rule's evidence (the leader at equal FLOPs, those level with it, each method against TRRD
    # per FLOP, step and second, the pass rate at step 0, the ratio) recomputed from the per-problem answers and the
    # context kept in git: `python bench/compare_regimes.py --evidence` writes the file; nothing in it is typed
    assert regime_evidence(record["regime"], RESULTS / record["results"]) == record


def test_the_evidence_covers_the_regimes_the_rule_cites():
    assert [e.regime for e in EVIDENCE] == ["hard", "base", "ways", "edge", "trace", "plateau", "ratio-x22",
                                            "ratio-x2", "real"]  # fmt: skip
    led = [e.regime for e in EVIDENCE if e.continuing_led]  # rule 1: where a warm start stopped before its plateau
    assert led == ["hard", "edge", "ratio-x22", "ratio-x2"]
    assert "18-23 points over TRRD" in recommend(0.05, 8.0, before_plateau=True).why


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
    assert "GKD +11.0 [+8.2, +13.8] over TRRD, GRPO level" in strong.why
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
