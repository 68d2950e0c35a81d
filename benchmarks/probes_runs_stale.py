"""Cost of the run probe's stale rows (a benchmark, not a timed test).

    python benchmarks/probes_runs_stale.py [--estimators grpo,rloo,seq_is,ppo[eps=0.2]] [--noise 0.01]

Builds a run of the embedded base (its config record, as `training.run` writes it, over
level-1 problems) with one checkpoint, step 1 = the initial model's weights plus a seeded
perturbation of size ``--noise``, then measures step 1 with the run probe's defaults twice in
this process: on-policy (the baseline) and with ``--stale 1`` (rollouts from the initial model).
Prints wall and CPU seconds of each, their CPU ratio (CPU time does not depend on the load of a
shared machine), and the stale rows' KL / max ρ / ESS.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import records  # noqa: E402
from probes import runs  # noqa: E402
from training import base, checkpoint, config, policy, stages, task  # noqa: E402
from training import run as training_run  # noqa: E402


def perturbed_run(root: Path, noise: float, P: int) -> Path:
    model_path = str(base.ensure_base())
    data = root / "level1.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in task.rows(task.train_problems(3, P, levels=(1,)), "train")))
    cfg = config.parse_args(["hpt", "--model", model_path, "--runs-dir", str(root), "--run-id", "stale-bench",
                             "--train-data", str(data)])
    run_dir = records.create_run_dir(root, "stale-bench", unique=False)
    records.RunWriter(run_dir).write_config(training_run._config_record(cfg, stages.make_stages(cfg), model_path))
    model = policy.load_model(model_path)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn(p.shape, generator=gen))
    opt = torch.optim.AdamW(model.parameters())
    checkpoint.save(run_dir, 1, model, policy.load_tokenizer(model_path), None, opt,
                    torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), {"data": 0, "demos_truncated": 0})
    return run_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--estimators", default="grpo,rloo,seq_is,ppo[eps=0.2]")
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    src = runs.run_source(perturbed_run(Path(tempfile.mkdtemp(prefix="stale-bench-")), args.noise, args.prompts),
                          "1", P=args.prompts)
    print(f"{'what':34s} {'wall s':>8s} {'CPU s':>8s} {'CPU ratio':>10s}")
    base_cpu = None
    for stale in ((), (1,)):
        t, c = time.perf_counter(), time.process_time()
        res = runs.run_probe(src, runs.RunOptions(estimators=args.estimators, prompts=args.prompts, stale=stale))
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        base_cpu = base_cpu or cpu
        what = "on-policy (baseline)" if not stale else "on-policy + --stale 1"
        print(f"{what:34s} {wall:8.1f} {cpu:8.1f} {cpu / base_cpu:10.2f}")
    e = res["results"][0].stale[0].extras
    print(f"stale=1: KL(old‖new) {e['KL']:.3g}, max ρ {e['max_rho']:.3g}, ESS {e['ESS']:.3g}; "
          f"{len(res['results'][0].rows)} estimators, defaults (G={res['G']}, {res['options'].updates} updates, "
          f"reference {res['options'].ref} rollouts/prompt)")


if __name__ == "__main__":
    main()
