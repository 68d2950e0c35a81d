"""Run records: the one package that owns the on-disk format of ``runs/<run_id>/`` and its
reading into tables.

Training, probes and evaluation write through :class:`RunWriter`; everything reads through the
``read_*`` functions here and the modules below. ``dashboards/`` and ``paper_figures/`` import
this package and nothing else of the project.

==========================  ==============================================================
``records`` (this module)   format, writer, jsonl readers, metric names; standard library only
``records.passk``           the one pass@k: unbiased estimator, bootstrap CIs, crossing k*
                            (numpy; its pandas curve tables import pandas when called)
``records.tables``          run directories -> pandas frames (metrics, eval, samples, probes)
``records.checks``          field-type tables of the record rows; reading a jsonl file into a
                            frame, malformed rows skipped with a note
``records.summary``         one row per run: method, model, final accuracy, wall time
``records.foreign``         other trainers' logs as run records: TRL ``trainer_state.json``,
                            verl's file-logger JSONL (their metric names mapped onto ours)
``records.gradients``       the live gradient diagnostics as tables: noise curves, prompt weights
``records.comparison``      ``comparison.json`` of ``python -m training.compare`` (build, write,
                            read checked, find) and its Table-2 maths: mean ± 95 % CI over
                            seeds, paired differences, pass@k curves, crossing k*
==========================  ==============================================================

Nothing here imports torch.

Layout of one run directory::

    runs/<run_id>/
      config.json        resolved config, estimator parts, seed, versions, git commit
      metrics.jsonl      one JSON object per step: {"step": int, "time": float, <metric>: value, ...}
      samples.jsonl      one row per generated sample (see SAMPLE_FIELDS)
      eval/scores.jsonl  tidy evaluation rows (see EVAL_FIELDS)
      eval/<benchmark>.jsonl   per-benchmark generations (free-form rows)
                         (rows of benchmark ``arith-passk``, PASSK_BENCHMARK: pass@k up to a large
                         k on a subset of the test split, for the base at step 0 and the last
                         checkpoint at the last step, written by ``training.compare --passk K``)
      probes/<probe>.jsonl     tidy probe rows (see PROBE_FIELDS); ``probes/variance.jsonl``
                         (PROBE_VARIANCE): estimator bias / variance, on a testbed, or on a
                         training run's checkpoints (``python -m probes.variance --run``;
                         settings ``step=N,G=..``, one row per checkpoint × estimator × metric)
      checkpoints/       model checkpoints in the ecosystem's own formats
      status.json        {"state": "running"|"finished"|"failed", "step": int, "message": str,
                          "time": float, "pid": int, "host": str, "heartbeat": float}
                         (the heartbeat is renewed with every metrics row; `run_state` reports
                         a "running" run whose process is gone or silent as "stopped")

Layout of a comparison directory (``python -m training.compare --runs-dir DIR``)::

    DIR/
      <preset>-s<seed>/ or <preset>-lr<v>-s<seed>/   the reported runs (run directories as above)
      tune-<preset>-lr<v>-s<seed>/                    tuning trials, scored on the validation split
      validation.jsonl   the validation split the tuning trials were evaluated on
      tuning.json        (TUNING) with ``--tune``: {"tuned", "grid", "seeds", "split",
                         "validation_problems", "trials_per_method",
                         "scores": {preset: {value: validation avg@k}}, "chosen": {preset: value}}
      comparison.json    (COMPARISON) the whole comparison, written atomically at its end
                         (``records.comparison``; ``read`` checks every field):
        format           1
        time             when it was written (Unix seconds)
        command          the arguments: {"presets": [..], "seeds": [..], "reference": preset,
                         "tune": "none"|"lr", "grid": [..], "tune_seeds": [..],
                         "run_args": [the extra ``training.run`` arguments]}
        task             the task variant of the runs (their config's ``task``; "arith" when
                         the config records none)
        tuning           tuning.json's content ({} without ``--tune``); "chosen" per preset
        base             the base model (the first run's step-0 evaluation):
                         {"scores": {column: value}, "passk": {k: pass@k}}
        presets          {preset: [{"run": run dir relative to DIR, "seed", "step" (the last
                         evaluated), "scores", "passk": {k: final pass@k over all problems}}]}
                         scores: {"L<level>": avg@k, "Avg": avg@k over all, "pass@<kmax>",
                         "k*": the smallest k where the base's pass@k ≥ the run's (NaN: never)};
                         all but k* are fractions in [0, 1]
        paired           {column ("Avg", "pass@<k>"): {preset: {"mean", "ci", "n"}}}: reference
                         minus preset, seed by seed, in points; ci = 95 % t half-width (NaN, n = 1)

A run owns its directory: `create_run_dir` makes it atomically (``os.mkdir``) and never hands out
an existing one.

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
``train/nonfinite_loss``          1 when the step's loss or gradient was not finite
``train/skip_reason``             why the step was skipped (text; only on skipped steps)
``train/value_loss``              critic loss (PPO)
``train/demo_nll``                mean per-token NLL of the step's demonstrations before the update
                                  (the SFT loss; the surrogate's value says nothing for SFT)
``rollout/reward``                mean reward of the on-policy rollouts
``rollout/samples``               sequences generated this step (the sample budget)
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
``rollout/is_ess``                 rollout correction (``--rollout-correction``): effective sample
                                  size of its token weights w, (Σw)²/(n·Σw²) ∈ (0, 1] (1: no
                                  correction needed), over the step's rollout tokens
``rollout/is_corrected_fraction`` share of rollout tokens whose weight the correction changed
                                  (truncated or masked)
``rollout/is_weight_max``         largest rollout-correction weight of the step (after bounds)
``gate/sft_fraction``             fraction of prompts the HPT gate sent to SFT
``gate/mean_beta``                mean SFT weight β over the gated prompts (``Hybrid`` estimator
                                  stats; ``estimators`` writes the literal, it imports no records)
``gate/offline_ratio``            demo rows / (demo rows + on-policy rows) in the batch (Figs. 6, 8)
``grad/norm``                     gradient norm before clipping
``grad/snr``                      live gradient diagnostics (``--diagnostics-every``, see
                                  training/diagnostics.py), of the step's first optimizer step,
                                  from its per-micro-batch gradients: ‖E g‖²/tr Cov(g) of the
                                  update g (McCandlish's unbiased two-batch estimates)
``grad/noise_scale``              B_simple = N·tr Cov(g)/‖E g‖², in rows (N rows per update)
``grad/noise_trcov``              tr Cov(g), the estimated trace covariance of the update
``grad/mean_sq``                  ‖E g‖², the estimated squared norm of the mean update
``grad/norm_sft``                 ‖g_sft‖: norm of the demonstration rows' part of the update
``grad/norm_rl``                  ‖g_rl‖: norm of the rollout rows' part (g = g_sft + g_rl)
``grad/cos_sft_rl``               cos(g_sft, g_rl): do demonstrations and rollouts pull alike
``grad/w_empirical/<level>``      realised weight of the level's prompts in the update: mean Â of
                                  correct − of wrong rollouts (0 on untrained rows)
``grad/w_exact/<level>``          exact w(p, G) of the estimator's advantage at the level's p
``grad/pass_rate/<level>``        pass rate p of the level's rollouts this step
``data/demos_truncated``          demonstrations cut to max_new_tokens so far (running count)
``eval/accuracy``                 held-out avg@k over all levels
``eval/ci95``                     half-width of the 95 % CI of ``eval/accuracy`` (stratified by
                                  level: training/evaluation/heldout.py)
``eval/accuracy/<level>``         held-out avg@k per level or benchmark
``eval/pass@<k>``                 held-out unbiased pass@k
``time/step_seconds``             wall time of the step
================================  =========================================================
"""
from __future__ import annotations

