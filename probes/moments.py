"""Exact and Monte Carlo moments of an estimator's gradient on the tree testbed.

The measured gradient is always ĝ = −∇_θ est(batch).loss of the project's estimator object:
the per-token coefficients d_{i,t} = −∂loss/∂logp_{i,t} come from autograd through
``est.plan``/``est.terms`` on a `estimators.Batch`, and are mapped to parameter space with the
exact token scores S = ∂log π_θ(y_t|s_t)/∂θ (chain rule), ĝ = Σ_{i,t} d_{i,t} S_{y_i,t}.

**Exact moments** (probes-spec §2.2, App. A). Within one group, let row i have slot type
τ ∈ {S (rollout, r=1), F (rollout, r=0), D (demonstration)} and let c be the number of correct
rollouts. When every row's coefficient depends only on its own sequence and on the group's
reward configuration c (group-local advantage, gate and normaliser — `exact_support`), then,
conditionally on c, the rows of type τ are i.i.d. from q_τ (π_old restricted to C_x, to its
complement, or π_β) and

    E[ĝ_x]   = Σ_c P(c) Σ_τ n_τ(c) μ_τ(c),                  μ_τ(c) = E_{y∼q_τ} φ_τ,c(y)
    E‖ĝ_x‖²  = Σ_c P(c) [ Σ_τ n_τ(c)(e_τ(c) − ‖μ_τ(c)‖²) + ‖Σ_τ n_τ(c) μ_τ(c)‖² ],
    e_τ(c) = E_{y∼q_τ}‖φ_τ,c(y)‖²,    P(c) = Binomial(c; n, p_old,x),

with φ_τ,c(y) the gradient of a type-τ row holding y in a group with configuration c. φ is read
off the estimator by placing every sequence of every type into a group of the right
configuration (many groups in one Batch); the normaliser is rescaled from that enumeration
batch to an update of P prompts × R groups. Rows that should coincide are checked to coincide
(this catches coefficients that depend on other rows' sequences; batch-global normalisers and
advantages are excluded up front by `exact_support`). Groups are independent, so
m = R Σ_x E ĝ_x and tr Cov = R Σ_x (E‖ĝ_x‖² − ‖E ĝ_x‖²).

**Monte Carlo**: M independent updates sampled from π_old (and π_β), pushed through the same
Batch path; used where exact moments do not exist and to check them (agreement within 3 SE).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor

from estimators import Batch, Hybrid, parts as Pt
from estimators.catalogue import PassAtK
from estimators.estimator import DEMOS, SFT_LABEL
from estimators.slots import CONSTANT, ROWS, TOKENS

from .testbed import Tree

TYPES = ("S", "F", "D")


class NotExact(ValueError):
    """The estimator's row coefficients are not group-local; exact moments do not apply."""


# ------------------------------------------------------------------------------ the setting


