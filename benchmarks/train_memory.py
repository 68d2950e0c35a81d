"""Memory and speed of a training step at a real vocabulary size: ours (`training.run`'s
`Trainer.update`) vs TRL's `GRPOTrainer`, same model, same batch, each side in its own process.

    python benchmarks/train_memory.py [--threads 2]                # the CPU memory benchmark
    python benchmarks/train_memory.py --setting gpu-qwen2.5-math-1.5b   # scripts/gpu_check.sh

``--setting cpu`` (default; issue 12's "Measure"): a randomly initialised Qwen2-architecture
model with Qwen2.5's vocabulary, V = 151,936, hidden 256, intermediate 688, 2 layers, 4 heads,
2 KV heads, untied head, float32 (the output layer is 98 % of the parameters, so the log-prob
path dominates); 4 prompts of 32 tokens x 4 rollouts x exactly 256 new tokens, GRPO,
micro-batches of 4 sequences (TRL: ``per_device_train_batch_size=4`` with gradient
accumulation over the 16 sequences, ``adamw_torch``), one optimizer step per batch, CPU.
Both sides train on the same random token ids (TRL gets them through its ``rollout_func`` hook),
so neither spends the step generating: the timed work is the same update on both sides.

Each side does two optimizer steps; the second is measured. Resident memory is read from
``/proc/self/status`` (VmHWM, the peak, reset through ``/proc/self/clear_refs`` right before the
step; on CUDA, ``torch.cuda.max_memory_allocated`` reset the same way). One JSON line:

    ours_peak_mb, trl_peak_mb   peak memory during the second step
    ours_step_mb, trl_step_mb   that peak minus the memory just before the step
    ours_load_mb, trl_load_mb   memory after loading the model
    floor_mb                    3 x 4 bytes x parameters (gradients + AdamW's two moments)
    ratio                       (ours_step_mb - floor_mb) / (trl_step_mb - floor_mb)
    grad_floor_mb, ratio_grad_floor   the same with 4 bytes x parameters: AdamW's moments
                                exist from the first step on, so the second step allocates
                                only the gradients of the floor (``ratio`` can go negative)
    ours_s, trl_s               wall time of the second step
    ours_tokens_per_s, trl_tokens_per_s   prompt + response tokens trained per second

Target (issue 12): ratio <= 0.5 and ours_s <= trl_s. ``--setting gpu-qwen2.5-math-1.5b``: the
real Qwen2.5-Math-1.5B shape (config only, random weights: hidden 1536, 28 layers, 12 heads,
2 KV heads, V = 151,936, tied), the paper's lengths (1024-token prompts, 8192 new tokens),
2 prompts x 4 rollouts (+ the demonstration for ours: HPT, one prompt sent to SFT, one to RL;
TRL: GRPO on the rollouts), bf16 autocast over float32 weights, gradient checkpointing,
micro-batches of one sequence, CUDA. ``--setting tiny`` runs that code path on CPU in seconds.
``--side ours|trl`` runs one side in this process; ``PYTHONPATH=<another checkout>`` measures
another version of ours with the same script.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

QWEN_SMALL = dict(vocab_size=151_936, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
# Qwen/Qwen2.5-Math-1.5B's config.json (shape only; rope/positions as the paper profile sets them)
QWEN_MATH_1_5B = dict(vocab_size=151_936, hidden_size=1536, intermediate_size=8960,
                      num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                      tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=40000.0)


@dataclass(frozen=True)
class Setting:
    shape: dict
    prompts: int = 4
    n: int = 4
    prompt_len: int = 32
    new_tokens: int = 256
    micro: int = 4
    preset: str = "grpo"           # ours; TRL runs GRPO
    dtype: str = "float32"         # --dtype of ours; TRL bf16=True when bfloat16
    device: str = "cpu"
    checkpointing: bool = False
    extra: tuple = field(default=())  # more `training.run` flags for ours

    @property
    def max_positions(self) -> int:
        return self.prompt_len + self.new_tokens + 64


SETTINGS = {
    "cpu": Setting(QWEN_SMALL),
    "gpu-qwen2.5-math-1.5b": Setting(QWEN_MATH_1_5B, prompts=2, n=4, prompt_len=1024,
                                     new_tokens=8192, micro=1, preset="hpt", dtype="bfloat16",
                                     device="cuda", checkpointing=True,
                                     extra=("--gate-gamma", "0", "--lr", "5e-6")),
    "tiny": Setting(dict(QWEN_MATH_1_5B, vocab_size=1000, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
                    prompts=2, n=4, prompt_len=16, new_tokens=32, micro=1, preset="hpt",
                    dtype="bfloat16", checkpointing=True, extra=("--gate-gamma", "0")),
}
LR = 1e-5


# ----------------------------------------------------------------------------- measuring

def status_mb(field_: str) -> float:
    """``VmHWM`` / ``VmRSS`` of this process in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_ + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field_}")


