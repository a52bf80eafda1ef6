"""Reading a GGUF file's metadata without torch or transformers (edge validation runs on this alone)."""

from __future__ import annotations

from pathlib import Path

from rakd.schema import ModelLoadError

_GGUF_MAGIC = b"GGUF"


def gguf_metadata(path: Path) -> dict:
    """Scalar metadata of a GGUF file (no tensors), after checking it is one."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such GGUF file")
    with open(path, "rb") as handle:
        if handle.read(4) != _GGUF_MAGIC:
            raise ModelLoadError(f"{path}: not a GGUF file (bad magic bytes)")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - truncated or corrupt files raise anything
        raise ModelLoadError(f"{path}: corrupt or truncated GGUF file: {err}") from err
    meta = {}
    for name, field in reader.fields.items():
        if len(field.types) == 1 and len(field.data) == 1:
            value = field.parts[field.data[0]]
            meta[name] = bytes(value).decode("utf-8", "replace") if value.dtype == "uint8" else value.tolist()[0]
    return meta
