"""The Unified Policy Gradient Estimator: every post-training method as five named parts.

    est = estimators.get("dapo")
    out = est(Batch(logp=..., mask=..., reward=..., group=...))
    out.loss.backward()          # the DAPO gradient

See `slots` for the five slots (typed Protocols), `parts` for the parts, `estimator` for
`Estimator`/`Hybrid` (``map_parts`` rewrites one by its parts), `presets` for the table.
Imports only torch.
"""
from . import parts, slots
from .batch import Batch, BatchError
from .estimator import ALL, DEMOS, ROLLOUTS, Estimator, Hybrid, Output, Plan, TrainerSteps, gate_label
from .presets import PRESETS, get

__all__ = ["Batch", "BatchError", "Estimator", "Hybrid", "Output", "Plan", "TrainerSteps",
           "PRESETS", "get", "parts", "slots", "gate_label", "ALL", "DEMOS", "ROLLOUTS"]
