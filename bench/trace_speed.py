"""The teacher's traces, two ways: our batched PyTorch sampler (what the warm start and SeqKD use) against llama.cpp
on the same weights exported to a GGUF (f16 and f32), one sequence at a time (llama-cpp-python's `Llama.generate`,
as validation runs it), both sampling at the warm start's temperature with nothing else on (no top-k, top-p, min-p
or repetition penalty: the same distribution up to the GGUF's rounding), on SmolLM2-135M-Instruct and the real
config's word problems through the chat template.

    .venv/bin/python bench/trace_speed.py [--threads 2] [--prompts 128] [--temperature 0.7] [--max-new-tokens 56]

Tokens/s counts generated tokens (up to and including the end of the answer). Writes results.{json,md} and
meta.json into bench/results/trace_speed-<date>/.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from benchlib import results_dir, write_meta
from train_throughput import load

from deploy.runtimes import LlamaCppGenerator
from export.gguf import export_gguf
from rakd.data.generator import GeneratorConfig, generate
from rakd.rollout import sample
from rakd.tables import markdown_table, text_table
from rakd.verify import reward


def torch_way(model, tokenizer, questions, answers, args) -> dict:
    started = time.perf_counter()
    rollouts = sample(
        model, tokenizer, questions, max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=0
    )
    seconds = time.perf_counter() - started
    tokens = int(rollouts.completion_mask.sum())
    correct = sum(reward(t, a) for t, a in zip(rollouts.texts, answers))
    return {"seconds": seconds, "tokens": tokens, "correct": correct}


def llama_way(path: Path, questions, answers, args) -> dict:
    import llama_cpp

    runtime = LlamaCppGenerator(path, threads=args.threads, seed=0)
    llm, tokens, correct = runtime.llm, 0, 0
    started = time.perf_counter()
    for question, answer in zip(questions, answers):
        out = []
        sampled = llm.generate(
            runtime.prompt_ids(question),
            top_k=0,  # the whole vocabulary
            top_p=1.0,
            min_p=0.0,
            temp=args.temperature,
            repeat_penalty=1.0,
            reset=True,
        )
        for token in sampled:
            out.append(token)
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or len(out) >= args.max_new_tokens:
                break
        tokens += len(out)
        correct += reward(llm.detokenize(out).decode("utf-8", "replace"), answer)
    seconds = time.perf_counter() - started
    runtime.close()
    return {"seconds": seconds, "tokens": tokens, "correct": correct}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-new-tokens", type=int, default=56)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load(30)
    items = generate(GeneratorConfig(n_items=args.prompts, min_ops=1, max_ops=4, templates=["word"], seed=11))
    questions, answers = [item["question"] for item in items], [item["answer"] for item in items]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        with torch.inference_mode():
            ours = torch_way(model, tokenizer, questions, answers, args)
            rows.append({"way": "ours: PyTorch, batched (256 rows)", **ours})
        for dtype in ("f16", "f32"):
            path = export_gguf(model, tokenizer, Path(tmp) / f"teacher-{dtype}.gguf", dtype=dtype)
            theirs = llama_way(path, questions, answers, args)
            rows.append({"way": f"llama.cpp {dtype}, one sequence at a time", **theirs})
    for row in rows:
        row["tokens_per_s"] = row["tokens"] / row["seconds"]
        row["traces_per_s"] = args.prompts / row["seconds"]
        row["speed"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
        row["accuracy"] = row["correct"] / args.prompts
    folder = results_dir("trace_speed", args.out)
    write_meta(folder, threads=args.threads, prompts=args.prompts, temperature=args.temperature,
               max_new_tokens=args.max_new_tokens)  # fmt: skip
    (folder / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    columns = ["way", "seconds", "tokens", "tokens_per_s", "traces_per_s", "speed", "accuracy"]
    table = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k in columns} for r in rows]
    (folder / "results.md").write_text(markdown_table(table, columns) + "\n")
    print(text_table(table, columns))
    print(f"written to {folder}")


if __name__ == "__main__":
    main()
