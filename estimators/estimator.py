"""`Estimator` (one instance of the unified estimator) and `Hybrid` (a gated mixture of two).

Two phases, so that micro-batching and data parallelism never change the gradient:

    plan = est.plan(batch)                 # once per optimizer step, on the whole batch:
                                           #   advantages, gate, normaliser Z (global)
    for idx in micro_batches:
        est(batch.select(idx), plan.select(idx)).loss.backward()

``est(batch)`` with no plan does both on one batch. ``plan(batch, all_reduce=f)`` takes a
function that sums a tensor over data-parallel ranks (e.g. ``dist.all_reduce``), so every rank
uses the global normaliser.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Callable, Optional

import torch
from torch import Tensor

from . import parts as P
from .batch import Batch, BatchError
from .slots import CONSTANT, ROWS, TOKENS, Advantage, Denominator, Gate, Likelihood, Mask, Reduction

ROLLOUTS, DEMOS, ALL = "rollouts", "demos", "all"


@dataclass(frozen=True)
class TrainerSteps:
    """Batch-level steps a method needs that are not part of the gradient estimator; the trainer
    reads them. ``demo_in_group``: each group holds n−1 rollouts + 1 demonstration (LUFFY/SRFT).
    ``gated_demos``: rollouts of SFT-gated prompts are dropped and the demo trained (HPT).
    ``dynamic_sampling``: drop groups whose rewards are all equal and refill (DAPO).
    ``overlong_buffer``: soft length penalty over the last L_cache tokens (DAPO Eq. 13).
    ``value_head`` / ``epochs``: PPO's critic and sample-reuse epochs."""

    demo_in_group: bool = False
    gated_demos: bool = False
    dynamic_sampling: bool = False
    overlong_buffer: int = 0
    overlong_penalty: float = 1.0
    value_head: bool = False
    epochs: int = 1


SFT_LABEL, RL_LABEL = "sft", "rl"


def gate_label(alpha: float, beta: float) -> str:
    """A prompt's gate decision as a label: "sft" when only its demonstration is trained."""
    return SFT_LABEL if beta > 0 and alpha == 0 else RL_LABEL


@dataclass
class Plan:
    """Everything that depends on rows other than one's own, computed once per step.

    adv [B, T] advantages; coef [B] = row weight × gate coefficient / Z (0 for untrained rows);
    ent [B] entropy-bonus weight per row; parts: the components' plans (Hybrid); gate: per-prompt
    decisions {group, pass_rate, alpha, beta, label} (Hybrid only); returns [B, T]: the critic's
    targets when the advantage has them (GAE), else None; picked [B, T]: the tokens the mask
    chose over the whole step (`slots.Mask.pick`), else None."""

    adv: Tensor
    coef: Tensor
    ent: Tensor
    parts: tuple = ()
    gate: list = field(default_factory=list)
    returns: Optional[Tensor] = None
    picked: Optional[Tensor] = None

    @property
    def trained(self) -> Tensor:
        """[B] bool: rows with a non-zero weight (the others need no forward pass)."""
        w = (self.coef != 0) | (self.ent != 0)
        for part in self.parts:
            w = w | part.trained
        return w

    def labels(self) -> dict:
        """{group: "sft" | "rl"}: each prompt's gate decision (empty without a gate)."""
        return {d["group"]: d["label"] for d in self.gate}

    def select(self, idx: Tensor) -> "Plan":
        return Plan(self.adv[idx], self.coef[idx], self.ent[idx],
                    tuple(p.select(idx) for p in self.parts), self.gate,
                    None if self.returns is None else self.returns[idx],
                    None if self.picked is None else self.picked[idx])


