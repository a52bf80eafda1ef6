"""The `export` config section (no heavy imports: every `rakd` command loads it)."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from rakd.schema import StageConfig

OnnxQuant = Literal["w8", "w4", "int8-dynamic"]
# llama.cpp types its quantiser makes without an importance matrix; `4bit` = q4_k_m when every row is a multiple of
# 256, else q4_0 (tests/test_export.py checks each name against llama-cpp-python's LLAMA_FTYPE_MOSTLY_* constants).
GgufQuant = Literal[
    "4bit",
    "q8_0",
    "q6_k",
    "q5_k_m",
    "q5_k_s",
    "q5_0",
    "q5_1",
    "q4_k_m",
    "q4_k_s",
    "q4_0",
    "q4_1",
    "q3_k_l",
    "q3_k_m",
    "q3_k_s",
    "q2_k",
    "iq4_nl",
    "iq4_xs",
]
ONNX_QUANTS: tuple[str, ...] = get_args(OnnxQuant)
GGUF_QUANTS: tuple[str, ...] = get_args(GgufQuant)


class ExportConfig(StageConfig):
    """ONNX and GGUF artefacts of the student (and optionally of the teacher), each checked against PyTorch."""

    formats: list[Literal["onnx", "gguf"]] = Field(
        default_factory=lambda: ["onnx", "gguf"], description="onnx: fp32 + onnx_quant; gguf: f16 + gguf_quant"
    )
    onnx_quant: list[OnnxQuant] = Field(
        default_factory=lambda: ["w8"], description="w8 held parity here; int8-dynamic changed greedy answers"
    )
    gguf_quant: list[GgufQuant] = Field(default_factory=lambda: ["q8_0", "4bit"], description="llama.cpp types")
    gguf_f32: bool = Field(False, description="also an F32 GGUF (exact parity; twice the f16 size)")
    parity_prompts: int = Field(16, ge=1, description="val questions each artefact is checked on against PyTorch")
    parity_max_new_tokens: int = Field(32, ge=1, description="length of the greedy continuation checked")
    threads: int = Field(1, ge=1, description="runtime threads of the parity checks")
    teacher: bool = Field(
        False,
        description="also export the teacher to the same artefacts (export/teacher/, labelled teacher/<label>), so "
        "that validation measures the student against what shipping the teacher itself would give",
    )
