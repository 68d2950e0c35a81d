"""The policy side of a batch: per-token log-probs, entropies and critic values of
prompt + response token ids, for any HF causal LM (full-parameter or LoRA via peft).

Layout of a packed batch (the same as ``generate``'s): prompts left-padded to a common width P,
responses right-padded to width T, so response token t of every row sits at column P + t and is
predicted by the logits at column P + t − 1.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from .base import position_ids
from .logprobs import CHUNK_BYTES, token_logp_entropy

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Packed:
    """Token ids of B prompt+response rows; ``mask`` [B, T] marks real response tokens."""

    ids: Tensor
    attention: Tensor
    positions: Tensor
    mask: Tensor
    prompt_width: int

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def to(self, device) -> "Packed":
        return Packed(self.ids.to(device), self.attention.to(device), self.positions.to(device),
                      self.mask.to(device), self.prompt_width)


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int,
         width: Optional[int] = None) -> Packed:
    """Left-pad prompts, right-pad responses (to ``width`` if given, else the longest)."""
    P = max(map(len, prompts))
    T = width if width is not None else max(1, max(map(len, responses)))
    B = len(prompts)
    ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    att = torch.zeros((B, P + T), dtype=torch.long)
    mask = torch.zeros((B, T))
    for i, (p, r) in enumerate(zip(prompts, responses)):
        r = r[:T]
        ids[i, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        att[i, P - len(p):P + len(r)] = 1
        if r:
            ids[i, P:P + len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, :len(r)] = 1.0
    return Packed(ids, att, position_ids(att), mask, P)


@dataclass
class Scored:
    """logp, entropy [B, T] (masked to 0 off the response), values [B, T] or None and
    sum_pi_squared [B, T] (Σ_v π(v)², no gradient) or None."""

    logp: Tensor
    entropy: Tensor
    values: Optional[Tensor] = None
    sum_pi_squared: Optional[Tensor] = None


class ValueHead(nn.Module):
    """PPO's critic V(s_t): a small MLP on the policy's *detached* last hidden states (a critic
    that shares the policy's features without pushing gradients into them)."""

    def __init__(self, hidden: int, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, width), nn.Tanh(), nn.Linear(width, 1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.net(hidden.detach()).squeeze(-1)


def score(model, packed: Packed, value_head: Optional[ValueHead] = None,
          temperature: float = 1.0, chunk_bytes: int = CHUNK_BYTES, sum_pi_squared: bool = False) -> Scored:
    """Log-probs and entropies of the response tokens under the *sampled* distribution
    softmax(logits / ``temperature``) — the one the rollout engine drew them from (HF
    ``generate`` and vLLM divide the logits by the temperature before sampling; so does TRL
    before its log-softmax), so π_θold, π_θ and the engine's log-probs are one distribution.
    Differentiable when grad is enabled; float32 whatever the model's dtype or autocast.

    The output layer is never applied to the whole sequence: a hook takes the last hidden
    states at its input, lets the layer run on zero positions, and `token_logp_entropy` scores
    the response tokens in chunks (no [B, T, V] tensor; see ``training.logprobs``)."""
    P, T = packed.prompt_width, packed.width
    head = model.get_output_embeddings()
    _check_plain_head(model)
    got = {}

    def take_hidden(module, args):
        got["hidden"] = args[0]
        return (args[0][:, :0],) + tuple(args[1:])  # the head runs on no position

    def head_logprobs(module, args, output):  # inside the forward: FSDP has the head gathered
        hidden = got["hidden"][:, :T]  # the last T+1 columns; column P+t-1 predicts token t
        got["hidden"] = hidden
        got["out"] = token_logp_entropy(hidden, module.weight, module.bias,
                                        packed.ids[:, P:P + T], packed.mask, temperature,
                                        chunk_bytes, sum_pi_squared)

    hooks = [head.register_forward_pre_hook(take_hidden), head.register_forward_hook(head_logprobs)]
    try:
        model(input_ids=packed.ids, attention_mask=packed.attention, position_ids=packed.positions,
              use_cache=False, logits_to_keep=T + 1)
    finally:
        for h in hooks:
            h.remove()
    logp, entropy, *sq = got["out"]
    values = None
    if value_head is not None:
        values = value_head(got["hidden"].float()) * packed.mask
    return Scored(logp, entropy, values, sq[0] if sq else None)


# config fields that transform the logits after the output layer (not modelled by `score`)
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier",
                     "lm_head_multiplier", "logits_scaling")


def _check_plain_head(model) -> None:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    used = [k for k in _LOGIT_TRANSFORMS if getattr(cfg, k, None) not in (None, 1, 1.0)]
    if used:
        raise ValueError(f"{type(model).__name__}: training.policy.score does not apply the "
                         f"config's {used} to the logits; such models are not supported yet")


ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2")


def attention_implementation(name: str = "auto") -> str:
    """``--attn-implementation``: auto → on CUDA, FlashAttention 2 when ``flash_attn`` is
    installed, else torch's scaled-dot-product attention (SDPA; no [B, heads, T, T] weights);
    on the CPU eager attention, because torch's CPU SDPA kernel is not bit-reproducible across
    processes in ``generate`` (a resumed run's sampled-token log-probs moved by ~1e-9, so it
    would no longer replay the uninterrupted run exactly); or one of them by name."""
    if name not in ATTENTION:
        raise ValueError(f"--attn-implementation must be one of {ATTENTION}, got {name!r}")
    if name != "auto":
        return name
    import importlib.util

    if not torch.cuda.is_available():
        return "eager"
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") is not None else "sdpa"


def enable_gradient_checkpointing(model) -> None:
    """Recompute every decoder layer's activations in the backward pass (non-reentrant
    ``torch.utils.checkpoint``): activation memory of one layer instead of all of them."""
    kw = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers ≥ 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)


