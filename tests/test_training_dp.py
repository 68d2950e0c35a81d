"""Data parallelism: 2 processes (torchrun or accelerate launch, gloo; plain data parallel or
FSDP2-sharded) = 1 process with the same global batch.

Slow (two real subprocess runs of a tiny model): ``pytest -m slow tests/test_training_dp.py``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import records
from training import base, checkpoint, task

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
TINY = base.BaseConfig(hidden_size=32, layers=2, heads=2, kv_heads=2, intermediate_size=64,
                       pretrain_steps=40, pretrain_batch=16)
# (--num-generations, not --n: torchrun's parser takes --n for a prefix of its own options)
# measured (hpt, 4 prompts x 8 rollouts, 2 (warm-up) steps, lr 1e-3, CPU gloo, torch 2.13): the
# largest parameter difference is 2.4e-7 with torchrun, accelerate and torchrun + FSDP, while
# training moved parameters by up to 6e-4: float32 sums in another order (per-rank partial sums,
# then the all-reduce / reduce-scatter). Tolerance: 1e-5.
TOL = 1e-5


def _args(model: str, runs: Path, run_id: str, preset: str) -> list[str]:
    evals = runs / "eval.jsonl"          # 16 held-out problems: the start/end evaluations stay short
    if not evals.exists():
        task.export(evals, "test", count=16)
    return [preset, "--model", model, "--runs-dir", str(runs), "--run-id", run_id,
            "--eval-data", str(evals),
            "--steps", "2", "--prompts-per-step", "4", "--max-new-tokens", "16",
            "--lr", "1e-3", "--eval-k", "1", "--eval-every", "0", "--save-every", "0",
            "--progress", "false", "--threads", "1", "--seed-per-prompt", "true"]


def _weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(checkpoint.latest(run_dir) / "model" / "model.safetensors"))


def _samples(run_dir: Path) -> dict:
    rows, _ = records.read_samples(run_dir)
    return {(r["step"], r["prompt_id"], r["sample_idx"]): (r["n_tokens"], r["reward"]) for r in rows}


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                 "--master_port", "29517"],
    # accelerate's multi-process launcher; on a CPU-only machine it runs torchrun and the
    # trainer picks gloo (`accelerate launch --cpu` would start a single process without MPI)
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                   "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                   "--dynamo_backend", "no", "--main_process_port", "29518"],
}


@pytest.mark.parametrize("launcher, extra, common", [
    ("torchrun", (), ()), ("accelerate", (), ()), ("torchrun", ("--fsdp", "true"), ()),
    ("torchrun", ("--fsdp", "true"), ("--kl-coef", "0.05"))],    # π_ref sharded like the policy
    ids=["torchrun", "accelerate", "torchrun-fsdp", "torchrun-fsdp-kl"])
@pytest.mark.parametrize("preset", ["hpt"])
def test_two_processes_equal_one(tmp_path, preset, launcher, extra, common):
    _two_equal_one(tmp_path, preset, launcher, extra, common)


# the embedded base needs room to reach its \boxed answer (with 16 tokens every reward is 0)
LONGER = ("--max-new-tokens", "48")


def test_fsdp_ppo_critic_equals_one_process(tmp_path):
    """PPO under FSDP: the unsharded critic's gradient is summed, not scaled by the world size.
    On the embedded base (the tiny one solves nothing, so rewards, returns and the zero-initialised
    critic's gradient would all be 0); the critic's weights must match too."""
    from safetensors.torch import load_file

    os.environ.pop("UPGE_CACHE", None)  # the real embedded base (cached after its first build)
    model = str(base.ensure_base(log=lambda s: None))
    _two_equal_one(tmp_path, "ppo", "torchrun", ("--fsdp", "true"), LONGER, model=model)
    heads = [load_file(str(checkpoint.latest(tmp_path / r) / "value_head.safetensors")) for r in ("one", "two")]
    moved = max(float(v.abs().max()) for k, v in heads[0].items() if k.startswith("net.2"))
    diff = max(float((heads[0][k] - heads[1][k]).abs().max()) for k in heads[0])
    print(f"critic: output layer moved to {moved:.3g}, 1 vs 2 processes {diff:.3g}")
    assert moved > 1e-4 and diff <= TOL


def _two_equal_one(tmp_path, preset, launcher, extra, common, model=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if model is None:
        env["UPGE_CACHE"] = os.environ["UPGE_CACHE"] = str(tmp_path / "cache")
        model = str(base.ensure_base(TINY, log=lambda s: None))
    one = subprocess.run([sys.executable, "-m", "training.run", *_args(model, tmp_path, "one", preset),
                          *common],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([*LAUNCHERS[launcher], "-m", "training.run",
                          *_args(model, tmp_path, "two", preset), *extra, *common],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert _samples(tmp_path / "one") == _samples(tmp_path / "two")  # same rollouts per prompt
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    w0 = {k: v for k, v in _weights_init(model).items()}
    assert w1.keys() == w2.keys()
    moved = max(float((w1[k] - w0[k]).abs().max()) for k in w1 if k in w0)
    diff = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    print(f"max |Δθ| 1 vs 2 processes: {diff:.3g} (training moved θ by up to {moved:.3g})")
    assert moved > 1e-4
    assert diff <= TOL
    # the pre-clip gradient norm of every step: AdamW would hide a gradient off by a constant
    # factor (e.g. FSDP's average where the global surrogate needs the sum); the norm does not
    norms = [[m["grad/norm"] for m in records.read_metrics(tmp_path / r)[0] if "grad/norm" in m]
             for r in ("one", "two")]
    assert len(norms[0]) == 2 and norms[0] == pytest.approx(norms[1], rel=1e-4), norms


def _weights_init(model: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(model) / "model.safetensors"))


def test_fsdp_run_resumes_exactly(tmp_path):
    """An FSDP run (2 ranks, torchrun) resumed from its step-1 checkpoint — gathered weights and
    optimizer state loaded back into the shards — ends step 2 where the uninterrupted run did.
    PPO on the embedded base: the sharded policy, the unsharded critic and their shared AdamW
    state all come back."""
    import shutil

    import torch
    from safetensors.torch import load_file

    os.environ.pop("UPGE_CACHE", None)  # the real embedded base (cached after its first build)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    model = str(base.ensure_base(log=lambda s: None))
    args = [*_args(model, tmp_path, "full", "ppo"), *LONGER, "--fsdp", "true", "--save-every", "1",
            "--keep-checkpoints", "2"]
    full = subprocess.run([*LAUNCHERS["torchrun"], "-m", "training.run", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    ckpts = checkpoint.all_checkpoints(tmp_path / "full")
    assert [c.name for c in ckpts] == ["step-000001", "step-000002"]
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / ckpts[-1].relative_to(tmp_path / "full"))   # killed after step 1
    resumed = subprocess.run([*LAUNCHERS["torchrun"], "-m", "training.run", "--resume",
                              str(tmp_path / "cut"), "--progress", "false"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    w_full, w_cut = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    one = checkpoint.read_weights(ckpts[0])
    assert max(float((w_full[k] - one[k]).abs().max()) for k in w_full) > 1e-5   # step 2 moved θ
    diff = max(float((w_full[k] - w_cut[k]).abs().max()) for k in w_full)
    print(f"max |Δθ| uninterrupted vs resumed FSDP run: {diff:.3g}")
    assert diff <= 1e-6
    norms = [[m["grad/norm"] for m in records.read_metrics(tmp_path / r)[0] if "grad/norm" in m]
             for r in ("full", "cut")]
    assert norms[0] == pytest.approx(norms[1], rel=1e-6), norms
    heads = [load_file(str(checkpoint.latest(tmp_path / r) / "value_head.safetensors")) for r in ("full", "cut")]
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])


SHARDED_STATE = """
import json, sys, torch, torch.distributed as d
from training import base, distributed
from training.rollout.vllm_engine import model_state_for_vllm
d.init_process_group("gloo")
cfg = base.BaseConfig(hidden_size=32, layers=2, heads=2, kv_heads=2, intermediate_size=64)
model = base.build_model(cfg, base.char_tokenizer())
full = {k: v.clone() for k, v in model_state_for_vllm(model).items()}
distributed.shard(model)
assert any(distributed.is_sharded(p) for p in model.parameters())
got = model_state_for_vllm(model)
bad = [k for k in full if not torch.equal(got[k], full[k])]
ok = not bad and got.keys() == full.keys()
with open(f"{sys.argv[1]}/rank{d.get_rank()}.json", "w") as f:  # a file per rank: no interleaving
    json.dump({"tensors": len(got), "differ": bad, "same_keys": got.keys() == full.keys()}, f)
# free the sharded model (its device mesh holds the gloo group) before the group is destroyed,
# not during interpreter shutdown, where destroying gloo's threads can abort the process
import gc
del model, got, full
gc.collect()
d.destroy_process_group()
sys.exit(0 if ok else 1)
"""


def test_weights_pushed_to_vllm_from_fsdp_shards_are_whole(tmp_path):
    """What each rank's vLLM engine gets from an FSDP-sharded policy: every tensor all-gathered,
    equal to the unsharded model's (no vLLM needed: the state dict is the sync's input)."""
    script = tmp_path / "sharded_state.py"
    script.write_text(SHARDED_STATE)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([*LAUNCHERS["torchrun"][:-1], "29519", str(script), str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["differ"] == [] and r["same_keys"] and r["tensors"] > 0 for r in ranks), ranks


def test_fsdp_dynamic_sampling_refills_without_hanging(tmp_path):
    """DAPO under FSDP: groups with all-equal rewards are dropped and refilled; every refill
    round gives each rank as many prompts, so the ranks' collective generate calls stay paired.
    (Near-greedy sampling makes a group's rollouts alike, so groups are dropped.)"""
    env = dict(os.environ, UPGE_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    os.environ["UPGE_CACHE"] = env["UPGE_CACHE"]
    model = str(base.ensure_base(TINY, log=lambda s: None))
    done = subprocess.run([*LAUNCHERS["torchrun"], "-m", "training.run",
                           *_args(model, tmp_path, "dapo", "dapo"), "--fsdp", "true",
                           "--dynamic-sampling-rounds", "2", "--temperature", "0.05"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows, _ = records.read_samples(tmp_path / "dapo")
    per_step = {s: sum(r["step"] == s for r in rows) for s in (1, 2)}
    assert max(per_step.values()) > 4 * 8, per_step            # some step refilled
    assert all(n % (2 * 8) == 0 for n in per_step.values()), per_step   # equal shares per round
