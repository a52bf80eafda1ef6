"""What a package says about itself: its model card (what it is, how it did, how to run it) and, for a GGUF, an
Ollama Modelfile with the prompt format and stops it was validated with."""

from __future__ import annotations

import json
from pathlib import Path

from deploy.record import ArtefactRecord
from deploy.report import validation_rows
from deploy.serve import stop_texts
from rakd.models.gguf_file import gguf_metadata, special_token
from rakd.prompt import prompt_around
from rakd.tables import markdown_table

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
