"""Rollout throughput: HF ``generate`` (``HFSampler``) vs vLLM (``VLLMSampler``) on the same
model and prompts, in one run. Run it in the vLLM environment:

    .venv-vllm/bin/python benchmarks/rollout_throughput.py                # embedded base model
    .venv-vllm/bin/python benchmarks/rollout_throughput.py --prompts 64 --n 8 --max-new-tokens 48

Both engines sample ``prompts × n`` completions at temperature 1 with the same seeds; the timed
repeats follow one warm-up call each. Tokens/s counts generated tokens (eos included). vLLM's
engine start-up and one full weight sync are timed separately (a training step pays the sync,
not the start-up). Timings on a shared machine are noisy: compare within one run.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from training import base, policy, task
from training.sampler import HFSampler
from training.vllm_sampler import VLLMSampler, model_state_for_vllm, save_model_dir


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="", help="local HF model dir; empty = embedded base model")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=8, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads of the HF side (0 = default)")
    return ap.parse_args(argv)


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
    path = args.model or str(base.ensure_base())
    tok = policy.load_tokenizer(path)
    model = policy.load_model(path).eval()
    prompts = [base.prompt_ids(tok, [{"role": "user", "content": p.prompt}])
               for p in task.train_problems(0, args.prompts)]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {path} ({n_params / 1e6:.2f} M params), {args.prompts} prompts x {args.n} samples,"
          f" <= {args.max_new_tokens} new tokens, torch threads {torch.get_num_threads()}")

    hf_sec, hf_tok = timed_rollouts(HFSampler(model, tok.eos_token_id, tok.pad_token_id),
                                    prompts, args)
    rows = [dict(engine="hf", startup=0.0, sync=0.0, sec=hf_sec, tokens=hf_tok)]

    with tempfile.TemporaryDirectory(prefix="upge-vllm-bench-") as tmp:
        save_model_dir(model, tok, tmp)
        vs = VLLMSampler(tmp, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
        t0 = time.perf_counter()
        vs.llm  # noqa: B018  (builds the engine)
        startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        vs.push_weights(model_state_for_vllm(model))
        sync = time.perf_counter() - t0
        v_sec, v_tok = timed_rollouts(vs, prompts, args)
        vs.close()
    rows.append(dict(engine="vllm", startup=startup, sync=sync, sec=v_sec, tokens=v_tok))
    print(table(rows))
    ratio = (v_tok / v_sec) / (hf_tok / hf_sec)
    print(f"vLLM / HF tokens/s: {ratio:.2f}x")


if __name__ == "__main__":  # vLLM's engine process may re-import this module (spawn)
    main()
