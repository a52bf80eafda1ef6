"""A size sweep on one teacher: students of several sizes (the teacher pruned to N layers by measurement, and
optionally each kept layer's feed-forward channels cut to F, or its key-value head groups to K), each distilled,
exported and validated in its own run folder that shares the base run's data, tokenizer and tuned teacher; then one
report of every student's and the teacher's artefacts on the accuracy-latency and accuracy-size planes, each
Pareto front drawn, from the same test problems on one machine at one thread count.

    rakd-sweep: run_sweep("configs/smollm.yaml", overrides, sweep_points(["20", "15", "10", "15:1024:kv2"]), out)

The first point exports and validates the teacher's artefacts beside its student (as the config says); the others
validate their own student only, so the teacher is measured once. Every stage is cached by its key, so a killed
sweep resumes in the stage it was in. With the config's `package.budget`, the sweep packages the artefact the budget
picks among every point's and the teacher's, in `<base run>-sweep/package/`, and says why.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

from deploy.record import ValidationReport
from deploy.report import draw_front, pareto_front, validation_rows
from pipeline.cache import outputs_current, run_missing, run_stage, stage_keys
from pipeline.config import load_config
from pipeline.registry import STAGES
from rakd.compare.run import link_base
from rakd.io import atomic_write_json, atomic_write_text
from rakd.schema import ConfigError
from rakd.tables import markdown_table

SWEPT = ("distill", "export", "validate")  # each point's own stages; prep and the teacher are the base run's


@dataclass(frozen=True)
class SweepPoint:
    """One student of the sweep: its name (`l15`, `l15-f1024`) and the config overrides that make it."""

    name: str
    overrides: tuple[str, ...]


def sweep_points(sizes: list[str]) -> list[SweepPoint]:
    """`"15"`: 15 layers; `"15:1024"`: 15 layers of 1024 feed-forward channels each; `"15:kv2"`: 15 layers of 2
    key-value head groups each; `"15:1024:kv2"`: both."""
    points = []
    for size in sizes:
        found = re.fullmatch(r"(\d+)(?::(\d+))?(?::kv(\d+))?", size.strip())
        if not found:
            raise ConfigError(
                f"sweep size {size!r}: expected LAYERS[:FFN_CHANNELS][:kvGROUPS], e.g. 15, 15:1024, 15:kv2"
            )
        layers, ffn, kv = found.groups()
        overrides = ["distill.student.model=null", "distill.student.from_teacher_every_k=null"]
        overrides.append(f"distill.student.prune.layers={layers}")
        overrides.append(f"distill.student.prune.ffn={ffn or 'null'}")
        if kv:  # only when given: a sweep made before the option keeps its keys
            overrides.append(f"distill.student.prune.kv_heads={kv}")
        name = f"l{layers}" + (f"-f{ffn}" if ffn else "") + (f"-kv{kv}" if kv else "")
        points.append(SweepPoint(name, tuple(overrides)))
    if len({p.name for p in points}) != len(points):
        raise ConfigError(f"sweep sizes {sizes}: a size is given twice")
    return points


def point_configs(config: str | Path, overrides: list[str], points: list[SweepPoint]):
    """The base run's config (a student section that loads) and each point's: the base config in a run folder of
    its own with its student's size; but the point whose overrides leave the config as it is (the student
    `make smollm` makes: 15 layers by measurement, on configs/smollm.yaml) is the base run itself, so a sweep after
    that run reuses its student, exports and validation instead of making the same student again. The teacher's
    artefacts are exported and validated by one point: the base run's when it is a point, else the first."""
    try:
        plain = load_config(config, overrides)
    except ConfigError:  # a student section that only loads with a point's size
        plain = None
    own = [load_config(config, [*overrides, *point.overrides]) for point in points]
    same = [plain is not None and cfg.model_dump() == plain.model_dump() for cfg in own]
    base = plain if any(same) else own[0]
    teacher_point = same.index(True) if any(same) else 0
    configs = []
    for index, (point, is_base) in enumerate(zip(points, same)):
        if is_base:
            configs.append(plain)
            continue
        extra = [f"run.name={base.run.name}-{point.name}", *point.overrides]
        if index != teacher_point:
            extra.append("export.teacher=false")
        configs.append(load_config(config, [*overrides, *extra]))
    return base, configs


