"""``python -m probes.variance``: bias / variance of every estimator on the exact tree testbed
(probes-spec §6.3, §7), or empirically on a small causal LM (``--testbed lm``, see `probes.lm`).

    python -m probes.variance --estimators all --checkpoint mid --G 8 --budget 64 --stale 1,4,16

One row per estimator: its declared target, G, N (sampled responses per update; demos apart),
exact or MC(M), scale α = ⟨m,∇J⟩/‖∇J‖², cos(m,∇J), cos(m,target), dir_err ‖m/α−∇J‖/‖∇J‖,
rel_bias ‖m−∇J‖/‖∇J‖, tr Cov ĝ_N, tr Cov/α², SNR ‖m‖²/trCov, B_simple N·trCov/‖m‖² (samples;
B_groups in groups), work_var trCov·N, P(zero) (expected fraction of groups whose contribution
is exactly 0), and for stale rows KL(π_old‖π_θ), max token ratio ρ, clip fraction and ESS; HPT
rows the fraction of prompts the gate sends to SFT. The header gives the testbed hash, the
checkpoint, p_x per prompt, the fraction of all-equal groups at G and ‖∇J‖; the footer the
GRPO weight table w(p,G) and the MC-vs-exact agreement flags. Records go to ``--out``
(``probes/variance.jsonl`` tidy rows + ``config.json``).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import estimators
import records

from . import moments as Mo
from .common import default_out
from . import registry as Rg
from .testbed import Tree, TreeConfig

SWEEP_G = (2, 4, 8, 16, 32, 64)
DEFAULT_MC = 200  # replicates for estimators without exact moments when --mc is 0
COLUMNS = ("estimator", "target", "G", "N", "demos", "exact", "scale", "cos", "cos_tgt", "dir_err",
           "rel_bias", "trCov", "trCov/a2", "SNR", "B_simple", "B_groups", "E[cos]", "work_var",
           "P(zero)", "KL", "max_rho", "clip_frac", "ESS", "gate_frac")
PASS_K = estimators.get("pkpo").advantage.k   # the pass@k target of the pkpo preset
TARGETS = {"J": "J", "w": "w(p,G)·∇p", "KL": "-KL(β‖θ)", "Jmu": "Jμ,μ=β(1-p)^G",
           "passk": f"pass@{PASS_K}"}


class UsageError(ValueError):
    """Bad command-line input, reported before any work."""


# ----------------------------------------------------------------------------- settings


def stale_theta(tree: Tree, theta_old, K: int, lr: float):
    """θ after K stale minibatch steps of exact ascent θ ← θ + lr·∇J(θ) from θ_old (the policy
    moved while the sampled batch was reused; probes-spec §6.3)."""
    th = theta_old
    for _ in range(K):
        th = th + lr * tree.grad_J(th)
    return th


def off_policy_extras(ctx: Mo.Context) -> dict:
    """KL(π_old‖π_θ) (mean over prompts), max token ratio, and the sequence-IS effective sample
    size fraction 1/E_old[ρ_seq²] (mean over prompts)."""
    x = ctx.prompts
    lo, ln = ctx.logp_old_tok[x], ctx.logp_tok[x]
    pi_old = ctx.pi_old[x]
    kl = (pi_old * (lo.sum(-1) - ln.sum(-1))).sum(-1).mean()
    rho_tok = torch.exp(ln - lo)[ctx.tree.mask.expand_as(ln) > 0]
    rho_seq = torch.exp(ln.sum(-1) - lo.sum(-1))
    ess = (1.0 / (pi_old * rho_seq ** 2).sum(-1)).mean()
    return {"KL": float(kl), "max_rho": float(rho_tok.max()), "ESS": float(ess)}


def targets(tree: Tree, theta, G: int, prompts) -> dict:
    """Declared target gradients (see `registry`): J, w, KL, Jmu, passk (∇pass@k =
    k(1−p)^(k−1)∇p), each a mean over prompts."""
    gp = tree.grad_p(theta)[prompts]
    gd = tree.grad_demo_logp(theta)[prompts]
    p = tree.pass_rate(theta)[prompts]
    w = Mo.group_weight(estimators.get("grpo").advantage, p, G)
    mu = (1 - p) ** G  # β = 1 (the presets' gate β)
    return {"J": gp.mean(0), "w": (w[:, None] * gp).mean(0), "KL": gd.mean(0),
            "Jmu": ((G - 1) / G * gp + mu[:, None] * gd).mean(0),
            "passk": (PASS_K * (1 - p[:, None]) ** (PASS_K - 1) * gp).mean(0)}


@dataclass
class Options:
    estimators: str = "all"
    G: int = 8
    sweep_G: bool = False
    budget: int = 64
    checkpoint: str = "mid"
    stale: tuple = (1, 4, 16)
    stale_lr: float = 1.0
    mc: int = 0
    seed: int = 0
    V: int = 3
    H: int = 5
    policy: str = "tabular"
    demonstrator: str = "first"

    def groups(self) -> tuple:
        return SWEEP_G if self.sweep_G else (self.G,)


def validate(o: Options) -> list:
    """Every check that can fail, before any work; returns the selected probes."""
    try:
        probes = Rg.select(o.estimators, o.stale)
    except ValueError as e:
        raise UsageError(str(e)) from None
    for G in o.groups():
        if G < 2:
            raise UsageError(f"--G {G}: group estimators need G ≥ 2 (a group of one has no baseline)")
        if o.budget % G:
            raise UsageError(f"--budget {o.budget} is not divisible by G={G}: the budget is split into "
                             f"budget/G groups per prompt")
    if o.checkpoint not in ("base", "mid"):
        raise UsageError(f"--checkpoint {o.checkpoint!r}: valid are base, mid")
    if o.mc < 0 or o.mc == 1 or any(k < 1 for k in o.stale):
        raise UsageError("--mc must be 0 (exact where possible) or ≥ 2, and every --stale K ≥ 1")
    try:
        TreeConfig(V=o.V, H=o.H, policy=o.policy, demonstrator=o.demonstrator)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return probes


# ----------------------------------------------------------------------------- measuring


def measure(probe: Rg.Probe, ctx: Mo.Context, tg: dict, o: Options) -> tuple[dict, dict | None]:
    """One table row for ``probe`` in setting ``ctx``; with ``--mc`` also the agreement check."""
    P, R, G = ctx.P, ctx.R, ctx.G
    est = probe.estimator(P, R, G)
    unit = probe.unit(est, P, R, G)
    nR, nD = Mo.layout(est, G)
    ok, why = Mo.exact_support(est)
    exact = Mo.exact_moments(ctx, est, probe.prepare, unit) if ok else None
    M = o.mc if o.mc else (0 if ok else DEFAULT_MC)
    mc = Mo.mc_moments(ctx, est, M, o.seed, probe.prepare, unit) if M else None
    main = exact if exact is not None else mc
    N, groups = P * R * nR, P * R
    row = {"estimator": probe.name, "target": TARGETS[probe.target], "G": G, "N": N, "demos": P * R * nD,
           "exact": "exact" if exact is not None else f"MC({M})", "note": probe.note or why}
    row.update(Mo.metrics(main.mean, main.trcov, tg["J"], tg[probe.target], max(N, P * R * nD), groups))
    row.update({"P(zero)": main.p_zero, "gate_frac": main.gate_frac})
    if probe.stale:
        row.update(off_policy_extras(ctx), clip_frac=main.clip_frac)
    se = {}
    if mc is not None:
        row.update(Mo.mc_extras(mc.samples, tg["J"]))
        s = mc.samples
        n2 = float(tg["J"] @ tg["J"])
        se["scale"] = float((s @ tg["J"] / n2).std() / math.sqrt(M))
        se["trCov"] = float(((s - s.mean(0)) ** 2).sum(-1).std() / math.sqrt(M))
        se["E[cos]"] = row.pop("E[cos]_se")
        se["pair_cos"] = row.pop("pair_cos_se")
    agree = Mo.agreement(exact, mc, tg["J"]) if exact is not None and mc is not None else None
    row["_se"] = se
    return row, agree


def run(o: Options, log=lambda s: None) -> dict:
    """All rows, header and footer for options ``o`` (validated first)."""
    probes = validate(o)
    t0 = time.time()
    tree = Tree(TreeConfig(V=o.V, H=o.H, policy=o.policy, demonstrator=o.demonstrator))
    theta = tree.checkpoint(o.checkpoint)
    prompts = tree.train_idx
    p_all = tree.pass_rate(theta)
    rows, agreements = [], []
    stale_thetas = {K: stale_theta(tree, theta, K, o.stale_lr) for K in sorted({p.stale for p in probes if p.stale})}
    for G in o.groups():
        R = o.budget // G
        ctxs = {0: Mo.Context(tree, theta, theta, G, R, prompts)}
        ctxs.update({K: Mo.Context(tree, theta, th, G, R, prompts) for K, th in stale_thetas.items()})
        tgs = {K: targets(tree, c.theta, G, prompts) for K, c in ctxs.items()}
        for probe in probes:
            t = time.time()
            row, agree = measure(probe, ctxs[probe.stale], tgs[probe.stale], o)
            row["seconds"] = time.time() - t
            rows.append(row)
            if agree is not None:
                agreements.append({"estimator": probe.name, "G": G, **agree})
            log(f"  {probe.name} G={G}: {row['seconds']:.2f}s")
    p = p_all[prompts]
    G0 = o.groups()
    header = {"testbed": tree.fingerprint, "V": o.V, "H": o.H, "policy": o.policy, "checkpoint": o.checkpoint,
              "demonstrator": o.demonstrator, "p_train": p.tolist(), "p_heldout": p_all[tree.heldout_idx].tolist(),
              "all_equal_fraction": {G: float((p ** G + (1 - p) ** G).mean()) for G in G0},
              "norm_grad_J": float(tree.grad_J(theta).norm()), "budget": o.budget,
              "stale_lr": o.stale_lr, "stale": {K: off_policy_extras(c) for K, c in ctxs.items() if K}}
    ws = {G: Mo.group_weight(estimators.get("grpo").advantage, p, G).tolist() for G in SWEEP_G}
    footer = {"w": ws, "w_limit": (1 / torch.sqrt(p * (1 - p))).tolist(), "agreement": agreements,
              "seconds": time.time() - t0}
    return {"header": header, "rows": rows, "footer": footer}


# ----------------------------------------------------------------------------- output


def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if v == 0:
        return "0"
    if math.isinf(v):
        return "inf"
    a = abs(v)
    return f"{v:.4f}" if 1e-3 <= a < 1e4 else f"{v:.3e}"


def _columns(rows: list) -> list:
    """The spec's columns, dropping the optional ones no row has."""
    return [c for c in COLUMNS if any(c in r for r in rows)]


