"""The Prefect pipeline on the smoke config under prefect_test_harness: stages, caching, resume, artifacts.

The smoke run itself (`smoke_run`, tests/conftest.py) is trained once for the whole suite."""

import json

import pytest
import torch
from conftest import MICRO_RUN, smoke_overrides
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.states import Failed
from safetensors.torch import load_file

from deploy.manifest import verify_package
from flows.pipeline import rakd_pipeline
from flows.stages import slug, transient_only
from pipeline.cache import stage_keys
from pipeline.config import load_config
from pipeline.registry import STAGES as REGISTRY
from rakd.layout import RunLayout
from rakd.schema import ConfigError, DataError
from rakd.stages.advice import recommend
from rakd.stages.distill import InjectedFault

STAGES = [stage.name for stage in REGISTRY]
# The resume test needs only one artefact after distill: one GGUF keeps its export and validation short.
LIGHT_EXPORT = ["export.formats=[gguf]", "export.onnx_quant=[]", "export.gguf_quant=[q8_0]"]
MICRO = [*MICRO_RUN, *LIGHT_EXPORT]


@pytest.fixture(scope="module")
def root(smoke_root):
    return smoke_root


@pytest.fixture(scope="module")
def harness(prefect_harness):
    return prefect_harness


@pytest.fixture(scope="module")
def first_run(smoke_run):
    return smoke_run


def overrides(root, *extra):
    return smoke_overrides(root, *extra)


def read_artifacts(keys):
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    return {a.key: a for a in found}


