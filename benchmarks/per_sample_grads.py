"""Per-sample gradient statistics on one model and batch, three ways, in one run:

* ``loop``:  B single-sequence backward() calls (materialised per-sample gradients);
* ``vmap``:  torch.func.vmap(grad(functional_call)) (materialised);
* ``ghost``: one batched backward with `probes.ghost.GramHooks` — the per-sample Gram matrix
             ⟨g_i, g_j⟩ (norms and inner products, all the variance probes need) without
             materialising per-sample gradients (Goodfellow, arXiv 1510.01799).

    python benchmarks/per_sample_grads.py                 # 32 sequences × 64 tokens, 4×128 model
    python benchmarks/per_sample_grads.py --batch 16 --hidden 64 --layers 2

Prints wall time per method (median of ``--repeat`` rounds; the methods are interleaved round by
round in one process so that they see the same machine load), the speed-up of each over the
loop, the peak resident memory of each method (each measured alone in its own subprocess), and
the agreement of the Gram matrices. Timings on shared CPUs are noisy; rerun before quoting.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probes import ghost, lm  # noqa: E402


def setup(a):
    torch.manual_seed(0)
    model = lm.tiny_lm(hidden=a.hidden, layers=a.layers, seed=0)
    model.config.max_position_embeddings = a.seq
    ids = torch.randint(0, lm.VOCAB, (a.batch, a.seq))
    d = torch.randn(a.batch, a.seq - 1)  # per-token coefficients d_{i,t} (e.g. Â_i·coef_i)
    return model, ids, d


def seq_logp(logits, ids):
    return torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def run_loop(model, ids, d):
    out = []
    for i in range(len(ids)):
        model.zero_grad(set_to_none=True)
        (seq_logp(model(input_ids=ids[i:i + 1]).logits, ids[i:i + 1])[0] * d[i]).sum().backward()
        out.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    F = torch.stack(out)
    return F @ F.T


def run_vmap(model, ids, d):
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p, x, di):
        logits = torch.func.functional_call(model, p, (x[None],)).logits
        return (seq_logp(logits, x[None])[0] * di).sum()

    g = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, ids, d)
    F = torch.cat([v.reshape(len(ids), -1) for v in g.values()], 1)
    return F @ F.T


def run_ghost(model, ids, d):
    with ghost.GramHooks(model) as gh:
        model.zero_grad(set_to_none=True)
        (seq_logp(model(input_ids=ids).logits, ids) * d).sum().backward()
    return gh.gram()


METHODS = {"loop": run_loop, "vmap": run_vmap, "ghost": run_ghost}


def measure(a) -> dict:
    """Time one method (median of a.repeat after one warm-up) and report peak RSS."""
    torch.set_num_threads(a.threads)
    model, ids, d = setup(a)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    f = METHODS[a.method]
    K = f(model, ids, d)
    times = []
    for _ in range(a.repeat):
        t = time.perf_counter()
        K = f(model, ids, d)
        times.append(time.perf_counter() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.save(K, a.gram_out)
    return {"method": a.method, "seconds": statistics.median(times), "peak_rss_mb": rss / 1024,
            "rss_growth_mb": (rss - rss0) / 1024}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--method", choices=tuple(METHODS), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--gram-out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.method:
        print(json.dumps(measure(a)))
        return
    import tempfile
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in METHODS:
            cmd = [sys.executable, __file__, "--method", m, "--gram-out", f"{tmp}/{m}.pt", "--repeat=1"] + [
                f"--{k}={getattr(a, k)}" for k in ("batch", "seq", "hidden", "layers", "threads")]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            res[m] = json.loads(out.strip().splitlines()[-1])
    torch.set_num_threads(a.threads)
    model, ids, d = setup(a)
    grams = {m: f(model, ids, d) for m, f in METHODS.items()}  # warm-up
    times = {m: [] for m in METHODS}
    for _ in range(a.repeat):
        for m, f in METHODS.items():
            t = time.perf_counter()
            f(model, ids, d)
            times[m].append(time.perf_counter() - t)
    for m in METHODS:
        res[m]["seconds"] = statistics.median(times[m])
    model, _, _ = setup(a)
    n = sum(p.numel() for p in model.parameters())
    print(f"per-sample gradient statistics: {a.batch} sequences × {a.seq} tokens, Qwen2 {a.layers}×{a.hidden} "
          f"({n / 1e6:.2f} M params), {a.threads} threads, median of {a.repeat}")
    base = res["loop"]["seconds"]
    for m, r in res.items():
        print(f"  {m:6s} {r['seconds'] * 1e3:9.1f} ms   {base / r['seconds']:6.2f}× vs loop   "
              f"peak RSS {r['peak_rss_mb']:7.0f} MB (+{r['rss_growth_mb']:.0f} MB during the method)")
    ref = grams["loop"]
    for m in ("vmap", "ghost"):
        err = float((grams[m] - ref).abs().max() / ref.abs().max())
        print(f"  Gram({m}) vs Gram(loop): max relative difference {err:.2e}")


if __name__ == "__main__":
    main()
