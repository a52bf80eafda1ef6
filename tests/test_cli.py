"""The `rakd` command line: stage commands from the registry, `rakd demo` (the stages without Prefect), errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MICRO_RUN

from pipeline.cache import outputs_current, stage_keys
from pipeline.cli import build_parser, main
from pipeline.config import load_config
from pipeline.registry import STAGES
from rakd.layout import RunLayout

MICRO = [
    *MICRO_RUN,
    "distill.rl.steps=2",
    "distill.eval_every=0",
    "export.onnx_quant=[]",
    "export.gguf_quant=[q8_0]",
    "export.parity_prompts=2",
    "export.parity_max_new_tokens=6",
    "validation.n_problems=4",
    "validation.max_new_tokens=12",
    "validation.isolate=false",
    "validation.gates.min_accuracy=0.0",
    "validation.gates.max_accuracy_drop=1.0",
]


def test_prep_command_prints_card_and_writes_data(tmp_path, capsys):
    args = [
        "prep",
        "--config",
        "configs/smoke.yaml",
        "--set",
        f"run.root={tmp_path}",
        "--set",
        "prep.generator.n_items=120",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "items        120 (train" in out and "fingerprint" in out
    card = json.loads((tmp_path / "smoke" / "data" / "card.json").read_text())
    assert card["counts"]["total"] == 120


def test_user_errors_exit_2_with_message(tmp_path, capsys):
    assert main(["prep", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml: config file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    assert (
        main(["prep", "--set", f"run.root={tmp_path}", "--set", "prep.source=jsonl", "--set", f"prep.path={bad}"]) == 2
    )
    assert "bad.jsonl:1: field 'answer'" in capsys.readouterr().err
    assert not (tmp_path / "tiny" / "data").exists()
    assert main(["export", "--set", "export.gguf_quant=[q9]"]) == 2
    assert "export.gguf_quant.0: Input should be '4bit'" in capsys.readouterr().err


def test_every_registry_stage_is_a_command():
    commands = build_parser()._subparsers._group_actions[0].choices
    assert [s.name for s in STAGES] == ["prep", "teacher", "distill", "export", "validate", "package"]
    assert {s.name for s in STAGES} | {"demo", "run", "compare", "verify-package", "serve"} == set(commands)


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "rakd"
    assert script.is_file(), "pip install -e . did not install the rakd console script"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and all(s.name in result.stdout for s in STAGES)


@pytest.mark.integration
def test_demo_runs_every_stage_without_prefect(tmp_path, capsys):
    assert (
        main(
            [
                "demo",
                "--config",
                "configs/smoke.yaml",
                "--set",
                f"run.root={tmp_path}",
                *[a for m in MICRO for a in ("--set", m)],
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    for stage in STAGES:
        assert f"[{stage.name}]" in out
    assert "== accuracy (test split) ==" in out and "gain (distilled - warm start)" in out
    assert "== validate ==" in out and "gguf-q8_0" in out and "== package ==" in out
    run = tmp_path / "smoke"
    for stage in STAGES:
        assert stage.done_file(RunLayout(run)).is_file(), stage.name
    # the plain demo marks its outputs as the flow does: a `rakd run` of the same config would find them current
    cfg = load_config("configs/smoke.yaml", [f"run.root={tmp_path}", *MICRO])
    keys = stage_keys(cfg)
    assert all(outputs_current(RunLayout(run), stage, keys[stage.name]) for stage in STAGES)
    shutil.rmtree(run)


def test_compare_exits_nonzero_and_names_each_failed_job(monkeypatch, capsys):
    """`rakd compare` prints the tables of the jobs that finished, then each failed job and why, and exits 1."""
    outcome = {"tables": {"methods": [], "alpha": []}, "results": "runs/x/compare/results", "rows": []}
    failed = [{"name": "sft-a0.5-c1-lr2e-05-s0", "error": "its worker process died while running it"}]
    monkeypatch.setattr("flows.compare.compare_flow", lambda config: {**outcome, "failed": failed})
    assert main(["compare"]) == 1
    assert "failed: sft-a0.5-c1-lr2e-05-s0: its worker process died" in capsys.readouterr().err
    monkeypatch.setattr("flows.compare.compare_flow", lambda config: {**outcome, "failed": []})
    assert main(["compare"]) == 0


@pytest.mark.parametrize(
    "config, override, says",
    [
        ("broken", [], "broken.yaml"),
        ("configs/smoke.yaml", ["--set", "compare.methods=[]"], "compare.methods"),
        ("configs/smoke.yaml", ["--set", "compare.regime=no such regime"], "compare.regime"),
        ("configs/smoke.yaml", ["--set", "compare.methods=[nope]"], "compare.methods"),
    ],
)
def test_compare_with_a_bad_config_says_so_in_one_line_and_exits_2(tmp_path, capsys, config, override, says):
    if config == "broken":
        config = tmp_path / "broken.yaml"
        config.write_text("compare:\n  methods: [rakd\n")  # not YAML
    assert main(["compare", "--config", str(config), *override]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1 and says in captured.err, captured.err
