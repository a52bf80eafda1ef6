"""The smoke config end to end through the CLI: prep -> teacher -> distill."""

import json

import pytest

from rakd.cli import main


@pytest.mark.integration
def test_demo_on_smoke_config(tmp_path, capsys):
    assert main(["demo", "--config", "configs/smoke.yaml", "--set", f"run.root={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "== summary (test split) ==" in out and "student (rakd)" in out
    run = tmp_path / "smoke"
    for path in ("config.yaml", "data/card.json", "tokenizer/tokenizer.json", "teacher/eval.json",
                 "teacher/model.safetensors", "student/eval.json", "student/eval_warmstart.json",
                 "student/metrics.jsonl", "student/checkpoints/step-6/model.safetensors"):
        assert (run / path).is_file(), path
    teacher = json.loads((run / "teacher/eval.json").read_text())
    student = json.loads((run / "student/eval.json").read_text())
    assert 0.0 <= student["greedy_accuracy"] <= 1.0 and student["method"] == "rakd"
    assert teacher["parameters"] > 4 * student["parameters"]
    rows = [json.loads(line) for line in (run / "student/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6
