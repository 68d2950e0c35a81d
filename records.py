"""Run records: the one module that owns the on-disk format of ``runs/<run_id>/``.

Training, probes and evaluation write through :class:`RunWriter`; the dashboard and the paper
figures read through the ``read_*`` functions. Only the standard library is used, so readers
never pull in torch.

Layout of one run directory::

    runs/<run_id>/
      config.json        resolved config, estimator parts, seed, versions, git commit
      metrics.jsonl      one JSON object per step: {"step": int, "time": float, <metric>: value, ...}
      samples.jsonl      one row per generated sample (see SAMPLE_FIELDS)
      eval/scores.jsonl  tidy evaluation rows (see EVAL_FIELDS)
      eval/<benchmark>.jsonl   per-benchmark generations (free-form rows)
      probes/<probe>.jsonl     tidy probe rows (see PROBE_FIELDS)
      checkpoints/       model checkpoints in the ecosystem's own formats
      status.json        {"state": "running"|"finished"|"failed", "step": int, "message": str}

Writers append one whole line per record and flush + fsync after every write, so a reader sees
either the whole record or a truncated last line, which the readers skip and report as a note.

Metric names (namespaced; defined here once and used everywhere):

================================  =========================================================
``train/loss``                    the surrogate's value (meaningless in itself)
``train/lr``                      learning rate of the step
``train/entropy``                 mean token entropy of the rows scored this step (single-pass
                                  steps score only the trained rows)
``train/kl``                      mean KL estimate to the reference policy (when used)
``train/skipped``                 1 when the optimizer step was skipped (non-finite/oversized)
``train/value_loss``              critic loss (PPO)
``train/demo_nll``                mean per-token NLL of the step's demonstrations before the update
                                  (the SFT loss; the surrogate's value says nothing for SFT)
``rollout/reward``                mean reward of the on-policy rollouts
``rollout/accuracy``              fraction of rollouts judged correct
``rollout/response_length``       mean response length in tokens
``rollout/clip_fraction``         fraction of responses that hit the length limit
``rollout/all_equal_fraction``    fraction of groups whose rewards are all equal
``rollout/verifier_timeouts``     verifier calls that timed out or raised (counted as wrong)
``rollout/logp_gap``              mean |log p_sampler − log π_θold| over rollout tokens: the
                                  rollout engine's (HF ``generate``'s processed scores, vLLM's
                                  processed log-probs) against the trainer's own, so a sampler/
                                  trainer mismatch (temperature, precision, a stale weight sync)
                                  shows at every step; vLLM: what TIS corrects. Runs before
                                  this key wrote ``rollout/engine_logp_gap`` (vLLM only); the
                                  readers map it onto this name
``gate/sft_fraction``             fraction of prompts the HPT gate sent to SFT
``gate/offline_ratio``            demo rows / (demo rows + on-policy rows) in the batch (Figs. 6, 8)
``grad/norm``                     gradient norm before clipping
``eval/accuracy``                 held-out avg@k over all levels
``eval/accuracy/<level>``         held-out avg@k per level or benchmark
``eval/pass@<k>``                 held-out unbiased pass@k
``time/step_seconds``             wall time of the step
================================  =========================================================
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
STATUS = "status.json"
EVAL_DIR = "eval"
EVAL_SCORES = "eval/scores.jsonl"
PROBES_DIR = "probes"
CHECKPOINTS = "checkpoints"

# Metric names (see the module docstring for their meaning).
TRAIN_LOSS = "train/loss"
TRAIN_LR = "train/lr"
TRAIN_ENTROPY = "train/entropy"
TRAIN_KL = "train/kl"
TRAIN_SKIPPED = "train/skipped"
TRAIN_VALUE_LOSS = "train/value_loss"
TRAIN_DEMO_NLL = "train/demo_nll"
ROLLOUT_REWARD = "rollout/reward"
ROLLOUT_ACCURACY = "rollout/accuracy"
ROLLOUT_LENGTH = "rollout/response_length"
ROLLOUT_CLIP_FRACTION = "rollout/clip_fraction"
ROLLOUT_ALL_EQUAL = "rollout/all_equal_fraction"
ROLLOUT_VERIFIER_TIMEOUTS = "rollout/verifier_timeouts"
ROLLOUT_LOGP_GAP = "rollout/logp_gap"
RENAMED_METRICS = {"rollout/engine_logp_gap": ROLLOUT_LOGP_GAP}  # old name -> current name
GATE_SFT_FRACTION = "gate/sft_fraction"
GATE_OFFLINE_RATIO = "gate/offline_ratio"
GRAD_NORM = "grad/norm"
EVAL_ACCURACY = "eval/accuracy"
STEP_SECONDS = "time/step_seconds"


def eval_accuracy_key(level: str) -> str:
    return f"{EVAL_ACCURACY}/{level}"


def eval_passk_key(k: int) -> str:
    return f"eval/pass@{k}"


# Row schemas (field -> meaning). Extra fields are allowed; these are always present.
SAMPLE_FIELDS = {
    "step": "training step the sample was drawn at",
    "prompt_id": "stable id of the prompt",
    "sample_idx": "index of the sample within its prompt's group",
    "source": "'rollout' or 'demo'",
    "reward": "scalar reward",
    "correct": "bool, verifier verdict",
    "n_tokens": "response length in tokens",
    "gate": "'rl' or 'sft' (HPT gate decision; 'rl' for non-gated methods)",
}
EVAL_FIELDS = {
    "step": "training step evaluated at",
    "benchmark": "benchmark or split name",
    "level": "difficulty level or 'all'",
    "metric": "'avg@k' or 'pass@k'",
    "k": "k of the metric",
    "value": "metric value in [0, 1]",
    "stderr": "standard error (NaN when unknown)",
    "n": "number of problems",
}
PROBE_FIELDS = {
    "probe": "probe name (e.g. 'variance', 'passk', 'dynamics')",
    "estimator": "estimator / preset / model name",
    "setting": "setting string, e.g. 'G=8,checkpoint=base'",
    "metric": "metric name (cos, scale, trCov, ...)",
    "value": "number",
    "stderr": "standard error (NaN when exact)",
}


class RecordError(ValueError):
    """A record that cannot be read or written; the message names the file and line."""


def _jsonable(value: Any) -> Any:
    """Convert numpy/torch scalars, tuples and paths to plain JSON values. Non-finite floats are
    written as JSON's common extension ``NaN`` / ``Infinity``, which Python and pandas read back."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _append_lines(path: Path, rows: Iterable[dict]) -> int:
    text = "".join(json.dumps(_jsonable(r), sort_keys=False) + "\n" for r in rows)
    if not text:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return text.count("\n")


