import json

import pytest

from pipeline.config import load_config
from rakd.io import read_jsonl
from rakd.schema import DataError
from rakd.stages.prep import PrepConfig, question_id, run_prep, split_of
from rakd.verify import reward


def prep_config(**kw):
    base = dict(generator=dict(n_items=300, templates=["expression", "word"]), tokenizer=dict(vocab_size=300))
    base.update(kw)
    return PrepConfig.model_validate(base)


def test_prep_writes_disjoint_verified_splits_and_card(tmp_path):
    result = run_prep(prep_config(), tmp_path)
    splits = {name: read_jsonl(tmp_path / "data" / f"{name}.jsonl") for name in ("train", "val", "test")}
    ids = {name: {row["id"] for row in rows} for name, rows in splits.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    card = json.loads((tmp_path / "data" / "card.json").read_text())
    assert card == result.card
    assert card["counts"]["total"] == 300 == sum(len(rows) for rows in splits.values())
    assert card["counts"]["train"] > card["counts"]["val"] > 0
    assert card["tokenizer"]["vocab_size"] <= 300
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file()
    for row in splits["train"]:
        assert reward(row["solution"], row["answer"]) == 1.0
        assert row["id"] == question_id(row["question"])


def test_same_config_same_bytes(tmp_path):
    run_prep(prep_config(), tmp_path / "a")
    run_prep(prep_config(), tmp_path / "b")
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "card.json"):
        assert (tmp_path / "a/data" / name).read_bytes() == (tmp_path / "b/data" / name).read_bytes()


def test_split_depends_on_question_not_order():
    cfg = prep_config()
    assert split_of("2+2=?", cfg) == split_of("  2+2=? ", cfg)


def test_dedup_by_normalised_question(tmp_path):
    src = tmp_path / "dup.jsonl"
    rows = [
        {"question": "What is 2+2?", "answer": "4"},
        {"question": "what is  2+2? ", "answer": "4"},
        {"question": "3+3?", "answer": "6"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_prep(
        prep_config(source="jsonl", path=src, tokenizer=None, val_fraction=0.0, test_fraction=0.0), tmp_path
    )
    assert result.card["counts"]["total"] == 2
    assert result.card["duplicates_removed"] == 1
    assert result.tokenizer_dir is None


def test_bad_input_writes_nothing(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"question": "q", "answer": "4"}\n{"question": "r"}\n')
    out = tmp_path / "run"
    with pytest.raises(DataError, match="bad.jsonl:2: field 'answer'"):
        run_prep(prep_config(source="jsonl", path=src), out)
    assert not out.exists() or not any(out.iterdir())


def test_skip_invalid_counts_rows_in_card(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text(
        "".join(json.dumps({"question": f"{i}+1=?", "answer": str(i + 1)}) + "\n" for i in range(20)) + "{oops\n"
    )
    result = run_prep(prep_config(source="jsonl", path=src, skip_invalid=True, tokenizer=None), tmp_path)
    assert result.card["invalid_skipped"] == 1
    assert result.card["counts"]["total"] == 20


def test_failed_rerun_keeps_previous_outputs(tmp_path):
    run_prep(prep_config(), tmp_path)
    before = (tmp_path / "data" / "train.jsonl").read_bytes()
    src = tmp_path / "bad.jsonl"
    src.write_text("{oops\n")
    with pytest.raises(DataError):
        run_prep(prep_config(source="jsonl", path=src), tmp_path)
    assert (tmp_path / "data" / "train.jsonl").read_bytes() == before


def test_embedded_configs_load():
    for name in ("configs/tiny.yaml", "configs/smoke.yaml", "configs/compare-edge.yaml"):
        cfg = load_config(name)
        assert cfg.prep.source == "generator"
    tiny = load_config("configs/tiny.yaml")  # traces of every difficulty, SFT to its plateau, then GRPO
    stop = tiny.distill.warmstart.stop
    assert tiny.distill.warmstart.max_difficulty is None and stop.patience == 4 and stop.val_accuracy is None
    assert tiny.distill.method == "grpo" and tiny.prep.generator.max_ops == 5
    edge = load_config("configs/compare-edge.yaml")  # the edge regime: 1-3-step traces, stopped at a target
    assert edge.distill.warmstart.max_difficulty == 3 < edge.distill.warmstart.stop.min_difficulty == 4
    assert load_config("configs/smoke.yaml").distill.warmstart.stop is None  # no curriculum, SFT runs its steps
