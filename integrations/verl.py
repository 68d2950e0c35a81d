"""verl plug-in: every preset of `estimators.PRESETS` in verl's registries, as ``upge_<preset>``.

    import integrations.verl        # registers (idempotent); then, in the verl config:
    actor_rollout_ref.actor.policy_loss.loss_mode=upge_dapo     # our DAPO surrogate as the policy loss
    algorithm.adv_estimator=upge_grpo                           # our GRPO advantage part

verl must import this module in the driver *and* in every worker process: set
``VERL_USE_EXTERNAL_MODULES=integrations.verl`` (read by ``import verl``) and/or
``actor_rollout_ref.model.external_lib=integrations.verl`` (imported when workers build the
model config). Run from the repository root (or install the project) so ``integrations`` imports.

Policy loss ``upge_<p>`` (verl ``PolicyLossFn``: ``(old_log_prob, log_prob, advantages,
response_mask, loss_agg_mode, config, rollout_is_weights) -> (loss, metrics)``): preset p's
`Estimator` with two parts swapped for verl's inputs, no loss body re-written —

* advantage → `Given`: the ``advantages`` verl computed (times ``rollout_is_weights`` when given;
  the weights are ≥ 0, so the clip decision, which depends on sign(Â), is unchanged — exactly
  verl's ``pg_losses * rollout_is_weights``);
* reduction → `GlobalCount(p's reduction)`: the same row weights and normaliser, but the count
  (tokens or sequences) taken from verl's ``config.global_batch_info`` (global mini-batch), and
  the loss multiplied by ``dp_size`` — so summing micro-batches and averaging data-parallel ranks
  gives the preset's gradient on the global mini-batch (verl's ``agg_loss`` contract).

The preset's reduction **replaces** ``loss_agg_mode`` (that is the point of choosing a preset;
e.g. ``upge_dapo`` is token-mean whatever ``actor.loss_agg_mode`` says). Mask, denominator
(π_θold, GSPO's sequence ratio, π_ref ≡ 1, ...) and likelihood (LUFFY's shaping) are the preset's.
Entropy and KL stay verl's (``actor.entropy_coeff``, ``use_kl_loss``): set entropy_coeff=0.001
for the official HPT/LUFFY recipes.

Advantage estimator ``upge_<p>`` (``(token_level_rewards, response_mask, index, epsilon,
norm_adv_by_std_in_grpo, config) -> (advantages, returns)``): preset p's advantage part on
reward = Σ_t token_level_rewards, group = ``index`` (verl's uid). ``epsilon`` and
``norm_adv_by_std_in_grpo`` are the preset's own (ignored here). Not registered for presets
whose advantage is Â ≡ 1 (sft) or needs a critic (ppo: use verl's ``gae``). Unlike verl's grpo, a
group of one row gets Â = 0 (verl: Â = r).

Hybrid presets (hpt, hpt_paper, luffy) register their on-policy RL component. What a verl policy
loss cannot see is which rows are demonstrations: verl passes no per-row SFT/RL tag. HPT's
per-prompt gate (drop the rollouts of a prompt with ≤ γ correct, train its demonstration with
SFT) needs (1) the trainer to add demo rows and an ``is_demo`` tensor to the batch — a
``RayPPOTrainer.fit`` subclass between reward and ``compute_advantage`` — and (2) the loss to read
it: verl's engine workers call ``loss_fn(config, model_output, data, dp_group)`` and accept a
replacement via ``actor_rollout_ref`` worker group ``set_loss_fn`` (``engine_workers.py``); a
loss that builds ``Batch(is_demo=data["is_demo"], group=..., reward=...)`` and calls
``estimators.get("hpt")`` there gives the full Hybrid. Not provided yet (see docs/recipes.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

import estimators
from estimators import Batch, Estimator, Hybrid
from estimators.estimator import DEMOS
from verl.trainer.ppo import core_algos

PREFIX = "upge_"


# ----------------------------------------------------------------------------------- parts

@dataclass(frozen=True, eq=False)
class Given:
    """Â given by the caller: verl's ``advantages`` [B, T] (or [B]), used as they are."""

    adv: Tensor

    def formula(self) -> str:
        return "Â from verl"

    def __call__(self, b: Batch, all_reduce=None) -> Tensor:
        return self.adv


def counts_tokens(reduction) -> bool:
    """True when ``reduction``'s normaliser counts tokens, False when it counts sequences: a
    1-row, 2-token probe counts 2 tokens or 1 sequence (no type switch, so new reductions work)."""
    count = reduction.count(torch.ones(1, 2), torch.ones(1, dtype=torch.bool))
    return count is not None and float(count) == 2.0


@dataclass(frozen=True)
class GlobalCount:
    """``inner``'s row weights and normaliser with the count taken from verl's global batch
    info: ``tokens`` (batch_num_tokens) for a token count, ``rows`` (global_batch_size) for a
    sequence count; a missing total falls back to the micro-batch's own count."""

    inner: Any
    tokens: Optional[float] = None
    rows: Optional[float] = None

    def formula(self) -> str:
        return f"{estimators.parts.describe(self.inner)} with verl's global count"

    def row_weight(self, mask: Tensor) -> Tensor:
        return self.inner.row_weight(mask)

    def count(self, mask: Tensor, rows: Tensor) -> Optional[Tensor]:
        local = self.inner.count(mask, rows)
        total = self.tokens if counts_tokens(self.inner) else self.rows
        if local is None or total is None:
            return local
        return torch.as_tensor(float(total), dtype=mask.dtype, device=mask.device)

    def scale(self) -> float:
        return self.inner.scale() if hasattr(self.inner, "scale") else 1.0


