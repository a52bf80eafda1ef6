"""The size sweep (pipeline.sweep): students of several sizes from one teacher, each in its own run folder on the
base run's data and teacher, then one report with the accuracy-latency front."""

import dataclasses
import json

import pytest
from conftest import MICRO_RUN

from deploy.manifest import verify_package
from deploy.record import ArtefactRecord, ValidationReport
from pipeline.sweep import combine, point_configs, run_sweep, sweep_points
from rakd.schema import ConfigError


def test_sizes_name_their_points_and_bad_ones_are_refused():
    points = sweep_points(["20", "15:1024", "15:kv2", "15:1024:kv2"])
    assert [p.name for p in points] == ["l20", "l15-f1024", "l15-kv2", "l15-f1024-kv2"]
    assert "distill.student.prune.kv_heads=2" in points[3].overrides
    assert not any("kv_heads" in o for o in points[1].overrides)  # unset: the config's default, out of the key
    assert "distill.student.prune.layers=15" in points[1].overrides
    assert (
        "distill.student.prune.ffn=1024" in points[1].overrides
        and "distill.student.prune.ffn=null" in points[0].overrides
    )
    with pytest.raises(ConfigError, match=r"expected LAYERS\[:FFN_CHANNELS\]\[:kvGROUPS\]"):
        sweep_points(["15x"])
    with pytest.raises(ConfigError, match="given twice"):
        sweep_points(["15", "15"])


def _report(n_sha: str, *records: ArtefactRecord, threads: int = 2) -> ValidationReport:
    data = {"n": 300, "sha256": n_sha}
    return ValidationReport("now", "run", data, {}, threads, 64, {}, "pytorch", {"student": "pytorch"}, list(records))


def test_combining_labels_each_student_and_keeps_the_teacher_once():
    def point(label, model="student", accuracy=0.5, latency=100.0):
        return ArtefactRecord(label, "gguf", model=model, accuracy=accuracy, latency_ms_p50=latency, passed=True)

    first = _report("a", point("gguf-q8_0"), point("teacher/gguf-q8_0", "teacher", 0.9, 300.0))
    second = _report("a", point("gguf-q8_0", accuracy=0.4, latency=60.0))
    combined = combine({"l20": first, "l10": second})
    assert [r.label for r in combined.artefacts] == ["l20/gguf-q8_0", "l10/gguf-q8_0", "teacher/gguf-q8_0"]
    with pytest.raises(ConfigError, match=r"sweep points \['l10'\] validated other problems or thread counts"):
        combine({"l20": first, "l10": dataclasses.replace(second, threads=4)})


def test_the_point_that_is_the_config_s_own_student_is_the_base_run_itself(tmp_path):
    """A config whose student is already pruned by measurement to 1 layer (as configs/smollm.yaml's is to 15): the
    sweep's point "1" changes nothing, so it is the base run (its student, exports and validation reused), and it,
    not the first point, validates the teacher's artefacts; the other point gets a run folder of its own and no
    teacher artefacts. Without such a point, the first point validates the teacher, as before."""
    overrides = [f"run.root={tmp_path}", "run.name=base", "export.teacher=true"]
    pruned = [*overrides, "distill.student.model=null", "distill.student.prune.layers=1"]
    base, (narrow, own) = point_configs("configs/smoke.yaml", pruned, sweep_points(["1:32", "1"]))
    assert own.run.dir == base.run.dir == tmp_path / "base" and own.export.teacher
    assert narrow.run.dir == tmp_path / "base-l1-f32" and not narrow.export.teacher
    assert narrow.distill.student.prune.ffn == 32 and own.distill.student.prune.ffn is None
    base, (first, second) = point_configs("configs/smoke.yaml", overrides, sweep_points(["1", "1:32"]))
    assert (first.run.dir, second.run.dir) == (tmp_path / "base-l1", tmp_path / "base-l1-f32")
    assert first.export.teacher and not second.export.teacher and base.run.dir == tmp_path / "base"


@pytest.mark.integration
def test_a_sweep_makes_each_student_on_one_teacher_and_reports_the_front(tmp_path):
    """Two students of the micro teacher (1 layer; 1 layer of 32 feed-forward channels), each distilled, exported
    and validated in its own run on the base run's data and teacher; the teacher validated once, beside the first."""
    overrides = [
        f"run.root={tmp_path}",
        "run.name=base",
        *MICRO_RUN,
        "distill.rl.steps=1",
        "distill.eval_every=0",
        "distill.student.prune.calibration=4",
        "distill.student.prune.max_new_tokens=8",
        "export.teacher=true",
        "export.formats=[gguf]",
        "export.gguf_quant=[q8_0]",
        "validation.n_problems=4",
        "validation.isolate=false",
        "validation.max_new_tokens=12",
        "validation.gates.min_accuracy=0",
        "validation.gates.max_accuracy_drop=null",
        "package.budget={accuracy_loss: 1.0}",  # the fastest artefact of any point, the teacher's included
    ]
    out = tmp_path / "sweep"
    data = run_sweep("configs/smoke.yaml", overrides, sweep_points(["1", "1:32"]), out)
    labels = [r["artefact"] for r in data["artefacts"]]
    assert {"l1/gguf-f16", "l1/gguf-q8_0", "l1-f32/gguf-f16", "teacher/gguf-f16"} <= set(labels)
    assert sum(label.startswith("teacher/") for label in labels) == 3  # f16, q8_0 and its PyTorch reference, once
    assert any(r["front"] for r in data["artefacts"]) and data["n"] == 4
    assert any(r["front_size"] for r in data["artefacts"])
    assert "- accuracy against size: " in (out / "sweep.md").read_text()
    fastest = min((r for r in data["artefacts"] if r["latency_ms_p50"] is not None), key=lambda r: r["latency_ms_p50"])
    assert data["package"]["artefact"] == fastest["artefact"]  # every point's artefacts to choose from
    manifest = verify_package(tmp_path / "base-sweep" / "package")
    assert [m.label for m in manifest.models] == [fastest["artefact"]] and manifest.chosen == data["package"]["chosen"]
    assert f"ships {fastest['artefact']}: " in (out / "sweep.md").read_text()
    assert (out / "accuracy_vs_latency.png").read_bytes()[:4] == b"\x89PNG" and "| front |" in (
        out / "sweep.md"
    ).read_text()
    for name, ffn in (("l1", 64), ("l1-f32", 32)):  # each student its own size, on the base run's teacher
        config = json.loads((tmp_path / f"base-{name}" / "student" / "config.json").read_text())
        assert config["num_hidden_layers"] == 1 and config["intermediate_size"] == ffn
        assert (tmp_path / f"base-{name}" / "teacher").resolve() == (tmp_path / "base" / "teacher").resolve()
    again = run_sweep("configs/smoke.yaml", overrides, sweep_points(["1", "1:32"]), out)  # every stage current
    assert again == json.loads((out / "sweep.json").read_text())