class Output:
    """loss: the scalar *surrogate* (its value means nothing; its gradient is the estimator).
    stats: floats for logging, computed on first access (so an unlogged step pays nothing).
    gate: per-prompt decisions {group, pass_rate, alpha, beta, label} (Hybrid only).
    kl: the KL statistic of the rollout component (None without a KL term)."""

    def __init__(self, loss: Tensor, stats, gate: Optional[list] = None, kl_key: str = "kl"):
        self.loss, self._stats, self.gate, self._kl_key = loss, stats, gate or [], kl_key

    @property
    def stats(self) -> dict:
        if callable(self._stats):
            self._stats = self._stats()
        return self._stats

    @property
    def kl(self) -> Optional[float]:
        return self.stats.get(self._kl_key)


def _normaliser(reduction: Reduction, mask: Tensor, rows: Tensor, all_reduce) -> Tensor:
    """Z = scale · (what the reduction counts over ``rows``, summed over ranks)."""
    if reduction.counts == CONSTANT:
        return torch.tensor(reduction.scale, dtype=mask.dtype, device=mask.device)
    count = {TOKENS: lambda: (mask * rows[:, None]).sum(), ROWS: lambda: rows.to(mask.dtype).sum()}
    if reduction.counts not in count:
        raise ValueError(f"{P.describe(reduction)}.counts must be one of {TOKENS!r}, {ROWS!r}, "
                         f"{CONSTANT!r}; got {reduction.counts!r}")
    n = count[reduction.counts]()
    n = all_reduce(n) if all_reduce else n
    return n.clamp_min(1) * reduction.scale


def _entropy_weights(coef: float, b: Batch, rows: Tensor, all_reduce) -> Tensor:
    if not coef:
        return torch.zeros_like(b.reward)
    z = _normaliser(P.TokenMean(), b.mask, rows, all_reduce)
    return coef * rows.to(b.mask.dtype) / z


def _map(obj, fn: Callable, slots: tuple):
    """``obj`` with ``fn(slot, part)`` in place of each non-None part in ``slots``."""
    changes = {s: fn(s, getattr(obj, s)) for s in slots if getattr(obj, s) is not None}
    return replace(obj, **{s: v for s, v in changes.items() if v is not getattr(obj, s)})


