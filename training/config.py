"""The run configuration: one typed dataclass with per-field help; argparse is built from it.

    cfg = parse_args(["hpt", "--steps", "50"])      # preset name first, then --field-name value

Every field has an allowed range (``ALLOWED``, declared right after the fields, built from the
range types of :mod:`training.ranges`), and ranges that hold only when the run samples rollouts
(``ALLOWED_WHEN_SAMPLING``); ``parse_args`` checks them before any work starts and stops with one
line naming the flag, the value and the range. With ``--resume`` the run's saved config is taken,
changed only as :mod:`training.resume` allows. ``--config run.yaml`` gives any fields from a file
(:mod:`training.config_file`); flags given on the command line override it.
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, Optional, get_type_hints

import estimators

from . import config_file, custom, task
from .batching import group_layout
from .config_file import parse_bool as _parse_bool
from .config_file import scalar_type as _arg_type
from .profiles import PROFILES
from .ranges import (AT_LEAST_0, AT_LEAST_1, FLAG, FRACTION, POSITIVE, PROBABILITY, Between,
                     ConfigError, ExistingPath, Matches, ModelSource, OneOf, flag)
from .resume import resume_config, saved_config
from .trackers import ReportTo

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
    task: str = _f("arith", "built-in task variant (training/task.py): arith (demonstrations in the base's own style) | "
                            "arith-offpolicy (the paper's regime: demonstrations in another, longer style; a stronger "
                            "base; max_new_tokens 128 unless given)")
    train_data: str = _f("", "training rows (jsonl/json/parquet, OpenR1/verl format); empty = built-in task")
    eval_data: str = _f("", "held-out rows in the same format; empty = the built-in test split")
    dataset: str = _f("", "training table with mapped columns (--prompt-column, ...): a local jsonl/json/parquet/csv "
                          "file, a save_to_disk directory or a Hugging Face dataset name (offline: from the local cache); "
                          "instead of --train-data")
    dataset_config: str = _f("", "--dataset: the Hugging Face dataset's configuration (subset), e.g. main for openai/gsm8k; empty = its default")
    dataset_split: str = _f("train", "--dataset: the split trained on")
    eval_split: str = _f("", "--dataset: evaluate on this split of it, or on this file with the same columns; "
                             "empty = --eval-data or the built-in test split")
    prompt_column: str = _f("prompt", "--dataset: column of the prompt (text, or chat messages [{role, content}]); a.b = field b of column a")
    answer_column: str = _f("answer", "--dataset: column of the verifier's ground-truth answer")
    demo_column: str = _f("", "--dataset: column of the demonstration (text, or chat messages: the last assistant one); "
                              "needed by presets that train on demonstrations (sft, hpt, luffy, ...)")
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
    diagnostics_every: int = _f(1, "log live gradient diagnostics (grad/snr, grad/noise_scale, SFT vs RL cosine, "
                                   "realised prompt weights w(p)) every this many steps; 0 = off (training/diagnostics.py)")
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
                         "only --steps (more), --progress, --threads, --save-every, --keep-checkpoints, --report-to, "
                         "--tracker-project, --diagnostics-every may change)")
    threads: int = _f(0, "torch CPU threads (0 = chosen from the free cores: training/resources.py)")
    progress: bool = _f(True, "show a progress bar")
    report_to: str = _f("none", "also send the metrics to these trackers (comma list): none | tensorboard | "
                                "mlflow | wandb | trackio (offline/local without network; metrics.jsonl stays the record)")
    tracker_project: str = _f("upge", "project (W&B, trackio) or experiment (MLflow) name of --report-to")
    # scale (docs/scale.md)
    profile: str = _f("", "hyper-parameter profile (training/profiles.py), e.g. paper-qwen2.5-math-1.5b; explicit flags win")
    device: str = _f("auto", "auto (CUDA when available) | cpu | cuda | cuda:N; a GPU profile refuses to start without CUDA unless --device cpu")
    dtype: str = _f("float32", "forward precision: float32 | bfloat16 (autocast; parameters, gradients and AdamW state stay float32; log-probs float32) | float16 (no loss scaling)")
    attn_implementation: str = _f("auto", "attention kernel: auto (CUDA: FlashAttention 2 when flash_attn is installed, else sdpa; CPU: eager, bit-reproducible on resume) | sdpa | eager | flash_attention_2")
    gradient_checkpointing: bool = _f(False, "recompute decoder-layer activations in the backward pass (less activation memory, about a third more compute)")
    fsdp: bool = _f(False, "shard parameters, gradients and optimizer state over the ranks with FSDP2 (torch fully_shard); full-parameter GRPO-family/SFT/HPT runs under torchrun/accelerate")
    rollout_engine: str = _f("auto", "rollout engine: auto (fast for the embedded base model, else hf) | fast (static KV cache, batched decode loop: training.rollout.fast) | hf (model.generate) | vllm (training.rollout.vllm_engine)")
    tis_cap: float = _f(2.0, "truncated importance sampling cap when the engine returns behaviour log-probs")
    rollout_correction: str = _f("", "off-policy correction of rollouts whose sampler log-probs differ from the trainer's "
                                     "(TRL's vllm_importance_sampling_mode names): token_truncate (TIS) | token_mask (MIS) | "
                                     "sequence_truncate | sequence_mask | icepop (token mask, bounds [0.5, 5]) | none; "
                                     "empty = token_truncate with --rollout-engine vllm, none otherwise")
    tis_floor: float = _f(0.0, "lower bound C_min of the rollout correction's weight (TRL vllm_importance_sampling_clip_min); "
                               "the upper bound is --tis-cap")
    entropy_mask: Optional[float] = _f(None, "policy gradient only on the top-Q highest-entropy rollout tokens of each step "
                                             "(arXiv 2506.01939, TRL top_entropy_quantile; 1 = every token); default: the preset's")
    seed_per_prompt: bool = _f(False, "seed rollouts per prompt (always on with several processes, so 1 and N processes sample alike)")
    sft_coef: Optional[float] = _f(None, "HPT: SFT weight beta on prompts the gate sends to SFT; default: the preset's (1.0)")
    prompt_template: str = _f("chat", "chat (the tokenizer's chat template) | zero (official LLaMA Question/Answer prompt)")
    max_prompt_tokens: int = _f(0, "keep the last this many prompt tokens (0 = no limit)")
    rope_theta: Optional[float] = _f(None, "override the model config's rope_theta (Qwen2.5-Math: 40000)")
    max_position_embeddings: Optional[int] = _f(None, "override the model config's max_position_embeddings (Qwen2.5-Math: 16384)")
    # custom parts and publishing (docs/ecosystem.md)
    estimator: str = _f("", "module:object: train this estimators.Estimator/Hybrid (composed from "
                            "estimators.parts) instead of a preset; the run is named after the object")
    reward: str = _f("", "module:function reward, TRL's signature (completions, ground_truth, **kw) -> "
                         "list[float]; empty = the boxed-answer math reward")
    push_to_hub: str = _f("", "after the run, upload the last checkpoint's model (with its model card) "
                              "to this Hugging Face Hub repo (user/name); empty = do not push")

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
    "task": OneOf(tuple(task.VARIANTS)),
    "train_data": ExistingPath(),
    "eval_data": ExistingPath(),
    "dataset": Matches(r"(?s).*", "a file, directory or dataset name"),
    "dataset_config": Matches(r"[^\s/]*", "a configuration name"),
    "dataset_split": Matches(r"[\w.\-\[\]:%+]+", "a split name"),
    "eval_split": Matches(r"\S*", "a split name or a file"),
    "prompt_column": Matches(r"[^\s]+", "a column name"),
    "answer_column": Matches(r"[^\s]+", "a column name"),
    "demo_column": Matches(r"[^\s]*", "a column name"),
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
    "diagnostics_every": AT_LEAST_0,
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
    "report_to": ReportTo(),
    "tracker_project": Matches(r"[^/\\]+", "a plain name"),
    "profile": OneOf(("", *PROFILES)),
    "device": Matches(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N"),
    "dtype": OneOf(("float32", "bfloat16", "float16")),
    "fsdp": FLAG,
    "attn_implementation": OneOf(("auto", "sdpa", "eager", "flash_attention_2")),
    "gradient_checkpointing": FLAG,
    "rollout_engine": OneOf(("auto", "fast", "hf", "vllm")),
    "tis_cap": POSITIVE,
    "rollout_correction": OneOf(("", "none", *estimators.parts.ROLLOUT_CORRECTIONS)),
    "tis_floor": AT_LEAST_0,
    "entropy_mask": FRACTION,
    "seed_per_prompt": FLAG,
    "sft_coef": AT_LEAST_0,
    "prompt_template": OneOf(("chat", "zero")),
    "max_prompt_tokens": AT_LEAST_0,
    "rope_theta": POSITIVE,
    "max_position_embeddings": AT_LEAST_1,
    "estimator": Matches(r"|[\w.]+:[\w.]+", "module:object (e.g. my_methods:CLIPPED_GRPO)"),
    "reward": Matches(r"|[\w.]+:[\w.]+", "module:function (e.g. my_rewards:accuracy)"),
    "push_to_hub": Matches(r"|[\w.-]+/[\w.-]+", "a Hub repo id: user/name"),
}
# Ranges that differ when ``--estimator`` gives the estimator: the preset is then its name.
ALLOWED_WITH_ESTIMATOR: dict[str, Any] = {
    "preset": Matches(r"[A-Za-z_]\w*", "the estimator's name"),
}
# Stricter ranges for a run that samples rollouts (every preset but pure SFT).
ALLOWED_WHEN_SAMPLING: dict[str, Any] = {
    "temperature": POSITIVE,
}
SAMPLING_WHY = ("which samples rollouts (greedy rollouts of a group are identical: zero "
                "advantage, no gradient)")


def check(cfg: "RunConfig", origin: Optional[dict] = None) -> None:
    """Raise `ConfigError` for the first field outside its allowed range (``ALLOWED``, and
    ``ALLOWED_WHEN_SAMPLING`` when the preset samples rollouts); ``origin`` maps a field that
    came from a ``--config`` file to its "file:line", which the message names."""
    origin = origin or {}
    allowed_now = {**ALLOWED, **(ALLOWED_WITH_ESTIMATOR if cfg.estimator else {})}
    known = all(allowed_now[k].problem(getattr(cfg, k)) is None for k in ("preset", "estimator"))
    try:
        sampling = [(name, est) for name, est in stage_estimators(cfg) if _samples(est)] if known else []
    except ConfigError as e:  # an --estimator that does not load; from a file: its line
        raise ConfigError(f"{origin['estimator']}: {e}" if "estimator" in origin else str(e)) from None
    stricter = ALLOWED_WHEN_SAMPLING if sampling else {}
    for f in fields(cfg):
        value, allowed = getattr(cfg, f.name), stricter.get(f.name, allowed_now.get(f.name))
        problem = None if value is None or allowed is None else allowed.problem(value)
        if problem:
            why = f" for {cfg.preset}, {SAMPLING_WHY}" if f.name in stricter else ""
            where = f"{origin[f.name]}: {f.name}:" if f.name in origin else flag(f.name)
            raise ConfigError(f"{where} {value}: {problem}{why}")
    if cfg.tis_floor >= cfg.tis_cap:
        raise ConfigError(f"{flag('tis_floor')} {cfg.tis_floor}: must be below {flag('tis_cap')} {cfg.tis_cap}")
    check_data(cfg)
    if cfg.reward:
        custom.check_reward(cfg.reward)
    for stage, est in sampling:
        rollouts = group_layout(est, cfg.n).rollouts
        if rollouts < 1:
            raise ConfigError(f"{flag('n')} {cfg.n}: must be ≥ {cfg.n - rollouts + 1} for {stage} "
                              f"(it puts {cfg.n - rollouts} demonstration(s) in each group of n "
                              "rows and needs at least one rollout)")


def check_data(cfg: "RunConfig") -> None:
    """Flags of the data that only make sense together: one training source, a split of a
    --dataset to evaluate on, a demonstration column for presets that train on demonstrations."""
    if cfg.dataset and cfg.train_data:
        raise ConfigError(f"{flag('dataset')} and {flag('train_data')} both name training data: give one")
    if cfg.task != "arith" and (cfg.dataset or cfg.train_data):
        given = flag('dataset') if cfg.dataset else flag('train_data')
        raise ConfigError(f"{flag('task')} {cfg.task}: is a variant of the built-in task; {given} replaces it")
    if cfg.eval_split and not cfg.dataset:
        raise ConfigError(f"{flag('eval_split')} {cfg.eval_split}: is a split of {flag('dataset')}, which is not given")
    if cfg.eval_split and cfg.eval_data:
        raise ConfigError(f"{flag('eval_split')} and {flag('eval_data')} both name evaluation data: give one")
    known = ALLOWED["preset"].problem(cfg.preset) is None
    demos = [s for s in TWO_STAGE.get(cfg.preset, (cfg.preset,))
             if group_layout(estimators.get(s), max(cfg.n, 2)).demo] if known else []
    if cfg.dataset and not cfg.demo_column and demos:
        raise ConfigError(f"{flag('dataset')}: {cfg.preset} trains on demonstrations ({', '.join(demos)}); "
                          f"name their column with {flag('demo_column')}")


def sampling_stages(preset: str) -> list[str]:
    """The stages of ``preset`` that sample rollouts (pure SFT samples none, at any n)."""
    return [s for s in TWO_STAGE.get(preset, (preset,)) if _samples(estimators.get(s))]


def _samples(est) -> bool:
    return group_layout(est, 1 << 10).rollouts > 0


def stage_estimators(cfg: "RunConfig") -> list[tuple[str, Any]]:
    """(name, estimator) of each stage: ``--estimator``'s object (`training.custom`), or the
    preset's (two for a two-stage name such as ``sft_then_grpo``)."""
    if cfg.estimator:
        est = custom.load_estimator(cfg.estimator)
        return [(est.name, est)]
    return [(s, estimators.get(s)) for s in TWO_STAGE.get(cfg.preset, (cfg.preset,))]


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


