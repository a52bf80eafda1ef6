from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.config import ConfigError, dump_config, load_config


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_overrides_reach_nested_keys(tmp_path):
    cfg = load_config(
        write(tmp_path, "run: {name: x}\n"), ["prep.generator.n_items=50", "prep.generator.operators=[+, '*']"]
    )
    assert cfg.run.name == "x"
    assert cfg.prep.generator.n_items == 50
    assert cfg.prep.generator.operators == ["+", "*"]


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "prep:\n  generator:\n    n_itemz: 5\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: prep\.generator\.n_itemz: Extra inputs"):
        load_config(path)


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(ConfigError, match=r"--set: prep\.generator\.max_ops: .*integer.*'many'"):
        load_config(write(tmp_path, ""), ["prep.generator.max_ops=many"])


def test_missing_files_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"prep\.path: .*task file not found: .*gone\.jsonl"):
        load_config(write(tmp_path, f"prep: {{source: jsonl, path: {tmp_path}/gone.jsonl}}\n"))


def test_bad_yaml_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yaml:2: invalid YAML"):
        load_config(write(tmp_path, "run:\n  name: a: b\n"))
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["prep.generator.n_items"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(None, ["run.name=a", "run.name.x=1"])


def test_config_is_frozen_and_round_trips(tmp_path):
    cfg = load_config("configs/tiny.yaml")
    with pytest.raises(ValidationError):
        cfg.run.name = "other"
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg


def test_defaults_are_the_embedded_default_config():
    # configs/tiny.yaml spells the defaults out; the two never drift apart.
    assert load_config(None) == load_config("configs/tiny.yaml")


def test_quantisation_names_are_checked_and_the_error_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"export.gguf_quant.0: Input should be '4bit', 'q8_0'.* \(got 'q9_9'\)"):
        load_config(None, ["export.gguf_quant=[q9_9]"])
    with pytest.raises(ConfigError, match=r"export.onnx_quant.0: Input should be 'w8', 'w4' or 'int8-dynamic'"):
        load_config(None, ["export.onnx_quant=[int4]"])


def test_fsdp_without_processes_is_an_error_naming_both_fields():
    with pytest.raises(ConfigError, match=r"distill.fsdp .* set distill.nproc to 2 or more"):
        load_config("configs/tiny.yaml", ["distill.fsdp=true"])
    assert load_config("configs/tiny.yaml", ["distill.fsdp=true", "distill.nproc=2"]).distill.fsdp


def test_the_configuration_reference_in_docs_usage_is_current():
    from pathlib import Path

    from pipeline.config import REFERENCE_BEGIN, REFERENCE_END, config_reference

    text = Path("docs/usage.md").read_text(encoding="utf-8")
    block = text[text.index(REFERENCE_BEGIN) + len(REFERENCE_BEGIN) : text.index(REFERENCE_END)]
    assert block.strip() == config_reference().strip(), "regenerate it: python -m pipeline.config docs/usage.md"
    assert "| `distill.rl.group_size` | int | `8` | samples per prompt (G) |" in block


def test_tuning_a_teacher_needs_a_checkpoint_and_a_stop_names_its_reason():
    with pytest.raises(ConfigError, match=r"teacher.tune fine-tunes a checkpoint: set teacher.model.path"):
        load_config(None, ["teacher.tune=true"])
    with pytest.raises(ConfigError, match=r"teacher.stop: .*needs val_accuracy \(a target\), patience"):
        load_config(None, ["teacher.stop={every: 10}"])
    cfg = load_config(None, ["teacher.model={path: some.gguf}", "teacher.tune=true", "teacher.stop={patience: 2}"])
    assert cfg.teacher.stop.patience == 2 and cfg.teacher.stop.val_accuracy is None


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path, tmp_path):
    task = tmp_path / "task.jsonl"
    task.write_text('{"question": "1+1=?", "answer": "2"}\n')
    overrides = [f"prep.path={task}"] if path.name == "pretrained.yaml" else []  # it names the user's own file
    cfg = load_config(path, overrides)
    assert cfg.run.name


def test_a_config_composes_over_its_base(tmp_path):
    """`base:` reads another config first (relative to this file's folder); mappings merge key by key, lists and
    scalars (and null) are the top file's; --set goes over both."""
    (tmp_path / "regimes").mkdir()
    (tmp_path / "root.yaml").write_text(
        "run: {name: root}\n"
        "distill:\n  warmstart: {n_prompts: 50, stop: {val_accuracy: 0.2, every: 5}}\n"
        "compare: {methods: [rakd, grpo], steps: 9}\n"
    )
    (tmp_path / "regimes" / "mid.yaml").write_text("base: ../root.yaml\ncompare: {methods: [grpo]}\n")
    (tmp_path / "regimes" / "top.yaml").write_text("base: mid.yaml\ndistill: {warmstart: {stop: null}}\n")
    cfg = load_config(tmp_path / "regimes" / "top.yaml", ["compare.steps=3"])
    assert cfg.run.name == "root" and cfg.distill.warmstart.n_prompts == 50  # from the root, two levels down
    assert cfg.compare.methods == ["grpo"] and cfg.compare.steps == 3  # a list replaced; --set over all
    assert cfg.distill.warmstart.stop is None  # null replaces a mapping
    mid = load_config(tmp_path / "regimes" / "mid.yaml")
    assert mid.distill.warmstart.stop.val_accuracy == 0.2 and mid.distill.warmstart.stop.every == 5


def test_a_bad_base_is_a_clear_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(
        ConfigError, match=r"b.yaml: base: the configs include each other \(.*a.yaml -> .*b.yaml -> .*a.yaml\)"
    ):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"c.yaml: base: missing.yaml: config file not found"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"d.yaml: base: expected the path of another config file, found list"):
        load_config(tmp_path / "d.yaml")


def test_the_regimes_are_the_edge_regime_and_what_they_change():
    """Each comparison regime but the real model's names the edge regime as its base; what it changes is few keys."""
    import yaml

    configs = Path(__file__).parents[1] / "configs"
    for path in sorted(configs.glob("compare-*.yaml")):
        if path.name in ("compare-edge.yaml", "compare-real.yaml"):
            continue
        data = yaml.safe_load(path.read_text())
        assert data["base"] == "compare-edge.yaml", path.name
        assert load_config(path).compare.regime == path.stem.removeprefix("compare-")