class Meter:
    """Peak memory of a phase: resident memory (VmHWM) on CPU, allocated memory on CUDA."""

    def __init__(self, device: str):
        import torch

        self.cuda = device.startswith("cuda")
        self.torch = torch

    def now(self) -> float:
        if self.cuda:
            return self.torch.cuda.memory_allocated() / 2**20
        return status_mb("VmRSS")

    def reset(self) -> float:
        """Reset the peak to the current size; returns that size (MiB)."""
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")
        return self.now()

    def peak(self) -> float:
        if self.cuda:
            self.torch.cuda.synchronize()
            return self.torch.cuda.max_memory_allocated() / 2**20
        return status_mb("VmHWM")


# ------------------------------------------------------------------------------ the batch

def make_model_dir(path: Path, s: Setting) -> Path:
    """The random model (seeded; built on the setting's device, saved in bfloat16 when the
    setting trains in bfloat16, else float32) and a tokenizer, where both sides load them."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from training import base

    tok = base.char_tokenizer()
    cfg = Qwen2Config(**s.shape, max_position_embeddings=s.max_positions,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    with torch.device(s.device):
        model = Qwen2ForCausalLM(cfg)
    if s.dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def batch(tok, s: Setting):
    """(prompts [P][prompt_len], completions [P·n][new_tokens], demos [P][new_tokens],
    rewards [P·n]): seeded random ids of the tokenizer's ordinary tokens (no eos, no padding:
    every completion has exactly ``new_tokens`` tokens). Prompt 0's rollouts all fail (HPT's
    gate sends it to SFT), the others are half right."""
    import torch

    g = torch.Generator().manual_seed(1)
    lo = max(tok.all_special_ids) + 1
    ids = lambda *shape: torch.randint(lo, len(tok), shape, generator=g).tolist()  # noqa: E731
    prompts, comps, demos = ids(s.prompts, s.prompt_len), ids(s.prompts * s.n, s.new_tokens), \
        ids(s.prompts, s.new_tokens)
    rewards = [0.0 if i < s.n else float(i % 2 == 0) for i in range(s.prompts * s.n)]
    return prompts, comps, demos, rewards


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------- the two sides

def ours(model_dir: Path, tmp: str, threads: int, s: Setting) -> dict:
    import torch

    from training import run
    from training.batching import Row

    torch.set_num_threads(threads)
    flags = ["--model", str(model_dir), "--prompts-per-step", str(s.prompts), "--n", str(s.n),
             "--max-new-tokens", str(s.new_tokens), "--micro-batch", str(s.micro),
             "--lr", str(LR), "--runs-dir", tmp, "--run-id", "ours", "--progress", "false",
             "--threads", str(threads), "--device", s.device, *s.extra]
    if s.dtype != "float32":  # older checkouts: --dtype meant the parameters' dtype
        flags += ["--dtype", s.dtype]
    if s.checkpointing:
        flags += ["--gradient-checkpointing", "true"]
    t = run.build(run.parse_args([s.preset, *flags]), log=lambda m: None)
    meter = Meter(s.device)
    load_mb = meter.now()
    prompts, comps, demos, rewards = batch(t.tok, s)
    stage = t.stage_at(1)
    rows = []
    for g, p in enumerate(prompts):
        rows += [Row(tuple(p), tuple(comps[g * s.n + j]), rewards[g * s.n + j],
                     rewards[g * s.n + j] > 0.5, g, False, j, None, clipped=True)
                 for j in range(s.n)]
        if stage.need.demo:
            rows.append(Row(tuple(p), tuple(demos[g]), 1.0, True, g, True, s.n, None))
    out = {}
    for step in (1, 2):
        before = meter.reset()
        t0 = time.perf_counter()
        m = t.update(stage, rows, step, {})
        if meter.cuda:
            torch.cuda.synchronize()
        out = {"s": time.perf_counter() - t0, "peak_mb": meter.peak(), "before_mb": before}
        assert m.get("train/skipped", 0) == 0 and "grad/norm" in m, m
    t.reward_fn.close()
    tokens = sum(len(r.prompt_ids) + len(r.response_ids) for r in rows)
    return {**out, "step_mb": out["peak_mb"] - out["before_mb"], "load_mb": load_mb,
            "params": n_params(t.model), "tokens": tokens, "sequences": len(rows)}


def trl(model_dir: Path, tmp: str, threads: int, s: Setting) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from training.policy import attention_implementation, load_tokenizer

    torch.set_num_threads(threads)
    tok = load_tokenizer(str(model_dir))
    prompts, comps, _, rewards = batch(tok, s)
    texts = [f"prompt {i}" for i in range(s.prompts)]
    data = datasets.Dataset.from_list([{"prompt": t} for t in texts] * 4)

    def rollout_func(prompt_texts, trainer):
        """The fixed batch: each prompt's token ids and its n completions (no generation)."""
        idx = [texts.index(p) for p in prompt_texts]
        return {"prompt_ids": [prompts[i] for i in idx],
                "completion_ids": [comps[i * s.n + j % s.n] for j, i in enumerate(idx)],
                "logprobs": None}

    calls = []

    def reward_fn(completions, **kw):
        calls.append(len(completions))
        return rewards[:len(completions)]

    meter, out, marks = Meter(s.device), {}, {}

    class Probe(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            marks["before"] = meter.reset()
            marks["t"] = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            peak = meter.peak()
            out.update(s=time.perf_counter() - marks["t"], peak_mb=peak, before_mb=marks["before"])

    conf = GRPOConfig(output_dir=tmp + "/trl", per_device_train_batch_size=s.micro,
                      gradient_accumulation_steps=s.prompts * s.n // s.micro,
                      num_generations=s.n, max_completion_length=s.new_tokens, learning_rate=LR,
                      max_steps=2, loss_type="grpo", beta=0.0, temperature=1.0,
                      use_cpu=s.device == "cpu", bf16=s.dtype == "bfloat16",
                      gradient_checkpointing=s.checkpointing, optim="adamw_torch",
                      logging_steps=1, save_strategy="no", report_to="none", seed=0,
                      shuffle_dataset=False, lr_scheduler_type="constant",
                      dataloader_num_workers=0)
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32,
        attn_implementation=attention_implementation("auto")).to(s.device)
    load_mb = meter.now()
    trainer = GRPOTrainer(model=model, reward_funcs=reward_fn, args=conf, train_dataset=data,
                          processing_class=tok, rollout_func=rollout_func, callbacks=[Probe()])
    trainer.train()
    assert sum(calls) == 2 * s.prompts * s.n, calls  # one batch per optimizer step
    tokens = s.prompts * s.n * (s.prompt_len + s.new_tokens)
    return {**out, "step_mb": out["peak_mb"] - out["before_mb"], "load_mb": load_mb,
            "params": n_params(model), "tokens": tokens, "sequences": s.prompts * s.n}


