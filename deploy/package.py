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

from deploy.config import PackageConfig
from deploy.manifest import SCHEMA_VERSION, Manifest, PackageError, file_entries
from deploy.validate import REPORT_KEYS, shippable, validation_rows
from rakd.io import atomic_dir, atomic_write_json, atomic_write_text
from rakd.layout import RunLayout
from rakd.models.gguf_file import gguf_metadata, gguf_token
from rakd.tables import markdown_table

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


def choose(report: dict, cfg: PackageConfig) -> list[dict]:
    """The artefacts to ship: best accuracy among those that passed (ties: smaller file, then lower p95 latency)."""
    candidates = shippable(report)
    if not candidates:
        summary = "; ".join(
            f"{r['label']}: {', '.join(r['failed_gates']) or 'reference only'}" for r in report["artefacts"]
        )
        raise PackageError(f"no exported artefact passed validation, nothing to package ({summary})")
    rank = lambda r: (-r["accuracy"], r["size_mb"], r["latency_ms_p95"])  # noqa: E731
    if cfg.include == "best-per-format":
        return [
            min(group, key=rank) for fmt in ("gguf", "onnx") if (group := [r for r in candidates if r["format"] == fmt])
        ]
    preferred = [r for r in candidates if r["format"] == cfg.prefer] or candidates
    return [min(preferred, key=rank)]


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


def _summary(record: dict) -> dict:
    """What the manifest keeps of a validation record: the report's keys and the drop against the reference."""
    keys = [k for k in REPORT_KEYS if k not in ("path", "label", "format")] + ["accuracy_drop", "n", "reference"]
    return {"label": record["label"], "format": record["format"], **{k: record.get(k) for k in keys}}


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
    report = json.loads(report_path.read_text())
    chosen = choose(report, cfg)
    config_path = layout.config
    configs = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    with atomic_dir(out_dir) as staging:
        models = []
        for record in chosen:
            source = Path(record["path"])
            if not source.exists():
                raise PackageError(f"{source}: validated artefact {record['label']} is gone")
            if source.is_dir():
                shutil.copytree(source, staging / source.name)
            else:
                shutil.copyfile(source, staging / source.name)
            models.append(
                {"label": record["label"], "format": record["format"], "path": source.name, "metrics": _summary(record)}
            )
        tokenizer_source = layout.student
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
            "validation": {
                key: report[key] for key in ("data", "machine", "threads", "gates", "reference", "created_at")
            }
            | {"artefacts": [_summary(r) for r in report["artefacts"]]},
        }
        gguf_model = next((m for m in models if m["format"] == "gguf"), None)
        if gguf_model:
            atomic_write_text(staging / "Modelfile", ollama_modelfile(gguf_model["path"], staging / gguf_model["path"]))
        atomic_write_text(staging / "README.md", model_card(manifest))
        manifest["files"] = file_entries(staging)
        Manifest.model_validate(manifest)
        atomic_write_json(staging / "manifest.json", manifest)
    return PackageResult(out_dir, manifest)


# ---------------------------------------------------------------- Ollama


def ollama_modelfile(name: str, path: Path) -> str:
    """An Ollama Modelfile for the GGUF `name` (read at `path`): greedy, its stop token, and the prompt format.
    A model with a chat template in its GGUF gets no TEMPLATE line: Ollama uses the embedded template."""
    meta = gguf_metadata(path)
    eos = meta.get("tokenizer.ggml.eos_token_id")
    stop = gguf_token(path, eos) if eos is not None else None
    lines = [
        f"# Ollama: ollama create {Path(name).stem} -f Modelfile && ollama run {Path(name).stem}",
        f"FROM ./{name}",
    ]
    if meta.get("tokenizer.chat_template") is None:
        # rakd's prompt format (rakd.prompt.prompt_text): the question, then a newline
        lines.append('TEMPLATE """{{ .Prompt }}\n"""')
    lines += ["PARAMETER temperature 0", "PARAMETER num_predict 256"]
    if stop:
        lines.append(f'PARAMETER stop "{stop}"')
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- model card


def model_card(manifest: dict) -> str:
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
        markdown_table(validation_rows(validation["artefacts"])),
    ]
    gates = ", ".join(f"{k} = {v}" for k, v in validation["gates"].items() if v is not None)
    lines += ["", f"Gates: {gates}.", "", "## Run it", ""]
    if model["format"] == "gguf":
        lines += [
            "llama.cpp (`pip install llama-cpp-python`):",
            "",
            "```python",
            "from llama_cpp import Llama",
            f'llm = Llama(model_path="{model["path"]}", verbose=False)',
            'print(llm("7+3*2-4=?\\n", max_tokens=64, temperature=0)["choices"][0]["text"])',
            "```",
            "",
            f'or `llama-cli -m {model["path"]} -p "7+3*2-4=?" -n 64 --temp 0`.',
            "",
            f"Ollama: `ollama create {Path(model['path']).stem} -f Modelfile && ollama run "
            f"{Path(model['path']).stem}` (the package's `Modelfile`: greedy, the model's stop token).",
            "",
            "On an Intel CPU with AMX (Sapphire Rapids and later), a llama.cpp built for that CPU can crash on "
            "quantised weights in its AMX kernels (ggml-org/llama.cpp#20824). Stock llama.cpp avoids them with "
            f"`--no-repack` (`-nr`): `llama-cli -m {model['path']} -nr ...`, `llama-server -m {model['path']} -nr`. "
            "llama-cpp-python's `Llama(...)` does not expose that switch; set `use_extra_bufts = False` in the "
            "model params it loads with (rakd's validation does this whenever `llama_print_system_info()` "
            "reports `AMX_INT8 = 1`).",
        ]
    else:
        lines += [
            "ONNX Runtime through optimum (`pip install optimum-onnx onnxruntime`):",
            "",
            "```python",
            "from optimum.onnxruntime import ORTModelForCausalLM; from transformers import AutoTokenizer",
            f'model = ORTModelForCausalLM.from_pretrained("{model["path"]}")',
            f'tok = AutoTokenizer.from_pretrained("{model["path"]}")',
            'print(tok.decode(model.generate(**tok("7+3*2-4=?\\n", return_tensors="pt"), max_new_tokens=64)[0]))',
            "```",
        ]
    lines += [
        "",
        "Prompt format: the question followed by a newline; the model answers with its working and a final "
        "`A: <number>` (read it with `rakd.verify.extract_answer`).",
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
