"""The `Batch` every estimator consumes, with input validation that names the bad field."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional

import torch
from torch import Tensor


class BatchError(ValueError):
    """A `Batch` field has the wrong shape, dtype or value; the message names the field."""


def _reject(name: str, v: Tensor, bad: Tensor, what: str) -> None:
    """Raise naming the field and the first index where ``bad`` holds."""
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise BatchError(f"Batch.{name} {what} at index {idx} (value {v[idx].item()})")


@dataclass(frozen=True)
class Batch:
    """Per-token tensors are ``[B, T]`` (B rows = sequences, T = response tokens); per-row ``[B]``.

    logp:          log π_θ of each response token; requires grad.
    mask:          1.0 on response tokens, 0.0 on padding.
    reward:        scalar reward per row (bool rewards are taken as 0/1 in logp's dtype).
    group:         int group id per row; rows sharing a prompt share an id.
    is_demo:       True for an offline demonstration row (not an on-policy rollout).
    logp_old:      log π_θold at sampling time; defaults to ``logp.detach()`` (on-policy).
    logp_behavior: log-prob under the policy that actually generated the row (e.g. vLLM's
                   sampler), for truncated importance sampling; defaults to ``logp_old``.
    logp_ref:      log π of a fixed reference policy, for a KL term.
    values:        critic values V(s_t) ``[B, T]`` (PPO/GAE).
    entropy:       per-token entropy of π_θ ``[B, T]`` (differentiable), for an entropy bonus.
    reward_baseline: reward of the prompt's greedy (argmax) rollout, per row ``[B]`` (ReMax).
    sum_pi_squared:  Σ_v π_θold(v|s_t)² per token ``[B, T]`` (the optimal token baseline).
    """

    logp: Tensor
    mask: Tensor
    reward: Tensor
    group: Tensor
    is_demo: Optional[Tensor] = None
    logp_old: Optional[Tensor] = None
    logp_behavior: Optional[Tensor] = None
    logp_ref: Optional[Tensor] = None
    values: Optional[Tensor] = None
    entropy: Optional[Tensor] = None
    reward_baseline: Optional[Tensor] = None
    sum_pi_squared: Optional[Tensor] = None

    def __post_init__(self) -> None:
        set_ = lambda n, v: object.__setattr__(self, n, v)  # noqa: E731
        if isinstance(self.reward, Tensor) and self.reward.dtype == torch.bool:
            dtype = self.logp.dtype if isinstance(self.logp, Tensor) else torch.get_default_dtype()
            set_("reward", self.reward.to(dtype))
        if self.is_demo is None:
            set_("is_demo", torch.zeros(self.reward.shape, dtype=torch.bool, device=self.reward.device))
        if self.logp_old is None and isinstance(self.logp, Tensor):
            set_("logp_old", self.logp.detach())
        if self.logp_behavior is None:
            set_("logp_behavior", self.logp_old)
        self._validate()

    @property
    def size(self) -> int:
        return int(self.logp.shape[0])

    @property
    def rollouts(self) -> Tensor:
        """[B] bool, True for on-policy rollout rows."""
        return ~self.is_demo

    def _validate(self) -> None:
        for name in ("logp", "mask", "reward", "group"):
            if not isinstance(getattr(self, name), Tensor):
                raise BatchError(f"Batch.{name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        if self.logp.dim() != 2:
            raise BatchError(f"Batch.logp must be [B, T], got shape {tuple(self.logp.shape)}")
        B, T = self.logp.shape
        token = {"mask", "logp_old", "logp_behavior", "logp_ref", "values", "entropy", "sum_pi_squared"}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            want = (B, T) if f.name in token or f.name == "logp" else (B,)
            if tuple(v.shape) != want:
                raise BatchError(f"Batch.{f.name} has shape {tuple(v.shape)}, expected {want} "
                                 f"(B={B} rows, T={T} tokens, taken from logp)")
        if self.group.dtype.is_floating_point:
            raise BatchError(f"Batch.group must be an integer tensor, got {self.group.dtype}")
        if self.is_demo.dtype != torch.bool:
            raise BatchError(f"Batch.is_demo must be a bool tensor, got {self.is_demo.dtype}")
        m = self.mask
        if not torch.all((m == 0) | (m == 1)):
            raise BatchError("Batch.mask must contain only 0 and 1")
        on = m.bool()  # only response tokens are checked: padding may hold anything (even -inf)
        for name in ("logp", "reward", "logp_old", "logp_behavior", "logp_ref", "values", "entropy",
                     "reward_baseline", "sum_pi_squared"):
            v = getattr(self, name)
            if v is not None:
                seen = on if v.dim() == 2 else torch.ones(v.shape, dtype=torch.bool, device=v.device)
                _reject(name, v.detach(), ~torch.isfinite(v.detach()) & seen, "is not finite")
        _reject("logp", self.logp.detach(), (self.logp.detach() > 0) & on,
                "is > 0 (a log-probability is at most 0)")

    def select(self, idx: Tensor) -> "Batch":
        """Rows ``idx`` of this batch (a micro-batch or a data-parallel shard)."""
        kw = {f.name: (getattr(self, f.name)[idx] if getattr(self, f.name) is not None else None)
              for f in fields(self)}
        return Batch(**kw)

    def replace(self, **changes) -> "Batch":
        return replace(self, **changes)
