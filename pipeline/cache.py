"""The cache: a stage's key and the marker beside its outputs, the one truth of "this stage is current".

A stage's key (`stage_keys`) is the fingerprint of its config section (less the keys that never change its outputs),
the bytes of the user files it reads, its upstream stage's key, the run folder and rakd's version. `run_stage`
runs a stage and writes its key to `<run>/.stage-keys/<stage>` beside the outputs; `outputs_current` is true when
the stage's done-file is there and the marker holds the key asked about. The CLI, `rakd demo`, the Prefect flow
and `rakd compare` all decide with it; Prefect keeps no results of its own (flows.stages), so there is no second
cache to disagree.
"""

from __future__ import annotations

import time

import rakd
from pipeline.config import PipelineConfig
from pipeline.registry import BY_NAME, STAGES, Stage
from rakd.io import fingerprint
from rakd.keys import read_marker, write_marker
from rakd.layout import RunLayout
from rakd.schema import Summary


def run_stage(stage: Stage, cfg: PipelineConfig, key: str | None = None) -> Summary:
    """Run one stage of `cfg` in its run folder and mark its outputs with the stage's key (whoever runs it: the
    CLI, `rakd demo`, the flow, `rakd compare`); the summary gets the stage's wall time. Callers that hold the key
    pass it: computing it reads every input file (a checkpoint given by path) again."""
    key = key if key is not None else stage_keys(cfg)[stage.name]
    started = time.perf_counter()
    summary = stage.run(getattr(cfg, stage.section), cfg.run.layout)
    seconds = time.perf_counter() - started
    record_key(cfg.run.layout, stage, key, seconds)
    return {**summary, "seconds": seconds}


def stage_keys(cfg: PipelineConfig) -> dict[str, str]:
    """The cache key of every stage: its config, its input files, its upstream key, the run folder, the version."""
    base = {"run_dir": str(cfg.run.dir.resolve()), "version": rakd.__version__}
    keys: dict[str, str] = {}
    for stage in STAGES:
        section = getattr(cfg, stage.section)
        config = {k: v for k, v in section.model_dump(mode="json").items() if k not in stage.not_in_key}
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
    """What `record_key` wrote for the stage: its key and the wall seconds of the run that made its outputs."""
    return read_marker(layout.stage_key(stage.name))  # none yet, or unreadable: {} (the outputs are not current)


def outputs_current(layout: RunLayout, stage: Stage, key: str) -> bool:
    """The stage's outputs are on disk and were written under this key (not by another config in the same folder):
    the one thing that decides whether a stage runs, for the CLI, the flow and `rakd compare` alike."""
    return stage.done_file(layout).is_file() and _marker(layout, stage).get("key") == key


def record_key(layout: RunLayout, stage: Stage, key: str, seconds: float | None = None) -> None:
    """Mark the stage's outputs as written under `key` by a run of `seconds` (what `outputs_current` and
    `current_summary` read back)."""
    write_marker(layout.stage_key(stage.name), key, seconds=seconds)


def current_summary(stage: Stage, cfg: PipelineConfig) -> Summary:
    """The summary of a stage whose outputs are current, read back from them, with the seconds of the run that
    made them."""
    summary = stage.read(getattr(cfg, stage.section), cfg.run.layout)
    return {**summary, "seconds": _marker(cfg.run.layout, stage).get("seconds") or 0.0}


def run_missing(cfg: PipelineConfig, names: tuple[str, ...]) -> None:
    """Run the named stages, in order, only where their outputs are not current under their keys (what `rakd
    compare` needs of prep and the teacher)."""
    keys = stage_keys(cfg)
    for name in names:
        stage = BY_NAME[name]
        if not outputs_current(cfg.run.layout, stage, keys[name]):
            run_stage(stage, cfg, keys[name])
