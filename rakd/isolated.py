"""Run one function in a fresh Python process, so that a native crash in a runtime (a segfault in llama.cpp, an
abort in ONNX Runtime) is a reported failure of that one piece of work, never a dead caller, and so that the
child's peak memory is its own.

`run_isolated("package.module:function", spec)` starts `python -m rakd.isolated TARGET SPEC RESULT`; the child
calls `function(spec)` and writes its JSON result (or the exception's message) atomically. Lines the child prints
to stderr that start with `progress_prefix` are re-printed by the parent as they come (so an orchestrator's log
sees them); the last few other lines are kept to explain a crash.
"""

from __future__ import annotations

import collections
import importlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from rakd.io import atomic_write_json


class ChildFailed(RuntimeError):
    """The child raised: the message is the child's (a ModelLoadError's own text, else `Type: message`)."""


class ChildCrashed(RuntimeError):
    """The child died without a result (a signal or an exit code), naming it and the child's last output."""


def run_isolated(
    target: str, spec: dict, *, what: str, progress_prefix: str = "[", on_progress: Callable[[str], None] | None = None
) -> dict:
    """Call `target` (`module:function`) on `spec` in a fresh process and return its result dict. The child's
    progress lines go to `on_progress` (default: re-printed to our stderr)."""
    on_progress = on_progress or (lambda line: print(line, file=sys.stderr, flush=True))
    with tempfile.TemporaryDirectory(prefix="rakd-child-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        proc = subprocess.Popen(
            [sys.executable, "-m", "rakd.isolated", target, str(spec_path), str(result_path)],
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        other: collections.deque[str] = collections.deque(maxlen=5)
        for line in proc.stderr:
            if line.startswith(progress_prefix):
                on_progress(line.rstrip())
            elif line.strip():
                other.append(line.rstrip())
        returncode = proc.wait()
        if result_path.is_file():
            payload = json.loads(result_path.read_text())
            if "error" in payload:
                raise ChildFailed(payload["error"])
            return payload["result"]
    how = f"signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
    last = f"; last output: {' | '.join(other)}" if other else ""
    raise ChildCrashed(f"{what} crashed ({how}){last}")


def _call(target: str, spec: dict) -> dict:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(spec)


def _child(target: str, spec_path: str, result_path: str) -> int:
    from rakd.schema import ModelLoadError

    spec = json.loads(Path(spec_path).read_text())
    try:
        payload = {"result": _call(target, spec)}
    except Exception as err:  # noqa: BLE001 - any failure is reported to the parent, which decides what it means
        payload = {"error": str(err) if isinstance(err, ModelLoadError) else f"{type(err).__name__}: {err}"}
    atomic_write_json(result_path, payload)
    return 0


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:4]))