@pytest.mark.integration
def test_pipeline_runs_every_stage_and_writes_every_output(first_run, root):
    assert list(first_run["states"]) == STAGES
    assert set(first_run["states"].values()) == {"Completed"}
    run = RunLayout(root / "smoke")
    for path in (
        "config.yaml",
        "data/card.json",
        "tokenizer/tokenizer.json",
        "teacher/eval.json",
        "teacher/model.safetensors",
        "student/eval.json",
        "student/eval_warmstart.json",
        "student/metrics.jsonl",
        "student/checkpoints/step-6/model.safetensors",
        "export/model-f16.gguf",
        "export/model-q8_0.gguf",
        "export/onnx-w8/model.onnx",
        "validate/report.md",
        "package/README.md",
    ):
        assert (run.root / path).is_file(), path
    results = first_run["results"]
    teacher, student = json.loads((run.teacher / "eval.json").read_text()), results["distill"]["eval"]
    assert teacher == results["teacher"]["eval"] and teacher["n"] == 48
    # Trained, not random: an untrained model never ends with an answer the verifier can read.
    assert teacher["no_answer_rate"] <= 0.5 and student["no_answer_rate"] <= 0.5, (teacher, student)
    assert teacher["greedy_accuracy"] > 0
    assert student["method"] == "rakd" and teacher["parameters"] > 4 * student["parameters"]
    rows = [json.loads(line) for line in (run.student / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in results["distill"]["val_by_step"]] == [3, 6]
    # the warm start on its RL pool: step 1's samples, drawn before any update
    pool = student["rl_pool"]
    assert pool["pass_rate"] == rows[0]["accuracy"] and pool["samples"] == rows[0]["groups_drawn"] * 8
    assert 0 <= pool["informative_groups"] <= 1
    # ... and the method rakd.stages.advice's rule picks from it, with the non-embedding ratio it used
    advice = student["advice"]
    expected = recommend(pool["pass_rate"], advice["ratio"], before_plateau=False)  # smoke: no warm-start stop
    assert advice == {**expected.as_dict(), "ratio": advice["ratio"]}
    assert advice["ratio"] > 1
    # the compute ledger: every phase the stage ran, summed into its total, the running total in each RL row
    ledger = student["flops"]
    phases = ("teacher_generate", "teacher_score", "student_sft", "student_sample", "student_update", "eval")
    assert set(ledger) == {*phases, "total"} and all(ledger[p] > 0 for p in phases)
    assert ledger["total"] == sum(ledger[p] for p in phases)
    assert rows[-1]["flops_total"] == ledger["total"] - student["eval_flops"]  # all but the final test run
    assert teacher["flops"]["teacher_train"] > 0 and teacher["flops"]["total"] > teacher["flops"]["teacher_train"]
    parity = results["export"]["parity"]
    assert {r["artefact"]: r["format"] for r in parity["artefacts"]} == {
        "onnx-fp32": "onnx",
        "onnx-w8": "onnx",
        "gguf-f16": "gguf",
        "gguf-q8_0": "gguf",
        "gguf-q4_0": "gguf",
    }
    assert all(r["passed"] for r in parity["artefacts"]) and "system_info" in parity["llama_cpp"]
    q8 = next(r for r in parity["artefacts"] if r["artefact"] == "gguf-q8_0")
    assert q8["top1_agreement"] >= 0.9  # on a trained model
    report = results["validate"]["report"]
    assert [r["label"] for r in report["artefacts"]] == ["pytorch"] + [r["artefact"] for r in parity["artefacts"]]
    assert report["reference"] == "pytorch" and report["machine"]["llama_cpp"]["system_info"]
    manifest = verify_package(run.package)
    assert manifest.models[0].format == "gguf" and manifest.configs["distill"]["method"] == "rakd"
    assert manifest.teacher["parameters"] == teacher["parameters"]
    assert "--no-repack" in (run.package / "README.md").read_text()


@pytest.mark.integration
def test_pipeline_publishes_artifacts(first_run):
    keys = [f"smoke-{s}" for s in STAGES] + ["smoke-report", "smoke-teacher-progress", "smoke-distill-progress"]
    artifacts = read_artifacts(keys)
    assert set(artifacts) == set(keys)
    assert artifacts["smoke-validate"].type == "table" and "gguf-q8_0" in str(artifacts["smoke-validate"].data)
    assert artifacts["smoke-prep"].type == "table" and "train" in str(artifacts["smoke-prep"].data)
    assert "RL step 3 (val)" in str(artifacts["smoke-distill"].data)
    report = artifacts["smoke-report"]
    assert report.type == "markdown" and "## accuracy (test split)" in report.data and "gain (distilled" in report.data
    assert "## compute (FLOPs)" in report.data and "teacher_generate" in report.data
    assert artifacts["smoke-distill-progress"].type == "progress" and artifacts["smoke-distill-progress"].data == 100.0


@pytest.mark.integration
def test_same_config_is_all_cached_and_export_change_reruns_downstream_only(first_run, root):
    again = rakd_pipeline(config="configs/smoke.yaml", overrides=overrides(root))
    assert set(again["states"].values()) == {"Cached"}
    assert again["results"]["distill"]["eval"] == first_run["results"]["distill"]["eval"]
    changed = rakd_pipeline(config="configs/smoke.yaml", overrides=overrides(root, *LIGHT_EXPORT))
    assert changed["states"] == {
        "prep": "Cached",
        "teacher": "Cached",
        "distill": "Cached",
        "export": "Completed",
        "validate": "Completed",
        "package": "Completed",
    }
    labels = {r["artefact"] for r in changed["results"]["export"]["parity"]["artefacts"]}
    assert not any(label.startswith(("gguf-q4", "onnx")) for label in labels)
    # Back to the first config: its results are cached, but the outputs on disk are the other config's: re-run.
    back = rakd_pipeline(config="configs/smoke.yaml", overrides=overrides(root))
    assert back["states"]["distill"] == "Cached" and back["states"]["export"] == "Completed"
    assert any(r["artefact"].startswith("gguf-q4") for r in back["results"]["export"]["parity"]["artefacts"])


@pytest.fixture(scope="module")
def micro_run(harness, root):
    """The checks that train again (refresh, a crash and its resume) run at the micro size, on their own run."""
    return rakd_pipeline(config="configs/smoke.yaml", overrides=overrides(root, *MICRO), run_name="micro")


@pytest.mark.integration
def test_refresh_runs_every_stage_again_to_the_same_result(micro_run, root):
    assert set(micro_run["states"].values()) == {"Completed"}
    refreshed = rakd_pipeline(config="configs/smoke.yaml", overrides=overrides(root, *MICRO), run_name="micro",
                              refresh=True)  # fmt: skip
    assert set(refreshed["states"].values()) == {"Completed"}
    assert refreshed["results"]["distill"]["eval"] == micro_run["results"]["distill"]["eval"]  # deterministic on CPU


@pytest.mark.integration
def test_crash_in_distill_resumes_from_checkpoint_with_the_same_weights(micro_run, root):
    with pytest.raises(InjectedFault):
        rakd_pipeline(
            config="configs/smoke.yaml",
            overrides=overrides(root, "distill.fail_after_step=3", *MICRO),
            run_name="resumed",
        )
    run = root / "resumed"
    assert (run / "student.work" / "checkpoints" / "step-3").is_dir() and not (run / "student").exists()
    resumed = rakd_pipeline(config="configs/smoke.yaml", overrides=overrides(root, *MICRO), run_name="resumed")
    assert resumed["states"]["prep"] == resumed["states"]["teacher"] == "Cached"
    assert resumed["states"]["distill"] == "Completed"
    ours, reference = (
        load_file(run / "student" / "model.safetensors"),
        load_file(root / "micro/student/model.safetensors"),
    )
    assert ours.keys() == reference.keys()
    assert all(torch.allclose(ours[k], reference[k], atol=1e-6) for k in ours)
    metrics = (run / "student" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == len((root / "micro/student/metrics.jsonl").read_text().splitlines()) > 3


@pytest.mark.integration
def test_bad_input_fails_fast_with_the_library_message(harness, root):
    bad = root / "bad.jsonl"
    bad.write_text('{"question": "2+2=?", "answer": "4"}\n')  # GSM8K wants a worked answer ending in '#### 4'
    with pytest.raises(DataError, match="bad.jsonl:1: field 'answer': no final"):
        rakd_pipeline(
            config="configs/smoke.yaml",
            overrides=overrides(root, "prep.source=gsm8k", f"prep.path={bad}"),
            run_name="bad",
        )
    assert not (root / "bad" / "data").exists()
    with pytest.raises(ConfigError, match="distill.methd"):
        rakd_pipeline(config="configs/smoke.yaml", overrides=overrides(root, "distill.methd=rakd"))


def test_retries_only_for_transient_failures():
    assert transient_only(None, None, Failed(data=OSError("disk full"))) is True
    assert transient_only(None, None, Failed(data=ConnectionError("reset"))) is True
    assert transient_only(None, None, Failed(data=FileNotFoundError("x"))) is False
    assert transient_only(None, None, Failed(data=DataError("f:1: field 'answer'"))) is False
    assert transient_only(None, None, Failed(data=InjectedFault("after step 3"))) is False


def test_stage_keys_follow_config_and_inputs(tmp_path):
    base = load_config("configs/smoke.yaml", [f"run.root={tmp_path}"])
    keys = stage_keys(base)
    export = stage_keys(load_config("configs/smoke.yaml", [f"run.root={tmp_path}", "export.parity_prompts=3"]))
    assert [s for s in keys if keys[s] != export[s]] == ["export", "validate", "package"]
    fault = stage_keys(load_config("configs/smoke.yaml", [f"run.root={tmp_path}", "distill.fail_after_step=2"]))
    assert fault == keys  # fault injection never changes what a stage produces
    data = tmp_path / "tasks.jsonl"
    data.write_text('{"question": "1+1=?", "answer": "2"}\n')
    from_file = load_config("configs/smoke.yaml", [f"run.root={tmp_path}", "prep.source=jsonl", f"prep.path={data}"])
    before = stage_keys(from_file)
    data.write_text('{"question": "1+2=?", "answer": "3"}\n')
    after = stage_keys(from_file)
    assert all(before[s] != after[s] for s in STAGES)  # a changed input file changes every stage after it
    assert slug("My_Run.v2") == "my-run-v2"