def run_sweep(config: str | Path, overrides: list[str], points: list[SweepPoint], out: Path, log=print) -> dict:
    """Every point distilled, exported and validated (each stage only where its outputs are not current), then the
    sweep's report in `out`: `sweep.json` (every artefact with its point and whether it is on the front),
    `sweep.md` and `accuracy_vs_latency.png`. Returns the report as `sweep.json` holds it."""
    if not points:
        raise ConfigError("a sweep needs at least one size")
    base, configs = point_configs(config, overrides, points)
    log(f"[sweep] the base run {base.run.dir}: prep and the teacher")
    run_missing(base, ("prep", "teacher"))
    reports = {}
    for point, cfg in zip(points, configs):
        if cfg.run.dir != base.run.dir:
            link_base(base.run.layout, cfg.run.dir, fresh=False)  # the base run's data, tokenizer and teacher
        else:
            log(f"[sweep] {point.name}: the base run's own student")
        keys = stage_keys(cfg)
        for stage in (s for s in STAGES if s.name in SWEPT):
            current = outputs_current(cfg.run.layout, stage, keys[stage.name])
            log(f"[sweep] {point.name}: {stage.name} {'current' if current else 'running'}")
            if not current:
                run_stage(stage, cfg, keys[stage.name])
        reports[point.name] = ValidationReport.from_json(json.loads(cfg.run.layout.report.read_text()))
    report = combine(reports)
    runs = {point.name: cfg.run.dir for point, cfg in zip(points, configs)}
    return write_sweep(report, out, package_sweep(report, base, runs, log))


def package_sweep(report: ValidationReport, base, runs: dict[str, Path], log=print) -> dict | None:
    """With the config's `package.budget`, the package of the artefact it picks among every point's and the
    teacher's (`deploy.package.within_budget` on the sweep's report), in `<base run>-sweep/package/`; None without
    a budget (a sweep has no single best student to ship by accuracy alone)."""
    from deploy.package import build_package, within_budget

    if base.package.budget is None:
        return None
    pick, why = within_budget(report, base.package.budget)
    owner = runs.get(pick.label.partition("/")[0], base.run.dir)  # the teacher's artefacts: the base run's teacher
    out_dir = base.run.dir.with_name(f"{base.run.dir.name}-sweep") / "package"
    build_package(base.package, owner, out_dir, force=True, report=report)
    log(f"[sweep] package: {why} -> {out_dir}")
    return {"path": str(out_dir), "artefact": pick.label, "chosen": why}


def combine(reports: dict[str, ValidationReport]) -> ValidationReport:
    """One report of every point's artefacts, each student's labelled `<point>/<label>`, and the teacher's
    artefacts from the first point that validated them; the first report's data, machine and threads (every point
    validates the same test problems with the same settings)."""
    first = next(iter(reports.values()))
    artefacts, teacher = [], []
    for name, report in reports.items():
        for record in report.artefacts:
            if record.model == "teacher":
                teacher = teacher or [r for r in report.artefacts if r.model == "teacher"]
                continue
            artefacts.append(dataclasses.replace(record, label=f"{name}/{record.label}"))
    same = (first.data.get("sha256"), first.threads)
    differs = [name for name, r in reports.items() if (r.data.get("sha256"), r.threads) != same]
    if differs:
        raise ConfigError(f"sweep points {differs} validated other problems or thread counts than the first")
    return dataclasses.replace(first, artefacts=artefacts + teacher, source="sweep")