def cli_parser() -> argparse.ArgumentParser:
    """`build_parser` and ``--config RUN_YAML`` (training.config_file), the command line of
    ``python -m training.run``."""
    p = build_parser()
    p.add_argument("--config", default=None, metavar="RUN_YAML",
                   help="YAML file of run-config fields (flags given here override it), or the name of "
                        "a shipped one: " + ", ".join(_shipped()))
    return p


def _shipped() -> list[str]:
    from . import configs

    return configs.names()


def parse_args(argv: Optional[list[str]] = None) -> RunConfig:
    """The run config of a command line, every field checked (``check``) before any work: a
    value outside its range stops here with one line naming the flag, the value and the range.
    With ``--resume`` the run's saved config, with the changes a resume may make."""
    parser = cli_parser()
    try:
        args = vars(parser.parse_args(argv))
        spec = args.pop("config")
        from_file, origin = config_file.read(spec, RunConfig) if spec else ({}, {})
        given = explicit_fields(argv)
        if from_file:  # the file's values are the defaults; flags given on the command line win
            defaults = dict(from_file)
            preset = defaults.pop("preset", None)  # checked with the rest (argparse would not name the file)
            parser.set_defaults(**defaults)
            args = vars(parser.parse_args(argv))
            args.pop("config")
            if preset is not None and "preset" not in given:
                args["preset"] = preset
        origin = {k: v for k, v in origin.items() if k not in given}
        explicit = given | set(from_file)
        cfg = RunConfig(**args)
        if cfg.estimator:  # the run trains the object, named after it
            if "preset" in explicit:
                raise ConfigError(f"{origin.get('preset', 'preset')} {cfg.preset!r} and --estimator "
                                  f"{cfg.estimator}: give one of them (--estimator replaces the preset)")
            cfg = replace(cfg, preset=custom.label(cfg.estimator))
        if cfg.resume:  # the command line as given (the directory must exist), then the saved config
            check(cfg, origin)
            return resume_config(cfg, saved_config(cfg.resume), explicit)[0]
        cfg = replace(cfg, **{k: v for k, v in task.get_variant(cfg.task).run_defaults
                              if k not in explicit} if cfg.task in task.VARIANTS else {})
        if cfg.profile:
            from .profiles import apply_profile

            cfg = apply_profile(cfg, explicit | ({"preset"} if cfg.estimator else set()))
            if cfg.gate:  # a profile's gate parameters apply only to a --gate that has them
                gate = estimators.parts.GATES.get(cfg.gate)
                params = {f.name for f in fields(gate)} if gate else set()
                cfg = replace(cfg, **{flag: None for flag, param in GATE_FLAGS.items()
                                      if flag not in explicit and param not in params})
        check(cfg, origin)
    except ConfigError as e:
        parser.exit(2, f"error: {e}\n")
    return cfg


def explicit_fields(argv: Optional[list[str]] = None) -> set:
    """Names of the fields given on the command line (a profile never overrides them)."""
    p = cli_parser()
    for a in p._actions:
        a.default = None if a.dest == "preset" else argparse.SUPPRESS
    return {k for k, v in vars(p.parse_args(argv)).items()
            if not (k == "preset" and v is None) and k != "config"}
