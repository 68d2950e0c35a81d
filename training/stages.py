"""What the run trains, stage by stage: the preset's estimator with this run's options and the
batch-level steps it declares (`estimators.TrainerSteps`), chosen once from the config.

    stages = make_stages(cfg)   # one Stage per preset (or --estimator); ``sft_then_grpo`` gives two
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import estimators
from estimators.catalogue import with_entropy_mask
from estimators.parts import KLPenalty
from estimators.slots import CONSTANT

from . import batching
from .backends import NoCritic
from .batching import Row
from .config import RunConfig, stage_estimators, with_gate
from .rollout import engines

OFFICIAL_RANKS = 8  # HPT/LUFFY: Σ tokens / max_response_length per rank, averaged over 8 ranks
# Batch fields beyond the rollouts that the trainer fills when an estimator declares them in
# ``needs``: π_ref log-probs (a frozen copy), critic values (value head), the greedy rollout's
# reward (one temperature-0 sample per prompt), Σ_v π_θold(v)² (the chunked output layer).
SUPPLIED = ("logp_ref", "values", "entropy", "reward_baseline", "sum_pi_squared")


def scale_constants(est, max_new_tokens: int):
    """Replace every constant normaliser's generation budget C with this run's: per-row
    (Dr. GRPO) C = max_new_tokens; pooled (official HPT/LUFFY, C = 8192·8) C = max_new_tokens·8."""
    def budget(slot, part):
        if "constant" not in {f.name for f in dataclasses.fields(part)}:
            return part
        ranks = OFFICIAL_RANKS if part.counts == CONSTANT else 1
        return dataclasses.replace(part, constant=float(max_new_tokens * ranks))
    return est.map_parts(budget)


def with_options(est, cfg: RunConfig):
    """Apply the run's overrides: entropy bonus, KL to the initial policy, the gate."""
    if cfg.entropy_coef is not None:
        est = est.replace(entropy_coef=cfg.entropy_coef)
    if cfg.kl_coef > 0:
        own = getattr(est, "kl", None)
        if own is not None and not isinstance(own, KLPenalty):  # KL-Cov's, DRO's: not a KL to π_ref
            raise ValueError(f"--kl-coef {cfg.kl_coef}: preset {cfg.preset!r} already has a penalty in its "
                             f"KL slot ({type(own).__name__}); the flag would replace it")
        est = est.with_kl(KLPenalty(coef=cfg.kl_coef, kind="k3"))
    est = with_gate(est, cfg)
    if cfg.entropy_mask is not None:
        est = with_entropy_mask(est, cfg.entropy_mask)
    correction = engines.rollout_correction(cfg)  # vLLM returns behaviour log-probs: TIS by default
    return est if correction is None else engines.with_correction(est, correction)


@dataclass
class Stage:
    """One estimator and the batch-level steps it needs, for steps [first, last]."""

    name: str
    est: object
    first: int
    last: int
    need: batching.Need
    shape: Callable[[list[Row]], list[Row]]
    keep: Callable[[list[Row]], list[Row]]
    refill_rounds: int
    epochs: int
    value_head: bool  # trains a critic (PPO)
    entropy: bool
    critic: object = field(default_factory=NoCritic)  # `Critic` where ``value_head``, bound in build
    correction: object = None  # the run's `RolloutIS` (its statistics go to the records), or None

    def at_step(self, step: int) -> "Stage":
        """This stage with its estimator at training step ``step`` (a scheduled gate: CHORD's μ)."""
        est = self.est.at_step(step)
        return self if est is self.est else dataclasses.replace(self, est=est)

    def with_critic(self, critic) -> "Stage":
        """This stage with the run's critic when it trains one (PPO), else the null critic."""
        return dataclasses.replace(self, critic=critic if self.value_head else NoCritic())

    @property
    def default_gate(self) -> str:
        """The samples' gate label when no gate decides: "sft" for demo-only training."""
        return "sft" if self.need.rollouts == 0 else "rl"


def make_stage(name: str, cfg: RunConfig, first: int, last: int, est=None) -> Stage:
    """Stage ``name`` (the preset of that name unless ``est`` is given) with the run's options."""
    est = estimators.get(name) if est is None else est
    est = with_options(scale_constants(est, cfg.max_new_tokens), cfg)
    missing = [f for f in est.needs if f not in SUPPLIED]
    if missing:
        raise ValueError(f"estimator {name!r} needs Batch.{', Batch.'.join(missing)}, which this "
                         f"trainer cannot supply (it supplies {', '.join(SUPPLIED)})")
    t = est.trainer
    buffer = batching.scaled_buffer(t.overlong_buffer, cfg.max_new_tokens)
    return Stage(
        name, est, first, last, batching.group_layout(est, cfg.n),
        shape=lambda rows: batching.shape_overlong(rows, cfg.max_new_tokens, buffer, t.overlong_penalty),
        keep=batching.group_filter(t),
        refill_rounds=cfg.dynamic_sampling_rounds if t.dynamic_sampling else 0,
        epochs=cfg.epochs if cfg.epochs is not None else t.epochs,
        value_head=t.value_head, entropy=est.uses_entropy, correction=engines.rollout_correction(cfg))


def make_stages(cfg: RunConfig) -> list[Stage]:
    """One stage per preset (or ``--estimator``); a two-stage name (``sft_then_grpo``) splits
    the steps."""
    parts = stage_estimators(cfg)
    if len(parts) == 1:
        (name, est), = parts
        return [make_stage(name, cfg, 1, cfg.steps, est)]
    (first, est1), (second, est2) = parts
    split = max(1, min(cfg.steps - 1, round(cfg.steps * cfg.stage_split)))
    return [make_stage(first, cfg, 1, split, est1), make_stage(second, cfg, split + 1, cfg.steps, est2)]
