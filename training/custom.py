"""Custom parts from the command line: ``--estimator module:object`` and ``--reward module:function``.

    est = load_estimator("my_methods:CLIPPED_GRPO")   # an estimators.Estimator or Hybrid, as composed
    reward_fn = make_reward(cfg)                      # --reward's function (output checked), else BoxedReward

An estimator given this way trains like a preset: the run's options (``--entropy-coef``,
``--kl-coef``, ``--gate`` and the gate flags, the run's generation budget in constant
normalisers, TIS under vLLM) apply to it, its `TrainerSteps` choose the batch-level steps, and its
parts are recorded in config.json under its name (the attribute's name, which also names the run).
Reward functions have TRL's signature, as ``python -m training.eval --reward`` takes them
(`training.grading.load_reward`): ``reward_fn(completions, ground_truth, **kw) -> list[float]``.
"""
from __future__ import annotations

from typing import Callable

import estimators

from .grading import RewardError, call_reward, load_object, load_reward
from .ranges import ConfigError

ESTIMATOR_TYPES = (estimators.Estimator, estimators.Hybrid)
ESTIMATOR_EXAMPLE = ("'module:object', e.g. 'my_methods:CLIPPED_GRPO' where my_methods.py has "
                     "CLIPPED_GRPO = estimators.get('grpo').replace(mask=Clip(0.1, 0.3))")


def label(spec: str) -> str:
    """The name a ``module:object`` estimator trains under (the object's name)."""
    return spec.rpartition(":")[2].rpartition(".")[2]


def load_estimator(spec: str):
    """The `estimators.Estimator` or `estimators.Hybrid` at ``module:object``, named after the
    object. Raises `ConfigError` naming the flag, the spec and what is wrong (no such module or
    attribute, or an object that is not an estimator)."""
    try:
        obj = load_object(spec, "--estimator", ESTIMATOR_EXAMPLE)
    except RewardError as e:
        raise ConfigError(str(e)) from None
    if not isinstance(obj, ESTIMATOR_TYPES):
        raise ConfigError(
            f"--estimator {spec!r}: {label(spec)!r} is a {type(obj).__name__}, not an "
            "estimators.Estimator or estimators.Hybrid (compose one from estimators.parts, or "
            "take a preset: estimators.get('grpo').replace(...); see docs/ecosystem.md)")
    return obj.replace(name=label(spec))


def check_reward(spec: str) -> None:
    """Raise `ConfigError` unless ``module:function`` names a callable (a class counts: it is
    instantiated when the run starts)."""
    try:
        obj = load_object(spec, "--reward")
    except RewardError as e:
        raise ConfigError(str(e)) from None
    if not callable(obj):
        raise ConfigError(f"--reward {spec!r}: {label(spec)!r} is a {type(obj).__name__}, not a "
                          "function (reward_fn(completions, ground_truth, **kw) -> list[float])")


class CheckedReward:
    """A user's reward function whose every output is checked (`training.grading.call_reward`:
    one finite float per completion); other attributes (``timeouts``, ``close``) are its own."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, completions, ground_truth, **kw) -> list[float]:
        return call_reward(self.fn, completions, ground_truth, **kw)

    def __getattr__(self, name):
        return getattr(self.__dict__["fn"], name)


def make_reward(cfg) -> Callable:
    """The run's reward: ``--reward``'s function, or the boxed-answer math reward."""
    if cfg.reward:
        return CheckedReward(load_reward(cfg.reward))
    from .reward import BoxedReward

    return BoxedReward(time_limit=cfg.verifier_timeout)
