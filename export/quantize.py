"""Quantisation: llama.cpp's own quantiser for GGUF, ONNX Runtime's for ONNX.

llama.cpp quantises a tensor only when its row length is a multiple of the
type's block width (rakd.quant, from gguf-py's GGML_QUANT_SIZES: 32 for
Q4_0/Q5_0/Q8_0/IQ4_NL, 256 for K-quants and IQ4_XS); otherwise it silently
falls back per tensor. `expected_fallbacks` predicts that from the model
dims, and `tensor_types` reads what was really written.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from rakd.io import publish_mode
from rakd.models.load import gguf_metadata
from rakd.quant import quant
from rakd.schema import StageError


class QuantizeError(StageError):
    """A quantisation that did not produce a file, naming the type and the files."""


def block_size(ftype: str) -> int:
    return quant("gguf", ftype).block


def expected_fallbacks(row_lengths: dict[str, int], ftype: str) -> list[str]:
    """Names of 2-D tensors whose row length does not fit `ftype`'s block size."""
    size = block_size(ftype)
    return sorted(name for name, length in row_lengths.items() if length % size)


def default_4bit(row_lengths: dict[str, int]) -> str:
    """q4_k_m when every row length is a multiple of 256, else q4_0 (with a warning)."""
    if not expected_fallbacks(row_lengths, "q4_k_m"):
        return "q4_k_m"
    warnings.warn("model rows are not multiples of 256: using q4_0 instead of q4_k_m", stacklevel=2)
    return "q4_0"


def _ftype(name: str) -> int:
    import llama_cpp

    try:
        value = getattr(llama_cpp, f"LLAMA_FTYPE_{quant('gguf', name).file_type.name}", None)
    except ValueError:
        value = None
    if value is None:
        known = sorted(
            n.removeprefix("LLAMA_FTYPE_MOSTLY_").lower() for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_MOSTLY_")
        )
        raise QuantizeError(f"unknown llama.cpp quantisation type {name!r}; known: {', '.join(known)}")
    return value


@contextlib.contextmanager
def captured_stderr():
    """Collect what C code writes to fd 2 (llama.cpp logs every tensor) instead of flooding the terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        log: list[str] = []
        try:
            yield log
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            log.append(sink.read().decode("utf-8", "replace"))


def quantize_gguf(source: str | Path, target: str | Path, ftype: str, threads: int = 0) -> Path:
    """Quantise GGUF `source` to `target` with llama.cpp (`llama_model_quantize`), atomically."""
    import llama_cpp

    source, target = Path(source), Path(target)
    gguf_metadata(source)  # a corrupt or truncated file is a clear error here, not a crash in C
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _ftype(ftype)
    params.nthread = threads
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with captured_stderr() as log:
            code = llama_cpp.llama_model_quantize(str(source).encode(), tmp.encode(), ctypes.byref(params))
        if code != 0 or os.path.getsize(tmp) == 0:
            tail = "\n".join(log[0].strip().splitlines()[-5:])
            raise QuantizeError(f"llama.cpp failed to quantise {source} to {ftype} (code {code}):\n{tail}")
        publish_mode(tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def tensor_types(path: str | Path) -> dict[str, str]:
    """gguf tensor name -> stored type name, read back from the file."""
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}


def quantize_onnx(source_dir: Path, target_dir: Path, scheme: str) -> Path:
    """Write `target_dir/model.onnx` quantised with `scheme`: w8 / w4 (weight-only MatMulNBits) or int8-dynamic."""
    import onnx

    source, target = source_dir / "model.onnx", target_dir / "model.onnx"
    target_dir.mkdir(parents=True, exist_ok=True)
    if scheme == "int8-dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
    elif scheme in ("w8", "w4"):
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(
            onnx.load(str(source)), bits=8 if scheme == "w8" else 4, block_size=32, is_symmetric=True, accuracy_level=4
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(target), use_external_data_format=False)
    else:
        raise QuantizeError(f"unknown ONNX quantisation scheme {scheme!r}; expected w8, w4 or int8-dynamic")
    return target


def gguf_row_lengths(model) -> dict[str, int]:
    """Row length (input width) of every 2-D weight of a HF model, keyed by HF name."""
    return {name: int(np.prod(p.shape[1:])) for name, p in model.state_dict().items() if p.ndim == 2}