import json
import os
import socket
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
PASSK_BENCHMARK = "arith-passk"  # eval/scores.jsonl rows of `training.compare --passk K` (large-k curves)
PROBES_DIR = "probes"
PROBE_VARIANCE = "variance"  # probes/variance.jsonl: bias / variance of the estimators
CHECKPOINTS = "checkpoints"
TUNING = "tuning.json"  # python -m training.compare --tune: what the validation split chose
COMPARISON = "comparison.json"  # python -m training.compare: the whole comparison (records.comparison)

# Metric names (see the module docstring for their meaning).
TRAIN_LOSS = "train/loss"
TRAIN_LR = "train/lr"
TRAIN_ENTROPY = "train/entropy"
TRAIN_KL = "train/kl"
TRAIN_SKIPPED = "train/skipped"
TRAIN_VALUE_LOSS = "train/value_loss"
TRAIN_DEMO_NLL = "train/demo_nll"
TRAIN_NONFINITE_LOSS = "train/nonfinite_loss"
TRAIN_SKIP_REASON = "train/skip_reason"
ROLLOUT_REWARD = "rollout/reward"
ROLLOUT_ACCURACY = "rollout/accuracy"
ROLLOUT_SAMPLES = "rollout/samples"
ROLLOUT_LENGTH = "rollout/response_length"
ROLLOUT_CLIP_FRACTION = "rollout/clip_fraction"
ROLLOUT_ALL_EQUAL = "rollout/all_equal_fraction"
ROLLOUT_VERIFIER_TIMEOUTS = "rollout/verifier_timeouts"
ROLLOUT_LOGP_GAP = "rollout/logp_gap"
RENAMED_METRICS = {"rollout/engine_logp_gap": ROLLOUT_LOGP_GAP}  # old name -> current name
ROLLOUT_IS_ESS = "rollout/is_ess"
ROLLOUT_IS_CORRECTED = "rollout/is_corrected_fraction"
ROLLOUT_IS_WEIGHT_MAX = "rollout/is_weight_max"
GATE_SFT_FRACTION = "gate/sft_fraction"
GATE_MEAN_BETA = "gate/mean_beta"
GATE_OFFLINE_RATIO = "gate/offline_ratio"
GRAD_NORM = "grad/norm"
GRAD_SNR = "grad/snr"
GRAD_NOISE_SCALE = "grad/noise_scale"
GRAD_NOISE_TRCOV = "grad/noise_trcov"
GRAD_MEAN_SQ = "grad/mean_sq"
GRAD_NORM_SFT = "grad/norm_sft"
GRAD_NORM_RL = "grad/norm_rl"
GRAD_COS_SFT_RL = "grad/cos_sft_rl"
GRAD_W_EMPIRICAL = "grad/w_empirical/"  # prefixes of the per-level keys below
GRAD_W_EXACT = "grad/w_exact/"
GRAD_PASS_RATE = "grad/pass_rate/"
DATA_DEMOS_TRUNCATED = "data/demos_truncated"
EVAL_PREFIX = "eval/"  # every held-out evaluation key starts with it
EVAL_ACCURACY = "eval/accuracy"
EVAL_CI95 = "eval/ci95"
STEP_SECONDS = "time/step_seconds"


