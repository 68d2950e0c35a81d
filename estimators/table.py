"""The method table, generated from `PRESETS`: ``python -m estimators.table > docs/methods.md``."""
from __future__ import annotations

from .estimator import Hybrid
from .presets import PRESETS

FORMULA = "grad = 1_stable · (1/π_ref) · Â · ∇π_θ, reduced to a scalar"
COLUMNS = ("mask", "denominator", "advantage", "likelihood", "reduction", "rows")


def _one(est, col: str) -> str:
    part = getattr(est, col)
    return f"{part.formula()}" if hasattr(part, "formula") else str(part)


def _cell(est, col: str) -> str:
    if isinstance(est, Hybrid):
        return f"RL: {_one(est.rl, col)}<br>SFT: {_one(est.sft, col)}"
    return _one(est, col)


def markdown() -> str:
    lines = ["# Methods as configurations of one estimator", "",
             f"Generated from `estimators.PRESETS` by `python -m estimators.table`. {FORMULA}.", "",
             "| preset | " + " | ".join(COLUMNS) + " | extras | source |",
             "|" + "---|" * (len(COLUMNS) + 3)]
    for name, est in PRESETS.items():
        extras = []
        if isinstance(est, Hybrid):
            extras.append(f"gate {est.gate!r}")
            if est.joint is not None:
                extras.append(f"joint normaliser {est.joint!r}")
        for attr in ("entropy_coef",):
            if getattr(est, attr, 0):
                extras.append(f"entropy bonus {getattr(est, attr)}")
        if getattr(est, "kl", None) is not None:
            extras.append(f"KL {est.kl!r}")
        t = est.trainer
        steps = [f"{k}={v}" for k, v in vars(t).items() if v != type(t)().__dict__[k]]
        if steps:
            extras.append("trainer: " + ", ".join(steps))
        extras.append("parts: `" + "`, `".join(f"{k}={v}" for k, v in est.parts().items()
                                                 if k.split(".")[-1] in COLUMNS) + "`")
        row = [f"`{name}`"] + [_cell(est, c) for c in COLUMNS] + ["; ".join(extras) or "—", est.source]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    lines += ["", "## Parts", ""]
    from . import baselines, catalogue, parts, regions
    for cls in (parts.Current, parts.Old, parts.Unit, parts.SequenceGeometric, parts.SequenceRatio,
                parts.RolloutIS, parts.TruncatedIS, catalogue.SequenceRatioTokenGrad,
                parts.NoClip, parts.Clip, parts.CISClip, catalogue.GammaWeight, parts.Plain, parts.Shaped,
                catalogue.ChordPhi, parts.Ones, parts.Reward, parts.GroupNormalised, parts.WhitenedReturns,
                parts.GAE, catalogue.PassAtK, catalogue.EntropyMasked,
                parts.TokenMean, parts.SeqMeanTokenMean, parts.SeqMeanTokenSum,
                parts.ConstantNormaliser, parts.KLPenalty, parts.Switch, parts.Linear,
                parts.Power, parts.Always,
                regions.Divergence, regions.SoftGate, regions.GeometricClip, regions.CovarianceClip,
                regions.CovarianceTop, regions.PickedPenalty, regions.ProximalPenalty,
                baselines.GreedyBaseline, baselines.LengthWeighted, baselines.BestOfGroup,
                baselines.ShareScaled, baselines.OptimalTokenBaseline, baselines.GroupWhitened,
                catalogue.ChordSchedule):
        doc = " ".join((cls.__doc__ or "").split())
        lines.append(f"- **`{cls.__name__}`** — {doc}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
