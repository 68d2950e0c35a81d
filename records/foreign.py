"""Other trainers' logs read as run records: TRL's ``trainer_state.json`` and verl's file logger.

    rows, notes, kind = records.foreign.read_metrics(run_dir)   # [] and kind None: not a foreign run

A **TRL run** is an ``output_dir`` of a ``transformers.Trainer`` (TRL's ``GRPOTrainer`` and the
others): its ``trainer_state.json``, or, while it trains, the newest
``checkpoint-<step>/trainer_state.json`` (the one with the most logged steps wins). Its
``log_history`` holds one dict per logging step (``{"step": 3, "loss": ..., "reward": ...}``);
the end-of-training summary row (``train_runtime``, ...) is left out.

A **verl run** is a directory holding the JSONL of verl's ``FileLogger``
(``verl.utils.tracking``, ``trainer.logger=['file']``): one line ``{"step": s, "data": {...}}`` per
step. Point ``VERL_FILE_LOGGER_PATH`` at ``runs/<name>/verl.jsonl`` (or set
``VERL_FILE_LOGGER_ROOT=runs``: verl writes ``runs/<project>/<experiment>.jsonl``); with several
experiments in one directory the newest file is read (and a note says so).

Metric names that mean the same thing as ours are renamed (`TRL_NAMES`, `VERL_NAMES`); every
other metric keeps its own name, so the dashboard still shows it (e.g. TRL's
``rewards/<function>/mean``, verl's ``actor/pg_clipfrac``). Standard library only.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import records

TRAINER_STATE = "trainer_state.json"
TRL, VERL = "trl", "verl"
CHECKPOINT = re.compile(r"checkpoint-(\d+)$")

# TRL GRPOTrainer / transformers.Trainer log names -> ours (only where they mean the same thing)
TRL_NAMES = {
    "loss": records.TRAIN_LOSS,
    "learning_rate": records.TRAIN_LR,
    "grad_norm": records.GRAD_NORM,
    "entropy": records.TRAIN_ENTROPY,
    "kl": records.TRAIN_KL,
    "reward": records.ROLLOUT_REWARD,
    "completions/mean_length": records.ROLLOUT_LENGTH,
    "completions/clipped_ratio": records.ROLLOUT_CLIP_FRACTION,
    "frac_reward_zero_std": records.ROLLOUT_ALL_EQUAL,
    "sampling/sampling_logp_difference/mean": records.ROLLOUT_LOGP_GAP,
    "step_time": records.STEP_SECONDS,
}
# verl's trainer metrics -> ours
VERL_NAMES = {
    "actor/pg_loss": records.TRAIN_LOSS,
    "actor/lr": records.TRAIN_LR,
    "actor/grad_norm": records.GRAD_NORM,
    "actor/entropy": records.TRAIN_ENTROPY,
    "actor/kl_loss": records.TRAIN_KL,
    "critic/score/mean": records.ROLLOUT_REWARD,
    "response_length/mean": records.ROLLOUT_LENGTH,
    "response_length/clip_ratio": records.ROLLOUT_CLIP_FRACTION,
    "timing_s/step": records.STEP_SECONDS,
}
# keys of TRL's end-of-training summary row (not a step's metrics)
TRL_SUMMARY = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos",
               "train_loss"}


def renamed(row: dict, names: dict) -> dict:
    """``row`` with the keys of ``names`` under our names (a key of ours already in the row wins)."""
    out = {}
    for k, v in row.items():
        out.setdefault(names.get(k, k), v)
    return out


# ------------------------------------------------------------------------------------ TRL


def trainer_states(run_dir: Path) -> list[Path]:
    """``trainer_state.json`` files of a TRL output dir: its own and its checkpoints'."""
    run_dir = Path(run_dir)
    found = [run_dir / TRAINER_STATE] if (run_dir / TRAINER_STATE).is_file() else []
    for ckpt in run_dir.glob("checkpoint-*"):
        if CHECKPOINT.search(ckpt.name) and (ckpt / TRAINER_STATE).is_file():
            found.append(ckpt / TRAINER_STATE)
    return found


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of a TRL output dir's ``checkpoint-<step>`` folders, by step."""
    out = [(int(m.group(1)), p) for p in Path(run_dir).glob("checkpoint-*")
           if (m := CHECKPOINT.search(p.name)) and p.is_dir()]
    return sorted(out)


