"""Exports checked against PyTorch (marker `parity`): ONNX via optimum, GGUF via our writer + llama.cpp."""

import json
import subprocess
import sys
import warnings

import pytest
import torch
from tiers import heavy_fixture

from export.gguf import UnsupportedModelError, export_gguf, permute_rotary
from export.quantize import QuantizeError, default_4bit, expected_fallbacks, gguf_row_lengths, quantize_gguf
from export.run import ExportConfig, run_export
from rakd.models.load import ModelLoadError, load_causal_lm, save_model
from rakd.models.logits import LlamaCppLogits
from rakd.models.zoo import build_model, preset_config

pytestmark = pytest.mark.parity

QUESTIONS = [
    "1+1=?",
    "12*13-4+7=?",
    "Ana has 3 coins. Then Ana gets 4 more. How many coins does Ana have now?",
    "9-2=?",
]


@heavy_fixture(scope="module")
def micro_dir(tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("micro") / "model"
    save_model(build_model(preset_config("test-micro", tokenizer), seed=5), tokenizer, folder)
    return folder


@heavy_fixture(scope="module")
def unquantised(micro_dir, tmp_path_factory):
    """The micro model's unquantised exports (ONNX fp32, GGUF f16 and f32) with their parity records."""
    out = tmp_path_factory.mktemp("unquantised") / "export"
    cfg = ExportConfig(onnx_quant=[], gguf_quant=[], gguf_f32=True, parity_prompts=4, parity_max_new_tokens=12)
    return run_export(cfg, micro_dir, out, QUESTIONS), out


def test_unquantised_exports_match_pytorch(unquantised):
    result, out = unquantised
    records = {r["artefact"]: r for r in result.parity["artefacts"]}
    assert set(records) == {"onnx-fp32", "gguf-f16", "gguf-f32"}
    assert records["onnx-fp32"]["logits_max_abs_diff"] <= 1e-4
    assert records["gguf-f32"]["logits_max_abs_diff"] <= 1e-4
    assert records["gguf-f16"]["logits_max_abs_diff"] <= 1e-2
    for record in records.values():
        assert record["tokenization_equal"] and record["top1_agreement"] == 1.0 and record["passed"]
    assert (out / "onnx-fp32/model.onnx").is_file()
    assert (out / "onnx-fp32/tokenizer.json").is_file()
    on_disk = json.loads((out / "parity.json").read_text())
    assert on_disk["artefacts"][0]["size_bytes"] > 0


ONNX_CHILD = """
import json, sys
from pathlib import Path
from deploy.runtimes import OnnxGenerator
runtime = OnnxGenerator(Path(sys.argv[1]))
runs = [runtime.generate(q, 12) for q in json.loads(sys.argv[2])]
print(json.dumps({"runs": [[r.prompt_ids, r.ids, r.end_token, r.text] for r in runs],
                  "loaded": sorted(m for m in ("torch", "transformers", "optimum") if m in sys.modules)}))
"""


def test_an_onnx_artefact_decodes_as_pytorch_does_without_torch_in_its_process(micro_dir, unquantised):
    """The ONNX runtime is ONNX Runtime and `tokenizers` alone, as on a device: a fresh process decoding the fp32
    export greedily loads neither torch nor transformers, and gives PyTorch's prompt ids, tokens, end and text."""
    from deploy.runtimes import TorchGenerator

    _, out = unquantised
    child = subprocess.run(
        [sys.executable, "-c", ONNX_CHILD, str(out / "onnx-fp32"), json.dumps(QUESTIONS)],
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(child.stdout.strip().splitlines()[-1])
    assert found["loaded"] == []
    reference = TorchGenerator(micro_dir)
    expected = [reference.generate(q, 12) for q in QUESTIONS]
    assert found["runs"] == [[list(r.prompt_ids), list(r.ids), r.end_token, r.text] for r in expected]
    assert any(r.new_tokens > 0 for r in expected)


def test_gguf_round_trip_into_transformers_is_identical(micro_dir, tmp_path):
    model, tokenizer = load_causal_lm(micro_dir)
    path = export_gguf(model, tokenizer, tmp_path / "m.gguf", "f32")
    again, again_tok = load_causal_lm(path)
    original, loaded = model.state_dict(), again.state_dict()
    assert original.keys() == loaded.keys()
    assert all(torch.equal(original[k], loaded[k]) for k in original)
    assert again_tok.eos_token_id == tokenizer.eos_token_id  # fixed from the GGUF metadata


def test_rotary_permutation_is_a_per_head_reordering():
    weight = torch.arange(8 * 3, dtype=torch.float32).reshape(8, 3).numpy()
    permuted = permute_rotary(weight, n_head=2)
    # each head's 4 rows [a0 a1 b0 b1] become [a0 b0 a1 b1]
    assert permuted[:4, 0].tolist() == [0.0, 6.0, 3.0, 9.0]
    assert sorted(permuted.ravel().tolist()) == sorted(weight.ravel().tolist())


@pytest.mark.parametrize("text", ["12*13-4=?\n", "  spaced   out 7 ", "Zoë paid 3€ — ok?", "A: 46<|eos|>", "<|bos|>x"])
def test_llama_cpp_tokenises_like_hf(micro_dir, tmp_path_factory, text):
    model, tokenizer = load_causal_lm(micro_dir)
    path = tmp_path_factory.getbasetemp() / "tok.gguf"
    if not path.exists():
        export_gguf(model, tokenizer, path, "f16")
    runtime = LlamaCppLogits(path)
    assert runtime.tokenize(text) == tokenizer(text)["input_ids"]
    runtime.close()


def test_dims_check_predicts_fallbacks_and_warns(tokenizer):
    model = build_model(preset_config("test-micro", tokenizer), seed=0)  # width 32: Q8_0 fits, K-quants do not
    rows = gguf_row_lengths(model)
    assert expected_fallbacks(rows, "q8_0") == []
    assert "model.embed_tokens.weight" in expected_fallbacks(rows, "q4_k_m")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert default_4bit(rows) == "q4_0"
    assert any("multiples of 256" in str(w.message) for w in caught)
    assert default_4bit({"w": 512}) == "q4_k_m"


def test_the_type_table_matches_llama_cpp_and_gguf():
    """Every file type llama-cpp-python accepts is in rakd.quant's table (with llama.cpp's number, gguf-py's
    block width and a tolerance) or named as not offered, with the reason; the config offers exactly the table."""
    import llama_cpp
    from gguf import GGML_QUANT_SIZES

    from export.config import GGUF_QUANTS, ONNX_QUANTS
    from rakd.quant import NOT_OFFERED, QUANTS, by_label, names, of_file_type, quant

    accepted = {
        n.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_"): getattr(llama_cpp, n)
        for n in dir(llama_cpp)
        if n.startswith("LLAMA_FTYPE_")
    }
    offered = {
        q.file_type.name.removeprefix("ALL_").removeprefix("MOSTLY_"): q for q in QUANTS if q.file_type is not None
    }
    skipped = {name for reason in NOT_OFFERED.values() for name in reason}
    assert set(accepted) == set(offered) | skipped, set(accepted) ^ (set(offered) | skipped)
    assert not set(offered) & skipped
    for name, kind in offered.items():
        assert int(kind.file_type) == accepted[name], name  # gguf-py's number is llama.cpp's
        assert kind.block == GGML_QUANT_SIZES[kind.tensor_type][0]
        assert of_file_type(accepted[name]) is kind and by_label(kind.label) is kind
        assert kind.tolerance[1] == (1.0 if kind.bits >= 16 else 0.9 if kind.bits >= 6 else 0.7), name
    assert quant("gguf", "iq4_nl").block == 32 and quant("gguf", "iq4_xs").block == 256
    assert quant("gguf", "q4_k_m").tensor_type.name == "Q4_K" and quant("gguf", "q8_0").tensor_type.name == "Q8_0"
    assert set(GGUF_QUANTS) - {"4bit"} == set(names("gguf")) - {"f16", "f32"}
    assert set(ONNX_QUANTS) == set(names("onnx")) - {"fp32"}
    assert quant("gguf", "q4_k_m").file_name == "model-q4_k_m.gguf" and quant("onnx", "w8").file_name == "onnx-w8"
    with pytest.raises(ValueError, match="known: .*q8_0"):
        quant("gguf", "q9_9")


def test_quantised_file_reports_its_tensor_types(micro_dir, tmp_path):
    model, tokenizer = load_causal_lm(micro_dir)
    f16 = export_gguf(model, tokenizer, tmp_path / "m-f16.gguf", "f16")
    q8 = quantize_gguf(f16, tmp_path / "m-q8_0.gguf", "q8_0")
    from export.quantize import tensor_types

    types = tensor_types(q8)
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert q8.stat().st_size < f16.stat().st_size


def test_bad_inputs_are_clear_errors(micro_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="no such model folder"):
        run_export(ExportConfig(), tmp_path / "missing", tmp_path / "out", QUESTIONS)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        quantize_gguf(broken, tmp_path / "q.gguf", "q8_0")
    model, tokenizer = load_causal_lm(micro_dir)
    with pytest.raises(QuantizeError, match="unknown llama.cpp quantisation type 'q9_9'"):
        quantize_gguf(export_gguf(model, tokenizer, tmp_path / "ok.gguf"), tmp_path / "q.gguf", "q9_9")
    assert not (tmp_path / "out").exists()


def test_other_architectures_are_not_supported_for_gguf(tokenizer, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=len(tokenizer)))
    with pytest.raises(UnsupportedModelError, match="not supported yet: gpt2"):
        export_gguf(gpt2, tokenizer, tmp_path / "g.gguf")


def test_non_causal_model_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        run_export(ExportConfig(), tmp_path / "bert", tmp_path / "out", QUESTIONS)


def test_export_command(micro_dir, tmp_path, capsys):
    from pipeline.cli import main

    out = tmp_path / "cli-export"
    code = main(
        [
            "export",
            str(micro_dir),
            "--out",
            str(out),
            "--formats",
            "gguf",
            "--set",
            "export.gguf_quant=[]",
            "--set",
            f"run.root={tmp_path}",
        ]
    )
    assert code == 0
    assert "gguf-f16" in capsys.readouterr().out
    assert (out / "model-f16.gguf").is_file() and (out / "parity.json").is_file()
    assert main(["export", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "nope: no such model folder" in capsys.readouterr().err


class _FakeRuntime:
    def __init__(self, logits):
        self.values = logits

    def tokenize(self, text, special=True):
        return [0, 5]

    def logits(self, ids):
        return self.values


def test_a_flip_between_tokens_tied_within_the_bound_is_a_near_tie_not_a_failure(tmp_path):
    import numpy as np

    from export.parity import Reference, compare

    # prompt [0, 5], greedy continuation [2, 3, 1]: logit rows 1..3 predict those three tokens
    ref_logits = np.zeros((4, 4), dtype=np.float32)
    ref_logits[1, 2], ref_logits[2, 3], ref_logits[3, 1] = 5.0, 5.0, 5.0
    ref_logits[2, 0] = 5.0 - 1e-5  # at the second step token 0 is within 1e-4 of the reference's token 3
    ref = Reference("q", [0, 5], [2, 3, 1], ref_logits)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"x")
    flipped = ref_logits.copy()
    flipped[2, 0], flipped[2, 3] = 5.0, 5.0 - 1e-5  # the artefact picks token 0 there
    record = compare("onnx-fp32", path, [ref], _FakeRuntime(flipped))
    assert record["near_ties"] == 1 and record["top1_agreement"] == 2 / 3 and record["passed"]
    far = ref_logits.copy()
    far[3, 2] = 9.0  # a clear disagreement: token 2 by 4 logits where the reference scored it 0
    record = compare("onnx-fp32", path, [ref], _FakeRuntime(far))
    assert record["near_ties"] == 0 and not record["passed"]
    assert "top-1 agreement 0.667 (+0 near ties) < 1" in record["failures"][0]


def test_the_f16_logit_bound_is_three_times_the_model_s_own_f16_rounding(tmp_path):
    import numpy as np

    from export.parity import Reference, compare, tolerance_for

    ref_logits = np.zeros((3, 4), dtype=np.float32)
    ref_logits[1, 2], ref_logits[2, 1] = 20.0, 20.0
    path = tmp_path / "m.gguf"
    path.write_bytes(b"x")
    moved = ref_logits.copy()
    moved[1] += 0.05  # a uniform shift: top-1 unchanged, |Δlogit| 0.05
    robust = Reference("q", [0, 5], [2, 1], ref_logits, rounding=0.001)  # a model F16 hardly moves
    record = compare("gguf-f16", path, [robust], _FakeRuntime(moved))
    assert not record["passed"] and record["tolerance_logits"] == 1e-2  # the floor
    sensitive = Reference("q", [0, 5], [2, 1], ref_logits, rounding=0.03)  # the worst reference sets the bound
    record = compare("gguf-f16", path, [robust, sensitive], _FakeRuntime(moved))
    assert record["passed"] and record["tolerance_logits"] == pytest.approx(0.09)
    moved[1, 3] += 1.0  # a whole logit: what a wrong export does, however sensitive the model
    assert not compare("gguf-f16", path, [sensitive], _FakeRuntime(moved))["passed"]
    assert tolerance_for("gguf-q8_0", rounding=5.0) == tolerance_for("gguf-q8_0")  # F16's bound alone


def test_f16_rounding_measures_what_rounding_the_matrices_does_to_the_logits(tokenizer):
    """The measured change equals the one computed by hand (the model's 2-D weights rounded to F16, its logits
    compared at the last prompt token), and is zero for a model whose weights F16 already holds exactly."""
    import numpy as np
    import torch

    from export.parity import Reference, f16_rounding

    model = build_model(preset_config("test-micro", tokenizer), seed=0).eval()
    ids = tokenizer("12+34=")["input_ids"]
    twin = build_model(preset_config("test-micro", tokenizer), seed=0).eval()
    with torch.no_grad():
        for param in twin.parameters():
            if param.dim() == 2:
                param.copy_(param.half().float())
        logits = model(torch.tensor([ids])).logits[0].numpy()
        twin_logits = twin(torch.tensor([ids])).logits[0].numpy()
    last = len(ids) - 2  # the reference's prompt is all but the last token
    (change,) = f16_rounding(model, [Reference("q", ids[:-1], ids[-1:], logits)])
    assert change == pytest.approx(float(np.abs(twin_logits[last] - logits[last]).max()), abs=1e-6) and change > 0
    assert f16_rounding(twin, [Reference("q", ids[:-1], ids[-1:], twin_logits)]) == [0.0]


def test_f16_rounding_with_activations_rounds_each_linear_input_as_llama_cpp_does():
    """A one-linear model whose embedding (a 1-D vector: no F16 matrix) feeds the head 1 + 2**-12, which F16 cannot
    hold (10 mantissa bits): with the head's weights exact in F16, rounding the weights alone changes nothing, and
    rounding the head's input to F16 (1.0) changes logit j by |w_j| x 2**-12, by hand."""
    import torch

    from export.parity import Reference, f16_rounding

    class OneLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Parameter(torch.tensor([1.0, 1.0 + 2**-12]))
            self.head = torch.nn.Linear(1, 3, bias=False)
            with torch.no_grad():
                self.head.weight.copy_(torch.tensor([[1.0], [-4.0], [2.0]]))

        def forward(self, ids):
            return type("Out", (), {"logits": self.head(self.table[ids].unsqueeze(-1))})()

    model = OneLinear()
    with torch.no_grad():
        logits = model(torch.tensor([[0, 1]])).logits[0].numpy()
    ref = Reference("q", [0, 1], [0], logits)  # the last prompt token, 1, reads 1 + 2**-12
    assert f16_rounding(model, [ref]) == [0.0]
    (change,) = f16_rounding(model, [ref], activations=True)
    assert change == pytest.approx(4.0 * 2**-12, rel=1e-6)
    assert not model.head._forward_pre_hooks  # the hooks went on a copy, never on the model itself


def test_our_gguf_header_reading_equals_gguf_py_and_a_file_cut_in_its_tensors_is_refused(micro_dir, tmp_path):
    from gguf import GGUFReader

    from rakd.models.gguf_file import _reader_header, gguf_metadata, gguf_tokens, special_token

    model, tokenizer = load_causal_lm(micro_dir)
    path = export_gguf(model, tokenizer, tmp_path / "m.gguf")
    meta, tokens = _reader_header(GGUFReader(str(path)))  # gguf-py's own reading of every field
    assert gguf_metadata(path) == meta and gguf_tokens(path) == list(tokens) and len(tokens) == len(tokenizer)
    assert special_token(path, meta, "eos") == tokenizer.eos_token
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:-100])  # the header whole, the last tensor short
    with pytest.raises(ModelLoadError, match=r"cut.gguf: corrupt or truncated GGUF file: tensor .* ends at byte"):
        gguf_metadata(cut)


