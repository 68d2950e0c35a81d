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
group of one row gets Â = 0 (verl: Â = r). ``upge_reinforce_pp`` sees only Σ_t of the token
rewards (no per-token KL): with ``use_kl_in_reward`` use verl's own ``reinforce_plus_plus``, which
our `WhitenedReturns` equals (tests/test_estimators_verl_parity.py).

Hybrid presets (hpt, hpt_paper, luffy) register their on-policy RL component there: a verl
``PolicyLossFn`` sees no per-row SFT/RL tag. The full Hybrid (and every other preset) runs on
verl's *engine* path instead, in two halves that split our estimator where it splits itself
(`Plan`: once per step; `terms`: per micro-batch):

* driver, once per step, on the rows to train: ``plan_fields(preset, reward, group,
  response_mask, is_demo)`` runs the preset's own ``plan`` (gate, advantages, row coefficients
  with the global normaliser, entropy weights) and returns per-row tensors ``upge_*`` to put in
  the batch, plus ``keep`` (rows some component trains; HPT's gated-out rollouts are False);
* workers, per micro-batch: ``PlanLoss(preset)`` is a verl engine loss
  ``(config, model_output, data, dp_group) -> (loss, metrics)``, installed with
  ``actor_rollout_wg.set_loss_fn(PlanLoss("hpt", actor_config))``; it rebuilds the `Plan` from
  the ``upge_*`` fields and calls the preset's ``terms`` — no loss body re-written.

Summing ``PlanLoss`` over micro-batches and data-parallel ranks gives exactly the preset's
gradient on the planned batch, whatever the split (tested). When verl splits a step into k > 1
mini-batches (``ppo_mini_batch_size`` < ``train_batch_size``), each optimizer step's coefficients
are rescaled by (step tokens / mini-batch tokens) where the normaliser counts (constant ones are
left alone): exact for a token count over all rows, otherwise the step's normaliser in
proportion. The batch rows themselves (a demonstration row per
prompt with ``is_demo``; dropping rows where ``keep`` is False) are the trainer's to assemble; the
recipe is in docs/recipes.md ("Any preset, HPT included, on verl's engine path").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

import estimators
from estimators import Batch, Estimator, Hybrid
from estimators.estimator import DEMOS, Plan
from estimators.parts import KLPenalty
from estimators.slots import CONSTANT, ROWS, TOKENS, Advantage
from verl.trainer.ppo import core_algos

PREFIX = "upge_"


# ----------------------------------------------------------------------------------- parts

@dataclass(frozen=True, eq=False)
class Given(Advantage):
    """Â given by the caller: verl's ``advantages`` [B, T] (or [B]), used as they are."""

    adv: Tensor

    def formula(self) -> str:
        return "Â from verl"

    def __call__(self, b: Batch, all_reduce=None) -> Tensor:
        return self.adv


@dataclass(frozen=True)
class GlobalCount:
    """``inner``'s row weights and normaliser with the count taken from verl's global batch
    info: ``tokens`` (batch_num_tokens) when ``inner`` counts tokens, ``rows``
    (global_batch_size) when it counts rows — a known total makes Z a constant for this
    micro-batch; a missing total falls back to the micro-batch's own count."""

    inner: Any
    tokens: Optional[float] = None
    rows: Optional[float] = None

    def formula(self) -> str:
        return f"{estimators.parts.describe(self.inner)} with verl's global count"

    def row_weight(self, mask: Tensor) -> Tensor:
        return self.inner.row_weight(mask)

    @property
    def _total(self) -> Optional[float]:
        return {TOKENS: self.tokens, ROWS: self.rows}.get(self.inner.counts)

    @property
    def counts(self) -> str:
        return self.inner.counts if self._total is None else CONSTANT

    @property
    def scale(self) -> float:
        return self.inner.scale * (1.0 if self._total is None else max(self._total, 1.0))


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


# ------------------------------------------------------------- engine path: planned loss

FIELDS = "upge_"


def trainable(name: str):
    """Preset ``name`` as the engine path runs it: KL left to verl (``use_kl_loss``); a preset
    that needs a critic is refused (use verl's ``gae`` with the ``upge_<p>`` policy loss)."""
    est = estimators.get(name)
    if "values" in est.needs:
        raise ValueError(f"preset {name!r} needs a critic's values; in verl use "
                         f"algorithm.adv_estimator=gae with policy_loss.loss_mode={PREFIX}{name}")
    _refuse_unplanned(name, est)
    return est.map_parts(lambda slot, part: None if slot.endswith("kl") else part)


def _refuse_unplanned(name: str, est) -> None:
    """The plan fields carry Â and row weights only: a preset that also picks tokens in its plan
    (Clip-Cov, KL-Cov), adds a penalty other than the KL verl's ``use_kl_loss`` replaces (DRO), or
    needs a batch field besides π_ref (ReMax's greedy reward, OTB's Σπ²) is refused by name."""
    if not isinstance(est, Estimator):
        return
    why = ([f"needs Batch.{f}" for f in est.needs if f not in ("logp_ref", "values")]
           + (["picks tokens in its plan"] if getattr(est.mask, "reads_old", False) else [])
           + ([f"adds {type(est.kl).__name__}"] if est.kl is not None and not isinstance(est.kl, KLPenalty) else []))
    if why:
        raise ValueError(f"preset {name!r} {', '.join(why)}, which the plan fields do not carry: in verl "
                         "use verl's own policy_loss.loss_mode / algorithm.adv_estimator for it")


def _components(plan: Plan) -> list[Plan]:
    return list(plan.parts) if plan.parts else [plan]


def plan_fields(name: str, reward: Tensor, group, response_mask: Tensor,
                is_demo: Optional[Tensor] = None) -> dict[str, Tensor]:
    """Driver half (see the module docstring): preset ``name``'s plan on the whole step batch.

    reward [B] (sequence reward), group [B] (ids or verl ``uid`` strings), response_mask [B, T],
    is_demo [B] bool. Returns ``upge_adv<i>`` [B, T] and ``upge_coef<i>`` [B] per component i
    (one for an Estimator; rl, sft for a Hybrid), ``upge_ent`` [B], ``upge_step_tokens`` [B]
    (the planned rows' response tokens, repeated), and ``keep`` [B] bool."""
    est = trainable(name)
    mask = response_mask if response_mask.is_floating_point() else response_mask.to(torch.float32)
    B = mask.shape[0]
    groups = group if isinstance(group, Tensor) else _group_ids(group, B, mask.device)
    zeros = torch.zeros_like(mask)
    batch = Batch(logp=zeros, mask=mask, reward=reward.to(mask.dtype).reshape(B), group=groups,
                  is_demo=None if is_demo is None else is_demo.to(torch.bool).reshape(B),
                  logp_old=zeros, logp_ref=zeros)
    plan = est.plan(batch)
    keep = plan.trained
    out = {}
    for i, part in enumerate(_components(plan)):
        out[f"{FIELDS}adv{i}"] = part.adv
        out[f"{FIELDS}coef{i}"] = part.coef
    out[f"{FIELDS}ent"] = plan.ent
    out[f"{FIELDS}step_tokens"] = (mask * keep[:, None]).sum().expand(B).clone()
    out["keep"] = keep
    return out


def _info(data, key: str, default=None):
    from verl.utils import tensordict_utils as tu
    return tu.get_non_tensor_data(data=data, key=key, default=default)


def _field(data, key: str, width: Optional[int] = None) -> Tensor:
    """``data[key]`` as a padded tensor: [B] per row, or [B, width] per token (nested tensors
    padded with 0, wider ones cut)."""
    value = data[key]
    value = value.to_padded_tensor(0.0) if getattr(value, "is_nested", False) else value
    if width is None:
        return value.reshape(-1)
    value = value[:, :width]
    return torch.nn.functional.pad(value, (0, width - value.shape[1]))


VERL_KL = {"kl": "k1", "k1": "k1", "mse": "k2", "k2": "k2", "low_var_kl": "k3", "k3": "k3"}


def with_verl_kl(est, config):
    """``est`` with verl's KL loss (``use_kl_loss``, ``kl_loss_coef``, ``kl_loss_type``) as our
    KL part on its rollout component; unchanged when the config has none."""
    if config is None or not getattr(config, "use_kl_loss", False):
        return est
    kind = VERL_KL.get(str(getattr(config, "kl_loss_type", "low_var_kl")))
    if kind is None:
        raise ValueError(f"actor.kl_loss_type={config.kl_loss_type!r} has no counterpart here; "
                         f"use one of {sorted(VERL_KL)}")
    return est.with_kl(estimators.parts.KLPenalty(coef=float(config.kl_loss_coef), kind=kind))


class PlanLoss:
    """Worker half (see the module docstring): a verl engine loss for preset ``name``, called by
    verl as ``loss(model_output=..., data=..., dp_group=...)``; ``config`` is the actor config
    (only its KL settings are read: verl's ``ppo_loss``, which this replaces, also did KL).

    Reads the micro-batch's ``old_log_probs``, ``response_mask``, the ``upge_*`` fields,
    ``rollout_is_weights`` and ``ref_log_prob`` when present, and verl's ``dp_size`` /
    ``batch_num_tokens``. The entropy bonus is the preset's (``model_output["entropy"]`` is
    required when its weight is not zero: set ``actor.calculate_entropy=True``). Picklable, so Ray
    can ship it to workers."""

    def __init__(self, name: str, config=None):
        self.name, self.config = name, config
        self.est = with_verl_kl(trainable(name), config)

    def __getstate__(self):
        return {"name": self.name, "config": self.config}

    def __setstate__(self, state):
        self.__init__(state["name"], state["config"])

    def __call__(self, model_output, data, dp_group=None) -> tuple[Tensor, dict]:
        from verl.workers.utils.padding import no_padding_2_padding

        logp = no_padding_2_padding(model_output["log_probs"], data)
        B, T = logp.shape
        missing = [k for k in (f"{FIELDS}coef0", f"{FIELDS}ent", f"{FIELDS}step_tokens") if k not in data.keys()]
        if missing:
            raise KeyError(f"the batch has no {missing}: put integrations.verl.plan_fields(...) into the "
                           f"batch before update_actor (PlanLoss({self.name!r}) trains from its plan)")
        tok = lambda k: _field(data, k, T).to(logp.dtype)  # noqa: E731
        row = lambda k: _field(data, k).to(logp.dtype)  # noqa: E731
        entropy = model_output.get("entropy", None)
        if entropy is not None:
            entropy = no_padding_2_padding(entropy, data).to(logp.dtype)
        elif bool((row(f"{FIELDS}ent") != 0).any()):
            raise ValueError(f"preset {self.name!r} has an entropy bonus but the model output has no "
                             "entropy: set actor_rollout_ref.actor.calculate_entropy=True")
        ref = None
        if "ref_log_prob" in data.keys():
            ref = tok("ref_log_prob")
        elif "logp_ref" in self.est.needs or _has_kl(self.est):
            raise KeyError("actor.use_kl_loss is on but the batch has no ref_log_prob: enable verl's "
                           "reference policy (actor_rollout_ref.ref) or turn use_kl_loss off")
        # k > 1 mini-batches per step: the step's normaliser, rescaled to this mini-batch's tokens
        mini = _info(data, "batch_num_tokens")
        scale = float(row(f"{FIELDS}step_tokens")[0]) / float(mini) if mini else 1.0
        isw = tok("rollout_is_weights") if "rollout_is_weights" in data.keys() else 1.0
        parts = tuple(Plan(tok(f"{FIELDS}adv{i}") * isw, row(f"{FIELDS}coef{i}") * (scale if counts else 1.0),
                           torch.zeros(B, dtype=logp.dtype, device=logp.device))
                      for i, counts in enumerate(_counted(self.est)))
        plan = Plan(parts[0].adv, parts[0].coef, row(f"{FIELDS}ent") * scale, parts if len(parts) > 1 else ())
        batch = Batch(logp=logp, mask=tok("response_mask"), reward=torch.zeros(B, dtype=logp.dtype, device=logp.device),
                      group=torch.arange(B, device=logp.device), logp_old=tok("old_log_probs"),
                      logp_ref=ref, entropy=entropy)
        loss = self.est.terms(batch, plan).sum() * float(_info(data, "dp_size", 1))
        from verl.utils.metric import AggregationType, Metric

        # a share of the global surrogate per micro-batch: summed, as ppo_loss sums its pg_loss
        return loss, {"actor/pg_loss": Metric(value=loss.item(), aggregation=AggregationType.SUM)}


def _has_kl(est) -> bool:
    found = []
    est.map_parts(lambda slot, part: found.append(slot.endswith("kl")) or part)
    return any(found)


def _counted(est) -> list[bool]:
    """Per component: does its normaliser count rows or tokens (so a mini-batch rescales it),
    or is it a constant (e.g. the official HPT's Σ/(8192·8), never rescaled)?"""
    return [r.counts != CONSTANT for r in est.reductions()]


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
