"""What can be validated: a `.gguf` file, an ONNX folder, a Hugging Face folder, a package, or a run folder.

A run folder's exported artefacts, their labels and formats are the ones export wrote into `export/parity.json`;
nothing re-derives them from file names. A package's are the ones its verified manifest lists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from deploy.manifest import PackageError, verify_package
from rakd.layout import RunLayout
from rakd.models.gguf_file import gguf_metadata
from rakd.quant import Format, of_file_type
from rakd.schema import ModelLoadError


@dataclass(frozen=True)
class Artefact:
    label: str
    format: Format
    path: Path
    reference: bool = False  # the fp32 PyTorch model its `model`'s other artefacts are compared with
    model: str = "student"  # whose artefact: the student's, or the teacher's (validated beside it, never shipped)


def discover(path: str | Path) -> list[Artefact]:
    """The artefacts behind `path` (a model file/folder, a package, or a run directory)."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path}: not a model: expected a .gguf file or a model folder")
        return [Artefact(gguf_label(path), "gguf", path)]
    if (path / "manifest.json").is_file():
        return package_artefacts(path)
    if RunLayout(path).is_run():
        return run_artefacts(RunLayout(path))
    fmt = folder_format(path)
    if fmt is None:
        raise ModelLoadError(f"{path}: not a model: no .onnx file, no config.json, no manifest.json, no export/")
    return [Artefact(f"{fmt}-{path.name}" if fmt == "pytorch" else path.name, fmt, path, reference=fmt == "pytorch")]


def gguf_label(path: Path) -> str:
    """A GGUF file's label from its own file type (`general.file_type`, rakd.quant), not from its name; a file
    type outside the table keeps the file's stem."""
    kind = of_file_type(file_type) if (file_type := gguf_metadata(path).get("general.file_type")) is not None else None
    return kind.label if kind is not None else f"gguf-{path.stem.removeprefix('model-')}"


def folder_format(path: Path) -> Format | None:
    if any(path.glob("*.onnx")):
        return "onnx"
    if (path / "config.json").is_file():
        return "pytorch"
    return None


def run_artefacts(layout: RunLayout) -> list[Artefact]:
    """The run's PyTorch student (the fp32 reference) and every artefact export recorded in parity.json; where export
    also wrote the teacher's artefacts, the PyTorch teacher (their reference) and those too."""
    found = []
    if (layout.student / "config.json").is_file():
        found.append(Artefact("pytorch", "pytorch", layout.student, reference=True))
    if layout.export.is_dir():
        if not layout.parity.is_file():
            raise ModelLoadError(f"{layout.parity}: missing; export/ is incomplete (run `rakd export` again)")
        records = json.loads(layout.parity.read_text())["artefacts"]
        if any(r.get("model") == "teacher" for r in records) and (layout.teacher / "config.json").is_file():
            found.append(Artefact("teacher/pytorch", "pytorch", layout.teacher, reference=True, model="teacher"))
        for record in records:
            model = record.get("model", "student")
            found.append(Artefact(record["artefact"], record["format"], layout.export / record["path"], model=model))
    if not found:
        raise ModelLoadError(f"{layout.root}: run directory without student/ or exported artefacts in export/")
    return found


def package_artefacts(folder: str | Path) -> list[Artefact]:
    """A verified package's models, as artefacts to validate."""
    folder = Path(folder)
    manifest = verify_package(folder)
    return [Artefact(m.label, m.format, folder / m.path) for m in manifest.models]


def package_artefact(folder: str | Path, label: str | None = None) -> Artefact:
    """One packaged model (the first, or the one named `label`) of a verified package."""
    artefacts = package_artefacts(folder)
    chosen = next((a for a in artefacts if label in (None, a.label)), None)
    if chosen is None:
        raise PackageError(f"{folder}: no packaged model {label!r} (has {[a.label for a in artefacts]})")
    return chosen