def eval_accuracy_key(level: str) -> str:
    return f"{EVAL_ACCURACY}/{level}"


def eval_passk_key(k: int) -> str:
    return f"{EVAL_PREFIX}pass@{k}"


def grad_w_empirical_key(level) -> str:
    return f"{GRAD_W_EMPIRICAL}{level}"


def grad_w_exact_key(level) -> str:
    return f"{GRAD_W_EXACT}{level}"


def grad_pass_rate_key(level) -> str:
    return f"{GRAD_PASS_RATE}{level}"


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


def write_json(path: Path | str, obj: Any) -> None:
    """Write ``obj`` to ``path`` as JSON, atomically: a temporary file, fsync, then rename."""
    path = Path(path)
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
        write_json(self.run_dir / CONFIG, config)

    def log_metrics(self, step: int, metrics: dict) -> None:
        row = {"step": int(step), "time": time.time(), **metrics}
        _append_lines(self.run_dir / METRICS, [row])
        if self._running:
            self.set_status("running", step)  # the heartbeat

    _running = False

    def log_samples(self, rows: Iterable[dict]) -> None:
        _append_lines(self.run_dir / SAMPLES, rows)

    def log_eval(self, rows: Iterable[dict]) -> None:
        _append_lines(self.run_dir / EVAL_SCORES, rows)

    def log_generations(self, benchmark: str, rows: Iterable[dict]) -> None:
        _append_lines(self.run_dir / EVAL_DIR / f"{benchmark}.jsonl", rows)

    def log_probe(self, probe: str, rows: Iterable[dict]) -> None:
        _append_lines(self.run_dir / PROBES_DIR / f"{probe}.jsonl", rows)

    def set_status(self, state: str, step: int = 0, message: str = "") -> bool:
        """Write status.json with this process's pid, host and a heartbeat time. Best effort
        (False when it cannot be written, e.g. on a full disk: `run_state` still tells a dead
        run from a live one)."""
        self._running = state == "running"
        now = time.time()
        try:
            write_json(self.run_dir / STATUS, {
                "state": state, "step": step, "message": message, "time": now,
                "pid": os.getpid(), "host": socket.gethostname(), "heartbeat": now})
            return True
        except OSError:
            (self.run_dir / (STATUS + ".tmp")).unlink(missing_ok=True)
            return False

    def record_resume(self, step: int, config: dict, changed: dict) -> None:
        """A resume at ``step``: config.json's ``config`` becomes ``config`` (the resolved config
        now in force) and ``resumes`` gets {"step", "changed": {field: [before, after]}}."""
        cfg = read_config(self.run_dir)
        history = [*cfg.get("resumes", []), {"step": int(step), "changed": changed}]
        self.write_config({**cfg, "config": config, "resumes": history})

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