@dataclass(frozen=True)
class Estimator:
    """One instance of grad_uni = 1_stable · (1/π_ref) · Â · ∇π_θ, reduced to a scalar.

    mask, denominator, advantage, likelihood, reduction: the five parts (see `parts`).
    rows: which rows it trains — "rollouts", "demos" or "all".
    kl: optional KL(π_θ‖π_ref) term; entropy_coef: optional entropy bonus (token mean).
    needs: Batch fields it requires. trainer: batch-level steps (see `TrainerSteps`).
    source: the reference (paper, section, equation)."""

    mask: Mask
    denominator: Denominator
    advantage: Advantage
    likelihood: Likelihood = P.Plain()
    reduction: Reduction = P.TokenMean()
    rows: str = ROLLOUTS
    kl: Optional[P.KLPenalty] = None
    entropy_coef: float = 0.0
    needs: tuple = ()
    trainer: TrainerSteps = TrainerSteps()
    source: str = ""
    name: str = "this estimator"

    SLOTS = ("mask", "denominator", "advantage", "likelihood", "reduction", "kl")

    # -- describing and rewriting itself ------------------------------------------------------
    def map_parts(self, fn: Callable) -> "Estimator":
        """This estimator with each part p replaced by ``fn(slot, p)``; slot is the field name
        ("mask", "denominator", ..., "kl"; absent parts are skipped). An identity ``fn`` gives an
        equal estimator."""
        return _map(self, fn, self.SLOTS)

    def with_kl(self, kl: Optional[P.KLPenalty]) -> "Estimator":
        return self.replace(kl=kl)

    def at_step(self, step: int) -> "Estimator":
        """This estimator at training step ``step`` (only gates are scheduled): itself."""
        return self

    @property
    def uses_entropy(self) -> bool:
        """Whether a step must compute the policy's entropy (an entropy bonus)."""
        return bool(self.entropy_coef)

    def reductions(self) -> list:
        """Per component, the reduction its normaliser uses (one for an Estimator)."""
        return [self.reduction]

    @property
    def plan_reads_old(self) -> bool:
        """Whether `plan` reads ``Batch.logp_old`` (π_θold must be scored before planning)."""
        return self.advantage.reads_old or getattr(self.mask, "reads_old", False)

    @property
    def rollout_advantage(self) -> Advantage:
        """The advantage part that weights on-policy rollouts (its w(p, G), probes-spec §1.3)."""
        return self.advantage

    # -- validation --------------------------------------------------------------------------
    def check(self, b: Batch) -> None:
        """Reject a batch this estimator cannot use, naming the field."""
        name = self.name
        if self.rows == ROLLOUTS and bool(b.is_demo.any()):
            raise BatchError(f"Batch.is_demo: {name} trains on on-policy rollouts only and has no "
                             f"use for the {int(b.is_demo.sum())} demonstration row(s)")
        if self.rows == DEMOS and not bool(b.is_demo.any()):
            raise BatchError(f"Batch.is_demo: {name} trains on demonstrations, but no row is marked is_demo")
        for f in self.needs + (tuple(getattr(self.kl, "needs", ())) if self.kl else ()):
            if getattr(b, f) is None:
                raise BatchError(f"Batch.{f} is required by {name} but was not given")

    def selected(self, b: Batch) -> Tensor:
        return {ROLLOUTS: b.rollouts, DEMOS: b.is_demo, ALL: torch.ones_like(b.is_demo)}[self.rows]

    # -- phase 1: once per optimizer step ---------------------------------------------------
    def plan(self, b: Batch, all_reduce: Optional[Callable] = None, weight: Optional[Tensor] = None,
             check: bool = True) -> Plan:
        """Advantages, row coefficients and the global normaliser for the batch ``b``.
        ``weight`` [B] (a gate's α or β per row) scales rows; rows with weight 0 are not trained
        and not counted in the normaliser."""
        if check:
            self.check(b)
        rows = self.selected(b)
        if weight is not None:
            rows = rows & (weight != 0)
        empty = rows & (b.mask.sum(-1) == 0)
        if bool((empty & b.is_demo).any()):
            raise BatchError(f"Batch.mask: row {int((empty & b.is_demo).nonzero()[0])} has no response "
                             "tokens, but it is a demonstration this estimator trains on")
        rows = rows & ~empty    # a fully masked rollout is not counted (as verl's agg_loss)
        with torch.no_grad():
            adv = self.advantage(b, all_reduce).to(b.logp.dtype)
            adv = adv[:, None].expand_as(b.logp) if adv.dim() == 1 else adv
            z = _normaliser(self.reduction, b.mask, rows, all_reduce)
            w = torch.ones_like(b.reward) if weight is None else weight
            coef = self.reduction.row_weight(b.mask) * rows.to(b.mask.dtype) * w / z
            ent = _entropy_weights(self.entropy_coef, b, rows, all_reduce)
            returns = self.advantage.returns(b, all_reduce)
            picked = self.mask.pick(b, adv, all_reduce)
        return Plan(adv.detach(), coef, ent, returns=returns, picked=picked)

    # -- phase 2: per micro-batch ------------------------------------------------------------
    def terms(self, b: Batch, plan: Optional[Plan] = None) -> Tensor:
        """[B, T] per-token contributions; ``terms(b).sum()`` is the surrogate loss:
        −M(ρ, Â)·Â·L(ρ)·w per token (w: the denominator's detached correction weight, after the
        mask), plus the KL term, times the row coefficient; minus the entropy bonus."""
        plan = plan if plan is not None else self.plan(b)
        ratio = self.denominator(b)
        stable = self.mask.on(b, ratio, plan.adv, plan.picked).detach()
        w = self.denominator.weight(b)
        stable = stable if w is None else stable * w
        t = -stable * plan.adv * self.likelihood(ratio)
        if self.kl is not None:
            t = t + self.kl.coef * self.kl(b, plan.picked)
        t = t * plan.coef[:, None]
        if b.entropy is not None:
            t = t - plan.ent[:, None] * b.entropy
        return t * b.mask

    def __call__(self, b: Batch, plan: Optional[Plan] = None) -> Output:
        plan = plan if plan is not None else self.plan(b)
        return Output(self.terms(b, plan).sum(), lambda: self.stats(b, plan))

    def stats(self, b: Batch, plan: Plan) -> dict:
        """Token means over the trained rows: advantage, clipped fraction, KL, entropy; max ρ."""
        with torch.no_grad():
            tok = b.mask * (plan.coef != 0).to(b.mask.dtype)[:, None]
            n = tok.sum().clamp_min(1)
            ratio = self.denominator(b)
            values = {"adv_mean": plan.adv, "clip_fraction": (self.mask.on(b, ratio, plan.adv, plan.picked) != 1).to(tok.dtype)}
            if self.kl is not None:
                values["kl"] = self.kl(b, plan.picked)
            if b.entropy is not None:
                values["entropy"] = b.entropy
            means = torch.stack([(v * tok).sum() / n for v in values.values()]
                                + [(ratio * tok).max() if tok.numel() else n * 0, tok.sum()]).tolist()
        return dict(zip(list(values) + ["ratio_max", "tokens"], means))

    def parts(self) -> dict:
        """The five parts (and extras) as readable strings, for tables and run records."""
        return {f.name: P.describe(getattr(self, f.name)) for f in fields(self)
                if f.name not in ("source", "needs", "name")}

    def replace(self, **changes) -> "Estimator":
        return replace(self, **changes)


