"""`RunLayout`: every path of a run folder, named once.

<run>/config.yaml                  the config the run was made with
<run>/data/{train,val,test}.jsonl  the splits; data/card.json last
<run>/tokenizer/                   when the models are trained from scratch
<run>/teacher/                     HF folder, eval.json last (teacher.work/ while training)
<run>/student/                     HF folder, eval.json last (student.work/ while training)
<run>/student.work/warmstart/      the finished warm start (warmstart.work/, base.work/: its SFTs while they run;
                                   traces.pending.jsonl + traces.rounds.json: its traces while they are sampled)
<run>/compare[/<regime>]/          a comparison: warmstart/ (shared by its jobs), jobs/, results/
<run>/export/                      ONNX folders and GGUF files, parity.json last
<run>/validate/                    report.json last, report.md, accuracy_vs_latency.png
<run>/package/                     model file(s), tokenizer/, README.md, manifest.json last
<run>/.stage-keys/<stage>          the cache key the outputs on disk belong to
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The files a stage writes inside a model folder (teacher/, student/, a warm start) or a training work folder
EVAL = "eval.json"  # the model's evaluation (rakd.evaluate.EvalResult's keys and the stage's own), written last
EVAL_WARMSTART = "eval_warmstart.json"  # the warm start's, in its own folder and in student/
EVAL_BEFORE = "eval_before.json"  # a tuned teacher's evaluation before tuning, while it trains
SECONDS = "seconds.json"  # wall seconds, apart from eval.json's deterministic numbers
METRICS = "metrics.jsonl"  # one row per training step
METRICS_WARMSTART = "metrics_warmstart.jsonl"  # the warm start's SFT rows, in the student folder
METRICS_BASE = "metrics_base.jsonl"  # `warmstart.base`: the SFT on bare answers
TRACES = "traces.jsonl"  # the teacher's verified traces the warm start trained on
LAYERS = "layers.json"  # a pruned student's layers: the rule chosen and every candidate measured (rakd.models.prune)


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def split(self, name: str) -> Path:
        return self.data / f"{name}.jsonl"

    @property
    def card(self) -> Path:
        return self.data / "card.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def teacher_work(self) -> Path:
        return self.root / "teacher.work"

    @property
    def student(self) -> Path:
        return self.root / "student"

    @property
    def student_work(self) -> Path:
        return self.root / "student.work"

    @property
    def warmstart(self) -> Path:
        """The finished warm start: an HF folder, eval_warmstart.json and traces.jsonl last."""
        return self.student_work / "warmstart"

    @property
    def warmstart_work(self) -> Path:
        """The warm start's SFT on the teacher's traces while it runs (metrics.jsonl, checkpoints/)."""
        return self.student_work / "warmstart.work"

    @property
    def base_work(self) -> Path:
        """`warmstart.base`: the SFT on bare answers while it runs."""
        return self.student_work / "base.work"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def parity(self) -> Path:
        return self.export / "parity.json"

    @property
    def validate(self) -> Path:
        return self.root / "validate"

    @property
    def report(self) -> Path:
        return self.validate / "report.json"

    @property
    def package(self) -> Path:
        return self.root / "package"

    @property
    def manifest(self) -> Path:
        return self.package / "manifest.json"

    @property
    def compare(self) -> Path:
        """`rakd compare`: the shared warm start, the job folders and the results."""
        return self.root / "compare"

    def comparison(self, regime: str | None = None) -> Path:
        """One comparison's folder: `compare/`, or `compare/<regime>/` for a named regime of the same run."""
        return self.compare / regime if regime else self.compare

    def comparison_warmstart(self, regime: str | None = None) -> Path:
        """The one warm start every job of a comparison starts from (`comparison_warmstart_work` while it is made)."""
        return self.comparison(regime) / "warmstart"

    def comparison_warmstart_work(self, regime: str | None = None) -> Path:
        return self.comparison(regime) / "warmstart.work"

    def stage_key(self, stage: str) -> Path:
        return self.root / ".stage-keys" / stage

    def is_run(self) -> bool:
        """A pipeline run folder: it holds a student and/or exports."""
        return self.export.is_dir() or self.student.is_dir()
