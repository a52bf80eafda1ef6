"""The run's summary tables: each stage's rows from its summary, and the whole run's sections (stage times,
accuracy with the distillation gain, the warm start's target, the compute ledger, export, validation, package),
built once as rows and rendered as text by the CLI and as markdown by the flow and the benchmarks (rakd.tables).
"""

from __future__ import annotations

from pipeline.registry import BY_NAME, STAGES
from rakd.schema import Summary
from rakd.tables import pct


def accuracy_rows(results: dict[str, Summary]) -> list[dict]:
    """Teacher, warm-started student and distilled student on the test split, and the distillation gain."""
    from rakd.evaluate import eval_row

    rows = []
    if "teacher" in results:
        rows += BY_NAME["teacher"].rows(results["teacher"])
    if "distill" in results:
        warm, final = results["distill"]["eval_warmstart"], results["distill"]["eval"]
        rows += [eval_row("student (warm start)", warm), eval_row(f"student ({final.get('method', '?')})", final)]
        gain = final["greedy_accuracy"] - warm["greedy_accuracy"]
        stderr = (final["greedy_stderr"] ** 2 + warm["greedy_stderr"] ** 2) ** 0.5
        ratio = f" ({gain / stderr:+.1f} s.e.)" if stderr > 0 else ""
        rows.append(
            {"model": "gain (distilled - warm start)", "greedy": f"{100 * gain:+.1f} ± {100 * stderr:.1f}{ratio}"}
        )
    return rows


def rl_pool_rows(results: dict[str, Summary]) -> list[dict]:
    """The warm-started student on its RL pool at RL step 1 (before any update): pass rate and mixed groups."""
    pool = results.get("distill", {}).get("eval", {}).get("rl_pool")
    if not pool:
        return []
    return [
        {
            "pass rate": pct(pool["pass_rate"]),
            "samples": pool["samples"],
            "groups with mixed rewards": pct(pool["informative_groups"], 0),
        }
    ]


def advice_rows(results: dict[str, Summary]) -> list[dict]:
    """The method the rule of rakd.stages.advice recommends from the RL pool's pass rate and the teacher:student ratio,
    the method the run used (empty for a run without an RL pool)."""
    distill = results.get("distill", {}).get("eval", {})
    advice = distill.get("advice")
    if not advice:
        return []
    ratio = advice.get("ratio")
    return [
        {
            "recommended": advice["method"],
            "this run": distill.get("method"),
            "teacher:student": f"{ratio:.1f}x" if ratio else "-",
            "nearest measured regime": advice["nearest"],
            "why": advice["why"],
        }
    ]


def layer_rows(results: dict[str, Summary]) -> list[dict]:
    """A pruned student's candidates (rakd.models.prune): each rule's layers, its KL to the teacher and top-1
    agreement before healing, and which was kept (empty for a student that is not pruned by measurement)."""
    layers = results.get("distill", {}).get("eval", {}).get("layers")
    if not layers:
        return []
    chosen = layers["chosen"]["kept"]
    return [
        {
            "rule": c["rule"],
            "layers": " ".join(map(str, c["kept"])),
            "KL (nats/token)": f"{c['kl']:.3f}",
            "top-1 agreement": pct(c["top1"]),
            "kept": "yes" if c["kept"] == chosen else "",
        }
        for c in layers["candidates"]
    ]


def warmstart_rows(results: dict[str, Summary]) -> list[dict]:
    """Whether the warm start reached its target, where, and what the stage did about it (empty without one)."""
    target = results.get("distill", {}).get("eval_warmstart", {}).get("target")
    if not target:
        return []
    warm = results["distill"]["eval_warmstart"]
    return [
        {
            "target": pct(target["val_accuracy"], 0),
            "reached": target["reached"],
            "at SFT step": target["step"],
            "best check": pct(target["best"]),
            "SFT steps": warm.get("sft_steps"),
            "trace rounds": target.get("rounds", 1),
            "what happened": target["summary"],
        }
    ]


def flops_rows(results: dict[str, Summary]) -> list[dict]:
    """The compute ledger of every stage that keeps one, phase by phase (rakd.flops)."""
    from rakd.flops import format_flops

    rows = []
    for name in ("teacher", "distill"):
        ledger = results.get(name, {}).get("eval", {}).get("flops") or {}
        rows += [
            {"stage": name, "phase": phase, "FLOPs": f"{count:.3e}", "≈": format_flops(count)}
            for phase, count in ledger.items()
        ]
    return rows


def stage_time_rows(results: dict[str, Summary], states: dict[str, str] | None = None) -> list[dict]:
    """Each stage's wall seconds, and, where a stage was killed and resumed, how many runs they add up over."""
    rows, resumed = [], any(summary.get("runs", 1) > 1 for summary in results.values())
    for name, summary in results.items():
        row = {"stage": name, "seconds": f"{summary.get('seconds', 0):.0f}"}
        if resumed:
            row["runs"] = summary.get("runs", 1)
        if states:
            row["state"] = states[name]
        rows.append(row)
    return rows


def summary_sections(results: dict[str, Summary], states: dict[str, str] | None = None) -> list[tuple[str, list[dict]]]:
    """(title, rows) of everything a finished run reports, in order: rendered as text or markdown."""
    sections = [
        (
            "stages" + (" (a cached stage shows the time of the run that made it)" if states else ""),
            stage_time_rows(results, states),
        ),
        ("accuracy (test split)", accuracy_rows(results)),
    ]
    for title, rows in (
        ("the student's layers (candidates measured on the teacher's completions)", layer_rows(results)),
        ("warm start", warmstart_rows(results)),
        ("RL pool (the warm start's own samples at RL step 1)", rl_pool_rows(results)),
        ("method the rule recommends (docs/results.md, which method when)", advice_rows(results)),
        ("compute (FLOPs)", flops_rows(results)),
    ):
        if rows:
            sections.append((title, rows))
    return sections + [(s.name, s.rows(results[s.name])) for s in STAGES if s.own_section and s.name in results]
