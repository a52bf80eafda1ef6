"""Pretrained-model architectures through export and parity: Llama (GQA, untied) and Qwen2 (q/k/v biases, tied
embeddings) built from configs with random weights, a byte-level BPE tokenizer trained here and a chat template.
Offline: nothing is downloaded."""

import json

import pytest
import torch
from conftest import parse_modelfile
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from export.gguf import UnsupportedModelError, export_gguf, pre_tokenizer_name
from export.run import ExportConfig, run_export
from rakd.models.load import load_causal_lm, save_model
from rakd.models.tokenizer import TokenizerConfig, train_tokenizer
from rakd.prompt import model_prompt
from rakd.rollout import encode_prompts
from rakd.scorers import check_vocabulary

CHAT = (
    "{% for m in messages %}<|bos|>{{ m['role'] }}\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|bos|>assistant\n{% endif %}"
)
QUESTIONS = ["12*13-4+7=?", "Ana has 3 coins. Then Ana gets 4 more. How many coins does Ana have now?", "9-2=?"]


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_records, tmp_path_factory):
    tokenizer = train_tokenizer(tiny_records, TokenizerConfig(vocab_size=1024), tmp_path_factory.mktemp("chat-tok"))
    tokenizer.chat_template = CHAT
    return tokenizer


def architecture(kind: str, vocab: int):
    shared = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**shared, tie_word_embeddings=True)).eval()
    return LlamaForCausalLM(LlamaConfig(**shared, tie_word_embeddings=False)).eval()


@pytest.mark.parity
@pytest.mark.parametrize("kind", ["llama", "qwen2", "llama-heads"])
def test_pretrained_architectures_export_with_parity(kind, chat_tokenizer, tmp_path):
    """`llama-heads`: one of two key-value groups pruned in each layer (a different one in each), so the heads are
    no longer hidden_size / heads wide and the files must say how wide they are."""
    from rakd.models.width import prune_kv_groups

    model = architecture(kind.removesuffix("-heads"), len(chat_tokenizer))
    if kind == "qwen2":  # random biases, so that a dropped or misplaced bias shows in the logits
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    if kind == "llama-heads":
        prune_kv_groups(model, torch.tensor([[1], [0]]))
        assert model.config.num_attention_heads * model.config.head_dim != model.config.hidden_size
    save_model(model, chat_tokenizer, tmp_path / "model")
    # ONNX of llama is covered by tests/test_export.py; here ONNX runs for qwen2 and pruned heads only (the slow part)
    formats = ["gguf"] if kind == "llama" else ["onnx", "gguf"]
    cfg = ExportConfig(
        formats=formats, onnx_quant=[], gguf_quant=[], gguf_f32=True, parity_prompts=3, parity_max_new_tokens=8
    )
    result = run_export(cfg, tmp_path / "model", tmp_path / "export", QUESTIONS)
    records = {r["artefact"]: r for r in result.parity["artefacts"]}
    assert set(records) == {"gguf-f16", "gguf-f32"} | ({"onnx-fp32"} if kind != "llama" else set())
    assert all(r["passed"] and r["tokenization_equal"] for r in records.values())
    assert records["gguf-f32"]["logits_max_abs_diff"] <= 1e-4
    assert kind == "llama" or records["onnx-fp32"]["logits_max_abs_diff"] <= 1e-4
    # The GGUF carries the chat template, and transformers reads the file back into the same weights.
    again, again_tok = load_causal_lm(tmp_path / "export" / "model-f32.gguf")
    original, loaded = model.state_dict(), again.state_dict()
    assert all(torch.equal(original[k], loaded[k]) for k in loaded)
    assert again_tok.chat_template == CHAT
    check_vocabulary(tmp_path / "export" / "model-f32.gguf", chat_tokenizer)  # a llama_cpp scorer would take it


def test_prompts_use_the_chat_template_when_there_is_one(chat_tokenizer, tokenizer):
    text, special = model_prompt(chat_tokenizer, "9-2=?")
    assert text == "<|bos|>user\n9-2=?\n<|bos|>assistant\n" and special is False
    ids, mask = encode_prompts(chat_tokenizer, ["9-2=?"])
    assert ids[0][mask[0].bool()].tolist() == chat_tokenizer.apply_chat_template(
        [{"role": "user", "content": "9-2=?"}], add_generation_prompt=True, tokenize=True
    )
    assert model_prompt(tokenizer, "9-2=?") == ("9-2=?\n", True)  # no template: the project's format


TEXTS = ["12*13-4=?\n", "  spaced   out 7 ", "Zoë paid 3€ — ok?", "A: 46<|eos|>", "<|bos|>x", "don't , stop ."]


