"""Forward+backward time of every preset's surrogate vs a plain masked-mean NLL, same tensors.

    python benchmarks/estimators_speed.py [--B 64] [--T 1024] [--repeats 50]

Prints one row per preset: median milliseconds, the ratio to the NLL baseline, and the share of
a small model's forward+backward on the same B×T tokens (a 2-layer, 64-wide Llama built from a
config), all measured in the same run. The NLL is the floor (three element-wise kernels); the
model step is what the estimator's cost is added to in training.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import estimators
from estimators import Batch, Hybrid


def make_batch(B: int, T: int, name: str, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    est = estimators.get(name)
    demos = isinstance(est, Hybrid) or est.rows != "rollouts"
    logp = (-torch.rand(B, T, generator=g) * 3).requires_grad_()
    lengths = torch.randint(T // 4, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    return Batch(logp=logp, mask=mask, reward=torch.randint(0, 2, (B,), generator=g).float(),
                 group=torch.arange(B) // 8,
                 is_demo=(torch.arange(B) % 8 == 7) if demos else None,
                 logp_old=logp.detach() + 0.05 * torch.randn(B, T, generator=g),
                 values=torch.randn(B, T, generator=g) if "values" in est.needs else None,
                 logp_ref=logp.detach() + 0.05 * torch.randn(B, T, generator=g) if "logp_ref" in est.needs else None,
                 reward_baseline=torch.rand(B, generator=g) if "reward_baseline" in est.needs else None,
                 sum_pi_squared=torch.rand(B, T, generator=g) if "sum_pi_squared" in est.needs else None)


def timed(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def nll_step(b: Batch) -> None:
    loss = -(b.logp * b.mask).sum() / b.mask.sum()
    loss.backward()
    b.logp.grad = None


def preset_step(est, b: Batch) -> None:
    est(b).loss.backward()
    b.logp.grad = None


def model_step_ms(B: int, T: int, repeats: int) -> float:
    """Median fwd+bwd of a tiny causal LM on B×T tokens (the context the estimator runs in)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=T)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    ids = torch.randint(0, 64, (B, T))

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)
    return timed(step, max(3, repeats // 10))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=64)
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: small element-wise ops, no contention)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base_batch = make_batch(args.B, args.T, "grpo")
    print(f"B={args.B} T={args.T} threads={torch.get_num_threads()} torch={torch.__version__}")
    nll = timed(lambda: nll_step(base_batch), args.repeats)
    model = model_step_ms(args.B, args.T, args.repeats)
    print(f"model fwd+bwd (2-layer 64-wide Llama, same tokens): {model:.1f} ms")
    print(f"{'estimator':<14}{'ms (fwd+bwd)':>14}{'× NLL':>8}{'% of model step':>17}")
    print(f"{'masked NLL':<14}{nll:>14.3f}{1.0:>8.2f}{100 * nll / model:>16.2f}%")
    for name, est in estimators.PRESETS.items():
        b = make_batch(args.B, args.T, name)
        ms = timed(lambda: preset_step(est, b), args.repeats)
        print(f"{name:<14}{ms:>14.3f}{ms / nll:>8.2f}{100 * ms / model:>16.2f}%")


if __name__ == "__main__":
    main()
