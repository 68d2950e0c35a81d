"""The paper's recipes as hyper-parameter profiles (paper-notes §2.2 and §3; official scripts
``exp_scripts/train.sh`` and ``train_llama.sh`` of the HPT repository).

    python -m training.run hpt --profile paper-qwen2.5-math-1.5b     # explicit flags still win

A profile sets `RunConfig` fields. `apply_profile` prints every value that differs from the
paper's *text*, with the reason (almost always: the official code, which produced the tables,
differs from the text), and refuses to start a GPU profile without CUDA unless ``--device cpu``.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from .machine import DeviceError, resolve_device


@dataclass(frozen=True)
class Difference:
    what: str
    ours: str
    paper: str
    reason: str

    def line(self) -> str:
        return f"{self.what}: {self.ours} (paper text: {self.paper}) — {self.reason}"


# Shared by the three official runs (train.sh / train_llama.sh + mix_ppo_trainer.yaml).
_COMMON = dict(
    preset="hpt", n=8, temperature=1.0, top_p=1.0,
    lr=5e-6, schedule="constant", warmup_steps=0, weight_decay=0.01,
    prompts_per_step=128, mini_batches=2, epochs=1,
    entropy_coef=0.001, kl_coef=0.0, grad_clip=1.0,
    max_new_tokens=8192, max_prompt_tokens=1024,
    steps=500, eval_every=10, save_every=50, eval_k=8, eval_temperature=0.6, eval_top_p=1.0,
    micro_batch=8, seed=47, rollout_engine="vllm", device="cuda", lora_r=0, sft_coef=1.0,
)
_QWEN = dict(_COMMON, gate_gamma=0, max_grad_norm=80.0, rope_theta=40000.0,
             max_position_embeddings=16384, prompt_template="chat")
_LLAMA = dict(_COMMON, gate_gamma=2, max_grad_norm=float("inf"), prompt_template="zero")

PROFILES: dict[str, dict] = {
    "paper-qwen2.5-math-1.5b": dict(_QWEN, model="Qwen/Qwen2.5-Math-1.5B"),
    "paper-qwen2.5-math-7b": dict(_QWEN, model="Qwen/Qwen2.5-Math-7B"),
    "paper-llama-3.1-8b": dict(_LLAMA, model="meta-llama/Llama-3.1-8B"),
}
GPU_PROFILES = set(PROFILES)

# Every profile: the official code where it differs from the paper's text (paper-notes §2.3).
_DIFFERENCES = [
    Difference("advantage", "R − mean(R), no std", "(R − mean)/std (Eq. 11)",
               "official code grpo_use_std=False (preset hpt; hpt_paper is the text)"),
    Difference("clip", "none", "min(r·A, clip(r, 1±ε)·A) (Eq. 11)",
               "official code loss_remove_clip=True (clip_ratio 0.2 unused)"),
    Difference("RL aggregation", "Σ tokens / (8192·8)", "(1/n) Σ_i Σ_t (Eq. 11)",
               "official code loss_remove_token_mean=True: / max_response_length per rank, 8 ranks"),
    Difference("SFT aggregation", "token mean over the step's demo tokens", "per-demo token mean (Eq. 12)",
               "official code pools per micro-batch; we pool per step (partition-invariant)"),
    Difference("entropy_coef", "0.001", "no entropy term", "official code actor.entropy_coeff=0.001"),
    Difference("grad_clip", "1.0", "not stated", "official code actor.grad_clip=1.0"),
    Difference("mini_batches", "2 per step, whole groups", "not stated",
               "official ppo_mini_batch_size=64 prompts of 128: 2 optimizer steps when every prompt "
               "is RL; the official count is ceil(rows/512), so 1 when many prompts go to SFT"),
    Difference("micro_batch", "8 rows", "not stated",
               "official dynamic 32768 tokens/GPU; never changes the gradient here"),
    Difference("eval_top_p", "1.0", "0.95 (val_top_p)", "official mix rollout never applies val_top_p"),
    Difference("seed", "47", "not stated", "official ResumableRandomSampler seed 47 (data order)"),
]
_QWEN_DIFFERENCES = [
    Difference("max_grad_norm", "80 (skip the step above)", "not stated", "official Qwen scripts"),
    Difference("rope_theta / max_position_embeddings", "40000 / 16384", "not stated",
               "script comment: 'Following LUFFY, rope_theta should be reset to 40000 and "
               "max_position_embeddings to 16384' (UNVERIFIED for 1.5B; applied to both)"),
]
_LLAMA_DIFFERENCES = [
    Difference("prompt_template", "zero (Question:/Answer: prompt)", "not stated",
               "official train_llama.sh data.zero=True"),
    Difference("gate_gamma", "2 of 8", "γ = 2/8 (§3.1)", "same value; a count out of n in the code"),
]
_EXTRA = {
    "paper-qwen2.5-math-1.5b": _QWEN_DIFFERENCES + [
        Difference("sft_coef", "1.0", "β = 1 (Eq. 10)",
                   "we follow the paper; the official script comment says 'sft_loss_coef 0.3 for "
                   "Qwen2.5-Math-1.5B' (UNVERIFIED which one produced Table 3): pass --sft-coef 0.3"),
    ],
    "paper-qwen2.5-math-7b": _QWEN_DIFFERENCES,
    "paper-llama-3.1-8b": _LLAMA_DIFFERENCES,
}


def differences(name: str) -> list[Difference]:
    return _DIFFERENCES + _EXTRA[name]


def profile_values(name: str) -> dict:
    if name not in PROFILES:
        raise SystemExit(f"--profile: unknown profile {name!r}; one of {sorted(PROFILES)}")
    return dict(PROFILES[name])


def apply_profile(cfg, explicit: set = frozenset(), cuda_available=None, out=sys.stderr):
    """``cfg`` with the profile's values for every field not given explicitly; prints the
    values, then the differences from the paper text; refuses a GPU profile without CUDA."""
    values = {k: v for k, v in profile_values(cfg.profile).items() if k not in explicit}
    cfg = dataclasses.replace(cfg, **values)
    print(f"profile {cfg.profile}:", file=out)
    for k in sorted(PROFILES[cfg.profile]):
        note = " (given on the command line)" if k in explicit else ""
        print(f"  {k} = {getattr(cfg, k)!r}{note}", file=out)
    print(f"profile {cfg.profile}: differences from the paper text:", file=out)
    for d in differences(cfg.profile):
        print(f"  {d.line()}", file=out)
    check_device(cfg, cuda_available)
    return cfg


def check_device(cfg, cuda_available=None) -> None:
    """A GPU profile needs CUDA unless the user forces ``--device cpu``."""
    if cfg.profile not in GPU_PROFILES:
        return
    try:
        resolve_device("cpu" if cfg.device == "cpu" else "cuda", cuda_available=cuda_available)
    except DeviceError:
        raise SystemExit(
            f"profile {cfg.profile} needs a CUDA GPU (found none); pass --device cpu to force a "
            f"CPU run{' and --rollout-engine hf' if cfg.rollout_engine == 'vllm' else ''}") from None
