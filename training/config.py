"""The run configuration: one typed dataclass with per-field help; argparse is built from it.

    cfg = parse_args(["hpt", "--steps", "50"])      # preset name first, then --field-name value

Every field has an allowed range (``ALLOWED``, declared right after the fields, built from the
range types of :mod:`training.ranges`), and ranges that hold only when the run samples rollouts
(``ALLOWED_WHEN_SAMPLING``); ``parse_args`` checks them before any work starts and stops with one
line naming the flag, the value and the range. With ``--resume`` the run's saved config is taken,
changed only as :mod:`training.resume` allows.
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, Optional, get_type_hints

import estimators

from .batching import group_layout
from .profiles import PROFILES
from .ranges import (AT_LEAST_0, AT_LEAST_1, FLAG, FRACTION, POSITIVE, PROBABILITY, Between,
                     ConfigError, ExistingPath, Matches, ModelSource, OneOf, flag)
from .resume import resume_config, saved_config

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
    gate: str = _f("", "gate of a gated preset (hpt, hpt_paper, luffy): switch | linear | power | always; empty = the preset's")
    gate_gamma: Optional[int] = _f(None, "switch gate: SFT when <= gamma of n rollouts are correct")
    gate_k: Optional[float] = _f(None, "power gate: beta*(1-P)^k (k = n is the smooth switch); default 8")
    gate_alpha: Optional[float] = _f(None, "always gate: the RL weight alpha on every prompt; default 1")
    stage_split: float = _f(0.5, "sft_then_grpo: fraction of the steps spent on SFT")
    dynamic_sampling_rounds: int = _f(4, "DAPO: extra sampling rounds to refill dropped groups")
    value_coef: float = _f(0.5, "PPO: weight of the critic's squared-error loss")
    # evaluation, records
    eval_every: int = _f(40, "evaluate on the held-out split every this many steps (0 = only at start/end)")
    eval_k: int = _f(4, "samples per held-out problem (avg@k, pass@1..k)")
    eval_temperature: float = _f(0.6, "evaluation sampling temperature")
    eval_top_p: float = _f(1.0, "evaluation top-p")
    save_every: int = _f(10, "checkpoint every this many steps (and at the end; the embedded default: ~1 min of work)")
    keep_checkpoints: int = _f(2, "how many most recent checkpoints to keep (>= 2: resume falls back to the previous one when the latest is corrupt)")
    verifier_timeout: float = _f(2.0, "hard time limit (s) of one math-verify check")
    seed: int = _f(0, "seed of data order, sampling and initialisation")
    runs_dir: str = _f("runs", "where run directories are created")
    run_id: str = _f("", "run directory name; empty = <preset>-s<seed>-<time>")
    resume: str = _f("", "resume the run in this directory from its last intact checkpoint (its config; "
                         "only --steps (more), --progress, --threads, --save-every, --keep-checkpoints may change)")
    threads: int = _f(0, "torch CPU threads (0 = chosen from the free cores: training/resources.py)")
    progress: bool = _f(True, "show a progress bar")
    # scale (docs/scale.md)
    profile: str = _f("", "hyper-parameter profile (training/profiles.py), e.g. paper-qwen2.5-math-1.5b; explicit flags win")
    device: str = _f("auto", "auto (CUDA when available) | cpu | cuda | cuda:N; a GPU profile refuses to start without CUDA unless --device cpu")
    dtype: str = _f("float32", "forward precision: float32 | bfloat16 (autocast; parameters, gradients and AdamW state stay float32; log-probs float32) | float16 (no loss scaling)")
    attn_implementation: str = _f("auto", "attention kernel: auto (CUDA: FlashAttention 2 when flash_attn is installed, else sdpa; CPU: eager, bit-reproducible on resume) | sdpa | eager | flash_attention_2")
    gradient_checkpointing: bool = _f(False, "recompute decoder-layer activations in the backward pass (less activation memory, about a third more compute)")
    fsdp: bool = _f(False, "shard parameters, gradients and optimizer state over the ranks with FSDP2 (torch fully_shard); full-parameter GRPO-family/SFT/HPT runs under torchrun/accelerate")
    rollout_engine: str = _f("auto", "rollout engine: auto (fast for the embedded base model, else hf) | fast (static KV cache, batched decode loop: training.rollout.fast) | hf (model.generate) | vllm (training.rollout.vllm_engine)")
    tis_cap: float = _f(2.0, "truncated importance sampling cap when the engine returns behaviour log-probs")
    seed_per_prompt: bool = _f(False, "seed rollouts per prompt (always on with several processes, so 1 and N processes sample alike)")
    sft_coef: Optional[float] = _f(None, "HPT: SFT weight beta on prompts the gate sends to SFT; default: the preset's (1.0)")
    prompt_template: str = _f("chat", "chat (the tokenizer's chat template) | zero (official LLaMA Question/Answer prompt)")
    max_prompt_tokens: int = _f(0, "keep the last this many prompt tokens (0 = no limit)")
    rope_theta: Optional[float] = _f(None, "override the model config's rope_theta (Qwen2.5-Math: 40000)")
    max_position_embeddings: Optional[int] = _f(None, "override the model config's max_position_embeddings (Qwen2.5-Math: 16384)")

    def resolved(self) -> dict:
        return asdict(self)


# gate flag → the gate parameter it sets (`estimators.parts.GATES`); every gate has beta
GATE_FLAGS = {"gate_gamma": "gamma", "gate_k": "k", "gate_alpha": "alpha", "sft_coef": "beta"}


def with_gate(est, cfg: RunConfig):
    """``est`` with ``--gate`` (or its own gate) and the gate flags given; a flag the gate has no
    parameter for, or ``--gate`` on a preset without a gate, is an error naming the flag."""
    gates = estimators.parts.GATES
    if cfg.gate and cfg.gate not in gates:
        raise SystemExit(f"--gate must be one of {', '.join(gates)}, got {cfg.gate!r}")
    given = {flag: getattr(cfg, flag) for flag in GATE_FLAGS if getattr(cfg, flag) is not None}
    found = []

    def gate(slot: str, part):
        if slot != "gate":
            return part
        new = gates[cfg.gate]() if cfg.gate else part
        params = {f.name for f in fields(new)}
        for flag in given:
            if GATE_FLAGS[flag] not in params:
                raise SystemExit(f"--{flag.replace('_', '-')} does nothing for the {type(new).__name__} gate "
                                 f"(its parameters: {', '.join(sorted(params))}); drop it or choose another --gate")
        found.append(new)
        return replace(new, **{GATE_FLAGS[flag]: v for flag, v in given.items()})

    out = est.map_parts(gate) if cfg.gate or given else est
    if cfg.gate and not found:
        gated = sorted(n for n, e in estimators.PRESETS.items() if isinstance(e, estimators.Hybrid))
        raise SystemExit(f"--gate {cfg.gate}: preset {cfg.preset!r} has no gate (gated presets: {', '.join(gated)})")
    return out


def preset_names() -> list[str]:
    return sorted(estimators.PRESETS) + sorted(TWO_STAGE)


# ------------------------------------------------------------------------- allowed values
# The range types are `training.ranges`; a resumed run's config is `training.resume`.

# Every field's allowed values (``None`` — the preset's own value — is always allowed).
ALLOWED: dict[str, Any] = {
    "preset": OneOf(tuple(preset_names())),
    "model": ModelSource(),
    "rebuild_base": FLAG,
    "train_data": ExistingPath(),
    "eval_data": ExistingPath(),
    "lora_r": AT_LEAST_0,
    "lora_alpha": POSITIVE,
    "steps": AT_LEAST_1,
    "prompts_per_step": AT_LEAST_1,
    "n": AT_LEAST_1,
    "temperature": AT_LEAST_0,
    "top_p": PROBABILITY,
    "max_new_tokens": AT_LEAST_1,
    "lr": POSITIVE,
    "schedule": OneOf(("constant", "cosine", "linear")),
    "warmup_steps": AT_LEAST_0,
    "weight_decay": AT_LEAST_0,
    "grad_clip": POSITIVE,
    "max_grad_norm": Between(0, lo_open=True, inf=True),
    "max_bad_steps": AT_LEAST_1,
    "micro_batch": AT_LEAST_1,
    "mini_batches": AT_LEAST_1,
    "epochs": AT_LEAST_1,
    "entropy_coef": Between(),
    "kl_coef": AT_LEAST_0,
    "gate": OneOf(("", *estimators.parts.GATES)),
    "gate_gamma": AT_LEAST_0,
    "gate_k": POSITIVE,
    "gate_alpha": AT_LEAST_0,
    "stage_split": FRACTION,
    "dynamic_sampling_rounds": AT_LEAST_0,
    "value_coef": AT_LEAST_0,
    "eval_every": AT_LEAST_0,
    "eval_k": AT_LEAST_1,
    "eval_temperature": AT_LEAST_0,
    "eval_top_p": PROBABILITY,
    "save_every": AT_LEAST_0,
    "keep_checkpoints": AT_LEAST_1,
    "verifier_timeout": POSITIVE,
    "seed": Between(0, 2 ** 32 - 1),
    "runs_dir": Matches(r"(?s).+", "a directory"),
    "run_id": Matches(r"[^/\\]*", "a plain name (no path separators)"),
    "resume": ExistingPath(dir_only=True),
    "threads": AT_LEAST_0,
    "progress": FLAG,
    "profile": OneOf(("", *PROFILES)),
    "device": Matches(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N"),
    "dtype": OneOf(("float32", "bfloat16", "float16")),
    "fsdp": FLAG,
    "attn_implementation": OneOf(("auto", "sdpa", "eager", "flash_attention_2")),
    "gradient_checkpointing": FLAG,
    "rollout_engine": OneOf(("auto", "fast", "hf", "vllm")),
    "tis_cap": POSITIVE,
    "seed_per_prompt": FLAG,
    "sft_coef": AT_LEAST_0,
    "prompt_template": OneOf(("chat", "zero")),
    "max_prompt_tokens": AT_LEAST_0,
    "rope_theta": POSITIVE,
    "max_position_embeddings": AT_LEAST_1,
}
# Stricter ranges for a run that samples rollouts (every preset but pure SFT).
ALLOWED_WHEN_SAMPLING: dict[str, Any] = {
    "temperature": POSITIVE,
}
SAMPLING_WHY = ("which samples rollouts (greedy rollouts of a group are identical: zero "
                "advantage, no gradient)")


def check(cfg: "RunConfig") -> None:
    """Raise `ConfigError` for the first field outside its allowed range (``ALLOWED``, and
    ``ALLOWED_WHEN_SAMPLING`` when the preset samples rollouts)."""
    known = ALLOWED["preset"].problem(cfg.preset) is None
    stricter = ALLOWED_WHEN_SAMPLING if known and sampling_stages(cfg.preset) else {}
    for f in fields(cfg):
        value, allowed = getattr(cfg, f.name), stricter.get(f.name, ALLOWED.get(f.name))
        problem = None if value is None or allowed is None else allowed.problem(value)
        if problem:
            why = f" for {cfg.preset}, {SAMPLING_WHY}" if f.name in stricter else ""
            raise ConfigError(f"{flag(f.name)} {value}: {problem}{why}")
    for stage in sampling_stages(cfg.preset):
        rollouts = group_layout(estimators.get(stage), cfg.n).rollouts
        if rollouts < 1:
            raise ConfigError(f"{flag('n')} {cfg.n}: must be ≥ {cfg.n - rollouts + 1} for {stage} "
                              f"(it puts {cfg.n - rollouts} demonstration(s) in each group of n "
                              "rows and needs at least one rollout)")


def sampling_stages(preset: str) -> list[str]:
    """The stages of ``preset`` that sample rollouts (pure SFT samples none, at any n)."""
    many = 1 << 10
    return [s for s in TWO_STAGE.get(preset, (preset,))
            if group_layout(estimators.get(s), many).rollouts > 0]


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
    """The run config of a command line, every field checked (``check``) before any work: a
    value outside its range stops here with one line naming the flag, the value and the range.
    With ``--resume`` the run's saved config, with the changes a resume may make."""
    parser = build_parser()
    cfg = RunConfig(**vars(parser.parse_args(argv)))
    try:
        if cfg.resume:  # the command line as given (the directory must exist), then the saved config
            check(cfg)
            return resume_config(cfg, saved_config(cfg.resume), explicit_fields(argv))[0]
        if cfg.profile:
            from .profiles import apply_profile

            explicit = explicit_fields(argv)
            cfg = apply_profile(cfg, explicit)
            if cfg.gate:  # a profile's gate parameters apply only to a --gate that has them
                gate = estimators.parts.GATES.get(cfg.gate)
                params = {f.name for f in fields(gate)} if gate else set()
                cfg = replace(cfg, **{flag: None for flag, param in GATE_FLAGS.items()
                                      if flag not in explicit and param not in params})
        check(cfg)
    except ConfigError as e:
        parser.exit(2, f"error: {e}\n")
    return cfg


def explicit_fields(argv: Optional[list[str]] = None) -> set:
    """Names of the fields given on the command line (a profile never overrides them)."""
    p = build_parser()
    for a in p._actions:
        a.default = None if a.dest == "preset" else argparse.SUPPRESS
    return {k for k, v in vars(p.parse_args(argv)).items() if not (k == "preset" and v is None)}
