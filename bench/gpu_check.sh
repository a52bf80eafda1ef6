#!/usr/bin/env bash
# The GPU check for a CUDA host that has torch but not our whole install: wheels placed in an optional `.whl/`
# folder beside this checkout (e.g. transformers 4.57, tokenizers, pydantic, math-verify) are installed into a
# private site dir first; then the CUDA tests and bench/gpu_check.py run.
# Usage: bash bench/gpu_check.sh OUT_DIR
set -euo pipefail
out=${1:-/tmp/gpu-check}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -3 || echo "gpu tests FAILED"
python3 bench/gpu_check.py "$out" 2>&1 | tee "$out/log.txt"
# Rollout throughput per sampler at batch 512 on the GPU config's student (random weights run every row to 160
# tokens): `static` is generate() over a pre-allocated cache, which transformers compiles on CUDA (CUDA graphs).
python3 bench/rollout.py --device cuda --preset student-tiny --batch 512 --max-new-tokens 160 \
  --overrides '{"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
                "intermediate_size": 1024, "max_position_embeddings": 512}' 2>&1 | tee "$out/rollout.txt"
