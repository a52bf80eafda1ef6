"""The validation report: the gates, the fp32 reference, what may ship, and the report's table, markdown and plot."""

from __future__ import annotations

from pathlib import Path

from deploy.config import Gates
from rakd.quant import by_label
from rakd.tables import markdown_table, num, pct

REPORT_KEYS = (
    "path",
    "format",
    "accuracy",
    "accuracy_flexible",
    "no_answer_rate",
    "ttft_ms_p50",
    "ttft_ms_p95",
    "decode_tok_s_p50",
    "latency_ms_p50",
    "latency_ms_p95",
    "peak_rss_mb",
    "size_mb",
    "passed",
    "failed_gates",
)


def apply_gates(record: dict, gates: Gates, reference_accuracy: float | None) -> list[str]:
    """Names (with numbers) of the gates `record` fails; an unloadable artefact fails `loads`."""
    if record.get("error"):
        return ["loads"]
    failed = []
    if record["accuracy"] < gates.min_accuracy:
        failed.append(f"min_accuracy: {record['accuracy']:.3f} < {gates.min_accuracy:g}")
    if gates.max_accuracy_drop is not None and reference_accuracy is not None:
        drop = reference_accuracy - record["accuracy"]
        if drop > gates.max_accuracy_drop + 1e-12:
            failed.append(f"max_accuracy_drop: {drop:.3f} > {gates.max_accuracy_drop:g}")
    if gates.max_latency_ms_p95 is not None and record["latency_ms_p95"] > gates.max_latency_ms_p95:
        failed.append(f"max_latency_ms_p95: {record['latency_ms_p95']:.1f} > {gates.max_latency_ms_p95:g}")
    if gates.max_size_mb is not None and record["size_mb"] > gates.max_size_mb:
        failed.append(f"max_size_mb: {record['size_mb']:.2f} > {gates.max_size_mb:g}")
    return failed


def reference_of(records: list[dict]) -> dict | None:
    """The fp32 reference: the PyTorch model, else an fp32 export."""
    ok = [r for r in records if not r.get("error")]
    for test in (lambda r: r["reference"], lambda r: getattr(by_label(r["label"]), "bits", 0) == 32):
        found = [r for r in ok if test(r)]
        if found:
            return found[0]
    return None


def shippable(report: dict) -> list[dict]:
    """Artefacts of a report that passed their gates and could be shipped (not the PyTorch reference)."""
    return [r for r in report["artefacts"] if r["passed"] and not r["reference"]]


def _result(record: dict) -> str:
    if not record["passed"]:
        failed = "FAIL: " + "; ".join(record["failed_gates"])
        return failed + (f" ({record['error']})" if record.get("error") else "")
    if record.get("reference"):
        return "reference"
    return "pass" if record.get("accuracy_gated", True) else "pass (accuracy not gated: min_accuracy 0, no reference)"


def validation_rows(records: list[dict]) -> list[dict]:
    """Validation records (a report's, or a manifest's summaries) as table rows, one per artefact."""
    return [
        {
            "artefact": r["label"],
            "format": r["format"],
            "size MB": num(r["size_mb"], ".2f"),
            "accuracy": pct(r["accuracy"]),
            "flexible": pct(r.get("accuracy_flexible")),
            "drop": pct(r.get("accuracy_drop")),
            "no answer": pct(r["no_answer_rate"]),
            "TTFT p50 ms": num(r["ttft_ms_p50"], ".2f"),
            "decode tok/s p50": num(r["decode_tok_s_p50"], ".0f"),
            "latency p50 ms": num(r["latency_ms_p50"], ".1f"),
            "latency p95 ms": num(r["latency_ms_p95"], ".1f"),
            "peak RSS MB": num(r["peak_rss_mb"], ".0f"),
            "result": _result(r),
        }
        for r in records
    ]


def format_report_md(report: dict) -> str:
    machine = report["machine"]
    gates = ", ".join(f"{k}={v}" for k, v in report["gates"].items() if v is not None)
    lines = [
        "# Validation report",
        "",
        f"- source: `{report['source']}`",
        f"- data: `{report['data']['path']}` ({report['data']['n']} problems, greedy, "
        f"max {report['max_new_tokens']} new tokens)",
        f"- machine: {machine['cpu']} ({machine['cores']} cores), {report['threads']} runtime thread(s)",
        f"- llama.cpp: {machine['llama_cpp']['system_info']} (extra buffers: {machine['llama_cpp']['reason']})",
        f"- reference: {report['reference'] or 'none (drop gate not applied)'}",
        f"- gates: {gates}",
        "",
        markdown_table(validation_rows(report["artefacts"])),
        "",
        "Accuracy counts the answer the output marks (`####`, `A:`, `answer is`, `\\boxed{}`); flexible also counts "
        "the last number of an output that marks none (lm-eval's GSM8K flexible-extract), and is never gated. "
        "Peak RSS is the whole runtime process (Python, the runtime library and the model).",
        "",
    ]
    return "\n".join(lines)


def plot_accuracy_vs_latency(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in report["artefacts"]:
        if r["accuracy"] is None:
            continue
        ax.scatter(r["latency_ms_p50"], 100 * r["accuracy"], color="tab:green" if r["passed"] else "tab:red")
        ax.annotate(
            f"{r['label']} ({r['size_mb']:.2f} MB)",
            (r["latency_ms_p50"], 100 * r["accuracy"]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
    ax.set_xlabel(f"latency per problem, p50 (ms, {report['threads']} thread(s))")
    ax.set_ylabel("greedy accuracy (%)")
    ax.set_title(f"accuracy vs latency on {report['data']['n']} problems (green: passed gates)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
