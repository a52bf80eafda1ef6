"""Choosing a student's layers by measurement (rakd.models.prune): the scores by hand, the rules, the subset model,
and the choice on a small model."""

import math

import pytest
import torch

from rakd.models.prune import (
    angular_distances,
    block_influence,
    candidates,
    damage,
    layer_choice,
    residual_states,
    rule_layers,
)
from rakd.models.subset import keep_layers
from rakd.models.zoo import build_model, preset_config


def test_block_influence_and_angular_distance_by_hand():
    # three points of a residual stream at one position: e1, e1 (layer 0 changes nothing), e2 (layer 1 turns it 90°)
    states = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]]])
    assert block_influence(states) == pytest.approx([0.0, 1.0])
    assert angular_distances(states, 1) == pytest.approx([0.0, 0.5])  # arccos(1)/pi, arccos(0)/pi
    assert angular_distances(states, 2) == pytest.approx([0.5])
    # 60° apart: cos 0.5, 1 - cos = 0.5, arccos(0.5)/pi = 1/3
    turned = torch.tensor([[[1.0, 0.0]], [[0.5, math.sqrt(3) / 2]]])
    assert block_influence(turned) == pytest.approx([0.5]) and angular_distances(turned, 1) == pytest.approx([1 / 3])


def test_each_rule_keeps_its_layers():
    influence = [0.9, 0.1, 0.2, 0.05, 0.3, 0.8]  # layers 3, 1, 2 change the stream least
    angular = [0.6, 0.2, 0.4, 0.3]  # dropping 2 layers: the block starting at 1 (layers 1, 2) least
    layers = rule_layers(6, 4, influence, angular)
    assert layers == {"block_influence": [0, 2, 4, 5], "angular": [0, 3, 4, 5], "even": [0, 2, 3, 5]}
    assert [c.rule for c in candidates({**layers, "even": [0, 2, 4, 5]})] == ["block_influence", "angular"]
    with pytest.raises(ValueError, match="keeps 1..5"):
        rule_layers(6, 6, influence, angular)


def test_damage_by_hand():
    same = torch.tensor([[0.0, 1.0, 2.0]])
    assert damage(same, same) == pytest.approx((0.0, 1.0))
    # teacher (ln 3, 0): p = (3/4, 1/4); student uniform: KL = 3/4 ln(3/2) + 1/4 ln(1/2)
    kl, top1 = damage(torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([[0.0, 0.0]]))
    assert kl == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5)) and top1 == 1.0


@pytest.fixture(scope="module")
def teacher(tokenizer):
    return build_model(preset_config("test-micro", tokenizer, num_hidden_layers=5), seed=4).eval()


def batch(tokenizer):
    rows = [tokenizer("12+7=19. A: 19")["input_ids"], tokenizer("3*4=12")["input_ids"]]
    width = max(map(len, rows))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    read = mask.bool() & (torch.arange(width) >= width - 4)  # the last 4 positions of each row
    return ids, mask, read


def test_a_subset_model_is_the_teacher_cut_down_and_leaves_the_teacher_whole(teacher, tokenizer):
    ids, mask, _ = batch(tokenizer)
    whole = keep_layers(teacher, list(range(5)))
    torch.testing.assert_close(
        whole(input_ids=ids, attention_mask=mask).logits, teacher(input_ids=ids, attention_mask=mask).logits
    )
    student = keep_layers(teacher, [0, 2, 4])
    assert len(teacher.model.layers) == 5 and teacher.config.num_hidden_layers == 5
    assert student.config.num_hidden_layers == 3 and [layer.self_attn.layer_idx for layer in student.model.layers] == [
        0,
        1,
        2,
    ]
    assert (
        student.model.layers[1].mlp.up_proj.weight.data_ptr() != teacher.model.layers[2].mlp.up_proj.weight.data_ptr()
    )
    torch.testing.assert_close(student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[2].mlp.up_proj.weight)
    assert all(p.requires_grad for p in student.parameters())
    out = student.generate(ids[:1, -3:], max_new_tokens=3, do_sample=False)  # its KV cache follows the new indices
    assert out.shape[1] == 6
    with pytest.raises(ValueError, match="ascending"):
        keep_layers(teacher, [2, 1])


