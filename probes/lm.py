"""The variance probe on a small causal LM (``python -m probes.variance --testbed lm``).

A tiny Qwen2-architecture model (transformers, built from a config, eager attention, untied
embeddings) over a character vocabulary learns single-digit addition "a+b=" → "c⟨eos⟩"; it is
pre-trained briefly (``--lm-steps``) so that it starts partially competent. Responses are
sampled at temperature 1 and right-padded, so no attention mask is needed (probes-spec §2.2,
environment notes: masks inside vmap need eager attention).

Per update (P prompts × G rollouts, or demos) the estimator's per-token coefficients
d_{i,t} = −∂ est(batch).loss/∂logp_{i,t} come from the project's estimator through `Batch`;
the per-sample gradient is g_i = Σ_t d_{i,t} ∇_θ log π_θ(y_{i,t}|s_{i,t}), computed with
``torch.func.vmap(torch.func.grad(...))`` over ``functional_call`` (full parameters, or only
the trainable ones, e.g. a LoRA adapter). Σ_i g_i equals the gradient of the estimator's loss.

Reference gradient g* (probes-spec §1.2 method 2): the unbiased RLOO estimator over
``--lm-ref`` rollouts per prompt, with its standard error from two halves. Reported per
estimator: scale, cos to g*, rel_bias, tr Cov of one update (across ``--lm-updates`` updates),
SNR, B_simple = N·trCov/‖m‖² (and in groups), E[cos(ĝ, g*)], each from ``--mc`` updates
(default 16) with fixed prompts; tr Cov from the per-group gradients (see `lm_metrics`).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

import estimators
from estimators import Batch

from . import registry as Rg
from .common import default_out

CHARS = "0123456789+="
PAD, EOS = len(CHARS), len(CHARS) + 1
VOCAB = len(CHARS) + 2
PROMPT_LEN, RESP_LEN = 4, 3  # "a+b=", up to two digits + EOS


def tiny_lm(hidden: int = 32, layers: int = 2, seed: int = 0, dtype=torch.float32):
    """A Qwen2ForCausalLM built from a config (no download)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                      tie_word_embeddings=False, attn_implementation="eager", pad_token_id=PAD,
                      eos_token_id=EOS, bos_token_id=EOS)
    return Qwen2ForCausalLM(cfg).to(dtype)


def encode_prompts(pairs) -> Tensor:
    return torch.tensor([[CHARS.index(str(a)), CHARS.index("+"), CHARS.index(str(b)), CHARS.index("=")]
                         for a, b in pairs])


def answer_tokens(pairs) -> Tensor:
    """[n, RESP_LEN] the correct response "c⟨eos⟩", right-padded."""
    out = torch.full((len(pairs), RESP_LEN), PAD)
    for i, (a, b) in enumerate(pairs):
        toks = [CHARS.index(ch) for ch in str(a + b)] + [EOS]
        out[i, :len(toks)] = torch.tensor(toks)
    return out


def response_mask(resp: Tensor) -> Tensor:
    """1 on tokens up to and including the first EOS (all RESP_LEN tokens when none)."""
    eos = (resp == EOS).to(torch.long)
    before = (eos.cumsum(-1) - eos) == 0
    return before.to(torch.float32)


def rewards(pairs, resp: Tensor) -> Tensor:
    ans = answer_tokens(pairs)
    m = response_mask(ans).bool()
    return ((resp == ans) | ~m).all(-1).to(torch.float32)


def token_logp(logits: Tensor, resp: Tensor) -> Tensor:
    """[B, RESP_LEN] log π(y_t | prompt, y_<t) from full-sequence logits."""
    lp = torch.log_softmax(logits[:, PROMPT_LEN - 1:PROMPT_LEN - 1 + RESP_LEN].float(), -1)
    return lp.gather(-1, resp[:, :, None]).squeeze(-1)


