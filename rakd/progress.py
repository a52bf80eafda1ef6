"""Progress of long work: a live bar on a terminal, throttled plain lines in logs, and listeners (an orchestrator's
progress artifacts) told of every step. Used by the trainers, sampling, evaluation and validation."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

ProgressListener = Callable[[str, int, int, dict], None]  # (name, steps done, total, metrics)
_listeners: list[ProgressListener] = []


@contextlib.contextmanager
def progress_listener(listener: ProgressListener) -> Iterator[None]:
    """Call `listener` on every training step while the block runs (an orchestrator's progress bar)."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def is_terminal(stream) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


class Progress:
    """Progress of a long loop. On a terminal: a live bar with rate and ETA (tqdm). Elsewhere (logs, Prefect task
    logs): one plain line every `every` steps with step/total, the chosen metrics and the ETA. Every update also
    goes to the listeners (the Prefect progress artifacts)."""

    def __init__(self, name: str, total: int, start: int = 0, every: int = 10, stream=None, unit: str = "step"):
        self.name, self.total, self.start, self.every, self.unit = name, total, start, every, unit
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self.bar = None
        if is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=name, unit=unit, file=self.stream, dynamic_ncols=True)

    def update(self, step: int, **metrics: float) -> None:
        """Step `step` (0-based) is done."""
        done = step + 1
        for listener in list(_listeners):
            listener(self.name, done, self.total, metrics)
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items()}, refresh=False)
            self.bar.update(done - self.bar.n)
            if done >= self.total:
                self.bar.close()
            return
        if done % self.every and done != self.total:
            return
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(1, done - self.start) * (self.total - done)
        shown = " ".join(f"{k} {v:.3g}" for k, v in metrics.items())
        print(
            f"[{self.name}] {self.unit} {done}/{self.total} {shown} eta {eta:.0f}s".replace("  ", " "),
            file=self.stream,
            flush=True,
        )
