"""Edge validation and packaging on a tiny random model exported to ONNX and GGUF (marker `parity`)."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import parse_modelfile
from tiers import heavy_fixture

from deploy.artefacts import discover
from deploy.config import Gates, PackageConfig, ValidateConfig
from deploy.manifest import PackageError, verify_package
from deploy.package import build_package
from deploy.record import ArtefactRecord, ValidationReport
from deploy.report import apply_gates, validation_rows
from deploy.runtimes import load_package
from deploy.validate import load_problems, validate
from export.quantize import quantize_gguf
from export.run import ExportConfig, run_export
from rakd.data.generator import GeneratorConfig, generate
from rakd.io import to_jsonl
from rakd.models.load import ModelLoadError, save_model
from rakd.models.zoo import build_model, preset_config
from rakd.schema import DataError

pytestmark = pytest.mark.parity

# The micro model is random: no accuracy or latency gates here (the defaults are the tiny demo's).
OPEN_GATES = dict(min_accuracy=0.0, max_latency_ms_p95=None, max_size_mb=None)
FAST = dict(n_problems=6, max_new_tokens=10, progress_every=3, isolate=False, gates=OPEN_GATES)


@heavy_fixture(scope="module")
def run_dir(tokenizer, tmp_path_factory):
    """A run directory as the pipeline leaves it: data/test.jsonl, student/, export/ (onnx-fp32, f16, q8_0)."""
    run = tmp_path_factory.mktemp("run") / "micro"
    save_model(build_model(preset_config("test-micro", tokenizer), seed=3), tokenizer, run / "student")
    problems = generate(GeneratorConfig(n_items=8, seed=4))
    (run / "data").mkdir()
    (run / "data" / "test.jsonl").write_text(to_jsonl(problems))
    (run / "config.yaml").write_text("distill:\n  method: rakd\n")
    cfg = ExportConfig(onnx_quant=[], gguf_quant=["q8_0"], parity_prompts=2, parity_max_new_tokens=6)
    run_export(cfg, run / "student", run / "export", [p["question"] for p in problems])
    return run


@pytest.fixture(scope="module")
def report(run_dir):
    """Validation of the whole run with one fresh process per artefact (the real isolation path)."""
    cfg = ValidateConfig(**{**FAST, "isolate": True})
    return validate(cfg, run_dir, run_dir / "data" / "test.jsonl", run_dir / "validate").report


def test_validation_writes_every_key_with_sane_values(report, run_dir):
    by_label = {r.label: r for r in report.artefacts}
    assert set(by_label) == {"pytorch", "onnx-fp32", "gguf-f16", "gguf-q8_0"}
    assert report.reference == "pytorch" and report.data["n"] == 6
    reference = by_label["pytorch"]
    for record in by_label.values():
        assert record.error is None, record.error
        assert 0 <= record.accuracy <= 1 and 0 <= record.no_answer_rate <= 1
        assert 0 <= record.loop_rate <= record.truncation_rate <= 1 and 0 <= record.mean_new_tokens <= 10
        assert record.peak_rss_mb > 10 and record.size_mb > 0 and record.threads == 1
        assert record.passed is True and record.failed_gates == []
        assert len(record.per_problem["correct"]) == 6
        if record is reference:  # decoded in batches: the yardstick, not timed, not compared with itself
            assert record.latency_ms_p50 is None and record.kld_mean is None and record.flips_to_wrong is None
            continue
        assert 0 < record.ttft_ms_p50 <= record.ttft_ms_p95
        assert 0 < record.latency_ms_p50 <= record.latency_ms_p95
        assert record.ttft_ms_p50 <= record.latency_ms_p50
        # every flip is one problem's correctness changing: the accuracy difference is their balance
        flips = record.flips_to_wrong - record.flips_to_right
        assert round(6 * (reference.accuracy - record.accuracy)) == flips
        assert 0 <= record.kld_mean <= record.kld_p99 <= record.kld_max and record.kld_tokens > 0
    # Token agreement over the reference's completions: fp32 ONNX matches to float rounding, the F16 GGUF (with a
    # device's F16 KV cache) closely, q8_0 less closely.
    assert by_label["onnx-fp32"].kld_mean < 1e-6 and by_label["onnx-fp32"].top1_agreement == 1.0
    assert by_label["gguf-f16"].kld_mean < 1e-3 and by_label["gguf-f16"].top1_agreement > 0.9
    assert by_label["gguf-f16"].kld_mean < by_label["gguf-q8_0"].kld_mean
    # The same greedy decoding everywhere: fp32 ONNX and F16 GGUF reproduce the PyTorch outputs.
    outputs = [s["output"] for s in reference.samples]
    assert [s["output"] for s in by_label["onnx-fp32"].samples] == outputs
    assert [s["output"] for s in by_label["gguf-f16"].samples] == outputs
    assert by_label["gguf-q8_0"].size_mb < by_label["gguf-f16"].size_mb
    # llama.cpp runs without torch in its process: far less memory than the PyTorch reference.
    assert by_label["gguf-f16"].peak_rss_mb < by_label["pytorch"].peak_rss_mb
    on_disk = json.loads((run_dir / "validate" / "report.json").read_text())
    assert on_disk == report.as_json() and all("sequences" not in r for r in on_disk["artefacts"])
    assert ValidationReport.from_json(on_disk) == report  # the one shape, read back whole
    markdown = (run_dir / "validate" / "report.md").read_text()
    assert all(f"| {label} |" in markdown for label in by_label)
    assert (run_dir / "validate" / "accuracy_vs_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gates_name_what_failed():
    record = ArtefactRecord("gguf-q8_0", "gguf", accuracy=0.70, latency_ms_p95=120.0, size_mb=3.0)
    gates = Gates(min_accuracy=0.75, max_accuracy_drop=0.05, max_latency_ms_p95=100, max_size_mb=2.5)
    failed = apply_gates(record, gates, reference_accuracy=0.80)
    assert failed == [
        "min_accuracy: 0.700 < 0.75",
        "max_accuracy_drop: 0.100 > 0.05",
        "max_latency_ms_p95: 120.0 > 100",
        "max_size_mb: 3.00 > 2.5",
    ]
    assert apply_gates(record, Gates(min_accuracy=0.7, max_accuracy_drop=0.1), reference_accuracy=0.80) == []
    assert (
        apply_gates(record, Gates(max_accuracy_drop=0.0), reference_accuracy=None) == []
    )  # no reference: no drop gate
    assert apply_gates(ArtefactRecord("gguf-q8_0", "gguf", error="boom"), Gates(), 0.8) == ["loads"]


def test_gates_fail_as_configured_and_require_pass_exits_non_zero(run_dir, tmp_path, capsys):
    from pipeline.cli import main

    cfg = ValidateConfig(**{**FAST, "gates": Gates(max_size_mb=0.01)})
    result = validate(cfg, run_dir, run_dir / "data" / "test.jsonl", tmp_path / "gated")
    assert not any(r.passed for r in result.report.artefacts)
    assert all(any(g.startswith("max_size_mb") for g in r.failed_gates) for r in result.report.artefacts)
    args = [
        "validate",
        str(run_dir / "export" / "model-q8_0.gguf"),
        "--data",
        str(run_dir / "data" / "test.jsonl"),
        "--limit",
        "3",
        "--out",
        str(tmp_path / "cli"),
        "--set",
        "validation.isolate=false",
    ]
    assert main([*args, "--set", "validation.gates.max_latency_ms_p95=0.000001", "--require-pass"]) == 1
    assert "max_latency_ms_p95" in capsys.readouterr().out
    assert main(args) == 0
    assert json.loads((tmp_path / "cli" / "report.json").read_text())["artefacts"][0]["label"] == "gguf-q8_0"


def test_external_gguf_from_llama_cpp_quantiser_validates_like_ours(run_dir, tmp_path):
    external = quantize_gguf(run_dir / "export" / "model-f16.gguf", tmp_path / "someone-elses-Q8_0.gguf", "q8_0")
    data = run_dir / "data" / "test.jsonl"
    theirs = validate(ValidateConfig(**FAST), external, data, tmp_path / "theirs").report.artefacts
    ours = validate(ValidateConfig(**FAST), run_dir / "export" / "model-q8_0.gguf", data, tmp_path / "ours").report
    assert [a.label for a in theirs] == ["gguf-q8_0"]  # from the file's own file type, not its name
    assert theirs[0].passed and theirs[0].reference is False
    assert [s["output"] for s in theirs[0].samples] == [s["output"] for s in ours.artefacts[0].samples]
    assert ours.reference is None  # a lone file has no fp32 reference
    # Nothing looked at its answers (min_accuracy 0, no reference for the drop gate): the report says so.
    assert not theirs[0].accuracy_gated
    assert validation_rows(theirs)[0]["result"].startswith("pass (accuracy not gated")
    assert 0 <= theirs[0].accuracy <= theirs[0].accuracy_flexible <= 1


def test_bad_inputs_give_clear_errors(run_dir, tmp_path):
    data = run_dir / "data" / "test.jsonl"
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="notes.txt: not a model"):
        discover(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="empty: not a model"):
        discover(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="missing: no such file"):
        discover(tmp_path / "missing")
    (tmp_path / "blank.jsonl").write_text("\n")
    with pytest.raises(DataError, match="blank.jsonl: empty data file"):
        load_problems(tmp_path / "blank.jsonl", 10)
    (tmp_path / "bad.jsonl").write_text('{"question": "1+1=?"}\n')
    with pytest.raises(DataError, match="bad.jsonl:1: field 'answer'"):
        load_problems(tmp_path / "bad.jsonl", 10)
    # GSM8K-style data works as is.
    (tmp_path / "gsm.jsonl").write_text(json.dumps({"question": "2+2=?", "answer": "2+2=4\n#### 4"}) + "\n")
    assert load_problems(tmp_path / "gsm.jsonl", 10) == [
        {"question": "2+2=?", "answer": "4", "solution": "2+2=4\n#### 4"}
    ]
    # An ONNX folder without its tokenizer, a corrupt GGUF: reported as failed, the rest still validated.
    broken_run = tmp_path / "broken-run"
    shutil.copytree(run_dir / "export", broken_run / "export")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (broken_run / "export" / "onnx-fp32" / name).unlink(missing_ok=True)
    (broken_run / "export" / "model-bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    parity = json.loads((broken_run / "export" / "parity.json").read_text())  # as if export had made it
    parity["artefacts"].append({"artefact": "gguf-bad", "format": "gguf", "path": "model-bad.gguf"})
    (broken_run / "export" / "parity.json").write_text(json.dumps(parity))
    records = {r.label: r for r in validate(ValidateConfig(**FAST), broken_run, data, tmp_path / "v").report.artefacts}
    assert "onnx-fp32: ONNX folder without a tokenizer" in records["onnx-fp32"].error
    assert "model-bad.gguf: corrupt or truncated GGUF" in records["gguf-bad"].error
    assert records["gguf-bad"].failed_gates == ["loads"] and records["gguf-bad"].accuracy is None
    assert records["gguf-f16"].passed and records["gguf-q8_0"].passed


def test_a_lone_model_that_does_not_load_is_an_error(run_dir, tmp_path, capsys):
    from pipeline.cli import main

    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    args = [
        "validate",
        str(corrupt),
        "--data",
        str(run_dir / "data" / "test.jsonl"),
        "--out",
        str(tmp_path / "v"),
        "--set",
        "validation.isolate=false",
    ]
    assert main(args) == 2
    assert "corrupt.gguf: llama.cpp cannot load this GGUF" in capsys.readouterr().err  # header parses, model does not
    assert (tmp_path / "v" / "report.json").is_file()  # the failure is in the report too
    assert main(["validate", str(tmp_path / "nowhere"), "--data", str(run_dir / "data" / "test.jsonl")]) == 2
    assert "nowhere: no such file or folder" in capsys.readouterr().err
    assert main(["validate", str(corrupt)]) == 2
    assert "--data is required" in capsys.readouterr().err


def test_a_crashing_runtime_fails_only_its_artefact(run_dir, tmp_path, monkeypatch):
    import deploy.validate as validation

    crashed = tmp_path / "crash.gguf"
    shutil.copyfile(run_dir / "export" / "model-q8_0.gguf", crashed)
    dying = tmp_path / "dying-python"
    dying.write_text("#!/bin/sh\necho 'Segmentation fault in ggml_compute' >&2\nkill -SEGV $$\n")
    dying.chmod(0o755)
    monkeypatch.setattr(validation.sys, "executable", str(dying))  # a child that dies without a result
    record = validate(
        ValidateConfig(**{**FAST, "isolate": True}), crashed, run_dir / "data" / "test.jsonl", tmp_path / "v"
    ).report.artefacts[0]
    assert (
        "crash.gguf: the gguf runtime crashed (signal 11); last output: Segmentation fault in ggml_compute"
        in record.error
        and not record.passed
    )


def test_package_is_built_verified_and_refuses_to_overwrite(report, run_dir, tmp_path):
    result = build_package(PackageConfig(version="1.2.3"), run_dir)
    package = result.out_dir
    manifest = verify_package(package)
    assert manifest.name == "micro" and manifest.version == "1.2.3" and manifest.schema_version == 1
    assert [m.label for m in manifest.models] == [result.manifest["models"][0]["label"]]
    assert manifest.models[0].format == "gguf"  # prefer gguf by default
    assert {"README.md", "tokenizer/tokenizer.json", manifest.models[0].path} <= set(manifest.files)
    assert manifest.student["parameters"] > 0 and manifest.teacher is None
    readme = (package / "README.md").read_text()
    assert "from llama_cpp import Llama" in readme and "## Limitations" in readme and "rakd" in readme
    example = report.artefacts[0].samples[0]["question"]  # one of the model's own task prompts
    assert f"llm({json.dumps(example + chr(10))}" in readme and "KLD mean" in readme
    assert all(f"| {r.label} |" in readme for r in report.artefacts)
    # The Ollama Modelfile beside the GGUF: parsed as Ollama reads it (instruction, then its arguments).
    model_path = manifest.models[0].path
    instructions = parse_modelfile((package / "Modelfile").read_text())
    assert instructions["FROM"] == [f"./{model_path}"] and (package / model_path).is_file()
    assert instructions["TEMPLATE"] == ['"""{{ .Prompt }}\n"""']  # no chat template: rakd's prompt format
    params = dict(p.split(" ", 1) for p in instructions["PARAMETER"])
    assert params["temperature"] == "0" and params["stop"] == '"<|eos|>"'
    assert "Modelfile" in manifest.files and f"ollama create {Path(model_path).stem}" in readme
    with pytest.raises(FileExistsError, match="--force"):
        build_package(PackageConfig(), run_dir)
    onnx = build_package(PackageConfig(prefer="onnx"), run_dir, tmp_path / "onnx-package").manifest
    assert onnx["models"][0]["label"] == "onnx-fp32" and "onnx-fp32/model.onnx" in onnx["files"]
    both = build_package(PackageConfig(include="best-per-format"), run_dir, tmp_path / "onnx-package", force=True)
    assert {m["format"] for m in both.manifest["models"]} == {"gguf", "onnx"}
    budget = PackageConfig.model_validate({"budget": {"latency_ms_p50": 1e6}})  # the most accurate within it
    picked = build_package(budget, run_dir, tmp_path / "budget-package")
    chosen = verify_package(picked.out_dir).chosen
    assert chosen.startswith(picked.manifest["models"][0]["label"] + ": ") and "p50 <= 1e+06 ms" in chosen
    assert "Chosen by the package's budget" in (picked.out_dir / "README.md").read_text()
    assert picked.manifest["models"][0]["model"] == "student"
    runtime = load_package(package)
    assert runtime.generate("1+2=?", 4).new_tokens <= 4
    runtime.close()


def test_tampered_or_extra_files_are_detected(report, run_dir, tmp_path, capsys):
    from pipeline.cli import main

    package = build_package(PackageConfig(), run_dir, tmp_path / "pkg").out_dir
    assert main(["verify-package", str(package)]) == 0
    model = next(p for p in package.iterdir() if p.suffix == ".gguf")
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=f"{model.name}: sha256 differs"):
        verify_package(package)
    with pytest.raises(PackageError, match="sha256 differs"):
        load_package(package)  # loading verifies first
    assert main(["verify-package", str(package)]) == 2
    assert f"{model.name}: sha256 differs" in capsys.readouterr().err
    clean = build_package(PackageConfig(), run_dir, tmp_path / "pkg2").out_dir
    (clean / "tokenizer" / "extra.txt").write_text("x")
    with pytest.raises(PackageError, match="extra.txt: not listed"):
        verify_package(clean)
    (clean / "tokenizer" / "extra.txt").unlink()
    (clean / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(PackageError, match="tokenizer.json: listed in the manifest but missing"):
        verify_package(clean)
    manifest = json.loads((clean / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (clean / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="invalid manifest"):
        verify_package(clean)


def test_nothing_passed_means_no_package(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("package", "validate"))
    validate(
        ValidateConfig(**{**FAST, "gates": Gates(min_accuracy=1.0)}), run, run / "data" / "test.jsonl", run / "validate"
    )
    with pytest.raises(PackageError, match="no exported artefact passed validation"):
        build_package(PackageConfig(), run)
    assert not (run / "package").exists()
    with pytest.raises(PackageError, match="no validation report"):
        build_package(PackageConfig(), tmp_path / "elsewhere")


def test_a_real_instruct_gguf_is_prompted_in_its_chat_template_and_read_flexibly(tmp_path, smollm_gguf):
    """A pretrained instruct model from a registry package (an optional test dependency `make install` adds):
    prompted in the chat template its GGUF carries, it answers in free text; the report counts the strict
    markers and the flexible last number, and says that nothing gated its accuracy."""
    from deploy.runtimes import open_runtime

    path = smollm_gguf
    runtime = open_runtime("gguf", path)
    try:
        start = runtime.llm.tokenize(b"<|im_start|>", add_bos=False, special=True)
        assert runtime.formatter is not None and runtime.prompt_ids("1+1=?")[: len(start)] == start
    finally:
        runtime.close()
    problems = [
        {"question": "Ana has 3 coins. Then Ana gets 4 more. How many coins does Ana have now?", "answer": "7"},
        {"question": "Ben has 9 stamps. Then Ben gives away 2. How many stamps does Ben have now?", "answer": "7"},
        {"question": "What is 12 + 5?", "answer": "17"},
    ]
    (tmp_path / "p.jsonl").write_text(to_jsonl(problems))
    cfg = ValidateConfig(n_problems=3, max_new_tokens=48, progress_every=3, isolate=False, gates=OPEN_GATES)
    [artefact] = validate(cfg, path, tmp_path / "p.jsonl", tmp_path / "v").report.artefacts
    assert not artefact.error and all(s["output"].strip() for s in artefact.samples)
    assert 0 <= artefact.accuracy <= artefact.accuracy_flexible <= 1 and not artefact.accuracy_gated


def test_the_teacher_is_exported_and_validated_beside_the_student_and_never_shipped(tokenizer, tmp_path):
    """export.teacher: the teacher's artefacts under export/teacher/ (labelled teacher/<label>, parity against the
    teacher); validation measures them on the same problems, each model against its own fp32 reference, reports
    the student against the teacher per artefact type, and packaging ships only the student."""
    from deploy.report import against_teacher_rows, format_report_md

    run = tmp_path / "with-teacher"
    save_model(build_model(preset_config("test-micro", tokenizer), seed=3), tokenizer, run / "student")
    teacher = build_model(preset_config("test-micro", tokenizer, num_hidden_layers=3), seed=5)
    save_model(teacher, tokenizer, run / "teacher")
    problems = generate(GeneratorConfig(n_items=6, seed=4))
    (run / "data").mkdir()
    (run / "data" / "test.jsonl").write_text(to_jsonl(problems))
    cfg = ExportConfig(formats=["gguf"], gguf_quant=["q8_0"], parity_prompts=2, parity_max_new_tokens=6, teacher=True)
    parity = run_export(cfg, run / "student", run / "export", [p["question"] for p in problems], run / "teacher").parity
    by_label = {r["artefact"]: r for r in parity["artefacts"]}
    assert set(by_label) == {"gguf-f16", "gguf-q8_0", "teacher/gguf-f16", "teacher/gguf-q8_0"}
    assert by_label["teacher/gguf-q8_0"]["path"] == "teacher/model-q8_0.gguf" and all(
        r["passed"] for r in by_label.values()
    )
    assert {r["model"] for r in parity["artefacts"]} == {"student", "teacher"}

    report = validate(ValidateConfig(**FAST), run, run / "data" / "test.jsonl", run / "validate").report
    records = {r.label: r for r in report.artefacts}
    assert records["teacher/pytorch"].reference and records["teacher/pytorch"].model == "teacher"
    assert report.references == {"student": "pytorch", "teacher": "teacher/pytorch"}
    teacher_q8 = records["teacher/gguf-q8_0"]
    # against the teacher's reference: its drop is from the teacher's accuracy, its KLD from the teacher's logits
    assert teacher_q8.accuracy_drop == pytest.approx(records["teacher/pytorch"].accuracy - teacher_q8.accuracy)
    assert teacher_q8.kld_mean is not None and teacher_q8.kld_mean < 0.05
    assert all(r.model != "teacher" for r in report.shippable()) and report.shippable()
    rows = against_teacher_rows(report)
    assert [r["artefact"] for r in rows] == ["pytorch", "gguf-f16", "gguf-q8_0"]
    assert rows[0]["latency speed-up"] == "-" and rows[1]["latency speed-up"].endswith("x")  # references: untimed
    assert rows[1]["decode speed-up"].endswith("x")
    assert "The student against shipping the teacher" in format_report_md(report)
    manifest = build_package(PackageConfig(), run).manifest
    assert [m["label"] for m in manifest["models"]] in (["gguf-f16"], ["gguf-q8_0"])


def _point(label, accuracy, latency, size, model="student", **over):
    return ArtefactRecord(
        label, "gguf", model=model, accuracy=accuracy, latency_ms_p50=latency, size_mb=size, n=300, passed=True, **over
    )


def _report(*records):
    from deploy.record import ValidationReport

    return ValidationReport("now", "run", {"n": 300}, {}, 2, 64, {}, "pytorch", {"student": "pytorch"}, list(records))


# the student's three GGUFs and the teacher's two, at the sizes and speeds of a pruned SmolLM2 pair
SWEEP = (
    _point("gguf-f16", 0.84, 180.0, 160.0),
    _point("gguf-q8_0", 0.83, 110.0, 86.0),
    _point("gguf-q4_k_m", 0.78, 100.0, 70.0),
    _point("teacher/gguf-q8_0", 0.87, 370.0, 145.0, model="teacher"),
    _point("teacher/gguf-q4_k_m", 0.86, 310.0, 105.0, model="teacher"),
    ArtefactRecord("pytorch", "pytorch", reference=True, accuracy=0.85, n=300),
)


def test_the_pareto_front_keeps_what_nothing_beats_on_accuracy_and_latency():
    from deploy.report import pareto_front, validation_rows

    front = [r.label for r in pareto_front(list(SWEEP))]
    assert front == ["gguf-q4_k_m", "gguf-q8_0", "gguf-f16", "teacher/gguf-q4_k_m", "teacher/gguf-q8_0"]
    slower_and_worse = _point("gguf-q6_k", 0.80, 120.0, 100.0)  # q8_0 is faster and more accurate
    assert "gguf-q6_k" not in {r.label for r in pareto_front([*SWEEP, slower_and_worse])}
    rows = {r["artefact"]: r["front"] for r in validation_rows([*SWEEP, slower_and_worse])}
    assert rows["gguf-q8_0"] == "yes" and rows["gguf-q6_k"] == "" and rows["pytorch"] == "-"
    by_size = [r.label for r in pareto_front(list(SWEEP), cost="size_mb")]  # f16 (160 MB): teacher q8_0 is smaller
    assert by_size == ["gguf-q4_k_m", "gguf-q8_0", "teacher/gguf-q4_k_m", "teacher/gguf-q8_0"]


def test_a_budget_picks_from_the_student_s_and_the_teacher_s_artefacts_and_says_why():
    from deploy.config import ShipBudget
    from deploy.package import within_budget

    report = _report(*SWEEP)
    pick, why = within_budget(report, ShipBudget(accuracy_loss=0.03))  # at least 84%: the fastest such
    assert pick.label == "gguf-f16" and "accuracy >= 84.0% (3 points below teacher/gguf-q8_0)" in why
    assert "on the accuracy-latency front" in why and "teacher/gguf-q4_k_m: 86.0% at 310 ms" in why
    pick, _ = within_budget(report, ShipBudget(latency_ms_p50=150))  # the most accurate within 150 ms
    assert pick.label == "gguf-q8_0"
    pick, why = within_budget(report, ShipBudget(accuracy_loss=0.01))  # only the teacher's are within a point
    assert pick.label == "teacher/gguf-q4_k_m" and pick.model == "teacher"
    assert "the teacher's own artefact, since no student artefact does as well" in why and "gguf-f16, 84.0%" in why
    with pytest.raises(PackageError, match=r"no validated artefact meets package.budget \(p50 <= 50 ms\)"):
        within_budget(report, ShipBudget(latency_ms_p50=50))
    students_only = _report(*(r for r in SWEEP if r.model != "teacher"))
    with pytest.raises(PackageError, match="accuracy_loss is measured against the teacher's artefacts"):
        within_budget(students_only, ShipBudget(accuracy_loss=0.03))
    with pytest.raises(ValueError, match="give latency_ms_p50, size_mb or accuracy_loss"):
        ShipBudget()
