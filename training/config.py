"""The run configuration: one typed dataclass with per-field help; argparse is built from it.

    cfg = parse_args(["hpt", "--steps", "50"])      # preset name first, then --field-name value
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Optional, get_type_hints

import estimators

TWO_STAGE = {"sft_then_grpo": ("sft", "grpo")}


def _f(default, help: str, aliases: tuple = ()):
    return field(default=default, metadata={"help": help, "aliases": aliases})


@dataclass
class RunConfig:
    """Everything a run depends on. ``None`` means "the preset's own value"."""

    preset: str = _f("hpt", "estimator preset (see the list above)")
    # model and data
    model: str = _f("", "local path of an HF causal LM; empty = the embedded tiny base model")
    rebuild_base: bool = _f(False, "rebuild the embedded base model even if it is cached")
    train_data: str = _f("", "training rows (jsonl/json/parquet, OpenR1/verl format); empty = built-in task")
    eval_data: str = _f("", "held-out rows in the same format; empty = the built-in test split")
    lora_r: int = _f(0, "LoRA rank (peft); 0 = full-parameter training")
    lora_alpha: int = _f(16, "LoRA alpha")
    # sampling
    steps: int = _f(120, "training steps (optimizer updates of the policy per step: mini_batches x epochs)")
    prompts_per_step: int = _f(16, "prompts per step")
    n: int = _f(8, "rows per prompt: rollouts, or rollouts + 1 demonstration for LUFFY/SRFT "
                   "(under torchrun use --num-generations: torchrun's parser takes --n for a prefix "
                   "of its own options)", aliases=("--num-generations",))
    temperature: float = _f(1.0, "rollout sampling temperature")
    top_p: float = _f(1.0, "rollout nucleus sampling top-p")
    max_new_tokens: int = _f(48, "maximum response length (also sets Dr. GRPO/HPT constant normalisers)")
    # optimisation
    lr: float = _f(3e-4, "peak learning rate (AdamW)")
    schedule: str = _f("constant", "learning-rate schedule: constant | cosine | linear")
    warmup_steps: int = _f(5, "linear warm-up steps (a fresh AdamW's first updates are ±lr on every parameter)")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    grad_clip: float = _f(1.0, "clip the gradient norm to this value")
    max_grad_norm: float = _f(80.0, "skip the optimizer step when the pre-clip norm exceeds this (or is not finite)")
    max_bad_steps: int = _f(3, "stop the run after this many consecutive non-finite losses")
    micro_batch: int = _f(64, "rows per forward/backward (gradient accumulation; never changes the gradient)")
    mini_batches: int = _f(1, "optimizer steps per epoch over the step's batch (whole groups)")
    epochs: Optional[int] = _f(None, "passes over each batch (PPO sample reuse); default: the preset's")
    entropy_coef: Optional[float] = _f(None, "entropy bonus coefficient; default: the preset's")
    kl_coef: float = _f(0.0, "KL(pi || pi_init) coefficient (k3); 0 = no reference model")
    gate_gamma: Optional[int] = _f(None, "HPT switch gate: SFT when <= gamma of n rollouts are correct")
    stage_split: float = _f(0.5, "sft_then_grpo: fraction of the steps spent on SFT")
    dynamic_sampling_rounds: int = _f(4, "DAPO: extra sampling rounds to refill dropped groups")
    value_coef: float = _f(0.5, "PPO: weight of the critic's squared-error loss")
    # evaluation, records
    eval_every: int = _f(40, "evaluate on the held-out split every this many steps (0 = only at start/end)")
    eval_k: int = _f(4, "samples per held-out problem (avg@k, pass@1..k)")
    eval_temperature: float = _f(0.6, "evaluation sampling temperature")
    eval_top_p: float = _f(1.0, "evaluation top-p")
    save_every: int = _f(40, "checkpoint every this many steps (and at the end)")
    keep_checkpoints: int = _f(2, "how many most recent checkpoints to keep")
    verifier_timeout: float = _f(2.0, "hard time limit (s) of one math-verify check")
    seed: int = _f(0, "seed of data order, sampling and initialisation")
    runs_dir: str = _f("runs", "where run directories are created")
    run_id: str = _f("", "run directory name; empty = <preset>-s<seed>-<time>")
    resume: str = _f("", "resume the run in this directory from its last checkpoint")
    threads: int = _f(0, "torch CPU threads (0 = torch's default)")
    progress: bool = _f(True, "show a progress bar")
    # scale (docs/scale.md)
    profile: str = _f("", "hyper-parameter profile (training/profiles.py), e.g. paper-qwen2.5-math-1.5b; explicit flags win")
    device: str = _f("auto", "auto (CUDA when available) | cpu | cuda | cuda:N; a GPU profile refuses to start without CUDA unless --device cpu")
    dtype: str = _f("float32", "forward precision: float32 | bfloat16 (autocast; parameters, gradients and AdamW state stay float32; log-probs float32) | float16 (no loss scaling)")
    attn_implementation: str = _f("auto", "attention kernel: auto (CUDA: FlashAttention 2 when flash_attn is installed, else sdpa; CPU: eager, bit-reproducible on resume) | sdpa | eager | flash_attention_2")
    gradient_checkpointing: bool = _f(False, "recompute decoder-layer activations in the backward pass (less activation memory, about a third more compute)")
    fsdp: bool = _f(False, "shard parameters, gradients and optimizer state over the ranks with FSDP2 (torch fully_shard); full-parameter GRPO-family/SFT/HPT runs under torchrun/accelerate")
    rollout_engine: str = _f("hf", "rollout engine: hf (model.generate) | vllm (training.vllm_sampler)")
    tis_cap: float = _f(2.0, "truncated importance sampling cap when the engine returns behaviour log-probs")
    seed_per_prompt: bool = _f(False, "seed rollouts per prompt (always on with several processes, so 1 and N processes sample alike)")
    sft_coef: Optional[float] = _f(None, "HPT: SFT weight beta on prompts the gate sends to SFT; default: the preset's (1.0)")
    prompt_template: str = _f("chat", "chat (the tokenizer's chat template) | zero (official LLaMA Question/Answer prompt)")
    max_prompt_tokens: int = _f(0, "keep the last this many prompt tokens (0 = no limit)")
    rope_theta: Optional[float] = _f(None, "override the model config's rope_theta (Qwen2.5-Math: 40000)")
    max_position_embeddings: Optional[int] = _f(None, "override the model config's max_position_embeddings (Qwen2.5-Math: 16384)")

    def resolved(self) -> dict:
        return asdict(self)


def preset_names() -> list[str]:
    return sorted(estimators.PRESETS) + sorted(TWO_STAGE)


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _arg_type(hint):
    """The scalar type of a field annotation (``Optional[int]`` → int)."""
    args = getattr(hint, "__args__", None)
    return next(a for a in args if a is not type(None)) if args else hint


def build_parser() -> argparse.ArgumentParser:
    """argparse built from `RunConfig`'s fields: ``--field-name``, with type, default and help."""
    p = argparse.ArgumentParser(
        prog="python -m training.run",
        description="Post-train a causal LM with one preset of the unified estimator. "
                    f"Presets: {', '.join(preset_names())}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("preset", nargs="?", default="hpt", choices=preset_names(), metavar="PRESET",
                   help=f"one of: {', '.join(preset_names())}")
    hints = get_type_hints(RunConfig)
    for f in fields(RunConfig):
        if f.name == "preset":
            continue
        t = _arg_type(hints[f.name])
        kw = {"type": _parse_bool if t is bool else t, "help": f.metadata["help"],
              "default": f.default if f.default is not MISSING else None}
        if t is bool:
            kw["nargs"] = "?"
            kw["const"] = True
        p.add_argument("--" + f.name.replace("_", "-"), *f.metadata["aliases"], dest=f.name, **kw)
    return p


def parse_args(argv: Optional[list[str]] = None) -> RunConfig:
    cfg = RunConfig(**vars(build_parser().parse_args(argv)))
    if cfg.profile:
        from .profiles import apply_profile

        cfg = apply_profile(cfg, explicit_fields(argv))
    return cfg


def explicit_fields(argv: Optional[list[str]] = None) -> set:
    """Names of the fields given on the command line (a profile never overrides them)."""
    p = build_parser()
    for a in p._actions:
        a.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))
