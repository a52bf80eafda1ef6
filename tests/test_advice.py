"""The which-method-when rule (rakd.advice): its thresholds against the measured regimes it cites."""

import pytest

from rakd.advice import EVIDENCE, SPARSE, nearest_regime, recommend


def test_the_rule_picks_each_measured_regimes_winner_or_one_level_with_it():
    # hard (5.7%): TRRD; ways, edge, trace, plateau: GRPO; base: GRPO, level with the best (KDRL +3.0 vs GRPO +2.6)
    picks = {e.regime: recommend(e.pass_rate, e.ratio).method for e in EVIDENCE}
    assert picks == {"hard": "rakd", "base": "grpo", "ways": "grpo", "edge": "grpo", "trace": "grpo", "plateau": "grpo",
                     "ratio-x22": "grpo"}  # fmt: skip
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


def test_a_ratio_outside_the_measured_ones_is_said_to_extrapolate():
    far = recommend(0.5, 40.0)
    assert not far.within_evidence and "40.0x" in far.why
    assert recommend(0.5, None).within_evidence


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_a_pass_rate_outside_0_1_is_refused(rate):
    with pytest.raises(ValueError, match="pass_rate"):
        recommend(rate)