def _write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_jsonable(obj), f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class RunWriter:
    """Append-only writer of one run directory. Writing a record never rewrites earlier ones."""

    run_dir: Path

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def write_config(self, config: dict) -> None:
        _write_json_atomic(self.run_dir / CONFIG, config)

    def log_metrics(self, step: int, metrics: dict) -> None:
        row = {"step": int(step), "time": time.time(), **metrics}
        _append_lines(self.run_dir / METRICS, [row])

    def log_samples(self, rows: Iterable[dict]) -> None:
        _append_lines(self.run_dir / SAMPLES, rows)

    def log_eval(self, rows: Iterable[dict]) -> None:
        _append_lines(self.run_dir / EVAL_SCORES, rows)

    def log_generations(self, benchmark: str, rows: Iterable[dict]) -> None:
        _append_lines(self.run_dir / EVAL_DIR / f"{benchmark}.jsonl", rows)

    def log_probe(self, probe: str, rows: Iterable[dict]) -> None:
        _append_lines(self.run_dir / PROBES_DIR / f"{probe}.jsonl", rows)

    def set_status(self, state: str, step: int = 0, message: str = "") -> None:
        _write_json_atomic(self.run_dir / STATUS, {"state": state, "step": step,
                                                    "message": message, "time": time.time()})

    def truncate_after(self, step: int) -> None:
        """Drop metric/sample/eval rows with ``step > step`` (used when resuming a killed run
        from its last checkpoint, so the resumed run re-logs those steps exactly once)."""
        for name in (METRICS, SAMPLES, EVAL_SCORES):
            path = self.run_dir / name
            if not path.exists():
                continue
            rows, _ = read_jsonl(path)
            keep = [r for r in rows if int(r.get("step", 0)) <= step]
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("".join(json.dumps(r) + "\n" for r in keep))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)


