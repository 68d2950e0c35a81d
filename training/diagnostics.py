"""Live gradient diagnostics of a training step, from the micro-batch gradients the step already
computes (no extra rollouts, no extra forward or backward pass). Every ``--diagnostics-every K``
steps (0 = never) the loop asks `for_step` for a `StepDiagnostics`, otherwise it gets the null
object `NoDiagnostics`; both answer the same three calls::

    diag = for_step(cfg.diagnostics_every, step, rows, G, est)
    diag.weights(batch, plan, rows_idx)        # per mini-batch: the prompts' realised weights
    diag.start(params, per_pass)                # before an optimizer step's micro-batches
    with diag.pass_of(n_rows, demo):            # per micro-batch of the first optimizer step:
        loss.backward()                         #   its gradient g_k, isolated in .grad
    diag.gradient(params, dist, per_pass)       # after the gradient is summed over ranks,
                                                #   before clipping: SNR, B_simple, SFT vs RL
    m.update(diag.metrics(dist))

**Gradient noise** (McCandlish et al., arXiv 1812.06162, App. A.1; probes-spec §2.1). The update
is g = Σ_k g_k over K micro-batches of n_k rows (N = Σ n_k, all ranks). If rows contribute i.i.d.
vectors of mean μ and covariance Σ, E‖g_k‖²/n_k = n_k‖μ‖² + tr Σ and E‖g‖² = N²‖μ‖² + N tr Σ, so
with A = Σ_k ‖g_k‖²/n_k

    tr Σ  = (N·A − ‖g‖²) / (N(K − 1)),      ‖μ‖² = (A − K·tr Σ) / N          (unbiased)

and for one update tr Cov(g) = N tr Σ (``grad/noise_trcov``), ‖E g‖² = ‖g‖² − tr Cov(g) = N²‖μ‖²
(``grad/mean_sq``), SNR = ‖E g‖²/tr Cov(g) (``grad/snr``) and B_simple = N·tr Cov(g)/‖E g‖² =
tr Σ/‖μ‖² in rows (``grad/noise_scale``) — the probes' definitions (`probes.moments.metrics`).
With equal n_k these are McCandlish's two-batch estimators with B_small = N/K and B_big = N.
Demonstration and rollout rows are not alike (a hybrid's two parts), so each source is its own
stratum: tr Cov(g) = Σ_s N_s tr Σ_s, each from its own micro-batches and its own part g_s of g
(a source with two rows or more always takes two micro-batches or more:
`training.batching.source_chunks`). A micro-batch is the unit: groups split across micro-batches
and batch-wide normalisers make units slightly dependent, and the per-step estimates are noisy
(McCandlish average ‖E g‖² and tr Cov over steps before the ratio; the dashboard's smoothing
does).

**SFT vs RL** (steps that train demonstrations and rollouts: hpt, luffy, srft...). Micro-batches
never mix demonstration and rollout rows (`training.backends.Replicated.micro_batches`), so the
update splits exactly into g_sft (the demonstration rows' gradient) and g_rl = g − g_sft (the
rollouts'); logged: ‖g_sft‖, ‖g_rl‖ and cos(g_sft, g_rl).

**Realised prompt weights** (probes-spec §1.3). Per difficulty level ℓ, over the step's rollouts
of that level, w_emp(ℓ) = mean Â of the correct rollouts − mean Â of the wrong ones (Â = 0 on rows
the update does not train, e.g. gated to SFT): a consistent estimate of h(1) − h(0) = w(p, G), the
factor E ĝ_x = w·∇p_x, when the level's prompts share p. Beside it the exact w(p̄, G) of the
estimator's advantage part at the level's pass rate p̄ (`probes.moments.group_weight`, G = rollouts
per group), for group-local advantages.

Cost: one scalar per parameter tensor per micro-batch, plus one gradient-sized buffer (g_sft)
on steps that train both demonstrations and rollouts; with several data-parallel processes a
few scalars are summed over ranks, and g_sft once per diagnostics step (FSDP: scalars only).
The gradient of the step is unchanged bit for bit: ``.grad`` accumulates g_k exactly as autograd
would.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

import records
from probes.moments import group_local, group_weight

from .distributed import is_sharded


class NoDiagnostics:
    """Null object: a step without diagnostics."""

    def weights(self, batch, plan, idx) -> None:
        pass

    def start(self, params: list, per_pass: bool) -> None:
        pass

    def pass_of(self, rows: int, demo: bool):
        return contextlib.nullcontext()

    def gradient(self, params: list, dist, per_pass: bool) -> None:
        pass

    def metrics(self, dist) -> dict:
        return {}


def for_step(every: int, step: int, rows: list, G: int, est) -> "StepDiagnostics | NoDiagnostics":
    """`StepDiagnostics` every ``every`` steps (0: never). ``rows``: the step's rows
    (`batching.Row`: difficulty level and verdict of each); ``G``: rollouts per group; ``est``:
    the stage's estimator (its advantage part gives the exact w(p, G))."""
    if not every or step % every:
        return NoDiagnostics()
    return StepDiagnostics([r.example.level if r.example is not None else "all" for r in rows], [r.correct for r in rows], G,
                           est.rollout_advantage)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if is_sharded(t) else t


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (_local(a).double() * _local(b).double()).sum()


