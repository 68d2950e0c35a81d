"""Per-sample gradient Gram matrices without per-sample gradients (Goodfellow 2015, "Efficient
per-example gradient computations", arXiv 1510.01799; the "ghost norm" trick).

For a loss L = Σ_i ℓ_i whose rows i are independent, one batched backward gives, at every
layer, the inputs a_{i,t} and output-gradients g_{i,t} = ∂L/∂out_{i,t}. Then per sample:

* Linear W (out × in):     ∇_W ℓ_i = Σ_t g_{i,t} a_{i,t}ᵀ, so
                           ⟨∇_W ℓ_i, ∇_W ℓ_j⟩ = Σ_{t,s} (g_{i,t}·g_{j,s}) (a_{i,t}·a_{j,s});
                           bias: (Σ_t g_{i,t})·(Σ_s g_{j,s}).
* Embedding E:             ∇_E ℓ_i = Σ_t e_{tok_{i,t}} g_{i,t}ᵀ, so
                           ⟨·,·⟩ = Σ_{t,s} 1[tok_{i,t} = tok_{j,s}] (g_{i,t}·g_{j,s}).
* elementwise scale (RMSNorm, out = w ⊙ x̂): ∇_w ℓ_i = Σ_t g_{i,t} ⊙ x̂_{i,t}, materialised
                           ([B, hidden] is small), x̂ = out / w.

Summed over layers this is the Gram matrix K_ij = ⟨∇ℓ_i, ∇ℓ_j⟩ (norms on the diagonal) at
about the cost of one batched backward, plus ⟨∇ℓ_i, v⟩ for a fixed vector v. `GramHooks`
refuses a model with a trainable parameter it cannot account for (e.g. tied embeddings).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def _is_scale(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return ("RMSNorm" in type(m).__name__ and isinstance(w, nn.Parameter) and w.dim() == 1
            and len(list(m.parameters(recurse=False))) == 1)


class GramHooks:
    """Context manager: ``with GramHooks(model) as gh: loss.backward()``; then ``gh.gram()``
    [B, B] and ``gh.dots(v)`` [B] for ``v`` a {parameter name: tensor} dict."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.saved: dict = {}
        self.handles: list = []
        covered = set()
        for name, m in model.named_modules():
            kind = "linear" if isinstance(m, nn.Linear) else "embedding" if isinstance(m, nn.Embedding) \
                else "scale" if _is_scale(m) else None
            if kind is None or not any(p.requires_grad for p in m.parameters(recurse=False)):
                continue
            for pn, p in m.named_parameters(recurse=False):
                if p.requires_grad:
                    if id(p) in covered:
                        raise ValueError(f"parameter {name}.{pn} is shared between modules (tied); "
                                         "per-sample Gram via hooks needs untied weights")
                    covered.add(id(p))
            self.handles.append(m.register_forward_hook(self._fwd(name, kind)))
        missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
        if missing:
            raise ValueError(f"no per-sample rule for trainable parameters: {missing[:5]}")

    def _fwd(self, name, kind):
        def hook(m, inp, out):
            rec = {"kind": kind, "module": m, "a": inp[0].detach(), "out": out.detach()}
            self.saved[name] = rec
            if out.requires_grad:
                out.register_hook(lambda g: rec.__setitem__("g", g.detach()))
        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def gram(self) -> Tensor:
        K = None
        for s in self.saved.values():
            k = _GRAM[s["kind"]](s)
            K = k if K is None else K + k
        return K

    def dots(self, v: dict) -> Tensor:
        """[B] ⟨∇ℓ_i, v⟩; ``v`` maps module name + '.weight' / '.bias' to tensors."""
        out = None
        for name, s in self.saved.items():
            d = _DOT[s["kind"]](s, name, v)
            out = d if out is None else out + d
        return out


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1, x.shape[-1])  # [B, T, F]


def _gram_linear(s) -> Tensor:
    """Ghost form B²T²(in+out) when cheaper, else this layer's per-sample gradients B·T·in·out
    (one layer at a time, never the whole model's)."""
    a, g, m = _flat(s["a"]), _flat(s["g"]), s["module"]
    B, T = a.shape[:2]
    if B * T * T * (a.shape[-1] + g.shape[-1]) <= T * a.shape[-1] * g.shape[-1] + B * a.shape[-1] * g.shape[-1]:
        gg = (g.reshape(B * T, -1) @ g.reshape(B * T, -1).T).view(B, T, B, T)
        aa = (a.reshape(B * T, -1) @ a.reshape(B * T, -1).T).view(B, T, B, T)
        K = (gg * aa).sum((1, 3))
    else:
        W = torch.bmm(g.transpose(1, 2), a).reshape(B, -1)  # per-sample out × in
        K = W @ W.T
    if m.bias is not None and m.bias.requires_grad:
        gs = g.sum(1)
        K = K + gs @ gs.T
    return K


def _embedding_g(s) -> tuple[Tensor, Tensor]:
    """Token ids and output-gradients, with rows of ``padding_idx`` (which get no gradient) zeroed."""
    tok, g = s["a"].reshape(s["a"].shape[0], -1), _flat(s["g"])
    pad = s["module"].padding_idx
    if pad is not None:
        g = g * (tok != pad)[..., None].to(g.dtype)
    return tok, g


def _gram_embedding(s) -> Tensor:
    tok, g = _embedding_g(s)
    B, T, F = g.shape
    V = s["module"].num_embeddings
    if B * T * T <= T + B * V:
        same = (tok[:, None, :, None] == tok[None, :, None, :]).to(g.dtype)  # [B, B, T, T]
        return (same * torch.einsum("itf,jsf->ijts", g, g)).sum((-1, -2))
    E = torch.zeros(B, V, F, dtype=g.dtype).scatter_add_(1, tok[..., None].expand(-1, -1, F), g)
    E = E.reshape(B, -1)
    return E @ E.T


def _scale_grads(s) -> Tensor:
    w = s["module"].weight.detach()
    xhat = _flat(s["out"]) / w
    return (_flat(s["g"]) * xhat).sum(1)  # [B, F]


def _gram_scale(s) -> Tensor:
    ps = _scale_grads(s)
    return ps @ ps.T


def _dot_linear(s, name, v) -> Tensor:
    a, g, m = _flat(s["a"]), _flat(s["g"]), s["module"]
    out = torch.einsum("itf,itf->i", g, a @ v[f"{name}.weight"].T)
    if m.bias is not None and m.bias.requires_grad:
        out = out + g.sum(1) @ v[f"{name}.bias"]
    return out


def _dot_embedding(s, name, v) -> Tensor:
    tok, g = _embedding_g(s)
    return torch.einsum("itf,itf->i", g, v[f"{name}.weight"][tok])


def _dot_scale(s, name, v) -> Tensor:
    return _scale_grads(s) @ v[f"{name}.weight"]


_GRAM = {"linear": _gram_linear, "embedding": _gram_embedding, "scale": _gram_scale}
_DOT = {"linear": _dot_linear, "embedding": _dot_embedding, "scale": _dot_scale}
