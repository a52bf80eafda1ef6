"""The package an app team ships: the validated model file(s), tokenizer, manifest and model card.

`build_package` picks, among the artefacts that passed validation, the most
accurate one (the latency and size gates already ruled out the rest), with a
configurable preference for GGUF or ONNX. The folder is built beside its
target and renamed into place; `manifest.json` records sha256 and size of every
other file, and `verify_package` recomputes them. `load_package` verifies first.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from deploy.config import PackageConfig, ShipBudget
from deploy.manifest import SCHEMA_VERSION, Manifest, PackageError, file_entries
from deploy.record import ArtefactRecord, ValidationReport
from deploy.report import pareto_front, validation_rows
from deploy.serve import stop_texts
from rakd.io import atomic_dir, atomic_write_json, atomic_write_text
from rakd.layout import RunLayout
from rakd.models.gguf_file import gguf_metadata, special_token
from rakd.prompt import prompt_around
from rakd.schema import Summary
from rakd.tables import markdown_table, pct

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)


# ---------------------------------------------------------------- choosing and describing


def choose(report: ValidationReport, cfg: PackageConfig) -> tuple[list[ArtefactRecord], str | None]:
    """(the artefacts to ship, why): with `budget`, the one it picks and its sentence (`within_budget`); else the
    best accuracy among the student's that passed (ties: smaller file, then lower p95 latency), and None."""
    if cfg.budget is not None:
        pick, why = within_budget(report, cfg.budget)
        return [pick], why
    candidates = report.shippable()
    if not candidates:
        raise PackageError(f"no exported artefact passed validation, nothing to package ({report.failures()})")
    rank = lambda r: (-r.accuracy, r.size_mb, r.latency_ms_p95)  # noqa: E731
    if cfg.include == "best-per-format":
        return [
            min(group, key=rank) for fmt in ("gguf", "onnx") if (group := [r for r in candidates if r.format == fmt])
        ], None
    preferred = [r for r in candidates if r.format == cfg.prefer] or candidates
    return [min(preferred, key=rank)], None


def within_budget(report: ValidationReport, budget: ShipBudget) -> tuple[ArtefactRecord, str]:
    """(the artefact `budget` picks, why in one sentence): among every artefact that passed its gates and has a
    latency, the student's and the teacher's alike, those within the latency and size budgets; with
    `accuracy_loss`, the fastest (then smallest) of those at most that far below the teacher's best artefact, else
    the most accurate (ties: the student's, then the faster). A teacher's artefact is picked only where no
    student's does as well: the sentence says so, and what the best student's did."""
    passed = [r for r in report.artefacts if r.passed and not r.reference and r.latency_ms_p50 is not None]
    teacher = [r for r in passed if r.model == "teacher"]
    within = [
        r
        for r in passed
        if (budget.latency_ms_p50 is None or r.latency_ms_p50 <= budget.latency_ms_p50)
        and (budget.size_mb is None or (r.size_mb or 0.0) <= budget.size_mb)
    ]
    said = [f"p50 <= {budget.latency_ms_p50:g} ms" if budget.latency_ms_p50 else ""]
    said += [f"size <= {budget.size_mb:g} MB" if budget.size_mb else ""]
    if budget.accuracy_loss is not None:
        if not teacher:
            raise PackageError(
                "package.budget.accuracy_loss is measured against the teacher's artefacts, and none passed "
                "validation: export and validate them (export.teacher: true)"
            )
        best = max(teacher, key=lambda r: r.accuracy)
        floor = best.accuracy - budget.accuracy_loss
        within = [r for r in within if r.accuracy >= floor - 1e-9]
        said.append(f"accuracy >= {100 * floor:.1f}% ({100 * budget.accuracy_loss:g} points below {best.label})")
        rank = lambda r: (r.latency_ms_p50, r.size_mb or 0.0, r.model == "teacher")  # noqa: E731
    else:
        rank = lambda r: (-r.accuracy, r.model == "teacher", r.latency_ms_p50, r.size_mb or 0.0)  # noqa: E731
    constraint = ", ".join(x for x in said if x)
    if not within:
        raise PackageError(f"no validated artefact meets package.budget ({constraint}): {_points(passed)}")
    pick = min(within, key=rank)
    front = {r.label for r in pareto_front(report.artefacts)}
    where = "on" if pick.label in front else "off"
    why = f"{pick.label}: {_point(pick)}, {where} the accuracy-latency front; the budget: {constraint}"
    if pick.model == "teacher":
        best_student = max((r for r in passed if r.model != "teacher"), key=lambda r: r.accuracy, default=None)
        why += "; the teacher's own artefact, since no student artefact " + (
            f"does as well within it (the best student artefact: {best_student.label}, {_point(best_student)})"
            if best_student
            else "passed validation"
        )
    elif teacher:
        rival = min([r for r in within if r.model == "teacher"] or teacher, key=rank)
        why += f"; the teacher's {rival.label}: {_point(rival)}"
    return pick, why


