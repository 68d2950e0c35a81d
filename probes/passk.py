"""pass@k from sampled generations: unbiased estimator, curves, paired bootstrap CIs, crossing k*.

    python -m probes.passk runs/grpo-run                       # a run's samples (last step)
    python -m probes.passk base.jsonl rl.jsonl --labels base,rl  # two models: diff + crossing k*

The maths (unbiased pass@k of Chen et al. arXiv 2107.03374, paired percentile bootstrap CIs over
problems, optionally two-stage, and the crossing point k* = min{k : pass@k(A) ≥ pass@k(B)} with
its bootstrap distribution) is :mod:`records.passk`, the one implementation the dashboard,
the paper figures and evaluation use too; it is re-exported here. This module is the CLI: inputs,
table, records.

Inputs: a run directory (``records.read_samples``: rows with prompt_id, correct,
source == 'rollout', at ``--step``, default the last step; or ``--benchmark NAME`` for its eval
generations) or a plain jsonl file of rows with ``problem`` (or ``prompt_id``) and ``correct``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import records
from records.passk import (Counts, PassKError, analyse, counts_from_rows, crossing,  # noqa: F401
                           curves, ks_powers_of_two, pass_at_k)

from .common import default_out


def load(path: str, step: int | None = None, benchmark: str | None = None) -> Counts:
    """Counts from a run dir (rollout samples at ``step`` — default the last — or eval
    generations of ``benchmark``) or from a jsonl file of (problem, correct) rows. A malformed
    row raises `PassKError` naming the file, the row (its record number) and the field."""
    p = Path(path)
    if p.is_dir():
        source = p / (records.EVAL_DIR + f"/{benchmark}.jsonl" if benchmark else records.SAMPLES)
        rows = list(enumerate((records.read_generations(p, benchmark) if benchmark
                               else records.read_samples(p))[0], 1))
        if not benchmark:
            rows = [(i, r) for i, r in rows if r.get("source", "rollout") == "rollout"]
            steps = {i: _step(r, source, i) for i, r in rows}
            if rows:
                s = max(steps.values()) if step is None else step
                rows = [(i, r) for i, r in rows if steps[i] == s]
    elif p.is_file():
        source = p
        rows = list(enumerate(records.read_jsonl(p)[0], 1))
    else:
        raise PassKError(f"{path}: no such run directory or jsonl file")
    if not rows:
        raise PassKError(f"{path}: no samples found" + (f" at step {step}" if step is not None else ""))
    return counts_from_rows([r for _, r in rows], str(source), [i for i, _ in rows])


def _step(row: dict, source: Path, number: int) -> int:
    """A sample row's training step (0 when absent); anything but an integer raises."""
    value = row.get("step", 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PassKError(f"{source}: row {number}: field 'step' must be an integer, got {value!r}")
    return value


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
        return ks_powers_of_two(nmin)
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