def format_table(res: dict) -> str:
    h, rows, f = res["header"], res["rows"], res["footer"]
    out = io.StringIO()
    p = ", ".join(f"{v:.4f}" for v in h["p_train"])
    out.write(f"testbed tree {h['testbed']} (V={h['V']}, H={h['H']}, {h['policy']}, demos: {h['demonstrator']}), "
              f"checkpoint {h['checkpoint']}, budget {h['budget']} samples/prompt\n")
    out.write(f"p_x train: [{p}]\np_x held-out: [{', '.join(f'{v:.4f}' for v in h['p_heldout'])}]\n")
    out.write("all-equal groups: " + ", ".join(f"G={G}: {v:.3f}" for G, v in h["all_equal_fraction"].items())
              + f"   ‖∇J‖ = {h['norm_grad_J']:.4e}\n")
    for K, e in h["stale"].items():
        out.write(f"stale K={K} (lr {h['stale_lr']}): KL(old‖new)={e['KL']:.3e}, max ρ={e['max_rho']:.3f}, "
                  f"ESS={e['ESS']:.3f}\n")
    cols = _columns(rows)
    cells = [[_fmt(r.get(c, float("nan"))) for c in cols] for r in rows]
    width = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    out.write("\n" + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cols, width))) + "\n")
    for x in cells:
        out.write("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(x, width))) + "\n")
    notes = [f"  {r['estimator']}: {r['note']}" for r in rows if r.get("note")]
    if notes:
        out.write("\nnotes:\n" + "\n".join(dict.fromkeys(notes)) + "\n")
    out.write("\nGRPO weight w(p,G) = h(1) − h(0) per train prompt (E ĝ_x = w·∇p_x); G=2 has no difficulty bias\n")
    out.write("      p  " + "".join(f"{'G=' + str(G):>9}" for G in f["w"]) + "    G→∞\n")
    for i, pv in enumerate(h["p_train"]):
        out.write(f"{pv:7.4f}  " + "".join(f"{f['w'][G][i]:9.4f}" for G in f["w"]) + f"{f['w_limit'][i]:9.4f}\n")
    if f["agreement"]:
        bad = [a for a in f["agreement"] if not a["ok"]]
        out.write(f"\nMC vs exact (|z| < 3 on scale and E‖ĝ‖²): {len(f['agreement']) - len(bad)}/"
                  f"{len(f['agreement'])} agree" + ("" if not bad else "; DISAGREE: " + ", ".join(
                      f"{a['estimator']} G={a['G']} (z={a['z_scale']:.1f}, {a['z_second']:.1f})" for a in bad)) + "\n")
    out.write(f"\n{len(rows)} rows in {f['seconds']:.1f} s\n")
    return out.getvalue()


def format_csv(res: dict) -> str:
    rows = res["rows"]
    cols = _columns(rows) + ["note"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in cols})
    return buf.getvalue()


