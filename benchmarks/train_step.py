"""Time one GRPO training step: ours (`training.run`) vs TRL's `GRPOTrainer`, same tiny model,
same prompts, same batch shape (prompts × n rollouts), same generation length, CPU.

    python benchmarks/train_step.py [--steps 6] [--prompts 16] [--n 8] [--max-new-tokens 48]

Each trainer runs in its own subprocess (so peak RSS is its own); the first step is warm-up and
not timed. Prints time/step (median), peak memory and the ratio. TRL is optional
(``uv pip install trl``); if it cannot run, the reason is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ours(args) -> dict:
    from training import run

    cfg = run.parse_args(["grpo", "--steps", str(args.steps), "--prompts-per-step", str(args.prompts),
                          "--n", str(args.n), "--max-new-tokens", str(args.max_new_tokens),
                          "--lr", str(args.lr), "--micro-batch", str(args.prompts * args.n),
                          "--runs-dir", args.tmp, "--run-id", "ours", "--progress", "false",
                          "--threads", str(args.threads)])
    t = run.build(cfg, log=lambda s: None)
    times = []
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        stage = t.stage_at(step)
        t.update(stage, t.collect(stage, step), step)
        times.append(time.perf_counter() - t0)
    t.reward_fn.close()
    return {"times": times, "peak_mb": peak_mb()}


def trl(args) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from training import base, task
    from training.policy import load_tokenizer
    from training.reward import BoxedReward

    torch.set_num_threads(args.threads)
    path = str(base.ensure_base(log=lambda s: None))
    tok = load_tokenizer(path)
    probs = task.train_problems(0, args.prompts * args.steps)
    rows = [{"prompt": tok.apply_chat_template([{"role": "user", "content": p.prompt}],
                                               add_generation_prompt=True, tokenize=False),
             "ground_truth": str(p.answer)} for p in probs]
    reward = BoxedReward()

    def reward_fn(completions, ground_truth, **kw):
        return reward(completions, ground_truth)

    times, marks = [], {}

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            marks["t"] = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - marks["t"])

    conf = GRPOConfig(output_dir=args.tmp + "/trl", per_device_train_batch_size=args.prompts * args.n,
                      num_generations=args.n, max_completion_length=args.max_new_tokens,
                      learning_rate=args.lr, max_steps=args.steps, loss_type="grpo", beta=0.0,
                      epsilon=0.2, temperature=1.0, top_p=1.0, use_cpu=True, bf16=False,
                      logging_steps=1, save_strategy="no", report_to="none", seed=0,
                      shuffle_dataset=False, max_grad_norm=1.0, lr_scheduler_type="constant",
                      weight_decay=0.01)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    trainer = GRPOTrainer(model=model, reward_funcs=reward_fn, args=conf,
                          train_dataset=datasets.Dataset.from_list(rows), processing_class=tok,
                          callbacks=[Timer()])
    trainer.train()
    reward.close()
    return {"times": times, "peak_mb": peak_mb()}


def child(which: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", which, *[f"--{k.replace('_', '-')}={v}"
           for k, v in vars(args).items() if k not in ("child",)]]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout)[-1500:]}
    return json.loads(lines[-1])


def summary(name: str, r: dict) -> str:
    if "error" in r:
        return f"{name}: could not run:\n{r['error']}"
    steady = r["times"][1:] or r["times"]
    return (f"{name:5s} time/step {statistics.median(steady):.3f} s (median of {len(steady)}, "
            f"first {r['times'][0]:.3f} s)  peak RSS {r['peak_mb']:.0f} MB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tmp", default=str(ROOT / "runs" / "bench"))
    p.add_argument("--child", default="")
    args = p.parse_args()
    if args.child:
        print(json.dumps({"ours": ours, "trl": trl}[args.child](args)))
        return
    print(f"GRPO step: {args.prompts} prompts x {args.n} rollouts, {args.max_new_tokens} new tokens, "
          f"{args.threads} thread(s), tiny embedded base model")
    res = {w: child(w, args) for w in ("ours", "trl")}
    for w, r in res.items():
        print(summary(w, r))
    if all("error" not in r for r in res.values()):
        a, b = (statistics.median(res[w]["times"][1:] or res[w]["times"]) for w in ("ours", "trl"))
        print(f"ratio TRL/ours time/step: {b / a:.2f}x; peak memory TRL/ours: "
              f"{res['trl']['peak_mb'] / res['ours']['peak_mb']:.2f}x")


if __name__ == "__main__":
    main()
