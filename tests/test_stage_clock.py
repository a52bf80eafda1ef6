"""A stage's wall time across the runs it took: a stage killed and resumed reports what all its runs spent."""

import pytest

from pipeline.cache import StageClock, current_summary, run_stage
from pipeline.config import load_config
from pipeline.registry import BY_NAME
from rakd.keys import read_marker


class FakeTime:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_the_clock_adds_up_a_failed_run_a_killed_run_and_the_run_that_finished(tmp_path):
    path, now = tmp_path / "prep.clock", FakeTime()
    with pytest.raises(RuntimeError):
        with StageClock(path, "k", now=now):
            now.t += 5
            raise RuntimeError("the stage failed")
    assert read_marker(path) == {"key": "k", "seconds": 5.0, "runs": 1}
    killed = StageClock(path, "k", now=now).__enter__()  # killed without warning: only its beats were written
    now.t += 4
    killed.tick()
    killed._stop.set()
    now.t += 1  # after its last beat: lost
    assert read_marker(path) == {"key": "k", "seconds": 9.0, "runs": 2}
    with StageClock(path, "k", now=now) as clock:
        now.t += 3
    assert (clock.total, clock.runs) == (12.0, 3)
    assert not path.exists()  # finished: its total goes to the stage's marker
    with StageClock(path, "k", now=now) as fresh:
        now.t += 2
    assert (fresh.total, fresh.runs) == (2.0, 1)
    with pytest.raises(RuntimeError):
        with StageClock(path, "k", now=now):
            now.t += 7
            raise RuntimeError
    with StageClock(path, "another key", now=now) as other:  # the config changed: another stage's work
        now.t += 1
    assert (other.total, other.runs) == (1.0, 1)


def test_the_clock_beats_while_the_stage_runs(tmp_path):
    import time

    path = tmp_path / "teacher.clock"
    with StageClock(path, "k", every=0.01):
        deadline = time.monotonic() + 10
        while read_marker(path).get("seconds", 0.0) == 0.0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert read_marker(path)["seconds"] > 0.0  # written again while the stage still runs


def test_a_resumed_stage_reports_the_seconds_and_runs_of_all_its_runs(tmp_path, monkeypatch):
    cfg = load_config("configs/smoke.yaml", [f"run.root={tmp_path}"])
    stage, real = BY_NAME["prep"], BY_NAME["prep"].implementation.run_stage
    calls = []

    def flaky(section, layout):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("killed")
        return real(section, layout)

    monkeypatch.setattr(stage.implementation, "run_stage", flaky)
    with pytest.raises(RuntimeError):
        run_stage(stage, cfg)
    failed = read_marker(cfg.run.layout.stage_key("prep").with_name("prep.clock"))
    assert failed["runs"] == 1
    summary = run_stage(stage, cfg)
    assert summary["runs"] == 2 and summary["seconds"] >= failed["seconds"]
    assert current_summary(stage, cfg)["runs"] == 2
    assert current_summary(stage, cfg)["seconds"] == summary["seconds"]
