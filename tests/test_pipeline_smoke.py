"""The smoke config end to end through the CLI: prep -> teacher -> distill -> export -> validate -> package."""

import json

import pytest

from deploy.package import verify_package
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
    parity = json.loads((run / "export/parity.json").read_text())
    labels = {r["artefact"] for r in parity["artefacts"]}
    assert {"onnx-fp32", "onnx-w8", "gguf-f16", "gguf-q8_0"} <= labels and any(a.startswith("gguf-q4") for a in labels)
    assert all(r["passed"] for r in parity["artefacts"])
    q8 = next(r for r in parity["artefacts"] if r["artefact"] == "gguf-q8_0")
    assert q8["top1_agreement"] >= 0.9  # on a trained model
    for path in ("export/model-f16.gguf", "export/model-q8_0.gguf", "export/onnx-w8/model.onnx"):
        assert (run / path).is_file(), path
    report = json.loads((run / "validate/report.json").read_text())
    validated = {r["label"] for r in report["artefacts"]}
    assert validated == {"pytorch"} | labels and report["reference"] == "pytorch"
    assert "verify-package: ok" in out and "gguf-q8_0" in out
    manifest = verify_package(run / "package")
    assert manifest.models[0].format == "gguf" and manifest.configs["distill"]["method"] == "rakd"
    assert manifest.teacher["parameters"] == teacher["parameters"]