# ----------------------------------------------------------------------------------- readers


@dataclass
class Notes:
    """Problems a reader skipped over (shown by the dashboard, never raised)."""

    items: list[str] = field(default_factory=list)

    def add(self, msg: str) -> None:
        self.items.append(msg)

    def __bool__(self) -> bool:
        return bool(self.items)


def iter_jsonl(path: Path, notes: Notes | None = None) -> Iterator[dict]:
    """Yield the JSON objects of a jsonl file, skipping (and noting) malformed lines."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                if notes is not None:
                    notes.add(f"{path}: line {lineno} is truncated or corrupt; skipped")
                continue
            if not isinstance(obj, dict):
                if notes is not None:
                    notes.add(f"{path}: line {lineno} is not a JSON object; skipped")
                continue
            yield obj


def read_jsonl(path: Path) -> tuple[list[dict], Notes]:
    notes = Notes()
    return list(iter_jsonl(path, notes)), notes


def is_run_dir(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / CONFIG).exists() or (path / METRICS).exists()
                              or (path / PROBES_DIR).is_dir())


def list_runs(root: Path) -> list[Path]:
    """Run directories directly under ``root`` (sorted by name). Missing root -> []."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if is_run_dir(p))


def read_config(run_dir: Path) -> dict:
    path = Path(run_dir) / CONFIG
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not valid JSON ({e})") from None


def read_status(run_dir: Path) -> dict:
    path = Path(run_dir) / STATUS
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def read_metrics(run_dir: Path) -> tuple[list[dict], Notes]:
    """Metric rows, with metrics of older runs under their current names (`RENAMED_METRICS`)."""
    rows, notes = read_jsonl(Path(run_dir) / METRICS)
    return [{RENAMED_METRICS.get(k, k): v for k, v in r.items()} for r in rows], notes


def read_samples(run_dir: Path) -> tuple[list[dict], Notes]:
    return read_jsonl(Path(run_dir) / SAMPLES)


def read_eval(run_dir: Path) -> tuple[list[dict], Notes]:
    return read_jsonl(Path(run_dir) / EVAL_SCORES)


def read_generations(run_dir: Path, benchmark: str) -> tuple[list[dict], Notes]:
    return read_jsonl(Path(run_dir) / EVAL_DIR / f"{benchmark}.jsonl")


def read_probes(run_dir: Path, probe: str | None = None) -> tuple[list[dict], Notes]:
    """Tidy probe rows of one run dir (all probes, or one), each tagged with its ``probe``."""
    notes = Notes()
    rows: list[dict] = []
    pdir = Path(run_dir) / PROBES_DIR
    if not pdir.is_dir():
        return rows, notes
    for path in sorted(pdir.glob("*.jsonl")):
        if probe is not None and path.stem != probe:
            continue
        for r in iter_jsonl(path, notes):
            r.setdefault("probe", path.stem)
            rows.append(r)
    return rows, notes


def git_commit(path: Path | str | None = None) -> str:
    """The git commit of the checkout holding ``path`` (this file's by default), or "" outside
    git; recorded in every run's config.json."""
    import subprocess
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=cwd, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def files_signature(run_dir: Path) -> tuple:
    """(name, size, mtime) of every record file: a cache key that changes when a file does."""
    run_dir = Path(run_dir)
    sig = []
    for path in sorted(run_dir.rglob("*.json*")):
        if CHECKPOINTS in path.parts:
            continue
        st = path.stat()
        sig.append((str(path.relative_to(run_dir)), st.st_size, st.st_mtime_ns))
    return tuple(sig)