def format_json(res: dict) -> str:
    return json.dumps(records._jsonable(res), indent=1)


def tidy_rows(res: dict, probe: str = "variance") -> list:
    """Tidy records (probe, estimator, setting, metric, value, stderr) for the dashboard."""
    h = res["header"]
    out = []
    for r in res["rows"]:
        setting = f"G={r['G']},N={r['N']},checkpoint={h['checkpoint']},exact={r['exact']},target={r['target']}"
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("G", "N"):
                out.append({"probe": probe, "estimator": r["estimator"], "setting": setting, "metric": k,
                            "value": v, "stderr": r["_se"].get(k, float("nan"))})
    base = f"checkpoint={h['checkpoint']}"
    for i, p in enumerate(h["p_train"]):
        out.append({"probe": probe, "estimator": "testbed", "setting": base, "metric": f"p_x/train{i}",
                    "value": p, "stderr": float("nan")})
    for G, v in h["all_equal_fraction"].items():
        out.append({"probe": probe, "estimator": "testbed", "setting": f"{base},G={G}",
                    "metric": "all_equal_fraction", "value": v, "stderr": float("nan")})
    out.append({"probe": probe, "estimator": "testbed", "setting": base, "metric": "norm_grad_J",
                "value": h["norm_grad_J"], "stderr": float("nan")})
    for G, ws in res["footer"]["w"].items():
        for i, w in enumerate(ws):
            out.append({"probe": probe, "estimator": "grpo", "setting": f"{base},G={G}",
                        "metric": f"w/train{i}", "value": w, "stderr": float("nan")})
    for a in res["footer"]["agreement"]:
        out.append({"probe": probe, "estimator": a["estimator"], "setting": f"G={a['G']},{base}",
                    "metric": "mc_agrees", "value": float(a["ok"]), "stderr": float("nan")})
    return out


