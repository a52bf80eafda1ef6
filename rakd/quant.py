"""The artefact vocabulary: every exported model type, once, as a typed table built on gguf-py's own enums.

An artefact is a format (`gguf`, `onnx`) and a type (`q4_k_m`, `w8`, ...). Its label (`gguf-q4_k_m`), its file
name in `export/` (`model-q4_k_m.gguf`, `onnx-w8/`), llama.cpp's file type and the tensor type it is named after,
its block width and its parity tolerance are read from here by export, parity, validation and packaging; nothing
parses them back from a label or a file name.

Tolerances: (max |Δlogit| at the last prompt token, or None; the least top-1 agreement along the fp32 greedy
continuation). Unquantised types must match (fp32 within 1e-4, f16 within a bound that grows with the logits,
export.parity); 8- and 6-bit types keep 90% agreement, 5 bits and fewer 70% (measured on the tiny student and
SmolLM2-135M, bench/results/quant-realdims-2026-11-28/).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

Format = Literal["gguf", "onnx", "pytorch"]

EXACT, F16, HIGH, LOW = (1e-4, 1.0), (1e-2, 1.0), (None, 0.9), (None, 0.7)


@dataclass(frozen=True)
class QuantType:
    format: Format
    name: str  # as configs and labels spell it: q4_k_m, f16, w8
    bits: int  # nominal bits per weight of the main tensors
    tolerance: tuple[float | None, float]
    file_type: LlamaFileType | None = None  # gguf: what llama.cpp's quantiser is asked for
    tensor_type: GGMLQuantizationType | None = None  # gguf: the tensor type the file type is named after
    # the logit bound also covers `rounding` x the change that rounding the reference model's matrices to this
    # type makes to its own logits in PyTorch (F16: export.parity measures it per model)
    rounding: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.format}-{self.name}"

    @property
    def file_name(self) -> str:
        """Its name in `export/`: a file for GGUF, a folder for ONNX (`onnx/` holds the fp32 model)."""
        if self.format == "gguf":
            return f"model-{self.name}.gguf"
        return "onnx" if self.name == "fp32" else f"onnx-{self.name}"

    @property
    def block(self) -> int | None:
        """GGUF: the row length a tensor must be a multiple of to take this type (gguf-py's GGML_QUANT_SIZES);
        llama.cpp falls back per tensor otherwise."""
        return GGML_QUANT_SIZES[self.tensor_type][0] if self.tensor_type is not None else None


def _gguf(name: str, bits: int, tolerance, tensor: str, file_type: str | None = None, rounding: float = 0.0):
    file_type = file_type or f"MOSTLY_{name.upper()}"
    return QuantType(
        "gguf", name, bits, tolerance, LlamaFileType[file_type], GGMLQuantizationType[tensor], rounding=rounding
    )


QUANTS: tuple[QuantType, ...] = (
    QuantType("pytorch", "fp32", 32, EXACT),
    QuantType("onnx", "fp32", 32, EXACT),
    QuantType("onnx", "w8", 8, HIGH),  # weight-only MatMulNBits, 8 bits
    QuantType("onnx", "int8-dynamic", 8, HIGH),  # ONNX Runtime's dynamic int8 quantisation
    QuantType("onnx", "w4", 4, LOW),  # weight-only MatMulNBits, 4 bits
    _gguf("f32", 32, EXACT, "F32", "ALL_F32"),
    _gguf("f16", 16, F16, "F16", rounding=3.0),
    _gguf("q8_0", 8, HIGH, "Q8_0"),
    _gguf("q6_k", 6, HIGH, "Q6_K"),
    _gguf("q5_k_m", 5, LOW, "Q5_K"),
    _gguf("q5_k_s", 5, LOW, "Q5_K"),
    _gguf("q5_0", 5, LOW, "Q5_0"),
    _gguf("q5_1", 5, LOW, "Q5_1"),
    _gguf("q4_k_m", 4, LOW, "Q4_K"),
    _gguf("q4_k_s", 4, LOW, "Q4_K"),
    _gguf("q4_0", 4, LOW, "Q4_0"),
    _gguf("q4_1", 4, LOW, "Q4_1"),
    _gguf("iq4_nl", 4, LOW, "IQ4_NL"),
    _gguf("iq4_xs", 4, LOW, "IQ4_XS"),
    _gguf("q3_k_l", 3, LOW, "Q3_K"),
    _gguf("q3_k_m", 3, LOW, "Q3_K"),
    _gguf("q3_k_s", 3, LOW, "Q3_K"),
    _gguf("q2_k", 2, LOW, "Q2_K"),
)
BY_LABEL: dict[str, QuantType] = {q.label: q for q in QUANTS}
# llama.cpp file types the export does not offer, with the reason (tests/test_export.py walks every type
# llama-cpp-python accepts: each is in QUANTS or here).
NOT_OFFERED = {
    "needs an importance matrix (llama-quantize --imatrix)": (
        "IQ1_S",
        "IQ1_M",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ2_S",
        "IQ2_M",
        "IQ3_XXS",
        "IQ3_XS",
        "IQ3_S",
        "IQ3_M",
        "Q2_K_S",
    ),
    "ternary and 1-2 bit types for models trained for them (BitNet-style)": ("TQ1_0", "TQ2_0", "Q1_0", "Q2_0"),
    "FP4 types for mixture-of-experts weights or NVIDIA's FP4 kernels": ("MXFP4_MOE", "NVFP4"),
    "not a quantisation of an F16 export (bf16 weights; a file type llama.cpp guesses)": ("BF16", "GUESSED"),
}


def quant(fmt: str, name: str) -> QuantType:
    """The table's entry for `fmt` and `name`, or a ValueError naming the known ones."""
    found = BY_LABEL.get(f"{fmt}-{name.lower()}")
    if found is None:
        known = ", ".join(q.name for q in QUANTS if q.format == fmt)
        raise ValueError(f"unknown {fmt} type {name!r}; known: {known}")
    return found


def by_label(label: str) -> QuantType | None:
    return BY_LABEL.get(label)


def of_file_type(file_type: int) -> QuantType | None:
    """The GGUF entry whose llama.cpp file type is `file_type` (a GGUF's `general.file_type`)."""
    return next((q for q in QUANTS if q.file_type is not None and int(q.file_type) == int(file_type)), None)


def names(fmt: str) -> tuple[str, ...]:
    return tuple(q.name for q in QUANTS if q.format == fmt)
