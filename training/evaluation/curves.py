"""pass@k curves at large k (``training.compare --passk 64``): a finished run's base model and
last checkpoint sample ``k`` completions per problem of a per-level subset of the test split, and
their pass@k (k = 1, 2, 4, …, k) is appended to the run's ``eval/scores.jsonl`` as rows of
benchmark `records.PASSK_BENCHMARK` — step 0 for the base, the checkpoint's step for the trained
model — beside the run's own evaluations (avg@k on the whole split at a small k).

Sampling settings are the run's evaluation settings (temperature, top-p, generation length,
prompt template, reward), its engine, and one sampling seed per run for both models (common
random numbers, as in training's own evaluations).

    python -m training.evaluation.curves RUN_DIR [RUN_DIR ...] --k 64 --per-level 20 --threads 1

(``training.compare`` runs it once per run, in its own process, like the training runs.)
"""
from __future__ import annotations

from pathlib import Path

import records
from records.comparison import eval_rows, passk_curve

from .. import checkpoint, custom, data
from ..config import RunConfig
from ..policy import load_model, load_tokenizer
from ..resume import resume_config, saved_config
from ..rollout import make_prompt_fn, make_sampler
from .heldout import evaluate

SALT = 104_729


def done(run_dir: Path, k: int) -> bool:
    """Whether the run already has its curves at ``k`` (base and last step)."""
    steps = {r["step"] for r in eval_rows(run_dir, curves=True) if r["k"] == k}
    return 0 in steps and len(steps) > 1


def passk_curves(run_dir: Path, k: int = 64, per_level: int = 20) -> None:
    """Append the base's and the last checkpoint's pass@1..k rows to ``run_dir`` (skipped when
    they are there)."""
    run_dir = Path(run_dir)
    if done(run_dir, k):
        return
    cfg = resume_config(RunConfig(), saved_config(str(run_dir)), set())[0]  # the run's own config
    ckpt = checkpoint.latest(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint to evaluate (the run saves one at its end)")
    model_path = records.read_config(run_dir)["model_path"]
    examples = data.test_examples(per_level)
    tok = load_tokenizer(model_path)
    reward = custom.make_reward(cfg)
    writer = records.RunWriter(run_dir)
    step = int(ckpt.name[len(checkpoint.PREFIX):])
    model = load_model(model_path, cfg.lora_r, cfg.lora_alpha, attn_implementation="eager").eval()
    for at, weights in ((0, None), (step, ckpt)):  # the base, then the checkpoint's weights
        if weights is not None:
            checkpoint.load_weights(model, weights)
        res, _ = evaluate(make_sampler(cfg, model, tok, model_path), tok, examples, reward, k,
                          cfg.eval_temperature, cfg.eval_top_p, cfg.max_new_tokens,
                          (cfg.seed * 1_000_003 + SALT) % (2 ** 31 - 1), make_prompt_fn(cfg, tok))
        writer.log_eval(r for r in res.rows(at, records.PASSK_BENCHMARK) if r["metric"] == "pass@k")
    close = getattr(reward, "close", None)
    if close:
        close()


def read_curve(run_dir: Path, step: int | None = None) -> dict:
    """{k: pass@k over all problems} of the run's large-k curve at ``step`` (default: the last)."""
    return passk_curve(run_dir, step, curves=True)


def main(argv=None) -> None:
    import argparse

    import torch

    p = argparse.ArgumentParser(prog="python -m training.evaluation.curves", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--per-level", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    for d in args.run_dirs:
        passk_curves(Path(d), args.k, args.per_level)


if __name__ == "__main__":
    main()