@pytest.mark.parametrize("where", ["chat_template.jinja", "tokenizer_config.json", "none"])
def test_an_onnx_folder_s_tokenizer_does_what_transformers_does(where, chat_tokenizer, tokenizer, tmp_path):
    """`FolderTokenizer` (the `tokenizers` library alone, what an ONNX artefact runs with) against transformers on
    the same folder: the prompt, ids with and without special tokens, decoding with and without them, the special
    ids; the chat template read from where transformers writes it now, from where it wrote it before, or absent."""
    from transformers import AutoTokenizer

    from rakd.models.onnx_folder import FolderTokenizer

    (chat_tokenizer if where != "none" else tokenizer).save_pretrained(tmp_path)
    if where == "tokenizer_config.json":  # the layout of transformers < 4.54 (and of many published models)
        config = json.loads((tmp_path / "tokenizer_config.json").read_text())
        config["chat_template"] = (tmp_path / "chat_template.jinja").read_text()
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
        (tmp_path / "chat_template.jinja").unlink()
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["clean_up_tokenization_spaces"] = True  # transformers' decode then cleans " ," and " ."
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ours, theirs = FolderTokenizer(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    assert (ours.chat_template is None) == (where == "none")
    for question in ["9-2=?", *TEXTS]:
        assert model_prompt(ours, question) == model_prompt(theirs, question)
    for text in TEXTS:
        for special in (True, False):
            ids = ours(text, add_special_tokens=special)["input_ids"]
            assert ids == theirs(text, add_special_tokens=special)["input_ids"]
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.decode(theirs("don't , stop .")["input_ids"]) != theirs.backend_tokenizer.decode(
        theirs("don't , stop .")["input_ids"]
    )  # the clean-up applied: the check above compares something


def test_pre_tokenizers_map_to_llama_cpp_names_or_fail_by_name(chat_tokenizer):
    assert pre_tokenizer_name(chat_tokenizer) == "gpt-2"
    qwen = (  # Qwen2's pre-tokenizer regex, as its tokenizer.json has it
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )

    def wrapped(pre):
        backend = Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[]))
        backend.pre_tokenizer = pre
        return PreTrainedTokenizerFast(tokenizer_object=backend)

    split = pre_tokenizers.Split(Regex(qwen), behavior="isolated")
    assert pre_tokenizer_name(wrapped(pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(False)]))) == "qwen2"
    odd = pre_tokenizers.Split(Regex(r"\d+"), behavior="isolated")
    with pytest.raises(UnsupportedModelError, match="pre-tokenizer not supported yet"):
        pre_tokenizer_name(wrapped(pre_tokenizers.Sequence([odd])))


