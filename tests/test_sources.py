"""Every way of making a student gives a trainable one, every documented model source and teacher scorer runs the
distill stage end to end, and a combination of options that cannot work is refused when the config loads."""

import json
import shutil

import pytest
import torch
from conftest import smoke_overrides
from tiers import heavy_fixture

from export.gguf import export_gguf
from pipeline.config import ConfigError, load_config
from rakd.layout import RunLayout
from rakd.models.load import load_causal_lm, save_model
from rakd.models.zoo import build_model, preset_config
from rakd.stages.warmstart import load_models
from rakd.train.common import make_optimizer
from rakd.train.config import OptimConfig

# ---------------------------------------------------------------- every student path takes an optimiser step


@heavy_fixture(scope="module")
def teacher_sources(tokenizer, tmp_path_factory):
    """One micro teacher three ways: built from its preset, a Hugging Face folder, an F32 GGUF; and a student
    folder of another size with the same tokenizer."""
    root = tmp_path_factory.mktemp("sources")
    teacher = build_model(preset_config("test-micro", tokenizer, num_hidden_layers=4), seed=3)
    save_model(teacher, tokenizer, root / "teacher-hf")
    export_gguf(teacher, tokenizer, root / "teacher-f32.gguf", dtype="f32")
    save_model(build_model(preset_config("test-micro", tokenizer), seed=5), tokenizer, root / "student-hf")
    return root


STUDENTS = {  # distill.student as a config file has it
    "preset": {"model": {"preset": "test-micro"}},
    "folder": {"model": {"path": "{root}/student-hf"}},
    "subset": {"from_teacher_every_k": 2},
}


@pytest.mark.parametrize(
    "teacher_kind,student_kind",
    [("preset", "preset"), ("folder", "folder"), ("preset", "subset"), ("folder", "subset"), ("gguf", "subset")],
)
def test_every_student_path_trains(teacher_kind, student_kind, teacher_sources, tokenizer, tmp_path):
    """The distill stage's own `load_models` (teacher frozen, then the student) on a teacher folder as the teacher
    stage writes it (a preset built there, a folder copied, a GGUF dequantised through transformers); one AdamW
    step on the student's language-model loss moves every one of its weight tensors and none of the teacher's."""
    layout = RunLayout(tmp_path / "run")
    if teacher_kind == "preset":
        save_model(
            build_model(preset_config("test-micro", tokenizer, num_hidden_layers=4), 3), tokenizer, layout.teacher
        )
    else:
        source = teacher_sources / ("teacher-hf" if teacher_kind == "folder" else "teacher-f32.gguf")
        save_model(*load_causal_lm(source), layout.teacher)
    student_cfg = json.loads(json.dumps(STUDENTS[student_kind]).replace("{root}", str(teacher_sources)))
    cfg = load_config(None, [f"distill.student={json.dumps(student_cfg)}", "distill.threads=1"]).distill
    teacher, student, student_tok = load_models(cfg, layout)
    assert not any(p.requires_grad for p in teacher.parameters())
    before = {name: p.detach().clone() for name, p in student.named_parameters()}
    teacher_before = {name: p.detach().clone() for name, p in teacher.named_parameters()}
    optimizer = make_optimizer(student, OptimConfig(lr=1e-2))
    ids = student_tok(["12+3=?\n12+3=15. A: 15"], return_tensors="pt")["input_ids"]
    student.train()
    student(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    unmoved = [name for name, p in student.named_parameters() if torch.equal(p, before[name])]
    assert not unmoved, f"weights that did not move: {unmoved}"
    assert all(torch.equal(p, teacher_before[name]) for name, p in teacher.named_parameters())
    if student_kind == "subset":
        assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4


def test_a_frozen_model_is_refused_by_name_not_by_torch():
    model = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="Linear: no trainable parameters"):
        make_optimizer(model, OptimConfig())


# ---------------------------------------------------------------- combinations refused when the config loads


@pytest.mark.parametrize(
    "sets,expected",
    [
        (
            ["distill.student.from_teacher_every_k=2", "distill.student.model.preset=student-tiny"],
            "set distill.student.model=null",
        ),
        (["distill.student.model=null"], "give exactly one of distill.student.model"),
        (["distill.warmstart.n_prompts=0"], "set distill.warmstart.stop=null"),
        (["distill.warmstart.n_prompts=0", "distill.warmstart.stop=null", "distill.method=sft"], "seqkd_fresh"),
        (
            ["distill.method=gkd", "distill.teacher_scorer.kind=llama_cpp", "distill.teacher_scorer.gguf=t.gguf"],
            "whole distribution",
        ),
        (["distill.teacher_scorer.kind=llama_cpp"], "distill.teacher_scorer.gguf"),
        (["distill.teacher_scorer.kind=openai"], "distill.teacher_scorer.url"),
        (
            [
                "distill.teacher_scorer.kind=openai",
                "distill.teacher_scorer.url=http://h:1",
                "distill.rl.temperature=0.7",
            ],
            "distill.rl.temperature must be 1",
        ),
        (["distill.fsdp=true"], "distill.nproc"),
    ],
)
def test_combinations_that_cannot_work_are_refused_in_one_line(sets, expected):
    with pytest.raises(ConfigError, match=expected) as err:
        load_config("configs/tiny.yaml", sets)
    assert "configs/tiny.yaml" in str(err.value) and "\n" not in str(err.value).strip()