def test_the_measured_choice_is_the_candidate_of_least_kl(teacher, tokenizer):
    ids, mask, read = batch(tokenizer)
    states, logits = residual_states(teacher, ids, mask, read)
    assert states.shape == (6, int(read.sum()), teacher.config.hidden_size)
    torch.testing.assert_close(logits, teacher(input_ids=ids, attention_mask=mask).logits[read])
    choice = layer_choice(teacher, ids, mask, read, keep=3)
    assert choice.chosen.kl == min(c.kl for c in choice.candidates) and len(choice.chosen.kept) == 3
    assert choice.block_influence == pytest.approx(block_influence(states))
    for candidate in choice.candidates:  # each candidate's KL is the one its own model gives
        student = keep_layers(teacher, candidate.kept)
        kl, top1 = damage(
            teacher(input_ids=ids, attention_mask=mask).logits[read],
            student(input_ids=ids, attention_mask=mask).logits[read],
        )
        assert candidate.kl == pytest.approx(kl, rel=1e-5) and candidate.top1 == pytest.approx(top1)
    assert layer_choice(teacher, ids, mask, read, keep=3, by="even").chosen.kept == [0, 2, 4]
    assert len(teacher.model.layers) == 5


def test_a_pruned_student_is_chosen_once_on_the_train_split_and_kept_for_a_resume(teacher, tokenizer, tmp_path):
    import json

    import rakd.models.prune as prune
    from pipeline.config import load_config
    from rakd.layout import LAYERS, RunLayout
    from rakd.stages.warmstart import init_student

    layout = RunLayout(tmp_path)
    layout.split("train").parent.mkdir(parents=True)
    rows = [{"id": i, "question": f"{i}+{i + 1}=?", "answer": str(2 * i + 1)} for i in range(6)]
    layout.split("train").write_text("".join(json.dumps(row) + "\n" for row in rows))
    cfg = load_config(None, ["distill.student.prune.layers=3", "distill.student.prune.calibration=4"]).distill
    assert cfg.student.model is None  # the subset takes the default model's place
    logged = []
    student, _ = init_student(cfg, teacher, tokenizer, torch.device("cpu"), layout, log=logged.append)
    stored = json.loads((layout.student_work / LAYERS).read_text())
    kept = stored["chosen"]["kept"]
    assert student.config.num_hidden_layers == 3 and kept == sorted(set(kept)) and len(kept) == 3
    assert len(stored["candidates"]) >= 2 and any("KL" in line for line in logged)

    def measured_again(*args, **kwargs):
        raise AssertionError("the choice is read back, not measured again")

    original, prune.layer_choice = prune.layer_choice, measured_again
    try:
        again, _ = init_student(cfg, teacher, tokenizer, torch.device("cpu"), layout)
    finally:
        prune.layer_choice = original
    for a, b in zip(student.parameters(), again.parameters()):
        torch.testing.assert_close(a, b)


def test_a_prune_config_is_one_source_and_its_list_matches_its_count():
    from pipeline.config import load_config
    from rakd.schema import ConfigError

    given = load_config(None, ["distill.student.prune.layers=2", "distill.student.prune.kept=[0,4]"]).distill
    assert given.student.prune.kept == [0, 4]
    with pytest.raises(ConfigError, match="kept lists 1 layers"):
        load_config(None, ["distill.student.prune.layers=2", "distill.student.prune.kept=[0]"])
    with pytest.raises(ConfigError, match="exactly one"):
        load_config(None, ["distill.student.prune.layers=2", "distill.student.from_teacher_every_k=2"])


