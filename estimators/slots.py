"""The five slots of the estimator (and the gate of a `Hybrid`) as typed Protocols.

A part implements one slot; parts subclass their slot to inherit its defaults (a Protocol with
method bodies). Anything with the same methods also fits a slot without subclassing it, but then
it must define the defaults itself.
"""
from __future__ import annotations

from typing import Optional, Protocol

from torch import Tensor

from .batch import Batch

TOKENS, ROWS, CONSTANT = "tokens", "rows", "constant"   # what a reduction's normaliser counts


class Mask(Protocol):
    """1_stable: ``(ρ [B,T], Â [B,T]) → M [B,T]``, detached by the estimator.

    A mask that needs more than ρ and Â (π_θold itself, or tokens chosen over the whole step)
    overrides ``pick(b, Â, all_reduce)`` — a detached [B,T] token selection computed once per
    step in the plan, over every rank (None by default) — and ``on(b, ρ, Â, picked)``, which the
    estimator calls (by default ``self(ρ, Â)``). ``reads_old``: ``pick`` reads π_θold."""

    reads_old: bool = False

    def __call__(self, ratio: Tensor, adv: Tensor) -> Tensor: ...

    def pick(self, b: Batch, adv: Tensor, all_reduce=None) -> Optional[Tensor]:
        return None

    def on(self, b: Batch, ratio: Tensor, adv: Tensor, picked: Optional[Tensor] = None) -> Tensor:
        return self(ratio, adv)


class Denominator(Protocol):
    """1/π_ref: ``b → ρ [B,T]`` (differentiable), the ratio the mask and the likelihood see, and
    ``weight(b)``: a detached per-token factor applied after them (an off-policy correction such
    as truncated IS; None by default: no correction)."""

    def __call__(self, b: Batch) -> Tensor: ...

    def weight(self, b: Batch) -> Optional[Tensor]:
        return None


class Advantage(Protocol):
    """Â: ``(b, all_reduce) → [B] or [B,T]`` (detached); ``returns(b)``: the value targets a
    critic regresses on (None when the advantage has none); ``reads_old``: whether Â reads
    ``Batch.logp_old`` (then π_θold must be scored before the plan)."""

    reads_old: bool = False

    def __call__(self, b: Batch, all_reduce=None) -> Tensor: ...

    def returns(self, b: Batch, all_reduce=None) -> Optional[Tensor]:
        return None


class Likelihood(Protocol):
    """L: ``ρ → L(ρ)``; the differentiated quantity (∇π_θ is L(ρ) = ρ)."""

    def __call__(self, ratio: Tensor) -> Tensor: ...


class Reduction(Protocol):
    """How token terms become one scalar: ``row_weight(mask) → [B]`` and a normaliser
    Z = scale · count, where ``counts`` declares what is counted over the step's trained rows:
    TOKENS (response tokens), ROWS (sequences) or CONSTANT (nothing: Z = scale)."""

    counts: str
    scale: float = 1.0

    def row_weight(self, mask: Tensor) -> Tensor: ...


class Gate(Protocol):
    """A Hybrid's gate: ``(c, n, P) per row → (α, β) per row`` (c correct of n rollouts, P = c/n)."""

    def __call__(self, c: Tensor, n: Tensor, p: Tensor) -> tuple[Tensor, Tensor]: ...

    def at_step(self, step: int) -> "Gate":
        """This gate at training step ``step`` (a scheduled gate; itself by default)."""
        return self
