#!/usr/bin/env bash
# GPU smoke check: a few HPT steps on CUDA in bfloat16, full-parameter and LoRA, with HF rollouts,
# on the embedded base model (built on the GPU machine on first use). Prints one line per run.
#   bash scripts/gpu_check.sh [runs-dir]
set -euo pipefail
RUNS=${1:-runs/gpu-check}
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print("cuda:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PY
for r in 0 8; do
  python -m training.run hpt --device cuda --dtype bfloat16 --lora-r $r --steps 4 --eval-every 2 \
    --eval-k 2 --save-every 0 --progress false --runs-dir "$RUNS" --run-id "hpt-lora$r"
  python - "$RUNS/hpt-lora$r" <<'PY'
import json, sys, math
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
train = [r for r in rows if "grad/norm" in r]
assert train and all(math.isfinite(r["grad/norm"]) for r in train), "non-finite gradient norms"
print(sys.argv[1], "steps", len(train), "sft_fraction", [round(r.get("gate/sft_fraction", -1), 2) for r in train],
      "eval", [round(r["eval/accuracy"], 3) for r in rows if "eval/accuracy" in r])
PY
done