def test_the_real_models_gguf_header_reads_as_gguf_py_reads_it(smollm_gguf):
    from gguf import GGUFReader

    from rakd.models.gguf_file import _reader_header, gguf_metadata, gguf_tokens

    meta, tokens = _reader_header(GGUFReader(str(smollm_gguf)))
    assert gguf_metadata(smollm_gguf) == meta and tuple(gguf_tokens(smollm_gguf)) == tokens and len(tokens) == 49152


def test_a_gguf_load_reads_its_header_once_and_loads_what_it_loaded_before(micro_dir, tmp_path, monkeypatch):
    import contextlib
    import importlib

    import gguf

    import rakd.models.load as load

    model, tokenizer = load_causal_lm(micro_dir)
    path = export_gguf(model, tokenizer, tmp_path / "m.gguf")
    from transformers import configuration_utils, modeling_gguf_pytorch_utils

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    parse = configuration_utils.load_gguf_checkpoint
    with load._gguf_read_once():
        assert gguf.GGUFReader(str(path)) is gguf.GGUFReader(str(path))
        first, second = (configuration_utils.load_gguf_checkpoint(path, return_tensors=False) for _ in range(2))
        assert first == second and first is not second  # parsed once, each caller given its own copy
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, name_map)  # put back after the block
    assert configuration_utils.load_gguf_checkpoint is parse is modeling_gguf_pytorch_utils.load_gguf_checkpoint
    parsed = []
    counted = lambda *a, **k: parsed.append(k.get("return_tensors", False)) or parse(*a, **k)  # noqa: E731
    for module in load._GGUF_METADATA_READERS:
        monkeypatch.setattr(importlib.import_module(module), "load_gguf_checkpoint", counted)
    monkeypatch.setattr(modeling_gguf_pytorch_utils, "load_gguf_checkpoint", counted)
    load_causal_lm(path)
    assert parsed.count(False) == 1, parsed  # the metadata once; the weights' own read besides
    once, _ = load_causal_lm(path)
    original, load._gguf_read_once = load._gguf_read_once, contextlib.nullcontext
    try:
        before, _ = load_causal_lm(path)  # transformers' own reading, every time
    finally:
        load._gguf_read_once = original
    ours, theirs = once.state_dict(), before.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
