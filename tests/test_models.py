import pytest
import torch

from rakd.models.load import ModelLoadError, load_causal_lm, save_model
from rakd.models.subset import kept_layers, layer_subset
from rakd.models.zoo import build_model, count_parameters, preset_config


@pytest.fixture
def micro(tokenizer):
    return build_model(preset_config("test-micro", tokenizer, num_hidden_layers=4), seed=0)


def test_presets_fit_quantisation_blocks(tokenizer):
    for name in ("teacher-tiny", "student-tiny"):
        cfg = preset_config(name, tokenizer)
        assert cfg.hidden_size % 32 == 0 and cfg.intermediate_size % 32 == 0
        assert cfg.vocab_size == len(tokenizer)
    teacher = count_parameters(build_model(preset_config("teacher-tiny", tokenizer), 0))
    student = count_parameters(build_model(preset_config("student-tiny", tokenizer), 0))
    assert 4 <= teacher / student <= 12


def test_builder_is_seeded(tokenizer):
    cfg = preset_config("test-micro", tokenizer)
    a, b, c = build_model(cfg, 1), build_model(cfg, 1), build_model(cfg, 2)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_unknown_preset_and_field(tokenizer):
    with pytest.raises(KeyError, match="unknown model preset"):
        preset_config("giant", tokenizer)
    with pytest.raises(KeyError, match="hidden_sise"):
        preset_config("test-micro", tokenizer, hidden_sise=64)


def test_save_load_round_trip_gives_equal_logits(micro, tokenizer, tmp_path):
    save_model(micro, tokenizer, tmp_path / "m")
    assert list((tmp_path / "m").glob("*.safetensors"))
    loaded, loaded_tok = load_causal_lm(tmp_path / "m")
    batch = tokenizer(["3+4=?\n", "12*3-5=?\n"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(micro.eval()(**batch).logits, loaded(**batch).logits)
    assert loaded_tok("7*8")["input_ids"] == tokenizer("7*8")["input_ids"]


def test_loader_refuses_pickles_and_bad_paths(micro, tokenizer, tmp_path):
    with pytest.raises(ModelLoadError, match="no such model folder"):
        load_causal_lm(tmp_path / "missing")
    folder = tmp_path / "pickled"
    micro.save_pretrained(folder, safe_serialization=False)
    with pytest.raises(ModelLoadError, match=r"pickled weights \['pytorch_model.bin'\]"):
        load_causal_lm(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_causal_lm(tmp_path / "empty")


def test_loader_refuses_non_causal_models(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        load_causal_lm(tmp_path)


def test_corrupt_gguf_is_a_clear_error(tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf at all")
    with pytest.raises(ModelLoadError, match="bad magic"):
        load_causal_lm(fake)
    truncated = tmp_path / "trunc.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00\x05")
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        load_causal_lm(truncated)


def test_layer_subset_keeps_every_kth_layer(micro, tokenizer):
    assert kept_layers(4, 2) == [0, 2]
    student = layer_subset(micro, every_k=2)
    assert student.config.num_hidden_layers == 2 and micro.config.num_hidden_layers == 4
    for new, old in zip(student.model.layers, [micro.model.layers[0], micro.model.layers[2]]):
        assert torch.equal(new.mlp.up_proj.weight, old.mlp.up_proj.weight)
        assert new.mlp.up_proj.weight.data_ptr() != old.mlp.up_proj.weight.data_ptr()
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1]
    prompt = tokenizer(["5+5=?\n"], return_tensors="pt")
    out = student.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 5


def test_a_tokenizer_without_a_pad_token_pads_with_its_eos(micro, tokenizer, tmp_path):
    """Many pretrained tokenizers (SmolLM2's GGUF, say) have no pad token; batched sampling needs one."""
    import copy

    from rakd.rollout import sample

    bare = copy.deepcopy(tokenizer)
    bare.pad_token = None
    save_model(micro, bare, tmp_path / "m")
    model, loaded = load_causal_lm(tmp_path / "m")
    assert loaded.pad_token is not None and loaded.pad_token_id == loaded.eos_token_id
    batch = sample(model, loaded, ["1+1=?", "12*13-4+7=?"], max_new_tokens=4, temperature=0.0)
    assert batch.prompt_mask[0, 0] == 0 and batch.prompt_ids.shape[0] == 2  # left-padded with EOS


def test_gqa_attention_reads_keys_in_place_and_matches_transformers_sdpa(tokenizer):
    """On the CPU, a GQA model's attention runs SDPA with enable_gqa instead of copying the keys and values per
    query head; logits (4-D mask and 2-D mask), gradients and greedy generations equal transformers' own SDPA."""
    import contextlib

    from transformers.modeling_utils import AttentionInterface

    import rakd.models.attention as attention
    from rakd.rollout import attention_mask_4d

    config = preset_config("test-micro", tokenizer)  # 2 query heads share its one key-value head
    assert config.num_attention_heads == 2 * config.num_key_value_heads
    model = build_model(config, seed=3)
    assert AttentionInterface._global_mapping["sdpa"] is attention.gqa_sdpa_attention

    @contextlib.contextmanager
    def transformers_sdpa():
        AttentionInterface.register("sdpa", attention._ORIGINAL)
        try:
            yield
        finally:
            AttentionInterface.register("sdpa", attention.gqa_sdpa_attention)

    ids = torch.randint(3, config.vocab_size, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[0, :4] = 0  # a left-padded row
    four_d = attention_mask_4d(model, mask, 12)

    def run():
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=four_d)
        out.logits.float().pow(2).mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        two_d = model(input_ids=ids, attention_mask=mask).logits.detach()
        greedy = model.generate(ids[1:], attention_mask=mask[1:], max_new_tokens=5, do_sample=False)
        return out.logits.detach(), grads, two_d, greedy

    with torch.random.fork_rng():
        ours = run()
    with transformers_sdpa(), torch.random.fork_rng():
        theirs = run()
    assert (ours[0] - theirs[0]).abs().max() <= 1e-5 and (ours[2] - theirs[2]).abs().max() <= 1e-5
    assert max((ours[1][n] - theirs[1][n]).abs().max().item() for n in ours[1]) <= 1e-5
    assert torch.equal(ours[3], theirs[3])
    # ours does call SDPA with enable_gqa, and leaves the keys and values uncopied
    seen = {}
    real = torch.nn.functional.scaled_dot_product_attention

    def record(q, k, v, **kw):
        seen.update(q_heads=q.shape[1], k_heads=k.shape[1], gqa=kw.get("enable_gqa"))
        return real(q, k, v, **kw)

    torch.nn.functional.scaled_dot_product_attention = record
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=four_d)
    finally:
        torch.nn.functional.scaled_dot_product_attention = real
    assert seen == {"q_heads": config.num_attention_heads, "k_heads": config.num_key_value_heads, "gqa": True}