def _point(r: ArtefactRecord) -> str:
    return f"{100 * r.accuracy:.1f}% at {r.latency_ms_p50:.0f} ms p50, {r.size_mb or 0.0:.0f} MB"


def _points(records: list[ArtefactRecord]) -> str:
    return "; ".join(f"{r.label} {_point(r)}" for r in sorted(records, key=lambda r: r.latency_ms_p50)) or "none"


def describe_model(folder: Path) -> dict | None:
    """Architecture and parameter count of a Hugging Face folder, read from config and safetensors headers."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None
    from safetensors import safe_open

    config = json.loads(config_path.read_text())
    params = 0
    for weights in sorted(folder.glob("*.safetensors")):
        with safe_open(weights, framework="numpy") as handle:
            for name in handle.keys():
                count = 1
                for dim in handle.get_slice(name).get_shape():
                    count *= dim
                params += count
    keys = (
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
    )
    return {
        "architecture": (config.get("architectures") or ["?"])[0],
        "parameters": params,
        **{k: config[k] for k in keys if k in config},
    }


# ---------------------------------------------------------------- building


@dataclass(frozen=True)
class PackageResult:
    out_dir: Path
    manifest: dict


def build_package(
    cfg: PackageConfig, run_dir: str | Path, out_dir: str | Path | None = None, force: bool = False
) -> PackageResult:
    """`<run>/package/` from `<run>/validate/report.json`; refuses to replace a package unless `force`."""
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    out_dir = Path(out_dir) if out_dir else layout.package
    report_path = layout.report
    if not report_path.is_file():
        raise PackageError(f"{report_path}: no validation report; run `rakd validate {run_dir}` first")
    if out_dir.exists() and not force:
        raise FileExistsError(f"{out_dir}: a package is already there; pass --force to replace it")
    report = ValidationReport.from_json(json.loads(report_path.read_text()))
    chosen, why = choose(report, cfg)
    config_path = layout.config
    configs = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    with atomic_dir(out_dir) as staging:
        models = []
        for record in chosen:
            source = Path(record.path)
            if not source.exists():
                raise PackageError(f"{source}: validated artefact {record.label} is gone")
            if source.is_dir():
                shutil.copytree(source, staging / source.name)
            else:
                shutil.copyfile(source, staging / source.name)
            models.append(
                {
                    "label": record.label,
                    "format": record.format,
                    "path": source.name,
                    "model": record.model,
                    "metrics": record.summary(),
                }
            )
        shipped = layout.teacher if chosen[0].model == "teacher" else layout.student  # its tokenizer and template
        tokenizer_source = shipped
        copied = [name for name in TOKENIZER_FILES if (tokenizer_source / name).is_file()]
        for name in copied:
            (staging / "tokenizer").mkdir(exist_ok=True)
            shutil.copyfile(tokenizer_source / name, staging / "tokenizer" / name)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": cfg.name or run_dir.name,
            "version": cfg.version,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "source_run": str(run_dir.resolve()),
            "configs": configs,
            "teacher": describe_model(layout.teacher),
            "student": describe_model(layout.student),
            "models": models,
            "chosen": why,
            "validation": {
                key: getattr(report, key) for key in ("data", "machine", "threads", "gates", "reference", "created_at")
            }
            | {"artefacts": [r.summary() for r in report.artefacts]},
        }
        gguf_model = next((m for m in models if m["format"] == "gguf"), None)
        if gguf_model:
            atomic_write_text(staging / "Modelfile", ollama_modelfile(gguf_model["path"], staging / gguf_model["path"]))
        example = next((r.samples[0]["question"] for r in chosen if r.samples), None)
        atomic_write_text(staging / "README.md", model_card(manifest, example, has_chat_template(shipped)))
        manifest["files"] = file_entries(staging)
        Manifest.model_validate(manifest)
        atomic_write_json(staging / "manifest.json", manifest)
    return PackageResult(out_dir, manifest)


# ---------------------------------------------------------------- Ollama


def ollama_modelfile(name: str, path: Path) -> str:
    """An Ollama Modelfile for the GGUF `name` (read at `path`): greedy, the prompt format the model was validated
    with as its TEMPLATE (its chat template rendered around `{{ .Prompt }}`, else rakd's question-and-newline), and
    every token that ends its turn as a stop."""
    meta = gguf_metadata(path)
    bos, eos = special_token(path, meta, "bos"), special_token(path, meta, "eos")
    template = meta.get("tokenizer.chat_template")
    if template:
        before, after = prompt_around(template, bos=bos, eos=eos)
        if meta.get("tokenizer.ggml.add_bos_token") and bos and before.startswith(bos):
            before = before[len(bos) :]  # Ollama adds the BOS itself, as llama.cpp does
    else:
        before, after = "", "\n"  # rakd's prompt format (rakd.prompt.prompt_text)
    body = _go_literal(before) + "{{ .Prompt }}" + _go_literal(after)
    lines = [
        f"# Ollama: ollama create {Path(name).stem} -f Modelfile && ollama run {Path(name).stem}",
        f"FROM ./{name}",
        f'TEMPLATE """{body}"""',
        "PARAMETER temperature 0",
        "PARAMETER num_predict 256",
    ]
    lines += [f'PARAMETER stop "{stop}"' for stop in stop_texts(path, meta)]
    return "\n".join(lines) + "\n"


def _go_literal(text: str) -> str:
    """`text` as literal text of a Go template (Ollama's TEMPLATE): its own `{{` cannot start an action."""
    return text.replace("{{", '{{ "{{" }}')


# ---------------------------------------------------------------- model card


def has_chat_template(folder: Path) -> bool:
    """Whether the Hugging Face folder's tokenizer has a chat template (the prompts then went through it)."""
    config = folder / "tokenizer_config.json"
    in_config = config.is_file() and "chat_template" in json.loads(config.read_text())
    return in_config or (folder / "chat_template.jinja").is_file()


def model_card(manifest: dict, example: str | None = None, chat: bool = False) -> str:
    """The package's README: models, training, the validation table, and how to run it on one of its own task
    prompts (`example`, e.g. the first validated problem), through the chat template when the model has one."""
    configs, student, teacher = manifest["configs"], manifest["student"], manifest["teacher"]
    distill = configs.get("distill", {})
    validation = manifest["validation"]
    model = manifest["models"][0]
    lines = [
        f"# {manifest['name']} {manifest['version']}",
        "",
        "A small reasoning model distilled by rakd from a larger teacher, quantised and validated for CPU "
        "inference on edge devices. Shipped: "
        + ", ".join(f"`{m['path']}` ({m['label']})" for m in manifest["models"])
        + ".",
        "",
    ]
    if manifest.get("chosen"):
        teacher_shipped = any(m.get("model") == "teacher" for m in manifest["models"])
        lines += [
            "Chosen by the package's budget"
            + (", and it is the teacher's own artefact" if teacher_shipped else "")
            + f": {manifest['chosen']}.",
            "",
        ]
    lines += ["## Models", "", "| role | architecture | parameters | layers | hidden |", "|---|---|---|---|---|"]
    for role, desc in (("teacher", teacher), ("student", student)):
        if desc:
            lines.append(
                f"| {role} | {desc['architecture']} | {desc['parameters']:,} | {desc.get('num_hidden_layers', '-')} "
                f"| {desc.get('hidden_size', '-')} |"
            )
    lines += ["", "## Training", ""]
    if distill:
        rl, warm = distill.get("rl", {}), distill.get("warmstart", {})
        lines += [
            f"- Method: `{distill.get('method')}` (reinforcement-aware distillation; loss parameters "
            f"{json.dumps(distill.get('loss', {}), sort_keys=True)})",
            f"- Warm start: SFT on the teacher's verified traces ({warm.get('n_prompts')} prompts x "
            f"{warm.get('samples_per_prompt')} samples, wrong answers dropped)",
            f"- RL: {rl.get('steps')} steps, group size {rl.get('group_size')}, "
            f"{rl.get('prompts_per_step')} prompts per step, lr {rl.get('optim', {}).get('lr')}",
            f"- Data: {configs.get('prep', {}).get('source')} tasks "
            f"({json.dumps(configs.get('prep', {}).get('generator', {}), sort_keys=True)})",
        ]
    else:
        lines.append("- (no run config recorded)")
    machine = validation["machine"]
    lines += [
        "",
        "## Validation",
        "",
        f"Greedy pass@1 on {validation['data']['n']} held-out problems (`{Path(validation['data']['path']).name}`, "
        f"sha256 {validation['data']['sha256'][:12]}), one problem at a time, on {machine['cpu']} with "
        f"{validation['threads']} thread(s). Reference: {validation['reference'] or 'none'}.",
        "",
        markdown_table(validation_rows([ArtefactRecord.from_json(r) for r in validation["artefacts"]])),
    ]
    gates = ", ".join(f"{k} = {v}" for k, v in validation["gates"].items() if v is not None)
    lines += ["", f"Gates: {gates}.", "", "## Run it", ""]
    lines += [*_run_it(model, example or "1+2=?", chat), ""]
    how = "the model's chat template, the question as one user turn" if chat else "the question followed by a newline"
    lines.append(
        f"Prompt format: {how}. The model answers with its working and a final `A: <number>` (read it with "
        "`rakd.verify.extract_answer`)."
    )
    lines += [
        "",
        "Check the files before use: `rakd verify-package .` (every sha256 in `manifest.json`).",
        "",
        "## Limitations",
        "",
        "- Trained and validated only on the task distribution above; it is not a general assistant.",
        "- Latency was measured on the validating machine's CPU; measure again on the target device.",
        "- Greedy decoding; sampled outputs are less accurate.",
        "- Quantised variants can lose accuracy on problems the parity prompts did not cover; the table above is the "
        "measured loss on the held-out split.",
        "",
    ]
    return "\n".join(lines)


def _run_it(model: dict, example: str, chat: bool) -> list[str]:
    """The card's "Run it" lines for the shipped model, asking `example` (through the chat template with `chat`)."""
    path, stem, question = model["path"], Path(model["path"]).stem, json.dumps(example)
    raw = json.dumps(example + "\n")
    if model["format"] != "gguf":
        ask = (
            f"tok.apply_chat_template([{{'role': 'user', 'content': {question}}}], add_generation_prompt=True, "
            'return_dict=True, return_tensors="pt")'
            if chat
            else f'tok({raw}, return_tensors="pt")'
        )
        return [
            "ONNX Runtime through optimum (`pip install optimum-onnx onnxruntime`):",
            "",
            "```python",
            "from optimum.onnxruntime import ORTModelForCausalLM; from transformers import AutoTokenizer",
            f'model = ORTModelForCausalLM.from_pretrained("{path}")',
            f'tok = AutoTokenizer.from_pretrained("{path}")',
            f"print(tok.decode(model.generate(**{ask}, max_new_tokens=64)[0]))",
            "```",
        ]
    if chat:
        call = f"llm.create_chat_completion([{{'role': 'user', 'content': {question}}}], max_tokens=64, temperature=0)"
        shown, cli = f'print({call}["choices"][0]["message"]["content"])', f"llama-cli -m {path} -cnv -p {question}"
    else:
        shown = f'print(llm({raw}, max_tokens=64, temperature=0)["choices"][0]["text"])'
        cli = f"llama-cli -m {path} -p {question} -n 64 --temp 0"
    return [
        "llama.cpp (`pip install llama-cpp-python`):",
        "",
        "```python",
        "from llama_cpp import Llama",
        f'llm = Llama(model_path="{path}", verbose=False)',
        shown,
        "```",
        "",
        f"or `{cli}`.",
        "",
        f"Ollama: `ollama create {stem} -f Modelfile && ollama run {stem} {question}` (the package's `Modelfile`: "
        "greedy, the prompt format it was validated with, its stop tokens).",
        "",
        "On an Intel CPU with AMX (Sapphire Rapids and later), a llama.cpp built for that CPU can crash on "
        "quantised weights in its AMX kernels (ggml-org/llama.cpp#20824). Stock llama.cpp avoids them with "
        f"`--no-repack` (`-nr`): `llama-cli -m {path} -nr ...`, `llama-server -m {path} -nr`. "
        "llama-cpp-python's `Llama(...)` does not expose that switch; set `use_extra_bufts = False` in the "
        "model params it loads with (rakd's validation does this whenever `llama_print_system_info()` "
        "reports `AMX_INT8 = 1`).",
    ]


# ---------------------------------------------------------------- the stage contract (pipeline.registry)
# (section config, RunLayout) -> summary, a small JSON dict read back from the outputs, so that a run that just
# finished and outputs current under their key give the same summary; the stage's own summary rows.


def done_file(layout: RunLayout) -> Path:
    return layout.manifest


def run_stage(cfg: PackageConfig, layout: RunLayout) -> Summary:
    build_package(cfg, layout.root, force=True)  # the pipeline re-runs its own last stage
    return read_stage(cfg, layout)


def read_stage(cfg: PackageConfig, layout: RunLayout) -> Summary:
    from deploy.manifest import verify_package

    manifest = verify_package(layout.manifest.parent)
    return {
        "path": str(layout.manifest.parent),
        "models": [m.model_dump() for m in manifest.models],
        "files": len(manifest.files),
        "chosen": manifest.chosen,
    }


def stage_rows(summary: Summary) -> list[dict]:
    return [
        {
            "file": m["path"],
            "artefact": m["label"],
            "format": m["format"],
            "accuracy": pct(m["metrics"]["accuracy"]),
            "verified": f"{summary['files']} files, sha256",
            **({"why": summary["chosen"]} if summary.get("chosen") else {}),
        }
        for m in summary["models"]
    ]
