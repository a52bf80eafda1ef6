"""The validation report: the gates, the fp32 reference, what may ship, and the report's table, markdown and plot."""

from __future__ import annotations

from pathlib import Path

from deploy.config import Gates
from deploy.record import ArtefactRecord, ValidationReport
from rakd.quant import by_label
from rakd.tables import markdown_table, num, pct


def apply_gates(record: ArtefactRecord, gates: Gates, reference_accuracy: float | None) -> list[str]:
    """Names (with numbers) of the gates `record` fails; an unloadable artefact fails `loads`. A measure the record
    does not have (the batched reference has no latency; no reference, no KLD) is not gated, except a token agreement
    that failed to run: that fails the KLD gate."""
    if record.error:
        return ["loads"]
    failed = []
    if record.accuracy < gates.min_accuracy:
        failed.append(f"min_accuracy: {record.accuracy:.3f} < {gates.min_accuracy:g}")
    if gates.max_accuracy_drop is not None and reference_accuracy is not None:
        drop = reference_accuracy - record.accuracy
        if drop > gates.max_accuracy_drop + 1e-12:
            failed.append(f"max_accuracy_drop: {drop:.3f} > {gates.max_accuracy_drop:g}")
    flips = record.flips_to_wrong
    ceilings = (
        ("max_latency_ms_p95", record.latency_ms_p95, ".1f"),
        ("max_size_mb", record.size_mb, ".2f"),
        ("max_kld_mean", record.kld_mean, ".4f"),
        ("max_flips_to_wrong", flips / record.n if flips is not None else None, ".3f"),
    )
    for name, value, fmt in ceilings:
        limit = getattr(gates, name)
        if limit is not None and value is not None and value > limit + 1e-12:
            failed.append(f"{name}: {value:{fmt}} > {limit:g}")
    if gates.max_kld_mean is not None and record.agreement_error:
        failed.append(f"max_kld_mean: not measured ({record.agreement_error})")
    return failed


def reference_of(records: list[ArtefactRecord]) -> ArtefactRecord | None:
    """The fp32 reference: the PyTorch model, else an fp32 export."""
    ok = [r for r in records if not r.error]
    for test in (lambda r: r.reference, lambda r: getattr(by_label(r.label), "bits", 0) == 32):
        found = [r for r in ok if test(r)]
        if found:
            return found[0]
    return None


def _result(record: ArtefactRecord) -> str:
    if not record.passed:
        failed = "FAIL: " + "; ".join(record.failed_gates)
        return failed + (f" ({record.error})" if record.error else "")
    if record.reference:
        return "reference"
    return "pass" if record.accuracy_gated else "pass (accuracy not gated: min_accuracy 0, no reference)"


def _flips(record: ArtefactRecord) -> str:
    wrong, right = record.flips_to_wrong, record.flips_to_right
    return "-" if wrong is None else f"-{wrong} / +{right}"


def pareto_front(records: list[ArtefactRecord], cost: str = "latency_ms_p50") -> list[ArtefactRecord]:
    """The artefacts no other beats on both accuracy and `cost` (latency p50, or `size_mb`: at least as good on
    both, better on one), in order of cost; only those with both measured (a PyTorch reference has no latency, and
    is no file to ship)."""
    from rakd.compare.results import pareto_front as front_of

    points = [r for r in records if None not in (r.accuracy, r.latency_ms_p50, getattr(r, cost))]
    front = set(front_of([(getattr(r, cost), r.accuracy) for r in points]))
    return sorted((r for r in points if (getattr(r, cost), r.accuracy) in front), key=lambda r: getattr(r, cost))