@dataclass
class Context:
    """One measurement setting: sampling policy θ_old, evaluated policy θ (θ ≠ θ_old when stale),
    group size G and R groups per prompt (budget = R·G samples per prompt), on ``prompts``."""

    tree: Tree
    theta_old: Tensor
    theta: Tensor
    G: int
    R: int = 1
    prompts: Tensor | None = None
    _rows: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.prompts = self.tree.train_idx if self.prompts is None else self.prompts
        with torch.no_grad():
            self.logp_tok = self.tree.token_logp(self.theta)
            self.logp_old_tok = self.tree.token_logp(self.theta_old)
        self.pi_old = self.logp_old_tok.sum(-1).exp()  # [X, J]
        self.p_old = (self.pi_old * self.tree.correct).sum(-1)

    @property
    def P(self) -> int:
        return len(self.prompts)

    @cached_property
    def S(self) -> Tensor:
        """[P, J, H, D] token scores at θ for the probed prompts."""
        return self.tree.token_scores(self.theta)[self.prompts]

    @cached_property
    def gram(self) -> Tensor:
        """[P, J, H, H] ⟨S_t, S_s⟩ per sequence (for ‖φ(y)‖² without materialising φ)."""
        return torch.einsum("xjtd,xjsd->xjts", self.S, self.S)

    @cached_property
    def values_old(self) -> Tensor:
        return self.tree.values(self.theta_old)

    @cached_property
    def entropy_old(self) -> Tensor:
        """[X, J, H] π_old's next-token entropy along each sequence (entropy-masked estimators)."""
        return self.tree.token_entropy(self.theta_old)

    @cached_property
    def greedy_reward_old(self) -> Tensor:
        """[X] reward of each prompt's greedy sequence under π_old."""
        return self.tree.correct[torch.arange(self.tree.X), self.tree.greedy(self.theta_old)]

    @cached_property
    def sum_pi_squared_old(self) -> Tensor:
        return self.tree.sum_pi_squared(self.theta_old)

    @cached_property
    def q(self) -> Tensor:
        """[3, P, J] slot distributions q_S, q_F, q_D (π_old on C_x, on its complement, π_β)."""
        x = self.prompts
        pi, r, p = self.pi_old[x], self.tree.correct[x], self.p_old[x][:, None]
        return torch.stack([pi * r / p.clamp_min(1e-300), pi * (1 - r) / (1 - p).clamp_min(1e-300),
                            self.tree.demo[x]])

    def binom(self, n: int) -> Tensor:
        """[P, n+1] P(c correct of n rollouts) under π_old."""
        p = self.p_old[self.prompts][:, None]
        c = torch.arange(n + 1, dtype=p.dtype)
        comb = torch.tensor([math.comb(n, k) for k in range(n + 1)], dtype=p.dtype)
        return comb * p ** c * (1 - p) ** (n - c)


def layout(est, G: int) -> tuple[int, int]:
    """(rollouts, demonstrations) per group, from the estimator's declared trainer steps:
    LUFFY/SRFT G−1 + 1 (``demo_in_group``), HPT G + 1 (``gated_demos``), SFT 0 + G."""
    t = est.trainer
    if t.demo_in_group:
        return G - 1, 1
    if t.gated_demos:
        return G, 1
    if getattr(est, "rows", None) == DEMOS:
        return 0, G
    return G, 0


GROUP_LOCAL = (Pt.Ones, Pt.Reward, Pt.GroupNormalised, PassAtK)


def group_local(advantage) -> bool:
    """Whether an advantage part depends only on its own group's rewards (so w(p, G) applies)."""
    return isinstance(advantage, GROUP_LOCAL)


def exact_support(est) -> tuple[bool, str]:
    """Whether exact moments apply: group-local advantage (Ones, Reward, GroupNormalised) and a
    normaliser that is fixed given the update size (row count or constant; for a `Hybrid`, whose
    gate changes the trained row count per prompt, only constants)."""
    counts = {r.counts for r in est.reductions()}
    if isinstance(est, Hybrid):
        if counts != {CONSTANT}:
            return False, "gate-dependent normaliser couples prompts"
        if not all(group_local(e.advantage) for e in (est.rl, est.sft)):
            return False, "advantage not group-local"
        return True, ""
    if TOKENS in counts:
        return False, f"{type(est.reduction).__name__} normaliser couples rows"
    if not group_local(est.advantage):
        return False, f"{type(est.advantage).__name__} advantage is not group-local"
    return True, ""


# ------------------------------------------------------------------------------ Batch path


