"""Token log-probs and entropies of a causal LM's output layer without forming [B, T, V] logits.

For the response tokens (``mask`` = 1) with last hidden states h_t, output layer (W, b) and
sampling temperature τ:

    z_t      = (W h_t + b) / τ                      logits of the sampled distribution, float32
    log p_t  = z_t[y_t] − logsumexp(z_t)             the token's log-prob
    H_t      = logsumexp(z_t) − Σ_v p_t(v) z_t(v)     its entropy, p_t = softmax(z_t)
    S_t      = Σ_v p_t(v)²                            (no gradient; the optimal token baseline's
                                                       ‖∇_z log p_t‖² = 1 − 2p_t(y_t) + S_t)

`HeadLogProbs` computes both over chunks of tokens, each chunk's [c, V] logits formed, reduced
and freed before the next: peak memory is two [c, V] float32 tensors however long the batch
(c = ``chunk_bytes`` / (4 V)), instead of the three [B, T, V] float32 copies of
``log_softmax(logits.float())`` + ``exp``. The backward pass recomputes each chunk's logits
(nothing of size V is saved) and uses the closed forms

    ∂ log p_t / ∂z_t = e_{y_t} − p_t
    ∂ H_t / ∂z_t     = −p_t ⊙ (log p_t + H_t)

chained through z = (W h + b)/τ into h, W and b. Gradients flow only from the outputs a loss
uses: an entropy nobody differentiates costs no backward work. Only tokens with mask = 1 are
projected, so padding (whole padded rows included) costs nothing and gets exact zeros. The head
runs in float32 (float64 inputs stay float64) whatever autocast is active: log-probs are never
rounded to bfloat16. TRL's ``trl.kernels.ChunkedLogProbFunction`` is the same idea with a
vocabulary-chunked online log-sum-exp; here the chunks run over tokens and the whole row of
logits of a chunk is reduced at once.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

CHUNK_BYTES = 64 << 20  # one [c, V] float32 chunk of logits (two are alive at a time)


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _logits(h: Tensor, weight: Tensor, bias: Optional[Tensor], inv_t: float) -> Tensor:
    """[c, V] logits / τ of one chunk, in float32 (float64 for float64 inputs)."""
    dt = _compute_dtype(weight)
    z = h.to(dt) @ weight.to(dt).T
    if bias is not None:
        z = z + bias.to(dt)
    return z * inv_t


class HeadLogProbs(torch.autograd.Function):
    """(log p, H, Σp²) [N] of N tokens from hidden states [N, H] and the output layer (W [V, H],
    b [V] or None) at temperature 1/``inv_t``; see the module docstring. Σp² (zeros unless
    ``want_sq``) carries no gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, inv_t: float, chunk: int, want_sq: bool = False):
        dt = _compute_dtype(weight)
        N = hidden.shape[0]
        logp = hidden.new_empty(N, dtype=dt)
        ent = hidden.new_empty(N, dtype=dt)
        sq = hidden.new_zeros(N, dtype=dt)
        lse = hidden.new_empty(N, dtype=dt)
        with torch.autocast(hidden.device.type, enabled=False), torch.no_grad():
            for s in range(0, N, chunk):
                z = _logits(hidden[s:s + chunk], weight, bias, inv_t)
                lse[s:s + chunk] = l = torch.logsumexp(z, -1)
                z -= l[:, None]  # log p, in place
                logp[s:s + chunk] = z.gather(-1, targets[s:s + chunk, None]).squeeze(-1)
                p = z.exp()
                if want_sq:  # Σ p² as a batched dot product: no third [c, V] buffer
                    sq[s:s + chunk] = torch.bmm(p[:, None, :], p[:, :, None]).view(-1)
                ent[s:s + chunk] = -p.mul_(z).sum(-1)  # −Σ p log p: no cancellation
                del z, p
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent)
        ctx.inv_t, ctx.chunk = inv_t, chunk
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(sq)
        return logp, ent, sq

    @staticmethod
    def backward(ctx, g_logp, g_ent, g_sq=None):
        hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
        inv_t, chunk = ctx.inv_t, ctx.chunk
        dt = _compute_dtype(weight)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g_h = torch.zeros_like(hidden) if need_h else None
        g_w = torch.zeros_like(weight, dtype=dt) if need_w else None
        g_b = torch.zeros_like(bias, dtype=dt) if need_b and bias is not None else None
        if g_logp is None and g_ent is None:
            return g_h, g_w, g_b, None, None, None, None
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, hidden.shape[0], chunk):
                h = hidden[s:s + chunk]
                logq = _logits(h, weight, bias, inv_t)
                logq -= lse[s:s + chunk, None]  # log p, in place
                p = logq.exp()
                gl = g_logp[s:s + chunk, None].to(dt) * inv_t if g_logp is not None else None
                if g_ent is not None:  # ∂H/∂z = −p (log p + H), in logq's buffer
                    ge = g_ent[s:s + chunk, None].to(dt) * inv_t
                    dz = logq.add_(ent[s:s + chunk, None]).mul_(p).mul_(-ge)
                    if gl is not None:
                        dz.addcmul_(p, gl, value=-1.0)
                else:  # only ∂ log p_y/∂z = e_y − p, in p's buffer
                    dz = p.mul_(-gl)
                del logq, p
                if gl is not None:
                    dz.scatter_add_(-1, targets[s:s + chunk, None], gl)
                if g_h is not None:
                    g_h[s:s + chunk] = (dz @ weight.to(dt)).to(hidden.dtype)
                if g_w is not None:
                    g_w.addmm_(dz.T, h.to(dt))
                if g_b is not None:
                    g_b += dz.sum(0)
        return (g_h, g_w.to(weight.dtype) if g_w is not None else None,
                g_b.to(bias.dtype) if g_b is not None else None, None, None, None, None)


def chunk_tokens(vocab: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Tokens per chunk so that one [c, V] float32 chunk takes about ``chunk_bytes``."""
    return max(1, chunk_bytes // (4 * vocab))


def token_logp_entropy(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor,
                       mask: Tensor, temperature: float = 1.0,
                       chunk_bytes: int = CHUNK_BYTES, sum_pi_squared: bool = False) -> tuple:
    """(log p, H) [B, T] of ``targets`` [B, T] given hidden states [B, T, H] (the state that
    predicts each target), zero where ``mask`` is 0; differentiable in ``hidden``, ``weight``,
    ``bias``. Equals ``log_softmax((hidden @ W.T + b) / τ)`` gathered at the targets and its
    entropy, without the [B, T, V] tensor (module docstring). With ``sum_pi_squared`` also
    Σ_v p(v)² [B, T] (no gradient) as a third element."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to score log-probs, got {temperature}")
    keep = mask.bool()
    chunk = chunk_tokens(weight.shape[0], chunk_bytes)
    logp, ent, sq = HeadLogProbs.apply(hidden[keep], weight, bias, targets[keep], 1.0 / temperature,
                                       chunk, sum_pi_squared)
    zeros = torch.zeros(mask.shape, dtype=logp.dtype, device=logp.device)
    # masked_scatter keeps an all-padding batch connected to the graph (a zero gradient)
    out = (zeros.masked_scatter(keep, logp), zeros.masked_scatter(keep, ent))
    return out + (zeros.masked_scatter(keep, sq),) if sum_pi_squared else out