def test_unsupported_settings_are_named(chat_tokenizer, tmp_path):
    model = architecture("qwen2", len(chat_tokenizer))
    model.config.rope_scaling = {"rope_type": "linear", "factor": 2.0}
    with pytest.raises(UnsupportedModelError, match="rope_scaling"):
        export_gguf(model, chat_tokenizer, tmp_path / "m.gguf")


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_a_pretrained_pair_runs_every_stage_to_a_package(kind, chat_tokenizer, tmp_path, capsys):
    """A Qwen2 (tied, biases) or Llama (untied) teacher and a smaller student of its family from HF folders (random
    weights, grouped-query attention, the trained BPE, a chat template): prep -> teacher (evaluated, not trained)
    -> distill (warm start, 2 RL steps) -> export (ONNX and GGUF with parity) -> validate -> package, through the
    CLI, with prompts in the chat template throughout."""
    from pipeline.cli import main

    teacher = architecture(kind, len(chat_tokenizer))
    save_model(teacher, chat_tokenizer, tmp_path / "teacher-hf")
    small = dict(
        vocab_size=len(chat_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
    )
    if kind == "qwen2":
        student = Qwen2ForCausalLM(Qwen2Config(**small, tie_word_embeddings=True))
    else:
        student = LlamaForCausalLM(LlamaConfig(**small, tie_word_embeddings=False))
    save_model(student, chat_tokenizer, tmp_path / "student-hf")
    sets = [
        f"run.root={tmp_path}",
        "run.name=qwen",
        f"teacher.model.path={tmp_path / 'teacher-hf'}",
        "teacher.model.preset=null",
        f"distill.student.model.path={tmp_path / 'student-hf'}",
        "distill.student.model.preset=null",
        "prep.generator.n_items=300",
        "teacher.eval.n_problems=4",
        "teacher.eval.k_samples=1",
        "teacher.eval.max_new_tokens=8",
        "distill.warmstart.n_prompts=8",
        "distill.warmstart.sft.steps=2",
        "distill.warmstart.max_new_tokens=8",
        "distill.rl.steps=2",
        "distill.rl.prompts_per_step=2",
        "distill.rl.group_size=4",
        "distill.rl.max_new_tokens=8",
        "distill.rl.zero_adv=kd",  # random models answer nothing: the KD term still trains
        "distill.eval.n_problems=4",
        "distill.eval.k_samples=1",
        "distill.eval.max_new_tokens=8",
        "distill.eval_every=0",
        "export.onnx_quant=[]",
        "export.gguf_quant=[]",
        "export.parity_prompts=2",
        "export.parity_max_new_tokens=6",
        "validation.n_problems=3",
        "validation.max_new_tokens=8",
        "validation.isolate=false",
        "validation.gates.min_accuracy=0",
        "validation.gates.max_latency_ms_p95=null",
    ]
    args = [arg for s in sets for arg in ("--set", s)]
    for stage in ("prep", "teacher", "distill", "export", "validate", "package"):
        assert main([stage, "--config", "configs/smoke.yaml", *args]) == 0, stage
    run = tmp_path / "qwen"
    assert json.loads((run / "teacher" / "config.json").read_text())["model_type"] == kind
    assert load_causal_lm(run / "student")[1].chat_template == CHAT
    parity = json.loads((run / "export" / "parity.json").read_text())
    assert {r["artefact"] for r in parity["artefacts"]} >= {"onnx-fp32", "gguf-f16"}
    report = json.loads((run / "validate" / "report.json").read_text())
    assert all(not r.get("error") for r in report["artefacts"])
    manifest = json.loads((run / "package" / "manifest.json").read_text())
    assert manifest["student"]["architecture"] == type(student).__name__
    # The Modelfile asks Ollama in the chat template, as validation asked llama.cpp (Ollama adds the BOS itself),
    # and stops at the end token.
    modelfile = parse_modelfile((run / "package" / "Modelfile").read_text())
    assert manifest["models"][0]["format"] == "gguf"
    [template] = modelfile["TEMPLATE"]
    question = "9-2=?"
    asked = template.removeprefix('"""').removesuffix('"""').replace("{{ .Prompt }}", question)
    assert "<|bos|>" + asked == model_prompt(chat_tokenizer, question)[0]
    assert f'stop "{chat_tokenizer.eos_token}"' in modelfile["PARAMETER"]
    card = (run / "package" / "README.md").read_text()
    assert "create_chat_completion" in card and "chat template" in card


def test_the_pretrained_config_loads_once_its_placeholders_are_set(tmp_path):
    from pipeline.config import load_config

    data = tmp_path / "gsm8k.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    sets = [f"prep.path={data}", "teacher.model.path=models/teacher", "distill.student.model.path=models/student"]
    cfg = load_config("configs/pretrained.yaml", sets)
    assert cfg.prep.source == "gsm8k" and cfg.prep.tokenizer is None and cfg.distill.rl.max_new_tokens == 512
    with pytest.raises(Exception, match="task file not found"):
        load_config("configs/pretrained.yaml")  # the placeholders are not files


def test_a_layer_subset_of_a_pretrained_teacher_is_a_working_student(chat_tokenizer):
    from rakd.models.subset import layer_subset

    teacher = architecture("qwen2", len(chat_tokenizer))
    student = layer_subset(teacher, every_k=2)
    assert student.config.num_hidden_layers == 1 and teacher.config.num_hidden_layers == 2
    ids, mask = encode_prompts(chat_tokenizer, QUESTIONS)
    with torch.no_grad():
        logits = student(input_ids=ids, attention_mask=mask).logits
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(
        student.model.layers[0].self_attn.q_proj.bias, teacher.model.layers[0].self_attn.q_proj.bias
    )


def test_parity_references_are_scored_on_the_prompt_they_were_sampled_from(chat_tokenizer):
    """The reference continuation is greedy from the model's own prompt (its chat template), so the reference
    logits, computed on that prompt, predict it at every position; on another prompt format an exact export
    would show a top-1 agreement far below 1 (SmolLM2-135M-Instruct: 0.74)."""
    from export.parity import build_references

    model = architecture("qwen2", len(chat_tokenizer))
    for ref, question in zip(build_references(model, chat_tokenizer, QUESTIONS, 8), QUESTIONS):
        ids, mask = encode_prompts(chat_tokenizer, [question])
        assert ref.prompt_ids == ids[0][mask[0].bool()].tolist() and not ref.special
        assert ref.logits[len(ref.prompt_ids) - 1 :].argmax(-1).tolist() == ref.continuation