@torch.no_grad()
def sample(model, prompts: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """[len(prompts)·n, RESP_LEN] responses at temperature 1 (PAD after EOS)."""
    x = prompts.repeat_interleave(n, 0)
    done = torch.zeros(len(x), dtype=torch.bool)
    out = []
    for _ in range(RESP_LEN):
        logits = model(input_ids=x).logits[:, -1].float()
        tok = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(-1)
        tok = torch.where(done, torch.full_like(tok, PAD), tok)
        done = done | (tok == EOS)
        out.append(tok)
        x = torch.cat([x, tok[:, None]], 1)
    return torch.stack(out, 1)


def pretrain(model, steps: int, seed: int = 0, lr: float = 3e-3) -> None:
    """Brief SFT on random sums so the model starts partially competent (the "base model")."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        ab = torch.randint(0, 10, (64, 2), generator=gen).tolist()
        resp = answer_tokens(ab)
        ids = torch.cat([encode_prompts(ab), resp], 1)
        lp = token_logp(model(input_ids=ids).logits, resp)
        m = response_mask(resp)
        loss = -(lp * m).sum() / m.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()


# ----------------------------------------------------------------------------- per-sample grads


def trainable(model) -> dict:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def per_sample_grads(model, ids: Tensor, resp: Tensor, d: Tensor) -> dict:
    """{name: [B, ...]} g_i = ∇_θ Σ_t d_{i,t} log π_θ(y_{i,t}) per row, by
    vmap(grad(functional_call)) over the trainable parameters (others held fixed)."""
    params = trainable(model)
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    frozen.update(dict(model.named_buffers()))

    def loss(p, ids_i, resp_i, d_i):
        logits = torch.func.functional_call(model, {**p, **frozen}, (ids_i[None],)).logits
        return (token_logp(logits, resp_i[None])[0] * d_i).sum()

    return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0, 0))(params, ids, resp, d)


def per_sample_grads_loop(model, ids: Tensor, resp: Tensor, d: Tensor) -> dict:
    """The same by a loop of single-row backward() calls (the reference for tests/benchmarks)."""
    names = list(trainable(model))
    out = {n: [] for n in names}
    ps = dict(model.named_parameters())
    for i in range(len(ids)):
        model.zero_grad(set_to_none=True)
        (token_logp(model(input_ids=ids[i:i + 1]).logits, resp[i:i + 1])[0] * d[i]).sum().backward()
        for n in names:
            out[n].append(ps[n].grad.detach().clone())
    model.zero_grad(set_to_none=True)
    return {n: torch.stack(v) for n, v in out.items()}


def flat(grads: dict) -> Tensor:
    return torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], 1)


# ----------------------------------------------------------------------------- the probe


@dataclass
class LMSetting:
    model: object
    pairs: list  # P prompts (a, b)
    G: int
    gen: torch.Generator


def estimator_rows(s: LMSetting, est) -> tuple[Tensor, Tensor, Batch, Tensor]:
    """Sample one update for ``est`` (rollouts and/or demos per its layout), build the Batch,
    and return (input ids, responses, batch, d = −∂loss/∂logp)."""
    from .moments import layout
    nR, nD = layout(est, s.G)
    P = len(s.pairs)
    prompts = encode_prompts(s.pairs)
    parts, demo = [], []
    if nR:
        parts.append(sample(s.model, prompts, nR, s.gen).view(P, nR, RESP_LEN))
        demo.append(torch.zeros(P, nR, dtype=torch.bool))
    if nD:
        parts.append(answer_tokens(s.pairs)[:, None].expand(P, nD, RESP_LEN))
        demo.append(torch.ones(P, nD, dtype=torch.bool))
    resp = torch.cat(parts, 1).reshape(-1, RESP_LEN)
    is_demo = torch.cat(demo, 1).reshape(-1)
    pairs_rows = [s.pairs[i] for i in range(P) for _ in range(nR + nD)]
    ids = torch.cat([encode_prompts(pairs_rows), resp], 1)
    with torch.no_grad():
        lp = token_logp(s.model(input_ids=ids).logits, resp).double()
    leaf = lp.clone().requires_grad_(True)
    mask = response_mask(resp).double()
    b = Batch(logp=leaf * mask, mask=mask, reward=rewards(pairs_rows, resp).double(),
              group=torch.arange(P).repeat_interleave(nR + nD), is_demo=is_demo, logp_old=lp * mask)
    if "logp_ref" in est.needs:   # a KL to π_ref (REINFORCE++'s reward): measured at π_ref = π_old
        b = b.replace(logp_ref=b.logp_old)
    loss = est(b).loss
    d = -torch.autograd.grad(loss, leaf)[0]
    return ids, resp, b, d.float()


def reference(s: LMSetting, n_ref: int, chunk: int = 256, parts: int = 2) -> tuple[Tensor, float, Tensor]:
    """g* = mean of RLOO updates over n_ref rollouts per prompt (unbiased for ∇J), its relative
    standard error √(tr Cov g*)/‖g*‖ from ``parts`` independent chunks (two halves:
    ‖g₁ − g₂‖/(2‖g*‖)), and the chunks [parts, D]."""
    rloo = estimators.get("rloo")
    halves = []
    per = max(n_ref // parts, 2)
    for _ in range(parts):
        st = LMSetting(s.model, s.pairs, min(per, chunk), s.gen)
        acc, n = None, 0
        while n < per:
            ids, resp, b, d = estimator_rows(st, rloo)
            g = flat(per_sample_grads(s.model, ids, resp, d)).sum(0)
            acc = g if acc is None else acc + g
            n += st.G
        halves.append(acc * st.G / n)
    chunks = torch.stack(halves)
    g = chunks.mean(0)
    tr = float(((chunks - g) ** 2).sum()) / (parts - 1) / parts
    return g, math.sqrt(tr) / float(g.norm()), chunks


def lm_metrics(groups: list, g_ref: Tensor, G: int, N: int) -> dict:
    """Metrics from per-group gradients ``groups`` [M updates][P prompts, D]. Prompts are fixed
    (as on the tree testbed), so tr Cov of one update is Σ_x Var_u(h_{u,x}) (groups of different
    prompts are independent); ‖m‖² is bias-corrected by trCov/M. SEs over the M updates."""
    H = torch.stack(groups)  # [M, P, D]
    M = H.shape[0]
    U = H.sum(1)
    m = U.mean(0)
    tr = float(H.var(0, unbiased=True).sum())
    m2 = max(float(m @ m) - tr / M, 1e-30)
    n2 = float(g_ref @ g_ref)
    proj = U @ g_ref / n2
    cos_u = U @ g_ref / (U.norm(dim=-1) * g_ref.norm()).clamp_min(1e-30)
    se = lambda v: float(v.std() / math.sqrt(len(v)))  # noqa: E731
    return {"scale": float(proj.mean()), "scale_se": se(proj),
            "cos": float(m @ g_ref) / float(m.norm() * g_ref.norm()),
            "rel_bias": float((m - g_ref).norm()) / math.sqrt(n2), "trCov": tr,
            "SNR": m2 / tr if tr > 0 else float("inf"), "B_simple": N * tr / m2, "B_groups": H.shape[1] * tr / m2,
            "E[cos]": float(cos_u.mean()), "E[cos]_se": se(cos_u)}


def noise_aware(name: str, est, grps: list, chunks: Tensor, N: int, b: Batch) -> dict:
    """The run probe's noise-aware columns (`probes.runs.metrics`): scale and cos with the
    reference's noise removed and jackknife SEs over updates and reference chunks, and whether
    the bias / direction error is distinguishable from that noise."""
    from . import runs
    from .moments import exact_support
    meas = runs.Measured(name, torch.stack(grps), N, int(b.is_demo.sum()),
                         "groups" if exact_support(est)[0] else "updates", 0.0)
    vals, se = runs.metrics(meas, chunks, R=1)
    out = {f"{k}_ref": vals[k] for k in ("scale", "cos", "rel_bias")}
    out.update({f"{k}_ref_se": se[k] for k in ("scale", "cos", "rel_bias")})
    out.update({k: vals[k] for k in ("bias_z", "bias_sig", "cos_z", "cos_sig")})
    return out


def run_lm(names: str, G: int, updates: int, n_ref: int, steps: int, seed: int, log=print) -> dict:
    probes = [p for p in Rg.select(names, ()) if not p.stale]
    t0 = time.time()
    model = tiny_lm(seed=seed)
    pretrain(model, steps, seed)
    pairs = [(1, 2), (3, 4), (2, 5), (6, 1), (4, 4), (7, 2), (5, 3), (0, 6)]
    gen = torch.Generator().manual_seed(seed)
    s = LMSetting(model, pairs, G, gen)
    with torch.no_grad():
        p = rewards([q for q in pairs for _ in range(64)],
                    sample(model, encode_prompts(pairs), 64, gen)).view(len(pairs), 64).mean(-1)
    g_ref, ref_se, chunks = reference(s, n_ref, parts=8)
    log(f"reference g*: ‖g*‖={float(g_ref.norm()):.4e}, relative SE {ref_se:.3f} ({time.time() - t0:.1f} s)")
    rows = []
    for probe in probes:
        est = probe.estimator(len(pairs), 1, G)
        if [f for f in est.needs if f != "logp_ref"]:
            log(f"skip {probe.name}: needs {est.needs}")
            continue
        unit = probe.unit(est, len(pairs), 1, G)
        grps = []
        t = time.time()
        for _ in range(updates):
            ids, resp, b, d = estimator_rows(s, est)
            gi = flat(per_sample_grads(model, ids, resp, d)) * unit
            grps.append(torch.stack([gi[b.group == k].sum(0) for k in range(len(pairs))]))
        N = max(int(b.rollouts.sum()), int(b.is_demo.sum()))
        row = {"estimator": probe.name, "G": G, "N": int(b.rollouts.sum()), "demos": int(b.is_demo.sum()),
               "exact": f"MC({updates})", **lm_metrics(grps, g_ref, G, N), **noise_aware(probe.name, est, grps, chunks, N, b),
               "seconds": time.time() - t}
        rows.append(row)
        log(f"  {probe.name}: {row['seconds']:.1f} s")
    return {"header": {"testbed": "lm", "params": int(sum(v.numel() for v in trainable(model).values())),
                       "p_x": p.tolist(), "norm_ref": float(g_ref.norm()), "ref_rel_se": ref_se,
                       "n_ref": n_ref, "pretrain_steps": steps},
            "rows": rows, "seconds": time.time() - t0}


def format_lm(res: dict) -> str:
    h = res["header"]
    cols = ["estimator", "G", "N", "demos", "exact", "scale", "cos", "rel_bias", "trCov", "SNR", "B_simple",
            "B_groups", "E[cos]"]
    out = [f"testbed lm: tiny Qwen2 ({h['params']} trainable params), p_x = "
           f"[{', '.join(f'{v:.2f}' for v in h['p_x'])}]",
           f"reference g*: RLOO over {h['n_ref']} rollouts/prompt, ‖g*‖ = {h['norm_ref']:.4e}, relative SE "
           f"{h['ref_rel_se']:.3f} (cos/scale are against this estimate)", ""]
    fmt = lambda v: v if isinstance(v, str) else str(v) if isinstance(v, int) else f"{v:.4g}"  # noqa: E731
    cells = [[fmt(r[c]) for c in cols] for r in res["rows"]]
    w = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(cols)]
    out.append("  ".join(c.rjust(k) for c, k in zip(cols, w)))
    out += ["  ".join(v.rjust(k) for v, k in zip(x, w)) for x in cells]
    return "\n".join(out) + f"\n\n{len(res['rows'])} rows in {res['seconds']:.1f} s\n"


def main_variance(args) -> int:
    """Entry from ``python -m probes.variance --testbed lm``."""
    import records
    if args.G < 2:
        print(f"error: --G {args.G}: group estimators need G ≥ 2", file=sys.stderr)
        return 2
    try:
        Rg.select(args.estimators, ())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log = (lambda m: print(m, file=sys.stderr)) if args.verbose else (lambda m: None)
    names = args.estimators if args.estimators != "all" else \
        "reinforce,rloo,dr_grpo,grpo,grpo[noLN],dapo,gspo,cispo,reinforce_pp,sft,luffy,hpt[γ=0,const]"
    res = run_lm(names, args.G, args.mc if args.mc >= 2 else 16, args.lm_ref, args.lm_steps, args.seed, log)
    import json
    print(json.dumps(records._jsonable(res), indent=1) if args.format == "json" else format_lm(res), end="")
    if not args.no_records:
        out = Path(args.out) if args.out else default_out("variance-lm")
        w = records.RunWriter(out)
        w.write_config({"probe": "variance", "testbed": "lm", "header": res["header"], "G": args.G})
        w.log_probe("variance", [{"probe": "variance", "estimator": r["estimator"],
                                  "setting": f"testbed=lm,G={r['G']},N={r['N']}", "metric": k, "value": v,
                                  "stderr": r.get(f"{k}_se", float("nan"))}
                                 for r in res["rows"] for k, v in r.items()
                                 if isinstance(v, float) and not k.endswith("_se")])
        print(f"records: {out}", file=sys.stderr)
    return 0
