"""A user's own parts, loaded by the tests as ``--estimator custom_parts:NAME`` and
``--reward custom_parts:NAME`` (this folder is on sys.path under pytest)."""
import estimators
from estimators import Hybrid, TrainerSteps
from estimators.parts import Clip, Switch

# GRPO with a tighter lower clip and a higher upper one: a variant no preset names
CLIPPED_GRPO = estimators.get("grpo").replace(mask=Clip(0.1, 0.3))
# a gated mixture of GRPO (std-normalised, clipped) and SFT on the prompt's demonstration
GRPO_OR_SFT = Hybrid(rl=estimators.get("grpo"), sft=estimators.get("sft"), gate=Switch(gamma=1, beta=0.5),
                     trainer=TrainerSteps(gated_demos=True))
NOT_AN_ESTIMATOR = {"mask": "Clip(0.1, 0.3)"}


def quarter(completions, ground_truth, **kw):
    """A reward no verifier gives: 0.25 for every completion."""
    return [0.25] * len(completions)


def one_score(completions, ground_truth, **kw):
    """A broken reward: one score, whatever the number of completions."""
    return [1.0]
