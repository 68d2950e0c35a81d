"""Rollout throughput: HF ``generate`` (``HFSampler``, the reference) vs the fast engine
(``FastSampler``: static KV cache, batched decode loop) vs vLLM (``VLLMSampler``, when vLLM is
importable) on the same model and prompts, in one run:

    python benchmarks/rollout_throughput.py --threads 1                   # HF vs fast
    .venv-vllm/bin/python benchmarks/rollout_throughput.py                # + vLLM (its environment)
    python benchmarks/rollout_throughput.py --model embedded              # the embedded base model
    .venv-vllm/bin/python benchmarks/rollout_throughput.py --hidden 256 --prompts 64
    .venv-vllm/bin/python benchmarks/rollout_throughput.py --model path/to/hf-model-dir

``--model embedded`` is the (built and cached) embedded base model, whose completions end
early as in training. Without ``--model`` the model is the embedded base's architecture (char tokenizer) built from a
config at random initialisation (``--hidden/--layers/--heads``; head size must be one vLLM's CPU
attention supports, e.g. 32): an untrained model rarely stops early, so both engines generate
about ``max_new_tokens`` per sample. Both engines sample ``prompts × n`` completions at temperature 1 with the same seeds; the timed
repeats follow one warm-up call each. Tokens/s counts generated tokens (eos included). vLLM's
engine start-up and one full weight sync are timed separately (a training step pays the sync,
not the start-up). Timings on a shared machine are noisy: compare within one run.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from training import base, policy, task
from training.rollout.fast import FastSampler
from training.rollout.hf import HFSampler


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="", help="local HF model dir; 'embedded' = the embedded base; empty = built from a config")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=8, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads of the HF side (0 = default)")
    return ap.parse_args(argv)


def config_model(args, path: str) -> str:
    """Save a randomly initialised model of the embedded base's family (+ tokenizer) to ``path``."""
    tok = base.char_tokenizer()
    cfg = base.BaseConfig(hidden_size=args.hidden, layers=args.layers, heads=args.heads,
                          kv_heads=args.heads, intermediate_size=3 * args.hidden)
    base.build_model(cfg, tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def timed_rollouts(sampler, prompts, args) -> tuple[float, int]:
    """(seconds per call, generated tokens per call) over ``args.repeats`` calls after a warm-up."""
    run = lambda seed: sampler.generate(prompts, args.n, 1.0, 1.0, args.max_new_tokens, seed)
    run(-1)
    t0, tokens = time.perf_counter(), 0
    for r in range(args.repeats):
        tokens += sum(len(s) for c in run(r) for s in c)
    return (time.perf_counter() - t0) / args.repeats, tokens // args.repeats


def table(rows: list[dict]) -> str:
    head = f"{'engine':8s} {'start-up s':>10s} {'sync s':>8s} {'s/call':>8s} {'tokens':>8s} {'tokens/s':>10s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['engine']:8s} {r['startup']:10.1f} {r['sync']:8.2f} {r['sec']:8.2f} "
                     f"{r['tokens']:8d} {r['tokens'] / r['sec']:10.0f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="upge-vllm-bench-")
    path = (str(base.ensure_base()) if args.model == "embedded"
            else args.model or config_model(args, os.path.join(tmp.name, "model")))
    tok = policy.load_tokenizer(path)
    model = policy.load_model(path).eval()
    prompts = [base.prompt_ids(tok, [{"role": "user", "content": p.prompt}])
               for p in task.train_problems(0, args.prompts)]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {path} ({n_params / 1e6:.2f} M params), {args.prompts} prompts x {args.n} samples,"
          f" <= {args.max_new_tokens} new tokens, torch threads {torch.get_num_threads()}")

    rows = []
    for name, engine in (("hf", HFSampler), ("fast", FastSampler)):
        sec, tokens = timed_rollouts(engine(model, tok.eos_token_id, tok.pad_token_id), prompts, args)
        rows.append(dict(engine=name, startup=0.0, sync=0.0, sec=sec, tokens=tokens))
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("vLLM is not importable here: HF and fast only (run in the vLLM environment for vLLM)")
    else:
        rows.append(vllm_row(model, tok, prompts, args, tmp.name))
    tmp.cleanup()
    print(table(rows))
    rate = {r["engine"]: r["tokens"] / r["sec"] for r in rows}
    for name in rate:
        if name != "hf":
            print(f"{name} / hf tokens/s: {rate[name] / rate['hf']:.2f}x")


def vllm_row(model, tok, prompts, args, tmp: str) -> dict:
    from training.rollout.vllm_engine import VLLMSampler, model_state_for_vllm, save_model_dir

    engine_dir = save_model_dir(model, tok, os.path.join(tmp, "engine"))
    vs = VLLMSampler(str(engine_dir), eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    t0 = time.perf_counter()
    vs.llm  # noqa: B018  (builds the engine)
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    vs.push_weights(model_state_for_vllm(model))
    sync = time.perf_counter() - t0
    v_sec, v_tok = timed_rollouts(vs, prompts, args)
    vs.close()
    return dict(engine="vllm", startup=startup, sync=sync, sec=v_sec, tokens=v_tok)


if __name__ == "__main__":  # vLLM's engine process may re-import this module (spawn)
    main()