def make_batch(ctx: Context, est, x: Tensor, j: Tensor, demo: Tensor, group: Tensor,
               prepare=lambda f: f) -> tuple[Batch, Tensor]:
    """A Batch of rows (prompt x, sequence j); returns it with its logp leaf (requires grad)."""
    leaf = ctx.logp_tok[x, j].clone().requires_grad_(True)
    f = dict(logp=leaf, mask=ctx.tree.mask[j], reward=ctx.tree.correct[x, j], group=group,
             is_demo=demo, logp_old=ctx.logp_old_tok[x, j])
    if "values" in est.needs:
        f["values"] = ctx.values_old[x, j]
    if "logp_ref" in est.needs:   # a KL to π_ref (REINFORCE++'s reward): measured at π_ref = π_old
        f["logp_ref"] = f["logp_old"]
    if "entropy" in est.needs:    # the entropy mask reads π_old's token entropy
        f["entropy"] = ctx.entropy_old[x, j]
    if "reward_baseline" in est.needs:   # ReMax: the reward of π_old's greedy sequence
        f["reward_baseline"] = ctx.greedy_reward_old[x]
    if "sum_pi_squared" in est.needs:    # optimal token baseline: Σ_v π_old(v)² per token
        f["sum_pi_squared"] = ctx.sum_pi_squared_old[x, j]
    return Batch(**prepare(f)), leaf


@dataclass
class RowGrads:
    """Per-row outputs of one pass through the estimator: d [B, T] = −∂loss/∂logp, the count of
    clipped (mask ≠ 1) trained tokens, trained tokens, and per-row gate decision (SFT or not)."""

    d: Tensor
    off: Tensor
    tokens: Tensor
    sft: Tensor


def row_grads(est, b: Batch, leaf: Tensor) -> RowGrads:
    plan = est.plan(b)
    loss = est.terms(b, plan).sum()
    d = -torch.autograd.grad(loss, leaf)[0]
    core, cplan = (est.rl, plan.parts[0]) if isinstance(est, Hybrid) else (est, plan)
    with torch.no_grad():
        trained = b.mask * (cplan.coef != 0).to(b.mask.dtype)[:, None]
        off = (core.mask.on(b, core.denominator(b), cplan.adv, cplan.picked) != 1).to(b.mask.dtype) * trained
        sft_groups = {g for g, label in plan.labels().items() if label == SFT_LABEL}
        sft = torch.tensor([int(g) in sft_groups for g in b.group.tolist()], dtype=torch.bool)
    return RowGrads(d.detach(), off.sum(-1), trained.sum(-1), sft)


# ------------------------------------------------------------------------------ exact moments


@dataclass
class Moments:
    """mean m [D], tr Cov, second moment E‖ĝ‖², and expectations of scalar extras.
    ``samples`` [M, D] for Monte Carlo (None when exact)."""

    mean: Tensor
    trcov: float
    second: float
    p_zero: float
    gate_frac: float
    clip_frac: float
    exact: bool
    samples: Tensor | None = None


def _enumeration(ctx: Context, nR: int, nD: int) -> dict:
    """Rows placing every sequence of every slot type into a group of each configuration c."""
    key = (nR, nD)
    if key in ctx._rows:
        return ctx._rows[key]
    tree = ctx.tree
    cols = {k: [] for k in ("xi", "j", "tau", "c", "group")}
    g = 0
    for xi, x in enumerate(ctx.prompts.tolist()):
        pools = [torch.nonzero(tree.correct[x] > 0).flatten().tolist(),
                 torch.nonzero(tree.correct[x] == 0).flatten().tolist(),
                 torch.nonzero(tree.demo[x] > 0).flatten().tolist()]
        for c in range(nR + 1):
            counts = (c, nR - c, nD)
            K = max(math.ceil(len(pl) / n) for pl, n in zip(pools, counts) if n > 0)
            for k in range(K):
                for tau, (pl, n) in enumerate(zip(pools, counts)):
                    for s in range(n):
                        for key_, v in zip(cols, (xi, pl[(k * n + s) % len(pl)], tau, c, g)):
                            cols[key_].append(v)
                g += 1
    out = {k: torch.tensor(v, dtype=torch.long) for k, v in cols.items()}
    out["n_groups"] = g
    ctx._rows[key] = out
    return out


