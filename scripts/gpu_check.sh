#!/usr/bin/env bash
# GPU check, one command, under 8 minutes on one GPU:
#   bash scripts/gpu_check.sh [runs-dir]
# 1. The real-scale step: a randomly initialised model of Qwen2.5-Math-1.5B's shape (config only,
#    no download: hidden 1536, 28 layers, V = 151,936), a few steps at the paper's lengths
#    (1024-token prompts, 8192 new tokens) in bf16 autocast over float32 weights with gradient
#    checkpointing: ours (HPT) and TRL's GRPOTrainer on the same model and batch; prints
#    tokens/s and peak GPU memory of each (benchmarks/train_memory.py --setting gpu-qwen2.5-math-1.5b).
# 2. The loop end to end: 4 HPT steps on CUDA in bfloat16, full-parameter and LoRA, HF rollouts,
#    on the embedded base model (built on the GPU machine on first use), finite gradients and
#    a small sampler/trainer log-prob gap (rollout/logp_gap) at every step.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/gpu-check}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print("cuda:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PY
echo "=== real-scale step (Qwen2.5-Math-1.5B shape, 1024 + 8192 tokens, bf16): ours vs TRL"
time python benchmarks/train_memory.py --setting gpu-qwen2.5-math-1.5b
for r in 0 8; do
  echo "=== HPT, embedded base, --lora-r $r"
  python -m training.run hpt --device cuda --dtype bfloat16 --lora-r $r --steps 4 --eval-every 2 \
    --eval-k 2 --save-every 0 --progress false --runs-dir "$RUNS" --run-id "hpt-lora$r" --temperature 0.7
  python - "$RUNS/hpt-lora$r" <<'PY'
import json, sys, math
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
train = [r for r in rows if "grad/norm" in r]
assert train and all(math.isfinite(r["grad/norm"]) for r in train), "non-finite gradient norms"
gaps = [r["rollout/logp_gap"] for r in train if "rollout/logp_gap" in r]
assert gaps and max(gaps) < 0.1, f"sampler/trainer log-prob gap {gaps} (a temperature mismatch gives ~0.3-1.5)"
print(sys.argv[1], "steps", len(train), "sft_fraction", [round(r.get("gate/sft_fraction", -1), 2) for r in train],
      "logp_gap", [f"{g:.1e}" for g in gaps], "eval", [round(r["eval/accuracy"], 3) for r in rows if "eval/accuracy" in r])
PY
done