def test_the_run_summary_lists_every_candidate_and_the_one_kept():
    from pipeline.summary import layer_rows

    layers = {
        "chosen": {"rule": "angular", "kept": [0, 3, 4, 5], "kl": 1.5, "top1": 0.2},
        "candidates": [
            {"rule": "block_influence", "kept": [0, 2, 4, 5], "kl": 2.25, "top1": 0.125},
            {"rule": "angular", "kept": [0, 3, 4, 5], "kl": 1.5, "top1": 0.2},
        ],
    }
    results = {"distill": {"eval": {"layers": layers}}}
    assert layer_rows(results) == [
        {
            "rule": "block_influence",
            "layers": "0 2 4 5",
            "KL (nats/token)": "2.250",
            "top-1 agreement": "12.5%",
            "kept": "",
        },
        {"rule": "angular", "layers": "0 3 4 5", "KL (nats/token)": "1.500", "top-1 agreement": "20.0%", "kept": "yes"},
    ]
    assert layer_rows({"distill": {"eval": {}}}) == []


def test_ffn_channels_by_importance_and_a_cut_that_drops_only_dead_ones_changes_nothing(teacher, tokenizer):
    import copy

    from rakd.models.width import ffn_importance, kept_channels, prune_ffn

    model = copy.deepcopy(teacher)
    ids, mask, read = batch(tokenizer)
    dead = [3, 17, 40]  # channels that never fire: their gate and up rows are zero
    for layer in model.model.layers:
        layer.mlp.gate_proj.weight.data[dead] = 0.0
        layer.mlp.up_proj.weight.data[dead] = 0.0
    importance = ffn_importance(model, ids, mask, read)
    assert importance.shape == (5, model.config.intermediate_size)
    assert (importance[:, dead] == 0).all() and (importance.sum(1) > 0).all()
    keep = model.config.intermediate_size - len(dead)
    channels = kept_channels(importance, keep)
    assert not set(dead) & set(channels[0].tolist()) and channels[0].tolist() == sorted(channels[0].tolist())
    before = model(input_ids=ids, attention_mask=mask).logits
    prune_ffn(model, channels)
    assert model.config.intermediate_size == keep and model.model.layers[2].mlp.down_proj.in_features == keep
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, before, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="keeps 1.."):
        kept_channels(importance, 0)


def test_kv_groups_by_importance_and_a_cut_of_a_silent_group_changes_nothing(tokenizer):
    import copy

    from rakd.models.width import kept_groups, kv_group_importance, prune_kv_groups

    # 4 query heads of 8 in 2 key-value groups; group 1's values are zero in every layer: its heads output nothing
    model = build_model(preset_config("test-micro", tokenizer, num_attention_heads=4, num_key_value_heads=2), seed=5)
    model.eval()
    for layer in model.model.layers:
        layer.self_attn.v_proj.weight.data[8:16] = 0.0
    ids, mask, read = batch(tokenizer)
    importance = kv_group_importance(model, ids, mask, read)
    assert importance.shape == (2, 2) and (importance[:, 1] == 0).all() and (importance[:, 0] > 0).all()
    # by hand in layer 0: the mean over the read positions of |head 0| + |head 1|, the o projection's input
    seen = []
    hook = model.model.layers[0].self_attn.o_proj.register_forward_pre_hook(lambda _m, a: seen.append(a[0][read]))
    model(input_ids=ids, attention_mask=mask)
    hook.remove()
    heads = seen[0].reshape(-1, 4, 8)
    torch.testing.assert_close(importance[0, 0], (heads[:, 0].norm(dim=-1) + heads[:, 1].norm(dim=-1)).mean())
    groups = kept_groups(importance, 1)
    assert groups.tolist() == [[0], [0]]
    before = model(input_ids=ids, attention_mask=mask).logits
    pruned = prune_kv_groups(copy.deepcopy(model), groups)
    assert (pruned.config.num_attention_heads, pruned.config.num_key_value_heads, pruned.config.head_dim) == (2, 1, 8)
    assert pruned.model.layers[1].self_attn.q_proj.out_features == 16
    assert pruned.model.layers[1].self_attn.o_proj.in_features == 16
    torch.testing.assert_close(pruned(input_ids=ids, attention_mask=mask).logits, before, rtol=1e-5, atol=1e-5)
    other = prune_kv_groups(copy.deepcopy(model), torch.tensor([[1], [1]]))  # the live group gone: it shows
    assert not torch.allclose(other(input_ids=ids, attention_mask=mask).logits, before, atol=1e-3)
    with pytest.raises(ValueError, match="keeps 1..2 key-value"):
        kept_groups(importance, 3)