def _dense(values: Tensor, idx: tuple, shape: tuple, what: str) -> Tensor:
    """Scatter per-row ``values`` to a dense tensor at ``idx`` and check that rows sharing an
    index agree (the group-locality the exact formula needs)."""
    out = torch.zeros(shape + values.shape[1:], dtype=values.dtype)
    out[idx] = values
    err = (out[idx] - values).abs().max() if values.numel() else torch.tensor(0.0)
    scale = values.abs().max().clamp_min(1e-30) if values.numel() else 1.0
    if float(err) > 1e-9 * float(scale):
        raise NotExact(f"{what} differs between rows with the same (type, prompt, c, sequence): "
                       f"not group-local (max difference {float(err):.3g})")
    return out


def exact_moments(ctx: Context, est, prepare=lambda f: f, unit: float = 1.0) -> Moments:
    """Exact E ĝ and tr Cov ĝ of one update (P prompts × R groups) — see the module docstring."""
    ok, why = exact_support(est)
    if not ok:
        raise NotExact(why)
    nR, nD = layout(est, ctx.G)
    rows = _enumeration(ctx, nR, nD)
    x = ctx.prompts[rows["xi"]]
    b, leaf = make_batch(ctx, est, x, rows["j"], rows["tau"] == 2, rows["group"], prepare)
    rg = row_grads(est, b, leaf)
    d = rg.d * _z_factor(est, rows["n_groups"], ctx.P, ctx.R) * unit
    P, C, J = ctx.P, nR + 1, ctx.tree.J
    idx = (rows["tau"], rows["xi"], rows["c"], rows["j"])
    Dd = _dense(d, idx, (3, P, C, J), "row gradient")
    off = _dense(rg.off, idx, (3, P, C, J), "clip count")
    tok = _dense(rg.tokens, idx, (3, P, C, J), "token count")
    sft = torch.zeros(P, C, dtype=torch.bool)
    sft[rows["xi"], rows["c"]] = rg.sft

    c = torch.arange(C)
    n = torch.stack([c, nR - c, torch.full_like(c, nD)]).to(d.dtype)  # [3, C]
    q = ctx.q  # [3, P, J]
    Pc = ctx.binom(nR)  # [P, C]
    mu = torch.einsum("axcjt,axj,xjtd->axcd", Dd, q, ctx.S)  # [3, P, C, D]
    e = torch.einsum("axcjt,xjts,axcjs,axj->axc", Dd, ctx.gram, Dd, q)
    tot = torch.einsum("ac,axcd->xcd", n, mu)
    second_xc = torch.einsum("ac,axc->xc", n, e - (mu * mu).sum(-1)) + (tot * tot).sum(-1)
    m_x = torch.einsum("xc,xcd->xd", Pc, tot)
    second_x = (Pc * second_xc).sum(-1)
    R = ctx.R
    mean = R * m_x.sum(0)
    trcov = float(R * (second_x - (m_x * m_x).sum(-1)).sum())
    second = trcov + float(mean @ mean)
    zero = ((Dd != 0).flatten(3).any(-1) & (n[:, None, :] > 0)).any(0)  # [P, C] any nonzero row
    expect = lambda v: float(torch.einsum("xc,ac,axcj,axj->", Pc, n, v, q))  # noqa: E731
    tokens = expect(tok)
    return Moments(mean, trcov, second,
                   p_zero=float((Pc * (~zero).to(Pc.dtype)).sum(-1).mean()),
                   gate_frac=float((Pc * sft.to(Pc.dtype)).sum(-1).mean()),
                   clip_frac=expect(off) / tokens if tokens > 0 else 0.0, exact=True)


# ------------------------------------------------------------------------------ Monte Carlo


def _z_factor(est, n_groups: int, P: int, R: int) -> float:
    """Normaliser correction from a batch of ``n_groups`` groups to one update of P·R groups:
    row-count normalisers scale with the group count, constants do not."""
    return n_groups / (P * R) if est.reductions()[0].counts == ROWS else 1.0