def _total(parts: list, n: int = 0) -> torch.Tensor:
    """The sum of equally shaped float64 tensors on the CPU (zeros of size ``n`` when none)."""
    if not parts:
        return torch.zeros(n or (), dtype=torch.float64)
    return torch.stack([p.to(parts[0].device) for p in parts]).sum(0).cpu()


@dataclass
class StepDiagnostics:
    """The diagnostics of one step (see the module docstring): ``levels`` and ``correct`` per
    row of the step, G rollouts per group, the estimator's rollout ``advantage`` part."""

    levels: list
    correct: list
    G: int
    advantage: object
    sq: list = field(default_factory=list)       # ‖g_k‖² (this rank's part) per micro-batch
    rows: list = field(default_factory=list)     # n_k per micro-batch
    demo: list = field(default_factory=list)     # whether micro-batch k holds demonstrations
    params: list = field(default_factory=list)   # measured parameters
    sft: list | None = None                      # Σ g_k of demonstration micro-batches
    done: bool = False                           # the first optimizer step is measured
    out: dict = field(default_factory=dict)
    w: dict = field(default_factory=dict)        # level -> [Σ Â correct, n correct, Σ Â wrong, n wrong]

    # -- realised prompt weights ----------------------------------------------------------
    def weights(self, batch, plan, idx: torch.Tensor) -> None:
        """Add the rollouts of one planned mini-batch (``idx``: its rows in the step) to the
        per-level sums: Â (its token mean; 0 on rows the rollout part does not train) of correct
        and of wrong rows."""
        with torch.no_grad():
            mask = batch.mask
            adv = (plan.adv * mask).sum(-1) / mask.sum(-1).clamp_min(1)
            adv = torch.where(plan.coef != 0, adv, torch.zeros_like(adv)).double().tolist()
        for r, demo, a in zip(idx.tolist(), batch.is_demo.tolist(), adv):
            if demo:
                continue
            s = self.w.setdefault(self.levels[r], [0.0, 0, 0.0, 0])
            j = 0 if self.correct[r] else 2
            s[j] += a
            s[j + 1] += 1

    # -- per micro-batch gradients ----------------------------------------------------------
    @contextlib.contextmanager
    def pass_of(self, rows: int, demo: bool):
        """Around one micro-batch's backward pass of the first optimizer step: ``.grad`` is
        set aside, the pass writes g_k alone, then g_k is measured and added back."""
        if self.done or not self.params:
            yield
            return
        kept = [p.grad for p in self.params]
        for p in self.params:
            p.grad = None
        try:
            yield
        finally:
            sq = []  # on the gradients' device: one transfer per micro-batch
            if demo and self.sft is None:
                self.sft = [None] * len(self.params)
            for i, (p, acc) in enumerate(zip(self.params, kept)):
                g = p.grad
                if g is None:
                    p.grad = acc
                    continue
                sq.append(_dot(g, g))
                if demo:  # this rank's part (its shard, under FSDP) of the demonstrations' g
                    gl = _local(g).detach()
                    self.sft[i] = gl.clone() if self.sft[i] is None else self.sft[i].add_(gl)
                if acc is not None:
                    p.grad = acc.add_(g)   # as autograd accumulates: acc + g_k
            self.sq.append(float(torch.stack(sq).sum()) if sq else 0.0)
            self.rows.append(rows)
            self.demo.append(demo)

    def start(self, params: list, per_pass: bool) -> None:
        """Measure ``params`` in the next optimizer step (with ``per_pass``, FSDP: only the
        sharded ones, whose per-pass gradient is already every rank's)."""
        if not self.done:
            self.params = [p for p in params if is_sharded(p) or not per_pass]

    def gradient(self, params: list, dist, per_pass: bool) -> None:
        """After the gradient g is summed over ranks (before clipping): the SFT/RL split and the
        noise estimates of the first optimizer step. A collective on every rank."""
        if self.done or not self.params:
            return
        self.done = True
        reduce_ = dist.sum_tensor if per_pass else (lambda t: t)
        sq = torch.tensor(self.sq, dtype=torch.float64)
        n = torch.tensor(self.rows, dtype=torch.float64)
        demo = torch.tensor(self.demo, dtype=torch.bool)
        if per_pass:  # FSDP: pass k of every rank is one unit (one source), its gradient sharded
            sq, n = dist.sum_tensor(sq), dist.sum_tensor(n)
        stats = torch.stack([torch.stack([(sq[u] / n[u]).sum(), n[u].sum(), u.sum().double()])
                             for u in ((n > 0) & ~demo, (n > 0) & demo)])  # [rollouts, demos] x [A, N, K]
        if not per_pass:  # each rank's units are its own: sum the sums
            stats = dist.sum_tensor(stats)
        g2 = float(reduce_(_total([_dot(p.grad, p.grad) for p in self.params if p.grad is not None])))
        strata = [(A, N, K, g2) for A, N, K in stats.tolist() if N > 0]
        if len(strata) == 2:  # demonstrations and rollouts: ‖g_rl‖², ‖g_sft‖² from the split
            ss, rr = self._split(dist, reduce_, per_pass)
            strata = [strata[0][:3] + (rr,), strata[1][:3] + (ss,)]
        self.sft = None
        if g2 > 0 and strata and all(K >= 2 for _, _, K, _ in strata):  # a zero update has no noise
            self._noise(strata, g2)

    def _noise(self, strata: list, g2: float) -> None:
        """tr Cov g = Σ over sources of N_s·tr Σ_s, each from its own units (the module
        docstring's equations per source); ‖E g‖² = ‖g‖² − tr Cov g."""
        trcov = sum((N * A - gs2) / (K - 1) for A, N, K, gs2 in strata)  # N_s · tr Σ_s
        mean_sq = g2 - trcov
        N = sum(N for _, N, _, _ in strata)
        self.out.update({records.GRAD_NOISE_TRCOV: trcov, records.GRAD_MEAN_SQ: mean_sq})
        if trcov:   # a ratio with a zero estimate below it is undefined: not logged (never ±inf)
            self.out[records.GRAD_SNR] = mean_sq / trcov
        if mean_sq:  # e.g. two units, one with a zero gradient: ‖E g‖² estimated as exactly 0
            self.out[records.GRAD_NOISE_SCALE] = N * trcov / mean_sq

    def _split(self, dist, reduce_, per_pass: bool) -> tuple[float, float]:
        """‖g_sft‖, ‖g_rl‖ and their cosine, g_rl = g − g_sft; returns (‖g_sft‖², ‖g_rl‖²)."""
        sft = [s if s is not None else torch.zeros_like(_local(p.grad) if p.grad is not None else _local(p))
               for s, p in zip(self.sft or [None] * len(self.params), self.params)]
        if not per_pass and dist.world > 1:  # each rank holds its own rows' part: sum it
            flat = dist.sum_tensor(torch.cat([s.reshape(-1) for s in sft]))
            sft, i = [], 0
            for p in self.params:
                k = _local(p).numel()
                sft.append(flat[i:i + k].view_as(_local(p)))
                i += k
        sums = []
        for s, p in zip(sft, self.params):
            g = _local(p.grad) if p.grad is not None else torch.zeros_like(s)
            s, r = s.double(), g.double() - s.double()
            sums.append(torch.stack([(s * s).sum(), (r * r).sum(), (s * r).sum()]))
        ss, rr, sr = reduce_(_total(sums, 3)).tolist()
        self.out.update({records.GRAD_NORM_SFT: math.sqrt(ss), records.GRAD_NORM_RL: math.sqrt(rr),
                         records.GRAD_COS_SFT_RL: sr / math.sqrt(ss * rr) if ss > 0 and rr > 0 else math.nan})
        return ss, rr

    # -- the step's metrics ------------------------------------------------------------------
    def metrics(self, dist) -> dict:
        """The step's diagnostics (every rank takes part: the prompt weights are gathered)."""
        out = dict(self.out)
        pooled: dict = {}
        for part in dist.gather([self.w]):
            for level, s in part.items():
                pooled[level] = [a + b for a, b in zip(pooled.get(level, [0.0, 0, 0.0, 0]), s)]
        for level, (a1, n1, a0, n0) in sorted(pooled.items()):
            if n1 + n0 == 0:
                continue
            p = n1 / (n1 + n0)
            out[records.grad_pass_rate_key(level)] = p
            if n1 and n0:
                out[records.grad_w_empirical_key(level)] = a1 / n1 - a0 / n0
            if group_local(self.advantage) and self.G >= 1:
                out[records.grad_w_exact_key(level)] = float(group_weight(self.advantage, torch.tensor([p]), self.G)[0])
        return out
