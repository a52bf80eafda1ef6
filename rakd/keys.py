"""One marker format for everything made under a key (a stage's outputs, a training stage's work in progress, a
comparison's shared warm start, one job's row): a JSON object `{"key": KEY, ...}` written atomically, with whatever
else the writer keeps beside the key (a run's seconds, a job's row).

`read_marker` is the one place an older format is read: rakd 0.6.0 wrote the key of a work folder and of a shared
warm start as plain text (`.work-key`, `.key`); such a marker still reads as its key, so a run resumed across the
upgrade keeps its checkpoints.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from rakd.io import atomic_write_json, fingerprint
from rakd.schema import key_dump


def write_marker(path: str | Path, key: str, **extra) -> None:
    """Mark what `path` stands for as made under `key` (atomically; `extra` kept beside the key)."""
    atomic_write_json(Path(path), {"key": key, **extra})


def read_marker(path: str | Path) -> dict:
    """The marker at `path` as a dict with at least `key`; {} when there is none or it cannot be read (then what it
    marks counts as not made under any key)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    try:
        marker = json.loads(text)
    except ValueError:
        marker = None
    if isinstance(marker, dict):
        return marker if isinstance(marker.get("key"), str) else {}
    legacy = text.strip()  # rakd 0.6.0: the key alone, as plain text (a hex digest)
    return {"key": legacy} if legacy and all(c in "0123456789abcdef" for c in legacy) else {}


def marked(path: str | Path, key: str) -> bool:
    """Whether the marker at `path` says `key`."""
    return read_marker(path).get("key") == key


WORK_KEY = ".work-key"  # in a training stage's work folder: the key of the config its checkpoints belong to


def work_key(config, resume_free: Iterable[str] = ("fail_after_step", "threads")) -> str:
    """The key of a stage config's work in progress: its whole dump but the keys a resumed run may change (a fault
    injected by a test, the thread count)."""
    dump = key_dump(config)
    return fingerprint({k: v for k, v in dump.items() if k not in set(resume_free)})


def claim_work(work: str | Path, key: str, keep: dict[str, str] | None = None, log=None) -> None:
    """Make `work` (a training stage's folder of checkpoints) the work of the config with `key`: a folder left by
    another config, or by one that wrote no key, is emptied first, but for its sub-folders named in `keep`
    ({name: key}) whose own key matches; so a changed config never resumes another's checkpoints."""
    work = Path(work)
    if _has_key(work, key):
        return
    if work.is_dir():
        kept = {name for name, sub in (keep or {}).items() if _has_key(work / name, sub)}
        removed = [child for child in work.iterdir() if child.name not in kept]
        for child in removed:
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        if removed and log is not None:
            held = f" (kept: {', '.join(sorted(kept))})" if kept else ""
            log(f"{work} held another config's work: set aside{held}")
    mark_work(work, key)


def mark_work(folder: str | Path, key: str) -> None:
    """Mark a finished part of a work folder (a warm start) as made under `key`, for `claim_work`'s `keep`."""
    write_marker(Path(folder) / WORK_KEY, key)


def _has_key(folder: Path, key: str) -> bool:
    return marked(folder / WORK_KEY, key)
