"""Cost of the live gradient diagnostics (`training.diagnostics`): the update phase of a training
step (π_θold, plan, micro-batches, backward, optimizer step) with ``--diagnostics-every 1`` vs
``0``, on the same sampled batch, interleaved, in one process.

    python benchmarks/diagnostics_overhead.py [--presets hpt,grpo] [--repeats 6] [--micro-batch 32]
                                              [--lora-r 0] [--threads 1]

The embedded default's model and batch shape (16 prompts × 8 rows) unless changed. Prints the
median update time of each and their ratio.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def measure(preset: str, args) -> tuple[float, float]:
    from training import run

    with tempfile.TemporaryDirectory() as tmp:
        cfg = run.parse_args([preset, "--runs-dir", tmp, "--progress", "false", "--threads", str(args.threads),
                              "--micro-batch", str(args.micro_batch), "--lora-r", str(args.lora_r),
                              "--eval-k", "1"])
        t = run.build(cfg, log=lambda s: None)
        stage = t.stage_at(1)
        rollouts = t.collect(stage, 1)
        times = {0: [], 1: []}
        for i in range(2 * args.repeats + 2):
            every = i % 2
            t.cfg = dataclasses.replace(t.cfg, diagnostics_every=every)
            t0 = time.perf_counter()
            t.update(stage, rollouts, 1)
            if i >= 2:  # the first pair is warm-up
                times[every].append(time.perf_counter() - t0)
        t.reward_fn.close()
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="hpt,grpo")
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--micro-batch", type=int, default=32)
    p.add_argument("--lora-r", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    print(f"{'preset':10} {'micro-batch':>11} {'update off (s)':>15} {'update on (s)':>14} {'on/off':>7}")
    for preset in args.presets.split(","):
        off, on = measure(preset, args)
        print(f"{preset:10} {args.micro_batch:>11} {off:>15.3f} {on:>14.3f} {on / off:>7.3f}")


if __name__ == "__main__":
    main()
