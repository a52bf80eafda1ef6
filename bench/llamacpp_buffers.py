"""What switching llama.cpp's extra buffer types off costs: decode tokens/s of q8_0 and q4_0 GGUFs, loaded with
`use_extra_bufts` on (llama.cpp's default: AMX / repacked weights where the build has them) and off (what
`rakd.models.llamacpp.open_llama` does where the AMX kernels are compiled in), in one run on this machine.

    .venv/bin/python bench/llamacpp_buffers.py [--hidden 512 --layers 8 --tokens 128 --repeats 3]

Writes results.json and meta.json into bench/results/llamacpp_buffers-DATE/. Random weights: only speed is measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchlib import cpu_model, results_dir, write_meta

from export.gguf import export_gguf
from export.quantize import quantize_gguf
from rakd.data.generator import GeneratorConfig, generate
from rakd.models import llamacpp
from rakd.models.tokenizer import TokenizerConfig, train_tokenizer
from rakd.models.zoo import build_model, preset_config


def decode_tok_s(path: Path, extra: bool, tokens: int, threads: int) -> float:
    from llama_cpp import Llama

    with llamacpp._model_param_defaults(use_extra_bufts=extra):
        llm = Llama(model_path=str(path), n_ctx=tokens + 16, n_threads=threads, n_threads_batch=threads, verbose=False)
    assert llm.model_params.use_extra_bufts is extra
    llm.eval([1, 2, 3])
    started = time.perf_counter()
    for i in range(tokens):
        llm.eval([4 + i % 50])
    elapsed = time.perf_counter() - started
    llm.close()
    return tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="results folder (default: bench/results/llamacpp_buffers-DATE)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = train_tokenizer(
            generate(GeneratorConfig(n_items=300, seed=1)), TokenizerConfig(vocab_size=320), tmp / "tok"
        )
        config = preset_config(
            "teacher-tiny",
            tok,
            hidden_size=args.hidden,
            intermediate_size=4 * args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=args.hidden // 64,
            num_key_value_heads=args.hidden // 64,
        )
        model = build_model(config, seed=0)
        f16 = export_gguf(model, tok, tmp / "model-f16.gguf", "f16")
        rows = []
        for ftype in ("q8_0", "q4_0"):
            path = quantize_gguf(f16, tmp / f"model-{ftype}.gguf", ftype, 1)
            for extra in (True, False):
                runs = [decode_tok_s(path, extra, args.tokens, args.threads) for _ in range(args.repeats)]
                rows.append(
                    {
                        "ftype": ftype,
                        "use_extra_bufts": extra,
                        "decode_tok_s_median": statistics.median(runs),
                        "runs": runs,
                    }
                )
                print(
                    f"{ftype:5} use_extra_bufts={extra!s:5}  decode {statistics.median(runs):8.1f} tok/s  "
                    f"(runs {', '.join(f'{r:.1f}' for r in runs)})",
                    flush=True,
                )
    result = {
        "machine": {"cpu": cpu_model(), "llama_cpp": llamacpp.llama_settings()},
        "model": {
            "hidden": args.hidden,
            "layers": args.layers,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "threads": args.threads,
        "tokens": args.tokens,
        "rows": rows,
    }
    folder = results_dir("llamacpp_buffers", args.out)
    write_meta(folder)
    (folder / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"machine: {result['machine']['cpu']}; {result['machine']['llama_cpp']['system_info']}")


if __name__ == "__main__":
    main()
