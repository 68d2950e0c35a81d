"""Tables of the live gradient diagnostics (``grad/*`` keys of `training.diagnostics`) for the
dashboard: gradient noise curves and realised vs exact prompt weights. Pandas only.

The per-step SNR and B_simple estimates are noisy (a few micro-batches per step) and each is a
ratio of two unbiased estimates; as McCandlish et al. (arXiv 1812.06162, App. A.1) advise, the
curves average numerator and denominator over a window of steps before taking the ratio:

    SNR      = mean ‖E g‖²  / mean tr Cov g
    B_simple = mean (B·‖E g‖²) / mean ‖E g‖²       (B·‖E g‖² = N·tr Cov g, N rows per update)

A window of 1 gives the per-step values.
"""
from __future__ import annotations

from typing import Mapping

import pandas as pd

import records

SNR = "SNR = ‖E g‖² / tr Cov g"
B_SIMPLE = "B_simple (rows) = N·tr Cov g / ‖E g‖²"
EMPIRICAL, EXACT = "realised (empirical)", "exact w(p, G)"
WEIGHT_COLUMNS = ["run", "level", "p", "w", "kind", "steps"]


def noise_curves(frames: Mapping[str, pd.DataFrame], window: int = 1) -> pd.DataFrame:
    """Tidy (run, step, metric, value) of SNR and B_simple, numerator and denominator averaged
    over ``window`` steps before the ratio; steps without diagnostics are left out."""
    need = [records.GRAD_MEAN_SQ, records.GRAD_NOISE_TRCOV, records.GRAD_NOISE_SCALE]
    parts = []
    for run, df in frames.items():
        if df.empty or not set(need) <= set(df.columns):
            continue
        d = df[["step", *need]].apply(pd.to_numeric, errors="coerce").dropna().sort_values("step")
        if d.empty:
            continue
        mean = lambda s: s.rolling(max(1, window), min_periods=1).mean()  # noqa: E731
        m2, tr = mean(d[records.GRAD_MEAN_SQ]), mean(d[records.GRAD_NOISE_TRCOV])
        nb = mean(d[records.GRAD_NOISE_SCALE] * d[records.GRAD_MEAN_SQ])
        for name, value in ((SNR, m2 / tr), (B_SIMPLE, nb / m2)):
            parts.append(pd.DataFrame({"run": run, "step": d["step"].to_numpy(),
                                       "metric": name, "value": value.to_numpy()}))
    if not parts:
        return pd.DataFrame(columns=["run", "step", "metric", "value"])
    out = pd.concat(parts, ignore_index=True)
    return out[pd.notna(out["value"]) & (out["value"].abs() != float("inf"))]


def weight_levels(df: pd.DataFrame) -> list[str]:
    """Difficulty levels with a realised or exact prompt weight in a metrics frame."""
    prefixes = (records.GRAD_W_EMPIRICAL, records.GRAD_W_EXACT)
    return sorted({c[len(p):] for c in df.columns for p in prefixes if c.startswith(p)})


def prompt_weights(frames: Mapping[str, pd.DataFrame], first: int = 0,
                   last: float = float("inf")) -> pd.DataFrame:
    """Per run and difficulty level, over the steps in [first, last]: the mean pass rate p, the
    mean realised weight and the mean exact w(p, G) (columns ``WEIGHT_COLUMNS``; ``kind`` is
    `EMPIRICAL` or `EXACT`, ``steps`` the number of steps averaged)."""
    rows = []
    for run, df in frames.items():
        if df.empty or "step" not in df.columns:
            continue
        steps = pd.to_numeric(df["step"], errors="coerce")
        d = df[(steps >= first) & (steps <= last)]
        for level in weight_levels(d):
            p_col = records.grad_pass_rate_key(level)
            for kind, col in ((EMPIRICAL, records.grad_w_empirical_key(level)),
                              (EXACT, records.grad_w_exact_key(level))):
                if col not in d.columns or p_col not in d.columns:
                    continue
                pair = d[[p_col, col]].apply(pd.to_numeric, errors="coerce").dropna()
                if not pair.empty:
                    rows.append({"run": run, "level": level, "p": pair[p_col].mean(),
                                 "w": pair[col].mean(), "kind": kind, "steps": len(pair)})
    return pd.DataFrame(rows, columns=WEIGHT_COLUMNS)