# ---------------------------------------------------------------------------- estimators

def rl_component(name: str) -> Estimator:
    """The estimator a verl policy loss can run for preset ``name``: the preset itself, or a
    Hybrid's on-policy RL part; ``needs`` cleared (verl supplies the advantage)."""
    est = estimators.get(name)
    if isinstance(est, Hybrid):
        est = est.rl
    if est.rows == DEMOS:
        raise ValueError(f"preset {name!r} trains demonstrations only; verl's policy loss sees rollouts")
    return est.replace(needs=(), kl=None, name=name)


def _global_info(config) -> tuple[float, Optional[float], Optional[float]]:
    info = {} if config is None else dict(getattr(config, "global_batch_info", None) or {})
    dp = info.get("dp_size") or 1
    tok, rows = info.get("batch_num_tokens"), info.get("global_batch_size")
    as_float = lambda v: None if v is None else float(v)  # noqa: E731
    return float(dp), as_float(tok), as_float(rows)


def policy_loss_fn(name: str):
    """verl ``PolicyLossFn`` for preset ``name`` (see the module docstring)."""
    base = rl_component(name)

    def upge_policy_loss(old_log_prob: Tensor, log_prob: Tensor, advantages: Tensor,
                         response_mask: Tensor, loss_agg_mode: str = "token-mean", config=None,
                         rollout_is_weights: Optional[Tensor] = None) -> tuple[Tensor, dict]:
        dp, tokens, rows = _global_info(config)
        adv = advantages if rollout_is_weights is None else advantages * rollout_is_weights
        est = base.replace(advantage=Given(adv.detach()),
                           reduction=GlobalCount(base.reduction, tokens, rows))
        B = log_prob.shape[0]
        batch = Batch(logp=log_prob, mask=response_mask.to(log_prob.dtype),
                      reward=torch.zeros(B, dtype=log_prob.dtype, device=log_prob.device),
                      group=torch.arange(B, device=log_prob.device),
                      logp_old=old_log_prob.to(log_prob.dtype))
        out = est(batch)
        stats = out.stats
        metrics = {"actor/pg_clipfrac": stats["clip_fraction"],
                   **{f"actor/upge/{k}": v for k, v in stats.items()}}
        return out.loss * dp, metrics

    upge_policy_loss.upge_preset = name
    upge_policy_loss.__name__ = f"{PREFIX}{name}_policy_loss"
    return upge_policy_loss


def _group_ids(index, n: int, device) -> Tensor:
    if index is None:
        return torch.arange(n, device=device)
    _, inv = np.unique(np.asarray(index, dtype=object).astype(str), return_inverse=True)
    return torch.as_tensor(inv.reshape(-1), device=device)


def adv_estimator_fn(name: str):
    """verl advantage estimator for preset ``name``: its advantage part (see the module docstring)."""
    part = rl_component(name).advantage

    def upge_advantage(token_level_rewards: Tensor, response_mask: Tensor, index=None,
                       epsilon: float = 1e-6, norm_adv_by_std_in_grpo: bool = True, config=None,
                       **kwargs) -> tuple[Tensor, Tensor]:
        mask = response_mask.to(token_level_rewards.dtype)
        B = mask.shape[0]
        batch = Batch(logp=torch.zeros_like(mask), mask=mask, reward=token_level_rewards.sum(-1),
                      group=_group_ids(index, B, mask.device))
        with torch.no_grad():
            adv = part(batch)
        adv = (adv[:, None] if adv.dim() == 1 else adv) * mask
        return adv, adv

    upge_advantage.upge_preset = name
    upge_advantage.__name__ = f"{PREFIX}{name}_advantage"
    return upge_advantage


# ---------------------------------------------------------------------------- registration

def loss_presets() -> list[str]:
    """Presets with a verl policy loss (all but demonstration-only ones)."""
    return [n for n, e in estimators.PRESETS.items() if isinstance(e, Hybrid) or e.rows != DEMOS]


def advantage_presets() -> list[str]:
    """Presets with a verl advantage estimator (not Â ≡ 1, not critic-based)."""
    out = []
    for n in loss_presets():
        est = rl_component(n)
        if not isinstance(est.advantage, estimators.parts.Ones) and "values" not in estimators.get(n).needs:
            out.append(n)
    return out


def register() -> dict:
    """Register ``upge_<preset>`` policy losses and advantage estimators (idempotent).
    Returns {"policy_loss": [names], "adv_estimator": [names]}."""
    losses, advs = [], []
    for n in loss_presets():
        core_algos.register_policy_loss(PREFIX + n)(policy_loss_fn(n))
        losses.append(PREFIX + n)
    for n in advantage_presets():
        current = core_algos.ADV_ESTIMATOR_REGISTRY.get(PREFIX + n)
        if getattr(current, "upge_preset", None) != n:   # a foreign estimator of that name raises
            core_algos.register_adv_est(PREFIX + n)(adv_estimator_fn(n))
        advs.append(PREFIX + n)
    return {"policy_loss": losses, "adv_estimator": advs}


REGISTERED = register()
