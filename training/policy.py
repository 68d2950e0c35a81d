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
    """logp, entropy [B, T] (masked to 0 off the response) and values [B, T] or None."""

    logp: Tensor
    entropy: Tensor
    values: Optional[Tensor] = None


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


def score(model, packed: Packed, value_head: Optional[ValueHead] = None) -> Scored:
    """Log-probs and entropies of the response tokens (differentiable when grad is enabled)."""
    P, T = packed.prompt_width, packed.width
    out = model(input_ids=packed.ids, attention_mask=packed.attention, position_ids=packed.positions,
                output_hidden_states=value_head is not None, use_cache=False,
                logits_to_keep=T + 1)
    logits = out.logits[:, :T].float()  # the last T+1 columns; column P+t-1 predicts token t
    logprobs = torch.log_softmax(logits, -1)
    target = packed.ids[:, P:P + T]
    logp = logprobs.gather(-1, target[..., None]).squeeze(-1) * packed.mask
    entropy = -(logprobs.exp() * logprobs).sum(-1) * packed.mask
    values = None
    if value_head is not None:
        values = value_head(out.hidden_states[-1][:, P - 1:P + T - 1].float()) * packed.mask
    return Scored(logp, entropy, values)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(path: str, lora_r: int = 0, lora_alpha: int = 16, lora_dropout: float = 0.0,
               dtype: str = "float32"):
    """An HF causal LM from a local path (offline), full-parameter or wrapped with a LoRA adapter
    on every attention/MLP projection (peft). Eager attention; ``dtype`` float32 | bfloat16 |
    float16 (log-probs are always computed in float32)."""
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype],
                                                 attn_implementation="eager")
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
    full-parameter → a frozen copy made at construction."""

    model: object
    lora: bool

    @classmethod
    def of(cls, model, lora: bool) -> "Reference":
        if lora:
            return cls(model, True)
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return cls(ref, False)

    @torch.no_grad()
    def logp(self, packed: Packed) -> Tensor:
        if self.lora:
            with self.model.disable_adapter():
                return score(self.model, packed).logp
        return score(self.model, packed).logp