def _draw(ctx: Context, nR: int, nD: int, gen: torch.Generator) -> Tensor:
    """[P, R, nR + nD] sequence indices of one update: rollouts from π_old, demos from π_β."""
    P, R, x = ctx.P, ctx.R, ctx.prompts
    out = []
    if nR:
        out.append(torch.multinomial(ctx.pi_old[x], R * nR, replacement=True, generator=gen).view(P, R, nR))
    if nD:
        out.append(torch.multinomial(ctx.tree.demo[x], R * nD, replacement=True, generator=gen).view(P, R, nD))
    return torch.cat(out, -1)[None]


def mc_moments(ctx: Context, est, M: int, seed: int = 0, prepare=lambda f: f, unit: float = 1.0,
               chunk: int | None = None) -> Moments:
    """M independent updates (P prompts × R groups each), sampled with a seeded generator.

    For estimators with `exact_support` (group-local), ``chunk`` replicates share one Batch as
    separate groups (normaliser rescaled as in `exact_moments`); otherwise each update is its
    own Batch. Both give the same distribution of ĝ."""
    nR, nD = layout(est, ctx.G)
    if chunk is None:
        chunk = 64 if exact_support(est)[0] else 1
    gen = torch.Generator().manual_seed(seed)
    P, R, J, H = ctx.P, ctx.R, ctx.tree.J, ctx.tree.cfg.H
    x_p = ctx.prompts
    coeffs = torch.zeros(M, P, J, H, dtype=torch.float64)
    zero = gate = off = tokens = 0.0
    for m0 in range(0, M, chunk):
        n = min(chunk, M - m0)
        shape = (n, P, R, nR + nD)
        xi = torch.arange(P)[None, :, None, None].expand(shape).reshape(-1)
        rep = torch.arange(n)[:, None, None, None].expand(shape).reshape(-1)
        grp = torch.arange(n * P * R).view(n, P, R, 1).expand(shape).reshape(-1)
        demo = (torch.arange(nR + nD) >= nR).expand(shape).reshape(-1)
        j = torch.cat([_draw(ctx, nR, nD, gen) for _ in range(n)]).reshape(-1)
        b, leaf = make_batch(ctx, est, x_p[xi], j, demo, grp, prepare)
        rg = row_grads(est, b, leaf)
        coeffs[m0:m0 + n].index_put_((rep, xi, j), rg.d * _z_factor(est, n * P * R, P, R), accumulate=True)
        nz = torch.zeros(n * P * R, dtype=torch.bool).index_put_((grp,), (rg.d != 0).any(-1), accumulate=True)
        zero += float((~nz).to(torch.float64).sum()) / (P * R)
        gate += float(rg.sft.view(n * P * R, -1)[:, 0].to(torch.float64).sum()) / (P * R)
        off += float(rg.off.sum())
        tokens += float(rg.tokens.sum())
    g = torch.einsum("mxjt,xjtd->md", coeffs, ctx.S) * unit
    mean = g.mean(0)
    trcov = float(g.var(0, unbiased=True).sum()) if M > 1 else float("nan")
    return Moments(mean, trcov, float((g * g).sum(-1).mean()), zero / M, gate / M,
                   off / tokens if tokens > 0 else 0.0, exact=False, samples=g)


# ------------------------------------------------------------------------------ metrics


def group_weight(advantage, p: Tensor, G: int) -> Tensor:
    """w(p, G) = h(1) − h(0), h(a) = E[Â_1 | r_1 = a] (probes-spec §1.3), computed by applying
    the estimator's own advantage part to every reward configuration of one group (binomial
    weights over the other G−1 rewards). For GRPO's std normalisation w(p,2) ≡ 1/√2 and
    w → 1/√(p(1−p)) as G → ∞. ``p`` [K] → [K]."""
    cfg = [[a] + [1.0] * c + [0.0] * (G - 1 - c) for a in (0, 1) for c in range(G)]
    r = torch.tensor(cfg, dtype=torch.float64).reshape(-1)
    grp = torch.arange(2 * G).repeat_interleave(G)
    z = torch.zeros(len(r), 1, dtype=torch.float64)
    A = advantage(Batch(logp=z, mask=torch.ones_like(z), reward=r, group=grp)).view(2, G, G)[:, :, 0]
    p = torch.as_tensor(p, dtype=torch.float64).reshape(-1, 1)
    c = torch.arange(G, dtype=torch.float64)
    comb = torch.tensor([math.comb(G - 1, k) for k in range(G)], dtype=torch.float64)
    wts = comb * p ** c * (1 - p) ** (G - 1 - c)  # [K, G]
    h = wts @ A.T  # [K, 2]
    return h[:, 1] - h[:, 0]