def read_trl(run_dir: Path, notes: records.Notes | None = None) -> list[dict]:
    """One row per logged step of a TRL run, our names where they mean the same thing."""
    notes = notes if notes is not None else records.Notes()
    best: list = []
    for path in trainer_states(run_dir):
        try:
            history = records.read_json(path).get("log_history", [])
        except records.RecordError as e:
            notes.add(f"{e}; skipped")
            continue
        if not isinstance(history, list):
            notes.add(f"{path}: log_history is not a list; skipped")
            continue
        if len(history) > len(best):
            best = history
    by_step: dict = {}
    for row in best:
        if not isinstance(row, dict) or "step" not in row or TRL_SUMMARY & set(row):
            continue
        by_step.setdefault(int(row["step"]), {}).update(row)  # train and eval rows of one step
    return [{"step": s, **renamed({k: v for k, v in r.items() if k != "step"}, TRL_NAMES)}
            for s, r in sorted(by_step.items())]


# ----------------------------------------------------------------------------------- verl


def _is_verl_line(obj: dict) -> bool:
    return set(obj) == {"step", "data"} and isinstance(obj["data"], dict)


def verl_logs(run_dir: Path) -> list[Path]:
    """JSONL files of verl's FileLogger in ``run_dir`` (their first line is ``{"step", "data"}``),
    newest first."""
    out = []
    for path in Path(run_dir).glob("*.jsonl"):
        if path.name in (records.METRICS, records.SAMPLES):
            continue
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                first = json.loads(f.readline() or "null")
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(first, dict) and _is_verl_line(first):
            out.append(path)
    return sorted(out, key=lambda p: p.stat().st_mtime, reverse=True)


def read_verl(run_dir: Path, notes: records.Notes | None = None) -> list[dict]:
    """One row per step of a verl run (the newest FileLogger file), our names where they mean
    the same thing; a step logged twice (a resumed run) keeps its last row."""
    notes = notes if notes is not None else records.Notes()
    files = verl_logs(run_dir)
    if not files:
        return []
    if len(files) > 1:
        notes.add(f"{run_dir}: {len(files)} verl logs; read the newest, {files[0].name}")
    by_step: dict = {}
    for lineno, obj in records.iter_lines(files[0], notes):
        if not _is_verl_line(obj):
            notes.add(f"{files[0]}: line {lineno} is not a verl FileLogger record; skipped")
            continue
        by_step[int(obj["step"])] = renamed(obj["data"], VERL_NAMES)
    return [{"step": s, **r} for s, r in sorted(by_step.items())]


# -------------------------------------------------------------------------------- either


def kind(run_dir: Path) -> str | None:
    """"trl", "verl", or None when ``run_dir`` holds neither (our own records win)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or (run_dir / records.METRICS).exists():
        return None
    if trainer_states(run_dir):
        return TRL
    if verl_logs(run_dir):
        return VERL
    return None


READERS = {TRL: read_trl, VERL: read_verl}


def read_metrics(run_dir: Path) -> tuple[list[dict], records.Notes, str | None]:
    """Metric rows of a TRL or verl run (see the module docstring), the notes on what was
    skipped, and the run's kind; ``([], notes, None)`` for anything else."""
    notes = records.Notes()
    k = kind(run_dir)
    return (READERS[k](run_dir, notes) if k else []), notes, k


def config_of(run_dir: Path) -> dict:
    """What a foreign run's directory says about it: its framework as the method, and for TRL
    the checkpoint steps saved."""
    k = kind(run_dir)
    if k is None:
        return {}
    out = {"method": f"{k} run", "framework": k}
    if k == TRL:
        out["checkpoints"] = [s for s, _ in checkpoints(run_dir)]
    return out