def validation_rows(records: list[ArtefactRecord]) -> list[dict]:
    """Validation records (a report's, or a manifest's summaries read back) as table rows, one per artefact; `front`
    says which are on the accuracy-latency Pareto front of them all."""
    front = {r.label for r in pareto_front(records)}
    return [
        {
            "artefact": r.label,
            "format": r.format,
            "size MB": num(r.size_mb, ".2f"),
            "accuracy": pct(r.accuracy),
            "flexible": pct(r.accuracy_flexible),
            "drop": pct(r.accuracy_drop),
            "no answer": pct(r.no_answer_rate),
            "TTFT p50 ms": num(r.ttft_ms_p50, ".2f"),
            "decode tok/s p50": num(r.decode_tok_s_p50, ".0f"),
            "latency p50 ms": num(r.latency_ms_p50, ".1f"),
            "latency p95 ms": num(r.latency_ms_p95, ".1f"),
            "peak RSS MB": num(r.peak_rss_mb, ".0f"),
            "KLD mean": num(r.kld_mean, ".4f"),
            "KLD p99": num(r.kld_p99, ".3f"),
            "same top-1": pct(r.top1_agreement),
            "flips -/+": _flips(r),
            "mean tokens": num(r.mean_new_tokens, ".1f"),
            "truncated": pct(r.truncation_rate),
            "loops": pct(r.loop_rate),
            "front": "yes" if r.label in front else ("-" if r.latency_ms_p50 is None else ""),
            "result": _result(r),
        }
        for r in records
    ]


def references(report: ValidationReport) -> str:
    """The fp32 reference of each model in the report (the student's, and the teacher's where it was validated)."""
    return ", ".join(
        label if model == "student" else f"{label} (the teacher's)"
        for model, label in report.references.items()
        if label
    )


def against_teacher_rows(report: ValidationReport) -> list[dict]:
    """The student against the teacher at each artefact type both were validated as: accuracy, answer length, decode
    speed and its ratio, latency p50 and its ratio, size; empty when no teacher artefact was validated."""
    ok = [r for r in report.artefacts if not r.error]
    teacher = {r.label.removeprefix("teacher/"): r for r in ok if r.model == "teacher"}
    rows = []
    for student in (r for r in ok if r.model == "student"):
        other = teacher.get(student.label)
        if other is None:
            continue
        timed = student.latency_ms_p50 and other.latency_ms_p50
        decoded = student.decode_tok_s_p50 and other.decode_tok_s_p50
        rows.append(
            {
                "artefact": student.label,
                "student accuracy": pct(student.accuracy),
                "teacher accuracy": pct(other.accuracy),
                "student tokens": num(student.mean_new_tokens, ".1f"),
                "teacher tokens": num(other.mean_new_tokens, ".1f"),
                "student decode tok/s": num(student.decode_tok_s_p50, ".0f"),
                "teacher decode tok/s": num(other.decode_tok_s_p50, ".0f"),
                "decode speed-up": f"{student.decode_tok_s_p50 / other.decode_tok_s_p50:.2f}x" if decoded else "-",
                "latency p50 ms (student / teacher)": (
                    f"{student.latency_ms_p50:.0f} / {other.latency_ms_p50:.0f}" if timed else "-"
                ),
                "latency speed-up": f"{other.latency_ms_p50 / student.latency_ms_p50:.2f}x" if timed else "-",
                "size MB (student / teacher)": f"{student.size_mb:.1f} / {other.size_mb:.1f}",
            }
        )
    return rows


def format_report_md(report: ValidationReport) -> str:
    machine = report.machine
    gates = ", ".join(f"{k}={v}" for k, v in report.gates.items() if v is not None)
    lines = [
        "# Validation report",
        "",
        f"- source: `{report.source}`",
        f"- data: `{report.data['path']}` ({report.data['n']} problems, greedy, "
        f"max {report.max_new_tokens} new tokens)",
        f"- machine: {machine['cpu']} ({machine['cores']} cores), {report.threads} runtime thread(s)",
        f"- llama.cpp: {machine['llama_cpp']['system_info']} (extra buffers: {machine['llama_cpp']['reason']})",
        f"- reference: {references(report) or 'none (drop gate not applied)'}",
        f"- gates: {gates}",
        "",
        markdown_table(validation_rows(report.artefacts)),
        "",
        "Accuracy counts the answer the output marks (`####`, `A:`, `answer is`, `\\boxed{}`); flexible also counts "
        "the last number of an output that marks none (lm-eval's GSM8K flexible-extract), and is never gated. "
        "Peak RSS is the whole runtime process (Python, the runtime library and the model). The reference decodes "
        "in batches and has no latency. Against the reference, over its own greedy completions of these problems: "
        "KLD is the token KL divergence KL(reference ‖ artefact) in nats (mean and 99th percentile over every "
        "completion token), same top-1 the share of those positions where both pick the same next token, flips -/+ "
        "the problems the artefact gets wrong that the reference solves / right that it misses. Truncated: stopped "
        "by the token limit; loops: truncated while repeating one n-gram to the end.",
        "",
    ]
    versus = against_teacher_rows(report)
    if versus:
        lines += [
            "## The student against shipping the teacher",
            "",
            "The teacher's artefacts (`teacher/...`) ran on the same problems with the same measures, each against "
            "the teacher's own fp32 reference; they are never shipped. Decode speed-up: the student's decode tokens "
            "per second over the teacher's (per token, whatever the answers' lengths); latency speed-up: the "
            "teacher's latency per problem (p50) over the student's, which also counts how long each model's "
            "answers run (tokens: the mean per problem).",
            "",
            markdown_table(versus),
            "",
        ]
    return "\n".join(lines)