def metrics(m: Tensor, trcov: float, g_true: Tensor, g_target: Tensor, N: int, groups: int) -> dict:
    """Bias / variance metrics of probes-spec §1.2 and §2.1 from m = E ĝ and tr Cov ĝ_N."""
    nt, nm = float(g_true.norm()), float(m.norm())
    alpha = float(m @ g_true) / nt ** 2
    cos = float(m @ g_true) / max(nm * nt, 1e-300)
    cos_t = float(m @ g_target) / max(nm * float(g_target.norm()), 1e-300)
    dir_err = float((m / alpha - g_true).norm()) / nt if alpha != 0 else float("inf")
    m2 = max(nm ** 2, 1e-300)
    return {"scale": alpha, "cos": cos, "cos_tgt": cos_t, "dir_err": dir_err,
            "rel_bias": float((m - g_true).norm()) / nt, "trCov": trcov,
            "trCov/a2": trcov / alpha ** 2 if alpha != 0 else float("inf"),
            "SNR": nm ** 2 / trcov if trcov > 0 else float("inf"),
            "B_simple": N * trcov / m2, "B_groups": groups * trcov / m2, "work_var": trcov * N,
            "norm_m": nm}


def mc_extras(samples: Tensor, g_true: Tensor) -> dict:
    """Ilyas-style MC metrics (arXiv 1811.02553): E[cos(ĝ_N, ∇J)] and the mean cosine between
    independent estimates (disjoint pairs), each with its standard error."""
    cos = samples @ g_true / (samples.norm(dim=-1) * g_true.norm()).clamp_min(1e-300)
    k = samples.shape[0] // 2
    a, b = samples[:k], samples[k:2 * k]
    pair = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)
    se = lambda v: float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")  # noqa: E731
    return {"E[cos]": float(cos.mean()), "E[cos]_se": se(cos),
            "pair_cos": float(pair.mean()) if k else float("nan"), "pair_cos_se": se(pair)}


def agreement(exact: Moments, mc: Moments, g_true: Tensor, z_max: float = 3.0) -> dict:
    """MC-vs-exact check (probes-spec §6.3): z-scores of the MC scale ⟨ĝ,∇J⟩/‖∇J‖² and of the
    MC second moment ‖ĝ‖² against their exact values; ``ok`` when both |z| < z_max."""
    s = mc.samples
    M = s.shape[0]
    n2 = float(g_true @ g_true)
    proj = s @ g_true / n2
    z_scale = (float(proj.mean()) - float(exact.mean @ g_true) / n2) / max(float(proj.std()) / math.sqrt(M), 1e-300)
    sq = (s * s).sum(-1)
    z_sq = (float(sq.mean()) - exact.second) / max(float(sq.std()) / math.sqrt(M), 1e-300)
    if float(proj.std()) == 0 and float(sq.std()) == 0:  # deterministic update: compare values
        z_scale = 0.0 if math.isclose(float(proj.mean()), float(exact.mean @ g_true) / n2, rel_tol=1e-9, abs_tol=1e-15) else float("inf")
        z_sq = 0.0 if math.isclose(float(sq.mean()), exact.second, rel_tol=1e-9, abs_tol=1e-15) else float("inf")
    return {"z_scale": z_scale, "z_second": z_sq, "ok": abs(z_scale) < z_max and abs(z_sq) < z_max}
