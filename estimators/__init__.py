"""The Unified Policy Gradient Estimator: every post-training method as five named parts.

    est = estimators.get("dapo")
    out = est(Batch(logp=..., mask=..., reward=..., group=...))
    out.loss.backward()          # the DAPO gradient

See `parts` for the parts, `estimator` for `Estimator`/`Hybrid`, `presets` for the table.
Imports only torch.
"""
from . import parts
from .batch import Batch, BatchError
from .estimator import ALL, DEMOS, ROLLOUTS, Estimator, Hybrid, Output, Plan, TrainerSteps
from .presets import PRESETS, get

__all__ = ["Batch", "BatchError", "Estimator", "Hybrid", "Output", "Plan", "TrainerSteps",
           "PRESETS", "get", "parts", "ALL", "DEMOS", "ROLLOUTS"]