def load_model(path: str, lora_r: int = 0, lora_alpha: int = 16, lora_dropout: float = 0.0,
               dtype: str = "float32", attn_implementation: str = "auto",
               gradient_checkpointing: bool = False):
    """An HF causal LM from a local path (offline), full-parameter or wrapped with a LoRA adapter
    on every attention/MLP projection (peft). ``dtype`` is the parameters' storage dtype:
    training keeps float32 master weights and gets bfloat16 compute from
    ``training.precision.autocast_forward``; log-probs are always float32.
    ``attn_implementation``: see `attention_implementation`. ``gradient_checkpointing``:
    recompute each decoder layer's activations in the backward pass (non-reentrant)."""
    from transformers import AutoModelForCausalLM

    from .precision import compute_dtype

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=compute_dtype(dtype),
        attn_implementation=attention_implementation(attn_implementation))
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if lora_r > 0:
        from peft import LoraConfig, get_peft_model

        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        targets = [t for t in LORA_TARGETS if t in names] or "all-linear"
        model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=lora_alpha,
                                                 lora_dropout=lora_dropout, target_modules=targets,
                                                 task_type="CAUSAL_LM"))
    return model


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


@dataclass
class Reference:
    """The initial policy π_ref for a KL term: LoRA → the base with the adapter disabled (no copy);
    full-parameter → a frozen copy made at construction. Scored at the rollout ``temperature``
    like the policy (TRL's reference log-probs are too)."""

    model: object
    lora: bool
    temperature: float = 1.0

    @classmethod
    def of(cls, model, lora: bool, temperature: float = 1.0) -> "Reference":
        if lora:
            return cls(model, True, temperature)
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return cls(ref, False, temperature)

    @torch.no_grad()
    def logp(self, packed: Packed) -> Tensor:
        if self.lora:
            with self.model.disable_adapter():
                return score(self.model, packed, temperature=self.temperature).logp
        return score(self.model, packed, temperature=self.temperature).logp