def write_sweep(report: ValidationReport, out: Path, package: dict | None = None) -> dict:
    """`sweep.json` (every artefact, its point, and whether it is on the accuracy-latency front and on the
    accuracy-size front; the package the budget picked), `sweep.md` and `accuracy_vs_latency.png` (`plot_sweep`) in
    `out`."""
    out.mkdir(parents=True, exist_ok=True)
    fronts = {cost: pareto_front(report.artefacts, cost) for cost in ("latency_ms_p50", "size_mb")}
    on = {cost: {r.label for r in front} for cost, front in fronts.items()}
    rows = [
        {
            "artefact": r.label,
            "model": r.model,
            "accuracy": r.accuracy,
            "latency_ms_p50": r.latency_ms_p50,
            "size_mb": r.size_mb,
            "passed": r.passed,
            "front": r.label in on["latency_ms_p50"],
            "front_size": r.label in on["size_mb"],
        }
        for r in report.artefacts
    ]
    data = {"n": report.data.get("n"), "threads": report.threads, "machine": report.machine, "artefacts": rows}
    if package is not None:
        data["package"] = {k: package[k] for k in ("artefact", "chosen")}  # not its path: a run folder, not here
    atomic_write_json(out / "sweep.json", data)
    lines = [
        f"# Size sweep: every student and the teacher, {report.data.get('n')} test problems",
        "",
        markdown_table(validation_rows(report.artefacts)),
        "",
        "The Pareto front (no other artefact as accurate and faster, or as accurate and smaller):",
        "",
        f"- accuracy against latency p50: {', '.join(r.label for r in fronts['latency_ms_p50'])}",
        f"- accuracy against size: {', '.join(r.label for r in fronts['size_mb'])}",
        "",
    ]
    if package is not None:
        lines += [f"The package (`package.budget`) ships {package['chosen']}.", ""]
    atomic_write_text(out / "sweep.md", "\n".join(lines))
    plot_sweep(report, fronts, out / "accuracy_vs_latency.png")
    return data


def _point_and_format(label: str) -> tuple[str, str]:
    """`l15/gguf-q8_0` -> (`l15`, `q8_0`); `teacher/onnx-int8` -> (`teacher`, `onnx-int8`)."""
    point, _, artefact = label.partition("/")
    return point, artefact.removeprefix("gguf-")


def plot_sweep(report: ValidationReport, fronts: dict[str, list], path: Path) -> None:
    """Accuracy against latency p50 and against file size, one colour per model (its artefacts joined by a thin
    line, each labelled by its format), the teacher's as squares, an artefact that failed its gates hollow, and each
    plane's Pareto front drawn. The PyTorch references (no latency) are in the table, not here."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shipped = [r for r in report.artefacts if None not in (r.accuracy, r.latency_ms_p50, r.size_mb)]
    models = list(dict.fromkeys(_point_and_format(r.label)[0] for r in shipped))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, cost, xlabel in (
        (axes[0], "latency_ms_p50", f"latency per problem, p50 (ms, {report.threads} thread(s))"),
        (axes[1], "size_mb", "file size (MB)"),
    ):
        for model in models:
            points = sorted(
                (r for r in shipped if _point_and_format(r.label)[0] == model), key=lambda r: getattr(r, cost)
            )
            xs, ys = [getattr(r, cost) for r in points], [100 * r.accuracy for r in points]
            ax.plot(xs, ys, color=colours[model], linewidth=0.8, alpha=0.5)
            for r, x, y in zip(points, xs, ys):
                ax.scatter(
                    x,
                    y,
                    s=40,
                    marker="s" if r.model == "teacher" else "o",
                    color=colours[model],
                    facecolors=colours[model] if r.passed else "none",
                    label=model if r is points[0] else None,
                )
                fmt = _point_and_format(r.label)[1]
                ax.annotate(fmt, (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7)
        draw_front(ax, fronts[cost], cost, "black")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("greedy accuracy (%)")
        ax.grid(alpha=0.3)
        ax.margins(x=0.12, y=0.1)
    axes[0].legend(fontsize=8, loc="lower right")
    axes[0].set_title(
        f"accuracy vs latency, {report.data.get('n')} test problems\nsquares: the teacher's; hollow: failed its gates",
        fontsize=10,
    )
    machine = f"{report.machine.get('cpu', '?')}, {report.machine.get('cores', '?')} cores"
    axes[1].set_title(f"accuracy vs size\n{machine}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
