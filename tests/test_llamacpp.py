"""The one llama.cpp loader: the AMX decision, quantised GGUFs that evaluate, and native crashes contained."""

import pytest
from tiers import heavy_fixture

from export.gguf import export_gguf
from export.parity import ParityError
from export.quantize import quantize_gguf
from export.run import ExportConfig, run_export
from rakd.isolated import ChildCrashed, ChildFailed, run_isolated
from rakd.models import llamacpp
from rakd.models.load import load_causal_lm, save_model
from rakd.models.zoo import build_model, preset_config

AMX_INFO = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | REPACK = 1 |"
PLAIN_INFO = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | REPACK = 1 |"


def test_amx_decision_from_the_system_info_line():
    assert llamacpp.amx_compiled(AMX_INFO) and not llamacpp.amx_compiled(PLAIN_INFO)
    assert not llamacpp.amx_compiled("AMX_INT8 = 0 | AVX2 = 1")
    assert llamacpp.use_extra_buffers(AMX_INFO)[0] is False and "AMX_INT8" in llamacpp.use_extra_buffers(AMX_INFO)[1]
    assert llamacpp.use_extra_buffers(PLAIN_INFO) == (True, "llama.cpp default")
    assert llamacpp.use_extra_buffers(AMX_INFO, env="1")[0] is True  # the user's override wins
    assert llamacpp.use_extra_buffers(PLAIN_INFO, env="0")[0] is False
    assert llamacpp.use_extra_buffers(PLAIN_INFO, env="maybe")[0] is True  # not 0/1: ignored


def test_real_system_info_is_recorded():
    settings = llamacpp.llama_settings()
    assert "AVX" in settings["system_info"] or "NEON" in settings["system_info"]
    assert settings["use_extra_bufts"] == (not llamacpp.amx_compiled(settings["system_info"]))


@heavy_fixture(scope="module")
def quantised(tokenizer, tmp_path_factory):
    """q8_0 and q4_0 GGUFs of a tiny model (every row a multiple of 32), as llama.cpp's quantiser writes them."""
    folder = tmp_path_factory.mktemp("llamacpp")
    save_model(build_model(preset_config("test-micro", tokenizer), seed=3), tokenizer, folder / "hf")
    model, tok = load_causal_lm(folder / "hf")
    f16 = export_gguf(model, tok, folder / "model-f16.gguf", "f16")
    return {ftype: quantize_gguf(f16, folder / f"model-{ftype}.gguf", ftype, 1) for ftype in ("q8_0", "q4_0")}


@pytest.mark.parametrize("ftype", ["q8_0", "q4_0"])
def test_quantised_ggufs_evaluate(quantised, ftype):
    # In a child process: on a machine where this regresses, the test fails instead of killing the suite.
    result = run_isolated("tests.helpers.llamacpp_child:evaluate_gguf", {"path": str(quantised[ftype])}, what=ftype)
    assert result["finite"] and result["vocab"] > 100
    assert result["extra"] == llamacpp.llama_settings()["use_extra_bufts"]


@pytest.mark.parametrize("info, expected", [(AMX_INFO, False), (PLAIN_INFO, True)])
def test_open_llama_applies_the_decision(quantised, monkeypatch, info, expected):
    import llama_cpp.llama_cpp as lib

    monkeypatch.delenv(llamacpp.ENV_EXTRA_BUFFERS, raising=False)
    monkeypatch.setattr(llamacpp, "system_info", lambda: info)
    original = lib.llama_model_default_params
    llm = llamacpp.open_llama(quantised["q8_0"], n_ctx=32)
    assert llm.model_params.use_extra_bufts is expected
    llm.close()
    assert lib.llama_model_default_params is original  # the defaults are restored after loading


def test_isolated_child_errors_and_crashes_are_reported(tmp_path):
    with pytest.raises(ChildFailed, match="KeyError"):
        run_isolated("tests.helpers.llamacpp_child:evaluate_gguf", {}, what="x")
    with pytest.raises(ChildCrashed, match=r"boom crashed \(signal 6\); last output: about to abort"):
        run_isolated("tests.helpers.llamacpp_child:abort_now", {}, what="boom")


def test_a_native_crash_in_export_parity_fails_that_artefact_only(tokenizer, quantised, tmp_path, monkeypatch):
    import sys

    hf = quantised["q8_0"].parent / "hf"
    real = sys.executable
    dying = tmp_path / "python-that-segfaults-on-q8_0"
    # The q8_0 check process dies of SIGSEGV as llama.cpp did on AMX CPUs; every other one runs normally.
    dying.write_text(
        f'#!/bin/sh\nif grep -q gguf-q8_0 "$4"; then echo "Fatal: ggml_backend_amx_mul_mat" >&2; '
        f'kill -SEGV $$; fi\nexec {real} "$@"\n'
    )
    dying.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(dying))
    cfg = ExportConfig(formats=["gguf"], gguf_quant=["q8_0", "q4_0"], parity_prompts=2, parity_max_new_tokens=6)
    with pytest.raises(
        ParityError,
        match=r"gguf-q8_0: model-q8_0.gguf: the gguf-q8_0 runtime crashed \(signal 11\); "
        r"last output: Fatal: ggml_backend_amx_mul_mat",
    ) as caught:
        run_export(cfg, hf, tmp_path / "export", ["1+1=?", "9-2=?"])
    records = {r["artefact"]: r for r in caught.value.parity["artefacts"]}
    assert set(records) == {"gguf-f16", "gguf-q8_0", "gguf-q4_0"}
    assert records["gguf-f16"]["passed"] and records["gguf-q4_0"]["top1_agreement"] is not None
    assert not records["gguf-q8_0"]["passed"] and records["gguf-q8_0"]["top1_agreement"] is None
    assert not (tmp_path / "export").exists()  # nothing written when the stage fails
