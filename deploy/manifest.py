"""A package's manifest: its schema, the sha256 and size of every file, and verification.

Nothing here imports the rest of `deploy`, so validation, packaging and the runtimes can all use it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rakd.io import sha256_file
from rakd.schema import StageError

SCHEMA_VERSION = 1


class PackageError(StageError):
    """A package that does not verify, or that cannot be built: names the file and the mismatch."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class PackagedModel(_Strict):
    label: str
    format: Literal["gguf", "onnx"]
    path: str  # a file (.gguf) or folder (ONNX), relative to the package
    model: Literal["student", "teacher"] = "student"  # the teacher's own artefact where a budget picked it
    metrics: dict


class Manifest(_Strict):
    schema_version: Literal[1]
    name: str
    version: str
    created_at: str
    source_run: str
    configs: dict
    teacher: dict | None
    student: dict | None
    models: list[PackagedModel] = Field(min_length=1)
    chosen: str | None = None  # why the budget (package.budget) picked the model; None: the most accurate student's
    validation: dict
    files: dict[str, FileEntry]


def file_entries(folder: Path) -> dict[str, dict]:
    return {
        path.relative_to(folder).as_posix(): {"sha256": sha256_file(path), "size": path.stat().st_size}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != "manifest.json"
    }


# ---------------------------------------------------------------- verifying and loading


def verify_package(folder: str | Path) -> Manifest:
    """Check the manifest schema, every listed file's size and sha256, and that nothing unlisted is present."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise PackageError(f"{manifest_path}: missing (not a rakd package)")
    try:
        manifest = Manifest.model_validate(json.loads(manifest_path.read_text()))
    except (json.JSONDecodeError, ValidationError) as err:
        raise PackageError(f"{manifest_path}: invalid manifest: {err}") from None
    for name, entry in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise PackageError(f"{path}: listed in the manifest but missing")
        if path.stat().st_size != entry.size:
            raise PackageError(f"{path}: size {path.stat().st_size} != {entry.size} in the manifest")
        if sha256_file(path) != entry.sha256:
            raise PackageError(f"{path}: sha256 differs from the manifest (file changed)")
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"}
    unlisted = sorted(present - set(manifest.files))
    if unlisted:
        raise PackageError(f"{folder / unlisted[0]}: not listed in the manifest")
    for model in manifest.models:
        if not (folder / model.path).exists():
            raise PackageError(f"{folder / model.path}: packaged model {model.label} is missing")
    return manifest
