"""``python -m probes.dynamics``: train the testbed policy with each estimator (probes-spec §6.3.4).

    python -m probes.dynamics --estimators rloo,grpo,sft,hpt[γ=0,const] --steps 300 --seeds 10

Each step samples one update (all train prompts × budget/G groups of G) from π_θ, builds a
`estimators.Batch` whose logp is a differentiable function of θ, and takes θ ← θ + lr·ĝ with
ĝ = −∇ est(batch).loss (times the registry's constant-normaliser unit). Common random numbers:
a seed fixes one generator stream shared by every estimator. Recorded every ``--every`` steps:
exact pass@k (k = 1, 2, 4, …, 1024) on train and held-out prompts, per-prompt p_x, sequence
entropy, the fraction of prompts the HPT gate sent to SFT and the fraction of all-equal groups.

The summary checks the qualitative claims: RL raises pass@1 while pass@k at large k falls below
the base (Yue et al. arXiv 2504.13837), and SFT/HPT solve prompts RL never moves (HPT paper
§4, Table 4) — each reported as seen or not seen.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

import records
from estimators import Batch
from estimators.estimator import SFT_LABEL

from . import moments as Mo
from . import registry as Rg
from .common import default_out
from .testbed import Tree, TreeConfig

KS = tuple(2 ** i for i in range(11))  # 1 … 1024
DEFAULT = "rloo,grpo,dr_grpo,sft,luffy,hpt[γ=0,const]"


def update(tree: Tree, est, unit: float, theta, G: int, R: int, gen: torch.Generator):
    """One sampled estimator gradient ĝ at θ (on-policy) and its gate / all-equal fractions."""
    th = theta.detach().requires_grad_(True)
    with torch.no_grad():
        ctx = _SamplingView(tree, th.detach(), G, R)
    nR, nD = Mo.layout(est, G)
    j = Mo._draw(ctx, nR, nD, gen).reshape(-1)
    P = len(tree.train_idx)
    shape = (P, R, nR + nD)
    xi = torch.arange(P)[:, None, None].expand(shape).reshape(-1)
    grp = torch.arange(P * R).view(P, R, 1).expand(shape).reshape(-1)
    demo = (torch.arange(nR + nD) >= nR).expand(shape).reshape(-1)
    x = tree.train_idx[xi]
    logp = tree.token_logp(th)[x, j]
    needed = {"values": lambda: tree.values(th.detach())[x, j],
              "logp_ref": lambda: logp.detach(),        # a KL to π_ref measured at π_ref = π_θ
              "reward_baseline": lambda: tree.correct[x, tree.greedy(th.detach())[x]],
              "sum_pi_squared": lambda: tree.sum_pi_squared(th.detach())[x, j]}
    b = Batch(logp=logp, mask=tree.mask[j], reward=tree.correct[x, j], group=grp, is_demo=demo,
              logp_old=logp.detach(), **{f: needed[f]() for f in est.needs if f in needed})
    plan = est.plan(b)
    loss = est.terms(b, plan).sum()
    (g,) = torch.autograd.grad(-loss, th)
    r = b.reward.view(P * R, -1)[:, :nR] if nR else b.reward.view(P * R, -1)[:, :0]
    all_equal = float(((r == r[:, :1]).all(-1)).to(torch.float64).mean()) if nR else float("nan")
    labels = list(plan.labels().values())
    gate = labels.count(SFT_LABEL) / len(labels) if labels else 0.0
    return g * unit, gate, all_equal


class _SamplingView:
    """The parts of `moments.Context` that `_draw` needs, at θ (no token scores)."""

    def __init__(self, tree: Tree, theta, G: int, R: int):
        self.tree, self.G, self.R = tree, G, R
        self.prompts = tree.train_idx
        self.P = len(self.prompts)
        self.pi_old = tree.probs(theta)


def snapshot(tree: Tree, theta) -> dict:
    """Exact evaluation of θ: pass@k on train / held-out, p_x, mean entropy."""
    with torch.no_grad():
        p = tree.pass_rate(theta)
        return {"train": tree.pass_at_k(theta, KS, tree.train_idx).tolist(),
                "heldout": tree.pass_at_k(theta, KS, tree.heldout_idx).tolist(),
                "p": p.tolist(), "entropy": float(tree.entropy(theta)[tree.train_idx].mean())}


def train(tree: Tree, probe: Rg.Probe, steps: int, lr: float, G: int, R: int, seed: int, every: int) -> list:
    """One run; returns snapshots [{step, train, heldout, p, entropy, gate, all_equal}]."""
    P = len(tree.train_idx)
    est = probe.estimator(P, R, G)
    unit = probe.unit(est, P, R, G)
    gen = torch.Generator().manual_seed(seed)
    theta = tree.base_theta()
    out, gates, eqs = [], [], []
    for t in range(steps + 1):
        if t % every == 0 or t == steps:
            out.append({"step": t, **snapshot(tree, theta),
                        "gate": sum(gates) / len(gates) if gates else float("nan"),
                        "all_equal": sum(eqs) / len(eqs) if eqs else float("nan")})
            gates, eqs = [], []
        if t == steps:
            break
        g, gate, eq = update(tree, est, unit, theta, G, R, gen)
        if not torch.isfinite(g).all():
            raise FloatingPointError(f"{probe.name}: non-finite gradient at step {t} (seed {seed})")
        theta = theta + lr * g
        gates.append(gate)
        eqs.append(eq)
    return out


def _mean_se(v: list) -> tuple[float, float]:
    t = torch.tensor(v, dtype=torch.float64)
    return float(t.mean()), float(t.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def _nanmean(v: list) -> float:
    v = [x for x in v if not math.isnan(x)]
    return sum(v) / len(v) if v else float("nan")


def summarise(base: dict, runs: dict) -> dict:
    """Final-step means ± SE over seeds, and the qualitative claims as seen / not seen."""
    summary = {}
    for name, seeds in runs.items():
        last = [s[-1] for s in seeds]
        row = {}
        for split in ("train", "heldout"):
            for i in (0, len(KS) - 1):
                row[f"{split} pass@{KS[i]}"] = _mean_se([s[split][i] for s in last])
        ps = torch.tensor([s["p"] for s in last])[:, :len(base["train_p"])]
        row["solved"] = _mean_se(((ps > 0.5).sum(-1)).tolist())
        row["p_final"] = ps.mean(0).tolist()
        row["entropy"] = _mean_se([s["entropy"] for s in last])
        row["gate"] = _mean_se([s["gate"] for s in last])
        row["gate_avg"] = _mean_se([_nanmean([x["gate"] for x in s]) for s in seeds])
        row["all_equal_avg"] = _mean_se([_nanmean([x["all_equal"] for x in s]) for s in seeds])
        row["all_equal"] = _mean_se([s["all_equal"] for s in last])
        summary[name] = row
    return summary


def claims(base: dict, summary: dict, rl: list, demo: list) -> list:
    """Yue et al.: RL pass@1 up, pass@1024 below base; HPT paper: SFT/HPT solve prompts RL
    never moves (p_x stays < 0.05 under every RL estimator but exceeds 0.5 under SFT/HPT)."""
    out = []
    b1, bK = base["train"][0], base["train"][-1]
    for n in rl:
        s = summary[n]
        up, down = s["train pass@1"][0] > b1, s["train pass@1024"][0] < bK
        out.append(f"{n}: pass@1 {b1:.3f} → {s['train pass@1'][0]:.3f} ({'up' if up else 'not up'}); "
                   f"pass@1024 {bK:.3f} → {s['train pass@1024'][0]:.3f} "
                   f"({'below base: seen' if down else 'not below base: NOT seen'})")
    never = [i for i in range(len(base["train_p"])) if all(summary[n]["p_final"][i] < 0.05 for n in rl)]
    for n in demo:
        solved = [i for i in never if summary[n]["p_final"][i] > 0.5]
        out.append(f"{n}: solves {len(solved)} of the {len(never)} train prompts no RL estimator moved past "
                   f"p=0.05 {solved} ({'seen' if solved else 'NOT seen'})")
    return out


def format_report(base: dict, summary: dict, lines: list, cfg: dict) -> str:
    out = [f"dynamics on the tree testbed: {cfg['steps']} steps, lr {cfg['lr']}, G={cfg['G']}, "
           f"budget {cfg['budget']}/prompt, {cfg['seeds']} seeds (common random numbers)",
           f"base: train pass@1 {base['train'][0]:.4f}, pass@1024 {base['train'][-1]:.4f}; "
           f"held-out pass@1 {base['heldout'][0]:.4f}, pass@1024 {base['heldout'][-1]:.4f}", ""]
    cols = ["train pass@1", "train pass@1024", "heldout pass@1", "heldout pass@1024", "solved", "entropy",
            "gate_avg", "all_equal_avg"]
    w = max(len(n) for n in summary) + 2
    out.append("estimator".ljust(w) + "".join(f"{c:>20}" for c in cols))
    for n, s in summary.items():
        out.append(n.ljust(w) + "".join(f"{s[c][0]:>12.4f}±{s[c][1]:<7.4f}" for c in cols))
    out += ["", "claims:"] + [f"  {x}" for x in lines]
    return "\n".join(out) + "\n"


def tidy_rows(runs: dict) -> list:
    rows = []
    for name, seeds in runs.items():
        for seed, snaps in enumerate(seeds):
            for s in snaps:
                setting = f"seed={seed},step={s['step']}"
                for split in ("train", "heldout"):
                    for k, v in zip(KS, s[split]):
                        rows.append({"probe": "dynamics", "estimator": name, "setting": f"{setting},split={split}",
                                     "metric": f"pass@{k}", "value": v, "stderr": float("nan"),
                                     "seed": seed, "step": s["step"]})
                for i, p in enumerate(s["p"]):
                    rows.append({"probe": "dynamics", "estimator": name, "setting": setting, "metric": f"p_x/{i}",
                                 "value": p, "stderr": float("nan"), "seed": seed, "step": s["step"]})
                for m in ("entropy", "gate", "all_equal"):
                    rows.append({"probe": "dynamics", "estimator": name, "setting": setting, "metric": m,
                                 "value": s[m], "stderr": float("nan"), "seed": seed, "step": s["step"]})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m probes.dynamics", description=__doc__.split("\n\n")[0])
    ap.add_argument("--estimators", default=DEFAULT)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1.0)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--budget", type=int, default=8, help="samples per prompt per step (budget/G groups)")
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--policy", default="tabular")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-records", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        probes = [p for p in Rg.select(args.estimators, ()) if not p.stale]
        if args.G < 2:
            raise ValueError(f"--G {args.G}: group estimators need G ≥ 2")
        if args.budget % args.G:
            raise ValueError(f"--budget {args.budget} is not divisible by G={args.G}")
        tree = Tree(TreeConfig(policy=args.policy))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    R = args.budget // args.G
    base = snapshot(tree, tree.base_theta())
    base["train_p"] = [base["p"][i] for i in tree.train_idx.tolist()]
    runs = {p.name: [train(tree, p, args.steps, args.lr, args.G, R, s, args.every) for s in range(args.seeds)]
            for p in probes}
    summary = summarise(base, runs)
    rl = [n for n in runs if not (n.startswith("sft") or n.startswith("hpt") or n.startswith("luffy") or n.startswith("srft"))]
    demo = [n for n in runs if n not in rl]
    cfg = {"steps": args.steps, "lr": args.lr, "G": args.G, "budget": args.budget, "seeds": args.seeds,
           "estimators": list(runs), "every": args.every, "policy": args.policy}
    lines = claims(base, summary, rl, demo)
    print(format_report(base, summary, lines, cfg), end="")
    print(f"({time.time() - t0:.1f} s)")
    if not args.no_records:
        out = Path(args.out) if args.out else default_out("dynamics")
        w = records.RunWriter(out)
        w.write_config({"probe": "dynamics", **cfg, "base": base, "summary": summary, "claims": lines})
        w.log_probe("dynamics", tidy_rows(runs))
        print(f"records: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