def draw_front(ax, front: list[ArtefactRecord], cost: str, color: str) -> bool:
    """The Pareto `front` (as `pareto_front` orders it by `cost`) as a dotted staircase on `ax`, labelled; whether
    there was one to draw (two points or more)."""
    if len(front) < 2:
        return False
    xs, ys = [getattr(r, cost) for r in front], [100 * r.accuracy for r in front]
    ax.step(xs, ys, where="post", color=color, linestyle=":", linewidth=1, label="Pareto front")
    return True


def plot_accuracy_vs_latency(report: ValidationReport, path: Path) -> None:
    """Accuracy and mean token KLD against latency, one point per artefact (green: passed its gates); the batched
    reference, which has no latency, as a dashed line of its accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, kld) = plt.subplots(1, 2, figsize=(12, 4.8))
    placed: dict = {}  # per plot and model: how many labels it has placed
    measured = [r for r in report.artefacts if r.accuracy is not None]
    for r in sorted(measured, key=lambda r: r.latency_ms_p50 or 0):
        if r.latency_ms_p50 is None:
            acc.axhline(100 * r.accuracy, color="gray", linestyle="--", linewidth=1)
            acc.annotate(
                f"{r.label} (reference)",
                (0, 100 * r.accuracy),
                xycoords=("axes fraction", "data"),
                xytext=(4, 3),
                textcoords="offset points",
                fontsize=8,
                color="gray",
            )
            continue
        color = "tab:green" if r.passed else "tab:red"
        marker = "s" if r.model == "teacher" else "o"  # the teacher's artefacts: squares
        for ax, value in ((acc, 100 * r.accuracy), (kld, r.kld_mean)):
            if value is None:
                continue
            ax.scatter(r.latency_ms_p50, value, color=color, marker=marker)
            # a model's artefacts, in order of latency, take turns above, below and higher above (the teacher's
            # start below): the labels of neighbouring points do not collide
            turn = placed.setdefault((ax, marker), 1 if marker == "s" else 0)
            placed[(ax, marker)] += 1
            ax.annotate(
                f"{r.label} ({r.size_mb:.0f} MB)",
                (r.latency_ms_p50, value),
                textcoords="offset points",
                xytext=(5, (4, -11, 15)[turn % 3]),
                fontsize=8,
            )
    if draw_front(acc, pareto_front(measured), "latency_ms_p50", "tab:blue"):
        acc.legend(fontsize=8, loc="lower right")
    for ax in (acc, kld):
        ax.set_xlabel(f"latency per problem, p50 (ms, {report.threads} thread(s))")
        ax.grid(alpha=0.3)
        ax.margins(x=0.25, y=0.12)
    acc.set_ylabel("greedy accuracy (%)")
    teacher = any(r.model == "teacher" for r in report.artefacts)
    shapes = "; squares: the teacher's artefacts" if teacher else ""
    acc.set_title(f"accuracy vs latency, {report.data['n']} problems\ngreen: passed its gates{shapes}", fontsize=10)
    kld.set_yscale("symlog", linthresh=1e-5)  # near-exact exports (~1e-6) and 4-bit ones (~1e-2) on one axis
    kld.set_ylabel("mean token KL divergence from the reference (nats)")
    kld.set_title(f"KL divergence vs latency\neach model against its own reference: {references(report)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
