"""``python -m training.run PRESET [--field value ...]``: post-train with one estimator preset.

With no other flag it runs the embedded default: the tiny base model (built and cached on first
use) on the built-in arithmetic task, on a CPU, in minutes. This module builds the run's objects
from the config and launches the loop (`training.loop.Trainer`, the paper's Algorithm 1).

Every method-specific choice (rows per group, dynamic sampling, overlong shaping, critic, KL,
two stages, the process layout, the rollout engine) is an object picked in `build`; the loop
never asks which preset it runs.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import records  # noqa: E402

from . import (base, checkpoint, custom, data, distributed, model_card, precision,  # noqa: E402
               resources, task, trackers)
from .backends import Critic, NoCritic, NoReference, make_backend  # noqa: E402
from .config import RunConfig, parse_args  # noqa: E402
from .loop import RunStopped, Trainer  # noqa: E402
from .machine import resolve_device, versions  # noqa: E402
from .progress import Timers  # noqa: E402
from .policy import Reference, ValueHead, load_model, load_tokenizer  # noqa: E402
from .resume import resume_config, saved_config  # noqa: E402
from .rollout import engines, make_prompt_fn, make_sampler  # noqa: E402
from .stages import make_stages  # noqa: E402


def make_schedule(opt, cfg: RunConfig):
    """constant | cosine | linear decay after a linear warm-up (per training step)."""
    decay = {"constant": lambda f: 1.0, "cosine": lambda f: 0.5 * (1 + math.cos(math.pi * f)),
             "linear": lambda f: 1.0 - f}
    if cfg.schedule not in decay:
        raise ValueError(f"--schedule must be one of {sorted(decay)}, got {cfg.schedule!r}")
    fn, w, total = decay[cfg.schedule], cfg.warmup_steps, max(1, cfg.steps)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / w) if w and s < w else fn(min(1.0, s / total)))


def _columns(cfg: RunConfig) -> data.Columns:
    return data.Columns(cfg.prompt_column, cfg.answer_column, cfg.demo_column)


def _eval_examples(cfg: RunConfig) -> list:
    if cfg.eval_data:
        return data.load_examples(cfg.eval_data)
    if cfg.eval_split:
        return data.load_dataset(*data.eval_source(cfg.dataset, cfg.eval_split), _columns(cfg),
                                 cfg.dataset_config)
    return data.test_examples()


def _stream(cfg: RunConfig):
    if cfg.train_data:
        return data.FileStream(data.load_examples(cfg.train_data), cfg.seed)
    if cfg.dataset:
        return data.FileStream(data.load_dataset(cfg.dataset, cfg.dataset_split, _columns(cfg),
                                                 cfg.dataset_config), cfg.seed)
    return data.TaskStream(cfg.seed, variant=cfg.task)


def build(cfg: RunConfig, reward_fn: Optional[Callable] = None, log=print) -> Trainer:
    """Every object of the run, chosen from the config (resuming when ``cfg.resume``)."""
    timers = Timers()
    resumed = {}
    if cfg.resume:  # the run's own config; a changed field is refused (resume.resume_config)
        cfg, resumed = resume_config(cfg, saved_config(cfg.resume))
    threads, why = (cfg.threads, "--threads") if cfg.threads else resources.auto_threads()
    torch.set_num_threads(threads)
    log(f"torch threads: {threads} ({why})")
    cfg = dataclasses.replace(cfg, threads=threads)  # recorded, so a resume computes alike
    dist = distributed.make()
    if dist.world > 1 and not cfg.seed_per_prompt:  # so that 1 and N processes sample alike
        log(f"{dist.describe()}: --seed-per-prompt forced on (rollouts seeded per prompt)")
        cfg = dataclasses.replace(cfg, seed_per_prompt=True)
    if cfg.prompts_per_step < dist.world * cfg.mini_batches:
        raise SystemExit(f"--prompts-per-step {cfg.prompts_per_step} is too small for "
                         f"{dist.world} processes x --mini-batches {cfg.mini_batches}")
    stages = make_stages(cfg)
    stream, eval_examples = _stream(cfg), _eval_examples(cfg)  # checked before any run directory
    backend = make_backend(cfg, dist)  # single process / data parallel, or FSDP
    with timers("base model"):
        model_path = cfg.model or str(base.ensure_base(base.config_for(cfg.task), rebuild=cfg.rebuild_base, log=log))
        model_path = engines.edited_model_dir(model_path, cfg)  # rope_theta / max positions
    with timers("setup"):
        torch.manual_seed(cfg.seed)
        tok = load_tokenizer(model_path)
        device = resolve_device(cfg.device, dist)
        model = load_model(model_path, cfg.lora_r, cfg.lora_alpha,  # float32 master weights
                           attn_implementation=cfg.attn_implementation,
                           gradient_checkpointing=cfg.gradient_checkpointing).to(device)
        precision.autocast_forward(model, cfg.dtype)  # --dtype: the forward's compute precision
        model.train()
        dist.sync_params(list(model.parameters()))
        # π_ref: a frozen full copy made before sharding (FSDP shards it like the policy)
        needs_ref = cfg.kl_coef > 0 or any("logp_ref" in s.est.needs for s in stages)  # REINFORCE++
        reference = (Reference.of(model, checkpoint.is_lora(model), cfg.temperature)
                     if needs_ref else NoReference())
        model = backend.shard(model)
        if isinstance(reference, Reference):
            backend.shard(reference.model)
        critic = (Critic(ValueHead(model.config.hidden_size).to(device), cfg.value_coef)
                  if any(s.value_head for s in stages) else NoCritic())
        stages = [s.with_critic(critic) for s in stages]
        params = [p for p in model.parameters() if p.requires_grad]
        params += list(critic.head.parameters()) if critic.head is not None else []
        dist.sync_params(params)
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
        sched = make_schedule(opt, cfg)
        run_dir = (Path(cfg.resume) if cfg.resume or not dist.is_main else records.create_run_dir(
            cfg.runs_dir, cfg.run_id or f"{cfg.preset}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}",
            unique=not cfg.run_id))  # a new run owns a new directory
        run_dir = Path(distributed_run_dir(dist, str(run_dir)))
        writer = (trackers.reporting(records.RunWriter(run_dir), cfg.report_to, run_dir,
                                     cfg.tracker_project, cfg.resolved())
                  if dist.is_main else distributed.NullWriter())  # only rank 0 records and reports
        trainer = Trainer(cfg, run_dir, writer, model, tok, critic, reference,
                          make_sampler(cfg, model, tok, model_path),
                          reward_fn or custom.make_reward(cfg), stages,
                          stream, eval_examples, opt, sched, timers, dist=dist,
                          backend=backend, prompt_fn=make_prompt_fn(cfg, tok),
                          save_checkpoint=checkpoint.save if dist.is_main else _no_save)
    if cfg.resume:
        trainer.restore(log)
        writer.record_resume(trainer.completed, cfg.resolved(), resumed)
    else:
        writer.write_config({**_config_record(cfg, stages, model_path), "world_size": dist.world})
    return trainer


def distributed_run_dir(dist, run_dir: str) -> str:
    """Rank 0's run directory on every rank (its name holds rank 0's clock)."""
    return dist.gather([run_dir])[0]


def _no_save(*args, **kwargs) -> None:
    """Checkpoints are written by rank 0 only."""


def _config_record(cfg: RunConfig, stages: list, model_path: str) -> dict:
    return {"config": cfg.resolved(), "preset": cfg.preset, "seed": cfg.seed,
            "estimator": {s.name: s.est.parts() for s in stages},
            "stages": [{"name": s.name, "first_step": s.first, "last_step": s.last} for s in stages],
            "model_path": model_path, "task_version": task.TASK_VERSION, "task": cfg.task,
            "versions": versions(), "git_commit": records.git_commit(), "command": sys.argv}




def main(argv: Optional[list[str]] = None, reward_fn: Optional[Callable] = None) -> Trainer:
    cfg = parse_args(argv)
    t0 = time.time()
    try:
        trainer = build(cfg, reward_fn, log=lambda s: print(s, file=sys.stderr, flush=True))
    except (records.RunDirExists, data.DataError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"run directory: {trainer.run_dir}", file=sys.stderr)
    try:
        last = trainer.train()
    except (RunStopped, checkpoint.SaveFailed, custom.RewardError) as e:
        trainer.writer.set_status("failed", trainer.completed, str(e))
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1)
    except BaseException as e:
        trainer.writer.set_status("failed", trainer.completed, repr(e))
        raise
    finally:
        close = getattr(trainer.reward_fn, "close", None)
        if close:
            close()
        trainer.dist.close()
    _report(trainer, last, time.time() - t0)
    if trainer.cfg.push_to_hub and trainer.dist.is_main:
        push_last(trainer)
    return trainer


def push_last(trainer: Trainer) -> None:
    """``--push-to-hub``: upload the last checkpoint's model (with its model card). A failure
    (offline, no token) stops with one message and exit status 1; the run and its checkpoints
    are kept as they are."""
    ckpt = checkpoint.latest(trainer.run_dir)
    try:
        if ckpt is None:
            raise model_card.PushFailed(f"--push-to-hub {trainer.cfg.push_to_hub}: {trainer.run_dir} "
                                        "has no checkpoint to push")
        url = model_card.push(ckpt / "model", trainer.cfg.push_to_hub)
    except model_card.PushFailed as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"pushed {ckpt / 'model'} to {url}", file=sys.stderr)


def _report(t: Trainer, last: dict, total: float) -> None:
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in t.timers.items())
    acc = {k: round(v, 3) for k, v in last.items() if k.startswith(records.EVAL_PREFIX)}
    print(f"wall time {total:.1f}s ({phases})", file=sys.stderr)
    print(json.dumps({"run_dir": str(t.run_dir), "step": t.completed, **acc}))


if __name__ == "__main__":
    main()
    # free the trainer (an FSDP model keeps its process group alive through its device mesh)
    # now, not during interpreter shutdown, where destroying gloo's threads can abort the process
    import gc

    gc.collect()