@dataclass(frozen=True)
class Hybrid:
    """Gated mixture L = α(P)·L_rl + β(P)·L_sft per prompt (HPT, paper §2.4, Eq. 9–12, Alg. 1).

    P is the prompt's pass rate over its rollouts in the batch; the gate maps (c, n, P) to (α, β).
    ``rl`` trains on rollout rows (weighted α), ``sft`` on demonstration rows (weighted β), each
    with its own normaliser — or both with ``joint`` as one pooled normaliser (LUFFY).
    ``entropy_coef`` adds a token-mean entropy bonus over every trained row (official HPT)."""

    rl: Estimator
    sft: Estimator
    gate: Gate = P.Switch()
    joint: Optional[Reduction] = None
    entropy_coef: float = 0.0
    trainer: TrainerSteps = TrainerSteps()
    source: str = ""
    name: str = "this estimator"

    def map_parts(self, fn: Callable) -> "Hybrid":
        """As `Estimator.map_parts`, over the components' parts (slots "rl.mask", ...,
        "sft.reduction") and the Hybrid's own "gate" and "joint"."""
        h = replace(self, rl=self.rl.map_parts(lambda s, p: fn("rl." + s, p)),
                    sft=self.sft.map_parts(lambda s, p: fn("sft." + s, p)))
        return _map(h, fn, ("gate", "joint"))

    def at_step(self, step: int) -> "Hybrid":
        """This mixture with its gate at training step ``step`` (CHORD's scheduled μ)."""
        gate = self.gate.at_step(step)
        return self if gate is self.gate else self.replace(gate=gate)

    def with_kl(self, kl: Optional[P.KLPenalty]) -> "Hybrid":
        """The KL term on the rollout component (the demonstrations are not the policy's samples)."""
        return self.replace(rl=self.rl.with_kl(kl))

    @property
    def uses_entropy(self) -> bool:
        return bool(self.entropy_coef) or self.rl.uses_entropy or self.sft.uses_entropy

    def reductions(self) -> list:
        return [self.joint or self.rl.reduction, self.joint or self.sft.reduction]

    @property
    def plan_reads_old(self) -> bool:
        return self.rl.plan_reads_old or self.sft.plan_reads_old

    @property
    def rollout_advantage(self) -> Advantage:
        return self.rl.advantage

    @property
    def needs(self) -> tuple:
        return self.rl.needs + self.sft.needs

    def check(self, b: Batch) -> None:
        for f in self.needs:
            if getattr(b, f) is None:
                raise BatchError(f"Batch.{f} is required by {self.name} but was not given")

    def plan(self, b: Batch, all_reduce: Optional[Callable] = None, check: bool = True) -> Plan:
        if check:
            self.check(b)
        c, n, p = P.pass_rates(b)
        alpha, beta = self.gate(c, n, p)
        decisions = _decisions(b, p, alpha, beta)
        rl, sft = self.rl, self.sft
        if self.joint is not None:  # one pooled normaliser over the rows both components train
            rl, sft = rl.replace(reduction=self.joint), sft.replace(reduction=self.joint)
            rows = (rl.selected(b) & (alpha != 0)) | (sft.selected(b) & (beta != 0))
            z = _normaliser(self.joint, b.mask, rows, all_reduce)
            zr = _normaliser(self.joint, b.mask, rl.selected(b) & (alpha != 0), all_reduce)
            zs = _normaliser(self.joint, b.mask, sft.selected(b) & (beta != 0), all_reduce)
            alpha, beta = alpha * zr / z, beta * zs / z
        prl = rl.plan(b, all_reduce, weight=alpha, check=False)
        psft = sft.plan(b, all_reduce, weight=beta, check=False)
        trained = (prl.coef != 0) | (psft.coef != 0)
        ent = _entropy_weights(self.entropy_coef, b, trained, all_reduce)
        return Plan(prl.adv, prl.coef, ent, (prl, psft), decisions, prl.returns)

    def terms(self, b: Batch, plan: Optional[Plan] = None) -> Tensor:
        plan = plan if plan is not None else self.plan(b)
        t = self.rl.terms(b, plan.parts[0]) + self.sft.terms(b, plan.parts[1])
        if b.entropy is not None:
            t = t - plan.ent[:, None] * b.entropy * b.mask
        return t

    def __call__(self, b: Batch, plan: Optional[Plan] = None) -> Output:
        plan = plan if plan is not None else self.plan(b)
        return Output(self.terms(b, plan).sum(), lambda: self.stats(b, plan), plan.gate, kl_key="rl/kl")

    def stats(self, b: Batch, plan: Plan) -> dict:
        stats = {f"rl/{k}": v for k, v in self.rl.stats(b, plan.parts[0]).items()}
        stats.update({f"sft/{k}": v for k, v in self.sft.stats(b, plan.parts[1]).items()})
        if plan.gate:
            stats["gate/sft_fraction"] = sum(d["label"] == SFT_LABEL for d in plan.gate) / len(plan.gate)
            stats["gate/mean_beta"] = sum(d["beta"] for d in plan.gate) / len(plan.gate)
        return stats

    def parts(self) -> dict:
        out = {f"rl.{k}": v for k, v in self.rl.parts().items()}
        out.update({f"sft.{k}": v for k, v in self.sft.parts().items()})
        out.update(gate=P.describe(self.gate), joint=P.describe(self.joint),
                   entropy_coef=str(self.entropy_coef), trainer=P.describe(self.trainer))
        return out

    def replace(self, **changes) -> "Hybrid":
        return replace(self, **changes)


def _decisions(b: Batch, p: Tensor, alpha: Tensor, beta: Tensor) -> list:
    """One decision per prompt (group): pass rate and the (α, β) the gate chose."""
    out, seen = [], set()
    for i, g in enumerate(b.group.tolist()):
        if g not in seen:
            seen.add(g)
            a, bt = float(alpha[i]), float(beta[i])
            out.append({"group": g, "pass_rate": float(p[i]), "alpha": a, "beta": bt,
                        "label": gate_label(a, bt)})
    return out