def write_records(res: dict, out: Path, config: dict, probe: str = "variance") -> None:
    w = records.RunWriter(out)
    w.write_config({"probe": probe, **config, "header": res["header"], "torch": torch.__version__})
    w.log_probe(probe, tidy_rows(res, probe))


# ----------------------------------------------------------------------------- CLI


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m probes.variance", description=__doc__.split("\n\n")[0])
    ap.add_argument("--estimators", default="all", help="'all' or comma-separated names")
    ap.add_argument("--testbed", choices=("tree", "lm"), default="tree")
    ap.add_argument("--G", type=int, default=None, help="group size (default 8; --run: the run's n)")
    ap.add_argument("--sweep-G", action="store_true", help=f"G in {SWEEP_G} at a fixed --budget")
    ap.add_argument("--budget", type=int, default=None,
                    help="samples per prompt (budget/G groups); default 64 (--run/--model: G, one group per update)")
    ap.add_argument("--checkpoint", default="mid", help="base | mid")
    ap.add_argument("--stale", default=None,
                    help="stale steps K for the off-policy rows ('' for none; default 1,4,16 on the tree testbed; "
                         "--run: rollouts from the checkpoint K steps before each measured one, none by default)")
    ap.add_argument("--stale-lr", type=float, default=1.0)
    ap.add_argument("--mc", type=int, default=0, help="Monte Carlo replicates for every row (+ MC-vs-exact check)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--V", type=int, default=3)
    ap.add_argument("--H", type=int, default=5)
    ap.add_argument("--policy", default="tabular", help="tabular | mlp")
    ap.add_argument("--demonstrator", default="first", help="first | uniform")
    ap.add_argument("--format", choices=("table", "csv", "json"), default="table")
    ap.add_argument("--out", default=None, help="run dir for records (default runs/probes-variance-<time>)")
    ap.add_argument("--no-records", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (small tensors: 1 is fastest)")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--lm-steps", type=int, default=60, help="(lm) pre-training steps of the tiny LM")
    ap.add_argument("--lm-ref", type=int, default=2048, help="(lm) rollouts per prompt for the reference gradient")
    run = ap.add_argument_group("a run's checkpoints, or any HF causal LM (probes/runs.py)")
    run.add_argument("--run", default=None, help="run directory: measure its checkpoints")
    run.add_argument("--steps", default=None, help="(--run) checkpoint steps, e.g. 0,40 (0 = the initial model)")
    run.add_argument("--checkpoints", default=None, choices=("all",), help="(--run) every checkpoint (the default)")
    run.add_argument("--model", default=None, help="local HF causal LM directory (with --data)")
    run.add_argument("--data", default=None, help="(--model) prompts in the training-data format")
    run.add_argument("--prompts", type=int, default=8, help="(--run/--model) probe prompts P")
    run.add_argument("--updates", type=int, default=8, help="(--run/--model) independent updates M per estimator")
    run.add_argument("--ref", type=int, default=128, help="(--run/--model) rollouts per prompt for the reference")
    run.add_argument("--ref-chunks", type=int, default=8, help="(--run/--model) independent chunks of the reference")
    run.add_argument("--trcov", default="updates", choices=("updates", "groups"),
                     help="(--run/--model) tr Cov across independent updates (one backward per update), or "
                          "across independent groups (one backward per group; group-local estimators)")
    run.add_argument("--micro-batch", type=int, default=64, help="(--run/--model) rows per forward/backward")
    run.add_argument("--temperature", type=float, default=1.0, help="(--model) sampling temperature")
    run.add_argument("--max-new-tokens", type=int, default=48, help="(--model) response length")
    return ap


