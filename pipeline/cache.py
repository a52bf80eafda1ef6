"""The cache: a stage's key and the marker beside its outputs, the one truth of "this stage is current".

A stage's key (`stage_keys`) is the fingerprint of its config section (less the keys that never change its outputs),
the bytes of the user files it reads, its upstream stage's key, the run folder and rakd's version. `run_stage`
runs a stage and writes its key to `<run>/.stage-keys/<stage>` beside the outputs; `outputs_current` is true when
the stage's done-file is there and the marker holds the key asked about. The CLI, `rakd demo`, the Prefect flow
and `rakd compare` all decide with it; Prefect keeps no results of its own (flows.stages), so there is no second
cache to disagree.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import rakd
from pipeline.config import PipelineConfig
from pipeline.registry import BY_NAME, STAGES, Stage
from rakd.io import fingerprint
from rakd.keys import read_marker, write_marker
from rakd.layout import RunLayout
from rakd.schema import Summary, key_dump


def run_stage(stage: Stage, cfg: PipelineConfig, key: str | None = None) -> Summary:
    """Run one stage of `cfg` in its run folder and mark its outputs with the stage's key (whoever runs it: the
    CLI, `rakd demo`, the flow, `rakd compare`); the summary gets the stage's wall time, summed over every run of
    it under this key (`StageClock`: a stage killed and resumed counts the time its earlier runs spent) and the
    number of those runs. Callers that hold the key pass it: computing it reads every input file (a checkpoint
    given by path) again."""
    key = key if key is not None else stage_keys(cfg)[stage.name]
    marker = cfg.run.layout.stage_key(stage.name)
    with StageClock(marker.with_name(marker.name + ".clock"), key) as clock:
        summary = stage.run(getattr(cfg, stage.section), cfg.run.layout)
    record_key(cfg.run.layout, stage, key, clock.total, clock.runs)
    return {**summary, "seconds": clock.total, "runs": clock.runs}


class StageClock:
    """The wall time a stage has spent under one key, across the runs it took: each run adds its seconds to the
    clock file (a marker: the key, the seconds so far, the runs), rewritten every `every` seconds by a background
    thread while the stage runs, so a run killed without warning loses at most that much of its count. A clock
    under another key (the config changed) starts from zero; a finished stage's clock file is removed (its total
    goes into the stage's key marker)."""

    def __init__(self, path: Path, key: str, every: float = 15.0, now=time.perf_counter):
        self.path, self.key, self.every, self.now = path, key, every, now
        before = read_marker(path)
        self.before = float(before.get("seconds", 0.0)) if before.get("key") == key else 0.0
        self.runs = int(before.get("runs", 0)) + 1 if before.get("key") == key else 1
        self.started = None
        self._stop = threading.Event()
        self._thread = None

    @property
    def total(self) -> float:
        return self.before + (self.now() - self.started if self.started is not None else 0.0)

    def tick(self) -> None:
        write_marker(self.path, self.key, seconds=self.total, runs=self.runs)

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            self.tick()

    def __enter__(self) -> StageClock:
        self.started = self.now()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tick()
        self._thread = threading.Thread(target=self._beat, name="stage-clock", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self._stop.set()
        self._thread.join()
        total = self.total
        self.started, self.before = None, total  # `total` stays what the stage took
        if kind is None:
            self.path.unlink(missing_ok=True)
        else:
            write_marker(self.path, self.key, seconds=total, runs=self.runs)


def stage_keys(cfg: PipelineConfig) -> dict[str, str]:
    """The cache key of every stage: its config, its input files, its upstream key, the run folder, the version."""
    base = {"run_dir": str(cfg.run.dir.resolve()), "version": rakd.__version__}
    keys: dict[str, str] = {}
    for stage in STAGES:
        section = getattr(cfg, stage.section)
        config = {k: v for k, v in key_dump(section).items() if k not in stage.not_in_key}
        keys[stage.name] = fingerprint(
            {
                **base,
                "stage": stage.name,
                "cfg": config,
                **stage.inputs(section),
                "after": keys[stage.after] if stage.after else None,
            }
        )
    return keys


def _marker(layout: RunLayout, stage: Stage) -> dict:
    """What `record_key` wrote for the stage: its key, the wall seconds and the runs that made its outputs."""
    return read_marker(layout.stage_key(stage.name))  # none yet, or unreadable: {} (the outputs are not current)


def outputs_current(layout: RunLayout, stage: Stage, key: str) -> bool:
    """The stage's outputs are on disk and were written under this key (not by another config in the same folder):
    the one thing that decides whether a stage runs, for the CLI, the flow and `rakd compare` alike."""
    return stage.done_file(layout).is_file() and _marker(layout, stage).get("key") == key


def record_key(layout: RunLayout, stage: Stage, key: str, seconds: float | None = None, runs: int = 1) -> None:
    """Mark the stage's outputs as written under `key` in `seconds` over `runs` runs (what `outputs_current` and
    `current_summary` read back)."""
    write_marker(layout.stage_key(stage.name), key, seconds=seconds, runs=runs)


def current_summary(stage: Stage, cfg: PipelineConfig) -> Summary:
    """The summary of a stage whose outputs are current, read back from them, with the seconds and runs it took to
    make them."""
    summary = stage.read(getattr(cfg, stage.section), cfg.run.layout)
    marker = _marker(cfg.run.layout, stage)
    return {**summary, "seconds": marker.get("seconds") or 0.0, "runs": marker.get("runs", 1)}


def run_missing(cfg: PipelineConfig, names: tuple[str, ...]) -> None:
    """Run the named stages, in order, only where their outputs are not current under their keys (what `rakd
    compare` needs of prep and the teacher)."""
    keys = stage_keys(cfg)
    for name in names:
        stage = BY_NAME[name]
        if not outputs_current(cfg.run.layout, stage, keys[name]):
            run_stage(stage, cfg, keys[name])