def test_a_layer_subset_alone_replaces_the_default_student():
    cfg = load_config(None, ["distill.student.from_teacher_every_k=2"])
    assert cfg.distill.student.model is None and cfg.distill.student.from_teacher_every_k == 2


def test_the_command_line_reports_a_refused_combination_without_a_traceback(capsys):
    from pipeline.cli import main

    code = main(["distill", "--config", "configs/tiny.yaml", "--set", "distill.warmstart.n_prompts=0"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "distill.warmstart.stop=null" in err


# ---------------------------------------------------------------- each source and scorer through the distill stage

SMALL = [
    "teacher.eval.n_problems=8",
    "teacher.eval.k_samples=1",
    "distill.warmstart.n_prompts=16",
    "distill.warmstart.sft.steps=2",
    "distill.warmstart.max_new_tokens=12",
    "distill.rl.steps=2",
    "distill.rl.prompts_per_step=2",
    "distill.rl.group_size=4",
    "distill.rl.max_new_tokens=12",
    "distill.rl.min_informative_groups=0",
    "distill.eval.n_problems=8",
    "distill.eval.k_samples=1",
    "distill.eval.max_new_tokens=12",
    "distill.eval_every=0",
    "distill.threads=1",
]


@pytest.fixture(scope="module")
def trained_teacher(smoke_run, smoke_root, tmp_path_factory):
    """The smoke run's trained teacher as a folder and as an F32 GGUF, and its prepared data."""
    root = tmp_path_factory.mktemp("trained-teacher")
    smoke = smoke_root / "smoke"
    export_gguf(*load_causal_lm(smoke / "teacher"), root / "teacher-f32.gguf", dtype="f32")
    return {"folder": smoke / "teacher", "gguf": root / "teacher-f32.gguf", "run": smoke}


def run_stages(name, trained_teacher, tmp_path, sets) -> RunLayout:
    from pipeline.cli import main

    layout = RunLayout(tmp_path / name)
    for folder in ("data", "tokenizer"):  # prep's outputs, as the smoke run made them
        shutil.copytree(trained_teacher["run"] / folder, layout.root / folder)
    args = [a for s in smoke_overrides(tmp_path, f"run.name={name}", *SMALL, *sets) for a in ("--set", s)]
    for stage in ("teacher", "distill"):
        assert main([stage, "--config", "configs/smoke.yaml", *args]) == 0, stage
    return layout


def rl_rows(layout: RunLayout) -> list[dict]:
    return [
        r for r in map(json.loads, (layout.student / "metrics.jsonl").read_text().splitlines()) if "rows_in_loss" in r
    ]


def test_a_layer_subset_of_a_gguf_teacher_without_warm_start_scored_in_llama_cpp(trained_teacher, tmp_path):
    """The path a new user tried: a GGUF teacher (evaluated, not trained), a student of every second teacher
    layer, no warm start, the teacher's log-probs from llama.cpp on the same file."""
    gguf = trained_teacher["gguf"]
    layout = run_stages(
        "gguf-subset",
        trained_teacher,
        tmp_path,
        [
            f"teacher.model.path={gguf}",
            "teacher.model.preset=null",
            "distill.student.model=null",
            "distill.student.from_teacher_every_k=2",
            "distill.warmstart.n_prompts=0",
            "distill.teacher_scorer.kind=llama_cpp",
            f"distill.teacher_scorer.gguf={gguf}",
        ],
    )
    assert json.loads((layout.teacher / "eval.json").read_text())["source"]["path"] == str(gguf)
    rows = rl_rows(layout)
    assert len(rows) == 2 and all(r["rows_in_loss"] > 0 for r in rows)
    student = load_causal_lm(layout.student)[0]
    subset = load_causal_lm(layout.teacher)[0].model.layers[2]  # the student's second layer, before training
    assert student.config.num_hidden_layers == 2
    assert not torch.equal(student.model.layers[1].mlp.up_proj.weight, subset.mlp.up_proj.weight)


def test_a_preset_student_of_a_gguf_teacher_with_warm_start_scored_over_http(trained_teacher, tmp_path, serve_teacher):
    gguf = trained_teacher["gguf"]
    with serve_teacher(gguf) as url:
        layout = run_stages(
            "gguf-preset-http",
            trained_teacher,
            tmp_path,
            [
                f"teacher.model.path={gguf}",
                "teacher.model.preset=null",
                "distill.student.model.preset=test-micro",
                "distill.teacher_scorer.kind=openai",
                f"distill.teacher_scorer.url={url}/v1",
            ],
        )
    warm = json.loads((layout.student / "eval_warmstart.json").read_text())
    assert warm["sft_steps"] == 2 and (layout.student / "traces.jsonl").read_text().strip()
    assert all(r["rows_in_loss"] > 0 for r in rl_rows(layout)) and len(rl_rows(layout)) == 2


def test_a_layer_subset_of_a_teacher_folder_with_warm_start(trained_teacher, tmp_path):
    layout = run_stages(
        "folder-subset",
        trained_teacher,
        tmp_path,
        [
            f"teacher.model.path={trained_teacher['folder']}",
            "teacher.model.preset=null",
            "distill.student.model=null",
            "distill.student.from_teacher_every_k=2",
        ],
    )
    warm = json.loads((layout.student / "eval_warmstart.json").read_text())
    assert warm["sft_steps"] == 2 and len(rl_rows(layout)) == 2