def test_a_width_and_depth_pruned_student_is_measured_once(teacher, tokenizer, tmp_path):
    import json

    from pipeline.config import load_config
    from rakd.layout import LAYERS, RunLayout
    from rakd.stages.warmstart import init_student

    layout = RunLayout(tmp_path)
    layout.split("train").parent.mkdir(parents=True)
    rows = [{"id": i, "question": f"{i}*{i + 2}=?", "answer": str(i * (i + 2))} for i in range(5)]
    layout.split("train").write_text("".join(json.dumps(row) + "\n" for row in rows))
    overrides = ["distill.student.prune.layers=2", "distill.student.prune.kept=[1,3]", "distill.student.prune.ffn=32"]
    cfg = load_config(None, [*overrides, "distill.student.prune.calibration=3"]).distill
    student, _ = init_student(cfg, teacher, tokenizer, torch.device("cpu"), layout, log=lambda line: None)
    record = json.loads((layout.student_work / LAYERS).read_text())
    assert record["chosen"] == {"rule": "given", "kept": [1, 3]} and len(record["ffn_channels"]) == 2
    assert student.config.num_hidden_layers == 2 and student.config.intermediate_size == 32
    assert student.model.layers[1].mlp.gate_proj.out_features == 32
    torch.testing.assert_close(
        student.model.layers[0].mlp.down_proj.weight,
        teacher.model.layers[1].mlp.down_proj.weight[:, record["ffn_channels"][0]],
    )


def test_a_head_pruned_student_keeps_the_groups_its_record_names(tokenizer, tmp_path):
    import json

    from pipeline.config import load_config
    from rakd.layout import LAYERS, RunLayout
    from rakd.stages.warmstart import init_student

    shape = dict(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
    teacher = build_model(preset_config("test-micro", tokenizer, **shape), seed=6).eval()
    layout = RunLayout(tmp_path)
    layout.split("train").parent.mkdir(parents=True)
    rows = [{"id": i, "question": f"{i}+{i + 5}=?", "answer": str(2 * i + 5)} for i in range(4)]
    layout.split("train").write_text("".join(json.dumps(row) + "\n" for row in rows))
    prune = ["layers=2", "kept=[0,2]", "kv_heads=1", "calibration=4", "max_new_tokens=6"]
    cfg = load_config(None, [f"distill.student.prune.{p}" for p in prune]).distill
    student, _ = init_student(cfg, teacher, tokenizer, torch.device("cpu"), layout, log=lambda line: None)
    record = json.loads((layout.student_work / LAYERS).read_text())
    assert len(record["kv_groups"]) == 2 and all(len(g) == 1 and g[0] in (0, 1) for g in record["kv_groups"])
    config = student.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (2, 2, 1)
    assert config.head_dim == 8 and "ffn_channels" not in record
    group = record["kv_groups"][1][0]  # the student's layer 1 is the teacher's layer 2: its k rows of that group
    torch.testing.assert_close(
        student.model.layers[1].self_attn.k_proj.weight,
        teacher.model.layers[2].self_attn.k_proj.weight[8 * group : 8 * group + 8],
    )


def test_an_option_keyed_only_when_set_leaves_the_keys_of_configs_without_it():
    from pipeline.cache import stage_keys
    from pipeline.config import load_config
    from rakd.keys import work_key
    from rakd.schema import key_dump

    layers = ["distill.student.prune.layers=1", "distill.student.prune.kept=[0]"]
    plain = load_config(None, layers)
    assert "kv_heads" not in key_dump(plain.distill)["student"]["prune"]
    assert "ffn" in key_dump(plain.distill)["student"]["prune"]  # an option of the first design stays in the key
    heads = load_config(None, [*layers, "distill.student.prune.kv_heads=1"])
    assert key_dump(heads.distill)["student"]["prune"]["kv_heads"] == 1
    assert stage_keys(plain)["distill"] != stage_keys(heads)["distill"]
    assert work_key(plain.distill) != work_key(heads.distill)
    assert stage_keys(plain)["teacher"] == stage_keys(heads)["teacher"]