def _parse_stale(s: str) -> tuple:
    try:
        return tuple(int(k) for k in s.split(",") if k.strip())
    except ValueError:
        raise UsageError(f"--stale {s!r}: expected comma-separated integers like 1,4,16") from None


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.run or args.model:
        from . import runs
        return runs.main_variance(args, sys.argv[1:] if argv is None else list(argv))
    args.G = 8 if args.G is None else args.G
    args.budget = 64 if args.budget is None else args.budget
    args.stale = "1,4,16" if args.stale is None else args.stale
    try:
        if args.testbed == "lm":
            from . import lm
            return lm.main_variance(args)
        o = Options(estimators=args.estimators, G=args.G, sweep_G=args.sweep_G, budget=args.budget,
                    checkpoint=args.checkpoint, stale=_parse_stale(args.stale), stale_lr=args.stale_lr,
                    mc=args.mc, seed=args.seed, V=args.V, H=args.H, policy=args.policy,
                    demonstrator=args.demonstrator)
        validate(o)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log = (lambda s: print(s, file=sys.stderr)) if args.verbose else (lambda s: None)
    res = run(o, log)
    print({"table": format_table, "csv": format_csv, "json": format_json}[args.format](res), end="")
    if not args.no_records:
        out = Path(args.out) if args.out else default_out("variance")
        write_records(res, out, {"options": vars(o), "argv": sys.argv[1:] if argv is None else list(argv)})
        print(f"records: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
