"""Evaluation throughput on a MATH-500 slice: problems/s and generated tokens/s per engine.

    python benchmarks/eval_throughput.py                       # tiny built model, HF engine, CPU
    python benchmarks/eval_throughput.py --model DIR --limit 64 --n 1 --max-new-tokens 1024 --device cuda

Runs `training.eval` (the same code path as ``python -m training.eval``) with the HF engine,
and with the vLLM engine when ``vllm`` imports. Without ``--model`` it builds a small
randomly initialised Qwen2 with the project's character tokenizer (nothing downloaded), so the
numbers measure the harness + ``generate``, not a real model. Prints one row per engine;
records go under ``runs/`` (or ``--out``).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.evaluation import harness as ev  # noqa: E402


def tiny_model(path: Path, hidden: int, layers: int) -> str:
    """A small Qwen2 + character tokenizer built from a config (seeded)."""
    from training import base

    tok = base.char_tokenizer()
    cfg = base.BaseConfig(hidden_size=hidden, layers=layers, heads=4, kv_heads=2,
                          intermediate_size=3 * hidden, max_positions=8192)
    base.build_model(cfg, tok).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def measure(model: str, engine: str, args, out: Path) -> dict:
    argv = ["--model", model, "--benchmarks", "math500", "--limit", str(args.limit),
            "--n", str(args.n), "--max-new-tokens", str(args.max_new_tokens),
            "--rollout-engine", engine, "--device", args.device, "--batch-size", str(args.batch_size),
            "--bootstrap", "10", "--threads", str(args.threads), "--out", str(out / engine)]
    t0 = time.time()
    summary = ev.evaluate(ev.build_parser().parse_args(argv), log=lambda *a: None)
    tp = summary["throughput"]
    return {"engine": engine, "problems": tp["problems"], "samples": tp["problems"] * args.n,
            "tokens": tp["tokens"], "gen_s": tp["seconds"], "wall_s": time.time() - t0,
            "problems/s": tp["problems_per_second"], "tokens/s": tp["tokens_per_second"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model dir (default: a tiny model built here)")
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--hidden", type=int, default=128, help="tiny model width")
    ap.add_argument("--layers", type=int, default=4, help="tiny model depth")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: on a shared 2-core machine 2 threads ran 15x slower)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    tmp = tempfile.TemporaryDirectory()
    model = args.model or tiny_model(Path(tmp.name) / "tiny", args.hidden, args.layers)
    out = Path(args.out) if args.out else Path("runs") / f"bench-eval-throughput-{time.strftime('%Y%m%d-%H%M%S')}"
    engines = ["hf"] + (["vllm"] if importlib.util.find_spec("vllm") else [])
    print(f"MATH-500 slice: {args.limit} problems × n={args.n}, ≤ {args.max_new_tokens} new tokens, "
          f"model {args.model or f'tiny (hidden {args.hidden}, {args.layers} layers, random init)'}")
    print(f"{'engine':>6} {'problems':>8} {'tokens':>8} {'gen s':>8} {'wall s':>8} {'problems/s':>11} {'tokens/s':>10}")
    for engine in engines:
        r = measure(model, engine, args, out)
        print(f"{r['engine']:>6} {r['problems']:>8} {r['tokens']:>8} {r['gen_s']:>8.2f} {r['wall_s']:>8.2f} "
              f"{r['problems/s']:>11.2f} {r['tokens/s']:>10.1f}")
    if len(engines) == 1:
        print("vllm: not importable here (skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
