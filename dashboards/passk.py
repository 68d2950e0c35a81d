"""pass@k curves for the dashboard and the paper figures (numpy + pandas, no torch).

Sources, best first: the tidy ``eval/scores.jsonl`` rows with ``metric == 'pass@k'`` (written by
evaluation, with their standard errors), else a recomputation from ``samples.jsonl`` with the
unbiased estimator of Chen et al. 2021 (arXiv 2107.03374) and a problem-level bootstrap CI.

"Base" is a run's first evaluated step (the model before post-training), "trained" its last.
The crossing point k* = min{k : pass@k(base) ≥ pass@k(trained)} (Yue et al. 2025,
arXiv 2504.13837) may not exist.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

Z95 = 1.96
CURVE_COLUMNS = ["run", "benchmark", "level", "checkpoint", "step", "k", "value", "lo", "hi"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 − C(n−c, k)/C(n, k) (product form)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least k samples, got n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def ks_up_to(n: int) -> list[int]:
    """Powers of two 1, 2, 4, … not above n."""
    return [2 ** i for i in range(int(math.log2(n)) + 1)] if n >= 1 else []


def checkpoint_steps(steps: Sequence[int]) -> dict[str, int]:
    """{'base': first step, 'trained': last step} (one entry when only one step exists)."""
    steps = sorted(set(int(s) for s in steps))
    if not steps:
        return {}
    return {"base": steps[0], "trained": steps[-1]} if len(steps) > 1 else {"trained": steps[0]}


def curves_from_eval(run: str, eval_df: pd.DataFrame, level: str = "all") -> pd.DataFrame:
    """pass@k curves at the base and trained steps from eval score rows, CI = ±1.96 stderr."""
    if eval_df.empty:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    rows = eval_df[(eval_df["metric"] == "pass@k") & (eval_df["level"].astype(str) == level)]
    if rows.empty:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    parts = []
    for name, step in checkpoint_steps(rows["step"]).items():
        at = rows[rows["step"] == step].copy()
        se = pd.to_numeric(at["stderr"], errors="coerce").fillna(0.0)
        at["lo"] = (at["value"] - Z95 * se).clip(0.0, 1.0)
        at["hi"] = (at["value"] + Z95 * se).clip(0.0, 1.0)
        at["checkpoint"], at["run"] = name, run
        parts.append(at)
    out = pd.concat(parts, ignore_index=True)
    out["k"] = out["k"].astype(int)
    return out[CURVE_COLUMNS].sort_values(["benchmark", "checkpoint", "k"]).reset_index(drop=True)


def correct_counts(samples: pd.DataFrame, step: int) -> pd.DataFrame:
    """Per prompt at one step: n rollouts and c correct."""
    at = samples[(samples["step"] == step) & (samples["source"].fillna("rollout") != "demo")]
    return (at.assign(correct=at["correct"].astype(bool)).groupby("prompt_id")["correct"]
            .agg(n="size", c="sum").reset_index())


def bootstrap_ci(per_problem: np.ndarray, n_boot: int = 200, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap CI of the mean over problems (resampling problems)."""
    if len(per_problem) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_problem), size=(n_boot, len(per_problem)))
    means = per_problem[idx].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def curves_from_samples(run: str, samples: pd.DataFrame) -> pd.DataFrame:
    """pass@k curves at the first and last sampled step, recomputed from the rollouts."""
    if samples.empty:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    rows = []
    for name, step in checkpoint_steps(samples["step"].dropna()).items():
        counts = correct_counts(samples, step)
        if counts.empty:
            continue
        n_min = int(counts["n"].min())
        for k in ks_up_to(n_min):
            per = np.array([pass_at_k(int(n), int(c), k) for n, c in zip(counts["n"], counts["c"])])
            lo, hi = bootstrap_ci(per)
            rows.append({"run": run, "benchmark": "train rollouts", "level": "all",
                         "checkpoint": name, "step": step, "k": k, "value": float(per.mean()),
                         "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def crossing_k(curves: pd.DataFrame) -> pd.DataFrame:
    """k* per (run, benchmark): the smallest k where base ≥ trained; None when it never does."""
    out = []
    for (run, bench), grp in curves.groupby(["run", "benchmark"], sort=True):
        wide = grp.pivot_table(index="k", columns="checkpoint", values="value", aggfunc="last")
        if not {"base", "trained"} <= set(wide.columns):
            continue
        wide = wide.dropna().sort_index()
        crossed = wide.index[wide["base"] >= wide["trained"]]
        out.append({"run": run, "benchmark": bench,
                    "k_star": int(crossed[0]) if len(crossed) else None,
                    "base@kmax": float(wide["base"].iloc[-1]),
                    "trained@kmax": float(wide["trained"].iloc[-1]),
                    "k_max": int(wide.index[-1])})
    return pd.DataFrame(out, columns=["run", "benchmark", "k_star", "base@kmax", "trained@kmax",
                                      "k_max"])
