"""Places where the pipeline used to take a wrong turn without a word: each now says so, as a user error."""

import pytest

from pipeline.config import load_config
from rakd.schema import ConfigError, DataError
from rakd.stages.config import ValStop


def test_a_val_split_with_nothing_to_check_is_a_data_error_naming_the_file():
    from rakd.stages.stop import check_records

    records = [{"question": "1+1=?", "answer": "2", "ops": 1}]
    with pytest.raises(DataError, match=r"val\.jsonl has no questions with at least 3 operations"):
        check_records(records, ValStop(patience=2, min_difficulty=3), "distill.warmstart.stop: runs/x/data/val.jsonl")
    with pytest.raises(DataError, match="no questions to check"):
        check_records([], ValStop(patience=2), "teacher.stop: val.jsonl")


def test_rl_on_unseen_questions_refuses_when_too_few_are_left():
    from rakd.stages.distill import rl_records

    cfg = load_config(None, ["distill.warmstart.n_prompts=10", "distill.rl.prompts_per_step=4"]).distill
    train = [{"question": f"q{i}", "answer": str(i)} for i in range(12)]
    with pytest.raises(ConfigError, match=r"2 of them after .*n_prompts=10.*prompts_per_step=4"):
        rl_records(cfg, train)  # used to draw silently from the 10 the warm start trained on
    assert (
        rl_records(cfg, train + [{"question": "q", "answer": "0"}] * 2)
        == train[10:] + [{"question": "q", "answer": "0"}] * 2
    )
    reuse = cfg.model_copy(update={"rl": cfg.rl.model_copy(update={"prompts": "all"})})
    assert rl_records(reuse, train) == train
