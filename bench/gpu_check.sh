#!/usr/bin/env bash
# The GPU check, for a CUDA host that has torch but not our whole install. Wheels in an optional `.whl/` folder
# (transformers 4.57, tokenizers 0.22, huggingface_hub < 1, pydantic, math-verify and what they need) go into a
# private site dir first. Then, each phase under its own time limit, a failing phase reported and the rest run:
#   1. rollout throughput per sampler at batch 512 (64 prompts x G=8, as an RL step draws them) x 160 new tokens,
#      on a random model of the GPU config's student size (random weights run most rows to 160 tokens);
#      with `.old/rakd` present (`mkdir .old && git archive REV rakd | tar -x -C .old && echo REV > .old/REV`,
#      `.old` ignored in .git/info/exclude and carried), that older code's loop first;
#   2. the CUDA tests (tests/test_gpu.py), `static` ones last (transformers compiles them: slow);
#   3. bench/gpu_check.py: the GPU config shortened to minutes (prep -> teacher -> distill), RL on the `graph`
#      sampler (on `loop` if `graph` failed in 1), with step splits and accuracies;
#   4. rollouts of the student that 3 trained (real EOS): loop and graph, and `.old`'s loop.
# Everything printed goes to OUT/log.txt; results are OUT/*.json, with OUT/meta.json (bench/benchlib.py).
# Usage: bash bench/gpu_check.sh OUT_DIR
# Checking the script itself on a CPU first (toy sizes, no device time spent):
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_BATCH=16 GPU_CHECK_TOKENS=8 GPU_CHECK_SMOKE=--dry-run bash bench/gpu_check.sh /tmp/x
set -uo pipefail
out=${1:-/tmp/gpu-check}
work=${GPU_CHECK_WORK:-/tmp/gpu-check-work}  # runs/ of phase 3, kept out of OUT
mkdir -p "$out" "$work"
exec > >(tee "$out/log.txt") 2>&1
site=""
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  site=/tmp/site:
fi
export PYTHONPATH=${site}$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
phase() {  # phase NAME LIMIT_S COMMAND...: run it, print its exit status and seconds
  local name=$1 limit=$2 start=$SECONDS status
  shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@"
  status=$?
  echo "== $name: exit $status in $((SECONDS - start))s"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
python3 -c "import sys; sys.path.insert(0, 'bench'); from benchlib import write_meta; \
write_meta(__import__('pathlib').Path(sys.argv[1]), sys.argv[2])" "$out" "${GPU_CHECK_DEVICE:-cuda}" || echo "no meta.json"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
shape=(--device "${GPU_CHECK_DEVICE:-cuda}" --batch "${GPU_CHECK_BATCH:-512}" --group-size 8
       --max-new-tokens "${GPU_CHECK_TOKENS:-160}" --no-single)
random_student=(bench/rollout.py --student-of configs/gpu.yaml "${shape[@]}")
old=${site}$PWD/.old

if [ -d .old/rakd ]; then
  phase "rollouts, .old's loop" 50 env PYTHONPATH="$old" python3 "${random_student[@]}" --backends loop \
    --label "$(cat .old/REV 2>/dev/null || echo .old)" --json "$out/rollout-old.json"
fi
phase "rollouts, every sampler" 170 python3 "${random_student[@]}" --json "$out/rollout.json"
phase "gpu tests but static" 60 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k "not static"

backend=graph
if ! python3 -c "import json, sys; r = json.load(open(sys.argv[1]))['results']; \
sys.exit(not any(e['backend'] == 'graph' and 'error' not in e for e in r))" "$out/rollout.json"; then
  backend=loop
fi
phase "smoke run (distill.rl.backend=$backend)" 200 python3 bench/gpu_check.py "$work" ${GPU_CHECK_SMOKE:-} --set "distill.rl.backend=$backend"
cp "$work/gpu_check.json" "$out/" 2>/dev/null

trained=$work/runs/gpu/student
if [ -f "$trained/config.json" ]; then
  phase "rollouts of the trained student" 40 python3 bench/rollout.py --model "$trained" "${shape[@]}" \
    --backends loop,graph --json "$out/rollout-trained.json"
  if [ -d .old/rakd ]; then
    phase "rollouts of the trained student, .old's loop" 30 env PYTHONPATH="$old" python3 bench/rollout.py \
      --model "$trained" "${shape[@]}" --backends loop --label "$(cat .old/REV 2>/dev/null || echo .old)" \
      --json "$out/rollout-trained-old.json"
  fi
fi
phase "gpu tests, static" 90 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k static
