"""The fast rollout engine for small models: a static KV cache and a hand-batched decode loop.

    sampler = FastSampler(model, eos_id, pad_id)     # --rollout-engine fast (auto: the embedded model)
    completions, logprobs = sampler.generate_with_logprobs(prompts, n, T, top_p, max_new, seed)

HF ``generate`` on a 0.65 M-parameter model spends its time in per-token Python (cache objects,
mask building, logits processors), not in arithmetic. This engine runs the *model's own modules*
(embedding, norms, q/k/v/o projections, rotary embedding, MLP, head: LoRA adapters included,
since peft wraps those modules) in a loop of its own:

* every prompt of the call is left-padded into one batch (``max_batch`` rows at most), the
  prompt is run once (prefill) and each new token attends to a preallocated ``[B, H_kv, T, D]``
  key/value cache per layer (no reallocation, no cache object);
* sampling is exactly HF's: scores = logits / T, then transformers' own ``TopPLogitsWarper``,
  then a draw from their softmax — by the Gumbel-max trick (argmax of log-prob + Gumbel noise,
  the same distribution as ``multinomial``) with each row's noise drawn step by step from its
  prompt's own generator, so a prompt's rollouts depend only on (weights, prompt, seed) and
  never on which other prompts share the batch (``seeds_per_prompt``: one batched call does
  what ``--seed-per-prompt`` asks);
* the log-prob recorded for each token is the log-softmax of those processed scores (what
  ``HFSampler`` records, what ``policy.score`` computes at the same temperature);
* a row ends at a stop id (``stop_ids``, default ``eos_id``), is padded after it, and leaves
  the batch (the cache is compacted when half the rows have ended); the loop stops when every
  row has ended or after ``max_new_tokens``.

Supported: decoder-only Llama-family models whose layers have ``self_attn.{q,k,v,o}_proj``,
``input_layernorm``, ``post_attention_layernorm`` and ``mlp`` and a ``rotary_emb`` (llama,
qwen2 without sliding windows, mistral without sliding windows); anything else is refused
with a message naming ``--rollout-engine hf``. HF ``generate`` (`HFSampler`) stays the
reference path; tests/test_fast_sampler.py checks both agree.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .hf import left_pad, strip_completion

SUPPORTED = ("llama", "qwen2", "mistral")


class UnsupportedModel(ValueError):
    """The fast engine cannot run this model; the message says why and what to use instead."""


def decoder_of(model):
    """The HF ``*ForCausalLM`` inside ``model`` (a peft wrapper's base model), checked."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    conf = inner.config
    why = None
    if conf.model_type not in SUPPORTED:
        why = f"model type {conf.model_type!r} (supported: {', '.join(SUPPORTED)})"
    elif getattr(conf, "sliding_window", None) and getattr(conf, "use_sliding_window", True) \
            and conf.model_type != "llama":
        why = "sliding-window attention"
    elif not hasattr(getattr(inner, "model", None), "rotary_emb"):
        why = "no model.rotary_emb"
    if why:
        raise UnsupportedModel(f"--rollout-engine fast does not support this model: {why}; "
                               "use --rollout-engine hf")
    return inner


@dataclass
class FastSampler:
    """Static-KV-cache, batched sampling on ``model`` itself (it sees each optimizer step's
    weights: nothing to sync). ``max_batch`` rows per decode batch; ``stop_ids`` (default:
    ``eos_id`` alone) end a row; ``autocast`` (a dtype, or None) runs the forward under
    ``torch.autocast`` like the trainer's ``--dtype``. Log-probs [i][j][t] as `HFSampler`'s;
    None after greedy decoding."""

    model: object
    eos_id: int
    pad_id: int
    max_batch: int = 1024
    stop_ids: Optional[list] = None
    autocast: Optional[torch.dtype] = None

    seeds_per_prompt = True  # each prompt's noise comes from its own generator
    own_weights = False      # samples from the training model itself

    def __post_init__(self):
        decoder_of(self.model)  # refuse an unsupported model at construction

    def generate(self, prompts_token_ids, n, temperature, top_p, max_new_tokens, seed):
        return self.generate_with_logprobs(prompts_token_ids, n, temperature, top_p,
                                           max_new_tokens, seed)[0]

    def generate_with_logprobs(self, prompts_token_ids, n, temperature, top_p, max_new_tokens,
                               seed, prompt_seeds: Optional[list] = None):
        """(completions[i][j], the sampled tokens' log-probs [i][j][t] or None when greedy).
        Without ``prompt_seeds`` prompt i's noise is seeded by ``seed`` and i; with them, by
        ``prompt_seeds[i]`` alone."""
        P = len(prompts_token_ids)
        seeds = prompt_seeds if prompt_seeds is not None else [
            (seed * 1_000_003 + i) % (2 ** 63 - 1) for i in range(P)]
        greedy = temperature <= 0
        out: list[list[int]] = []
        lps: list[list[float]] = []
        inner = decoder_of(self.model)
        was_training = self.model.training
        self.model.eval()
        per = max(1, self.max_batch // max(1, n))  # whole prompts per decode batch
        try:
            with torch.no_grad(), self._autocast(inner):
                for start in range(0, P, per):
                    noise = None if greedy else GumbelNoise(
                        seeds[start:start + per], n, inner.lm_head.out_features, inner.device)
                    ids, lp = decode(inner, prompts_token_ids[start:start + per], n, noise,
                                     temperature, top_p, max_new_tokens,
                                     self.stop_ids or [self.eos_id], self.pad_id)
                    out += [strip_completion(r, self.eos_id, self.pad_id) for r in ids]
                    lps += [x[:len(c)] for x, c in zip(lp, out[len(out) - len(ids):])]
        finally:
            self.model.train(was_training)
        shape = lambda xs: [xs[i * n:(i + 1) * n] for i in range(P)]  # noqa: E731
        return shape(out), (None if greedy else shape(lps))

    def _autocast(self, inner):
        if self.autocast is None or self.autocast == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=inner.device.type, dtype=self.autocast)

    def sync_weights(self, model) -> None:
        """Samples from the training model itself: nothing to copy."""
        self.model = model


class GumbelNoise:
    """Standard Gumbel noise for the rows of ``len(seeds)`` prompts × ``n``: each call gives the
    next step's [rows, V], each prompt's rows drawn from its own generator (seeded once), so a
    prompt's draws do not depend on the other prompts of the batch. One step in memory."""

    def __init__(self, seeds: list, n: int, vocab: int, device):
        self.gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        self.shape, self.device = (n, vocab), device

    def __call__(self) -> torch.Tensor:
        u = torch.cat([torch.rand(self.shape, generator=g) for g in self.gens])
        u = u.clamp_(min=torch.finfo(torch.float32).tiny, max=1 - 2 ** -24)
        return (-torch.log(-torch.log(u))).to(self.device)


def process_scores(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The scores HF ``generate`` samples from (float32): logits / T, then top-p (transformers'
    own warpers, in generate's order)."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    scores = logits.float()
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores


class KVCache:
    """Per layer, a preallocated key and value buffer [B, H_kv, T, D] and the additive key mask
    [B, 1, 1, T] (0 = attend, −inf = not)."""

    def __init__(self, layers: int, B: int, kv_heads: int, T: int, head_dim: int, dtype, device):
        self.k = [torch.zeros(B, kv_heads, T, head_dim, dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.zeros_like(k) for k in self.k]
        self.bias = torch.zeros(B, 1, 1, T, dtype=torch.float32, device=device)

    def keep(self, idx: torch.Tensor) -> None:
        """Keep rows ``idx`` only, in that order (copies of a prompt's row; compaction)."""
        self.k = [k.index_select(0, idx) for k in self.k]
        self.v = [v.index_select(0, idx) for v in self.v]
        self.bias = self.bias.index_select(0, idx)


def attention(q, K, V, bias, scaling: float) -> torch.Tensor:
    """softmax(q Kᵀ · scaling + bias) V in float32 (as HF's eager attention), key/value heads
    repeated for grouped-query attention; q [B, H, S, D], K/V [B, H_kv, T, D]."""
    if K.shape[1] != q.shape[1]:
        rep = q.shape[1] // K.shape[1]
        K, V = K.repeat_interleave(rep, 1), V.repeat_interleave(rep, 1)
    w = torch.matmul(q, K.transpose(-1, -2).to(q.dtype)) * scaling + bias
    return torch.matmul(w.float().softmax(-1).to(V.dtype), V).to(q.dtype)


def attend(attn, h: torch.Tensor, cos, sin, cache: KVCache, layer: int, t0: int,
           bias: torch.Tensor) -> torch.Tensor:
    """One attention block on ``h`` [B, S, hidden] written at cache columns t0..t0+S−1; ``bias``
    [B, 1, S, t0+S] additive (0 = attend, −inf = not)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    B, S, _ = h.shape
    D = attn.head_dim
    q = attn.q_proj(h).view(B, S, -1, D).transpose(1, 2)
    k = attn.k_proj(h).view(B, S, -1, D).transpose(1, 2)
    v = attn.v_proj(h).view(B, S, -1, D).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    cache.k[layer][:, :, t0:t0 + S] = k
    cache.v[layer][:, :, t0:t0 + S] = v
    o = attention(q, cache.k[layer][:, :, :t0 + S], cache.v[layer][:, :, :t0 + S], bias, attn.scaling)
    return attn.o_proj(o.transpose(1, 2).reshape(B, S, -1))


def forward(inner, ids: torch.Tensor, pos: torch.Tensor, cache: KVCache, t0: int,
            bias: torch.Tensor) -> torch.Tensor:
    """Last-position logits [B, V] of ``ids`` [B, S] at positions ``pos`` [B, S], cached."""
    body = inner.model
    x = body.embed_tokens(ids)
    cos, sin = body.rotary_emb(x, pos)
    for i, layer in enumerate(body.layers):
        x = x + attend(layer.self_attn, layer.input_layernorm(x), cos, sin, cache, i, t0, bias)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return inner.lm_head(body.norm(x[:, -1]))


def decode(inner, prompts: list[list[int]], n: int, noise: Optional[GumbelNoise],
           temperature: float, top_p: float, max_new_tokens: int, stop_ids: list, pad_id: int):
    """(generated ids [row][t] padded after a stop id, log-probs [row][t]) of n rows per prompt
    (row = prompt · n + j). Each prompt is run once (prefill) and its cache copied to its n
    rows. Greedy when ``noise`` is None, else row r's token t is argmax(processed log-probs +
    step t's noise[r]) (Gumbel-max: a draw from the softmax of the processed scores)."""
    device = inner.device
    conf = inner.config
    ids, att = left_pad(prompts, pad_id)
    ids, att = ids.to(device), att.to(device).bool()
    P, L = ids.shape
    T = L + max_new_tokens
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) \
        else inner.lm_head.weight.dtype
    cache = KVCache(len(inner.model.layers), P, conf.num_key_value_heads, T,
                    inner.model.layers[0].self_attn.head_dim, dtype, device)
    cache.bias[:, 0, 0, :L].masked_fill_(~att, float("-inf"))
    pos = (att.long().cumsum(-1) - 1).clamp_min(0)
    causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
    # every query attends to itself too, so a padding query's row is never empty (no NaN)
    see = (causal & att[:, None, :]) | torch.eye(L, dtype=torch.bool, device=device)
    bias = torch.zeros(P, 1, L, L, device=device).masked_fill_(~see[:, None], float("-inf"))
    logits = forward(inner, ids, pos, cache, 0, bias)
    live = torch.arange(P, device=device).repeat_interleave(n)  # each row's prompt ...
    cache.keep(live)
    logits, next_pos = logits[live], pos[live, -1] + 1
    B = P * n
    live = torch.arange(B, device=device)                       # ... then its own index
    stops = torch.tensor(sorted(set(stop_ids)), device=device)
    out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    lps = torch.zeros((B, max_new_tokens), dtype=torch.float32, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        if noise is None:
            tok = logits.float().argmax(-1)
        else:
            logp = torch.log_softmax(process_scores(logits, temperature, top_p), -1)
            tok = (logp + noise()[live]).argmax(-1)
            lps[live, t] = logp.gather(-1, tok[:, None]).squeeze(-1)
        tok = tok.masked_fill(done, pad_id)
        out[live, t] = tok
        done = done | torch.isin(tok, stops)
        n_done = int(done.sum())
        if t + 1 == max_new_tokens or n_done == len(live):
            break
        if 4 * n_done >= len(live):  # a quarter has ended: those rows leave the batch
            keep = (~done).nonzero().squeeze(-1)
            cache.keep(keep)
            live, tok, next_pos, done = live[keep], tok[keep], next_pos[keep], done[keep]
        col = L + t
        logits = forward(inner, tok[:, None], next_pos[:, None], cache, col,
                         cache.bias[:, :, :, :col + 1])
        next_pos = next_pos + 1
    return out.tolist(), lps.tolist()