SIDES = {"ours": ours, "trl": trl}


def child(side: str, model_dir: Path, tmp: str, threads: int, setting: str) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--model-dir", str(model_dir),
           "--tmp", tmp, "--threads", str(threads), "--setting", setting]
    # the side under measurement may come from another checkout (PYTHONPATH); TRL's side and
    # the helpers always from this one
    ours_path = os.environ.get("PYTHONPATH", str(ROOT))
    env = dict(os.environ, PYTHONPATH=ours_path if side == "ours" else str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{side} failed:\n{(proc.stderr or proc.stdout)[-3000:]}")
    return json.loads(lines[-1])


def summary(o: dict, t: dict) -> dict:
    floor = 3 * 4 * o["params"] / 2**20
    grads = 4 * o["params"] / 2**20  # what the second step allocates of the floor
    return {"ours_peak_mb": round(o["peak_mb"]), "trl_peak_mb": round(t["peak_mb"]),
            "ours_step_mb": round(o["step_mb"]), "trl_step_mb": round(t["step_mb"]),
            "ours_load_mb": round(o["load_mb"]), "trl_load_mb": round(t["load_mb"]),
            "floor_mb": round(floor),
            "ratio": round((o["step_mb"] - floor) / (t["step_mb"] - floor), 3),
            "grad_floor_mb": round(grads),
            "ratio_grad_floor": round((o["step_mb"] - grads) / (t["step_mb"] - grads), 3),
            "ours_s": round(o["s"], 2), "trl_s": round(t["s"], 2),
            "ours_tokens_per_s": round(o["tokens"] / o["s"]),
            "trl_tokens_per_s": round(t["tokens"] / t["s"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--setting", choices=sorted(SETTINGS), default="cpu")
    p.add_argument("--side", choices=sorted(SIDES), default=None)
    p.add_argument("--model-dir", default=None)
    p.add_argument("--tmp", default=None)
    args = p.parse_args()
    s = SETTINGS[args.setting]
    sys.path.insert(0, os.environ.get("PYTHONPATH", str(ROOT)).split(os.pathsep)[0])
    if args.side:
        print(json.dumps(SIDES[args.side](Path(args.model_dir), args.tmp, args.threads, s)))
        return
    with tempfile.TemporaryDirectory(prefix="upge-train-memory-") as tmp:
        t0 = time.perf_counter()
        model_dir = make_model_dir(Path(tmp) / "model", s)
        res = {side: child(side, model_dir, tmp, args.threads, args.setting) for side in SIDES}
    o, t = res["ours"], res["trl"]
    if o["params"] != t["params"]:
        raise SystemExit(f"the two sides loaded different models ({o['params']} vs {t['params']})")
    print(json.dumps({"setting": args.setting, **summary(o, t),
                      "ours_sequences": o["sequences"], "trl_sequences": t["sequences"],
                      "wall_s": round(time.perf_counter() - t0)}))


if __name__ == "__main__":
    main()
