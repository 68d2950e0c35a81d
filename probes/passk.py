"""pass@k from sampled generations: unbiased estimator, curves, paired bootstrap CIs, crossing k*.

    python -m probes.passk runs/grpo-run                       # a run's samples (last step)
    python -m probes.passk base.jsonl rl.jsonl --labels base,rl  # two models: diff + crossing k*

Per problem with n samples, c correct (Chen et al. arXiv 2107.03374):

    pass@k = 1 − C(n−c, k)/C(n, k) = 1 − Π_{i=n−c+1}^{n} (1 − k/i)     (human-eval's stable form)

and 1 when n − c < k. Confidence intervals: percentile bootstrap over problems (resampling the
same problems for both models, so differences are paired; Miller arXiv 2411.00640), optionally
two-stage (then c* ∼ Binomial(n, c/n) within each resampled problem; probes-spec §3.4).
The crossing point k* = min{k : pass@k(A) ≥ pass@k(B)} (Yue et al. arXiv 2504.13837) is
reported with its bootstrap distribution; it may not exist.

Inputs: a run directory (``records.read_samples``: rows with prompt_id, correct,
source == 'rollout', at ``--step``, default the last step; or ``--benchmark NAME`` for its eval
generations) or a plain jsonl file of rows with ``problem`` (or ``prompt_id``) and ``correct``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import records

from .common import default_out


class PassKError(ValueError):
    """Bad input (k > n, empty data, unreadable file); raised before any computation."""


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


def counts_from_rows(rows: list) -> Counts:
    """Group (problem | prompt_id, correct) rows into per-problem (n, c)."""
    n, c = defaultdict(int), defaultdict(int)
    for r in rows:
        pid = r.get("problem", r.get("prompt_id"))
        if pid is None or "correct" not in r:
            raise PassKError(f"row without problem/prompt_id or correct: {r}")
        n[pid] += 1
        c[pid] += int(bool(r["correct"]))
    if not n:
        raise PassKError("no samples")
    ids = sorted(n, key=str)
    return Counts(ids, np.array([n[i] for i in ids]), np.array([c[i] for i in ids]))


def load(path: str, step: int | None = None, benchmark: str | None = None) -> Counts:
    """Counts from a run dir (rollout samples at ``step`` — default the last — or eval
    generations of ``benchmark``) or from a jsonl file of (problem, correct) rows."""
    p = Path(path)
    if p.is_dir():
        if benchmark:
            rows, _ = records.read_generations(p, benchmark)
        else:
            rows, _ = records.read_samples(p)
            rows = [r for r in rows if r.get("source", "rollout") == "rollout"]
            if rows:
                s = max(int(r.get("step", 0)) for r in rows) if step is None else step
                rows = [r for r in rows if int(r.get("step", 0)) == s]
    elif p.is_file():
        rows, _ = records.read_jsonl(p)
    else:
        raise PassKError(f"{path}: no such run directory or jsonl file")
    if not rows:
        raise PassKError(f"{path}: no samples found" + (f" at step {step}" if step is not None else ""))
    return counts_from_rows(rows)


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
    res = {"labels": labels, "k": ks, "problems": len(counts[0].ids), "n_min": nmin, "B": B,
           "two_stage": two_stage,
           "models": {lab: {"pass@k": point[m, np.array(ks) - 1].tolist(), "lo": lo[m, np.array(ks) - 1].tolist(),
                            "hi": hi[m, np.array(ks) - 1].tolist(), "se": sd[m, np.array(ks) - 1].tolist()}
                      for m, lab in enumerate(labels)}}
    if len(counts) == 2:
        d = boot[:, 0] - boot[:, 1]
        dl, dh = np.quantile(d, [alpha / 2, 1 - alpha / 2], axis=0)
        kk = np.array(ks) - 1
        res["diff"] = {"value": (point[0] - point[1])[kk].tolist(), "lo": dl[kk].tolist(), "hi": dh[kk].tolist(),
                       "se": d.std(0, ddof=1)[kk].tolist()}
        ks_b = crossing(boot[:, 0], boot[:, 1])
        exists = ~np.isnan(ks_b)
        res["crossing"] = {"k_star": float(crossing(point[0], point[1])),
                           "lo": float(np.quantile(ks_b[exists], alpha / 2)) if exists.any() else float("nan"),
                           "hi": float(np.quantile(ks_b[exists], 1 - alpha / 2)) if exists.any() else float("nan"),
                           "p_exists": float(exists.mean())}
    return res


def tidy_rows(res: dict) -> list:
    rows = []
    for lab, m in res["models"].items():
        for i, k in enumerate(res["k"]):
            rows.append({"probe": "passk", "estimator": lab, "setting": f"k={k},problems={res['problems']}",
                         "metric": "pass@k", "value": m["pass@k"][i], "stderr": m["se"][i],
                         "k": k, "lo": m["lo"][i], "hi": m["hi"][i]})
    if "diff" in res:
        pair = f"{res['labels'][0]}-{res['labels'][1]}"
        for i, k in enumerate(res["k"]):
            rows.append({"probe": "passk", "estimator": pair, "setting": f"k={k},problems={res['problems']}",
                         "metric": "pass@k_diff", "value": res["diff"]["value"][i], "stderr": res["diff"]["se"][i],
                         "k": k, "lo": res["diff"]["lo"][i], "hi": res["diff"]["hi"][i]})
        cr = res["crossing"]
        rows.append({"probe": "passk", "estimator": pair, "setting": f"problems={res['problems']}",
                     "metric": "k_star", "value": cr["k_star"], "stderr": float("nan"), "lo": cr["lo"],
                     "hi": cr["hi"], "p_exists": cr["p_exists"]})
    return rows


def format_table(res: dict) -> str:
    labs = res["labels"]
    lines = [f"pass@k over {res['problems']} problems (n ≥ {res['n_min']} samples each), 95% "
             f"{'two-stage ' if res['two_stage'] else ''}bootstrap CIs over problems (B={res['B']})"]
    head = f"{'k':>6}" + "".join(f"  {lab:>26}" for lab in labs) + ("  " + f"{'diff (paired)':>26}" if "diff" in res else "")
    lines.append(head)
    cell = lambda v, lo, hi: f"{v:.4f} [{lo:.4f}, {hi:.4f}]"  # noqa: E731
    for i, k in enumerate(res["k"]):
        row = f"{k:>6}" + "".join(f"  {cell(res['models'][l]['pass@k'][i], res['models'][l]['lo'][i], res['models'][l]['hi'][i]):>26}" for l in labs)  # noqa: E741
        if "diff" in res:
            d = res["diff"]
            row += f"  {cell(d['value'][i], d['lo'][i], d['hi'][i]):>26}"
        lines.append(row)
    if "crossing" in res:
        cr = res["crossing"]
        ks = "none" if math.isnan(cr["k_star"]) else f"{cr['k_star']:.0f}"
        lines.append(f"crossing k* = min{{k: {labs[0]} ≥ {labs[1]}}} = {ks}; 95% CI [{cr['lo']}, {cr['hi']}], "
                     f"exists in {100 * cr['p_exists']:.1f}% of bootstrap samples")
    return "\n".join(lines) + "\n"


def parse_ks(s: str, nmin: int) -> list:
    if s == "all":
        return list(range(1, nmin + 1))
    if s == "pow2":
        return [2 ** i for i in range(int(math.log2(nmin)) + 1)]
    try:
        ks = sorted({int(k) for k in s.split(",")})
    except ValueError:
        raise PassKError(f"--k {s!r}: expected 'all', 'pow2' or comma-separated integers") from None
    if ks[0] < 1:
        raise PassKError("--k values must be ≥ 1")
    return ks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m probes.passk", description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+", help="one or two run dirs or jsonl files")
    ap.add_argument("--labels", default=None, help="comma-separated labels (default: input names)")
    ap.add_argument("--k", default="pow2", help="'pow2' (1,2,4,...,n), 'all' (1..n) or a list like 1,8,64")
    ap.add_argument("--step", type=int, default=None, help="training step of a run's samples (default last)")
    ap.add_argument("--benchmark", default=None, help="use a run's eval generations of this benchmark")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--two-stage", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", choices=("table", "json"), default="table")
    ap.add_argument("--out", default=None, help="run dir for records (default runs/probes-passk-<time>)")
    ap.add_argument("--no-records", action="store_true")
    args = ap.parse_args(argv)
    try:
        if len(args.inputs) > 2:
            raise PassKError("give one or two inputs")
        counts = [load(p, args.step, args.benchmark) for p in args.inputs]
        labels = args.labels.split(",") if args.labels else [Path(p).stem or str(p) for p in args.inputs]
        if len(labels) != len(counts):
            raise PassKError(f"--labels has {len(labels)} names for {len(counts)} inputs")
        if len(counts) == 2:
            counts = list(counts[0].align(counts[1]))
        nmin = min(int(ct.n.min()) for ct in counts)
        ks = parse_ks(args.k, nmin)
        res = analyse(counts, labels, ks, args.bootstrap, args.seed, args.two_stage)
    except PassKError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(records._jsonable(res), indent=1) if args.format == "json" else format_table(res), end="")
    if not args.no_records:
        out = Path(args.out) if args.out else default_out("passk")
        w = records.RunWriter(out)
        w.write_config({"probe": "passk", "inputs": args.inputs, "labels": labels, "k": ks,
                        "bootstrap": args.bootstrap, "two_stage": args.two_stage, "seed": args.seed})
        w.log_probe("passk", tidy_rows(res))
        print(f"records: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