MAX_LINE_NOTES = 3  # per file: more bad lines are summed up in one note


def iter_lines(path: Path, notes: Notes | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (line number, JSON object) of a jsonl file, skipping (and noting) malformed lines.
    A file that cannot be read at all (a directory, a dangling symlink, no permission) is one
    note; a missing file is no note (the record is optional)."""
    path = Path(path)
    note = notes.add if notes is not None else (lambda msg: None)
    if not path.exists() and not path.is_symlink():
        return
    bad = 0
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                    why = None if isinstance(obj, dict) else "is not a JSON object"
                except json.JSONDecodeError:
                    why = "is truncated or corrupt"
                if why is None:
                    yield lineno, obj
                    continue
                bad += 1
                if bad <= MAX_LINE_NOTES:
                    note(f"{path}: line {lineno} {why}; skipped")
    except OSError as e:
        note(f"{path}: cannot be read ({unreadable(path, e)}); skipped")
    if bad > MAX_LINE_NOTES:
        note(f"{path}: {bad - MAX_LINE_NOTES} more unreadable lines skipped")


def unreadable(path: Path, error: OSError) -> str:
    """Why ``path`` could not be read, in words."""
    if path.is_symlink() and not path.exists():
        return f"a symlink to {os.readlink(path)}, which does not exist"
    if path.is_dir():
        return "a directory, not a file"
    return error.strerror or type(error).__name__


def iter_jsonl(path: Path, notes: Notes | None = None) -> Iterator[dict]:
    """Yield the JSON objects of a jsonl file, skipping (and noting) malformed lines."""
    for _, obj in iter_lines(path, notes):
        yield obj


def read_jsonl(path: Path) -> tuple[list[dict], Notes]:
    notes = Notes()
    return list(iter_jsonl(path, notes)), notes


def read_numbered(path: Path) -> tuple[list[tuple[int, dict]], Notes]:
    """Like :func:`read_jsonl`, each row with its line number (for notes that name it)."""
    notes = Notes()
    return list(iter_lines(path, notes)), notes


def is_run_dir(path: Path) -> bool:
    path = Path(path)
    if not path.is_dir():
        return False
    if any(os.path.lexists(path / name) for name in (CONFIG, METRICS)) or (path / PROBES_DIR).is_dir():
        return True
    from records import foreign  # another trainer's run: TRL output dir, verl file logger

    return foreign.kind(path) is not None


def list_runs(root: Path) -> list[Path]:
    """Run directories directly under ``root`` (sorted by name). Missing root -> []."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if is_run_dir(p))


def read_json(path: Path) -> dict:
    """A JSON object file; anything else (a missing file aside: {}) raises `RecordError`
    naming the file and why."""
    path = Path(path)
    if not os.path.lexists(path):
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RecordError(f"{path}: cannot be read ({unreadable(path, e)})") from None
    except UnicodeDecodeError:
        raise RecordError(f"{path}: not text (binary data)") from None
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise RecordError(f"{path}: not a JSON object (a {type(obj).__name__})")
    return obj


def read_config(run_dir: Path) -> dict:
    return read_json(Path(run_dir) / CONFIG)


def read_status(run_dir: Path) -> dict:
    """status.json, or {} when it is missing or unreadable (``read_json`` says why)."""
    try:
        return read_json(Path(run_dir) / STATUS)
    except RecordError:
        return {}


STALE_AFTER_S = 1800.0  # a "running" status with no heartbeat for this long is "stopped"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def run_state(status: dict, now: float | None = None, stale_after: float = STALE_AFTER_S) -> str:
    """The state a reader should show for ``status`` (as `read_status` returns it): its "state",
    except that a "running" run is "stopped" when its process is gone (same host) or its
    heartbeat is older than ``stale_after`` seconds (a kill, a crash, a lost machine)."""
    state = status.get("state", "")
    if state != "running":
        return state
    pid, host = status.get("pid"), status.get("host")
    if isinstance(pid, int) and host == socket.gethostname() and not _pid_alive(pid):
        return "stopped"
    beat = status.get("heartbeat", status.get("time"))
    now = time.time() if now is None else now
    if not isinstance(beat, (int, float)) or now - beat > stale_after:
        return "stopped"
    return state


class RunDirExists(FileExistsError):
    """An explicitly named run directory that exists already."""


def create_run_dir(root: Path | str, name: str, unique: bool = True) -> Path:
    """Create ``root/name`` atomically and return it; the caller owns it alone. When it exists:
    with ``unique`` the first free ``name-2``, ``name-3``, ... (also created atomically), else
    `RunDirExists` naming it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        path = root / (name if i == 1 else f"{name}-{i}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            if not unique:
                raise RunDirExists(f"run directory {path} exists already: choose another "
                                   f"--run-id, or continue it with --resume {path}") from None
    raise RunDirExists(f"no free run directory name {root / name}-N")


def read_metrics(run_dir: Path) -> tuple[list[dict], Notes]:
    """Metric rows, with metrics of older runs under their current names (`RENAMED_METRICS`);
    a TRL or verl run's rows under our names where they mean the same (`records.foreign`)."""
    if not (Path(run_dir) / METRICS).exists():
        from records import foreign

        rows, notes, kind = foreign.read_metrics(run_dir)
        if kind:
            return rows, notes
    rows, notes = read_jsonl(Path(run_dir) / METRICS)
    return [{RENAMED_METRICS.get(k, k): v for k, v in r.items()} for r in rows], notes


def read_samples(run_dir: Path) -> tuple[list[dict], Notes]:
    return read_jsonl(Path(run_dir) / SAMPLES)


def read_eval(run_dir: Path) -> tuple[list[dict], Notes]:
    return read_jsonl(Path(run_dir) / EVAL_SCORES)


def read_generations(run_dir: Path, benchmark: str) -> tuple[list[dict], Notes]:
    return read_jsonl(Path(run_dir) / EVAL_DIR / f"{benchmark}.jsonl")


def probe_files(run_dir: Path, probe: str | None = None) -> list[Path]:
    """The probe record files of one run dir (all probes, or one)."""
    pdir = Path(run_dir) / PROBES_DIR
    if not pdir.is_dir():
        return []
    return [p for p in sorted(pdir.glob("*.jsonl")) if probe is None or p.stem == probe]


def read_probes(run_dir: Path, probe: str | None = None) -> tuple[list[dict], Notes]:
    """Tidy probe rows of one run dir (all probes, or one), each tagged with its ``probe``."""
    notes = Notes()
    rows: list[dict] = []
    for path in probe_files(run_dir, probe):
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
    """(name, size, mtime) of every record file: a cache key that changes when a file does.
    An entry that cannot be stat'ed (a dangling symlink) counts with size and mtime -1."""
    run_dir = Path(run_dir)
    sig = []
    for path in sorted(run_dir.rglob("*.json*")):
        if CHECKPOINTS in path.parts:
            continue
        try:
            st = path.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size = mtime = -1
        sig.append((str(path.relative_to(run_dir)), size, mtime))
    return tuple(sig)
